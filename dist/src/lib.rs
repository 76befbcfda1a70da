//! Data-parallel training across processes and machines on c10d, the collective library that
//! `torch.distributed` wraps and that the libtorch tch links already contains.
//!
//! # Pieces
//! - [`World`] reads the launcher's environment (torchrun and Kubeflow's PyTorchJob: `RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`;
//!   Slurm: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` with `MASTER_ADDR`/`MASTER_PORT`).
//!   No such variables: `None`, and the caller runs alone as before.
//! - [`ProcessGroup`] joins the ranks: a c10d `TCPStore` at the master address (served by rank 0,
//!   or by torchrun's agent when it says so), then a `ProcessGroupGloo` or `ProcessGroupNCCL`
//!   over it. Its collectives:
//!   [`ProcessGroup::all_reduce_mean`] (gradients), [`ProcessGroup::broadcast`] (the initial
//!   state), [`ProcessGroup::all_gather`] (the queues' features), [`ProcessGroup::barrier`].
//! - [`Backend`]: Gloo is compiled in. NCCL comes as a plugin, `libalbef_c10d_nccl.so`
//!   (`csrc/c10d_nccl.cpp`, built by `scripts/build-nccl-plugin` where the CUDA toolkit's headers
//!   are), loaded with dlopen when a group asks for NCCL; without it the error says how to get it.
//!
//! # The shim
//! tch binds no `torch.distributed`, so `csrc/c10d_shim.cpp` (compiled by `build.rs` against
//! libtorch's own headers and Debian's Gloo headers) exposes a handful of `extern "C"` functions
//! over tch's tensor pointers (`at::Tensor*`) and opaque store and group handles. Each waits for
//! its collective, catches every C++ exception (Gloo's I/O errors are plain
//! `std::runtime_error`s) and hands the message back as a string; `ffi.rs` owns the handles and
//! frees them on drop. Nothing in the shim aborts the process. (NCCL's own watchdog thread does:
//! a collective that outlives the timeout on the GPU ends the process after logging which one,
//! as under torch.distributed; `TORCH_NCCL_BLOCKING_WAIT=1` turns that into an error at the
//! waiting call, at the price of the host waiting for every collective.)
//!
//! # Buckets, and what overlaps
//! `all_reduce_mean` and `broadcast` flatten consecutive tensors of one kind and device into
//! buckets of at most `bucket_bytes` (DDP's 25 MB by default) and make one collective call per
//! bucket; a lone contiguous tensor is reduced in place. These calls are synchronous. What
//! overlaps the backward pass is the [`Reducer`]: tch exposes no gradient hooks, so the shim
//! registers libtorch's post-accumulate-grad hooks itself and starts each bucket's all-reduce
//! from them, as DDP's reducer does; the trainer uses it unless told `--dist-sync`.
//!
//! # Errors
//! Every failure is an `anyhow::Error` carrying c10d's message. A peer that crashed or was killed
//! shows as a closed connection within milliseconds, named by Gloo only by the far end's address;
//! each rank publishes its Gloo sockets' addresses in the store when the group is made, so the
//! error names the rank ("rank 1 is gone"), or says "a peer rank is gone" when the address is
//! unknown. A peer alive but absent fails the collective after
//! the group's timeout ([`DEFAULT_TIMEOUT`] unless set), with an error that says so.
mod backend;
mod bucket;
mod fault;
mod ffi;
mod group;
mod interface;
mod world;

pub use backend::{Backend, NCCL_PLUGIN_FILE, NCCL_PLUGIN_VAR};
pub use group::{ProcessGroup, Reducer, DEFAULT_BUCKET_BYTES, DEFAULT_TIMEOUT};
pub use world::{Launcher, World};
