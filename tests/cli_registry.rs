//! End-to-end tests of `albef runs`, `albef ckpt` and `albef datasets`: the release binary run
//! as a script would run it, against a fresh SQLite file and a fresh Postgres database.
// Only the Postgres helpers of the shared module are used here.
#[allow(dead_code)]
#[path = "../registry/tests/common/mod.rs"]
mod common;

use albef_registry::{NewDatasetVersion, NewShard, Registry};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

struct Cli<'a> {
    url: &'a str,
    home: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_albef"))
            .arg("--registry")
            .arg(self.url)
            .args(args)
            .env("ALBEF_HOME", self.home)
            .env("USER", "cli-tester")
            .output()
            .expect("albef runs")
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "albef {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs a command that must fail with status 1; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "albef {args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    }
}

async fn scenario(url: &str, dir: &Path) {
    let cli = Cli { url, home: dir };
    let id = |v: Value| v["id"].as_i64().unwrap();
    let a = id(cli.json(&[
        "runs",
        "create",
        "--experiment",
        "e",
        "--name",
        "a",
        "--param",
        "lr=0.1",
    ]));
    let b = id(cli.json(&[
        "runs",
        "create",
        "--experiment",
        "e",
        "--name",
        "b",
        "--param",
        "lr=0.5",
    ]));
    let dup = cli.fails(&["runs", "create", "--experiment", "e", "--name", "a"]);
    assert!(dup.contains("a run named \"a\" already exists"), "{dup}");
    cli.ok(&[
        "runs",
        "log",
        &a.to_string(),
        "--metric",
        "loss=2.5",
        "--metric",
        "acc=0.1",
        "--step",
        "1",
    ]);
    cli.ok(&[
        "runs",
        "log",
        &a.to_string(),
        "--metric",
        "loss=1.5",
        "--step",
        "2",
    ]);
    cli.ok(&["runs", "log", &b.to_string(), "--metric", "loss=3"]);
    let nan = cli.fails(&[
        "runs",
        "log",
        &a.to_string(),
        "--metric",
        "acc=0.2",
        "--metric",
        "loss=nan",
        "--step",
        "3",
    ]);
    assert!(nan.contains("not a finite number"), "{nan}");
    let out = cli.run(&["runs", "log", &a.to_string(), "--metric", "loss=abc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"abc\" is not a number"));
    assert!(cli
        .fails(&["runs", "log", "999", "--metric", "loss=1"])
        .contains("run 999 does not exist"));

    let show = cli.json(&["runs", "show", &a.to_string()]);
    let loss = show["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "loss")
        .unwrap()
        .clone();
    assert_eq!(
        (
            loss["min"].as_f64(),
            loss["last"].as_f64(),
            loss["count"].as_i64()
        ),
        (Some(1.5), Some(1.5), Some(2))
    );
    // The rejected NaN call wrote nothing, not even its valid acc=0.2.
    let acc = show["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "acc")
        .unwrap()
        .clone();
    assert_eq!(acc["count"].as_i64(), Some(1));

    let hits = cli.json(&[
        "runs",
        "search",
        "--filter",
        "min(metrics.loss) < 2 OR params.lr IN ('0.5')",
        "--order-by",
        "min(metrics.loss) ASC",
    ]);
    let ids: Vec<i64> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(hits[0]["min(metrics.loss)"], json!(1.5));
    let bad = cli.fails(&[
        "runs",
        "search",
        "--filter",
        "metrics.loss > 1 AND metrics.acc <",
    ]);
    assert!(
        bad.contains("filter: expected a value after '<' at column 35"),
        "{bad}"
    );
    assert!(
        bad.contains("\n                                    ^"),
        "{bad}"
    );

    let cmp = cli.json(&["runs", "compare", &a.to_string(), &b.to_string()]);
    assert_eq!(cmp["params"][0]["key"], "lr");
    assert_eq!(cmp["params"][0]["differs"], true);
    let table = cli.ok(&["runs", "compare", &a.to_string(), &b.to_string()]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("params.lr") && l.contains('*')),
        "{table}"
    );

    cli.ok(&["runs", "finish", &a.to_string()]);
    cli.ok(&["runs", "finish", &b.to_string(), "--status", "failed"]);
    let csv = cli.ok(&["runs", "list", "--experiment", "e", "--format", "csv"]);
    assert!(
        csv.starts_with("id,experiment,name,status,start_time,end_time\n"),
        "{csv}"
    );
    assert!(
        csv.contains(",a,FINISHED,") && csv.contains(",b,FAILED,"),
        "{csv}"
    );

    // Checkpoints and promotion.
    let file = |n: i64| {
        let p = dir.join(format!("ckpt-{n}.bin"));
        std::fs::write(&p, format!("weights {n}")).unwrap();
        p.display().to_string()
    };
    let reg_ckpt = |n: i64, r1: &str| {
        id(cli.json(&[
            "ckpt",
            "register",
            &a.to_string(),
            "--path",
            &file(n),
            "--step",
            &(n * 10).to_string(),
            "--metric",
            &format!("r1={r1}"),
        ]))
    };
    let c1 = reg_ckpt(1, "0.5");
    let c2 = reg_ckpt(2, "0.7");
    let c3 = reg_ckpt(3, "0.6");
    cli.ok(&[
        "ckpt",
        "promote",
        &c1.to_string(),
        "--model",
        "albef",
        "--alias",
        "prod",
        "--reason",
        "first",
    ]);
    cli.ok(&[
        "ckpt",
        "promote",
        &c2.to_string(),
        "--model",
        "albef",
        "--alias",
        "prod",
        "--require",
        "metrics.r1 >= current",
    ]);
    let refused = cli.fails(&[
        "ckpt",
        "promote",
        &c3.to_string(),
        "--model",
        "albef",
        "--alias",
        "prod",
        "--require",
        "metrics.r1 >= current",
    ]);
    assert!(
        refused.contains("refused") && refused.contains("nothing changed"),
        "{refused}"
    );
    let list = cli.json(&["ckpt", "list", "--model", "albef"]);
    let holder: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["aliases"] == json!(["albef@prod"]))
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(holder, vec![c2]);
    cli.ok(&["ckpt", "rollback", "--model", "albef", "--alias", "prod"]);
    // A promotion by MODEL@ALIAS spec: staging gets what prod holds (c1 after the rollback).
    cli.ok(&[
        "ckpt",
        "promote",
        "albef@prod",
        "--model",
        "albef",
        "--alias",
        "staging",
    ]);
    let history = cli.json(&["ckpt", "history", "--model", "albef"]);
    let h: Vec<(String, String, Value, i64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["alias"].as_str().unwrap().into(),
                e["previous"].clone(),
                e["new"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        h,
        vec![
            ("promote".into(), "prod".into(), Value::Null, c1),
            ("promote".into(), "prod".into(), json!(c1), c2),
            ("rollback".into(), "prod".into(), json!(c2), c1),
            ("promote".into(), "staging".into(), Value::Null, c1),
        ]
    );
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "cli-tester"));
    std::fs::write(dir.join("ckpt-3.bin"), "tampered").unwrap();
    let tampered = cli.fails(&[
        "ckpt",
        "promote",
        &c3.to_string(),
        "--model",
        "albef",
        "--alias",
        "prod",
    ]);
    assert!(
        tampered.contains("changed after registration"),
        "{tampered}"
    );

    // Datasets, written through the API as the ingest stage does.
    let reg = Registry::connect(url).await.unwrap();
    let v1 = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: "cc".into(),
            uri: "/d/cc/1".into(),
            parent: None,
            stage: "ingest".into(),
            params: json!({}),
        })
        .await
        .unwrap();
    reg.register_shard(
        v1.id,
        NewShard {
            index: 0,
            uri: "/d/cc/1/0.parquet".into(),
            rows: 10,
            stats: json!({"success": 8}),
        },
    )
    .await
    .unwrap();
    reg.finish_dataset_version(v1.id, json!({"success": 8}))
        .await
        .unwrap();
    let v2 = reg
        .create_dataset_version(NewDatasetVersion {
            dataset: "cc".into(),
            uri: "/d/cc/2".into(),
            parent: Some(v1.id),
            stage: "filter".into(),
            params: json!({"itm": 0.5}),
        })
        .await
        .unwrap();
    reg.finish_dataset_version(v2.id, json!({"kept": 6}))
        .await
        .unwrap();
    let shown = cli.json(&["datasets", "show", "cc"]);
    assert_eq!(shown["version"]["version"], 2);
    let lineage: Vec<&str> = shown["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["stage"].as_str().unwrap())
        .collect();
    assert_eq!(lineage, ["filter", "ingest"]);
    assert_eq!(
        cli.json(&["datasets", "show", "cc@1"])["shards"][0]["rows"],
        10
    );
    assert_eq!(cli.json(&["datasets", "list"]).as_array().unwrap().len(), 2);
    assert!(cli
        .fails(&["datasets", "show", "cc@9"])
        .contains("dataset \"cc\" has no version 9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_commands_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    scenario(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_commands_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (url, name) = common::create_pg_database().await;
    let result = tokio::spawn({
        let url = url.clone();
        let dir = dir.path().to_path_buf();
        async move { scenario(&url, &dir).await }
    })
    .await;
    common::drop_pg_database(&name).await;
    result.unwrap();
}

/// Log lines written to a pipe or a file are plain text: no ANSI colour codes.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_albef"))
        .args(["--registry", &url, "runs", "list"])
        .env("ALBEF_HOME", dir.path())
        .env("RUST_LOG", "debug")
        .output()
        .expect("albef runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DEBUG"), "no debug log lines: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in piped logs: {stderr:?}"
    );
}

/// Ingest's numbers are checked when the flags are read: no panic, no wait, no dataset version.
#[test]
fn ingest_refuses_bad_numbers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let list = dir.path().join("urls.tsv");
    std::fs::write(&list, "url\tcaption\nhttp://127.0.0.1:9/a.jpg\ta\n").unwrap();
    let ingest = |flags: &[&str]| {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_albef"))
            .args(["--registry", &url, "ingest", "--input"])
            .arg(&list)
            .arg("--output")
            .arg(dir.path().join("out"))
            .args(["--dataset", "d"])
            .args(flags)
            .env("ALBEF_HOME", dir.path())
            .output()
            .expect("albef ingest");
        (out, started.elapsed())
    };
    for flag in [
        "--timeout=-1",
        "--timeout=nan",
        "--timeout=inf",
        "--timeout=0",
        "--connect-timeout=-1",
        "--backoff=-1",
        "--per-host-rate=nan",
    ] {
        let (out, _) = ingest(&[flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        let name = flag.split('=').next().unwrap();
        assert!(
            stderr.contains(name),
            "{flag}: the error names the flag: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
    let (out, took) = ingest(&["--worker-index", "3", "--num-workers", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--worker-index 3 is not below --num-workers 1"),
        "{stderr}"
    );
    assert!(took.as_secs() < 30, "refused at once, not after {took:?}");
    let versions = Command::new(env!("CARGO_BIN_EXE_albef"))
        .args(["--registry", &url, "datasets", "list", "--format", "json"])
        .env("ALBEF_HOME", dir.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&versions.stdout);
    assert!(
        !listed.contains("\"d\""),
        "no version was registered: {listed}"
    );
}
