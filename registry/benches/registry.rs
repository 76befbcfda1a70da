//! The registry benchmark (`scripts/bench-registry`): metric points per second through the
//! buffered writer, and the latency (median, p95) of six searches, the issue's "top 20 runs by
//! min(metrics.loss) where params.lr = X" first, over 10,000 runs with 100 points each (1M
//! points), through the same search path as `albef runs search`,
//! on a fresh SQLite file and a fresh Postgres database. MLflow's figures, measured in-process on
//! the same machine (issue 2), are printed beside ours.
//!
//! Sizes: ALBEF_BENCH_POINTS (default 1,000,000), ALBEF_BENCH_RUNS (default 10,000),
//! ALBEF_BENCH_REPEATS (default 50). Postgres: ALBEF_TEST_POSTGRES_URL.
// Only the Postgres helpers of the shared test module are used here.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use albef_registry::{MetricWriterOptions, Registry, RunSearch, RunStatus};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};

const MLFLOW_LOG_BATCH_PG: f64 = 9_400.0;
const MLFLOW_LOG_BATCH_SQLITE: f64 = 11_800.0;
const MLFLOW_SEARCH_PG_MS: f64 = 20.0;
const LRS: [&str; 5] = ["0.1", "0.01", "0.001", "0.0001", "0.5"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs `points` points (4 keys) into one run and returns points per second, from the first
/// log() to the end of finish() (everything durable in the database).
async fn throughput(reg: &Registry, points: usize) -> Result<f64> {
    let run = reg
        .create_run("bench-throughput", "writer", &json!({}))
        .await?;
    let keys = ["loss", "loss_itc", "loss_itm", "loss_mlm"];
    let writer = reg.metric_writer_with(
        run,
        MetricWriterOptions {
            batch: 10_000,
            interval: Duration::from_millis(500),
        },
    );
    let start = Instant::now();
    for i in 0..points {
        let key = keys[i % keys.len()];
        writer.log(key, (i / keys.len()) as i64, 1.0 / (1.0 + i as f64))?;
    }
    writer.finish().await?;
    let secs = start.elapsed().as_secs_f64();
    let stored: i64 = reg
        .metric_summaries(run)
        .await?
        .iter()
        .map(|s| s.count)
        .sum();
    anyhow::ensure!(
        stored as usize == points,
        "stored {stored} of {points} points"
    );
    Ok(points as f64 / secs)
}

/// `runs` runs with an lr param, a stage tag, 100 loss points each and, for every tenth run, the
/// status FAILED (the rest stay RUNNING), loaded by 8 concurrent tasks.
async fn load_runs(reg: &Registry, runs: usize) -> Result<()> {
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let reg = reg.clone();
            tokio::spawn(async move {
                for i in (t..runs).step_by(8) {
                    let run = reg
                        .create_run("bench-search", &format!("run-{i}"), &json!({}))
                        .await?;
                    reg.log_params(run, &[("lr".into(), LRS[i % LRS.len()].into())])
                        .await?;
                    let stage = if i % 3 == 0 { "filtered" } else { "pretrain" };
                    reg.set_tags(run, &[("stage".into(), stage.into())]).await?;
                    let w = reg.metric_writer(run);
                    for step in 0..100 {
                        // A noisy, decaying curve whose minimum differs per run.
                        let v = 2.0 + ((i * 7919 + step * 104_729) % 1000) as f64 / 500.0
                            - step as f64 / 100.0;
                        w.log("loss", step as i64, v)?;
                    }
                    w.finish().await?;
                    if i % 10 == 9 {
                        reg.finish_run(run, RunStatus::Failed).await?;
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The searches timed: (label, filter, order by, limit). The first is the query.
const QUERIES: [(&str, &str, &str, i64); 6] = [
    (
        "top 20 by min(loss), lr = X",
        "params.lr = '0.001'",
        "min(metrics.loss) ASC",
        20,
    ),
    (
        "top 20 by last loss, lr = X",
        "params.lr = '0.001'",
        "metrics.loss ASC",
        20,
    ),
    (
        "min(loss) < 1.5 AND lr IN (2)",
        "min(metrics.loss) < 1.5 AND params.lr IN ('0.1', '0.01')",
        "start_time DESC",
        20,
    ),
    (
        "tag = X OR name LIKE, by max",
        "tags.stage = 'filtered' OR name LIKE 'run-99%'",
        "max(metrics.loss) DESC",
        20,
    ),
    (
        "status AND last loss > 1.0",
        "status = 'FAILED' AND metrics.loss > 1.0",
        "metrics.loss ASC",
        20,
    ),
    ("newest 100, no filter", "", "start_time DESC", 100),
];

/// Median and 95th percentile in milliseconds of `repeats` runs of one search, and its rows.
async fn search_latency(
    reg: &Registry,
    (_, filter, order_by, limit): (&str, &str, &str, i64),
    repeats: usize,
) -> Result<(f64, f64, usize)> {
    let search = RunSearch {
        experiment: None,
        filter: Some(filter.into()),
        order_by: Some(order_by.into()),
        limit: Some(limit),
    };
    let mut found = 0;
    for _ in 0..5 {
        found = reg.search_runs(&search).await?.len();
    }
    let mut ms = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let hits = reg.search_runs(&search).await?;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(hits.len() == found);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((pick(0.5), pick(0.95), found))
}

async fn analyze(url: &str) -> Result<()> {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::query("ANALYZE").execute(&mut c).await?;
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await?;
        sqlx::query("ANALYZE").execute(&mut c).await?;
    }
    Ok(())
}

struct Figures {
    points_per_s: f64,
    searches: Vec<(f64, f64, usize)>,
    load_s: f64,
}

async fn bench(url: &str, points: usize, runs: usize, repeats: usize) -> Result<Figures> {
    let reg = Registry::connect(url).await?;
    let points_per_s = throughput(&reg, points).await?;
    let start = Instant::now();
    load_runs(&reg, runs).await?;
    let load_s = start.elapsed().as_secs_f64();
    analyze(url).await?;
    let mut searches = Vec::new();
    for q in QUERIES {
        searches.push(search_latency(&reg, q, repeats).await?);
    }
    Ok(Figures {
        points_per_s,
        searches,
        load_s,
    })
}

fn report(backend: &str, f: &Figures, mlflow_points: f64, runs: usize) {
    println!("{backend}:");
    println!(
        "  metric logging {:>10.0} points/s   MLflow log_batch {:>6.0}/s   ratio {:.0}x",
        f.points_per_s,
        mlflow_points,
        f.points_per_s / mlflow_points
    );
    println!("  search over {runs} runs          median ms   p95 ms   rows");
    for ((label, ..), (p50, p95, n)) in QUERIES.iter().zip(&f.searches) {
        println!("    {label:<30} {p50:>8.2} {p95:>8.2} {n:>6}");
    }
    if backend == "postgres" {
        println!(
            "  MLflow search_runs, last-value form of the first query: ~{MLFLOW_SEARCH_PG_MS:.0} ms"
        );
    }
    println!(
        "  (loading {runs} runs x 100 points took {:.1} s)",
        f.load_s
    );
}

fn main() -> Result<()> {
    let points = env_usize("ALBEF_BENCH_POINTS", 1_000_000);
    let runs = env_usize("ALBEF_BENCH_RUNS", 10_000);
    let repeats = env_usize("ALBEF_BENCH_REPEATS", 50).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "albef registry benchmark: {points} points through the buffered writer (batches of 10,000); \
             search over {runs} runs x 100 points, {repeats} repeats of each query"
        );
        let dir = tempfile::tempdir()?;
        let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let sqlite = bench(&sqlite_url, points, runs, repeats).await.context("sqlite")?;
        report("sqlite", &sqlite, MLFLOW_LOG_BATCH_SQLITE, runs);

        let (pg_url, name) = common::create_pg_database().await;
        let pg = bench(&pg_url, points, runs, repeats).await;
        common::drop_pg_database(&name).await;
        report("postgres", &pg.context("postgres")?, MLFLOW_LOG_BATCH_PG, runs);
        Ok(())
    })
}
