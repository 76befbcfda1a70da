//! Data-parallel gradients: two ranks on 127.0.0.1 (this test binary started twice as torchrun
//! would start it, over a real c10d Gloo group) each run the pretraining forward and backward
//! on their half of a fixed batch with dropout off, then average their gradients as the trainer
//! does: `Dist::average` over the optimiser's gradients after backward, or the overlapping
//! reducer (`Dist::overlap`), whose hooks start the buckets' all-reduces during backward. Each
//! rank's averaged gradient must equal the mean of the gradients that one process computes on
//! each half alone.
use albef_dist::{Backend, World};
use albef_train::config::Config;
use albef_train::model::{probe, Albef, Batch};
use albef_train::trainer::{AdamW, AdamWOptions, Dist};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

/// Set in the two child processes: where the rank writes its averaged gradients.
const RANK_OUT: &str = "ALBEF_TEST_GRADIENTS_OUT";
const SYNC_TEST: &str = "averaged_gradients_are_the_mean_of_the_halves";
const OVERLAP_TEST: &str = "overlapped_gradients_are_the_mean_of_the_halves";
const SEED: i64 = 5;

fn micro() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/albef-micro.toml");
    Config::load(&path).unwrap()
}

/// Half `half` (0 or 1) of a fixed batch of 4 pairs, and the pairs' pictures.
fn half_batch(config: &Config, half: i64) -> (Batch, Tensor) {
    tch::manual_seed(11);
    let res = config.model.vision.image_res;
    let len = config.train.max_tokens;
    let image = Tensor::randn([4, 3, res, res], (Kind::Float, Device::Cpu));
    let text = &config.model.text;
    let input_ids = Tensor::randint_low(104, text.vocab_size, [4, len], (Kind::Int64, Device::Cpu));
    let _ = input_ids.select(1, 0).fill_(text.cls_token_id);
    let rows = |t: &Tensor| t.narrow(0, 2 * half, 2);
    let batch = Batch {
        image: rows(&image),
        input_ids: rows(&input_ids),
        attention_mask: Tensor::ones([2, len], (Kind::Int64, Device::Cpu)),
    };
    let idx = Tensor::arange_start(2 * half, 2 * half + 2, (Kind::Int64, Device::Cpu));
    (batch, idx)
}

/// The model as every rank builds it, and an optimiser over it (whose gradients the trainer
/// averages).
fn model(config: &Config) -> (nn::VarStore, Albef, AdamW) {
    let (vs, model) = probe::build(config, Device::Cpu, SEED, None).unwrap();
    let options = AdamWOptions {
        betas: config.train.betas,
        eps: 1e-8,
        weight_decay: config.train.weight_decay,
    };
    let optimizer = AdamW::new(&vs, options).unwrap();
    (vs, model, optimizer)
}

/// Forward and backward of half `half` with dropout off and MLM masking seeded by the half.
fn backward(config: &Config, model: &Albef, half: i64) {
    let (batch, idx) = half_batch(config, half);
    tch::manual_seed(100 + half);
    let losses = model
        .losses_with_idx(&batch, &idx, None, 0.4, false)
        .unwrap();
    losses.total().backward();
}

/// Every defined gradient of `vs` by variable name.
fn named_grads(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, v)| (name, v.grad()))
        .filter(|(_, g)| g.defined())
        .map(|(name, g)| (name, g.copy()))
        .collect()
}

/// What each child process does: join the group, backward on its half, average (after
/// backward, or overlapped with it).
fn run_rank(out: &Path, overlap: bool) {
    tch::set_num_threads(1);
    let world = World::from_env()
        .unwrap()
        .expect("the launcher's variables");
    let dist = Dist::join(&world, Backend::Gloo, Duration::from_secs(60)).unwrap();
    let config = micro();
    let (vs, mut model, optimizer) = model(&config);
    dist.broadcast_vars(&vs).unwrap();
    model.set_gather(dist.clone());
    if overlap {
        overlapped_backward(&dist, &config, (&vs, &model, &optimizer));
    } else {
        backward(&config, &model, world.rank as i64);
        let mut grads = optimizer.grads();
        dist.average(&mut grads).unwrap();
    }
    let named: Vec<(String, Tensor)> = named_grads(&vs).into_iter().collect();
    let path = out.join(format!("rank-{}.safetensors", world.rank));
    Tensor::write_safetensors(&named, &path).unwrap();
}

/// Two steps through the reducer, in buckets of 4 KB: the first learns the order in which the
/// gradients become ready and starts nothing during backward; the second accumulates two
/// micro-batches (the same half twice, from the same variables: a forward moves the queues),
/// of which only the armed second backward starts buckets, during backward, on the sum. Half of
/// the second step's averages is what the rank writes.
fn overlapped_backward(
    dist: &Dist,
    config: &Config,
    (vs, model, optimizer): (&nn::VarStore, &Albef, &AdamW),
) {
    let rank = dist.rank() as i64;
    let start: Vec<(Tensor, Tensor)> = vs
        .variables()
        .into_values()
        .map(|v| (v.copy(), v))
        .collect();
    let restore = || {
        tch::no_grad(|| {
            for (saved, variable) in &start {
                variable.shallow_clone().copy_(saved);
            }
        })
    };
    dist.overlap(&optimizer.params(), 4096).unwrap();
    for step in 0..2 {
        for p in optimizer.params() {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
        if step == 1 {
            restore();
            backward(config, model, rank); // an earlier micro-batch: not armed
        }
        restore();
        dist.arm();
        backward(config, model, rank);
        let early = dist.finish().unwrap();
        if step == 0 {
            assert_eq!(early, 0, "the first step only learns the order");
        } else {
            assert!(early > 1, "{early} buckets started during backward");
        }
    }
    tch::no_grad(|| {
        for p in optimizer.params() {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.g_mul_scalar_(0.5);
            }
        }
    });
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

fn spawn_rank(test: &str, rank: usize, port: u16, out: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(RANK_OUT, out)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .spawn()
        .expect("start a rank")
}

fn wait(mut child: std::process::Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "a rank failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a rank hung past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn averaged_gradients_are_the_mean_of_the_halves() {
    check_against_the_halves(SYNC_TEST, false);
}

#[test]
fn overlapped_gradients_are_the_mean_of_the_halves() {
    check_against_the_halves(OVERLAP_TEST, true);
}

/// Runs `test` as two ranks (or, in a rank, does the rank's part) and compares each rank's
/// averaged gradients with the mean of the halves computed alone.
fn check_against_the_halves(test: &str, overlap: bool) {
    if let Some(out) = std::env::var_os(RANK_OUT) {
        return run_rank(&PathBuf::from(out), overlap);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|r| spawn_rank(test, r, port, dir.path()))
        .collect();
    for rank in ranks {
        wait(rank, Duration::from_secs(120));
    }

    tch::set_num_threads(1);
    let config = micro();
    let alone: Vec<HashMap<String, Tensor>> = (0..2)
        .map(|half| {
            let (vs, model, _) = model(&config);
            backward(&config, &model, half);
            named_grads(&vs)
        })
        .collect();
    for rank in 0..2 {
        let path = dir.path().join(format!("rank-{rank}.safetensors"));
        let averaged: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            averaged.len(),
            alone[0].len(),
            "rank {rank}: the same gradients"
        );
        for (name, got) in &averaged {
            let want = (&alone[0][name] + &alone[1][name]) / 2.0;
            let diff = (got - &want).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "rank {rank} {name}: off the mean by {diff}");
        }
        assert!(
            averaged
                .values()
                .any(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0),
            "the gradients are not all zero"
        );
    }
}
