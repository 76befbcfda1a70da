//! The dedupe index a run starts from: the parent version's index plus the rows of this
//! folder's complete shards, and the message a content duplicate is reported with.
use super::{IngestConfig, Lineage};
use crate::canon::canonical;
use crate::dedup::{DedupIndex, DupKind};
use albef_dataset::{self as dataset, Status};
use anyhow::Result;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The index of a run that dedupes (`None` when `cfg.dedupe` is off), loaded off the runtime.
pub(super) async fn open_index(
    cfg: &IngestConfig,
    lineage: &Lineage,
    done: &HashSet<u64>,
) -> Result<Option<Arc<Mutex<DedupIndex>>>> {
    if !cfg.dedupe {
        return Ok(None);
    }
    let done: Vec<u64> = done.iter().copied().collect();
    let (c, l) = (cfg.clone(), lineage.clone());
    let index = tokio::task::spawn_blocking(move || load_index(&c, &l, &done)).await??;
    Ok(Some(Arc::new(Mutex::new(index))))
}

/// Loads the parent's index and the rows of this folder's complete shards `done`.
pub(crate) fn load_index(
    cfg: &IngestConfig,
    lineage: &Lineage,
    done: &[u64],
) -> Result<DedupIndex> {
    let mut index = match &lineage.parent_index {
        Some(p) if p.exists() => DedupIndex::load(p)?,
        _ => DedupIndex::new(),
    };
    let cols = [
        dataset::KEY,
        dataset::URL,
        dataset::TEXT,
        dataset::STATUS,
        dataset::SHA256,
        dataset::PHASH,
    ];
    for &s in done {
        let path = dataset::parquet_path(&cfg.output, s);
        for batch in dataset::read_batches(&path, None, Some(&cols))? {
            for row in dataset::batch_rows(&batch?)? {
                let canon = canonical(&row.url).ok();
                let content = match (row.status, &row.sha256, row.phash) {
                    (Some(Status::Success), Some(sha), Some(ph)) => Some((sha.as_str(), ph)),
                    _ => None,
                };
                index.add_existing(
                    &row.key,
                    canon.as_ref().map(|u| u.as_str()),
                    &row.text,
                    content,
                );
            }
        }
    }
    Ok(index)
}

/// The `error_message` of a row whose content repeats the row `first`.
pub(crate) fn content_dup_message(first: &str, kind: DupKind) -> String {
    match kind {
        DupKind::Near(d) => format!("near duplicate of {first} (pHash distance {d})"),
        _ => format!("same bytes as {first}"),
    }
}
