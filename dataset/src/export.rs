//! A dataset version's kept rows in the formats other trainers read: the official ALBEF and
//! LAVIS annotation JSON (a list of `{"image": path, "caption": text}` beside the image files)
//! and WebDataset tar shards (`{key}.jpg`, `{key}.txt`, `{key}.json` per sample, the layout the
//! `webdataset` Python library and open_clip read). Only `success` rows leave (of a filtered
//! version: the kept ones). The output is built in a staging folder beside the target and
//! renamed into place at the end, so a reader never sees half an export; `lineage.json` in it
//! says which version, made from what, the files came from.
use crate::files::commit_tmp;
use crate::read::{binary_at, column, read_batches, string_at};
use crate::schema::{Status, CAPTION, HEIGHT, JPG, KEY, SCORE, SHA256, TEXT, URL, WIDTH};
use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The record of what was exported, beside the files.
pub const LINEAGE_FILE: &str = "lineage.json";

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// `annotations.json` (ALBEF's pretraining list, LAVIS's caption list) and `images/`.
    AlbefJson,
    /// `{shard:05}.tar`, one per source shard that has kept rows.
    Webdataset,
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    pub format: ExportFormat,
    pub out: PathBuf,
    pub samples: u64,
    /// The files a reader opens: the annotation file, or the tar shards.
    pub files: Vec<PathBuf>,
}

/// One kept row, as the formats need it.
struct Sample {
    key: String,
    caption: String,
    jpg: Vec<u8>,
    meta: Map<String, Value>,
}

/// Writes the `success` rows of `shards` (the version's Parquet files, in order) to `out` in
/// `format`, with `lineage` as `lineage.json`. `out` must not exist or be an empty folder.
pub fn export(
    shards: &[PathBuf],
    format: ExportFormat,
    out: &Path,
    lineage: &Value,
) -> Result<Exported> {
    let out = target(out)?;
    let staging = out.with_file_name(format!(
        "{}.partial-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let written = match format {
        ExportFormat::AlbefJson => write_albef_json(shards, &staging, &out),
        ExportFormat::Webdataset => write_webdataset(shards, &staging),
    };
    let (samples, names) = match written.and_then(|w| {
        let mut lineage = lineage.clone();
        lineage["export"] = json!({ "format": format, "samples": w.0 });
        write_json(&staging.join(LINEAGE_FILE), &lineage)?;
        Ok(w)
    }) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir(&out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    commit_tmp(&staging, &out)?;
    Ok(Exported {
        format,
        files: names.iter().map(|n| out.join(n)).collect(),
        out,
        samples,
    })
}

/// The absolute path of `out`, refused when it is a file or a folder with anything in it.
fn target(out: &Path) -> Result<PathBuf> {
    if out.is_file() {
        bail!(
            "{} is a file: --out names a folder to create",
            out.display()
        );
    }
    if out.is_dir() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} already has files in it: export into a new or empty folder",
            out.display()
        );
    }
    let name = out
        .file_name()
        .with_context(|| format!("{} does not name a folder", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let parent = std::fs::canonicalize(&parent)
        .with_context(|| format!("cannot resolve {}", parent.display()))?;
    Ok(parent.join(name))
}

/// `images/{key}.jpg` and `annotations.json` whose paths are where the files will be once the
/// staging folder is renamed to `out` (ALBEF opens `image` as it is; LAVIS joins it to its
/// image root, which an absolute path overrides).
fn write_albef_json(shards: &[PathBuf], staging: &Path, out: &Path) -> Result<(u64, Vec<String>)> {
    let images = staging.join("images");
    std::fs::create_dir_all(&images)
        .with_context(|| format!("cannot create {}", images.display()))?;
    let mut annotations = Vec::new();
    for shard in shards {
        for_each_sample(shard, |s| {
            let name = format!("{}.jpg", s.key);
            std::fs::write(images.join(&name), &s.jpg)
                .with_context(|| format!("cannot write {}", images.join(&name).display()))?;
            let image = out.join("images").join(&name);
            annotations.push(json!({ "image": image, "caption": s.caption }));
            Ok(())
        })?;
    }
    let n = annotations.len() as u64;
    write_json(
        &staging.join("annotations.json"),
        &Value::Array(annotations),
    )?;
    Ok((n, vec!["annotations.json".into()]))
}

/// One `{shard:05}.tar` per source shard with kept rows; members in row order.
fn write_webdataset(shards: &[PathBuf], staging: &Path) -> Result<(u64, Vec<String>)> {
    let mut samples = 0u64;
    let mut names = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("{i:05}.tar");
        let path = staging.join(&name);
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut tar = tar::Builder::new(BufWriter::new(file));
        let mut n = 0u64;
        for_each_sample(shard, |s| {
            let meta = serde_json::to_vec(&s.meta)?;
            for (ext, bytes) in [
                ("jpg", &s.jpg[..]),
                ("txt", s.caption.as_bytes()),
                ("json", &meta),
            ] {
                append(&mut tar, &format!("{}.{ext}", s.key), bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            n += 1;
            Ok(())
        })?;
        tar.into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot finish {}", path.display()))?;
        if n == 0 {
            std::fs::remove_file(&path)?;
            continue;
        }
        samples += n;
        names.push(name);
    }
    Ok((samples, names))
}

fn append(tar: &mut tar::Builder<BufWriter<File>>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)?;
    Ok(())
}

/// Calls `f` with every `success` row of `shard` that has a picture, in row order.
fn for_each_sample(shard: &Path, mut f: impl FnMut(Sample) -> Result<()>) -> Result<()> {
    for batch in read_batches(shard, Some(Status::Success), None)? {
        let batch = batch?;
        let key = column(&batch, KEY, shard)?;
        let jpg = column(&batch, JPG, shard)?;
        for i in 0..batch.num_rows() {
            let key = string_at(key, i).unwrap_or_default().to_string();
            let Some(bytes) = binary_at(jpg, i) else {
                bail!("{}: kept row {key} has no picture", shard.display());
            };
            let meta = metadata(&batch, i, &key);
            let caption = [CAPTION, TEXT]
                .iter()
                .find_map(|c| {
                    batch
                        .column_by_name(c)
                        .and_then(|c| string_at(c.as_ref(), i))
                })
                .unwrap_or_default()
                .to_string();
            f(Sample {
                key,
                caption,
                jpg: bytes.to_vec(),
                meta,
            })?;
        }
    }
    Ok(())
}

/// The `{key}.json` of a sample: its key and the url, caption, text, size, hash and filter
/// score the row has.
fn metadata(batch: &RecordBatch, i: usize, key: &str) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert(KEY.into(), json!(key));
    for name in [URL, CAPTION, TEXT, SHA256, WIDTH, HEIGHT, SCORE] {
        let Some(c) = batch.column_by_name(name) else {
            continue;
        };
        if c.is_null(i) {
            continue;
        }
        let value = match c.data_type() {
            DataType::Int32 => json!(c.as_primitive::<Int32Type>().value(i)),
            DataType::Float32 => json!(c.as_primitive::<Float32Type>().value(i)),
            _ => match string_at(c.as_ref(), i) {
                Some(s) => json!(s),
                None => continue,
            },
        };
        meta.insert(name.into(), value);
    }
    meta
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    serde_json::to_writer_pretty(BufWriter::new(file), value)
        .with_context(|| format!("cannot write {}", path.display()))
}
