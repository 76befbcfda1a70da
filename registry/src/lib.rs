//! albef-registry: see DESIGN.md for this stage's place in the pipeline.
