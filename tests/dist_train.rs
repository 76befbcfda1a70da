//! Data-parallel training through the CLI: `albef train` processes started as torchrun starts
//! them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on 127.0.0.1), on CPU over a
//! real c10d Gloo group, with an embedded SQLite registry and a synthetic corpus ingested over
//! HTTP. Checked: a world of one trains the same parameters as a process alone; two ranks end
//! bit-identical (parameters, momentum copies, queues, temperature) with one registry run that
//! records the world; SIGTERM on both ranks stops them after the same step with a checkpoint;
//! a resume under another world size is refused naming both sizes; the two-rank resume
//! continues bit-exactly; a rank killed with SIGKILL makes the other fail, naming it; and under
//! the real torchrun with `--max-restarts 1` and `--resume-latest`, a job whose rank is killed
//! restarts from its last checkpoint and ends where an uninterrupted run from it ends.
mod train_support;

use albef_registry::RunStatus;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tch::Tensor;
use train_support::{
    albef, history, ingested_corpus, json_line, last_json, with_albef_env, Logged,
};

const STEPS: i64 = 12;
const LIMIT: Duration = Duration::from_secs(600);

/// `albef train` of albef-tiny on `shapes` for `steps`, batch 4 per process, one libtorch
/// thread each.
fn train_for(home: &Path, name: &str, steps: i64) -> Command {
    let mut cmd = albef(home);
    cmd.args(["train", "--config", "configs/albef-tiny.toml"])
        .args(["--dataset", "shapes", "--batch-size", "4", "--threads", "1"])
        .args(["--steps", &steps.to_string(), "--workers", "1"])
        .args(["--experiment", "dist", "--name", name])
        .args(["--format", "json", "--log-format", "json"]);
    cmd
}

fn train(home: &Path, name: &str) -> Command {
    train_for(home, name, STEPS)
}

/// The launcher's variables for `rank` of `world_size`, meeting at 127.0.0.1:`port`.
fn as_rank(cmd: &mut Command, rank: usize, world_size: usize, port: u16) -> &mut Command {
    cmd.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world_size.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
}

/// A port nobody listens on now and not handed out before in this process: the tests of one
/// binary run at once, and the OS may hand a port just released out again, which would join
/// the ranks of two tests in one store.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Starts two ranks of `cmd(rank)`.
fn two_ranks(mut cmd: impl FnMut(usize) -> Command) -> Vec<Logged> {
    let port = free_port();
    (0..2)
        .map(|r| Logged::spawn(as_rank(&mut cmd(r), r, 2, port)))
        .collect()
}

/// Waits for both ranks; each must succeed. Their results as JSON.
fn both_succeed(ranks: Vec<Logged>) -> Vec<Value> {
    ranks
        .into_iter()
        .enumerate()
        .map(|(r, rank)| {
            let (status, stdout, log) = rank.finish(LIMIT);
            assert!(status.success(), "rank {r} failed:\n{log}");
            last_json(&stdout)
        })
        .collect()
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Every tensor of `a` equals `b`'s bit for bit, and they hold the same names.
fn assert_identical(a: &Path, b: &Path) {
    let (a_t, b_t) = (tensors(a), tensors(b));
    assert_eq!(a_t.len(), b_t.len(), "{} and {}", a.display(), b.display());
    for (name, t) in &a_t {
        let other = b_t.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            t.equal(other),
            "{name} differs: {} vs {}",
            a.display(),
            b.display()
        );
    }
}

fn checkpoint_path(result: &Value) -> &Path {
    Path::new(result["checkpoint_path"].as_str().unwrap())
}

#[test]
fn ranks_train_in_step_stop_together_and_resume_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, reg) = ingested_corpus(tmp.path(), &rt);

    // A world of one goes through the process group and trains what a process alone trains.
    let alone = json_line(&mut train(&home, "alone"), "training alone");
    let one = json_line(
        as_rank(&mut train(&home, "world-of-one"), 0, 1, free_port()),
        "a world of one",
    );
    assert_identical(checkpoint_path(&alone), checkpoint_path(&one));

    // Two ranks: bit-identical at the end, one registry run that records the world.
    let dumps = tmp.path().join("ranks");
    let results = both_succeed(two_ranks(|_| {
        let mut cmd = train(&home, "two-ranks");
        cmd.arg("--rank-weights").arg(&dumps);
        cmd
    }));
    let (r0, r1) = (&results[0], &results[1]);
    assert_eq!(r0["status"], "FINISHED");
    assert_eq!(r0["step"], STEPS);
    assert_eq!(r1["run"], r0["run"], "rank 1 reports rank 0's run");
    assert_eq!(r1["checkpoint"], r0["checkpoint"]);
    let (rank0, rank1) = (
        dumps.join("rank-0.safetensors"),
        dumps.join("rank-1.safetensors"),
    );
    assert_identical(&rank0, &rank1);
    assert_identical(&rank0, checkpoint_path(r0));
    let names = tensors(&rank1);
    for name in [
        "temp",
        "image_queue",
        "text_queue",
        "idx_queue",
        "queue_ptr",
    ] {
        assert!(names.contains_key(name), "{name} compared");
    }
    assert!(names.keys().any(|k| k.starts_with("visual_encoder_m.")));
    let full_run = r0["run"].as_i64().unwrap();
    let runs = rt.block_on(reg.runs(Some("dist"))).unwrap();
    assert_eq!(runs.len(), 3, "one run per launch: {runs:?}");
    let detail = rt.block_on(reg.run_detail(full_run)).unwrap();
    let param = |key: &str| {
        let found = detail.params.iter().find(|(k, _)| k == key);
        found.map(|(_, v)| v.clone())
    };
    assert_eq!(param("dist.world_size").as_deref(), Some("2"));
    assert_eq!(param("dist.global_batch").as_deref(), Some("8"));
    assert_eq!(history(&reg, &rt, full_run, "loss").len() as i64, STEPS);
    assert_eq!(
        history(&reg, &rt, full_run, "collective_pct").len() as i64,
        STEPS
    );

    // SIGTERM on both ranks: they stop after the same step, rank 0 writes the checkpoint.
    let mut ranks = two_ranks(|_| train(&home, "stopped"));
    ranks[0].wait_for_step(3);
    for rank in &ranks {
        rank.signal("TERM");
    }
    let results = both_succeed(ranks);
    assert_eq!(results[0]["status"], "KILLED");
    assert_eq!(
        results[1]["step"], results[0]["step"],
        "both stop after one step"
    );
    let stop_step = results[0]["step"].as_i64().unwrap();
    assert!((3..STEPS).contains(&stop_step), "stopped at {stop_step}");
    let stopped_run = results[0]["run"].as_i64().unwrap();
    assert_eq!(
        rt.block_on(reg.run(stopped_run)).unwrap().status,
        RunStatus::Killed
    );

    // Another world size is refused, naming both sizes.
    let resume = || {
        let mut cmd = albef(&home);
        cmd.args([
            "train",
            "--resume",
            &stopped_run.to_string(),
            "--threads",
            "1",
        ])
        .args(["--workers", "1", "--format", "json", "--log-format", "json"]);
        cmd
    };
    let alone = resume().output().unwrap();
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success(), "resumed by one process");
    assert!(
        err.contains("trained by 2 process(es) and this launch has 1"),
        "{err}"
    );

    // The two-rank resume continues where the uninterrupted run went.
    let results = both_succeed(two_ranks(|_| resume()));
    assert_eq!(results[0]["status"], "FINISHED");
    let resumed_run = results[0]["run"].as_i64().unwrap();
    for key in ["loss", "loss_itc", "loss_itm", "loss_mlm", "temp"] {
        let want: Vec<(i64, f64)> = history(&reg, &rt, full_run, key)
            .into_iter()
            .filter(|(s, _)| *s > stop_step)
            .collect();
        assert_eq!(history(&reg, &rt, resumed_run, key), want, "{key}");
    }
    assert_identical(checkpoint_path(&results[0]), checkpoint_path(r0));
}

#[test]
fn a_killed_rank_makes_the_other_fail_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, reg) = ingested_corpus(tmp.path(), &rt);
    let mut ranks = two_ranks(|_| {
        let mut cmd = train_for(&home, "killed", 100_000);
        cmd.args(["--dist-timeout", "60"]);
        cmd
    });
    ranks[0].wait_for_step(2);
    ranks[1].signal("KILL");
    let rank1 = ranks.pop().unwrap();
    let (status, _, log) = ranks.pop().unwrap().finish(Duration::from_secs(90));
    assert!(
        !status.success(),
        "rank 0 fails when rank 1 is gone:\n{log}"
    );
    assert!(log.contains("rank 1"), "the error names rank 1:\n{log}");
    drop(rank1);
    let runs = rt.block_on(reg.runs(Some("dist"))).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
}

/// torchrun of the torch virtualenv `make test` exports.
fn torchrun() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").expect("VIRTUAL_ENV: run the tests with make test");
    let torchrun = PathBuf::from(venv).join("bin/torchrun");
    assert!(torchrun.exists(), "{} is missing", torchrun.display());
    torchrun
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1));
        if ppid == Some(pid.to_string().as_str()) {
            found.push(child);
        }
    }
    found
}

#[test]
fn torchrun_restarts_a_killed_job_from_its_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (home, reg) = ingested_corpus(tmp.path(), &rt);
    let mut launch = with_albef_env(Command::new(torchrun()), &home);
    launch
        .args(["--nproc-per-node", "2", "--max-restarts", "1"])
        .args([
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &free_port().to_string(),
        ])
        .args(["--no-python", env!("CARGO_BIN_EXE_albef")])
        .args([
            "train",
            "--config",
            "configs/albef-tiny.toml",
            "--dataset",
            "shapes",
        ])
        .args(["--batch-size", "4", "--threads", "1", "--workers", "1"])
        .args([
            "--steps",
            "16",
            "--checkpoint-every",
            "4",
            "--experiment",
            "dist",
        ])
        .args([
            "--resume-latest",
            "job",
            "--format",
            "json",
            "--log-format",
            "json",
        ])
        .env("OMP_NUM_THREADS", "1");
    let mut job = Logged::spawn(&mut launch);
    // Step 6 logged: the checkpoint of step 4 is registered (the ranks step together).
    job.wait_for_step(6);
    let workers = children(job.child.id());
    assert_eq!(workers.len(), 2, "torchrun's two ranks: {workers:?}");
    let status = Command::new("kill")
        .args(["-KILL", &workers[1].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (status, stdout, log) = job.finish(LIMIT);
    assert!(status.success(), "the restarted job finishes:\n{log}");
    let restarted = last_json(&stdout);
    assert_eq!(restarted["status"], "FINISHED");
    assert_eq!(restarted["step"], 16);

    // The history: run `job` failed, `job-restart-*` continued from its newest checkpoint.
    let runs = rt.block_on(reg.runs(Some("dist"))).unwrap();
    let first = runs.iter().find(|r| r.name == "job").expect("run job");
    assert_eq!(first.status, RunStatus::Failed, "{runs:?}");
    let second = runs
        .iter()
        .find(|r| r.name.starts_with("job-restart-"))
        .expect("the restart's run");
    assert_eq!(second.id, restarted["run"].as_i64().unwrap());
    let detail = rt.block_on(reg.run_detail(second.id)).unwrap();
    let tag = |key: &str| {
        detail
            .tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(tag("resumed_from_run"), Some(first.id.to_string()));
    assert_eq!(tag("resume_latest").as_deref(), Some("job"));

    // Two ranks resumed from the same checkpoint without interruption end identical.
    let uninterrupted = both_succeed(two_ranks(|_| {
        let mut cmd = albef(&home);
        cmd.args(["train", "--resume", &first.id.to_string(), "--threads", "1"])
            .args(["--workers", "1", "--format", "json", "--log-format", "json"]);
        cmd
    }));
    assert_eq!(
        tag("resumed_from_checkpoint"),
        rt.block_on(reg.run_detail(uninterrupted[0]["run"].as_i64().unwrap()))
            .unwrap()
            .tags
            .into_iter()
            .find(|(k, _)| k == "resumed_from_checkpoint")
            .map(|(_, v)| v),
        "both continue from the same checkpoint"
    );
    assert_identical(
        checkpoint_path(&restarted),
        checkpoint_path(&uninterrupted[0]),
    );
}
