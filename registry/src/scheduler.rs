//! Scheduled ingestion in the registry: schedules (a cron expression and the job's parameters),
//! the job queue, claiming with leases, heartbeats and job runs (one row per attempt).
//!
//! - Enqueueing ([`Registry::enqueue_due`]): a schedule whose `next_run_at` has passed gets ONE
//!   job, however many ticks were missed while nothing was running (catch-up policy: "run once
//!   for all missed ticks, then resume the cron cadence"), and `next_run_at` moves to the first
//!   tick after now. While a job of the schedule is queued or running, its due tick waits (a
//!   unique partial index allows one active job per schedule), so a slow run is followed by at
//!   most one catch-up run.
//! - Claiming ([`Registry::claim_job`]): a job is claimable when it is QUEUED and due, or
//!   RUNNING with an expired lease (its worker died). Postgres claims with one
//!   `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`; SQLite inside a
//!   `BEGIN IMMEDIATE` transaction (one writer at a time). A takeover marks the dead attempt's
//!   run LOST, naming the new owner, in the same transaction.
//! - Failures ([`Registry::fail_job`]) requeue the job after an exponential backoff until
//!   `max_attempts` attempts were made; then it is FAILED.
use crate::cron::Cron;
use crate::db::{Dialect, Row, Tx};
use crate::{is_unique_violation, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use std::time::Duration;

/// A schedule with what `schedule list` shows about it.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub cron: String,
    /// The job's parameters (for ingest: its command-line arguments).
    pub config: Value,
    pub enabled: bool,
    pub next_run_at: Option<i64>,
    pub created_at: i64,
    /// The status of its latest job (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED).
    pub last_status: Option<String>,
    /// When its latest finished attempt ended.
    pub last_run_at: Option<i64>,
    pub jobs: i64,
}

/// A job in the queue.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: i64,
    pub schedule_id: Option<i64>,
    pub config: Value,
    pub status: String,
    pub run_at: i64,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// One attempt at a job.
#[derive(Clone, Debug, Serialize)]
pub struct JobRun {
    pub id: i64,
    pub job_id: i64,
    pub owner: String,
    pub attempt: i64,
    /// RUNNING, SUCCEEDED, FAILED, or LOST (its worker stopped heartbeating).
    pub status: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub dataset_version_id: Option<i64>,
    pub error: Option<String>,
    pub stats: Option<Value>,
}

/// A job a worker holds: the job as claimed and the run row of this attempt.
#[derive(Clone, Debug)]
pub struct Claim {
    pub job: Job,
    pub run_id: i64,
    pub owner: String,
    /// The owner whose expired lease this claim took over.
    pub took_over_from: Option<String>,
}

/// What [`Registry::fail_job`] did with the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Queued again, due at this time.
    At(i64),
    /// No attempts left: the job is FAILED.
    GaveUp,
}

const JOB_COLUMNS: &str = "id, schedule_id, config, status, run_at, owner, lease_until, attempts, \
    max_attempts, last_error, created_at";

fn job_from_row(row: &Row) -> Result<Job> {
    Ok(Job {
        id: row.get("id")?,
        schedule_id: row.get("schedule_id")?,
        config: row.get::<Json<Value>>("config")?.0,
        status: row.get("status")?,
        run_at: row.get("run_at")?,
        owner: row.get("owner")?,
        lease_until: row.get("lease_until")?,
        attempts: row.get("attempts")?,
        max_attempts: row.get("max_attempts")?,
        last_error: row.get("last_error")?,
        created_at: row.get("created_at")?,
    })
}

fn run_from_row(row: &Row) -> Result<JobRun> {
    Ok(JobRun {
        id: row.get("id")?,
        job_id: row.get("job_id")?,
        owner: row.get("owner")?,
        attempt: row.get("attempt")?,
        status: row.get("status")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
        dataset_version_id: row.get("dataset_version_id")?,
        error: row.get("error")?,
        stats: row.get::<Option<Json<Value>>>("stats")?.map(|j| j.0),
    })
}

/// Exponential backoff after failed attempt `attempt` (1-based): base, 2*base, 4*base, ...,
/// at most an hour.
pub fn backoff(base: Duration, attempt: i64) -> Duration {
    let factor = 1u32 << attempt.clamp(1, 16).saturating_sub(1) as u32;
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

impl Registry {
    /// Adds schedule `name`, first due at the first tick of `cron` after now.
    pub async fn add_schedule(&self, name: &str, cron: &str, config: &Value) -> Result<Schedule> {
        if name.trim().is_empty() {
            bail!("a schedule needs a name");
        }
        let parsed = Cron::parse(cron)?;
        let now = now_ms();
        self.db
            .q("INSERT INTO ingestion_schedules (name, cron, config, enabled, next_run_at, created_at) \
                VALUES ($1, $2, $3, TRUE, $4, $5)")
            .bind(name.to_string())
            .bind(cron.to_string())
            .bind(Json(config.clone()))
            .bind(parsed.next_after(now))
            .bind(now)
            .execute(&self.db)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    anyhow::anyhow!("schedule {name:?} already exists (remove it first)")
                } else {
                    anyhow::Error::new(e).context(format!("adding schedule {name:?}"))
                }
            })?;
        self.schedule(name).await
    }

    /// One schedule by name.
    pub async fn schedule(&self, name: &str) -> Result<Schedule> {
        self.schedules()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no schedule named {name:?}"))
    }

    /// All schedules by name, with their latest job's status and last finished run.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = self
            .db
            .q("SELECT s.id, s.name, s.cron, s.config, s.enabled, s.next_run_at, s.created_at, \
                  (SELECT j.status FROM ingestion_jobs j WHERE j.schedule_id = s.id \
                     ORDER BY j.id DESC LIMIT 1) AS last_status, \
                  (SELECT MAX(r.finished_at) FROM ingestion_job_runs r \
                     JOIN ingestion_jobs j ON j.id = r.job_id WHERE j.schedule_id = s.id) AS last_run_at, \
                  (SELECT COUNT(*) FROM ingestion_jobs j WHERE j.schedule_id = s.id) AS jobs \
                FROM ingestion_schedules s ORDER BY s.name")
            .fetch_all(&self.db)
            .await
            .context("listing schedules")?;
        rows.iter()
            .map(|row| {
                Ok(Schedule {
                    id: row.get("id")?,
                    name: row.get("name")?,
                    cron: row.get("cron")?,
                    config: row.get::<Json<Value>>("config")?.0,
                    enabled: row.get("enabled")?,
                    next_run_at: row.get("next_run_at")?,
                    created_at: row.get("created_at")?,
                    last_status: row.get("last_status")?,
                    last_run_at: row.get("last_run_at")?,
                    jobs: row.get("jobs")?,
                })
            })
            .collect()
    }

    /// Removes schedule `name`: its queued job is cancelled, and its jobs and their history stay
    /// (detached from it). A running job finishes.
    pub async fn remove_schedule(&self, name: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let id: i64 = tx
            .q("SELECT id FROM ingestion_schedules WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&mut tx)
            .await
            .with_context(|| format!("looking up schedule {name:?}"))?
            .with_context(|| format!("no schedule named {name:?}"))?
            .get("id")?;
        tx.q("UPDATE ingestion_jobs SET status = 'CANCELLED' WHERE schedule_id = $1 AND status = 'QUEUED'")
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.q("UPDATE ingestion_jobs SET schedule_id = NULL WHERE schedule_id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.q("DELETE FROM ingestion_schedules WHERE id = $1")
            .bind(id)
            .execute(&mut tx)
            .await
            .with_context(|| format!("removing schedule {name:?}"))?;
        tx.commit().await
    }

    /// Enqueues a job of schedule `name` now, unless one is already queued or running; returns
    /// the new job's id.
    pub async fn trigger_schedule(&self, name: &str, max_attempts: i64) -> Result<Option<i64>> {
        let s = self.schedule(name).await?;
        let mut tx = self.db.begin().await?;
        let id = insert_job(&mut tx, s.id, &s.config, now_ms(), max_attempts).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The ticker: gives every enabled schedule that is due at `now` (the current time, except
    /// in tests) one job, runnable at once (see the module doc for the catch-up policy), and
    /// returns the new jobs' ids.
    pub async fn enqueue_due(&self, now: i64, max_attempts: i64) -> Result<Vec<i64>> {
        let due = self
            .db
            .q("SELECT id, cron, config FROM ingestion_schedules \
                WHERE enabled AND next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY id")
            .bind(now)
            .fetch_all(&self.db)
            .await
            .context("finding due schedules")?;
        let mut created = Vec::new();
        for row in due {
            let id: i64 = row.get("id")?;
            let cron: String = row.get("cron")?;
            let config = row.get::<Json<Value>>("config")?.0;
            let next = Cron::parse(&cron)
                .with_context(|| format!("schedule {id}"))?
                .next_after(now);
            let mut tx = self.db.begin().await?;
            // Recheck under the write lock: another ticker may have enqueued it meanwhile.
            let still_due = tx
                .q("SELECT id FROM ingestion_schedules WHERE id = $1 AND next_run_at <= $2")
                .bind(id)
                .bind(now)
                .fetch_optional(&mut tx)
                .await?
                .is_some();
            if !still_due {
                continue;
            }
            if let Some(job) = insert_job(&mut tx, id, &config, now_ms(), max_attempts).await? {
                tx.q("UPDATE ingestion_schedules SET next_run_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(next)
                    .execute(&mut tx)
                    .await?;
                created.push(job);
            }
            tx.commit().await?;
        }
        Ok(created)
    }

    /// Claims one claimable job for `owner` until now + `lease` (see the module doc), opening a
    /// new run row for the attempt; `None` when nothing is claimable.
    pub async fn claim_job(&self, owner: &str, lease: Duration) -> Result<Option<Claim>> {
        let now = now_ms();
        let until = now + lease.as_millis() as i64;
        let mut tx = self.db.begin().await?;
        let row = match tx.dialect() {
            Dialect::Postgres => tx
                .q("UPDATE ingestion_jobs SET status = 'RUNNING', owner = $1, lease_until = $2, \
                      attempts = attempts + 1 \
                    WHERE id IN (SELECT id FROM ingestion_jobs \
                      WHERE ((status = 'QUEUED' AND run_at <= $3) OR (status = 'RUNNING' AND lease_until < $3)) \
                        AND attempts < max_attempts \
                      ORDER BY priority DESC, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                    RETURNING id, schedule_id, config, status, run_at, owner, lease_until, attempts, \
                      max_attempts, last_error, created_at")
                .bind(owner.to_string())
                .bind(until)
                .bind(now)
                .fetch_optional(&mut tx)
                .await
                .with_context(|| format!("claiming a job for {owner}"))?,
            Dialect::Sqlite => {
                let found = tx
                    .q("SELECT id FROM ingestion_jobs \
                        WHERE ((status = 'QUEUED' AND run_at <= $1) OR (status = 'RUNNING' AND lease_until < $1)) \
                          AND attempts < max_attempts \
                        ORDER BY priority DESC, run_at, id LIMIT 1")
                    .bind(now)
                    .fetch_optional(&mut tx)
                    .await
                    .with_context(|| format!("finding a job for {owner}"))?;
                match found {
                    None => None,
                    Some(r) => tx
                        .q("UPDATE ingestion_jobs SET status = 'RUNNING', owner = $1, lease_until = $2, \
                              attempts = attempts + 1 WHERE id = $3 \
                            RETURNING id, schedule_id, config, status, run_at, owner, lease_until, \
                              attempts, max_attempts, last_error, created_at")
                        .bind(owner.to_string())
                        .bind(until)
                        .bind(r.get::<i64>("id")?)
                        .fetch_optional(&mut tx)
                        .await
                        .with_context(|| format!("claiming a job for {owner}"))?,
                }
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        let lost = tx
            .q("SELECT owner FROM ingestion_job_runs WHERE job_id = $1 AND status = 'RUNNING'")
            .bind(job.id)
            .fetch_optional(&mut tx)
            .await?;
        let took_over_from = match lost {
            Some(r) => Some(r.get::<String>("owner")?),
            None => None,
        };
        if let Some(dead) = &took_over_from {
            tx.q(
                "UPDATE ingestion_job_runs SET status = 'LOST', finished_at = $2, error = $3 \
                  WHERE job_id = $1 AND status = 'RUNNING'",
            )
            .bind(job.id)
            .bind(now)
            .bind(format!(
                "lease expired: {dead} stopped heartbeating; taken over by {owner}"
            ))
            .execute(&mut tx)
            .await?;
        }
        let run_id: i64 = tx
            .q(
                "INSERT INTO ingestion_job_runs (job_id, owner, attempt, status, started_at) \
                VALUES ($1, $2, $3, 'RUNNING', $4) RETURNING id",
            )
            .bind(job.id)
            .bind(owner.to_string())
            .bind(job.attempts)
            .bind(now)
            .fetch_one(&mut tx)
            .await
            .with_context(|| format!("recording the run of job {}", job.id))?
            .get("id")?;
        tx.commit().await?;
        Ok(Some(Claim {
            job,
            run_id,
            owner: owner.to_string(),
            took_over_from,
        }))
    }

    /// Extends the lease of a claimed job; false when another worker took it over (this one must
    /// stop). A lease that ran out but was not taken over yet is still renewed.
    pub async fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool> {
        let now = now_ms();
        let changed = self
            .db
            .q("UPDATE ingestion_jobs SET lease_until = $3 \
                WHERE id = $1 AND owner = $2 AND status = 'RUNNING'")
            .bind(claim.job.id)
            .bind(claim.owner.clone())
            .bind(now + lease.as_millis() as i64)
            .execute(&self.db)
            .await
            .with_context(|| format!("renewing the lease of job {}", claim.job.id))?;
        Ok(changed == 1)
    }

    /// Marks a claimed job SUCCEEDED and its run with `stats`; false when the claim was lost
    /// (another worker took the job over), in which case nothing changes.
    pub async fn finish_job(
        &self,
        claim: &Claim,
        stats: &Value,
        dataset_version_id: Option<i64>,
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        if !still_owned(&mut tx, claim).await? {
            return Ok(false);
        }
        tx.q("UPDATE ingestion_jobs SET status = 'SUCCEEDED', lease_until = NULL, last_error = NULL WHERE id = $1")
            .bind(claim.job.id)
            .execute(&mut tx)
            .await?;
        tx.q(
            "UPDATE ingestion_job_runs SET status = 'SUCCEEDED', finished_at = $2, stats = $3, \
              dataset_version_id = $4 WHERE id = $1",
        )
        .bind(claim.run_id)
        .bind(now)
        .bind(Json(stats.clone()))
        .bind(dataset_version_id)
        .execute(&mut tx)
        .await
        .with_context(|| format!("finishing job {}", claim.job.id))?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt; the job is queued again after `backoff(base, attempt)` or, with
    /// no attempts left, FAILED.
    pub async fn fail_job(&self, claim: &Claim, error: &str, base: Duration) -> Result<Retry> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        if !still_owned(&mut tx, claim).await? {
            // Another worker holds it now; its outcome is theirs to record.
            return Ok(Retry::GaveUp);
        }
        let retry = if claim.job.attempts < claim.job.max_attempts {
            Retry::At(now + backoff(base, claim.job.attempts).as_millis() as i64)
        } else {
            Retry::GaveUp
        };
        let (status, run_at) = match retry {
            Retry::At(t) => ("QUEUED", t),
            Retry::GaveUp => ("FAILED", claim.job.run_at),
        };
        tx.q("UPDATE ingestion_jobs SET status = $2, run_at = $3, lease_until = NULL, last_error = $4 WHERE id = $1")
            .bind(claim.job.id)
            .bind(status)
            .bind(run_at)
            .bind(error.to_string())
            .execute(&mut tx)
            .await?;
        tx.q("UPDATE ingestion_job_runs SET status = 'FAILED', finished_at = $2, error = $3 WHERE id = $1")
            .bind(claim.run_id)
            .bind(now)
            .bind(error.to_string())
            .execute(&mut tx)
            .await
            .with_context(|| format!("recording the failure of job {}", claim.job.id))?;
        tx.commit().await?;
        Ok(retry)
    }

    /// Fails RUNNING jobs whose lease expired with no attempts left (nobody may claim them), and
    /// marks their last run LOST; returns how many.
    pub async fn fail_exhausted(&self) -> Result<u64> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        tx.q(
            "UPDATE ingestion_job_runs SET status = 'LOST', finished_at = $1, \
              error = 'lease expired and no attempts left' \
              WHERE status = 'RUNNING' AND job_id IN (SELECT id FROM ingestion_jobs \
                WHERE status = 'RUNNING' AND lease_until < $1 AND attempts >= max_attempts)",
        )
        .bind(now)
        .execute(&mut tx)
        .await?;
        let n = tx
            .q("UPDATE ingestion_jobs SET status = 'FAILED', last_error = 'lease expired and no attempts left' \
                WHERE status = 'RUNNING' AND lease_until < $1 AND attempts >= max_attempts")
            .bind(now)
            .execute(&mut tx)
            .await
            .context("failing jobs with expired leases")?;
        tx.commit().await?;
        Ok(n)
    }

    /// How many jobs are QUEUED or RUNNING (a `--once` scheduler stops at zero).
    pub async fn active_jobs(&self) -> Result<i64> {
        Ok(self
            .db
            .q("SELECT COUNT(*) AS n FROM ingestion_jobs WHERE status IN ('QUEUED', 'RUNNING')")
            .fetch_one(&self.db)
            .await
            .context("counting active jobs")?
            .get("n")?)
    }

    /// Jobs, newest first; of one schedule when `schedule` is given.
    pub async fn jobs(&self, schedule: Option<&str>) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM ingestion_jobs WHERE $1 IS NULL OR schedule_id = \
             (SELECT id FROM ingestion_schedules WHERE name = $1) ORDER BY id DESC"
        );
        let rows = self
            .db
            .q_str(&sql)
            .bind(schedule.map(str::to_string))
            .fetch_all(&self.db)
            .await
            .context("listing jobs")?;
        rows.iter().map(job_from_row).collect()
    }

    /// The attempts at job `job_id`, oldest first.
    pub async fn job_runs(&self, job_id: i64) -> Result<Vec<JobRun>> {
        let rows = self
            .db
            .q("SELECT id, job_id, owner, attempt, status, started_at, finished_at, dataset_version_id, \
                error, stats FROM ingestion_job_runs WHERE job_id = $1 ORDER BY id")
            .bind(job_id)
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("listing the runs of job {job_id}"))?;
        rows.iter().map(run_from_row).collect()
    }
}

/// Inserts a QUEUED job of schedule `schedule_id`; `None` when one is already queued or
/// running (the unique partial index refuses it).
async fn insert_job(
    tx: &mut Tx,
    schedule_id: i64,
    config: &Value,
    run_at: i64,
    max_attempts: i64,
) -> Result<Option<i64>> {
    let active = tx
        .q("SELECT id FROM ingestion_jobs WHERE schedule_id = $1 AND status IN ('QUEUED', 'RUNNING')")
        .bind(schedule_id)
        .fetch_optional(&mut *tx)
        .await?;
    if active.is_some() {
        return Ok(None);
    }
    let row = tx
        .q("INSERT INTO ingestion_jobs (schedule_id, config, status, run_at, max_attempts, created_at) \
            VALUES ($1, $2, 'QUEUED', $3, $4, $5) RETURNING id")
        .bind(schedule_id)
        .bind(Json(config.clone()))
        .bind(run_at)
        .bind(max_attempts.max(1))
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await;
    match row {
        Ok(r) => Ok(Some(r.get("id")?)),
        // A concurrent ticker won the race on Postgres; the index kept it to one job.
        Err(e) if is_unique_violation(&e) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("enqueueing schedule {schedule_id}"))),
    }
}

/// Whether `claim`'s owner still holds the job (checked inside a write transaction).
async fn still_owned(tx: &mut Tx, claim: &Claim) -> Result<bool> {
    Ok(tx
        .q("SELECT id FROM ingestion_jobs WHERE id = $1 AND owner = $2 AND status = 'RUNNING'")
        .bind(claim.job.id)
        .bind(claim.owner.clone())
        .fetch_optional(&mut *tx)
        .await?
        .is_some())
}
