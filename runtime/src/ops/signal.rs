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

pub const OPS: &[(&str, KernelFn)] = &[("HannWindow", hann), ("HammingWindow", hamming), ("BlackmanWindow", blackman)];
