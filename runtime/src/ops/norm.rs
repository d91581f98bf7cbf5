//! Normalisations: LayerNormalization, RMSNormalization, BatchNormalization (inference),
//! InstanceNormalization, GroupNormalization, LpNormalization, MeanVarianceNormalization.
//!
//! Statistics are computed in f64 over contiguous rows (`[outer, inner]` views), then scale
//! and bias are broadcast against the normalised shape.

use super::num::Num;
use super::util::{axes, axis, broadcast_index};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// Values of a float tensor as f64.
fn f64s(t: &Tensor) -> KResult<Vec<f64>> {
    fn go<T: Num>(v: &[T]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }
    Ok(crate::with_float!(t.data(), v => go(v), _ => kbail!("expects a float tensor, got {}", t.dtype())))
}

/// f64 values back into `like`'s float type.
fn back(shape: &[usize], v: Vec<f64>, like: adaptc_ir::DataType) -> KResult<Tensor> {
    let t = Tensor::from_parts(shape.to_vec(), Storage::F64(v));
    super::cast::cast_to(&t, like)
}

/// `scale` (and `bias`) broadcast over the trailing `inner` elements from `norm_shape`.
fn affine(t: Option<&Tensor>, norm_shape: &[usize]) -> KResult<Option<Vec<f64>>> {
    let Some(t) = t else { return Ok(None) };
    let v = f64s(t)?;
    if super::util::broadcast_shapes(&[t.shape(), norm_shape]).ok().as_deref() != Some(norm_shape) {
        kbail!("scale/bias shape {:?} does not broadcast to {norm_shape:?}", t.shape());
    }
    Ok(Some(broadcast_index(t.shape(), norm_shape).into_iter().map(|k| v[k]).collect()))
}

/// The transformer hot path: f32 rows with an f32 scale (and bias) of the normalised shape,
/// statistics stashed as f32. Rows run in parallel; sums use eight lanes so they vectorise.
/// `None` when the inputs are anything else (the general f64 path handles them).
fn layer_f32(
    c: &OpCtx,
    i: &Inputs,
    rms: bool,
    (outer, inner): (usize, usize),
    ax: usize,
    eps: f64,
) -> KResult<Option<Vec<Tensor>>> {
    use rayon::prelude::*;
    let x = i.req(0)?;
    let norm_shape = &x.shape()[ax..];
    fn vec_of<'a>(t: Option<&'a Tensor>, norm_shape: &[usize]) -> Option<Option<&'a [f32]>> {
        match t {
            None => Some(None),
            Some(t) if t.shape() == norm_shape => t.as_slice::<f32>().map(Some),
            Some(_) => None,
        }
    }
    let stash_f32 = c.node.attr("stash_type").and_then(|a| a.as_int()).is_none_or(|code| code == 1);
    let (Some(xv), Some(scale), Some(bias), true) = (
        x.as_slice::<f32>(),
        vec_of(i.opt(1), norm_shape),
        vec_of(if rms { None } else { i.opt(2) }, norm_shape),
        stash_f32,
    ) else {
        return Ok(None);
    };
    if inner == 0 {
        return Ok(None);
    }
    let eps = eps as f32;
    let mut y = vec![0f32; xv.len()];
    let mut stats = vec![(0f32, 0f32); outer];
    let (per, _) = super::grad::common::row_chunks(outer, inner);
    y.par_chunks_mut(per * inner).zip(xv.par_chunks(per * inner)).zip(stats.par_chunks_mut(per)).for_each(
        |((yc, xc), sc)| {
            for ((yr, r), st) in yc.chunks_exact_mut(inner).zip(xc.chunks_exact(inner)).zip(sc) {
                let mean = if rms { 0.0 } else { super::grad::real::sum(r) / inner as f32 };
                let mut acc = [0f32; 8];
                let rc = r.chunks_exact(8);
                let tail: f32 = rc.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
                for v in rc {
                    for k in 0..8 {
                        acc[k] += (v[k] - mean) * (v[k] - mean);
                    }
                }
                let var = (acc.iter().sum::<f32>() + tail) / inner as f32;
                let is = 1.0 / (var + eps).sqrt();
                for (j, (o, &v)) in yr.iter_mut().zip(r).enumerate() {
                    let mut t = (v - mean) * is;
                    if let Some(s) = scale {
                        t *= s[j];
                    }
                    if let Some(b) = bias {
                        t += b[j];
                    }
                    *o = t;
                }
                *st = (mean, is);
            }
        },
    );
    let mut out = vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(y))];
    if !rms {
        let mut sshape = x.shape().to_vec();
        sshape[ax..].iter_mut().for_each(|d| *d = 1);
        out.push(Tensor::from_parts(sshape.clone(), Storage::F32(stats.iter().map(|s| s.0).collect())));
        out.push(Tensor::from_parts(sshape, Storage::F32(stats.iter().map(|s| s.1).collect())));
    }
    Ok(Some(out))
}

fn layer_like(c: &OpCtx, i: &Inputs, rms: bool) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let ax = axis(c.int("axis", -1), x.rank())?;
    let eps = f64::from(c.float("epsilon", 1e-5));
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax..].iter().product();
    let norm_shape = &x.shape()[ax..];
    if let Some(out) = layer_f32(c, i, rms, (outer, inner), ax, eps)? {
        return Ok(out);
    }
    let scale = affine(i.opt(1), norm_shape)?;
    let bias = if rms { None } else { affine(i.opt(2), norm_shape)? };
    let xv = f64s(x)?;
    let mut y = vec![0f64; xv.len()];
    let (mut means, mut inv) = (Vec::with_capacity(outer), Vec::with_capacity(outer));
    for o in 0..outer {
        let r = &xv[o * inner..(o + 1) * inner];
        let mean = if rms { 0.0 } else { r.iter().sum::<f64>() / inner as f64 };
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / inner as f64;
        let is = 1.0 / (var + eps).sqrt();
        for j in 0..inner {
            let mut v = (r[j] - mean) * is;
            if let Some(s) = &scale {
                v *= s[j];
            }
            if let Some(b) = &bias {
                v += b[j];
            }
            y[o * inner + j] = v;
        }
        means.push(mean);
        inv.push(is);
    }
    let mut out = vec![back(x.shape(), y, x.dtype())?];
    if !rms {
        let stash = match c.node.attr("stash_type").and_then(|a| a.as_int()) {
            Some(code) => {
                i32::try_from(code).ok().and_then(adaptc_ir::DataType::from_code).unwrap_or(adaptc_ir::DataType::Float)
            }
            None => adaptc_ir::DataType::Float,
        };
        let mut sshape = x.shape().to_vec();
        sshape[ax..].iter_mut().for_each(|d| *d = 1);
        out.push(back(&sshape, means, stash)?);
        out.push(back(&sshape, inv, stash)?);
    }
    Ok(out)
}

pub fn layer_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    layer_like(c, i, false)
}

pub fn rms_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    layer_like(c, i, true)
}

/// Per-channel values broadcast over `[N, C, spatial…]`: (n·c index → channel).
fn per_channel(x: &Tensor) -> KResult<(usize, usize, usize)> {
    if x.rank() < 2 {
        kbail!("input must be at least [N, C], got {:?}", x.shape());
    }
    Ok((x.shape()[0], x.shape()[1], x.shape()[2..].iter().product()))
}

pub fn batch_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (n, ch, sp) = per_channel(x)?;
    let eps = f64::from(c.float("epsilon", 1e-5));
    let [s, b, m, v] = [1, 2, 3, 4].map(|k| i.req(k).and_then(f64s));
    let (s, b, m, v) = (s?, b?, m?, v?);
    if [&s, &b, &m, &v].iter().any(|t| t.len() != ch) {
        kbail!("scale, bias, mean and var must have {ch} elements");
    }
    let xv = f64s(x)?;
    let training = c.int("training_mode", 0) != 0;
    // Training mode normalises with the batch's statistics and updates the running ones.
    let (mean, var) = if training {
        let count = (n * sp).max(1) as f64;
        let mut mean = vec![0f64; ch];
        let mut var = vec![0f64; ch];
        for (k, &val) in xv.iter().enumerate() {
            mean[(k / sp.max(1)) % ch] += val / count;
        }
        for (k, &val) in xv.iter().enumerate() {
            let cidx = (k / sp.max(1)) % ch;
            var[cidx] += (val - mean[cidx]) * (val - mean[cidx]) / count;
        }
        (mean, var)
    } else {
        (m.clone(), v.clone())
    };
    let y: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(k, &val)| {
            let cidx = (k / sp.max(1)) % ch;
            s[cidx] * (val - mean[cidx]) / (var[cidx] + eps).sqrt() + b[cidx]
        })
        .collect();
    let mut out = vec![back(x.shape(), y, x.dtype())?];
    if training {
        let momentum = f64::from(c.float("momentum", 0.9));
        let run =
            |old: &[f64], cur: &[f64]| old.iter().zip(cur).map(|(o, c)| o * momentum + c * (1.0 - momentum)).collect();
        out.push(back(&[ch], run(&m, &mean), i.req(3)?.dtype())?);
        out.push(back(&[ch], run(&v, &var), i.req(4)?.dtype())?);
    }
    Ok(out)
}

/// Normalises every group of `per` contiguous channels of every sample; `scale`/`bias` are
/// indexed by channel.
fn group_norm_core(x: &Tensor, groups: usize, eps: f64, scale: &[f64], bias: &[f64]) -> KResult<Tensor> {
    let (n, ch, sp) = per_channel(x)?;
    if groups == 0 || ch % groups != 0 {
        kbail!("{ch} channels do not split into {groups} groups");
    }
    let per = ch / groups;
    let xv = f64s(x)?;
    let mut y = vec![0f64; xv.len()];
    let len = per * sp;
    for g in 0..n * groups {
        let r = &xv[g * len..(g + 1) * len];
        let mean = r.iter().sum::<f64>() / len.max(1) as f64;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / len.max(1) as f64;
        let is = 1.0 / (var + eps).sqrt();
        for j in 0..len {
            let cidx = (g % groups) * per + j / sp.max(1);
            y[g * len + j] = (r[j] - mean) * is * scale[cidx] + bias[cidx];
        }
    }
    back(x.shape(), y, x.dtype())
}

pub fn instance_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (_, ch, _) = per_channel(x)?;
    let (s, b) = (f64s(i.req(1)?)?, f64s(i.req(2)?)?);
    if s.len() != ch || b.len() != ch {
        kbail!("scale and bias must have {ch} elements");
    }
    Ok(vec![group_norm_core(x, ch, f64::from(c.float("epsilon", 1e-5)), &s, &b)?])
}

pub fn group_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (_, ch, _) = per_channel(x)?;
    let groups = c.int("num_groups", 0);
    if groups <= 0 {
        kbail!("num_groups must be positive");
    }
    let groups = groups as usize;
    let (s, b) = (f64s(i.req(1)?)?, f64s(i.req(2)?)?);
    let expand = |v: Vec<f64>| -> KResult<Vec<f64>> {
        if v.len() == ch {
            Ok(v)
        } else if v.len() == groups && ch % groups == 0 {
            Ok((0..ch).map(|k| v[k / (ch / groups)]).collect())
        } else {
            kbail!("scale/bias have {} elements for {ch} channels in {groups} groups", v.len())
        }
    };
    Ok(vec![group_norm_core(x, groups, f64::from(c.float("epsilon", 1e-5)), &expand(s)?, &expand(b)?)?])
}

pub fn lp_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let ax = axis(c.int("axis", -1), x.rank())?;
    let p = c.int("p", 2);
    if p != 1 && p != 2 {
        kbail!("p must be 1 or 2, got {p}");
    }
    let outer: usize = x.shape()[..ax].iter().product();
    let dim = x.shape()[ax];
    let inner: usize = x.shape()[ax + 1..].iter().product();
    let mut v = f64s(x)?;
    for o in 0..outer {
        for r in 0..inner {
            let at = |j: usize| (o * dim + j) * inner + r;
            let norm: f64 = if p == 1 {
                (0..dim).map(|j| v[at(j)].abs()).sum()
            } else {
                (0..dim).map(|j| v[at(j)] * v[at(j)]).sum::<f64>().sqrt()
            };
            for j in 0..dim {
                v[at(j)] = if norm == 0.0 { 0.0 } else { v[at(j)] / norm };
            }
        }
    }
    Ok(vec![back(x.shape(), v, x.dtype())?])
}

pub fn mean_variance_norm(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let ax = axes(&c.ints("axes").unwrap_or_else(|| vec![0, 2, 3]), x.rank())?;
    let mean = super::reduce::reduce(x, &ax, true, super::reduce::Reduction::Mean)?;
    let xv = f64s(x)?;
    let mv = f64s(&mean)?;
    let mi = broadcast_index(mean.shape(), x.shape());
    let centered: Vec<f64> = xv.iter().zip(&mi).map(|(v, &k)| v - mv[k]).collect();
    let sq = Tensor::from_parts(x.shape().to_vec(), Storage::F64(centered.iter().map(|v| v * v).collect()));
    let var = f64s(&super::reduce::reduce(&sq, &ax, true, super::reduce::Reduction::Mean)?)?;
    let y = centered.iter().zip(&mi).map(|(v, &k)| v / (var[k].sqrt() + 1e-9)).collect();
    Ok(vec![back(x.shape(), y, x.dtype())?])
}

/// Local response normalisation across channels.
pub fn lrn(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (_, ch, sp) = per_channel(x)?;
    let size = c.int("size", 0);
    if size < 1 {
        kbail!("size must be positive");
    }
    let (alpha, beta, bias) =
        (f64::from(c.float("alpha", 1e-4)), f64::from(c.float("beta", 0.75)), f64::from(c.float("bias", 1.0)));
    let (lo, hi) = (((size - 1) / 2) as usize, ((size - 1) as usize).div_ceil(2));
    let xv = f64s(x)?;
    let y: Vec<f64> = (0..xv.len())
        .map(|k| {
            let (cidx, base) = ((k / sp.max(1)) % ch, k - ((k / sp.max(1)) % ch) * sp);
            let from = cidx.saturating_sub(lo);
            let to = (cidx + hi).min(ch - 1);
            let sq: f64 = (from..=to).map(|j| xv[base + j * sp].powi(2)).sum();
            xv[k] / (bias + alpha / size as f64 * sq).powf(beta)
        })
        .collect();
    Ok(vec![back(x.shape(), y, x.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("LRN", lrn),
    ("LayerNormalization", layer_norm),
    ("RMSNormalization", rms_norm),
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("GroupNormalization", group_norm),
    ("LpNormalization", lp_norm),
    ("MeanVarianceNormalization", mean_variance_norm),
];
