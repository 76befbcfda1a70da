//! One filter run: resolve the checkpoint and the source dataset version in the registry, score
//! every `success` row (batched, no grad, the loader's worker threads decoding ahead), choose
//! the kept rows, then write every input row again, all columns kept, with the score columns
//! added and the rejected rows' status set to `filtered_out`; register the result as a new
//! version of the dataset with its lineage, and leave the report beside the shards.
//! A dry run stops after the choice and writes nothing.
use crate::report::{self, Histogram, SheetPair};
use crate::score::{PairScores, ScoreName, Scorer, SCORE_COLUMNS};
use crate::select::{select, Cut, Selection};
use albef_dataset::{self as dataset, store, ShardStats, ShardWriter, Stats, Status};
use albef_registry::datasets::Shard;
use albef_registry::{Checkpoint, DatasetVersion, NewDatasetVersion, NewShard, Registry};
use albef_train::checkpoint;
use albef_train::data::{self, loader::Loader, loader_config};
use anyhow::{bail, Context, Result};
use arrow_array::{Array, ArrayRef, BinaryArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// What a filter run needs.
#[derive(Clone, Debug)]
pub struct FilterJob {
    /// Checkpoint id, `MODEL@ALIAS` or `models:/MODEL@ALIAS`.
    pub checkpoint: String,
    /// `NAME` (latest finished version) or `NAME@VERSION`.
    pub dataset: String,
    /// Where the filtered version goes: a folder, or an object-store prefix (`s3://...`).
    pub output: String,
    /// Where local copies of object-store data live (checkpoints, source shards, the output).
    pub mirror: PathBuf,
    pub selection: Selection,
    pub score: ScoreName,
    pub batch_size: usize,
    /// Loader threads that decode and resize ahead of the model.
    pub workers: usize,
    pub device: Device,
    /// The BERT `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub dry_run: bool,
    pub progress: bool,
    /// Pairs per row of the contact sheet.
    pub sheet_size: usize,
}

/// What a run did, printed by `albef filter` and stored (with the histograms) in the stats of
/// the version it made.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub source: String,
    pub source_version_id: i64,
    /// The version made (`None` on a dry run).
    pub version: Option<i64>,
    pub version_id: Option<i64>,
    pub output: Option<String>,
    pub checkpoint_id: i64,
    pub checkpoint_sha256: String,
    pub score: ScoreName,
    pub selection: Selection,
    pub rows: u64,
    pub scored: u64,
    pub kept: u64,
    pub kept_fraction: f64,
    /// The score of the weakest kept pair.
    pub min_kept_score: Option<f32>,
    pub seconds_scoring: f64,
    pub pairs_per_second: f64,
    pub histograms: Vec<Histogram>,
    /// The contact sheet's HTML page (`None` on a dry run), which the dashboard links to.
    pub contact_sheet: Option<String>,
    /// Output rows by status (`success` for the kept, `filtered_out`, and the source's own
    /// non-success statuses); empty on a dry run.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_status: BTreeMap<String, u64>,
}

/// The scores of every `success` row of a dataset folder, by key.
pub struct Scored {
    pub scores: HashMap<String, PairScores>,
    pub seconds: f64,
}

impl Scored {
    /// (key, chosen score) pairs, sorted by key.
    pub fn column(&self, name: ScoreName) -> Vec<(String, f32)> {
        let mut v: Vec<(String, f32)> = self
            .scores
            .iter()
            .map(|(k, s)| (k.clone(), s.get(name)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Scores the `success` rows of the shards in `dir` in file order, `batch_size` at a time,
/// with the checkpoint's eval transform (resize + normalise) and tokenisation.
pub fn score_dataset(
    scorer: &Scorer,
    dir: &Path,
    batch_size: usize,
    workers: usize,
    tokenizer: &Path,
    progress: bool,
) -> Result<Scored> {
    let mut cfg = loader_config(&scorer.config, tokenizer, workers, data::Mode::Eval);
    cfg.batch_size = batch_size;
    let loader = Loader::open(dir, cfg)
        .with_context(|| format!("opening the dataset {} to score", dir.display()))?;
    let bar = if progress {
        let bar = ProgressBar::new(loader.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("scoring {bar:40} {pos}/{len} pairs {per_sec} eta {eta}")
                .context("progress bar template")?,
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut scores = HashMap::with_capacity(loader.len());
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        for (key, s) in batch.keys.iter().zip(scorer.score_batch(&batch)?) {
            if scores.insert(key.clone(), s).is_some() {
                bail!("key {key:?} occurs twice in {}", dir.display());
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Scored {
        scores,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs a filter job against `registry`: resolve the checkpoint and source, score, choose,
/// and (unless a dry run) write and register the filtered version.
pub async fn run(registry: &Registry, job: &FilterJob) -> Result<Summary> {
    let selection = job.selection.validate()?;
    if job.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let ckpt = registry
        .resolve_checkpoint(&job.checkpoint)
        .await
        .with_context(|| format!("resolving checkpoint {:?}", job.checkpoint))?;
    let source = registry
        .dataset_version(&job.dataset)
        .await
        .with_context(|| format!("resolving dataset {:?}", job.dataset))?;
    let shards = registry.shards(source.id).await?;
    if shards.is_empty() {
        bail!(
            "dataset version {}@{} has no registered shards",
            source.dataset,
            source.version
        );
    }
    let model = checkpoint::local_copy(&ckpt.uri, &job.mirror)?;
    verify_sha(&ckpt, &model)?;
    let scorer = Scorer::load(&model, job.device)?;
    let scored = score_dataset(
        &scorer,
        &store::local_folder(&source.uri, &job.mirror)?,
        job.batch_size,
        job.workers,
        &job.tokenizer,
        job.progress,
    )?;
    let column = scored.column(job.score);
    let cut = select(&column, selection);
    let mut summary = summarize(job, selection, &ckpt, &source, &shards, &scored, &cut);
    if !job.dry_run {
        write_version(registry, job, &source, &shards, &scored, &cut, &mut summary).await?;
    }
    Ok(summary)
}

/// Refuses the checkpoint when its model file (`model`, a local copy of `ckpt.uri`) no longer
/// has the registered sha256.
fn verify_sha(ckpt: &Checkpoint, model: &Path) -> Result<()> {
    let (sha, _) = dataset::hash_file(model)?;
    if sha != ckpt.sha256 {
        bail!(
            "checkpoint {} file {} has sha256 {sha}, the registry recorded {}",
            ckpt.id,
            ckpt.uri,
            ckpt.sha256
        );
    }
    Ok(())
}

/// What the scoring and the choice came to, before anything is written.
fn summarize(
    job: &FilterJob,
    selection: Selection,
    ckpt: &Checkpoint,
    source: &DatasetVersion,
    shards: &[Shard],
    scored: &Scored,
    cut: &Cut,
) -> Summary {
    let all: Vec<PairScores> = scored.scores.values().copied().collect();
    let n_scored = scored.scores.len() as u64;
    Summary {
        source: format!("{}@{}", source.dataset, source.version),
        source_version_id: source.id,
        version: None,
        version_id: None,
        output: None,
        checkpoint_id: ckpt.id,
        checkpoint_sha256: ckpt.sha256.clone(),
        score: job.score,
        selection,
        rows: shards.iter().map(|s| s.rows.max(0) as u64).sum(),
        scored: n_scored,
        kept: cut.kept.len() as u64,
        kept_fraction: cut.kept.len() as f64 / n_scored.max(1) as f64,
        min_kept_score: cut.min_kept_score,
        seconds_scoring: scored.seconds,
        pairs_per_second: n_scored as f64 / scored.seconds.max(1e-9),
        histograms: report::histograms(&all),
        contact_sheet: None,
        by_status: BTreeMap::new(),
    }
}

/// Registers the new version, writes every source shard again with the scores and statuses,
/// then the report files, and finishes the version with `summary` as its statistics.
async fn write_version(
    registry: &Registry,
    job: &FilterJob,
    source: &DatasetVersion,
    shards: &[Shard],
    scored: &Scored,
    cut: &Cut,
    summary: &mut Summary,
) -> Result<()> {
    let folder = store::Folder::open(&job.output, &job.mirror)
        .with_context(|| format!("the output {}", job.output))?;
    let out = folder.local.clone();
    let uris: Vec<String> = shards.iter().map(|s| s.uri.clone()).collect();
    let sources = store::local_files(&uris, &job.mirror)?;
    let version = registry
        .create_dataset_version(NewDatasetVersion {
            dataset: source.dataset.clone(),
            uri: folder.uri(),
            parent: Some(source.id),
            stage: "filter".into(),
            params: lineage(job, source, summary),
        })
        .await?;
    let sheet_keys = sheet_keys(&scored.column(job.score), job.sheet_size);
    let mut sheet: HashMap<String, SheetPair> = HashMap::new();
    let mut rows = 0u64;
    for (s, src) in shards.iter().zip(&sources) {
        let index = s.index as u64;
        let written = rewrite_shard(
            src,
            &out,
            index,
            &scored.scores,
            cut,
            &sheet_keys,
            &mut sheet,
        )?;
        rows += written.stats.rows;
        for (status, n) in &written.stats.by_status {
            *summary.by_status.entry(status.clone()).or_default() += n;
        }
        folder.push_shard(index)?;
        let shard = NewShard {
            index: s.index,
            uri: folder.shard_uri(index),
            rows: written.stats.rows as i64,
            stats: serde_json::to_value(&written)?,
        };
        registry.register_shard(version.id, shard).await?;
    }
    if rows != summary.rows {
        bail!(
            "wrote {rows} rows but the source registers {} rows",
            summary.rows
        );
    }
    let pick = |keys: &[String]| -> Vec<SheetPair> {
        keys.iter().filter_map(|k| sheet.get(k).cloned()).collect()
    };
    report::write_contact_sheet(&out, &pick(&sheet_keys.0), &pick(&sheet_keys.1))?;
    dataset::write_atomic(
        &out.join("scores.svg"),
        report::histograms_svg(&summary.histograms, cut.min_kept_score).as_bytes(),
    )?;
    summary.version = Some(version.version);
    summary.version_id = Some(version.id);
    summary.output = Some(folder.uri());
    summary.contact_sheet = Some(folder.uri_of("contact_sheet.html"));
    let stats = serde_json::to_value(&*summary)?;
    dataset::write_atomic(
        &out.join("filter.json"),
        &serde_json::to_vec_pretty(&stats)?,
    )?;
    for report in [
        "contact_sheet.html",
        "contact_sheet.png",
        "scores.svg",
        "filter.json",
    ] {
        folder.push(report)?;
    }
    registry.finish_dataset_version(version.id, stats).await
}

/// The filtered version's lineage: its source, the checkpoint, the score and the cut.
fn lineage(job: &FilterJob, source: &DatasetVersion, summary: &Summary) -> serde_json::Value {
    let (selection_key, selection_value) = match summary.selection {
        Selection::KeepFraction(f) => ("keep_fraction", f),
        Selection::Threshold(t) => ("threshold", t),
    };
    json!({
        "source": summary.source,
        "source_version_id": source.id,
        "checkpoint_id": summary.checkpoint_id,
        "checkpoint_sha256": summary.checkpoint_sha256,
        "score": job.score.column(),
        selection_key: selection_value,
        "batch_size": job.batch_size,
    })
}

/// The keys of the `n` lowest- and `n` highest-scored pairs, lowest first in each.
fn sheet_keys(column: &[(String, f32)], n: usize) -> (Vec<String>, Vec<String>) {
    let mut order: Vec<&(String, f32)> = column.iter().collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let n = n.min(order.len() / 2);
    let keys = |s: &[&(String, f32)]| s.iter().map(|(k, _)| k.clone()).collect();
    (keys(&order[..n]), keys(&order[order.len() - n..]))
}

/// Copies one source shard to `out` with the score columns and the new statuses, and collects
/// the contact-sheet pairs it holds. Score columns of an earlier filter run are replaced.
fn rewrite_shard(
    src: &Path,
    out: &Path,
    index: u64,
    scores: &HashMap<String, PairScores>,
    cut: &Cut,
    sheet_keys: &(Vec<String>, Vec<String>),
    sheet: &mut HashMap<String, SheetPair>,
) -> Result<ShardStats> {
    let wanted: HashSet<&String> = sheet_keys.0.iter().chain(&sheet_keys.1).collect();
    let mut stats = Stats::default();
    let mut writer: Option<ShardWriter> = None;
    for batch in dataset::read_batches(src, None, None)? {
        let batch = batch?;
        let keys = dataset::string_col(&batch, dataset::KEY)
            .with_context(|| format!("reading keys of {}", src.display()))?;
        let status = dataset::string_col(&batch, dataset::STATUS)
            .with_context(|| format!("reading statuses of {}", src.display()))?;
        let mut new_status = Vec::with_capacity(batch.num_rows());
        let mut cols: [Vec<Option<f32>>; 4] = Default::default();
        for r in 0..batch.num_rows() {
            let key = keys.value(r);
            let s = scores.get(key);
            if let Some(s) = s {
                stats.scored += 1;
                for (c, v) in cols.iter_mut().zip(s.columns()) {
                    c.push(Some(v));
                }
            } else {
                cols.iter_mut().for_each(|c| c.push(None));
            }
            // A success row stays one when kept; the rest keep their own status.
            let st = Status::parse(status.value(r))
                .with_context(|| format!("row {key} of {}", src.display()))?;
            let st = if st == Status::Success && !cut.kept.contains(key) {
                Status::FilteredOut
            } else {
                st
            };
            stats.count(st);
            new_status.push(st.as_str());
            if wanted.contains(&key.to_string()) {
                sheet.insert(key.to_string(), sheet_pair(&batch, r, key, s)?);
            }
        }
        let batch = with_scores(&batch, new_status, cols)?;
        if writer.is_none() {
            writer = Some(ShardWriter::create_with_schema(out, index, batch.schema())?);
        }
        writer
            .as_mut()
            .context("shard writer")?
            .write_batch(&batch)
            .with_context(|| format!("writing the filtered copy of {}", src.display()))?;
    }
    let writer = writer.with_context(|| format!("shard {} has no rows", src.display()))?;
    let mut record = writer.record(stats);
    record.source = Some(src.display().to_string());
    writer.finish(record)
}

/// `batch` with its status column replaced and the four score columns (f32, null where not
/// scored) set, appended at the end.
fn with_scores(
    batch: &RecordBatch,
    status: Vec<&str>,
    scores: [Vec<Option<f32>>; 4],
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        if SCORE_COLUMNS.contains(&field.name().as_str()) {
            continue;
        }
        fields.push(field.as_ref().clone());
        if field.name() == dataset::STATUS {
            columns.push(Arc::new(StringArray::from(status.clone())));
        } else {
            columns.push(col.clone());
        }
    }
    for (name, values) in SCORE_COLUMNS.into_iter().zip(scores) {
        fields.push(Field::new(name, DataType::Float32, true));
        columns.push(Arc::new(Float32Array::from(values)));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn sheet_pair(
    batch: &RecordBatch,
    r: usize,
    key: &str,
    s: Option<&PairScores>,
) -> Result<SheetPair> {
    let text = dataset::string_col(batch, dataset::TEXT)?;
    let jpg = batch
        .column_by_name(dataset::JPG)
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .with_context(|| format!("row {key} has no binary jpg column"))?;
    if jpg.is_null(r) {
        bail!("scored row {key} has no picture");
    }
    Ok(SheetPair {
        key: key.to_string(),
        caption: text.value(r).to_string(),
        scores: *s.with_context(|| format!("row {key} was not scored"))?,
        jpg: jpg.value(r).to_vec(),
    })
}
