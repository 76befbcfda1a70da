//! Experiments: the named groups runs belong to. `create_run` makes its experiment on demand;
//! these calls create one explicitly and read them back, for clients that manage experiments
//! themselves (the MLflow API).
use crate::db::{Db, Row};
use crate::{check_key, is_unique_violation, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    /// Epoch milliseconds.
    pub created_at: i64,
}

fn experiment_from_row(row: &Row) -> Result<Experiment> {
    Ok(Experiment {
        id: row.get("id")?,
        name: row.get("name")?,
        created_at: row.get("created_at")?,
    })
}

/// The id of the experiment named `name`; fails with "no experiment named ..." otherwise.
pub(crate) async fn experiment_id(db: &Db, name: &str) -> Result<i64> {
    let row = db
        .q("SELECT id FROM experiments WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(db)
        .await
        .with_context(|| format!("reading experiment {name:?}"))?;
    match row {
        Some(row) => Ok(row.get("id")?),
        None => bail!("no experiment named {name:?}"),
    }
}

impl Registry {
    /// Creates an experiment; fails if one of that name exists.
    pub async fn create_experiment(&self, name: &str) -> Result<Experiment> {
        check_key("experiment", name)?;
        let mut tx = self.db.begin().await?;
        let row = tx
            .q("INSERT INTO experiments (name, created_at) VALUES ($1, $2) RETURNING id, name, created_at")
            .bind(name.to_string())
            .bind(now_ms())
            .fetch_one(&mut tx)
            .await;
        let experiment = match row {
            Ok(row) => experiment_from_row(&row)?,
            Err(e) if is_unique_violation(&e) => bail!("experiment {name:?} already exists"),
            Err(e) => return Err(e).with_context(|| format!("creating experiment {name:?}")),
        };
        tx.commit().await?;
        Ok(experiment)
    }

    /// The experiment named `name`.
    pub async fn experiment(&self, name: &str) -> Result<Experiment> {
        let id = experiment_id(&self.db, name).await?;
        self.experiment_by_id(id).await
    }

    /// The experiment with id `id`.
    pub async fn experiment_by_id(&self, id: i64) -> Result<Experiment> {
        let row = self
            .db
            .q("SELECT id, name, created_at FROM experiments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("reading experiment {id}"))?;
        match row {
            Some(row) => experiment_from_row(&row),
            None => bail!("experiment {id} does not exist"),
        }
    }

    /// Every experiment, by id.
    pub async fn experiments(&self) -> Result<Vec<Experiment>> {
        let rows = self
            .db
            .q("SELECT id, name, created_at FROM experiments ORDER BY id")
            .fetch_all(&self.db)
            .await
            .context("listing experiments")?;
        rows.iter().map(experiment_from_row).collect()
    }
}
