//! `albef pipeline` end to end on an embedded SQLite registry in a temporary ALBEF_HOME.
//!
//! The demo's shape (the synthetic corpus, 300 pictures, 20 steps of 8 pairs): the first
//! invocation is stopped by SIGTERM (what a scheduler, Slurm or Kubernetes sends) in the
//! bootstrap train stage: a checkpoint, an error naming the stage, exit status 143 (128 + 15, as
//! Ctrl-C's SIGINT gives 130). An edited config is then refused for that unfinished run; the
//! original one resumes it and finishes, and the summary's counts agree with the corpus and the
//! registry. `--from eval` reruns the last stages of the finished run (the checkpoint already
//! holds the alias, so nothing moves).
//!
//! A user's own data: pictures the test draws itself, served by a plain static HTTP server
//! (Python's `http.server`) on 127.0.0.1, listed in a TSV. The first run bootstraps and
//! promotes; after rows are appended, the second ingests only the new rows, filters them with
//! the alias's holder, continues training from it, evaluates both on the same evaluation set
//! (ingested once) and records the gate's verdict with both figures; a third run comes from a
//! schedule through `albef scheduler run`.
use albef_registry::{Registry, RunStatus};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STEPS: i64 = 20;

fn albef(home: &Path, config: &Path) -> Command {
    let mut cmd = albef_cmd(home);
    cmd.args(["--log-format", "json", "pipeline", "--config"])
        .arg(config)
        .args(["--format", "json"]);
    cmd
}

/// The binary in the package root with ALBEF_HOME `home` (an embedded registry) and the
/// tokenizer.
fn albef_cmd(home: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_albef"));
    cmd.current_dir(root)
        .env("ALBEF_HOME", home)
        .env("ALBEF_TOKENIZER", root.join("assets/tokenizer.json"))
        .env_remove("ALBEF_REGISTRY_URL")
        .env("RUST_LOG", "info");
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

fn registry(home: &Path) -> (tokio::runtime::Runtime, Registry) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(Registry::connect(&format!(
            "sqlite://{}",
            home.join("registry.db").display()
        )))
        .unwrap();
    (rt, reg)
}

#[test]
fn the_demo_shape_resumes_skips_and_reruns_from_a_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tmp.path().join("tiny.toml");
    let text = format!(
        r#"
name = "tiny"
[source.corpus]
n = 300
heldout = 60
noise = 0.3
dup_frac = 0.2
image_size = 96
seed = 5
[ingest]
shard_size = 100
image_size = 96
[train]
config = "{}"
overrides = {{ train = {{ lr = 3e-4, warmup_steps = 5 }} }}
steps = {STEPS}
batch_size = 8
checkpoint_every = 10
[filter]
keep_fraction = 0.7
batch_size = 32
[promote]
model = "tiny-model"
alias = "production"
min_r1_t2i = 0.0
"#,
        root.join("configs/albef-tiny.toml").display()
    );
    std::fs::write(&config, &text).unwrap();

    // Interrupted after the first checkpoint (step 10) of the bootstrap train stage.
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

    // The unfinished run is not mixed with an edited config.
    std::fs::write(&config, text.replace("0.7", "0.5")).unwrap();
    let out = albef_cmd(&home)
        .args(["pipeline", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another config") && err.contains("--from") && err.contains("--new-run"),
        "{err}"
    );
    std::fs::write(&config, &text).unwrap();

    // The rerun continues run 1: skips the finished stages, resumes the train run.
    let (first, log) = pipeline(&home, &config, &[]);
    let stages = [
        "corpus",
        "ingest",
        "train-raw",
        "filter",
        "train-filtered",
        "eval",
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
    assert_eq!(first["run"], 1);
    assert!(log.contains("resuming run 1 from checkpoint"), "{log}");
    for (i, s) in stages.iter().enumerate().skip(2) {
        assert!(
            log.contains(&format!("[{}/7] {s} done in", i + 1)),
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
    assert_eq!(ingest["eval"], "tiny-heldout@1");
    assert_eq!(ingest["input_rows"], 288);
    let heldout = ingest["eval_rows"].as_u64().unwrap();
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
    assert_eq!(filter["checkpoint"], first["train_raw"]["checkpoint"]);
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
    assert_eq!(promoted["outcome"], "promoted");
    assert!(first["eval"]["holder"].is_null(), "nothing held the alias");
    assert!(promoted["event"].is_i64());
    let gate = promoted["gate_result"].as_str().unwrap();
    assert!(
        gate.starts_with("passed") && gate.contains("no holder") && gate.contains("tiny-heldout@1"),
        "{gate}"
    );
    assert!(first["next"][0].as_str().unwrap().contains("serve"));

    // The registry holds what the summary says.
    let (rt, reg) = registry(&home);
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

    // Rerunning the last stages of the finished run: the holder is now the candidate itself,
    // so nothing moves and nothing is recorded.
    let (again, _) = pipeline(&home, &config, &["--from", "eval"]);
    assert_eq!(again["run"], 1);
    let again_statuses = statuses(&again);
    assert!(again_statuses[..5].iter().all(|(_, s)| s == "skipped"));
    assert_eq!(again_statuses[5], ("eval".into(), "ran".into()));
    assert_eq!(again_statuses[6], ("promote".into(), "ran".into()));
    assert_eq!(again["promoted"]["checkpoint"], promoted["checkpoint"]);
    assert_eq!(again["promoted"]["outcome"], "already held");
    assert!(again["promoted"]["event"].is_null());
    for key in ["ingest", "filter", "train_raw", "train_filtered"] {
        assert_eq!(first[key], again[key], "{key} unchanged");
    }
    assert_eq!(
        rt.block_on(reg.promotion_history("tiny-model"))
            .unwrap()
            .len(),
        1
    );
}

/// A `python3 -m http.server` serving `dir` on 127.0.0.1; killed on drop.
struct StaticServer {
    child: Child,
    base: String,
}

impl StaticServer {
    fn start(dir: &Path) -> StaticServer {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts (a plain static HTTP server)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split("port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        StaticServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes picture `i`: 8x8 blocks of colours drawn from `i`, 64x64 PNG, distinct per `i`.
fn draw(dir: &Path, i: u64) -> String {
    let name = format!("p{i:04}.png");
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    };
    let blocks: Vec<[u8; 3]> = (0..64).map(|_| [next(), next(), next()]).collect();
    let mut pixels = Vec::with_capacity(64 * 64 * 3);
    for y in 0..64 {
        for x in 0..64 {
            pixels.extend_from_slice(&blocks[(y / 8) * 8 + x / 8]);
        }
    }
    let file = std::fs::File::create(dir.join(&name)).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 64, 64);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .unwrap()
        .write_image_data(&pixels)
        .unwrap();
    name
}

/// Appends pictures `range` to the TSV list `list` (header written when the file is new).
fn list_rows(list: &Path, www: &Path, base: &str, range: std::ops::Range<u64>) {
    let new = !list.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(list)
        .unwrap();
    if new {
        writeln!(f, "url\tcaption").unwrap();
    }
    const WORDS: [&str; 8] = [
        "red", "green", "blue", "tiled", "square", "mosaic", "bright", "dark",
    ];
    for i in range {
        let name = draw(www, i);
        let caption = format!(
            "a {} {} {} picture number {i}",
            WORDS[(i % 8) as usize],
            WORDS[(i / 8 % 8) as usize],
            WORDS[(i / 64 % 8) as usize]
        );
        writeln!(f, "{base}/{name}\t{caption}").unwrap();
    }
}

fn run_cli(home: &Path, args: &[&str]) -> String {
    let out = albef_cmd(home).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "albef {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_url_list_pipeline_bootstraps_then_continues_from_the_holder_and_runs_on_a_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, www) = (tmp.path().join("home"), tmp.path().join("www"));
    std::fs::create_dir_all(&www).unwrap();
    let server = StaticServer::start(&www);
    let (train, eval) = (tmp.path().join("train.tsv"), tmp.path().join("val.tsv"));
    list_rows(&train, &www, &server.base, 0..100);
    list_rows(&eval, &www, &server.base, 1000..1030);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = tmp.path().join("mine.toml");
    std::fs::write(
        &config,
        format!(
            r#"
name = "mine"
[source]
urls = "train.tsv"
[eval]
urls = "val.tsv"
[ingest]
shard_size = 50
image_size = 64
[train]
config = "{}"
overrides = {{ train = {{ lr = 3e-4, warmup_steps = 2 }} }}
steps = 6
batch_size = 8
init = "mine-model@production"
data = "union"
[filter]
keep_fraction = 0.7
batch_size = 32
[promote]
model = "mine-model"
alias = "production"
min_r1_t2i = 0.0
"#,
            root.join("configs/albef-tiny.toml").display()
        ),
    )
    .unwrap();

    // Run 1: nothing holds the alias, so the run bootstraps on the raw version.
    let (first, log) = pipeline(&home, &config, &[]);
    let ran = |s: &Value, expected: [&str; 7]| {
        let got: Vec<String> = statuses(s).into_iter().map(|(_, st)| st).collect();
        assert_eq!(got, expected, "{log}");
    };
    ran(
        &first,
        ["not needed", "ran", "ran", "ran", "ran", "ran", "ran"],
    );
    assert_eq!(first["ingest"]["dataset"], "mine@1");
    assert_eq!(first["ingest"]["success"], 100);
    assert_eq!(first["ingest"]["eval"], "mine-eval@1");
    assert_eq!(first["ingest"]["eval_rows"], 30);
    assert!(first["plan"]["filter_checkpoint"].is_null());
    assert_eq!(
        first["train_filtered"]["dataset"], "mine@2",
        "no earlier run to join"
    );
    assert_eq!(first["promoted"]["outcome"], "promoted");
    let holder1 = json_i64(&first["promoted"]["checkpoint"]);

    // Run 2 over the grown list: only the new rows are fetched and kept.
    list_rows(&train, &www, &server.base, 100..140);
    let (second, log) = pipeline(&home, &config, &[]);
    ran(
        &second,
        [
            "not needed",
            "ran",
            "not needed",
            "ran",
            "ran",
            "ran",
            "ran",
        ],
    );
    assert_eq!(second["run"], 2);
    let ingest = &second["ingest"];
    // mine@2 is run 1's filtered version; the new ingest dedupes against mine@1's index.
    assert_eq!(ingest["dataset"], "mine@3");
    assert_eq!(
        (ingest["input_rows"].as_u64(), ingest["success"].as_u64()),
        (Some(140), Some(40))
    );
    assert_eq!(
        ingest["duplicates"], 100,
        "the earlier rows are URL duplicates, not fetched"
    );
    assert_eq!(
        ingest["eval"], "mine-eval@1",
        "the evaluation set is reused"
    );
    assert_eq!(json_i64(&second["plan"]["filter_checkpoint"]), holder1);
    assert_eq!(json_i64(&second["filter"]["checkpoint"]), holder1);
    assert_eq!(second["filter"]["scored"], 40);
    assert_eq!(
        json_i64(&second["train_filtered"]["init"]),
        holder1,
        "{log}"
    );
    let measured = &second["eval"];
    assert_eq!(json_i64(&measured["holder"]["checkpoint"]), holder1);
    let (candidate, held) = (
        measured["candidates"][0]["r1_t2i"].as_f64().unwrap(),
        measured["holder"]["r1_t2i"].as_f64().unwrap(),
    );
    let promoted = &second["promoted"];
    let outcome = promoted["outcome"].as_str().unwrap();
    assert_eq!(
        outcome,
        if candidate >= held {
            "promoted"
        } else {
            "refused"
        }
    );
    let gate = promoted["gate_result"].as_str().unwrap();
    assert!(
        gate.contains(&format!("{candidate:.2}"))
            && gate.contains(&format!("holder checkpoint {holder1} R@1 t2i {held:.2}"))
            && gate.contains("mine-eval@1"),
        "both figures and the set in the verdict: {gate}"
    );

    let (rt, reg) = registry(&home);
    let history = rt.block_on(reg.promotion_history("mine-model")).unwrap();
    assert_eq!(history.len(), 2);
    let verdict = &history[1];
    assert_eq!(
        verdict.kind,
        if outcome == "promoted" {
            "promote"
        } else {
            "refused"
        }
    );
    assert_eq!(verdict.previous_checkpoint_id, Some(holder1));
    assert_eq!(verdict.gate_result.as_deref(), Some(gate));
    assert!(
        verdict
            .reason
            .as_deref()
            .unwrap()
            .contains("mine@4 is mine@3 filtered"),
        "{verdict:?}"
    );
    let holder2 = rt
        .block_on(reg.alias_holder("mine-model", "production"))
        .unwrap()
        .unwrap();
    assert_eq!(
        holder2,
        if outcome == "promoted" {
            json_i64(&promoted["checkpoint"])
        } else {
            holder1
        }
    );

    // Run 3 from a schedule, through the scheduler.
    list_rows(&train, &www, &server.base, 140..160);
    let config_arg = config.display().to_string();
    run_cli(
        &home,
        &[
            "schedule",
            "add",
            "mine-nightly",
            "--cron",
            "0 3 * * *",
            "--pipeline",
            &config_arg,
        ],
    );
    run_cli(&home, &["schedule", "trigger", "mine-nightly"]);
    run_cli(&home, &["scheduler", "run", "--once", "--poll-secs", "0.2"]);
    let jobs: Value = serde_json::from_str(&run_cli(
        &home,
        &[
            "schedule",
            "jobs",
            "--schedule",
            "mine-nightly",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(jobs[0]["status"], "SUCCEEDED", "{jobs}");
    let state: Value = serde_json::from_slice(
        &std::fs::read(home.join("pipeline/mine/run-3/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["finished"], true);
    assert_eq!(state["ingest"]["train"]["spec"], "mine@6");
    assert_eq!(state["train_filtered"]["dataset"], "mine@8");
    let union = rt.block_on(reg.dataset_version("mine@8")).unwrap();
    assert_eq!(union.stage, "union");
    assert_eq!(
        union.params["members"],
        serde_json::json!(["mine@2", "mine@4", "mine@7"])
    );
    assert_eq!(state["ingest"]["train"]["success"], 20);
    assert_eq!(json_i64(&state["plan"]["filter_checkpoint"]), holder2);
    let history = rt.block_on(reg.promotion_history("mine-model")).unwrap();
    assert_eq!(history.len(), 3, "the scheduled run's verdict is recorded");
}

fn json_i64(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}
