//! albef-ingest: turns URL lists of image-text pairs into a dataset version (Parquet shards).
//! The stages, one file each, in pipeline order: `source` (read the list) -> `canon` and
//! `dedup` (skip what was seen) -> `fetch` (download) -> `resizer` (decode, check, resize,
//! encode) -> `phash`/`dedup` (duplicates by content) -> `shard` (write) with `stats`;
//! `pipeline` runs them together. `shard` is the dataset format the other stages read.
pub mod canon;
pub mod caption;
pub mod catalog;
pub mod dedup;
pub mod fetch;
pub mod phash;
pub mod pipeline;
pub mod resizer;
pub mod robots;
pub mod schedule_worker;
pub mod shard;
pub mod source;
pub mod stats;

pub use pipeline::{run, IngestConfig, Lineage, Summary};

/// Default largest pHash Hamming distance between near duplicates, chosen from the measurement
/// printed by `cargo test --release -p albef-ingest --test near_dup -- --nocapture`.
pub const DEFAULT_PHASH_DISTANCE: u32 = 6;
