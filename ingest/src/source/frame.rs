//! A batch of a list as columns: where the URL, the caption and the kept columns are (found by
//! name or given), and how their values become [`InputRow`]s, whatever the format.
use super::{InputRow, InputSpec};
use anyhow::{Context, Result};
use polars::prelude::{Column, DataFrame, DataType};
use std::path::Path;

/// The names a URL column and a caption column go by when not given.
pub(super) const URL_NAMES: [&str; 4] = ["url", "URL", "image_url", "image_urls"];
pub(super) const CAPTION_NAMES: [&str; 4] = ["caption", "TEXT", "text", "captions"];

/// Which position in a record holds the URL, the caption and each kept column.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub(super) url: usize,
    pub(super) caption: Option<usize>,
    pub(super) keep: Vec<usize>,
}

impl Layout {
    pub(super) fn find(names: &[String], spec: &InputSpec, file: &Path) -> Result<Layout> {
        let pos = |n: &str| names.iter().position(|h| h == n);
        let pick = |given: &Option<String>, defaults: &[&str]| -> Result<Option<usize>> {
            match given {
                Some(name) => pos(name).map(Some).with_context(|| {
                    format!(
                        "{}: no column {name:?} (columns: {})",
                        file.display(),
                        names.join(", ")
                    )
                }),
                None => Ok(defaults.iter().find_map(|d| pos(d))),
            }
        };
        let url = pick(&spec.url_col, &URL_NAMES)?.with_context(|| {
            format!(
                "{}: no URL column (looked for url, URL; columns: {}); use --url-col or --columns",
                file.display(),
                names.join(", ")
            )
        })?;
        let caption = pick(&spec.caption_col, &CAPTION_NAMES)?;
        let keep = spec
            .keep_cols
            .iter()
            .map(|k| {
                pos(k).with_context(|| {
                    format!(
                        "{}: no column {k:?} to keep (columns: {})",
                        file.display(),
                        names.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Layout { url, caption, keep })
    }

    /// The positions read, each once, in increasing order.
    pub(super) fn used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = std::iter::once(self.url)
            .chain(self.caption)
            .chain(self.keep.iter().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        used
    }
}

/// One batch of a list as polars columns of `height` rows: for the URL and the caption, the
/// columns the value is taken from (the first that is not null), and the kept columns.
pub(super) struct Frame {
    pub(super) height: usize,
    pub(super) url: Vec<Column>,
    pub(super) caption: Vec<Column>,
    pub(super) keep: Vec<Column>,
}

pub(super) type Frames = Box<dyn Iterator<Item = Result<Frame>> + Send>;

impl Frame {
    /// The frame of `df` read with `layout`, `col(i)` being the column at position `i`.
    pub(super) fn new(
        df: &DataFrame,
        layout: &Layout,
        col: impl Fn(usize) -> Result<Column>,
    ) -> Result<Frame> {
        Ok(Frame {
            height: df.height(),
            url: vec![col(layout.url)?],
            caption: layout.caption.map(&col).transpose()?.into_iter().collect(),
            keep: layout.keep.iter().map(|&i| col(i)).collect::<Result<_>>()?,
        })
    }

    pub(super) fn rows(&self) -> Result<Vec<InputRow>> {
        let url = coalesce(&self.url, self.height)?;
        let caption = coalesce(&self.caption, self.height)?;
        let mut keep = self
            .keep
            .iter()
            .map(|c| texts(c, self.height).map(Vec::into_iter))
            .collect::<Result<Vec<_>>>()?;
        Ok(url
            .into_iter()
            .zip(caption)
            .map(|(url, caption)| InputRow {
                url: url.unwrap_or_default(),
                caption,
                extra: keep.iter_mut().map(|k| k.next().flatten()).collect(),
            })
            .collect())
    }
}

/// The values of the first of `cols` that is not null, row by row.
fn coalesce(cols: &[Column], height: usize) -> Result<Vec<Option<String>>> {
    let mut cols = cols.iter();
    let Some(first) = cols.next() else {
        return Ok(vec![None; height]);
    };
    let mut out = texts(first, height)?;
    for col in cols {
        if out.iter().all(Option::is_some) {
            break;
        }
        for (o, v) in out.iter_mut().zip(texts(col, height)?) {
            if o.is_none() {
                *o = v;
            }
        }
    }
    Ok(out)
}

/// A column's values as text (any type: strings as they are, numbers as Rust writes them,
/// other types as polars casts or prints them), padded with nulls to `height` rows.
fn texts(col: &Column, height: usize) -> Result<Vec<Option<String>>> {
    let own = |v: Option<&str>| v.map(str::to_string);
    let mut out: Vec<Option<String>> = match col.dtype() {
        DataType::String => col.str()?.iter().map(own).collect(),
        DataType::Float64 => col
            .f64()?
            .iter()
            .map(|v| v.map(|x| x.to_string()))
            .collect(),
        DataType::Float32 => col
            .f32()?
            .iter()
            .map(|v| v.map(|x| x.to_string()))
            .collect(),
        DataType::Null => vec![None; col.len()],
        _ => match col.cast(&DataType::String) {
            Ok(s) => s.str()?.iter().map(own).collect(),
            Err(_) => (0..col.len())
                .map(|i| Ok(col.get(i)?).map(|v| (!v.is_null()).then(|| v.to_string())))
                .collect::<Result<_>>()?,
        },
    };
    out.resize(height, None);
    Ok(out)
}
