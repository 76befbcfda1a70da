//! The dataset format every stage reads: one Parquet file (zstd) per shard with a fixed column
//! set, written atomically (temporary name, fsync, rename) with its `{shard}.stats.json` last,
//! so that a shard whose stats file exists is complete. Other stages use [`read_batches`] and
//! [`read_rows`] to take the rows they need (usually `status = success`).
use anyhow::{Context, Result};
use arrow_array::builder::{
    BinaryBuilder, Int32Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const KEY: &str = "key";
pub const URL: &str = "url";
pub const CAPTION: &str = "caption";
pub const TEXT: &str = "text";
pub const STATUS: &str = "status";
pub const ERROR_MESSAGE: &str = "error_message";
pub const HTTP_STATUS: &str = "http_status";
pub const WIDTH: &str = "width";
pub const HEIGHT: &str = "height";
pub const ORIGINAL_WIDTH: &str = "original_width";
pub const ORIGINAL_HEIGHT: &str = "original_height";
pub const SHA256: &str = "sha256";
pub const PHASH: &str = "phash";
pub const DUP_OF: &str = "dup_of";
pub const JPG: &str = "jpg";
pub const FETCHED_AT: &str = "fetched_at";

/// The fixed columns, in file order; kept input columns follow them.
pub const COLUMNS: [&str; 16] = [
    KEY,
    URL,
    CAPTION,
    TEXT,
    STATUS,
    ERROR_MESSAGE,
    HTTP_STATUS,
    WIDTH,
    HEIGHT,
    ORIGINAL_WIDTH,
    ORIGINAL_HEIGHT,
    SHA256,
    PHASH,
    DUP_OF,
    JPG,
    FETCHED_AT,
];

/// What happened to an input row. Readers train on `Success` rows only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Success,
    FailedToDownload,
    FailedToDecode,
    FilteredOut,
    Duplicate,
    OptedOut,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Success,
        Status::FailedToDownload,
        Status::FailedToDecode,
        Status::FilteredOut,
        Status::Duplicate,
        Status::OptedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FailedToDownload => "failed_to_download",
            Status::FailedToDecode => "failed_to_decode",
            Status::FilteredOut => "filtered_out",
            Status::Duplicate => "duplicate",
            Status::OptedOut => "opted_out",
        }
    }

    pub fn parse(s: &str) -> Result<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .with_context(|| format!("unknown row status {s:?}"))
    }
}

/// One output row. `extra` holds the kept input columns, in the order of the schema.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub key: String,
    pub url: String,
    pub caption: Option<String>,
    pub text: String,
    pub status: Option<Status>,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub original_width: Option<i32>,
    pub original_height: Option<i32>,
    pub sha256: Option<String>,
    pub phash: Option<u64>,
    pub dup_of: Option<String>,
    pub jpg: Option<Vec<u8>>,
    /// Microseconds since the Unix epoch.
    pub fetched_at: Option<i64>,
    pub extra: Vec<Option<String>>,
}

/// The Arrow schema of a shard whose kept input columns are `extra` (all strings).
pub fn schema(extra: &[String]) -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int32, true);
    let mut fields = vec![
        s(KEY, false),
        s(URL, false),
        s(CAPTION, true),
        s(TEXT, false),
        s(STATUS, false),
        s(ERROR_MESSAGE, true),
        i(HTTP_STATUS),
        i(WIDTH),
        i(HEIGHT),
        i(ORIGINAL_WIDTH),
        i(ORIGINAL_HEIGHT),
        s(SHA256, true),
        Field::new(PHASH, DataType::UInt64, true),
        s(DUP_OF, true),
        Field::new(JPG, DataType::Binary, true),
        Field::new(
            FETCHED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ];
    fields.extend(extra.iter().map(|name| s(name, true)));
    Arc::new(Schema::new(fields))
}

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
    let mut shards = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(shards),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".stats.json") {
            if let Ok(n) = n.parse::<u64>() {
                shards.push(n);
            }
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

/// Writes `bytes` to `path` atomically: a temporary name in the same folder, fsync, rename,
/// fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    commit_tmp(&tmp, path)
}

/// `{name}.tmp-{pid}-{n}`: unique to this process and, through `n`, to this writer, so that two
/// writers of one path (workers finishing a version at once) never share a temporary file.
fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Removes the temporary files of `paths` (in `dir`) that a killed run left behind. Only the
/// one writer of those paths may call it (a shard belongs to one worker at a time).
fn remove_stale_tmp(dir: &Path, paths: &[&Path]) -> Result<()> {
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

fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot fsync folder {}", dir.display()))?;
    }
    Ok(())
}

/// Rows buffered before they go to the Parquet writer as one batch (bounds memory per shard).
const BATCH_ROWS: usize = 128;

/// Streams rows of one shard into `{shard}.parquet` under a temporary name; [`finish`] makes it
/// visible. Dropping it unfinished removes the temporary file.
///
/// [`finish`]: ShardWriter::finish
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    stats: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    pending: Vec<Row>,
    rows: u64,
}

impl ShardWriter {
    /// A writer of a new shard (its owner's temporary files of an earlier attempt removed).
    pub fn create(dir: &Path, shard: u64, extra: &[String]) -> Result<ShardWriter> {
        remove_stale_tmp(dir, &[&parquet_path(dir, shard), &stats_path(dir, shard)])?;
        Self::rewrite(dir, shard, extra)
    }

    /// A writer that replaces a complete shard; other processes may be rewriting it too (each
    /// with its own temporary name), so no temporary file is removed.
    pub fn rewrite(dir: &Path, shard: u64, extra: &[String]) -> Result<ShardWriter> {
        let path = parquet_path(dir, shard);
        let stats = stats_path(dir, shard);
        let tmp = tmp_path(&path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let schema = schema(extra);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            // JPEG bytes do not compress; spending zstd on them only costs time.
            .set_column_compression(ColumnPath::from(JPG), Compression::UNCOMPRESSED)
            .set_max_row_group_row_count(Some(1024))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .with_context(|| format!("cannot start Parquet writer for {}", tmp.display()))?;
        Ok(ShardWriter {
            path,
            tmp,
            stats,
            schema,
            writer: Some(writer),
            pending: Vec::with_capacity(BATCH_ROWS),
            rows: 0,
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

    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.schema, &self.pending)?;
        self.pending.clear();
        let writer = self
            .writer
            .as_mut()
            .context("shard writer already finished")?;
        writer
            .write(&batch)
            .with_context(|| format!("cannot write rows to {}", self.tmp.display()))
    }

    /// Closes, fsyncs and renames the Parquet file, then writes the stats file (last,
    /// atomically) made by `stats` from the Parquet file's size. Returns that size.
    pub fn finish(mut self, stats: impl FnOnce(u64) -> serde_json::Value) -> Result<u64> {
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
        let bytes = file.metadata()?.len();
        drop(file);
        commit_tmp(&self.tmp, &self.path)?;
        write_atomic(&self.stats, &serde_json::to_vec_pretty(&stats(bytes))?)?;
        Ok(bytes)
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

/// Record batches of a shard, only the rows with `status` (all rows when `None`), only the
/// named `columns` (all when `None`; the status filter works either way).
pub fn read_batches(
    path: &Path,
    status: Option<Status>,
    columns: Option<&[&str]>,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let file = File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet shard", path.display()))?;
    let arrow_schema = builder.schema().clone();
    let mut wanted: Option<Vec<usize>> = None;
    if let Some(cols) = columns {
        let mut idx = Vec::new();
        for c in cols.iter().chain(status.is_some().then_some(&STATUS)) {
            let i = arrow_schema
                .index_of(c)
                .with_context(|| format!("shard {} has no column {c:?}", path.display()))?;
            if !idx.contains(&i) {
                idx.push(i);
            }
        }
        idx.sort_unstable();
        wanted = Some(idx);
    }
    let builder = match &wanted {
        Some(idx) => {
            let mask = ProjectionMask::roots(builder.parquet_schema(), idx.iter().copied());
            builder.with_projection(mask)
        }
        None => builder,
    };
    let reader = builder
        .with_batch_size(1024)
        .build()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let path = path.to_path_buf();
    let keep: Option<Vec<String>> = columns.map(|c| c.iter().map(|s| s.to_string()).collect());
    Ok(reader.map(move |batch| {
        let batch = batch.with_context(|| format!("cannot read a batch of {}", path.display()))?;
        let batch = match status {
            Some(st) => {
                let col = string_col(&batch, STATUS)?;
                let mask: BooleanArray = col.iter().map(|v| Some(v == Some(st.as_str()))).collect();
                arrow_select_filter(&batch, &mask)?
            }
            None => batch,
        };
        match &keep {
            Some(cols) => {
                let idx = cols
                    .iter()
                    .map(|c| batch.schema().index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(batch.project(&idx)?)
            }
            None => Ok(batch),
        }
    }))
}

fn arrow_select_filter(batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch> {
    Ok(arrow_select::filter::filter_record_batch(batch, mask)?)
}

/// A string column of a batch by name.
pub fn string_col<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .with_context(|| format!("no column {name:?}"))?
        .as_any()
        .downcast_ref::<StringArray>()
        .with_context(|| format!("column {name:?} is not a string column"))
}

fn typed_col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch.column_by_name(name)?.as_any().downcast_ref::<T>()
}

/// Whole rows of a shard (with status `status` when given), kept columns in `extra`.
pub fn read_rows(path: &Path, status: Option<Status>) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for batch in read_batches(path, status, None)? {
        out.extend(batch_rows(&batch?)?);
    }
    Ok(out)
}

/// Converts a batch (any subset of the shard columns) into rows; missing columns stay empty.
pub fn batch_rows(batch: &RecordBatch) -> Result<Vec<Row>> {
    let s = |name: &str| typed_col::<StringArray>(batch, name);
    let i = |name: &str| typed_col::<Int32Array>(batch, name);
    let get_s = |a: Option<&StringArray>, r: usize| {
        a.and_then(|a| (!a.is_null(r)).then(|| a.value(r).to_string()))
    };
    let get_i =
        |a: Option<&Int32Array>, r: usize| a.and_then(|a| (!a.is_null(r)).then(|| a.value(r)));
    let (key, url, caption, text, status, err) = (
        s(KEY),
        s(URL),
        s(CAPTION),
        s(TEXT),
        s(STATUS),
        s(ERROR_MESSAGE),
    );
    let (http, w, h, ow, oh) = (
        i(HTTP_STATUS),
        i(WIDTH),
        i(HEIGHT),
        i(ORIGINAL_WIDTH),
        i(ORIGINAL_HEIGHT),
    );
    let (sha, dup) = (s(SHA256), s(DUP_OF));
    let phash = typed_col::<UInt64Array>(batch, PHASH);
    let jpg = typed_col::<BinaryArray>(batch, JPG);
    let fetched = typed_col::<TimestampMicrosecondArray>(batch, FETCHED_AT);
    let schema = batch.schema();
    let extra: Vec<&StringArray> = schema
        .fields()
        .iter()
        .filter(|f| !COLUMNS.contains(&f.name().as_str()))
        .filter_map(|f| typed_col::<StringArray>(batch, f.name()))
        .collect();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let status = match get_s(status, r) {
            Some(st) => Some(Status::parse(&st)?),
            None => None,
        };
        rows.push(Row {
            key: get_s(key, r).unwrap_or_default(),
            url: get_s(url, r).unwrap_or_default(),
            caption: get_s(caption, r),
            text: get_s(text, r).unwrap_or_default(),
            status,
            error_message: get_s(err, r),
            http_status: get_i(http, r),
            width: get_i(w, r),
            height: get_i(h, r),
            original_width: get_i(ow, r),
            original_height: get_i(oh, r),
            sha256: get_s(sha, r),
            phash: phash.and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
            dup_of: get_s(dup, r),
            jpg: jpg.and_then(|a| (!a.is_null(r)).then(|| a.value(r).to_vec())),
            fetched_at: fetched.and_then(|a| (!a.is_null(r)).then(|| a.value(r))),
            extra: extra.iter().map(|a| get_s(Some(a), r)).collect(),
        });
    }
    Ok(rows)
}
