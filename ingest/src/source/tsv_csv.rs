//! TSV and CSV lists (CC3M/CC12M TSV without a header, or with one): cut into whole records by
//! [`Records`], each batch parsed by polars as text columns.
use super::frame::{Frame, Frames, Layout};
use super::records::Records;
use super::{open_text, Batching, InputSpec};
use anyhow::{bail, Context, Result};
use polars::prelude::{
    Column, CsvParseOptions, CsvReadOptions, DataFrame, DataType, Field, IntoColumn, PlSmallStr,
    Schema, SerReader,
};
use polars::prelude::{NewChunkedArray, StringChunked};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

/// The name polars gives the column at position `i` of a delimited batch.
fn position_name(i: usize) -> String {
    format!("c{i}")
}

/// The column at position `i` of a delimited batch, null in the records that have no field
/// there (polars reads a missing field as an empty one; the field is `None` as in the csv crate).
fn short_as_null(df: &DataFrame, i: usize, fields: &[u32]) -> Result<Column> {
    let col = df.column(&position_name(i))?;
    if fields.iter().all(|&f| f as usize > i) {
        return Ok(col.clone());
    }
    let values = col
        .str()?
        .iter()
        .zip(fields)
        .map(|(v, &f)| v.filter(|_| f as usize > i));
    Ok(StringChunked::from_iter_options(col.name().clone(), values).into_column())
}

/// Parses whole records of a TSV/CSV with polars: `width` text columns (shorter records are
/// padded with nulls, longer ones cut), of which `projection` are read.
fn parse_delimited(
    bytes: Vec<u8>,
    width: usize,
    sep: u8,
    quoting: bool,
    projection: Option<Vec<usize>>,
) -> polars::prelude::PolarsResult<DataFrame> {
    let schema: Schema = (0..width)
        .map(|i| Field::new(PlSmallStr::from(position_name(i)), DataType::String))
        .collect();
    CsvReadOptions::default()
        .with_has_header(false)
        .with_schema(Some(Arc::new(schema)))
        .with_projection(projection.map(Arc::new))
        .with_raise_if_empty(false)
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(sep)
                .with_quote_char(quoting.then_some(b'"'))
                .with_missing_is_null(false)
                .with_truncate_ragged_lines(true),
        )
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
}

/// The number of fields of each record in a delimited batch (for the header).
fn header_names(
    bytes: Vec<u8>,
    sep: u8,
    quoting: bool,
) -> polars::prelude::PolarsResult<Vec<String>> {
    let df = CsvReadOptions::default()
        .with_has_header(false)
        .with_infer_schema_length(Some(0))
        .with_raise_if_empty(false)
        .with_parse_options(
            CsvParseOptions::default()
                .with_separator(sep)
                .with_quote_char(quoting.then_some(b'"'))
                .with_missing_is_null(false),
        )
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()?;
    Ok(df
        .columns()
        .iter()
        .map(|c| {
            c.str()
                .ok()
                .and_then(|s| s.get(0))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect())
}

pub(super) fn delimited(
    file: &Path,
    spec: &InputSpec,
    tab: bool,
    batching: Batching,
) -> Result<Frames> {
    let sep = if tab { b'\t' } else { b',' };
    let quoting = !tab;
    let mut records = Records::new(open_text(file)?, sep, quoting);
    let names: Vec<String> = match &spec.columns {
        Some(cols) => cols.clone(),
        None => {
            let mut head = Vec::new();
            records
                .fill(&mut head, &mut Vec::new(), 1, usize::MAX)
                .with_context(|| format!("cannot read the header of {}", file.display()))?;
            if head.is_empty() {
                Vec::new()
            } else {
                header_names(head, sep, quoting)
                    .with_context(|| format!("cannot read the header of {}", file.display()))?
            }
        }
    };
    let layout = Layout::find(&names, spec, file)?;
    let projection = layout.used();
    let width = names.len();
    let file = file.to_path_buf();
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let (mut buf, mut fields) = (Vec::new(), Vec::new());
        let first = records.lineno + 1;
        let frame = match records.fill(&mut buf, &mut fields, batching.rows, batching.bytes) {
            Ok(0) => return None,
            Ok(_) => parse_delimited(buf, width, sep, quoting, Some(projection.clone()))
                .map_err(anyhow::Error::new)
                .and_then(|df| {
                    if df.height() != fields.len() {
                        bail!(
                            "polars read {} rows, expected {}",
                            df.height(),
                            fields.len()
                        );
                    }
                    Frame::new(&df, &layout, |i| short_as_null(&df, i, &fields))
                })
                .with_context(|| {
                    format!(
                        "{}: cannot parse lines {first}-{}",
                        file.display(),
                        records.lineno
                    )
                }),
            Err(e) => Err(e.context(format!("cannot read {}", file.display()))),
        };
        failed = frame.is_err();
        Some(frame)
    })))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{rows, rows_in, write};
    use super::super::InputSpec;

    #[test]
    fn headerless_tsv_takes_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "cc3m.tsv",
            "a \"quoted\" caption\thttp://h/1.jpg\nsecond\thttp://h/2.jpg\n",
        );
        let spec = InputSpec {
            input: p.display().to_string(),
            columns: Some(vec!["caption".into(), "url".into()]),
            ..Default::default()
        };
        let got = rows(&spec);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].caption.as_deref(), Some("a \"quoted\" caption"));
        assert_eq!(got[1].url, "http://h/2.jpg");
    }

    #[test]
    fn gzip_tsv_in_small_batches_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..1000)
            .map(|i| {
                format!(
                    "http://h/{i}.jpg	caption {i}
"
                )
            })
            .collect();
        let p = write(dir.path(), "l.tsv.gz", &format!("url\tcaption\n{body}"));
        let spec = InputSpec {
            input: p.display().to_string(),
            ..Default::default()
        };
        let whole = rows(&spec);
        assert_eq!(whole.len(), 1000);
        for (rows, bytes) in [(7, usize::MAX), (usize::MAX, 100), (1, 1)] {
            let got = rows_in(&spec, rows, bytes);
            assert_eq!(got, whole);
        }
        for (i, r) in whole.iter().enumerate() {
            assert_eq!(r.url, format!("http://h/{i}.jpg"));
        }
    }

    #[test]
    fn batches_end_only_between_records() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..50)
            .map(|i| format!("\"line one {i}\nline two, \"\"{i}\"\"\",http://h/{i}.jpg\r\n\r\n"))
            .collect();
        let p = write(dir.path(), "l.csv", &format!("caption,url\n{body}"));
        let spec = InputSpec {
            input: p.display().to_string(),
            ..Default::default()
        };
        let whole = rows(&spec);
        assert_eq!(whole.len(), 50);
        assert_eq!(
            whole[3].caption.as_deref(),
            Some("line one 3\nline two, \"3\"")
        );
        for rows in [1, 2, 3, 49] {
            assert_eq!(rows_in(&spec, rows, usize::MAX), whole);
        }
        assert_eq!(rows_in(&spec, usize::MAX, 10), whole);
    }
}
