//! AdamW over the trainable variables of a `VarStore`, written out in tensor ops so that its
//! whole state (first and second moments and per-parameter step counts) can be saved in a
//! checkpoint and restored bit for bit; libtorch's optimiser behind `tch::nn::Optimizer` keeps
//! that state out of reach. The update is `torch.optim.AdamW` (amsgrad off, the single-tensor
//! path), with the official parameter groups: weight decay on group [`DECAY_GROUP`], none on
//! [`NO_DECAY_GROUP`] (biases and 1-D parameters, assigned by the model).
use crate::model::albef::{DECAY_GROUP, NO_DECAY_GROUP};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use tch::{nn, Kind, Tensor};

/// One trainable parameter and its moments.
struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied so far (torch keeps one count per parameter; a parameter without a
    /// gradient is skipped and its count does not advance).
    step: i64,
    /// This parameter's learning rate as a multiple of the scheduled one (torch: a parameter
    /// group of its own whose lr is scaled alike).
    lr_scale: f64,
}

/// One parameter's AdamW update (`torch.optim.AdamW`, single-tensor path):
/// `p *= decay; m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
/// p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)`.
#[derive(Clone, Copy)]
struct Update {
    decay: f64,
    beta1: f64,
    beta2: f64,
    step_size: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
}

/// Parameters with at least this many elements are updated by several threads on the CPU.
const PARALLEL_MIN: usize = 1 << 18;

impl Update {
    /// The update in libtorch ops (any device and kind): a dozen passes over the parameter.
    fn tensor_ops(self, p: &mut Param, grad: &Tensor) {
        if self.decay != 1.0 {
            let _ = p.tensor.g_mul_scalar_(self.decay);
        }
        let _ = p.exp_avg.lerp_(grad, 1.0 - self.beta1);
        let _ = p.exp_avg_sq.g_mul_scalar_(self.beta2);
        let _ = p.exp_avg_sq.g_add_(&((grad * (1.0 - self.beta2)) * grad));
        let denom = (p.exp_avg_sq.sqrt() / self.bias_correction2_sqrt) + self.eps;
        let _ = p.tensor.g_add_(&((&p.exp_avg / &denom) * -self.step_size));
    }

    /// The same update in one pass over contiguous f32 tensors on the CPU (what torch's
    /// `fused=True` does; several times faster than the tensor ops on the 30,522-row
    /// embedding). Returns false, touching nothing, for any other tensors.
    fn fused_cpu(self, p: &mut Param, grad: &Tensor) -> bool {
        let n = p.tensor.numel();
        let fits = |t: &Tensor| {
            t.device() == tch::Device::Cpu
                && t.kind() == Kind::Float
                && t.is_contiguous()
                && t.numel() == n
        };
        if ![&p.tensor, grad, &p.exp_avg, &p.exp_avg_sq]
            .into_iter()
            .all(fits)
        {
            return false;
        }
        // SAFETY: four distinct contiguous f32 CPU buffers of n elements each (the gradient,
        // the moments and the parameter never share storage), written by no one else during
        // the optimiser step.
        let (param, grad, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(p.tensor.data_ptr() as *mut f32, n),
                std::slice::from_raw_parts(grad.data_ptr() as *const f32, n),
                std::slice::from_raw_parts_mut(p.exp_avg.data_ptr() as *mut f32, n),
                std::slice::from_raw_parts_mut(p.exp_avg_sq.data_ptr() as *mut f32, n),
            )
        };
        let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(PARALLEL_MIN));
        if threads <= 1 {
            self.apply(param, grad, m, v);
            return true;
        }
        let chunk = n.div_ceil(threads);
        std::thread::scope(|scope| {
            let parts = param
                .chunks_mut(chunk)
                .zip(grad.chunks(chunk))
                .zip(m.chunks_mut(chunk))
                .zip(v.chunks_mut(chunk));
            for (((param, grad), m), v) in parts {
                scope.spawn(move || self.apply(param, grad, m, v));
            }
        });
        true
    }

    /// The element-wise update, in f32 as libtorch computes it for f32 tensors.
    fn apply(self, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = self.decay as f32;
        let w1 = (1.0 - self.beta1) as f32;
        let beta2 = self.beta2 as f32;
        let w2 = (1.0 - self.beta2) as f32;
        let bc2 = self.bias_correction2_sqrt as f32;
        let eps = self.eps as f32;
        let step = -self.step_size as f32;
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m).zip(v) {
            *p *= decay;
            *m += w1 * (g - *m);
            *v = *v * beta2 + g * w2 * g;
            *p += *m / (v.sqrt() / bc2 + eps) * step;
        }
    }
}

/// The optimiser's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWOptions {
    pub betas: [f64; 2],
    pub eps: f64,
    /// Weight decay of [`DECAY_GROUP`]; [`NO_DECAY_GROUP`] gets 0.
    pub weight_decay: f64,
}

/// AdamW with two parameter groups and a learning rate set before each step.
pub struct AdamW {
    params: Vec<Param>,
    options: AdamWOptions,
}

impl AdamW {
    /// Tracks every trainable variable of `vs` (sorted by name) with zero moments.
    pub fn new(vs: &nn::VarStore, options: AdamWOptions) -> Result<Self> {
        let vars = vs
            .variables_
            .lock()
            .map_err(|_| anyhow::anyhow!("var store lock poisoned"))?;
        let name_of: HashMap<usize, &String> = vars
            .named_variables
            .iter()
            .map(|(name, t)| (t.data_ptr() as usize, name))
            .collect();
        let mut params = Vec::with_capacity(vars.trainable_variables.len());
        for var in &vars.trainable_variables {
            let Some(name) = name_of.get(&(var.tensor.data_ptr() as usize)) else {
                bail!(
                    "a trainable variable of shape {:?} has no name",
                    var.tensor.size()
                );
            };
            if var.group != DECAY_GROUP && var.group != NO_DECAY_GROUP {
                bail!(
                    "{name} is in parameter group {}, expected 0 or 1",
                    var.group
                );
            }
            params.push(Param {
                name: (*name).clone(),
                tensor: var.tensor.shallow_clone(),
                group: var.group,
                exp_avg: var.tensor.zeros_like(),
                exp_avg_sq: var.tensor.zeros_like(),
                step: 0,
                lr_scale: 1.0,
            });
        }
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { params, options })
    }

    /// Names of the parameters in each group: (decayed, not decayed).
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let names = |g| {
            self.params
                .iter()
                .filter(|p| p.group == g)
                .map(|p| p.name.as_str())
                .collect()
        };
        (names(DECAY_GROUP), names(NO_DECAY_GROUP))
    }

    /// Runs parameter `name` at `scale` times the scheduled learning rate (0 freezes it).
    pub fn set_lr_scale(&mut self, name: &str, scale: f64) -> Result<()> {
        self.scale_where(name, |p| p == name, scale).map(|_| ())
    }

    /// Scales the learning rate of every trainable parameter whose name starts with `prefix`
    /// (a module, e.g. `visual_encoder.`); returns how many there are, and refuses a prefix
    /// that names none.
    pub fn set_lr_scale_prefix(&mut self, prefix: &str, scale: f64) -> Result<usize> {
        self.scale_where(&format!("{prefix}*"), |p| p.starts_with(prefix), scale)
    }

    fn scale_where(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        scale: f64,
    ) -> Result<usize> {
        if !(scale.is_finite() && scale >= 0.0) {
            bail!("the learning-rate scale of {what} must be finite and >= 0, got {scale}");
        }
        let mut n = 0;
        for p in self.params.iter_mut().filter(|p| matches(&p.name)) {
            p.lr_scale = scale;
            n += 1;
        }
        if n == 0 {
            bail!("no trainable parameter {what} to scale the learning rate of");
        }
        Ok(n)
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// The parameters, in the optimiser's order (the same on every rank of a data-parallel
    /// run); the tensors are the variables themselves.
    pub fn params(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect()
    }

    /// The gradients of the parameters that have one, in the optimiser's order (the same on
    /// every rank of a data-parallel run). They share storage with the parameters' gradients.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// `clip_grad_norm_`: the global L2 norm of all gradients, scaled down to `max_norm` when
    /// it is larger (`max_norm` None: measure only). Returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: Option<f64>) -> f64 {
        tch::no_grad(|| {
            let grads = self.grads();
            if grads.is_empty() {
                return 0.0;
            }
            let norms: Vec<Tensor> = grads
                .iter()
                .map(|g| g.norm().to_kind(Kind::Float))
                .collect();
            let total = Tensor::stack(&norms, 0).norm();
            let total_value = total.double_value(&[]);
            if let Some(max) = max_norm {
                // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to at most 1.
                let coef = ((total + 1e-6).reciprocal() * max).clamp_max(1.0);
                for mut g in grads {
                    let _ = g.g_mul_(&coef.to_kind(g.kind()));
                }
            }
            total_value
        })
    }

    /// One AdamW update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let [beta1, beta2] = self.options.betas;
        let eps = self.options.eps;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                p.step += 1;
                let lr = lr * p.lr_scale;
                let wd = if p.group == DECAY_GROUP {
                    self.options.weight_decay
                } else {
                    0.0
                };
                let bias_correction1 = 1.0 - beta1.powi(p.step as i32);
                let bias_correction2 = 1.0 - beta2.powi(p.step as i32);
                let update = Update {
                    decay: 1.0 - lr * wd,
                    beta1,
                    beta2,
                    step_size: lr / bias_correction1,
                    bias_correction2_sqrt: bias_correction2.sqrt(),
                    eps,
                };
                if !update.fused_cpu(p, &grad) {
                    update.tensor_ops(p, &grad);
                }
            }
        });
    }

    /// The state as named tensors: `NAME.exp_avg`, `NAME.exp_avg_sq`, `NAME.step` (i64, 0-d).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("{}.exp_avg_sq", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            out.push((format!("{}.step", p.name), Tensor::from(p.step)));
        }
        out
    }

    /// Restores a state written by [`AdamW::state`]; every parameter must be present with the
    /// right shape, and nothing else.
    pub fn load_state(&mut self, mut state: BTreeMap<String, Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (suffix, dst) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{}.{suffix}", p.name);
                    let src = state
                        .remove(&key)
                        .with_context(|| format!("optimizer state lacks {key}"))?;
                    if src.size() != dst.size() {
                        bail!(
                            "optimizer state {key} has shape {:?}, the model {:?}",
                            src.size(),
                            dst.size()
                        );
                    }
                    dst.copy_(&src);
                }
                let key = format!("{}.step", p.name);
                let step = state
                    .remove(&key)
                    .with_context(|| format!("optimizer state lacks {key}"))?;
                p.step = step.int64_value(&[]);
            }
            Ok(())
        })?;
        if let Some(extra) = state.keys().next() {
            bail!(
                "optimizer state has {} entries the model does not know, e.g. {extra}",
                state.len()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn store() -> (nn::VarStore, Tensor, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let w =
            (&root / "layer")
                .set_group(DECAY_GROUP)
                .var("weight", &[2, 2], nn::Init::Const(1.0));
        let b = (&root / "layer")
            .set_group(NO_DECAY_GROUP)
            .var("bias", &[2], nn::Init::Const(1.0));
        (vs, w, b)
    }

    fn options() -> AdamWOptions {
        AdamWOptions {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.5,
        }
    }

    fn backward(w: &Tensor, b: &Tensor, scale: f64) {
        // d/dw = scale * [[1, 2], [3, 4]], d/db = scale * [1, -1].
        let gw = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]) * scale;
        let gb = Tensor::from_slice(&[1.0f32, -1.0]) * scale;
        ((w * gw).sum(Kind::Float) + (b * gb).sum(Kind::Float)).backward();
    }

    #[test]
    fn the_fused_cpu_pass_matches_the_tensor_ops() {
        // Large enough for several threads; random moments as after some steps.
        tch::manual_seed(3);
        let n = 3 * PARALLEL_MIN as i64 + 17;
        let zeros = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let mut fused = Param {
            name: "p".into(),
            tensor: zeros.randn_like(),
            group: DECAY_GROUP,
            exp_avg: zeros.randn_like() * 0.1,
            exp_avg_sq: zeros.rand_like() * 0.01,
            step: 4,
            lr_scale: 1.0,
        };
        let copy = |p: &Param| Param {
            name: p.name.clone(),
            tensor: p.tensor.copy(),
            group: p.group,
            exp_avg: p.exp_avg.copy(),
            exp_avg_sq: p.exp_avg_sq.copy(),
            step: p.step,
            lr_scale: p.lr_scale,
        };
        let (mut ops, before) = (copy(&fused), copy(&fused));
        let grad = zeros.randn_like();
        let update = Update {
            decay: 1.0 - 1e-3 * 0.02,
            beta1: 0.9,
            beta2: 0.999,
            step_size: 1e-3 / (1.0 - 0.9f64.powi(5)),
            bias_correction2_sqrt: (1.0 - 0.999f64.powi(5)).sqrt(),
            eps: 1e-8,
        };
        tch::no_grad(|| {
            assert!(update.fused_cpu(&mut fused, &grad));
            update.tensor_ops(&mut ops, &grad);
            // A non-contiguous gradient is left to the tensor ops, and nothing is touched.
            let mut other = copy(&before);
            let strided = Tensor::zeros([2 * n], (Kind::Float, Device::Cpu)).slice(0, 0, 2 * n, 2);
            assert!(!update.fused_cpu(&mut other, &strided));
            assert!(other.tensor.equal(&before.tensor));
        });
        for (a, b) in [
            (&fused.tensor, &ops.tensor),
            (&fused.exp_avg, &ops.exp_avg),
            (&fused.exp_avg_sq, &ops.exp_avg_sq),
        ] {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "max difference {diff}");
        }
        // The update happened (a few elements may move by less than their f32 spacing).
        let moved = fused
            .tensor
            .ne_tensor(&before.tensor)
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert!(moved > n * 9 / 10, "{moved} of {n} elements moved");
    }

    #[test]
    fn groups_follow_the_var_store() {
        let (vs, _, _) = store();
        let opt = AdamW::new(&vs, options()).unwrap();
        assert_eq!(opt.groups(), (vec!["layer.weight"], vec!["layer.bias"]));
    }

    #[test]
    fn first_step_moves_by_lr_times_sign_and_decays_only_weights() {
        let (vs, w, b) = store();
        let mut opt = AdamW::new(&vs, options()).unwrap();
        backward(&w, &b, 1.0);
        let lr = 0.1;
        opt.step(lr);
        // Step 1: m_hat = g, v_hat = g^2, so the Adam part is lr * g / (|g| + eps).
        let decayed = 1.0 - lr * 0.5;
        for (i, g) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
            let want = decayed - lr * g / (g + 1e-8);
            let got = w.view([-1]).double_value(&[i as i64]);
            assert!((got - want).abs() < 1e-6, "w[{i}] = {got}, want {want}");
        }
        assert!((b.double_value(&[0]) - 0.9).abs() < 1e-6);
        assert!((b.double_value(&[1]) - 1.1).abs() < 1e-6);
    }

    #[test]
    fn a_scaled_parameter_moves_by_its_share_of_the_learning_rate() {
        let (vs, w, b) = store();
        let mut opt = AdamW::new(&vs, options()).unwrap();
        opt.set_lr_scale("layer.bias", 0.25).unwrap();
        opt.set_lr_scale("layer.weight", 0.0).unwrap();
        backward(&w, &b, 1.0);
        opt.step(0.1);
        // The bias moves by 0.25 * lr against its gradient's sign; the weight, frozen, neither
        // moves nor decays.
        assert!((b.double_value(&[0]) - 0.975).abs() < 1e-6);
        assert!((b.double_value(&[1]) - 1.025).abs() < 1e-6);
        assert!(w.eq(1.0).all().int64_value(&[]) == 1);
        let e = opt
            .set_lr_scale("layer.nothing", 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer.nothing"), "{e}");
        let e = opt
            .set_lr_scale("layer.bias", -1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains(">= 0"), "{e}");
    }

    #[test]
    fn a_module_prefix_scales_every_parameter_under_it() {
        let (vs, w, b) = store();
        let mut opt = AdamW::new(&vs, options()).unwrap();
        assert_eq!(opt.set_lr_scale_prefix("layer.", 0.0).unwrap(), 2);
        backward(&w, &b, 1.0);
        opt.step(0.1);
        assert!(w.eq(1.0).all().int64_value(&[]) == 1);
        assert!(b.eq(1.0).all().int64_value(&[]) == 1);
        let e = opt
            .set_lr_scale_prefix("visual_encoder.", 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("visual_encoder.*"), "{e}");
    }

    #[test]
    fn second_step_matches_the_closed_form() {
        let (vs, w, b) = store();
        let mut opt = AdamW::new(&vs, options()).unwrap();
        let lr = 0.01;
        backward(&w, &b, 1.0);
        opt.step(lr);
        opt.zero_grad();
        backward(&w, &b, 3.0);
        opt.step(lr);
        // Bias b[0]: g1 = 1, g2 = 3, no decay.
        let (g1, g2) = (1.0f64, 3.0f64);
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let m_hat = m / (1.0 - 0.9f64.powi(2));
        let v_hat = v / (1.0 - 0.999f64.powi(2));
        let want = 1.0 - lr * 1.0 - lr * m_hat / (v_hat.sqrt() + 1e-8);
        assert!(
            (b.double_value(&[0]) - want).abs() < 1e-6,
            "{} vs {want}",
            b.double_value(&[0])
        );
    }

    #[test]
    fn saved_state_resumes_bit_exactly() {
        let run = |split: Option<usize>| {
            let (vs, w, b) = store();
            let mut opt = AdamW::new(&vs, options()).unwrap();
            for i in 0..6 {
                if split == Some(i) {
                    let state: BTreeMap<String, Tensor> = opt
                        .state()
                        .into_iter()
                        .map(|(k, t)| (k, t.copy()))
                        .collect();
                    let params: Vec<Tensor> = vec![w.copy(), b.copy()];
                    let (vs2, w2, b2) = store();
                    tch::no_grad(|| {
                        w2.shallow_clone().copy_(&params[0]);
                        b2.shallow_clone().copy_(&params[1]);
                    });
                    let mut opt2 = AdamW::new(&vs2, options()).unwrap();
                    opt2.load_state(state).unwrap();
                    for j in i..6 {
                        opt2.zero_grad();
                        backward(&w2, &b2, 1.0 + j as f64);
                        opt2.step(0.01);
                    }
                    return (w2, b2);
                }
                opt.zero_grad();
                backward(&w, &b, 1.0 + i as f64);
                opt.step(0.01);
            }
            (w, b)
        };
        let (w_full, b_full) = run(None);
        let (w_resumed, b_resumed) = run(Some(3));
        assert!(w_full.equal(&w_resumed));
        assert!(b_full.equal(&b_resumed));
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let (vs, w, b) = store();
        let opt = AdamW::new(&vs, options()).unwrap();
        backward(&w, &b, 1.0);
        // sqrt(1 + 4 + 9 + 16 + 1 + 1) = sqrt(32)
        let norm = opt.clip_grad_norm(Some(1.0));
        assert!((norm - 32f64.sqrt()).abs() < 1e-5);
        let after = opt.clip_grad_norm(None);
        assert!((after - 1.0).abs() < 1e-5, "norm after clipping {after}");
    }

    #[test]
    fn load_state_rejects_a_foreign_state() {
        let (vs, _, _) = store();
        let mut opt = AdamW::new(&vs, options()).unwrap();
        let mut state: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
        state.insert(
            "other.weight.exp_avg".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        );
        let err = opt.load_state(state).unwrap_err().to_string();
        assert!(err.contains("other.weight.exp_avg"), "{err}");
        let err = opt.load_state(BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("lacks"), "{err}");
    }
}
