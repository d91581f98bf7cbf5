//! Softmax, LogSoftmax and Hardmax along an axis (opset < 13: over the flattened trailing
//! dims from `axis`, as those versions defined it).

use super::grad::real;
use super::num::Num;
use super::util::{axis, new_filled_chunks};
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

/// The attention hot path: softmax over contiguous f32 rows of `dim`, read once and written
/// once into uninitialised memory, rows grouped so each task has ~16K elements. Vectorisable
/// exp (within 2 ulp) and eight-way sums; rows of −∞ give NaN, as the reference definition does.
fn softmax_rows_f32(v: &[f32], dim: usize) -> Vec<f32> {
    softmax_rows_biased_f32(v, dim, |_| None)
}

/// [`softmax_rows_f32`] of `v + bias`, where `bias(row)` gives the row of the bias that row
/// `row` of `v` adds (`None`: nothing), so that the sum is never written out.
fn softmax_rows_biased_f32<'b>(v: &[f32], dim: usize, bias: impl Fn(usize) -> Option<&'b [f32]> + Sync) -> Vec<f32> {
    use std::mem::MaybeUninit;
    if dim == 0 {
        return Vec::new();
    }
    let one = |o: &mut [MaybeUninit<f32>], x: &[f32], b: Option<&[f32]>| {
        if let Some(b) = b {
            for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                o.write(x + b);
            }
        } else {
            for (o, &x) in o.iter_mut().zip(x) {
                o.write(x);
            }
        }
        // SAFETY: the loop above wrote every element of `o`.
        let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let m = real::max(o);
        if m == f32::NEG_INFINITY {
            o.fill(f32::NAN);
            return;
        }
        o.iter_mut().for_each(|x| *x = real::exp_f32(*x - m));
        let inv = 1.0 / real::sum(o);
        o.iter_mut().for_each(|x| *x *= inv);
    };
    let rows_per_task = (1 << 14) / dim + 1;
    // SAFETY: chunks hold whole rows (their length is a multiple of `dim`) and `one` writes
    // each row whole.
    unsafe {
        new_filled_chunks(v.len(), rows_per_task * dim, 0, |s, o| {
            for (r, (o, x)) in o.chunks_mut(dim).zip(v[s..].chunks(dim)).enumerate() {
                one(o, x, bias(s / dim + r));
            }
        })
    }
}

fn run(c: &OpCtx, i: &Inputs, kind: Kind) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (outer, dim, inner) = geometry(c, x)?;
    if let (Some(v), 1, Kind::Soft) = (x.as_slice::<f32>(), inner, kind) {
        return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(softmax_rows_f32(v, dim)))]);
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

/// `Softmax(Add(x, bias))` as one pass (plan fusion, `crate::fuse`): attention scores plus
/// their mask. The node carries the Softmax's attributes. f32 over the last axis with a bias
/// that broadcasts into `x` takes the fused path; anything else adds, then takes the softmax.
pub fn add_softmax(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, b) = (i.req(0)?, i.req(1)?);
    // Add commutes: the full-shaped operand is the one the rows run over.
    let (x, b) = if x.rank() < b.rank() || (x.rank() == b.rank() && x.numel() < b.numel()) { (b, x) } else { (x, b) };
    let (_, dim, inner) = geometry(c, x)?;
    let rank = x.rank();
    let fits = rank >= 1
        && b.rank() <= rank
        && b.shape().iter().rev().zip(x.shape().iter().rev()).all(|(&bd, &xd)| bd == xd || bd == 1)
        && (b.rank() == 0 || b.shape()[b.rank() - 1] == dim);
    if let (Some(v), Some(bv), 1, true) = (x.as_slice::<f32>(), b.as_slice::<f32>(), inner, fits) {
        // Element offset in `b` of row `r` of `x` (the rows are x's leading dims).
        let lead = &x.shape()[..rank - 1];
        let pad = rank - b.rank().max(1);
        let mut bstride = vec![0usize; lead.len()];
        let mut acc = if b.rank() == 0 { 0 } else { dim };
        for d in (0..lead.len()).rev() {
            if d >= pad && b.shape()[d - pad] != 1 {
                bstride[d] = acc;
            }
            if d >= pad {
                acc *= b.shape()[d - pad];
            }
        }
        let row_of = |mut r: usize| {
            let mut off = 0;
            for d in (0..lead.len()).rev() {
                off += (r % lead[d]) * bstride[d];
                r /= lead[d];
            }
            off
        };
        let out = if b.rank() == 0 {
            let full = vec![bv[0]; dim];
            softmax_rows_biased_f32(v, dim, |_| Some(&full[..]))
        } else {
            softmax_rows_biased_f32(v, dim, |r| {
                let at = row_of(r);
                Some(&bv[at..at + dim])
            })
        };
        return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(out))]);
    }
    let Some(sum) = super::binary::add(c, i)?.into_iter().next() else { kbail!("Add gave no output") };
    softmax(c, &Inputs(&[Some(&sum)]))
}

pub const OPS: &[(&str, KernelFn)] = &[("Softmax", softmax), ("LogSoftmax", log_softmax), ("Hardmax", hardmax)];
