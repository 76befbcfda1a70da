//! The ALBEF pretraining model: student encoders and heads, their momentum (EMA) copies, the
//! feature queues and the temperature, all in one `VarStore` whose names are the official
//! checkpoint keys, and the passes callers run through it (image and text features of the
//! student and momentum encoders, the fusion pass, the ITM and MLM heads). The losses that use
//! them live in `losses.rs`; evaluation and the filter call the same passes.
//! Reference: salesforce/ALBEF models/model_pretrain.py (`ALBEF.__init__` L34-84,
//! `copy_params` L219-223, `_momentum_update` L227-230, `_dequeue_and_enqueue` L235-250).
use super::bert::{BertForMaskedLm, Mode};
use super::layers::{Linear, Precision};
use super::vit::VisionTransformer;
use crate::config::{check_queue, ModelConfig};
use anyhow::{bail, Result};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use tch::{nn, Kind, Tensor};

/// The student modules and their momentum copies, in the official pairing (`model_pairs`).
pub const MOMENTUM_PAIRS: [(&str, &str); 4] = [
    ("visual_encoder", "visual_encoder_m"),
    ("vision_proj", "vision_proj_m"),
    ("text_encoder", "text_encoder_m"),
    ("text_proj", "text_proj_m"),
];

/// The learnable temperature of ITC (a 0-d parameter).
pub const TEMP: &str = "temp";

/// The queue of pictures, a buffer that official pretraining checkpoints lack.
pub const IDX_QUEUE: &str = "idx_queue";

/// The `idx` of a picture that nothing is known about (official: the initial `idx_queue`): it
/// never equals a batch's `idx`, which is non-negative.
pub const UNKNOWN_IMAGE: i64 = -100;

/// Parameter groups of the optimiser: AdamW decays group 0 and not group 1.
pub const DECAY_GROUP: usize = 0;
pub const NO_DECAY_GROUP: usize = 1;

/// How the queues see the batches of the other ranks when several processes train one model:
/// every rank's tensor concatenated along dim 0 in rank order, without gradient (the official
/// `concat_all_gather`, model_pretrain.py L280-290). The trainer's process group implements it.
pub trait Gather: Send + Sync + fmt::Debug {
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor>;
}

/// The pretraining model. Build it with [`Albef::new`] on a fresh `VarStore`.
#[derive(Debug)]
pub struct Albef {
    pub cfg: ModelConfig,
    pub visual_encoder: VisionTransformer,
    pub vision_proj: Linear,
    pub text_encoder: BertForMaskedLm,
    pub text_proj: Linear,
    pub itm_head: Linear,
    pub visual_encoder_m: VisionTransformer,
    pub vision_proj_m: Linear,
    pub text_encoder_m: BertForMaskedLm,
    pub text_proj_m: Linear,
    /// Learnable temperature (a 0-d tensor), clamped to [0.001, 0.5] before every step.
    pub temp: Tensor,
    /// [embed_dim, queue_size] momentum image features, L2-normalised along dim 0.
    pub image_queue: Tensor,
    /// [embed_dim, queue_size] momentum text features.
    pub text_queue: Tensor,
    /// [1, queue_size] i64: the picture (`idx`) of each queue column, [`UNKNOWN_IMAGE`] where
    /// it is not known. Not in the official pretraining checkpoint (model_retrieval.py L53 has
    /// it); a file without it leaves it unknown.
    pub idx_queue: Tensor,
    /// [1] i64: the next queue column to write.
    pub queue_ptr: Tensor,
    /// (student, momentum) float parameters, updated by [`Albef::momentum_update`].
    pairs: Vec<(Tensor, Tensor)>,
    /// The other ranks' momentum features for the queues (`None`: this process alone).
    gather: Option<Arc<dyn Gather>>,
}

impl Albef {
    /// Builds every module under `vs.root()` with random initialisation (normal(0, 0.02)
    /// weights; draw from `tch::manual_seed`), makes the momentum copies equal to the student
    /// and takes them, the queues and `queue_ptr` out of the trainable set. `precision` sets
    /// the matmul kind (bf16 autocast on CUDA).
    pub fn new(vs: &nn::VarStore, cfg: &ModelConfig, precision: Precision) -> Result<Self> {
        let root = vs.root();
        let v = &cfg.vision;
        let t = &cfg.text;
        let visual_encoder = VisionTransformer::new(&(&root / "visual_encoder"), v, precision);
        let vision_proj = Linear::new(
            &(&root / "vision_proj"),
            v.width,
            cfg.embed_dim,
            true,
            precision,
        );
        let text_encoder = BertForMaskedLm::new(&(&root / "text_encoder"), t, v.width, precision);
        let text_proj = Linear::new(
            &(&root / "text_proj"),
            t.hidden_size,
            cfg.embed_dim,
            true,
            precision,
        );
        let temp = root.var(TEMP, &[], nn::Init::Const(cfg.temp));
        let itm_head = Linear::new(&(&root / "itm_head"), t.hidden_size, 2, true, precision);
        let visual_encoder_m = VisionTransformer::new(&(&root / "visual_encoder_m"), v, precision);
        let vision_proj_m = Linear::new(
            &(&root / "vision_proj_m"),
            v.width,
            cfg.embed_dim,
            true,
            precision,
        );
        let text_encoder_m =
            BertForMaskedLm::new(&(&root / "text_encoder_m"), t, v.width, precision);
        let text_proj_m = Linear::new(
            &(&root / "text_proj_m"),
            t.hidden_size,
            cfg.embed_dim,
            true,
            precision,
        );
        let queue = |name: &str| {
            let q = Tensor::randn([cfg.embed_dim, cfg.queue_size], (Kind::Float, vs.device()));
            let q = normalize(&q, 0);
            root.add(name, q, false)
        };
        let image_queue = queue("image_queue");
        let text_queue = queue("text_queue");
        let idx_queue = root.add(
            IDX_QUEUE,
            Tensor::full(
                [1, cfg.queue_size],
                UNKNOWN_IMAGE,
                (Kind::Int64, vs.device()),
            ),
            false,
        );
        let queue_ptr = root.add(
            "queue_ptr",
            Tensor::zeros([1], (Kind::Int64, vs.device())),
            false,
        );
        let pairs = momentum_pairs(vs)?;
        let model = Albef {
            cfg: cfg.clone(),
            visual_encoder,
            vision_proj,
            text_encoder,
            text_proj,
            itm_head,
            visual_encoder_m,
            vision_proj_m,
            text_encoder_m,
            text_proj_m,
            temp,
            image_queue,
            text_queue,
            idx_queue,
            queue_ptr,
            pairs,
            gather: None,
        };
        model.copy_params();
        assign_decay_groups(vs);
        Ok(model)
    }

    /// `copy_params`: momentum weights := student weights.
    pub fn copy_params(&self) {
        tch::no_grad(|| {
            for (p, mut m) in self.pairs.iter().map(|(p, m)| (p, m.shallow_clone())) {
                m.copy_(p);
            }
        });
    }

    /// `_momentum_update`: `p_m = momentum * p_m + (1 - momentum) * p` for every pair.
    pub fn momentum_update(&self) {
        let m = self.cfg.momentum;
        tch::no_grad(|| {
            for (p, mut pm) in self.pairs.iter().map(|(p, m)| (p, m.shallow_clone())) {
                let _ = pm.lerp_(p, 1.0 - m);
            }
        });
    }

    /// Makes the queues take every rank's momentum features and `idx` (data-parallel training:
    /// every rank then holds the same queues).
    pub fn set_gather(&mut self, gather: Arc<dyn Gather>) {
        self.gather = Some(gather);
    }

    /// `_dequeue_and_enqueue` of this rank's momentum features [B, E] and pictures `idx` [B]:
    /// gathered from every rank first when [`Albef::set_gather`] was called (image and text
    /// features travel in one call, `idx` in another), so the batch written is the global one.
    pub fn enqueue_all(
        &self,
        image_feat: &Tensor,
        text_feat: &Tensor,
        idx: Option<&Tensor>,
    ) -> Result<()> {
        let Some(gather) = &self.gather else {
            return self.enqueue(image_feat, text_feat, idx);
        };
        let width = image_feat.size()[1];
        let both = gather.all_gather(&Tensor::cat(&[image_feat, text_feat], 1))?;
        let idx = idx.map(|i| gather.all_gather(i)).transpose()?;
        self.enqueue(
            &both.narrow(1, 0, width),
            &both.narrow(1, width, width),
            idx.as_ref(),
        )
    }

    /// `_dequeue_and_enqueue`: writes the (globally gathered) momentum features [B, E] and the
    /// pictures `idx` [B] (unknown when `None`) at `queue_ptr` and advances it modulo the
    /// queue size. A queue size that the batch does not divide is refused.
    pub fn enqueue(
        &self,
        image_feat: &Tensor,
        text_feat: &Tensor,
        idx: Option<&Tensor>,
    ) -> Result<()> {
        let batch = image_feat.size()[0];
        check_queue(self.cfg.queue_size, batch)?;
        let ptr = self.queue_ptr.int64_value(&[0]);
        if ptr % batch != 0 || ptr >= self.cfg.queue_size {
            bail!("queue_ptr {ptr} is not a multiple of the batch {batch} below the queue size");
        }
        tch::no_grad(|| {
            self.image_queue
                .narrow(1, ptr, batch)
                .copy_(&image_feat.transpose(0, 1));
            self.text_queue
                .narrow(1, ptr, batch)
                .copy_(&text_feat.transpose(0, 1));
            let mut slots = self.idx_queue.narrow(1, ptr, batch);
            match idx {
                Some(idx) => slots.copy_(&idx.unsqueeze(0)),
                None => {
                    let _ = slots.fill_(UNKNOWN_IMAGE);
                }
            }
            let _ = self
                .queue_ptr
                .shallow_clone()
                .fill_((ptr + batch) % self.cfg.queue_size);
        });
        Ok(())
    }
}

/// The passes of the model. Image states are the ViT's tokens [B, N, W] (CLS first), text states
/// the text layers' [B, L, H] (`mask` [B, L]: 1 for tokens, 0 for padding); a feature is the
/// L2-normalised projection of the CLS state [B, E]. `train` turns dropout on.
impl Albef {
    /// The student ViT's image states.
    pub fn image_embeds(&self, image: &Tensor) -> Tensor {
        self.visual_encoder.forward(image)
    }

    /// The momentum ViT's image states.
    pub fn image_embeds_m(&self, image: &Tensor) -> Tensor {
        self.visual_encoder_m.forward(image)
    }

    /// The student image feature of image states (`vision_proj` of CLS, normalised).
    pub fn image_feat(&self, image_embeds: &Tensor) -> Tensor {
        normalize(&self.vision_proj.forward(&image_embeds.select(1, 0)), -1)
    }

    /// The momentum image feature of momentum image states.
    pub fn image_feat_m(&self, image_embeds_m: &Tensor) -> Tensor {
        normalize(
            &self.vision_proj_m.forward(&image_embeds_m.select(1, 0)),
            -1,
        )
    }

    /// The student text layers' states of token ids [B, L].
    pub fn text_embeds(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.text_encoder
            .bert
            .forward(input_ids, mask, None, Mode::Text, train)
    }

    /// The momentum text layers' states of token ids [B, L].
    pub fn text_embeds_m(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.text_encoder_m
            .bert
            .forward(input_ids, mask, None, Mode::Text, train)
    }

    /// The student text feature of text states (`text_proj` of CLS, normalised).
    pub fn text_feat(&self, text_embeds: &Tensor) -> Tensor {
        normalize(&self.text_proj.forward(&text_embeds.select(1, 0)), -1)
    }

    /// The momentum text feature of momentum text states.
    pub fn text_feat_m(&self, text_embeds_m: &Tensor) -> Tensor {
        normalize(&self.text_proj_m.forward(&text_embeds_m.select(1, 0)), -1)
    }

    /// The fusion layers over text states with cross-attention to image states: [B, L, H].
    pub fn fusion(
        &self,
        image_embeds: &Tensor,
        text_embeds: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Tensor {
        self.text_encoder
            .bert
            .forward(text_embeds, mask, Some(image_embeds), Mode::Fusion, train)
    }

    /// The ITM head on the fused CLS state: [B, 2] logits (column 1: "match").
    pub fn itm_logits(
        &self,
        image_embeds: &Tensor,
        text_embeds: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Tensor {
        let fused = self.fusion(image_embeds, text_embeds, mask, train);
        self.itm_head.forward(&fused.select(1, 0))
    }

    /// The student's MLM logits [N, V] at `positions` (row-major indices into [B * L]) of the
    /// text states of masked ids, fused with image states.
    pub fn mlm_logits(
        &self,
        image_embeds: &Tensor,
        text_embeds: &Tensor,
        mask: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Tensor {
        self.text_encoder
            .masked_logits(text_embeds, mask, image_embeds, positions, train)
    }

    /// The momentum model's MLM logits, as [`Albef::mlm_logits`].
    pub fn mlm_logits_m(
        &self,
        image_embeds_m: &Tensor,
        text_embeds_m: &Tensor,
        mask: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Tensor {
        self.text_encoder_m
            .masked_logits(text_embeds_m, mask, image_embeds_m, positions, train)
    }
}

/// L2 normalisation along `dim` (`F.normalize`, eps 1e-12).
pub fn normalize(x: &Tensor, dim: i64) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, [dim], true).clamp_min(1e-12);
    x / norm
}

/// Pairs every float student parameter with its momentum copy by name, checks that the
/// shapes agree, and removes the momentum copies from the trainable set.
fn momentum_pairs(vs: &nn::VarStore) -> Result<Vec<(Tensor, Tensor)>> {
    let mut vars = vs.variables_.lock().expect("var store lock");
    let mut pairs = Vec::new();
    let mut names: Vec<&String> = vars.named_variables.keys().collect();
    names.sort();
    for name in names {
        for (student, momentum) in MOMENTUM_PAIRS {
            let Some(rest) = name.strip_prefix(student).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let p = &vars.named_variables[name];
            if !p.is_floating_point() {
                continue;
            }
            let m_name = format!("{momentum}.{rest}");
            let Some(m) = vars.named_variables.get(&m_name) else {
                bail!("{name} has no momentum copy {m_name}");
            };
            if p.size() != m.size() {
                bail!(
                    "{name} {:?} and {m_name} {:?} differ in shape",
                    p.size(),
                    m.size()
                );
            }
            pairs.push((p.shallow_clone(), m.shallow_clone()));
        }
    }
    let frozen: HashSet<usize> = pairs.iter().map(|(_, m)| m.data_ptr() as usize).collect();
    vars.trainable_variables
        .retain(|v| !frozen.contains(&(v.tensor.data_ptr() as usize)));
    for (_, m) in &pairs {
        let _ = m.set_requires_grad(false);
    }
    Ok(pairs)
}

/// The official optimiser's grouping (optim_factory.py L25-48): no weight decay on 1-D
/// parameters and on `*.bias`; everything else (temp included) is decayed.
fn assign_decay_groups(vs: &nn::VarStore) {
    let mut vars = vs.variables_.lock().expect("var store lock");
    let no_decay: HashSet<usize> = vars
        .named_variables
        .iter()
        .filter(|(name, t)| t.dim() == 1 || name.ends_with(".bias"))
        .map(|(_, t)| t.data_ptr() as usize)
        .collect();
    for var in vars.trainable_variables.iter_mut() {
        var.group = if no_decay.contains(&(var.tensor.data_ptr() as usize)) {
            NO_DECAY_GROUP
        } else {
            DECAY_GROUP
        };
    }
}
