//! Ingestion schedules: a cron expression and the job's parameters, and the ticker that turns due
//! ticks into jobs of the [`super::queue`].
//!
//! Enqueueing ([`Registry::enqueue_due`]): a schedule whose `next_run_at` has passed gets ONE
//! job, however many ticks were missed while nothing was running (catch-up policy: "run once for
//! all missed ticks, then resume the cron cadence"), and `next_run_at` moves to the first tick
//! after now. While a job of the schedule is queued or running, its due tick waits (a unique
//! partial index allows one active job per schedule), so a slow run is followed by at most one
//! catch-up run.
use super::cron::Cron;
use super::queue::JobStatus;
use crate::db::Tx;
use crate::{is_unique_violation, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

/// A schedule with what `schedule list` shows about it.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    pub id: i64,
    pub name: String,
    pub cron: String,
    /// The IANA time zone the cron expression is read in (`UTC` unless given).
    pub tz: String,
    /// The job's parameters (for ingest: its command-line arguments).
    pub config: Value,
    pub enabled: bool,
    pub next_run_at: Option<i64>,
    pub created_at: i64,
    /// The status of its latest job.
    pub last_status: Option<JobStatus>,
    /// When its latest finished attempt ended.
    pub last_run_at: Option<i64>,
    pub jobs: i64,
}

impl Registry {
    /// Adds schedule `name`, first due at the first tick of `cron` (read in time zone `tz`, an
    /// IANA name) after now by the database's clock.
    pub async fn add_schedule(
        &self,
        name: &str,
        cron: &str,
        tz: &str,
        config: &Value,
    ) -> Result<Schedule> {
        if name.trim().is_empty() {
            bail!("a schedule needs a name");
        }
        let parsed = Cron::parse(cron, tz)?;
        let now = self.db.clock_ms().await?;
        self.db
            .q("INSERT INTO ingestion_schedules (name, cron, tz, config, enabled, next_run_at, created_at) \
                VALUES ($1, $2, $3, $4, TRUE, $5, $6)")
            .bind(name.to_string())
            .bind(cron.to_string())
            .bind(tz.to_string())
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
            .q("SELECT s.id, s.name, s.cron, s.tz, s.config, s.enabled, s.next_run_at, s.created_at, \
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
                    tz: row.get("tz")?,
                    config: row.get::<Json<Value>>("config")?.0,
                    enabled: row.get("enabled")?,
                    next_run_at: row.get("next_run_at")?,
                    created_at: row.get("created_at")?,
                    last_status: match row.get::<Option<String>>("last_status")? {
                        Some(s) => Some(s.parse()?),
                        None => None,
                    },
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
        let id = insert_job(&mut tx, s.id, &s.config, max_attempts).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The ticker: [`Registry::enqueue_due`] at the database's current time, so that tickers
    /// whose clocks disagree agree on what is due.
    pub async fn enqueue_due_now(&self, max_attempts: i64) -> Result<Vec<i64>> {
        let now = self.db.clock_ms().await?;
        self.enqueue_due(now, max_attempts).await
    }

    /// Gives every enabled schedule that is due at `now` (milliseconds since the epoch: the
    /// database's clock from [`Registry::enqueue_due_now`], or a chosen time in tests) one job,
    /// runnable at once (see the module doc for the catch-up policy), and returns the new jobs'
    /// ids.
    pub async fn enqueue_due(&self, now: i64, max_attempts: i64) -> Result<Vec<i64>> {
        let due = self
            .db
            .q("SELECT id, cron, tz, config FROM ingestion_schedules \
                WHERE enabled AND next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY id")
            .bind(now)
            .fetch_all(&self.db)
            .await
            .context("finding due schedules")?;
        let mut created = Vec::new();
        for row in due {
            let id: i64 = row.get("id")?;
            let cron: String = row.get("cron")?;
            let tz: String = row.get("tz")?;
            let config = row.get::<Json<Value>>("config")?.0;
            let next = Cron::parse(&cron, &tz)
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
            if let Some(job) = insert_job(&mut tx, id, &config, max_attempts).await? {
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
}

/// Inserts a QUEUED job of schedule `schedule_id`, runnable at once by the database's clock;
/// `None` when one is already queued or running (the unique partial index refuses it).
async fn insert_job(
    tx: &mut Tx,
    schedule_id: i64,
    config: &Value,
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
    let now = tx.clock_ms().await?;
    let row = tx
        .q("INSERT INTO ingestion_jobs (schedule_id, config, status, run_at, max_attempts, created_at) \
            VALUES ($1, $2, 'QUEUED', $3, $4, $5) RETURNING id")
        .bind(schedule_id)
        .bind(Json(config.clone()))
        .bind(now)
        .bind(max_attempts.max(1))
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
    match row {
        Ok(r) => Ok(Some(r.get("id")?)),
        // A concurrent ticker won the race on Postgres; the index kept it to one job.
        Err(e) if is_unique_violation(&e) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("enqueueing schedule {schedule_id}"))),
    }
}
