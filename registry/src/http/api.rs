//! The JSON endpoints of `albef serve`: thin wrappers that parse the query, call one registry
//! method and answer its result (or an [`ApiError`]).
use super::{ApiError, AppState, Authorized};
use crate::datasets::{histograms, DatasetVersion, Histogram, Shard};
use crate::models::{Checkpoint, ModelAliases, PromotionEvent, PromotionRequest};
use crate::tracking::{Comparison, RunDetail, RunSearch};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The most points one metric history answers with, unless `max_points` asks otherwise.
const DEFAULT_MAX_POINTS: usize = 2000;

#[derive(Deserialize)]
pub(super) struct RunsQuery {
    filter: Option<String>,
    experiment: Option<String>,
    order_by: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs`: a search with the filter language; each hit carries its metric summaries.
pub(super) async fn runs(
    State(s): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Value> {
    let search = RunSearch {
        experiment: q.experiment.filter(|e| !e.is_empty()),
        filter: q.filter,
        order_by: q.order_by,
        limit: q.limit,
    };
    let hits = s
        .reg
        .search_runs(&search)
        .await
        .map_err(|e| ApiError::from_registry(e, StatusCode::BAD_REQUEST))?;
    let ids: Vec<i64> = hits.iter().map(|h| h.run.id).collect();
    let mut summaries = s.reg.metric_summaries_of(&ids).await?;
    let out = hits
        .into_iter()
        .map(|h| {
            json!({
                "run": h.run,
                "values": h.values,
                "metrics": summaries.remove(&h.run.id).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

/// `GET /api/runs/{id}`: params, tags and metric summaries.
pub(super) async fn run(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<RunDetail> {
    Ok(Json(s.reg.run_detail(id).await?))
}

#[derive(Deserialize)]
pub(super) struct MetricsQuery {
    key: Option<String>,
    max_points: Option<usize>,
}

/// `GET /api/runs/{id}/metrics?key=K`: the history of K (thinned to `max_points`); without a key,
/// the summaries of every metric.
pub(super) async fn run_metrics(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<MetricsQuery>,
) -> Result<Response, ApiError> {
    Ok(match q.key.filter(|k| !k.is_empty()) {
        Some(key) => {
            let max = q.max_points.unwrap_or(DEFAULT_MAX_POINTS);
            Json(s.reg.metric_history_for_plot(id, &key, max).await?).into_response()
        }
        None => {
            s.reg.run(id).await?;
            Json(s.reg.metric_summaries(id).await?).into_response()
        }
    })
}

/// `GET /api/metric-keys`: every metric key logged by any run.
pub(super) async fn metric_keys(State(s): State<AppState>) -> ApiResult<Vec<String>> {
    Ok(Json(s.reg.metric_keys().await?))
}

#[derive(Deserialize)]
pub(super) struct CompareQuery {
    runs: String,
}

/// `GET /api/compare?runs=1,2`: params (with differences marked) and metric summaries.
pub(super) async fn compare(
    State(s): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> ApiResult<Comparison> {
    let ids = q
        .runs
        .split(',')
        .map(|p| {
            p.trim().parse::<i64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("runs={:?}: {p:?} is not a run id", q.runs),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(s.reg.compare_runs(&ids).await.map_err(|e| {
        ApiError::from_registry(e, StatusCode::BAD_REQUEST)
    })?))
}

#[derive(Deserialize)]
pub(super) struct CheckpointsQuery {
    model: Option<String>,
}

/// `GET /api/checkpoints[?model=M]`: newest first, with their aliases.
pub(super) async fn checkpoints(
    State(s): State<AppState>,
    Query(q): Query<CheckpointsQuery>,
) -> ApiResult<Vec<Checkpoint>> {
    let model = q.model.filter(|m| !m.is_empty());
    Ok(Json(s.reg.checkpoints(model.as_deref()).await?))
}

/// `GET /api/models`: models and the checkpoint each alias points at.
pub(super) async fn models(State(s): State<AppState>) -> ApiResult<Vec<ModelAliases>> {
    Ok(Json(s.reg.models().await?))
}

/// `GET /api/models/{m}/history`: the promotion events, oldest first.
pub(super) async fn model_history(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> ApiResult<Vec<PromotionEvent>> {
    Ok(Json(s.reg.promotion_history(&model).await?))
}

#[derive(Deserialize)]
pub(super) struct PromoteBody {
    checkpoint: i64,
    alias: String,
    /// A gate such as `metrics.r1 >= current`.
    require: Option<String>,
    reason: Option<String>,
    actor: Option<String>,
}

/// `POST /api/models/{m}/promote` (token): moves an alias through the registry's gate.
pub(super) async fn promote(
    State(s): State<AppState>,
    Path(model): Path<String>,
    _: Authorized,
    Json(body): Json<PromoteBody>,
) -> ApiResult<PromotionEvent> {
    let req = PromotionRequest {
        checkpoint: body.checkpoint,
        model,
        alias: body.alias,
        require: body.require.filter(|r| !r.is_empty()),
        reason: body.reason,
        actor: body.actor.unwrap_or_else(|| "api".into()),
    };
    Ok(Json(s.reg.promote(&req).await.map_err(|e| {
        ApiError::from_registry(e, StatusCode::CONFLICT)
    })?))
}

#[derive(Deserialize)]
pub(super) struct RollbackBody {
    alias: String,
    reason: Option<String>,
    actor: Option<String>,
}

/// `POST /api/models/{m}/rollback` (token): moves an alias back to its previous holder.
pub(super) async fn rollback(
    State(s): State<AppState>,
    Path(model): Path<String>,
    _: Authorized,
    Json(body): Json<RollbackBody>,
) -> ApiResult<PromotionEvent> {
    let actor = body.actor.unwrap_or_else(|| "api".into());
    Ok(Json(
        s.reg
            .rollback(&model, &body.alias, &actor, body.reason.as_deref())
            .await
            .map_err(|e| ApiError::from_registry(e, StatusCode::CONFLICT))?,
    ))
}

/// `GET /api/datasets`: every dataset version with its statistics.
pub(super) async fn datasets(State(s): State<AppState>) -> ApiResult<Vec<DatasetVersion>> {
    Ok(Json(s.reg.dataset_versions(None).await?))
}

/// One version in full: its shards and the score histograms found in its statistics.
#[derive(Serialize)]
pub(super) struct VersionDetail {
    version: DatasetVersion,
    shards: Vec<Shard>,
    histograms: Vec<Histogram>,
    /// Where `contact-sheet` serves the sheet from, when the statistics name one.
    contact_sheet: Option<String>,
}

/// `GET /api/datasets/{name}/versions/{v}`.
pub(super) async fn dataset_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, i64)>,
) -> ApiResult<VersionDetail> {
    let v = s.reg.dataset_version(&format!("{name}@{version}")).await?;
    let shards = s.reg.shards(v.id).await?;
    let stats = v.stats.clone().unwrap_or(Value::Null);
    let contact_sheet = stats
        .get("contact_sheet")
        .and_then(Value::as_str)
        .map(|_| format!("/api/datasets/{name}/versions/{version}/contact-sheet"));
    Ok(Json(VersionDetail {
        histograms: histograms(&stats),
        version: v,
        shards,
        contact_sheet,
    }))
}

/// `GET /api/datasets/{name}/versions/{v}/contact-sheet`: the file named by the version's
/// `stats.contact_sheet` (an image or an HTML page), and nothing else from the disk.
pub(super) async fn contact_sheet(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let v = s.reg.dataset_version(&format!("{name}@{version}")).await?;
    let Some(path) = v
        .stats
        .as_ref()
        .and_then(|st| st.get("contact_sheet"))
        .and_then(Value::as_str)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("dataset {name}@{version} has no contact sheet in its statistics"),
        ));
    };
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("contact sheet {path} of dataset {name}@{version}: {e}"),
        )
    })?;
    let kind = match path
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        Some("html" | "htm") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response())
}
