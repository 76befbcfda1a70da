//! Where a shard's two files lie in a dataset folder, and which shards are complete: a shard is
//! `{shard:05}.parquet` plus `{shard:05}.stats.json`, and the stats file is written last, so a
//! shard whose stats file exists is whole.
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `{shard:05}.parquet` in `dir`.
pub fn parquet_path(dir: &Path, shard: u64) -> PathBuf {
    dir.join(format!("{shard:05}.parquet"))
}

/// `{shard:05}.stats.json` in `dir`: present only once the shard is complete.
pub fn stats_path(dir: &Path, shard: u64) -> PathBuf {
    dir.join(format!("{shard:05}.stats.json"))
}

/// The complete shards of a dataset folder (those with a stats file), in shard order.
pub fn complete_shards(dir: &Path) -> Result<Vec<u64>> {
    numbered_files(dir, ".stats.json")
}

/// The shard numbers `N` of the files named `{N}{suffix}` in `dir`, in order; none when `dir`
/// does not exist.
pub(crate) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut shards = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(shards),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(suffix) {
            if let Ok(n) = n.parse::<u64>() {
                shards.push(n);
            }
        }
    }
    shards.sort_unstable();
    Ok(shards)
}
