//! Datasets and checkpoints in object storage. Every place that takes a dataset or checkpoint
//! location takes a local path or an object-store URI: `s3://bucket/prefix` (AWS S3 and the
//! S3-compatible stores, through `AWS_ENDPOINT_URL`), `gs://bucket/prefix` (GCS) or
//! `az://container/prefix` (Azure). The client is the Apache Arrow project's `object_store`;
//! credentials come from the environment and the AWS profile files (`profile.rs`), never from
//! the registry.
//!
//! Stores have no rename, so publication is by upload: an object becomes visible only when its
//! single PUT or its multipart upload completes, never in part. Files are streamed in parts of
//! [`PART_BYTES`], so memory does not grow with a file's size. Stages keep the order that the
//! local format already has: a shard's stats object and a checkpoint's manifest are uploaded
//! after the files they vouch for, so a reader that finds them finds the rest whole.
//!
//! Commands work on a local mirror of a remote location (`mirror_path`): writers publish files
//! there as on a local folder and upload each one once it is whole; readers download what they
//! need into it.
mod folder;
mod profile;
mod runtime;

pub use folder::{local_files, local_folder, Folder};
pub use runtime::block_on;
use runtime::on_store;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The size of an uploaded part (S3 takes 5 MiB at least, except for the last part).
pub const PART_BYTES: usize = 8 << 20;

/// Parts in flight at once during one upload.
const PARTS_IN_FLIGHT: usize = 4;

/// The URI schemes taken as object stores rather than local paths.
const SCHEMES: [&str; 6] = ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"];

/// Whether `location` names an object store rather than a local path.
pub fn is_remote(location: &str) -> bool {
    SCHEMES.iter().any(|s| location.starts_with(s))
}

/// Where the local mirror of `uri` lies under `root`: `root/SCHEME/BUCKET/PREFIX`.
pub fn mirror_path(root: &Path, uri: &str) -> PathBuf {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("file", uri));
    rest.split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .fold(root.join(scheme), |dir, part| dir.join(part))
}

/// One object under a prefix: its name relative to the prefix, its size, and its entity tag
/// (which changes whenever the object is written again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub bytes: u64,
    pub e_tag: Option<String>,
}

/// A prefix in an object store, with the client that reaches it.
#[derive(Clone)]
pub struct Remote {
    uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

/// The URI alone: the client's own description would include its credentials.
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Remote").field(&self.uri).finish()
    }
}

impl Remote {
    /// Opens `uri` (`s3://bucket/prefix`, ...) with the credentials of the environment. Fails
    /// when the URI is not a store's or its client cannot be configured; nothing is requested
    /// yet.
    pub fn open(uri: &str) -> Result<Self> {
        let uri = uri.trim_end_matches('/').to_string();
        let url = url::Url::parse(&uri)
            .with_context(|| format!("{uri} is not a valid object-store URI"))?;
        let (store, prefix) = object_store::parse_url_opts(&url, profile::client_options())
            .with_context(|| {
                format!("cannot configure a client for {uri}: set the AWS_* variables or an AWS profile (docs/storage.md)")
            })?;
        Ok(Self {
            uri,
            store: Arc::from(store),
            prefix,
        })
    }

    /// The URI of this prefix, without a trailing slash.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The URI of `name` under this prefix.
    pub fn uri_of(&self, name: &str) -> String {
        format!("{}/{name}", self.uri)
    }

    /// The prefix `name` below this one.
    pub fn join(&self, name: &str) -> Self {
        Self {
            uri: self.uri_of(name),
            store: self.store.clone(),
            prefix: self.path(name),
        }
    }

    fn path(&self, name: &str) -> ObjectPath {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// Uploads the local file `local` as `name`, streamed in parts; the object appears only
    /// when the upload completes, and an upload that fails is aborted.
    pub async fn upload(&self, local: &Path, name: &str) -> Result<Object> {
        let (store, path, local_owned) = (self.store.clone(), self.path(name), local.to_owned());
        let name_owned = name.to_string();
        on_store(async move { upload_file(store.as_ref(), &path, &local_owned, name_owned).await })
            .await
            .with_context(|| format!("cannot upload {} to {}", local.display(), self.uri_of(name)))
    }

    /// Writes `bytes` as `name` in one PUT (small files: stats, manifests, markers).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(name));
        on_store(async move { store.put(&path, PutPayload::from(bytes)).await })
            .await
            .with_context(|| format!("cannot write {}", self.uri_of(name)))?;
        Ok(())
    }

    /// The whole object `name`, or None when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let (store, path) = (self.store.clone(), self.path(name));
        let got = on_store(async move {
            match store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        got.with_context(|| format!("cannot read {}", self.uri_of(name)))
    }

    /// The size of object `name`, or None when there is none.
    pub async fn size(&self, name: &str) -> Result<Option<u64>> {
        let (store, path) = (self.store.clone(), self.path(name));
        let head = on_store(async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        head.with_context(|| format!("cannot read the size of {}", self.uri_of(name)))
    }

    /// Downloads `name` to `local`: streamed to a temporary name beside it, fsynced, renamed.
    /// Returns its size.
    pub async fn download(&self, name: &str, local: &Path) -> Result<u64> {
        let (store, path, local_owned) = (self.store.clone(), self.path(name), local.to_owned());
        on_store(async move { download_file(store.as_ref(), &path, &local_owned).await })
            .await
            .with_context(|| {
                format!(
                    "cannot download {} to {}",
                    self.uri_of(name),
                    local.display()
                )
            })
    }

    /// Every object under this prefix, names relative to it, in name order.
    pub async fn list(&self) -> Result<Vec<Object>> {
        let (store, prefix) = (self.store.clone(), self.prefix.clone());
        let listed = on_store(async move {
            let mut objects = Vec::new();
            let mut stream = store.list(Some(&prefix));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                let Some(parts) = meta.location.prefix_match(&prefix) else {
                    continue;
                };
                let name = parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>();
                objects.push(Object {
                    name: name.join("/"),
                    bytes: meta.size,
                    e_tag: meta.e_tag,
                });
            }
            objects.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, object_store::Error>(objects)
        })
        .await;
        listed.with_context(|| format!("cannot list {}", self.uri))
    }

    /// Removes `name` (no error when it is already gone).
    pub async fn delete(&self, name: &str) -> Result<()> {
        let (store, path) = (self.store.clone(), self.path(name));
        on_store(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
        .with_context(|| format!("cannot remove {}", self.uri_of(name)))
    }
}

/// Streams `local` into a multipart upload of `path`, completed last; aborted on failure.
async fn upload_file(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    local: &Path,
    name: String,
) -> Result<Object> {
    use std::io::Read;
    let mut file =
        std::fs::File::open(local).with_context(|| format!("cannot open {}", local.display()))?;
    let mut upload =
        WriteMultipart::new_with_chunk_size(store.put_multipart(path).await?, PART_BYTES);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e).with_context(|| format!("cannot read {}", local.display()));
            }
        };
        if let Err(e) = upload.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = upload.abort().await;
            return Err(e.into());
        }
        upload.write(&buf[..n]);
        bytes += n as u64;
    }
    let put = upload.finish().await?;
    Ok(Object {
        name,
        bytes,
        e_tag: put.e_tag,
    })
}

/// Streams the object at `path` to a temporary name beside `local`, fsyncs and renames it.
async fn download_file(store: &dyn ObjectStore, path: &ObjectPath, local: &Path) -> Result<u64> {
    let tmp = crate::files::tmp_path(local);
    let written = async {
        let mut stream = store.get(path).await?.into_stream();
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            bytes += chunk.len() as u64;
        }
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", tmp.display()))?;
        anyhow::Ok(bytes)
    }
    .await;
    match written {
        Ok(bytes) => crate::files::commit_tmp(&tmp, local).map(|()| bytes),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_told_from_paths_and_mirrored_under_their_scheme() {
        assert!(is_remote("s3://b/p") && is_remote("gs://b") && is_remote("az://c/p"));
        assert!(!is_remote("/data/s3://x") && !is_remote("s3:/x") && !is_remote("data"));
        assert_eq!(
            mirror_path(Path::new("/c"), "s3://bucket/a/../b/"),
            Path::new("/c/s3/bucket/a/b")
        );
    }

    #[test]
    fn a_remote_prints_its_uri_and_never_its_credentials() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "never-printed-secret");
        let remote = Remote::open("s3://bucket/prefix/").unwrap();
        let shown = format!("{remote:?} {remote:#?}");
        assert!(shown.contains("s3://bucket/prefix"), "{shown}");
        assert!(
            !shown.contains("never-printed") && !shown.contains("AKID"),
            "{shown}"
        );
    }
}
