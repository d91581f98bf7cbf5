//! Pooling: MaxPool (with indices), AveragePool, LpPool and their global forms.

use super::conv::{ravel, unravel, Window};
use super::num::Num;
use super::util::checked_numel;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Max,
    Avg,
    Lp(i64),
}

fn f64s(t: &Tensor) -> KResult<Vec<f64>> {
    fn go<T: Num>(v: &[T]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }
    Ok(crate::with_arith!(t.data(), v => go(v), _ => kbail!("expects a numeric tensor, got {}", t.dtype())))
}

fn pool(c: &OpCtx, i: &Inputs, kind: Kind, global: bool) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    if x.rank() < 3 {
        kbail!("input must be [N, C, spatial…], got {:?}", x.shape());
    }
    let (n, ch) = (x.shape()[0], x.shape()[1]);
    let spatial = x.shape()[2..].to_vec();
    let nd = spatial.len();
    let win = if global {
        Window {
            kernel: spatial.clone(),
            strides: vec![1; nd],
            dilations: vec![1; nd],
            begin: vec![0; nd],
            out: vec![1; nd],
        }
    } else {
        let Some(ks) = c.ints("kernel_shape") else { kbail!("kernel_shape is required") };
        if ks.iter().any(|&k| k < 1) {
            kbail!("kernel_shape {ks:?} is invalid");
        }
        Window::new(c, &spatial, ks.iter().map(|&k| k as usize).collect(), c.int("ceil_mode", 0) != 0)?
    };
    let mut out_shape = vec![n, ch];
    out_shape.extend(&win.out);
    checked_numel(&out_shape)?;
    let include_pad = c.int("count_include_pad", 0) != 0;
    let xv = f64s(x)?;
    let osz: usize = win.out.iter().product();
    let isz: usize = spatial.iter().product();
    let ksz: usize = win.kernel.iter().product();
    let (mut o, mut k, mut pos) = (vec![0; nd], vec![0; nd], vec![0; nd]);
    let mut y = vec![0f64; n * ch * osz];
    let mut idx = vec![0i64; n * ch * osz];
    // Pads at the end, for count_include_pad (windows never count beyond them).
    let pads_end: Vec<usize> = match c.ints("pads") {
        Some(p) if p.len() == 2 * nd => p[nd..].iter().map(|&v| v.max(0) as usize).collect(),
        _ => vec![0; nd],
    };
    for nc in 0..n * ch {
        let base = nc * isz;
        for op in 0..osz {
            unravel(op, &win.out, &mut o);
            let (mut acc, mut count, mut best) =
                (if kind == Kind::Max { f64::NEG_INFINITY } else { 0.0 }, 0usize, 0usize);
            let mut padded_count = 0usize;
            for kp in 0..ksz {
                unravel(kp, &win.kernel, &mut k);
                if win.source(&spatial, &o, &k, &mut pos) {
                    let off = ravel(&pos, &spatial);
                    let v = xv[base + off];
                    match kind {
                        Kind::Max => {
                            if v > acc || count == 0 && v.is_nan() {
                                acc = v;
                                best = off;
                            }
                        }
                        Kind::Avg => acc += v,
                        Kind::Lp(p) => acc += v.abs().powi(p as i32),
                    }
                    count += 1;
                    padded_count += 1;
                } else {
                    // Inside the explicit padding (not beyond it) counts when include_pad.
                    let inside = (0..nd).all(|d| {
                        let p = (o[d] * win.strides[d] + k[d] * win.dilations[d]) as isize;
                        p < (spatial[d] + win.begin[d] + pads_end[d]) as isize
                    });
                    if inside {
                        padded_count += 1;
                    }
                }
            }
            y[nc * osz + op] = match kind {
                Kind::Max => acc,
                Kind::Avg => acc / (if include_pad { padded_count } else { count }).max(1) as f64,
                Kind::Lp(p) => acc.powf(1.0 / p as f64),
            };
            idx[nc * osz + op] = (nc * isz + best) as i64;
        }
    }
    let t = super::cast::cast_to(&Tensor::from_parts(out_shape.clone(), Storage::F64(y)), x.dtype())?;
    let mut out = vec![t];
    if kind == Kind::Max && c.node.outputs().len() > 1 {
        if c.int("storage_order", 0) != 0 {
            // Column-major indices: the spatial offset with the last two dims swapped.
            let hw: Vec<usize> = spatial.iter().rev().copied().collect();
            for v in idx.iter_mut() {
                let (nc, off) = (*v as usize / isz.max(1), *v as usize % isz.max(1));
                let mut p = vec![0; nd];
                unravel(off, &spatial, &mut p);
                p.reverse();
                *v = (nc * isz + ravel(&p, &hw)) as i64;
            }
        }
        out.push(Tensor::from_parts(out_shape, Storage::I64(idx)));
    }
    Ok(out)
}

pub fn max_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Max, false)
}

pub fn average_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Avg, false)
}

pub fn lp_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Lp(c.int("p", 2)), false)
}

pub fn global_average_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Avg, true)
}

pub fn global_max_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Max, true)
}

pub fn global_lp_pool(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    pool(c, i, Kind::Lp(c.int("p", 2)), true)
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("MaxPool", max_pool),
    ("AveragePool", average_pool),
    ("LpPool", lp_pool),
    ("GlobalAveragePool", global_average_pool),
    ("GlobalMaxPool", global_max_pool),
    ("GlobalLpPool", global_lp_pool),
];
