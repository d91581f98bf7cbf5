//! Window functions (HannWindow, HammingWindow, BlackmanWindow, opset 17).

use super::util::ints;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

fn window(c: &OpCtx, i: &Inputs, f: fn(f64, f64) -> f64) -> KResult<Vec<Tensor>> {
    let Some(&n) = ints(i.req(0)?)?.first() else { kbail!("size must be a scalar") };
    if !(0..=1 << 30).contains(&n) {
        kbail!("size {n} is out of range");
    }
    let periodic = c.int("periodic", 1) != 0;
    let denom = if periodic { n as f64 } else { (n - 1).max(1) as f64 };
    let v: Vec<f64> = (0..n).map(|k| f(k as f64, denom)).collect();
    let dtype = match i32::try_from(c.int("output_datatype", 1)).ok().and_then(adaptc_ir::DataType::from_code) {
        Some(d) => d,
        None => kbail!("output_datatype is unknown"),
    };
    let t = Tensor::from_parts(vec![n as usize], Storage::F64(v));
    Ok(vec![super::cast::cast_to(&t, dtype)?])
}

use std::f64::consts::TAU;

pub fn hann(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    window(c, i, |k, n| 0.5 - 0.5 * (TAU * k / n).cos())
}

pub fn hamming(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    window(c, i, |k, n| 25.0 / 46.0 - (1.0 - 25.0 / 46.0) * (TAU * k / n).cos())
}

pub fn blackman(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    window(c, i, |k, n| 0.42 - 0.5 * (TAU * k / n).cos() + 0.08 * (2.0 * TAU * k / n).cos())
}

/// `DFT` (opsets 17 and 20): a plain O(n²) discrete Fourier transform along one axis of a
/// real (`[…, 1]`) or complex (`[…, 2]`) signal, forward or inverse, full or one-sided.
pub fn dft(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let r = x.rank();
    let comps = x.shape().last().copied().unwrap_or(0);
    if r < 2 || !(comps == 1 || comps == 2) {
        kbail!("input must end in a dimension of 1 (real) or 2 (complex), got {:?}", x.shape());
    }
    let axis = if c.opset >= 20 {
        match i.opt(2) {
            Some(t) => ints(t)?.first().copied().unwrap_or(-2),
            None => -2,
        }
    } else {
        c.int("axis", 1)
    };
    let ax = super::util::axis(axis, r)?;
    if ax == r - 1 {
        kbail!("axis {axis} is the complex-component axis");
    }
    let (inverse, onesided) = (c.int("inverse", 0) != 0, c.int("onesided", 0) != 0);
    let len = x.shape()[ax];
    let n = match i.opt(1).map(ints).transpose()?.and_then(|v| v.first().copied()) {
        Some(v) if v > 0 && v <= 1 << 24 => v as usize,
        Some(v) => kbail!("dft_length {v} is invalid"),
        None if inverse && onesided => 2 * len.saturating_sub(1),
        None => len,
    };
    let v = super::util::floats(x)?;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..r - 1].iter().product();
    let at = |o: usize, j: usize, q: usize| -> (f64, f64) {
        if j >= len {
            return (0.0, 0.0);
        }
        let base = ((o * len + j) * inner + q) * comps;
        (v[base], if comps == 2 { v[base + 1] } else { 0.0 })
    };
    let (out_len, out_comps) = match (inverse, onesided) {
        (false, true) => (n / 2 + 1, 2),
        (true, true) => (n, 1),
        _ => (n, 2),
    };
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut out = vec![0f64; outer * out_len * inner * out_comps];
    for o in 0..outer {
        for q in 0..inner {
            for k in 0..out_len {
                let (mut re, mut im) = (0.0, 0.0);
                for j in 0..n {
                    // The one-sided inverse rebuilds the Hermitian spectrum from its first half.
                    let (zr, zi) = if inverse && onesided {
                        if j <= n / 2 {
                            at(o, j, q)
                        } else {
                            let (a, b) = at(o, n - j, q);
                            (a, -b)
                        }
                    } else {
                        at(o, j, q)
                    };
                    let ang = sign * std::f64::consts::TAU * (j * k % n.max(1)) as f64 / n as f64;
                    let (c, s) = (ang.cos(), ang.sin());
                    re += zr * c - zi * s;
                    im += zr * s + zi * c;
                }
                if inverse {
                    re /= n as f64;
                    im /= n as f64;
                }
                let base = ((o * out_len + k) * inner + q) * out_comps;
                out[base] = re;
                if out_comps == 2 {
                    out[base + 1] = im;
                }
            }
        }
    }
    let mut shape = x.shape().to_vec();
    shape[ax] = out_len;
    shape[r - 1] = out_comps;
    let t = Tensor::from_parts(shape, Storage::F64(out));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] =
    &[("DFT", dft), ("HannWindow", hann), ("HammingWindow", hamming), ("BlackmanWindow", blackman)];
