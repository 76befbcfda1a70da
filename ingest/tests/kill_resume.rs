//! An ingest killed with SIGKILL in the middle of its run, then run again: the second run
//! finishes the same dataset version, every input row appears exactly once across the shards,
//! shards completed before the kill are neither fetched nor written again, no partial shard or
//! temporary file is left, and dedupe still holds across the kill.
//!
//! The killed process is this test binary started again with `CHILD_ENV` set: it runs the same
//! `catalog::ingest` call that `albef ingest` makes, against the scripted server of the parent.
mod common;

use albef_dataset::{self as dataset, Status};
use albef_ingest::catalog;
use albef_ingest::IngestConfig;
use albef_registry::{DatasetStatus, Registry};
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const CHILD_ENV: &str = "ALBEF_INGEST_KILL_TEST_DIR";
const TEST_NAME: &str = "killed_run_resumes_with_one_row_per_input";
const ROWS: usize = 64;
const SHARD_SIZE: u64 = 8;
/// Rows whose images have the same bytes under two URLs in different shards.
const COPY: (usize, usize) = (3, 45);

fn config(dir: &Path) -> IngestConfig {
    worker_config(&dir.join("list.tsv"), &dir.join("ds"), SHARD_SIZE)
}

async fn ingest(dir: &Path) -> catalog::Outcome {
    let reg = Registry::connect(&format!("sqlite://{}", dir.join("reg.db").display()))
        .await
        .unwrap();
    catalog::ingest(
        &reg,
        "killed",
        config(dir),
        serde_json::json!({"rows": ROWS}),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap()
}

/// Modification times of the complete shards' Parquet and stats files.
fn complete_files(out: &Path) -> HashMap<PathBuf, SystemTime> {
    let mut files = HashMap::new();
    for s in dataset::complete_shards(out).unwrap() {
        for p in [dataset::parquet_path(out, s), dataset::stats_path(out, s)] {
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            files.insert(p, t);
        }
    }
    files
}

fn names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_run_resumes_with_one_row_per_input() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        // The child: run until killed.
        ingest(Path::new(&dir)).await;
        return;
    }
    let mut routes = HashMap::new();
    for i in 0..ROWS {
        let seed = if i == COPY.1 { COPY.0 } else { i } as u64;
        let body = jpeg(&photo(500 + seed, 320, 240), 90);
        // Two requests at a time, 40 ms each: about 1.3 s for the whole list.
        routes.insert(
            format!("/img/{i}.jpg"),
            Reply::Delayed(40, Box::new(ok(body, "image/jpeg"))),
        );
    }
    let server = serve(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::from("url\tcaption\n");
    for i in 0..ROWS {
        list += &format!("{}\tpicture {i}\n", server.url(&format!("/img/{i}.jpg")));
    }
    std::fs::write(dir.path().join("list.tsv"), list).unwrap();
    let out = dir.path().join("ds");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Kill it once some but not all shards are complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = dataset::complete_shards(&out).unwrap().len();
        if done >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no shard completed in 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = complete_files(&out);
    let done_before = dataset::complete_shards(&out).unwrap();
    assert!(
        (done_before.len() as u64) < ROWS as u64 / SHARD_SIZE,
        "killed too late: every shard was already complete"
    );
    // What the kill left: every visible Parquet file is whole (closed before it was renamed).
    for name in names(&out).iter().filter(|n| n.ends_with(".parquet")) {
        let rows = dataset::read_rows(&out.join(name), None)
            .unwrap_or_else(|e| panic!("{name} is visible but unreadable: {e:#}"));
        assert_eq!(rows.len() as u64, SHARD_SIZE, "{name} is partial");
    }
    let hits_before: Vec<usize> = (0..ROWS)
        .map(|i| server.hits(&format!("/img/{i}.jpg")))
        .collect();

    let outcome = ingest(dir.path()).await;
    assert!(outcome.finished, "{:?}", outcome.summary);
    assert_eq!(
        outcome.version, 1,
        "the re-run continues the killed version"
    );
    assert_eq!(
        outcome.summary.shards_written.len() + done_before.len(),
        ROWS / SHARD_SIZE as usize,
        "each shard written once: {:?} after {done_before:?}",
        outcome.summary.shards_written
    );
    for (path, t) in &before {
        let now = std::fs::metadata(path).unwrap().modified().unwrap();
        assert_eq!(&now, t, "{} was written again", path.display());
    }
    for s in &done_before {
        for i in (s * SHARD_SIZE)..((s + 1) * SHARD_SIZE) {
            let path = format!("/img/{i}.jpg");
            assert_eq!(
                server.hits(&path),
                hits_before[i as usize],
                "{path} of complete shard {s} was fetched again"
            );
        }
    }

    let mut rows = Vec::new();
    for s in dataset::complete_shards(&out).unwrap() {
        rows.extend(dataset::read_rows(&dataset::parquet_path(&out, s), None).unwrap());
    }
    assert_eq!(rows.len(), ROWS, "one row per input row");
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.url, server.url(&format!("/img/{i}.jpg")), "row {i}");
        assert_eq!(row.text, format!("picture {i}"));
    }
    rows.dedup_by(|a, b| a.key == b.key);
    assert_eq!(rows.len(), ROWS, "every key once");
    let (a, b) = (&rows[COPY.0], &rows[COPY.1]);
    let (kept, dup) = if a.status == Some(Status::Success) {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(
        kept.status,
        Some(Status::Success),
        "{:?}",
        kept.error_message
    );
    assert_eq!(
        dup.status,
        Some(Status::Duplicate),
        "{:?}",
        dup.error_message
    );
    assert_eq!(dup.dup_of.as_deref(), Some(kept.key.as_str()));
    let others = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != COPY.0 && *i != COPY.1)
        .filter(|(_, r)| r.status != Some(Status::Success))
        .map(|(_, r)| format!("{}: {:?} {:?}", r.url, r.status, r.error_message))
        .collect::<Vec<_>>();
    assert!(others.is_empty(), "{others:#?}");

    let leftovers: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let reg = Registry::connect(&format!("sqlite://{}", dir.path().join("reg.db").display()))
        .await
        .unwrap();
    let v = reg.dataset_version("killed").await.unwrap();
    assert_eq!(v.status, DatasetStatus::Finished);
    assert_eq!(v.rows, ROWS as i64);
    assert_eq!(
        reg.shards(v.id).await.unwrap().len(),
        ROWS / SHARD_SIZE as usize
    );
}
