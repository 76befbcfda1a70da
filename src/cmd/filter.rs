//! `albef filter`: score every pair of a dataset version with a checkpoint's momentum model and
//! make a filtered version (rejected rows kept with status `filtered_out`). Parses the flags
//! into an `albef_filter::FilterJob` and prints the summary; the work is in `albef-filter`.
use crate::output::{print_json, Format, Table};
use albef_filter::{FilterJob, ScoreName, Selection, Summary};
use albef_registry::Registry;
use albef_train::config::parse_device;
use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct FilterArgs {
    /// Checkpoint to score with: its registry id, MODEL@ALIAS or models:/MODEL@ALIAS
    #[arg(long)]
    pub(super) checkpoint: String,
    /// Dataset version to filter: NAME (latest finished version) or NAME@VERSION
    #[arg(long)]
    pub(super) dataset: String,
    /// Folder of the filtered version's shards and report, or an object-store prefix
    /// (s3://bucket/prefix, ...) they are uploaded to (not needed with --dry-run)
    #[arg(long, value_name = "LOCATION", required_unless_present = "dry_run")]
    pub(super) output: Option<String>,
    #[command(flatten)]
    pub(super) opts: FilterOptions,
    /// Score and report what would be kept; write and register nothing
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,
}

/// How pairs are scored and which are kept: the flags of `albef filter` besides its checkpoint,
/// dataset and output, and the `[filter]` section of a pipeline config (the same names, with
/// `_` for `-`; unset keys take the flags' defaults).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FilterOptions {
    /// Keep this fraction of the scored pairs, the highest-scored (DataComp keeps 0.3)
    #[arg(long, conflicts_with = "threshold")]
    keep_fraction: Option<f64>,
    /// Keep pairs whose score is at least this (BLIP's CapFilt: 0.5 on score_itm)
    #[arg(long)]
    threshold: Option<f64>,
    /// Score that ranks and thresholds: score (mean of score_i2t and score_t2i), score_i2t, score_t2i, score_itm
    #[arg(long, default_value = "score", value_parser = ScoreName::parse)]
    score: ScoreName,
    /// Pairs per forward pass
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Loader threads that decode and resize pictures ahead of the model
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Device: cpu, cuda or cuda:N (bf16 matmuls on CUDA)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The BERT tokenizer.json
    #[arg(long, env = "ALBEF_TOKENIZER", default_value = "assets/tokenizer.json")]
    tokenizer: PathBuf,
    /// Lowest- and highest-scored pairs shown on the contact sheet, each
    #[arg(long, default_value_t = 8)]
    sheet_size: usize,
}

impl Default for FilterOptions {
    fn default() -> Self {
        super::flag_defaults("albef filter")
    }
}

impl FilterArgs {
    /// The filter job these flags describe (`albef filter` and the pipeline's filter stage).
    pub(super) fn job(self, home: &Path) -> Result<FilterJob> {
        let o = self.opts;
        let selection = match (o.keep_fraction, o.threshold) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give keep_fraction or threshold, not both")
            }
            (Some(f), None) => Selection::KeepFraction(f),
            (None, Some(t)) => Selection::Threshold(t),
            (None, None) => anyhow::bail!("give --keep-fraction F or --threshold T"),
        };
        Ok(FilterJob {
            checkpoint: self.checkpoint,
            dataset: self.dataset,
            output: self.output.unwrap_or_default(),
            mirror: super::mirror_root(home),
            selection,
            score: o.score,
            batch_size: o.batch_size,
            workers: o.workers,
            device: parse_device(&o.device)?,
            tokenizer: o.tokenizer,
            dry_run: self.dry_run,
            progress: std::io::stderr().is_terminal(),
            sheet_size: o.sheet_size,
        })
    }
}

pub async fn run(args: FilterArgs, ctx: super::Context) -> Result<()> {
    let format = args.format;
    let job = args.job(&ctx.home)?;
    let reg = Registry::connect(&ctx.registry_url)
        .await
        .with_context(|| format!("cannot open the registry at {}", ctx.registry_url))?;
    let summary = albef_filter::run(&reg, &job).await?;
    print_summary(&summary, format)
}

fn print_summary(s: &Summary, format: Format) -> Result<()> {
    if format == Format::Json {
        return print_json(&serde_json::to_value(s)?);
    }
    let mut t = Table::new(["item", "value"]);
    let mut add = |k: &str, v: serde_json::Value| t.push(vec![json!(k), v]);
    add("source", json!(s.source));
    add(
        "version",
        json!(s.version.map_or("(dry run)".to_string(), |v| v.to_string())),
    );
    add("output", json!(s.output));
    add(
        "checkpoint",
        json!(format!("{} ({})", s.checkpoint_id, s.checkpoint_sha256)),
    );
    add("score", json!(s.score.column()));
    add("selection", serde_json::to_value(s.selection)?);
    add("rows", json!(s.rows));
    add("scored", json!(s.scored));
    add("kept", json!(s.kept));
    add("kept fraction", json!(format!("{:.4}", s.kept_fraction)));
    add("weakest kept score", json!(s.min_kept_score));
    add("pairs/s", json!(format!("{:.1}", s.pairs_per_second)));
    t.print(format)
}
