//! The one shard reader: record batches of a shard with a status filter and a column
//! projection, whole [`Row`]s, and column accessors that accept every Arrow string and binary
//! layout (Utf8, LargeUtf8, Utf8View; Binary, LargeBinary, BinaryView), so shards written by
//! other tools read as well as our own.
use crate::img2dataset::{normalize, Additions};
use crate::schema::*;
use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, BinaryArray, BooleanArray, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::path::Path;

/// Record batches of a shard, only the rows with `status` (all rows when `None`), only the
/// named `columns` (all when `None`; the status filter works either way); a named column the
/// shard lacks is an error. Batches are normalised to albef's terms, so img2dataset shards read
/// like albef's own (`crate::img2dataset`).
pub fn read_batches(
    path: &Path,
    status: Option<Status>,
    columns: Option<&[&str]>,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    open(path, status, columns, true)
}

/// A reader of the named columns of a shard that it has (absent ones are skipped, so a caller
/// can ask for optional columns such as the filter's `score`), in batches of 1,024 rows,
/// normalised like [`read_batches`].
pub fn read_present(
    path: &Path,
    columns: &[&str],
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    open(path, None, Some(columns), false)
}

/// The reader behind [`read_batches`] (`strict`: every named column must exist) and
/// [`read_present`] (absent columns skipped).
fn open(
    path: &Path,
    status: Option<Status>,
    columns: Option<&[&str]>,
    strict: bool,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let file = File::open(path).with_context(|| format!("cannot open shard {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet shard", path.display()))?;
    let arrow_schema = builder.schema().clone();
    let mut additions = Additions::for_shard(path, &arrow_schema, columns)?;
    let builder = match columns {
        Some(cols) => {
            let needs = additions.needs();
            let mut idx = Vec::new();
            let physical = cols.iter().chain(status.is_some().then_some(&STATUS));
            for c in physical.chain(needs.iter()) {
                match arrow_schema.index_of(c) {
                    Ok(i) if !idx.contains(&i) => idx.push(i),
                    Ok(_) => {}
                    Err(_) if !strict || additions.adds(c) => {}
                    Err(_) => bail!("shard {} has no column {c:?}", path.display()),
                }
            }
            idx.sort_unstable();
            let mask = ProjectionMask::roots(builder.parquet_schema(), idx);
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
        let batch = normalize(batch, &mut additions)
            .with_context(|| format!("reading {}", path.display()))?;
        let batch = match status {
            Some(st) => {
                let col = column(&batch, STATUS, &path)?;
                let mask: BooleanArray = (0..batch.num_rows())
                    .map(|i| Some(string_at(col, i) == Some(st.as_str())))
                    .collect();
                arrow_select::filter::filter_record_batch(&batch, &mask)?
            }
            None => batch,
        };
        match &keep {
            Some(cols) => {
                let schema = batch.schema();
                let idx: Vec<usize> = cols
                    .iter()
                    .filter_map(|c| schema.index_of(c).ok())
                    .collect();
                Ok(batch.project(&idx)?)
            }
            None => Ok(batch),
        }
    }))
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

/// A column of a batch by name, or an error naming the shard at `path`.
pub fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .with_context(|| format!("{} has no `{name}` column", path.display()))
}

/// Row `i` of a string column in any Arrow string layout; None when null or not a string.
pub fn string_at(column: &dyn Array, i: usize) -> Option<&str> {
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

/// Row `i` of a binary column in any Arrow binary layout; None when null or not binary.
pub fn binary_at(column: &dyn Array, i: usize) -> Option<&[u8]> {
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
