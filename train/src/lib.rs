//! albef-train: see DESIGN.md for this stage's place in the pipeline.
pub mod config;
pub mod model;
