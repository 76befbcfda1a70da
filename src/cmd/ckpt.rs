//! `albef ckpt`: register checkpoints and move model aliases through the promotion workflow
//! (gated promotion, rollback, history). The rules live in albef-registry's promotion module.
use super::runs::{parse_metric, print_id};
use super::Context;
use crate::output::{print_json, time_cell, Format, Table};
use albef_registry::{PromotionEvent, PromotionRequest, Registry};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct CkptArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: CkptCommand,
}

#[derive(Subcommand)]
enum CkptCommand {
    /// Record a checkpoint file of a run (sha256 and size are computed); prints its id
    Register {
        /// Run id
        run: i64,
        /// The checkpoint file
        #[arg(long)]
        path: PathBuf,
        /// The training step it was saved at
        #[arg(long)]
        step: i64,
        /// A metric KEY=NUMBER describing it, e.g. r1=0.62 (repeatable)
        #[arg(long = "metric", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
    },
    /// List checkpoints with the aliases they hold
    List {
        /// Only checkpoints that hold or held an alias of this model
        #[arg(long)]
        model: Option<String>,
    },
    /// Point MODEL@ALIAS at a checkpoint, if the gate passes (one transaction, recorded)
    Promote {
        /// Checkpoint id, or MODEL@ALIAS (or models:/MODEL@ALIAS) of the checkpoint holding that alias
        checkpoint: String,
        /// Model name (created when new)
        #[arg(long)]
        model: String,
        /// Alias to move, e.g. staging or production
        #[arg(long)]
        alias: String,
        /// Gate, e.g. "metrics.r1 >= current" (vs the holder) or "metrics.r1 >= 0.5"; AND joins
        #[arg(long)]
        require: Option<String>,
        /// Why, for the history
        #[arg(long)]
        reason: Option<String>,
        /// Who promotes [default: $USER]
        #[arg(long, env = "USER")]
        actor: Option<String>,
    },
    /// Point MODEL@ALIAS back at its holder before the last promotion (recorded)
    Rollback {
        /// Model name
        #[arg(long)]
        model: String,
        /// Alias to roll back
        #[arg(long)]
        alias: String,
        /// Why, for the history
        #[arg(long)]
        reason: Option<String>,
        /// Who rolls back [default: $USER]
        #[arg(long, env = "USER")]
        actor: Option<String>,
    },
    /// The promotion history of a model, oldest first
    History {
        /// Model name
        #[arg(long)]
        model: String,
    },
}

fn events_table(events: &[PromotionEvent]) -> Table {
    let mut t = Table::new([
        "id",
        "at",
        "model",
        "alias",
        "kind",
        "actor",
        "previous",
        "new",
        "gate",
        "gate_result",
        "reason",
    ]);
    for e in events {
        t.push(vec![
            json!(e.id),
            time_cell(Some(e.at)),
            json!(e.model),
            json!(e.alias),
            json!(e.kind),
            json!(e.actor),
            json!(e.previous_checkpoint_id),
            json!(e.new_checkpoint_id),
            json!(e.gate),
            json!(e.gate_result),
            json!(e.reason),
        ]);
    }
    t
}

/// Points `model@alias` at the checkpoint `spec` (an id or MODEL@ALIAS) if the gate `require`
/// passes; the registry records the event (`albef ckpt promote` and the pipeline's promote stage).
pub(super) async fn promote(
    reg: &Registry,
    spec: &str,
    model: String,
    alias: String,
    require: Option<String>,
    reason: Option<String>,
    actor: String,
) -> Result<PromotionEvent> {
    let checkpoint = reg.resolve_checkpoint(spec).await?.id;
    reg.promote(&PromotionRequest {
        checkpoint,
        model,
        alias,
        require,
        reason,
        actor,
    })
    .await
}

impl CkptArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url).await?;
        let format = self.format;
        let actor = |a: Option<String>| a.unwrap_or_else(|| "unknown".into());
        match self.command {
            CkptCommand::Register {
                run,
                path,
                step,
                metrics,
            } => print_id(
                reg.register_checkpoint(run, &path, step, &metrics).await?,
                format,
            ),
            CkptCommand::List { model } => {
                let list = reg.checkpoints(model.as_deref()).await?;
                if format == Format::Json {
                    return print_json(&serde_json::to_value(&list)?);
                }
                let mut t = Table::new([
                    "id",
                    "run",
                    "step",
                    "aliases",
                    "bytes",
                    "sha256",
                    "metrics",
                    "created_at",
                    "uri",
                ]);
                for c in &list {
                    t.push(vec![
                        json!(c.id),
                        json!(c.run_id),
                        json!(c.step),
                        json!(c.aliases.join(" ")),
                        json!(c.bytes),
                        json!(c.sha256[..12.min(c.sha256.len())]),
                        json!(c.metrics.to_string()),
                        time_cell(Some(c.created_at)),
                        json!(c.uri),
                    ]);
                }
                t.print(format)
            }
            CkptCommand::Promote {
                checkpoint,
                model,
                alias,
                require,
                reason,
                actor: who,
            } => {
                let event =
                    promote(&reg, &checkpoint, model, alias, require, reason, actor(who)).await?;
                events_table(&[event]).print(format)
            }
            CkptCommand::Rollback {
                model,
                alias,
                reason,
                actor: who,
            } => {
                let event = reg
                    .rollback(&model, &alias, &actor(who), reason.as_deref())
                    .await?;
                events_table(&[event]).print(format)
            }
            CkptCommand::History { model } => {
                events_table(&reg.promotion_history(&model).await?).print(format)
            }
        }
    }
}
