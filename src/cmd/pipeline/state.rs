//! A pipeline run's `state.json`: the stages in order, what each finished stage made, and the
//! checkpoints the run decided to start from. Written atomically after every stage, so a killed
//! run continues where it stopped.
use albef_dataset::write_atomic;
use anyhow::{Context as _, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The stages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Stage {
    Corpus,
    Ingest,
    TrainRaw,
    Filter,
    TrainFiltered,
    Eval,
    Promote,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Corpus,
        Stage::Ingest,
        Stage::TrainRaw,
        Stage::Filter,
        Stage::TrainFiltered,
        Stage::Eval,
        Stage::Promote,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Corpus => "corpus",
            Stage::Ingest => "ingest",
            Stage::TrainRaw => "train-raw",
            Stage::Filter => "filter",
            Stage::TrainFiltered => "train-filtered",
            Stage::Eval => "eval",
            Stage::Promote => "promote",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Stage::Corpus => "generating the synthetic web corpus",
            Stage::Ingest => "ingesting the training data and the evaluation set",
            Stage::TrainRaw => {
                "bootstrap: pretraining on the raw version (no model to filter with yet)"
            }
            Stage::Filter => "scoring captions with the momentum model and filtering",
            Stage::TrainFiltered => "pretraining on the filtered version",
            Stage::Eval => "evaluating the candidates and the alias's holder on the same set",
            Stage::Promote => "promoting the better checkpoint through the gate",
        }
    }
}

/// One dataset version the pipeline made or took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetDone {
    /// NAME@VERSION
    pub spec: String,
    pub uri: String,
    /// Rows of the input, pairs stored as `success`, duplicates caught by dedupe (zeros for a
    /// version the pipeline did not ingest).
    pub input_rows: u64,
    pub success: u64,
    pub duplicates: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CorpusDone {
    pub dir: PathBuf,
    pub train_rows: usize,
    pub heldout_rows: usize,
    pub exact_duplicates: usize,
    pub near_duplicates: usize,
    pub noisy_rows: usize,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestDone {
    pub train: DatasetDone,
    pub eval: DatasetDone,
    /// Whether `train` was ingested by this run (its success rows are the new pairs).
    pub ingested: bool,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainDone {
    pub run: i64,
    /// The dataset version trained on.
    pub dataset: String,
    /// The checkpoint whose weights it started from (continued pretraining).
    pub init: Option<i64>,
    pub step: i64,
    pub checkpoint: i64,
    pub checkpoint_path: PathBuf,
    /// Retrieval on the evaluation set at the last step (percent).
    pub r1_t2i: f64,
    pub r1_i2t: f64,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FilterDone {
    pub dataset: String,
    pub uri: String,
    /// The checkpoint that scored the pairs.
    pub checkpoint: i64,
    pub scored: u64,
    pub kept: u64,
    pub elapsed_s: f64,
}

/// One checkpoint's retrieval on the evaluation set, measured in this run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measured {
    pub checkpoint: i64,
    /// The train stage that made it, or "holder" for the alias's holder.
    pub from: String,
    pub r1_t2i: f64,
    pub r1_i2t: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalDone {
    pub dataset: String,
    pub candidates: Vec<Measured>,
    /// The alias's holder when the stage ran (None: the alias had none).
    pub holder: Option<Measured>,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromoteDone {
    pub model: String,
    pub alias: String,
    pub checkpoint: i64,
    /// The train stage whose checkpoint was put to the gate.
    pub chosen: String,
    pub gate: String,
    /// `passed: ...` or `refused: ...`, with the figures.
    pub gate_result: String,
    /// "promoted", "refused" or "already held".
    pub outcome: String,
    /// The history event (promotion or refusal); None when the checkpoint already held the
    /// alias.
    pub event: Option<i64>,
    pub elapsed_s: f64,
}

/// The checkpoints a run starts from, decided once when it starts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Scores the pairs; None: nothing to filter with yet, so the run bootstraps (train-raw).
    pub filter_checkpoint: Option<i64>,
    /// Weights the train stages start from.
    pub init_checkpoint: Option<i64>,
}

/// `state.json`: what each finished stage made.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The config the recorded stages ran with.
    pub config: Option<Value>,
    pub plan: Option<Plan>,
    /// Every stage is done: the next `albef pipeline` starts a new run.
    #[serde(default)]
    pub finished: bool,
    pub corpus: Option<CorpusDone>,
    pub ingest: Option<IngestDone>,
    pub train_raw: Option<TrainDone>,
    pub filter: Option<FilterDone>,
    /// The union version `train-filtered` trained on (`[train] data = "union"`).
    #[serde(default)]
    pub union: Option<DatasetDone>,
    pub train_filtered: Option<TrainDone>,
    pub eval: Option<EvalDone>,
    pub promote: Option<PromoteDone>,
    /// The run of each train stage that started, resumed when that stage runs again.
    #[serde(default)]
    pub started_runs: BTreeMap<String, i64>,
}

impl State {
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a pipeline state file (start a new run with --new-run)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Forgets the outputs of `stage` and every later stage (their inputs are about to change),
    /// and the started runs of the later stages (and of `stage` itself when it is forced).
    pub fn clear_from(&mut self, stage: Stage, forced: bool) {
        self.finished = false;
        for s in Stage::ALL.into_iter().filter(|&s| s >= stage) {
            match s {
                Stage::Corpus => self.corpus = None,
                Stage::Ingest => self.ingest = None,
                Stage::TrainRaw => self.train_raw = None,
                Stage::Filter => {
                    self.filter = None;
                    self.union = None;
                }
                Stage::TrainFiltered => self.train_filtered = None,
                Stage::Eval => self.eval = None,
                Stage::Promote => self.promote = None,
            }
            if s > stage || forced {
                self.started_runs.remove(s.name());
            }
        }
    }
}
