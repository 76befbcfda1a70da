//! Two workers share one URL list by claiming shards through a Postgres registry; one is killed
//! with SIGKILL while it holds a claim. The other takes that shard over once the lease runs out
//! and finishes the version: every input row appears exactly once, every shard is done once in
//! the registry, and the shards the killed worker committed are neither fetched nor written
//! again.
//!
//! The workers are this test binary started again with `CHILD_ENV` set: each runs the same
//! `schedule_worker::ingest_exclusive` call that `albef ingest --claim-shards` makes.
mod common;
#[allow(dead_code)]
#[path = "../../registry/tests/common/mod.rs"]
mod registry_db;

use albef_dataset as dataset;
use albef_ingest::dedup::{DedupIndex, INDEX_FILE};
use albef_ingest::schedule_worker::{self, LockOptions};
use albef_ingest::{IngestConfig, ShardClaims};
use albef_registry::{DatasetStatus, Registry};
use common::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const CHILD_ENV: &str = "ALBEF_INGEST_CLAIMS_TEST_DIR";
const TEST_NAME: &str = "workers_share_shards_and_take_over_a_dead_ones";
const ROWS: usize = 48;
const SHARD_SIZE: u64 = 4;
const LEASE: Duration = Duration::from_secs(2);

/// The child: one worker named by `ALBEF_CLAIMS_WORKER`; writes whether it finished the version.
async fn worker(dir: &Path) {
    let name = std::env::var("ALBEF_CLAIMS_WORKER").unwrap();
    let url = std::fs::read_to_string(dir.join("registry.url")).unwrap();
    let reg = Registry::connect(&url).await.unwrap();
    let cfg = IngestConfig {
        claims: Some(ShardClaims {
            reg: reg.clone(),
            scope: String::new(),
            owner: name.clone(),
            lease: LEASE,
        }),
        ..worker_config(&dir.join("list.tsv"), &dir.join("ds"), SHARD_SIZE)
    };

    let lock = LockOptions {
        owner: format!("{}:{name}", albef_registry::process_owner()),
        lease: Duration::from_secs(30),
        wait: Duration::from_secs(60),
    };
    let outcome = schedule_worker::ingest_exclusive(
        &reg,
        "shared",
        cfg,
        serde_json::json!({"rows": ROWS}),
        Arc::new(AtomicBool::new(false)),
        &lock,
    )
    .await
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.finished")),
        outcome.finished.to_string(),
    )
    .unwrap();
}

fn start(dir: &Path, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir)
        .env("ALBEF_CLAIMS_WORKER", name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_shards_and_take_over_a_dead_ones() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        worker(Path::new(&dir)).await;
        return;
    }
    let mut routes = HashMap::new();
    for i in 0..ROWS {
        let body = jpeg(&photo(700 + i as u64, 320, 240), 90);
        // Two requests at a time per worker, 60 ms each: about 1.5 s for one worker alone.
        routes.insert(
            format!("/img/{i}.jpg"),
            Reply::Delayed(60, Box::new(ok(body, "image/jpeg"))),
        );
    }
    let server = serve(routes).await;
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::from("url\tcaption\n");
    for i in 0..ROWS {
        list += &format!("{}\tpicture {i}\n", server.url(&format!("/img/{i}.jpg")));
    }
    std::fs::write(dir.path().join("list.tsv"), list).unwrap();
    let (url, db) = registry_db::create_pg_database().await;
    std::fs::write(dir.path().join("registry.url"), &url).unwrap();
    let reg = Registry::connect(&url).await.unwrap();
    let out = dir.path().join("ds");

    let mut a = start(dir.path(), "a");
    let mut b = start(dir.path(), "b");
    // Kill worker a while it holds a claim on a shard that is not complete, once it has done one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let leases = match reg.dataset_version("shared@1").await {
            Ok(v) => reg
                .unit_leases(&format!("ingest-shards:{}", v.id))
                .await
                .unwrap(),
            Err(_) => Vec::new(),
        };
        // Read after the leases: a claim is completed a moment after its shard is committed.
        let complete = dataset::complete_shards(&out).unwrap_or_default();
        let held = leases
            .iter()
            .find(|l| l.owner == "a" && !l.done && !complete.contains(&l.unit.parse().unwrap()))
            .map(|l| l.unit.clone());
        let a_done = leases.iter().any(|l| l.owner == "a" && l.done);
        if let (Some(unit), true) = (held, a_done) {
            break unit;
        }
        assert!(
            a.try_wait().unwrap().is_none(),
            "worker a ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "worker a held no claim within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let killed_at = Instant::now();
    let before = complete_files(&out);
    let held_shard: u64 = held.parse().unwrap();
    assert!(
        !dataset::complete_shards(&out)
            .unwrap()
            .contains(&held_shard),
        "shard {held_shard} was complete when its worker was killed"
    );
    let hits_before: Vec<usize> = (0..ROWS)
        .map(|i| server.hits(&format!("/img/{i}.jpg")))
        .collect();

    let status = tokio::task::spawn_blocking(move || b.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "worker b failed: {status}");
    assert!(
        killed_at.elapsed() >= LEASE / 2,
        "worker b ended before the dead worker's lease could run out"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b.finished")).unwrap(),
        "true",
        "worker b finished the version"
    );

    // Every shard done once in the registry; the dead worker's shard taken over by b.
    let v = reg.dataset_version("shared@1").await.unwrap();
    assert_eq!(v.status, DatasetStatus::Finished);
    assert_eq!(v.rows, ROWS as i64);
    let leases = reg
        .unit_leases(&format!("ingest-shards:{}", v.id))
        .await
        .unwrap();
    assert_eq!(leases.len(), ROWS / SHARD_SIZE as usize, "{leases:?}");
    assert!(leases.iter().all(|l| l.done), "{leases:?}");
    let taken = leases.iter().find(|l| l.unit == held).unwrap();
    assert_eq!(
        (taken.owner.as_str(), taken.attempts),
        ("b", 2),
        "{taken:?}"
    );
    let owners: HashSet<&str> = leases.iter().map(|l| l.owner.as_str()).collect();
    assert_eq!(owners, HashSet::from(["a", "b"]), "both workers did shards");

    // Shards committed before the kill were neither rewritten nor fetched again.
    for (path, t) in &before {
        let now = std::fs::metadata(path).unwrap().modified().unwrap();
        assert_eq!(&now, t, "{} was written again", path.display());
    }
    for (path, _) in before
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "parquet"))
    {
        for row in dataset::read_rows(path, None).unwrap() {
            let i: usize = row.text.strip_prefix("picture ").unwrap().parse().unwrap();
            let p = format!("/img/{i}.jpg");
            assert_eq!(server.hits(&p), hits_before[i], "{p} was fetched again");
        }
    }
    // One row per input row, each a success, and no temporary file left.
    let mut keys = Vec::new();
    for s in dataset::complete_shards(&out).unwrap() {
        for row in dataset::read_rows(&dataset::parquet_path(&out, s), None).unwrap() {
            assert_eq!(
                row.status,
                Some(dataset::Status::Success),
                "{:?}",
                row.error_message
            );
            keys.push(row.key);
        }
    }
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!((n, keys.len()), (ROWS, ROWS), "one row per input row");
    // The version's dedupe index holds the rows of both workers (every URL and picture).
    let index = DedupIndex::load(&out.join(INDEX_FILE)).unwrap();
    assert_eq!(index.len(), (ROWS, ROWS, ROWS), "urls, sha256s, phashes");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
    drop(reg);
    registry_db::drop_pg_database(&db).await;
}
