//! The NCCL backend through its plugin (csrc/c10d_nccl.cpp, built by scripts/build-nccl-plugin;
//! `make test` puts it beside the test binaries, where `albef-dist-check` looks first). Without
//! the plugin, the error says how to build one. With it, a world of one runs every collective on
//! the GPU; on a machine without one, c10d's own refusal comes back as an error and an exit code,
//! not an abort.
mod common;

use std::path::Path;
use std::time::Duration;

use albef_dist::{NCCL_PLUGIN_FILE, NCCL_PLUGIN_VAR};
use common::{free_port, spawn_rank_with, CHECK};

const LIMIT: Duration = Duration::from_secs(120);
const NCCL_ARGS: &[&str] = &["--backend", "nccl", "--device", "cuda", "--timeout-s", "60"];

#[test]
fn without_the_plugin_the_error_says_how_to_build_it() {
    let missing = "/nonexistent/libalbef_c10d_nccl.so";
    let mut rank = spawn_rank_with(0, 1, free_port(), NCCL_ARGS, &[(NCCL_PLUGIN_VAR, missing)]);
    let (status, stderr) = rank.wait(LIMIT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("not found at {missing}")),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/build-nccl-plugin"), "{stderr}");
}

#[test]
fn a_world_of_one_runs_on_nccl_or_says_there_is_no_gpu() {
    let plugin = Path::new(CHECK).with_file_name(NCCL_PLUGIN_FILE);
    assert!(
        plugin.is_file(),
        "{} is missing: `make test` builds it (scripts/build-nccl-plugin)",
        plugin.display()
    );
    let mut rank = spawn_rank_with(0, 1, free_port(), NCCL_ARGS, &[]);
    let (status, stderr) = rank.wait(LIMIT);
    if tch::Cuda::is_available() {
        assert!(status.success(), "{stderr}");
    } else {
        // c10d threw in ProcessGroupNCCL's constructor, inside the plugin: a Rust error now.
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("setting up the NCCL process group"),
            "{stderr}"
        );
        assert!(stderr.contains("no GPUs found"), "{stderr}");
    }
}
