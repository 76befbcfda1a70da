//! Runs the stages together with bounded memory, in img2dataset's order: a reader thread
//! (`read`) streams input rows; the dispatcher (`dispatch`) asks the assigner (`assign`,
//! with `claims` when shards are shared through the registry) whether this worker takes each
//! row's shard and turns the row into an output row, at once for malformed URLs and URL
//! duplicates, else through a fetch task (`process`) that holds one of `max_in_flight` permits
//! until its row reaches the writer; image work runs on as many blocking threads as there are
//! cores; and a writer thread (`write`) streams rows into per-shard Parquet files, committing
//! each shard as its last row arrives. Shards whose stats file exists are skipped, so a killed
//! run resumes where it stopped.
mod assign;
mod claims;
mod dispatch;
mod index;
mod process;
mod read;
mod write;

pub use claims::ShardClaims;
pub(crate) use index::{content_dup_message, load_index};

use crate::fetch::FetchConfig;
use crate::resizer::ImageConfig;
use crate::source::{self, InputSpec};
use albef_dataset::store::Folder;
use albef_dataset::{self as dataset, Status};
use albef_dataset::{Stats, StepSeconds};
use anyhow::{Context, Result};
use assign::Assigner;
use dispatch::{Dispatcher, End};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub input: InputSpec,
    /// The version's folder on this machine (with `remote`, the local mirror of the store's).
    pub output: PathBuf,
    /// The version's folder in an object store, when `--output` names one: every committed
    /// shard is uploaded (Parquet, then stats), and what other workers uploaded is pulled
    /// before the complete shards are counted.
    pub remote: Option<Folder>,
    /// Where local mirrors of object-store folders go (a parent version's dedupe index).
    pub mirror: PathBuf,
    pub shard_size: u64,
    /// This worker takes the shards with `shard % num_workers == worker_index`.
    pub worker_index: u64,
    pub num_workers: u64,
    /// Instead: take the shards claimed through the registry (see [`ShardClaims`]).
    pub claims: Option<ShardClaims>,
    pub fetch: FetchConfig,
    pub image: ImageConfig,
    /// URL, sha256 and pHash dedupe (off: every row is fetched and kept).
    pub dedupe: bool,
    /// Largest Hamming distance between pHashes of near duplicates; `None`: exact only.
    pub phash_distance: Option<u32>,
    /// Rows being fetched or processed at once, over all hosts.
    pub max_in_flight: usize,
    /// Threads decoding and resizing images.
    pub image_threads: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

impl IngestConfig {
    /// The version's URI as the registry records it: the store's, or the local folder's.
    pub fn output_uri(&self) -> String {
        match &self.remote {
            Some(folder) => folder.uri(),
            None => self.output.display().to_string(),
        }
    }

    /// The URI of shard `shard`'s Parquet file.
    pub fn shard_uri(&self, shard: u64) -> String {
        match &self.remote {
            Some(folder) => folder.shard_uri(shard),
            None => dataset::parquet_path(&self.output, shard)
                .display()
                .to_string(),
        }
    }

    /// Brings down what other workers uploaded (nothing to do for a local folder).
    pub(crate) fn pull(&self) -> Result<()> {
        self.remote.as_ref().map_or(Ok(()), Folder::pull)
    }

    /// Uploads the file `name` of the folder (nothing to do for a local folder).
    pub(crate) fn push(&self, name: &str) -> Result<()> {
        self.remote.as_ref().map_or(Ok(()), |f| f.push(name))
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            input: InputSpec::default(),
            output: PathBuf::new(),
            remote: None,
            mirror: PathBuf::new(),
            shard_size: 10_000,
            worker_index: 0,
            num_workers: 1,
            claims: None,
            fetch: FetchConfig::default(),
            image: ImageConfig::default(),
            dedupe: true,
            phash_distance: Some(crate::DEFAULT_PHASH_DISTANCE),
            max_in_flight: 512,
            image_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
        }
    }
}

/// Where earlier versions' dedupe index lives and how this version's keys are named in it.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    /// `dedup.index` of the parent version, if any.
    pub parent_index: Option<PathBuf>,
    /// Prefix of this version's keys when a later version reports them (e.g. `name@2/`).
    pub key_prefix: String,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub input_rows: u64,
    /// Rows written by this run (rows of shards completed earlier are not counted).
    pub rows_written: u64,
    pub shards_written: Vec<u64>,
    pub shards_skipped: u64,
    /// Shards this worker left unfinished (interrupted).
    pub shards_incomplete: u64,
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub rows_per_s: f64,
    pub success_per_s: f64,
    /// Mean milliseconds per row that reached each step.
    pub ms_per_image: StepSeconds,
    pub stats: Stats,
}

impl Summary {
    /// Sets the rates and per-image times from the stats and the elapsed time.
    fn rates(&mut self) {
        let per = |secs: f64, n: u64| {
            if n == 0 {
                0.0
            } else {
                1000.0 * secs / n as f64
            }
        };
        let (st, elapsed) = (&self.stats, self.elapsed_s.max(1e-9));
        self.rows_per_s = st.rows as f64 / elapsed;
        self.success_per_s = st.status(Status::Success) as f64 / elapsed;
        self.ms_per_image = StepSeconds {
            fetch: per(st.seconds.fetch, st.fetched),
            decode: per(st.seconds.decode, st.decoded),
            resize: per(st.seconds.resize, st.decoded),
            encode: per(st.seconds.encode, st.decoded),
            hash: per(st.seconds.hash, st.decoded),
            write: per(st.seconds.write, st.rows),
        };
    }

    /// Adds a later pass over the same list (shard claiming repeats passes), whose skip and
    /// completion counts replace this one's.
    pub fn absorb(&mut self, later: Summary) {
        self.rows_written += later.rows_written;
        self.shards_written.extend(later.shards_written);
        self.shards_skipped = later.shards_skipped;
        self.shards_incomplete = later.shards_incomplete;
        self.interrupted = later.interrupted;
        self.elapsed_s += later.elapsed_s;
        self.stats.add(&later.stats);
        self.rates();
    }
}

/// Digits of the row part of a key: img2dataset's `ceil(log10(shard_size))`.
fn row_digits(shard_size: u64) -> u32 {
    (shard_size.max(2) - 1).ilog10() + 1
}

/// The stable key of input row `index`: shard number then row in shard, zero-padded.
pub fn key_of(index: u64, shard_size: u64) -> String {
    let d = row_digits(shard_size);
    let (shard, row) = (index / shard_size, index % shard_size);
    format!("{:0w$}", shard * 10u64.pow(d) + row, w = 5 + d as usize)
}

/// Runs the ingest into `cfg.output`. Set `stop` to drop the fetches in flight, commit the
/// complete shards and return.
pub async fn run(cfg: &IngestConfig, lineage: &Lineage, stop: Arc<AtomicBool>) -> Result<Summary> {
    let started = Instant::now();
    check(cfg)?;
    std::fs::create_dir_all(&cfg.output)
        .with_context(|| format!("cannot create output folder {}", cfg.output.display()))?;
    let spec = cfg.input.clone();
    let total = tokio::task::spawn_blocking(move || source::count_rows(&spec)).await??;
    cfg.pull()?;
    let done: HashSet<u64> = dataset::complete_shards(&cfg.output)?.into_iter().collect();
    let index = index::open_index(cfg, lineage, &done).await?;
    let mut assigner = Assigner::new(cfg, done, stop.clone());
    let bar = progress_bar(cfg.progress, assigner.todo_rows(total));

    let (reader, rows) = read::spawn(cfg.input.clone(), stop.clone());
    let (writer, done_tx) = write::spawn(cfg, total, bar.clone());
    let mut dispatcher = Dispatcher::new(cfg, index, done_tx, stop.clone())?;
    let keeper = cfg
        .claims
        .clone()
        .map(|c| claims::Keeper::spawn(c, cfg.output.clone(), assigner.held(), stop.clone()));
    let end = dispatcher.run(rows, &mut assigner).await;
    dispatcher.finish().await;
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the shard writer panicked"))??;
    bar.finish_and_clear();
    if let Some(keeper) = keeper {
        keeper.finish().await?;
    }
    let interrupted = match end {
        End::ClaimFailed(e) => return Err(e.context("claiming a shard")),
        End::ReadFailed(e) => return Err(e.context("reading the input list")),
        End::Stopped => true,
        // Drained, but a stop may have dropped the last fetches.
        End::Drained => stop.load(std::sync::atomic::Ordering::Relaxed),
    };
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the input reader panicked"))??;
    let mut summary = Summary {
        input_rows: total,
        rows_written: written.stats.rows,
        shards_written: written.shards,
        shards_skipped: assigner.skipped(),
        shards_incomplete: written.incomplete,
        interrupted,
        elapsed_s: started.elapsed().as_secs_f64(),
        rows_per_s: 0.0,
        success_per_s: 0.0,
        ms_per_image: StepSeconds::default(),
        stats: written.stats,
    };
    summary.rates();
    Ok(summary)
}

/// Checks the shard size and the worker numbers.
pub fn check(cfg: &IngestConfig) -> Result<()> {
    anyhow::ensure!(cfg.shard_size > 0, "--shard-size must be at least 1");
    anyhow::ensure!(
        cfg.num_workers > 0 && cfg.worker_index < cfg.num_workers,
        "--worker-index {} must be below --num-workers {}",
        cfg.worker_index,
        cfg.num_workers
    );
    Ok(())
}

/// A bar of `rows` rows on stderr, or a hidden one when `progress` is off.
fn progress_bar(progress: bool, rows: u64) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(rows);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
