//! `albef pipeline --config configs/demo.toml`: the whole job from one config, on the registry of
//! the global flags. Generate the synthetic web corpus (noise and duplicates injected), serve it
//! on 127.0.0.1 and ingest it (dedupe included), pretrain on the raw version, filter it with that
//! checkpoint's momentum model, pretrain again on the filtered version with the same recipe (each
//! run evaluates on the clean held-out split at its last step), and promote the better checkpoint
//! to MODEL@ALIAS through a gate. Each stage calls the code of its command (`corpus generate`,
//! `ingest`, `train`, `filter`, `ckpt promote`) with flags from the config.
//!
//! Every stage records its outputs in `state.json` in the work folder (written atomically after
//! each stage). A rerun skips the stages whose recorded outputs still exist, resumes a train
//! stage that was interrupted from its newest checkpoint, and reruns from a stage with `--from`
//! (or everything with `--force`).
use super::corpus::{generate_corpus, GenerateArgs};
use super::filter::FilterArgs;
use super::ingest::{check_complete, ingest_dataset, IngestArgs};
use super::train::TrainArgs;
use super::{ckpt, parse_flags, Context};
use crate::output::{print_json, Format, Table};
use albef_dataset::Stats;
use albef_dataset::{write_atomic, Status};
use albef_registry::{DatasetStatus, Registry, RunStatus};
use albef_train::config::Config;
use albef_train::trainer::tracking::latest_checkpoint;
use albef_train::trainer::Trained;
use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct PipelineArgs {
    /// Pipeline config (TOML), e.g. configs/demo.toml
    #[arg(long)]
    config: PathBuf,
    /// Work folder: corpus, dataset folders, derived train config and state.json
    /// [default: $ALBEF_HOME/pipeline/NAME]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Rerun every stage, whatever the state file records
    #[arg(long, conflicts_with = "from")]
    force: bool,
    /// Rerun this stage and every later one (earlier finished stages are skipped)
    #[arg(long, value_enum)]
    from: Option<Stage>,
    /// Output format of the summary
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// The stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Stage {
    Corpus,
    Ingest,
    TrainRaw,
    Filter,
    TrainFiltered,
    Promote,
}

impl Stage {
    const ALL: [Stage; 6] = [
        Stage::Corpus,
        Stage::Ingest,
        Stage::TrainRaw,
        Stage::Filter,
        Stage::TrainFiltered,
        Stage::Promote,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Corpus => "corpus",
            Stage::Ingest => "ingest",
            Stage::TrainRaw => "train-raw",
            Stage::Filter => "filter",
            Stage::TrainFiltered => "train-filtered",
            Stage::Promote => "promote",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Stage::Corpus => "generating the synthetic web corpus",
            Stage::Ingest => "serving the corpus on 127.0.0.1 and ingesting it",
            Stage::TrainRaw => "pretraining on the raw (deduplicated) version",
            Stage::Filter => "scoring captions with the momentum model and filtering",
            Stage::TrainFiltered => "pretraining on the filtered version",
            Stage::Promote => "promoting the better checkpoint through the gate",
        }
    }
}

/// The pipeline config file. Flags lists are those of the stage's command; the pipeline adds
/// the inputs and outputs that tie the stages together.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineConfig {
    /// Names the work folder, the datasets (NAME, NAME-heldout) and the experiment
    /// (pipeline-NAME).
    name: String,
    corpus: Flags,
    ingest: Flags,
    train: TrainSection,
    filter: Flags,
    promote: PromoteSection,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flags {
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainSection {
    /// Model and recipe config, relative to the pipeline config's folder.
    config: PathBuf,
    /// Tables merged over that config (e.g. `train = { lr = 3e-4 }`).
    #[serde(default)]
    overrides: toml::Table,
    /// `albef train` flags, the same for both train stages.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteSection {
    model: String,
    alias: String,
    /// The gate: text->image R@1 (percent) on the held-out split at least this, and at least the
    /// current holder's.
    min_r1_t2i: f64,
}

impl PipelineConfig {
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the pipeline config {}", path.display()))?;
        let mut cfg: PipelineConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid pipeline config", path.display()))?;
        let bad_name = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if cfg.name.is_empty() || cfg.name.contains(bad_name) {
            bail!(
                "{}: name {:?} must be letters, digits, '-' or '_'",
                path.display(),
                cfg.name
            );
        }
        if cfg.train.config.is_relative() {
            // Resolved, so that the same file named by a relative or an absolute path (or from
            // another folder) is the same config to a rerun.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = dir
                .canonicalize()
                .with_context(|| format!("cannot resolve the folder of {}", path.display()))?;
            cfg.train.config = dir.join(&cfg.train.config);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_config_resolves_the_same_from_relative_and_absolute_paths() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let absolute = PipelineConfig::load(&root.join("configs/demo.toml")).unwrap();
        // Tests run in the package root.
        let relative = PipelineConfig::load(Path::new("configs/demo.toml")).unwrap();
        assert_eq!(absolute.train.config, relative.train.config);
        assert!(absolute.train.config.is_absolute());
        assert_eq!(
            serde_json::to_value(&absolute).unwrap(),
            serde_json::to_value(&relative).unwrap()
        );
    }
}

/// One dataset version the pipeline made.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DatasetDone {
    /// NAME@VERSION
    spec: String,
    uri: String,
    /// Rows of the input, pairs stored as `success`, duplicates caught by dedupe.
    input_rows: u64,
    success: u64,
    duplicates: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CorpusDone {
    dir: PathBuf,
    train_rows: usize,
    heldout_rows: usize,
    exact_duplicates: usize,
    near_duplicates: usize,
    noisy_rows: usize,
    elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IngestDone {
    train: DatasetDone,
    heldout: DatasetDone,
    elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainDone {
    run: i64,
    /// The dataset version trained on.
    dataset: String,
    step: i64,
    checkpoint: i64,
    checkpoint_path: PathBuf,
    /// Held-out retrieval at the last step (percent).
    r1_t2i: f64,
    r1_i2t: f64,
    elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FilterDone {
    dataset: String,
    uri: String,
    scored: u64,
    kept: u64,
    elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PromoteDone {
    model: String,
    alias: String,
    checkpoint: i64,
    /// The train stage whose checkpoint was chosen.
    chosen: String,
    gate: String,
    /// The promotion event; None when the checkpoint already held the alias.
    event: Option<i64>,
    gate_result: Option<String>,
    elapsed_s: f64,
}

/// `state.json`: what each finished stage made.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The config the recorded stages ran with.
    config: Option<Value>,
    corpus: Option<CorpusDone>,
    ingest: Option<IngestDone>,
    train_raw: Option<TrainDone>,
    filter: Option<FilterDone>,
    train_filtered: Option<TrainDone>,
    promote: Option<PromoteDone>,
    /// The run of each train stage that started, resumed when that stage runs again.
    #[serde(default)]
    started_runs: BTreeMap<String, i64>,
}

impl State {
    fn load(path: &Path) -> Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a pipeline state file (remove it to start over)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Forgets the outputs of `stage` and every later stage (their inputs are about to change),
    /// and the started runs of the later stages (and of `stage` itself when it is forced).
    fn clear_from(&mut self, stage: Stage, forced: bool) {
        for s in Stage::ALL.into_iter().filter(|&s| s >= stage) {
            match s {
                Stage::Corpus => self.corpus = None,
                Stage::Ingest => self.ingest = None,
                Stage::TrainRaw => self.train_raw = None,
                Stage::Filter => self.filter = None,
                Stage::TrainFiltered => self.train_filtered = None,
                Stage::Promote => self.promote = None,
            }
            if s > stage || forced {
                self.started_runs.remove(s.name());
            }
        }
    }
}

/// How a stage went in this invocation.
#[derive(Serialize)]
struct StageReport {
    stage: &'static str,
    /// `ran` or `skipped` (outputs recorded and still there).
    status: &'static str,
    /// Seconds it took now, or when it ran (skipped).
    elapsed_s: f64,
}

struct Pipeline<'a> {
    cfg: PipelineConfig,
    ctx: &'a Context,
    reg: Registry,
    work: PathBuf,
    state_path: PathBuf,
    state: State,
    stop: Arc<AtomicBool>,
}

impl PipelineArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let cfg = PipelineConfig::load(&self.config)?;
        let work = self
            .work_dir
            .clone()
            .unwrap_or_else(|| ctx.home.join("pipeline").join(&cfg.name));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create the work folder {}", work.display()))?;
        let work = work
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", work.display()))?;
        let state_path = work.join("state.json");
        let mut state = State::load(&state_path)?;
        let config_json = serde_json::to_value(&cfg)?;
        if !self.force && self.from.is_none() {
            if let Some(recorded) = &state.config {
                if *recorded != config_json {
                    bail!(
                        "{} records stages run with another config than {}; rerun with --force, \
                         or --from STAGE to rerun from the first stage the change affects",
                        state_path.display(),
                        self.config.display()
                    );
                }
            }
        }
        state.config = Some(config_json);
        let reg = Registry::connect(&ctx.registry_url)
            .await
            .with_context(|| format!("cannot open the registry at {}", ctx.registry_url))?;
        let stop = super::stop_on_ctrl_c(
            "stopping at the current stage's next safe point (a checkpoint, complete shards)",
        );
        let mut pipeline = Pipeline {
            cfg,
            ctx: &ctx,
            reg,
            work,
            state_path,
            state,
            stop,
        };
        let first_forced = if self.force {
            Some(Stage::Corpus)
        } else {
            self.from
        };
        let started = Instant::now();
        let mut reports = Vec::new();
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let n = format!("[{}/{}]", i + 1, Stage::ALL.len());
            let forced = first_forced.is_some_and(|f| stage >= f);
            if !forced {
                if let Some(elapsed_s) = pipeline
                    .recorded(stage)
                    .await
                    .with_context(|| format!("stage {}", stage.name()))?
                {
                    tracing::info!(
                        "{n} {}: skipped, its outputs are recorded in {} and still exist",
                        stage.name(),
                        pipeline.state_path.display()
                    );
                    reports.push(StageReport {
                        stage: stage.name(),
                        status: "skipped",
                        elapsed_s,
                    });
                    continue;
                }
            }
            tracing::info!("{n} {}: {}", stage.name(), stage.what());
            pipeline.state.clear_from(stage, forced);
            pipeline.state.save(&pipeline.state_path)?;
            let t = Instant::now();
            pipeline
                .run_stage(stage, t)
                .await
                .with_context(|| format!("stage {} failed", stage.name()))?;
            pipeline.state.save(&pipeline.state_path)?;
            let elapsed_s = t.elapsed().as_secs_f64();
            tracing::info!(
                "{n} {} done in {elapsed_s:.1} s (pipeline {:.1} s)",
                stage.name(),
                started.elapsed().as_secs_f64()
            );
            reports.push(StageReport {
                stage: stage.name(),
                status: "ran",
                elapsed_s,
            });
        }
        let summary = pipeline.summary(reports, started.elapsed().as_secs_f64())?;
        match self.format {
            Format::Json => print_json(&summary),
            format => print_summary(&summary, format),
        }
    }
}

impl Pipeline<'_> {
    /// The recorded elapsed seconds of `stage` if its outputs are recorded and still exist.
    async fn recorded(&self, stage: Stage) -> Result<Option<f64>> {
        let s = &self.state;
        Ok(match stage {
            Stage::Corpus => s
                .corpus
                .as_ref()
                .filter(|c| c.dir.join(albef_corpus::generate::PAIRS_FILE).is_file())
                .map(|c| c.elapsed_s),
            Stage::Ingest => match &s.ingest {
                Some(d) if self.finished(&d.train).await? && self.finished(&d.heldout).await? => {
                    Some(d.elapsed_s)
                }
                _ => None,
            },
            Stage::TrainRaw => self.trained(s.train_raw.as_ref()).await?,
            Stage::Filter => match &s.filter {
                Some(f) => {
                    let version = self.reg.dataset_version(&f.dataset).await.ok();
                    version
                        .filter(|v| {
                            v.status == DatasetStatus::Finished && Path::new(&v.uri).is_dir()
                        })
                        .map(|_| f.elapsed_s)
                }
                None => None,
            },
            Stage::TrainFiltered => self.trained(s.train_filtered.as_ref()).await?,
            Stage::Promote => match &s.promote {
                Some(p) => self
                    .reg
                    .checkpoint(p.checkpoint)
                    .await
                    .ok()
                    .map(|_| p.elapsed_s),
                None => None,
            },
        })
    }

    async fn finished(&self, d: &DatasetDone) -> Result<bool> {
        Ok(match self.reg.dataset_version(&d.spec).await {
            Ok(v) => v.status == DatasetStatus::Finished && Path::new(&v.uri).is_dir(),
            Err(_) => false,
        })
    }

    async fn trained(&self, t: Option<&TrainDone>) -> Result<Option<f64>> {
        let Some(t) = t else { return Ok(None) };
        let registered = self.reg.checkpoint(t.checkpoint).await.is_ok();
        Ok((registered && t.checkpoint_path.is_file()).then_some(t.elapsed_s))
    }

    async fn run_stage(&mut self, stage: Stage, started: Instant) -> Result<()> {
        let elapsed = || started.elapsed().as_secs_f64();
        match stage {
            Stage::Corpus => {
                let done = self.corpus().await?;
                self.state.corpus = Some(CorpusDone {
                    elapsed_s: elapsed(),
                    ..done
                });
            }
            Stage::Ingest => {
                let (train, heldout) = self.ingest().await?;
                self.state.ingest = Some(IngestDone {
                    train,
                    heldout,
                    elapsed_s: elapsed(),
                });
            }
            Stage::TrainRaw | Stage::TrainFiltered => {
                let dataset = match stage {
                    Stage::TrainRaw => self.need(&self.state.ingest, "ingest")?.train.spec.clone(),
                    _ => self.need(&self.state.filter, "filter")?.dataset.clone(),
                };
                let mut done = self.train(stage, &dataset).await?;
                done.elapsed_s = elapsed();
                match stage {
                    Stage::TrainRaw => self.state.train_raw = Some(done),
                    _ => self.state.train_filtered = Some(done),
                }
            }
            Stage::Filter => {
                let mut done = self.filter().await?;
                done.elapsed_s = elapsed();
                self.state.filter = Some(done);
            }
            Stage::Promote => {
                let mut done = self.promote().await?;
                done.elapsed_s = elapsed();
                self.state.promote = Some(done);
            }
        }
        Ok(())
    }

    fn need<'s, T>(&self, field: &'s Option<T>, stage: &str) -> Result<&'s T> {
        field
            .as_ref()
            .with_context(|| format!("stage {stage} has no recorded outputs"))
    }

    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted; run the pipeline again to continue");
        }
        Ok(())
    }

    async fn corpus(&self) -> Result<CorpusDone> {
        let dir = self.work.join("corpus");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the old corpus {}", dir.display()))?;
        }
        let mut flags = self.cfg.corpus.args.clone();
        flags.extend(["--out".into(), dir.display().to_string()]);
        let args: GenerateArgs = parse_flags("albef corpus generate", &flags)?;
        let s = generate_corpus(&args).await?;
        Ok(CorpusDone {
            dir,
            train_rows: s.train_rows,
            heldout_rows: s.heldout_rows,
            exact_duplicates: s.exact_duplicates,
            near_duplicates: s.near_duplicates,
            noisy_rows: s.noisy_rows,
            elapsed_s: 0.0,
        })
    }

    async fn ingest(&self) -> Result<(DatasetDone, DatasetDone)> {
        let corpus = self.need(&self.state.corpus, "corpus")?;
        let server = albef_corpus::serve(&corpus.dir, "127.0.0.1:0".parse()?).await?;
        tracing::info!("serving {} on {}", corpus.dir.display(), server.base_url());
        let result = async {
            let train = self
                .ingest_list(
                    &corpus.dir.join(albef_corpus::generate::TRAIN_URLS),
                    &self.cfg.name,
                )
                .await?;
            let heldout = self
                .ingest_list(
                    &corpus.dir.join(albef_corpus::generate::HELDOUT_URLS),
                    &format!("{}-heldout", self.cfg.name),
                )
                .await?;
            Ok::<_, anyhow::Error>((train, heldout))
        }
        .await;
        server.shutdown().await?;
        result
    }

    /// Ingests one URL list as the first version of a fresh dataset: `base`, or `base-2`,
    /// `base-3`, ... when earlier runs already finished versions of it (a new version of a
    /// dataset is deduplicated against the previous one, which would drop every row).
    async fn ingest_list(&self, list: &Path, base: &str) -> Result<DatasetDone> {
        let versions = self.reg.dataset_versions(None).await?;
        let name = (1..)
            .map(|k| match k {
                1 => base.to_string(),
                k => format!("{base}-{k}"),
            })
            .find(|name| {
                !versions
                    .iter()
                    .any(|v| &v.dataset == name && v.status == DatasetStatus::Finished)
            })
            .expect("an unused name exists");
        let out = self.work.join("data").join(&name);
        let mut flags = self.cfg.ingest.args.clone();
        flags.extend([
            "--input".into(),
            list.display().to_string(),
            "--output".into(),
            out.display().to_string(),
            "--dataset".into(),
            name.clone(),
        ]);
        let args: IngestArgs = parse_flags("albef ingest", &flags)?;
        let outcome = ingest_dataset(&self.reg, &args, self.stop.clone()).await?;
        check_complete(&outcome)?;
        if !outcome.finished {
            bail!(
                "dataset {name}@{} in {} is not finished after the ingest",
                outcome.version,
                outcome.uri
            );
        }
        let v = self.reg.dataset_version_by_id(outcome.version_id).await?;
        let stats: Stats = serde_json::from_value(v.stats.clone().unwrap_or_default())
            .with_context(|| format!("the statistics of {name}@{}", v.version))?;
        let done = DatasetDone {
            spec: format!("{}@{}", v.dataset, v.version),
            uri: v.uri,
            input_rows: stats.rows,
            success: stats.status(Status::Success),
            duplicates: stats.dedupe.values().sum(),
        };
        tracing::info!(
            dataset = %done.spec,
            input_rows = done.input_rows,
            success = done.success,
            duplicates = done.duplicates,
            "ingested"
        );
        Ok(done)
    }

    /// The model config of the train stages: the configured one with the overrides merged,
    /// written to the work folder.
    fn train_config(&self) -> Result<PathBuf> {
        let path = &self.cfg.train.config;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the train config {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        merge(&mut table, &self.cfg.train.overrides);
        let merged = toml::to_string(&table)?;
        Config::parse(&merged).with_context(|| {
            format!(
                "{} with the pipeline's [train.overrides] is not a valid model config",
                path.display()
            )
        })?;
        let out = self.work.join("train-config.toml");
        write_atomic(&out, merged.as_bytes())?;
        Ok(out)
    }

    /// Trains on `dataset`, or resumes the run this stage started before from its newest
    /// checkpoint.
    async fn train(&mut self, stage: Stage, dataset: &str) -> Result<TrainDone> {
        let heldout = self
            .need(&self.state.ingest, "ingest")?
            .heldout
            .spec
            .clone();
        let resumable = match self.state.started_runs.get(stage.name()) {
            Some(&run) => latest_checkpoint(&self.reg, run)
                .await
                .ok()
                .map(|c| (run, c)),
            None => None,
        };
        let stamp = albef_registry::now_ms();
        let mut flags: Vec<String> = match &resumable {
            Some((run, ckpt)) => {
                tracing::info!(
                    "resuming run {run} from checkpoint {} (step {})",
                    ckpt.id,
                    ckpt.step
                );
                // The batch size comes from the checkpoint's config on resume.
                let mut args = Vec::new();
                let mut it = self.cfg.train.args.iter();
                while let Some(a) = it.next() {
                    match a.as_str() {
                        "--batch-size" => {
                            it.next();
                        }
                        a if a.starts_with("--batch-size=") => {}
                        _ => args.push(a.clone()),
                    }
                }
                args.extend(["--resume".into(), run.to_string()]);
                args
            }
            None => {
                let mut args = self.cfg.train.args.clone();
                args.extend([
                    "--config".into(),
                    self.train_config()?.display().to_string(),
                    "--dataset".into(),
                    dataset.to_string(),
                ]);
                args
            }
        };
        flags.extend([
            "--eval-dataset".into(),
            heldout,
            "--experiment".into(),
            format!("pipeline-{}", self.cfg.name),
            "--name".into(),
            format!("{}-{}-{stamp}", self.cfg.name, stage.name()),
        ]);
        let args: TrainArgs = parse_flags("albef train", &flags)?;
        let state = &mut self.state;
        let state_path = &self.state_path;
        let Trained {
            run,
            status,
            step,
            checkpoint,
            checkpoint_path,
            metrics,
        } = args
            .execute(&self.reg, &self.ctx.home, self.stop.clone(), None, |run| {
                state.started_runs.insert(stage.name().into(), run);
                state.save(state_path)
            })
            .await?;
        if status != RunStatus::Finished {
            bail!(
                "run {run} stopped at step {step} ({status}), checkpoint {checkpoint}; run the \
                 pipeline again to resume it"
            );
        }
        let metric = |key: &str| {
            metrics
                .get(key)
                .copied()
                .with_context(|| format!("run {run} has no held-out {key} at its last step"))
        };
        Ok(TrainDone {
            run,
            dataset: dataset.to_string(),
            step,
            checkpoint,
            checkpoint_path,
            r1_t2i: metric("r1_t2i")?,
            r1_i2t: metric("r1_i2t")?,
            elapsed_s: 0.0,
        })
    }

    async fn filter(&self) -> Result<FilterDone> {
        self.check_stop()?;
        let raw = self.need(&self.state.train_raw, "train-raw")?;
        let source = &self.need(&self.state.ingest, "ingest")?.train;
        let name = source.spec.split('@').next().unwrap_or(&source.spec);
        let out = self
            .work
            .join("data")
            .join(format!("{name}-filtered-ckpt{}", raw.checkpoint));
        let mut flags = self.cfg.filter.args.clone();
        flags.extend([
            "--checkpoint".into(),
            raw.checkpoint.to_string(),
            "--dataset".into(),
            source.spec.clone(),
            "--output".into(),
            out.display().to_string(),
        ]);
        let args: FilterArgs = parse_flags("albef filter", &flags)?;
        let summary = albef_filter::run(&self.reg, &args.job()?).await?;
        let id = summary
            .version_id
            .context("the filter registered no version")?;
        let v = self.reg.dataset_version_by_id(id).await?;
        tracing::info!(
            dataset = %format!("{}@{}", v.dataset, v.version),
            scored = summary.scored,
            kept = summary.kept,
            "filtered"
        );
        Ok(FilterDone {
            dataset: format!("{}@{}", v.dataset, v.version),
            uri: v.uri,
            scored: summary.scored,
            kept: summary.kept,
            elapsed_s: 0.0,
        })
    }

    async fn promote(&self) -> Result<PromoteDone> {
        self.check_stop()?;
        let raw = self.need(&self.state.train_raw, "train-raw")?;
        let filtered = self.need(&self.state.train_filtered, "train-filtered")?;
        // Ties go to the filtered version: same recall from cleaner data.
        let (chosen, best) = if filtered.r1_t2i >= raw.r1_t2i {
            (Stage::TrainFiltered, filtered)
        } else {
            (Stage::TrainRaw, raw)
        };
        let p = &self.cfg.promote;
        let gate = format!(
            "metrics.r1_t2i >= {} AND metrics.r1_t2i >= current",
            p.min_r1_t2i
        );
        let holder = self
            .reg
            .resolve_checkpoint(&format!("{}@{}", p.model, p.alias))
            .await
            .ok();
        let mut done = PromoteDone {
            model: p.model.clone(),
            alias: p.alias.clone(),
            checkpoint: best.checkpoint,
            chosen: chosen.name().into(),
            gate: gate.clone(),
            event: None,
            gate_result: None,
            elapsed_s: 0.0,
        };
        if holder.is_some_and(|h| h.id == best.checkpoint) {
            tracing::info!(
                "checkpoint {} already holds {}@{}",
                best.checkpoint,
                p.model,
                p.alias
            );
            return Ok(done);
        }
        let reason = format!(
            "albef pipeline {}: held-out R@1 t2i {:.2} after {} (trained on {}), vs {:.2} after {}",
            self.cfg.name,
            best.r1_t2i,
            chosen.name(),
            best.dataset,
            if chosen == Stage::TrainRaw {
                filtered.r1_t2i
            } else {
                raw.r1_t2i
            },
            if chosen == Stage::TrainRaw {
                Stage::TrainFiltered.name()
            } else {
                Stage::TrainRaw.name()
            },
        );
        let event = ckpt::promote(
            &self.reg,
            &best.checkpoint.to_string(),
            p.model.clone(),
            p.alias.clone(),
            Some(gate),
            Some(reason),
            format!("albef pipeline {}", self.cfg.name),
        )
        .await?;
        done.event = Some(event.id);
        done.gate_result = event.gate_result;
        Ok(done)
    }

    /// The summary of the recorded state: counts, rates, recall before and after, the promoted
    /// checkpoint and where to look next.
    fn summary(&self, stages: Vec<StageReport>, elapsed_s: f64) -> Result<Value> {
        let s = &self.state;
        let corpus = self.need(&s.corpus, "corpus")?;
        let ingest = self.need(&s.ingest, "ingest")?;
        let raw = self.need(&s.train_raw, "train-raw")?;
        let filter = self.need(&s.filter, "filter")?;
        let filtered = self.need(&s.train_filtered, "train-filtered")?;
        let promote = self.need(&s.promote, "promote")?;
        let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let trained = |t: &TrainDone| {
            json!({"run": t.run, "dataset": t.dataset, "steps": t.step,
                   "checkpoint": t.checkpoint, "r1_t2i": t.r1_t2i, "r1_i2t": t.r1_i2t})
        };
        let default_registry = super::Context::new(None, self.ctx.home.clone()).registry_url;
        let global = if self.ctx.registry_url == default_registry {
            format!("--home {}", self.ctx.home.display())
        } else {
            format!("--registry {}", self.ctx.registry_url)
        };
        let train_name = ingest.train.spec.split('@').next().unwrap_or_default();
        Ok(json!({
            "name": self.cfg.name,
            "work_dir": self.work,
            "registry": self.ctx.registry_url,
            "elapsed_s": elapsed_s,
            "stages": stages,
            "corpus": {
                "train_rows": corpus.train_rows, "heldout_rows": corpus.heldout_rows,
                "noisy_rows": corpus.noisy_rows, "exact_duplicates": corpus.exact_duplicates,
                "near_duplicates": corpus.near_duplicates
            },
            "ingest": {
                "dataset": ingest.train.spec, "input_rows": ingest.train.input_rows,
                "success": ingest.train.success, "duplicates": ingest.train.duplicates,
                "dedupe_rate": rate(ingest.train.duplicates, ingest.train.input_rows),
                "heldout": ingest.heldout.spec, "heldout_rows": ingest.heldout.success
            },
            "filter": {
                "dataset": filter.dataset, "scored": filter.scored, "kept": filter.kept,
                "filter_rate": 1.0 - rate(filter.kept, filter.scored)
            },
            "train_raw": trained(raw),
            "train_filtered": trained(filtered),
            "promoted": {
                "model": promote.model, "alias": promote.alias,
                "checkpoint": promote.checkpoint, "from": promote.chosen,
                "gate": promote.gate, "gate_result": promote.gate_result,
                "event": promote.event
            },
            "next": [
                format!("albef {global} serve --addr 127.0.0.1:8080   # then open http://127.0.0.1:8080"),
                format!("albef {global} ckpt history --model {}", promote.model),
                format!("albef {global} datasets show {train_name}"),
                format!("albef {global} runs list --experiment pipeline-{}", self.cfg.name)
            ]
        }))
    }
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn print_summary(s: &Value, format: Format) -> Result<()> {
    let mut t = Table::new(["item", "value"]);
    let mut add = |k: &str, v: Value| t.push(vec![json!(k), v]);
    for st in s["stages"].as_array().into_iter().flatten() {
        add(
            &format!("stage {}", st["stage"].as_str().unwrap_or_default()),
            json!(format!(
                "{} ({:.1} s)",
                st["status"].as_str().unwrap_or_default(),
                st["elapsed_s"].as_f64().unwrap_or_default()
            )),
        );
    }
    let c = &s["corpus"];
    add(
        "corpus: training rows (noisy, exact + near duplicates)",
        json!(format!(
            "{} ({}, {} + {})",
            c["train_rows"], c["noisy_rows"], c["exact_duplicates"], c["near_duplicates"]
        )),
    );
    let i = &s["ingest"];
    add(
        "ingested: dataset, input rows, stored, duplicates",
        json!(format!(
            "{} {} {} {}",
            i["dataset"].as_str().unwrap_or_default(),
            i["input_rows"],
            i["success"],
            i["duplicates"]
        )),
    );
    add(
        "dedupe rate",
        json!(format!(
            "{:.1}%",
            100.0 * i["dedupe_rate"].as_f64().unwrap_or_default()
        )),
    );
    add(
        "held-out split",
        json!(format!(
            "{} ({} pairs)",
            i["heldout"].as_str().unwrap_or_default(),
            i["heldout_rows"]
        )),
    );
    let f = &s["filter"];
    add(
        "filtered: dataset, scored, kept",
        json!(format!(
            "{} {} {}",
            f["dataset"].as_str().unwrap_or_default(),
            f["scored"],
            f["kept"]
        )),
    );
    add(
        "filter rate (share removed)",
        json!(format!(
            "{:.1}%",
            100.0 * f["filter_rate"].as_f64().unwrap_or_default()
        )),
    );
    for (key, label) in [("train_raw", "before"), ("train_filtered", "after")] {
        let r = &s[key];
        add(
            &format!("R@1 t2i / i2t {label} filtering (run, checkpoint)"),
            json!(format!(
                "{:.2}% / {:.2}% (run {}, checkpoint {}, {} steps on {})",
                r["r1_t2i"].as_f64().unwrap_or_default(),
                r["r1_i2t"].as_f64().unwrap_or_default(),
                r["run"],
                r["checkpoint"],
                r["steps"],
                r["dataset"].as_str().unwrap_or_default()
            )),
        );
    }
    let p = &s["promoted"];
    add(
        "promoted",
        json!(format!(
            "checkpoint {} ({}) -> {}@{}",
            p["checkpoint"],
            p["from"].as_str().unwrap_or_default(),
            p["model"].as_str().unwrap_or_default(),
            p["alias"].as_str().unwrap_or_default()
        )),
    );
    add("gate", p["gate_result"].clone());
    add("work folder", s["work_dir"].clone());
    add(
        "elapsed s",
        json!(format!(
            "{:.1}",
            s["elapsed_s"].as_f64().unwrap_or_default()
        )),
    );
    t.print(format)?;
    if format == Format::Table {
        println!("\nnext:");
        for line in s["next"].as_array().into_iter().flatten() {
            println!("  {}", line.as_str().unwrap_or_default());
        }
    }
    Ok(())
}
