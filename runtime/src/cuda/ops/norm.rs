//! LayerNormalization and its gradient, over the dims from `axis` on, with a scale (and
//! bias) of one value per normalised element.

use adaptc_ir::DataType;

use super::{done, dptr, host, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, per_column_tile, per_row};
use crate::cuda::value::CudaValue;
use crate::ops::util::axis;
use crate::ops::OpCtx;

/// (rows, cols, axis) of a layer norm of `x` whose parameters have `cols` elements each.
fn geometry(c: &OpCtx, x: &CudaValue, params: &[&CudaValue]) -> DevResult<(usize, usize, usize)> {
    let rank = x.shape().len();
    if rank == 0 {
        return host("a scalar layer norm");
    }
    let ax = axis(c.int("axis", -1), rank)?;
    let cols: usize = x.shape()[ax..].iter().product();
    if params.iter().any(|p| p.numel() != cols) {
        return host("a scale or bias that broadcasts");
    }
    Ok((x.numel() / cols.max(1), cols, ax))
}

pub fn layer_norm(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (x, scale, bias) = (req(i, 0)?, req(i, 1)?, opt(i, 2));
    want_f32(x)?;
    want_f32(scale)?;
    let mut params = vec![scale];
    if let Some(b) = bias {
        want_f32(b)?;
        params.push(b);
    }
    let (rows, cols, ax) = geometry(c, x, &params)?;
    if cols == 0 {
        return host("an empty normalised axis");
    }
    let eps = c.float("epsilon", 1e-5);
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Float)?;
    let stat_shape: Vec<usize> = x.shape().iter().enumerate().map(|(d, &n)| if d < ax { n } else { 1 }).collect();
    let (mean, _) = output(gpu, stat_shape.clone(), DataType::Float)?;
    let (invstd, _) = output(gpu, stat_shape.clone(), DataType::Float)?;
    if rows * cols > 0 {
        let bp = match bias {
            Some(b) => dptr(gpu, b)?,
            None => 0u64,
        };
        let (xp, sp, yp) = (dptr(gpu, x)?, dptr(gpu, scale)?, addr(&y, &gpu.stream));
        let (mp, ip, r, cc) = (addr(&mean, &gpu.stream), addr(&invstd, &gpu.stream), rows as i64, cols as i64);
        launch!(gpu, "layer_norm_f32", per_row(rows), &xp, &sp, &bp, &yp, &mp, &ip, &r, &cc, &eps)?;
    }
    Ok(vec![
        done(y, shape, DataType::Float),
        done(mean, stat_shape.clone(), DataType::Float),
        done(invstd, stat_shape, DataType::Float),
    ])
}

pub fn layer_norm_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (dy, x, scale) = (req(i, 0)?, req(i, 1)?, req(i, 2)?);
    want_f32(dy)?;
    want_f32(x)?;
    want_f32(scale)?;
    if dy.shape() != x.shape() {
        return host("dy and x of different shapes");
    }
    let (rows, cols, _) = geometry(c, x, &[scale])?;
    let eps = c.float("epsilon", 1e-5);
    let (dx, shape) = output(gpu, x.shape().to_vec(), DataType::Float)?;
    let (dscale, _) = output(gpu, scale.shape().to_vec(), DataType::Float)?;
    let (dbias, _) = output(gpu, scale.shape().to_vec(), DataType::Float)?;
    let (mean, _) = output(gpu, vec![rows], DataType::Float)?;
    let (invstd, _) = output(gpu, vec![rows], DataType::Float)?;
    if rows * cols > 0 {
        let (dp, xp, sp, dxp) = (dptr(gpu, dy)?, dptr(gpu, x)?, dptr(gpu, scale)?, addr(&dx, &gpu.stream));
        let (mp, ip, r, cc) = (addr(&mean, &gpu.stream), addr(&invstd, &gpu.stream), rows as i64, cols as i64);
        launch!(gpu, "layer_norm_grad_f32", per_row(rows), &dp, &xp, &sp, &dxp, &mp, &ip, &r, &cc, &eps)?;
        let (dsp, dbp) = (addr(&dscale, &gpu.stream), addr(&dbias, &gpu.stream));
        launch!(gpu, "layer_norm_params_grad_f32", per_column_tile(cols), &dp, &xp, &mp, &ip, &dsp, &dbp, &r, &cc)?;
    } else {
        return host("an empty layer norm");
    }
    let sshape = scale.shape().to_vec();
    Ok(vec![
        done(dx, shape, DataType::Float),
        done(dscale, sshape.clone(), DataType::Float),
        done(dbias, sshape, DataType::Float),
    ])
}
