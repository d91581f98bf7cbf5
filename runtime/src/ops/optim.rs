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
//! in that order and in f32, so the CPU kernels give the trainer's host optimizer's results
//! bit for bit.

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
    let (scale, k) = (scale[0], Coefficients::new(k));
    let (mut p2, mut m2, mut v2) = (f32s(p, "parameter")?.to_vec(), f32s(m, "m")?.to_vec(), f32s(v, "v")?.to_vec());
    for (((p, &g), m), v) in p2.iter_mut().zip(f32s(g, "gradient")?).zip(&mut m2).zip(&mut v2) {
        k.update(p, g * scale, m, v);
    }
    let shape = p.shape().to_vec();
    let wrap = |x: Vec<f32>| Tensor::from_parts(shape.clone(), Storage::F32(x));
    Ok(vec![wrap(p2), wrap(m2), wrap(v2)])
}

/// One step's scalars, in the order of the op's `k` input.
struct Coefficients {
    decay: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

impl Coefficients {
    fn new(k: &[f32]) -> Coefficients {
        Coefficients {
            decay: k[0],
            one_minus_b1: k[1],
            b2: k[2],
            one_minus_b2: k[3],
            step_size: k[4],
            bc2_sqrt: k[5],
            eps: k[6],
        }
    }

    fn update(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        *p *= self.decay;
        *m += self.one_minus_b1 * (g - *m);
        *v = *v * self.b2 + self.one_minus_b2 * (g * g);
        let denom = v.sqrt() / self.bc2_sqrt + self.eps;
        *p += -self.step_size * (*m / denom);
    }
}

fn f32s<'t>(t: &'t Tensor, what: &str) -> KResult<&'t [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Ok(s),
        None => kbail!("the {what} is {}; the optimizer works on float32", t.dtype()),
    }
}
