//! The building blocks that the ViT and BERT modules share: linear layers, LayerNorm and
//! attention, with the initialisations of the official code (normal(0, 0.02) weights, zero
//! biases, unit LayerNorm) and the optional bf16 compute of the matmuls.
use tch::{nn, Kind, Tensor};

/// Standard deviation of the random initialisation (BERT's `initializer_range`, timm's
/// `trunc_normal_(std=.02)`).
pub const INIT_STD: f64 = 0.02;

/// The kind in which matmuls run: `None` keeps the parameters' kind (fp32); `Some(BFloat16)`
/// casts inputs and weights for the matmul and returns fp32, which is what autocast does.
/// Norms, softmaxes and the contrastive similarities always stay fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Precision(pub Option<Kind>);

impl Precision {
    /// bf16 matmuls when `amp` is asked for, fp32 otherwise.
    pub fn new(amp: bool) -> Self {
        Precision(amp.then_some(Kind::BFloat16))
    }

    /// Whether this CPU has bf16 dot-product instructions (`avx512_bf16` or `amx_bf16` in
    /// /proc/cpuinfo), with which bf16 matmuls beat fp32 ones.
    pub fn cpu_has_bf16() -> bool {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines().filter(|l| l.starts_with("flags")).any(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
        })
    }

    fn cast(self, t: &Tensor) -> Tensor {
        match self.0 {
            Some(kind) => t.to_kind(kind),
            None => t.shallow_clone(),
        }
    }

    fn uncast(self, t: Tensor) -> Tensor {
        match self.0 {
            Some(_) => t.to_kind(Kind::Float),
            None => t,
        }
    }
}

/// `nn.Linear`: `weight` [out, in] and an optional `bias` [out].
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    precision: Precision,
}

impl Linear {
    pub fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, precision: Precision) -> Self {
        let weight = p.var(
            "weight",
            &[out_dim, in_dim],
            nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        );
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.0)));
        Linear {
            weight,
            bias,
            precision,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        linear(x, &self.weight, self.bias.as_ref(), self.precision)
    }
}

/// `x @ weight.T + bias` in the given precision (fp32 result).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Tensor {
    let bias = bias.map(|b| precision.cast(b));
    precision.uncast(
        precision
            .cast(x)
            .linear(&precision.cast(weight), bias.as_ref()),
    )
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: &nn::Path, dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: p.var("bias", &[dim], nn::Init::Const(0.0)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x
            .size()
            .last()
            .expect("LayerNorm input has a last dimension");
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Scaled dot-product attention over heads: `q` [B, h, Lq, d], `k`/`v` [B, h, Lk, d], an
/// optional additive `mask` broadcastable to [B, h, Lq, Lk]. Returns [B, Lq, h*d].
/// One fused kernel (libtorch SDPA) instead of matmul + softmax + matmul.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    dropout: f64,
    precision: Precision,
) -> Tensor {
    let (b, h, lq, d) = q.size4().expect("attention query is [B, h, L, d]");
    let mask = mask.map(|m| precision.cast(m));
    let out = Tensor::scaled_dot_product_attention(
        &precision.cast(q),
        &precision.cast(k),
        &precision.cast(v),
        mask.as_ref(),
        dropout,
        false,
        None,
        false,
    );
    precision.uncast(out.transpose(1, 2).reshape([b, lq, h * d]))
}

/// Splits [B, L, n*h*d] into n tensors [B, h, L, d] (fused projections: QKV or KV).
pub fn split_heads(x: &Tensor, n: i64, heads: i64) -> Vec<Tensor> {
    let (b, l, width) = x.size3().expect("projection output is [B, L, W]");
    let d = width / (n * heads);
    x.view([b, l, n, heads, d])
        .permute([2, 0, 3, 1, 4])
        .unbind(0)
}

/// Exact (erf) GELU, as BERT's `gelu` and timm's `nn.GELU`.
pub fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}
