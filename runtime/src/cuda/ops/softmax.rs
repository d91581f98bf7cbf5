//! Softmax and LogSoftmax over the last axis (or ONNX's pre-13 flattened form), the fused
//! `AddSoftmax` of attention masks, and SoftmaxGrad.

use adaptc_ir::DataType;

use super::elementwise::run_binary;
use super::{done, dptr, host, launch, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, per_row};
use crate::cuda::value::CudaValue;
use crate::ops::util::axis;
use crate::ops::OpCtx;

/// (rows, cols) of the softmax of `shape` under the node's axis rule, or a host fallback when
/// the axis is not the innermost one.
fn rows_cols(c: &OpCtx, shape: &[usize]) -> DevResult<(usize, usize)> {
    let rank = shape.len();
    if rank == 0 {
        return host("a scalar softmax");
    }
    let numel: usize = shape.iter().product();
    if c.opset < 13 {
        let ax = axis(c.int("axis", 1), rank)?;
        let cols: usize = shape[ax..].iter().product();
        return Ok((numel / cols.max(1), cols));
    }
    let ax = axis(c.int("axis", -1), rank)?;
    if shape[ax + 1..].iter().product::<usize>() != 1 {
        return host("a softmax axis that is not the innermost");
    }
    Ok((numel / shape[ax].max(1), shape[ax]))
}

fn run_softmax(gpu: &Gpu, x: &CudaValue, (rows, cols): (usize, usize), log: bool) -> DevResult<CudaValue> {
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Float)?;
    if rows * cols > 0 {
        let (xp, yp, r, cc, lg) = (dptr(gpu, x)?, addr(&y, &gpu.stream), rows as i64, cols as i64, i32::from(log));
        launch!(gpu, "softmax_f32", per_row(rows), &xp, &yp, &r, &cc, &lg)?;
    }
    Ok(done(y, shape, DataType::Float))
}

pub fn softmax(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    want_f32(x)?;
    let log = c.node.op().op_type == "LogSoftmax";
    Ok(vec![run_softmax(gpu, x, rows_cols(c, x.shape())?, log)?])
}

/// `Softmax(Add(a, b))`: the add (broadcasting the mask) then the softmax, two launches.
pub fn add_softmax(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    want_f32(a)?;
    want_f32(b)?;
    let shape = crate::ops::util::broadcast_shapes(&[a.shape(), b.shape()])?;
    let rc = rows_cols(c, &shape)?;
    let sum = run_binary(gpu, "binary_f32", 0, (a, b), DataType::Float)?;
    Ok(vec![run_softmax(gpu, &sum, rc, false)?])
}

pub fn softmax_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (dy, y) = (req(i, 0)?, req(i, 1)?);
    want_f32(dy)?;
    want_f32(y)?;
    if dy.shape() != y.shape() {
        return host("dy and y of different shapes");
    }
    let rank = y.shape().len();
    if rank == 0 || axis(c.int("axis", -1), rank)? != rank - 1 {
        return host("a softmax axis that is not the last");
    }
    let cols = y.shape()[rank - 1];
    let rows = y.numel() / cols.max(1);
    let (dx, shape) = output(gpu, y.shape().to_vec(), DataType::Float)?;
    if rows * cols > 0 {
        let (dp, yp, xp, r, cc) = (dptr(gpu, dy)?, dptr(gpu, y)?, addr(&dx, &gpu.stream), rows as i64, cols as i64);
        launch!(gpu, "softmax_grad_f32", per_row(rows), &dp, &yp, &xp, &r, &cc)?;
    }
    Ok(vec![done(dx, shape, DataType::Float)])
}
