//! JSON documents, read whole: an array of objects, or SBU's object of parallel arrays.
use super::frame::{Frame, Frames, Layout};
use super::{open_text, InputSpec};
use anyhow::{bail, Context, Result};
use polars::prelude::{Column, DataType, IntoColumn, JsonFormat, JsonReader, SerReader};
use std::io::{Cursor, Read};
use std::path::Path;

/// A JSON document, read whole: an array of objects, or SBU's object of parallel arrays
/// (`image_urls`, `captions`; shorter arrays are padded with nulls).
pub(super) fn json_document(file: &Path, spec: &InputSpec) -> Result<Frames> {
    let mut text = Vec::new();
    open_text(file)?
        .read_to_end(&mut text)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let first = text
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&text)
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    if !matches!(first, Some(b'[' | b'{')) {
        bail!(
            "{}: expected an array of objects or an object of arrays",
            file.display()
        );
    }
    let df = JsonReader::new(Cursor::new(text))
        .with_json_format(JsonFormat::Json)
        .infer_schema_len(None)
        .finish()
        .with_context(|| {
            format!(
                "{} is not valid JSON (an array of objects or an object of arrays)",
                file.display()
            )
        })?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let (columns, height) = if first == Some(b'{') {
        // One row whose values are the columns.
        let columns = df
            .columns()
            .iter()
            .map(|c| -> Result<Column> {
                Ok(match c.dtype() {
                    DataType::List(_) => c
                        .list()?
                        .series_iter()
                        .next()
                        .flatten()
                        .map(|s| s.into_column())
                        .unwrap_or_else(|| Column::new_empty(c.name().clone(), &DataType::Null)),
                    _ => Column::new_empty(c.name().clone(), &DataType::Null),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let height = columns.iter().map(Column::len).max().unwrap_or(0);
        (columns, height)
    } else {
        (df.columns().to_vec(), df.height())
    };
    if height == 0 {
        return Ok(Box::new(std::iter::empty()));
    }
    let layout = Layout::find(&names, spec, file)?;
    let frame = Frame {
        height,
        url: vec![columns[layout.url].clone()],
        caption: layout
            .caption
            .map(|i| columns[i].clone())
            .into_iter()
            .collect(),
        keep: layout.keep.iter().map(|&i| columns[i].clone()).collect(),
    };
    Ok(Box::new(std::iter::once(Ok(frame))))
}
