//! The pretraining loop and its parts: the optimiser (AdamW with the official parameter
//! groups, state saved in checkpoints), the per-step schedules of the learning rate and of the
//! distillation weight alpha, and the registry glue that tracks a run.
pub mod adamw;
pub mod fit;
pub mod schedule;
pub mod tracking;

pub use adamw::{AdamW, AdamWOptions};
pub use fit::{train, Ending, Outcome, TrainJob};
pub use schedule::{AlphaRamp, LrSchedule};
pub use tracking::Tracking;
