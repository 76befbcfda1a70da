//! Score-weighted training, the alternative to dropping pairs: each pair's loss is multiplied
//! by a weight made from its filter score, so that likely-noisy captions teach less without
//! being thrown away. With `train.score_weights` the loader reads the `score` column of a
//! filtered dataset version (its kept and its `filtered_out` rows), fits a [`LossWeight`] to
//! all of them and gives each batch the weight of each pair; rows without a score get 1.
//!
//! The weight is `floor + (1 - floor) * ((s - lo) / (hi - lo))` clamped to [floor, 1], where
//! `lo` and `hi` are the scores at the 5th and 95th percentile of the dataset: the scale of
//! the raw scores depends on the checkpoint (queue length, temperature), the percentiles make
//! the weights comparable across checkpoints. `floor` > 0 keeps every pair contributing.
use anyhow::{bail, Result};
use serde::Serialize;

/// Maps a filter score to a per-pair loss weight in `[floor, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LossWeight {
    pub lo: f32,
    pub hi: f32,
    pub floor: f32,
}

impl LossWeight {
    /// Fits `lo`/`hi` to the 5th/95th percentile of `scores`.
    pub fn fit(scores: &[f32], floor: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&floor) {
            bail!("the weight floor must lie in [0, 1], not {floor}");
        }
        let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            bail!("no finite scores to fit loss weights to");
        }
        sorted.sort_by(f32::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Ok(Self {
            lo: at(0.05),
            hi: at(0.95),
            floor,
        })
    }

    /// The weight of a pair with `score` (1 for an unscored pair).
    pub fn weight(&self, score: Option<f32>) -> f32 {
        let Some(s) = score.filter(|s| s.is_finite()) else {
            return 1.0;
        };
        let span = self.hi - self.lo;
        let t = if span > 0.0 {
            ((s - self.lo) / span).clamp(0.0, 1.0)
        } else {
            1.0
        };
        self.floor + (1.0 - self.floor) * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_rise_with_score_between_floor_and_one() {
        let scores: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
        let w = LossWeight::fit(&scores, 0.1).unwrap();
        assert_eq!((w.lo, w.hi), (0.05, 0.95));
        assert_eq!(w.weight(Some(0.0)), 0.1);
        assert_eq!(w.weight(Some(1.0)), 1.0);
        assert!((w.weight(Some(0.5)) - 0.55).abs() < 1e-6);
        assert!(w.weight(Some(0.3)) < w.weight(Some(0.6)));
        assert_eq!(w.weight(None), 1.0);
        assert!(LossWeight::fit(&[], 0.1).is_err());
        assert!(LossWeight::fit(&scores, 1.5).is_err());
    }
}
