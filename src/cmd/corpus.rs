//! `albef corpus generate|serve|shards`: the synthetic web corpus (coloured shapes whose
//! captions say what is drawn) for tests, benchmarks and the demo. The work is in
//! `albef_train::synth`.
use crate::output::{Format, Table};
use albef_corpus::{GenerateOptions, Split};
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CorpusArgs {
    #[command(subcommand)]
    command: CorpusCommand,
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Write pictures, pairs.tsv (ground truth) and the URL lists urls.tsv and heldout.tsv
    Generate(GenerateArgs),
    /// Serve a generated corpus over HTTP (rewrites its URL lists with the bound address)
    Serve(ServeArgs),
    /// Write a generated corpus straight to Parquet shards in the dataset format, without ingest
    Shards(ShardsArgs),
}

#[derive(Args)]
pub(super) struct GenerateArgs {
    /// Folder to write the corpus into (created if missing)
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    opts: CorpusOptions,
    /// Output format of the summary
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// What the corpus holds: the flags of `albef corpus generate`, and the `[source.corpus]` table
/// of a pipeline config (the same names, with `_` for `-`; unset keys take the flags' defaults).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct CorpusOptions {
    /// Distinct pictures, held-out ones included
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed: the same seed gives byte-identical corpora
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of training rows whose captions are swapped among themselves (noise)
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Extra training rows, as a fraction of the training pictures, that repeat a picture
    /// (alternately byte-identical and resized/re-encoded), with a reworded caption
    #[arg(long, default_value_t = 0.0)]
    dup_frac: f64,
    /// Side of the square pictures in pixels
    #[arg(long, default_value_t = 160)]
    image_size: usize,
    /// Share of pictures with two objects in a relation ("a red circle above a blue square");
    /// the rest show one object in a named place. 0 gives the easier single-object corpus
    /// (1,728 possible scenes)
    #[arg(long, default_value_t = albef_corpus::PAIR_SHARE)]
    pair_share: f64,
    /// Multiplies the objects' sizes (1: radii of 7-16% of the picture's side), in [0.25, 2];
    /// larger objects cover more ViT patches and are learnt in fewer steps
    #[arg(long, default_value_t = 1.0)]
    object_scale: f64,
    /// Pictures kept apart for evaluation, with distinct scenes [default: min(1000, n/5)]
    #[arg(long)]
    heldout: Option<usize>,
    /// URL prefix written into urls.tsv and heldout.tsv (`corpus serve` rewrites it)
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// Threads drawing and encoding pictures
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        super::flag_defaults("albef corpus generate")
    }
}

#[derive(Args)]
struct ServeArgs {
    /// A folder made by `albef corpus generate`
    dir: PathBuf,
    /// Address to listen on; port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Heldout,
}

#[derive(Args)]
struct ShardsArgs {
    /// A folder made by `albef corpus generate`
    dir: PathBuf,
    /// Folder to write {shard}.parquet and {shard}.stats.json into
    #[arg(long)]
    out: PathBuf,
    /// Which rows to write
    #[arg(long, value_enum, default_value_t = SplitArg::Train)]
    split: SplitArg,
    /// Rows per shard
    #[arg(long, default_value_t = 1000)]
    rows_per_shard: usize,
}

impl CorpusArgs {
    pub async fn run(self) -> Result<()> {
        match self.command {
            CorpusCommand::Generate(a) => generate(a).await,
            CorpusCommand::Serve(a) => serve(a).await,
            CorpusCommand::Shards(a) => shards(a).await,
        }
    }
}

/// Writes the corpus `a` asks for and returns what it holds (`albef corpus generate` and the
/// pipeline's corpus stage).
pub(super) async fn generate_corpus(
    out: &Path,
    a: &CorpusOptions,
) -> Result<albef_corpus::Summary> {
    let opts = GenerateOptions {
        n: a.n,
        seed: a.seed,
        noise: a.noise,
        dup_frac: a.dup_frac,
        image_size: a.image_size,
        pair_share: a.pair_share,
        object_scale: a.object_scale,
        heldout: a.heldout.unwrap_or((a.n / 5).min(1000)),
        base_url: a.base_url.clone(),
        threads: a.threads,
    };
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || albef_corpus::generate(&out, &opts))
        .await
        .context("the generator thread panicked")?
}

async fn generate(a: GenerateArgs) -> Result<()> {
    let summary = generate_corpus(&a.out, &a.opts).await?;
    let mut table = Table::new(["field", "value"]);
    let value = serde_json::to_value(&summary)?;
    if let Some(fields) = value.as_object() {
        for (k, v) in fields {
            table.push(vec![json!(k), v.clone()]);
        }
    }
    match a.format {
        Format::Json => crate::output::print_json(&value),
        other => table.print(other),
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let server = albef_corpus::serve(&a.dir, a.addr).await?;
    println!("{}", server.base_url());
    eprintln!(
        "serving {} on {}; URL lists: {} and {}; Ctrl-C stops",
        a.dir.display(),
        server.base_url(),
        a.dir.join(albef_corpus::generate::TRAIN_URLS).display(),
        a.dir.join(albef_corpus::generate::HELDOUT_URLS).display(),
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await
}

async fn shards(a: ShardsArgs) -> Result<()> {
    let split = match a.split {
        SplitArg::Train => Split::Train,
        SplitArg::Heldout => Split::Heldout,
    };
    let (dir, out) = (a.dir, a.out.clone());
    let rows = tokio::task::spawn_blocking(move || {
        albef_corpus::corpus_to_shards(&dir, split, &out, a.rows_per_shard)
    })
    .await
    .context("the shard writer thread panicked")??;
    println!("{rows} rows written to {}", a.out.display());
    Ok(())
}
