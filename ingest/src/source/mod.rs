//! The reader stage: URL lists in the formats the public datasets ship (CC3M/CC12M TSV without a
//! header, CSV, LAION Parquet, SBU JSON, JSONL; gzip'd too) from a file, a folder or a glob,
//! read with polars in batches so that memory does not grow with the length of the list.
//!
//! Text lists (TSV, CSV, JSONL; gzip'd or not) are read through a streaming decoder and cut into
//! batches of whole records (at most [`BATCH_ROWS`] records, or the first record boundary past
//! [`BATCH_BYTES`] bytes), each parsed by polars. Parquet is read by polars in slices of at most
//! [`BATCH_ROWS`] rows of one row group (only the columns used). A JSON document (an array of
//! objects, or SBU's object of arrays) cannot be cut and is read whole, as before.
//!
//! One module per format (`tsv_csv`, `jsonl`, `json`, `parquet`); `records` cuts a TSV/CSV
//! into whole records; `frame` finds the URL, caption and kept columns and turns a batch of
//! columns into [`InputRow`]s.
mod frame;
mod json;
mod jsonl;
mod parquet;
mod records;
mod tsv_csv;

use anyhow::{bail, Context, Result};
use frame::Frames;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The most rows a batch (of a text list, or of a Parquet row group) holds.
pub const BATCH_ROWS: usize = 50_000;
/// A batch of a text list ends at the first record boundary past this many bytes.
pub const BATCH_BYTES: usize = 32 << 20;

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

/// A text list as a buffered stream, gunzipped when its name ends in `.gz`.
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

/// How many rows (and, for text lists, bytes) a batch holds at most.
#[derive(Clone, Copy, Debug)]
struct Batching {
    rows: usize,
    bytes: usize,
}

const BATCHING: Batching = Batching {
    rows: BATCH_ROWS,
    bytes: BATCH_BYTES,
};

/// Streams the rows of every list file named by the spec, in order.
pub fn read_rows(spec: &InputSpec) -> Result<impl Iterator<Item = Result<InputRow>>> {
    read_rows_in(spec, BATCHING)
}

fn read_rows_in(
    spec: &InputSpec,
    batching: Batching,
) -> Result<impl Iterator<Item = Result<InputRow>>> {
    let files = list_files(&spec.input)?;
    let spec = spec.clone();
    let mut files = files.into_iter();
    let mut frames: Option<Frames> = None;
    let mut rows = Vec::new().into_iter();
    Ok(std::iter::from_fn(move || loop {
        if let Some(row) = rows.next() {
            return Some(Ok(row));
        }
        if let Some(it) = frames.as_mut() {
            match it.next().map(|f| f.and_then(|f| f.rows())) {
                Some(Ok(batch)) => {
                    rows = batch.into_iter();
                    continue;
                }
                Some(Err(e)) => {
                    frames = None;
                    return Some(Err(e));
                }
                None => frames = None,
            }
        }
        let file = files.next()?;
        match open_file(&file, &spec, batching) {
            Ok(it) => frames = Some(it),
            Err(e) => return Some(Err(e)),
        }
    }))
}

/// Checks that the list can be read and holds a row, reading only its first rows: a missing,
/// binary, empty or column-less list fails here, before anything is registered or written.
pub fn check_readable(spec: &InputSpec) -> Result<()> {
    match read_rows(spec)?.next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.context(format!("input {:?} cannot be read", spec.input))),
        None => bail!(
            "input {:?} holds no rows: give a list with at least one URL",
            spec.input
        ),
    }
}

/// Counts the rows of the list without keeping them (for the progress bar).
pub fn count_rows(spec: &InputSpec) -> Result<u64> {
    let mut n = 0;
    for file in list_files(&spec.input)? {
        n += match InputFormat::from_path(&file) {
            Some(InputFormat::Parquet) => parquet::count(&file)?,
            _ => open_file(&file, spec, BATCHING)?
                .try_fold(0u64, |n, f| f.map(|f| n + f.height as u64))?,
        };
    }
    Ok(n)
}

fn open_file(file: &Path, spec: &InputSpec, batching: Batching) -> Result<Frames> {
    let format = InputFormat::from_path(file)
        .with_context(|| format!("cannot tell the format of {}", file.display()))?;
    match format {
        InputFormat::Tsv | InputFormat::Csv => {
            tsv_csv::delimited(file, spec, format == InputFormat::Tsv, batching)
        }
        InputFormat::Jsonl => jsonl::jsonl(file, spec, batching),
        InputFormat::Json => json::json_document(file, spec),
        InputFormat::Parquet => parquet::parquet_frames(file, spec, batching),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(super) fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
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

    pub(super) fn rows(spec: &InputSpec) -> Vec<InputRow> {
        read_rows(spec)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    pub(super) fn rows_in(spec: &InputSpec, rows: usize, bytes: usize) -> Vec<InputRow> {
        read_rows_in(spec, Batching { rows, bytes })
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
