//! Reading a dataset version: a folder of Parquet shards in the format of DESIGN.md. Opening it
//! reads only the `status` column of every shard (to count the `success` rows the epoch order is
//! made of); the pictures and captions of a group of shards are read when the loader reaches it.
//! Columns are found by name and may be Utf8/LargeUtf8/Utf8View or Binary/LargeBinary/BinaryView.
use super::rng::derive_seed;
use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One shard and how many of its rows are usable.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    pub path: PathBuf,
    pub success_rows: usize,
}

/// The shards of a dataset version, in file-name order.
#[derive(Clone, Debug)]
pub struct DatasetIndex {
    pub dir: PathBuf,
    pub shards: Vec<ShardInfo>,
}

/// A usable row: what the loader turns into a training pair.
#[derive(Clone, Debug)]
pub struct Sample {
    pub key: String,
    pub text: String,
    pub jpg: Vec<u8>,
    /// Equal for rows that show the same picture (same `sha256`), so that their captions are
    /// never used as each other's negatives.
    pub image_id: i64,
}

impl DatasetIndex {
    pub fn open(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the dataset folder {}", dir.display()))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "parquet") {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            bail!("no Parquet shards (*.parquet) in {}", dir.display());
        }
        let shards = paths
            .into_iter()
            .map(|path| {
                let success_rows = count_success(&path)?;
                Ok(ShardInfo { path, success_rows })
            })
            .collect::<Result<Vec<_>>>()?;
        let index = Self {
            dir: dir.to_path_buf(),
            shards,
        };
        if index.total() == 0 {
            bail!(
                "no rows with status 'success' in the {} shards of {}",
                index.shards.len(),
                dir.display()
            );
        }
        Ok(index)
    }

    pub fn total(&self) -> usize {
        self.shards.iter().map(|s| s.success_rows).sum()
    }
}

fn open_reader(
    path: &Path,
    columns: &[&str],
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("reading the Parquet footer of {}", path.display()))?;
    let present: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| builder.schema().column_with_name(c).is_some())
        .collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), present);
    builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .with_context(|| format!("reading {}", path.display()))
}

fn count_success(path: &Path) -> Result<usize> {
    let mut count = 0;
    for batch in open_reader(path, &["status"])? {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let status = column(&batch, "status", path)?;
        count += (0..batch.num_rows())
            .filter(|&i| string_at(status, i) == Some("success"))
            .count();
    }
    Ok(count)
}

/// The `success` rows of one shard, in file order.
pub fn read_success_rows(path: &Path) -> Result<Vec<Sample>> {
    let wanted = ["key", "text", "caption", "status", "jpg", "sha256"];
    let mut samples = Vec::new();
    for batch in open_reader(path, &wanted)? {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let status = column(&batch, "status", path)?;
        let key = column(&batch, "key", path)?;
        let jpg = column(&batch, "jpg", path)?;
        let text = match batch.column_by_name("text") {
            Some(text) => text.as_ref(),
            None => column(&batch, "caption", path)?,
        };
        let sha256 = batch.column_by_name("sha256");
        for i in 0..batch.num_rows() {
            if string_at(status, i) != Some("success") {
                continue;
            }
            let key = string_at(key, i).unwrap_or_default().to_string();
            let Some(bytes) = binary_at(jpg, i) else {
                bail!("{}: success row {key} has no jpg bytes", path.display());
            };
            let digest = sha256.and_then(|c| string_at(c.as_ref(), i));
            samples.push(Sample {
                image_id: image_id(digest, &key),
                text: string_at(text, i).unwrap_or_default().to_string(),
                jpg: bytes.to_vec(),
                key,
            });
        }
    }
    Ok(samples)
}

/// A non-negative 63-bit id: the leading hex digits of the picture's sha256, or a hash of the
/// key when the shard has no hash.
fn image_id(sha256: Option<&str>, key: &str) -> i64 {
    let from_hash = sha256
        .and_then(|h| h.get(..15))
        .and_then(|h| i64::from_str_radix(h, 16).ok());
    from_hash.unwrap_or_else(|| {
        let words: Vec<u64> = key.bytes().map(u64::from).collect();
        (derive_seed(&words) >> 1) as i64
    })
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .with_context(|| format!("{} has no `{name}` column", path.display()))
}

fn string_at(column: &dyn Array, i: usize) -> Option<&str> {
    if column.is_null(i) {
        return None;
    }
    match column.data_type() {
        DataType::Utf8 => Some(column.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(column.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(column.as_string_view().value(i)),
        _ => None,
    }
}

fn binary_at(column: &dyn Array, i: usize) -> Option<&[u8]> {
    if column.is_null(i) {
        return None;
    }
    match column.data_type() {
        DataType::Binary => Some(column.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(column.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(column.as_binary_view().value(i)),
        _ => None,
    }
}
