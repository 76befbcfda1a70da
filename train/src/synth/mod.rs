//! The synthetic, caption-describable web corpus for tests, benchmarks and the demo: pictures of
//! coloured shapes in named places whose captions say exactly what is drawn, with optional noisy
//! captions, duplicates and a held-out split, served over HTTP so that it goes through ingest
//! like real web data.
pub mod generate;
pub mod render;
pub mod scene;
pub mod serve;
pub mod shards;

pub use generate::{generate, read_pairs, GenerateOptions, Pair, Split, Summary};
pub use scene::PAIR_SHARE;
pub use serve::{serve, CorpusServer};
pub use shards::{corpus_to_shards, write_shard, ShardRow};
