//! Writes the corpus straight as a dataset version, without HTTP or ingest, through the one
//! shard writer of `albef-dataset`: the loader's and filter's tests and `scripts/bench-loader`
//! read these. Every row is a success with its picture, caption, cleaned text, sizes and
//! sha256, plus the corpus's `clean` column (`true`/`false`), the ground truth of the filter
//! benchmark.
use super::generate::{read_pairs, Split};
use albef_dataset::caption::{pre_caption, MAX_WORDS};
use albef_dataset::{Row, ShardWriter, Stats, Status};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Cursor;
use std::path::Path;

/// The extra column that says whether a pair's caption is the true one.
pub const CLEAN: &str = "clean";

/// A successful row for a JPEG; sizes and hash come from the bytes.
pub fn success_row(key: String, url: String, caption: &str, jpg: Vec<u8>) -> Result<Row> {
    let (width, height) = jpeg_size(&jpg).with_context(|| format!("row {key}: JPEG header"))?;
    Ok(Row {
        text: pre_caption(caption, MAX_WORDS),
        caption: Some(caption.into()),
        status: Some(Status::Success),
        http_status: Some(200),
        width: Some(width as i32),
        height: Some(height as i32),
        original_width: Some(width as i32),
        original_height: Some(height as i32),
        sha256: Some(format!("{:x}", Sha256::digest(&jpg))),
        jpg: Some(jpg),
        key,
        url,
        ..Default::default()
    })
}

/// Width and height from a JPEG's headers.
pub fn jpeg_size(jpg: &[u8]) -> Result<(u32, u32)> {
    image::ImageReader::with_format(Cursor::new(jpg), image::ImageFormat::Jpeg)
        .into_dimensions()
        .context("no JPEG dimensions in the headers")
}

/// Writes `rows` (kept input columns `extra`) as shard `shard` of the version in `dir`, with its
/// stats file, through the dataset writer.
pub fn write_shard(dir: &Path, shard: u64, extra: &[String], rows: Vec<Row>) -> Result<()> {
    let mut writer = ShardWriter::create(dir, shard, extra)?;
    let mut stats = Stats::default();
    for row in rows {
        stats.count(row.status.unwrap_or(Status::FailedToDownload));
        writer.push(row)?;
    }
    let record = writer.record(stats);
    writer.finish(record)?;
    Ok(())
}

/// Writes the `split` rows of the corpus in `corpus` as shards of `rows_per_shard` rows into
/// `out` (`00000.parquet`, `00001.parquet`, ...), every row a success. Returns the row count.
pub fn corpus_to_shards(
    corpus: &Path,
    split: Split,
    out: &Path,
    rows_per_shard: usize,
) -> Result<usize> {
    if rows_per_shard == 0 || rows_per_shard > 99_999 {
        bail!("rows per shard must lie in 1..=99999, not {rows_per_shard}");
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pairs: Vec<_> = read_pairs(corpus)?
        .into_iter()
        .filter(|p| p.split == split)
        .collect();
    for (shard, chunk) in pairs.chunks(rows_per_shard).enumerate() {
        let rows = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let file = corpus.join(&p.path);
                let jpg = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let mut row = success_row(
                    format!("{shard:05}{i:05}"),
                    format!("file:///{}", p.path),
                    &p.caption,
                    jpg,
                )?;
                row.extra = vec![Some(p.clean().to_string())];
                Ok(row)
            })
            .collect::<Result<Vec<_>>>()?;
        write_shard(out, shard as u64, &[CLEAN.to_string()], rows)?;
    }
    Ok(pairs.len())
}
