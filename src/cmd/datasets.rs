//! `albef datasets`: the dataset versions in the registry, their lineage (which version and
//! stage each was made from), shard counts and statistics.
use super::Context;
use crate::output::{print_json, time_cell, Format, Table};
use albef_registry::{DatasetVersion, Registry};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct DatasetsArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
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
    },
    /// One version with its lineage, shards and statistics
    Show {
        /// NAME (its latest finished version) or NAME@VERSION
        spec: String,
    },
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
            DatasetsCommand::List { dataset } => {
                versions_table(&reg.dataset_versions(dataset.as_deref()).await?).print(self.format)
            }
            DatasetsCommand::Show { spec } => {
                let version = reg.dataset_version(&spec).await?;
                // Lineage: this version, its parent, the parent's parent, ...
                let mut lineage = vec![version.clone()];
                while let Some(parent) = lineage.last().and_then(|v| v.parent_id) {
                    if lineage.iter().any(|v| v.id == parent) {
                        break;
                    }
                    lineage.push(reg.dataset_version_by_id(parent).await?);
                }
                let shards = reg.shards(version.id).await?;
                if self.format == Format::Json {
                    return print_json(&json!({
                        "version": version,
                        "lineage": lineage,
                        "shards": shards,
                    }));
                }
                println!("lineage (newest first):");
                versions_table(&lineage).print(self.format)?;
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
                t.print(self.format)
            }
        }
    }
}
