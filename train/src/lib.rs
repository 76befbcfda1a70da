//! albef-train: ALBEF pretraining with tch. `model` (ViT, BERT, the pretraining model and its
//! losses, docs/albef.md), `data` (a dataset version to batches), `trainer` (the loop, the
//! optimiser, the schedule, tracking), `checkpoint`, `eval`; docs/architecture.md places it.
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod model;
pub mod trainer;
