//! `albef serve`: the registry as a JSON API and a web page, on axum, and the MLflow tracking API
//! ([`mlflow`]) beside them. Every read endpoint is open; the writing ones (promote, rollback,
//! and MLflow's logging calls) need `Authorization: Bearer TOKEN` and are switched off when the
//! server has no token. Errors are JSON (`{"error", "status"}`, plus `column` and `input` for
//! filter-language errors; MLflow's own form under its prefix) with a matching HTTP status.
mod api;
mod assets;
mod mlflow;

use crate::query::QueryError;
use crate::Registry;
use anyhow::{Context, Result};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    reg: Registry,
    /// The bearer token of the writing endpoints; `None` switches them off.
    token: Option<Arc<str>>,
}

/// The routes of the API and the page.
pub fn router(reg: Registry, token: Option<String>) -> Router {
    let state = AppState {
        reg,
        token: token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{id}", get(api::run))
        .route("/api/runs/{id}/metrics", get(api::run_metrics))
        .route("/api/metric-keys", get(api::metric_keys))
        .route("/api/compare", get(api::compare))
        .route("/api/checkpoints", get(api::checkpoints))
        .route("/api/models", get(api::models))
        .route("/api/models/{model}/history", get(api::model_history))
        .route("/api/models/{model}/promote", post(api::promote))
        .route("/api/models/{model}/rollback", post(api::rollback))
        .route("/api/datasets", get(api::datasets))
        .route(
            "/api/datasets/{name}/versions/{version}",
            get(api::dataset_version),
        )
        .route(
            "/api/datasets/{name}/versions/{version}/contact-sheet",
            get(api::contact_sheet),
        )
        .merge(mlflow::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or endpoint") })
        .with_state(state)
}

/// Serves the registry's routes and the caller's `extra` ones (answers the registry cannot give
/// alone, such as the binary's questions over a dataset's shards) until Ctrl-C (or SIGTERM),
/// then finishes the requests in flight.
pub async fn serve(
    reg: Registry,
    listener: TcpListener,
    token: Option<String>,
    extra: Router,
) -> Result<()> {
    let app = router(reg, token).merge(extra);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the HTTP server failed")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, Ctrl-C keeps its default (terminate) behaviour.
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// An error answered as JSON with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    filter: Option<QueryError>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            filter: None,
        }
    }

    /// A failed registry call: 400 for a filter-language error, 404 for something that does not
    /// exist, `otherwise` for the rest (500 for reads, 409 for writes refused by the registry).
    fn from_registry(e: anyhow::Error, otherwise: StatusCode) -> Self {
        if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<QueryError>()) {
            return Self {
                status: StatusCode::BAD_REQUEST,
                message: format!("{}: {} at column {}", f.what, f.message, f.column),
                filter: Some(f.clone()),
            };
        }
        let message = format!("{e:#}");
        let status = if is_missing(&e) {
            StatusCode::NOT_FOUND
        } else {
            otherwise
        };
        Self::new(status, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::from_registry(e, StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "status": self.status.as_u16()});
        if let Some(f) = &self.filter {
            body["column"] = json!(f.column);
            body["input"] = json!(f.input);
            body["what"] = json!(f.what);
        }
        (self.status, Json(body)).into_response()
    }
}

/// Whether a registry error says that what was asked for does not exist.
fn is_missing(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let s = c.to_string();
        s.contains("does not exist")
            || s.starts_with("no model named")
            || s.starts_with("no dataset named")
            || s.starts_with("no experiment named")
            || s.starts_with("no checkpoint holds")
            || s.contains("has no version")
    })
}

/// A writing request that carries the configured bearer token. As an extractor it runs before
/// the body is read, so a request without the token is refused before its body is parsed and
/// learns nothing of the body's schema.
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers).map(|()| Authorized)
    }
}

/// Lets a writing request through only with the configured bearer token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "writing endpoints are disabled: start `albef serve` with --token or ALBEF_SERVE_TOKEN",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs an `Authorization: Bearer TOKEN` header",
        )),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
