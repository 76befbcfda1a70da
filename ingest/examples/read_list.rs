//! Times the reader stage alone: `read_list gen DIR ROWS` writes a list of ROWS rows in each
//! input format (TSV, gzip'd TSV, headerless TSV, CSV with quoted fields, JSONL, Parquet);
//! `read_list read INPUT [caption,url]` reads a list with `source::read_rows` and prints the
//! row count, rows/s, the peak resident memory (VmHWM) and a digest of the rows read (to check
//! that two readers give the same rows).
use albef_ingest::source::{count_rows, read_rows, InputSpec};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn caption(i: usize) -> String {
    match i % 7 {
        0 => String::new(),
        1 => format!("a photo of thing {i}, with a comma"),
        2 => format!("photo «{i}» of a café — ünïcode 写真"),
        3 => format!("{} long {i}", "word ".repeat(60)),
        4 => format!("say \"cheese\" {i}"),
        5 => format!("plain caption number {i}"),
        _ => format!("caption {i}; similarity high"),
    }
}

fn url(i: usize) -> String {
    format!("http://img{}.example.com/images/{i:09}.jpg", i % 97)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn gen(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tsv = std::io::BufWriter::new(std::fs::File::create(dir.join("list.tsv"))?);
    let mut bare = std::io::BufWriter::new(std::fs::File::create(dir.join("bare.tsv"))?);
    let mut gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(std::fs::File::create(dir.join("list.tsv.gz"))?),
        flate2::Compression::fast(),
    );
    let mut csv = std::io::BufWriter::new(std::fs::File::create(dir.join("list.csv"))?);
    let mut jsonl = std::io::BufWriter::new(std::fs::File::create(dir.join("list.jsonl"))?);
    writeln!(tsv, "url\tcaption\tsimilarity")?;
    writeln!(gz, "url\tcaption\tsimilarity")?;
    writeln!(csv, "caption,url,similarity")?;
    for i in 0..n {
        let (u, c, s) = (url(i), caption(i), (i % 1000) as f64 / 1000.0);
        writeln!(tsv, "{u}\t{c}\t{s}")?;
        writeln!(gz, "{u}\t{c}\t{s}")?;
        writeln!(bare, "{c}\t{u}")?;
        let c2 = if i % 11 == 0 {
            format!("{c}\nsecond line")
        } else {
            c.clone()
        };
        writeln!(csv, "{},{},{s}", csv_field(&c2), u)?;
        writeln!(
            jsonl,
            "{}",
            serde_json::json!({"url": u, "caption": if c.is_empty() { None } else { Some(c) }, "similarity": s})
        )?;
    }
    tsv.flush()?;
    bare.flush()?;
    gz.finish()?.flush()?;
    csv.flush()?;
    jsonl.flush()?;

    use arrow_array::{Float64Array, RecordBatch, StringArray};
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("URL", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("TEXT", arrow_schema::DataType::Utf8, true),
        arrow_schema::Field::new("similarity", arrow_schema::DataType::Float64, false),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(100_000))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(dir.join("list.parquet"))?,
        schema.clone(),
        Some(props),
    )?;
    for start in (0..n).step_by(10_000) {
        let end = (start + 10_000).min(n);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((start..end).map(url))),
                Arc::new(StringArray::from_iter(
                    (start..end).map(|i| Some(caption(i)).filter(|c| !c.is_empty())),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (start..end).map(|i| (i % 1000) as f64 / 1000.0),
                )),
            ],
        )?;
        w.write(&batch)?;
    }
    w.close()?;
    Ok(())
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn read(input: &str, columns: Option<&str>, count: bool) -> Result<()> {
    let spec = InputSpec {
        input: input.to_string(),
        columns: columns.map(|c| c.split(',').map(str::to_string).collect()),
        keep_cols: if columns.is_none() {
            vec!["similarity".into()]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let t = Instant::now();
    let mut hash = Sha256::new();
    let mut n = 0u64;
    if count {
        n = count_rows(&spec)?;
    } else {
        for row in read_rows(&spec)? {
            let row = row?;
            hash.update(row.url.as_bytes());
            hash.update([0]);
            match &row.caption {
                Some(c) => {
                    hash.update([1]);
                    hash.update(c.as_bytes());
                }
                None => hash.update([2]),
            }
            for e in &row.extra {
                hash.update([3]);
                hash.update(e.as_deref().unwrap_or("<null>").as_bytes());
            }
            hash.update([0xff]);
            n += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let digest: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!(
        "{input}: {} {n} rows in {secs:.2} s ({:.0} rows/s), peak RSS {} MiB, digest {}",
        if count { "counted" } else { "read" },
        n as f64 / secs,
        vm_hwm_kib() / 1024,
        if count { "-".to_string() } else { digest }
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") => gen(
            Path::new(args.get(1).context("gen DIR ROWS")?),
            args.get(2).context("gen DIR ROWS")?.parse()?,
        ),
        Some("read") => read(
            args.get(1).context("read INPUT [COLUMNS]")?,
            args.get(2).map(String::as_str),
            false,
        ),
        Some("count") => read(
            args.get(1).context("count INPUT [COLUMNS]")?,
            args.get(2).map(String::as_str),
            true,
        ),
        _ => bail!("usage: read_list gen DIR ROWS | read INPUT [COLUMNS] | count INPUT [COLUMNS]"),
    }
}
