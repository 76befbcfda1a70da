//! The pretraining loop and its parts: the optimiser (AdamW with the official parameter
//! groups, state saved in checkpoints), and the per-step schedules of the learning rate and
//! of the distillation weight alpha.
pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWOptions};
pub use schedule::{AlphaRamp, LrSchedule};
