//! Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (the training losses; their
//! reductions follow onnx: `mean` divides by the total weight of the non-ignored targets).
//!
//! SoftmaxCrossEntropyLoss comes twice: the ONNX op, whose outputs have the scores' type, and
//! `ai.adaptc::SoftmaxCrossEntropyLoss` (the plan's [`crate::fuse::stored`] puts it where a
//! model's bf16 logits were widened only for the loss), whose outputs are f32 whatever the
//! scores' type: exactly the ONNX op applied to `Cast(scores, to=f32)`, so the loss of bf16
//! logits is computed from them as stored, and reported at f32 precision.
//!
//! The language-model head is the hot case (`[B·S, 32000]`): rows run in parallel, the
//! log-sum-exp of an f32 row with the vectorised `exp` and its sum in f64.

use adaptc_ir::DataType;
use rayon::prelude::*;

use super::grad::real::{max, with_real, Real};
use super::num::Num;
use super::util::{ints, PAR_THRESHOLD};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

/// The per-target losses `−log p(target)·weight` (0 for ignored targets), reduced as the
/// node's `reduction` asks; `neg_log_p(p, class)` gives target `p`'s `−log p(class)`.
fn reduce_targets(
    c: &OpCtx,
    ch: usize,
    tshape: Vec<usize>,
    target: &Tensor,
    weight: Option<&Tensor>,
    neg_log_p: impl Fn(usize, usize) -> f64,
) -> KResult<Tensor> {
    if target.shape() != tshape.as_slice() {
        kbail!("target shape {:?} should be {tshape:?}", target.shape());
    }
    let t = ints(target)?;
    let w = weight.map(super::util::floats).transpose()?;
    if w.as_ref().is_some_and(|w| w.len() != ch) {
        kbail!("weight must have {ch} elements");
    }
    let ignore = c.node.attr("ignore_index").and_then(|a| a.as_int());
    let mut loss = vec![0f64; t.len()];
    let mut wsum = 0f64;
    for (p, &cls) in t.iter().enumerate() {
        if Some(cls) == ignore {
            continue;
        }
        if cls < 0 || cls as usize >= ch {
            kbail!("target {cls} is out of range for {ch} classes");
        }
        let wt = w.as_ref().map_or(1.0, |w| w[cls as usize]);
        loss[p] = neg_log_p(p, cls as usize) * wt;
        wsum += wt;
    }
    let reduction = c.string("reduction").unwrap_or_else(|| "mean".into());
    let (shape, v) = match reduction.as_str() {
        "none" => (tshape, loss),
        "sum" => (vec![], vec![loss.iter().sum()]),
        "mean" => (vec![], vec![if wsum == 0.0 { 0.0 } else { loss.iter().sum::<f64>() / wsum }]),
        other => unsupported!("reduction \"{other}\""),
    };
    Ok(Tensor::from_parts(shape, Storage::F64(v)))
}

/// `[N, C, d…]` → `(N, C, d…)` as (n, classes, inner) and the targets' shape `[N, d…]`.
pub(crate) fn class_layout(scores: &Tensor, what: &str) -> KResult<(usize, usize, usize, Vec<usize>)> {
    if scores.rank() < 2 {
        kbail!("{what} must be [N, C, …], got {:?}", scores.shape());
    }
    let (n, ch) = (scores.shape()[0], scores.shape()[1]);
    let inner: usize = scores.shape()[2..].iter().product();
    let mut tshape = vec![n];
    tshape.extend(&scores.shape()[2..]);
    Ok((n, ch, inner, tshape))
}

/// NLL of log-probabilities `lp` `[N, C, d…]` at `target` `[N, d…]`.
fn nll(c: &OpCtx, lp: &Tensor, target: &Tensor, weight: Option<&Tensor>) -> KResult<Tensor> {
    let (_, ch, inner, tshape) = class_layout(lp, "input")?;
    let x = super::util::floats(lp)?;
    let loss = reduce_targets(c, ch, tshape, target, weight, |p, cls| -x[(p / inner * ch + cls) * inner + p % inner])?;
    super::cast::cast_to(&loss, lp.dtype())
}

pub fn nll_loss(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![nll(c, i.req(0)?, i.req(1)?, i.opt(2))?])
}

/// The scores as a kernel computes them: f32 as they are, f64 as they are when `keep_f64`,
/// every other type as a `Cast(to=f32)` gives it (exact for bf16 and f16).
pub(crate) fn widened(scores: &Tensor, keep_f64: bool) -> KResult<std::borrow::Cow<'_, Tensor>> {
    Ok(match scores.dtype() {
        DataType::Float => std::borrow::Cow::Borrowed(scores),
        DataType::Double if keep_f64 => std::borrow::Cow::Borrowed(scores),
        _ => std::borrow::Cow::Owned(super::cast::cast_to(scores, DataType::Float)?),
    })
}

/// `Σ e^{x − m}` of a row, in f64 (eight lanes; each `e^{x − m}` in `T`).
fn sum_exp<T: Real>(x: &[T], m: T) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += (c[k] - m).exp().to_f64();
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| (v - m).exp().to_f64()).sum::<f64>()
}

/// `log Σ_j e^{x_j}` of one row of classes.
fn log_sum_exp<T: Real>(row: &[T]) -> f64 {
    let m = max(row);
    m.to_f64() + sum_exp(row, m).ln()
}

/// The log-sum-exp of every target's classes: `x` is `[N, C, inner]`, the result `[N, inner]`.
fn log_sum_exps<T: Real>(x: &[T], ch: usize, inner: usize) -> Vec<f64> {
    if x.is_empty() || ch == 0 {
        return vec![f64::NEG_INFINITY; x.len().checked_div(ch).unwrap_or(0)];
    }
    if inner == 1 {
        return if x.len() >= PAR_THRESHOLD {
            x.par_chunks(ch).map(log_sum_exp).collect()
        } else {
            x.chunks(ch).map(log_sum_exp).collect()
        };
    }
    // Classes strided by `inner`: gather each target's scores into a row first.
    let block = |b: &[T]| -> Vec<f64> {
        let mut row = vec![T::zero(); ch];
        (0..inner)
            .map(|r| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = b[j * inner + r];
                }
                log_sum_exp(&row)
            })
            .collect()
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(ch * inner).flat_map_iter(block).collect()
    } else {
        x.chunks(ch * inner).flat_map(block).collect()
    }
}

/// SoftmaxCrossEntropyLoss with its outputs in `out` (the loss, and the log-probabilities when
/// the node asks for them).
fn softmax_cross_entropy_as(c: &OpCtx, i: &Inputs, out: DataType) -> KResult<Vec<Tensor>> {
    let scores = i.req(0)?;
    let (_, ch, inner, tshape) = class_layout(scores, "scores")?;
    // The ONNX op computes in f64 for f64 scores; the f32 one is SoftmaxCrossEntropyLoss of
    // `Cast(scores, to=f32)`, whatever their type.
    let wide = widened(scores, out == DataType::Double)?;
    let want_log_prob = c.node.outputs().get(1).is_some_and(|o| !o.is_empty());
    with_real!(wide.data(), x => {
        let lse = log_sum_exps(x, ch, inner);
        let at = |p: usize, cls: usize| (p / inner * ch + cls) * inner + p % inner;
        let loss = reduce_targets(c, ch, tshape, i.req(1)?, i.opt(2), |p, cls| lse[p] - x[at(p, cls)].to_f64())?;
        let mut outs = vec![super::cast::cast_to(&loss, out)?];
        if want_log_prob {
            let lp: Vec<f64> = x.iter().enumerate().map(|(k, v)| {
                let p = k / (ch * inner) * inner + k % inner;
                v.to_f64() - lse[p]
            }).collect();
            let lp = Tensor::from_parts(scores.shape().to_vec(), Storage::F64(lp));
            outs.push(super::cast::cast_to(&lp, out)?);
        }
        Ok(outs)
    }, _ => kbail!("scores must be a float type, got {}", scores.dtype()))
}

/// ONNX SoftmaxCrossEntropyLoss: outputs in the scores' type.
pub fn softmax_cross_entropy(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    softmax_cross_entropy_as(c, i, i.req(0)?.dtype())
}

/// `ai.adaptc::SoftmaxCrossEntropyLoss`: outputs in f32 whatever the scores' type.
pub fn softmax_cross_entropy_f32(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    softmax_cross_entropy_as(c, i, DataType::Float)
}

pub const OPS: &[(&str, KernelFn)] =
    &[("NegativeLogLikelihoodLoss", nll_loss), ("SoftmaxCrossEntropyLoss", softmax_cross_entropy)];

/// The `ai.adaptc` losses.
pub const ADAPTC_OPS: &[(&str, KernelFn)] = &[("SoftmaxCrossEntropyLoss", softmax_cross_entropy_f32)];
