//! Training data: the `success` rows of a dataset version's Parquet shards (or, for
//! score-weighted training, every row the filter scored), turned into augmented, normalised,
//! tokenised batches by worker threads, deterministically for a seed and split by rank.
//! `version` reads, `augment` and `tokenize` transform one sample's picture and caption, `weight`
//! turns filter scores into loss weights, `loader` orders, batches and prefetches.
pub mod augment;
pub mod loader;
pub mod tokenize;
pub mod version;
pub mod weight;

pub use loader::{loader_config, Batch, Epoch, Item, Loader, LoaderConfig, Mode};
pub use version::{DatasetIndex, Rows, Sample};
pub use weight::LossWeight;
