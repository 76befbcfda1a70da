//! The model and training configuration as plain data (TOML), shared by `albef model`, `albef
//! train` and the filter stage, so that one file fixes the shapes and the recipe of a run.
//! Field names follow the official `configs/Pretrain.yaml` and `configs/config_bert.json`
//! where they exist (salesforce/ALBEF b9727e4).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One config file: `[model]` (with `[model.vision]` and `[model.text]`) and `[train]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

/// The ALBEF pretraining model: encoders, projections, momentum copies and queues.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Width of the shared image-text space (`vision_proj`, `text_proj`, the queues).
    pub embed_dim: i64,
    /// Number of momentum features kept per modality; a multiple of the global batch.
    pub queue_size: i64,
    /// EMA coefficient of the momentum encoders: `p_m = momentum * p_m + (1 - momentum) * p`.
    pub momentum: f64,
    /// Initial value of the learnable temperature (clamped to [0.001, 0.5] every step).
    pub temp: f64,
    /// Weight of the momentum-distillation targets once the warm-up ramp is over.
    pub alpha: f64,
    /// Probability that a token is selected for masked language modelling.
    pub mlm_probability: f64,
}

/// The image encoder: a ViT with pre-norm blocks, timm/DeiT layout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Input resolution in pixels (square images).
    pub image_res: i64,
    /// Side of a square patch in pixels.
    pub patch_size: i64,
    /// Token width (768 for ViT-B).
    pub width: i64,
    /// Number of transformer blocks.
    pub depth: i64,
    /// Number of attention heads.
    pub heads: i64,
    /// Hidden width of the MLP as a multiple of `width`.
    pub mlp_ratio: f64,
    /// LayerNorm epsilon (1e-6 in ALBEF's ViT).
    #[serde(default = "default_vit_eps")]
    pub layer_norm_eps: f64,
    /// Initial position embedding when training from scratch (it is learned either way).
    #[serde(default)]
    pub pos_embed_init: PosEmbedInit,
}

/// How `visual_encoder.pos_embed` starts before training.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PosEmbedInit {
    /// normal(0, 0.02), as timm/DeiT (the official model then loads DeiT's learned one).
    #[default]
    Normal,
    /// Fixed 2-D sine-cosine features of the patch row and column (MAE, MoCo v3), CLS zero:
    /// a from-scratch ViT knows where each patch is from the first step instead of learning
    /// it. Needs a width divisible by 4.
    Sincos,
}

/// The BERT text encoder; layers from `fusion_layer` on add cross-attention to the image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Hidden width (768 for BERT-base).
    pub hidden_size: i64,
    /// Total number of layers (text layers + fusion layers).
    pub num_layers: i64,
    /// Index of the first layer with cross-attention; layers before it form the text encoder.
    pub fusion_layer: i64,
    /// Number of attention heads.
    pub heads: i64,
    /// Hidden width of the feed-forward block.
    pub intermediate_size: i64,
    /// WordPiece vocabulary size (30522 for bert-base-uncased).
    pub vocab_size: i64,
    /// Number of learned position embeddings.
    pub max_position_embeddings: i64,
    /// Number of token types (2 in BERT; ALBEF always uses type 0).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon (1e-12 in BERT).
    #[serde(default = "default_bert_eps")]
    pub layer_norm_eps: f64,
    /// Dropout after embeddings, attention outputs and FFN outputs (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    /// Token id of [PAD]; never masked, and the padding in batches.
    #[serde(default)]
    pub pad_token_id: i64,
    /// Token id of [CLS]; never masked.
    #[serde(default = "default_cls")]
    pub cls_token_id: i64,
    /// Token id of [MASK].
    #[serde(default = "default_mask")]
    pub mask_token_id: i64,
    /// A Hugging Face BERT checkpoint (safetensors) that a new run's text encoder starts from,
    /// as the official code starts from bert-base-uncased; `make setup` unpacks MiniLM-L6-H384
    /// to `assets/model.safetensors` (hidden 384, 12 heads, intermediate 1536, up to 6
    /// layers; layers past `num_layers` are left out). Cross-attention starts random. A
    /// relative path is taken from the working folder; a resumed run loads its checkpoint.
    #[serde(default)]
    pub init: Option<String>,
}

/// The training recipe (AdamW + warm-up + cosine, augmentation, alpha ramp).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Batch size per process (the global batch is this times the number of processes).
    pub batch_size: i64,
    /// Captions are tokenised to at most this many tokens ([CLS] and [SEP] included).
    pub max_tokens: i64,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// AdamW weight decay; biases and other 1-D parameters get none.
    pub weight_decay: f64,
    /// AdamW betas.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Steps of linear warm-up from `warmup_lr` to `lr`.
    pub warmup_steps: i64,
    /// Learning rate at the first step of the warm-up.
    pub warmup_lr: f64,
    /// The temperature's learning rate as a multiple of the scheduled one (1: as every other
    /// parameter, the official recipe; 0: a fixed temperature). AdamW moves `temp` by about the
    /// learning rate each step whatever its gradient, so the peak rates of short recipes
    /// would drive it to its 0.001 floor within a few hundred steps.
    #[serde(default = "default_one")]
    pub temp_lr_scale: f64,
    /// The image encoder's learning rate (`visual_encoder` and `vision_proj`) as a multiple of
    /// the scheduled one (1: the official recipe, one rate for every module). From scratch on
    /// the synthetic corpus, the ViT trained on place and shape labels alone learns them faster
    /// at 3e-4 than at 1e-3, while the whole model learns far more slowly at 3e-4 than at 1e-3:
    /// 0.3 at a peak of 1e-3 gives each side its rate (docs/research-log.md, "48 px pictures
    /// and the image encoder's rate").
    #[serde(default = "default_one")]
    pub vision_lr_scale: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Number of passes over the dataset.
    pub epochs: i64,
    /// Stop after this many optimiser steps, whatever `epochs` says (0: no limit).
    #[serde(default)]
    pub max_steps: i64,
    /// Epochs over which alpha ramps linearly from 0 to `model.alpha` (1 in ALBEF, 2 in LAVIS).
    pub alpha_warmup_epochs: f64,
    /// Seed of every random choice: init, data order, augmentation, masking, hard negatives.
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// bf16 autocast of the matmuls (similarities, softmaxes and norms stay fp32): on CUDA, and
    /// on CPUs with bf16 instructions (avx512_bf16, amx_bf16), where oneDNN runs them several
    /// times faster than fp32; on other CPUs it is slower.
    #[serde(default)]
    pub amp: bool,
    /// Intra-op CPU threads (0: libtorch's default).
    #[serde(default)]
    pub threads: i32,
    /// Random horizontal flip in augmentation.
    pub flip: bool,
    /// Area range of RandomResizedCrop, as fractions of the image.
    pub crop_scale: [f64; 2],
    /// RandAugment: number of ops per image and magnitude (0 ops: off).
    pub randaugment_n: i64,
    /// RandAugment magnitude (0-10).
    pub randaugment_m: i64,
    /// Per-channel normalisation mean (CLIP's).
    pub mean: [f64; 3],
    /// Per-channel normalisation std (CLIP's).
    pub std: [f64; 3],
    /// Save a checkpoint every this many steps (0: only at the end of each epoch).
    #[serde(default)]
    pub checkpoint_every: i64,
    /// Score-weighted training, the alternative to dropping pairs: train on every row the
    /// filter scored (kept and `filtered_out`) and weight each pair's losses by its `score`,
    /// mapped to [`score_weight_floor`, 1] between the dataset's 5th and 95th percentile (see
    /// `data::LossWeight`). Needs a dataset version made by `albef filter`.
    #[serde(default)]
    pub score_weights: bool,
    /// The weight of the lowest-scored pairs in score-weighted training, in [0, 1].
    #[serde(default = "default_weight_floor")]
    pub score_weight_floor: f64,
}

fn default_vit_eps() -> f64 {
    1e-6
}
fn default_bert_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> i64 {
    2
}
fn default_dropout() -> f64 {
    0.1
}
fn default_cls() -> i64 {
    101
}
fn default_mask() -> i64 {
    103
}
fn default_one() -> f64 {
    1.0
}
fn default_weight_floor() -> f64 {
    0.1
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates a TOML config.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between fields that the types cannot express.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let v = &m.vision;
        let t = &m.text;
        if v.image_res % v.patch_size != 0 {
            bail!(
                "model.vision.image_res {} is not a multiple of patch_size {}",
                v.image_res,
                v.patch_size
            );
        }
        if v.pos_embed_init == PosEmbedInit::Sincos && v.width % 4 != 0 {
            bail!(
                "model.vision.pos_embed_init = \"sincos\" needs a width divisible by 4, got {}",
                v.width
            );
        }
        if v.width % v.heads != 0 {
            bail!(
                "model.vision.width {} is not a multiple of heads {}",
                v.width,
                v.heads
            );
        }
        if t.hidden_size % t.heads != 0 {
            bail!(
                "model.text.hidden_size {} is not a multiple of heads {}",
                t.hidden_size,
                t.heads
            );
        }
        if !(0 < t.fusion_layer && t.fusion_layer < t.num_layers) {
            bail!(
                "model.text.fusion_layer {} must lie in 1..{}",
                t.fusion_layer,
                t.num_layers
            );
        }
        if self.train.max_tokens > t.max_position_embeddings {
            bail!(
                "train.max_tokens {} exceeds model.text.max_position_embeddings {}",
                self.train.max_tokens,
                t.max_position_embeddings
            );
        }
        check_queue(m.queue_size, self.train.batch_size)?;
        if !(0.0..=1.0).contains(&self.train.score_weight_floor) {
            bail!(
                "train.score_weight_floor {} must lie in [0, 1]",
                self.train.score_weight_floor
            );
        }
        Ok(())
    }
}

/// The queue is written a whole global batch at a time, so its size must be a multiple of it
/// (official code: an assert in `_dequeue_and_enqueue`, model_pretrain.py L243).
pub fn check_queue(queue_size: i64, global_batch: i64) -> Result<()> {
    if global_batch <= 0 || queue_size <= 0 || queue_size % global_batch != 0 {
        bail!(
            "queue_size {queue_size} is not a multiple of the global batch {global_batch}: \
             choose a queue size divisible by batch_size x processes"
        );
    }
    Ok(())
}

/// Parses a device name: `cpu`, `cuda` (the first GPU) or `cuda:N`. A CUDA device is checked
/// to exist (loading libtorch's CUDA library on first use, see [`crate::cuda`]).
pub fn parse_device(name: &str) -> Result<tch::Device> {
    let index = match name {
        "cpu" => return Ok(tch::Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device {other:?}: expected cpu, cuda or cuda:N"),
        },
    };
    crate::cuda::ensure_device(index)?;
    Ok(tch::Device::Cuda(index))
}
