//! albef-train: see DESIGN.md for this stage's place in the pipeline.
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod model;
pub mod trainer;
