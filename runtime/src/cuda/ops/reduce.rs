//! Reductions: ReduceSum/Mean/Max/Min/SumSquare over any axes, SumToShape (the broadcast
//! gradient) and ReduceGrad (its inverse: broadcasting back, scaled for a mean).

use adaptc_ir::DataType;

use super::{done, dptr, host, host_ints, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, contiguous, elementwise as grid, per_column_tile, per_row, Layout};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::ops::util::axes;
use crate::ops::OpCtx;

/// Reduction kinds of `reduce_f32` (0 sum, 1 max, 2 min, 3 sum of squares).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum = 0,
    Max = 1,
    Min = 2,
    SumSquare = 3,
}

/// Reduces `x` over the dims flagged in `reduced`, scaling by `scale`; the result has `x`'s
/// shape with reduced dims set to 1.
fn reduce_dims(
    gpu: &Gpu,
    x: &CudaValue,
    reduced: &[bool],
    kind: Kind,
    scale: f32,
) -> DevResult<(cudarc::driver::CudaSlice<u8>, Vec<usize>)> {
    want_f32(x)?;
    let shape = x.shape();
    let own = contiguous(shape);
    let kept_shape: Vec<usize> = shape.iter().zip(reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
    let nout: usize = kept_shape.iter().product();
    let nred: usize = shape.iter().zip(reduced).filter(|&(_, &r)| r).map(|(&d, _)| d).product();
    if nred == 0 {
        return host("an empty reduction");
    }
    let (y, out_shape) = output(gpu, kept_shape.clone(), DataType::Float)?;
    if nout == 0 {
        return Ok((y, out_shape));
    }
    let (xp, yp) = (dptr(gpu, x)?, addr(&y, &gpu.stream));
    // Leading dims reduced, trailing kept: column sums with coalesced reads.
    let split = reduced.iter().rposition(|&r| r).map_or(0, |p| p + 1);
    let leading = reduced[..split].iter().zip(shape).all(|(&r, &d)| r || d == 1);
    if kind == Kind::Sum && leading && nout >= 32 {
        let (rows, cols) = (nred as i64, nout as i64);
        launch!(gpu, "colsum_f32", per_column_tile(nout), &xp, &yp, &rows, &cols, &scale)?;
        return Ok((y, out_shape));
    }
    let kst: Vec<i64> = own.iter().zip(reduced).map(|(&s, &r)| if r { 0 } else { s }).collect();
    let kshape: Vec<usize> = kept_shape.clone();
    let keep = Layout::new(&kshape, &[&kst, &contiguous(&kept_shape)])?;
    let rshape: Vec<usize> = shape.iter().zip(reduced).map(|(&d, &r)| if r { d } else { 1 }).collect();
    let red = Layout::new(&rshape, &[&own])?;
    let (code, nout_i, nred_i) = (kind as i32, nout as i64, nred as i64);
    launch!(gpu, "reduce_f32", per_row(nout), &code, &keep, &red, &xp, &yp, &nout_i, &nred_i, &scale)?;
    Ok((y, out_shape))
}

pub fn reduce(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let op = c.node.op().op_type.as_str();
    let (kind, mean, since) = match op {
        "ReduceSum" => (Kind::Sum, false, 13),
        "ReduceMean" => (Kind::Sum, true, 18),
        "ReduceMax" => (Kind::Max, false, 18),
        "ReduceMin" => (Kind::Min, false, 18),
        "ReduceSumSquare" => (Kind::SumSquare, false, 18),
        other => return host(format!("no device reduction for {other}")),
    };
    let rank = x.shape().len();
    let list = if c.opset >= since {
        match opt(i, 1) {
            Some(a) => Some(host_ints(gpu, a)?),
            None => None,
        }
    } else {
        c.ints("axes")
    };
    let red: Vec<usize> = match list {
        Some(l) if !l.is_empty() => axes(&l, rank)?,
        _ if c.int("noop_with_empty_axes", 0) != 0 => Vec::new(),
        _ => (0..rank).collect(),
    };
    if red.is_empty() {
        return host("a reduction over no axes");
    }
    let reduced: Vec<bool> = (0..rank).map(|d| red.contains(&d)).collect();
    let count: usize = red.iter().map(|&a| x.shape()[a]).product();
    let scale = if mean { 1.0 / count.max(1) as f32 } else { 1.0 };
    let (y, kept) = reduce_dims(gpu, x, &reduced, kind, scale)?;
    let shape = if c.int("keepdims", 1) != 0 {
        kept
    } else {
        x.shape().iter().enumerate().filter(|(d, _)| !reduced[*d]).map(|(_, &n)| n).collect()
    };
    Ok(vec![done(y, shape, DataType::Float)])
}

pub fn sum_to_shape(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let dy = req(i, 0)?;
    let target: Vec<usize> = host_ints(gpu, req(i, 1)?)?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| KernelError::Invalid(format!("negative dim {d} in the target shape"))))
        .collect::<Result<_, _>>()?;
    if dy.shape() == target.as_slice() {
        return Ok(vec![dy.reshaped(target)?]);
    }
    let rank = dy.shape().len();
    if target.len() > rank {
        return Err(KernelError::Invalid(format!("shape {target:?} does not broadcast to {:?}", dy.shape())).into());
    }
    let pad = rank - target.len();
    let mut reduced = vec![false; rank];
    for d in 0..rank {
        let t = if d < pad { 1 } else { target[d - pad] };
        let f = dy.shape()[d];
        if t == f {
            continue;
        }
        if t != 1 {
            return Err(KernelError::Invalid(format!("shape {target:?} does not broadcast to {:?}", dy.shape())).into());
        }
        reduced[d] = true;
    }
    let (y, _) = reduce_dims(gpu, dy, &reduced, Kind::Sum, 1.0)?;
    Ok(vec![done(y, target, DataType::Float)])
}

pub fn reduce_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let dy = req(i, 0)?;
    want_f32(dy)?;
    let x_shape: Vec<usize> = host_ints(gpu, req(i, 1)?)?.iter().map(|&d| d.max(0) as usize).collect();
    let rank = x_shape.len();
    let listed = c.ints("axes").unwrap_or_default();
    let reduced: Vec<bool> = if listed.is_empty() {
        vec![c.int("noop_with_empty_axes", 0) == 0; rank]
    } else {
        let ax = axes(&listed, rank)?;
        (0..rank).map(|d| ax.contains(&d)).collect()
    };
    let kept_shape: Vec<usize> = x_shape.iter().zip(&reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
    if dy.numel() != kept_shape.iter().product::<usize>() {
        return Err(
            KernelError::Invalid(format!("dy of shape {:?} does not match reducing {x_shape:?}", dy.shape())).into()
        );
    }
    let count: usize = x_shape.iter().zip(&reduced).filter(|&(_, &r)| r).map(|(&d, _)| d).product();
    let scale = if c.int("mean", 0) != 0 && count > 0 { 1.0 / count as f32 } else { 1.0 };
    // dy read with the kept shape's strides, 0 along reduced dims.
    let kst = contiguous(&kept_shape);
    let xst: Vec<i64> = kst.iter().zip(&reduced).map(|(&s, &r)| if r { 0 } else { s }).collect();
    let (y, shape) = output(gpu, x_shape, DataType::Float)?;
    let n = crate::tensor::numel(&shape).unwrap_or(0);
    if n > 0 {
        let l = Layout::new(&shape, &[&xst, &contiguous(&shape)])?;
        let (dp, yp, zero, n_i) = (dptr(gpu, dy)?, addr(&y, &gpu.stream), 0i64, n as i64);
        launch!(gpu, "copy_b4", grid(n), &l, &dp, &zero, &yp, &zero, &n_i)?;
        if scale != 1.0 {
            let (code, b) = (18i32, 0.0f32);
            launch!(gpu, "unary_f32", grid(n), &code, &yp, &yp, &n_i, &scale, &b)?;
        }
    }
    Ok(vec![done(y, shape, DataType::Float)])
}
