//! `albef corpus serve`: a small static HTTP server over a generated corpus, so that the
//! synthetic pictures go through ingest exactly like web data. Tests and the pipeline start it
//! in-process with `serve`; it rewrites the URL lists with the address it actually bound.
use super::generate::write_url_lists;
use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server. `shutdown` stops it and reports how it ended; dropping it also stops it.
pub struct CorpusServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl CorpusServer {
    /// `http://ADDR`, the prefix of every URL in the lists.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, lets open ones finish and waits for the server to end.
    pub async fn shutdown(self) -> Result<()> {
        // An error here means the server already ended; its result says why.
        let _ = self.stop.send(());
        self.task
            .await
            .context("the corpus server task panicked")?
            .context("the corpus server failed")
    }
}

/// Serves the files under `dir` on `addr` (port 0 picks a free one) and writes `urls.tsv` and
/// `heldout.tsv` with that address.
pub async fn serve(dir: &Path, addr: SocketAddr) -> Result<CorpusServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    write_url_lists(dir, &format!("http://{addr}"))?;
    let root = Arc::new(dir.to_path_buf());
    let app = Router::new().fallback(get_file).with_state(root);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // A dropped sender (the server handle dropped) also stops the server.
                let _ = stopped.await;
            })
            .await
    });
    Ok(CorpusServer { addr, stop, task })
}

async fn get_file(State(root): State<Arc<PathBuf>>, uri: Uri) -> Response {
    let relative = Path::new(uri.path().trim_start_matches('/'));
    let safe = relative.components().count() > 0
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        return status(StatusCode::NOT_FOUND);
    }
    match tokio::fs::read(root.join(relative)).await {
        Ok(bytes) => Response::builder()
            .header(header::CONTENT_TYPE, content_type(relative))
            .body(Body::from(bytes))
            .expect("a static response is well-formed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => status(StatusCode::NOT_FOUND),
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .expect("an empty response is well-formed")
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("tsv") => "text/tab-separated-values; charset=utf-8",
        _ => "application/octet-stream",
    }
}
