//! `ProcessGroup`: the collectives data-parallel training needs (mean of gradients, broadcast of
//! the initial state, gather of the queues), over a c10d Gloo or NCCL group.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::backend::{nccl_plugin, Backend};
use crate::bucket::{buckets, with_flat};
use crate::fault::collective_error;
use crate::ffi::{self, Group, ReduceOp, Store};
use crate::interface::{gloo_device, GLOO_SOCKET_IFNAME};
use crate::world::World;

/// How long a collective waits for its peers before it fails (c10d's own default is 30 min).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The size of one flattened all-reduce: DDP's default `bucket_cap_mb`.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// The store key where rank `r` publishes its Gloo sockets' addresses.
fn address_key(rank: usize) -> String {
    format!("albef-dist/gloo-addresses/{rank}")
}

/// A c10d process group joined by every rank of a `World`. Each collective returns when it has
/// finished on this rank; a dead or absent peer makes it fail within the timeout.
pub struct ProcessGroup {
    // Declared before `_store` so that the group is dropped first.
    group: Group,
    _store: Store,
    rank: usize,
    world_size: usize,
    /// Rank r's Gloo socket addresses, to name a rank from a "connection closed" error (empty
    /// on NCCL, whose errors name ranks themselves).
    peers: Vec<String>,
    timeout: Duration,
    bucket_bytes: usize,
}

impl ProcessGroup {
    /// Joins the group: connects to (or, on rank 0, serves) the TCPStore at the world's master
    /// address, then sets up the backend: Gloo connects all ranks at once; NCCL (bound to the
    /// GPU `LOCAL_RANK` names) makes its communicator at the first collective. `timeout` bounds
    /// both the meeting and every later collective.
    pub fn new(world: &World, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        // Before the store: a missing plugin is this rank's own problem, not the world's.
        let plugin = match backend {
            Backend::Nccl => Some(nccl_plugin()?),
            Backend::Gloo => None,
        };
        let (addr, port) = (&world.master_addr, world.master_port);
        let prefix = world.store_prefix();
        let store = Store::connect(
            addr,
            port,
            world.serves_store(),
            world.world_size,
            timeout,
            &prefix,
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("connecting to the c10d store at {addr}:{port}"))?;
        let (group, peers) = match plugin {
            Some(plugin) => (nccl(&plugin, &store, world, timeout)?, Vec::new()),
            None => gloo(&store, world, timeout)?,
        };
        Ok(ProcessGroup {
            group,
            _store: store,
            rank: world.rank,
            world_size: world.world_size,
            peers,
            timeout,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        })
    }

    /// Sets the size of one flattened bucket of `all_reduce_*` and `broadcast`.
    pub fn with_bucket_bytes(mut self, bucket_bytes: usize) -> ProcessGroup {
        self.bucket_bytes = bucket_bytes.max(1);
        self
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Replaces every tensor by its mean over the ranks (bit-identical on every rank), in
    /// flattened buckets of at most `bucket_bytes`: one collective call per bucket.
    pub fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.all_reduce(tensors, ReduceOp::Avg, "all_reduce_mean")
    }

    /// Replaces every tensor by its sum over the ranks, bucketed as `all_reduce_mean`.
    pub fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<()> {
        self.all_reduce(tensors, ReduceOp::Sum, "all_reduce_sum")
    }

    fn all_reduce(&self, tensors: &mut [Tensor], op: ReduceOp, name: &str) -> Result<()> {
        for range in buckets(tensors, self.bucket_bytes) {
            with_flat(&mut tensors[range], |flat| {
                self.group.all_reduce(std::slice::from_mut(flat), op)
            })
            .map_err(|message| self.error(name, &message))?;
        }
        Ok(())
    }

    /// Overwrites every tensor with rank `root`'s, bucketed as `all_reduce_mean`.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            bail!(
                "broadcast from rank {root} in a world of {}",
                self.world_size
            );
        }
        for range in buckets(tensors, self.bucket_bytes) {
            with_flat(&mut tensors[range], |flat| {
                self.group.broadcast(std::slice::from_mut(flat), root)
            })
            .map_err(|message| self.error("broadcast", &message))?;
        }
        Ok(())
    }

    /// Every rank's `tensor`, concatenated along dim 0 in rank order (ALBEF's
    /// `concat_all_gather`). The tensors must have the same shape on every rank.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let input = match tensor.dim() {
            0 => tensor.reshape([1]),
            _ => tensor.contiguous(),
        };
        let mut size = input.size();
        size[0] *= self.world_size as i64;
        let mut output = Tensor::empty(size, (input.kind(), input.device()));
        self.group
            .all_gather(&mut output, &input)
            .map_err(|message| self.error("all_gather", &message))?;
        Ok(output)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        self.group
            .barrier()
            .map_err(|message| self.error("barrier", &message))
    }

    /// Hooks `params` (leaf tensors requiring grad, in the same order on every rank) so that
    /// their gradients are averaged over the ranks while backward runs, in buckets of at most
    /// `bucket_bytes` (the first at most 1 MB): see [`Reducer`].
    pub fn reducer(&self, params: &[Tensor], bucket_bytes: usize) -> Result<Reducer> {
        let inner = ffi::Reducer::new(&self.group, params, bucket_bytes)
            .map_err(|message| self.error("reducer", &message))?;
        Ok(Reducer { inner })
    }

    /// Waits for `reducer`'s all-reduces and writes the means into the gradients. Returns how
    /// many buckets started while backward ran (none on the first step, which learns the order).
    pub fn finish(&self, reducer: &Reducer) -> Result<usize> {
        reducer
            .inner
            .finish()
            .map_err(|message| self.error("all_reduce_mean (overlapped)", &message))
    }

    fn error(&self, op: &str, message: &str) -> anyhow::Error {
        collective_error(op, message, &self.peers, self.rank, self.timeout)
    }
}

/// DDP's reducer: gradient averaging that overlaps the backward pass. Hooks on the parameters
/// start a bucket's all-reduce as soon as autograd has accumulated all its gradients, in the
/// order the gradients become ready (learned on the first armed step, rank 0's order for all);
/// Gloo runs it on its own threads and NCCL on its own stream while autograd goes on with
/// earlier layers. Per step: [`Reducer::arm`] before the backward that finishes the step's
/// gradients (the last micro-batch), [`ProcessGroup::finish`] after it. Dropping it removes
/// the hooks.
pub struct Reducer {
    inner: ffi::Reducer,
}

impl Reducer {
    /// The next backward produces this step's final gradients.
    pub fn arm(&self) {
        self.inner.arm();
    }
}

/// A Gloo group over `store`, and every rank's socket addresses (see `ProcessGroup::peers`).
fn gloo(store: &Store, world: &World, timeout: Duration) -> Result<(Group, Vec<String>)> {
    let (group, addresses) = Group::gloo(
        store,
        world.rank,
        world.world_size,
        timeout,
        &gloo_device(
            &world.master_addr,
            world.master_port,
            std::env::var(GLOO_SOCKET_IFNAME).ok(),
        )?,
    )
    .map_err(anyhow::Error::msg)
    .context("setting up the Gloo process group")?;
    let peers = exchange_addresses(store, world, &addresses)
        .map_err(anyhow::Error::msg)
        .context("exchanging Gloo addresses through the c10d store")?;
    Ok((group, peers))
}

/// An NCCL group over `store`, bound to CUDA device `LOCAL_RANK`.
fn nccl(plugin: &str, store: &Store, world: &World, timeout: Duration) -> Result<Group> {
    Group::nccl(
        plugin,
        store,
        world.rank,
        world.world_size,
        timeout,
        world.local_rank,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("setting up the NCCL process group (plugin {plugin})"))
}

/// Publishes this rank's Gloo socket addresses and reads every rank's, indexed by rank. Each
/// rank reads world-size keys of about world-size addresses: fine for the tens of ranks Gloo
/// serves, quadratic beyond.
fn exchange_addresses(
    store: &Store,
    world: &World,
    addresses: &str,
) -> Result<Vec<String>, String> {
    store.set(&address_key(world.rank), addresses)?;
    (0..world.world_size)
        .map(|r| store.get(&address_key(r)))
        .collect()
}
