//! The MLflow tracking API under `/api/2.0/mlflow/`: the REST endpoints MLflow's Python client
//! calls to track experiments and runs and to set, read and remove registered-model aliases, so
//! that a script logging with `mlflow` logs into the registry unchanged. Each endpoint maps onto
//! one registry call; docs/mlflow.md lists the mapping and its limits. In short:
//!
//! - experiment ids are the registry's ids in decimal; `"0"`, MLflow's default experiment, is the
//!   experiment named `Default`;
//! - run ids are the registry's run id as 32 lower-case hex digits, zero-padded (run 7 is
//!   `00000000000000000000000000000007`), so that each maps to the other without a table;
//! - a model version is a checkpoint (version `"3"` is checkpoint 3); an alias set through the
//!   API is a promotion with actor `mlflow`, recorded like `albef ckpt promote`, and a removed
//!   alias is recorded too;
//! - filter strings and `order_by` are translated into the registry's filter language
//!   ([`filter`]) and run by its one search.
//!
//! Reads are open; writes need the server's bearer token, which MLflow's client sends from
//! `MLFLOW_TRACKING_TOKEN`. Errors are MLflow's: `{"error_code", "message"}` with the HTTP status
//! MLflow gives that code.
mod experiments;
mod filter;
mod logging;
mod models;
mod runs;

use super::{authorize, is_missing, ApiError, AppState};
use crate::query::QueryError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

const PREFIX: &str = "/api/2.0/mlflow";

/// The routes under [`PREFIX`].
pub(super) fn routes() -> Router<AppState> {
    let at = |path: &str| format!("{PREFIX}/{path}");
    Router::new()
        .route(
            &at("experiments/get-by-name"),
            get(experiments::get_by_name),
        )
        .route(&at("experiments/get"), get(experiments::get))
        .route(&at("experiments/create"), post(experiments::create))
        .route(&at("experiments/search"), post(experiments::search))
        .route(&at("runs/create"), post(runs::create))
        .route(&at("runs/get"), get(runs::get))
        .route(&at("runs/update"), post(runs::update))
        .route(&at("runs/delete"), post(runs::delete))
        .route(&at("runs/search"), post(runs::search))
        .route(&at("runs/log-batch"), post(logging::log_batch))
        .route(&at("runs/log-metric"), post(logging::log_metric))
        .route(&at("runs/log-parameter"), post(logging::log_param))
        .route(&at("runs/set-tag"), post(logging::set_tag))
        .route(&at("runs/delete-tag"), post(logging::delete_tag))
        .route(&at("metrics/get-history"), get(logging::get_history))
        .route(&at("registered-models/create"), post(models::create_model))
        .route(&at("registered-models/get"), get(models::get_model))
        .route(
            &at("registered-models/alias"),
            post(models::set_alias)
                .get(models::get_by_alias)
                .delete(models::delete_alias),
        )
        .route(&at("{*rest}"), axum::routing::any(not_served))
}

/// Any other MLflow endpoint: MLflow's "endpoint not found", which its client understands.
async fn not_served() -> MlflowError {
    MlflowError::new(
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
        "albef serves MLflow's tracking and alias endpoints only (docs/mlflow.md lists them)",
    )
}

/// An error in MLflow's form, with the HTTP status MLflow gives its code.
#[derive(Debug)]
pub(super) struct MlflowError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl MlflowError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A request that names something wrongly or asks for what albef does not keep.
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    fn missing(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
    }
}

/// A failed registry call: a filter error or a refused write is the client's (400), something
/// missing is 404, a name taken is RESOURCE_ALREADY_EXISTS, and a database failure is 500 (which
/// MLflow's client retries).
impl From<anyhow::Error> for MlflowError {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        if e.chain().any(|c| c.is::<QueryError>()) {
            Self::invalid(message)
        } else if is_missing(&e) {
            Self::missing(message)
        } else if message.contains("already exists") {
            Self::new(StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS", message)
        } else if e.chain().any(|c| c.is::<sqlx::Error>()) {
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
        } else {
            Self::invalid(message)
        }
    }
}

/// A refusal of the token check, in MLflow's codes.
impl From<ApiError> for MlflowError {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
            _ => "PERMISSION_DENIED",
        };
        Self::new(e.status, code, e.message)
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        let body = json!({"error_code": self.code, "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

type Answer = Result<Json<Value>, MlflowError>;

/// A writing request: it carries the server's bearer token. As an extractor it runs before the
/// body is read, so a request without the token stores nothing and learns nothing.
pub(super) struct Writer;

impl FromRequestParts<AppState> for Writer {
    type Rejection = MlflowError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, MlflowError> {
        Ok(authorize(state, &parts.headers).map(|()| Writer)?)
    }
}

/// A JSON request body; an empty body reads as `{}`. Malformed JSON is MLflow's
/// INVALID_PARAMETER_VALUE rather than axum's plain-text rejection.
pub(super) struct Body<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, MlflowError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| MlflowError::invalid(format!("reading the request body: {e}")))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(Body).map_err(|e| {
            MlflowError::invalid(format!(
                "the request body is not what this endpoint takes: {e}"
            ))
        })
    }
}

/// The query string of a GET request.
pub(super) struct Params<T>(T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for Params<T> {
    type Rejection = MlflowError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, MlflowError> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(q)| Params(q))
            .map_err(|e| MlflowError::invalid(format!("the query string: {}", e.body_text())))
    }
}

/// A run's id in MLflow's form: the registry id as 32 hex digits.
pub(super) fn run_id_hex(id: i64) -> String {
    format!("{id:032x}")
}

/// The registry id of a run id in MLflow's form.
pub(super) fn parse_run_id(text: &str) -> Result<i64, MlflowError> {
    let id = (text.len() == 32)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
        .and_then(|n| i64::try_from(n).ok())
        .filter(|&n| n > 0);
    id.ok_or_else(|| {
        MlflowError::invalid(format!(
            "run id {text:?} is not an albef run id: 32 hex digits of the run's number, such as \
             {} for run 7",
            run_id_hex(7)
        ))
    })
}

/// The run a request names: MLflow's client sends `run_id` and, for old servers, `run_uuid`.
/// (Requests that hold a metric value or a number in a query string carry these two fields
/// themselves: serde's `flatten` cannot buffer a raw JSON value, nor read a number from a query
/// string.)
#[derive(Deserialize)]
pub(super) struct RunRef {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

impl RunRef {
    fn id(&self) -> Result<i64, MlflowError> {
        named_run(&self.run_id, &self.run_uuid)
    }
}

fn named_run(run_id: &Option<String>, run_uuid: &Option<String>) -> Result<i64, MlflowError> {
    match run_id.as_deref().or(run_uuid.as_deref()) {
        Some(id) if !id.is_empty() => parse_run_id(id),
        _ => Err(MlflowError::invalid(
            "the request names no run: give run_id",
        )),
    }
}

/// A key and value, as MLflow sends params and tags.
#[derive(Clone, Deserialize)]
pub(super) struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

impl KeyValue {
    fn pair(&self) -> (String, String) {
        (self.key.clone(), self.value.clone())
    }
}

/// Where a paged listing starts and how much of it one page holds.
pub(super) struct Page {
    pub offset: usize,
    pub size: usize,
}

impl Page {
    /// From MLflow's `max_results` (with a default and a bound) and `page_token` (an offset, as
    /// this API hands it out).
    fn of(
        max_results: Option<i64>,
        token: Option<&str>,
        default: usize,
        most: usize,
    ) -> Result<Page, MlflowError> {
        let size = match max_results {
            None | Some(0) => default,
            Some(n) if (1..=most as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(MlflowError::invalid(format!(
                    "max_results {n} is out of range: expected 1 to {most}"
                )))
            }
        };
        let offset = match token.filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t.parse().map_err(|_| {
                MlflowError::invalid(format!(
                    "page_token {t:?} is not one this server handed out"
                ))
            })?,
        };
        Ok(Page { offset, size })
    }

    /// This page of `items` (which may hold one more than the page, to tell that more follow),
    /// and the token of the next page when there is one.
    fn cut<T>(&self, items: Vec<T>) -> (Vec<T>, Option<String>) {
        let more = items.len() > self.offset + self.size;
        let page: Vec<T> = items
            .into_iter()
            .skip(self.offset)
            .take(self.size)
            .collect();
        (page, more.then(|| (self.offset + self.size).to_string()))
    }
}

/// Adds `next_page_token` to an answer when another page follows.
fn with_token(mut answer: Value, token: Option<String>) -> Value {
    if let Some(t) = token {
        answer["next_page_token"] = json!(t);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_map_both_ways() {
        assert_eq!(run_id_hex(7), "00000000000000000000000000000007");
        assert_eq!(parse_run_id(&run_id_hex(i64::MAX)).unwrap(), i64::MAX);
        assert_eq!(
            parse_run_id("0000000000000000000000000000002a").unwrap(),
            42
        );
        for bad in [
            "7",
            "00000000000000000000000000000000",
            "8000000000000000000000000000000z",
            &"f".repeat(32),
        ] {
            assert!(parse_run_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_cut_by_offset() {
        let page = Page::of(Some(2), Some("1"), 10, 100).unwrap();
        assert_eq!(page.cut(vec![1, 2, 3, 4]), (vec![2, 3], Some("3".into())));
        assert_eq!(page.cut(vec![1, 2, 3]), (vec![2, 3], None));
        assert!(Page::of(Some(101), None, 10, 100).is_err());
        assert!(Page::of(None, Some("x"), 10, 100).is_err());
    }
}
