//! albef-train: see DESIGN.md for this stage's place in the pipeline.
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod model;
pub mod synth;
pub mod trainer;
