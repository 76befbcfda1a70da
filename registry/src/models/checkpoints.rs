//! Checkpoints: a file a run wrote, recorded with its sha256, size, step and a snapshot of the
//! metrics that describe it (e.g. retrieval recall), and the aliases (`MODEL@ALIAS`) it holds.
use crate::db::{Db, On, Row};
use crate::tracking::run_status;
use crate::{check_key, now_ms, Registry};
use albef_dataset::store;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::types::Json;
use std::path::{Path, PathBuf};

/// A registered checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    pub id: i64,
    pub run_id: i64,
    /// The absolute path of the file.
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
    pub step: i64,
    /// Metric name -> value at registration.
    pub metrics: Value,
    pub created_at: i64,
    /// `MODEL@ALIAS` for every alias this checkpoint holds now.
    pub aliases: Vec<String>,
}

impl Checkpoint {
    /// The numeric value of a metric in the snapshot.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(Value::as_f64)
    }
}

/// The sha256 (hex) and size of a checkpoint file (the dataset crate's hashing, which every
/// stage uses), read off the async threads.
pub(crate) async fn hash_file(path: &Path) -> Result<(String, i64)> {
    let path: PathBuf = path.to_path_buf();
    let (hex, bytes) = tokio::task::spawn_blocking(move || albef_dataset::hash_file(&path))
        .await
        .context("the hashing task panicked")??;
    Ok((hex, bytes as i64))
}

const CHECKPOINT_COLUMNS: &str =
    "c.id, c.run_id, c.uri, c.sha256, c.bytes, c.step, c.metrics, c.created_at";

fn checkpoint_from_row(row: &Row) -> Result<Checkpoint> {
    Ok(Checkpoint {
        id: row.get("id")?,
        run_id: row.get("run_id")?,
        uri: row.get("uri")?,
        sha256: row.get("sha256")?,
        bytes: row.get("bytes")?,
        step: row.get("step")?,
        metrics: row.get::<Json<Value>>("metrics")?.0,
        created_at: row.get("created_at")?,
        aliases: Vec::new(),
    })
}

/// Reads one checkpoint (without its aliases) on the pool or in a transaction.
pub(crate) async fn load(db: &Db, on: impl Into<On<'_>>, id: i64) -> Result<Checkpoint> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE c.id = $1");
    let row = db
        .q_str(&sql)
        .bind(id)
        .fetch_optional(on)
        .await
        .with_context(|| format!("reading checkpoint {id}"))?;
    match row {
        Some(row) => checkpoint_from_row(&row),
        None => bail!("checkpoint {id} does not exist"),
    }
}

/// Refuses a checkpoint whose file is gone or no longer has the recorded sha256. A checkpoint in
/// an object store is checked without copying its weights: the object must be there with the
/// recorded size (its manifest's sha256 is checked by whoever downloads it).
pub(crate) async fn verify_file(ckpt: &Checkpoint) -> Result<()> {
    if store::is_remote(&ckpt.uri) {
        let (prefix, name) = ckpt.uri.rsplit_once('/').unwrap_or_default();
        let bytes = store::Remote::open(prefix)?.size(name).await?;
        return match bytes {
            Some(b) if b as i64 == ckpt.bytes => Ok(()),
            Some(b) => bail!(
                "checkpoint {}: object {} has {b} bytes, not the registered {}; it changed after registration",
                ckpt.id, ckpt.uri, ckpt.bytes
            ),
            None => bail!("checkpoint {}: object {} is missing", ckpt.id, ckpt.uri),
        };
    }
    let path = Path::new(&ckpt.uri);
    if !path.exists() {
        bail!("checkpoint {}: file {} is missing", ckpt.id, ckpt.uri);
    }
    let (sha, _) = hash_file(path).await?;
    if sha != ckpt.sha256 {
        bail!(
            "checkpoint {}: file {} has sha256 {sha}, not the registered {}; it changed after registration",
            ckpt.id,
            ckpt.uri,
            ckpt.sha256
        );
    }
    Ok(())
}

/// A checkpoint's file as the registry records it: where it is, its sha256 (hex) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
}

impl Registry {
    /// Records a checkpoint file of `run`: sha256 and size come from the file, the uri is its
    /// absolute path, `metrics` is a snapshot (finite numbers only).
    pub async fn register_checkpoint(
        &self,
        run: i64,
        path: &Path,
        step: i64,
        metrics: &[(String, f64)],
    ) -> Result<i64> {
        let abs = std::fs::canonicalize(path)
            .with_context(|| format!("cannot find checkpoint file {}", path.display()))?;
        if !abs.is_file() {
            bail!("checkpoint path {} is not a file", abs.display());
        }
        let uri = abs
            .to_str()
            .with_context(|| format!("checkpoint path {} is not UTF-8", abs.display()))?
            .to_string();
        let (sha256, bytes) = hash_file(&abs).await?;
        let file = CheckpointFile { uri, sha256, bytes };
        self.register_checkpoint_file(run, &file, step, metrics)
            .await
    }

    /// Records a checkpoint of `run` whose file lies at `file.uri` (an object-store URI, or a
    /// path already hashed), with `metrics` as a snapshot (finite numbers only).
    pub async fn register_checkpoint_file(
        &self,
        run: i64,
        file: &CheckpointFile,
        step: i64,
        metrics: &[(String, f64)],
    ) -> Result<i64> {
        let mut snapshot = Map::new();
        for (k, v) in metrics {
            check_key("metric", k)?;
            if !v.is_finite() {
                bail!("checkpoint metric {k:?} is {v}, not a finite number");
            }
            snapshot.insert(k.clone(), Value::from(*v));
        }
        let CheckpointFile { uri, sha256, bytes } = file.clone();
        let mut tx = self.db.begin().await?;
        run_status(&mut tx, run).await?;
        let id: i64 = tx
            .q(
                "INSERT INTO checkpoints (run_id, uri, sha256, bytes, step, metrics, created_at) \
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(run)
            .bind(uri)
            .bind(sha256)
            .bind(bytes)
            .bind(step)
            .bind(Json(Value::Object(snapshot)))
            .bind(now_ms())
            .fetch_one(&mut tx)
            .await
            .with_context(|| format!("registering checkpoint {} of run {run}", file.uri))?
            .get("id")?;
        tx.commit().await?;
        Ok(id)
    }

    /// One checkpoint with its aliases.
    pub async fn checkpoint(&self, id: i64) -> Result<Checkpoint> {
        let mut ckpt = load(&self.db, &self.db, id).await?;
        ckpt.aliases = self.aliases_of(id).await?;
        Ok(ckpt)
    }

    /// `"42"` (an id), or `"MODEL@ALIAS"` or MLflow's `"models:/MODEL@ALIAS"` (the checkpoint
    /// holding that alias now).
    pub async fn resolve_checkpoint(&self, spec: &str) -> Result<Checkpoint> {
        if let Ok(id) = spec.trim().parse::<i64>() {
            return self.checkpoint(id).await;
        }
        let reference = spec.strip_prefix("models:/").unwrap_or(spec);
        let Some((model, alias)) = reference.split_once('@') else {
            bail!("checkpoint {spec:?}: expected an id, MODEL@ALIAS or models:/MODEL@ALIAS");
        };
        let row = self
            .db
            .q(
                "SELECT a.checkpoint_id FROM aliases a JOIN models m ON m.id = a.model_id \
                WHERE m.name = $1 AND a.alias = $2",
            )
            .bind(model.to_string())
            .bind(alias.to_string())
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("resolving checkpoint {spec:?}"))?;
        match row {
            Some(row) => self.checkpoint(row.get("checkpoint_id")?).await,
            None => bail!("no checkpoint holds alias {alias:?} of model {model:?}"),
        }
    }

    /// Checkpoints, newest first, with their aliases. With `model`, only those that hold or held
    /// one of its aliases.
    pub async fn checkpoints(&self, model: Option<&str>) -> Result<Vec<Checkpoint>> {
        let rows = match model {
            None => {
                let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c ORDER BY c.id DESC");
                self.db.q_str(&sql).fetch_all(&self.db).await
            }
            Some(model) => {
                self.model_id(model).await?;
                let sql = format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints c WHERE c.id IN ( \
                       SELECT e.new_checkpoint_id FROM promotion_events e JOIN models m ON m.id = e.model_id \
                       WHERE m.name = $1 AND e.kind <> 'refused') ORDER BY c.id DESC"
                );
                self.db.q_str(&sql).bind(model.to_string()).fetch_all(&self.db).await
            }
        }
        .context("listing checkpoints")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut c = checkpoint_from_row(row)?;
            c.aliases = self.aliases_of(c.id).await?;
            out.push(c);
        }
        Ok(out)
    }

    async fn aliases_of(&self, checkpoint: i64) -> Result<Vec<String>> {
        let rows = self
            .db
            .q(
                "SELECT m.name, a.alias FROM aliases a JOIN models m ON m.id = a.model_id \
                WHERE a.checkpoint_id = $1 ORDER BY m.name, a.alias",
            )
            .bind(checkpoint)
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("reading the aliases of checkpoint {checkpoint}"))?;
        rows.iter()
            .map(|r| {
                Ok(format!(
                    "{}@{}",
                    r.get::<String>("name")?,
                    r.get::<String>("alias")?
                ))
            })
            .collect()
    }
}
