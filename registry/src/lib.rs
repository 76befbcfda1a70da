//! albef-registry: the store every stage writes to. Runs, params, tags and metric history (with a
//! per-run summary), checkpoints, models, aliases and their promotion history, dataset versions
//! and shards, and work leases, on Postgres or on an embedded SQLite file behind one async API.
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
mod checkpoints;
pub mod cron;
mod dataset_lock;
mod datasets;
mod db;
pub mod filter;
#[cfg(feature = "http")]
pub mod http;
mod leases;
mod metrics;
mod promotion;
mod runs;
pub mod scheduler;
mod search;
mod sqlite_raw;
pub mod views;

pub use checkpoints::Checkpoint;
pub use dataset_lock::{process_owner, DatasetLock, DATASET_LOCK_SCOPE};
pub use datasets::{DatasetVersion, NewDatasetVersion, NewShard, Shard};
pub use leases::UnitLease;
pub use metrics::{MetricWriter, MetricWriterOptions};
pub use promotion::{Gate, PromotionEvent, PromotionRequest};
pub use runs::{MetricPoint, MetricSummary, Run, RunDetail, RunStatus};
pub use search::{RunSearch, SearchHit, MAX_SEARCH_RESULTS};

use anyhow::Result;

/// A handle on the registry. Cheap to clone: the connection pool is shared.
#[derive(Clone, Debug)]
pub struct Registry {
    db: db::Db,
}

impl Registry {
    /// Opens `sqlite://PATH` (the file and its folder are created) or `postgres://...`, and
    /// brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Registry> {
        Ok(Registry {
            db: db::Db::connect(url).await?,
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

/// Maps a database error to a readable one when it is a known constraint; otherwise keeps it.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
