//! albef-dataset: the dataset format every stage reads and writes. A dataset version is a
//! folder of Parquet shards, `{shard:05}.parquet` with its `{shard:05}.stats.json` published
//! last; `docs/architecture.md` (The shard format) describes the columns and statuses. This
//! crate is the one owner of that format: the schema and row [`Status`], the shard writer and
//! reader, the stats shape, atomic file publication and hashing, and ALBEF's caption cleaning
//! (the `text` column), reading img2dataset's output folders as shards (`img2dataset`), and
//! object storage (`store`: `s3://`, `gs://`, `az://` locations).
//! Ingest, filter, train and the synthetic corpus all go through it.
pub mod caption;
pub mod export;
pub mod files;
pub mod img2dataset;
pub mod layout;
pub mod read;
pub mod schema;
pub mod seed;
pub mod stats;
pub mod store;
pub mod write;

pub use files::{hash_file, write_atomic, write_atomic_with};
pub use layout::{complete_shards, parquet_path, stats_path};
pub use read::{batch_rows, read_batches, read_rows, string_col};
pub use schema::*;
pub use stats::{LateDuplicate, ShardStats, Stats, StepSeconds};
pub use write::ShardWriter;
