//! `albef model losses|bench`: the ALBEF model on its own, outside a training run. `losses`
//! computes the three pretraining losses of one training forward on given weights and a given
//! batch (parity checks against other implementations); `bench` times full training steps.
//! The work is in `albef_train::model::probe`.
use crate::output::{print_json, Format, Table};
use albef_train::config::{parse_device, Config};
use albef_train::model::probe;
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// One training forward (momentum update included, dropout off): print ITC, ITM, MLM losses
    Losses(LossesArgs),
    /// Median time of a training step (forward + backward + AdamW) on random inputs
    Bench(BenchArgs),
}

#[derive(Args)]
struct LossesArgs {
    /// Model config (TOML), e.g. configs/albef-tiny.toml
    #[arg(long)]
    config: PathBuf,
    /// State dict in the official layout (safetensors) [default: random init from --seed]
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Batch (safetensors): image, input_ids, attention_mask, mlm_input_ids, mlm_labels,
    /// neg_image_idx, neg_text_idx, alpha
    #[arg(long)]
    batch: PathBuf,
    /// Device: cpu, cuda or cuda:N [default: the config's train.device]
    #[arg(long)]
    device: Option<String>,
    /// Seed of the random initialisation when --weights is not given
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Args)]
struct BenchArgs {
    /// Model config (TOML), e.g. configs/albef-tiny.toml
    #[arg(long)]
    config: PathBuf,
    /// Timed steps
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps before them (allocator and kernel warm-up)
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Batch size [default: the config's train.batch_size]
    #[arg(long)]
    batch_size: Option<i64>,
    /// Device: cpu, cuda or cuda:N [default: cpu]
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op CPU threads [default: the config's train.threads, 0 = libtorch's choice]
    #[arg(long)]
    threads: Option<i32>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

impl ModelArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            ModelCommand::Losses(a) => a.run(),
            ModelCommand::Bench(a) => a.run(),
        }
    }
}

impl LossesArgs {
    fn run(self) -> Result<()> {
        let config = Config::load(&self.config)?;
        let device = parse_device(self.device.as_deref().unwrap_or(&config.train.device))?;
        let (_vs, model) = probe::build(&config, device, self.seed, self.weights.as_deref())?;
        let v = probe::losses_on_batch(&model, &self.batch, device)?;
        match self.format {
            Format::Json => print_json(&serde_json::to_value(v)?),
            format => {
                let mut t = Table::new(["loss_itc", "loss_itm", "loss_mlm"]);
                t.push(vec![
                    json!(v.loss_itc),
                    json!(v.loss_itm),
                    json!(v.loss_mlm),
                ]);
                t.print(format)
            }
        }
    }
}

impl BenchArgs {
    fn run(self) -> Result<()> {
        let config = Config::load(&self.config)?;
        let device = parse_device(&self.device)?;
        let threads = self.threads.unwrap_or(config.train.threads);
        let batch_size = self.batch_size.unwrap_or(config.train.batch_size);
        let r = probe::bench(
            &config,
            device,
            batch_size,
            self.warmup,
            self.steps,
            threads,
        )?;
        match self.format {
            Format::Json => print_json(&serde_json::to_value(&r)?),
            format => {
                let mut t = Table::new(["median_step_ms", "steps", "batch_size", "threads"]);
                t.push(vec![
                    json!(r.median_step_ms),
                    json!(r.steps),
                    json!(r.batch_size),
                    json!(r.threads),
                ]);
                t.print(format)
            }
        }
    }
}
