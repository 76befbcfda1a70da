//! Data-parallel training: what the loop does differently when `albef train` runs as one rank
//! of several, over the c10d process group of the `albef-dist` crate (dist/src/lib.rs).
//!
//! As the official code under DistributedDataParallel (docs/albef.md, "Several processes"):
//! - start: rank 0's variables (parameters, momentum copies, queues, queue pointer,
//!   temperature), sorted by name, are broadcast to every rank, so the ranks start
//!   bit-identical, after a resume too;
//! - every step: each rank runs forward and backward on its own share of the data (the loader
//!   shards by rank; `batch_size` is per process); the gradients become their mean over the
//!   ranks in flattened buckets before clipping and the optimiser step. The step's losses and
//!   the stop flag are averaged too, so the logged losses are the mean over the ranks and every
//!   rank stops after the same step;
//! - the queues take every rank's momentum features and `idx` (`Albef::set_gather`, the
//!   official `concat_all_gather`); ITM hard negatives are drawn within the local batch;
//! - rank 0 alone writes checkpoints and registry metrics and evaluates; the other ranks learn
//!   each checkpoint's registry id from it.
//!
//! What overlaps: by default, as DDP, each bucket's all-reduce starts from autograd hooks as
//! soon as its gradients are ready, while the backward pass goes on with earlier layers
//! ([`Dist::overlap`], albef_dist::Reducer; the first step learns the order in which gradients
//! become ready and overlaps nothing). The forward, the loader and the optimiser step do not
//! overlap communication. With `--dist-sync` ([`Dist::average`]) the average starts when
//! `backward` has returned. The time the step then waits for the ranks is logged as
//! `collective_pct`.
use crate::model::albef::Gather;
use albef_dist::{Backend, ProcessGroup, Reducer, World};
use anyhow::{Context, Result};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tch::{nn, Device, Tensor};

/// This process's place in a data-parallel run and its process group.
pub struct Dist {
    /// c10d's handles may be used from one thread at a time; the loop is one thread, the lock
    /// only makes the group shareable with the model (`Gather`).
    group: Mutex<ProcessGroup>,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    /// Where the loop's own small tensors (ids) go: NCCL moves only CUDA tensors.
    device: Device,
    /// The overlapping reducer, once [`Dist::overlap`] has hooked the parameters.
    reducer: Mutex<Option<Reducer>>,
}

impl fmt::Debug for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dist(rank {} of {})", self.rank, self.world_size)
    }
}

impl Dist {
    /// Joins the ranks of `world` on `backend`; `timeout` bounds the meeting and every later
    /// collective (a dead rank makes the others fail within it).
    pub fn join(world: &World, backend: Backend, timeout: Duration) -> Result<Arc<Dist>> {
        let group = ProcessGroup::new(world, backend, timeout).with_context(|| {
            format!(
                "rank {} of {} joining the process group at {}:{}",
                world.rank, world.world_size, world.master_addr, world.master_port
            )
        })?;
        tracing::info!(
            rank = world.rank,
            world_size = world.world_size,
            local_rank = world.local_rank,
            ?backend,
            "joined the process group"
        );
        Ok(Arc::new(Dist {
            rank: group.rank(),
            world_size: group.world_size(),
            local_rank: world.local_rank,
            device: match backend {
                Backend::Nccl => Device::Cuda(world.local_rank),
                Backend::Gloo => Device::Cpu,
            },
            group: Mutex::new(group),
            reducer: Mutex::new(None),
        }))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The rank on this machine: it picks the GPU.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0, which writes checkpoints and metrics.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn group(&self) -> MutexGuard<'_, ProcessGroup> {
        // A panic while holding the lock leaves the group as usable as before.
        self.group.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every variable of `vs` rank 0's, in buckets, sorted by name (the same order on
    /// every rank).
    pub fn broadcast_vars(&self, vs: &nn::VarStore) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
        self.group()
            .broadcast(&mut tensors, 0)
            .context("broadcasting rank 0's model to every rank")
    }

    /// Replaces every tensor by its mean over the ranks (bit-identical on every rank).
    pub fn average(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.group()
            .all_reduce_mean(tensors)
            .context("averaging the gradients over the ranks")
    }

    /// From now on, `params`' gradients (the same order on every rank) are averaged while
    /// backward runs, in buckets of at most `bucket_bytes`: [`Dist::arm`] before the backward
    /// that completes a step's gradients, [`Dist::finish`] after it.
    pub fn overlap(&self, params: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let reducer = self
            .group()
            .reducer(params, bucket_bytes)
            .context("hooking the parameters to average their gradients")?;
        *self.reducer() = Some(reducer);
        Ok(())
    }

    fn reducer(&self) -> MutexGuard<'_, Option<Reducer>> {
        self.reducer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the gradients are averaged during backward.
    pub fn overlapping(&self) -> bool {
        self.reducer().is_some()
    }

    /// The next backward completes this step's gradients (a no-op without [`Dist::overlap`]).
    pub fn arm(&self) {
        if let Some(reducer) = self.reducer().as_ref() {
            reducer.arm();
        }
    }

    /// Waits for the all-reduces the armed backward started; the gradients are then their
    /// means. Returns how many buckets started during backward.
    pub fn finish(&self) -> Result<usize> {
        let reducer = self.reducer();
        let reducer = reducer
            .as_ref()
            .context("Dist::finish without Dist::overlap")?;
        self.group()
            .finish(reducer)
            .context("averaging the gradients over the ranks")
    }

    /// Rank 0's `value` on every rank (a run or checkpoint id only rank 0 knows).
    pub fn broadcast_i64(&self, value: i64) -> Result<i64> {
        let mut t = [Tensor::from_slice(&[value]).to_device(self.device)];
        self.group()
            .broadcast(&mut t, 0)
            .context("receiving a registry id from rank 0")?;
        Ok(t[0].int64_value(&[0]))
    }
}

impl Gather for Dist {
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        self.group()
            .all_gather(tensor)
            .context("gathering the momentum features for the queues")
    }
}
