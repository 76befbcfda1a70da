//! `albef datasets`: the dataset versions in the registry, their lineage (which version and
//! stage each was made from), shard counts and statistics; img2dataset output folders
//! registered as versions (`register`), and versions exported for other trainers (`export`).
use super::Context;
use crate::dataset_sql;
use crate::output::{print_json, time_cell, Format, Table};
use albef_dataset::export::{self, export, ExportFormat, Exported};
use albef_dataset::img2dataset::{inspect, Layout};
use albef_dataset::store;
use albef_registry::{DatasetStatus, DatasetVersion, NewDatasetVersion, NewShard, Registry};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DatasetsArgs {
    #[command(subcommand)]
    command: DatasetsCommand,
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// List dataset versions
    List {
        /// Only the versions of this dataset
        #[arg(long)]
        dataset: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// One version with its lineage, shards and statistics
    Show {
        /// NAME (its latest finished version) or NAME@VERSION
        spec: String,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Register an img2dataset output folder as a new version of NAME, without copying its
    /// pictures: `train`, `filter` and `eval` then read it where it lies. Only complete shards
    /// (those with NNNNN_stats.json) are registered.
    Register {
        /// The dataset the new version belongs to (created when new)
        name: String,
        /// The img2dataset output folder (its --output_folder)
        #[arg(long)]
        uri: PathBuf,
        /// The folder's layout (img2dataset's --output_format); read from its files when left
        /// out: tars beside the Parquet files mean webdataset
        #[arg(long, value_enum)]
        format: Option<RegisterFormat>,
        /// How the result is printed
        #[arg(long, value_enum, default_value_t = Format::Table)]
        summary: Format,
    },
    /// Write a version's kept (`success`) rows where other trainers read them: the official
    /// ALBEF / LAVIS annotation JSON with image files, or WebDataset tar shards. The output
    /// appears whole or not at all, with `lineage.json` beside it.
    Export {
        /// NAME (its latest finished version) or NAME@VERSION
        spec: String,
        /// What to write
        #[arg(long, value_enum)]
        format: ExportArg,
        /// A new (or empty) folder to write into, or an object-store prefix (s3://bucket/prefix,
        /// webdataset only: its tar shards are uploaded whole, lineage.json last)
        #[arg(long, value_name = "LOCATION")]
        out: String,
        /// How the result is printed
        #[arg(long, value_enum, default_value_t = Format::Table)]
        summary: Format,
    },
    /// Answer SQL over a version's rows, read by polars: the table is `pairs` (every shard
    /// column but the pictures, plus `host`); only the columns the query names are read
    Query {
        /// NAME (its latest finished version) or NAME@VERSION
        spec: String,
        /// e.g. "SELECT host, COUNT(*) AS n FROM pairs WHERE status <> 'success' GROUP BY host"
        sql: String,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A version's rows by status, error and host, caption length and picture size
    /// distributions, and filter score quantiles by host (of a filtered version)
    Stats {
        /// NAME (its latest finished version) or NAME@VERSION
        spec: String,
        /// Output format (JSON: one object, a list of rows per section)
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// img2dataset's two output layouts that carry pictures albef can read.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegisterFormat {
    /// `--output_format parquet`: pictures in the Parquet files' `jpg` column
    Img2datasetParquet,
    /// `--output_format webdataset`: pictures in NNNNN.tar, metadata in NNNNN.parquet
    Img2datasetWebdataset,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportArg {
    /// annotations.json (a list of {"image": path, "caption": text}) and images/
    AlbefJson,
    /// NNNNN.tar shards of {key}.jpg, {key}.txt and {key}.json
    Webdataset,
}

fn versions_table(versions: &[DatasetVersion]) -> Table {
    let mut t = Table::new([
        "id",
        "dataset",
        "version",
        "status",
        "stage",
        "parent",
        "shards",
        "rows",
        "created_at",
        "uri",
    ]);
    for v in versions {
        t.push(vec![
            json!(v.id),
            json!(v.dataset),
            json!(v.version),
            json!(v.status),
            json!(v.stage),
            json!(v.parent_id),
            json!(v.shards),
            json!(v.rows),
            time_cell(Some(v.created_at)),
            json!(v.uri),
        ]);
    }
    t
}

impl DatasetsArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url).await?;
        match self.command {
            DatasetsCommand::List { dataset, format } => {
                versions_table(&reg.dataset_versions(dataset.as_deref()).await?).print(format)
            }
            DatasetsCommand::Show { spec, format } => {
                let version = reg.dataset_version(&spec).await?;
                let lineage = lineage(&reg, &version).await?;
                let shards = reg.shards(version.id).await?;
                if format == Format::Json {
                    return print_json(&json!({
                        "version": version,
                        "lineage": lineage,
                        "shards": shards,
                    }));
                }
                println!("lineage (newest first):");
                versions_table(&lineage).print(format)?;
                println!("\nparams: {}", version.params);
                println!("stats: {}", version.stats.clone().unwrap_or(Value::Null));
                println!("\nshards:");
                let mut t = Table::new(["index", "rows", "uri", "stats"]);
                for s in &shards {
                    t.push(vec![
                        json!(s.index),
                        json!(s.rows),
                        json!(s.uri),
                        json!(s.stats.to_string()),
                    ]);
                }
                t.print(format)
            }
            DatasetsCommand::Register {
                name,
                uri,
                format,
                summary,
            } => {
                let layout = format.map(|f| match f {
                    RegisterFormat::Img2datasetParquet => Layout::Img2datasetParquet,
                    RegisterFormat::Img2datasetWebdataset => Layout::Img2datasetWebdataset,
                });
                let version = register(&reg, &name, &uri, layout).await?;
                print_version(&version, summary)
            }
            DatasetsCommand::Export {
                spec,
                format,
                out,
                summary,
            } => {
                let format = match format {
                    ExportArg::AlbefJson => ExportFormat::AlbefJson,
                    ExportArg::Webdataset => ExportFormat::Webdataset,
                };
                let exported = export_version(&reg, &spec, format, out, &ctx.home).await?;
                print_export(&exported, summary)
            }
            DatasetsCommand::Query { spec, sql, format } => {
                let shards = shard_paths(&reg, &spec, &ctx.home).await?;
                let t = tokio::task::spawn_blocking(move || {
                    dataset_sql::table(&dataset_sql::query(&shards, &sql)?)
                })
                .await??;
                t.print(format)
            }
            DatasetsCommand::Stats { spec, format } => {
                let shards = shard_paths(&reg, &spec, &ctx.home).await?;
                let sections = tokio::task::spawn_blocking(move || stats(&shards)).await??;
                print_stats(&sections, format)
            }
        }
    }
}

/// The Parquet files of the version `spec` names, as registered; those in an object store are
/// read from their mirror under `home`.
pub(super) async fn shard_paths(reg: &Registry, spec: &str, home: &Path) -> Result<Vec<PathBuf>> {
    let version = reg.dataset_version(spec).await?;
    let shards = reg.shards(version.id).await?;
    if shards.is_empty() {
        bail!(
            "{}@{} has no registered shards",
            version.dataset,
            version.version
        );
    }
    let uris: Vec<String> = shards.into_iter().map(|s| s.uri).collect();
    store::local_files(&uris, &super::mirror_root(home))
}

/// The answers of `datasets stats`, section by section.
fn stats(shards: &[PathBuf]) -> Result<Vec<(&'static str, Table)>> {
    dataset_sql::stats_questions(dataset_sql::has_score(shards)?)
        .into_iter()
        .map(|q| {
            Ok((
                q.name,
                dataset_sql::table(&dataset_sql::query(shards, &q.sql)?)?,
            ))
        })
        .collect()
}

fn print_stats(sections: &[(&str, Table)], format: Format) -> Result<()> {
    if format == Format::Json {
        let all: serde_json::Map<String, Value> = sections
            .iter()
            .map(|(name, t)| (name.to_string(), t.to_json()))
            .collect();
        return print_json(&Value::Object(all));
    }
    for (i, (name, t)) in sections.iter().enumerate() {
        let gap = if i > 0 { "\n" } else { "" };
        match format {
            Format::Csv => println!("{gap}# {name}"),
            _ => println!("{gap}{name}:"),
        }
        t.print(format)?;
    }
    Ok(())
}

/// This version, its parent, the parent's parent, ... (newest first).
async fn lineage(reg: &Registry, version: &DatasetVersion) -> Result<Vec<DatasetVersion>> {
    let mut lineage = vec![version.clone()];
    while let Some(parent) = lineage.last().and_then(|v| v.parent_id) {
        if lineage.iter().any(|v| v.id == parent) {
            break;
        }
        lineage.push(reg.dataset_version_by_id(parent).await?);
    }
    Ok(lineage)
}

/// Registers the complete shards of the img2dataset folder `uri` as a new FINISHED version of
/// `name` (stage `register`). The folder is read and checked before the version exists; a
/// registry error half-way marks the version FAILED.
async fn register(
    reg: &Registry,
    name: &str,
    uri: &Path,
    layout: Option<Layout>,
) -> Result<DatasetVersion> {
    let dir = std::fs::canonicalize(uri)
        .with_context(|| format!("--uri {}: no such folder", uri.display()))?;
    let scan = dir.clone();
    let folder = tokio::task::spawn_blocking(move || inspect(&scan, layout)).await??;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for s in &folder.shards {
        for (status, n) in &s.by_status {
            *by_status.entry(status.clone()).or_default() += n;
        }
    }
    let source = dir.display().to_string();
    let version = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: name.to_string(),
            uri: source.clone(),
            parent: None,
            stage: "register".into(),
            params: json!({ "format": folder.layout, "source": source }),
        })
        .await?;
    let registered = async {
        for s in &folder.shards {
            let shard = NewShard {
                index: s.index as i64,
                uri: s.parquet.display().to_string(),
                rows: s.rows as i64,
                stats: json!({
                    "rows": s.rows,
                    "by_status": s.by_status,
                    "tar": s.tar,
                    "img2dataset": s.img2dataset_stats,
                }),
            };
            reg.register_shard(version.id, shard).await?;
        }
        let stats = json!({
            "format": folder.layout,
            "shards": folder.shards.len(),
            "rows": by_status.values().sum::<u64>(),
            "by_status": by_status,
        });
        reg.finish_dataset_version(version.id, stats).await
    };
    if let Err(e) = registered.await {
        let _ = reg
            .fail_dataset_version(version.id, json!({ "error": format!("{e:#}") }))
            .await;
        return Err(e);
    }
    reg.dataset_version_by_id(version.id).await
}

fn print_version(v: &DatasetVersion, format: Format) -> Result<()> {
    if format == Format::Json {
        return print_json(&serde_json::to_value(v)?);
    }
    versions_table(std::slice::from_ref(v)).print(format)
}

/// Exports the FINISHED version `spec` to `out`, its lineage beside the files.
async fn export_version(
    reg: &Registry,
    spec: &str,
    format: ExportFormat,
    out: String,
    home: &Path,
) -> Result<Exported> {
    if store::is_remote(&out) && format != ExportFormat::Webdataset {
        bail!("--out {out}: albef-json names its pictures by local path, so it is written to a folder; export --format webdataset to an object store");
    }
    let version = reg.dataset_version(spec).await?;
    if version.status != DatasetStatus::Finished {
        bail!(
            "{}@{} is {}: only finished versions can be exported",
            version.dataset,
            version.version,
            version.status
        );
    }
    let shards = reg.shards(version.id).await?;
    let uris: Vec<String> = shards.iter().map(|s| s.uri.clone()).collect();
    let paths = store::local_files(&uris, &super::mirror_root(home))?;
    let record = json!({
        "version": version,
        "lineage": lineage(reg, &version).await?,
        "shards": shards.iter().map(|s| &s.uri).collect::<Vec<_>>(),
        "exported_at": time_cell(Some(albef_registry::now_ms())),
    });
    let folder = store::Folder::open(&out, &super::mirror_root(home))?;
    tokio::task::spawn_blocking(move || {
        let mut exported = export(&paths, format, &folder.local, &record)?;
        if folder.is_remote() {
            for file in &mut exported.files {
                let name = file
                    .strip_prefix(&folder.local)?
                    .to_string_lossy()
                    .into_owned();
                folder.push(&name)?;
                *file = PathBuf::from(folder.uri_of(&name));
            }
            folder.push(export::LINEAGE_FILE)?;
            exported.out = PathBuf::from(folder.uri());
        }
        Ok(exported)
    })
    .await?
}

fn print_export(e: &Exported, format: Format) -> Result<()> {
    if format == Format::Json {
        return print_json(&serde_json::to_value(e)?);
    }
    let mut t = Table::new(["item", "value"]);
    t.push(vec![json!("folder"), json!(e.out)]);
    t.push(vec![json!("samples"), json!(e.samples)]);
    t.push(vec![json!("files"), json!(e.files.len())]);
    t.print(format)
}
