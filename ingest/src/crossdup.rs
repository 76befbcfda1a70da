//! Dedupe across workers. A worker dedupes against the parent version's index, the shards that
//! were complete when it started and the rows it fetched itself, so rows that several workers
//! fetched at the same time never met. When the last shard of such a version is complete,
//! [`dedupe_across_workers`] walks every shard in shard order against one index and marks each
//! success row that repeats an earlier row (the same bytes, or a pHash within the distance,
//! mirrored too, confirmed by the thumbnails as during ingest) as a duplicate of it, rewriting the shards it changes atomically.
//!
//! A shard's stats file is the pass's journal: it is written first, with the counts moved and
//! the rows listed in `late_duplicates`, and the Parquet file after it. A pass killed between
//! the two finds the listed rows still marked success and rewrites the Parquet file without
//! counting them again; two workers finishing at once compute the same result and may both
//! write it.
use crate::dedup::DedupIndex;
use crate::phash::Fingerprint;
use crate::pipeline::content_dup_message;
use albef_dataset::{self as dataset, Row, ShardWriter, Status};
use albef_dataset::{LateDuplicate, ShardStats};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What the pass found.
pub struct CrossDedupe {
    /// The version's dedupe index: the parent's and every row of `shards`.
    pub index: DedupIndex,
    /// Rows marked as duplicates by this pass (not counting rows a killed pass had listed).
    pub marked: u64,
    /// Shards rewritten.
    pub rewritten: Vec<u64>,
}

/// Dedupes the success rows of the complete `shards` of `dir` against each other and against
/// the parent version's index at `parent_index`; `phash_distance` as in `IngestConfig`.
pub fn dedupe_across_workers(
    dir: &Path,
    parent_index: Option<&Path>,
    phash_distance: Option<u32>,
    shards: &[u64],
) -> Result<CrossDedupe> {
    let mut index = match parent_index {
        Some(p) if p.exists() => DedupIndex::load(p)?,
        _ => DedupIndex::new(),
    };
    let mut marked = 0;
    // Shards to rewrite (rows marked now or by a killed pass), and the rows each shard's
    // duplicates name as their first copy.
    let mut to_mark = Vec::new();
    let mut named: Vec<HashSet<String>> = Vec::new();
    let mut late: HashMap<String, LateDuplicate> = HashMap::new();
    for &s in shards {
        let mut stats = read_stats(dir, s)?;
        let journal: HashSet<&str> = stats
            .late_duplicates
            .iter()
            .map(|d| d.key.as_str())
            .collect();
        let scan = scan_shard(dir, s, &journal, &mut index, phash_distance)?;
        named.push(scan.dup_of);
        if scan.pending || !scan.found.is_empty() {
            to_mark.push(s);
        }
        if !scan.found.is_empty() {
            marked += scan.found.len() as u64;
            write_journal(dir, s, &mut stats, scan.found)?;
        }
        late.extend(
            stats
                .late_duplicates
                .into_iter()
                .map(|d| (d.key.clone(), d)),
        );
    }
    // Rewrite the shards with rows to mark, and those whose duplicates name a row marked now
    // (a copy caught by its own worker as a duplicate of a row that turned out to be a copy
    // too): they get the first copy's key.
    let mut rewritten = Vec::new();
    for (&s, dup_of) in shards.iter().zip(&named) {
        if to_mark.contains(&s) || dup_of.iter().any(|k| late.contains_key(k)) {
            rewrite(dir, s, &late)?;
            rewritten.push(s);
        }
    }
    Ok(CrossDedupe {
        index,
        marked,
        rewritten,
    })
}

/// What the pass found in one shard.
struct ShardScan {
    /// Success rows that repeat an earlier row, with their JPEG's size.
    found: Vec<(LateDuplicate, u64)>,
    /// Whether rows listed by a killed pass are still marked success.
    pending: bool,
    /// The rows the shard's own duplicates name as their first copy.
    dup_of: HashSet<String>,
}

/// Checks the rows of shard `s` against `index` and adds them to it; the success rows listed
/// in the shard's `journal` are not checked again.
fn scan_shard(
    dir: &Path,
    s: u64,
    journal: &HashSet<&str>,
    index: &mut DedupIndex,
    phash_distance: Option<u32>,
) -> Result<ShardScan> {
    let parquet = dataset::parquet_path(dir, s);
    let mut scan = ShardScan {
        found: Vec::new(),
        pending: false,
        dup_of: HashSet::new(),
    };
    for batch in dataset::read_batches(&parquet, None, None)? {
        for row in dataset::batch_rows(&batch?)? {
            if row.status == Some(Status::Success) && journal.contains(row.key.as_str()) {
                scan.pending = true;
            } else if let Some(d) = check_row(index, &row, phash_distance)
                .with_context(|| format!("row {} of {}", row.key, parquet.display()))?
            {
                scan.found.push(d);
            }
            if let (Some(Status::Duplicate), Some(first)) = (row.status, row.dup_of) {
                scan.dup_of.insert(first);
            }
            let canon = crate::canon::canonical(&row.url).ok();
            index.add_existing(
                &row.key,
                canon.as_ref().map(|u| u.as_str()),
                &row.text,
                None,
            );
        }
    }
    Ok(scan)
}

/// Moves the rows `found` from success to duplicate in shard `s`'s counts, lists them in its
/// `late_duplicates` and writes its stats file (the pass's journal) atomically.
fn write_journal(
    dir: &Path,
    s: u64,
    stats: &mut ShardStats,
    found: Vec<(LateDuplicate, u64)>,
) -> Result<()> {
    for (d, bytes) in &found {
        let st = &mut stats.stats;
        for (status, delta) in [(Status::Success, -1i64), (Status::Duplicate, 1)] {
            let n = st.by_status.entry(status.as_str().into()).or_default();
            *n = n.saturating_add_signed(delta);
        }
        *st.dedupe.entry(d.kind.clone()).or_default() += 1;
        st.bytes_kept = st.bytes_kept.saturating_sub(*bytes);
    }
    stats
        .late_duplicates
        .extend(found.into_iter().map(|(d, _)| d));
    dataset::write_atomic(
        &dataset::stats_path(dir, s),
        &serde_json::to_vec_pretty(&*stats)?,
    )
}

fn read_stats(dir: &Path, s: u64) -> Result<ShardStats> {
    let path = dataset::stats_path(dir, s);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a shard stats file", path.display()))
}

/// A success row that repeats a row already in `index` (with its JPEG's size), or `None` after
/// adding its content to `index`. Other rows: `None`.
fn check_row(
    index: &mut DedupIndex,
    row: &Row,
    phash_distance: Option<u32>,
) -> Result<Option<(LateDuplicate, u64)>> {
    let (Some(Status::Success), Some(sha_hex), Some(phash)) = (row.status, &row.sha256, row.phash)
    else {
        return Ok(None);
    };
    let sha: [u8; 32] = hex_bytes(sha_hex).with_context(|| format!("bad sha256 {sha_hex:?}"))?;
    let jpg = row.jpg.as_deref().unwrap_or_default();
    // The mirrored hash and the thumbnail are not stored; they come from the stored JPEG (the
    // thumbnail goes into the version's index even when this run does not use pHash).
    let fp = crate::resizer::stored_fingerprint(jpg)
        .map(|fp| Fingerprint { hash: phash, ..fp })
        .map_err(|e| anyhow::anyhow!("cannot decode its JPEG: {e}"))?;
    Ok(index
        .check_content(&sha, Some(&fp), phash_distance, &row.key)
        .map(|(first, kind)| {
            let d = LateDuplicate {
                key: row.key.clone(),
                error_message: content_dup_message(&first, kind),
                dup_of: first,
                kind: kind.label().to_string(),
            };
            (d, jpg.len() as u64)
        }))
}

fn hex_bytes(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Rewrites shard `s`: the rows in `late` marked as duplicates, and duplicates of a row in
/// `late` pointed at that row's first copy.
fn rewrite(dir: &Path, s: u64, late: &HashMap<String, LateDuplicate>) -> Result<()> {
    let parquet = dataset::parquet_path(dir, s);
    let mut writer: Option<ShardWriter> = None;
    for batch in dataset::read_batches(&parquet, None, None)? {
        let batch = batch?;
        if writer.is_none() {
            let extra: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !dataset::COLUMNS.contains(&n.as_str()))
                .collect();
            writer = Some(ShardWriter::rewrite(dir, s, &extra)?);
        }
        let w = writer.as_mut().expect("set above");
        for mut row in dataset::batch_rows(&batch)? {
            match (row.status, late.get(&row.key)) {
                (Some(Status::Success), Some(d)) => {
                    row.status = Some(Status::Duplicate);
                    row.dup_of = Some(d.dup_of.clone());
                    row.error_message = Some(d.error_message.clone());
                    row.jpg = None;
                }
                (Some(Status::Duplicate), _) => {
                    if let Some(d) = row.dup_of.as_ref().and_then(|k| late.get(k)) {
                        row.error_message = Some(format!(
                            "{}; {} is a duplicate of {}",
                            row.error_message.as_deref().unwrap_or("duplicate"),
                            d.key,
                            d.dup_of
                        ));
                        row.dup_of = Some(d.dup_of.clone());
                    }
                }
                _ => {}
            }
            w.push(row)?;
        }
    }
    let Some(writer) = writer else {
        return Ok(());
    };
    // The stats file stays as the pass wrote it; only the Parquet size changes.
    writer.finish(read_stats(dir, s)?)?;
    Ok(())
}
