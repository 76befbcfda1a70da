//! `albef pipeline` end to end on an embedded SQLite registry in a temporary ALBEF_HOME, with a
//! tiny config (300 pictures, 20 steps of 8 pairs). The first invocation is stopped by SIGTERM (what
//! a scheduler, Slurm or Kubernetes sends) in the first train stage: a checkpoint, an error naming
//! the stage, exit status 143 (128 + 15, as Ctrl-C's SIGINT gives 130); the second resumes that
//! run and finishes: the summary's counts agree with the corpus and the registry (lineage of the
//! filtered version, the promoted alias, the promotion event). A third skips every stage and
//! reports the same outputs, `--from promote` reruns only the promotion (the checkpoint already
//! holds the alias, so nothing moves), and an edited config is refused.
use albef_registry::{Registry, RunStatus};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const STEPS: i64 = 20;

fn albef(home: &Path, config: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_albef"));
    cmd.current_dir(root)
        .env("ALBEF_HOME", home)
        .env("ALBEF_TOKENIZER", root.join("assets/tokenizer.json"))
        .env_remove("ALBEF_REGISTRY_URL")
        .env("RUST_LOG", "info")
        .args(["--log-format", "json", "pipeline", "--config"])
        .arg(config)
        .args(["--format", "json"]);
    cmd
}

/// Starts the pipeline and sends it SIGTERM once the first train stage is past `step` (after
/// its first checkpoint); returns its stderr and its exit code.
fn interrupted(home: &Path, config: &Path, step: i64) -> (String, Option<i32>) {
    let mut child = albef(home, config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the albef binary starts");
    // Read stderr on a thread until the end, so that the child never writes to a closed pipe.
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("no progress:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        let at = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["step"].as_i64());
        if at.is_some_and(|s| s > step) {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    reader
        .join()
        .expect("the stderr reader ends with the child");
    log.extend(lines.try_iter().map(|l| l + "\n"));
    (log, status.code())
}

fn pipeline(home: &Path, config: &Path, extra: &[&str]) -> (Value, String) {
    let out = albef(home, config)
        .args(extra)
        .output()
        .expect("the albef binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "albef pipeline {extra:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout.lines().last().expect("a summary line");
    let summary = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the summary {line:?} is not JSON: {e}\n{stderr}"));
    (summary, stderr)
}

fn statuses(summary: &Value) -> Vec<(String, String)> {
    summary["stages"]
        .as_array()
        .expect("stages is a list")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn pipeline_runs_then_skips_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tmp.path().join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            r#"
name = "tiny"
[corpus]
args = ["--n", "300", "--heldout", "60", "--noise", "0.3", "--dup-frac", "0.2",
        "--image-size", "96", "--seed", "5"]
[ingest]
args = ["--shard-size", "100", "--image-size", "96"]
[train]
config = "{}"
overrides = {{ train = {{ lr = 3e-4, warmup_steps = 5 }} }}
args = ["--steps", "{STEPS}", "--batch-size", "8", "--checkpoint-every", "10"]
[filter]
args = ["--keep-fraction", "0.7", "--batch-size", "32"]
[promote]
model = "tiny-model"
alias = "production"
min_r1_t2i = 0.0
"#,
            root.join("configs/albef-tiny.toml").display()
        ),
    )
    .unwrap();

    // Interrupted after the first checkpoint (step 10) of the first train stage.
    let (log, code) = interrupted(&home, &config, 11);
    assert_eq!(
        code,
        Some(143),
        "a pipeline stopped by SIGTERM exits 128 + 15:\n{log}"
    );
    assert!(
        log.contains("stage train-raw failed") && log.contains("run the pipeline again"),
        "the error names the stage and the way on:\n{log}"
    );

    // The rerun skips the finished stages and resumes the run from its checkpoint.
    let (first, log) = pipeline(&home, &config, &[]);
    let stages = [
        "corpus",
        "ingest",
        "train-raw",
        "filter",
        "train-filtered",
        "promote",
    ];
    assert_eq!(
        statuses(&first),
        stages
            .iter()
            .enumerate()
            .map(|(i, s)| (
                s.to_string(),
                if i < 2 { "skipped" } else { "ran" }.to_string()
            ))
            .collect::<Vec<_>>(),
        "{log}"
    );
    assert!(log.contains("resuming run 1 from checkpoint"), "{log}");
    for (i, s) in stages.iter().enumerate().skip(2) {
        assert!(
            log.contains(&format!("[{}/6] {s} done in", i + 1)),
            "a progress line for {s}:\n{log}"
        );
    }

    // Counts: 240 training pictures, 48 duplicates of them, 30% of the rows noisy.
    let corpus = &first["corpus"];
    assert_eq!(corpus["train_rows"], 288);
    assert_eq!(corpus["heldout_rows"], 60);
    assert_eq!(corpus["exact_duplicates"], 24);
    assert_eq!(corpus["near_duplicates"], 24);
    let ingest = &first["ingest"];
    assert_eq!(ingest["dataset"], "tiny@1");
    assert_eq!(ingest["heldout"], "tiny-heldout@1");
    assert_eq!(ingest["input_rows"], 288);
    let heldout = ingest["heldout_rows"].as_u64().unwrap();
    assert!(
        (1..=60).contains(&heldout),
        "held-out pairs stored: {heldout}"
    );
    let dups = ingest["duplicates"].as_u64().unwrap();
    let success = ingest["success"].as_u64().unwrap();
    assert!(
        dups >= 24,
        "the exact duplicates at least are caught, got {dups}"
    );
    assert_eq!(success + dups, 288, "every other row is stored");
    let rate = ingest["dedupe_rate"].as_f64().unwrap();
    assert!((rate - dups as f64 / 288.0).abs() < 1e-9);
    let filter = &first["filter"];
    assert_eq!(filter["dataset"], "tiny@2");
    assert_eq!(filter["scored"].as_u64().unwrap(), success);
    let kept = filter["kept"].as_u64().unwrap();
    assert_eq!(kept, (0.7 * success as f64).ceil() as u64);
    assert!(
        (filter["filter_rate"].as_f64().unwrap() - (1.0 - kept as f64 / success as f64)).abs()
            < 1e-9
    );
    for (key, dataset) in [("train_raw", "tiny@1"), ("train_filtered", "tiny@2")] {
        let t = &first[key];
        assert_eq!(t["dataset"], dataset);
        assert_eq!(t["steps"], STEPS);
        for r in ["r1_t2i", "r1_i2t"] {
            let v = t[r].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{key} {r} = {v}");
        }
    }
    let raw = &first["train_raw"];
    let filtered = &first["train_filtered"];
    let promoted = &first["promoted"];
    let better = if filtered["r1_t2i"].as_f64() >= raw["r1_t2i"].as_f64() {
        filtered
    } else {
        raw
    };
    assert_eq!(promoted["checkpoint"], better["checkpoint"]);
    assert_eq!(promoted["model"], "tiny-model");
    assert!(promoted["event"].is_i64());
    assert!(promoted["gate_result"]
        .as_str()
        .unwrap()
        .starts_with("passed"));
    assert!(first["next"][0].as_str().unwrap().contains("serve"));

    // The registry holds what the summary says.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(Registry::connect(&format!(
            "sqlite://{}",
            home.join("registry.db").display()
        )))
        .unwrap();
    let holder = rt
        .block_on(reg.resolve_checkpoint("tiny-model@production"))
        .unwrap();
    assert_eq!(json_i64(&promoted["checkpoint"]), holder.id);
    let history = rt.block_on(reg.promotion_history("tiny-model")).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].new_checkpoint_id, Some(holder.id));
    let source = rt.block_on(reg.dataset_version("tiny@1")).unwrap();
    let version = rt.block_on(reg.dataset_version("tiny@2")).unwrap();
    assert_eq!(version.stage, "filter");
    assert_eq!(version.parent_id, Some(source.id));
    for key in ["train_raw", "train_filtered"] {
        let run = rt.block_on(reg.run(json_i64(&first[key]["run"]))).unwrap();
        assert_eq!(run.experiment, "pipeline-tiny");
        assert_eq!(run.status, RunStatus::Finished);
    }
    assert_eq!(
        rt.block_on(reg.run(1)).unwrap().status,
        RunStatus::Killed,
        "the interrupted run"
    );
    assert_eq!(first["train_raw"]["run"], 2, "the continuation of run 1");

    // A rerun finds every stage's outputs and skips it.
    let (second, log) = pipeline(&home, &config, &[]);
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "skipped"),
        "every stage skipped: {:?}\n{log}",
        statuses(&second)
    );
    for key in [
        "ingest",
        "filter",
        "train_raw",
        "train_filtered",
        "promoted",
    ] {
        assert_eq!(first[key], second[key], "{key} unchanged");
    }

    // Rerunning the last stage finds the checkpoint already promoted and moves nothing.
    let (third, _) = pipeline(&home, &config, &["--from", "promote"]);
    let third_statuses = statuses(&third);
    assert!(third_statuses[..5].iter().all(|(_, s)| s == "skipped"));
    assert_eq!(third_statuses[5], ("promote".into(), "ran".into()));
    assert_eq!(third["promoted"]["checkpoint"], promoted["checkpoint"]);
    assert!(third["promoted"]["event"].is_null());
    assert_eq!(
        rt.block_on(reg.promotion_history("tiny-model"))
            .unwrap()
            .len(),
        1
    );

    // An edited config is refused rather than mixed with the recorded stages.
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"0.7\"", "\"0.5\"");
    std::fs::write(&config, edited).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_albef"))
        .current_dir(root)
        .env("ALBEF_HOME", &home)
        .env_remove("ALBEF_REGISTRY_URL")
        .args(["pipeline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another config") && err.contains("--from"),
        "{err}"
    );
}

fn json_i64(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}
