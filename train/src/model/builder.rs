//! The one place the model is built: on which device, in which matmul precision, from which
//! weights. The trainer, evaluation, the filter and the `albef model` commands all go through
//! [`build`]; they differ only in the precision rule, the seed and the weights they ask for.
use super::albef::Albef;
use super::layers::Precision;
use super::weights;
use crate::config::Config;
use anyhow::Result;
use std::path::Path;
use tch::{nn, Device};

/// How a caller picks the matmul precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionRule {
    /// `train.amp`: bf16 matmuls when the config asks for them, on any device (training,
    /// evaluation, the model commands).
    Config,
    /// bf16 matmuls on CUDA, fp32 on the CPU, whatever the config says (scoring).
    CudaOnly,
}

/// Builds the model on `device` in the precision `rule` picks: random initialisation (from
/// `seed` when given, else from libtorch's generator as it stands), then `weights` (an
/// official-layout safetensors state dict, every key required) when given.
pub fn build(
    config: &Config,
    device: Device,
    rule: PrecisionRule,
    seed: Option<i64>,
    weights: Option<&Path>,
) -> Result<(nn::VarStore, Albef)> {
    if let Some(seed) = seed {
        tch::manual_seed(seed);
    }
    let vs = nn::VarStore::new(device);
    let amp = match rule {
        PrecisionRule::Config => config.train.amp,
        PrecisionRule::CudaOnly => device.is_cuda(),
    };
    if amp && device == Device::Cpu && !Precision::cpu_has_bf16() {
        tracing::warn!(
            "train.amp asks for bf16 matmuls, but this CPU has no bf16 instructions \
             (avx512_bf16 or amx_bf16): they will be slower than fp32"
        );
    }
    let model = Albef::new(&vs, &config.model, Precision::new(amp))?;
    if let Some(path) = weights {
        let report = weights::load(&vs, path)?;
        report.ensure_complete()?;
        tracing::info!("{report}");
    }
    Ok((vs, model))
}
