//! Weights in and out: safetensors state dicts in the official ALBEF layout (tied and
//! duplicated tensors and the `position_ids` buffers included), with a clear report of
//! missing and unexpected keys and shape mismatches; and pretrained initialisation from a
//! Hugging Face BERT (`text_encoder.bert`) and a timm/DeiT ViT (`visual_encoder`, with the
//! position embedding interpolated), as model_pretrain.py L38-51 does.
#[cfg(doc)]
use super::albef::Albef;
use super::albef::IDX_QUEUE;
use super::vit::interpolate_pos_embed;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use tch::{nn, Tensor};

/// Keys that the official state dict holds twice because PyTorch ties them: the MLM decoder is
/// the word embedding matrix, and the decoder bias is `cls.predictions.bias`.
fn aliases() -> Vec<(String, String)> {
    ["text_encoder", "text_encoder_m"]
        .iter()
        .flat_map(|t| {
            [
                (
                    format!("{t}.cls.predictions.decoder.weight"),
                    format!("{t}.bert.embeddings.word_embeddings.weight"),
                ),
                (
                    format!("{t}.cls.predictions.decoder.bias"),
                    format!("{t}.cls.predictions.bias"),
                ),
            ]
        })
        .collect()
}

/// What a load did: keys the model has but the file lacks, keys the file has that the model
/// does not use, and shape mismatches (left unloaded).
#[derive(Debug, Default)]
pub struct LoadReport {
    pub source: String,
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    pub interpolated: Vec<String>,
}

impl LoadReport {
    /// Fails, listing the problems, unless every model key was loaded with the right shape.
    pub fn ensure_complete(&self) -> Result<()> {
        if self.missing.is_empty() && self.mismatched.is_empty() {
            Ok(())
        } else {
            bail!("{self}")
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: loaded {} tensors", self.source, self.loaded)?;
        let list = |keys: &[String]| {
            let shown: Vec<&str> = keys.iter().take(12).map(String::as_str).collect();
            let more = keys.len().saturating_sub(shown.len());
            format!(
                "{}{}",
                shown.join(", "),
                if more > 0 {
                    format!(", ... ({more} more)")
                } else {
                    String::new()
                }
            )
        };
        if !self.missing.is_empty() {
            write!(
                f,
                "; {} missing: {}",
                self.missing.len(),
                list(&self.missing)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "; {} unexpected: {}",
                self.unexpected.len(),
                list(&self.unexpected)
            )?;
        }
        for (name, want, got) in &self.mismatched {
            write!(f, "; shape mismatch {name}: model {want:?}, file {got:?}")?;
        }
        if !self.interpolated.is_empty() {
            write!(f, "; interpolated {}", self.interpolated.join(", "))?;
        }
        Ok(())
    }
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read safetensors {}", path.display()))?
        .into_iter()
        .collect())
}

/// The state dict in the official layout: every variable plus the tied aliases.
pub fn state_dict(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    let mut out: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (alias, target) in aliases() {
        if let Some(t) = out.get(&target) {
            let t = t.shallow_clone();
            out.insert(alias, t);
        }
    }
    out
}

/// Saves the state dict (official layout) as safetensors.
pub fn save(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = state_dict(vs)
        .into_iter()
        .map(|(k, t)| (k, t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&tensors, path)
        .with_context(|| format!("cannot write safetensors {}", path.display()))
}

/// Loads an official-layout state dict into the whole model. Tied aliases are accepted (and
/// fill their target when the target is absent); a `pos_embed` of another grid is resized.
pub fn load(vs: &nn::VarStore, path: &Path) -> Result<LoadReport> {
    let file = read(path)?;
    let mut report = copy_into(vs, file, |k| Some(k.to_string()), "");
    report.source = path.display().to_string();
    Ok(report)
}

/// Initialises `text_encoder.bert` (and the MLM head, when the file has one) from a Hugging
/// Face BERT checkpoint: keys with or without the `bert.` prefix, old `gamma`/`beta` names
/// accepted. Cross-attention weights are new, so they are reported missing; the pooler and NSP
/// head are reported unexpected. Call [`Albef::copy_params`] afterwards, as the official code
/// loads the same weights into the momentum copy.
pub fn init_text_from_hf_bert(vs: &nn::VarStore, path: &Path) -> Result<LoadReport> {
    let file = read(path)?;
    let rename = |k: &str| {
        let k = k
            .replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias");
        let rest = k.strip_prefix("bert.").unwrap_or(&k);
        if rest.starts_with("cls.predictions.") {
            Some(format!("text_encoder.{rest}"))
        } else if rest.starts_with("embeddings.") || rest.starts_with("encoder.") {
            Some(format!("text_encoder.bert.{rest}"))
        } else {
            None
        }
    };
    let mut report = copy_into(vs, file, rename, "text_encoder.");
    report.source = path.display().to_string();
    Ok(report)
}

/// Initialises `visual_encoder` from a timm/DeiT ViT checkpoint (`cls_token`, `pos_embed`,
/// `patch_embed.*`, `blocks.*`, `norm.*`; the classifier head and DeiT's distillation token
/// are reported unexpected), resizing the position embedding to the configured grid. Call
/// [`Albef::copy_params`] afterwards.
pub fn init_vision_from_timm(vs: &nn::VarStore, path: &Path) -> Result<LoadReport> {
    let file = read(path)?;
    let rename = |k: &str| {
        let known = ["cls_token", "pos_embed", "patch_embed.", "blocks.", "norm."];
        known
            .iter()
            .any(|p| k.starts_with(p))
            .then(|| format!("visual_encoder.{k}"))
    };
    let mut report = copy_into(vs, file, rename, "visual_encoder.");
    report.source = path.display().to_string();
    Ok(report)
}

/// Copies file tensors into the variables named by `rename` (None: unexpected). Only model
/// keys starting with `scope` can be missing; the picture queue, which official pretraining
/// checkpoints lack, keeps its initial value (every picture unknown) when the file lacks it.
fn copy_into(
    vs: &nn::VarStore,
    file: BTreeMap<String, Tensor>,
    rename: impl Fn(&str) -> Option<String>,
    scope: &str,
) -> LoadReport {
    let vars = vs.variables();
    let alias_of: HashMap<String, String> = aliases().into_iter().collect();
    let mut report = LoadReport::default();
    let mut renamed: BTreeMap<String, Tensor> = BTreeMap::new();
    for (key, tensor) in file {
        match rename(&key) {
            Some(name) if vars.contains_key(&name) => {
                renamed.insert(name, tensor);
            }
            Some(name) if alias_of.contains_key(&name) => {
                let target = alias_of[&name].clone();
                renamed.entry(target).or_insert(tensor);
            }
            _ => report.unexpected.push(key),
        }
    }
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(scope)).collect();
    names.sort();
    tch::no_grad(|| {
        for name in names {
            let mut var = vars[name].shallow_clone();
            let Some(src) = renamed.get(name) else {
                if name != IDX_QUEUE {
                    report.missing.push(name.clone());
                }
                continue;
            };
            let mut src = src.shallow_clone();
            if src.size() != var.size() && name.ends_with("pos_embed") && src.dim() == 3 {
                let grid = ((var.size()[1] - 1) as f64).sqrt().round() as i64;
                if let Ok(resized) = interpolate_pos_embed(&src, grid) {
                    report.interpolated.push(format!(
                        "{name} {:?} -> {:?}",
                        src.size(),
                        resized.size()
                    ));
                    src = resized;
                }
            }
            if src.size() != var.size() {
                report
                    .mismatched
                    .push((name.clone(), var.size(), src.size()));
                continue;
            }
            var.copy_(&src.to_device(var.device()));
            report.loaded += 1;
        }
    });
    report
}
