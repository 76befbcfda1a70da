//! Experiments and runs: create a run (its experiment on demand), record params, tags and the
//! dataset version it trained on, finish it, and read runs back with their metric summaries.
use super::experiments::experiment_id;
use crate::db::{MetricValue, Row, Tx};
use crate::status::status_enum;
use crate::{check_key, host_name, is_unique_violation, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use std::sync::OnceLock;

status_enum!(
    /// Where a run is in its life.
    RunStatus, "run", {
        Running => "RUNNING",
        Finished => "FINISHED",
        Failed => "FAILED",
        Killed => "KILLED",
    }
);

/// One run as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: i64,
    pub experiment: String,
    pub name: String,
    pub status: RunStatus,
    pub config: Value,
    pub code_version: String,
    pub host: String,
    pub dataset_version_id: Option<i64>,
    /// Epoch milliseconds.
    pub start_time: i64,
    pub end_time: Option<i64>,
}

/// The per-run summary of one metric, kept up to date with every flush. Values serialize as
/// [`crate::json_float`] writes them (NaN and the infinities as strings).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSummary {
    pub key: String,
    #[serde(serialize_with = "crate::json_float::serialize")]
    pub last: f64,
    pub last_step: i64,
    #[serde(serialize_with = "crate::json_float::serialize")]
    pub min: f64,
    #[serde(serialize_with = "crate::json_float::serialize")]
    pub max: f64,
    pub count: i64,
}

/// One point of a metric's history.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MetricPoint {
    pub step: i64,
    #[serde(serialize_with = "crate::json_float::serialize")]
    pub value: f64,
    /// Epoch milliseconds: when the writer received the point, or the time its client gave.
    pub logged_at: i64,
}

/// What a new run records about where it comes from; the default is this process: its host,
/// its code version and the current time.
#[derive(Clone, Debug, Default)]
pub struct RunOrigin {
    /// Epoch milliseconds.
    pub start_time: Option<i64>,
    pub host: Option<String>,
    pub code_version: Option<String>,
}

/// A run with everything recorded about it.
#[derive(Clone, Debug, Serialize)]
pub struct RunDetail {
    pub run: Run,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub metrics: Vec<MetricSummary>,
}

/// The columns [`run_from_row`] reads; `r` is runs, `e` is experiments.
pub(crate) const RUN_COLUMNS: &str = "r.id, e.name AS experiment, r.name, r.status, r.config, \
    r.code_version, r.host, r.dataset_version_id, r.start_time, r.end_time";

pub(crate) fn run_from_row(row: &Row) -> Result<Run> {
    let status: String = row.get("status")?;
    Ok(Run {
        id: row.get("id")?,
        experiment: row.get("experiment")?,
        name: row.get("name")?,
        status: status.parse()?,
        config: row.get::<Json<Value>>("config")?.0,
        code_version: row.get("code_version")?,
        host: row.get("host")?,
        dataset_version_id: row.get("dataset_version_id")?,
        start_time: row.get("start_time")?,
        end_time: row.get("end_time")?,
    })
}

/// `git describe` of the working directory when it is a checkout, else the package version.
fn code_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        std::process::Command::new("git")
            .args(["describe", "--always", "--dirty", "--tags"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("albef-registry {}", env!("CARGO_PKG_VERSION")))
    })
}

/// Fails with "run N does not exist" unless it does; returns its status.
pub(crate) async fn run_status(tx: &mut Tx, run: i64) -> Result<RunStatus> {
    let row = tx
        .q("SELECT status FROM runs WHERE id = $1")
        .bind(run)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("reading run {run}"))?;
    match row {
        Some(row) => row.get::<String>("status")?.parse(),
        None => bail!("run {run} does not exist"),
    }
}

/// Records params inside `tx`. A param is written once: the same value again is fine, a
/// different value is an error.
pub(super) async fn insert_params(
    tx: &mut Tx,
    run: i64,
    params: &[(String, String)],
) -> Result<()> {
    for (k, v) in params {
        let inserted = tx
            .q(
                "INSERT INTO params (run_id, key, value) VALUES ($1, $2, $3) \
                ON CONFLICT (run_id, key) DO NOTHING",
            )
            .bind(run)
            .bind(k.clone())
            .bind(v.clone())
            .execute(&mut *tx)
            .await
            .with_context(|| format!("logging param {k:?} of run {run}"))?;
        if inserted == 0 {
            let old: String = tx
                .q("SELECT value FROM params WHERE run_id = $1 AND key = $2")
                .bind(run)
                .bind(k.clone())
                .fetch_one(&mut *tx)
                .await?
                .get("value")?;
            if &old != v {
                bail!("param {k:?} of run {run} is already {old:?} and cannot change to {v:?}");
            }
        }
    }
    Ok(())
}

/// Sets tags inside `tx`, overwriting earlier values.
pub(super) async fn upsert_tags(tx: &mut Tx, run: i64, tags: &[(String, String)]) -> Result<()> {
    for (k, v) in tags {
        tx.q("INSERT INTO tags (run_id, key, value) VALUES ($1, $2, $3) \
              ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value")
            .bind(run)
            .bind(k.clone())
            .bind(v.clone())
            .execute(&mut *tx)
            .await
            .with_context(|| format!("setting tag {k:?} of run {run}"))?;
    }
    Ok(())
}

pub(super) fn summary_from_row(r: &Row) -> Result<MetricSummary> {
    Ok(MetricSummary {
        key: r.get("key")?,
        last: r.get::<MetricValue>("last_value")?.0,
        last_step: r.get("last_step")?,
        min: r.get::<MetricValue>("min_value")?.0,
        max: r.get::<MetricValue>("max_value")?.0,
        count: r.get("count")?,
    })
}

fn point_from_row(r: &Row) -> Result<MetricPoint> {
    Ok(MetricPoint {
        step: r.get("step")?,
        value: r.get::<MetricValue>("value")?.0,
        logged_at: r.get("logged_at")?,
    })
}

impl Registry {
    /// Starts a run (status RUNNING) in `experiment`, which is created when it does not exist.
    /// The name must be unique within the experiment. Records the host, the code version
    /// (`git describe`, else the package version) and the start time.
    pub async fn create_run(&self, experiment: &str, name: &str, config: &Value) -> Result<i64> {
        self.create_run_from(experiment, name, config, &RunOrigin::default())
            .await
    }

    /// [`Registry::create_run`] for a run started elsewhere: `origin` gives its start time, host
    /// and code version where this process's would be wrong.
    pub async fn create_run_from(
        &self,
        experiment: &str,
        name: &str,
        config: &Value,
        origin: &RunOrigin,
    ) -> Result<i64> {
        check_key("experiment", experiment)?;
        check_key("run", name)?;
        let mut tx = self.db.begin().await?;
        tx.q("INSERT INTO experiments (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(experiment.to_string())
            .bind(now_ms())
            .execute(&mut tx)
            .await
            .with_context(|| format!("creating experiment {experiment:?}"))?;
        let insert = tx
            .q("INSERT INTO runs (experiment_id, name, status, config, code_version, host, start_time) \
                SELECT id, $2, 'RUNNING', $3, $4, $5, $6 FROM experiments WHERE name = $1 RETURNING id")
            .bind(experiment.to_string())
            .bind(name.to_string())
            .bind(Json(config.clone()))
            .bind(origin.code_version.clone().unwrap_or_else(|| code_version().to_string()))
            .bind(origin.host.clone().or_else(host_name).unwrap_or_else(|| "unknown".into()))
            .bind(origin.start_time.unwrap_or_else(now_ms))
            .fetch_one(&mut tx)
            .await;
        let id: i64 = match insert {
            Ok(row) => row.get("id")?,
            Err(e) if is_unique_violation(&e) => {
                bail!("a run named {name:?} already exists in experiment {experiment:?}")
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating run {name:?} in {experiment:?}"))
            }
        };
        tx.commit().await?;
        Ok(id)
    }

    /// Records which dataset version a run trains on.
    pub async fn set_run_dataset(&self, run: i64, dataset_version_id: i64) -> Result<()> {
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        let exists = tx
            .q("SELECT id FROM dataset_versions WHERE id = $1")
            .bind(dataset_version_id)
            .fetch_optional(&mut tx)
            .await?;
        if exists.is_none() {
            bail!("dataset version {dataset_version_id} does not exist");
        }
        tx.q("UPDATE runs SET dataset_version_id = $2 WHERE id = $1")
            .bind(run)
            .bind(dataset_version_id)
            .execute(&mut tx)
            .await
            .with_context(|| format!("setting the dataset of run {run}"))?;
        tx.commit().await
    }

    /// Records params. A param is written once: logging the same value again is fine, a
    /// different value is an error (and nothing of the batch is written).
    pub async fn log_params(&self, run: i64, params: &[(String, String)]) -> Result<()> {
        for (k, _) in params {
            check_key("param", k)?;
        }
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        insert_params(&mut tx, run, params).await?;
        tx.commit().await
    }

    /// Sets tags; a tag can be overwritten.
    pub async fn set_tags(&self, run: i64, tags: &[(String, String)]) -> Result<()> {
        for (k, _) in tags {
            check_key("tag", k)?;
        }
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        upsert_tags(&mut tx, run, tags).await?;
        tx.commit().await
    }

    /// Removes a tag; fails if the run has no tag `key`.
    pub async fn delete_tag(&self, run: i64, key: &str) -> Result<()> {
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        let deleted = tx
            .q("DELETE FROM tags WHERE run_id = $1 AND key = $2")
            .bind(run)
            .bind(key.to_string())
            .execute(&mut tx)
            .await
            .with_context(|| format!("deleting tag {key:?} of run {run}"))?;
        if deleted == 0 {
            bail!("tag {key:?} of run {run} does not exist");
        }
        tx.commit().await
    }

    /// Renames a run; the name must stay unique within its experiment.
    pub async fn rename_run(&self, run: i64, name: &str) -> Result<()> {
        check_key("run", name)?;
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        let renamed = tx
            .q("UPDATE runs SET name = $2 WHERE id = $1")
            .bind(run)
            .bind(name.to_string())
            .execute(&mut tx)
            .await;
        match renamed {
            Ok(_) => tx.commit().await,
            Err(e) if is_unique_violation(&e) => {
                bail!("cannot rename run {run}: a run named {name:?} already exists in its experiment")
            }
            Err(e) => Err(e).with_context(|| format!("renaming run {run} to {name:?}")),
        }
    }

    /// Deletes a run with its params, tags and metrics, for good. A run that registered
    /// checkpoints is refused: they, their aliases and the promotion history refer to it.
    pub async fn delete_run(&self, run: i64) -> Result<()> {
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        let checkpoints = tx
            .q("SELECT count(*) AS n FROM checkpoints WHERE run_id = $1")
            .bind(run)
            .fetch_one(&mut tx)
            .await?
            .get::<i64>("n")?;
        if checkpoints > 0 {
            bail!(
                "run {run} registered {checkpoints} checkpoint(s), which the model registry refers \
                 to; it cannot be deleted"
            );
        }
        for sql in [
            "DELETE FROM metrics WHERE run_id = $1",
            "DELETE FROM metric_summaries WHERE run_id = $1",
            "DELETE FROM params WHERE run_id = $1",
            "DELETE FROM tags WHERE run_id = $1",
            "DELETE FROM runs WHERE id = $1",
        ] {
            tx.q(sql)
                .bind(run)
                .execute(&mut tx)
                .await
                .with_context(|| format!("deleting run {run}"))?;
        }
        tx.commit().await
    }

    /// Ends a RUNNING run with `status` (not RUNNING) and the end time.
    pub async fn finish_run(&self, run: i64, status: RunStatus) -> Result<()> {
        self.finish_run_at(run, status, now_ms()).await
    }

    /// [`Registry::finish_run`] with the end time (epoch milliseconds) a client gave.
    pub async fn finish_run_at(&self, run: i64, status: RunStatus, end_time: i64) -> Result<()> {
        if status == RunStatus::Running {
            bail!("a run cannot be finished with status RUNNING");
        }
        let mut tx = self.db.begin().await?;
        let current = run_status(&mut tx, run).await?;
        if current != RunStatus::Running {
            bail!("run {run} is already {current}");
        }
        tx.q("UPDATE runs SET status = $2, end_time = $3 WHERE id = $1")
            .bind(run)
            .bind(status.as_str())
            .bind(end_time)
            .execute(&mut tx)
            .await
            .with_context(|| format!("finishing run {run}"))?;
        tx.commit().await
    }

    /// One run.
    pub async fn run(&self, run: i64) -> Result<Run> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1"
        );
        let row = self
            .db
            .q_str(&sql)
            .bind(run)
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("reading run {run}"))?;
        match row {
            Some(row) => run_from_row(&row),
            None => bail!("run {run} does not exist"),
        }
    }

    /// Runs, newest first, optionally of one experiment (which must exist).
    pub async fn runs(&self, experiment: Option<&str>) -> Result<Vec<Run>> {
        let experiment = match experiment {
            Some(name) => Some(experiment_id(&self.db, name).await?),
            None => None,
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN experiments e ON e.id = r.experiment_id \
             WHERE $1 IS NULL OR r.experiment_id = $1 ORDER BY r.id DESC"
        );
        let rows = self
            .db
            .q_str(&sql)
            .bind(experiment)
            .fetch_all(&self.db)
            .await
            .context("listing runs")?;
        rows.iter().map(run_from_row).collect()
    }

    /// A run with its params, tags and metric summaries.
    pub async fn run_detail(&self, run: i64) -> Result<RunDetail> {
        let detail_run = self.run(run).await?;
        let pairs = |table: &'static str| async move {
            let sql = match table {
                "params" => "SELECT key, value FROM params WHERE run_id = $1 ORDER BY key",
                _ => "SELECT key, value FROM tags WHERE run_id = $1 ORDER BY key",
            };
            let rows = self.db.q(sql).bind(run).fetch_all(&self.db).await?;
            rows.iter()
                .map(|r| Ok((r.get("key")?, r.get("value")?)))
                .collect::<Result<Vec<(String, String)>>>()
        };
        let params = pairs("params")
            .await
            .with_context(|| format!("reading params of run {run}"))?;
        let tags = pairs("tags")
            .await
            .with_context(|| format!("reading tags of run {run}"))?;
        let metrics = self
            .metric_summaries(run)
            .await
            .with_context(|| format!("reading metrics of run {run}"))?;
        Ok(RunDetail {
            run: detail_run,
            params,
            tags,
            metrics,
        })
    }

    /// The summaries (last, min, max, count) of every metric of a run.
    pub async fn metric_summaries(&self, run: i64) -> Result<Vec<MetricSummary>> {
        let rows = self
            .db
            .q(
                "SELECT key, last_value, last_step, min_value, max_value, count \
                FROM metric_summaries WHERE run_id = $1 ORDER BY key",
            )
            .bind(run)
            .fetch_all(&self.db)
            .await?;
        rows.iter().map(summary_from_row).collect()
    }

    /// The last point of every metric of a run (the one its summary's `last` comes from), by key.
    pub async fn latest_points(&self, run: i64) -> Result<Vec<(String, MetricPoint)>> {
        let rows = self
            .db
            .q(
                "SELECT s.key, m.step, m.value, m.logged_at FROM metric_summaries s \
                 JOIN metrics m ON m.run_id = s.run_id AND m.key = s.key AND m.step = s.last_step \
                 WHERE s.run_id = $1 ORDER BY s.key",
            )
            .bind(run)
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("reading the latest metrics of run {run}"))?;
        rows.iter()
            .map(|r| Ok((r.get("key")?, point_from_row(r)?)))
            .collect()
    }

    /// The full history of one metric of a run, by step.
    pub async fn metric_history(&self, run: i64, key: &str) -> Result<Vec<MetricPoint>> {
        let rows = self
            .db
            .q("SELECT step, value, logged_at FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step")
            .bind(run)
            .bind(key.to_string())
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("reading metric {key:?} of run {run}"))?;
        rows.iter().map(point_from_row).collect()
    }
}
