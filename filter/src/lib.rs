//! albef-filter: scores noisy captions with a trained checkpoint's momentum model and makes a
//! filtered dataset version (docs/albef.md explains the pseudo-targets it scores with). `score`
//! computes the pseudo-target scores, `select` chooses the kept pairs, `run` rewrites the
//! shards and registers the version, and `report` draws histograms and the contact sheet.
//! Score-weighted training (`train.score_weights`) lives in the trainer's data loader.
pub mod report;
pub mod run;
pub mod score;
pub mod select;

pub use run::{run, score_dataset, FilterJob, Scored, Summary};
pub use score::{PairScores, ScoreName, Scorer, INVARIANCE_TOLERANCE, SCORE_COLUMNS};
pub use select::{select, Selection};
