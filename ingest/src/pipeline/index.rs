//! The dedupe index a run starts from: the parent version's index plus the rows of this
//! folder's complete shards (their thumbnails recomputed from the stored JPEGs), and the message
//! a content duplicate is reported with.
use super::{IngestConfig, Lineage};
use crate::canon::canonical;
use crate::dedup::{DedupIndex, DupKind};
use crate::phash::Thumb;
use albef_dataset::{self as dataset, Status};
use anyhow::{Context, Result};
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
        dataset::JPG,
    ];
    for &s in done {
        let path = dataset::parquet_path(&cfg.output, s);
        for batch in dataset::read_batches(&path, None, Some(&cols))? {
            for row in dataset::batch_rows(&batch?)? {
                let canon = canonical(&row.url).ok();
                let content = match (row.status, &row.sha256, row.phash) {
                    (Some(Status::Success), Some(sha), Some(ph)) => {
                        let thumb = stored_thumb(&row)
                            .with_context(|| format!("row {} of {}", row.key, path.display()))?;
                        Some((sha.as_str(), ph, thumb))
                    }
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

/// The thumbnail of a success row's stored JPEG.
fn stored_thumb(row: &dataset::Row) -> Result<Thumb> {
    let jpg = row.jpg.as_deref().unwrap_or_default();
    crate::resizer::stored_fingerprint(jpg)
        .map(|fp| fp.thumb)
        .map_err(|e| anyhow::anyhow!("cannot decode its JPEG: {e}; the shard is damaged"))
}

/// The `error_message` of a row whose content repeats the row `first`.
pub(crate) fn content_dup_message(first: &str, kind: DupKind) -> String {
    match kind {
        DupKind::Near(d) => format!("near duplicate of {first} (pHash distance {d})"),
        _ => format!("same bytes as {first}"),
    }
}
