//! The synthetic, caption-describable web corpus for tests, benchmarks and the demo: pictures of
//! coloured shapes in named places whose captions say exactly what is drawn, with optional noisy
//! captions, duplicates and a held-out split, served over HTTP so that it goes through ingest
//! like real web data, or written straight as a dataset version. Not training code: the
//! `albef corpus` commands, the demo, the benchmarks and the tests use it.
pub mod dataset;
pub mod generate;
pub mod render;
pub mod scene;
pub mod serve;

pub use dataset::{corpus_to_shards, success_row, write_shard};
pub use generate::{generate, read_pairs, GenerateOptions, Pair, Split, Summary};
pub use scene::PAIR_SHARE;
pub use serve::{serve, CorpusServer};
