//! The buffered metric writer. A training loop calls [`MetricWriter::log`], which only pushes the
//! point onto a channel and never waits on the database; a tokio task drains the channel and
//! writes a batch every `batch` points or every `interval`, whichever comes first, and at
//! [`MetricWriter::finish`]. Each batch is one transaction that inserts the points and updates the
//! per-run summaries (last, min, max, count) together: on Postgres one statement over `UNNEST`
//! arrays, on SQLite multi-row inserts through cached prepared statements under `BEGIN IMMEDIATE`.
//!
//! From a synchronous thread (tch training code), keep a `tokio::runtime::Handle` from the
//! runtime that created the writer, call `log` freely, and end with
//! `handle.block_on(writer.finish())`.
//!
//! Re-logging a (run, key, step) that is already stored keeps the first value (idempotent
//! retries); the channel is unbounded, so memory grows only if the database falls behind.
use crate::db::{Db, Dialect};
use crate::runs::check_key;
use crate::{is_foreign_key_violation, now_ms, Registry};
use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// When the writer flushes.
#[derive(Clone, Copy, Debug)]
pub struct MetricWriterOptions {
    /// Flush when this many points are buffered.
    pub batch: usize,
    /// Flush buffered points at least this often.
    pub interval: Duration,
}

impl Default for MetricWriterOptions {
    fn default() -> Self {
        Self {
            batch: 10_000,
            interval: Duration::from_millis(1000),
        }
    }
}

struct Point {
    key: Arc<str>,
    step: i64,
    value: f64,
}

/// Buffers metric points of one run and writes them in the background. See the module docs.
pub struct MetricWriter {
    run: i64,
    tx: mpsc::UnboundedSender<Point>,
    task: JoinHandle<Result<()>>,
    failure: Arc<Mutex<Option<String>>>,
    keys: Mutex<HashMap<String, Arc<str>>>,
}

impl MetricWriter {
    /// Queues one point. Fails on a non-finite value, a bad key, or when an earlier flush failed
    /// (the error names the cause); it never waits on the database.
    pub fn log(&self, key: &str, step: i64, value: f64) -> Result<()> {
        if !value.is_finite() {
            bail!(
                "metric {key:?} at step {step} of run {}: value {value} is not a finite number",
                self.run
            );
        }
        let key = {
            let mut keys = self.keys.lock().expect("metric key cache poisoned");
            match keys.get(key) {
                Some(k) => k.clone(),
                None => {
                    check_key("metric", key)?;
                    let k: Arc<str> = Arc::from(key);
                    keys.insert(key.to_string(), k.clone());
                    k
                }
            }
        };
        self.tx.send(Point { key, step, value }).map_err(|_| {
            let cause = self.failure.lock().expect("failure slot poisoned").clone();
            anyhow!(
                "the metric writer of run {} has stopped: {}",
                self.run,
                cause.unwrap_or_else(|| "its task ended".into())
            )
        })
    }

    /// Writes everything still buffered and stops the writer; returns the first flush error.
    pub async fn finish(self) -> Result<()> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| anyhow!("the metric writer of run {} panicked: {e}", self.run))?
    }
}

impl Registry {
    /// A buffered writer for the metrics of `run`, with the default flush policy (10,000 points
    /// or 1 s). Must be called inside a tokio runtime: it spawns the task that writes.
    pub fn metric_writer(&self, run: i64) -> MetricWriter {
        self.metric_writer_with(run, MetricWriterOptions::default())
    }

    /// [`Registry::metric_writer`] with an explicit flush policy.
    pub fn metric_writer_with(&self, run: i64, options: MetricWriterOptions) -> MetricWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drain(self.db.clone(), run, options, rx, failure.clone()));
        MetricWriter {
            run,
            tx,
            task,
            failure,
            keys: Mutex::new(HashMap::new()),
        }
    }
}

async fn drain(
    db: Db,
    run: i64,
    options: MetricWriterOptions,
    mut rx: mpsc::UnboundedReceiver<Point>,
    failure: Arc<Mutex<Option<String>>>,
) -> Result<()> {
    let batch = options.batch.max(1);
    let mut buffer: Vec<Point> = Vec::with_capacity(batch);
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let room = batch - buffer.len();
        let (closed, tick) = tokio::select! {
            n = rx.recv_many(&mut buffer, room) => (n == 0, false),
            _ = ticker.tick() => (false, true),
        };
        let due = closed || tick || buffer.len() >= batch;
        if !buffer.is_empty() && due {
            if let Err(e) = write_points(&db, run, &buffer).await {
                *failure.lock().expect("failure slot poisoned") = Some(format!("{e:#}"));
                rx.close();
                return Err(e);
            }
            buffer.clear();
        }
        if closed {
            return Ok(());
        }
    }
}

/// Rows per multi-row INSERT on SQLite (4 values each, under its 32,766 parameter limit).
const SQLITE_ROWS_PER_INSERT: usize = 500;

/// Inserts points of one run and updates its summaries, in one transaction.
async fn write_points(db: &Db, run: i64, points: &[Point]) -> Result<()> {
    let result = match db {
        Db::Pg(pool) => write_pg(pool, run, points).await,
        Db::Sqlite(_) => write_sqlite(db, run, points).await,
    };
    result.map_err(|e| {
        if matches!(e.downcast_ref::<sqlx::Error>(), Some(s) if is_foreign_key_violation(s)) {
            anyhow!("cannot log metrics: run {run} does not exist")
        } else {
            e.context(format!(
                "writing {} metric points of run {run}",
                points.len()
            ))
        }
    })
}

const PG_WRITE: &str = "\
WITH ins AS (
    INSERT INTO metrics (run_id, key, step, value, logged_at)
    SELECT $1, k, s, v, $5 FROM UNNEST($2::text[], $3::bigint[], $4::float8[]) AS t(k, s, v)
    ON CONFLICT (run_id, key, step) DO NOTHING
    RETURNING key, step, value
), agg AS (
    SELECT key, count(*) AS n, min(value) AS mn, max(value) AS mx, max(step) AS last_step,
           (array_agg(value ORDER BY step DESC))[1] AS last_value
    FROM ins GROUP BY key
)
INSERT INTO metric_summaries (run_id, key, last_value, last_step, min_value, max_value, count)
SELECT $1, key, last_value, last_step, mn, mx, n FROM agg ORDER BY key
ON CONFLICT (run_id, key) DO UPDATE SET
    last_value = CASE WHEN excluded.last_step >= metric_summaries.last_step
                      THEN excluded.last_value ELSE metric_summaries.last_value END,
    last_step = GREATEST(metric_summaries.last_step, excluded.last_step),
    min_value = LEAST(metric_summaries.min_value, excluded.min_value),
    max_value = GREATEST(metric_summaries.max_value, excluded.max_value),
    count = metric_summaries.count + excluded.count";

async fn write_pg(pool: &sqlx::PgPool, run: i64, points: &[Point]) -> Result<()> {
    let keys: Vec<&str> = points.iter().map(|p| &*p.key).collect();
    let steps: Vec<i64> = points.iter().map(|p| p.step).collect();
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    sqlx::query(PG_WRITE)
        .bind(run)
        .bind(keys)
        .bind(steps)
        .bind(values)
        .bind(now_ms())
        .execute(pool)
        .await?;
    Ok(())
}

/// What one batch adds to a metric's summary.
struct Delta {
    last_step: i64,
    last_value: f64,
    min: f64,
    max: f64,
    count: i64,
}

const SQLITE_SUMMARY: &str = "\
INSERT INTO metric_summaries (run_id, key, last_value, last_step, min_value, max_value, count)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (run_id, key) DO UPDATE SET
    last_value = CASE WHEN excluded.last_step >= metric_summaries.last_step
                      THEN excluded.last_value ELSE metric_summaries.last_value END,
    last_step = max(metric_summaries.last_step, excluded.last_step),
    min_value = min(metric_summaries.min_value, excluded.min_value),
    max_value = max(metric_summaries.max_value, excluded.max_value),
    count = metric_summaries.count + excluded.count";

fn sqlite_insert(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES ");
    for i in 0..rows {
        let b = 3 + 3 * i;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("($1,${},${},${},$2)", b, b + 1, b + 2));
    }
    sql
}

/// SQLite: the transaction holds the write lock from its start (`BEGIN IMMEDIATE`), so the
/// steps already stored can be read first and left out; the rest go in as plain multi-row
/// inserts (no per-row RETURNING), and the summaries are computed from what was inserted.
async fn write_sqlite(db: &Db, run: i64, points: &[Point]) -> Result<()> {
    debug_assert_eq!(db.dialect(), Dialect::Sqlite);
    let mut tx = db.begin().await?;
    let mut ranges: HashMap<&str, (i64, i64)> = HashMap::new();
    for p in points {
        let r = ranges.entry(&p.key).or_insert((p.step, p.step));
        r.0 = r.0.min(p.step);
        r.1 = r.1.max(p.step);
    }
    let mut seen: HashSet<(&str, i64)> = HashSet::new();
    for (key, (lo, hi)) in &ranges {
        let rows = tx
            .q("SELECT step FROM metrics WHERE run_id = $1 AND key = $2 AND step BETWEEN $3 AND $4")
            .bind(run)
            .bind(key.to_string())
            .bind(*lo)
            .bind(*hi)
            .fetch_all(&mut tx)
            .await?;
        for row in rows {
            seen.insert((key, row.get("step")?));
        }
    }
    // The first value of each (key, step) wins, as on Postgres.
    let fresh: Vec<&Point> = points
        .iter()
        .filter(|p| seen.insert((&p.key, p.step)))
        .collect();
    let full = sqlite_insert(SQLITE_ROWS_PER_INSERT);
    let now = now_ms();
    let mut deltas: HashMap<&str, Delta> = HashMap::new();
    for chunk in fresh.chunks(SQLITE_ROWS_PER_INSERT) {
        let partial;
        let sql = if chunk.len() == SQLITE_ROWS_PER_INSERT {
            &full
        } else {
            partial = sqlite_insert(chunk.len());
            &partial
        };
        let mut q = db.q_str(sql).bind(run).bind(now);
        for p in chunk {
            q = q.bind(&*p.key).bind(p.step).bind(p.value);
            let d = deltas.entry(&p.key).or_insert(Delta {
                last_step: p.step,
                last_value: p.value,
                min: p.value,
                max: p.value,
                count: 0,
            });
            if p.step >= d.last_step {
                d.last_step = p.step;
                d.last_value = p.value;
            }
            d.min = d.min.min(p.value);
            d.max = d.max.max(p.value);
            d.count += 1;
        }
        q.execute(&mut tx).await?;
    }
    for (key, d) in deltas {
        tx.q(SQLITE_SUMMARY)
            .bind(run)
            .bind(key.to_string())
            .bind(d.last_value)
            .bind(d.last_step)
            .bind(d.min)
            .bind(d.max)
            .bind(d.count)
            .execute(&mut tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_insert_numbers_parameters() {
        assert_eq!(
            super::sqlite_insert(2),
            "INSERT INTO metrics (run_id, key, step, value, logged_at) VALUES ($1,$3,$4,$5,$2),($1,$6,$7,$8,$2)"
        );
    }
}
