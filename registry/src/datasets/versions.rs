//! Dataset versions and their shards. A version is a folder of Parquet shards made by one stage
//! (ingest, filter, ...) with its parameters, optionally from a parent version: the lineage.
//! Versions are numbered 1, 2, 3, ... per dataset; a version is BUILDING until it is finished.
use crate::db::{Dialect, Row, Tx};
use crate::status::status_enum;
use crate::{check_key, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

status_enum!(
    /// Where a dataset version is in its life: BUILDING while a stage writes its shards, then
    /// FINISHED (readable) or FAILED.
    DatasetStatus, "dataset version", {
        Building => "BUILDING",
        Finished => "FINISHED",
        Failed => "FAILED",
    }
);

/// What a stage declares when it starts writing a version.
#[derive(Clone, Debug)]
pub struct NewDatasetVersion {
    pub dataset: String,
    /// Where the shards go (a folder path or URL).
    pub uri: String,
    /// The version this one was made from.
    pub parent: Option<i64>,
    /// The stage that makes it, e.g. "ingest" or "filter".
    pub stage: String,
    pub params: Value,
}

/// A dataset version with its shard totals.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetVersion {
    pub id: i64,
    pub dataset: String,
    pub version: i64,
    pub uri: String,
    pub parent_id: Option<i64>,
    pub stage: String,
    pub params: Value,
    pub stats: Option<Value>,
    pub status: DatasetStatus,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub shards: i64,
    pub rows: i64,
}

/// One shard as registered by the writer.
#[derive(Clone, Debug)]
pub struct NewShard {
    pub index: i64,
    pub uri: String,
    pub rows: i64,
    pub stats: Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Shard {
    pub version_id: i64,
    pub index: i64,
    pub uri: String,
    pub rows: i64,
    pub stats: Value,
    pub created_at: i64,
}

const VERSION_SELECT: &str = "SELECT v.id, d.name AS dataset, v.version, v.uri, v.parent_id, v.stage, \
    v.params, v.stats, v.status, v.created_at, v.finished_at, \
    (SELECT count(*) FROM shards s WHERE s.version_id = v.id) AS shard_count, \
    (SELECT CAST(COALESCE(sum(s.rows), 0) AS BIGINT) FROM shards s WHERE s.version_id = v.id) AS row_count \
    FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id";

fn version_from_row(row: &Row) -> Result<DatasetVersion> {
    Ok(DatasetVersion {
        id: row.get("id")?,
        dataset: row.get("dataset")?,
        version: row.get("version")?,
        uri: row.get("uri")?,
        parent_id: row.get("parent_id")?,
        stage: row.get("stage")?,
        params: row.get::<Json<Value>>("params")?.0,
        stats: row.get::<Option<Json<Value>>>("stats")?.map(|j| j.0),
        status: row.get::<String>("status")?.parse()?,
        created_at: row.get("created_at")?,
        finished_at: row.get("finished_at")?,
        shards: row.get("shard_count")?,
        rows: row.get("row_count")?,
    })
}

impl Registry {
    /// Starts version N+1 of `v.dataset` (created on demand), status BUILDING.
    pub async fn create_dataset_version(&self, v: NewDatasetVersion) -> Result<DatasetVersion> {
        check_key("dataset", &v.dataset)?;
        check_key("stage", &v.stage)?;
        let mut tx = self.db.begin().await?;
        if let Some(parent) = v.parent {
            let found = tx
                .q("SELECT id FROM dataset_versions WHERE id = $1")
                .bind(parent)
                .fetch_optional(&mut tx)
                .await?;
            if found.is_none() {
                bail!("parent dataset version {parent} does not exist");
            }
        }
        tx.q(
            "INSERT INTO datasets (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(v.dataset.clone())
        .bind(now_ms())
        .execute(&mut tx)
        .await
        .with_context(|| format!("creating dataset {:?}", v.dataset))?;
        // Serialise version numbering per dataset (SQLite's BEGIN IMMEDIATE already does).
        let lock = match tx.dialect() {
            Dialect::Postgres => "SELECT id FROM datasets WHERE name = $1 FOR UPDATE",
            Dialect::Sqlite => "SELECT id FROM datasets WHERE name = $1",
        };
        let dataset_id: i64 = tx
            .q(lock)
            .bind(v.dataset.clone())
            .fetch_one(&mut tx)
            .await?
            .get("id")?;
        let id: i64 = tx
            .q("INSERT INTO dataset_versions (dataset_id, version, uri, parent_id, stage, params, status, created_at) \
                SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5, 'BUILDING', $6 \
                FROM dataset_versions WHERE dataset_id = $1 RETURNING id")
            .bind(dataset_id)
            .bind(v.uri.clone())
            .bind(v.parent)
            .bind(v.stage.clone())
            .bind(Json(v.params.clone()))
            .bind(now_ms())
            .fetch_one(&mut tx)
            .await
            .with_context(|| format!("creating a version of dataset {:?}", v.dataset))?
            .get("id")?;
        tx.commit().await?;
        self.dataset_version_by_id(id).await
    }

    /// Records a shard of a BUILDING version; registering the same index again replaces it.
    pub async fn register_shard(&self, version_id: i64, shard: NewShard) -> Result<()> {
        if shard.rows < 0 {
            bail!(
                "shard {} of dataset version {version_id}: negative row count {}",
                shard.index,
                shard.rows
            );
        }
        let mut tx = self.db.begin().await?;
        let status = version_status(&mut tx, version_id).await?;
        if status != DatasetStatus::Building {
            bail!("dataset version {version_id} is {status}; no shards can be added");
        }
        tx.q("INSERT INTO shards (version_id, idx, uri, rows, stats, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
              ON CONFLICT (version_id, idx) DO UPDATE SET uri = excluded.uri, rows = excluded.rows, \
              stats = excluded.stats, created_at = excluded.created_at")
            .bind(version_id)
            .bind(shard.index)
            .bind(shard.uri)
            .bind(shard.rows)
            .bind(Json(shard.stats))
            .bind(now_ms())
            .execute(&mut tx)
            .await
            .with_context(|| format!("registering shard {} of dataset version {version_id}", shard.index))?;
        tx.commit().await
    }

    /// Marks a BUILDING version FINISHED with its final statistics.
    pub async fn finish_dataset_version(&self, version_id: i64, stats: Value) -> Result<()> {
        self.end_dataset_version(version_id, DatasetStatus::Finished, stats)
            .await
    }

    /// Marks a BUILDING version FAILED (its stats say why).
    pub async fn fail_dataset_version(&self, version_id: i64, stats: Value) -> Result<()> {
        self.end_dataset_version(version_id, DatasetStatus::Failed, stats)
            .await
    }

    async fn end_dataset_version(
        &self,
        version_id: i64,
        status: DatasetStatus,
        stats: Value,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let current = version_status(&mut tx, version_id).await?;
        if current != DatasetStatus::Building {
            bail!("dataset version {version_id} is already {current}");
        }
        tx.q("UPDATE dataset_versions SET status = $2, stats = $3, finished_at = $4 WHERE id = $1")
            .bind(version_id)
            .bind(status.as_str())
            .bind(Json(stats))
            .bind(now_ms())
            .execute(&mut tx)
            .await
            .with_context(|| format!("ending dataset version {version_id}"))?;
        tx.commit().await
    }

    /// `"NAME"` (its latest FINISHED version) or `"NAME@3"`.
    pub async fn dataset_version(&self, spec: &str) -> Result<DatasetVersion> {
        let (name, version) = match spec.split_once('@') {
            Some((name, v)) => {
                let v: i64 = v
                    .parse()
                    .with_context(|| format!("dataset {spec:?}: version {v:?} is not a number"))?;
                (name, Some(v))
            }
            None => (spec, None),
        };
        let sql = format!(
            "{VERSION_SELECT} WHERE d.name = $1 AND \
             (($2 IS NULL AND v.status = 'FINISHED') OR v.version = $2) ORDER BY v.version DESC LIMIT 1"
        );
        let row = self
            .db
            .q_str(&sql)
            .bind(name.to_string())
            .bind(version)
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("reading dataset version {spec:?}"))?;
        match (row, version) {
            (Some(row), _) => version_from_row(&row),
            (None, Some(v)) => bail!("dataset {name:?} has no version {v}"),
            (None, None) => bail!("dataset {name:?} has no finished version"),
        }
    }

    /// A version by id.
    pub async fn dataset_version_by_id(&self, id: i64) -> Result<DatasetVersion> {
        let sql = format!("{VERSION_SELECT} WHERE v.id = $1");
        let row = self
            .db
            .q_str(&sql)
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("reading dataset version {id}"))?;
        match row {
            Some(row) => version_from_row(&row),
            None => bail!("dataset version {id} does not exist"),
        }
    }

    /// All versions, of one dataset or of all, by dataset name then version.
    pub async fn dataset_versions(&self, dataset: Option<&str>) -> Result<Vec<DatasetVersion>> {
        let sql =
            format!("{VERSION_SELECT} WHERE $1 IS NULL OR d.name = $1 ORDER BY d.name, v.version");
        let rows = self
            .db
            .q_str(&sql)
            .bind(dataset.map(str::to_string))
            .fetch_all(&self.db)
            .await
            .context("listing dataset versions")?;
        if rows.is_empty() {
            if let Some(name) = dataset {
                bail!("no dataset named {name:?}");
            }
        }
        rows.iter().map(version_from_row).collect()
    }

    /// The shards of a version, by index.
    pub async fn shards(&self, version_id: i64) -> Result<Vec<Shard>> {
        let rows = self
            .db
            .q("SELECT version_id, idx, uri, rows, stats, created_at FROM shards WHERE version_id = $1 ORDER BY idx")
            .bind(version_id)
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("reading the shards of dataset version {version_id}"))?;
        rows.iter()
            .map(|r| {
                Ok(Shard {
                    version_id: r.get("version_id")?,
                    index: r.get("idx")?,
                    uri: r.get("uri")?,
                    rows: r.get("rows")?,
                    stats: r.get::<Json<Value>>("stats")?.0,
                    created_at: r.get("created_at")?,
                })
            })
            .collect()
    }
}

async fn version_status(tx: &mut Tx, version_id: i64) -> Result<DatasetStatus> {
    let row = tx
        .q("SELECT status FROM dataset_versions WHERE id = $1")
        .bind(version_id)
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("reading dataset version {version_id}"))?;
    match row {
        Some(r) => r.get::<String>("status")?.parse(),
        None => bail!("dataset version {version_id} does not exist"),
    }
}
