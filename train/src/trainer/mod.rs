//! The pretraining loop and its parts: the optimiser (AdamW with the official parameter
//! groups, state saved in checkpoints), the per-step schedules of the learning rate and of the
//! distillation weight alpha, the checkpoints a run resumes from, and the registry glue that
//! tracks a run.
pub mod adamw;
pub mod checkpoint;
pub mod dist;
pub mod fit;
pub mod schedule;
pub mod tracking;

pub use adamw::{AdamW, AdamWOptions};
pub use dist::Dist;
pub use fit::{train, train_rank, TrainJob, Trained};
pub use schedule::{AlphaRamp, LrSchedule};
pub use tracking::Tracking;
