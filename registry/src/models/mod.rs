//! The model registry: checkpoints (files a run wrote, with their sha256 and a metric snapshot),
//! models and their aliases (`MODEL@ALIAS`), and promotion: moving an alias through a gate
//! written in the [`crate::query`] language, rollback, and the append-only promotion history.
//! A checkpoint belongs to a run of [`crate::tracking`].
mod aliases;
mod checkpoints;
mod promotion;

pub use aliases::{AliasHolder, ModelAliases};
pub use checkpoints::{Checkpoint, CheckpointFile};
pub use promotion::{Gate, JudgedPromotion, PromotionEvent, PromotionRequest};
