//! Writes Parquet shards in the dataset format of DESIGN.md straight from a generated corpus,
//! without HTTP or ingest: the loader's tests and `scripts/bench-loader` read these, so they do
//! not depend on the ingest stage. Ingest remains the owner of the format; this writer fills the
//! columns the readers use (`key`, `url`, `caption`, `text`, `status`, `error_message`,
//! `http_status`, sizes, `sha256`, `dup_of`, `jpg`) plus the corpus's `clean` column.
use super::generate::{read_pairs, Split};
use albef_ingest::caption::{pre_caption, MAX_WORDS};
use anyhow::{bail, Context, Result};
use arrow_array::{ArrayRef, BinaryArray, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// One row of a shard. `jpg` is `None` unless `status` is `success`.
#[derive(Clone, Debug, Default)]
pub struct ShardRow {
    pub key: String,
    pub url: String,
    pub caption: String,
    pub text: String,
    pub status: String,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub sha256: Option<String>,
    pub dup_of: Option<String>,
    pub jpg: Option<Vec<u8>>,
    pub clean: Option<bool>,
}

impl ShardRow {
    /// A successful row for a JPEG; sizes and hash come from the bytes.
    pub fn success(key: String, url: String, caption: &str, jpg: Vec<u8>) -> Result<Self> {
        let (width, height) = jpeg_size(&jpg).with_context(|| format!("row {key}: JPEG header"))?;
        Ok(Self {
            text: pre_caption(caption, MAX_WORDS),
            caption: caption.into(),
            status: "success".into(),
            http_status: Some(200),
            width: Some(width as i32),
            height: Some(height as i32),
            sha256: Some(format!("{:x}", Sha256::digest(&jpg))),
            jpg: Some(jpg),
            key,
            url,
            ..Default::default()
        })
    }
}

/// Width and height from a JPEG's headers.
pub fn jpeg_size(jpg: &[u8]) -> Result<(usize, usize)> {
    let mut decoder =
        zune_jpeg::JpegDecoder::new(zune_jpeg::zune_core::bytestream::ZCursor::new(jpg));
    decoder
        .decode_headers()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    decoder.dimensions().context("no dimensions in the headers")
}

fn schema() -> Schema {
    let utf8 = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let int = |name: &str| Field::new(name, DataType::Int32, true);
    Schema::new(vec![
        utf8("key", false),
        utf8("url", false),
        utf8("caption", false),
        utf8("text", false),
        utf8("status", false),
        utf8("error_message", true),
        int("http_status"),
        int("width"),
        int("height"),
        int("original_width"),
        int("original_height"),
        utf8("sha256", true),
        utf8("dup_of", true),
        Field::new("jpg", DataType::Binary, true),
        Field::new("clean", DataType::Boolean, true),
    ])
}

/// Writes `rows` to `path` (`{shard}.parquet`, zstd) and `{shard}.stats.json` beside it, each
/// through a temporary name, fsync and rename, the stats file last.
pub fn write_shard(path: &Path, rows: &[ShardRow]) -> Result<()> {
    let strings = |f: &dyn Fn(&ShardRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let optional = |f: &dyn Fn(&ShardRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&ShardRow) -> Option<i32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int32Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.key),
        strings(&|r| &r.url),
        strings(&|r| &r.caption),
        strings(&|r| &r.text),
        strings(&|r| &r.status),
        optional(&|r| r.error_message.as_deref()),
        ints(&|r| r.http_status),
        ints(&|r| r.width),
        ints(&|r| r.height),
        ints(&|r| r.width),
        ints(&|r| r.height),
        optional(&|r| r.sha256.as_deref()),
        optional(&|r| r.dup_of.as_deref()),
        Arc::new(
            rows.iter()
                .map(|r| r.jpg.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(rows.iter().map(|r| r.clean).collect::<BooleanArray>()),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema()), columns)
        .with_context(|| format!("building the rows of {}", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(1024))
        .build();
    let partial = path.with_extension("parquet.partial");
    let file =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(&batch)?;
    let file = writer
        .into_inner()
        .with_context(|| format!("finishing {}", partial.display()))?;
    file.sync_all()?;
    fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))?;

    let successes = rows.iter().filter(|r| r.status == "success").count();
    let stats = serde_json::json!({ "count": rows.len(), "successes": successes });
    let stats_path = path.with_extension("stats.json");
    let partial = path.with_extension("stats.json.partial");
    let mut file = fs::File::create(&partial)?;
    file.write_all(stats.to_string().as_bytes())?;
    file.sync_all()?;
    fs::rename(&partial, &stats_path)
        .with_context(|| format!("renaming to {}", stats_path.display()))
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
                let mut row = ShardRow::success(
                    format!("{shard:05}{i:05}"),
                    format!("file:///{}", p.path),
                    &p.caption,
                    jpg,
                )?;
                row.clean = Some(p.clean());
                Ok(row)
            })
            .collect::<Result<Vec<_>>>()?;
        write_shard(&out.join(format!("{shard:05}.parquet")), &rows)?;
    }
    Ok(pairs.len())
}
