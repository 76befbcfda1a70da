//! `[train] data = "union"`: the `train-filtered` stage trains on this run's filtered version
//! together with the filtered versions of the pipeline's earlier finished runs (each scored by
//! the model that held the alias then). The union is a dataset version of its own (stage
//! `union`, parent this run's filtered version, its members in the parameters) whose folder
//! holds links to the members' shards, renumbered: nothing is copied.
use super::config::TrainData;
use super::state::{DatasetDone, State};
use super::Pipeline;
use crate::cmd::mirror_root;
use albef_dataset::store;
use albef_registry::{DatasetStatus, NewDatasetVersion, NewShard};
use anyhow::{Context as _, Result};
use serde_json::json;

impl Pipeline<'_> {
    /// The version the `train-filtered` stage trains on: the filtered one, or the union.
    pub(super) async fn train_data(&mut self) -> Result<String> {
        let filtered = self.need(&self.state.filter, "filter")?.dataset.clone();
        if self.cfg.train.data == TrainData::New {
            return Ok(filtered);
        }
        if let Some(u) = &self.state.union {
            if self.finished(&u.spec).await {
                return Ok(u.spec.clone());
            }
        }
        let mut members = Vec::new();
        for k in 1..self.number {
            let path = self.root.join(format!("run-{k}")).join("state.json");
            let Ok(state) = State::load(&path) else {
                continue;
            };
            match state.filter {
                Some(f) if state.finished && self.finished(&f.dataset).await => {
                    members.push(f.dataset)
                }
                _ => {}
            }
        }
        if members.is_empty() {
            tracing::info!("no earlier run to join: training on {filtered} alone");
            return Ok(filtered);
        }
        members.push(filtered.clone());
        let union = self.make_union(&filtered, &members).await?;
        let spec = union.spec.clone();
        self.state.union = Some(union);
        self.state.save(&self.state_path)?;
        Ok(spec)
    }

    /// Registers the union of `members` (dataset version specs) as a new version of the
    /// dataset of `filtered`, whose folder links to the members' shards.
    async fn make_union(&self, filtered: &str, members: &[String]) -> Result<DatasetDone> {
        let parent = self.reg.dataset_version(filtered).await?;
        let dir = self
            .work
            .join("data")
            .join(format!("{}-union", parent.dataset));
        if dir.exists() {
            // The folder of a union that was interrupted before it was registered whole.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let version = self
            .reg
            .create_dataset_version(NewDatasetVersion {
                dataset: parent.dataset.clone(),
                uri: dir.display().to_string(),
                parent: Some(parent.id),
                stage: "union".into(),
                params: json!({ "members": members }),
            })
            .await?;
        let (mut index, mut rows) = (0i64, 0i64);
        for spec in members {
            let member = self.reg.dataset_version(spec).await?;
            let shards = self.reg.shards(member.id).await?;
            let uris: Vec<String> = shards.iter().map(|s| s.uri.clone()).collect();
            let files = store::local_files(&uris, &mirror_root(&self.ctx.home))?;
            for (shard, file) in shards.into_iter().zip(files) {
                let link = albef_dataset::parquet_path(&dir, index as u64);
                std::os::unix::fs::symlink(&file, &link)
                    .with_context(|| format!("cannot link {} to {}", link.display(), shard.uri))?;
                self.reg
                    .register_shard(
                        version.id,
                        NewShard {
                            index,
                            uri: link.display().to_string(),
                            rows: shard.rows,
                            stats: shard.stats,
                        },
                    )
                    .await?;
                index += 1;
                rows += shard.rows;
            }
        }
        let stats = json!({ "union_of": members, "rows": rows, "shards": index });
        self.reg.finish_dataset_version(version.id, stats).await?;
        let spec = format!("{}@{}", version.dataset, version.version);
        tracing::info!(dataset = %spec, ?members, rows, "union of the filtered versions");
        let v = self.reg.dataset_version_by_id(version.id).await?;
        anyhow::ensure!(v.status == DatasetStatus::Finished, "{spec} did not finish");
        Ok(DatasetDone {
            spec,
            uri: v.uri,
            input_rows: rows as u64,
            success: 0,
            duplicates: 0,
        })
    }
}
