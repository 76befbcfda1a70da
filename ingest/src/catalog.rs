//! Ties a run to the registry: the dataset version it writes (with its parent, the latest
//! finished ingest of the dataset, whose dedupe index it extends), the shards it committed,
//! and the end of the version. A marker file in the output folder names the version, so a run
//! that was killed and started again continues the same version instead of making a new one.
use crate::crossdup;
use crate::dedup::INDEX_FILE;
use crate::pipeline::{self, IngestConfig, Lineage, Summary};
use albef_dataset as dataset;
use albef_dataset::store::{self, Folder};
use albef_dataset::ShardStats;
use albef_registry::{DatasetStatus, DatasetVersion, NewDatasetVersion, NewShard, Registry};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub const MARKER_FILE: &str = "version.json";

#[derive(Serialize, Deserialize)]
struct Marker {
    dataset: String,
    version_id: i64,
    version: i64,
}

/// The outcome of `albef ingest`: the version and what this run did.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub dataset: String,
    pub version: i64,
    pub version_id: i64,
    pub uri: String,
    pub parent_id: Option<i64>,
    /// Whether every shard of the input is now complete and the version FINISHED.
    pub finished: bool,
    pub summary: Summary,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(p)
        .with_context(|| format!("cannot create output folder {}", p.display()))?;
    p.canonicalize()
        .with_context(|| format!("cannot resolve output folder {}", p.display()))
}

async fn open_version(
    reg: &Registry,
    dataset: &str,
    cfg: &IngestConfig,
    uri: &str,
    params: serde_json::Value,
) -> Result<DatasetVersion> {
    let marker_path = cfg.output.join(MARKER_FILE);
    // Workers other than the first wait for the first to create the version.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    cfg.pull()?;
    while cfg.worker_index > 0 && !marker_path.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cfg.pull()?;
    }
    if marker_path.exists() {
        let text = std::fs::read_to_string(&marker_path)
            .with_context(|| format!("cannot read {}", marker_path.display()))?;
        let m: Marker = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a version marker", marker_path.display()))?;
        anyhow::ensure!(
            m.dataset == dataset,
            "{} already holds dataset {:?}, not {dataset:?}",
            cfg.output.display(),
            m.dataset
        );
        let version = reg
            .dataset_version_by_id(m.version_id)
            .await
            .with_context(|| format!("the version named by {}", marker_path.display()))?;
        // A FAILED version is over: this run starts a new one (reusing the complete shards).
        if version.status != DatasetStatus::Failed {
            return Ok(version);
        }
    }
    // All versions, filtered here: asking for one dataset's versions fails when it is new. The
    // parent is the newest finished ingest: a filtered or registered version holds no dedupe
    // index, and the newest ingest's index covers every earlier one.
    let parent = reg
        .dataset_versions(None)
        .await?
        .into_iter()
        .filter(|v| v.dataset == dataset && v.status == DatasetStatus::Finished)
        .filter(|v| v.stage == "ingest")
        .max_by_key(|v| v.version);
    let version = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: dataset.to_string(),
            uri: uri.to_string(),
            parent: parent.map(|p| p.id),
            stage: "ingest".into(),
            params,
        })
        .await?;
    let marker = Marker {
        dataset: dataset.to_string(),
        version_id: version.id,
        version: version.version,
    };
    dataset::write_atomic(&marker_path, &serde_json::to_vec_pretty(&marker)?)?;
    cfg.push(MARKER_FILE)?;
    Ok(version)
}

/// Registers the complete shards of `version` and finishes it once all `expected` are complete;
/// returns whether this call finished it. With dedupe on, finishing first saves the version's
/// dedupe index (`dedup.index`, what later versions dedupe against), made from the parent's
/// index and every shard of the folder, so that it covers the rows of every worker; when
/// several workers built the version, the rows they fetched at the same time are deduped
/// against each other first ([`crossdup`](crate::crossdup)).
async fn register(
    reg: &Registry,
    cfg: &IngestConfig,
    lineage: &Lineage,
    version: &DatasetVersion,
    expected: u64,
) -> Result<bool> {
    cfg.pull()?;
    let complete = dataset::complete_shards(&cfg.output)?;
    let finished = complete.len() as u64 == expected && version.status == DatasetStatus::Building;
    if finished && cfg.dedupe {
        let (cfg, lineage, complete) = (cfg.clone(), lineage.clone(), complete.clone());
        tokio::task::spawn_blocking(move || {
            let index = if cfg.claims.is_some() || cfg.num_workers > 1 {
                let pass = crossdup::dedupe_across_workers(
                    &cfg.output,
                    lineage.parent_index.as_deref(),
                    cfg.phash_distance,
                    &complete,
                )?;
                for &shard in &pass.rewritten {
                    if let Some(remote) = &cfg.remote {
                        remote.push_shard(shard)?;
                    }
                }
                if pass.marked > 0 {
                    tracing::info!(
                        rows = pass.marked,
                        shards = ?pass.rewritten,
                        "marked duplicates fetched by different workers"
                    );
                }
                pass.index
            } else {
                pipeline::load_index(&cfg, &lineage, &complete)?
            };
            index.save(&cfg.output.join(INDEX_FILE), &lineage.key_prefix)?;
            cfg.push(INDEX_FILE)
        })
        .await
        .context("the dedupe index thread panicked")?
        .context("saving the version's dedupe index")?;
    }
    let mut total = albef_dataset::Stats::default();
    for &s in &complete {
        let path = dataset::stats_path(&cfg.output, s);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let stats: ShardStats = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a shard stats file", path.display()))?;
        total.add(&stats.stats);
        reg.register_shard(
            version.id,
            NewShard {
                index: s as i64,
                uri: cfg.shard_uri(s),
                rows: stats.stats.rows as i64,
                stats: serde_json::to_value(&stats)?,
            },
        )
        .await?;
    }
    if finished {
        reg.finish_dataset_version(version.id, serde_json::to_value(&total)?)
            .await?;
    }
    Ok(finished)
}

/// Opens the version that an ingest into `cfg.output` writes (the folder's, or a new one), as
/// [`ingest`] does first. Workers that share a list by claims call it under the dataset lock, so
/// that they join one version.
pub async fn join_version(
    reg: &Registry,
    dataset: &str,
    cfg: &IngestConfig,
    params: serde_json::Value,
) -> Result<DatasetVersion> {
    let cfg = IngestConfig {
        output: absolute(&cfg.output)?,
        ..cfg.clone()
    };
    let uri = cfg.output_uri();
    open_version(reg, dataset, &cfg, &uri, params).await
}

/// Refuses an ingest that cannot start (bad numbers; a missing, unreadable, empty or
/// column-less list) before a version is registered or a folder made.
async fn validate(cfg: &IngestConfig) -> Result<()> {
    pipeline::check(cfg)?;
    let spec = cfg.input.clone();
    tokio::task::spawn_blocking(move || crate::source::check_readable(&spec))
        .await
        .context("the input check panicked")?
}

/// Runs the ingest as version N+1 of `dataset` (or continues the version the folder holds),
/// registers its complete shards and finishes the version once every shard is complete. A run
/// of its own (no other workers) that fails marks the version FAILED with the error and
/// the next run starts a new version (reusing the complete shards).
pub async fn ingest(
    reg: &Registry,
    dataset: &str,
    mut cfg: IngestConfig,
    params: serde_json::Value,
    stop: Arc<AtomicBool>,
) -> Result<Outcome> {
    validate(&cfg).await?;
    cfg.output = absolute(&cfg.output)?;
    let uri = cfg.output_uri();
    let version = open_version(reg, dataset, &cfg, &uri, params).await?;
    let shared = cfg.claims.is_some() || cfg.num_workers > 1;
    match ingest_version(reg, dataset, cfg.clone(), &version, stop).await {
        Err(e) if !shared => Err(fail_version(reg, &version, e).await),
        outcome => outcome,
    }
}

/// Marks `version` FAILED with `error`; returns the error (with a note when the marking failed
/// too).
async fn fail_version(
    reg: &Registry,
    version: &DatasetVersion,
    error: anyhow::Error,
) -> anyhow::Error {
    let stats = serde_json::json!({ "error": format!("{error:#}") });
    if let Err(e) = reg.fail_dataset_version(version.id, stats).await {
        return error.context(format!("(marking the version FAILED failed too: {e:#})"));
    }
    error.context(format!(
        "dataset version {}@{} is marked FAILED; run again to start a new version",
        version.dataset, version.version
    ))
}

/// The ingest of an open version: fetch, register, finish.
async fn ingest_version(
    reg: &Registry,
    dataset: &str,
    mut cfg: IngestConfig,
    version: &DatasetVersion,
    stop: Arc<AtomicBool>,
) -> Result<Outcome> {
    let uri = cfg.output_uri();
    if let Some(claims) = &mut cfg.claims {
        claims.scope = format!("ingest-shards:{}", version.id);
    }
    let parent_index = match version.parent_id {
        Some(id) => {
            let parent = reg.dataset_version_by_id(id).await?.uri;
            if store::is_remote(&parent) {
                Folder::open(&parent, &cfg.mirror)?.pull_one(INDEX_FILE)?
            } else {
                Some(PathBuf::from(parent).join(INDEX_FILE))
            }
        }
        None => None,
    };
    let lineage = Lineage {
        parent_index,
        key_prefix: format!("{dataset}@{}/", version.version),
    };
    let mut summary = pipeline::run(&cfg, &lineage, stop.clone()).await?;
    if let Some(claims) = &cfg.claims {
        pass_until_complete(&cfg, claims, &lineage, &mut summary, &stop).await?;
    }

    let expected = summary.input_rows.div_ceil(cfg.shard_size);
    let finished = match register(reg, &cfg, &lineage, version, expected).await {
        Ok(finished) => finished,
        // Workers sharing the list register concurrently; the one that finishes the version
        // has registered every shard, and the others may then fail on it.
        Err(e) if cfg.claims.is_some() || cfg.num_workers > 1 => {
            if reg.dataset_version_by_id(version.id).await?.status != DatasetStatus::Finished {
                return Err(e);
            }
            false
        }
        Err(e) => return Err(e),
    };
    Ok(Outcome {
        dataset: dataset.to_string(),
        version: version.version,
        version_id: version.id,
        uri,
        parent_id: version.parent_id,
        finished: finished || version.status == DatasetStatus::Finished,
        summary,
    })
}

/// With shard claims: passes again over the list while some shard is incomplete and claimable
/// (never claimed, or its worker's lease ran out); waits while the rest are held by live
/// workers, and until every claim of a complete shard is marked done.
async fn pass_until_complete(
    cfg: &IngestConfig,
    claims: &pipeline::ShardClaims,
    lineage: &Lineage,
    summary: &mut Summary,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let expected = summary.input_rows.div_ceil(cfg.shard_size);
    while !summary.interrupted && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        cfg.pull()?;
        let complete: std::collections::HashSet<u64> =
            dataset::complete_shards(&cfg.output)?.into_iter().collect();
        let leases: std::collections::HashMap<String, albef_registry::UnitLease> = claims
            .reg
            .unit_leases(&claims.scope)
            .await?
            .into_iter()
            .map(|l| (l.unit.clone(), l))
            .collect();
        // A shard committed by a worker that died before it marked its claim done: this
        // worker takes the claim over and marks it.
        for s in &complete {
            let unit = s.to_string();
            if leases.get(&unit).is_some_and(|l| !l.done && l.expired)
                && claims
                    .reg
                    .try_claim_unit(&claims.scope, &unit, &claims.owner, claims.lease)
                    .await?
            {
                claims
                    .reg
                    .complete_unit(&claims.scope, &unit, &claims.owner)
                    .await?;
            }
        }
        let open: Vec<Option<&albef_registry::UnitLease>> = (0..expected)
            .filter(|s| !complete.contains(s))
            .map(|s| leases.get(&s.to_string()))
            .collect();
        if open.iter().any(|l| l.is_none_or(|l| !l.done && l.expired)) {
            summary.absorb(pipeline::run(cfg, lineage, stop.clone()).await?);
        } else if open.iter().any(|l| l.is_some_and(|l| !l.done))
            || complete
                .iter()
                .any(|s| leases.get(&s.to_string()).is_some_and(|l| !l.done))
        {
            tokio::time::sleep((claims.lease / 4).min(Duration::from_secs(1))).await;
        } else {
            // Complete or marked done by their workers (a done shard's files are theirs
            // to commit; nothing is left for this worker).
            break;
        }
    }
    Ok(())
}
