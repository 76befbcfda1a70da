//! The reader stage: URL lists in the formats the public datasets ship (CC3M/CC12M TSV without a
//! header, CSV, LAION Parquet, SBU JSON, JSONL; gzip'd too) from a file, a folder or a glob,
//! streamed row by row so that memory does not grow with the length of the list.
use anyhow::{bail, Context, Result};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One input row: the URL, the caption as given, and the kept columns (as text).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputRow {
    pub url: String,
    pub caption: Option<String>,
    pub extra: Vec<Option<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    Tsv,
    Csv,
    Json,
    Jsonl,
    Parquet,
}

/// Where the list is and how to read its columns.
#[derive(Clone, Debug, Default)]
pub struct InputSpec {
    /// A file, a folder (all list files in it, sorted) or a glob.
    pub input: String,
    /// The URL column; found by name (`url`, `URL`) when `None`.
    pub url_col: Option<String>,
    /// The caption column; found by name (`caption`, `TEXT`, `text`) when `None`.
    pub caption_col: Option<String>,
    /// Names for the columns of a headerless TSV/CSV, in order (e.g. `caption,url` for CC3M).
    pub columns: Option<Vec<String>>,
    /// Input columns carried into the output.
    pub keep_cols: Vec<String>,
}

impl InputFormat {
    /// The format from the file name (`.gz` stripped).
    pub fn from_path(path: &Path) -> Option<InputFormat> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit('.').next()?;
        Some(match ext {
            "tsv" | "txt" => InputFormat::Tsv,
            "csv" => InputFormat::Csv,
            "json" => InputFormat::Json,
            "jsonl" | "ndjson" => InputFormat::Jsonl,
            "parquet" => InputFormat::Parquet,
            _ => return None,
        })
    }
}

/// The list files named by `input`: the file itself, the list files of a folder, or a glob's
/// matches, sorted so that row numbers (and so keys) are stable.
pub fn list_files(input: &str) -> Result<Vec<PathBuf>> {
    let path = Path::new(input);
    let mut files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .with_context(|| format!("cannot list input folder {input}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && InputFormat::from_path(p).is_some())
            .collect()
    } else {
        glob::glob(input)
            .with_context(|| format!("input {input:?} is neither a file, a folder nor a glob"))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect()
    };
    files.sort();
    if files.is_empty() {
        bail!("input {input:?} names no URL list file (tsv, csv, json, jsonl, parquet, optionally .gz)");
    }
    for f in &files {
        if InputFormat::from_path(f).is_none() {
            bail!(
                "cannot tell the format of {} (expected .tsv .txt .csv .json .jsonl .parquet, optionally .gz)",
                f.display()
            );
        }
    }
    Ok(files)
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    Ok(if gz {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

/// Which position in a record holds the URL, the caption and each kept column.
struct Layout {
    url: usize,
    caption: Option<usize>,
    keep: Vec<usize>,
}

impl Layout {
    fn find(names: &[String], spec: &InputSpec, file: &Path) -> Result<Layout> {
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
        let url = pick(&spec.url_col, &["url", "URL", "image_url", "image_urls"])?.with_context(
            || {
                format!(
                "{}: no URL column (looked for url, URL; columns: {}); use --url-col or --columns",
                file.display(),
                names.join(", ")
            )
            },
        )?;
        let caption = pick(&spec.caption_col, &["caption", "TEXT", "text", "captions"])?;
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

    fn row(&self, get: impl Fn(usize) -> Option<String>) -> InputRow {
        InputRow {
            url: get(self.url).unwrap_or_default(),
            caption: self.caption.and_then(&get),
            extra: self.keep.iter().map(|&i| get(i)).collect(),
        }
    }
}

/// Streams the rows of every list file named by the spec, in order.
pub fn read_rows(spec: &InputSpec) -> Result<impl Iterator<Item = Result<InputRow>>> {
    let files = list_files(&spec.input)?;
    let spec = spec.clone();
    let mut files = files.into_iter();
    let mut current: Option<Box<dyn Iterator<Item = Result<InputRow>> + Send>> = None;
    Ok(std::iter::from_fn(move || loop {
        if let Some(it) = current.as_mut() {
            if let Some(row) = it.next() {
                return Some(row);
            }
        }
        let file = files.next()?;
        match open_file(&file, &spec) {
            Ok(it) => current = Some(it),
            Err(e) => {
                current = None;
                return Some(Err(e));
            }
        }
    }))
}

/// Counts the rows of the list without keeping them (for the progress bar).
pub fn count_rows(spec: &InputSpec) -> Result<u64> {
    let mut n = 0;
    for file in list_files(&spec.input)? {
        n += match InputFormat::from_path(&file) {
            Some(InputFormat::Parquet) => {
                let f =
                    File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                let b = ParquetRecordBatchReaderBuilder::try_new(f)
                    .with_context(|| format!("{} is not a Parquet file", file.display()))?;
                b.metadata().file_metadata().num_rows() as u64
            }
            _ => open_file(&file, spec)?.try_fold(0u64, |n, r| r.map(|_| n + 1))?,
        };
    }
    Ok(n)
}

type Rows = Box<dyn Iterator<Item = Result<InputRow>> + Send>;

fn open_file(file: &Path, spec: &InputSpec) -> Result<Rows> {
    let format = InputFormat::from_path(file)
        .with_context(|| format!("cannot tell the format of {}", file.display()))?;
    match format {
        InputFormat::Tsv | InputFormat::Csv => delimited(file, spec, format == InputFormat::Tsv),
        InputFormat::Jsonl => jsonl(file, spec),
        InputFormat::Json => json_array(file, spec),
        InputFormat::Parquet => parquet_rows(file, spec),
    }
}

fn delimited(file: &Path, spec: &InputSpec, tab: bool) -> Result<Rows> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if tab { b'\t' } else { b',' })
        .has_headers(spec.columns.is_none())
        .flexible(true)
        .quoting(!tab)
        .from_reader(open_text(file)?);
    let names: Vec<String> = match &spec.columns {
        Some(cols) => cols.clone(),
        None => reader
            .headers()
            .with_context(|| format!("cannot read the header of {}", file.display()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect(),
    };
    let layout = Layout::find(&names, spec, file)?;
    let name = file.display().to_string();
    Ok(Box::new(reader.into_records().map(move |rec| {
        let rec = rec.with_context(|| format!("bad record in {name}"))?;
        Ok(layout.row(|i| rec.get(i).map(str::to_string)))
    })))
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn object_row(
    obj: &serde_json::Map<String, serde_json::Value>,
    spec: &InputSpec,
    file: &Path,
) -> Result<InputRow> {
    let names: Vec<String> = obj.keys().cloned().collect();
    let layout = Layout::find(&names, spec, file)?;
    Ok(layout.row(|i| obj.get(&names[i]).and_then(json_text)))
}

fn jsonl(file: &Path, spec: &InputSpec) -> Result<Rows> {
    let lines = open_text(file)?.lines();
    let spec = spec.clone();
    let file = file.to_path_buf();
    Ok(Box::new(
        lines
            .enumerate()
            .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
            .map(move |(n, line)| {
                let line = line.with_context(|| format!("cannot read {}", file.display()))?;
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                    .with_context(|| {
                    format!("{} line {}: not a JSON object", file.display(), n + 1)
                })?;
                object_row(&obj, &spec, &file)
            }),
    ))
}

/// A JSON array of objects, or SBU's object of parallel arrays (`image_urls`, `captions`).
fn json_array(file: &Path, spec: &InputSpec) -> Result<Rows> {
    let mut text = String::new();
    open_text(file)?
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                serde_json::Value::Object(o) => Ok(o),
                _ => bail!("{}: item {i} is not an object", file.display()),
            })
            .collect::<Result<_>>()?,
        serde_json::Value::Object(columns) => {
            let len = columns
                .values()
                .filter_map(|v| v.as_array().map(Vec::len))
                .max()
                .unwrap_or(0);
            (0..len)
                .map(|i| {
                    columns
                        .iter()
                        .map(|(k, v)| (k.clone(), v.get(i).cloned().unwrap_or_default()))
                        .collect()
                })
                .collect()
        }
        _ => bail!(
            "{}: expected an array of objects or an object of arrays",
            file.display()
        ),
    };
    let spec = spec.clone();
    let file = file.to_path_buf();
    Ok(Box::new(
        objects
            .into_iter()
            .map(move |o| object_row(&o, &spec, &file)),
    ))
}

fn parquet_rows(file: &Path, spec: &InputSpec) -> Result<Rows> {
    let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a Parquet file", file.display()))?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let layout = Layout::find(&names, spec, file)?;
    let reader: ParquetRecordBatchReader = builder
        .with_batch_size(4096)
        .build()
        .with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    Ok(Box::new(reader.flat_map(move |batch| {
        let rows: Vec<Result<InputRow>> = match batch {
            Ok(b) => batch_input_rows(&b, &layout),
            Err(e) => vec![Err(
                anyhow::Error::new(e).context(format!("cannot read {name}"))
            )],
        };
        rows.into_iter()
    })))
}

fn batch_input_rows(batch: &RecordBatch, layout: &Layout) -> Vec<Result<InputRow>> {
    (0..batch.num_rows())
        .map(|r| Ok(layout.row(|i| cell_text(batch.column(i).as_ref(), r))))
        .collect()
}

/// The text of one Parquet cell of the types URL lists use (strings, numbers, booleans).
fn cell_text(col: &dyn Array, r: usize) -> Option<String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    use arrow_schema::DataType as D;
    if col.is_null(r) {
        return None;
    }
    Some(match col.data_type() {
        D::Utf8 => col.as_string::<i32>().value(r).to_string(),
        D::LargeUtf8 => col.as_string::<i64>().value(r).to_string(),
        D::Utf8View => col.as_string_view().value(r).to_string(),
        D::Boolean => col.as_boolean().value(r).to_string(),
        D::Int8 => col.as_primitive::<Int8Type>().value(r).to_string(),
        D::Int16 => col.as_primitive::<Int16Type>().value(r).to_string(),
        D::Int32 => col.as_primitive::<Int32Type>().value(r).to_string(),
        D::Int64 => col.as_primitive::<Int64Type>().value(r).to_string(),
        D::UInt8 => col.as_primitive::<UInt8Type>().value(r).to_string(),
        D::UInt16 => col.as_primitive::<UInt16Type>().value(r).to_string(),
        D::UInt32 => col.as_primitive::<UInt32Type>().value(r).to_string(),
        D::UInt64 => col.as_primitive::<UInt64Type>().value(r).to_string(),
        D::Float32 => col.as_primitive::<Float32Type>().value(r).to_string(),
        D::Float64 => col.as_primitive::<Float64Type>().value(r).to_string(),
        other => format!("<{other}>"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        if name.ends_with(".gz") {
            let mut enc = flate2::write::GzEncoder::new(
                File::create(&p).unwrap(),
                flate2::Compression::fast(),
            );
            enc.write_all(body.as_bytes()).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(&p, body).unwrap();
        }
        p
    }

    fn rows(spec: &InputSpec) -> Vec<InputRow> {
        read_rows(spec)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn reads_each_format_by_column_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "a.tsv",
            "url\tcaption\tsimilarity\nhttp://h/1.jpg\tone, two\t0.3\n",
        );
        write(d, "b.csv.gz", "TEXT,URL\n\"a, quoted\",http://h/2.jpg\n");
        write(
            d,
            "c.jsonl",
            "{\"url\": \"http://h/3.jpg\", \"text\": \"three\", \"similarity\": 0.5}\n\n",
        );
        write(
            d,
            "d.json",
            "[{\"url\": \"http://h/4.jpg\", \"caption\": null}]",
        );
        let spec = InputSpec {
            input: d.display().to_string(),
            ..Default::default()
        };
        let got = rows(&spec);
        let urls: Vec<_> = got.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://h/1.jpg",
                "http://h/2.jpg",
                "http://h/3.jpg",
                "http://h/4.jpg"
            ]
        );
        assert_eq!(got[0].caption.as_deref(), Some("one, two"));
        assert_eq!(got[1].caption.as_deref(), Some("a, quoted"));
        assert_eq!(got[3].caption, None);
        assert_eq!(count_rows(&spec).unwrap(), 4);

        let glob = InputSpec {
            input: d.join("*.jsonl").display().to_string(),
            keep_cols: vec!["similarity".into()],
            ..Default::default()
        };
        assert_eq!(rows(&glob)[0].extra, vec![Some("0.5".to_string())]);
    }

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
    fn missing_columns_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.csv", "link,alt\nhttp://h/1.jpg,a\n");
        let spec = InputSpec {
            input: p.display().to_string(),
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            read_rows(&spec).unwrap().find_map(|r| r.err()).unwrap()
        );
        assert!(
            err.contains("no URL column") && err.contains("link, alt"),
            "{err}"
        );
        let spec = InputSpec {
            url_col: Some("link".into()),
            caption_col: Some("alt".into()),
            ..spec
        };
        assert_eq!(rows(&spec)[0].caption.as_deref(), Some("a"));
    }
}
