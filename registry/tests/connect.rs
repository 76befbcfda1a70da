//! Opening the registry: many processes creating one SQLite file at once, Postgres addresses
//! that refuse connections, TLS to Postgres, and the bound on each Postgres statement.
mod common;
use albef_registry::{Registry, RunSearch};
use common::{admin_url, create_pg_database, drop_pg_database};
use sqlx::{Connection, Row};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[test]
fn eight_processes_can_open_one_fresh_sqlite_registry_at_once() {
    // Each thread has its own runtime and pool, as a process would; several fresh files, since a
    // race does not show every time.
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let start = Arc::new(Barrier::new(8));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (url, start) = (url.clone(), start.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    start.wait();
                    rt.block_on(async {
                        let reg = Registry::connect(&url).await?;
                        reg.create_run("e", &format!("r{i}"), &serde_json::json!({}))
                            .await
                    })
                })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.join().unwrap() {
                panic!("round {round}: {e:#}");
            }
        }
    }
}

#[tokio::test]
async fn a_refused_postgres_address_fails_at_once_and_is_named() {
    let started = Instant::now();
    let e = Registry::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .expect_err("nothing listens on port 1");
    let text = format!("{e:#}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        text.contains("127.0.0.1:1") && text.to_lowercase().contains("connection refused"),
        "{text}"
    );
}

#[tokio::test]
async fn sslmode_require_uses_tls_when_the_server_offers_it() {
    let (url, name) = create_pg_database().await;
    let tls_url = format!("{url}?sslmode=require");
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let server_ssl: String = sqlx::query("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .get(0);
    let opened = Registry::connect(&tls_url).await;
    if server_ssl == "on" {
        opened.unwrap();
        let mut conn = sqlx::PgConnection::connect(&tls_url).await.unwrap();
        let ssl: bool = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "the connection is not encrypted");
    } else {
        let text = format!("{:#}", opened.unwrap_err());
        assert!(text.contains("server does not support TLS"), "{text}");
    }
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_statement_past_the_timeout_is_cancelled() {
    let (url, name) = create_pg_database().await;
    let reg = Registry::connect_with(&url, Duration::from_millis(500))
        .await
        .unwrap();
    // Another session holds the runs table, so the search waits past its bound.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let e = reg.search_runs(&RunSearch::default()).await.unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("statement timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert!(reg
        .search_runs(&RunSearch::default())
        .await
        .unwrap()
        .is_empty());
    drop(blocker);
    drop(reg);
    drop_pg_database(&name).await;
}
