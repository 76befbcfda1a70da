//! `albef pipeline --config FILE`: ALBEF's data loop as one job, on the registry of the global
//! flags. Ingest the training data (a URL list, a registered version, or the synthetic corpus
//! of the demo) and the evaluation set; filter the pairs with the model that holds the promote
//! alias (or, when nothing holds it yet, with a model first trained on the raw version: the
//! bootstrap); pretrain on the filtered version, optionally starting from a checkpoint's
//! weights; evaluate the candidates and the alias's holder on the same set in this run; and
//! promote through a gate that compares those figures, recording promotions and refusals alike.
//! `albef schedule add NAME --pipeline FILE` runs the same function from the scheduler.
//!
//! Each invocation works in one run folder, `PIPELINE_DIR/run-K` with its `state.json`
//! (`state.rs`): the newest run when it is unfinished, otherwise a new one, so two runs never
//! share a folder or a state file. A rerun skips the stages whose recorded outputs still exist,
//! resumes a train stage that was interrupted from its newest checkpoint, and reruns from a
//! stage with `--from`.
mod config;
mod stages;
mod state;
mod summary;
mod union;

use self::config::{PipelineConfig, Source};
use self::state::{Plan, Stage, State};
use super::Context;
use crate::output::{print_json, Format};
use albef_registry::Registry;
use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct PipelineArgs {
    /// Pipeline config (TOML), e.g. configs/demo.toml or configs/pipeline-urls.toml
    #[arg(long)]
    config: PathBuf,
    /// The pipeline's folder, with one folder per run (run-1, run-2, ...): datasets, derived
    /// train config and state.json [default: $ALBEF_HOME/pipeline/NAME]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Start a new run even when the newest one is unfinished (which is left as it is)
    #[arg(long, conflicts_with = "from")]
    new_run: bool,
    /// Rerun this stage and every later one of the newest run, finished or not (earlier
    /// finished stages are skipped)
    #[arg(long, value_enum)]
    from: Option<Stage>,
    /// Output format of the summary
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Which run of which pipeline an invocation works on.
pub struct RunRequest {
    pub config: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub new_run: bool,
    pub from: Option<Stage>,
}

impl PipelineArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url)
            .await
            .with_context(|| format!("cannot open the registry at {}", ctx.registry_url))?;
        let stop = super::stop_on_ctrl_c(
            "stopping at the current stage's next safe point (a checkpoint, complete shards)",
        );
        let request = RunRequest {
            config: self.config,
            work_dir: self.work_dir,
            new_run: self.new_run,
            from: self.from,
        };
        let summary = run_pipeline(&ctx, &reg, &request, stop).await?;
        match self.format {
            Format::Json => print_json(&summary),
            format => summary::print(&summary, format),
        }
    }
}

/// Checks that a pipeline config reads (`albef schedule add --pipeline`).
pub fn check_config(path: &Path) -> Result<()> {
    PipelineConfig::load(path).map(|_| ())
}

/// Runs or continues a pipeline until every stage is done or `stop` is set; returns the
/// summary (`albef pipeline` and scheduled pipeline jobs).
pub async fn run_pipeline(
    ctx: &Context,
    reg: &Registry,
    req: &RunRequest,
    stop: Arc<AtomicBool>,
) -> Result<Value> {
    let cfg = PipelineConfig::load(&req.config)?;
    let root = req
        .work_dir
        .clone()
        .unwrap_or_else(|| ctx.home.join("pipeline").join(&cfg.name));
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create the pipeline folder {}", root.display()))?;
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    let config_json = serde_json::to_value(&cfg)?;
    let (number, work, mut state) = pick_run(&root, &config_json, req)?;
    state.config = Some(config_json);
    tracing::info!("pipeline {} run {number} in {}", cfg.name, work.display());
    let mut pipeline = Pipeline {
        cfg,
        ctx,
        reg: reg.clone(),
        root,
        number,
        state_path: work.join("state.json"),
        work,
        state,
        stop,
    };
    pipeline.plan().await?;
    let started = Instant::now();
    let reports = pipeline.run_stages(req.from).await?;
    pipeline.state.finished = true;
    pipeline.state.save(&pipeline.state_path)?;
    pipeline.summary(reports, started.elapsed().as_secs_f64())
}

/// The newest run number in `root` (folders `run-K`).
fn newest_run(root: &Path) -> Result<Option<u64>> {
    let entries =
        std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?;
    let mut newest = None;
    for entry in entries {
        let name = entry?.file_name();
        let k = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|k| k.parse::<u64>().ok());
        newest = newest.max(k);
    }
    Ok(newest)
}

/// The run this invocation works on: the newest when it is unfinished (its recorded config must
/// be this one) or when `--from` reruns part of it; otherwise a new one.
fn pick_run(root: &Path, config: &Value, req: &RunRequest) -> Result<(u64, PathBuf, State)> {
    let newest = newest_run(root)?;
    let dir = |k: u64| root.join(format!("run-{k}"));
    if let Some(k) = newest.filter(|_| !req.new_run) {
        let state_path = dir(k).join("state.json");
        let state = State::load(&state_path)?;
        if req.from.is_some() {
            return Ok((k, dir(k), state));
        }
        if !state.finished {
            if state.config.as_ref().is_some_and(|c| c != config) {
                bail!(
                    "run {k} of this pipeline ({}) is unfinished and ran with another config \
                     than {}; rerun with --from STAGE to redo it from the first stage the \
                     change affects, or --new-run to leave it and start a new run",
                    state_path.display(),
                    req.config.display()
                );
            }
            tracing::info!("continuing the unfinished run {k}");
            return Ok((k, dir(k), state));
        }
    }
    if req.from.is_some() {
        bail!(
            "--from: {} has no run yet; run the pipeline without it first",
            root.display()
        );
    }
    let k = newest.map_or(1, |k| k + 1);
    std::fs::create_dir(dir(k)).with_context(|| {
        format!(
            "cannot create {} (did another run of this pipeline start just now?)",
            dir(k).display()
        )
    })?;
    Ok((k, dir(k), State::default()))
}

/// How a stage went in this invocation.
#[derive(Serialize)]
struct StageReport {
    stage: &'static str,
    /// `ran`, `skipped` (outputs recorded and still there) or `not needed` (no corpus to make,
    /// a model to filter with exists already, or no new pairs to train on).
    status: &'static str,
    /// Seconds it took now, or when it ran (skipped).
    elapsed_s: f64,
}

struct Pipeline<'a> {
    cfg: PipelineConfig,
    ctx: &'a Context,
    reg: Registry,
    /// The pipeline's folder (runs, and the evaluation set ingested once).
    root: PathBuf,
    /// K of run-K.
    number: u64,
    work: PathBuf,
    state_path: PathBuf,
    state: State,
    stop: Arc<AtomicBool>,
}

impl Pipeline<'_> {
    /// Decides once per run which checkpoint filters the pairs and which the train stages start
    /// from. `[filter] checkpoint` defaults to the promote alias; an alias that nothing holds
    /// yet means the bootstrap (train on the raw version first, filter with that).
    async fn plan(&mut self) -> Result<()> {
        if self.state.plan.is_some() {
            return Ok(());
        }
        let alias = self.cfg.promote.spec();
        let filter_spec = self.cfg.filter.checkpoint.clone().unwrap_or(alias);
        let filter_checkpoint = self
            .checkpoint_unless_unheld(&filter_spec)
            .await
            .with_context(|| format!("[filter] checkpoint {filter_spec}"))?;
        let init_checkpoint = match self.cfg.train.opts.init.clone() {
            Some(spec) => self
                .checkpoint_unless_unheld(&spec)
                .await
                .with_context(|| format!("[train] init {spec}"))?,
            None => None,
        };
        match filter_checkpoint {
            Some(id) => tracing::info!("filtering with checkpoint {id} ({filter_spec})"),
            None => tracing::info!(
                "{filter_spec} has no holder yet: bootstrapping (train on the raw version, \
                 filter with that model)"
            ),
        }
        self.state.plan = Some(Plan {
            filter_checkpoint,
            init_checkpoint,
        });
        self.state.save(&self.state_path)
    }

    /// The checkpoint `spec` names; None when it is the promote alias and nothing holds it yet.
    async fn checkpoint_unless_unheld(&self, spec: &str) -> Result<Option<i64>> {
        let p = &self.cfg.promote;
        if spec == p.spec() || spec == format!("models:/{}", p.spec()) {
            return self.reg.alias_holder(&p.model, &p.alias).await;
        }
        Ok(Some(self.reg.resolve_checkpoint(spec).await?.id))
    }

    fn plan_ref(&self) -> Result<&Plan> {
        self.state
            .plan
            .as_ref()
            .context("the run has no plan (its state file was edited?)")
    }

    /// Whether `stage` has work in this run.
    fn needed(&self, stage: Stage) -> Result<bool> {
        Ok(match stage {
            Stage::Corpus => matches!(self.cfg.source, Source::Corpus(_)),
            Stage::Ingest => true,
            Stage::TrainRaw => self.plan_ref()?.filter_checkpoint.is_none() && !self.nothing_new(),
            _ => !self.nothing_new(),
        })
    }

    /// The run ingested its training data and found no new pair (a URL list that did not grow).
    fn nothing_new(&self) -> bool {
        self.state
            .ingest
            .as_ref()
            .is_some_and(|i| i.ingested && i.train.success == 0)
    }

    /// Runs the stages in order: skips those not needed and those whose outputs are recorded
    /// and still exist (unless `from` forces them), and runs the rest.
    async fn run_stages(&mut self, from: Option<Stage>) -> Result<Vec<StageReport>> {
        let started = Instant::now();
        let mut reports = Vec::new();
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let n = format!("[{}/{}]", i + 1, Stage::ALL.len());
            let forced = from.is_some_and(|f| stage >= f);
            if !self.needed(stage)? {
                tracing::info!("{n} {}: not needed in this run", stage.name());
                reports.push(StageReport {
                    stage: stage.name(),
                    status: "not needed",
                    elapsed_s: 0.0,
                });
                continue;
            }
            if !forced {
                let recorded = self
                    .recorded(stage)
                    .await
                    .with_context(|| format!("stage {}", stage.name()))?;
                if let Some(elapsed_s) = recorded {
                    tracing::info!(
                        "{n} {}: skipped, its outputs are recorded in {} and still exist",
                        stage.name(),
                        self.state_path.display()
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
            self.state.clear_from(stage, forced);
            self.state.save(&self.state_path)?;
            let t = Instant::now();
            self.run_stage(stage, t)
                .await
                .with_context(|| format!("stage {} failed", stage.name()))?;
            self.state.save(&self.state_path)?;
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
        Ok(reports)
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
}
