//! Two ranks of `albef-dist-check` on 127.0.0.1: the collectives' results, compared across the
//! ranks' saved tensors, and what a rank sees when its peer dies or never comes.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::spawn_world;
use tch::Tensor;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs two ranks to completion with `--out`; returns each rank's saved tensors by name.
fn run_two_ranks(dir: &Path) -> [HashMap<String, Tensor>; 2] {
    let out = dir.to_str().unwrap();
    for (rank, mut r) in spawn_world(2, &["--out", out, "--timeout-s", "60"])
        .into_iter()
        .enumerate()
    {
        let (status, stderr) = r.wait(LIMIT);
        assert!(status.success(), "rank {rank} failed: {stderr}");
    }
    [0, 1].map(|rank| {
        let path = dir.join(format!("rank{rank}.ot"));
        Tensor::load_multi(&path).unwrap().into_iter().collect()
    })
}

fn tensor<'a>(saved: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    saved
        .get(name)
        .unwrap_or_else(|| panic!("{name} not saved"))
}

const TENSORS: usize = 6;

#[test]
fn all_reduce_mean_is_the_mean_and_bit_identical_on_both_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let [r0, r1] = run_two_ranks(dir.path());
    let mut bytes = 0;
    for i in 0..TENSORS {
        let (a, b) = (
            tensor(&r0, &format!("input.{i}")),
            tensor(&r1, &format!("input.{i}")),
        );
        let (m0, m1) = (
            tensor(&r0, &format!("mean.{i}")),
            tensor(&r1, &format!("mean.{i}")),
        );
        assert!(!a.equal(b), "tensor {i}: the ranks' inputs should differ");
        assert!(
            m0.equal(m1),
            "tensor {i}: the means differ between the ranks"
        );
        let expected = (a + b) / 2.0;
        assert!(
            m0.allclose(&expected, 1e-6, 1e-7, false),
            "tensor {i} is not the mean"
        );
        bytes += a.numel() * a.kind().elt_size_in_bytes();
    }
    assert!(
        bytes > 3 * 4096,
        "the tensors ({bytes} bytes) should span several 4 KiB buckets"
    );
}

#[test]
fn broadcast_makes_rank_1_bit_identical_to_rank_0() {
    let dir = tempfile::tempdir().unwrap();
    let [r0, r1] = run_two_ranks(dir.path());
    for i in 0..TENSORS {
        let root = tensor(&r0, &format!("input.{i}"));
        assert!(
            tensor(&r1, &format!("broadcast.{i}")).equal(root),
            "tensor {i} on rank 1"
        );
        assert!(
            tensor(&r0, &format!("broadcast.{i}")).equal(root),
            "tensor {i} on rank 0"
        );
    }
}

#[test]
fn all_gather_concatenates_in_rank_order() {
    let dir = tempfile::tempdir().unwrap();
    let [r0, r1] = run_two_ranks(dir.path());
    let expected = Tensor::cat(&[tensor(&r0, "input.1"), tensor(&r1, "input.1")], 0);
    assert_eq!(expected.size(), [128, 33]);
    assert!(tensor(&r0, "gathered").equal(&expected));
    assert!(tensor(&r1, "gathered").equal(&expected));
}

/// Starts two ranks, lets them pass the checks, SIGKILLs `victim` while the other waits in an
/// all-reduce, and returns the survivor's error text and how long it took to fail.
fn kill_during_collective(victim: usize) -> (String, Duration) {
    let timeout_s = 60;
    let stall = victim.to_string();
    let mut ranks = spawn_world(
        2,
        &[
            "--stall-rank",
            &stall,
            "--timeout-s",
            &timeout_s.to_string(),
        ],
    );
    for r in &mut ranks {
        r.wait_for_line("ok in", LIMIT);
    }
    ranks[victim].child.kill().unwrap();
    let killed = Instant::now();
    let (status, stderr) = ranks[1 - victim].wait(Duration::from_secs(timeout_s + 30));
    let took = killed.elapsed();
    assert!(
        !status.success(),
        "the survivor should fail; stderr: {stderr}"
    );
    assert!(
        status.code().is_some(),
        "the survivor should exit, not die of a signal: {status}"
    );
    assert!(
        took < Duration::from_secs(timeout_s),
        "the survivor took {took:?}"
    );
    (stderr, took)
}

#[test]
fn a_killed_rank_is_named_by_the_survivor() {
    let (stderr, _) = kill_during_collective(1);
    assert!(
        stderr.contains("all_reduce_sum failed: rank 1 is gone"),
        "{stderr}"
    );
}

#[test]
fn a_killed_store_host_is_named_too() {
    let (stderr, _) = kill_during_collective(0);
    assert!(
        stderr.contains("all_reduce_sum failed: rank 0 is gone"),
        "{stderr}"
    );
}

#[test]
fn a_rank_that_never_joins_times_out() {
    let mut ranks = spawn_world(2, &["--stall-rank", "1", "--timeout-s", "3"]);
    for r in &mut ranks {
        r.wait_for_line("ok in", LIMIT);
    }
    let start = Instant::now();
    let (status, stderr) = ranks[0].wait(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        stderr.contains("timed out after 3s waiting for a peer rank"),
        "{stderr}"
    );
}
