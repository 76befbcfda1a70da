//! The pretraining loop: batches from the loader, the three ALBEF losses, gradient
//! accumulation, optional clipping, AdamW at the scheduled learning rate, metrics every step,
//! periodic checkpoints and held-out evaluation, and the three ways a run ends (done, stopped
//! by Ctrl-C with a checkpoint, or a non-finite loss that keeps the last good checkpoint).
//!
//! Every random draw of a step (MLM masking, hard negatives, dropout) comes from libtorch's
//! generator re-seeded from (seed, step, micro-batch), and the loader's draws from (seed,
//! epoch, position); so the checkpointed step and data position are the whole random state,
//! and a resumed run computes the same losses as an uninterrupted one.
//!
//! Run as one rank of several (`TrainJob::dist`), the loop shards the data, averages the
//! gradients and leaves checkpoints, metrics and evaluation to rank 0: see `dist.rs`.
use super::adamw::{AdamW, AdamWOptions};
use super::checkpoint::{self, DataPosition, Loaded, TrainerState};
use super::dist::Dist;
use super::schedule::{AlphaRamp, LrSchedule};
use super::tracking::Tracking;
use crate::config::{check_queue, Config, TrainConfig};
use crate::data::{self, Epoch, Loader};
use crate::eval;
use crate::model::{self, weights, Albef, PrecisionRule};
use albef_dataset::seed::derive_seed;
use albef_dataset::store::Remote;
use albef_registry::{CheckpointFile, RunStatus};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

/// The loader settings of a run's config (owned by `data`; the trainer's callers name them here).
pub use crate::data::loader_config;

/// AdamW epsilon (torch's default, as in the official optimiser).
const ADAM_EPS: f64 = 1e-8;

/// What a training job needs besides the run it reports to.
pub struct TrainJob {
    /// The config; on resume, the checkpoint's (only `train.device` may differ).
    pub config: Config,
    pub device: Device,
    /// Registry id and folder of the dataset version to train on.
    pub dataset_version: i64,
    pub data_dir: PathBuf,
    /// Folder of the held-out dataset for periodic evaluation.
    pub eval_dir: Option<PathBuf>,
    /// Total optimiser steps (None: `train.max_steps`, else `train.epochs` passes).
    pub steps: Option<i64>,
    /// Micro-batches per optimiser step.
    pub accumulate: i64,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f64>,
    /// Evaluate every this many steps (0: only at the end); needs `eval_dir`.
    pub eval_every: i64,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: i64,
    /// Candidates re-ranked by ITM per query in evaluation.
    pub k_test: i64,
    /// Loader worker threads.
    pub workers: usize,
    /// The BERT `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Where this run's checkpoint folders are written.
    pub checkpoint_dir: PathBuf,
    /// The object-store prefix they are uploaded to, when checkpoints live there (then
    /// `checkpoint_dir` is its local mirror, and the registry records the objects).
    pub checkpoint_store: Option<Remote>,
    /// Continue from this checkpoint.
    pub resume: Option<Loaded>,
    /// A fresh run starts from this model file's weights (continued pretraining: the optimiser
    /// state and the step start anew). Not with `resume`.
    pub init: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The process group when this is one rank of several (`None`: this process alone).
    pub dist: Option<Arc<Dist>>,
    /// In a world: average the gradients while backward runs (DDP's overlap, the default), or
    /// after it (`false`, `--dist-sync`).
    pub dist_overlap: bool,
    /// Every rank writes its final variables to `DIR/rank-R.safetensors` (to compare ranks).
    pub rank_weights: Option<PathBuf>,
}

/// What a run that did not fail ended with: the one training result, which the CLI's `train`
/// command prints and the pipeline's train stages record.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The registry run.
    pub run: i64,
    /// FINISHED when every planned step is done, KILLED when stopped on request (after writing
    /// a checkpoint).
    pub status: RunStatus,
    /// Optimiser steps completed.
    pub step: i64,
    /// The last checkpoint: registry id and model file.
    pub checkpoint: i64,
    pub checkpoint_path: PathBuf,
    /// Metrics of the last step and of the last held-out evaluation.
    pub metrics: BTreeMap<String, f64>,
}

/// Trains until the planned step count, a stop request (`stop` set, e.g. by Ctrl-C: a
/// checkpoint is written first) or an error. A non-finite loss or gradient is an error that
/// names the step and the last good checkpoint; nothing is saved after it. The run reports to
/// `tracking`: a process alone, or rank 0 of several.
pub fn train(job: TrainJob, tracking: &Tracking, stop: &AtomicBool) -> Result<Trained> {
    run_loop(job, Some(tracking), tracking.run, stop)
}

/// [`train`] on a rank other than 0 of `job.dist`: in step with rank 0, reporting nothing
/// (rank 0 reports registry run `run`).
pub fn train_rank(job: TrainJob, run: i64, stop: &AtomicBool) -> Result<Trained> {
    if job.dist.as_ref().is_none_or(|d| d.is_main()) {
        bail!("train_rank is for the ranks other than 0 of a process group");
    }
    run_loop(job, None, run, stop)
}

fn run_loop(
    job: TrainJob,
    tracking: Option<&Tracking>,
    run_id: i64,
    stop: &AtomicBool,
) -> Result<Trained> {
    let alone = job.dist.is_none();
    let mut run = Run::set_up(job, tracking, run_id)?;
    let status = loop {
        if run.state.step >= run.state.total_steps {
            break RunStatus::Finished;
        }
        // Alone, a stop request is seen before the step; in a world, the ranks agree on it in
        // the step's all-reduce and stop after that step.
        if alone && stop.load(Ordering::SeqCst) {
            break RunStatus::Killed;
        }
        let record = run.step(stop)?;
        run.after_step(&record)?;
        if record.stop && run.state.step < run.state.total_steps {
            break RunStatus::Killed;
        }
    };
    run.write_rank_weights()?;
    match status {
        RunStatus::Finished => run.finish(),
        _ => run.stop(),
    }
}

/// A checkpoint this run wrote.
#[derive(Clone, Debug)]
struct Saved {
    /// Registry id.
    id: i64,
    step: i64,
    /// The model file.
    path: PathBuf,
}

/// The newest good checkpoint, as the error of a run that fails names it.
fn describe_last_good(saved: &Option<Saved>) -> String {
    match saved {
        Some(s) => format!(
            "the last good checkpoint is {} (step {}, {})",
            s.id,
            s.step,
            s.path.display()
        ),
        None => "no checkpoint was written".to_string(),
    }
}

/// What one optimiser step measured.
struct StepRecord {
    /// Mean over the micro-batches of (itc, itm, mlm, total).
    losses: [f64; 4],
    lr: f64,
    alpha: f64,
    grad_norm: f64,
    /// Wall time of the step (seconds), the part of it spent waiting for data and the part
    /// spent averaging over the ranks.
    elapsed: f64,
    waited: Duration,
    collective: Duration,
    /// Some rank was asked to stop: every rank stops after this step.
    stop: bool,
}

/// A run in progress: its data, model and optimiser, and the state a checkpoint saves.
struct Run<'a> {
    job: TrainJob,
    /// The registry run's reporting; `None` on the ranks other than 0.
    tracking: Option<&'a Tracking>,
    run_id: i64,
    loader: Loader,
    eval_loader: Option<Loader>,
    vs: nn::VarStore,
    model: Albef,
    optimizer: AdamW,
    state: TrainerState,
    /// The epoch being read, positioned at `state.data`.
    batches: Epoch,
    bar: ProgressBar,
    /// Steps between two log lines.
    log_every: i64,
    /// The newest checkpoint written.
    saved: Option<Saved>,
}

impl<'a> Run<'a> {
    /// Set-up and resume: checks the job, opens the data, builds the model and the optimiser,
    /// then restores the checkpoint to resume from or starts a fresh state.
    fn set_up(mut job: TrainJob, tracking: Option<&'a Tracking>, run_id: i64) -> Result<Self> {
        let resume = job.resume.take();
        let t = &job.config.train;
        if job.accumulate < 1 {
            bail!("--accumulate must be at least 1, got {}", job.accumulate);
        }
        if t.threads > 0 {
            tch::set_num_threads(t.threads);
        }
        // The queue takes a whole global batch at a time: check before any work.
        let world_size = world_size(&job);
        check_queue(
            job.config.model.queue_size,
            t.batch_size * world_size as i64,
        )?;
        let (loader, eval_loader) = open_data(&job, tracking)?;
        let steps_per_epoch = loader.batches_per_epoch() as i64 / job.accumulate;
        if steps_per_epoch == 0 {
            bail!(
                "{} has {} usable rows: not enough for one step of {} x {} pairs",
                job.data_dir.display(),
                loader.len(),
                t.batch_size,
                job.accumulate
            );
        }
        let seed = Some(t.seed as i64);
        let (vs, mut model) =
            model::build(&job.config, job.device, PrecisionRule::Config, seed, None)?;
        let mut optimizer = optimizer(&vs, t)?;
        let state = match resume {
            Some(loaded) => resumed_state(loaded, &job, &vs, &mut optimizer, run_id)?,
            None => fresh_state(&job, &vs, &model, steps_per_epoch, run_id)?,
        };
        if let Some(dist) = &job.dist {
            dist.broadcast_vars(&vs)?;
            model.set_gather(dist.clone());
            if job.dist_overlap {
                dist.overlap(&optimizer.params(), albef_dist::DEFAULT_BUCKET_BYTES)?;
            }
        }
        log_world(&job, tracking)?;
        if state.step >= state.total_steps {
            bail!(
                "the run is already at step {} of {}: give more --steps to continue",
                state.step,
                state.total_steps
            );
        }
        Ok(Run {
            bar: progress_bar(job.progress, state.step, state.total_steps),
            batches: loader.epoch(state.data.epoch as u64, state.data.batch as usize),
            log_every: (state.total_steps / 20).clamp(1, 50),
            job,
            tracking,
            run_id,
            loader,
            eval_loader,
            vs,
            model,
            optimizer,
            state,
            saved: None,
        })
    }

    /// One optimiser step: `accumulate` micro-batches forward and backward, the mean over the
    /// ranks (in a world), the gradient guard, clipping, AdamW at the scheduled learning rate.
    fn step(&mut self, stop: &AtomicBool) -> Result<StepRecord> {
        let started = Instant::now();
        let step = self.state.step;
        let lr = self.state.lr.lr_at(step);
        let alpha = self.state.alpha.alpha_at(step);
        self.optimizer.zero_grad();
        let mut waited = Duration::ZERO;
        let mut losses = [0f64; 4];
        for micro in 0..self.job.accumulate {
            let fetch = Instant::now();
            let batch = next_batch(&self.loader, &mut self.batches, &mut self.state.data)?;
            waited += fetch.elapsed();
            if micro + 1 == self.job.accumulate {
                // This backward completes the step's gradients: the reducer may start on them.
                self.job.dist.iter().for_each(|dist| dist.arm());
            }
            let values = self.micro_step(batch, micro, alpha)?;
            for (s, v) in losses.iter_mut().zip(values) {
                *s += v / self.job.accumulate as f64;
            }
        }
        let reduce = Instant::now();
        let stop = self.average_over_ranks(&mut losses, stop.load(Ordering::SeqCst))?;
        let collective = reduce.elapsed();
        let grad_norm = self.optimizer.clip_grad_norm(self.job.clip_grad);
        if !grad_norm.is_finite() {
            self.bar.abandon();
            bail!(
                "the gradient norm is {grad_norm} at step {}: stopping without saving; {}",
                step + 1,
                describe_last_good(&self.saved)
            );
        }
        self.optimizer.step(lr);
        self.state.step += 1;
        Ok(StepRecord {
            losses,
            lr,
            alpha,
            grad_norm,
            elapsed: started.elapsed().as_secs_f64().max(1e-9),
            waited,
            collective,
            stop,
        })
    }

    /// In a world: the gradients, `losses` and the stop flag become their means over the ranks
    /// (the gradients through the overlapping reducer, whose all-reduces backward started, or
    /// in the same bucketed all-reduce as the rest). Returns whether some rank was asked to stop.
    fn average_over_ranks(&self, losses: &mut [f64; 4], stop: bool) -> Result<bool> {
        let Some(dist) = &self.job.dist else {
            return Ok(false);
        };
        let mut tensors = if dist.overlapping() {
            dist.finish()?;
            Vec::new()
        } else {
            self.optimizer.grads()
        };
        let device = tensors.first().map_or(self.job.device, Tensor::device);
        let mut extra = losses.to_vec();
        extra.push(if stop { 1.0 } else { 0.0 });
        tensors.push(
            Tensor::from_slice(&extra)
                .to_kind(Kind::Float)
                .to_device(device),
        );
        dist.average(&mut tensors)?;
        let extra = Vec::<f64>::try_from(
            tensors
                .pop()
                .expect("the extra tensor")
                .to_kind(Kind::Double),
        )?;
        losses.copy_from_slice(&extra[..4]);
        Ok(extra[4] > 0.0)
    }

    /// One micro-batch of the current step: the forward with libtorch's generator seeded from
    /// (seed, step, micro-batch), the loss guard, the backward of its share of the loss.
    /// Returns its (itc, itm, mlm, total) losses.
    fn micro_step(&self, batch: data::Batch, micro: i64, alpha: f64) -> Result<[f64; 4]> {
        let (device, step) = (self.job.device, self.state.step);
        let idx = batch.idx.to_device(device);
        let weight = batch.weight.as_ref().map(|w| w.to_device(device));
        let batch = model::Batch {
            image: batch.image.to_device(device),
            input_ids: batch.input_ids.to_device(device),
            attention_mask: batch.attention_mask.to_device(device),
        };
        tch::manual_seed(
            derive_seed(&[self.state.seed, step as u64, micro as u64, 0xa1be_f5ee]) as i64,
        );
        let losses = self
            .model
            .losses_with_idx(&batch, &idx, weight.as_ref(), alpha, true)?;
        let total = losses.total();
        let values = [
            losses.itc.double_value(&[]),
            losses.itm.double_value(&[]),
            losses.mlm.double_value(&[]),
            total.double_value(&[]),
        ];
        if let Some((name, v)) = ["loss_itc", "loss_itm", "loss_mlm", "loss"]
            .iter()
            .zip(values)
            .find(|(_, v)| !v.is_finite())
        {
            self.bar.abandon();
            bail!(
                "{name} is {v} at step {} (micro-batch {micro}): stopping without saving; {}",
                step + 1,
                describe_last_good(&self.saved)
            );
        }
        (total / self.job.accumulate as f64).backward();
        Ok(values)
    }

    /// What follows a step: its metrics, then the held-out evaluation and a checkpoint when
    /// they are due (always after the last step).
    fn after_step(&mut self, record: &StepRecord) -> Result<()> {
        self.log_step(record)?;
        let step = self.state.step;
        let last = step == self.state.total_steps;
        let every = |n: i64| n > 0 && step % n == 0;
        if self.eval_loader.is_some() && (last || every(self.job.eval_every)) {
            self.evaluate()?;
        }
        if last || every(self.job.checkpoint_every) {
            self.save()?;
        }
        Ok(())
    }

    /// The step's metrics to the registry, the trainer state and the progress bar; a log line
    /// every `log_every` steps.
    fn log_step(&mut self, r: &StepRecord) -> Result<()> {
        let [itc, itm, mlm, loss] = r.losses;
        let images_per_s = global_batch(&self.job) as f64 / r.elapsed;
        let mut metrics = vec![
            ("loss_itc", itc),
            ("loss_itm", itm),
            ("loss_mlm", mlm),
            ("loss", loss),
            ("lr", r.lr),
            ("alpha", r.alpha),
            ("temp", self.model.temp.double_value(&[])),
            ("grad_norm", r.grad_norm),
            ("images_per_s", images_per_s),
            ("data_wait_pct", 100.0 * r.waited.as_secs_f64() / r.elapsed),
        ];
        if self.job.dist.is_some() {
            metrics.push((
                "collective_pct",
                100.0 * r.collective.as_secs_f64() / r.elapsed,
            ));
        }
        let step = self.state.step;
        for (k, v) in metrics {
            if let Some(tracking) = self.tracking {
                tracking.log(k, step, v)?;
            }
            self.state.metrics.insert(k.to_string(), v);
        }
        self.bar.set_position(step as u64);
        self.bar.set_message(format!(
            "loss {loss:.3} (itc {itc:.3} itm {itm:.3} mlm {mlm:.3}) {images_per_s:.1} img/s"
        ));
        if step % self.log_every == 0 || step == self.state.total_steps {
            tracing::info!(
                step,
                total = self.state.total_steps,
                loss,
                loss_itc = itc,
                loss_itm = itm,
                loss_mlm = mlm,
                images_per_s,
                "step {step}"
            );
        }
        Ok(())
    }

    /// Held-out retrieval at this step, logged with the step's metrics (rank 0 alone opens
    /// the held-out data).
    fn evaluate(&mut self) -> Result<()> {
        let (Some(eval_loader), Some(tracking)) = (&self.eval_loader, self.tracking) else {
            return Ok(());
        };
        let recall = eval::evaluate(&self.model, eval_loader, self.job.device, self.job.k_test)
            .context("evaluating on the held-out data")?;
        for (k, v) in recall.entries() {
            tracking.log(k, self.state.step, v)?;
            self.state.metrics.insert(k.to_string(), v);
        }
        tracing::info!(
            step = self.state.step,
            r1_t2i = recall.r1_t2i,
            r1_i2t = recall.r1_i2t,
            "held-out retrieval"
        );
        Ok(())
    }

    /// Writes the checkpoint of this step and registers it with the step's metrics (rank 0;
    /// the other ranks learn its id).
    fn save(&mut self) -> Result<Saved> {
        let step = self.state.step;
        let dir = checkpoint::step_dir(&self.job.checkpoint_dir, step);
        let path = dir.join(checkpoint::MODEL_FILE);
        let mut id = 0;
        if let Some(tracking) = self.tracking {
            checkpoint::save(&dir, &self.vs, &self.optimizer, &self.state)?;
            let metrics: Vec<(String, f64)> = self
                .state
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            id = match &self.job.checkpoint_store {
                None => tracking.register_checkpoint(&path, step, &metrics)?,
                Some(remote) => {
                    let name = dir.file_name().unwrap_or_default().to_string_lossy();
                    let uri = checkpoint::upload(&dir, &remote.join(&name))?;
                    let (sha256, bytes) = albef_dataset::hash_file(&path)?;
                    let file = CheckpointFile {
                        uri,
                        sha256,
                        bytes: bytes as i64,
                    };
                    tracking.register_checkpoint_file(&file, step, &metrics)?
                }
            };
        }
        if let Some(dist) = &self.job.dist {
            id = dist.broadcast_i64(id)?;
        }
        let saved = Saved { id, step, path };
        self.saved = Some(saved.clone());
        Ok(saved)
    }

    /// Stopped on request: a checkpoint of this step (unless it was just written), KILLED.
    fn stop(mut self) -> Result<Trained> {
        self.bar.finish_and_clear();
        let saved = match &self.saved {
            Some(s) if s.step == self.state.step => s.clone(),
            _ => self.save()?,
        };
        tracing::info!(
            step = self.state.step,
            checkpoint = saved.id,
            "stopped on request"
        );
        Ok(self.trained(RunStatus::Killed, saved))
    }

    /// Every planned step done; the last step wrote a checkpoint.
    fn finish(self) -> Result<Trained> {
        self.bar.finish_and_clear();
        let saved = self
            .saved
            .clone()
            .context("the loop ended without a checkpoint")?;
        Ok(self.trained(RunStatus::Finished, saved))
    }

    /// With `job.rank_weights`: this rank's variables to `DIR/rank-R.safetensors`.
    fn write_rank_weights(&self) -> Result<()> {
        let Some(dir) = &self.job.rank_weights else {
            return Ok(());
        };
        let rank = self.job.dist.as_ref().map_or(0, |d| d.rank());
        let name = format!("rank-{rank}.safetensors");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        albef_dataset::write_atomic_with(&dir.join(name), |tmp| weights::save(&self.vs, tmp))
    }

    fn trained(self, status: RunStatus, saved: Saved) -> Trained {
        Trained {
            run: self.run_id,
            status,
            step: self.state.step,
            checkpoint: saved.id,
            checkpoint_path: saved.path,
            metrics: self.state.metrics,
        }
    }
}

/// Opens this rank's share of the training data (logging its loss weights when
/// score-weighted) and, on the rank that reports, the held-out data when the job names it.
fn open_data(job: &TrainJob, tracking: Option<&Tracking>) -> Result<(Loader, Option<Loader>)> {
    let open = |dir: &Path, config: data::LoaderConfig, what: &str| {
        Loader::open(dir, config)
            .with_context(|| format!("opening the {what} data {}", dir.display()))
    };
    let config = |mode| loader_config(&job.config, &job.tokenizer, job.workers, mode);
    let train_config = data::LoaderConfig {
        rank: job.dist.as_ref().map_or(0, |d| d.rank()),
        world_size: world_size(job),
        ..config(data::Mode::Train)
    };
    let loader = open(&job.data_dir, train_config, "training")?;
    let Some(tracking) = tracking else {
        return Ok((loader, None));
    };
    if let Some(w) = loader.loss_weight() {
        tracing::info!(
            rows = loader.len(),
            lo = w.lo,
            hi = w.hi,
            floor = w.floor,
            "score-weighted training: weights rise from the floor at score lo to 1 at score hi"
        );
        tracking.log_params(&[
            ("data.score_weight_lo".into(), w.lo.to_string()),
            ("data.score_weight_hi".into(), w.hi.to_string()),
            ("data.rows".into(), loader.index().total().to_string()),
        ])?;
    }
    let eval_loader = match &job.eval_dir {
        Some(dir) => Some(open(dir, config(data::Mode::Eval), "evaluation")?),
        None => None,
    };
    Ok((loader, eval_loader))
}

/// AdamW with the recipe's betas and weight decay, and the learning-rate scales of `temp` and
/// of the image encoder.
fn optimizer(vs: &nn::VarStore, t: &TrainConfig) -> Result<AdamW> {
    let options = AdamWOptions {
        betas: t.betas,
        eps: ADAM_EPS,
        weight_decay: t.weight_decay,
    };
    let mut optimizer = AdamW::new(vs, options)?;
    optimizer
        .set_lr_scale(model::albef::TEMP, t.temp_lr_scale)
        .context("train.temp_lr_scale")?;
    for module in ["visual_encoder.", "vision_proj."] {
        optimizer
            .set_lr_scale_prefix(module, t.vision_lr_scale)
            .context("train.vision_lr_scale")?;
    }
    Ok(optimizer)
}

/// Resume: the checkpoint's weights and optimiser state, and its trainer state with the run
/// and (when `--steps` changes it) the planned step count updated.
fn resumed_state(
    loaded: Loaded,
    job: &TrainJob,
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    run: i64,
) -> Result<TrainerState> {
    let mut state = loaded.restore(vs, optimizer)?;
    let ranks = world_size(job);
    if state.world_size != ranks {
        bail!(
            "the checkpoint was trained by {} process(es) and this launch has {ranks}: resume \
             with {} (each rank's data position is its own shard's, which another world size \
             splits differently)",
            state.world_size,
            state.world_size
        );
    }
    if state.accumulate != job.accumulate || state.clip_grad != job.clip_grad {
        bail!(
            "the checkpoint was trained with accumulate {} and clip {:?}; resume with the same",
            state.accumulate,
            state.clip_grad
        );
    }
    if let Some(steps) = job.steps {
        if steps != state.total_steps {
            tracing::warn!(
                from = state.total_steps,
                to = steps,
                "changing the planned steps re-plans the cosine decay"
            );
            state.total_steps = steps;
            state.lr.total_steps = steps;
        }
    }
    state.run = run;
    Ok(state)
}

/// A fresh run: the text encoder from `model.text.init` when given, and step 0 of the planned
/// steps (`--steps`, else `train.max_steps`, else `train.epochs` passes).
fn fresh_state(
    job: &TrainJob,
    vs: &nn::VarStore,
    model: &Albef,
    steps_per_epoch: i64,
    run: i64,
) -> Result<TrainerState> {
    let config = &job.config;
    let t = &config.train;
    if let Some(path) = &config.model.text.init {
        let report = weights::init_text_from_hf_bert(vs, Path::new(path))
            .with_context(|| format!("model.text.init {path}"))?;
        if report.loaded == 0 || !report.mismatched.is_empty() {
            bail!("model.text.init does not fit model.text: {report}");
        }
        tracing::info!("text encoder initialised from {report}");
        model.copy_params();
    }
    if let Some(path) = &job.init {
        // The whole model, momentum encoders and queues included: continued pretraining goes on
        // from where the checkpoint's run was.
        checkpoint::load_model(vs, path).with_context(|| {
            format!(
                "cannot start from {}: its weights do not fit the model config",
                path.display()
            )
        })?;
        tracing::info!("weights initialised from {}", path.display());
    }
    let total_steps = job.steps.filter(|&s| s > 0).unwrap_or(if t.max_steps > 0 {
        t.max_steps
    } else {
        t.epochs * steps_per_epoch
    });
    Ok(TrainerState {
        run,
        dataset_version: job.dataset_version,
        step: 0,
        total_steps,
        steps_per_epoch,
        accumulate: job.accumulate,
        clip_grad: job.clip_grad,
        world_size: world_size(job),
        seed: t.seed,
        data: DataPosition::default(),
        lr: LrSchedule::new(t, total_steps),
        alpha: AlphaRamp::new(&config.model, t, steps_per_epoch),
        config: config.clone(),
        metrics: BTreeMap::new(),
    })
}

/// The processes training together: 1 alone.
fn world_size(job: &TrainJob) -> usize {
    job.dist.as_ref().map_or(1, |d| d.world_size())
}

/// Pairs per optimiser step over all ranks.
fn global_batch(job: &TrainJob) -> i64 {
    job.config.train.batch_size * job.accumulate * world_size(job) as i64
}

/// Logs the world and the global batch, and records them as params of the run.
fn log_world(job: &TrainJob, tracking: Option<&Tracking>) -> Result<()> {
    let (world, batch) = (world_size(job), global_batch(job));
    tracing::info!(
        world_size = world,
        batch_per_process = job.config.train.batch_size,
        global_batch = batch,
        "pairs per optimiser step: {batch}"
    );
    match tracking {
        Some(tracking) => tracking.log_params(&[
            ("dist.world_size".into(), world.to_string()),
            ("dist.global_batch".into(), batch.to_string()),
        ]),
        None => Ok(()),
    }
}

/// The next micro-batch, moving to the next epoch when this one is done; `pos` is advanced to
/// the batch after it.
fn next_batch(loader: &Loader, batches: &mut Epoch, pos: &mut DataPosition) -> Result<data::Batch> {
    loop {
        match batches.next() {
            Some(batch) => {
                let batch = batch.with_context(|| {
                    format!("reading batch {} of epoch {}", pos.batch, pos.epoch)
                })?;
                pos.batch += 1;
                return Ok(batch);
            }
            None => {
                if pos.batch == 0 {
                    bail!("epoch {} of the training data has no batches", pos.epoch);
                }
                *pos = DataPosition {
                    epoch: pos.epoch + 1,
                    batch: 0,
                };
                *batches = loader.epoch(pos.epoch as u64, 0);
            }
        }
    }
}

fn progress_bar(enabled: bool, step: i64, total: i64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(step as u64);
    bar
}
