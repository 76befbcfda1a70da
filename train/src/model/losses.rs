//! The three pretraining losses in the official order: clamp temp, student passes, momentum
//! update then teacher passes (no grad), ITC with momentum distillation, enqueue, ITM with
//! hard negatives, MLM with momentum distillation.
//! Reference: salesforce/ALBEF models/model_pretrain.py `ALBEF.forward` L88-214 and `mask`
//! L253-277; xbert.py `BertForMaskedLM.forward` L1423-1431 for the MLM loss.
//!
//! [`Albef::losses_given`] takes the MLM-masked ids, the MLM labels and the hard-negative
//! indices as inputs, so that numbers compare exactly with other implementations;
//! [`Albef::losses`] draws them from libtorch's generator (seed it with `tch::manual_seed`).
//!
//! Several captions of one picture are never each other's negatives when the pairs' pictures
//! (`idx`) are given ([`Albef::losses_with_idx`]), as the official retrieval fine-tuning does
//! it (model_retrieval.py L70-75, L118-123): the ITC targets spread `1 - alpha` over every
//! in-batch and queued pair of the same picture, and the ITM hard-negative weights are zero for
//! pairs of the same picture. Without `idx` every pair is its own picture and the numbers are
//! those of model_pretrain.py.
//!
//! Score-weighted training (`train.score_weights`) passes a weight per pair: each pair's ITC
//! terms (image-to-text and text-to-image), its ITM positive and its masked tokens count with
//! that weight, and each loss is the plain mean of the weighted terms, so that all-ones weights
//! give the unweighted numbers and low-scored pairs teach less. A hard-negative ITM term keeps
//! weight 1: "this picture does not show that caption" stays true for a noisy caption.
use super::albef::{Albef, UNKNOWN_IMAGE};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Label of a position that MLM ignores.
pub const IGNORE: i64 = -100;

/// A batch of image-text pairs.
pub struct Batch {
    /// [B, 3, H, W] f32, already normalised.
    pub image: Tensor,
    /// [B, L] i64 token ids ([CLS] first, [PAD] after the caption).
    pub input_ids: Tensor,
    /// [B, L] 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// The MLM inputs: masked ids and labels (-100 where not masked), both [B, L] i64.
pub struct MlmInputs {
    pub input_ids: Tensor,
    pub labels: Tensor,
}

/// Hard negatives: for text b its negative image, for image b its negative text (i64 [B]).
pub struct Negatives {
    pub image_idx: Tensor,
    pub text_idx: Tensor,
}

/// The three losses (0-d f32 tensors, differentiable) and what a caller may want to log.
pub struct Losses {
    pub itc: Tensor,
    pub itm: Tensor,
    pub mlm: Tensor,
}

impl Losses {
    /// `loss_mlm + loss_itc + loss_itm` (Pretrain.py L68: equal weights).
    pub fn total(&self) -> Tensor {
        &self.mlm + &self.itc + &self.itm
    }
}

/// Where the hard negatives come from.
enum NegativeSource<'a> {
    Given(&'a Negatives),
    Sampled,
}

impl Albef {
    /// One training forward with given MLM inputs and hard negatives, and optionally the
    /// pictures `idx` (i64 [B], non-negative, equal for pairs of one picture; `None`: every
    /// pair its own). `train` turns dropout on; the momentum update and the enqueue happen
    /// either way, as in a training step. Negatives of the pair's own picture are refused.
    pub fn losses_given(
        &self,
        batch: &Batch,
        idx: Option<&Tensor>,
        alpha: f64,
        mlm: &MlmInputs,
        negatives: &Negatives,
        train: bool,
    ) -> Result<Losses> {
        self.step(
            batch,
            Pairs { idx, weight: None },
            alpha,
            mlm,
            NegativeSource::Given(negatives),
            train,
        )
    }

    /// One training forward that draws the MLM masking and the hard negatives from libtorch's
    /// generator; every pair is its own picture.
    pub fn losses(&self, batch: &Batch, alpha: f64, train: bool) -> Result<Losses> {
        self.sampled(batch, None, None, alpha, train)
    }

    /// [`Albef::losses`] for a batch whose pairs' pictures are `idx` (i64 [B], non-negative,
    /// equal for several captions of one picture): those never serve as each other's ITC
    /// negatives (in the batch or in the queue) nor as ITM hard negatives. `weight` (f32 [B],
    /// non-negative) weights each pair's terms (score-weighted training; see the module docs).
    pub fn losses_with_idx(
        &self,
        batch: &Batch,
        idx: &Tensor,
        weight: Option<&Tensor>,
        alpha: f64,
        train: bool,
    ) -> Result<Losses> {
        self.sampled(batch, Some(idx), weight, alpha, train)
    }

    fn sampled(
        &self,
        batch: &Batch,
        idx: Option<&Tensor>,
        weight: Option<&Tensor>,
        alpha: f64,
        train: bool,
    ) -> Result<Losses> {
        let mlm = mask_tokens(
            &batch.input_ids,
            self.cfg.mlm_probability,
            self.cfg.text.vocab_size,
            self.cfg.text.pad_token_id,
            self.cfg.text.cls_token_id,
            self.cfg.text.mask_token_id,
        );
        let pairs = Pairs { idx, weight };
        self.step(batch, pairs, alpha, &mlm, NegativeSource::Sampled, train)
    }

    /// One training forward (`ALBEF.forward`, L88-214) in the official order: clamp temp, the
    /// student passes, the teacher, ITC, the enqueue, ITM, MLM.
    fn step(
        &self,
        batch: &Batch,
        pairs: Pairs,
        alpha: f64,
        mlm: &MlmInputs,
        negatives: NegativeSource,
        train: bool,
    ) -> Result<Losses> {
        let bs = batch.image.size()[0];
        let Pairs { idx, weight } = pairs;
        check_pairs(bs, idx, weight)?;
        let device = batch.image.device();
        let same = match idx {
            Some(idx) => same_image(idx),
            None => Tensor::eye(bs, (Kind::Bool, device)),
        };
        // ITC positives over [batch, queue]: the diagonal, or every pair of the same picture.
        let positives = match idx {
            Some(idx) => positive_targets(idx, &self.idx_queue),
            None => Tensor::eye_m(bs, bs + self.cfg.queue_size, (Kind::Float, device)),
        };
        tch::no_grad(|| {
            let _ = self.temp.shallow_clone().clamp_(0.001, 0.5);
        });
        let student = self.student(batch, mlm, train);
        let teacher = self.teacher(batch, mlm, &positives, alpha, train);
        let itc = self.itc(&student, &teacher, weight);
        // Enqueue the momentum features (every rank's) after ITC, before ITM (L130).
        self.enqueue_all(&teacher.image_feat_m, &teacher.text_feat_m, idx)?;
        let negatives = negatives.resolve(&itc, &same)?;
        let itm = self.itm(&student, &negatives, weight, train);
        let mlm_loss = self.mlm(&student, &teacher, mlm, alpha, weight, train);
        Ok(Losses {
            itc: itc.loss,
            itm,
            mlm: mlm_loss,
        })
    }

    /// The student passes (L92-100). The text layers take the MLM-masked ids in the same batch as
    /// the captions (same weights; the official MLM pass, L188-200, runs them later): one pass
    /// of larger matrix products instead of two.
    fn student(&self, batch: &Batch, mlm: &MlmInputs, train: bool) -> Student {
        let bs = batch.image.size()[0];
        let mask = &batch.attention_mask;
        let image_embeds = self.image_embeds(&batch.image);
        let image_feat = self.image_feat(&image_embeds);
        let both = self.text_embeds(
            &Tensor::cat(&[&batch.input_ids, &mlm.input_ids], 0),
            &Tensor::cat(&[mask, mask], 0),
            train,
        );
        let (text_embeds, mlm_text) = (both.narrow(0, 0, bs), both.narrow(0, bs, bs));
        let text_feat = self.text_feat(&text_embeds);
        Student {
            image_embeds,
            image_feat,
            text_embeds,
            text_feat,
            mlm_text,
            mask: mask.shallow_clone(),
        }
    }

    /// The momentum update, then the teacher (L103-120), without gradient: the momentum
    /// features, the ITC pseudo-targets `alpha * softmax(sim_m) + (1 - alpha) * positives` over
    /// [batch, queue], and the states that MLM distillation needs.
    fn teacher(
        &self,
        batch: &Batch,
        mlm: &MlmInputs,
        positives: &Tensor,
        alpha: f64,
        train: bool,
    ) -> Teacher {
        tch::no_grad(|| {
            self.momentum_update();
            let bs = batch.image.size()[0];
            let mask = &batch.attention_mask;
            let image_embeds_m = self.image_embeds_m(&batch.image);
            let image_feat_m = self.image_feat_m(&image_embeds_m);
            // The teacher's MLM states only matter with alpha > 0 (they are its weight).
            let distill = alpha > 0.0;
            let (ids_m, mask_m) = if distill {
                (
                    Tensor::cat(&[&batch.input_ids, &mlm.input_ids], 0),
                    Tensor::cat(&[mask, mask], 0),
                )
            } else {
                (batch.input_ids.shallow_clone(), mask.shallow_clone())
            };
            let both_m = self.text_embeds_m(&ids_m, &mask_m, train);
            let text_feat_m = self.text_feat_m(&both_m.narrow(0, 0, bs));
            let image_feat_all = Tensor::cat(&[image_feat_m.tr(), self.image_queue.copy()], 1);
            let text_feat_all = Tensor::cat(&[text_feat_m.tr(), self.text_queue.copy()], 1);
            let sim_i2t_m = image_feat_m.matmul(&text_feat_all) / &self.temp;
            let sim_t2i_m = text_feat_m.matmul(&image_feat_all) / &self.temp;
            Teacher {
                i2t_targets: soft_targets(&sim_i2t_m, positives, alpha),
                t2i_targets: soft_targets(&sim_t2i_m, positives, alpha),
                image_embeds_m,
                image_feat_m,
                text_feat_m,
                image_feat_all,
                text_feat_all,
                mlm_text_m: distill.then(|| both_m.narrow(0, bs, bs)),
            }
        })
    }

    /// ITC with momentum distillation (L122-128): the student's similarities to [batch, queue]
    /// against the teacher's pseudo-targets, each pair's two terms weighted by `weight`.
    fn itc(&self, student: &Student, teacher: &Teacher, weight: Option<&Tensor>) -> Itc {
        let sim_i2t = student.image_feat.matmul(&teacher.text_feat_all) / &self.temp;
        let sim_t2i = student.text_feat.matmul(&teacher.image_feat_all) / &self.temp;
        let loss = (soft_cross_entropy(&sim_i2t, &teacher.i2t_targets, weight)
            + soft_cross_entropy(&sim_t2i, &teacher.t2i_targets, weight))
            / 2.0;
        Itc {
            loss,
            sim_i2t,
            sim_t2i,
        }
    }

    /// ITM (L134-185): the positives and both kinds of hard negatives in one fusion pass; the
    /// positives weighted by `weight`, the hard negatives 1 (module docs).
    fn itm(
        &self,
        student: &Student,
        negatives: &Negatives,
        weight: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (text_embeds, image_embeds, mask) =
            (&student.text_embeds, &student.image_embeds, &student.mask);
        let bs = text_embeds.size()[0];
        let text_all = Tensor::cat(
            &[
                text_embeds,
                text_embeds,
                &text_embeds.index_select(0, &negatives.text_idx),
            ],
            0,
        );
        let mask_all = Tensor::cat(&[mask, mask, &mask.index_select(0, &negatives.text_idx)], 0);
        let image_all = Tensor::cat(
            &[
                image_embeds,
                &image_embeds.index_select(0, &negatives.image_idx),
                image_embeds,
            ],
            0,
        );
        let itm_logits = self.itm_logits(&image_all, &text_all, &mask_all, train);
        let itm_labels = Tensor::cat(
            &[
                Tensor::ones([bs], (Kind::Int64, itm_logits.device())),
                Tensor::zeros([2 * bs], (Kind::Int64, itm_logits.device())),
            ],
            0,
        );
        match weight {
            None => itm_logits.cross_entropy_for_logits(&itm_labels),
            Some(w) => {
                let terms = itm_logits
                    .log_softmax(-1, Kind::Float)
                    .gather(1, &itm_labels.unsqueeze(1), false)
                    .squeeze_dim(1)
                    .neg();
                let ones = Tensor::ones([2 * bs], (Kind::Float, itm_logits.device()));
                (terms * Tensor::cat(&[w, &ones], 0)).mean(Kind::Float)
            }
        }
    }

    /// MLM with momentum distillation (L188-212), the vocabulary projection at masked rows only:
    /// `ce * (1 - alpha) + distill * alpha`, each masked token weighted by its pair's weight.
    fn mlm(
        &self,
        student: &Student,
        teacher: &Teacher,
        mlm: &MlmInputs,
        alpha: f64,
        weight: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let mask = &student.mask;
        let positions = mlm.labels.view([-1]).ne(IGNORE).nonzero().squeeze_dim(1);
        if positions.size()[0] == 0 {
            // Nothing masked (possible with short captions): no MLM signal in this batch.
            return Tensor::zeros([], (Kind::Float, student.image_feat.device()));
        }
        let targets = mlm.labels.view([-1]).index_select(0, &positions);
        let soft = teacher.mlm_text_m.as_ref().map(|text_m| {
            tch::no_grad(|| {
                self.mlm_logits_m(&teacher.image_embeds_m, text_m, mask, &positions, train)
                    .softmax(-1, Kind::Float)
            })
        });
        let logits = self.mlm_logits(
            &student.image_embeds,
            &student.mlm_text,
            mask,
            &positions,
            train,
        );
        let log_probs = logits.log_softmax(-1, Kind::Float);
        let distill_terms = soft.map(|soft| {
            (soft * &log_probs)
                .sum_dim_intlist([-1].as_slice(), false, Kind::Float)
                .neg()
        });
        let (ce, distill) = match weight {
            None => (
                log_probs.nll_loss(&targets),
                distill_terms.map(|d| d.mean(Kind::Float)),
            ),
            Some(w) => {
                let row = positions.divide_scalar_mode(mlm.labels.size()[1], "floor");
                let w = w.index_select(0, &row);
                let ce_terms = log_probs
                    .gather(1, &targets.unsqueeze(1), false)
                    .squeeze_dim(1)
                    .neg();
                (
                    (ce_terms * &w).mean(Kind::Float),
                    distill_terms.map(|d| (d * &w).mean(Kind::Float)),
                )
            }
        };
        match distill {
            Some(distill) => ce * (1.0 - alpha) + distill * alpha,
            // alpha = 0: the teacher's term has weight 0 and is not computed.
            None => ce * (1.0 - alpha),
        }
    }
}

impl NegativeSource<'_> {
    /// The hard negatives of ITM: given ones, checked against the pairs' pictures (`same`), or
    /// drawn from the student's ITC similarities.
    fn resolve(self, itc: &Itc, same: &Tensor) -> Result<Negatives> {
        match self {
            NegativeSource::Given(n) => {
                check_indices(&n.image_idx, same, "neg_image_idx")?;
                check_indices(&n.text_idx, same, "neg_text_idx")?;
                Ok(Negatives {
                    image_idx: n.image_idx.shallow_clone(),
                    text_idx: n.text_idx.shallow_clone(),
                })
            }
            NegativeSource::Sampled => {
                tch::no_grad(|| sample_negatives(&itc.sim_i2t, &itc.sim_t2i, same))
            }
        }
    }
}

/// What is known of a batch's pairs besides their pixels and tokens.
struct Pairs<'a> {
    /// The pictures (i64 [B]); None: every pair its own.
    idx: Option<&'a Tensor>,
    /// Per-pair loss weights (f32 [B]); None: unweighted.
    weight: Option<&'a Tensor>,
}

/// What the student passes hand to the losses.
struct Student {
    image_embeds: Tensor,
    image_feat: Tensor,
    text_embeds: Tensor,
    text_feat: Tensor,
    /// The text layers' states of the MLM-masked ids.
    mlm_text: Tensor,
    /// The captions' attention mask.
    mask: Tensor,
}

/// What the no-grad teacher pass hands to the student losses.
struct Teacher {
    i2t_targets: Tensor,
    t2i_targets: Tensor,
    image_embeds_m: Tensor,
    image_feat_m: Tensor,
    text_feat_m: Tensor,
    image_feat_all: Tensor,
    text_feat_all: Tensor,
    /// The text layers' states of the MLM-masked ids (only with alpha > 0).
    mlm_text_m: Option<Tensor>,
}

/// ITC's loss and the student's similarities it came from ([B, B + Q] each).
struct Itc {
    loss: Tensor,
    sim_i2t: Tensor,
    sim_t2i: Tensor,
}

/// `alpha * softmax(sim_m) + (1 - alpha) * positives` over [B, B + Q] (in fp32); `positives`
/// are the hard targets (rows summing to 1: the diagonal, or [`positive_targets`]).
pub fn soft_targets(sim_m: &Tensor, positives: &Tensor, alpha: f64) -> Tensor {
    sim_m.softmax(1, Kind::Float) * alpha + positives * (1.0 - alpha)
}

/// bool [B, B]: true where pairs i and j show the same picture (`idx` equal; the diagonal
/// included), i.e. where a pair must not serve as the other's negative.
pub fn same_image(idx: &Tensor) -> Tensor {
    idx.unsqueeze(1).eq_tensor(&idx.unsqueeze(0))
}

/// The hard ITC targets of a batch of pictures `idx` [B] against [batch, queue]: row b spread
/// evenly over every column of b's picture (model_retrieval.py L70-72), f32 [B, B + Q].
pub fn positive_targets(idx: &Tensor, idx_queue: &Tensor) -> Tensor {
    let idx_all = Tensor::cat(&[idx.unsqueeze(0), idx_queue.to_kind(Kind::Int64)], 1);
    let pos = idx.unsqueeze(1).eq_tensor(&idx_all).to_kind(Kind::Float);
    let count = pos.sum_dim_intlist([1].as_slice(), true, Kind::Float);
    pos / count
}

/// `-mean_b w[b] sum_j log_softmax(logits)[b, j] * targets[b, j]` (w = 1 when `weight` is
/// None).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, weight: Option<&Tensor>) -> Tensor {
    let rows = (logits.log_softmax(1, Kind::Float) * targets).sum_dim_intlist(
        [1].as_slice(),
        false,
        Kind::Float,
    );
    match weight {
        None => rows.mean(Kind::Float).neg(),
        Some(w) => (rows * w).mean(Kind::Float).neg(),
    }
}

/// Draws one hard negative per row from `softmax(sim[:, :B])` with the pairs of the row's own
/// picture zeroed (`same`, bool [B, B], see [`same_image`]; the diagonal at least): for each
/// text an image (from `sim_t2i`), for each image a text (from `sim_i2t`). Local batch only,
/// as in the official code. A pair whose picture every pair of the batch shows has no
/// negative: refused.
pub fn sample_negatives(sim_i2t: &Tensor, sim_t2i: &Tensor, same: &Tensor) -> Result<Negatives> {
    let bs = same.size()[0];
    let lonely = same.all_dim(1, false).nonzero();
    if lonely.size()[0] > 0 {
        bail!(
            "pair {} of the batch has no hard negative: all {bs} pairs show its picture",
            lonely.int64_value(&[0, 0])
        );
    }
    // A row whose softmax mass all sits on its own picture (off-diagonal terms underflow to 0
    // once the temperature is low and the model sure) would leave multinomial nothing to draw
    // from: such a row draws uniformly among its negatives instead. Other rows are the
    // official weights.
    let allowed = same.logical_not().to_kind(Kind::Float);
    let weights = |sim: &Tensor| {
        let w = sim
            .narrow(1, 0, bs)
            .softmax(1, Kind::Float)
            .masked_fill(same, 0.0);
        let empty = w.sum_dim_intlist([1].as_slice(), true, Kind::Float).le(0.0);
        allowed.where_self(&empty, &w)
    };
    Ok(Negatives {
        image_idx: weights(sim_t2i).multinomial(1, false).squeeze_dim(1),
        text_idx: weights(sim_i2t).multinomial(1, false).squeeze_dim(1),
    })
}

/// BERT masking (`ALBEF.mask`): each token is selected with `probability`, never [PAD] or
/// [CLS]; of the selected, 80% become [MASK], 10% a random token, 10% stay. Labels are the
/// original ids at selected positions and -100 elsewhere.
pub fn mask_tokens(
    input_ids: &Tensor,
    probability: f64,
    vocab_size: i64,
    pad_id: i64,
    cls_id: i64,
    mask_id: i64,
) -> MlmInputs {
    tch::no_grad(|| {
        let opts = (Kind::Float, input_ids.device());
        let shape = input_ids.size();
        let selected = Tensor::full(shape.as_slice(), probability, opts)
            .bernoulli()
            .to_kind(Kind::Bool)
            .logical_and(&input_ids.ne(pad_id))
            .logical_and(&input_ids.ne(cls_id));
        let labels = input_ids.where_self(&selected, &Tensor::full_like(input_ids, IGNORE));
        let replaced = Tensor::full(shape.as_slice(), 0.8, opts)
            .bernoulli()
            .to_kind(Kind::Bool)
            .logical_and(&selected);
        let random = Tensor::full(shape.as_slice(), 0.5, opts)
            .bernoulli()
            .to_kind(Kind::Bool)
            .logical_and(&selected)
            .logical_and(&replaced.logical_not());
        let random_words = Tensor::randint(
            vocab_size,
            shape.as_slice(),
            (Kind::Int64, input_ids.device()),
        );
        let ids = Tensor::full_like(input_ids, mask_id).where_self(&replaced, input_ids);
        let ids = random_words.where_self(&random, &ids);
        MlmInputs {
            input_ids: ids,
            labels,
        }
    })
}

/// Given hard negatives: i64 [B] indices into the batch, never a pair of the row's own picture.
fn check_indices(idx: &Tensor, same: &Tensor, name: &str) -> Result<()> {
    let bs = same.size()[0];
    if idx.size() != [bs] || idx.kind() != Kind::Int64 {
        bail!(
            "{name} must be i64 [{bs}], got {:?} {:?}",
            idx.kind(),
            idx.size()
        );
    }
    let (lo, hi) = (idx.min().int64_value(&[]), idx.max().int64_value(&[]));
    if lo < 0 || hi >= bs {
        bail!("{name} holds indices {lo}..={hi}, outside 0..{bs}");
    }
    let own = same
        .gather(1, &idx.unsqueeze(1), false)
        .squeeze_dim(1)
        .nonzero();
    if own.size()[0] > 0 {
        let b = own.int64_value(&[0, 0]);
        bail!(
            "{name}[{b}] = {} shows pair {b}'s own picture, which is not a negative",
            idx.int64_value(&[b])
        );
    }
    Ok(())
}

/// A batch of at least 2 pairs (ITM needs a negative), with valid pictures and weights.
fn check_pairs(bs: i64, idx: Option<&Tensor>, weight: Option<&Tensor>) -> Result<()> {
    if bs < 2 {
        bail!("a batch needs at least 2 pairs for hard negatives, got {bs}");
    }
    if let Some(idx) = idx {
        check_idx(idx, bs)?;
    }
    if let Some(weight) = weight {
        check_weight(weight, bs)?;
    }
    Ok(())
}

/// Per-pair loss weights: f32 [B], finite and non-negative.
fn check_weight(weight: &Tensor, bs: i64) -> Result<()> {
    if weight.size() != [bs] || weight.kind() != Kind::Float {
        bail!(
            "pair weights must be f32 [{bs}], got {:?} {:?}",
            weight.kind(),
            weight.size()
        );
    }
    let bad = weight
        .isfinite()
        .logical_not()
        .logical_or(&weight.lt(0.0))
        .nonzero();
    if bad.size()[0] > 0 {
        let b = bad.int64_value(&[0, 0]);
        bail!(
            "pair weight {b} is {}: weights must be finite and non-negative",
            weight.double_value(&[b])
        );
    }
    Ok(())
}

/// The pictures of a batch: i64 [B], non-negative (so never [`UNKNOWN_IMAGE`]).
fn check_idx(idx: &Tensor, bs: i64) -> Result<()> {
    if idx.size() != [bs] || idx.kind() != Kind::Int64 {
        bail!(
            "idx must be i64 [{bs}], got {:?} {:?}",
            idx.kind(),
            idx.size()
        );
    }
    let lo = idx.min().int64_value(&[]);
    if lo < 0 {
        bail!("idx holds {lo}: pictures are numbered from 0 ({UNKNOWN_IMAGE} means unknown)");
    }
    Ok(())
}
