//! The pretraining loop: batches from the loader, the three ALBEF losses, gradient
//! accumulation, optional clipping, AdamW at the scheduled learning rate, metrics every step,
//! periodic checkpoints and held-out evaluation, and the three ways a run ends (done, stopped
//! by Ctrl-C with a checkpoint, or a non-finite loss that keeps the last good checkpoint).
//!
//! Every random draw of a step (MLM masking, hard negatives, dropout) comes from libtorch's
//! generator re-seeded from (seed, step, micro-batch), and the loader's draws from (seed,
//! epoch, position); so the checkpointed step and data position are the whole random state,
//! and a resumed run computes the same losses as an uninterrupted one.
use super::adamw::{AdamW, AdamWOptions};
use super::schedule::{AlphaRamp, LrSchedule};
use super::tracking::Tracking;
use crate::checkpoint::{self, DataPosition, Loaded, TrainerState};
use crate::config::{check_queue, Config};
use crate::data::{self, Epoch, Loader, LoaderConfig};
use crate::eval;
use crate::model::{self, probe, weights};
use albef_dataset::seed::derive_seed;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tch::Device;

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
    /// Where this run's checkpoint folders go.
    pub checkpoint_dir: PathBuf,
    /// Continue from this checkpoint.
    pub resume: Option<Loaded>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// All steps done.
    Finished,
    /// Stopped on request (Ctrl-C) after writing a checkpoint.
    Stopped,
}

/// The result of a run that did not fail.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ending: Ending,
    /// Optimiser steps completed.
    pub step: i64,
    /// The last checkpoint: registry id and model file.
    pub checkpoint: (i64, PathBuf),
    /// Metrics of the last step (and the last evaluation).
    pub metrics: BTreeMap<String, f64>,
}

/// The newest good checkpoint, named in the error of a run that fails.
#[derive(Clone, Debug, Default)]
struct LastGood(Option<(i64, i64, PathBuf)>);

impl LastGood {
    fn describe(&self) -> String {
        match &self.0 {
            Some((id, step, path)) => format!(
                "the last good checkpoint is {id} (step {step}, {})",
                path.display()
            ),
            None => "no checkpoint was written".to_string(),
        }
    }
}

/// The loader settings of a config.
pub fn loader_config(
    config: &Config,
    tokenizer: &Path,
    workers: usize,
    mode: data::Mode,
) -> LoaderConfig {
    let t = &config.train;
    LoaderConfig {
        tokenizer: tokenizer.to_path_buf(),
        image_res: config.model.vision.image_res as usize,
        batch_size: t.batch_size as usize,
        max_tokens: t.max_tokens as usize,
        hflip: t.flip,
        randaugment: t.randaugment_n > 0,
        crop_scale: (t.crop_scale[0], t.crop_scale[1]),
        workers: workers.max(1),
        seed: t.seed,
        mode,
        // Evaluation data is never weighted.
        score_weights: (t.score_weights && mode == data::Mode::Train)
            .then_some(t.score_weight_floor as f32),
        ..LoaderConfig::default()
    }
}

/// Trains until the planned step count, a stop request (`stop` set, e.g. by Ctrl-C: a
/// checkpoint is written first) or an error. A non-finite loss or gradient is an error that
/// names the step and the last good checkpoint; nothing is saved after it.
pub fn train(job: TrainJob, tracking: &Tracking, stop: &AtomicBool) -> Result<Outcome> {
    let config = &job.config;
    let t = &config.train;
    if job.accumulate < 1 {
        bail!("--accumulate must be at least 1, got {}", job.accumulate);
    }
    if t.threads > 0 {
        tch::set_num_threads(t.threads);
    }
    // The queue takes a whole global batch at a time: check before any work (one process).
    check_queue(config.model.queue_size, t.batch_size)?;
    let loader = Loader::open(
        &job.data_dir,
        loader_config(config, &job.tokenizer, job.workers, data::Mode::Train),
    )
    .with_context(|| format!("opening the training data {}", job.data_dir.display()))?;
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
        Some(dir) => Some(
            Loader::open(
                dir,
                loader_config(config, &job.tokenizer, job.workers, data::Mode::Eval),
            )
            .with_context(|| format!("opening the evaluation data {}", dir.display()))?,
        ),
        None => None,
    };
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
    let (vs, model) = probe::build(config, job.device, t.seed as i64, None)?;
    let options = AdamWOptions {
        betas: t.betas,
        eps: ADAM_EPS,
        weight_decay: t.weight_decay,
    };
    let mut optimizer = AdamW::new(&vs, options)?;
    optimizer
        .set_lr_scale(model::albef::TEMP, t.temp_lr_scale)
        .context("train.temp_lr_scale")?;
    for module in ["visual_encoder.", "vision_proj."] {
        optimizer
            .set_lr_scale_prefix(module, t.vision_lr_scale)
            .context("train.vision_lr_scale")?;
    }

    let mut state = match job.resume {
        Some(loaded) => {
            let mut state = loaded.restore(&vs, &mut optimizer)?;
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
            state.run = tracking.run;
            state
        }
        None => {
            if let Some(path) = &config.model.text.init {
                let report = weights::init_text_from_hf_bert(&vs, Path::new(path))
                    .with_context(|| format!("model.text.init {path}"))?;
                if report.loaded == 0 || !report.mismatched.is_empty() {
                    bail!("model.text.init does not fit model.text: {report}");
                }
                tracing::info!("text encoder initialised from {report}");
                model.copy_params();
            }
            let total_steps = job.steps.filter(|&s| s > 0).unwrap_or(if t.max_steps > 0 {
                t.max_steps
            } else {
                t.epochs * steps_per_epoch
            });
            TrainerState {
                run: tracking.run,
                dataset_version: job.dataset_version,
                step: 0,
                total_steps,
                steps_per_epoch,
                accumulate: job.accumulate,
                clip_grad: job.clip_grad,
                seed: t.seed,
                data: DataPosition::default(),
                lr: LrSchedule::new(t, total_steps),
                alpha: AlphaRamp::new(&config.model, t, steps_per_epoch),
                config: config.clone(),
                metrics: BTreeMap::new(),
            }
        }
    };
    if state.step >= state.total_steps {
        bail!(
            "the run is already at step {} of {}: give more --steps to continue",
            state.step,
            state.total_steps
        );
    }

    let bar = progress_bar(job.progress, state.step, state.total_steps);
    let mut batches = loader.epoch(state.data.epoch as u64, state.data.batch as usize);
    let mut last_good = LastGood::default();
    let mut last_saved_step = -1;
    let images_per_step = (t.batch_size * job.accumulate) as f64;
    let log_every = (state.total_steps / 20).clamp(1, 50);
    let save = |optimizer: &AdamW,
                state: &TrainerState,
                last_good: &mut LastGood|
     -> Result<(i64, PathBuf)> {
        let dir = checkpoint::step_dir(&job.checkpoint_dir, state.step);
        let path = checkpoint::save(&dir, &vs, optimizer, state)?;
        let metrics: Vec<(String, f64)> =
            state.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let id = tracking.register_checkpoint(&path, state.step, &metrics)?;
        last_good.0 = Some((id, state.step, path.clone()));
        Ok((id, path))
    };
    let mut saved: Option<(i64, PathBuf)> = None;

    while state.step < state.total_steps {
        if stop.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            let ckpt = match (&saved, last_saved_step == state.step) {
                (Some(s), true) => s.clone(),
                _ => save(&optimizer, &state, &mut last_good)?,
            };
            tracing::info!(step = state.step, checkpoint = ckpt.0, "stopped on request");
            return Ok(Outcome {
                ending: Ending::Stopped,
                step: state.step,
                checkpoint: ckpt,
                metrics: state.metrics,
            });
        }
        let started = Instant::now();
        let step = state.step;
        let lr = state.lr.lr_at(step);
        let alpha = state.alpha.alpha_at(step);
        optimizer.zero_grad();
        let mut waited = Duration::ZERO;
        let mut sums = [0f64; 4];
        for micro in 0..job.accumulate {
            let fetch = Instant::now();
            let batch = next_batch(&loader, &mut batches, &mut state.data)?;
            waited += fetch.elapsed();
            let idx = batch.idx.to_device(job.device);
            let weight = batch.weight.as_ref().map(|w| w.to_device(job.device));
            let batch = model::Batch {
                image: batch.image.to_device(job.device),
                input_ids: batch.input_ids.to_device(job.device),
                attention_mask: batch.attention_mask.to_device(job.device),
            };
            tch::manual_seed(
                derive_seed(&[state.seed, step as u64, micro as u64, 0xa1be_f5ee]) as i64,
            );
            let losses = model.losses_with_idx(&batch, &idx, weight.as_ref(), alpha, true)?;
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
                bar.abandon();
                bail!(
                    "{name} is {v} at step {} (micro-batch {micro}): stopping without saving; {}",
                    step + 1,
                    last_good.describe()
                );
            }
            (total / job.accumulate as f64).backward();
            for (s, v) in sums.iter_mut().zip(values) {
                *s += v / job.accumulate as f64;
            }
        }
        let grad_norm = optimizer.clip_grad_norm(job.clip_grad);
        if !grad_norm.is_finite() {
            bar.abandon();
            bail!(
                "the gradient norm is {grad_norm} at step {}: stopping without saving; {}",
                step + 1,
                last_good.describe()
            );
        }
        optimizer.step(lr);
        state.step += 1;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let temp = model.temp.double_value(&[]);
        let metrics = [
            ("loss_itc", sums[0]),
            ("loss_itm", sums[1]),
            ("loss_mlm", sums[2]),
            ("loss", sums[3]),
            ("lr", lr),
            ("alpha", alpha),
            ("temp", temp),
            ("grad_norm", grad_norm),
            ("images_per_s", images_per_step / elapsed),
            ("data_wait_pct", 100.0 * waited.as_secs_f64() / elapsed),
        ];
        for (k, v) in metrics {
            tracking.log(k, state.step, v)?;
            state.metrics.insert(k.to_string(), v);
        }
        bar.set_position(state.step as u64);
        bar.set_message(format!(
            "loss {:.3} (itc {:.3} itm {:.3} mlm {:.3}) {:.1} img/s",
            sums[3],
            sums[0],
            sums[1],
            sums[2],
            images_per_step / elapsed
        ));
        if state.step % log_every == 0 || state.step == state.total_steps {
            tracing::info!(
                step = state.step,
                total = state.total_steps,
                loss = sums[3],
                loss_itc = sums[0],
                loss_itm = sums[1],
                loss_mlm = sums[2],
                images_per_s = images_per_step / elapsed,
                "step {}",
                state.step
            );
        }
        let last = state.step == state.total_steps;
        if let Some(eval_loader) = &eval_loader {
            if last || (job.eval_every > 0 && state.step % job.eval_every == 0) {
                let recall = eval::evaluate(&model, eval_loader, job.device, job.k_test)
                    .context("evaluating on the held-out data")?;
                for (k, v) in recall.entries() {
                    tracking.log(k, state.step, v)?;
                    state.metrics.insert(k.to_string(), v);
                }
                tracing::info!(
                    step = state.step,
                    r1_t2i = recall.r1_t2i,
                    r1_i2t = recall.r1_i2t,
                    "held-out retrieval"
                );
            }
        }
        if last || (job.checkpoint_every > 0 && state.step % job.checkpoint_every == 0) {
            saved = Some(save(&optimizer, &state, &mut last_good)?);
            last_saved_step = state.step;
        }
    }
    bar.finish_and_clear();
    let checkpoint = saved.context("the loop ended without a checkpoint")?;
    Ok(Outcome {
        ending: Ending::Finished,
        step: state.step,
        checkpoint,
        metrics: state.metrics,
    })
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
