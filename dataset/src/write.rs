//! The one shard writer: ingest streams rows into it, the filter stage streams the source's
//! record batches with its score columns added, and the synthetic corpus writes its pictures
//! with it. Settings (zstd, JPEG bytes uncompressed, row groups of 1,024) live here alone.
use crate::files::{commit_tmp, remove_stale_tmp, tmp_path, write_atomic};
use crate::layout::{parquet_path, stats_path};
use crate::schema::{schema, Row, Status, COLUMNS, JPG};
use crate::stats::{ShardStats, Stats};
use anyhow::{Context, Result};
use arrow_array::builder::{
    BinaryBuilder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Rows buffered before they go to the Parquet writer as one batch (bounds memory per shard).
const BATCH_ROWS: usize = 128;

/// The Parquet settings of every shard: zstd level 3, JPEG bytes stored as they are (they do
/// not compress; spending zstd on them only costs time), row groups of 1,024 rows.
fn properties() -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_column_compression(ColumnPath::from(JPG), Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(1024))
        .build())
}

/// Streams one shard into `{shard}.parquet` under a temporary name, as [`Row`]s ([`push`]) or
/// as record batches of its schema ([`write_batch`]); [`finish`] makes it visible and writes
/// its stats file last. Dropping it unfinished removes the temporary file.
///
/// [`push`]: ShardWriter::push
/// [`write_batch`]: ShardWriter::write_batch
/// [`finish`]: ShardWriter::finish
pub struct ShardWriter {
    shard: u64,
    path: PathBuf,
    tmp: PathBuf,
    stats: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    pending: Vec<Row>,
    rows: u64,
    started: chrono::DateTime<chrono::Utc>,
    clock: Instant,
}

impl ShardWriter {
    /// A writer of a new shard of rows whose kept input columns are `extra` (its owner's
    /// temporary files of an earlier attempt removed).
    pub fn create(dir: &Path, shard: u64, extra: &[String]) -> Result<ShardWriter> {
        Self::create_with_schema(dir, shard, schema(extra))
    }

    /// A writer of a new shard of record batches of `schema`: the shard columns first, then
    /// whatever a stage adds (the filter's score columns).
    pub fn create_with_schema(dir: &Path, shard: u64, schema: SchemaRef) -> Result<ShardWriter> {
        remove_stale_tmp(dir, &[&parquet_path(dir, shard), &stats_path(dir, shard)])?;
        Self::open(dir, shard, schema)
    }

    /// A writer that replaces a complete shard; other processes may be rewriting it too (each
    /// with its own temporary name), so no temporary file is removed.
    pub fn rewrite(dir: &Path, shard: u64, extra: &[String]) -> Result<ShardWriter> {
        Self::open(dir, shard, schema(extra))
    }

    fn open(dir: &Path, shard: u64, schema: SchemaRef) -> Result<ShardWriter> {
        let path = parquet_path(dir, shard);
        let tmp = tmp_path(&path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties()?))
            .with_context(|| format!("cannot start Parquet writer for {}", tmp.display()))?;
        Ok(ShardWriter {
            shard,
            stats: stats_path(dir, shard),
            path,
            tmp,
            schema,
            writer: Some(writer),
            pending: Vec::with_capacity(BATCH_ROWS),
            rows: 0,
            started: chrono::Utc::now(),
            clock: Instant::now(),
        })
    }

    pub fn push(&mut self, row: Row) -> Result<()> {
        self.pending.push(row);
        self.rows += 1;
        if self.pending.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes a batch of the writer's schema (after any pushed rows).
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.flush()?;
        self.rows += batch.num_rows() as u64;
        self.parquet()?
            .write(batch)
            .with_context(|| format!("cannot write rows to {}", self.tmp.display()))
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn parquet(&mut self) -> Result<&mut ArrowWriter<File>> {
        self.writer
            .as_mut()
            .context("shard writer already finished")
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.schema, &self.pending)?;
        self.pending.clear();
        let tmp = self.tmp.display().to_string();
        self.parquet()?
            .write(&batch)
            .with_context(|| format!("cannot write rows to {tmp}"))
    }

    /// The stats record of this shard with `stats` and the writer's start and end times, for
    /// the caller to amend before [`finish`](ShardWriter::finish).
    pub fn record(&self, stats: Stats) -> ShardStats {
        ShardStats {
            shard: self.shard,
            started_at: self.started.to_rfc3339(),
            finished_at: chrono::Utc::now().to_rfc3339(),
            duration_s: self.clock.elapsed().as_secs_f64(),
            parquet_bytes: 0,
            stats,
            source: None,
            late_duplicates: Vec::new(),
        }
    }

    /// Closes, fsyncs and renames the Parquet file, then writes `record` as the stats file
    /// (last, atomically) with the Parquet file's size in `parquet_bytes`. Returns the record.
    pub fn finish(mut self, mut record: ShardStats) -> Result<ShardStats> {
        self.flush()?;
        let writer = self
            .writer
            .take()
            .context("shard writer already finished")?;
        let file = writer
            .into_inner()
            .with_context(|| format!("cannot close {}", self.tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", self.tmp.display()))?;
        record.parquet_bytes = file.metadata()?.len();
        drop(file);
        commit_tmp(&self.tmp, &self.path)?;
        write_atomic(&self.stats, &serde_json::to_vec_pretty(&record)?)?;
        Ok(record)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn to_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let n = rows.len();
    let strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let ints = |f: &dyn Fn(&Row) -> Option<i32>| -> ArrayRef {
        let mut b = Int32Builder::with_capacity(n);
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let mut phash = UInt64Builder::with_capacity(n);
    let mut jpg = BinaryBuilder::with_capacity(
        n,
        rows.iter()
            .map(|r| r.jpg.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    let mut fetched = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        phash.append_option(r.phash);
        jpg.append_option(r.jpg.as_deref());
        fetched.append_option(r.fetched_at);
    }
    let mut columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(&r.key)),
        strings(&|r| Some(&r.url)),
        strings(&|r| r.caption.as_deref()),
        strings(&|r| Some(&r.text)),
        strings(&|r| Some(r.status.unwrap_or(Status::FailedToDownload).as_str())),
        strings(&|r| r.error_message.as_deref()),
        ints(&|r| r.http_status),
        ints(&|r| r.width),
        ints(&|r| r.height),
        ints(&|r| r.original_width),
        ints(&|r| r.original_height),
        strings(&|r| r.sha256.as_deref()),
        Arc::new(phash.finish()),
        strings(&|r| r.dup_of.as_deref()),
        Arc::new(jpg.finish()),
        Arc::new(fetched.finish()),
    ];
    let extra = schema.fields().len() - COLUMNS.len();
    for i in 0..extra {
        columns.push(strings(&|r| r.extra.get(i).and_then(|v| v.as_deref())));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
