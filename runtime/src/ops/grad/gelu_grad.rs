//! `GeluGrad(dy, x)` (attribute `approximate` = `"none"` | `"tanh"`): `dy` times the derivative
//! of ONNX Gelu at `x` — exact: `½(1 + erf(x/√2)) + x·φ(x)`; tanh form differentiated exactly.
//! f64 uses the forward Gelu's erf, so finite differences of Gelu agree to rounding.

use rayon::prelude::*;

use super::real::{self, with_real, Real};
use crate::error::{kbail, unsupported, KResult};
use crate::ops::util::{new_filled_chunks, PAR_THRESHOLD};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Storage, Tensor};

#[derive(Clone, Copy)]
enum Form {
    Exact,
    Tanh,
}

#[inline(always)]
fn derivative<T: Real>(x: T, form: Form) -> T {
    let half = T::c(0.5);
    match form {
        Form::Exact => {
            let cdf = half * (T::one() + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
            // φ(x) = e^{−x²/2} / √(2π)
            let pdf = (-(half * x * x)).exp() * T::c(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        Form::Tanh => {
            let k = T::c((2.0 / std::f64::consts::PI).sqrt());
            let a = T::c(0.044_715);
            let x2 = x * x;
            let u = k * (x + a * x2 * x);
            // 1 ± tanh(u) from z = e^{−2|u|} ∈ (0, 1], without the cancellation of 1 + tanh(u)
            // near −1 (which x·(1 − tanh²) would amplify) and without overflow.
            let z = (T::c(-2.0) * if u < T::zero() { -u } else { u }).exp();
            let (near, far) = (T::c(2.0) / (T::one() + z), T::c(2.0) * z / (T::one() + z));
            let (plus, minus) = if u < T::zero() { (far, near) } else { (near, far) };
            half * plus + half * x * plus * minus * k * (T::one() + T::c(3.0) * a * x2)
        }
    }
}

/// The exact form in f32 through the vectorisable Φ and exp (the training path): written once
/// into uninitialised memory, in parallel chunks.
fn exact_f32(dy: &[f32], x: &[f32]) -> Vec<f32> {
    // SAFETY: `dy` and `x` have the output's length (checked by the caller), so the zip below
    // writes every element of each chunk.
    unsafe {
        new_filled_chunks(x.len(), 1 << 14, PAR_THRESHOLD, |s, o| {
            for ((o, &g), &x) in o.iter_mut().zip(&dy[s..]).zip(&x[s..]) {
                // Φ(x) + x·φ(x), φ(x) = e^{−x²/2}/√(2π)
                let (cdf, gauss) = real::normal_cdf_gauss_f32(x);
                o.write(g * (x * gauss).mul_add(0.398_942_3, cdf));
            }
        })
    }
}

fn apply<T: Real>(dy: &[T], x: &[T], dx: &mut [T], form: Form) {
    // One loop per form, so that the form is not tested per element.
    fn each<T: Real>(dy: &[T], x: &[T], dx: &mut [T], f: impl Fn(T) -> T) {
        for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
            *o = g * f(v);
        }
    }
    match form {
        Form::Exact => each(dy, x, dx, |v| derivative(v, Form::Exact)),
        Form::Tanh => each(dy, x, dx, |v| derivative(v, Form::Tanh)),
    }
}

pub fn gelu_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (dy, x) = (i.req(0)?, i.req(1)?);
    if dy.shape() != x.shape() || dy.dtype() != x.dtype() {
        kbail!("dy {:?} {} and x {:?} {} must have one shape and type", dy.shape(), dy.dtype(), x.shape(), x.dtype());
    }
    let form = match c.string("approximate").as_deref().unwrap_or("none") {
        "none" => Form::Exact,
        "tanh" => Form::Tanh,
        other => unsupported!("approximate=\"{other}\""),
    };
    if let (Form::Exact, Some(g), Some(v)) = (form, dy.as_slice::<f32>(), x.as_slice::<f32>()) {
        return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(exact_f32(g, v)))]);
    }
    fn go<T: Real>(dy: &[T], x: &[T], form: Form) -> Vec<T> {
        let mut dx = vec![T::zero(); x.len()];
        if x.len() >= PAR_THRESHOLD {
            const CHUNK: usize = 1 << 12;
            dx.par_chunks_mut(CHUNK)
                .zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
                .for_each(|(o, (g, v))| apply(g, v, o, form));
        } else {
            apply(dy, x, &mut dx, form);
        }
        dx
    }
    let data = with_real!(x.data(), v => {
        Elem::wrap(go(Elem::slice(dy.data()).unwrap_or(&[]), v, form))
    }, _ => kbail!("GeluGrad takes f32 or f64, got {}", x.dtype()));
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), data)])
}
