//! Softmax, LogSoftmax and Hardmax along an axis (opset < 13: over the flattened trailing
//! dims from `axis`, as those versions defined it).

use rayon::prelude::*;

use super::grad::real;
use super::num::Num;
use super::util::axis;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Soft,
    LogSoft,
    Hard,
}

/// (outer, dim, inner) of the reduced axis for this node's opset.
fn geometry(c: &OpCtx, x: &Tensor) -> KResult<(usize, usize, usize)> {
    let default = if c.opset < 13 { 1 } else { -1 };
    if x.rank() == 0 {
        return Ok((1, 1, 1));
    }
    let ax = axis(c.int("axis", default), x.rank())?;
    let outer: usize = x.shape()[..ax].iter().product();
    if c.opset < 13 {
        let dim: usize = x.shape()[ax..].iter().product();
        return Ok((outer, dim, 1));
    }
    Ok((outer, x.shape()[ax], x.shape()[ax + 1..].iter().product()))
}

fn row(v: &mut [f64], kind: Kind) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match kind {
        Kind::Hard => {
            let best = v.iter().position(|&x| x == m).unwrap_or(0);
            v.iter_mut().enumerate().for_each(|(k, x)| *x = if k == best { 1.0 } else { 0.0 });
        }
        Kind::Soft | Kind::LogSoft => {
            let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
            if kind == Kind::Soft {
                v.iter_mut().for_each(|x| *x = (*x - m).exp() / s);
            } else {
                let ls = s.ln();
                v.iter_mut().for_each(|x| *x = *x - m - ls);
            }
        }
    }
}

fn run(c: &OpCtx, i: &Inputs, kind: Kind) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (outer, dim, inner) = geometry(c, x)?;
    if let (Some(v), 1, Kind::Soft) = (x.as_slice::<f32>(), inner, kind) {
        // The attention hot path: contiguous rows of f32.
        let mut out = v.to_vec();
        if dim > 0 {
            // Vectorisable exp (within 2 ulp) and eight-way sums; rows of -inf give NaN, as
            // the reference definition does.
            out.par_chunks_mut(dim).for_each(|r| {
                let m = real::max(r);
                r.iter_mut().for_each(|x| *x = if m == f32::NEG_INFINITY { f32::NAN } else { real::exp_f32(*x - m) });
                let inv = 1.0 / real::sum(r);
                r.iter_mut().for_each(|x| *x *= inv);
            });
        }
        return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(out))]);
    }
    fn go<T: Num>(v: &[T], outer: usize, dim: usize, inner: usize, kind: Kind) -> Storage {
        let mut out = vec![T::zero(); v.len()];
        let mut buf = vec![0f64; dim];
        for o in 0..outer {
            for r in 0..inner {
                for j in 0..dim {
                    buf[j] = v[(o * dim + j) * inner + r].to_f64();
                }
                row(&mut buf, kind);
                for j in 0..dim {
                    out[(o * dim + j) * inner + r] = T::from_f64(buf[j]);
                }
            }
        }
        T::wrap(out)
    }
    let data = crate::with_float!(x.data(), v => go(v, outer, dim, inner, kind), _ => kbail!("expects a float tensor, got {}", x.dtype()));
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), data)])
}

pub fn softmax(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    run(c, i, Kind::Soft)
}

pub fn log_softmax(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    run(c, i, Kind::LogSoft)
}

pub fn hardmax(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    run(c, i, Kind::Hard)
}

pub const OPS: &[(&str, KernelFn)] = &[("Softmax", softmax), ("LogSoftmax", log_softmax), ("Hardmax", hardmax)];
