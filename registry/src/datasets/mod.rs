//! Datasets: versions (a folder of Parquet shards made by one stage, with its parameters, its
//! parent version and a [`DatasetStatus`]), their shards, the score histograms found in a
//! version's statistics, and the dataset lock that keeps two writers off one dataset (a work
//! lease of [`crate::jobs`]).
mod histograms;
mod lock;
mod versions;

pub use histograms::{histograms, Histogram};
pub use lock::{DatasetLock, DATASET_LOCK_SCOPE};
pub use versions::{DatasetStatus, DatasetVersion, NewDatasetVersion, NewShard, Shard};
