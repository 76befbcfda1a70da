//! A dataset folder that may live in an object store. Its local side is where the stages write
//! and read, as on any folder; with a remote side (an `s3://...` version), every file a writer
//! completes is pushed ([`Folder::push`], [`Folder::push_shard`]: the Parquet file before its
//! stats object), and [`Folder::pull`] brings down what other machines pushed. A shard is pulled
//! only once its stats object exists, and its Parquet file comes down first, so the local side
//! keeps the format's rule that a shard with a stats file is whole.
//!
//! The local side remembers the entity tag of each object it holds (`.albef-mirror.json`), so a
//! pull downloads only objects that are new or were rewritten since (the cross-worker dedupe
//! rewrites shards), never its own uploads again.
use super::{block_on, mirror_path, Object, Remote};
use crate::layout::{parquet_path, stats_path};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file of the local side that records the entity tags of the objects it holds.
const TAGS_FILE: &str = ".albef-mirror.json";

/// A dataset folder: local, or the local mirror of an object-store prefix.
#[derive(Clone, Debug)]
pub struct Folder {
    /// Where the files are read and written on this machine.
    pub local: PathBuf,
    remote: Option<Remote>,
    tags: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Folder {
    /// The folder at `location`: a path (created, made absolute) or an object-store URI, whose
    /// local side is its mirror under `mirror`.
    pub fn open(location: &str, mirror: &Path) -> Result<Self> {
        let (local, remote) = if super::is_remote(location) {
            let remote = Remote::open(location)?;
            (mirror_path(mirror, remote.uri()), Some(remote))
        } else {
            (PathBuf::from(location), None)
        };
        std::fs::create_dir_all(&local)
            .with_context(|| format!("cannot create folder {}", local.display()))?;
        let local = local
            .canonicalize()
            .with_context(|| format!("cannot resolve folder {}", local.display()))?;
        let tags = match std::fs::read(local.join(TAGS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Self {
            local,
            remote,
            tags: Arc::new(Mutex::new(tags)),
        })
    }

    /// Whether the folder lives in an object store.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The folder's URI as the registry records it: the store URI, or the local path.
    pub fn uri(&self) -> String {
        match &self.remote {
            Some(r) => r.uri().to_string(),
            None => self.local.display().to_string(),
        }
    }

    /// The URI of the file `name` in the folder.
    pub fn uri_of(&self, name: &str) -> String {
        match &self.remote {
            Some(r) => r.uri_of(name),
            None => self.local.join(name).display().to_string(),
        }
    }

    /// The URI of shard `index`'s Parquet file.
    pub fn shard_uri(&self, index: u64) -> String {
        self.uri_of(&file_name(&parquet_path(&self.local, index)))
    }

    /// Uploads the local file `name` (nothing to do for a local folder).
    pub fn push(&self, name: &str) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let sent = block_on(remote.upload(&self.local.join(name), name))?;
        self.remember(&sent)
    }

    /// Uploads shard `index`: its Parquet file, then its stats file.
    pub fn push_shard(&self, index: u64) -> Result<()> {
        self.push(&file_name(&parquet_path(&self.local, index)))?;
        self.push(&file_name(&stats_path(&self.local, index)))
    }

    /// Downloads the objects that are new or rewritten since this side last saw them: complete
    /// shards (Parquet first, then stats) and the other files of the folder.
    pub fn pull(&self) -> Result<()> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        let objects: BTreeMap<String, Object> = block_on(remote.list())?
            .into_iter()
            .filter(|o| !o.name.contains('/') && o.name != TAGS_FILE)
            .map(|o| (o.name.clone(), o))
            .collect();
        for (name, object) in &objects {
            if let Some(stem) = name.strip_suffix(".parquet") {
                if !objects.contains_key(&format!("{stem}.stats.json")) {
                    continue; // a shard whose upload has not finished
                }
            }
            if let Some(stem) = name.strip_suffix(".stats.json") {
                if let Some(parquet) = objects.get(&format!("{stem}.parquet")) {
                    self.fetch(remote, parquet)?;
                }
            }
            self.fetch(remote, object)?;
        }
        Ok(())
    }

    /// Downloads the one file `name` (for a local folder, nothing to do); returns its local
    /// path, or None when the folder has no such file.
    pub fn pull_one(&self, name: &str) -> Result<Option<PathBuf>> {
        let local = self.local.join(name);
        let Some(remote) = &self.remote else {
            return Ok(local.exists().then_some(local));
        };
        let listed = block_on(remote.list())?;
        match listed.into_iter().find(|o| o.name == name) {
            Some(object) => self.fetch(remote, &object).map(|()| Some(local)),
            None => Ok(None),
        }
    }

    /// Downloads `object` unless the local side holds it at the same entity tag.
    fn fetch(&self, remote: &Remote, object: &Object) -> Result<()> {
        let held = self.tags.lock().expect("tags").get(&object.name).cloned();
        let local = self.local.join(&object.name);
        if held.is_some() && held == object.e_tag && local.exists() {
            return Ok(());
        }
        block_on(remote.download(&object.name, &local))?;
        self.remember(object)
    }

    /// Records the entity tag of `object` as the one the local side holds.
    fn remember(&self, object: &Object) -> Result<()> {
        let mut tags = self.tags.lock().expect("tags");
        match &object.e_tag {
            Some(tag) => tags.insert(object.name.clone(), tag.clone()),
            None => tags.remove(&object.name),
        };
        crate::write_atomic(&self.local.join(TAGS_FILE), &serde_json::to_vec(&*tags)?)
    }
}

/// The local folder to read the dataset folder `uri` from: the path itself, or the mirror of an
/// object-store prefix under `mirror`, pulled first.
pub fn local_folder(uri: &str, mirror: &Path) -> Result<PathBuf> {
    if !super::is_remote(uri) {
        return Ok(PathBuf::from(uri));
    }
    let folder = Folder::open(uri, mirror)?;
    folder.pull()?;
    Ok(folder.local)
}

/// The local paths to read the files `uris` from (shards as the registry lists them): paths as
/// they are; objects from the mirrors of their folders, each folder pulled once.
pub fn local_files(uris: &[String], mirror: &Path) -> Result<Vec<PathBuf>> {
    let mut pulled: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut paths = Vec::with_capacity(uris.len());
    for uri in uris {
        if !super::is_remote(uri) {
            paths.push(PathBuf::from(uri));
            continue;
        }
        let (folder, name) = uri
            .rsplit_once('/')
            .with_context(|| format!("{uri} names no file"))?;
        if !pulled.contains_key(folder) {
            pulled.insert(folder, local_folder(folder, mirror)?);
        }
        paths.push(pulled[folder].join(name));
    }
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
