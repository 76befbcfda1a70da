//! The buffered metric writer. A training loop calls [`MetricWriter::log`], which only pushes the
//! point onto a channel and never waits on the database; a tokio task drains the channel and
//! writes a batch every `batch` points or every `interval`, whichever comes first, and at
//! [`MetricWriter::finish`]. Each batch is one transaction that inserts the points and updates the
//! per-run summaries (last, min, max, count) together: on Postgres a binary `COPY` of the points,
//! on SQLite one prepared statement stepped per point under `BEGIN IMMEDIATE`; the summaries are
//! computed in memory and upserted once per key and flush.
//!
//! From a synchronous thread (tch training code), keep a `tokio::runtime::Handle` from the
//! runtime that created the writer, call `log` freely, and end with
//! `handle.block_on(writer.finish())`.
//!
//! Re-logging a (run, key, step) that is already stored keeps the first value (idempotent
//! retries); the channel is unbounded, so memory grows only if the database falls behind.
//!
//! [`Registry::log_batch`] writes params, tags and points of a client that gives its own
//! timestamps (the MLflow API) at once, in one durable transaction, through the same inserts;
//! it stores any double, NaN and the infinities included, which the writer refuses.
use super::runs::{insert_params, upsert_tags};
use crate::db::{Db, Dialect, Tx};
use crate::{check_key, now_ms, Registry};
use anyhow::{anyhow, bail, Context, Result};
use sqlx::Row as _;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Epoch milliseconds; the writer's task stamps the points as it receives them.
    logged_at: i64,
}

/// One point as a client logged it, with its own time.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedPoint {
    pub key: String,
    pub step: i64,
    pub value: f64,
    /// Epoch milliseconds.
    pub logged_at: i64,
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
        let point = Point {
            key,
            step,
            value,
            logged_at: 0,
        };
        self.tx.send(point).map_err(|_| {
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
        let (room, received) = (batch - buffer.len(), buffer.len());
        let (closed, tick) = tokio::select! {
            n = rx.recv_many(&mut buffer, room) => (n == 0, false),
            _ = ticker.tick() => (false, true),
        };
        let now = now_ms();
        for p in &mut buffer[received..] {
            p.logged_at = now;
        }
        let due = closed || tick || buffer.len() >= batch;
        if !buffer.is_empty() && due {
            if let Err(e) = write_points(&db, run, &buffer, closed).await {
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

/// Inserts points of one run and updates its summaries, in one transaction. The transaction
/// first locks the run against other writers (Postgres: the run's row; SQLite: the database
/// write lock of `BEGIN IMMEDIATE`), so that the steps already stored can be read and left out
/// and the rest go in as plain inserts, with no per-row conflict handling; the summaries are
/// computed from what is inserted and upserted once per key.
///
/// Only the last flush (`durable`, at finish) waits for the disk. Earlier flushes commit without
/// waiting for their WAL to be flushed (Postgres `synchronous_commit = off` for the transaction;
/// SQLite runs with `synchronous = NORMAL` in WAL mode): a crash of the database server or the
/// machine can lose the last fraction of a second of points, never part of a batch, and a crash
/// of the training process loses nothing already flushed. The durable commit at finish makes
/// every earlier one durable too, as the WAL is written in order.
async fn write_points(db: &Db, run: i64, points: &[Point], durable: bool) -> Result<()> {
    write_batch(db, run, points, durable)
        .await
        .with_context(|| format!("writing {} metric points of run {run}", points.len()))
}

async fn write_batch(db: &Db, run: i64, points: &[Point], durable: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    if let (false, Tx::Pg(t)) = (durable, &mut tx) {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut **t)
            .await?;
    }
    lock_run(&mut tx, run).await?;
    insert_points(&mut tx, run, points).await?;
    tx.commit().await
}

impl Registry {
    /// Writes params, tags and metric points of one run in one durable transaction: all of them
    /// or, when one is refused (a param that would change, a bad key, a run that does not
    /// exist), none. Params and points follow the rules of [`Registry::log_params`] and the
    /// writer (a stored (key, step) keeps its first value); tags are overwritten. Unlike the
    /// writer it stores NaN and the infinities, and each point's own time.
    pub async fn log_batch(
        &self,
        run: i64,
        params: &[(String, String)],
        tags: &[(String, String)],
        points: &[LoggedPoint],
    ) -> Result<()> {
        for (kind, keys) in [("param", params), ("tag", tags)] {
            for (k, _) in keys {
                check_key(kind, k)?;
            }
        }
        let mut keys: HashMap<&str, Arc<str>> = HashMap::new();
        let mut batch = Vec::with_capacity(points.len());
        for p in points {
            check_key("metric", &p.key)?;
            let key = keys
                .entry(&p.key)
                .or_insert_with(|| Arc::from(p.key.as_str()));
            batch.push(Point {
                key: key.clone(),
                step: p.step,
                value: p.value,
                logged_at: p.logged_at,
            });
        }
        let mut tx = self.db.begin().await?;
        lock_run(&mut tx, run).await?;
        insert_params(&mut tx, run, params).await?;
        upsert_tags(&mut tx, run, tags).await?;
        insert_points(&mut tx, run, &batch).await?;
        tx.commit().await
    }
}

/// Locks the run's row against other writers of its points until the transaction ends
/// (Postgres; SQLite's `BEGIN IMMEDIATE` already holds the database's write lock), and fails
/// when the run does not exist.
async fn lock_run(tx: &mut Tx, run: i64) -> Result<()> {
    let lock = match tx.dialect() {
        Dialect::Postgres => "SELECT id FROM runs WHERE id = $1 FOR NO KEY UPDATE",
        Dialect::Sqlite => "SELECT id FROM runs WHERE id = $1",
    };
    if tx
        .q(lock)
        .bind(run)
        .fetch_optional(&mut *tx)
        .await?
        .is_none()
    {
        bail!("cannot log metrics: run {run} does not exist");
    }
    Ok(())
}

/// Inserts the points not stored yet, and updates the summaries, inside `tx`.
async fn insert_points(tx: &mut Tx, run: i64, points: &[Point]) -> Result<()> {
    let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for p in points {
        let r = ranges.entry(&p.key).or_insert((p.step, p.step));
        r.0 = r.0.min(p.step);
        r.1 = r.1.max(p.step);
    }
    let stored = stored_steps(tx, run, &ranges).await?;
    let mut seen: HashSet<(&str, i64)> = stored.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    // The first value of each (key, step) wins; in key order, each key's index pages are
    // touched once in a row.
    let mut fresh: Vec<&Point> = points
        .iter()
        .filter(|p| seen.insert((&p.key, p.step)))
        .collect();
    fresh.sort_by(|a, b| (&*a.key, a.step).cmp(&(&*b.key, b.step)));
    if fresh.is_empty() {
        return Ok(());
    }
    let deltas = summarise(&fresh);
    match tx {
        Tx::Pg(t) => write_pg(t, run, &fresh, &deltas).await,
        Tx::Sqlite(t) => write_sqlite(t, run, &fresh, &deltas).await,
    }
}

/// The (key, step) pairs already stored for `run` within each key's step range.
async fn stored_steps(
    tx: &mut Tx,
    run: i64,
    ranges: &BTreeMap<&str, (i64, i64)>,
) -> Result<Vec<(String, i64)>> {
    let mut stored = Vec::new();
    match tx {
        Tx::Pg(t) => {
            let keys: Vec<&str> = ranges.keys().copied().collect();
            let lo: Vec<i64> = ranges.values().map(|r| r.0).collect();
            let hi: Vec<i64> = ranges.values().map(|r| r.1).collect();
            let rows = sqlx::query(
                "SELECT m.key, m.step FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) \
                 AS r(k, lo, hi) JOIN metrics m \
                 ON m.run_id = $1 AND m.key = r.k AND m.step BETWEEN r.lo AND r.hi",
            )
            .bind(run)
            .bind(keys)
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut **t)
            .await?;
            for row in rows {
                stored.push((row.try_get("key")?, row.try_get("step")?));
            }
        }
        Tx::Sqlite(t) => {
            for (key, (lo, hi)) in ranges {
                let rows = sqlx::query(
                    "SELECT step FROM metrics \
                     WHERE run_id = $1 AND key = $2 AND step BETWEEN $3 AND $4",
                )
                .bind(run)
                .bind(*key)
                .bind(*lo)
                .bind(*hi)
                .fetch_all(&mut **t)
                .await?;
                for row in rows {
                    stored.push((key.to_string(), row.try_get("step")?));
                }
            }
        }
    }
    Ok(stored)
}

/// What one batch adds to a metric's summary.
#[derive(Debug, PartialEq)]
struct Delta<'a> {
    key: &'a str,
    last_step: i64,
    last_value: f64,
    min: f64,
    max: f64,
    count: i64,
}

/// The smaller of two values in the order both databases give doubles: NaN above every number.
fn least(a: f64, b: f64) -> f64 {
    if a.is_nan() || b < a {
        b
    } else {
        a
    }
}

/// The larger of two values in the same order as [`least`].
fn greatest(a: f64, b: f64) -> f64 {
    if b.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// The summary delta of each key, in key order, from points sorted by (key, step). Min and max
/// order NaN above every number, as the databases' LEAST and GREATEST do when the delta is
/// merged into the stored summary.
fn summarise<'a>(sorted: &[&'a Point]) -> Vec<Delta<'a>> {
    let mut deltas: Vec<Delta<'a>> = Vec::new();
    for p in sorted {
        match deltas.last_mut() {
            Some(d) if d.key == &*p.key => {
                // Sorted by step within a key: this point is the latest so far.
                d.last_step = p.step;
                d.last_value = p.value;
                d.min = least(d.min, p.value);
                d.max = greatest(d.max, p.value);
                d.count += 1;
            }
            _ => deltas.push(Delta {
                key: &p.key,
                last_step: p.step,
                last_value: p.value,
                min: p.value,
                max: p.value,
                count: 1,
            }),
        }
    }
    deltas
}

/// The points go in through `COPY ... FROM STDIN` in the binary format: no SQL to parse per
/// batch, no arrays to build and unpack.
const PG_COPY: &str =
    "COPY metrics (run_id, key, step, value, logged_at) FROM STDIN WITH (FORMAT binary)";

/// The binary COPY stream of `points`: the signature, flags and header extension, then per row
/// the field count and each field as its length and big-endian value, then the -1 trailer.
fn pg_copy_rows(run: i64, points: &[&Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + points.len() * 58 + 2);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for p in points {
        out.extend_from_slice(&5i16.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&run.to_be_bytes());
        out.extend_from_slice(&(p.key.len() as i32).to_be_bytes());
        out.extend_from_slice(p.key.as_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&p.step.to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&p.value.to_bits().to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&p.logged_at.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

const PG_SUMMARY: &str = "\
INSERT INTO metric_summaries (run_id, key, last_value, last_step, min_value, max_value, count)
SELECT $1, k, lv, ls, mn, mx, n
FROM UNNEST($2::text[], $3::float8[], $4::bigint[], $5::float8[], $6::float8[], $7::bigint[])
    AS t(k, lv, ls, mn, mx, n)
ON CONFLICT (run_id, key) DO UPDATE SET
    last_value = CASE WHEN excluded.last_step >= metric_summaries.last_step
                      THEN excluded.last_value ELSE metric_summaries.last_value END,
    last_step = GREATEST(metric_summaries.last_step, excluded.last_step),
    min_value = LEAST(metric_summaries.min_value, excluded.min_value),
    max_value = GREATEST(metric_summaries.max_value, excluded.max_value),
    count = metric_summaries.count + excluded.count";

/// Postgres: a binary COPY for the points, one INSERT over `UNNEST` arrays for the summaries.
async fn write_pg(
    t: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    run: i64,
    points: &[&Point],
    deltas: &[Delta<'_>],
) -> Result<()> {
    let mut copy = t.copy_in_raw(PG_COPY).await?;
    copy.send(pg_copy_rows(run, points)).await?;
    let copied = copy.finish().await?;
    if copied != points.len() as u64 {
        bail!("COPY stored {copied} of {} metric points", points.len());
    }
    sqlx::query(PG_SUMMARY)
        .bind(run)
        .bind(deltas.iter().map(|d| d.key).collect::<Vec<&str>>())
        .bind(deltas.iter().map(|d| d.last_value).collect::<Vec<f64>>())
        .bind(deltas.iter().map(|d| d.last_step).collect::<Vec<i64>>())
        .bind(deltas.iter().map(|d| d.min).collect::<Vec<f64>>())
        .bind(deltas.iter().map(|d| d.max).collect::<Vec<f64>>())
        .bind(deltas.iter().map(|d| d.count).collect::<Vec<i64>>())
        .execute(&mut **t)
        .await?;
    Ok(())
}

/// SQLite stores a bound NaN as NULL, which `coalesce` turns into the text that stands for NaN
/// (see `MetricValue` in db.rs); its scalar min() and max() order that text above every number.
const SQLITE_SUMMARY: &str = "\
INSERT INTO metric_summaries (run_id, key, last_value, last_step, min_value, max_value, count)
VALUES ($1, $2, coalesce($3, 'NaN'), $4, coalesce($5, 'NaN'), coalesce($6, 'NaN'), $7)
ON CONFLICT (run_id, key) DO UPDATE SET
    last_value = CASE WHEN excluded.last_step >= metric_summaries.last_step
                      THEN excluded.last_value ELSE metric_summaries.last_value END,
    last_step = max(metric_summaries.last_step, excluded.last_step),
    min_value = min(metric_summaries.min_value, excluded.min_value),
    max_value = max(metric_summaries.max_value, excluded.max_value),
    count = metric_summaries.count + excluded.count";

/// SQLite: the points through one prepared statement stepped per row on the connection's own
/// handle (see [`crate::sqlite_raw`]), then one upsert per key through sqlx.
async fn write_sqlite(
    t: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    run: i64,
    points: &[&Point],
    deltas: &[Delta<'_>],
) -> Result<()> {
    {
        let mut handle = t.lock_handle().await?;
        let mut insert = crate::sqlite_raw::Statement::prepare(
            &mut handle,
            "INSERT INTO metrics (run_id, key, step, value, logged_at) \
             VALUES (?1, ?2, ?3, coalesce(?4, 'NaN'), ?5)",
        )?;
        insert.bind_i64(1, run)?;
        let mut key: Option<&str> = None;
        for p in points {
            // Sorted by key: each key is bound once.
            if key != Some(&*p.key) {
                insert.bind_text(2, &p.key)?;
                key = Some(&p.key);
            }
            insert.bind_i64(3, p.step)?;
            insert.bind_f64(4, p.value)?;
            insert.bind_i64(5, p.logged_at)?;
            insert.execute()?;
        }
    }
    for d in deltas {
        sqlx::query(SQLITE_SUMMARY)
            .bind(run)
            .bind(d.key)
            .bind(d.last_value)
            .bind(d.last_step)
            .bind(d.min)
            .bind(d.max)
            .bind(d.count)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{summarise, Delta, Point};

    #[test]
    fn nan_is_above_every_number_in_summaries() {
        let point = |step, value| Point {
            key: "loss".into(),
            step,
            value,
            logged_at: 0,
        };
        let points = [point(1, f64::NAN), point(2, 3.0), point(3, -1.0)];
        let sorted: Vec<&Point> = points.iter().collect();
        let d = &summarise(&sorted)[0];
        assert_eq!((d.min, d.last_value, d.count), (-1.0, -1.0, 3));
        assert!(d.max.is_nan());
        let only_nan = [point(1, f64::NAN)];
        let d = &summarise(&only_nan.iter().collect::<Vec<_>>())[0];
        assert!(d.min.is_nan() && d.max.is_nan());
        assert_eq!(super::least(f64::INFINITY, f64::NAN), f64::INFINITY);
    }

    #[test]
    fn summaries_per_key_from_sorted_points() {
        let point = |key: &str, step, value| Point {
            key: key.into(),
            step,
            value,
            logged_at: 0,
        };
        let points = [
            point("acc", 3, 0.5),
            point("loss", 1, 2.0),
            point("loss", 4, 3.0),
            point("loss", 9, 1.5),
        ];
        let sorted: Vec<&Point> = points.iter().collect();
        assert_eq!(
            summarise(&sorted),
            vec![
                Delta {
                    key: "acc",
                    last_step: 3,
                    last_value: 0.5,
                    min: 0.5,
                    max: 0.5,
                    count: 1
                },
                Delta {
                    key: "loss",
                    last_step: 9,
                    last_value: 1.5,
                    min: 1.5,
                    max: 3.0,
                    count: 3
                },
            ]
        );
    }
}
