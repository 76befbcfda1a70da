//! Models and their aliases as the dashboards list them: every model with the checkpoint each of
//! its aliases points at now. A model is made by its first promotion, or ahead of it by
//! [`Registry::create_model`] (MLflow's `create_registered_model`).
use crate::{check_key, is_unique_violation, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A model and where each of its aliases points now.
#[derive(Clone, Debug, Serialize)]
pub struct ModelAliases {
    pub name: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub aliases: Vec<AliasHolder>,
}

/// One alias of a model and the checkpoint that holds it.
#[derive(Clone, Debug, Serialize)]
pub struct AliasHolder {
    pub alias: String,
    pub checkpoint_id: i64,
    /// Epoch milliseconds of the last move.
    pub updated_at: i64,
}

impl Registry {
    /// Every model with its aliases, by name then alias.
    pub async fn models(&self) -> Result<Vec<ModelAliases>> {
        let rows = self
            .db
            .q(
                "SELECT m.name, m.created_at, a.alias, a.checkpoint_id, a.updated_at FROM models m \
                LEFT JOIN aliases a ON a.model_id = m.id ORDER BY m.name, a.alias",
            )
            .fetch_all(&self.db)
            .await
            .context("listing models and their aliases")?;
        let mut out: Vec<ModelAliases> = Vec::new();
        for r in &rows {
            let name: String = r.get("name")?;
            if out.last().map(|m| &m.name) != Some(&name) {
                out.push(ModelAliases {
                    name,
                    created_at: r.get("created_at")?,
                    aliases: Vec::new(),
                });
            }
            if let Some(alias) = r.get::<Option<String>>("alias")? {
                let model = out.last_mut().expect("pushed above");
                model.aliases.push(AliasHolder {
                    alias,
                    checkpoint_id: r.get("checkpoint_id")?,
                    updated_at: r.get("updated_at")?,
                });
            }
        }
        Ok(out)
    }

    /// One model with its aliases.
    pub async fn model(&self, name: &str) -> Result<ModelAliases> {
        let models = self.models().await?;
        match models.into_iter().find(|m| m.name == name) {
            Some(m) => Ok(m),
            None => bail!("no model named {name:?}"),
        }
    }

    /// The checkpoint that holds `model@alias` now; None when the model or the alias does not
    /// exist yet (the first promotion makes both).
    pub async fn alias_holder(&self, model: &str, alias: &str) -> Result<Option<i64>> {
        let models = self.models().await?;
        Ok(models
            .into_iter()
            .find(|m| m.name == model)
            .and_then(|m| m.aliases.into_iter().find(|a| a.alias == alias))
            .map(|a| a.checkpoint_id))
    }

    /// Creates a model that holds no alias yet; fails if it exists.
    pub async fn create_model(&self, name: &str) -> Result<()> {
        check_key("model", name)?;
        if name.contains('@') {
            bail!("model names cannot contain '@' (got {name:?})");
        }
        let mut tx = self.db.begin().await?;
        let inserted = tx
            .q("INSERT INTO models (name, created_at) VALUES ($1, $2)")
            .bind(name.to_string())
            .bind(now_ms())
            .execute(&mut tx)
            .await;
        match inserted {
            Ok(_) => tx.commit().await,
            Err(e) if is_unique_violation(&e) => bail!("model {name:?} already exists"),
            Err(e) => Err(e).with_context(|| format!("creating model {name:?}")),
        }
    }
}
