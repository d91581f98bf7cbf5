//! GEMMs through cuBLAS: MatMul (batched, broadcast batch of one side), Gemm, and the
//! gradient forms MatMulTrans (transposed operands, `fold`) and MatMulAddBias.
//!
//! cuBLAS is column-major; a row-major `C[M,N] = A[M,K]·B[K,N]` is the column-major
//! `Cᵀ = Bᵀ·Aᵀ`, so every call passes B first and swaps the dims.

use adaptc_ir::DataType;
use cudarc::cublas::sys::cublasOperation_t;

use super::{done, dptr, host, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, elementwise as grid, DevError};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::ops::util::broadcast_shapes;
use crate::ops::OpCtx;

/// One (batched) row-major product: `C[b] = op(A[b]) · op(B[b])` (+ `beta·C[b]`), where
/// `op(A)` is `[m, k]` (A stored `[k, m]` when `ta`) and `op(B)` is `[k, n]` (stored `[n, k]`
/// when `tb`). Strides are in elements, 0 to reuse one matrix for every batch entry.
#[derive(Clone, Copy, Debug)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    batch: usize,
    stride_a: usize,
    stride_b: usize,
    alpha: f32,
    beta: f32,
}

fn run_gemm(gpu: &Gpu, g: Gemm, a: u64, b: u64, c: u64) -> DevResult<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    if g.k == 0 {
        return host("an empty inner dimension");
    }
    let dim =
        |v: usize| i32::try_from(v).map_err(|_| DevError::Host(format!("a GEMM dim of {v} (cuBLAS takes 32-bit)")));
    let (m, n, k) = (dim(g.m)?, dim(g.n)?, dim(g.k)?);
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    // Column-major view: first operand B (ld = its stored row length), second A.
    // cuBLAS wants leading dims ≥ 1 even when k = 0 (then C = beta·C).
    let ldb = (if g.tb { k } else { n }).max(1);
    let lda = (if g.ta { m } else { k }).max(1);
    let (alpha, beta) = (g.alpha, g.beta);
    // SAFETY: a, b, c are live device buffers of at least batch × matrix elements (the callers
    // size them from the same shapes), and the handle is bound to the backend's stream.
    let r = unsafe {
        cudarc::cublas::result::sgemm_strided_batched(
            *gpu.blas.handle(),
            op(g.tb),
            op(g.ta),
            n,
            m,
            k,
            &alpha,
            b as *const f32,
            ldb,
            g.stride_b as i64,
            a as *const f32,
            lda,
            g.stride_a as i64,
            &beta,
            c as *mut f32,
            n,
            (g.m * g.n) as i64,
            dim(g.batch)?,
        )
    };
    r.map_err(|e| DevError::Device(format!("cuBLAS sgemm: {e:?}")))
}

/// Batch geometry of `a[..., M, K] × b[..., K, N]` after broadcasting the batch dims: the
/// output batch shape, the batch count and each side's batch stride (0 when it broadcasts).
fn batches(
    abatch: &[usize],
    bbatch: &[usize],
    amat: usize,
    bmat: usize,
) -> DevResult<(Vec<usize>, usize, usize, usize)> {
    let batch = broadcast_shapes(&[abatch, bbatch])?;
    let count: usize = batch.iter().product();
    let stride = |own: &[usize], mat: usize| -> DevResult<usize> {
        let n: usize = own.iter().product();
        if n == 1 {
            Ok(0)
        } else if own.len() == batch.len() && own == batch.as_slice() {
            Ok(mat)
        } else {
            host("a batch that broadcasts along some dims only")
        }
    };
    Ok((batch.clone(), count, stride(abatch, amat)?, stride(bbatch, bmat)?))
}

/// `a · b` (numpy matmul semantics for rank ≥ 2), operands optionally read transposed.
fn product(gpu: &Gpu, a: &CudaValue, b: &CudaValue, ta: bool, tb: bool) -> DevResult<(CudaValue, Vec<usize>)> {
    want_f32(a)?;
    want_f32(b)?;
    let (ash, bsh) = (a.shape(), b.shape());
    if ash.len() < 2 || bsh.len() < 2 {
        return host("a 1-D operand");
    }
    let (ar, ac) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (br, bc) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(KernelError::Invalid(format!("inner dimensions differ: {ash:?} × {bsh:?}")).into());
    }
    let (abatch, bbatch) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
    let (batch, count, sa, sb) = batches(abatch, bbatch, ar * ac, br * bc)?;
    let mut shape = batch;
    shape.extend([m, n]);
    let (y, shape) = output(gpu, shape, DataType::Float)?;
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    // A 2-D right operand under a batched left one is one tall GEMM.
    let g = if sb == 0 && !ta && sa != 0 {
        Gemm { m: m * count, n, k, ta, tb, batch: 1, stride_a: 0, stride_b: 0, alpha: 1.0, beta: 0.0 }
    } else {
        Gemm { m, n, k, ta, tb, batch: count, stride_a: sa, stride_b: sb, alpha: 1.0, beta: 0.0 }
    };
    run_gemm(gpu, g, ap, bp, yp)?;
    let v = done(y, shape.clone(), DataType::Float);
    Ok((v, shape))
}

pub fn matmul(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    Ok(vec![product(gpu, req(i, 0)?, req(i, 1)?, false, false)?.0])
}

fn flag(c: &OpCtx, name: &str) -> DevResult<bool> {
    match c.int(name, 0) {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(KernelError::Invalid(format!("attribute {name} must be 0 or 1, got {v}")).into()),
    }
}

pub fn matmul_trans(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    let (ta, tb, fold) = (flag(c, "transA")?, flag(c, "transB")?, flag(c, "fold")?);
    if !fold {
        return Ok(vec![product(gpu, a, b, ta, tb)?.0]);
    }
    want_f32(a)?;
    want_f32(b)?;
    let (ash, bsh) = (a.shape(), b.shape());
    if !ta || tb || ash.len() < 2 || bsh.len() < 2 || ash[..ash.len() - 1] != bsh[..bsh.len() - 1] {
        return Err(KernelError::Invalid(format!(
            "fold=1 needs transA=1, transB=0 and a [..., M, K], b [..., M, N]; got {ash:?} and {bsh:?}"
        ))
        .into());
    }
    // Σ over every leading dim and row of aᵀ·b: one GEMM of a viewed [P, K] (transposed) and
    // b viewed [P, N].
    let p: usize = ash[..ash.len() - 1].iter().product();
    let (k, n) = (ash[ash.len() - 1], bsh[bsh.len() - 1]);
    let (y, shape) = output(gpu, vec![k, n], DataType::Float)?;
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    if p == 0 {
        return host("an empty fold");
    }
    run_gemm(
        gpu,
        Gemm { m: k, n, k: p, ta: true, tb: false, batch: 1, stride_a: 0, stride_b: 0, alpha: 1.0, beta: 0.0 },
        ap,
        bp,
        yp,
    )?;
    Ok(vec![done(y, shape, DataType::Float)])
}

/// Fills every row of a fresh `[rows, n]` buffer with `bias`, for a GEMM to accumulate onto.
fn bias_rows(gpu: &Gpu, bias: &CudaValue, rows: usize, n: usize) -> DevResult<cudarc::driver::CudaSlice<u8>> {
    let (y, _) = output(gpu, vec![rows, n], DataType::Float)?;
    let total = rows * n;
    if total > 0 {
        let (bp, yp, r, c) = (dptr(gpu, bias)?, addr(&y, &gpu.stream), rows as i64, n as i64);
        launch!(gpu, "fill_rows_f32", grid(total), &bp, &yp, &r, &c)?;
    }
    Ok(y)
}

pub fn matmul_add_bias(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, w, bias) = (req(i, 0)?, req(i, 1)?, req(i, 2)?);
    want_f32(a)?;
    want_f32(w)?;
    want_f32(bias)?;
    let r = a.shape().len();
    if w.shape().len() != 2 || r < 2 || a.shape()[r - 1] != w.shape()[0] || bias.shape() != [w.shape()[1]] {
        return host("a bias or weight of another form");
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let rows: usize = a.shape()[..r - 1].iter().product();
    let y = bias_rows(gpu, bias, rows, n)?;
    let (ap, wp, yp) = (dptr(gpu, a)?, dptr(gpu, w)?, addr(&y, &gpu.stream));
    run_gemm(
        gpu,
        Gemm { m: rows, n, k, ta: false, tb: false, batch: 1, stride_a: 0, stride_b: 0, alpha: 1.0, beta: 1.0 },
        ap,
        wp,
        yp,
    )?;
    let mut shape = a.shape()[..r - 1].to_vec();
    shape.push(n);
    Ok(vec![done(y, shape, DataType::Float)])
}

/// ONNX Gemm: `alpha·op(A)·op(B) + beta·C` with 2-D A, B and a C that is absent, a scalar-free
/// row `[N]`/`[1, N]`, or a full `[M, N]`.
pub fn gemm(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    want_f32(a)?;
    want_f32(b)?;
    if a.shape().len() != 2 || b.shape().len() != 2 {
        return Err(
            KernelError::Invalid(format!("Gemm takes 2-D operands, got {:?} and {:?}", a.shape(), b.shape())).into()
        );
    }
    let (ta, tb) = (flag(c, "transA")?, flag(c, "transB")?);
    let (alpha, beta) = (c.float("alpha", 1.0), c.float("beta", 1.0));
    let (m, k) = if ta { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
    let (k2, n) = if tb { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
    if k != k2 {
        return Err(KernelError::Invalid(format!("inner dimensions differ: {:?} × {:?}", a.shape(), b.shape())).into());
    }
    let (y, beta) = match opt(i, 2) {
        None => (output(gpu, vec![m, n], DataType::Float)?.0, 0.0),
        Some(cv) => {
            want_f32(cv)?;
            if cv.shape() == [n] || cv.shape() == [1, n] {
                (bias_rows(gpu, cv, m, n)?, beta)
            } else if cv.shape() == [m, n] {
                let (mut y, _) = output(gpu, vec![m, n], DataType::Float)?;
                gpu.stream.memcpy_dtod(cv.device(gpu)?.as_ref(), &mut y).map_err(DevError::from)?;
                (y, beta)
            } else {
                return host(format!("a C of shape {:?}", cv.shape()));
            }
        }
    };
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    run_gemm(gpu, Gemm { m, n, k, ta, tb, batch: 1, stride_a: 0, stride_b: 0, alpha, beta }, ap, bp, yp)?;
    Ok(vec![done(y, vec![m, n], DataType::Float)])
}
