//! The filter's pseudo-target scores of an image-text pair, from a trained checkpoint:
//!
//! - `score_i2t`: the momentum model's softmax of the image's similarities over the reference
//!   captions, taken at the pair's own caption;
//! - `score_t2i`: the same for the caption over the reference images;
//! - `score_itm`: the ITM match probability `softmax(itm_head(fusion(I, T)))[1]` (the student
//!   encoders: the official model keeps no momentum copy of `itm_head`);
//! - `score`: the mean of the two momentum pseudo-targets, `(score_i2t + score_t2i) / 2`.
//!
//! The reference set is FIXED: the checkpoint's queues (the momentum features of the last
//! `queue_size` training pairs) with the pair's own momentum feature as the one positive, i.e.
//! `softmax([img_m . txt_m ; img_m @ text_queue] / temp)[0]`. ALBEF's training targets also
//! put the other pairs of the batch in the softmax; leaving them out makes a pair's scores a
//! function of that pair and the checkpoint alone, whatever shard or batch it lands in. What is
//! left of the batch is floating-point: a matmul may sum in another order for another batch
//! shape, so scores agree to [`INVARIANCE_TOLERANCE`], which the tests check.
//!
//! Why `score` is the mean of the two ITC pseudo-targets: they are the momentum model's own
//! belief that the caption is the image's (ALBEF's soft targets for the pair), in both
//! directions; their mean is a probability in [0, 1], so a threshold keeps one meaning, and it
//! does not let one direction's near-zero score veto a pair, as a geometric mean would (`score_t2i`
//! is near zero for a clean pair whose caption also fits many queued images). `score_itm` is left
//! out of the default: it is the student's head, not the momentum model's, and it is the last
//! part of the model to learn: on `scripts/bench-filter` (1,200 steps, 30% of the captions
//! swapped) its ROC-AUC was 0.65-0.72 against 0.97 for `score_i2t`, and adding it as a third
//! term lowered the combination's AUC from 0.970 to 0.949. It stays a column, and `--score itm`
//! ranks by it (BLIP's CapFilt drops pairs whose ITM probability is under 0.5).
use albef_train::checkpoint::Loaded;
use albef_train::config::Config;
use albef_train::data::loader::Batch;
use albef_train::model::{self, Albef, PrecisionRule};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The largest difference of any score of a pair scored in different batches or shard orders.
pub const INVARIANCE_TOLERANCE: f32 = 1e-5;

/// The score columns the filter adds, in file order.
pub const SCORE_COLUMNS: [&str; 4] = ["score", "score_i2t", "score_t2i", "score_itm"];

/// Which score ranks and thresholds the pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum ScoreName {
    /// The mean of `score_i2t` and `score_t2i` (the default).
    Score,
    I2t,
    T2i,
    Itm,
}

/// A score named in a config file, as on the command line.
impl TryFrom<String> for ScoreName {
    type Error = anyhow::Error;

    fn try_from(name: String) -> Result<Self> {
        ScoreName::parse(&name)
    }
}

impl ScoreName {
    pub const ALL: [ScoreName; 4] = [
        ScoreName::Score,
        ScoreName::I2t,
        ScoreName::T2i,
        ScoreName::Itm,
    ];

    /// The column holding this score.
    pub fn column(self) -> &'static str {
        match self {
            ScoreName::Score => SCORE_COLUMNS[0],
            ScoreName::I2t => SCORE_COLUMNS[1],
            ScoreName::T2i => SCORE_COLUMNS[2],
            ScoreName::Itm => SCORE_COLUMNS[3],
        }
    }

    /// Parses a column name or its short form (`itm` for `score_itm`).
    pub fn parse(name: &str) -> Result<ScoreName> {
        ScoreName::ALL
            .into_iter()
            .find(|s| s.column() == name || s.column().strip_prefix("score_") == Some(name))
            .with_context(|| {
                format!("unknown score {name:?}: expected score, score_i2t, score_t2i or score_itm")
            })
    }
}

/// The scores of one pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairScores {
    pub score: f32,
    pub i2t: f32,
    pub t2i: f32,
    pub itm: f32,
}

impl PairScores {
    fn new(i2t: f32, t2i: f32, itm: f32) -> Self {
        Self {
            score: (i2t + t2i) / 2.0,
            i2t,
            t2i,
            itm,
        }
    }

    pub fn get(&self, name: ScoreName) -> f32 {
        match name {
            ScoreName::Score => self.score,
            ScoreName::I2t => self.i2t,
            ScoreName::T2i => self.t2i,
            ScoreName::Itm => self.itm,
        }
    }

    /// The values in [`SCORE_COLUMNS`] order.
    pub fn columns(&self) -> [f32; 4] {
        [self.score, self.i2t, self.t2i, self.itm]
    }
}

/// A checkpoint's model, ready to score batches.
pub struct Scorer {
    pub config: Config,
    pub device: Device,
    model: Albef,
    _vs: nn::VarStore,
}

impl Scorer {
    /// Loads a checkpoint (its folder or model file, verified against its manifest) on
    /// `device`; matmuls run in bf16 on CUDA.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let loaded =
            Loaded::open(path).with_context(|| format!("opening checkpoint {}", path.display()))?;
        let config = loaded.state.config.clone();
        let weights = loaded.model_path();
        let (vs, model) = model::build(
            &config,
            device,
            PrecisionRule::CudaOnly,
            None,
            Some(&weights),
        )
        .with_context(|| format!("loading the model of {}", loaded.dir.display()))?;
        Ok(Self {
            config,
            device,
            model,
            _vs: vs,
        })
    }

    /// The scores of every pair of `batch`, in batch order, computed without gradient.
    pub fn score_batch(&self, batch: &Batch) -> Result<Vec<PairScores>> {
        let m = &self.model;
        let temp = m.temp.clamp(0.001, 0.5);
        let (i2t, t2i, itm) = tch::no_grad(|| {
            let image = batch.image.to_device(self.device);
            let ids = batch.input_ids.to_device(self.device);
            let mask = batch.attention_mask.to_device(self.device);

            let image_feat_m = m.image_feat_m(&m.image_embeds_m(&image));
            let text_feat_m = m.text_feat_m(&m.text_embeds_m(&ids, &mask, false));
            let own =
                (&image_feat_m * &text_feat_m).sum_dim_intlist([-1].as_slice(), true, Kind::Float);
            let i2t = own_softmax(&own, &image_feat_m.matmul(&m.text_queue), &temp);
            let t2i = own_softmax(&own, &text_feat_m.matmul(&m.image_queue), &temp);

            let image_embeds = m.image_embeds(&image);
            let text_embeds = m.text_embeds(&ids, &mask, false);
            let itm = m
                .itm_logits(&image_embeds, &text_embeds, &mask, false)
                .to_kind(Kind::Float)
                .softmax(-1, Kind::Float)
                .select(1, 1);
            (i2t, t2i, itm)
        });
        let to_vec = |t: Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(t.to_device(Device::Cpu).contiguous())?)
        };
        let (i2t, t2i, itm) = (to_vec(i2t)?, to_vec(t2i)?, to_vec(itm)?);
        if i2t.len() != batch.len() {
            bail!("scored {} pairs of a batch of {}", i2t.len(), batch.len());
        }
        Ok((0..i2t.len())
            .map(|i| PairScores::new(i2t[i], t2i[i], itm[i]))
            .collect())
    }
}

/// `softmax([own ; queue] / temp)[0]` per row: `own` [B, 1] the pair's own similarity, `queue`
/// [B, Q] its similarities to the fixed reference set.
fn own_softmax(own: &Tensor, queue: &Tensor, temp: &Tensor) -> Tensor {
    let logits = Tensor::cat(&[own.shallow_clone(), queue.to_kind(Kind::Float)], 1) / temp;
    logits.log_softmax(-1, Kind::Float).select(1, 0).exp()
}
