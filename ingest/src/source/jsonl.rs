//! JSONL lists: cut into batches of non-blank lines, each parsed by polars with the schema of
//! the first batch; a line polars cannot read is named by its number.
use super::frame::{Frame, Frames, Layout, CAPTION_NAMES, URL_NAMES};
use super::{open_text, Batching, InputSpec};
use anyhow::{Context, Result};
use polars::prelude::{parse_ndjson, Column, DataFrame, DataType, Field, PlSmallStr, Schema};
use std::io::{BufRead, Cursor};
use std::path::Path;

/// The columns a JSON list is read from: the URL and caption columns (given, or all the names
/// they go by, taken row by row in that order) and the kept ones.
struct JsonColumns {
    url: Vec<String>,
    caption: Vec<String>,
    keep: Vec<String>,
}

impl JsonColumns {
    fn new(names: &[String], spec: &InputSpec, file: &Path) -> Result<JsonColumns> {
        // Fails as a table would when the first batch has no URL column or a named one is missing.
        Layout::find(names, spec, file)?;
        let or_defaults = |given: &Option<String>, defaults: &[&str]| match given {
            Some(name) => vec![name.clone()],
            None => defaults.iter().map(|d| d.to_string()).collect(),
        };
        Ok(JsonColumns {
            url: or_defaults(&spec.url_col, &URL_NAMES),
            caption: or_defaults(&spec.caption_col, &CAPTION_NAMES),
            keep: spec.keep_cols.clone(),
        })
    }

    /// Every column read, once, as text.
    fn schema(&self) -> Schema {
        let mut names: Vec<&String> = Vec::new();
        for n in self.url.iter().chain(&self.caption).chain(&self.keep) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
            .into_iter()
            .map(|n| Field::new(PlSmallStr::from(n.as_str()), DataType::String))
            .collect()
    }

    fn frame(&self, df: &DataFrame) -> Result<Frame> {
        let cols = |names: &[String]| -> Result<Vec<Column>> {
            names.iter().map(|n| Ok(df.column(n)?.clone())).collect()
        };
        Ok(Frame {
            height: df.height(),
            url: cols(&self.url)?,
            caption: cols(&self.caption)?,
            keep: cols(&self.keep)?,
        })
    }
}

/// Cuts a JSONL list into batches of non-blank lines, keeping each line's number.
struct JsonLines {
    src: Box<dyn BufRead + Send>,
    line: Vec<u8>,
    lineno: usize,
}

impl JsonLines {
    fn fill(&mut self, buf: &mut Vec<u8>, numbers: &mut Vec<usize>, b: Batching) -> Result<()> {
        while numbers.len() < b.rows && buf.len() < b.bytes {
            self.line.clear();
            if self.src.read_until(b'\n', &mut self.line)? == 0 {
                break;
            }
            self.lineno += 1;
            let mut line = &self.line[..];
            if self.lineno == 1 {
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            buf.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                buf.push(b'\n');
            }
            numbers.push(self.lineno);
        }
        Ok(())
    }
}

/// The first line of a JSONL batch polars cannot read as an object of `schema`, and why
/// (`err`, what polars said of the whole batch, where no single line fails).
fn bad_json_line(
    buf: &[u8],
    numbers: &[usize],
    schema: &Schema,
    file: &Path,
    err: polars::prelude::PolarsError,
) -> anyhow::Error {
    for (line, n) in buf.split(|&b| b == b'\n').zip(numbers) {
        if let Err(e) = parse_ndjson(line, Some(1), schema, false) {
            return anyhow::Error::new(e)
                .context(format!("{} line {n}: not a JSON object", file.display()));
        }
    }
    anyhow::Error::new(err).context(format!(
        "{}: cannot read lines {}-{}",
        file.display(),
        numbers.first().unwrap_or(&0),
        numbers.last().unwrap_or(&0)
    ))
}

pub(super) fn jsonl(file: &Path, spec: &InputSpec, batching: Batching) -> Result<Frames> {
    let mut lines = JsonLines {
        src: open_text(file)?,
        line: Vec::new(),
        lineno: 0,
    };
    let (mut buf, mut numbers) = (Vec::new(), Vec::new());
    lines
        .fill(&mut buf, &mut numbers, batching)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if numbers.is_empty() {
        return Ok(Box::new(std::iter::empty()));
    }
    // The names of the first batch, line by line (values may differ in type from line to line).
    let mut names: Vec<String> = Vec::new();
    for (line, n) in buf.split(|&b| b == b'\n').zip(&numbers) {
        let schema = polars::io::ndjson::infer_schema(&mut Cursor::new(line), None)
            .with_context(|| format!("{} line {n}: not a JSON object", file.display()))?;
        for name in schema.iter_names() {
            if !names.iter().any(|k| k == name.as_str()) {
                names.push(name.to_string());
            }
        }
    }
    let columns = JsonColumns::new(&names, spec, file)?;
    let schema = columns.schema();
    let file = file.to_path_buf();
    let mut pending = Some((buf, numbers));
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let (buf, numbers) = match pending.take() {
            Some(batch) => batch,
            None => {
                let (mut buf, mut numbers) = (Vec::new(), Vec::new());
                if let Err(e) = lines.fill(&mut buf, &mut numbers, batching) {
                    failed = true;
                    return Some(Err(e.context(format!("cannot read {}", file.display()))));
                }
                (buf, numbers)
            }
        };
        if numbers.is_empty() {
            return None;
        }
        let frame = match parse_ndjson(&buf, Some(numbers.len()), &schema, false) {
            Ok(df) => columns.frame(&df),
            Err(e) => Err(bad_json_line(&buf, &numbers, &schema, &file, e)),
        };
        failed = frame.is_err();
        Some(frame)
    })))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{rows, rows_in, write};
    use super::super::{read_rows_in, Batching, InputSpec};

    #[test]
    fn jsonl_and_parquet_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..100)
            .map(|i| format!("{{\"url\": \"http://h/{i}.jpg\", \"n\": {i}}}\n"))
            .collect();
        let p = write(dir.path(), "l.jsonl.gz", &body);
        let spec = InputSpec {
            input: p.display().to_string(),
            keep_cols: vec!["n".into()],
            ..Default::default()
        };
        let whole = rows(&spec);
        assert_eq!(whole.len(), 100);
        assert_eq!(whole[42].extra, vec![Some("42".to_string())]);
        assert_eq!(rows_in(&spec, 9, usize::MAX), whole);

        // A bad line in a later batch is named by its number.
        let p = write(dir.path(), "bad.jsonl", &format!("{body}\n[1, 2]\n"));
        let err = read_rows_in(
            &InputSpec {
                input: p.display().to_string(),
                ..Default::default()
            },
            Batching {
                rows: 9,
                bytes: usize::MAX,
            },
        )
        .unwrap()
        .find_map(|r| r.err())
        .unwrap();
        assert!(format!("{err:#}").contains("bad.jsonl line 102"), "{err:#}");
    }
}
