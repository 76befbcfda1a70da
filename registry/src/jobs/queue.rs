//! The job queue: jobs (one per schedule tick, see [`super::schedules`]), claiming with leases,
//! heartbeats, and job runs (one row per attempt), with their [`JobStatus`] and [`JobRunStatus`].
//!
//! - Claiming ([`Registry::claim_job`]): a job is claimable when it is QUEUED and due, or
//!   RUNNING with an expired lease (its worker died). Postgres claims with one
//!   `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`; SQLite inside a
//!   `BEGIN IMMEDIATE` transaction (one writer at a time). A takeover marks the dead attempt's
//!   run LOST, naming the new owner, in the same transaction.
//! - Times (due, lease ends, attempts' starts and ends) are read from the database's clock, so
//!   that a worker whose clock is off can neither take over a live lease nor lose its own.
//! - Failures ([`Registry::fail_job`]) requeue the job after an exponential backoff until
//!   `max_attempts` attempts were made; then it is FAILED.
use crate::db::{Dialect, Row, Tx};
use crate::status::status_enum;
use crate::Registry;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use std::time::Duration;

status_enum!(
    /// Where a job is in the queue.
    JobStatus, "job", {
        Queued => "QUEUED",
        Running => "RUNNING",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
);

status_enum!(
    /// How one attempt at a job went.
    JobRunStatus, "job run", {
        Running => "RUNNING",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        /// Its worker stopped heartbeating and another took the job over.
        Lost => "LOST",
    }
);

/// A job in the queue.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: i64,
    pub schedule_id: Option<i64>,
    pub config: Value,
    pub status: JobStatus,
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
    pub status: JobRunStatus,
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
        status: row.get::<String>("status")?.parse()?,
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
        status: row.get::<String>("status")?.parse()?,
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
    /// Claims one claimable job for `owner` until now + `lease` (see the module doc), opening a
    /// new run row for the attempt; `None` when nothing is claimable.
    pub async fn claim_job(&self, owner: &str, lease: Duration) -> Result<Option<Claim>> {
        let mut tx = self.db.begin().await?;
        let now = tx.clock_ms().await?;
        let until = now + lease.as_millis() as i64;
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
        let now = self.db.clock_ms().await?;
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
        let mut tx = self.db.begin().await?;
        let now = tx.clock_ms().await?;
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
        let mut tx = self.db.begin().await?;
        let now = tx.clock_ms().await?;
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
            Retry::At(t) => (JobStatus::Queued, t),
            Retry::GaveUp => (JobStatus::Failed, claim.job.run_at),
        };
        tx.q("UPDATE ingestion_jobs SET status = $2, run_at = $3, lease_until = NULL, last_error = $4 WHERE id = $1")
            .bind(claim.job.id)
            .bind(status.as_str())
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

    /// Gives a claimed job back because its worker was told to stop (SIGTERM, Ctrl-C): the job
    /// is QUEUED again, due at once, with the attempt not counted; the run is FAILED with
    /// `reason`. False when the claim was lost, in which case nothing changes.
    pub async fn release_job(&self, claim: &Claim, reason: &str) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let now = tx.clock_ms().await?;
        if !still_owned(&mut tx, claim).await? {
            return Ok(false);
        }
        tx.q(
            "UPDATE ingestion_jobs SET status = 'QUEUED', run_at = $2, lease_until = NULL, \
              attempts = attempts - 1, last_error = $3 WHERE id = $1",
        )
        .bind(claim.job.id)
        .bind(now)
        .bind(reason.to_string())
        .execute(&mut tx)
        .await?;
        tx.q("UPDATE ingestion_job_runs SET status = 'FAILED', finished_at = $2, error = $3 WHERE id = $1")
            .bind(claim.run_id)
            .bind(now)
            .bind(reason.to_string())
            .execute(&mut tx)
            .await
            .with_context(|| format!("releasing job {}", claim.job.id))?;
        tx.commit().await?;
        Ok(true)
    }

    /// Fails RUNNING jobs whose lease expired with no attempts left (nobody may claim them), and
    /// marks their last run LOST; returns how many.
    pub async fn fail_exhausted(&self) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let now = tx.clock_ms().await?;
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
