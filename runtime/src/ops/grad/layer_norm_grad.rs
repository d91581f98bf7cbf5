//! `LayerNormalizationGrad(dy, x, scale)` (attributes `axis` = −1, `epsilon` = 1e-5) →
//! `(dx, dscale, dbias)`: the gradient of ONNX LayerNormalization over dims `[axis, rank)`.
//! Mean and inverse std are recomputed from `x` (cheaper to keep than the forward's stash).
//!
//! With `x̂ = (x − mean)·invstd` and `g = dy·scale`:
//! `dx = invstd·(g − mean(g) − x̂·mean(g·x̂))`, `dscale = Σ_rows dy·x̂`, `dbias = Σ_rows dy`,
//! the last two summed down to `scale`'s shape when it broadcasts to the normalised shape.

use rayon::prelude::*;

use super::common::{broadcast_to, plan, row_chunks, sum_to};
use super::real::{sum, with_real, Real};
use crate::error::{kbail, KResult};
use crate::ops::util::{axis, broadcast_shapes};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Tensor};

/// One row: writes `dx` and adds into the `ds`/`db` partial sums. Reductions keep eight
/// independent accumulators so that the f32 loops vectorise.
fn row<T: Real>(dy: &[T], x: &[T], scale: &[T], eps: T, dx: &mut [T], ds: &mut [T], db: &mut [T]) {
    let n = x.len();
    let (dy, scale) = (&dy[..n], &scale[..n]);
    let inv_n = T::one() / T::count(n);
    let mean = sum(x) * inv_n;
    let mut acc = [T::zero(); 8];
    let xc = x.chunks_exact(8);
    let mut var = xc.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum::<T>();
    for c in xc {
        for k in 0..8 {
            acc[k] += (c[k] - mean) * (c[k] - mean);
        }
    }
    var = (var + acc.iter().copied().sum::<T>()) * inv_n;
    let is = T::one() / (var + eps).sqrt();
    // Σg and Σg·x̂ in one pass.
    let (mut sg, mut sgx) = ([T::zero(); 8], [T::zero(); 8]);
    let full = n / 8 * 8;
    for ((g, v), s) in dy[..full].chunks_exact(8).zip(x[..full].chunks_exact(8)).zip(scale[..full].chunks_exact(8)) {
        for k in 0..8 {
            let g = g[k] * s[k];
            sg[k] += g;
            sgx[k] += g * ((v[k] - mean) * is);
        }
    }
    for j in full..n {
        let g = dy[j] * scale[j];
        sg[0] += g;
        sgx[0] += g * ((x[j] - mean) * is);
    }
    let mg = sg.iter().copied().sum::<T>() * inv_n;
    let mgx = sgx.iter().copied().sum::<T>() * inv_n;
    let (dx, ds, db) = (&mut dx[..n], &mut ds[..n], &mut db[..n]);
    for j in 0..n {
        let xh = (x[j] - mean) * is;
        let g = dy[j] * scale[j];
        dx[j] = is * (g - mg - xh * mgx);
        ds[j] += dy[j] * xh;
        db[j] += dy[j];
    }
}

struct Grads<T> {
    dx: Vec<T>,
    ds: Vec<T>,
    db: Vec<T>,
}

fn go<T: Real>(dy: &[T], x: &[T], scale: &[T], eps: T, inner: usize) -> Grads<T> {
    let mut dx = vec![T::zero(); x.len()];
    if inner == 0 || x.is_empty() {
        return Grads { dx, ds: vec![T::zero(); inner], db: vec![T::zero(); inner] };
    }
    let rows = x.len() / inner;
    let (per, _) = row_chunks(rows, inner);
    let chunk = per * inner;
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(chunk)
        .zip(dy.par_chunks(chunk).zip(x.par_chunks(chunk)))
        .map(|(dxc, (dyc, xc))| {
            let (mut ds, mut db) = (vec![T::zero(); inner], vec![T::zero(); inner]);
            for ((o, g), v) in dxc.chunks_exact_mut(inner).zip(dyc.chunks_exact(inner)).zip(xc.chunks_exact(inner)) {
                row(g, v, scale, eps, o, &mut ds, &mut db);
            }
            (ds, db)
        })
        .collect();
    let mut it = partials.into_iter();
    let (mut ds, mut db) = it.next().unwrap_or_else(|| (vec![T::zero(); inner], vec![T::zero(); inner]));
    for (pds, pdb) in it {
        ds.iter_mut().zip(&pds).for_each(|(a, &b)| *a += b);
        db.iter_mut().zip(&pdb).for_each(|(a, &b)| *a += b);
    }
    Grads { dx, ds, db }
}

pub fn layer_norm_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (dy, x, scale) = (i.req(0)?, i.req(1)?, i.req(2)?);
    if dy.shape() != x.shape() || dy.dtype() != x.dtype() || scale.dtype() != x.dtype() {
        kbail!(
            "dy {:?} {} and x {:?} {} must have one shape and type, and scale ({}) their type",
            dy.shape(),
            dy.dtype(),
            x.shape(),
            x.dtype(),
            scale.dtype()
        );
    }
    let ax = axis(c.int("axis", -1), x.rank())?;
    let eps = f64::from(c.float("epsilon", 1e-5));
    let norm_shape = &x.shape()[ax..];
    let inner: usize = norm_shape.iter().product();
    if broadcast_shapes(&[scale.shape(), norm_shape]).ok().as_deref() != Some(norm_shape) {
        kbail!("scale shape {:?} does not broadcast to the normalised shape {norm_shape:?}", scale.shape());
    }
    // Dims of the normalised shape, kept where `scale` has them (scale right-aligned).
    let off = norm_shape.len() - scale.rank();
    let kept: Vec<bool> = (0..norm_shape.len()).map(|d| d >= off && scale.shape()[d - off] != 1).collect();
    let sdims = plan(norm_shape, &kept);
    let same = scale.shape() == norm_shape;
    let (dx, ds, db) = with_real!(x.data(), xv => {
        let s = Elem::slice(scale.data()).unwrap_or(&[]);
        let full;
        let s = if same { s } else { full = broadcast_to(s, &sdims, inner); &full[..] };
        let g = go(Elem::slice(dy.data()).unwrap_or(&[]), xv, s, Real::c(eps), inner);
        let (ds, db) = if same {
            (g.ds, g.db)
        } else {
            (sum_to(&g.ds, &sdims, scale.numel()), sum_to(&g.db, &sdims, scale.numel()))
        };
        (Elem::wrap(g.dx), Elem::wrap(ds), Elem::wrap(db))
    }, _ => kbail!("LayerNormalizationGrad takes f32 or f64, got {}", x.dtype()));
    let sshape = scale.shape().to_vec();
    Ok(vec![
        Tensor::from_parts(x.shape().to_vec(), dx),
        Tensor::from_parts(sshape.clone(), ds),
        Tensor::from_parts(sshape, db),
    ])
}
