//! The image encoder: a ViT with pre-norm blocks in the timm/DeiT layout, so that parameter
//! paths are the official checkpoint keys under `visual_encoder.` (`blocks.0.attn.qkv.weight`,
//! `cls_token`, `pos_embed`, `patch_embed.proj.weight`, `norm.weight`).
//! Reference: salesforce/ALBEF models/vit.py (`VisionTransformer`, `Block`, `Attention`,
//! `interpolate_pos_embed`); no dropout and no drop-path, as in pretraining.
use super::layers::{attention, gelu, linear, split_heads, LayerNorm, Linear, Precision, INIT_STD};
use crate::config::{PosEmbedInit, VisionConfig};
use tch::{nn, Tensor};

/// `PatchEmbed`: a strided convolution from pixels to patch tokens.
#[derive(Debug)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: i64,
    precision: Precision,
}

impl PatchEmbed {
    fn new(p: &nn::Path, cfg: &VisionConfig, precision: Precision) -> Self {
        let p = p / "proj";
        let weight = p.var(
            "weight",
            &[cfg.width, 3, cfg.patch_size, cfg.patch_size],
            nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
        );
        let bias = p.var("bias", &[cfg.width], nn::Init::Const(0.0));
        PatchEmbed {
            weight,
            bias,
            patch: cfg.patch_size,
            precision,
        }
    }

    /// [B, 3, H, W] -> [B, (H/p)*(W/p), width]. The stride-p convolution is computed as one
    /// matmul over the patches (the same numbers; cheaper than conv2d's backward on CPU).
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("images are [B, 3, H, W]");
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let weight = self.weight.reshape([-1, c * p * p]);
        linear(&patches, &weight, Some(&self.bias), self.precision)
    }
}

/// Multi-head self-attention with a fused `qkv` projection (vit.py `Attention`).
#[derive(Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
    precision: Precision,
}

impl Attention {
    fn new(p: &nn::Path, cfg: &VisionConfig, precision: Precision) -> Self {
        Attention {
            qkv: Linear::new(&(p / "qkv"), cfg.width, 3 * cfg.width, true, precision),
            proj: Linear::new(&(p / "proj"), cfg.width, cfg.width, true, precision),
            heads: cfg.heads,
            precision,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let qkv = split_heads(&self.qkv.forward(x), 3, self.heads);
        let out = attention(&qkv[0], &qkv[1], &qkv[2], None, 0.0, self.precision);
        self.proj.forward(&out)
    }
}

/// `Mlp`: fc1 -> GELU -> fc2.
#[derive(Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(p: &nn::Path, cfg: &VisionConfig, precision: Precision) -> Self {
        let hidden = (cfg.width as f64 * cfg.mlp_ratio) as i64;
        Mlp {
            fc1: Linear::new(&(p / "fc1"), cfg.width, hidden, true, precision),
            fc2: Linear::new(&(p / "fc2"), hidden, cfg.width, true, precision),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&gelu(&self.fc1.forward(x)))
    }
}

/// A pre-norm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` (vit.py `Block`).
#[derive(Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: &nn::Path, cfg: &VisionConfig, precision: Precision) -> Self {
        Block {
            norm1: LayerNorm::new(&(p / "norm1"), cfg.width, cfg.layer_norm_eps),
            attn: Attention::new(&(p / "attn"), cfg, precision),
            norm2: LayerNorm::new(&(p / "norm2"), cfg.width, cfg.layer_norm_eps),
            mlp: Mlp::new(&(p / "mlp"), cfg, precision),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x));
        &x + self.mlp.forward(&self.norm2.forward(&x))
    }
}

/// The ViT: patch tokens + CLS, learned position embedding, blocks, final norm
/// (vit.py `VisionTransformer.forward`). Output [B, 1 + patches, width]; token 0 is CLS.
#[derive(Debug)]
pub struct VisionTransformer {
    patch_embed: PatchEmbed,
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl VisionTransformer {
    pub fn new(p: &nn::Path, cfg: &VisionConfig, precision: Precision) -> Self {
        let grid = cfg.image_res / cfg.patch_size;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        VisionTransformer {
            patch_embed: PatchEmbed::new(&(p / "patch_embed"), cfg, precision),
            cls_token: p.var("cls_token", &[1, 1, cfg.width], init),
            pos_embed: match cfg.pos_embed_init {
                PosEmbedInit::Normal => p.var("pos_embed", &[1, grid * grid + 1, cfg.width], init),
                PosEmbedInit::Sincos => p.var_copy("pos_embed", &sincos_pos_embed(grid, cfg.width)),
            },
            blocks: (0..cfg.depth)
                .map(|i| Block::new(&(p / "blocks" / i), cfg, precision))
                .collect(),
            norm: LayerNorm::new(&(p / "norm"), cfg.width, cfg.layer_norm_eps),
        }
    }

    /// `image` [B, 3, H, W], already normalised -> [B, 1 + patches, width].
    pub fn forward(&self, image: &Tensor) -> Tensor {
        let patches = self.patch_embed.forward(image);
        let b = patches.size()[0];
        let cls = self.cls_token.expand([b, -1, -1], false);
        let mut x = Tensor::cat(&[cls, patches], 1) + &self.pos_embed;
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.norm.forward(&x)
    }
}

/// The 2-D sine-cosine position embedding [1, 1 + grid*grid, width] (MAE's
/// `get_2d_sincos_pos_embed` with a zero CLS row): the first half of the channels encodes the
/// patch's column, the second half its row, each as `sin(pos * w_i)` then `cos(pos * w_i)` for
/// `w_i = 10000^(-i / (width / 4))`.
pub fn sincos_pos_embed(grid: i64, width: i64) -> Tensor {
    let quarter = (width / 4) as usize;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 10000f64.powf(-(i as f64) / quarter as f64))
        .collect();
    let mut out = vec![0f32; ((grid * grid + 1) * width) as usize];
    for row in 0..grid {
        for col in 0..grid {
            let token = (1 + row * grid + col) as usize * width as usize;
            for (half, pos) in [(0, col), (1, row)] {
                let base = token + half * 2 * quarter;
                for (i, w) in omega.iter().enumerate() {
                    out[base + i] = (pos as f64 * w).sin() as f32;
                    out[base + quarter + i] = (pos as f64 * w).cos() as f32;
                }
            }
        }
    }
    Tensor::from_slice(&out).view([1, grid * grid + 1, width])
}

/// Resizes a position embedding [1, 1 + g*g, C] to [1, 1 + n*n, C]: the CLS entry is kept,
/// the grid is resized bicubically (align_corners false), as `interpolate_pos_embed` does to
/// load DeiT's 14x14 grid into a 16x16 model.
pub fn interpolate_pos_embed(pos_embed: &Tensor, new_grid: i64) -> anyhow::Result<Tensor> {
    let (_, tokens, width) = pos_embed.size3().map_err(|_| {
        anyhow::anyhow!("pos_embed has shape {:?}, not [1, N, C]", pos_embed.size())
    })?;
    let old_grid = ((tokens - 1) as f64).sqrt().round() as i64;
    if old_grid * old_grid != tokens - 1 {
        anyhow::bail!("pos_embed has {} tokens: not 1 + a square grid", tokens);
    }
    if old_grid == new_grid {
        return Ok(pos_embed.shallow_clone());
    }
    let extra = pos_embed.narrow(1, 0, 1);
    let grid = pos_embed
        .narrow(1, 1, tokens - 1)
        .reshape([1, old_grid, old_grid, width])
        .permute([0, 3, 1, 2])
        .to_kind(tch::Kind::Float);
    let resized = grid
        .upsample_bicubic2d([new_grid, new_grid], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, new_grid * new_grid, width])
        .to_kind(pos_embed.kind());
    Ok(Tensor::cat(&[extra, resized], 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_pos_embed_encodes_column_and_row() {
        let (grid, width) = (3, 8);
        let pe = sincos_pos_embed(grid, width);
        assert_eq!(pe.size(), [1, 10, 8]);
        let row = |token: i64| -> Vec<f64> {
            (0..width)
                .map(|c| pe.double_value(&[0, token, c]))
                .collect()
        };
        // CLS: zeros. Patch (row 0, col 0): sin 0 = 0 and cos 0 = 1 in both halves.
        assert!(row(0).iter().all(|&v| v == 0.0));
        assert_eq!(row(1), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // Patch (row 2, col 1) = token 1 + 2 * 3 + 1: column 1 in the first half, row 2 in the
        // second, frequencies 1 and 1/100.
        let want = [
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
        ];
        for (got, want) in row(8).iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
