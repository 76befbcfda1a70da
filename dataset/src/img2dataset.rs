//! img2dataset's output folders, read as albef shards without copying a picture. img2dataset
//! (the tool most teams download image-text pairs with) writes, per shard, `{shard:05}.parquet`
//! and, last, `{shard:05}_stats.json`. With `--output_format parquet` the Parquet file holds
//! the pictures in a `jpg` column; with `--output_format webdataset` it holds the metadata only
//! and the pictures lie in `{shard:05}.tar` as `{key}.jpg` beside `{key}.txt` and `{key}.json`.
//!
//! Its columns are albef's where the two overlap (`key`, `url`, `caption`, `status`,
//! `error_message`, `width`, `height`, `original_width`, `original_height`, `sha256`, `jpg`);
//! the differences, each handled here as the reader normalises a batch (see [`normalize`]):
//! - `status` `failed_to_resize` is albef's `failed_to_decode` (the picture could not be
//!   decoded or resized);
//! - there is no `text` column: it is made from `caption` with ALBEF's `pre_caption`, as
//!   ingest makes it;
//! - the webdataset layout has no `jpg` column: it is read from the shard's tar by key, through
//!   an index of the tar's members made once per shard ([`TarImages`]), so memory holds one
//!   batch of pictures, not the shard;
//! - the extra `exif` column is kept like any input column; `phash`, `dup_of`, `http_status`
//!   and `fetched_at` are absent and read as empty.
//!
//! The stats file is `_stats.json` where albef writes `.stats.json`; [`inspect`] takes a shard
//! as complete when that file exists, as img2dataset's own resume does.
use crate::caption::{pre_caption, MAX_WORDS};
use crate::read::string_at;
use crate::schema::{Status, CAPTION, JPG, KEY, STATUS, TEXT};
use anyhow::{bail, Context, Result};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// img2dataset's status for a picture it could not decode or resize.
const FAILED_TO_RESIZE: &str = "failed_to_resize";

/// The two img2dataset output layouts a folder can be registered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `--output_format parquet`: pictures in the Parquet file's `jpg` column.
    Img2datasetParquet,
    /// `--output_format webdataset`: metadata in Parquet, pictures in `{shard:05}.tar`.
    Img2datasetWebdataset,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Img2datasetParquet => "img2dataset-parquet",
            Layout::Img2datasetWebdataset => "img2dataset-webdataset",
        }
    }
}

/// One complete img2dataset shard.
#[derive(Clone, Debug, Serialize)]
pub struct Img2datasetShard {
    pub index: u64,
    pub parquet: PathBuf,
    /// The pictures of a webdataset shard.
    pub tar: Option<PathBuf>,
    pub rows: u64,
    /// Rows by albef status (`failed_to_resize` counted as `failed_to_decode`).
    pub by_status: BTreeMap<String, u64>,
    /// img2dataset's own `{shard:05}_stats.json`, as it wrote it.
    pub img2dataset_stats: serde_json::Value,
}

/// An img2dataset folder: its layout and its complete shards, in shard order.
#[derive(Clone, Debug, Serialize)]
pub struct Img2datasetFolder {
    pub layout: Layout,
    pub shards: Vec<Img2datasetShard>,
}

/// Reads an img2dataset output folder: finds its complete shards (those with `_stats.json`),
/// takes the layout from the files when `layout` is None (tars mean webdataset), checks that
/// every shard has the files and columns albef needs and counts its rows by status. Nothing
/// is written. Errors name the folder or file and say what img2dataset option makes it right.
pub fn inspect(dir: &Path, layout: Option<Layout>) -> Result<Img2datasetFolder> {
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: give the img2dataset output folder (its --output_folder)",
            dir.display()
        );
    }
    let indices = crate::layout::numbered_files(dir, "_stats.json")?;
    if indices.is_empty() {
        bail!(
            "{} has no complete img2dataset shard: img2dataset writes NNNNN_stats.json when a \
             shard is done, and there is none (is the download still running?)",
            dir.display()
        );
    }
    let has_tars = indices.iter().any(|&i| tar_path(dir, i).exists());
    let layout = layout.unwrap_or(if has_tars {
        Layout::Img2datasetWebdataset
    } else {
        Layout::Img2datasetParquet
    });
    let shards = indices
        .into_iter()
        .map(|i| inspect_shard(dir, i, layout))
        .collect::<Result<Vec<_>>>()?;
    Ok(Img2datasetFolder { layout, shards })
}

fn tar_path(dir: &Path, shard: u64) -> PathBuf {
    dir.join(format!("{shard:05}.tar"))
}

fn inspect_shard(dir: &Path, index: u64, layout: Layout) -> Result<Img2datasetShard> {
    let parquet = crate::layout::parquet_path(dir, index);
    let stats_file = dir.join(format!("{index:05}_stats.json"));
    let img2dataset_stats: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&stats_file)
            .with_context(|| format!("cannot read {}", stats_file.display()))?,
    )
    .with_context(|| format!("{} is not JSON", stats_file.display()))?;
    let file = File::open(&parquet).with_context(|| {
        format!(
            "shard {index} is complete ({} exists) but {} cannot be opened: img2dataset writes \
             one Parquet file per shard in both layouts (do not pass --save_additional_columns \
             without it)",
            stats_file.display(),
            parquet.display()
        )
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", parquet.display()))?;
    let schema = builder.schema().clone();
    for (column, hint) in [
        (KEY, "img2dataset always writes it"),
        (STATUS, "img2dataset always writes it"),
        (
            CAPTION,
            "run img2dataset with --caption_col naming the caption column of the list",
        ),
    ] {
        if schema.column_with_name(column).is_none() {
            bail!("{} has no `{column}` column: {hint}", parquet.display());
        }
    }
    let tar = match layout {
        Layout::Img2datasetParquet => {
            if schema.column_with_name(JPG).is_none() {
                bail!(
                    "{} has no `jpg` column: a parquet-layout folder needs img2dataset's \
                     --output_format parquet with --encode_format jpg (or register the folder \
                     as img2dataset-webdataset when it has tars)",
                    parquet.display()
                );
            }
            None
        }
        Layout::Img2datasetWebdataset => {
            let tar = tar_path(dir, index);
            if !tar.is_file() {
                bail!(
                    "{} is missing: a webdataset-layout shard keeps its pictures in a tar \
                     beside its Parquet file",
                    tar.display()
                );
            }
            Some(tar)
        }
    };
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), [STATUS]);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = 0u64;
    for batch in builder.with_projection(mask).build()? {
        let batch = batch.with_context(|| format!("reading {}", parquet.display()))?;
        let status = batch.column(0);
        for i in 0..batch.num_rows() {
            let st = albef_status(string_at(status.as_ref(), i).unwrap_or_default())
                .with_context(|| format!("row {i} of {}", parquet.display()))?;
            *by_status.entry(st.as_str().to_string()).or_default() += 1;
            rows += 1;
        }
    }
    Ok(Img2datasetShard {
        index,
        parquet,
        tar,
        rows,
        by_status,
        img2dataset_stats,
    })
}

/// albef's status for a status img2dataset (or albef) wrote.
pub fn albef_status(status: &str) -> Result<Status> {
    if status == FAILED_TO_RESIZE {
        return Ok(Status::FailedToDecode);
    }
    Status::parse(status)
}

/// The pictures of a webdataset tar, found by key: the offset and size of every `{key}.jpg`
/// member, read from the tar's headers once; the bytes are read when a batch asks for them.
pub struct TarImages {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl TarImages {
    /// Indexes the `.jpg` members of `path` (other members are skipped).
    pub fn open(path: &Path) -> Result<TarImages> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let entries = archive
            .entries()
            .with_context(|| format!("{} is not a readable tar", path.display()))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("reading the members of {}", path.display()))?;
            let name = entry.path()?.to_string_lossy().into_owned();
            if let Some(key) = name.strip_suffix(".jpg") {
                members.insert(key.to_string(), (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(TarImages {
            path: path.to_path_buf(),
            members,
        })
    }

    /// The `jpg` column for `keys`: the picture of each key, null where the tar has none.
    fn column(&self, file: &mut File, keys: &dyn Array) -> Result<ArrayRef> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        for i in 0..keys.len() {
            let member = string_at(keys, i).and_then(|k| self.members.get(k));
            out.push(match member {
                Some(&(offset, size)) => {
                    let mut bytes = vec![0u8; size as usize];
                    file.seek(SeekFrom::Start(offset))
                        .and_then(|_| file.read_exact(&mut bytes))
                        .with_context(|| {
                            format!("reading a picture from {}", self.path.display())
                        })?;
                    Some(bytes)
                }
                None => None,
            });
        }
        Ok(Arc::new(BinaryArray::from_iter(out)))
    }
}

/// The tar of pictures beside a webdataset shard's Parquet file, when there is one.
pub(crate) fn sibling_tar(parquet: &Path) -> Option<PathBuf> {
    let tar = parquet.with_extension("tar");
    tar.is_file().then_some(tar)
}

/// What [`normalize`] adds to a batch of an img2dataset shard.
pub(crate) struct Additions {
    /// Make `text` from `caption` (the shard has no `text`).
    pub text: bool,
    /// Read `jpg` from this tar by `key` (the shard has no `jpg`).
    pub jpg: Option<(TarImages, File)>,
}

impl Additions {
    /// What a shard at `parquet` with `schema` needs for the `wanted` columns (all when None).
    pub fn for_shard(
        parquet: &Path,
        schema: &Schema,
        wanted: Option<&[&str]>,
    ) -> Result<Additions> {
        let wants = |c: &str| wanted.is_none_or(|w| w.contains(&c));
        let lacks = |c: &str| schema.column_with_name(c).is_none();
        let text = wants(TEXT) && lacks(TEXT) && !lacks(CAPTION);
        let jpg = match sibling_tar(parquet) {
            Some(tar) if wants(JPG) && lacks(JPG) => {
                let file =
                    File::open(&tar).with_context(|| format!("cannot open {}", tar.display()))?;
                Some((TarImages::open(&tar)?, file))
            }
            _ => None,
        };
        Ok(Additions { text, jpg })
    }

    /// Whether `column` is one the additions make.
    pub fn adds(&self, column: &str) -> bool {
        (column == TEXT && self.text) || (column == JPG && self.jpg.is_some())
    }

    /// The columns a batch must be read with to make the additions.
    pub fn needs(&self) -> Vec<&'static str> {
        let mut needs = Vec::new();
        if self.text {
            needs.push(CAPTION);
        }
        if self.jpg.is_some() {
            needs.push(KEY);
        }
        needs
    }
}

/// A batch of any shard in albef's terms: img2dataset's `failed_to_resize` status becomes
/// `failed_to_decode`, and `text` and `jpg` are added as `additions` says. A batch of an albef
/// shard passes through unchanged.
pub(crate) fn normalize(batch: RecordBatch, additions: &mut Additions) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    if let Ok(i) = schema.index_of(STATUS) {
        if let Some(fixed) = renamed_statuses(columns[i].as_ref()) {
            fields[i] = Field::new(STATUS, DataType::Utf8, fields[i].is_nullable());
            columns[i] = fixed;
        }
    }
    if additions.text {
        let caption = batch.column_by_name(CAPTION).context("no caption column")?;
        let text: StringArray = (0..batch.num_rows())
            .map(|i| {
                Some(pre_caption(
                    string_at(caption.as_ref(), i).unwrap_or_default(),
                    MAX_WORDS,
                ))
            })
            .collect();
        fields.push(Field::new(TEXT, DataType::Utf8, false));
        columns.push(Arc::new(text));
    }
    if let Some((images, file)) = &mut additions.jpg {
        let keys = batch.column_by_name(KEY).context("no key column")?;
        columns.push(images.column(file, keys.as_ref())?);
        fields.push(Field::new(JPG, DataType::Binary, true));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The status column with `failed_to_resize` renamed, or None when it has none.
fn renamed_statuses(status: &dyn Array) -> Option<ArrayRef> {
    let any = (0..status.len()).any(|i| string_at(status, i) == Some(FAILED_TO_RESIZE));
    if !any {
        return None;
    }
    let renamed: StringArray = (0..status.len())
        .map(|i| {
            string_at(status, i).map(|s| match s {
                FAILED_TO_RESIZE => Status::FailedToDecode.as_str(),
                s => s,
            })
        })
        .collect();
    Some(Arc::new(renamed))
}
