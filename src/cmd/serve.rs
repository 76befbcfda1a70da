//! `albef serve`: opens the registry and serves its JSON API and the web dashboard
//! (`albef_registry::http`). Prints the bound address on stdout, so that `--addr 127.0.0.1:0`
//! can be used by scripts and tests.
use super::Context;
use albef_registry::Registry;
use anyhow::{Context as _, Result};
use clap::Args;
use std::io::Write;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Bearer token that enables the writing endpoints (promote, rollback); without one the API is read-only
    #[arg(long, env = "ALBEF_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServeArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url).await?;
        let listener = tokio::net::TcpListener::bind(&self.addr)
            .await
            .with_context(|| format!("cannot listen on {}", self.addr))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("reading the bound address of {}", self.addr))?;
        let mode = if self.token.as_deref().is_some_and(|t| !t.is_empty()) {
            "promote and rollback need the bearer token"
        } else {
            "read-only"
        };
        println!(
            "albef serve: listening on http://{bound}/ ({mode}, registry {})",
            reg.backend()
        );
        std::io::stdout().flush().context("writing to stdout")?;
        albef_registry::http::serve(reg, listener, self.token).await
    }
}
