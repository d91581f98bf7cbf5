//! The optimizer inside the graph: `ai.adaptc::ClipGradNorm` and `ai.adaptc::AdamW`, which
//! the `append-adamw` pass writes after the backward so that a training step (forward,
//! backward, clip, update) is one run and parameters and moments can stay on the device
//! between steps (`Session::bind_state`).
//!
//! `ClipGradNorm(g₁, …, gₙ) → (norm, scale)`, attribute `max_norm` (absent: no clipping):
//! `norm = √Σ gᵢ²` accumulated in f64 and rounded to f32 once; `scale = max_norm / (norm +
//! 1e-6)` when that is finite and below 1, else 1 (a non-finite norm leaves the gradients
//! as they are, for the trainer to report). This is `torch.nn.utils.clip_grad_norm_`.
//!
//! `AdamW(p, g, m, v, scale, k) → (p′, m′, v′)` is one step of `torch.optim.AdamW` on `g ·
//! scale`, with the step's scalars given as `k = [decay, 1−β₁, β₂, 1−β₂, step_size, √bc₂,
//! ε]` (f32, computed on the host once per step from the learning rate and the step count):
//!
//! ```text
//! p ← p · decay;  m ← m + (1−β₁)(g − m);  v ← β₂v + (1−β₂)g²;  p ← p − step_size · m / (√v / √bc₂ + ε)
//! ```
//!
//! in that order and in f32. [`AdamWCoefficients::update`] is that formula, the only copy: the
//! trainer's host optimizer (gradient accumulation) calls it too, so both paths agree bit for
//! bit, and the CUDA kernel is checked against it.

use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

pub const OPS: &[(&str, KernelFn)] = &[("ClipGradNorm", clip_grad_norm), ("AdamW", adamw)];

/// The number of per-step scalars [`adamw`] reads from its last input.
pub const ADAMW_COEFFICIENTS: usize = 7;

/// The clip coefficient for a global norm: `max_norm / (norm + 1e-6)` when it is finite and
/// below 1, else 1.
pub fn clip_scale(norm: f32, max_norm: Option<f32>) -> f32 {
    match max_norm {
        Some(max) if norm.is_finite() => {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                coef
            } else {
                1.0
            }
        }
        _ => 1.0,
    }
}

fn clip_grad_norm(ctx: &OpCtx, inputs: &Inputs) -> KResult<Vec<Tensor>> {
    let max_norm = ctx.has("max_norm").then(|| ctx.float("max_norm", f32::INFINITY));
    if max_norm.is_some_and(|m| m.is_nan() || m <= 0.0) {
        kbail!("max_norm must be > 0, got {max_norm:?}");
    }
    let mut sum = 0f64;
    for (i, g) in inputs.present().into_iter().enumerate() {
        let g = f32s(g, &format!("gradient {i}"))?;
        sum += g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
    }
    let norm = sum.sqrt() as f32;
    Ok(vec![Tensor::scalar(norm), Tensor::scalar(clip_scale(norm, max_norm))])
}

fn adamw(_ctx: &OpCtx, inputs: &Inputs) -> KResult<Vec<Tensor>> {
    let (p, g, m, v) = (inputs.req(0)?, inputs.req(1)?, inputs.req(2)?, inputs.req(3)?);
    for (what, t) in [("gradient", g), ("first moment", m), ("second moment", v)] {
        if t.shape() != p.shape() {
            kbail!("the {what} has shape {:?}, the parameter {:?}", t.shape(), p.shape());
        }
    }
    let scale = f32s(inputs.req(4)?, "scale")?;
    let k = f32s(inputs.req(5)?, "coefficients")?;
    if scale.len() != 1 || k.len() != ADAMW_COEFFICIENTS {
        kbail!("expects one scale and {ADAMW_COEFFICIENTS} coefficients, got {} and {}", scale.len(), k.len());
    }
    let scale = scale[0];
    let k = AdamWCoefficients::from_array([k[0], k[1], k[2], k[3], k[4], k[5], k[6]]);
    let (mut p2, mut m2, mut v2) = (f32s(p, "parameter")?.to_vec(), f32s(m, "m")?.to_vec(), f32s(v, "v")?.to_vec());
    let g: Vec<f32> = f32s(g, "gradient")?.iter().map(|&g| g * scale).collect();
    k.update(&mut p2, &g, &mut m2, &mut v2);
    let shape = p.shape().to_vec();
    let wrap = |x: Vec<f32>| Tensor::from_parts(shape.clone(), Storage::F32(x));
    Ok(vec![wrap(p2), wrap(m2), wrap(v2)])
}

/// One AdamW step's scalars, as `f32` (PyTorch applies Python floats to `f32` tensors), in
/// the order of the op's `k` input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWCoefficients {
    /// `1 − lr·wd`.
    pub decay: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
}

impl AdamWCoefficients {
    pub fn from_array(k: [f32; ADAMW_COEFFICIENTS]) -> AdamWCoefficients {
        let [decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps] = k;
        AdamWCoefficients { decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps }
    }

    pub fn to_array(&self) -> [f32; ADAMW_COEFFICIENTS] {
        [self.decay, self.one_minus_b1, self.b2, self.one_minus_b2, self.step_size, self.bc2_sqrt, self.eps]
    }

    /// One step of every element of `p` with gradient `g` and moments `m`, `v` (same lengths).
    pub fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
            *p *= self.decay;
            *m += self.one_minus_b1 * (g - *m);
            *v = *v * self.b2 + self.one_minus_b2 * (g * g);
            let denom = v.sqrt() / self.bc2_sqrt + self.eps;
            *p += -self.step_size * (*m / denom);
        }
    }
}

fn f32s<'t>(t: &'t Tensor, what: &str) -> KResult<&'t [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Ok(s),
        None => kbail!("the {what} is {}; the optimizer works on float32", t.dtype()),
    }
}
