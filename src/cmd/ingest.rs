//! `albef ingest`: URL lists -> a registered dataset version of Parquet shards. Parses the
//! flags into `albef_ingest::IngestConfig`, handles Ctrl-C, prints the summary; the work is in
//! the `albef-ingest` crate.
use crate::output::{print_json, Format, Table};
use albef_dataset::store::{self, Folder};
use albef_ingest::catalog::Outcome;
use albef_ingest::fetch::FetchConfig;
use albef_ingest::resizer::{ImageConfig, ResizeMode};
use albef_ingest::schedule_worker::{self, LockOptions};
use albef_ingest::source::InputSpec;
use albef_ingest::{IngestConfig, ShardClaims};
use albef_registry::Registry;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
enum Resize {
    KeepRatio,
    CenterCrop,
    Border,
    No,
}

#[derive(Args)]
pub struct IngestArgs {
    /// URL list: a file, a folder or a glob of .tsv/.csv/.json/.jsonl/.parquet (optionally .gz)
    #[arg(long)]
    input: String,
    /// Folder of the dataset version (Parquet shards, stats, dedupe index), or an object-store
    /// prefix (s3://bucket/prefix, gs://..., az://...): each shard is uploaded as it is
    /// committed, and workers on other machines share it with no shared folder
    #[arg(long, value_name = "LOCATION")]
    output: String,
    /// Dataset name in the registry; the run makes its next version
    #[arg(long)]
    pub(super) dataset: String,
    #[command(flatten)]
    opts: IngestOptions,
    /// This worker's index among --num-workers (shard % N == I)
    #[arg(long, default_value_t = 0)]
    worker_index: u64,
    /// Number of workers sharing the list
    #[arg(long, default_value_t = 1)]
    num_workers: u64,
    /// Share the list with other workers, on any machines with this registry (Postgres) and
    /// this output folder, by claiming shards through registry leases instead of
    /// --worker-index/--num-workers. Each worker stays until every shard is complete and takes
    /// over the shards of a worker that died; start every worker of the list with this flag
    #[arg(long, conflicts_with_all = ["worker_index", "num_workers"])]
    claim_shards: bool,
    /// Seconds a shard claim lasts without renewal (renewed every third of it): how long a dead
    /// worker's shards wait before another worker takes them over
    #[arg(long, default_value_t = 60.0, requires = "claim_shards", value_parser = super::positive_seconds)]
    claim_lease: f64,
    /// Seconds to wait for another ingest of the same dataset to finish (0: exit at once with a
    /// message naming it); overlapping runs from cron never write one dataset together
    #[arg(long, default_value_t = 0)]
    lock_wait: u64,
    /// Output format of the summary
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// How a URL list is read, fetched, checked, resized and deduplicated: the flags of `albef
/// ingest` besides its input, output, dataset and worker flags, and the `[ingest]` section of a
/// pipeline config (the same names, with `_` for `-`; unset keys take the flags' defaults).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct IngestOptions {
    /// URL column [default: url or URL]
    #[arg(long)]
    url_col: Option<String>,
    /// Caption column [default: caption, TEXT or text]
    #[arg(long)]
    caption_col: Option<String>,
    /// Column names of a headerless TSV/CSV, e.g. caption,url (CC3M) or url,caption (CC12M)
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Input columns to carry into the shards, e.g. similarity
    #[arg(long, value_delimiter = ',')]
    keep_cols: Vec<String>,
    /// Rows per shard
    #[arg(long, default_value_t = 10_000)]
    shard_size: u64,
    /// Image size: the shorter side for keep_ratio and center_crop, the square for border
    #[arg(long, default_value_t = 256)]
    image_size: u32,
    /// How to resize
    #[arg(long, value_enum, default_value_t = Resize::KeepRatio)]
    resize_mode: Resize,
    /// JPEG quality of the stored images
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    quality: u8,
    /// Reject images whose shorter side is below this many pixels
    #[arg(long, default_value_t = 64)]
    min_size: u32,
    /// Reject images whose longer/shorter side ratio exceeds this
    #[arg(long, default_value_t = 10.0)]
    max_aspect_ratio: f64,
    /// Refuse images declaring more pixels than this (decompression bombs)
    #[arg(long, default_value_t = 80_000_000)]
    max_pixels: u64,
    /// Concurrent requests per host
    #[arg(long, default_value_t = 16)]
    per_host_concurrency: usize,
    /// Requests per second per host (0: no limit)
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative)]
    per_host_rate: f64,
    /// Rows being fetched or processed at once, over all hosts
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Seconds allowed per request attempt (connect, headers and body)
    #[arg(long, default_value_t = 10.0, value_parser = super::positive_seconds)]
    timeout: f64,
    /// Seconds allowed to connect
    #[arg(long, default_value_t = 5.0, value_parser = super::positive_seconds)]
    connect_timeout: f64,
    /// Retries of transient failures (timeouts, resets, 5xx, 429), with exponential backoff
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Seconds before the first retry (doubles each time, with jitter)
    #[arg(long, default_value_t = 0.5, value_parser = super::non_negative)]
    backoff: f64,
    /// Largest download in bytes
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: u64,
    /// Token added to the User-Agent, matched by `token: noai` X-Robots-Tag directives and by
    /// robots.txt groups (besides `albef-ingest`)
    #[arg(long)]
    user_agent_token: Option<String>,
    /// Ignore X-Robots-Tag opt-outs (noai, noimageai, noindex, noimageindex)
    #[arg(long)]
    ignore_x_robots_tag: bool,
    /// Also obey robots.txt (RFC 9309; read once per origin; a 5xx or unreachable one disallows
    /// the origin)
    #[arg(long)]
    respect_robots_txt: bool,
    /// Turn off URL, sha256 and pHash dedupe
    #[arg(long)]
    no_dedupe: bool,
    /// Largest pHash Hamming distance of near duplicates (-1: exact duplicates only)
    #[arg(long, default_value_t = albef_ingest::DEFAULT_PHASH_DISTANCE as i32, allow_hyphen_values = true)]
    phash_distance: i32,
    /// Threads decoding and resizing images [default: the number of cores]
    #[arg(long)]
    image_threads: Option<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        super::flag_defaults("albef ingest")
    }
}

impl IngestOptions {
    /// The checks clap's value parsers make on the command line, for options read from a file.
    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            anyhow::ensure!(
                super::is_positive_seconds(v),
                "{name} = {v} is not a number of seconds above 0"
            );
        }
        for (name, v) in [
            ("per_host_rate", self.per_host_rate),
            ("backoff", self.backoff),
        ] {
            anyhow::ensure!(
                super::is_non_negative(v),
                "{name} = {v} is not a finite number of at least 0"
            );
        }
        anyhow::ensure!(
            (1..=100).contains(&self.quality),
            "quality = {} is not in 1..=100",
            self.quality
        );
        Ok(())
    }
}

impl IngestArgs {
    /// One worker ingesting `input` into the next version of `dataset` in the folder `output`
    /// (the pipeline's ingest stage), waiting up to `lock_wait` seconds for another ingest of
    /// the dataset to finish.
    pub(super) fn one_worker(
        input: String,
        output: String,
        dataset: String,
        opts: IngestOptions,
        lock_wait: u64,
    ) -> Self {
        IngestArgs {
            input,
            output,
            dataset,
            opts,
            worker_index: 0,
            num_workers: 1,
            claim_shards: false,
            claim_lease: 60.0,
            lock_wait,
            format: Format::Table,
        }
    }

    /// The ingest this run describes; an object-store `--output` is mirrored under `home`.
    pub(super) fn config(&self, home: &Path) -> Result<IngestConfig> {
        let o = &self.opts;
        o.check()?;
        let defaults = IngestConfig::default();
        let mirror = super::mirror_root(home);
        let (output, remote) = if store::is_remote(&self.output) {
            let folder = Folder::open(&self.output, &mirror)
                .with_context(|| format!("--output {}", self.output))?;
            (folder.local.clone(), Some(folder))
        } else {
            (PathBuf::from(&self.output), None)
        };
        Ok(IngestConfig {
            input: InputSpec {
                input: self.input.clone(),
                url_col: o.url_col.clone(),
                caption_col: o.caption_col.clone(),
                columns: o.columns.clone(),
                keep_cols: o.keep_cols.clone(),
            },
            output,
            remote,
            mirror,
            shard_size: o.shard_size,
            worker_index: self.worker_index,
            num_workers: self.num_workers,
            claims: None,
            fetch: FetchConfig {
                timeout: Duration::from_secs_f64(o.timeout),
                connect_timeout: Duration::from_secs_f64(o.connect_timeout),
                retries: o.retries,
                backoff: Duration::from_secs_f64(o.backoff),
                max_body_bytes: o.max_body_bytes,
                per_host_concurrency: o.per_host_concurrency,
                per_host_rate: o.per_host_rate,
                user_agent_token: o.user_agent_token.clone(),
                disallowed_directives: if o.ignore_x_robots_tag {
                    Vec::new()
                } else {
                    FetchConfig::default().disallowed_directives
                },
                respect_robots_txt: o.respect_robots_txt,
                ..FetchConfig::default()
            },
            image: ImageConfig {
                size: o.image_size,
                mode: match o.resize_mode {
                    Resize::KeepRatio => ResizeMode::KeepRatio,
                    Resize::CenterCrop => ResizeMode::CenterCrop,
                    Resize::Border => ResizeMode::Border,
                    Resize::No => ResizeMode::No,
                },
                min_size: o.min_size,
                max_aspect_ratio: o.max_aspect_ratio,
                max_pixels: o.max_pixels,
                quality: o.quality,
            },
            dedupe: !o.no_dedupe,
            phash_distance: u32::try_from(o.phash_distance).ok(),
            max_in_flight: o.max_in_flight,
            image_threads: o.image_threads.unwrap_or(defaults.image_threads),
            progress: true,
        })
    }

    /// The parameters recorded with the dataset version.
    pub(super) fn params(&self) -> serde_json::Value {
        let o = &self.opts;
        json!({
            "input": self.input, "url_col": o.url_col, "caption_col": o.caption_col,
            "columns": o.columns, "keep_cols": o.keep_cols, "shard_size": o.shard_size,
            "image_size": o.image_size, "resize_mode": o.resize_mode,
            "quality": o.quality, "min_size": o.min_size, "max_aspect_ratio": o.max_aspect_ratio,
            "max_pixels": o.max_pixels, "per_host_concurrency": o.per_host_concurrency,
            "per_host_rate": o.per_host_rate, "timeout": o.timeout, "retries": o.retries,
            "max_body_bytes": o.max_body_bytes, "user_agent_token": o.user_agent_token,
            "ignore_x_robots_tag": o.ignore_x_robots_tag, "respect_robots_txt": o.respect_robots_txt,
            "dedupe": !o.no_dedupe, "phash_distance": o.phash_distance,
            "num_workers": self.num_workers, "claim_shards": self.claim_shards,
        })
    }
}

fn print_summary(o: &Outcome, format: Format) -> Result<()> {
    if format == Format::Json {
        return print_json(&serde_json::to_value(o)?);
    }
    let s = &o.summary;
    let mut t = Table::new(["item", "value"]);
    let mut add = |k: &str, v: serde_json::Value| t.push(vec![json!(k), v]);
    add("dataset", json!(format!("{}@{}", o.dataset, o.version)));
    add("folder", json!(o.uri));
    add("finished", json!(o.finished));
    add("input rows", json!(s.input_rows));
    add("rows written", json!(s.rows_written));
    add("shards written", json!(s.shards_written.len()));
    add(
        "shards skipped (done or other workers)",
        json!(s.shards_skipped),
    );
    for (status, n) in &s.stats.by_status {
        add(&format!("status {status}"), json!(n));
    }
    for (layer, n) in &s.stats.dedupe {
        add(&format!("duplicates by {layer}"), json!(n));
    }
    for (kind, n) in &s.stats.by_error_kind {
        add(&format!("error {kind}"), json!(n));
    }
    add("elapsed s", json!(format!("{:.1}", s.elapsed_s)));
    add("rows/s", json!(format!("{:.0}", s.rows_per_s)));
    add("successes/s", json!(format!("{:.0}", s.success_per_s)));
    let ms = &s.ms_per_image;
    add(
        "ms per image: fetch decode resize encode hash write",
        json!(format!(
            "{:.2} {:.2} {:.2} {:.2} {:.2} {:.3}",
            ms.fetch, ms.decode, ms.resize, ms.encode, ms.hash, ms.write
        )),
    );
    t.print(format)
}

/// Ingests `args` into its dataset while holding the dataset's lock (`albef ingest` and the
/// pipeline's ingest stage); `stop` finishes the rows in flight and commits complete shards.
pub(super) async fn ingest_dataset(
    reg: &Registry,
    args: &IngestArgs,
    home: &Path,
    stop: Arc<AtomicBool>,
) -> Result<Outcome> {
    anyhow::ensure!(
        args.worker_index < args.num_workers,
        "--worker-index {} is not below --num-workers {}: give each of N workers one index from 0 \
         to N-1",
        args.worker_index,
        args.num_workers
    );
    let owner = format!("{}:ingest", albef_registry::process_owner());
    let mut config = args.config(home)?;
    let mut wait = Duration::from_secs(args.lock_wait);
    if args.claim_shards {
        anyhow::ensure!(
            args.claim_lease.is_finite() && args.claim_lease >= 1.0,
            "--claim-lease {} must be at least 1 second",
            args.claim_lease
        );
        config.claims = Some(ShardClaims {
            reg: reg.clone(),
            scope: String::new(), // set to the version's when it is known
            owner: owner.clone(),
            lease: Duration::from_secs_f64(args.claim_lease),
        });
    }
    if args.claim_shards || args.num_workers > 1 {
        // Workers started together queue for the moment it takes each to join the version.
        wait = wait.max(Duration::from_secs(120));
    }
    let lock = LockOptions {
        owner,
        lease: Duration::from_secs(30),
        wait,
    };
    schedule_worker::ingest_exclusive(reg, &args.dataset, config, args.params(), stop, &lock).await
}

/// An error for an ingest that was interrupted before every shard was complete.
pub(super) fn check_complete(outcome: &Outcome) -> Result<()> {
    if outcome.summary.interrupted {
        anyhow::bail!(
            "interrupted: {} shards committed; run the same command again to continue",
            outcome.summary.shards_written.len()
        );
    }
    Ok(())
}

pub async fn run(args: IngestArgs, ctx: super::Context) -> Result<()> {
    let reg = Registry::connect(&ctx.registry_url)
        .await
        .with_context(|| format!("cannot open the registry at {}", ctx.registry_url))?;
    let stop =
        super::stop_on_ctrl_c("dropping the fetches in flight and committing the complete shards");
    let outcome = ingest_dataset(&reg, &args, &ctx.home, stop).await?;
    print_summary(&outcome, args.format)?;
    check_complete(&outcome)
}
