//! `albef-dist-check`: checks that the ranks of a launch can talk, before a long job relies on
//! it. Every rank runs each collective on tensors seeded by its rank, recomputes locally what
//! every rank sent, and fails if a result is wrong or differs by one bit from another rank's.
//!
//!     torchrun --nproc-per-node 2 --no-python albef-dist-check
//!     srun albef-dist-check          # with MASTER_ADDR and MASTER_PORT exported
//!
//!     torchrun --nproc-per-node 8 --no-python albef-dist-check --backend nccl --device cuda
//!
//! Options: `--backend gloo|nccl` (default gloo), `--device cpu|cuda` (where the tensors live;
//! `cuda` is the GPU `LOCAL_RANK` names), `--timeout-s N` (collective timeout, default 300), `--bucket-bytes N` (default 4096,
//! so that the test tensors span several buckets), `--out DIR` (writes `rank{R}.ot` with the
//! inputs and results, for the crate's tests), `--stall-rank R` (rank R stops before the last
//! all-reduce and sleeps: how the tests make a rank absent or kill it mid-collective).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use albef_dist::{Backend, ProcessGroup, World};
use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

struct Options {
    backend: Backend,
    device: Device,
    timeout: Duration,
    bucket_bytes: usize,
    out: Option<PathBuf>,
    stall_rank: Option<usize>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        backend: Backend::Gloo,
        device: Device::Cpu,
        timeout: albef_dist::DEFAULT_TIMEOUT,
        bucket_bytes: 4096,
        out: None,
        stall_rank: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value:?}"))
        };
        match flag.as_str() {
            "--backend" => options.backend = value.parse()?,
            "--device" => options.device = device(&value)?,
            "--timeout-s" => options.timeout = Duration::from_secs(number()?),
            "--bucket-bytes" => options.bucket_bytes = number()? as usize,
            "--out" => options.out = Some(PathBuf::from(&value)),
            "--stall-rank" => options.stall_rank = Some(number()? as usize),
            _ => bail!("unknown option {flag}"),
        }
    }
    Ok(options)
}

/// `cpu`, or `cuda` (the GPU `LOCAL_RANK` names; resolved in `main`).
fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => bail!("--device {name:?}: expected cpu or cuda"),
    }
}

/// Rank `rank`'s test tensors on `device`: several shapes, two kinds, more than one bucket of
/// 4 KiB. Drawn on the CPU, so that every rank can recompute every other rank's.
fn inputs(rank: usize, device: Device) -> Vec<Tensor> {
    tch::manual_seed(1000 + rank as i64);
    let f = |shape: &[i64], kind| Tensor::randn(shape, (kind, Device::Cpu)).to_device(device);
    vec![
        f(&[37], Kind::Float),
        f(&[64, 33], Kind::Float),
        f(&[5, 7, 11], Kind::Float),
        f(&[17], Kind::Double),
        f(&[1000], Kind::Float),
        f(&[3], Kind::Float),
    ]
}

fn copies(tensors: &[Tensor]) -> Vec<Tensor> {
    tensors.iter().map(Tensor::copy).collect()
}

/// Every rank's copy of `tensors`, compared bit for bit with this rank's.
fn check_identical(group: &ProcessGroup, tensors: &[Tensor], what: &str) -> Result<()> {
    let flat: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.to_kind(Kind::Double).reshape([-1]))
        .collect();
    let flat = Tensor::cat(&flat, 0);
    let gathered = group.all_gather(&flat)?;
    for (r, copy) in gathered
        .chunk(group.world_size() as i64, 0)
        .iter()
        .enumerate()
    {
        ensure!(
            copy.equal(&flat),
            "{what}: rank {r}'s result differs from rank {}'s",
            group.rank()
        );
    }
    Ok(())
}

/// Runs every collective and checks it; returns the tensors to save.
fn check_collectives(group: &ProcessGroup, device: Device) -> Result<Vec<(String, Tensor)>> {
    let (rank, size) = (group.rank(), group.world_size());
    let all: Vec<Vec<Tensor>> = (0..size).map(|r| inputs(r, device)).collect();
    let mine = copies(&all[rank]);

    let mut mean = copies(&mine);
    group.all_reduce_mean(&mut mean)?;
    for (i, got) in mean.iter().enumerate() {
        let sum = all[1..]
            .iter()
            .fold(all[0][i].copy(), |acc, ts| acc + &ts[i]);
        let expected = sum / size as f64;
        ensure!(
            got.allclose(&expected, 1e-5, 1e-6, false),
            "all_reduce_mean: tensor {i} is not the mean"
        );
    }
    check_identical(group, &mean, "all_reduce_mean")?;

    let mut broadcast = copies(&mine);
    group.broadcast(&mut broadcast, 0)?;
    for (got, root) in broadcast.iter().zip(&all[0]) {
        ensure!(got.equal(root), "broadcast: a tensor differs from rank 0's");
    }

    let gathered = group.all_gather(&mine[1])?;
    let expected = Tensor::cat(&all.iter().map(|ts| &ts[1]).collect::<Vec<_>>(), 0);
    ensure!(
        gathered.equal(&expected),
        "all_gather: not every rank's tensor in rank order"
    );
    group.barrier()?;

    let mut saved = Vec::new();
    for (name, tensors) in [("input", mine), ("mean", mean), ("broadcast", broadcast)] {
        saved.extend(
            tensors
                .into_iter()
                .enumerate()
                .map(|(i, t)| (format!("{name}.{i}"), t)),
        );
    }
    saved.push(("gathered".to_owned(), gathered));
    Ok(saved)
}

fn main() -> Result<()> {
    let options = parse_args()?;
    let world = World::from_env()?
        .context("no launcher variables (RANK and WORLD_SIZE, or SLURM_PROCID and SLURM_NTASKS): run under torchrun or srun")?;
    let start = Instant::now();
    let device = match options.device {
        Device::Cuda(_) => Device::Cuda(world.local_rank),
        cpu => cpu,
    };
    let group = ProcessGroup::new(&world, options.backend, options.timeout)?
        .with_bucket_bytes(options.bucket_bytes);
    let saved = check_collectives(&group, device)?;
    if let Some(dir) = &options.out {
        let saved: Vec<_> = saved
            .into_iter()
            .map(|(k, t)| (k, t.to_device(Device::Cpu)))
            .collect();
        Tensor::save_multi(&saved, dir.join(format!("rank{}.ot", world.rank)))?;
    }
    println!(
        "rank {} of {}: all_reduce_mean, broadcast, all_gather, barrier ok in {:.2?} ({:?} on {device:?})",
        world.rank,
        world.world_size,
        start.elapsed(),
        options.backend
    );
    if options.stall_rank == Some(world.rank) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let mut last = vec![Tensor::ones([1], (Kind::Float, device))];
    group.all_reduce_sum(&mut last)?;
    ensure!(
        last[0].double_value(&[0]) == world.world_size as f64,
        "all_reduce_sum: not the world size"
    );
    Ok(())
}
