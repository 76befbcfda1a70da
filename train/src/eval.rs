//! Zero-shot image-text retrieval, the evaluation ALBEF reports: rank every text for every
//! image (and every image for every text) by ITC similarity, re-rank the top `k_test` of each
//! by the ITM head, and count how often a ground-truth match lands in the top 1, 5 and 10.
//! Reference: salesforce/ALBEF Retrieval.py `evaluation` (score = ITM logit of "match" plus the
//! ITC similarity on the top k, -100 elsewhere) and `itm_eval` (an image counts as found when
//! its best-ranked ground-truth caption is within k).
//!
//! [`evaluate`] runs a model over a held-out dataset (the loader's eval mode: file order, no
//! augmentation); [`retrieval`] is the ranking itself, on given features.
use crate::config::Config;
use crate::data::{loader_config, Loader, Mode};
use crate::model::{self, Albef, PrecisionRule};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Pairs scored by ITM per fusion pass.
const ITM_CHUNK: usize = 256;

/// What the model computes once per held-out image and caption.
struct Features {
    /// [N, tokens, W] image token states, one row per distinct picture.
    image_embeds: Tensor,
    /// [N, E] normalised image features.
    image_feat: Tensor,
    /// [M, L, H] text states of the text encoder, padded to the longest caption.
    text_embeds: Tensor,
    /// [M, L] attention mask of the captions.
    text_mask: Tensor,
    /// [M, E] normalised text features.
    text_feat: Tensor,
    /// The picture of each caption.
    text_to_image: Vec<i64>,
}

/// Zero-shot retrieval of the model file `weights` (official layout, every key required) of
/// shape `config` on the dataset folder `data_dir`.
pub fn evaluate_checkpoint(
    config: &Config,
    weights: &Path,
    data_dir: &Path,
    tokenizer: &Path,
    device: Device,
    k_test: i64,
) -> Result<Recall> {
    let seed = Some(config.train.seed as i64);
    let (_vs, model) = model::build(config, device, PrecisionRule::Config, seed, Some(weights))?;
    let loader = Loader::open(data_dir, loader_config(config, tokenizer, 2, Mode::Eval))
        .with_context(|| format!("opening the evaluation data {}", data_dir.display()))?;
    evaluate(&model, &loader, device, k_test)
}

/// Zero-shot retrieval of `model` on every row of `loader` (which must be in eval mode): rows
/// that show the same picture (the loader's `idx`) count as several captions of one image.
/// `k_test` candidates per query are re-ranked by ITM; 0 ranks by ITC alone.
pub fn evaluate(model: &Albef, loader: &Loader, device: Device, k_test: i64) -> Result<Recall> {
    tch::no_grad(|| {
        let f = features(model, loader, device)?;
        let mut itm = |images: &[i64], texts: &[i64]| -> Result<Vec<f64>> {
            let mut scores = Vec::with_capacity(images.len());
            for (imgs, txts) in images.chunks(ITM_CHUNK).zip(texts.chunks(ITM_CHUNK)) {
                let imgs = Tensor::from_slice(imgs).to_device(device);
                let txts = Tensor::from_slice(txts).to_device(device);
                let logits = model
                    .itm_logits(
                        &f.image_embeds.index_select(0, &imgs),
                        &f.text_embeds.index_select(0, &txts),
                        &f.text_mask.index_select(0, &txts),
                        false,
                    )
                    .select(1, 1);
                scores.extend(Vec::<f64>::try_from(
                    logits.to_kind(Kind::Double).to_device(Device::Cpu),
                )?);
            }
            Ok(scores)
        };
        // k_test 0: the ITC ranking alone, without ITM re-ranking.
        let rerank = (k_test > 0).then_some(&mut itm as &mut ItmScorer<'_>);
        retrieval(
            &f.image_feat,
            &f.text_feat,
            &f.text_to_image,
            k_test,
            rerank,
        )
    })
}

/// Runs the student encoders over every batch; a picture seen again (same `idx`) is encoded
/// once.
fn features(model: &Albef, loader: &Loader, device: Device) -> Result<Features> {
    let mut image_of: HashMap<i64, i64> = HashMap::new();
    let (mut image_embeds, mut image_feat) = (Vec::new(), Vec::new());
    let (mut text_embeds, mut text_masks, mut text_feat) = (Vec::new(), Vec::new(), Vec::new());
    let mut text_to_image = Vec::new();
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let ids = Vec::<i64>::try_from(&batch.idx)?;
        let mut new_rows = Vec::new();
        for (row, id) in ids.iter().enumerate() {
            let next = image_of.len() as i64;
            let image = *image_of.entry(*id).or_insert_with(|| {
                new_rows.push(row as i64);
                next
            });
            text_to_image.push(image);
        }
        if !new_rows.is_empty() {
            let rows = Tensor::from_slice(&new_rows);
            let embeds = model.image_embeds(&batch.image.index_select(0, &rows).to_device(device));
            image_feat.push(model.image_feat(&embeds));
            image_embeds.push(embeds);
        }
        let mask = batch.attention_mask.to_device(device);
        let embeds = model.text_embeds(&batch.input_ids.to_device(device), &mask, false);
        text_feat.push(model.text_feat(&embeds));
        text_embeds.push(embeds);
        text_masks.push(mask);
    }
    if text_to_image.is_empty() {
        bail!(
            "the evaluation dataset {} has no rows",
            loader.index().dir.display()
        );
    }
    // Captions are padded per batch: pad every batch to the longest before stacking.
    let longest = text_masks.iter().map(|m| m.size()[1]).max().unwrap_or(1);
    let pad = |t: &Tensor| {
        let len = t.size()[1];
        if len == longest {
            return t.shallow_clone();
        }
        let mut shape = t.size();
        shape[1] = longest - len;
        Tensor::cat(
            &[
                t.shallow_clone(),
                Tensor::zeros(shape.as_slice(), (t.kind(), t.device())),
            ],
            1,
        )
    };
    Ok(Features {
        image_embeds: Tensor::cat(&image_embeds, 0),
        image_feat: Tensor::cat(&image_feat, 0),
        text_embeds: Tensor::cat(&text_embeds.iter().map(pad).collect::<Vec<_>>(), 0),
        text_mask: Tensor::cat(&text_masks.iter().map(pad).collect::<Vec<_>>(), 0),
        text_feat: Tensor::cat(&text_feat, 0),
        text_to_image,
    })
}

/// Recall at 1, 5 and 10 in percent, image->text and text->image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    pub r1_i2t: f64,
    pub r5_i2t: f64,
    pub r10_i2t: f64,
    pub r1_t2i: f64,
    pub r5_t2i: f64,
    pub r10_t2i: f64,
}

impl Recall {
    /// (metric name, value) pairs, in the order of the struct, for logging.
    pub fn entries(&self) -> [(&'static str, f64); 6] {
        [
            ("r1_i2t", self.r1_i2t),
            ("r5_i2t", self.r5_i2t),
            ("r10_i2t", self.r10_i2t),
            ("r1_t2i", self.r1_t2i),
            ("r5_t2i", self.r5_t2i),
            ("r10_t2i", self.r10_t2i),
        ]
    }
}

/// Scores (image, text) pairs with the ITM head: one score per pair, higher is a better match
/// (ALBEF uses the "match" logit). Called with equal-length index lists.
pub type ItmScorer<'a> = dyn FnMut(&[i64], &[i64]) -> Result<Vec<f64>> + 'a;

/// Retrieval recall from L2-normalised features. `image_feat` [N, D], `text_feat` [M, D];
/// `text_to_image[t]` is the image of caption `t` (an image may have several captions).
/// With `itm`, the top `k_test` candidates of every query are re-scored by ITM + ITC.
pub fn retrieval(
    image_feat: &Tensor,
    text_feat: &Tensor,
    text_to_image: &[i64],
    k_test: i64,
    itm: Option<&mut ItmScorer<'_>>,
) -> Result<Recall> {
    let (n_images, _) = image_feat.size2()?;
    let (n_texts, _) = text_feat.size2()?;
    if text_to_image.len() as i64 != n_texts {
        bail!(
            "{} ground-truth entries for {n_texts} captions",
            text_to_image.len()
        );
    }
    if let Some(&bad) = text_to_image.iter().find(|&&i| i < 0 || i >= n_images) {
        bail!("caption ground truth names image {bad}, outside 0..{n_images}");
    }
    if n_images == 0 || n_texts == 0 {
        bail!("retrieval needs at least one image and one caption");
    }
    let sims = tch::no_grad(|| {
        image_feat
            .to_kind(Kind::Float)
            .matmul(&text_feat.to_kind(Kind::Float).tr())
            .to_device(tch::Device::Cpu)
    });
    let (score_i2t, score_t2i) = match itm {
        None => (sims.shallow_clone(), sims.tr().contiguous()),
        Some(itm) => (
            rerank(&sims, k_test, |q, cands| itm(&vec![q; cands.len()], cands))?,
            rerank(&sims.tr().contiguous(), k_test, |q, cands| {
                itm(cands, &vec![q; cands.len()])
            })?,
        ),
    };
    let mut images_of_text = vec![Vec::new(); n_images as usize];
    for (t, &i) in text_to_image.iter().enumerate() {
        images_of_text[i as usize].push(t as i64);
    }
    // i2t: rank of the best-ranked ground-truth caption of each image.
    let i2t_ranks: Vec<i64> = (0..n_images)
        .map(|i| best_rank(&score_i2t.get(i), &images_of_text[i as usize]))
        .collect();
    let t2i_ranks: Vec<i64> = (0..n_texts)
        .map(|t| best_rank(&score_t2i.get(t), &[text_to_image[t as usize]]))
        .collect();
    let recall = |ranks: &[i64], k: i64| {
        if ranks.is_empty() {
            return 0.0;
        }
        100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64
    };
    // Images without any caption cannot be found; they count as misses, as in itm_eval.
    Ok(Recall {
        r1_i2t: recall(&i2t_ranks, 1),
        r5_i2t: recall(&i2t_ranks, 5),
        r10_i2t: recall(&i2t_ranks, 10),
        r1_t2i: recall(&t2i_ranks, 1),
        r5_t2i: recall(&t2i_ranks, 5),
        r10_t2i: recall(&t2i_ranks, 10),
    })
}

/// Score matrix of the re-ranking: for each query row, the top `k_test` candidates by
/// similarity get `itm + similarity`, every other candidate -100.
fn rerank(
    sims: &Tensor,
    k_test: i64,
    mut score: impl FnMut(i64, &[i64]) -> Result<Vec<f64>>,
) -> Result<Tensor> {
    let (rows, cols) = sims.size2()?;
    let k = k_test.clamp(1, cols);
    let (top_sim, top_idx) = sims.topk(k, 1, true, true);
    let mut out = vec![-100f32; (rows * cols) as usize];
    for q in 0..rows {
        let cands: Vec<i64> = Vec::<i64>::try_from(top_idx.get(q))?;
        let sim: Vec<f32> = Vec::<f32>::try_from(top_sim.get(q))?;
        let itm = score(q, &cands)?;
        if itm.len() != cands.len() {
            bail!(
                "the ITM scorer returned {} scores for {} pairs",
                itm.len(),
                cands.len()
            );
        }
        for ((c, s), m) in cands.iter().zip(sim).zip(itm) {
            out[(q * cols + c) as usize] = m as f32 + s;
        }
    }
    Ok(Tensor::from_slice(&out).view([rows, cols]))
}

/// 0-based rank of the best of `targets` in a row of scores (ties go against the target;
/// `cols` when there is no target).
fn best_rank(row: &Tensor, targets: &[i64]) -> i64 {
    let scores: Vec<f32> = Vec::<f32>::try_from(row).unwrap_or_default();
    targets
        .iter()
        .map(|&t| {
            let s = scores[t as usize];
            scores
                .iter()
                .enumerate()
                .filter(|&(j, &x)| x > s || (x == s && j as i64 != t))
                .count() as i64
        })
        .min()
        .unwrap_or(scores.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features whose dot products are the given similarity matrix: images are one-hot rows
    /// (identity), texts are the transposed similarity.
    fn feats(sim: &[&[f32]]) -> (Tensor, Tensor) {
        let n = sim.len() as i64;
        let m = sim[0].len() as i64;
        let flat: Vec<f32> = sim.iter().flat_map(|r| r.iter().copied()).collect();
        let image = Tensor::eye(n, (Kind::Float, tch::Device::Cpu));
        let text = Tensor::from_slice(&flat).view([n, m]).tr().contiguous();
        (image, text)
    }

    #[test]
    fn perfect_diagonal_gives_full_recall() {
        let (i, t) = feats(&[&[0.9, 0.1, 0.0], &[0.2, 0.8, 0.1], &[0.0, 0.3, 0.7]]);
        let r = retrieval(&i, &t, &[0, 1, 2], 16, None).unwrap();
        assert_eq!(
            r,
            Recall {
                r1_i2t: 100.0,
                r5_i2t: 100.0,
                r10_i2t: 100.0,
                r1_t2i: 100.0,
                r5_t2i: 100.0,
                r10_t2i: 100.0
            }
        );
    }

    #[test]
    fn counts_misses_at_one_but_hits_at_five() {
        // Image 0's caption is text 0 but text 1 scores higher; text 0 still ranks image 0 first.
        // Image 1's caption is text 1, which prefers image 0.
        let (i, t) = feats(&[&[0.5, 0.9], &[0.1, 0.3]]);
        let r = retrieval(&i, &t, &[0, 1], 16, None).unwrap();
        assert_eq!(r.r1_i2t, 50.0); // image 1 finds text 1 first (0.3 > 0.1), image 0 misses
        assert_eq!(r.r5_i2t, 100.0);
        assert_eq!(r.r1_t2i, 50.0); // text 0 -> image 0 (0.5 > 0.1); text 1 -> image 0 (0.9 > 0.3): miss
        assert_eq!(r.r5_t2i, 100.0);
    }

    #[test]
    fn several_captions_per_image_use_the_best_ranked_one() {
        // Texts 0 and 1 belong to image 0, text 2 to image 1. Image 0 ranks text 2 first, then
        // text 1: its best ground truth is at rank 1, a miss at 1 and a hit at 5.
        let (i, t) = feats(&[&[0.2, 0.5, 0.6], &[0.1, 0.0, 0.9]]);
        let r = retrieval(&i, &t, &[0, 0, 1], 16, None).unwrap();
        assert_eq!(r.r1_i2t, 50.0);
        assert_eq!(r.r5_i2t, 100.0);
        // Text 0 -> image 0 (0.2 > 0.1), text 1 -> image 0, text 2 -> image 1 (0.9 > 0.6).
        assert_eq!(r.r1_t2i, 100.0);
    }

    #[test]
    fn recall_at_ten_over_a_larger_set() {
        // 20 images, 20 captions; caption t's image is t, but the similarity puts it at rank t
        // (similarity decreases with |t - i| except that the true pair gets rank t).
        let n = 20;
        let mut sim = vec![vec![0f32; n]; n];
        for t in 0..n {
            // For caption t, images 0..t score higher than image t; the rest lower.
            for (i, row) in sim.iter_mut().enumerate() {
                row[t] = if i < t {
                    1.0 - i as f32 * 0.01
                } else if i == t {
                    0.5
                } else {
                    0.1
                };
            }
        }
        let rows: Vec<&[f32]> = sim.iter().map(Vec::as_slice).collect();
        let (i, t) = feats(&rows);
        let gt: Vec<i64> = (0..n as i64).collect();
        let r = retrieval(&i, &t, &gt, 16, None).unwrap();
        assert_eq!(r.r1_t2i, 5.0); // only caption 0 has its image first
        assert_eq!(r.r5_t2i, 25.0);
        assert_eq!(r.r10_t2i, 50.0);
    }

    #[test]
    fn itm_reranks_only_the_top_k() {
        // ITC prefers the wrong pair everywhere; an ITM that recognises the true pairs fixes
        // that when k = 2 and cannot when k = 1 (only the top candidate is re-scored).
        let (i, t) = feats(&[&[0.5, 0.6], &[0.6, 0.5]]);
        let gt = [0, 1];
        assert_eq!(retrieval(&i, &t, &gt, 2, None).unwrap().r1_t2i, 0.0);
        let mut calls = 0;
        let mut itm = |imgs: &[i64], txts: &[i64]| -> Result<Vec<f64>> {
            calls += imgs.len();
            Ok(imgs
                .iter()
                .zip(txts)
                .map(|(&a, &b)| if gt[b as usize] == a { 5.0 } else { -5.0 })
                .collect())
        };
        let r = retrieval(&i, &t, &gt, 2, Some(&mut itm)).unwrap();
        assert_eq!((r.r1_i2t, r.r1_t2i), (100.0, 100.0));
        assert_eq!(calls, 8); // 2 images x 2 candidates + 2 texts x 2 candidates
        let mut oracle = |imgs: &[i64], txts: &[i64]| -> Result<Vec<f64>> {
            Ok(imgs
                .iter()
                .zip(txts)
                .map(|(&a, &b)| if gt[b as usize] == a { 5.0 } else { -5.0 })
                .collect())
        };
        let r = retrieval(&i, &t, &gt, 1, Some(&mut oracle)).unwrap();
        assert_eq!((r.r1_i2t, r.r1_t2i), (0.0, 0.0));
    }

    #[test]
    fn rejects_bad_ground_truth() {
        let (i, t) = feats(&[&[1.0, 0.0], &[0.0, 1.0]]);
        assert!(retrieval(&i, &t, &[0], 4, None)
            .unwrap_err()
            .to_string()
            .contains("ground-truth"));
        assert!(retrieval(&i, &t, &[0, 5], 4, None)
            .unwrap_err()
            .to_string()
            .contains("image 5"));
    }
}
