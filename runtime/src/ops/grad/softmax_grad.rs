//! `SoftmaxGrad(dy, y)` (attribute `axis`, default −1): the gradient of `y = Softmax(x)`,
//! `dx = y · (dy − Σ_axis dy·y)`, computed from the forward output so `x` need not be kept.

use rayon::prelude::*;

use super::real::{dot, with_real, Real};
use crate::error::{kbail, KResult};
use crate::ops::util::{axis, PAR_THRESHOLD};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Tensor};

/// One `[dim, inner]` block: the axis is the middle dim.
fn block<T: Real>(dy: &[T], y: &[T], dx: &mut [T], dim: usize, inner: usize) {
    if inner == 1 {
        let s = dot(dy, y);
        for ((o, &g), &p) in dx.iter_mut().zip(dy).zip(y) {
            *o = p * (g - s);
        }
        return;
    }
    let mut s = vec![T::zero(); inner];
    for j in 0..dim {
        let (g, p) = (&dy[j * inner..(j + 1) * inner], &y[j * inner..(j + 1) * inner]);
        s.iter_mut().zip(g.iter().zip(p)).for_each(|(s, (&g, &p))| *s += g * p);
    }
    for j in 0..dim {
        let r = j * inner..(j + 1) * inner;
        let (g, p) = (&dy[r.clone()], &y[r.clone()]);
        for (((o, &g), &p), &s) in dx[r].iter_mut().zip(g).zip(p).zip(&s) {
            *o = p * (g - s);
        }
    }
}

pub fn softmax_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (dy, y) = (i.req(0)?, i.req(1)?);
    if dy.shape() != y.shape() || dy.dtype() != y.dtype() {
        kbail!("dy {:?} {} and y {:?} {} must have one shape and type", dy.shape(), dy.dtype(), y.shape(), y.dtype());
    }
    let (dim, inner) = if dy.rank() == 0 {
        (1, 1)
    } else {
        let ax = axis(c.int("axis", -1), dy.rank())?;
        (dy.shape()[ax], dy.shape()[ax + 1..].iter().product())
    };
    fn go<T: Real>(dy: &[T], y: &[T], dim: usize, inner: usize) -> Vec<T> {
        let mut dx = vec![T::zero(); dy.len()];
        let bl = dim * inner;
        if bl == 0 {
            return dx;
        }
        if dy.len() >= PAR_THRESHOLD {
            // Tasks of several blocks (~16K elements): attention rows are only 128 long.
            let task = bl * ((1 << 14) / bl + 1);
            dx.par_chunks_mut(task).zip(dy.par_chunks(task).zip(y.par_chunks(task))).for_each(|(o, (g, p))| {
                for ((o, g), p) in o.chunks_mut(bl).zip(g.chunks(bl)).zip(p.chunks(bl)) {
                    block(g, p, o, dim, inner);
                }
            });
        } else {
            for ((o, g), p) in dx.chunks_mut(bl).zip(dy.chunks(bl)).zip(y.chunks(bl)) {
                block(g, p, o, dim, inner);
            }
        }
        dx
    }
    let data = with_real!(dy.data(), g => {
        Elem::wrap(go(g, Elem::slice(y.data()).unwrap_or(&[]), dim, inner))
    }, _ => kbail!("SoftmaxGrad takes f32 or f64, got {}", dy.dtype()));
    Ok(vec![Tensor::from_parts(dy.shape().to_vec(), data)])
}
