//! What the training tests share: the `albef` binary with a home folder and the repository's
//! tokenizer, JSON results, metric histories, and a synthetic corpus served over HTTP and
//! ingested like web data.
#![allow(dead_code)] // each test file uses its own part
use albef_corpus::generate::{generate, write_url_lists, GenerateOptions};
use albef_corpus::serve::serve;
use albef_registry::Registry;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn albef(home: &Path) -> Command {
    with_albef_env(Command::new(env!("CARGO_BIN_EXE_albef")), home)
}

/// `cmd` (albef, or a launcher of it) run from the repository root with `home` as ALBEF_HOME,
/// its SQLite registry, the repository's tokenizer and info logs.
pub fn with_albef_env(mut cmd: Command, home: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    cmd.current_dir(root)
        .env("ALBEF_HOME", home)
        .env("ALBEF_TOKENIZER", root.join("assets/tokenizer.json"))
        .env_remove("ALBEF_REGISTRY_URL")
        .env("RUST_LOG", "info");
    cmd
}

/// Runs a command to completion and returns its last stdout line as JSON.
pub fn json_line(cmd: &mut Command, what: &str) -> Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{what} printed nothing"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what}: {line:?} is not JSON: {e}"))
}

pub fn history(
    reg: &Registry,
    rt: &tokio::runtime::Runtime,
    run: i64,
    key: &str,
) -> Vec<(i64, f64)> {
    let points = rt.block_on(reg.metric_history(run, key)).unwrap();
    points.into_iter().map(|p| (p.step, p.value)).collect()
}

/// The synthetic corpus generated under `tmp`, served over HTTP and ingested like web data as
/// datasets `shapes` (500 pairs) and `shapes-heldout` (100), with the registry in `tmp/home`.
pub fn ingested_corpus(tmp: &Path, rt: &tokio::runtime::Runtime) -> (PathBuf, Registry) {
    let data = tmp.join("data");
    let location = |dataset: &str| data.join(dataset).display().to_string();
    ingest_corpus(tmp, rt, &location, &mut |cmd| cmd)
}

/// [`ingested_corpus`] with each dataset's `--output` given by `location` and each command
/// prepared by `prepare` (its environment).
pub fn ingest_corpus(
    tmp: &Path,
    rt: &tokio::runtime::Runtime,
    location: &dyn Fn(&str) -> String,
    prepare: &mut dyn FnMut(&mut Command) -> &mut Command,
) -> (PathBuf, Registry) {
    let home = tmp.join("home");
    let corpus = tmp.join("corpus");
    let opts = GenerateOptions {
        n: 500,
        heldout: 100,
        image_size: 96,
        seed: 3,
        ..GenerateOptions::default()
    };
    generate(&corpus, &opts).unwrap();
    let server = rt
        .block_on(serve(&corpus, "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    write_url_lists(&corpus, &server.base_url()).unwrap();
    for (list, dataset) in [("urls.tsv", "shapes"), ("heldout.tsv", "shapes-heldout")] {
        let ingest = prepare(&mut albef(&home))
            .args(["ingest", "--input"])
            .arg(corpus.join(list))
            .args(["--output", &location(dataset)])
            .args([
                "--dataset",
                dataset,
                "--shard-size",
                "200",
                "--image-size",
                "96",
            ])
            .output()
            .unwrap();
        assert!(
            ingest.status.success(),
            "ingest {list}: {}",
            String::from_utf8_lossy(&ingest.stderr)
        );
    }
    rt.block_on(server.shutdown()).unwrap();
    let reg = rt
        .block_on(Registry::connect(&format!(
            "sqlite://{}",
            home.join("registry.db").display()
        )))
        .unwrap();
    (home, reg)
}

/// Runs the training command `cmd` until it has done `step` steps, interrupts it with SIGINT,
/// and returns what it printed last: a run that wrote a checkpoint and stopped as KILLED.
pub fn interrupted_at(cmd: &mut Command, step: i64) -> Value {
    let mut child = Logged::spawn(cmd);
    child.wait_for_step(step);
    child.signal("INT");
    let (status, stdout, log) = child.finish(Duration::from_secs(300));
    assert!(
        status.success(),
        "the interrupted run exits cleanly:\n{log}"
    );
    let stopped = last_json(&stdout);
    assert_eq!(stopped["status"], "KILLED");
    stopped
}

/// A command started with stdout and stderr read on threads (so that it never blocks on a full
/// pipe), to be watched while it runs and signalled.
pub struct Logged {
    pub child: Child,
    lines: Receiver<String>,
    readers: Vec<JoinHandle<String>>,
    /// stderr so far.
    pub log: String,
}

impl Logged {
    pub fn spawn(cmd: &mut Command) -> Logged {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start albef");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = channel();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
            String::new()
        });
        let out_reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut out);
            out
        });
        Logged {
            child,
            lines,
            readers: vec![out_reader, err_reader],
            log: String::new(),
        }
    }

    /// Waits for a JSON log line of a step of at least `step`; panics with the log after 300 s.
    pub fn wait_for_step(&mut self, step: i64) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(300))
                .unwrap_or_else(|_| panic!("no step {step}:\n{}", self.log));
            self.log.push_str(&line);
            self.log.push('\n');
            let at = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["fields"]["step"].as_i64());
            if at.is_some_and(|s| s >= step) {
                return;
            }
        }
    }

    /// Sends signal `name` (INT, TERM, KILL) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the exit, killing the process and panicking past `limit`: the status, stdout
    /// and the whole stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.readers.remove(0).join().expect("stdout reader");
        self.readers.remove(0).join().expect("stderr reader");
        let mut log = std::mem::take(&mut self.log);
        log.extend(self.lines.try_iter().map(|l| l + "\n"));
        (status, stdout, log)
    }
}

impl Drop for Logged {
    /// A test that fails leaves no process behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last line of `stdout` as JSON.
pub fn last_json(stdout: &str) -> Value {
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}
