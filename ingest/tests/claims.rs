//! Two workers share one URL list by claiming shards through a Postgres registry; one is killed
//! with SIGKILL while it holds a claim. The other takes that shard over once the lease runs out
//! and finishes the version: every input row appears exactly once, every shard is done once in
//! the registry, and the shards the killed worker committed are neither fetched nor written
//! again. Twice: into one folder both workers share, and into a prefix of a real S3-compatible
//! server (tests/s3_support/mod.rs) that each worker mirrors in a folder of its own, so that
//! nothing but the store and the registry is shared.
//!
//! The workers are this test binary started again with `CHILD_ENV` set: each runs the same
//! `schedule_worker::ingest_exclusive` call that `albef ingest --claim-shards` makes.
mod common;
#[allow(dead_code)]
#[path = "../../registry/tests/common/mod.rs"]
mod registry_db;
#[path = "../../tests/s3_support/mod.rs"]
mod s3_support;

use albef_dataset as dataset;
use albef_dataset::store::{block_on, Folder, Remote};
use albef_ingest::dedup::{DedupIndex, INDEX_FILE};
use albef_ingest::schedule_worker::{self, LockOptions};
use albef_ingest::{IngestConfig, ShardClaims};
use albef_registry::{DatasetStatus, Registry};
use common::*;
use s3_support::S3Server;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ALBEF_INGEST_CLAIMS_TEST_DIR";
const ROWS: usize = 48;
const SHARD_SIZE: u64 = 4;
const LEASE: Duration = Duration::from_secs(2);

/// Where the workers write: one folder they share, or an object-store prefix that each worker
/// mirrors in a folder of its own.
enum Out {
    Shared(PathBuf),
    Store(String),
}

impl Out {
    /// The `--output` location.
    fn location(&self) -> String {
        match self {
            Out::Shared(dir) => dir.display().to_string(),
            Out::Store(uri) => uri.clone(),
        }
    }

    /// The complete shards, as a reader elsewhere sees them.
    fn complete(&self) -> Vec<u64> {
        match self {
            Out::Shared(dir) => dataset::complete_shards(dir).unwrap_or_default(),
            Out::Store(uri) => {
                let objects = block_on(Remote::open(uri).unwrap().list()).unwrap();
                let mut shards: Vec<u64> = objects
                    .iter()
                    .filter_map(|o| o.name.strip_suffix(".stats.json")?.parse().ok())
                    .collect();
                shards.sort_unstable();
                shards
            }
        }
    }

    /// Each file of a complete shard with what changes when it is written again (its
    /// modification time, or its object's entity tag).
    fn written(&self) -> HashMap<String, String> {
        let complete: HashSet<u64> = self.complete().into_iter().collect();
        let of_complete = |name: &str| {
            let n = name.split('.').next().unwrap_or_default();
            n.parse().is_ok_and(|n: u64| complete.contains(&n))
        };
        match self {
            Out::Shared(dir) => std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| of_complete(&e.file_name().to_string_lossy()))
                .map(|e| {
                    let t = e.metadata().unwrap().modified().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        format!("{t:?}"),
                    )
                })
                .collect(),
            Out::Store(uri) => block_on(Remote::open(uri).unwrap().list())
                .unwrap()
                .into_iter()
                .filter(|o| of_complete(&o.name))
                .map(|o| (o.name, o.e_tag.unwrap_or_default()))
                .collect(),
        }
    }

    /// A folder holding everything the workers published (pulled into `dir` from a store).
    fn read_back(&self, dir: &Path) -> PathBuf {
        match self {
            Out::Shared(out) => out.clone(),
            Out::Store(uri) => {
                let folder = Folder::open(uri, dir).unwrap();
                folder.pull().unwrap();
                folder.local
            }
        }
    }

    /// Names the workers left behind that are not part of the format.
    fn leftovers(&self) -> Vec<String> {
        let names: Vec<String> = match self {
            Out::Shared(dir) => std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Out::Store(uri) => block_on(Remote::open(uri).unwrap().list())
                .unwrap()
                .into_iter()
                .map(|o| o.name)
                .collect(),
        };
        names.into_iter().filter(|n| n.contains(".tmp-")).collect()
    }
}

/// The child: one worker named by `ALBEF_CLAIMS_WORKER`, writing to `ALBEF_CLAIMS_OUTPUT`;
/// writes whether it finished the version.
async fn worker(dir: &Path) {
    let name = std::env::var("ALBEF_CLAIMS_WORKER").unwrap();
    let location = std::env::var("ALBEF_CLAIMS_OUTPUT").unwrap();
    let url = std::fs::read_to_string(dir.join("registry.url")).unwrap();
    let reg = Registry::connect(&url).await.unwrap();
    let mut cfg = IngestConfig {
        claims: Some(ShardClaims {
            reg: reg.clone(),
            scope: String::new(),
            owner: name.clone(),
            lease: LEASE,
        }),
        ..worker_config(&dir.join("list.tsv"), Path::new(&location), SHARD_SIZE)
    };
    if albef_dataset::store::is_remote(&location) {
        // This worker's own mirror: no folder is shared with the other.
        cfg.mirror = dir.join(format!("mirror-{name}"));
        let folder = Folder::open(&location, &cfg.mirror).unwrap();
        cfg.output = folder.local.clone();
        cfg.remote = Some(folder);
    }
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

fn start(dir: &Path, test: &str, out: &Out, env: &[(&str, String)], name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir)
        .env("ALBEF_CLAIMS_WORKER", name)
        .env("ALBEF_CLAIMS_OUTPUT", out.location())
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_shards_and_take_over_a_dead_ones() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        worker(Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Out::Shared(dir.path().join("ds"));
    share_and_take_over(
        dir.path(),
        "workers_share_shards_and_take_over_a_dead_ones",
        out,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_an_object_store_prefix_with_no_shared_folder() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        worker(Path::new(&dir)).await;
        return;
    }
    let server = S3Server::start();
    server.create_bucket("shared");
    let env = server.env();
    for (k, v) in &env {
        std::env::set_var(k, v); // for this process's own reads of the store
    }
    let dir = tempfile::tempdir().unwrap();
    share_and_take_over(
        dir.path(),
        "workers_share_an_object_store_prefix_with_no_shared_folder",
        Out::Store("s3://shared/datasets/web".into()),
        &env,
    )
    .await;
}

/// Starts the two workers on `out`, kills one with SIGKILL while it holds a claim, and checks
/// what the other finishes.
async fn share_and_take_over(dir: &Path, test: &str, out: Out, env: &[(&str, String)]) {
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
    let mut list = String::from("url\tcaption\n");
    for i in 0..ROWS {
        list += &format!("{}\tpicture {i}\n", server.url(&format!("/img/{i}.jpg")));
    }
    std::fs::write(dir.join("list.tsv"), list).unwrap();
    let (url, db) = registry_db::create_pg_database().await;
    std::fs::write(dir.join("registry.url"), &url).unwrap();
    let reg = Registry::connect(&url).await.unwrap();

    let mut a = start(dir, test, &out, env, "a");
    let mut b = start(dir, test, &out, env, "b");
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
        let complete = out.complete();
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
    let before = out.written();
    let held_shard: u64 = held.parse().unwrap();
    assert!(
        !out.complete().contains(&held_shard),
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
        std::fs::read_to_string(dir.join("b.finished")).unwrap(),
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
    let after = out.written();
    for (name, t) in &before {
        assert_eq!(after.get(name), Some(t), "{name} was written again");
    }
    let done = out.read_back(&dir.join("read-back"));
    for name in before.keys().filter(|n| n.ends_with(".parquet")) {
        for row in dataset::read_rows(&done.join(name), None).unwrap() {
            let i: usize = row.text.strip_prefix("picture ").unwrap().parse().unwrap();
            let p = format!("/img/{i}.jpg");
            assert_eq!(server.hits(&p), hits_before[i], "{p} was fetched again");
        }
    }
    // One row per input row, each a success, and no temporary file left.
    let mut keys = Vec::new();
    for s in dataset::complete_shards(&done).unwrap() {
        for row in dataset::read_rows(&dataset::parquet_path(&done, s), None).unwrap() {
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
    let index = DedupIndex::load(&done.join(INDEX_FILE)).unwrap();
    assert_eq!(index.len(), (ROWS, ROWS, ROWS), "urls, sha256s, phashes");
    let leftovers = out.leftovers();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    if let Out::Store(uri) = &out {
        assert_eq!(v.uri, *uri, "the version is registered at its store URI");
    }
    drop(reg);
    registry_db::drop_pg_database(&db).await;
}
