//! `albef schedule add|list|remove|trigger|jobs` (schedules in the registry) and `albef
//! scheduler run` (the ticker and workers of `albef_ingest::schedule_worker`). A schedule runs
//! either ingests, storing the `albef ingest` flags of its jobs (parsed here, as `albef ingest`
//! parses them, when the schedule is added, to refuse bad flags early, and when a job runs), or
//! whole pipelines, storing the path of the pipeline config (read when the schedule is added and
//! again by each job, which runs `albef pipeline --config FILE`).
use super::ingest::IngestArgs;
use super::pipeline::{self, RunRequest};
use crate::output::{Format, Table};
use albef_ingest::schedule_worker::{self, IngestJob, Job, JobDecoder, JobWork, SchedulerOptions};
use albef_registry::jobs::format_utc;
use albef_registry::Registry;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Add a schedule: a cron expression, its time zone, and the `albef ingest` flags of its jobs
    /// or the pipeline config they run
    Add(AddArgs),
    /// List schedules: cron, next due time, last run and the status of the latest job
    List {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a schedule; its queued job is cancelled, a running one finishes, history stays
    Remove {
        /// The schedule's name
        name: String,
    },
    /// Enqueue a job of a schedule now, unless one is already queued or running
    Trigger {
        /// The schedule's name
        name: String,
        /// Attempts before the job is FAILED
        #[arg(long, default_value_t = 3)]
        max_attempts: i64,
    },
    /// List jobs with their attempts (job runs: owner, status, takeovers, stats)
    Jobs {
        /// Only the jobs of this schedule
        #[arg(long)]
        schedule: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Args)]
struct AddArgs {
    /// The schedule's name
    name: String,
    /// When it runs, in --tz: "MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK" (e.g. "0 3 * * *"), or
    /// @hourly, @daily, @weekly, @monthly, @yearly. Also L (last day; 5#L: last Friday), 15W
    /// (weekday nearest the 15th), mon#2 (second Monday). When both day fields are set, either
    /// matches; "+mon" in the day of week requires both
    #[arg(long)]
    cron: String,
    /// The IANA time zone the cron expression is read in (e.g. Europe/Berlin); across daylight
    /// saving changes a skipped time runs after the gap and a repeated time runs once
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Output format of the added schedule
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Each job runs this pipeline config, as `albef pipeline --config FILE` would: it
    /// continues the pipeline's unfinished run or starts a new one
    #[arg(long, value_name = "FILE", conflicts_with = "ingest")]
    pipeline: Option<PathBuf>,
    /// The `albef ingest` flags of each job, after the options above: --input LIST --output DIR
    /// --dataset NAME [...]. Each job writes its version under DIR/job-ID
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 1..,
        required_unless_present = "pipeline",
        value_name = "INGEST FLAGS"
    )]
    ingest: Vec<String>,
}

/// A job's stored flags, parsed exactly as `albef ingest` parses its own.
fn parse_ingest_flags(argv: &[String]) -> Result<IngestArgs> {
    super::parse_flags("albef ingest", argv)
}

/// The `albef ingest` flags a job's parameters hold.
fn job_flags(config: &Value) -> Result<Vec<String>> {
    let flags = config
        .get("ingest_args")
        .with_context(|| format!("job parameters {config} have no \"ingest_args\""))?;
    serde_json::from_value(flags.clone())
        .with_context(|| format!("\"ingest_args\" of {config} is not a list of strings"))
}

/// The job a schedule's stored parameters describe: a pipeline run when they name a pipeline
/// config, an ingest otherwise.
fn decode_job(ctx: &super::Context, reg: &Registry, config: &Value) -> Result<Job> {
    if let Some(path) = config.get(PIPELINE_KEY) {
        let path: PathBuf = serde_json::from_value(path.clone())
            .with_context(|| format!("\"{PIPELINE_KEY}\" of {config} is not a path"))?;
        pipeline::check_config(&path)?;
        let (ctx, reg) = (ctx.clone(), reg.clone());
        let work: JobWork = Box::new(move |stop| {
            let run: Pin<Box<dyn Future<Output = Result<Value>> + Send>> = Box::pin(async move {
                let request = RunRequest {
                    config: path,
                    work_dir: None,
                    new_run: false,
                    from: None,
                };
                pipeline::run_pipeline(&ctx, &reg, &request, stop).await
            });
            run
        });
        return Ok(Job::Other(work));
    }
    let args = parse_ingest_flags(&job_flags(config)?)?;
    Ok(Job::Ingest(Box::new(IngestJob {
        dataset: args.dataset.clone(),
        config: args.config(&ctx.home)?,
        params: args.params(),
    })))
}

/// The key of a pipeline schedule's parameters that holds its config's absolute path.
const PIPELINE_KEY: &str = "pipeline";

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |t| json!(format_utc(t)))
}

impl ScheduleArgs {
    pub async fn run(self, ctx: super::Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url).await?;
        match self.command {
            ScheduleCommand::Add(a) => {
                let params = match &a.pipeline {
                    Some(path) => {
                        pipeline::check_config(path)?;
                        let path = path
                            .canonicalize()
                            .with_context(|| format!("cannot resolve {}", path.display()))?;
                        Value::Object(serde_json::Map::from_iter([(
                            PIPELINE_KEY.to_string(),
                            json!(path),
                        )]))
                    }
                    None => {
                        parse_ingest_flags(&a.ingest)?;
                        json!({ "ingest_args": a.ingest })
                    }
                };
                let s = reg.add_schedule(&a.name, &a.cron, &a.tz, &params).await?;
                schedules_table(&[s]).print(a.format)
            }
            ScheduleCommand::List { format } => {
                schedules_table(&reg.schedules().await?).print(format)
            }
            ScheduleCommand::Remove { name } => {
                reg.remove_schedule(&name).await?;
                println!("removed schedule {name}");
                Ok(())
            }
            ScheduleCommand::Trigger { name, max_attempts } => {
                match reg.trigger_schedule(&name, max_attempts).await? {
                    Some(id) => println!("queued job {id} of schedule {name}"),
                    None => println!("schedule {name} already has a queued or running job"),
                }
                Ok(())
            }
            ScheduleCommand::Jobs { schedule, format } => {
                let mut t = Table::new([
                    "job",
                    "schedule",
                    "status",
                    "attempts",
                    "run_at",
                    "owner",
                    "runs",
                    "last_error",
                ]);
                for job in reg.jobs(schedule.as_deref()).await? {
                    let runs = reg.job_runs(job.id).await?;
                    let runs = if format == Format::Json {
                        serde_json::to_value(&runs)?
                    } else {
                        json!(runs
                            .iter()
                            .map(|r| format!("#{} {} {}", r.attempt, r.owner, r.status))
                            .collect::<Vec<_>>()
                            .join(", "))
                    };
                    t.push(vec![
                        json!(job.id),
                        json!(job.schedule_id),
                        json!(job.status),
                        json!(format!("{}/{}", job.attempts, job.max_attempts)),
                        time(Some(job.run_at)),
                        json!(job.owner),
                        runs,
                        json!(job.last_error),
                    ]);
                }
                t.print(format)
            }
        }
    }
}

fn schedules_table(list: &[albef_registry::jobs::Schedule]) -> Table {
    let mut t = Table::new([
        "name", "cron", "tz", "next_run", "last_run", "status", "jobs", "enabled", "ingest",
    ]);
    for s in list {
        let flags = match s.config.get(PIPELINE_KEY) {
            Some(path) => format!("--pipeline {}", path.as_str().unwrap_or_default()),
            None => job_flags(&s.config).map_or_else(|_| s.config.to_string(), |f| f.join(" ")),
        };
        t.push(vec![
            json!(s.name),
            json!(s.cron),
            json!(s.tz),
            time(s.next_run_at),
            time(s.last_run_at),
            json!(s.last_status),
            json!(s.jobs),
            json!(s.enabled),
            json!(flags),
        ]);
    }
    t
}

#[derive(Args)]
pub struct SchedulerArgs {
    #[command(subcommand)]
    command: SchedulerCommand,
}

#[derive(Subcommand)]
enum SchedulerCommand {
    /// Run the ticker and workers: enqueue due schedules, claim jobs with leases, run the ingests.
    ///
    /// Catch-up policy: ticks missed while no scheduler ran (downtime) give ONE run as soon as a
    /// scheduler starts, then the cron cadence resumes from the next tick after now. At most one
    /// job of a schedule is queued or running at a time; a tick that falls during a run waits
    /// and gives one run after it. A job whose worker died (no heartbeat) is claimed again when
    /// its lease expires and continues from the shards already committed; its history shows
    /// the lost attempt and the new owner (`albef schedule jobs`). Failed attempts are retried
    /// after --backoff-secs, doubling each time, up to --max-attempts.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Jobs this process runs at once
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Enqueue what is due now, run jobs until none is queued or running, then exit
    #[arg(long)]
    once: bool,
    /// Seconds a claimed job's lease lasts; renewed every third of it. A dead worker's job is
    /// taken over this long after its last heartbeat
    #[arg(long, default_value_t = 60)]
    lease_secs: u64,
    /// Seconds between looks for due schedules and jobs
    #[arg(long, default_value_t = 5.0)]
    poll_secs: f64,
    /// Seconds before the first retry of a failed job (doubles per attempt, at most an hour)
    #[arg(long, default_value_t = 30.0)]
    backoff_secs: f64,
    /// Attempts of each job the ticker enqueues before it is FAILED
    #[arg(long, default_value_t = 3)]
    max_attempts: i64,
    /// Seconds a job waits for its dataset's lock held by another ingest [default: 2 x lease]
    #[arg(long)]
    lock_wait_secs: Option<u64>,
    /// Name of this process in leases and job runs [default: HOST:PID]
    #[arg(long)]
    owner: Option<String>,
}

impl SchedulerArgs {
    pub async fn run(self, ctx: super::Context) -> Result<()> {
        let SchedulerCommand::Run(a) = self.command;
        anyhow::ensure!(a.lease_secs >= 1, "--lease-secs must be at least 1");
        anyhow::ensure!(
            a.poll_secs > 0.0 && a.backoff_secs >= 0.0,
            "--poll-secs must be positive and --backoff-secs not negative"
        );
        let reg = Registry::connect(&ctx.registry_url).await?;
        let lease = Duration::from_secs(a.lease_secs);
        let opts = SchedulerOptions {
            workers: a.workers,
            once: a.once,
            lease,
            poll: Duration::from_secs_f64(a.poll_secs),
            backoff: Duration::from_secs_f64(a.backoff_secs),
            max_attempts: a.max_attempts,
            lock_wait: a.lock_wait_secs.map_or(2 * lease, Duration::from_secs),
            owner: a.owner.unwrap_or_else(albef_registry::process_owner),
        };
        let stop = super::stop_on_ctrl_c("stopping after the jobs in flight commit their shards");
        let (job_ctx, job_reg) = (ctx.clone(), reg.clone());
        let decode: JobDecoder = Arc::new(move |config| decode_job(&job_ctx, &job_reg, config));
        eprintln!(
            "albef scheduler: {} worker(s) as {} on the {} registry",
            opts.workers,
            opts.owner,
            reg.backend()
        );
        let report = schedule_worker::run_scheduler(reg, opts, decode, stop).await?;
        println!(
            "scheduler done: {} enqueued, {} succeeded, {} failed attempts, {} taken over",
            report.enqueued, report.succeeded, report.failed, report.taken_over
        );
        Ok(())
    }
}
