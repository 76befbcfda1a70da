//! Which pairs a filter keeps: the top fraction by score (DataComp keeps its top 30% by CLIP
//! score) or those at or above a threshold (BLIP's CapFilt drops captions whose ITM match
//! probability is under 0.5). The cut is a function of the set of (key, score) pairs alone:
//! ties at the cut are broken by key, so the shard order cannot change what is kept.
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::HashSet;

/// How to choose the kept pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Keep `ceil(f * n)` pairs with the highest scores, `0 < f <= 1`.
    KeepFraction(f64),
    /// Keep pairs whose score is at least this.
    Threshold(f64),
}

impl Selection {
    pub fn validate(self) -> Result<Self> {
        match self {
            Selection::KeepFraction(f) if !(f > 0.0 && f <= 1.0) => {
                bail!("--keep-fraction must lie in (0, 1], not {f}")
            }
            Selection::Threshold(t) if !t.is_finite() => {
                bail!("--threshold must be a finite number, not {t}")
            }
            s => Ok(s),
        }
    }
}

/// The outcome of a selection: the kept keys and the score of the weakest kept pair (the
/// effective threshold; `None` when nothing is kept).
#[derive(Debug)]
pub struct Cut {
    pub kept: HashSet<String>,
    pub min_kept_score: Option<f32>,
}

/// Applies `selection` to `(key, score)` pairs.
pub fn select(scored: &[(String, f32)], selection: Selection) -> Cut {
    let mut order: Vec<&(String, f32)> = scored.iter().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let n_kept = match selection {
        Selection::KeepFraction(f) => ((f * scored.len() as f64).ceil() as usize).min(scored.len()),
        Selection::Threshold(t) => order.iter().filter(|(_, s)| f64::from(*s) >= t).count(),
    };
    let kept_rows = &order[..n_kept];
    Cut {
        kept: kept_rows.iter().map(|(k, _)| k.clone()).collect(),
        min_kept_score: kept_rows.last().map(|(_, s)| *s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(scores: &[f32]) -> Vec<(String, f32)> {
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("k{i}"), *s))
            .collect()
    }

    #[test]
    fn keep_fraction_rounds_up_and_breaks_ties_by_key() {
        let p = pairs(&[0.1, 0.9, 0.5, 0.5, 0.2]);
        let cut = select(&p, Selection::KeepFraction(0.5));
        assert_eq!(cut.kept.len(), 3);
        assert!(cut.kept.contains("k1") && cut.kept.contains("k2") && cut.kept.contains("k3"));
        let cut = select(&p, Selection::KeepFraction(0.3));
        assert_eq!(cut.kept.len(), 2);
        assert!(cut.kept.contains("k1") && cut.kept.contains("k2"));
        assert_eq!(cut.min_kept_score, Some(0.5));
    }

    #[test]
    fn threshold_keeps_scores_at_or_above() {
        let p = pairs(&[0.1, 0.9, 0.5, 0.49]);
        let cut = select(&p, Selection::Threshold(0.5));
        assert_eq!(cut.kept.len(), 2);
        assert!(cut.kept.contains("k1") && cut.kept.contains("k2"));
        assert!(select(&p, Selection::Threshold(0.95)).kept.is_empty());
    }

    #[test]
    fn invalid_selections_are_refused() {
        assert!(Selection::KeepFraction(0.0).validate().is_err());
        assert!(Selection::KeepFraction(1.5).validate().is_err());
        assert!(Selection::Threshold(f64::NAN).validate().is_err());
        assert!(Selection::KeepFraction(1.0).validate().is_ok());
    }
}
