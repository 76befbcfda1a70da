//! Publishing files atomically and hashing them: every shard, stats file and checkpoint file is
//! written under a temporary name, fsynced, renamed into place and its folder fsynced, so a
//! reader never sees a partial file and a killed writer leaves only temporary names behind.
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary name in the same folder, fsync, rename,
/// fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f =
            File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Publishes `path` atomically from what `write(tmp)` writes to a temporary name beside it
/// (for writers that take a path, such as tch's): fsync, rename, fsync of the folder. The
/// temporary file is removed when `write` fails.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let written = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot fsync {}", tmp.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    commit_tmp(&tmp, path)
}

/// sha256 (hex) and size of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, bytes))
}

/// `{name}.tmp-{pid}-{n}`: unique to this process and, through `n`, to this writer, so that two
/// writers of one path (workers finishing a version at once) never share a temporary file.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Removes the temporary files of `paths` (in `dir`) that a killed run left behind. Only the
/// one writer of those paths may call it (a shard belongs to one worker at a time).
pub(crate) fn remove_stale_tmp(dir: &Path, paths: &[&Path]) -> Result<()> {
    let prefixes: Vec<String> = paths
        .iter()
        .map(|p| {
            format!(
                "{}.tmp-",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        if prefixes
            .iter()
            .any(|p| name.to_string_lossy().starts_with(p.as_str()))
        {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove stale {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Renames `tmp` to `path` and fsyncs the folder, which makes the rename durable.
pub(crate) fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot fsync folder {}", dir.display()))?;
    }
    Ok(())
}
