//! Runs a test body against both backends: a fresh SQLite file in a temporary folder, and a
//! fresh Postgres database (`albef_test_<random hex>`, dropped afterwards) on the server named by
//! `ALBEF_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
use albef_registry::Registry;
use sqlx::Connection;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;

/// What a test body gets: the registry and a scratch folder for files (checkpoints).
/// (Each test binary compiles this module and uses only some of the fields.)
#[allow(dead_code)]
pub struct Env {
    pub backend: &'static str,
    pub reg: Registry,
    pub dir: PathBuf,
    /// The registry URL, for tests that run the CLI or open a second handle.
    pub url: String,
}

pub fn admin_url() -> String {
    std::env::var("ALBEF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_hex() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A fresh Postgres database; returns its URL and name.
pub async fn create_pg_database() -> (String, String) {
    let admin = admin_url();
    let name = format!("albef_test_{}", random_hex());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Postgres at {admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let base = base.split('?').next().unwrap();
    (format!("{base}/{name}"), name)
}

pub async fn drop_pg_database(name: &str) {
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Runs `body` on SQLite, then on Postgres; fails with the backend's name if either fails.
#[allow(dead_code)]
pub async fn on_both<F, Fut>(body: F)
where
    F: Fn(Env) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("reg/registry.db").display());
    let reg = Registry::connect(&url).await.unwrap();
    let env = Env {
        backend: "sqlite",
        reg,
        dir: dir.path().to_path_buf(),
        url,
    };
    let sqlite = tokio::spawn(body(env)).await;

    let pg_dir = tempfile::tempdir().unwrap();
    let (url, name) = create_pg_database().await;
    let reg = Registry::connect(&url).await.unwrap();
    let env = Env {
        backend: "postgres",
        reg,
        dir: pg_dir.path().to_path_buf(),
        url,
    };
    let postgres = tokio::spawn(body(env)).await;
    drop_pg_database(&name).await;

    for (backend, result) in [("sqlite", sqlite), ("postgres", postgres)] {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("[{backend}] {e:#}"),
            Err(e) => panic!("[{backend}] the test panicked: {e}"),
        }
    }
}

#[allow(dead_code)]
/// The error message of a result that must be an error.
pub fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}
