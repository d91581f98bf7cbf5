//! Convolutions (Conv, ConvTranspose) over any number of spatial dims, and the window
//! geometry (pads, strides, dilations, `auto_pad`) they share with pooling.
//!
//! Direct loops in f64: correct for every dtype and layout the suite uses; a GEMM-based
//! (im2col) f32 path is future work.

use super::num::Num;
use super::util::checked_numel;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

/// Window geometry of a conv/pool node along its spatial dims.
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// Padding before each spatial dim.
    pub begin: Vec<usize>,
    pub out: Vec<usize>,
}

impl Window {
    pub fn new(c: &OpCtx, spatial: &[usize], kernel: Vec<usize>, ceil: bool) -> KResult<Window> {
        let nd = spatial.len();
        if kernel.len() != nd || kernel.contains(&0) {
            kbail!("kernel shape {kernel:?} does not fit {nd} spatial dims");
        }
        let get = |name: &str| -> KResult<Vec<usize>> {
            match c.ints(name) {
                Some(v) if v.len() == nd && v.iter().all(|&x| x >= 1) => Ok(v.iter().map(|&x| x as usize).collect()),
                Some(v) => kbail!("{name} {v:?} is invalid for {nd} spatial dims"),
                None => Ok(vec![1; nd]),
            }
        };
        let strides = get("strides")?;
        let dilations = get("dilations")?;
        let auto = c.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
        let mut begin = vec![0; nd];
        let mut out = vec![0; nd];
        let pads = c.ints("pads").unwrap_or_else(|| vec![0; 2 * nd]);
        if pads.len() != 2 * nd || pads.iter().any(|&p| p < 0) {
            kbail!("pads {pads:?} are invalid for {nd} spatial dims");
        }
        for d in 0..nd {
            let eff = (kernel[d] - 1) * dilations[d] + 1;
            match auto.as_str() {
                "NOTSET" | "VALID" => {
                    let (b, e) = if auto == "VALID" { (0, 0) } else { (pads[d] as usize, pads[d + nd] as usize) };
                    let total = spatial[d] + b + e;
                    if total < eff {
                        out[d] = 0;
                    } else {
                        let span = total - eff;
                        out[d] = if ceil { span.div_ceil(strides[d]) + 1 } else { span / strides[d] + 1 };
                        // A window may not start inside the end padding only (ceil mode).
                        if ceil && (out[d] - 1) * strides[d] >= spatial[d] + b {
                            out[d] -= 1;
                        }
                    }
                    begin[d] = b;
                }
                "SAME_UPPER" | "SAME_LOWER" => {
                    out[d] = spatial[d].div_ceil(strides[d]);
                    let need = ((out[d].max(1) - 1) * strides[d] + eff).saturating_sub(spatial[d]);
                    begin[d] = if auto == "SAME_UPPER" { need / 2 } else { need.div_ceil(2) };
                }
                other => unsupported!("auto_pad \"{other}\""),
            }
        }
        Ok(Window { kernel, strides, dilations, begin, out })
    }

    /// For output position `o` (multi-index) and kernel offset `k`, the input position or
    /// `None` when it falls in the padding.
    pub fn source(&self, spatial: &[usize], o: &[usize], k: &[usize], pos: &mut [usize]) -> bool {
        for d in 0..spatial.len() {
            let p = (o[d] * self.strides[d] + k[d] * self.dilations[d]) as isize - self.begin[d] as isize;
            if p < 0 || p as usize >= spatial[d] {
                return false;
            }
            pos[d] = p as usize;
        }
        true
    }
}

/// Decomposes a flat index into a multi-index of `shape`.
pub fn unravel(mut k: usize, shape: &[usize], out: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        let s = shape[d].max(1);
        out[d] = k % s;
        k /= s;
    }
}

/// Flat offset of multi-index `pos` in `shape`.
pub fn ravel(pos: &[usize], shape: &[usize]) -> usize {
    pos.iter().zip(shape).fold(0, |acc, (&p, &s)| acc * s + p)
}

fn f64s(t: &Tensor) -> KResult<Vec<f64>> {
    fn go<T: Num>(v: &[T]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }
    Ok(crate::with_arith!(t.data(), v => go(v), _ => kbail!("expects a numeric tensor, got {}", t.dtype())))
}

pub fn conv(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, w) = (i.req(0)?, i.req(1)?);
    if x.rank() < 3 || w.rank() != x.rank() {
        kbail!("X {:?} and W {:?} must be [N, C, spatial…] of one rank", x.shape(), w.shape());
    }
    let (n, cin) = (x.shape()[0], x.shape()[1]);
    let (cout, cpg) = (w.shape()[0], w.shape()[1]);
    let g = c.int("group", 1);
    if g < 1 || cin != cpg * g as usize || cout % g as usize != 0 {
        kbail!("group {g} does not fit {cin} input and {cout} output channels with W {:?}", w.shape());
    }
    let g = g as usize;
    let spatial = &x.shape()[2..];
    let kshape = w.shape()[2..].to_vec();
    if let Some(ks) = c.ints("kernel_shape") {
        if ks.iter().map(|&k| k as usize).collect::<Vec<_>>() != kshape {
            kbail!("kernel_shape {ks:?} differs from W {:?}", w.shape());
        }
    }
    let win = Window::new(c, spatial, kshape.clone(), false)?;
    let mut out_shape = vec![n, cout];
    out_shape.extend(&win.out);
    checked_numel(&out_shape)?;
    let xv = f64s(x)?;
    let wv = f64s(w)?;
    let bias = i.opt(2).map(f64s).transpose()?;
    if bias.as_ref().is_some_and(|b| b.len() != cout) {
        kbail!("B must have {cout} elements");
    }
    let osz: usize = win.out.iter().product();
    let ksz: usize = kshape.iter().product();
    let isz: usize = spatial.iter().product();
    let nd = spatial.len();
    let (mut o, mut k, mut pos) = (vec![0; nd], vec![0; nd], vec![0; nd]);
    let mut y = vec![0f64; n * cout * osz];
    let opg = cout / g;
    for b in 0..n {
        for oc in 0..cout {
            let grp = oc / opg;
            for op in 0..osz {
                unravel(op, &win.out, &mut o);
                let mut acc = bias.as_ref().map_or(0.0, |bv| bv[oc]);
                for ic in 0..cpg {
                    let xc = grp * cpg + ic;
                    for kp in 0..ksz {
                        unravel(kp, &kshape, &mut k);
                        if win.source(spatial, &o, &k, &mut pos) {
                            acc += xv[(b * cin + xc) * isz + ravel(&pos, spatial)] * wv[(oc * cpg + ic) * ksz + kp];
                        }
                    }
                }
                y[(b * cout + oc) * osz + op] = acc;
            }
        }
    }
    let t = Tensor::from_parts(out_shape, Storage::F64(y));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

pub fn conv_transpose(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, w) = (i.req(0)?, i.req(1)?);
    if x.rank() < 3 || w.rank() != x.rank() {
        kbail!("X {:?} and W {:?} must be [N, C, spatial…] of one rank", x.shape(), w.shape());
    }
    let (n, cin) = (x.shape()[0], x.shape()[1]);
    let g = c.int("group", 1).max(1) as usize;
    if w.shape()[0] != cin || cin % g != 0 {
        kbail!("W {:?} does not fit {cin} input channels in {g} groups", w.shape());
    }
    let opg = w.shape()[1];
    let cout = opg * g;
    let spatial = &x.shape()[2..];
    let nd = spatial.len();
    let kshape = w.shape()[2..].to_vec();
    if kshape.contains(&0) {
        kbail!("W {:?} has an empty kernel", w.shape());
    }
    let attr = |name: &str, d: usize| -> Vec<usize> {
        c.ints(name).map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or_else(|| vec![d; nd])
    };
    let (strides, dil, outpad) = (attr("strides", 1), attr("dilations", 1), attr("output_padding", 0));
    if strides.len() != nd || dil.len() != nd || outpad.len() != nd {
        kbail!("strides/dilations/output_padding do not match {nd} spatial dims");
    }
    let auto = c.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let mut pads =
        c.ints("pads").map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or_else(|| vec![0; 2 * nd]);
    if pads.len() != 2 * nd {
        kbail!("pads do not match {nd} spatial dims");
    }
    let full: Vec<usize> =
        (0..nd).map(|d| strides[d] * (spatial[d].max(1) - 1) + outpad[d] + (kshape[d] - 1) * dil[d] + 1).collect();
    let out_sp: Vec<usize> = match c.ints("output_shape") {
        Some(os) => {
            let os: Vec<usize> = os.iter().rev().take(nd).rev().map(|&x| x.max(0) as usize).collect();
            for d in 0..nd {
                let total = full[d].saturating_sub(os[d]);
                if auto == "SAME_UPPER" {
                    pads[d] = total / 2;
                    pads[d + nd] = total - total / 2;
                } else {
                    pads[d] = total - total / 2;
                    pads[d + nd] = total / 2;
                }
            }
            os
        }
        None if auto == "SAME_UPPER" || auto == "SAME_LOWER" => {
            let os: Vec<usize> = (0..nd).map(|d| spatial[d] * strides[d]).collect();
            for d in 0..nd {
                let total = full[d].saturating_sub(os[d]);
                if auto == "SAME_UPPER" {
                    pads[d] = total / 2;
                    pads[d + nd] = total - total / 2;
                } else {
                    pads[d] = total - total / 2;
                    pads[d + nd] = total / 2;
                }
            }
            os
        }
        None => (0..nd).map(|d| full[d].saturating_sub(pads[d] + pads[d + nd])).collect(),
    };
    let mut out_shape = vec![n, cout];
    out_shape.extend(&out_sp);
    checked_numel(&out_shape)?;
    let xv = f64s(x)?;
    let wv = f64s(w)?;
    let bias = i.opt(2).map(f64s).transpose()?;
    let osz: usize = out_sp.iter().product();
    let isz: usize = spatial.iter().product();
    let ksz: usize = kshape.iter().product();
    let mut y = vec![0f64; n * cout * osz];
    let cpg = cin / g;
    let (mut ip, mut k, mut op) = (vec![0; nd], vec![0; nd], vec![0; nd]);
    for b in 0..n {
        for ic in 0..cin {
            let grp = ic / cpg;
            for p in 0..isz {
                unravel(p, spatial, &mut ip);
                let xval = xv[(b * cin + ic) * isz + p];
                for kp in 0..ksz {
                    unravel(kp, &kshape, &mut k);
                    let mut ok = true;
                    for d in 0..nd {
                        let q = (ip[d] * strides[d] + k[d] * dil[d]) as isize - pads[d] as isize;
                        if q < 0 || q as usize >= out_sp[d] {
                            ok = false;
                            break;
                        }
                        op[d] = q as usize;
                    }
                    if !ok {
                        continue;
                    }
                    let o = ravel(&op, &out_sp);
                    for oc in 0..opg {
                        y[(b * cout + grp * opg + oc) * osz + o] += xval * wv[(ic * opg + oc) * ksz + kp];
                    }
                }
            }
        }
    }
    if let Some(bv) = bias {
        for (idx, v) in y.iter_mut().enumerate() {
            *v += bv.get((idx / osz.max(1)) % cout).copied().unwrap_or(0.0);
        }
    }
    let t = Tensor::from_parts(out_shape, Storage::F64(y));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] = &[("Conv", conv), ("ConvTranspose", conv_transpose)];
