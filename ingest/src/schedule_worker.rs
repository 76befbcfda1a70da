//! The scheduler's workers, and the dataset lock around every ingest.
//!
//! A job is an ingest ([`IngestJob`]) or work the caller's decoder makes of the job's
//! parameters ([`Job::Other`]: the CLI's scheduled pipelines); both run under the same lease,
//! heartbeat, retries and takeover.
//!
//! [`run_scheduler`] runs a ticker and N workers over the registry's job queue
//! (`albef_registry::jobs`): the ticker enqueues due schedules (catch-up policy: all ticks
//! missed while nothing ran give ONE run, then the cron cadence resumes; a tick that falls while
//! the schedule's job is queued or running waits for it, so at most one run of a schedule exists
//! at a time); each worker claims a due job with a lease, renews the lease by heartbeat while the
//! ingest runs, and records the outcome: SUCCEEDED with the ingest's summary as the run's stats,
//! or FAILED and queued again after an exponential backoff until the job's max attempts. A job
//! whose worker died is claimed again once its lease runs out; the new attempt continues the
//! same dataset version from the shards already committed (the ingest resumes from its complete
//! shards and never rewrites one), and the dead attempt's run is marked LOST. A worker told to
//! stop (SIGTERM, Ctrl-C) stops its ingest at once and gives the job back: QUEUED, due now, the
//! attempt not counted.
//!
//! [`ingest_exclusive`] is what both `albef ingest` and the workers call: the ingest under the
//! dataset's lock (`Registry::lock_dataset`), so two overlapping runs on one dataset (cron or a
//! Kubernetes CronJob starting a run while the last one is still going) never write it at once:
//! the second waits up to `lock_wait`, then exits with a message naming the holder.
use crate::catalog::{self, Outcome};
use crate::pipeline::IngestConfig;
use albef_registry::jobs::{Claim, Retry};
use albef_registry::Registry;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An ingest as a job describes it: what `albef ingest` would get from its flags.
pub struct IngestJob {
    pub dataset: String,
    pub config: IngestConfig,
    /// The parameters recorded with the dataset version.
    pub params: Value,
}

/// Work that the caller's decoder makes of a job (the CLI's scheduled pipelines): started with
/// the flag that asks it to stop at its next safe point, it returns the run's stats.
pub type JobWork =
    Box<dyn FnOnce(Arc<AtomicBool>) -> Pin<Box<dyn Future<Output = Result<Value>> + Send>> + Send>;

/// What a job runs.
pub enum Job {
    Ingest(Box<IngestJob>),
    Other(JobWork),
}

/// Turns a job's stored parameters into its work (the CLI parses `albef ingest` flags, or reads
/// the pipeline config a schedule names).
pub type JobDecoder = Arc<dyn Fn(&Value) -> Result<Job> + Send + Sync>;

/// How `albef scheduler run` behaves.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Jobs run at once by this process.
    pub workers: usize,
    /// Enqueue what is due now, run jobs until none is queued or running, then exit.
    pub once: bool,
    /// Lease of a claimed job (and of the dataset lock); renewed every third of it.
    pub lease: Duration,
    /// How often the ticker looks for due schedules and idle workers look for jobs.
    pub poll: Duration,
    /// First retry delay after a failed attempt; doubles per attempt (at most an hour).
    pub backoff: Duration,
    /// Attempts of each new job before it is FAILED.
    pub max_attempts: i64,
    /// How long a job waits for a dataset lock held by another ingest.
    pub lock_wait: Duration,
    /// Names this process's workers in leases and job runs (`albef_registry::process_owner()`
    /// by default).
    pub owner: String,
}

/// What the workers of one `scheduler run` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SchedulerReport {
    pub enqueued: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub taken_over: u64,
}

/// Who takes a dataset lock and how.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// Names the holder in the lock and in the message another ingest prints.
    pub owner: String,
    /// The lock's lease, renewed every third of it.
    pub lease: Duration,
    /// How long to wait for another holder before giving up (zero: fail at once).
    pub wait: Duration,
}

/// Runs the ingest of `dataset` while holding its dataset lock. Fails, after the committed
/// shards are registered, when the lock was lost during the run. Workers that share a list
/// (shard claims or `num_workers > 1`) hold it only while they join the dataset version.
pub async fn ingest_exclusive(
    reg: &Registry,
    dataset: &str,
    config: IngestConfig,
    params: Value,
    stop: Arc<AtomicBool>,
    lock: &LockOptions,
) -> Result<Outcome> {
    if config.claims.is_some() || config.num_workers > 1 {
        // Workers sharing one list hold the lock only while they join the version (claims: each
        // worker; --worker-index: worker 0 makes it, the others wait for its marker); the
        // claims or the shard numbers keep them apart after that.
        if config.worker_index == 0 {
            let lock = reg
                .lock_dataset(dataset, &lock.owner, lock.lease, lock.wait, stop.clone())
                .await?;
            catalog::join_version(reg, dataset, &config, params.clone()).await?;
            lock.release().await?;
        }
        return catalog::ingest(reg, dataset, config, params, stop).await;
    }
    let lock = reg
        .lock_dataset(dataset, &lock.owner, lock.lease, lock.wait, stop.clone())
        .await?;
    let outcome = catalog::ingest(reg, dataset, config, params, stop).await;
    if lock.is_lost() {
        bail!("lost the lock of dataset {dataset:?} during the ingest (the registry was unreachable for longer than the lease); its committed shards are kept, run it again to finish");
    }
    lock.release().await?;
    outcome
}

/// Runs the ticker and `opts.workers` workers until `stop` is set (or, with `opts.once`, until
/// no job is queued or running).
pub async fn run_scheduler(
    reg: Registry,
    opts: SchedulerOptions,
    decode: JobDecoder,
    stop: Arc<AtomicBool>,
) -> Result<SchedulerReport> {
    let enqueued = reg.enqueue_due_now(opts.max_attempts).await?;
    tracing::info!(jobs = ?enqueued, "enqueued due schedules");
    let ticker = (!opts.once).then(|| {
        let (reg, opts, stop) = (reg.clone(), opts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(opts.poll).await;
                match reg.enqueue_due_now(opts.max_attempts).await {
                    Ok(jobs) if !jobs.is_empty() => {
                        tracing::info!(?jobs, "enqueued due schedules");
                        n += jobs.len() as u64;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("ticker: {e:#}"),
                }
            }
            n
        })
    });
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.workers.max(1) {
        let (reg, opts, decode, stop) = (reg.clone(), opts.clone(), decode.clone(), stop.clone());
        workers.spawn(async move { worker(reg, opts, decode, stop, w).await });
    }
    let mut report = SchedulerReport {
        enqueued: enqueued.len() as u64,
        ..SchedulerReport::default()
    };
    let mut first_error = None;
    while let Some(done) = workers.join_next().await {
        match done.context("a scheduler worker panicked")? {
            Ok(r) => {
                report.succeeded += r.succeeded;
                report.failed += r.failed;
                report.taken_over += r.taken_over;
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(t) = ticker {
        stop.store(true, Ordering::Relaxed);
        report.enqueued += t.await.unwrap_or(0);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// One worker: claim, run, record, until stopped (or, with `once`, until the queue is empty).
async fn worker(
    reg: Registry,
    opts: SchedulerOptions,
    decode: JobDecoder,
    stop: Arc<AtomicBool>,
    index: usize,
) -> Result<SchedulerReport> {
    let owner = format!("{}:w{index}", opts.owner);
    let mut report = SchedulerReport::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(claim) = reg.claim_job(&owner, opts.lease).await? else {
            reg.fail_exhausted().await?;
            if opts.once && reg.active_jobs().await? == 0 {
                break;
            }
            tokio::time::sleep(opts.poll).await;
            continue;
        };
        if let Some(dead) = &claim.took_over_from {
            tracing::warn!(
                job = claim.job.id,
                dead,
                owner,
                "took over a job whose lease expired"
            );
            report.taken_over += 1;
        }
        tracing::info!(
            job = claim.job.id,
            attempt = claim.job.attempts,
            owner,
            "running job"
        );
        match run_job(&reg, &opts, &decode, &stop, &claim).await {
            Ok((stats, version)) => {
                if reg.finish_job(&claim, &stats, version).await? {
                    tracing::info!(job = claim.job.id, "job succeeded");
                    report.succeeded += 1;
                } else {
                    tracing::warn!(
                        job = claim.job.id,
                        "job finished after another worker took it over"
                    );
                }
            }
            Err(e) if stop.load(Ordering::Relaxed) => {
                let reason = format!("stopped by a signal ({e:#}); queued again");
                if reg.release_job(&claim, &reason).await? {
                    tracing::warn!(job = claim.job.id, "{reason}, its attempt not counted");
                }
            }
            Err(e) => {
                let error = format!("{e:#}");
                report.failed += 1;
                match reg.fail_job(&claim, &error, opts.backoff).await? {
                    Retry::At(t) => tracing::warn!(
                        job = claim.job.id,
                        error,
                        retry_at = t,
                        "job failed; will retry"
                    ),
                    Retry::GaveUp => {
                        tracing::error!(job = claim.job.id, error, "job failed; no attempts left")
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Runs one claimed job with its heartbeat; returns the run's stats and the dataset version it
/// made, if it is an ingest.
async fn run_job(
    reg: &Registry,
    opts: &SchedulerOptions,
    decode: &JobDecoder,
    stop: &Arc<AtomicBool>,
    claim: &Claim,
) -> Result<(Value, Option<i64>)> {
    let job = decode(&claim.job.config)
        .with_context(|| format!("job {}: its parameters are not valid", claim.job.id))?;
    // The job stops when the scheduler is stopped or when another worker took the job over.
    let job_stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = spawn_heartbeat(reg, opts.lease, claim, stop, &job_stop, &lost);
    let outcome = match job {
        Job::Ingest(job) => run_ingest(reg, opts, claim, *job, job_stop)
            .await
            .map(|(stats, version)| (stats, Some(version))),
        Job::Other(work) => work(job_stop).await.map(|stats| (stats, None)),
    };
    heartbeat.abort();
    if lost.load(Ordering::SeqCst) {
        bail!("another worker took the job over (this worker's lease had expired)");
    }
    outcome
}

/// The ingest of a job, in the job's own folder; returns the stats and the dataset version.
async fn run_ingest(
    reg: &Registry,
    opts: &SchedulerOptions,
    claim: &Claim,
    job: IngestJob,
    job_stop: Arc<AtomicBool>,
) -> Result<(Value, i64)> {
    let mut config = job.config;
    // Every job gets its own folder, so that a takeover continues the same version and the
    // next scheduled run makes a new one.
    config.output = config.output.join(format!("job-{}", claim.job.id));
    config.progress = false;
    let outcome = ingest_exclusive(
        reg,
        &job.dataset,
        config,
        job.params,
        job_stop,
        &LockOptions {
            owner: claim.owner.clone(),
            lease: opts.lease,
            wait: opts.lock_wait,
        },
    )
    .await?;
    if outcome.summary.interrupted {
        bail!(
            "interrupted by shutdown after {} shards; the next attempt continues",
            outcome.summary.shards_written.len()
        );
    }
    if !outcome.finished {
        bail!(
            "dataset {}@{} is not complete ({} shards left unfinished)",
            outcome.dataset,
            outcome.version,
            outcome.summary.shards_incomplete
        );
    }
    let stats = json!({
        "dataset": format!("{}@{}", outcome.dataset, outcome.version),
        "uri": outcome.uri,
        "input_rows": outcome.summary.input_rows,
        "rows_written": outcome.summary.rows_written,
        "shards_written": outcome.summary.shards_written,
        "elapsed_s": outcome.summary.elapsed_s,
        "rows_per_s": outcome.summary.rows_per_s,
        "stats": outcome.summary.stats,
    });
    Ok((stats, outcome.version_id))
}

/// Renews the job's lease every third of `lease` while it runs: sets `job_stop` as soon as the
/// scheduler is stopped (within 200 ms), and `lost` and `job_stop` when another worker took
/// the job over.
fn spawn_heartbeat(
    reg: &Registry,
    lease: Duration,
    claim: &Claim,
    stop: &Arc<AtomicBool>,
    job_stop: &Arc<AtomicBool>,
    lost: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (reg, claim) = (reg.clone(), claim.clone());
    let (job_stop, lost, stop) = (job_stop.clone(), lost.clone(), stop.clone());
    let tick = (lease / 3).min(Duration::from_millis(200));
    tokio::spawn(async move {
        let mut renew_at = tokio::time::Instant::now() + lease / 3;
        loop {
            tokio::time::sleep(tick).await;
            if stop.load(Ordering::Relaxed) {
                job_stop.store(true, Ordering::Relaxed);
            }
            if tokio::time::Instant::now() < renew_at {
                continue;
            }
            renew_at += lease / 3;
            match reg.heartbeat(&claim, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::SeqCst);
                    job_stop.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => tracing::warn!(job = claim.job.id, "heartbeat failed: {e:#}"),
            }
        }
    })
}
