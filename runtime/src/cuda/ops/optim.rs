//! The optimizer inside the graph on the device: `ai.adaptc::ClipGradNorm` (one double
//! accumulator, a sum-of-squares launch per gradient, a one-thread finish) and
//! `ai.adaptc::AdamW` (one elementwise launch into new buffers). The step's scalars (`scale`,
//! the coefficients `k`) are read by the kernels from device memory, never by the host. The CPU
//! kernels in `crate::ops::optim` are the reference: AdamW agrees bit for bit, the norm within
//! the order of an f64 sum.

use adaptc_ir::DataType;

use super::{done, dptr, launch, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, elementwise, DevError, BLOCK};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::ops::optim::ADAMW_COEFFICIENTS;
use crate::ops::OpCtx;

/// At most this many blocks per sum-of-squares launch (each adds its sum atomically into one
/// double, so more blocks than the device runs at once would only queue on that address).
const SUMSQ_BLOCKS: usize = 1024;

/// The sum-of-squares launch over `n` elements.
fn sumsq_config(n: usize) -> cudarc::driver::LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, SUMSQ_BLOCKS) as u32;
    cudarc::driver::LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// The CPU kernel's error for invalid inputs.
fn invalid(msg: String) -> DevError {
    KernelError::Invalid(msg).into()
}

/// `ClipGradNorm(g₁, …, gₙ) → (norm, scale)`: f32 gradients only (others go to the host).
pub fn clip_grad_norm(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let max_norm = c.has("max_norm").then(|| c.float("max_norm", f32::INFINITY));
    if max_norm.is_some_and(|m| m.is_nan() || m <= 0.0) {
        return Err(invalid(format!("max_norm must be > 0, got {max_norm:?}")));
    }
    let grads: Vec<&CudaValue> = i.iter().copied().flatten().collect();
    for g in &grads {
        want_f32(g)?;
    }
    let acc = gpu.stream.alloc_zeros::<f64>(1)?;
    let ap = addr(&acc, &gpu.stream);
    for g in grads {
        let n = g.numel();
        if n == 0 {
            continue;
        }
        let (gp, n64) = (dptr(gpu, g)?, n as i64);
        launch!(gpu, "sumsq_f64", sumsq_config(n), &gp, &n64, &ap)?;
    }
    let (norm, shape) = output(gpu, vec![], DataType::Float)?;
    let (scale, _) = output(gpu, vec![], DataType::Float)?;
    let (np, sp) = (addr(&norm, &gpu.stream), addr(&scale, &gpu.stream));
    let (max, has_max) = (max_norm.unwrap_or(0.0), i32::from(max_norm.is_some()));
    let one = cudarc::driver::LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    launch!(gpu, "clip_finish", one, &ap, &np, &sp, &max, &has_max)?;
    Ok(vec![done(norm, shape.clone(), DataType::Float), done(scale, shape, DataType::Float)])
}

/// `AdamW(p, g, m, v, scale, k) → (p′, m′, v′)`: all f32 (others go to the host).
pub fn adamw(gpu: &Gpu, _c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (p, g, m, v, scale, k) = (req(i, 0)?, req(i, 1)?, req(i, 2)?, req(i, 3)?, req(i, 4)?, req(i, 5)?);
    for t in [p, g, m, v, scale, k] {
        want_f32(t)?;
    }
    for (what, t) in [("gradient", g), ("first moment", m), ("second moment", v)] {
        if t.shape() != p.shape() {
            return Err(invalid(format!("the {what} has shape {:?}, the parameter {:?}", t.shape(), p.shape())));
        }
    }
    if scale.numel() != 1 || k.numel() != ADAMW_COEFFICIENTS {
        return Err(invalid(format!(
            "expects one scale and {ADAMW_COEFFICIENTS} coefficients, got {} and {}",
            scale.numel(),
            k.numel()
        )));
    }
    let (p_out, shape) = output(gpu, p.shape().to_vec(), DataType::Float)?;
    let (m_out, _) = output(gpu, p.shape().to_vec(), DataType::Float)?;
    let (v_out, _) = output(gpu, p.shape().to_vec(), DataType::Float)?;
    let n = p.numel();
    if n > 0 {
        let (pp, gp, mp, vp, sp, kp) =
            (dptr(gpu, p)?, dptr(gpu, g)?, dptr(gpu, m)?, dptr(gpu, v)?, dptr(gpu, scale)?, dptr(gpu, k)?);
        let (po, mo, vo) = (addr(&p_out, &gpu.stream), addr(&m_out, &gpu.stream), addr(&v_out, &gpu.stream));
        let n64 = n as i64;
        launch!(gpu, "adamw_f32", elementwise(n), &pp, &gp, &mp, &vp, &sp, &kp, &po, &mo, &vo, &n64)?;
    }
    Ok(vec![
        done(p_out, shape.clone(), DataType::Float),
        done(m_out, shape.clone(), DataType::Float),
        done(v_out, shape, DataType::Float),
    ])
}
