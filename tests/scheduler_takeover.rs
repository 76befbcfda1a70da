//! The scheduler end to end, on a SQLite file and on a fresh Postgres database: two worker
//! processes (`albef scheduler run`), the first killed with SIGKILL in the middle of a slow
//! ingest (a URL list served by an HTTP server this test runs on 127.0.0.1, answering slowly).
//! The job completes exactly once, its history shows the takeover, and no shard is written
//! twice (the shards committed before the kill keep their files, and their URLs were fetched
//! once). Also: two overlapping `albef ingest` runs on one dataset, the second refused by the
//! dataset lock with a message naming the holder; and SIGTERM, which stops an ingest at its
//! next safe point.
use albef_registry::{DatasetStatus, Registry};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../registry/tests/common/mod.rs"]
mod pg;

const ROWS: usize = 30;
const SHARD: usize = 5;

/// An HTTP server that answers every request with a 404 after `delay`, counting requests by path.
fn slow_server(delay: Duration) -> (u16, Arc<Mutex<HashMap<String, u32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let counts = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counts = counts.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                *counts.lock().unwrap().entry(path).or_insert(0) += 1;
                std::thread::sleep(delay);
                let body = b"not here";
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            });
        }
    });
    (port, hits)
}

fn albef(registry: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_albef"));
    cmd.arg("--registry").arg(registry).args(args);
    cmd
}

fn check(out: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

/// The JSON a command prints on stdout (logs go to stderr).
fn json_of(registry: &str, args: &[&str]) -> serde_json::Value {
    let out = albef(registry, args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    check(out, &args.join(" "));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_list(dir: &Path, port: u16) -> PathBuf {
    let list = dir.join("list.tsv");
    let mut text = String::from("url\tcaption\n");
    for i in 0..ROWS {
        text += &format!("http://127.0.0.1:{port}/img/{i}.jpg\ta photo number {i}\n");
    }
    std::fs::write(&list, text).unwrap();
    list
}

/// Complete shards of a folder: shard number -> (inode, mtime in ns) of its Parquet file.
fn complete_shards(dir: &Path) -> HashMap<u64, (u64, i64)> {
    albef_dataset::complete_shards(dir)
        .unwrap()
        .into_iter()
        .map(|s| {
            let m = std::fs::metadata(albef_dataset::parquet_path(dir, s)).unwrap();
            (s, (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
        })
        .collect()
}

fn kill_and_take_over(registry: &str, dir: &Path) {
    let (port, hits) = slow_server(Duration::from_millis(150));
    let list = write_list(dir, port);
    let out = dir.join("out");
    let (list_s, out_s) = (list.display().to_string(), out.display().to_string());
    let ingest_flags = [
        "--input",
        &list_s,
        "--output",
        &out_s,
        "--dataset",
        "web",
        "--shard-size",
        "5",
        "--per-host-concurrency",
        "1",
        "--retries",
        "0",
        "--timeout",
        "5",
    ];
    let mut add = vec!["schedule", "add", "nightly", "--cron", "0 3 * * *"];
    add.extend(ingest_flags);
    check(albef(registry, &add).output().unwrap(), "schedule add");
    let listed = json_of(registry, &["schedule", "list", "--format", "json"]);
    assert_eq!(listed[0]["name"], "nightly");
    assert!(
        listed[0]["next_run"]
            .as_str()
            .unwrap()
            .ends_with("03:00:00Z"),
        "{listed}"
    );
    let trig = check(
        albef(registry, &["schedule", "trigger", "nightly"])
            .output()
            .unwrap(),
        "trigger",
    );
    assert!(trig.contains("queued job 1"), "{trig}");

    let worker = |owner: &str, once: bool| -> Child {
        let mut args = vec![
            "scheduler",
            "run",
            "--lease-secs",
            "2",
            "--poll-secs",
            "0.2",
            "--owner",
            owner,
        ];
        if once {
            args.push("--once");
        }
        albef(registry, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut a = worker("A", false);
    let job_dir = out.join("job-1");
    wait_for("worker A's first shard", Duration::from_secs(60), || {
        !complete_shards(&job_dir).is_empty()
    });
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let before = complete_shards(&job_dir);
    assert!(
        before.len() < ROWS / SHARD,
        "A finished before the kill: {before:?}"
    );

    let b = worker("B", true);
    let b_out = b.wait_with_output().unwrap();
    let b_text = check(b_out, "worker B");
    assert!(
        b_text.contains("1 succeeded") && b_text.contains("1 taken over"),
        "{b_text}"
    );

    // Exactly once, with the takeover in the history.
    let jobs = json_of(registry, &["schedule", "jobs", "--format", "json"]);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs[0]["status"], "SUCCEEDED");
    let runs = jobs[0]["runs"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r["owner"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(summary, [("A:w0", "LOST"), ("B:w0", "SUCCEEDED")], "{jobs}");
    assert!(runs[0]["error"]
        .as_str()
        .unwrap()
        .contains("taken over by B:w0"));
    assert_eq!(runs[1]["stats"]["input_rows"], ROWS);

    // No shard written twice: the files committed before the kill are untouched, the URLs of
    // their rows were fetched once, and every shard has one file and one registry row.
    let after = complete_shards(&job_dir);
    assert_eq!(after.len(), ROWS / SHARD);
    for (shard, file) in &before {
        assert_eq!(after[shard], *file, "shard {shard} was rewritten");
    }
    let hits = hits.lock().unwrap().clone();
    for i in 0..ROWS {
        let n = hits.get(&format!("/img/{i}.jpg")).copied().unwrap_or(0);
        let shard = (i / SHARD) as u64;
        if before.contains_key(&shard) {
            assert_eq!(
                n, 1,
                "row {i} of shard {shard} (done before the kill) fetched {n} times"
            );
        } else {
            assert!((1..=2).contains(&n), "row {i} fetched {n} times");
        }
    }
    let parquet = std::fs::read_dir(&job_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".parquet")
        })
        .count();
    assert_eq!(parquet, ROWS / SHARD);
    let mut keys = Vec::new();
    for s in after.keys() {
        let rows =
            albef_dataset::read_rows(&albef_dataset::parquet_path(&job_dir, *s), None).unwrap();
        keys.extend(rows.into_iter().map(|r| r.key));
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), ROWS, "one output row per input row");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let reg = Registry::connect(registry).await.unwrap();
        let versions = reg.dataset_versions(Some("web")).await.unwrap();
        assert_eq!(versions.len(), 1, "one dataset version: {versions:?}");
        assert_eq!(
            (versions[0].status, versions[0].rows),
            (DatasetStatus::Finished, ROWS as i64)
        );
        let shards = reg.shards(versions[0].id).await.unwrap();
        let idx: Vec<i64> = shards.iter().map(|s| s.index).collect();
        assert_eq!(idx, (0..(ROWS / SHARD) as i64).collect::<Vec<_>>());
        assert_eq!(runs[1]["dataset_version_id"], versions[0].id);
        // The dataset lock was released.
        assert_eq!(reg.dataset_lock_holder("web").await.unwrap(), None);
    });
}

fn overlapping_ingests_are_refused(registry: &str, dir: &Path) {
    let (port, _) = slow_server(Duration::from_millis(100));
    let list = write_list(dir, port);
    let list_s = list.display().to_string();
    let run = |out: &str, wait: &str| {
        let out = dir.join(out).display().to_string();
        albef(
            registry,
            &[
                "ingest",
                "--input",
                &list_s,
                "--output",
                &out,
                "--dataset",
                "shared",
                "--shard-size",
                "5",
                "--per-host-concurrency",
                "1",
                "--retries",
                "0",
                "--lock-wait",
                wait,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let first = run("first", "0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(Registry::connect(registry)).unwrap();
    wait_for("the first ingest's lock", Duration::from_secs(60), || {
        rt.block_on(reg.dataset_lock_holder("shared"))
            .unwrap()
            .is_some()
    });
    let second = run("second", "0").wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second ingest ran: {text}");
    assert!(
        text.contains("dataset \"shared\" is being written by"),
        "{text}"
    );
    assert!(!dir.join("second").join("00000.stats.json").exists());
    // A third that waits gets the lock after the first finishes.
    let third = run("third", "120");
    check(first.wait_with_output().unwrap(), "first ingest");
    check(third.wait_with_output().unwrap(), "third ingest");
    let versions = rt.block_on(reg.dataset_versions(Some("shared"))).unwrap();
    let finished = versions
        .iter()
        .filter(|v| v.status == DatasetStatus::Finished)
        .count();
    assert_eq!(finished, 2, "{versions:?}");
}

/// Sends SIGTERM (what Kubernetes, Slurm, systemd and Docker send) to `child`.
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGTERM in the middle of an ingest: the rows in flight finish, the complete shards are
/// committed and registered, no temporary file is left, the process says what it kept and exits
/// 143; the same command run again finishes the same version.
fn sigterm_stops_an_ingest_cleanly(registry: &str, dir: &Path) {
    let (port, _) = slow_server(Duration::from_millis(150));
    let list = write_list(dir, port);
    let out = dir.join("out");
    let (list_s, out_s) = (list.display().to_string(), out.display().to_string());
    let args = [
        "ingest",
        "--input",
        &list_s,
        "--output",
        &out_s,
        "--dataset",
        "web",
        "--shard-size",
        "5",
        "--per-host-concurrency",
        "1",
        "--retries",
        "0",
    ];
    let child = albef(registry, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first shard", Duration::from_secs(60), || {
        !complete_shards(&out).is_empty()
    });
    sigterm(&child);
    let stopped = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(143), "{text}");
    assert!(
        text.contains("SIGTERM") && text.contains("shards committed"),
        "{text}"
    );
    let kept = complete_shards(&out).len();
    assert!(kept < ROWS / SHARD, "finished before the signal: {text}");
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(Registry::connect(registry)).unwrap();
    let version = rt.block_on(reg.dataset_versions(Some("web"))).unwrap()[0].clone();
    assert_eq!(version.status, DatasetStatus::Building);
    assert_eq!(rt.block_on(reg.shards(version.id)).unwrap().len(), kept);
    assert_eq!(rt.block_on(reg.dataset_lock_holder("web")).unwrap(), None);

    check(
        albef(registry, &args).output().unwrap(),
        "the ingest run again",
    );
    let versions = rt.block_on(reg.dataset_versions(Some("web"))).unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].status, DatasetStatus::Finished);
    assert_eq!(versions[0].rows, ROWS as i64);
}

/// SIGTERM to `scheduler run` in the middle of a job: the worker stops the ingest, gives the
/// job back (QUEUED, due at once, the attempt not counted) and exits 0; another worker then
/// runs it without waiting for a lease or a backoff.
fn sigterm_gives_a_scheduler_job_back(registry: &str, dir: &Path) {
    let (port, _) = slow_server(Duration::from_millis(150));
    let list = write_list(dir, port);
    let (list_s, out_s) = (
        list.display().to_string(),
        dir.join("out").display().to_string(),
    );
    let add = [
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--input",
        &list_s,
        "--output",
        &out_s,
        "--dataset",
        "web",
        "--shard-size",
        "5",
        "--per-host-concurrency",
        "1",
        "--retries",
        "0",
    ];
    check(albef(registry, &add).output().unwrap(), "schedule add");
    check(
        albef(registry, &["schedule", "trigger", "nightly"])
            .output()
            .unwrap(),
        "trigger",
    );
    let worker = |owner: &str, once: bool| {
        let mut args = vec![
            "scheduler",
            "run",
            "--lease-secs",
            "30",
            "--poll-secs",
            "0.2",
        ];
        args.extend(["--owner", owner]);
        if once {
            args.push("--once");
        }
        albef(registry, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = worker("A", false);
    let job_dir = dir.join("out").join("job-1");
    wait_for("worker A's first shard", Duration::from_secs(60), || {
        !complete_shards(&job_dir).is_empty()
    });
    sigterm(&a);
    let stopped = Instant::now();
    let a_out = a.wait_with_output().unwrap();
    let a_text = String::from_utf8_lossy(&a_out.stderr).to_string();
    assert!(a_out.status.success(), "{a_text}");
    assert!(stopped.elapsed() < Duration::from_secs(10), "{a_text}");
    let jobs = json_of(registry, &["schedule", "jobs", "--format", "json"]);
    assert_eq!(jobs[0]["status"], "QUEUED", "{jobs}");
    assert_eq!(jobs[0]["attempts"], "0/3", "{jobs}");
    assert!(jobs[0]["runs"][0]["error"]
        .as_str()
        .unwrap()
        .contains("stopped by a signal"));

    let started = Instant::now();
    let b_text = check(worker("B", true).wait_with_output().unwrap(), "worker B");
    assert!(
        b_text.contains("1 succeeded") && b_text.contains("0 taken over"),
        "{b_text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "B waited for a lease or a backoff"
    );
    let jobs = json_of(registry, &["schedule", "jobs", "--format", "json"]);
    assert_eq!(jobs[0]["status"], "SUCCEEDED", "{jobs}");
}

#[test]
fn sigterm_gives_a_scheduler_job_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    sigterm_gives_a_scheduler_job_back(&url, dir.path());
}

#[test]
fn sigterm_stops_an_ingest_cleanly_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    sigterm_stops_an_ingest_cleanly(&url, dir.path());
}

#[test]
fn sigkilled_worker_is_taken_over_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    kill_and_take_over(&url, dir.path());
}

#[test]
fn sigkilled_worker_is_taken_over_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, name) = rt.block_on(pg::create_pg_database());
    let result = std::panic::catch_unwind(|| kill_and_take_over(&url, dir.path()));
    rt.block_on(pg::drop_pg_database(&name));
    result.unwrap();
}

#[test]
fn overlapping_ingests_on_one_dataset_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    overlapping_ingests_are_refused(&url, dir.path());
}

#[test]
fn overlapping_ingests_on_one_dataset_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, name) = rt.block_on(pg::create_pg_database());
    let result = std::panic::catch_unwind(|| overlapping_ingests_are_refused(&url, dir.path()));
    rt.block_on(pg::drop_pg_database(&name));
    result.unwrap();
}
