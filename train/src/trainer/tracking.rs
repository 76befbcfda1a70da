//! The trainer's side of the registry: the loop is synchronous (libtorch), the registry async,
//! so [`Tracking`] holds a runtime handle and blocks on the few calls the loop makes
//! (registering a checkpoint); metrics go through the buffered writer, which never waits.
//! Also the registry look-ups around a run: the config as params, and the newest checkpoint
//! of a run to resume from.
use albef_registry::{Checkpoint, CheckpointFile, MetricWriter, Registry};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use tokio::runtime::Handle;

/// A run being trained: where its metrics and checkpoints go.
pub struct Tracking {
    pub registry: Registry,
    pub handle: Handle,
    pub run: i64,
    pub writer: MetricWriter,
}

impl Tracking {
    /// Records a checkpoint of this run whose model file lies at `file.uri` (an object store).
    pub fn register_checkpoint_file(
        &self,
        file: &CheckpointFile,
        step: i64,
        metrics: &[(String, f64)],
    ) -> Result<i64> {
        self.handle.block_on(
            self.registry
                .register_checkpoint_file(self.run, file, step, metrics),
        )
    }

    /// Queues one metric point (never waits on the database).
    pub fn log(&self, key: &str, step: i64, value: f64) -> Result<()> {
        self.writer.log(key, step, value)
    }

    /// Records params of the run (what the loop learns of its data).
    pub fn log_params(&self, params: &[(String, String)]) -> Result<()> {
        self.handle
            .block_on(self.registry.log_params(self.run, params))
    }

    /// Records a checkpoint file of this run with its metrics; returns its id.
    pub fn register_checkpoint(
        &self,
        path: &Path,
        step: i64,
        metrics: &[(String, f64)],
    ) -> Result<i64> {
        self.handle.block_on(
            self.registry
                .register_checkpoint(self.run, path, step, metrics),
        )
    }

    /// Writes the buffered metrics and stops the writer.
    pub fn finish(self) -> Result<()> {
        self.handle.block_on(self.writer.finish())
    }
}

/// A JSON config flattened to `a.b.c = value` params (arrays as JSON text).
pub fn flatten_params(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_params(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The checkpoint of `run` with the highest step.
pub async fn latest_checkpoint(registry: &Registry, run: i64) -> Result<Checkpoint> {
    registry
        .run(run)
        .await
        .with_context(|| format!("cannot resume run {run}"))?;
    registry
        .checkpoints(None)
        .await?
        .into_iter()
        .filter(|c| c.run_id == run)
        .max_by_key(|c| (c.step, c.id))
        .with_context(|| format!("run {run} has no checkpoint to resume from"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_config_becomes_dotted_params() {
        let config = serde_json::json!({
            "model": {"vision": {"width": 192}, "alpha": 0.4},
            "train": {"device": "cpu", "betas": [0.9, 0.999], "amp": false}
        });
        let mut params = Vec::new();
        flatten_params("", &config, &mut params);
        params.sort();
        assert_eq!(
            params,
            vec![
                ("model.alpha".to_string(), "0.4".to_string()),
                ("model.vision.width".to_string(), "192".to_string()),
                ("train.amp".to_string(), "false".to_string()),
                ("train.betas".to_string(), "[0.9,0.999]".to_string()),
                ("train.device".to_string(), "cpu".to_string()),
            ]
        );
    }
}
