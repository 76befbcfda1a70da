//! albef-registry: the store every stage writes to, on Postgres or on an embedded SQLite file
//! behind one async API ([`Registry`]). One module per area:
//!
//! - [`tracking`]: experiments, runs, params, tags, metric history and summaries, run search and
//!   the dashboards' read-only views;
//! - [`models`]: checkpoints, models and their aliases, promotion with gates, rollback;
//! - [`datasets`]: dataset versions and their shards, the dataset lock;
//! - [`jobs`]: ingestion schedules, the job queue, work leases, cron expressions;
//! - [`query`]: the filter language of run search and promotion gates (lexer, parser, SQL);
//! - `http` (feature `http`): the JSON API and web page of `albef serve`, and the MLflow
//!   tracking API beside it.
//!
//! `db` holds the connection, the migrations and the one query API over both backends;
//! [`json_float`] writes metric values into JSON without losing NaN or the infinities.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use albef_registry::{Registry, RunStatus};
//! let reg = Registry::connect("sqlite://albef-home/registry.db").await?;
//! let run = reg.create_run("pretrain", "tiny-1", &serde_json::json!({"lr": 1e-4})).await?;
//! let metrics = reg.metric_writer(run); // needs a tokio runtime; log() is synchronous
//! metrics.log("loss", 1, 2.5)?;
//! metrics.finish().await?;
//! reg.finish_run(run, RunStatus::Finished).await?;
//! # Ok(()) }
//! ```
mod db;
pub mod json_float;
mod sqlite_raw;
mod status;

pub mod datasets;
#[cfg(feature = "http")]
pub mod http;
pub mod jobs;
pub mod models;
pub mod query;
pub mod tracking;

// The types most callers need, so that `use albef_registry::{Registry, RunStatus}` reads as before.
pub use datasets::{DatasetStatus, DatasetVersion, NewDatasetVersion, NewShard};
pub use jobs::{process_owner, UnitLease};
pub use models::{Checkpoint, CheckpointFile, PromotionEvent, PromotionRequest};
pub use tracking::{
    Experiment, LoggedPoint, MetricPoint, MetricSummary, MetricWriter, MetricWriterOptions, Run,
    RunOrigin, RunSearch, RunStatus,
};

pub use db::DEFAULT_STATEMENT_TIMEOUT;

use anyhow::Result;
use std::time::Duration;

/// A handle on the registry. Cheap to clone: the connection pool is shared.
#[derive(Clone, Debug)]
pub struct Registry {
    db: db::Db,
}

impl Registry {
    /// Opens `sqlite://PATH` (the file and its folder are created) or `postgres://...`, and
    /// brings the schema up to date.
    /// On Postgres each statement may run [`DEFAULT_STATEMENT_TIMEOUT`] (30 s).
    pub async fn connect(url: &str) -> Result<Registry> {
        Self::connect_with(url, DEFAULT_STATEMENT_TIMEOUT).await
    }

    /// As [`Registry::connect`], with another bound on each Postgres statement: the server cancels
    /// one that runs longer ("canceling statement due to statement timeout"). SQLite has no such
    /// bound; a statement there waits at most 30 s for another writer's lock (its busy timeout).
    pub async fn connect_with(url: &str, statement_timeout: Duration) -> Result<Registry> {
        Ok(Registry {
            db: db::Db::connect(url, statement_timeout).await?,
        })
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.db.dialect() {
            db::Dialect::Postgres => "postgres",
            db::Dialect::Sqlite => "sqlite",
        }
    }
}

/// Milliseconds since the Unix epoch: how every time in the registry is stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The longest key (param, tag, metric, dataset or stage name) the registry accepts.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// Refuses an empty key or one longer than [`MAX_KEY_LEN`]; `kind` names it in the error.
pub(crate) fn check_key(kind: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        anyhow::bail!("{kind} name is empty");
    }
    if key.len() > MAX_KEY_LEN {
        anyhow::bail!("{kind} name {key:?} is longer than {MAX_KEY_LEN} bytes");
    }
    Ok(())
}

/// This machine's host name, when it has one.
pub(crate) fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Maps a database error to a readable one when it is a known constraint; otherwise keeps it.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
