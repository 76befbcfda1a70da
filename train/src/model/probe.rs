//! One-off runs of the model for the `albef model` commands: the three losses of one training
//! forward on given weights and a given batch (for parity checks against other
//! implementations), and the median time of a full training step (forward, backward, AdamW).
use super::albef::{Albef, DECAY_GROUP, NO_DECAY_GROUP};
use super::builder::PrecisionRule;
use super::losses::{Batch, MlmInputs, Negatives};
use super::weights;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The losses as plain numbers.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct LossValues {
    pub loss_itc: f64,
    pub loss_itm: f64,
    pub loss_mlm: f64,
}

/// The model commands' build (see [`super::build`]): the config's precision, random init from
/// `seed`, then `weights` (an official-layout safetensors state dict, every key required) when
/// given.
pub fn build(
    config: &Config,
    device: Device,
    seed: i64,
    weights: Option<&Path>,
) -> Result<(nn::VarStore, Albef)> {
    super::build(config, device, PrecisionRule::Config, Some(seed), weights)
}

/// One training forward (momentum update and enqueue included, dropout off) on the batch file
/// `batch`: `image` f32 [B,3,H,W], `input_ids`, `attention_mask`, `mlm_input_ids`,
/// `mlm_labels` i64 [B,L], `neg_image_idx`, `neg_text_idx` i64 [B], `alpha` f32 scalar, and
/// optionally `idx` i64 [B], the pairs' pictures (without it every pair is its own picture).
pub fn losses_on_batch(model: &Albef, batch_path: &Path, device: Device) -> Result<LossValues> {
    let file = weights::read(batch_path)?;
    let get = |name: &str, kind: Kind| -> Result<Tensor> {
        let t = file
            .get(name)
            .with_context(|| format!("batch {} has no tensor {name:?}", batch_path.display()))?;
        if t.kind() != kind {
            bail!(
                "batch {}: {name} is {:?}, expected {kind:?}",
                batch_path.display(),
                t.kind()
            );
        }
        Ok(t.to_device(device))
    };
    let batch = Batch {
        image: get("image", Kind::Float)?,
        input_ids: get("input_ids", Kind::Int64)?,
        attention_mask: get("attention_mask", Kind::Int64)?,
    };
    let mlm = MlmInputs {
        input_ids: get("mlm_input_ids", Kind::Int64)?,
        labels: get("mlm_labels", Kind::Int64)?,
    };
    let negatives = Negatives {
        image_idx: get("neg_image_idx", Kind::Int64)?,
        text_idx: get("neg_text_idx", Kind::Int64)?,
    };
    let idx = match file.contains_key("idx") {
        true => Some(get("idx", Kind::Int64)?),
        false => None,
    };
    let alpha = get("alpha", Kind::Float)?.double_value(&[]);
    let losses =
        tch::no_grad(|| model.losses_given(&batch, idx.as_ref(), alpha, &mlm, &negatives, false))?;
    Ok(LossValues {
        loss_itc: losses.itc.double_value(&[]),
        loss_itm: losses.itm.double_value(&[]),
        loss_mlm: losses.mlm.double_value(&[]),
    })
}

/// A random batch of the configured shapes: normal images, captions of random length
/// ([CLS] words, then [PAD]).
pub fn random_batch(config: &Config, batch_size: i64, device: Device) -> Batch {
    let m = &config.model;
    let len = config.train.max_tokens;
    let res = m.vision.image_res;
    let image = Tensor::randn([batch_size, 3, res, res], (Kind::Float, device));
    // Ordinary words: above the special tokens ([PAD], [CLS], [MASK], ...) of the vocabulary.
    let words = Tensor::randint_low(
        (m.text.vocab_size / 2).min(1000),
        m.text.vocab_size,
        [batch_size, len],
        (Kind::Int64, device),
    );
    let lengths = Tensor::randint_low(len / 2, len + 1, [batch_size, 1], (Kind::Int64, device));
    let pos = Tensor::arange(len, (Kind::Int64, device)).unsqueeze(0);
    let attention_mask = pos.lt_tensor(&lengths).to_kind(Kind::Int64);
    let input_ids = (words * &attention_mask).index_fill(
        1,
        &Tensor::from_slice(&[0i64]).to_device(device),
        m.text.cls_token_id,
    );
    Batch {
        image,
        input_ids,
        attention_mask,
    }
}

/// What `bench` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub median_step_ms: f64,
    pub steps: usize,
    pub batch_size: i64,
    pub threads: i32,
    pub step_ms: Vec<f64>,
}

/// Times `steps` training steps (forward with dropout, backward, AdamW with the recipe's
/// weight-decay groups) after `warmup` untimed ones, with `threads` intra-op threads (0:
/// libtorch's default).
pub fn bench(
    config: &Config,
    device: Device,
    batch_size: i64,
    warmup: usize,
    steps: usize,
    threads: i32,
) -> Result<BenchReport> {
    if steps == 0 {
        bail!("bench needs at least one timed step");
    }
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    let (vs, model) = build(config, device, config.train.seed as i64, None)?;
    let t = &config.train;
    let mut opt = nn::AdamW {
        beta1: t.betas[0],
        beta2: t.betas[1],
        wd: t.weight_decay,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(&vs, t.lr)?;
    opt.set_weight_decay_group(DECAY_GROUP, t.weight_decay);
    opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0);
    let batch = random_batch(config, batch_size, device);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        let losses = model.losses(&batch, config.model.alpha, true)?;
        opt.backward_step(&losses.total());
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(BenchReport {
        median_step_ms: median(&times),
        steps,
        batch_size,
        threads: tch::get_num_threads(),
        step_ms: times,
    })
}

/// The median of a non-empty list.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
