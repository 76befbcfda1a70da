//! albef-train: the ALBEF model in tch, the data loader, the training loop with its
//! checkpoints, and held-out retrieval evaluation (the crate's place in the pipeline:
//! docs/architecture.md). Modules depend one way: `config` <- `model` <- `data` <- `eval` <-
//! `trainer`.
pub mod config;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod model;
pub mod trainer;

/// The trainer's checkpoints, which the filter, evaluation and the CLI also open.
pub use trainer::checkpoint;
