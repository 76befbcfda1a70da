//! Two ranks started by the real torchrun of the torch virtualenv (`--no-python`), as a user
//! launches `albef` on one machine: torchrun's agent serves the store, every rank connects to it.
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, CHECK};

/// torchrun from $VIRTUAL_ENV (the Makefile's torch virtualenv), else from PATH.
fn torchrun() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/torchrun"));
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("torchrun"))
            .find(|t| t.exists())
    });
    venv.filter(|t| t.exists()).or(on_path)
}

#[test]
fn torchrun_starts_two_ranks_that_agree() {
    let Some(torchrun) = torchrun() else {
        eprintln!("skipped: no torchrun (set VIRTUAL_ENV to the torch virtualenv)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("torchrun.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(torchrun)
        .args(["--nproc-per-node", "2", "--master-addr", "127.0.0.1"])
        .args([
            "--master-port",
            &free_port().to_string(),
            "--no-python",
            CHECK,
        ])
        .args(["--timeout-s", "60", "--out", dir.path().to_str().unwrap()])
        .env("OMP_NUM_THREADS", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "torchrun hung: {}",
                std::fs::read_to_string(&log_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "torchrun failed:\n{text}");
    for rank in 0..2 {
        assert!(
            text.contains(&format!("rank {rank} of 2: all_reduce_mean")),
            "{text}"
        );
        assert!(dir.path().join(format!("rank{rank}.ot")).exists());
    }
}
