//! MLflow's logging endpoints, each one [`Registry::log_batch`] transaction: log-batch,
//! log-metric, log-parameter, set-tag; delete-tag; and a metric's history. Metric values are
//! read from their JSON text ([`json_float::parse`]), so each double is stored bit for bit, NaN
//! and the infinities (which MLflow's client sends as "NaN", "Infinity", "-Infinity") included.
use super::runs::metric_json;
use super::{named_run, Answer, Body, KeyValue, MlflowError, Page, Params, RunRef, Writer};
use crate::http::AppState;
use crate::json_float;
use crate::tracking::LoggedPoint;
use crate::{now_ms, Registry};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// MLflow's bounds on one log-batch request (`mlflow/utils/validation.py`): its client never
/// sends more, and the server answers more with INVALID_PARAMETER_VALUE as MLflow's does.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
const MAX_ENTITIES_PER_BATCH: usize = 1000;

/// The most points one history page holds (MLflow's GET_METRIC_HISTORY_MAX_RESULTS).
const MAX_HISTORY_PAGE: usize = 25_000;

/// A metric as MLflow sends it, in a batch or as a log-metric request (which names the run);
/// the value is kept as its JSON text until it is read exactly.
#[derive(Deserialize)]
pub(super) struct MetricIn {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: String,
    value: Box<RawValue>,
    timestamp: Option<i64>,
    step: Option<i64>,
}

impl MetricIn {
    fn point(&self) -> Result<LoggedPoint, MlflowError> {
        let raw = self.value.get();
        let value = json_float::parse(raw).ok_or_else(|| {
            MlflowError::invalid(format!(
                "metric {:?}: value {raw} is not a number (nor \"NaN\", \"Infinity\" or \"-Infinity\")",
                self.key
            ))
        })?;
        Ok(LoggedPoint {
            key: self.key.clone(),
            step: self.step.unwrap_or(0),
            value,
            logged_at: self.timestamp.unwrap_or_else(now_ms),
        })
    }
}

async fn log(
    reg: &Registry,
    run: i64,
    params: &[KeyValue],
    tags: &[KeyValue],
    metrics: &[MetricIn],
) -> Answer {
    let points = metrics
        .iter()
        .map(MetricIn::point)
        .collect::<Result<Vec<_>, _>>()?;
    let pairs = |kv: &[KeyValue]| kv.iter().map(KeyValue::pair).collect::<Vec<_>>();
    reg.log_batch(run, &pairs(params), &pairs(tags), &points)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct Batch {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(default)]
    metrics: Vec<MetricIn>,
    #[serde(default)]
    params: Vec<KeyValue>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

/// `POST runs/log-batch` (token): params, tags and metrics in one transaction.
pub(super) async fn log_batch(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<Batch>,
) -> Answer {
    let (m, p, t) = (b.metrics.len(), b.params.len(), b.tags.len());
    if m > MAX_METRICS_PER_BATCH
        || p + t > MAX_PARAMS_TAGS_PER_BATCH
        || m + p + t > MAX_ENTITIES_PER_BATCH
    {
        return Err(MlflowError::invalid(format!(
            "a batch holds at most {MAX_METRICS_PER_BATCH} metrics, {MAX_PARAMS_TAGS_PER_BATCH} \
             params and tags, {MAX_ENTITIES_PER_BATCH} in all; this one has {m} metrics, {p} \
             params and {t} tags: split it"
        )));
    }
    let run = named_run(&b.run_id, &b.run_uuid)?;
    log(&s.reg, run, &b.params, &b.tags, &b.metrics).await
}

/// `POST runs/log-metric` (token).
pub(super) async fn log_metric(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<MetricIn>,
) -> Answer {
    let run = named_run(&b.run_id, &b.run_uuid)?;
    log(&s.reg, run, &[], &[], std::slice::from_ref(&b)).await
}

#[derive(Deserialize)]
pub(super) struct Pair {
    #[serde(flatten)]
    run: RunRef,
    #[serde(flatten)]
    pair: KeyValue,
}

/// `POST runs/log-parameter` (token): a param is written once, as in MLflow.
pub(super) async fn log_param(State(s): State<AppState>, _: Writer, Body(b): Body<Pair>) -> Answer {
    log(&s.reg, b.run.id()?, std::slice::from_ref(&b.pair), &[], &[]).await
}

/// `POST runs/set-tag` (token).
pub(super) async fn set_tag(State(s): State<AppState>, _: Writer, Body(b): Body<Pair>) -> Answer {
    log(&s.reg, b.run.id()?, &[], std::slice::from_ref(&b.pair), &[]).await
}

#[derive(Deserialize)]
pub(super) struct TagKey {
    #[serde(flatten)]
    run: RunRef,
    key: String,
}

/// `POST runs/delete-tag` (token).
pub(super) async fn delete_tag(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<TagKey>,
) -> Answer {
    s.reg.delete_tag(b.run.id()?, &b.key).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct History {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: String,
    max_results: Option<i64>,
    page_token: Option<String>,
}

/// `GET metrics/get-history?run_id=ID&metric_key=K`: every point by step, or a page of them.
pub(super) async fn get_history(State(s): State<AppState>, Params(q): Params<History>) -> Answer {
    let id = named_run(&q.run_id, &q.run_uuid)?;
    s.reg.run(id).await?;
    let points = s.reg.metric_history(id, &q.metric_key).await?;
    // Without max_results, the whole history in one answer, as MLflow's server gives it.
    let all = points.len().max(1);
    let page = Page::of(
        q.max_results,
        q.page_token.as_deref(),
        all,
        MAX_HISTORY_PAGE.max(all),
    )?;
    let (points, token) = page.cut(points);
    let metrics: Vec<Value> = points
        .iter()
        .map(|p| metric_json(&q.metric_key, p))
        .collect();
    Ok(Json(super::with_token(json!({"metrics": metrics}), token)))
}
