//! The collective backends a process group can run on, and which of them this build has.
use std::str::FromStr;

use anyhow::{bail, Result};

/// c10d's backends: NCCL for CUDA tensors, Gloo for CPU tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

/// Why `Backend::Nccl` fails in this build.
pub(crate) const NCCL_NOT_COMPILED: &str = "NCCL support is not compiled in; the c10d shim \
    (dist/csrc/c10d_shim.cpp) needs -DUSE_C10D_NCCL, nccl.h (the torch wheel's \
    nvidia/nccl/include) and the CUDA toolkit headers to include ProcessGroupNCCL.hpp, and this \
    machine has no CUDA toolkit; use the gloo backend (it also moves CUDA tensors, through host \
    memory)";

impl Backend {
    /// The backend PyTorch picks for tensors on `device`: NCCL on CUDA, Gloo on the CPU.
    pub fn for_device(device: tch::Device) -> Backend {
        match device {
            tch::Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => bail!("unknown collective backend {s:?}: expected gloo or nccl"),
        }
    }
}
