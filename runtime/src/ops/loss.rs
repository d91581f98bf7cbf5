//! Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (the training losses; their
//! reductions follow onnx: `mean` divides by the total weight of the non-ignored targets).

use super::util::ints;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

fn f64s(t: &Tensor) -> KResult<Vec<f64>> {
    super::util::floats(t)
}

/// NLL of log-probabilities `lp` `[N, C, d…]` at `target` `[N, d…]`.
fn nll(c: &OpCtx, lp: &Tensor, target: &Tensor, weight: Option<&Tensor>) -> KResult<Tensor> {
    if lp.rank() < 2 {
        kbail!("input must be [N, C, …], got {:?}", lp.shape());
    }
    let (n, ch) = (lp.shape()[0], lp.shape()[1]);
    let inner: usize = lp.shape()[2..].iter().product();
    let mut tshape = vec![n];
    tshape.extend(&lp.shape()[2..]);
    if target.shape() != tshape.as_slice() {
        kbail!("target shape {:?} should be {tshape:?}", target.shape());
    }
    let x = f64s(lp)?;
    let t = ints(target)?;
    let w = weight.map(f64s).transpose()?;
    if w.as_ref().is_some_and(|w| w.len() != ch) {
        kbail!("weight must have {ch} elements");
    }
    let ignore = c.node.attr("ignore_index").and_then(|a| a.as_int());
    let mut loss = vec![0f64; n * inner];
    let mut wsum = 0f64;
    for b in 0..n {
        for r in 0..inner {
            let cls = t[b * inner + r];
            if Some(cls) == ignore {
                continue;
            }
            if cls < 0 || cls as usize >= ch {
                kbail!("target {cls} is out of range for {ch} classes");
            }
            let cls = cls as usize;
            let wt = w.as_ref().map_or(1.0, |w| w[cls]);
            loss[b * inner + r] = -x[(b * ch + cls) * inner + r] * wt;
            wsum += wt;
        }
    }
    let reduction = c.string("reduction").unwrap_or_else(|| "mean".into());
    let (shape, v) = match reduction.as_str() {
        "none" => (tshape, loss),
        "sum" => (vec![], vec![loss.iter().sum()]),
        "mean" => (vec![], vec![if wsum == 0.0 { 0.0 } else { loss.iter().sum::<f64>() / wsum }]),
        other => unsupported!("reduction \"{other}\""),
    };
    super::cast::cast_to(&Tensor::from_parts(shape, Storage::F64(v)), lp.dtype())
}

pub fn nll_loss(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![nll(c, i.req(0)?, i.req(1)?, i.opt(2))?])
}

pub fn softmax_cross_entropy(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let scores = i.req(0)?;
    if scores.rank() < 2 {
        kbail!("scores must be [N, C, …], got {:?}", scores.shape());
    }
    // log_softmax over the class axis (1), in f64.
    let (n, ch) = (scores.shape()[0], scores.shape()[1]);
    let inner: usize = scores.shape()[2..].iter().product();
    let x = f64s(scores)?;
    let mut lp = vec![0f64; x.len()];
    for b in 0..n {
        for r in 0..inner {
            let at = |j: usize| (b * ch + j) * inner + r;
            let m = (0..ch).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..ch).map(|j| (x[at(j)] - m).exp()).sum();
            for j in 0..ch {
                lp[at(j)] = x[at(j)] - m - s.ln();
            }
        }
    }
    let lp = super::cast::cast_to(&Tensor::from_parts(scores.shape().to_vec(), Storage::F64(lp)), scores.dtype())?;
    let loss = nll(c, &lp, i.req(1)?, i.opt(2))?;
    Ok(vec![loss, lp])
}

pub const OPS: &[(&str, KernelFn)] =
    &[("NegativeLogLikelihoodLoss", nll_loss), ("SoftmaxCrossEntropyLoss", softmax_cross_entropy)];
