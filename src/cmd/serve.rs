//! `albef serve`: opens the registry and serves its JSON API, the web dashboard and the MLflow
//! tracking API (`albef_registry::http`). Prints the bound address on stdout, so that `--addr 127.0.0.1:0`
//! can be used by scripts and tests. It speaks plain HTTP, so it refuses an address other
//! machines can reach unless `--allow-insecure` says that a TLS proxy or a trusted network is in
//! front of it.
use super::datasets::shard_paths;
use super::{positive_seconds, Context};
use crate::dataset_sql;
use albef_registry::Registry;
use anyhow::{bail, Context as _, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed). Other than
    /// a loopback address it needs --allow-insecure
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Bearer token that enables the writing endpoints (promote, rollback, MLflow's logging calls,
    /// which send it from MLFLOW_TRACKING_TOKEN); without one the API is read-only
    #[arg(long, env = "ALBEF_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve plain HTTP on an address other machines can reach (behind a TLS proxy, or on a
    /// trusted network): the registry is readable by anyone who reaches it, and the token crosses
    /// the network unencrypted
    #[arg(long)]
    allow_insecure: bool,
    /// Seconds one registry statement of a request may run on Postgres before it is cancelled
    #[arg(long, default_value = "30", value_parser = positive_seconds)]
    statement_timeout: f64,
}

impl ServeArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let has_token = self.token.as_deref().is_some_and(|t| !t.is_empty());
        let listener = tokio::net::TcpListener::bind(&self.addr)
            .await
            .with_context(|| format!("cannot listen on {}", self.addr))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("reading the bound address of {}", self.addr))?;
        if !self.allow_insecure {
            refuse_insecure(&self.addr, bound, has_token)?;
        }
        let timeout = Duration::from_secs_f64(self.statement_timeout);
        let reg = Registry::connect_with(&ctx.registry_url, timeout).await?;
        let mode = if has_token {
            "promote, rollback and MLflow's writes need the bearer token"
        } else {
            "read-only"
        };
        println!(
            "albef serve: listening on http://{bound}/ ({mode}, registry {})",
            reg.backend()
        );
        std::io::stdout().flush().context("writing to stdout")?;
        let extra = dataset_routes(reg.clone(), ctx.home.clone());
        albef_registry::http::serve(reg, listener, self.token, extra).await
    }
}

/// Fails, saying why and what to do, when `bound` is reachable from other machines: without a
/// token anyone there reads the registry; with one, the token travels in clear text.
/// `GET /api/datasets/{name}/versions/{version}/hosts`: the version's rows by host
/// (`dataset_sql::hosts_sql`), which the dashboard's dataset page shows. It lives here, not in
/// the registry's API, because it reads the shards with polars.
fn dataset_routes(reg: Registry, home: PathBuf) -> Router {
    Router::new()
        .route("/api/datasets/{name}/versions/{version}/hosts", get(hosts))
        .with_state((reg, Arc::new(home)))
}

async fn hosts(
    State((reg, home)): State<(Registry, Arc<PathBuf>)>,
    UrlPath((name, version)): UrlPath<(String, i64)>,
) -> Response {
    let shards = match shard_paths(&reg, &format!("{name}@{version}"), &home).await {
        Ok(shards) => shards,
        Err(e) => return api_error(StatusCode::NOT_FOUND, e),
    };
    let answer = tokio::task::spawn_blocking(move || {
        dataset_sql::table(&dataset_sql::query(&shards, &dataset_sql::hosts_sql())?)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|t| t);
    match answer {
        Ok(t) => Json(t.to_json()).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// An error in the API's JSON form (`{"error", "status"}`).
fn api_error(status: StatusCode, e: anyhow::Error) -> Response {
    let body = json!({ "error": format!("{e:#}"), "status": status.as_u16() });
    (status, Json(body)).into_response()
}

fn refuse_insecure(addr: &str, bound: SocketAddr, has_token: bool) -> Result<()> {
    if bound.ip().is_loopback() {
        return Ok(());
    }
    let why = if has_token {
        "the bearer token would cross the network unencrypted (albef serve speaks plain HTTP)"
    } else {
        "there is no --token, and anyone who reaches it could read every run, checkpoint and \
         dataset over plain HTTP"
    };
    bail!(
        "refusing to serve on {addr} ({bound}), which other machines can reach: {why}. Listen on \
         127.0.0.1 behind a TLS-terminating reverse proxy, or pass --allow-insecure if the network \
         is trusted or a proxy already encrypts it"
    )
}
