//! The reader stage: URL lists in the formats the public datasets ship (CC3M/CC12M TSV without a
//! header, CSV, LAION Parquet, SBU JSON, JSONL; gzip'd too) from a file, a folder or a glob,
//! read with polars in batches so that memory does not grow with the length of the list.
//!
//! Text lists (TSV, CSV, JSONL; gzip'd or not) are read through a streaming decoder and cut into
//! batches of whole records (at most [`BATCH_ROWS`] records, or the first record boundary past
//! [`BATCH_BYTES`] bytes), each parsed by polars. Parquet is read by polars in slices of at most
//! [`BATCH_ROWS`] rows of one row group (only the columns used). A JSON document (an array of
//! objects, or SBU's object of arrays) cannot be cut and is read whole, as before.
use anyhow::{bail, Context, Result};
use polars::prelude::{
    parse_ndjson, Column, CsvParseOptions, CsvReadOptions, DataFrame, DataType, Field, IntoColumn,
    JsonFormat, JsonReader, ParallelStrategy, ParquetReader, PlSmallStr, Schema, SerReader,
};
use polars::prelude::{NewChunkedArray, StringChunked};
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The names a URL column and a caption column go by when not given.
const URL_NAMES: [&str; 4] = ["url", "URL", "image_url", "image_urls"];
const CAPTION_NAMES: [&str; 4] = ["caption", "TEXT", "text", "captions"];

/// Which position in a record holds the URL, the caption and each kept column.
#[derive(Clone, Debug)]
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
    fn used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = std::iter::once(self.url)
            .chain(self.caption)
            .chain(self.keep.iter().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        used
    }
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

/// A record of a text list longer than this is refused (an unbalanced quote, most likely).
const MAX_RECORD_BYTES: usize = 64 << 20;

/// One batch of a list as polars columns of `height` rows: for the URL and the caption, the
/// columns the value is taken from (the first that is not null), and the kept columns.
struct Frame {
    height: usize,
    url: Vec<Column>,
    caption: Vec<Column>,
    keep: Vec<Column>,
}

type Frames = Box<dyn Iterator<Item = Result<Frame>> + Send>;

impl Frame {
    /// The frame of `df` read with `layout`, `col(i)` being the column at position `i`.
    fn new(
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

    fn rows(&self) -> Result<Vec<InputRow>> {
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

/// Counts the rows of the list without keeping them (for the progress bar).
pub fn count_rows(spec: &InputSpec) -> Result<u64> {
    let mut n = 0;
    for file in list_files(&spec.input)? {
        n += match InputFormat::from_path(&file) {
            Some(InputFormat::Parquet) => {
                let f =
                    File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                ParquetReader::new(f)
                    .num_rows()
                    .with_context(|| format!("{} is not a Parquet file", file.display()))?
                    as u64
            }
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
            delimited(file, spec, format == InputFormat::Tsv, batching)
        }
        InputFormat::Jsonl => jsonl(file, spec, batching),
        InputFormat::Json => json_document(file, spec),
        InputFormat::Parquet => parquet_frames(file, spec, batching),
    }
}

/// Cuts a text list into batches of whole records, as the csv crate reads them: a record ends
/// at a line break (LF, CRLF or a lone CR) outside a quoted field, blank lines are skipped, and
/// a quote opens a quoted field only at the start of a field (`""` inside one is a quote).
/// Line breaks are handed on as LF. `quoting` is off for TSV.
struct Records {
    src: Box<dyn BufRead + Send>,
    sep: u8,
    quoting: bool,
    line: Vec<u8>,
    /// Physical lines read so far.
    lineno: usize,
    /// The line the current record started on.
    record_line: usize,
    eof: bool,
    started: bool,
    in_quotes: bool,
    quote_closed: bool,
    field_start: bool,
    /// Bytes of the current record handed on so far (0 between records).
    record_len: usize,
    /// Fields of the current record so far.
    fields: u32,
}

impl Records {
    fn new(src: Box<dyn BufRead + Send>, sep: u8, quoting: bool) -> Records {
        Records {
            src,
            sep,
            quoting,
            line: Vec::new(),
            lineno: 0,
            record_line: 1,
            eof: false,
            started: false,
            in_quotes: false,
            quote_closed: false,
            field_start: true,
            record_len: 0,
            fields: 1,
        }
    }

    /// Appends whole records to `buf` until it holds `rows` records or `bytes` bytes, or the
    /// input ends, and the number of fields of each to `fields`; returns how many records were
    /// appended.
    fn fill(
        &mut self,
        buf: &mut Vec<u8>,
        fields: &mut Vec<u32>,
        rows: usize,
        bytes: usize,
    ) -> Result<usize> {
        let mut n = 0;
        while !self.eof && ((n < rows && buf.len() < bytes) || self.record_len > 0) {
            self.line.clear();
            if self.src.read_until(b'\n', &mut self.line)? == 0 {
                self.eof = true;
                if self.record_len > 0 {
                    // The last record had no line break (or an unclosed quote): end it here.
                    buf.push(b'\n');
                    n += 1;
                    fields.push(self.fields);
                    self.record_len = 0;
                    self.fields = 1;
                }
                break;
            }
            self.lineno += 1;
            let mut line = &self.line[..];
            if !self.started {
                self.started = true;
                line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            }
            if self.record_len == 0 {
                self.record_line = self.lineno;
            }
            let plain = self.record_len == 0
                && !line.contains(&b'\r')
                && !(self.quoting && line.contains(&b'"'));
            if plain {
                // A whole record on one line, no quotes to follow: hand it on as it is.
                if line == b"\n" || line.is_empty() {
                    continue;
                }
                buf.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    buf.push(b'\n');
                }
                n += 1;
                fields.push(1 + line.iter().filter(|&&b| b == self.sep).count() as u32);
                continue;
            }
            for &b in line {
                if self.in_quotes {
                    if b == b'"' {
                        self.in_quotes = false;
                        self.quote_closed = true;
                    }
                } else if self.quote_closed && b == b'"' {
                    // `""` inside a quoted field.
                    self.in_quotes = true;
                    self.quote_closed = false;
                } else {
                    self.quote_closed = false;
                    if b == b'\n' || b == b'\r' {
                        if self.record_len > 0 {
                            buf.push(b'\n');
                            n += 1;
                            fields.push(self.fields);
                        }
                        self.record_len = 0;
                        self.fields = 1;
                        self.field_start = true;
                        self.record_line = self.lineno + usize::from(b == b'\n');
                        continue;
                    }
                    if self.quoting && b == b'"' && self.field_start {
                        self.in_quotes = true;
                    }
                    self.field_start = b == self.sep;
                    self.fields += u32::from(self.field_start);
                }
                buf.push(b);
                self.record_len += 1;
            }
            if self.record_len > MAX_RECORD_BYTES {
                bail!(
                    "the record starting on line {} is longer than {} MiB (an unclosed quote?)",
                    self.record_line,
                    MAX_RECORD_BYTES >> 20
                );
            }
        }
        Ok(n)
    }
}

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

fn delimited(file: &Path, spec: &InputSpec, tab: bool, batching: Batching) -> Result<Frames> {
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

fn jsonl(file: &Path, spec: &InputSpec, batching: Batching) -> Result<Frames> {
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

/// A JSON document, read whole: an array of objects, or SBU's object of parallel arrays
/// (`image_urls`, `captions`; shorter arrays are padded with nulls).
fn json_document(file: &Path, spec: &InputSpec) -> Result<Frames> {
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

/// A Parquet list, read by polars in slices of at most `batching.rows` rows of one row group.
fn parquet_frames(file: &Path, spec: &InputSpec, batching: Batching) -> Result<Frames> {
    let open = || File::open(file).with_context(|| format!("cannot open {}", file.display()));
    let mut reader = ParquetReader::new(open()?);
    let schema = reader
        .schema()
        .with_context(|| format!("{} is not a Parquet file", file.display()))?;
    let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    let layout = Layout::find(&names, spec, file)?;
    let metadata = reader
        .get_metadata()
        .with_context(|| format!("{} is not a Parquet file", file.display()))?
        .clone();
    let mut slices = Vec::new();
    let mut offset = 0;
    for rg in &metadata.row_groups {
        let n = rg.num_rows();
        let mut start = 0;
        while start < n {
            let len = batching.rows.min(n - start);
            slices.push((offset + start, len));
            start += len;
        }
        offset += n;
    }
    let projection = layout.used();
    let file = file.to_path_buf();
    let mut slices = slices.into_iter();
    let mut failed = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let slice = slices.next()?;
        let frame = File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))
            .and_then(|f| {
                let mut reader = ParquetReader::new(f)
                    .with_projection(Some(projection.clone()))
                    .with_slice(Some(slice))
                    .read_parallel(ParallelStrategy::Columns);
                reader.set_metadata(metadata.clone());
                reader.finish().with_context(|| {
                    format!(
                        "cannot read rows {}-{} of {}",
                        slice.0 + 1,
                        slice.0 + slice.1,
                        file.display()
                    )
                })
            })
            .and_then(|df| Frame::new(&df, &layout, |i| Ok(df.column(&names[i])?.clone())));
        failed = frame.is_err();
        Some(frame)
    })))
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

    fn rows_in(spec: &InputSpec, rows: usize, bytes: usize) -> Vec<InputRow> {
        read_rows_in(spec, Batching { rows, bytes })
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
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
