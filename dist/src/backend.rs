//! The collective backends a process group can run on, and where NCCL's plugin is found.
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// c10d's backends: NCCL for CUDA tensors, Gloo for CPU tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

/// The NCCL plugin's file name: beside the binary unless `ALBEF_NCCL_PLUGIN` names another.
pub const NCCL_PLUGIN_FILE: &str = "libalbef_c10d_nccl.so";
/// The variable that names the NCCL plugin's path.
pub const NCCL_PLUGIN_VAR: &str = "ALBEF_NCCL_PLUGIN";

/// The NCCL plugin (csrc/c10d_nccl.cpp built by scripts/build-nccl-plugin): `ALBEF_NCCL_PLUGIN`,
/// else `libalbef_c10d_nccl.so` beside the running binary. An error says how to get one.
pub(crate) fn nccl_plugin() -> Result<String> {
    let path = match std::env::var_os(NCCL_PLUGIN_VAR) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .context("finding the running binary's folder, where the NCCL plugin is looked for")?
            .with_file_name(NCCL_PLUGIN_FILE),
    };
    if !path.is_file() {
        bail!(
            "the NCCL backend needs the plugin {NCCL_PLUGIN_FILE}, not found at {}: build it on \
             a machine with the CUDA toolkit with scripts/build-nccl-plugin (it lands beside the \
             albef binary) or set {NCCL_PLUGIN_VAR} to its path; or use --dist-backend gloo, \
             which also moves CUDA tensors (through host memory)",
            path.display()
        );
    }
    Ok(path.to_string_lossy().into_owned())
}

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
