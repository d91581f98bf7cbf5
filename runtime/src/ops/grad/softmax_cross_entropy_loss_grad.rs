//! `SoftmaxCrossEntropyLossGrad(dloss, scores, labels[, weights])` (attributes `reduction` =
//! `"mean"` | `"sum"` | `"none"`, optional `ignore_index`): the gradient of ONNX
//! SoftmaxCrossEntropyLoss's loss output with respect to `scores` `[N, C, d…]` —
//! `(softmax(scores) − onehot(label)) · weight[label] · dloss`, divided for `"mean"` by the total
//! weight of the non-ignored targets (0 when that is 0); ignored targets get 0.
//!
//! The gradient is computed in f64 when the scores and `dloss` are f64, else in f32 with the
//! scores as a `Cast(to=f32)` gives them (a model's bf16 logits, read as stored: exact), and
//! written in the type of the optional `to` attribute (a `Cast`'s code), by default the
//! scores': a bf16 gradient is rounded once on the way out, as a `Cast(to=bf16)` after an f32
//! kernel would round it.
//!
//! The language-model head is its hot path (`[B·S, 32000]`): rows run in parallel, each in
//! vectorised passes (max; exp written out; its sum; scaled), never leaving f32.

use rayon::prelude::*;

use super::real::{max, sum, with_real, Real};
use adaptc_ir::DataType;

use crate::error::{kbail, unsupported, KResult};
use crate::ops::cast::cast_to;
use crate::ops::util::{ints, PAR_THRESHOLD};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Storage, Tensor};
use half::bf16;

/// One contiguous row of class scores: `out = softmax(x)·coef`, `out[label] −= coef`.
fn row<T: Real>(x: &[T], out: &mut [T], label: usize, coef: T) {
    if coef == T::zero() {
        out.fill(T::zero());
        return;
    }
    let m = max(x);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - m).exp();
    }
    let scale = coef / sum(out);
    out.iter_mut().for_each(|o| *o *= scale);
    out[label] -= coef;
}

/// Per target: its class (unused when ignored) and the factor its row is scaled by.
struct Targets<T> {
    label: Vec<usize>,
    coef: Vec<T>,
}

fn targets<T: Real>(
    labels: &[i64],
    ch: usize,
    ignore: Option<i64>,
    weights: Option<&[T]>,
    dloss: &[T],
    reduction: &str,
) -> KResult<Targets<T>> {
    let mut label = Vec::with_capacity(labels.len());
    let mut coef = Vec::with_capacity(labels.len());
    let mut wsum = 0f64;
    for (p, &l) in labels.iter().enumerate() {
        if Some(l) == ignore {
            label.push(0);
            coef.push(T::zero());
            continue;
        }
        if l < 0 || l as usize >= ch {
            kbail!("label {l} is out of range for {ch} classes");
        }
        let w = weights.map_or(T::one(), |w| w[l as usize]);
        wsum += w.to_f64();
        label.push(l as usize);
        coef.push(w * if reduction == "none" { dloss[p] } else { dloss[0] });
    }
    if reduction == "mean" {
        if wsum == 0.0 {
            coef.iter_mut().for_each(|c| *c = T::zero());
        } else {
            let inv = T::c(1.0 / wsum);
            coef.iter_mut().for_each(|c| *c *= inv);
        }
    }
    Ok(Targets { label, coef })
}

fn go<T: Real>(x: &[T], t: &Targets<T>, ch: usize, inner: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    if x.is_empty() {
        return out;
    }
    if inner == 1 {
        if x.len() >= PAR_THRESHOLD {
            out.par_chunks_mut(ch)
                .zip(x.par_chunks(ch))
                .zip(t.label.par_iter().zip(t.coef.par_iter()))
                .for_each(|((o, v), (&l, &c))| row(v, o, l, c));
        } else {
            for ((o, v), (&l, &c)) in out.chunks_mut(ch).zip(x.chunks(ch)).zip(t.label.iter().zip(&t.coef)) {
                row(v, o, l, c);
            }
        }
        return out;
    }
    // Classes strided by `inner`: gather each target's scores into a row, then scatter back.
    let block = |b: usize, o: &mut [T]| {
        let (mut xs, mut os) = (vec![T::zero(); ch], vec![T::zero(); ch]);
        for r in 0..inner {
            let p = b * inner + r;
            for (j, v) in xs.iter_mut().enumerate() {
                *v = x[(b * ch + j) * inner + r];
            }
            row(&xs, &mut os, t.label[p], t.coef[p]);
            for (j, &v) in os.iter().enumerate() {
                o[j * inner + r] = v;
            }
        }
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(ch * inner).enumerate().for_each(|(b, o)| block(b, o));
    } else {
        out.chunks_mut(ch * inner).enumerate().for_each(|(b, o)| block(b, o));
    }
    out
}

/// bf16 scores in rows (a language-model head's logits, read as stored) with a bf16 or f32
/// gradient: each row widened into a buffer of its thread's, its gradient computed in f32 as
/// [`go`] does and rounded into place, so neither an f32 copy of the scores nor an f32
/// gradient is ever whole (two `[B·S, 32000]` f32 tensors at the benchmark shape). `None` for
/// other types; the bits are [`go`]'s on the widened scores, rounded once.
fn go_bf16_rows(x: &[bf16], t: &Targets<f32>, ch: usize, out: DataType) -> Option<Storage> {
    fn rows<O: Copy + Default + Send + Sync>(
        x: &[bf16],
        t: &Targets<f32>,
        ch: usize,
        round: impl Fn(f32) -> O + Sync,
    ) -> Vec<O> {
        let mut out = vec![O::default(); x.len()];
        let rows = out.par_chunks_mut(ch).zip(x.par_chunks(ch)).zip(t.label.par_iter().zip(t.coef.par_iter()));
        rows.for_each_init(
            || (Vec::with_capacity(ch), vec![0f32; ch]),
            |(wide, grad), ((o, v), (&l, &c))| {
                wide.clear();
                wide.extend(v.iter().map(|b| b.to_f32()));
                row(wide, grad, l, c);
                o.iter_mut().zip(grad.iter()).for_each(|(o, &g)| *o = round(g));
            },
        );
        out
    }
    if x.is_empty() || ch == 0 {
        return None;
    }
    match out {
        DataType::BFloat16 => Some(Storage::BF16(rows(x, t, ch, bf16::from_f32))),
        DataType::Float => Some(Storage::F32(rows(x, t, ch, |g| g))),
        _ => None,
    }
}

pub fn softmax_cross_entropy_loss_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (dloss, scores, labels) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let weights = i.opt(3);
    let (_, ch, inner, tshape) = crate::ops::loss::class_layout(scores, "scores")?;
    if labels.shape() != tshape.as_slice() {
        kbail!("labels have shape {:?}, scores {:?} need {tshape:?}", labels.shape(), scores.shape());
    }
    if !matches!(labels.dtype(), DataType::Int64 | DataType::Int32) {
        kbail!("labels must be int64 or int32, got {}", labels.dtype());
    }
    let reduction = c.string("reduction").unwrap_or_else(|| "mean".into());
    match reduction.as_str() {
        "none" => {
            if dloss.shape() != tshape.as_slice() {
                kbail!("dloss has shape {:?}; reduction \"none\" needs {tshape:?}", dloss.shape());
            }
        }
        "mean" | "sum" => {
            if dloss.numel() != 1 {
                kbail!("dloss must be a scalar for reduction \"{reduction}\", got shape {:?}", dloss.shape());
            }
        }
        other => unsupported!("reduction \"{other}\""),
    }
    if let Some(w) = weights {
        if w.shape() != [ch] {
            kbail!("weights must have shape [{ch}], got {:?}", w.shape());
        }
    }
    let out = match c.node.attr("to").and_then(|a| a.as_int()) {
        None => scores.dtype(),
        Some(code) => crate::ops::util::float_type(code)?,
    };
    let ignore = c.node.attr("ignore_index").and_then(|a| a.as_int());
    if let (Storage::BF16(x), 1) = (scores.data(), inner) {
        let (dloss, weights) =
            (cast_to(dloss, DataType::Float)?, weights.map(|w| cast_to(w, DataType::Float)).transpose()?);
        let w = weights.as_ref().and_then(|w| w.as_slice::<f32>());
        let t = targets(&ints(labels)?, ch, ignore, w, dloss.as_slice::<f32>().unwrap_or(&[]), &reduction)?;
        if let Some(data) = go_bf16_rows(x, &t, ch, out) {
            return Ok(vec![Tensor::from_parts(scores.shape().to_vec(), data)]);
        }
    }
    // f64 throughout (the finite-difference tests), else f32 with the scores as a
    // `Cast(to=f32)` gives them (the plan's loss fusion reads bf16 logits as stored).
    let keep_f64 = scores.dtype() == DataType::Double && dloss.dtype() == DataType::Double;
    let scores = crate::ops::loss::widened(scores, keep_f64)?;
    let compute = scores.dtype();
    let (dloss, weights) = (cast_to(dloss, compute)?, weights.map(|w| cast_to(w, compute)).transpose()?);
    let labels = ints(labels)?;
    let data = with_real!(scores.data(), x => {
        let w = weights.as_ref().map(|w| Elem::slice(w.data()).unwrap_or(&[]));
        let t = targets(&labels, ch, ignore, w, Elem::slice(dloss.data()).unwrap_or(&[]), &reduction)?;
        Elem::wrap(go(x, &t, ch, inner))
    }, _ => kbail!("SoftmaxCrossEntropyLossGrad takes float scores, got {}", scores.dtype()));
    cast_to(&Tensor::from_parts(scores.shape().to_vec(), data), out).map(|g| vec![g])
}
