//! SoftmaxCrossEntropyLoss over `[N, C]` scores and its gradient: per-row losses and weights
//! in one pass, then a one-block sum for the `mean`/`sum` reductions.
//!
//! Scores are f32 or bf16 (the plan's loss fusion hands the loss a model's bf16 logits as
//! stored); the math is f32. The ONNX op's outputs have the scores' type, so bf16 scores take
//! it to the host; `ai.adaptc::SoftmaxCrossEntropyLoss` always writes f32. The gradient is
//! written in its `to` type (f32 or bf16).

use adaptc_ir::DataType;

use super::{done, dptr, host, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, per_row};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::ops::OpCtx;

/// Reduction of the loss: 0 none, 1 sum, 2 mean.
fn reduction(c: &OpCtx) -> DevResult<i32> {
    match c.string("reduction").as_deref().unwrap_or("mean") {
        "none" => Ok(0),
        "sum" => Ok(1),
        "mean" => Ok(2),
        other => Err(KernelError::Invalid(format!("reduction must be none, sum or mean, got {other}")).into()),
    }
}

/// Per-row losses and weights of `scores [N, C]` with `labels [N]`.
struct Rows {
    loss: cudarc::driver::CudaSlice<u8>,
    weight: cudarc::driver::CudaSlice<u8>,
    n: usize,
}

fn rows(gpu: &Gpu, c: &OpCtx, scores: &CudaValue, labels: &CudaValue, weights: Option<&CudaValue>) -> DevResult<Rows> {
    let kernel = match scores.dtype() {
        DataType::Float => "xent_rows_f32",
        DataType::BFloat16 => "xent_rows_bf16",
        other => return host(format!("{other} scores (the device reads f32 or bf16)")),
    };
    if scores.shape().len() != 2 {
        return host("scores of rank other than 2");
    }
    let (n, classes) = (scores.shape()[0], scores.shape()[1]);
    if labels.dtype() != DataType::Int64 || labels.shape() != [n] {
        return host("labels that are not int64 [N]");
    }
    if let Some(w) = weights {
        want_f32(w)?;
        if w.shape() != [classes] {
            return Err(KernelError::Invalid(format!("weights must be [{classes}], got {:?}", w.shape())).into());
        }
    }
    let (loss, _) = output(gpu, vec![n], DataType::Float)?;
    let (weight, _) = output(gpu, vec![n], DataType::Float)?;
    if n > 0 {
        let wp = match weights {
            Some(w) => dptr(gpu, w)?,
            None => 0u64,
        };
        let (has_ignore, ignore) = match c.node.attr("ignore_index") {
            Some(_) => (1i32, c.int("ignore_index", 0)),
            None => (0i32, 0i64),
        };
        let (sp, lp, op, wo) =
            (dptr(gpu, scores)?, dptr(gpu, labels)?, addr(&loss, &gpu.stream), addr(&weight, &gpu.stream));
        let (r, cc) = (n as i64, classes as i64);
        let flag = gpu.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let ep = addr(&*flag, &gpu.stream);
        launch!(gpu, kernel, per_row(n), &sp, &lp, &wp, &op, &wo, &r, &cc, &ignore, &has_ignore, &ep)?;
    }
    Ok(Rows { loss, weight, n })
}

/// One block summing `a` (and `w`): `out = Σa / Σw` (mean) or `Σa`.
fn finish(
    gpu: &Gpu,
    a: &cudarc::driver::CudaSlice<u8>,
    w: &cudarc::driver::CudaSlice<u8>,
    n: usize,
    mean: bool,
) -> DevResult<cudarc::driver::CudaSlice<u8>> {
    let (out, _) = output(gpu, vec![1], DataType::Float)?;
    let (ap, wp, op, r, m) =
        (addr(a, &gpu.stream), addr(w, &gpu.stream), addr(&out, &gpu.stream), n as i64, i32::from(mean));
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
    launch!(gpu, "xent_finish_f32", cfg, &ap, &wp, &op, &r, &m)?;
    Ok(out)
}

/// ONNX SoftmaxCrossEntropyLoss: outputs in the scores' type (f32 on the device).
pub fn softmax_cross_entropy(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    want_f32(req(i, 0)?)?;
    softmax_cross_entropy_f32(gpu, c, i)
}

/// `ai.adaptc::SoftmaxCrossEntropyLoss`: f32 outputs from f32 or bf16 scores.
pub fn softmax_cross_entropy_f32(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (scores, labels) = (req(i, 0)?, req(i, 1)?);
    let red = reduction(c)?;
    let want_log_prob = c.node.outputs().get(1).is_some_and(|o| !o.is_empty());
    if want_log_prob {
        want_f32(scores)?;
    }
    let r = rows(gpu, c, scores, labels, opt(i, 2))?;
    let loss = match red {
        0 => done(r.loss, vec![r.n], DataType::Float),
        _ => done(finish(gpu, &r.loss, &r.weight, r.n, red == 2)?, vec![], DataType::Float),
    };
    let mut outs = vec![loss];
    if want_log_prob {
        let (lp, shape) = output(gpu, scores.shape().to_vec(), DataType::Float)?;
        let (n, classes) = (scores.shape()[0] as i64, scores.shape()[1] as i64);
        if n > 0 {
            let (sp, yp, log) = (dptr(gpu, scores)?, addr(&lp, &gpu.stream), 1i32);
            launch!(gpu, "softmax_f32", per_row(n as usize), &sp, &yp, &n, &classes, &log)?;
        }
        outs.push(done(lp, shape, DataType::Float));
    }
    Ok(outs)
}

pub fn softmax_cross_entropy_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (dloss, scores, labels) = (req(i, 0)?, req(i, 1)?, req(i, 2)?);
    want_f32(dloss)?;
    let red = reduction(c)?;
    let r = rows(gpu, c, scores, labels, opt(i, 3))?;
    let by_row = i32::from(red == 0);
    if (red == 0 && dloss.numel() != r.n) || (red != 0 && dloss.numel() != 1) {
        return Err(KernelError::Invalid(format!("dloss of shape {:?} does not match the loss", dloss.shape())).into());
    }
    let wsum = if red == 2 { Some(finish(gpu, &r.weight, &r.weight, r.n, false)?) } else { None };
    let out = match c.node.attr("to").map(|_| c.int("to", 0)) {
        None => scores.dtype(),
        Some(code) => match i32::try_from(code).ok().and_then(DataType::from_code) {
            Some(d) => d,
            None => return Err(KernelError::Invalid(format!("`to` is not a type code: {code}")).into()),
        },
    };
    let kernel = match (scores.dtype(), out) {
        (DataType::Float, DataType::Float) => "xent_grad_f32",
        (DataType::Float, DataType::BFloat16) => "xent_grad_f32_bf16",
        (DataType::BFloat16, DataType::Float) => "xent_grad_bf16_f32",
        (DataType::BFloat16, DataType::BFloat16) => "xent_grad_bf16",
        (s, o) => return host(format!("a {o} gradient of {s} scores")),
    };
    let (dx, shape) = output(gpu, scores.shape().to_vec(), out)?;
    if r.n > 0 {
        let wsp = wsum.as_ref().map_or(0u64, |w| addr(w, &gpu.stream));
        let (dl, sp, lp, wp, xp) = (
            dptr(gpu, dloss)?,
            dptr(gpu, scores)?,
            dptr(gpu, labels)?,
            addr(&r.weight, &gpu.stream),
            addr(&dx, &gpu.stream),
        );
        let (n, classes) = (r.n as i64, scores.shape()[1] as i64);
        launch!(gpu, kernel, per_row(r.n), &dl, &sp, &lp, &wp, &wsp, &xp, &n, &classes, &by_row)?;
    }
    Ok(vec![done(dx, shape, out)])
}
