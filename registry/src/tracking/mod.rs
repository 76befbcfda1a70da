//! Experiment tracking: experiments and runs with their status, params, tags and the dataset
//! version they trained on; metric history and per-run summaries, written by the buffered
//! [`MetricWriter`]; run search with the [`crate::query`] language; and the read-only views the
//! dashboards draw (comparisons, metric keys, thinned histories). It depends on no other area.
mod experiments;
mod metrics;
mod runs;
mod search;
mod views;

pub use experiments::Experiment;
pub use metrics::{LoggedPoint, MetricWriter, MetricWriterOptions};
pub(crate) use runs::run_status;
pub use runs::{MetricPoint, MetricSummary, Run, RunDetail, RunOrigin, RunStatus};
pub use search::{RunSearch, SearchHit, MAX_SEARCH_RESULTS};
pub use views::{Comparison, MetricRow, ParamRow, MAX_COMPARED_RUNS};
