//! `albef train` and `albef eval`: pretraining on a registered dataset version, resuming a run,
//! and zero-shot retrieval of a checkpoint. Parses the flags, opens the run in the registry,
//! handles Ctrl-C and SIGTERM and prints the result; the loop and the evaluation are in
//! `albef_train`. Started by a launcher (torchrun, Slurm), `albef train` is one rank of a
//! data-parallel run: rank 0 opens the registry run, the others train in step with it.
use crate::cmd::Context;
use crate::output::{print_json, Format, Table};
use albef_dataset::store::{self, Remote};
use albef_dist::{Backend, World};
use albef_registry::{Registry, RunStatus};
use albef_train::checkpoint::{local_copy, Loaded};
use albef_train::config::{parse_device, Config};
use albef_train::eval::{evaluate_checkpoint, Recall};
use albef_train::trainer::tracking::{flatten_params, latest_checkpoint};
use albef_train::trainer::{self, Dist, Tracking, TrainJob, Trained};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tch::Device;

#[derive(Args)]
pub struct TrainArgs {
    /// Model and recipe config (TOML), e.g. configs/albef-tiny.toml; required unless --resume
    #[arg(long, required_unless_present = "resume")]
    pub(super) config: Option<PathBuf>,
    /// Dataset version to train on: NAME (latest finished) or NAME@VERSION; required unless --resume
    #[arg(long, required_unless_present = "resume")]
    pub(super) dataset: Option<String>,
    /// Held-out dataset version for retrieval evaluation during and at the end of training
    #[arg(long)]
    pub(super) eval_dataset: Option<String>,
    /// Continue run RUN from its newest checkpoint (a new run records the continuation)
    #[arg(long, conflicts_with_all = ["config", "dataset"])]
    pub(super) resume: Option<i64>,
    /// A restartable job: continue from the newest checkpoint of the runs of this name in the
    /// experiment (NAME, then NAME-restart-TIME for each restart), or start run NAME from
    /// --config and --dataset when there is none. The same command line then serves every
    /// attempt of `torchrun --max-restarts K` or of a requeued Slurm job
    #[arg(long, value_name = "NAME", conflicts_with_all = ["resume", "name"])]
    pub(super) resume_latest: Option<String>,
    /// Experiment of the run [default: the config file's name, or the resumed run's]
    #[arg(long)]
    pub(super) experiment: Option<String>,
    /// Run name, unique in its experiment [default: NAME-TIME]
    #[arg(long)]
    pub(super) name: Option<String>,
    #[command(flatten)]
    pub(super) opts: TrainOptions,
    #[command(flatten)]
    pub(super) dist: DistArgs,
    /// Output format of the result
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,
}

/// How a run trains: the flags of `albef train` besides what names its config, data, run and
/// process group, and the `[train]` section of a pipeline config (the same names, with `_` for
/// `-`; unset keys take the flags' defaults).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct TrainOptions {
    /// Start from this checkpoint's weights (a registry id or MODEL@ALIAS) with a new optimiser
    /// state at step 0: continued pretraining. Its model config must match --config
    #[arg(long, value_name = "CHECKPOINT")]
    pub(super) init: Option<String>,
    /// Total optimiser steps [default: train.max_steps, else train.epochs passes]
    #[arg(long)]
    pub(super) steps: Option<i64>,
    /// Evaluate on --eval-dataset every N steps (0: only at the end)
    #[arg(long, default_value_t = 0)]
    pub(super) eval_every: i64,
    /// Write and register a checkpoint every N steps (0: only at the end) [default: train.checkpoint_every]
    #[arg(long)]
    pub(super) checkpoint_every: Option<i64>,
    /// Where the run's checkpoint folders go: a folder, or an object-store prefix
    /// (s3://bucket/prefix, gs://..., az://...) that each one is uploaded to, its manifest last;
    /// the registry then records the objects [default: $ALBEF_HOME/checkpoints]
    #[arg(long, value_name = "LOCATION", env = "ALBEF_CHECKPOINT_DIR")]
    pub(super) checkpoint_dir: Option<String>,
    /// Device: cpu, cuda or cuda:N [default: the config's train.device]
    #[arg(long)]
    pub(super) device: Option<String>,
    /// Pairs per micro-batch [default: train.batch_size]; the queue size must be a multiple of
    /// it. Not with --resume (the checkpoint's is kept)
    #[arg(long)]
    pub(super) batch_size: Option<i64>,
    /// Weight each pair's losses by its filter score instead of dropping the low-scored ones:
    /// trains on every scored row of a version made by `albef filter` (kept and filtered_out),
    /// weights from train.score_weight_floor to 1 [default: train.score_weights]. Not with
    /// --resume
    #[arg(long)]
    pub(super) score_weights: bool,
    /// Micro-batches per optimiser step (gradient accumulation)
    #[arg(long, default_value_t = 1)]
    pub(super) accumulate: i64,
    /// Clip the global gradient norm to this value
    #[arg(long)]
    pub(super) clip_grad: Option<f64>,
    /// Candidates per query re-ranked by ITM in evaluation (0: rank by ITC alone)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i64).range(0..))]
    pub(super) k_test: i64,
    /// Data loader worker threads
    #[arg(long, default_value_t = 2)]
    pub(super) workers: usize,
    /// Intra-op CPU threads of libtorch [default: train.threads, 0 = libtorch's choice]
    #[arg(long)]
    pub(super) threads: Option<i32>,
    /// The BERT tokenizer.json
    #[arg(long, env = "ALBEF_TOKENIZER", default_value = "assets/tokenizer.json")]
    pub(super) tokenizer: PathBuf,
}

impl Default for DistArgs {
    fn default() -> Self {
        super::flag_defaults("albef train")
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        super::flag_defaults("albef train")
    }
}

/// Data-parallel training. A launcher's environment makes this process one rank of several:
/// torchrun or Kubeflow's PyTorchJob (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
/// or Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR and MASTER_PORT
/// exported by the job script). Without them the process trains alone.
#[derive(Args, Clone)]
pub struct DistArgs {
    /// Collective backend across the ranks: gloo or nccl [default: nccl on CUDA, gloo on CPU]
    #[arg(long, value_name = "BACKEND")]
    dist_backend: Option<Backend>,
    /// Seconds a collective waits for the other ranks before the run fails (a dead rank is
    /// usually seen at once; a rank that hangs, after this long); keep it above the time
    /// rank 0 spends on a held-out evaluation
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    dist_timeout: u64,
    /// Average the gradients after backward instead of while it runs (by default each bucket's
    /// all-reduce starts as soon as its gradients are ready, as DDP does)
    #[arg(long)]
    dist_sync: bool,
    /// Every rank writes its final variables to DIR/rank-R.safetensors, to check that the
    /// ranks agree (rank 0's are also in its checkpoint)
    #[arg(long, value_name = "DIR")]
    rank_weights: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint: a registry id, MODEL@ALIAS or models:/MODEL@ALIAS
    #[arg(long)]
    checkpoint: String,
    /// Dataset version to evaluate on: NAME or NAME@VERSION
    #[arg(long)]
    dataset: String,
    /// Model config (TOML) [default: the one saved beside the checkpoint]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Candidates per query re-ranked by ITM (0: rank by ITC alone)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i64).range(0..))]
    k_test: i64,
    /// Device: cpu, cuda or cuda:N [default: the config's train.device]
    #[arg(long)]
    device: Option<String>,
    /// The BERT tokenizer.json
    #[arg(long, env = "ALBEF_TOKENIZER", default_value = "assets/tokenizer.json")]
    tokenizer: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// The run a `train` invocation opens: its config, data and names.
struct Plan {
    config: Config,
    dataset_version: i64,
    data_dir: PathBuf,
    experiment: String,
    name: String,
    resume: Option<Loaded>,
    /// The registry id of the checkpoint `resume` holds.
    from_checkpoint: Option<i64>,
    /// The model file of --init (a fresh run only).
    init: Option<PathBuf>,
    tags: Vec<(String, String)>,
}

impl TrainArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let registry = Registry::connect(&ctx.registry_url).await?;
        let stop = super::stop_on_ctrl_c("writing a checkpoint and stopping");
        let trained = self
            .execute(&registry, &ctx.home, stop, Some(&self.dist), |_| Ok(()))
            .await?;
        let Trained {
            run,
            status,
            step,
            checkpoint,
            checkpoint_path: path,
            metrics,
        } = trained;
        match self.format {
            Format::Json => {
                print_json(
                    &json!({"run": run, "checkpoint": checkpoint, "checkpoint_path": path, "status": status, "step": step}),
                )?;
            }
            format => {
                let mut table =
                    Table::new(["run", "status", "step", "checkpoint", "checkpoint_path"]);
                table.push(vec![
                    json!(run),
                    json!(status),
                    json!(step),
                    json!(checkpoint),
                    json!(path),
                ]);
                table.print(format)?;
                let mut table = Table::new(["metric", "value"]);
                for (k, v) in &metrics {
                    table.push(vec![json!(k), json!(v)]);
                }
                table.print(format)?;
            }
        }
        Ok(())
    }

    /// Opens the run in the registry (`on_run` is told its id before the first step), trains
    /// until the planned steps or until `stop` is set (a checkpoint is written first, status
    /// KILLED), and records the ending. Used by `albef train` and the pipeline's train stages.
    /// With `dist` and a launcher's environment, this is one rank of several: rank 0 does all
    /// of that, the other ranks learn the run's id from it and train in step.
    pub(super) async fn execute(
        &self,
        registry: &Registry,
        home: &Path,
        stop: Arc<AtomicBool>,
        dist: Option<&DistArgs>,
        on_run: impl FnOnce(i64) -> Result<()>,
    ) -> Result<Trained> {
        anyhow::ensure!(
            self.opts.k_test >= 0,
            "k_test = {} must be at least 0",
            self.opts.k_test
        );
        let mut plan = self.plan(registry, home).await?;
        if let Some(device) = &self.opts.device {
            plan.config.train.device = device.clone();
        }
        if let Some(batch_size) = self.opts.batch_size {
            plan.config.train.batch_size = batch_size;
            plan.config.validate().context("--batch-size")?;
        }
        if let Some(threads) = self.opts.threads {
            plan.config.train.threads = threads;
        }
        if self.opts.score_weights {
            plan.config.train.score_weights = true;
        }
        let device = parse_device(&plan.config.train.device)?;
        let dist = match dist {
            Some(args) => args.join(device).await?,
            None => None,
        };
        let device = rank_device(device, dist.as_deref())?;
        if let Some(dist) = &dist {
            same_start_as_rank_0(dist, plan.from_checkpoint)?;
        }
        if let Some(dist) = dist.clone().filter(|d| !d.is_main()) {
            let run = dist
                .broadcast_i64(0)
                .context("waiting for rank 0's registry run")?;
            on_run(run)?;
            let job = self.job(plan, device, None, home, run, Some(dist))?;
            return tokio::task::spawn_blocking(move || trainer::train_rank(job, run, &stop))
                .await
                .context("the training thread panicked")?;
        }
        let eval_dir = match &self.eval_dataset {
            Some(spec) => {
                let uri = registry.dataset_version(spec).await?.uri;
                Some(store::local_folder(&uri, &super::mirror_root(home))?)
            }
            None => None,
        };
        let config_json = serde_json::to_value(&plan.config)?;
        let run = registry
            .create_run(&plan.experiment, &plan.name, &config_json)
            .await?;
        let mut params = Vec::new();
        flatten_params("", &config_json, &mut params);
        params.push(("loop.accumulate".into(), self.opts.accumulate.to_string()));
        params.push((
            "loop.clip_grad".into(),
            self.opts.clip_grad.map_or("none".into(), |c| c.to_string()),
        ));
        if let Some(spec) = &self.dataset {
            params.push(("dataset".into(), spec.clone()));
        }
        registry.log_params(run, &params).await?;
        registry.set_run_dataset(run, plan.dataset_version).await?;
        plan.tags
            .push(("device".into(), plan.config.train.device.clone()));
        registry.set_tags(run, &plan.tags).await?;
        on_run(run)?;
        if let Some(dist) = &dist {
            dist.broadcast_i64(run)
                .context("telling the other ranks the registry run")?;
        }

        let job = self.job(plan, device, eval_dir, home, run, dist)?;
        let tracking = Tracking {
            registry: registry.clone(),
            handle: tokio::runtime::Handle::current(),
            run,
            writer: registry.metric_writer(run),
        };
        let (result, flushed) = tokio::task::spawn_blocking(move || {
            let result = trainer::train(job, &tracking, &stop);
            (result, tracking.finish())
        })
        .await
        .context("the training thread panicked")?;
        let trained = match result {
            Ok(trained) => trained,
            Err(e) => {
                registry.finish_run(run, RunStatus::Failed).await?;
                return Err(e.context(format!("run {run} FAILED")));
            }
        };
        flushed.with_context(|| format!("writing the metrics of run {run}"))?;
        registry.finish_run(run, trained.status).await?;
        Ok(trained)
    }

    /// The training job of `plan` for registry run `run`.
    fn job(
        &self,
        plan: Plan,
        device: Device,
        eval_dir: Option<PathBuf>,
        home: &Path,
        run: i64,
        dist: Option<Arc<Dist>>,
    ) -> Result<TrainJob> {
        let (checkpoint_dir, checkpoint_store) =
            checkpoint_location(self.opts.checkpoint_dir.as_deref(), home, run)?;
        Ok(TrainJob {
            checkpoint_every: self
                .opts
                .checkpoint_every
                .unwrap_or(plan.config.train.checkpoint_every),
            config: plan.config,
            device,
            dataset_version: plan.dataset_version,
            data_dir: plan.data_dir,
            eval_dir,
            steps: self.opts.steps,
            accumulate: self.opts.accumulate,
            clip_grad: self.opts.clip_grad,
            eval_every: self.opts.eval_every,
            k_test: self.opts.k_test,
            workers: self.opts.workers,
            tokenizer: self.opts.tokenizer.clone(),
            checkpoint_dir,
            checkpoint_store,
            resume: plan.resume,
            init: plan.init,
            progress: std::io::stderr().is_terminal() && dist.as_ref().is_none_or(|d| d.is_main()),
            dist,
            dist_overlap: !self.dist.dist_sync,
            rank_weights: self.dist.rank_weights.clone(),
        })
    }

    /// A fresh run from --config and --dataset, the continuation of --resume RUN, or what
    /// --resume-latest NAME finds.
    async fn plan(&self, registry: &Registry, home: &Path) -> Result<Plan> {
        // Milliseconds since the epoch keep default names unique.
        let stamp = albef_registry::now_ms();
        if let Some(resumed) = self.resume {
            let o = &self.opts;
            for (given, flag) in [
                (o.batch_size.is_some(), "--batch-size"),
                (o.score_weights, "--score-weights"),
                (o.init.is_some(), "--init"),
            ] {
                if given {
                    bail!("{flag} cannot be used with --resume: a resumed run keeps its checkpoint's settings and weights");
                }
            }
            let ckpt = latest_checkpoint(registry, resumed).await?;
            let old = registry.run(resumed).await?;
            let name = format!("{}-from-{}-{stamp}", old.name, ckpt.step);
            return self.resumed_plan(registry, home, old, ckpt, name).await;
        }
        let (Some(path), Some(spec)) = (&self.config, &self.dataset) else {
            bail!("--config and --dataset are required unless --resume is given");
        };
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("albef")
            .to_string();
        let experiment = self.experiment.clone().unwrap_or_else(|| stem.clone());
        let mut name = format!("{stem}-{stamp}");
        if let Some(key) = &self.resume_latest {
            let (newest, taken) = newest_of(registry, &experiment, key).await?;
            name = if taken {
                format!("{key}-restart-{stamp}")
            } else {
                key.clone()
            };
            if let Some((old, ckpt)) = newest {
                let mut plan = self.resumed_plan(registry, home, old, ckpt, name).await?;
                plan.tags.push(("resume_latest".into(), key.clone()));
                return Ok(plan);
            }
        }
        let version = registry.dataset_version(spec).await?;
        let mut tags = Vec::new();
        let init = match &self.opts.init {
            Some(spec) => {
                let ckpt = registry
                    .resolve_checkpoint(spec)
                    .await
                    .with_context(|| format!("--init {spec}"))?;
                tags.push(("init_checkpoint".into(), ckpt.id.to_string()));
                Some(local_copy(&ckpt.uri, &super::mirror_root(home))?)
            }
            None => None,
        };
        Ok(Plan {
            config: Config::load(path)?,
            dataset_version: version.id,
            data_dir: store::local_folder(&version.uri, &super::mirror_root(home))?,
            experiment,
            name: self.name.clone().unwrap_or(name),
            resume: None,
            from_checkpoint: None,
            init,
            tags,
        })
    }

    /// The continuation of run `old` from its checkpoint `ckpt`, named `name` unless --name.
    async fn resumed_plan(
        &self,
        registry: &Registry,
        home: &Path,
        old: albef_registry::Run,
        ckpt: albef_registry::Checkpoint,
        name: String,
    ) -> Result<Plan> {
        let loaded = local_copy(&ckpt.uri, &super::mirror_root(home))
            .and_then(|path| Loaded::open(&path))
            .with_context(|| format!("opening checkpoint {} of run {}", ckpt.id, old.id))?;
        let version = registry
            .dataset_version_by_id(loaded.state.dataset_version)
            .await?;
        Ok(Plan {
            config: loaded.state.config.clone(),
            dataset_version: version.id,
            data_dir: store::local_folder(&version.uri, &super::mirror_root(home))?,
            experiment: self.experiment.clone().unwrap_or(old.experiment),
            name: self.name.clone().unwrap_or(name),
            resume: Some(loaded),
            from_checkpoint: Some(ckpt.id),
            init: None,
            tags: vec![
                ("resumed_from_run".into(), old.id.to_string()),
                ("resumed_from_checkpoint".into(), ckpt.id.to_string()),
            ],
        })
    }
}

/// The newest checkpoint (highest step) of the runs of `experiment` named `key` or
/// `key-restart-*`, with its run, and whether any such run exists.
async fn newest_of(
    registry: &Registry,
    experiment: &str,
    key: &str,
) -> Result<(
    Option<(albef_registry::Run, albef_registry::Checkpoint)>,
    bool,
)> {
    let restart = format!("{key}-restart-");
    let runs: Vec<_> = registry
        .runs(None)
        .await?
        .into_iter()
        .filter(|r| r.experiment == experiment)
        .filter(|r| r.name == key || r.name.starts_with(&restart))
        .collect();
    let newest = registry
        .checkpoints(None)
        .await?
        .into_iter()
        .filter(|c| runs.iter().any(|r| r.id == c.run_id))
        .max_by_key(|c| (c.step, c.id));
    let taken = !runs.is_empty();
    let newest = newest.map(|c| {
        let run = runs
            .into_iter()
            .find(|r| r.id == c.run_id)
            .expect("its run");
        (run, c)
    });
    Ok((newest, taken))
}

impl DistArgs {
    /// Joins the process group when a launcher started this process (`None` when none did),
    /// on the backend given or the one for `device`.
    async fn join(&self, device: Device) -> Result<Option<Arc<Dist>>> {
        let Some(world) = World::from_env().context("reading the launcher's environment")? else {
            return Ok(None);
        };
        let backend = self
            .dist_backend
            .unwrap_or_else(|| Backend::for_device(device));
        let timeout = Duration::from_secs(self.dist_timeout.max(1));
        let joined = tokio::task::spawn_blocking(move || Dist::join(&world, backend, timeout))
            .await
            .context("the thread joining the process group panicked")??;
        Ok(Some(joined))
    }
}

/// Fails unless rank 0 starts from the same checkpoint (`None`: a fresh run) as this rank.
fn same_start_as_rank_0(dist: &Dist, from_checkpoint: Option<i64>) -> Result<()> {
    let mine = from_checkpoint.unwrap_or(-1);
    let main = dist.broadcast_i64(mine)?;
    let name = |id: i64| match id {
        -1 => "a fresh start".to_string(),
        id => format!("checkpoint {id}"),
    };
    if main != mine {
        bail!(
            "rank {} starts from {} but rank 0 from {}: every rank must see the same registry \
             (use one Postgres registry for ranks on several machines)",
            dist.rank(),
            name(mine),
            name(main)
        );
    }
    Ok(())
}

/// The device of this rank: `cuda` becomes the GPU of the rank's LOCAL_RANK when several
/// processes share a machine; the CPU stays the CPU.
fn rank_device(device: Device, dist: Option<&Dist>) -> Result<Device> {
    match (device, dist) {
        (Device::Cuda(_), Some(dist)) => parse_device(&format!("cuda:{}", dist.local_rank())),
        _ => Ok(device),
    }
}

impl EvalArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let registry = Registry::connect(&ctx.registry_url).await?;
        let ckpt = registry.resolve_checkpoint(&self.checkpoint).await?;
        let on = EvalOn {
            dataset: &self.dataset,
            config: self.config.as_deref(),
            device: self.device.as_deref(),
            tokenizer: &self.tokenizer,
            k_test: self.k_test,
        };
        let recall = evaluate(&registry, &ckpt, on, &ctx.home).await?;
        match self.format {
            Format::Json => print_json(&serde_json::to_value(recall)?),
            format => {
                let mut table = Table::new(["metric", "value"]);
                for (k, v) in recall.entries() {
                    table.push(vec![Value::from(k), json!(v)]);
                }
                table.print(format)
            }
        }
    }
}

/// The local folder of run `run`'s checkpoints under `--checkpoint-dir` (`given`), and the
/// object-store prefix they are uploaded to when that is a store's URI (the folder is then the
/// prefix's mirror under the home).
fn checkpoint_location(
    given: Option<&str>,
    home: &Path,
    run: i64,
) -> Result<(PathBuf, Option<Remote>)> {
    let run_dir = format!("run-{run}");
    Ok(match given {
        None => (home.join("checkpoints").join(run_dir), None),
        Some(uri) if store::is_remote(uri) => {
            let remote = Remote::open(uri)
                .with_context(|| format!("--checkpoint-dir {uri}"))?
                .join(&run_dir);
            let local = store::mirror_path(&super::mirror_root(home), remote.uri());
            (local, Some(remote))
        }
        Some(path) => (PathBuf::from(path).join(run_dir), None),
    })
}

/// What a zero-shot evaluation runs on: dataset version `dataset` (NAME or NAME@V), the model
/// config `config` (else the one saved beside the checkpoint), `device` (else the config's
/// `train.device`), and ITM re-ranking of `k_test` candidates.
pub(super) struct EvalOn<'a> {
    pub(super) dataset: &'a str,
    pub(super) config: Option<&'a Path>,
    pub(super) device: Option<&'a str>,
    pub(super) tokenizer: &'a Path,
    pub(super) k_test: i64,
}

/// Zero-shot retrieval of `ckpt` (`albef eval` and the pipeline's eval stage); a checkpoint in
/// an object store is read through its mirror under `home`.
pub(super) async fn evaluate(
    registry: &Registry,
    ckpt: &albef_registry::Checkpoint,
    on: EvalOn<'_>,
    home: &Path,
) -> Result<Recall> {
    let EvalOn {
        dataset,
        config,
        device,
        tokenizer,
        k_test,
    } = on;
    let weights = local_copy(&ckpt.uri, &super::mirror_root(home))
        .with_context(|| format!("reading checkpoint {}", ckpt.id))?;
    let mut config = match config {
        Some(path) => Config::load(path)?,
        None => {
            Loaded::open(&weights)
                .with_context(|| {
                    format!(
                        "checkpoint {} has no trainer state beside it: pass --config",
                        ckpt.id
                    )
                })?
                .state
                .config
        }
    };
    if let Some(device) = device {
        config.train.device = device.to_string();
    }
    let device = parse_device(&config.train.device)?;
    let version = registry.dataset_version(dataset).await?;
    let data_dir = store::local_folder(&version.uri, &super::mirror_root(home))?;
    let tokenizer = tokenizer.to_path_buf();
    tokio::task::spawn_blocking(move || {
        evaluate_checkpoint(&config, &weights, &data_dir, &tokenizer, device, k_test)
    })
    .await
    .context("the evaluation thread panicked")?
}
