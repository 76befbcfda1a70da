//! Models and their aliases as the dashboards list them: every model with the checkpoint each of
//! its aliases points at now.
use crate::Registry;
use anyhow::{Context, Result};
use serde::Serialize;

/// A model and where each of its aliases points now.
#[derive(Clone, Debug, Serialize)]
pub struct ModelAliases {
    pub name: String,
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
                "SELECT m.name, a.alias, a.checkpoint_id, a.updated_at FROM models m \
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
}
