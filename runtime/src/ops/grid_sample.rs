//! `GridSample` over any number of spatial dims: nearest, linear and cubic sampling with
//! zeros/border/reflection padding, following onnx's reference (and PyTorch's) rules.

use super::util::{checked_numel, floats, strides};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

#[derive(Clone, Copy, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// Reflects `x` into `[lo, hi]` by bouncing off the borders.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let rng = hi - lo;
    if x < lo {
        let dx = lo - x;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

fn cubic(x: f64) -> [f64; 4] {
    let a = -0.75;
    let x = x.abs();
    [
        ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0,
        ((a * (2.0 - x) - 5.0 * a) * (2.0 - x) + 8.0 * a) * (2.0 - x) - 4.0 * a,
    ]
}

pub fn grid_sample(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, grid) = (i.req(0)?, i.req(1)?);
    let nd = x.rank().saturating_sub(2);
    if x.rank() < 3 || grid.rank() != x.rank() || grid.shape()[0] != x.shape()[0] || grid.shape()[x.rank() - 1] != nd {
        kbail!("X {:?} and grid {:?} do not fit together", x.shape(), grid.shape());
    }
    let mode = c.string("mode").unwrap_or_else(|| "linear".into());
    let mode = match mode.as_str() {
        "bilinear" => "linear".to_string(),
        "bicubic" => "cubic".to_string(),
        _ => mode,
    };
    let pad = match c.string("padding_mode").as_deref().unwrap_or("zeros") {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        other => unsupported!("padding_mode \"{other}\""),
    };
    let align = c.int("align_corners", 0) != 0;
    let (n, ch) = (x.shape()[0], x.shape()[1]);
    let dims = &x.shape()[2..];
    let out_sp = &grid.shape()[1..grid.rank() - 1];
    let mut out_shape = vec![n, ch];
    out_shape.extend_from_slice(out_sp);
    checked_numel(&out_shape)?;
    let xv = floats(x)?;
    let gv = floats(grid)?;
    let isz: usize = dims.iter().product();
    let osz: usize = out_sp.iter().product();
    let st = strides(dims);
    let (lo, hi): (Vec<f64>, Vec<f64>) =
        dims.iter().map(|&d| if align { (0.0, d as f64 - 1.0) } else { (-0.5, d as f64 - 0.5) }).unzip();
    let mut y = vec![0f64; n * ch * osz];
    // The index used for tap `i` on dim `d`, or None when it reads zero padding.
    let fetch = |d: usize, i: i64| -> Option<usize> {
        let size = dims[d] as i64;
        match pad {
            Padding::Zeros => (0..size).contains(&i).then_some(i as usize),
            Padding::Border => Some(i.clamp(0, size - 1) as usize),
            Padding::Reflection => Some((reflect(i as f64, lo[d], hi[d]) as i64).clamp(0, size - 1) as usize),
        }
    };
    for b in 0..n {
        for o in 0..osz {
            // Grid coordinates are in reverse dim order (x, y, …).
            let g = &gv[(b * osz + o) * nd..(b * osz + o + 1) * nd];
            let mut coord: Vec<f64> = (0..nd)
                .map(|d| {
                    let v = g[nd - 1 - d];
                    let len = dims[d] as f64;
                    (if align { (v + 1.0) / 2.0 * (len - 1.0) } else { ((v + 1.0) * len - 1.0) / 2.0 }) as f32 as f64
                })
                .collect();
            if mode == "nearest" {
                coord.iter_mut().for_each(|v| *v = v.round_ties_even());
            }
            for d in 0..nd {
                let v = coord[d];
                if v < lo[d] || v > hi[d] {
                    match pad {
                        Padding::Border => coord[d] = v.clamp(0.0, dims[d] as f64 - 1.0),
                        Padding::Reflection => coord[d] = reflect(v, lo[d], hi[d]),
                        Padding::Zeros => {}
                    }
                }
            }
            // Taps per dim: (index, weight).
            let taps: Vec<Vec<(i64, f64)>> = coord
                .iter()
                .map(|&v| match mode.as_str() {
                    "nearest" => Ok(vec![(v as i64, 1.0)]),
                    "linear" => {
                        let f = v.floor();
                        Ok(vec![(f as i64, 1.0 - (v - f)), (f as i64 + 1, v - f)])
                    }
                    "cubic" => {
                        let f = v.floor();
                        let w = cubic(v - f);
                        Ok((0..4).map(|k| (f as i64 - 1 + k as i64, w[k])).collect())
                    }
                    other => unsupported!("mode \"{other}\""),
                })
                .collect::<KResult<_>>()?;
            let count: usize = taps.iter().map(Vec::len).product();
            for cidx in 0..ch {
                let base = (b * ch + cidx) * isz;
                let mut acc = 0.0;
                for t in 0..count {
                    let (mut rem, mut w, mut off, mut zero) = (t, 1.0, 0usize, false);
                    for d in (0..nd).rev() {
                        let (idx, wt) = taps[d][rem % taps[d].len()];
                        rem /= taps[d].len();
                        w *= wt;
                        match fetch(d, idx) {
                            Some(p) => off += p * st[d],
                            None => zero = true,
                        }
                    }
                    if !zero {
                        acc += w * xv[base + off];
                    }
                }
                y[(b * ch + cidx) * osz + o] = acc;
            }
        }
    }
    let t = Tensor::from_parts(out_shape, Storage::F64(y));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

/// `AffineGrid`: the sampling grid of an affine transform `theta` (2-D `[N, 2, 3]` or 3-D
/// `[N, 3, 4]`) over an output of `size`, in GridSample's normalised coordinates.
pub fn affine_grid(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (theta, size) = (i.req(0)?, i.req(1)?);
    let size = super::util::to_shape(&super::util::ints(size)?)?;
    let nd = size.len().saturating_sub(2);
    if !(nd == 2 || nd == 3) || theta.shape() != [size[0], nd, nd + 1] {
        kbail!("theta {:?} does not fit size {size:?}", theta.shape());
    }
    let align = c.int("align_corners", 0) != 0;
    let coord = |k: usize, len: usize| -> f64 {
        if align {
            if len <= 1 {
                -1.0
            } else {
                -1.0 + 2.0 * k as f64 / (len - 1) as f64
            }
        } else {
            (2 * k + 1) as f64 / len as f64 - 1.0
        }
    };
    let sp = &size[2..];
    let mut shape = vec![size[0]];
    shape.extend_from_slice(sp);
    shape.push(nd);
    checked_numel(&shape)?;
    let th = floats(theta)?;
    let count: usize = sp.iter().product();
    let mut out = Vec::with_capacity(size[0] * count * nd);
    let mut pos = vec![0usize; nd];
    for b in 0..size[0] {
        let t = &th[b * nd * (nd + 1)..(b + 1) * nd * (nd + 1)];
        for p in 0..count {
            super::conv::unravel(p, sp, &mut pos);
            // Base point in (x, y[, z], 1) order: the last spatial dim is x.
            let mut base: Vec<f64> = (0..nd).map(|d| coord(pos[nd - 1 - d], sp[nd - 1 - d])).collect();
            base.push(1.0);
            for row in 0..nd {
                out.push((0..=nd).map(|k| t[row * (nd + 1) + k] * base[k]).sum());
            }
        }
    }
    let t = Tensor::from_parts(shape, Storage::F64(out));
    Ok(vec![super::cast::cast_to(&t, theta.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] = &[("GridSample", grid_sample), ("AffineGrid", affine_grid)];
