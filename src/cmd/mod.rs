//! The subcommands. One file per area; each parses its own arguments and calls a stage crate.
mod ckpt;
mod corpus;
mod datasets;
mod filter;
mod ingest;
mod model;
mod pipeline;
mod plot;
mod runs;
mod schedule;
mod serve;
mod train;

use clap::{Args, FromArgMatches, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// What every command gets from the global flags.
#[derive(Clone)]
pub struct Context {
    /// The registry URL: `--registry`, `ALBEF_REGISTRY_URL`, or the SQLite file under `home`.
    pub registry_url: String,
    /// `--home` / `ALBEF_HOME`: the default place for the registry, datasets and checkpoints.
    pub home: PathBuf,
}

impl Context {
    pub fn new(registry: Option<String>, home: PathBuf) -> Self {
        let registry_url =
            registry.unwrap_or_else(|| format!("sqlite://{}", home.join("registry.db").display()));
        Self { registry_url, home }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Track experiments: list, show, compare and search runs; log from scripts
    Runs(runs::RunsArgs),
    /// Checkpoints and the promotion workflow: register, list, promote, rollback, history
    Ckpt(ckpt::CkptArgs),
    /// Dataset versions: list them, show one with its lineage, shards and statistics
    Datasets(datasets::DatasetsArgs),
    /// Download, validate, resize and dedupe image-text pairs into a dataset version
    Ingest(ingest::IngestArgs),
    /// The ALBEF model: compute losses on given weights, benchmark a training step
    Model(model::ModelArgs),
    /// Pretrain ALBEF on a dataset version
    Train(train::TrainArgs),
    /// Zero-shot retrieval evaluation of a checkpoint
    Eval(train::EvalArgs),
    /// Score captions with the momentum model and make a filtered dataset version
    Filter(filter::FilterArgs),
    /// Run ALBEF's data loop from one config: ingest, filter, train, evaluate, gated promotion
    Pipeline(pipeline::PipelineArgs),
    /// Manage schedules: cron-timed ingests or whole pipelines
    Schedule(schedule::ScheduleArgs),
    /// Run scheduler workers that claim and run due jobs (ingests and pipelines)
    Scheduler(schedule::SchedulerArgs),
    /// Serve the JSON API and the web dashboard
    Serve(serve::ServeArgs),
    /// The synthetic web corpus: generate it, serve it over HTTP, or write it as shards
    Corpus(corpus::CorpusArgs),
}

impl Command {
    pub async fn run(self, ctx: Context) -> anyhow::Result<()> {
        match self {
            Command::Runs(args) => args.run(ctx).await,
            Command::Ckpt(args) => args.run(ctx).await,
            Command::Datasets(args) => args.run(ctx).await,
            Command::Ingest(args) => ingest::run(args, ctx).await,
            Command::Model(args) => args.run(),
            Command::Train(args) => args.run(ctx).await,
            Command::Eval(args) => args.run(ctx).await,
            Command::Filter(args) => filter::run(args, ctx).await,
            Command::Pipeline(args) => args.run(ctx).await,
            Command::Schedule(args) => args.run(ctx).await,
            Command::Scheduler(args) => args.run(ctx).await,
            Command::Serve(args) => args.run(ctx).await,
            Command::Corpus(args) => args.run().await,
        }
    }
}

/// Parses a command's flags from a list, with the same defaults, environment variables and checks
/// as on the command line (the flags a schedule stores for its ingest jobs).
pub fn parse_flags<T: Args + FromArgMatches>(
    command: &'static str,
    flags: &[String],
) -> anyhow::Result<T> {
    let cli = T::augment_args(clap::Command::new(command).no_binary_name(true));
    let matches = cli
        .try_get_matches_from(flags)
        .map_err(|e| anyhow::anyhow!("`{command}` flags {flags:?}: {}", e.render()))?;
    T::from_arg_matches(&matches)
        .map_err(|e| anyhow::anyhow!("`{command}` flags {flags:?}: {}", e.render()))
}

/// A stage's options as its command gives them when no flag is passed (clap's defaults and
/// environment variables): the `Default` of the structs that are both a command's flags and a
/// pipeline config's section, so that the two cannot disagree.
pub fn flag_defaults<T: Args + FromArgMatches>(command: &'static str) -> T {
    parse_flags(command, &[])
        .unwrap_or_else(|e| panic!("every option of `{command}` has a default: {e:#}"))
}

/// A number of seconds from the command line that a duration is made of: finite and above 0
/// (`Duration::from_secs_f64` panics on negative, NaN and infinite values).
/// Where local copies of object-store data live under the home: `HOME/mirror/SCHEME/BUCKET/...`
/// (see `albef_dataset::store::mirror_path`).
pub fn mirror_root(home: &Path) -> PathBuf {
    home.join("mirror")
}

pub fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if is_positive_seconds(v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds above 0")),
    }
}

/// What [`positive_seconds`] accepts, for a number read from a config file.
pub fn is_positive_seconds(v: f64) -> bool {
    v.is_finite() && v > 0.0 && v < 1e9
}

/// A finite number of at least 0 (a rate, a pause that may be none).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if is_non_negative(v) => Ok(v),
        _ => Err(format!("{s:?} is not a finite number of at least 0")),
    }
}

/// What [`non_negative`] accepts, for a number read from a config file.
pub fn is_non_negative(v: f64) -> bool {
    (0.0..1e9).contains(&v)
}

/// The signal that stopped the command (2 for Ctrl-C, 15 for SIGTERM), 0 while none has.
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);

/// The signal that asked the command to stop, if one did: a command that then fails (an ingest
/// left unfinished) exits with 128 + that number, as a process killed by it would, so that a
/// supervisor tells a stop from a failure.
pub fn stopped_by() -> Option<i32> {
    Some(STOPPED_BY.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// A flag that the first Ctrl-C or SIGTERM (what Slurm, Kubernetes and torchrun send to stop a
/// job) sets, after logging `what` the command does now (it stops at its next safe point); a
/// second one exits at once with 128 + the signal's number.
pub fn stop_on_ctrl_c(what: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            tracing::warn!("cannot listen for SIGTERM: only Ctrl-C stops gracefully");
            return;
        };
        let (name, number) = tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_ok() { ("Ctrl-C", 2) } else { return },
            _ = term.recv() => ("SIGTERM", 15),
        };
        tracing::warn!("{name}: {what} (Ctrl-C or SIGTERM again aborts)");
        STOPPED_BY.store(number, Ordering::SeqCst);
        flag.store(true, Ordering::SeqCst);
        let again = tokio::select! {
            _ = tokio::signal::ctrl_c() => 2,
            _ = term.recv() => 15,
        };
        std::process::exit(128 + again);
    });
    stop
}
