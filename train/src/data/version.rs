//! Reading a dataset version for training: a folder of Parquet shards in the format of
//! `albef-dataset` (docs/architecture.md, The shard format), read through its reader. Opening it
//! reads only the `status` column of every shard (and `score` for score-weighted training) to
//! count the usable rows the epoch order is made of; the pictures and captions of a group of
//! shards are read when the loader reaches it. Columns are found by name and may be
//! Utf8/LargeUtf8/Utf8View or Binary/LargeBinary/BinaryView.
use albef_dataset::read::{binary_at, column, read_present, string_at};
use albef_dataset::seed::derive_seed;
use albef_dataset::{Status, CAPTION, JPG, KEY, SCORE, SHA256, STATUS, TEXT};
use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use std::path::{Path, PathBuf};

/// Which rows of a dataset version make training pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rows {
    /// Rows with status `success` (of a filtered version: the kept ones).
    #[default]
    Success,
    /// Every row the filter scored: `success` and `filtered_out`, each with its `score`
    /// (score-weighted training). The shards must have the filter's `score` column.
    Scored,
}

impl Rows {
    fn admits(self, status: Option<&str>) -> bool {
        match self {
            Rows::Success => status == Some(Status::Success.as_str()),
            Rows::Scored => {
                status == Some(Status::Success.as_str())
                    || status == Some(Status::FilteredOut.as_str())
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Rows::Success => "rows with status 'success'",
            Rows::Scored => "rows with status 'success' or 'filtered_out'",
        }
    }
}

/// One shard and how many of its rows are usable.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    pub path: PathBuf,
    pub usable_rows: usize,
}

/// The shards of a dataset version, in file-name order.
#[derive(Clone, Debug)]
pub struct DatasetIndex {
    pub dir: PathBuf,
    pub rows: Rows,
    pub shards: Vec<ShardInfo>,
    /// The `score` of every usable row that has one (only read for [`Rows::Scored`]).
    pub scores: Vec<f32>,
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
    /// The filter's score (read only for [`Rows::Scored`]; None where the row has none).
    pub score: Option<f32>,
}

impl DatasetIndex {
    pub fn open(dir: &Path, rows: Rows) -> Result<Self> {
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
        let mut scores = Vec::new();
        let shards = paths
            .into_iter()
            .map(|path| {
                let usable_rows = count_usable(&path, rows, &mut scores)?;
                Ok(ShardInfo { path, usable_rows })
            })
            .collect::<Result<Vec<_>>>()?;
        let index = Self {
            dir: dir.to_path_buf(),
            rows,
            shards,
            scores,
        };
        if index.total() == 0 {
            bail!(
                "no {} in the {} shards of {}",
                rows.describe(),
                index.shards.len(),
                dir.display()
            );
        }
        Ok(index)
    }

    pub fn total(&self) -> usize {
        self.shards.iter().map(|s| s.usable_rows).sum()
    }
}

/// Counts the usable rows of a shard; for [`Rows::Scored`] also collects their scores.
fn count_usable(path: &Path, rows: Rows, scores: &mut Vec<f32>) -> Result<usize> {
    let mut count = 0;
    for batch in read_present(path, &[STATUS, SCORE])? {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let status = column(&batch, STATUS, path)?;
        let score = score_column(&batch, rows, path)?;
        for i in 0..batch.num_rows() {
            if rows.admits(string_at(status, i)) {
                count += 1;
                scores.extend(score.and_then(|c| float_at(c, i)));
            }
        }
    }
    Ok(count)
}

/// The usable rows of one shard, in file order.
pub fn read_rows(path: &Path, rows: Rows) -> Result<Vec<Sample>> {
    let wanted = [KEY, TEXT, CAPTION, STATUS, JPG, SHA256, SCORE];
    let mut samples = Vec::new();
    for batch in read_present(path, &wanted)? {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let status = column(&batch, STATUS, path)?;
        let key = column(&batch, KEY, path)?;
        let jpg = column(&batch, JPG, path)?;
        let text = match batch.column_by_name(TEXT) {
            Some(text) => text.as_ref(),
            None => column(&batch, CAPTION, path)?,
        };
        let sha256 = batch.column_by_name(SHA256);
        let score = score_column(&batch, rows, path)?;
        for i in 0..batch.num_rows() {
            let status = string_at(status, i);
            if !rows.admits(status) {
                continue;
            }
            let key = string_at(key, i).unwrap_or_default().to_string();
            let Some(bytes) = binary_at(jpg, i) else {
                bail!(
                    "{}: {} row {key} has no jpg bytes",
                    path.display(),
                    status.unwrap_or_default()
                );
            };
            let digest = sha256.and_then(|c| string_at(c.as_ref(), i));
            samples.push(Sample {
                image_id: image_id(digest, &key),
                text: string_at(text, i).unwrap_or_default().to_string(),
                jpg: bytes.to_vec(),
                score: score.and_then(|c| float_at(c, i)),
                key,
            });
        }
    }
    Ok(samples)
}

/// The f32 `score` column for [`Rows::Scored`] (an error naming the shard when it has none),
/// None for [`Rows::Success`].
fn score_column<'a>(
    batch: &'a RecordBatch,
    rows: Rows,
    path: &Path,
) -> Result<Option<&'a dyn Array>> {
    if rows == Rows::Success {
        return Ok(None);
    }
    let Some(score) = batch.column_by_name(SCORE) else {
        bail!(
            "{} has no `{SCORE}` column: score-weighted training needs a dataset version made by \
             `albef filter`",
            path.display()
        );
    };
    if score.data_type() != &DataType::Float32 {
        bail!(
            "{}: the `{SCORE}` column is {}, expected Float32",
            path.display(),
            score.data_type()
        );
    }
    Ok(Some(score.as_ref()))
}

fn float_at(column: &dyn Array, i: usize) -> Option<f32> {
    (!column.is_null(i)).then(|| column.as_primitive::<Float32Type>().value(i))
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
