//! The two per-step schedules of pretraining, as pure functions of the optimiser step so that a
//! resumed run computes exactly the values an uninterrupted one would: the learning rate
//! (linear warm-up from `warmup_lr` to `lr`, then cosine down to `min_lr`) and the momentum
//! distillation weight alpha (a linear ramp from 0 over the first epoch(s)).
//!
//! The official code warms up over 2000 iterations and then steps the cosine per epoch
//! (Pretrain.py L47-48, L78-79, L156, timm `CosineLRScheduler`); we step both per optimiser
//! step, which is smoother and independent of the epoch length. Alpha follows Pretrain.py
//! L61-64: `alpha * min(1, i / len(data_loader))` in the first epoch.
use crate::config::{ModelConfig, TrainConfig};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Warm-up then cosine decay, per optimiser step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub warmup_lr: f64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: i64,
    /// Total optimiser steps of the run; the cosine reaches `min_lr` at the last one.
    pub total_steps: i64,
}

impl LrSchedule {
    /// The schedule of a run of `total_steps` optimiser steps with the config's recipe.
    pub fn new(train: &TrainConfig, total_steps: i64) -> Self {
        Self {
            warmup_lr: train.warmup_lr,
            lr: train.lr,
            min_lr: train.min_lr,
            warmup_steps: train.warmup_steps.max(0),
            total_steps,
        }
    }

    /// The learning rate of optimiser step `step` (0-based).
    pub fn lr_at(&self, step: i64) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + (self.lr - self.warmup_lr) * t;
        }
        let decay_steps = (self.total_steps - 1 - self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / decay_steps as f64).clamp(0.0, 1.0);
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (PI * t).cos())
    }
}

/// The momentum-distillation weight: 0 at the first step, `alpha` after the ramp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlphaRamp {
    pub alpha: f64,
    /// Optimiser steps over which alpha rises linearly (`alpha_warmup_epochs` x steps/epoch).
    pub ramp_steps: i64,
}

impl AlphaRamp {
    /// The ramp over `train.alpha_warmup_epochs` epochs of `steps_per_epoch` optimiser steps.
    pub fn new(model: &ModelConfig, train: &TrainConfig, steps_per_epoch: i64) -> Self {
        let ramp_steps = (train.alpha_warmup_epochs * steps_per_epoch as f64).round() as i64;
        Self {
            alpha: model.alpha,
            ramp_steps: ramp_steps.max(0),
        }
    }

    /// Alpha at optimiser step `step` (0-based).
    pub fn alpha_at(&self, step: i64) -> f64 {
        if self.ramp_steps == 0 {
            return self.alpha;
        }
        self.alpha * (step as f64 / self.ramp_steps as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> LrSchedule {
        LrSchedule {
            warmup_lr: 1e-5,
            lr: 1e-4,
            min_lr: 1e-6,
            warmup_steps: 10,
            total_steps: 111,
        }
    }

    #[test]
    fn warmup_is_linear_from_warmup_lr_to_lr() {
        let s = schedule();
        assert_eq!(s.lr_at(0), 1e-5);
        assert!((s.lr_at(5) - 5.5e-5).abs() < 1e-18);
        let slope: Vec<f64> = (0..10).map(|i| s.lr_at(i + 1) - s.lr_at(i)).collect();
        for d in &slope {
            assert!((d - 9e-6).abs() < 1e-15, "warm-up increments {slope:?}");
        }
        assert_eq!(s.lr_at(10), 1e-4);
    }

    #[test]
    fn cosine_decays_monotonically_to_min_lr_at_the_last_step() {
        let s = schedule();
        // Halfway through the decay the cosine is at the midpoint of lr and min_lr.
        assert!((s.lr_at(60) - (1e-4 + 1e-6) / 2.0).abs() < 1e-15);
        for step in 10..110 {
            assert!(
                s.lr_at(step + 1) < s.lr_at(step),
                "not decreasing at {step}"
            );
        }
        assert!((s.lr_at(110) - 1e-6).abs() < 1e-18);
        // Past the planned end (a resume with more steps than planned) it stays at min_lr.
        assert!((s.lr_at(500) - 1e-6).abs() < 1e-18);
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = LrSchedule {
            warmup_steps: 0,
            ..schedule()
        };
        assert_eq!(s.lr_at(0), 1e-4);
    }

    #[test]
    fn alpha_ramps_linearly_then_holds() {
        let ramp = AlphaRamp {
            alpha: 0.4,
            ramp_steps: 100,
        };
        assert_eq!(ramp.alpha_at(0), 0.0);
        assert!((ramp.alpha_at(25) - 0.1).abs() < 1e-12);
        assert!((ramp.alpha_at(50) - 0.2).abs() < 1e-12);
        assert_eq!(ramp.alpha_at(100), 0.4);
        assert_eq!(ramp.alpha_at(1000), 0.4);
        assert_eq!(
            AlphaRamp {
                alpha: 0.4,
                ramp_steps: 0
            }
            .alpha_at(0),
            0.4
        );
    }
}
