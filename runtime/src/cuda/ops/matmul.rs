//! GEMMs through cuBLAS: MatMul (batched, broadcast batch of one side), Gemm, and the
//! gradient forms MatMulTrans (transposed operands, `fold`) and MatMulAddBias.
//!
//! cuBLAS is column-major; a row-major `C[M,N] = A[M,K]·B[K,N]` is the column-major
//! `Cᵀ = Bᵀ·Aᵀ`, so every call passes B first and swaps the dims.
//!
//! Element types ([`Elem`]): f32, and bf16 for `autocast`'d graphs. Every operand and the
//! result share one type; products accumulate in f32 and a bf16 result is rounded once, the
//! semantics of the CPU kernels (`ops::matmul::in_f32`). Mixed types go to the host.

use adaptc_ir::DataType;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cublasStatus_t, cudaDataType};

use super::{common_dtype, done, dptr, host, launch, opt, output, req, DevResult, Gpu};
use crate::cuda::launch::{addr, elementwise as grid, DevError};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::ops::util::broadcast_shapes;
use crate::ops::OpCtx;

/// The element type of a GEMM's operands and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Elem {
    F32,
    BF16,
}

impl Elem {
    /// The one element type of `vals`, if the GEMMs take it; otherwise the host decides
    /// (other types, or mixed ones, which the CPU kernel widens or refuses).
    fn of(vals: &[&CudaValue]) -> DevResult<Elem> {
        match common_dtype(vals)? {
            DataType::Float => Ok(Elem::F32),
            DataType::BFloat16 => Ok(Elem::BF16),
            other => host(format!("GEMMs over {other}")),
        }
    }

    fn dtype(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::BF16 => DataType::BFloat16,
        }
    }

    /// cuBLAS's name for the storage type (the compute type is always f32).
    fn cuda(self) -> cudaDataType {
        match self {
            Elem::F32 => cudaDataType::CUDA_R_32F,
            Elem::BF16 => cudaDataType::CUDA_R_16BF,
        }
    }

    /// The kernel that fills rows with a bias of this type.
    fn fill_rows(self) -> &'static str {
        match self {
            Elem::F32 => "fill_rows_f32",
            Elem::BF16 => "fill_rows_bf16",
        }
    }
}

/// One (batched) row-major product: `C[b] = op(A[b]) · op(B[b])` (+ `beta·C[b]`), where
/// `op(A)` is `[m, k]` (A stored `[k, m]` when `ta`) and `op(B)` is `[k, n]` (stored `[n, k]`
/// when `tb`). Every matrix is dense (rows of its stored length, one after another); strides
/// between batch entries are in elements, 0 for A or B to reuse one matrix for every entry,
/// and `stride_c` is `m·n` for packed results (more to write row blocks of taller matrices;
/// unused when `batch` is 1). `elem` is the type of A, B and C (`alpha`, `beta` are f32
/// either way). `bf16_operands` (f32 storage only) lets cuBLAS round A and B to bf16 and use
/// the tensor cores (`CUBLAS_COMPUTE_32F_FAST_16BF`), accumulating in f32: what an op marked
/// `products="bf16"` by `autocast` allows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Gemm {
    pub elem: Elem,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bf16_operands: bool,
}

impl Gemm {
    /// One (unbatched) product `C = alpha·op(A)·op(B) + beta·C`.
    pub(super) fn single(elem: Elem, [m, n, k]: [usize; 3], (ta, tb): (bool, bool), alpha: f32, beta: f32) -> Gemm {
        Gemm {
            elem,
            m,
            n,
            k,
            ta,
            tb,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            alpha,
            beta,
            bf16_operands: false,
        }
    }
}

/// The arguments of `cublasGemmStridedBatchedEx` for a row-major [`Gemm`]: cuBLAS computes
/// the column-major `C' = op(first)·op(second)`, and a row-major `C = op(A)·op(B)` stored as
/// is reads as `Cᵀ = op(B)ᵀ·op(A)ᵀ` column-major, so B comes first, the dims swap (`rows` =
/// n, `cols` = m) and each operand keeps its own transpose flag. Kept apart from the call so
/// the mapping is tested without a GPU against cuBLAS's documented semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ColumnMajor {
    /// Whether the first operand (B) and the second (A) are read transposed.
    pub trans_first: bool,
    pub trans_second: bool,
    pub rows: i32,
    pub cols: i32,
    pub inner: i32,
    pub ld_first: i32,
    pub ld_second: i32,
    pub ld_c: i32,
    pub stride_first: i64,
    pub stride_second: i64,
    pub stride_c: i64,
    pub batch: i32,
}

impl ColumnMajor {
    /// `None` when a dim exceeds cuBLAS's 32-bit range.
    pub(super) fn of(g: &Gemm) -> Option<ColumnMajor> {
        let dim = |v: usize| i32::try_from(v).ok();
        let (m, n, k) = (dim(g.m)?, dim(g.n)?, dim(g.k)?);
        Some(ColumnMajor {
            trans_first: g.tb,
            trans_second: g.ta,
            rows: n,
            cols: m,
            inner: k,
            // A stored row is a column here: its length is the leading dim. cuBLAS wants
            // leading dims ≥ 1 even when k = 0 (then C = beta·C).
            ld_first: (if g.tb { k } else { n }).max(1),
            ld_second: (if g.ta { m } else { k }).max(1),
            ld_c: n.max(1),
            stride_first: g.stride_b as i64,
            stride_second: g.stride_a as i64,
            stride_c: g.stride_c as i64,
            batch: dim(g.batch)?,
        })
    }
}

/// Runs `g` on device addresses `a`, `b`, `c` (byte addresses of the first elements).
pub(super) fn run_gemm(gpu: &Gpu, g: Gemm, a: u64, b: u64, c: u64) -> DevResult<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    if g.k == 0 {
        return host("an empty inner dimension");
    }
    let Some(cm) = ColumnMajor::of(&g) else {
        return host(format!("a GEMM of {}×{}×{} in {} batches (cuBLAS takes 32-bit dims)", g.m, g.n, g.k, g.batch));
    };
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let (alpha, beta) = (g.alpha, g.beta);
    let t = g.elem.cuda();
    let fast = g.bf16_operands && g.elem == Elem::F32;
    let compute =
        if fast { cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF } else { cublasComputeType_t::CUBLAS_COMPUTE_32F };
    // SAFETY: a, b, c are live device buffers of at least batch × matrix elements of `g.elem`
    // (the callers size them from the same shapes and type), alpha and beta are f32 as
    // CUBLAS_COMPUTE_32F requires, and the handle is bound to the backend's stream.
    let r = unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *gpu.blas.handle(),
            op(cm.trans_first),
            op(cm.trans_second),
            cm.rows,
            cm.cols,
            cm.inner,
            (&alpha as *const f32).cast(),
            b as *const std::ffi::c_void,
            t,
            cm.ld_first,
            cm.stride_first,
            a as *const std::ffi::c_void,
            t,
            cm.ld_second,
            cm.stride_second,
            (&beta as *const f32).cast(),
            c as *mut std::ffi::c_void,
            t,
            cm.ld_c,
            cm.stride_c,
            cm.batch,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    match r {
        // A device without bf16 tensor cores runs the product exactly, in f32.
        Err(e) if fast && is_unsupported(e.0) => run_gemm(gpu, Gemm { bf16_operands: false, ..g }, a, b, c),
        r => r.map_err(|e| gemm_error(g.elem, e.0)),
    }
}

/// A failed GEMM: a bf16 GEMM the device cannot run (bf16 needs sm_80 or newer) goes to the
/// host, whose result is the same; anything else is a device failure.
fn is_unsupported(status: cublasStatus_t) -> bool {
    matches!(status, cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED | cublasStatus_t::CUBLAS_STATUS_ARCH_MISMATCH)
}

fn gemm_error(elem: Elem, status: cublasStatus_t) -> DevError {
    use cublasStatus_t::{CUBLAS_STATUS_ARCH_MISMATCH, CUBLAS_STATUS_NOT_SUPPORTED};
    match status {
        CUBLAS_STATUS_NOT_SUPPORTED | CUBLAS_STATUS_ARCH_MISMATCH if elem != Elem::F32 => {
            DevError::Host(format!("{} GEMMs on this device (cuBLAS: {status:?})", elem.dtype()))
        }
        _ => DevError::Device(format!("cuBLAS gemm ({}): {status:?}", elem.dtype())),
    }
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
    let elem = Elem::of(&[a, b])?;
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
    let (y, shape) = output(gpu, shape, elem.dtype())?;
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    // A 2-D right operand under a batched left one is one tall GEMM.
    let g = if sb == 0 && !ta && sa != 0 {
        Gemm::single(elem, [m * count, n, k], (ta, tb), 1.0, 0.0)
    } else {
        let stride_c = m * n;
        Gemm {
            elem,
            m,
            n,
            k,
            ta,
            tb,
            batch: count,
            stride_a: sa,
            stride_b: sb,
            stride_c,
            alpha: 1.0,
            beta: 0.0,
            bf16_operands: false,
        }
    };
    run_gemm(gpu, g, ap, bp, yp)?;
    let v = done(y, shape.clone(), elem.dtype());
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
    let elem = Elem::of(&[a, b])?;
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
    let (y, shape) = output(gpu, vec![k, n], elem.dtype())?;
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    if p == 0 {
        return host("an empty fold");
    }
    run_gemm(gpu, Gemm::single(elem, [k, n, p], (true, false), 1.0, 0.0), ap, bp, yp)?;
    Ok(vec![done(y, shape, elem.dtype())])
}

/// Fills every row of a fresh `[rows, n]` buffer of `elem` with `bias` (of the same type), for
/// a GEMM to accumulate onto.
fn bias_rows(
    gpu: &Gpu,
    elem: Elem,
    bias: &CudaValue,
    rows: usize,
    n: usize,
) -> DevResult<cudarc::driver::CudaSlice<u8>> {
    let (y, _) = output(gpu, vec![rows, n], elem.dtype())?;
    let total = rows * n;
    if total > 0 {
        let (bp, yp, r, c) = (dptr(gpu, bias)?, addr(&y, &gpu.stream), rows as i64, n as i64);
        launch!(gpu, elem.fill_rows(), grid(total), &bp, &yp, &r, &c)?;
    }
    Ok(y)
}

pub fn matmul_add_bias(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, w, bias) = (req(i, 0)?, req(i, 1)?, req(i, 2)?);
    let elem = Elem::of(&[a, w, bias])?;
    let r = a.shape().len();
    if w.shape().len() != 2 || r < 2 || a.shape()[r - 1] != w.shape()[0] || bias.shape() != [w.shape()[1]] {
        return host("a bias or weight of another form");
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let rows: usize = a.shape()[..r - 1].iter().product();
    let y = bias_rows(gpu, elem, bias, rows, n)?;
    let (ap, wp, yp) = (dptr(gpu, a)?, dptr(gpu, w)?, addr(&y, &gpu.stream));
    run_gemm(gpu, Gemm::single(elem, [rows, n, k], (false, false), 1.0, 1.0), ap, wp, yp)?;
    let mut shape = a.shape()[..r - 1].to_vec();
    shape.push(n);
    Ok(vec![done(y, shape, elem.dtype())])
}

/// ONNX Gemm: `alpha·op(A)·op(B) + beta·C` with 2-D A, B and a C that is absent, a scalar-free
/// row `[N]`/`[1, N]`, or a full `[M, N]`.
pub fn gemm(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    let elem = match opt(i, 2) {
        Some(cv) => Elem::of(&[a, b, cv])?,
        None => Elem::of(&[a, b])?,
    };
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
        None => (output(gpu, vec![m, n], elem.dtype())?.0, 0.0),
        Some(cv) => {
            if cv.shape() == [n] || cv.shape() == [1, n] {
                (bias_rows(gpu, elem, cv, m, n)?, beta)
            } else if cv.shape() == [m, n] {
                let (mut y, _) = output(gpu, vec![m, n], elem.dtype())?;
                gpu.stream.memcpy_dtod(cv.device(gpu)?.as_ref(), &mut y).map_err(DevError::from)?;
                (y, beta)
            } else {
                return host(format!("a C of shape {:?}", cv.shape()));
            }
        }
    };
    let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
    let g = Gemm::single(elem, [m, n, k], (ta, tb), alpha, beta);
    run_gemm(gpu, g, ap, bp, yp)?;
    Ok(vec![done(y, vec![m, n], elem.dtype())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Storage, Tensor};

    fn value(dtype: DataType) -> CudaValue {
        let data = Storage::zeros(dtype, 4).expect("a numeric type");
        CudaValue::from_host(Tensor::new(vec![2, 2], data).expect("4 elements"))
    }

    /// f32 and bf16 GEMMs run on the device; other or mixed types are the host's to widen or
    /// refuse, never a device error.
    #[test]
    fn gemm_element_types() {
        let (f, h, d) = (value(DataType::Float), value(DataType::BFloat16), value(DataType::Double));
        assert_eq!(Elem::of(&[&f, &f]).ok(), Some(Elem::F32));
        assert_eq!(Elem::of(&[&h, &h, &h]).ok(), Some(Elem::BF16));
        for mixed in [vec![&h, &f], vec![&f, &f, &h], vec![&d, &d], vec![]] {
            assert!(matches!(Elem::of(&mixed), Err(DevError::Host(_))));
        }
        assert_eq!((Elem::BF16.dtype(), Elem::BF16.fill_rows()), (DataType::BFloat16, "fill_rows_bf16"));
        assert!(crate::cuda::ENTRY_POINTS.contains(&Elem::BF16.fill_rows()));
    }

    /// cuBLAS's `gemm_strided_batched` as its documentation defines it, column-major:
    /// `C[b][i + j·ldc] = alpha·Σ_l op(A)[i, l]·op(B)[l, j] + beta·C`, where
    /// `op(X)[i, l]` is `X[i + l·ldx]`, or `X[l + i·ldx]` transposed.
    fn cublas_reference(cm: &ColumnMajor, a: &[f64], b: &[f64], c: &mut [f64], alpha: f64, beta: f64) {
        let (m, n, k) = (cm.rows as usize, cm.cols as usize, cm.inner as usize);
        let at = |x: &[f64], base: usize, ld: usize, t: bool, i: usize, l: usize| {
            if t {
                x[base + l + i * ld]
            } else {
                x[base + i + l * ld]
            }
        };
        for batch in 0..cm.batch as usize {
            let (ba, bb, bc) =
                (batch * cm.stride_first as usize, batch * cm.stride_second as usize, batch * cm.stride_c as usize);
            for j in 0..n {
                for i in 0..m {
                    let mut sum = 0.0;
                    for l in 0..k {
                        let x = at(a, ba, cm.ld_first as usize, cm.trans_first, i, l);
                        sum += x * at(b, bb, cm.ld_second as usize, cm.trans_second, l, j);
                    }
                    let slot = &mut c[bc + i + j * cm.ld_c as usize];
                    *slot = alpha * sum + beta * *slot;
                }
            }
        }
    }

    /// The row-major product the [`Gemm`] describes, computed directly: `C[b] = alpha·op(A[b])
    /// ·op(B[b]) + beta·C[b]`.
    fn row_major(g: &Gemm, a: &[f64], b: &[f64], c: &mut [f64]) {
        for batch in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut sum = 0.0;
                    for l in 0..g.k {
                        let x = if g.ta {
                            a[batch * g.stride_a + l * g.m + i]
                        } else {
                            a[batch * g.stride_a + i * g.k + l]
                        };
                        let y = if g.tb {
                            b[batch * g.stride_b + j * g.k + l]
                        } else {
                            b[batch * g.stride_b + l * g.n + j]
                        };
                        sum += x * y;
                    }
                    let slot = &mut c[batch * g.stride_c + i * g.n + j];
                    *slot = f64::from(g.alpha) * sum + f64::from(g.beta) * *slot;
                }
            }
        }
    }

    /// Every transpose combination, batched with and without a shared operand, with beta, and
    /// row blocks of a taller result (`stride_c` beyond m·n): the arguments `run_gemm` hands
    /// cuBLAS compute the row-major product.
    #[test]
    fn column_major_arguments_compute_the_row_major_product() {
        let mut seed = 7u64;
        let mut rand = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) % 19) as f64 - 9.0
                })
                .collect()
        };
        let (m, n, k) = (5, 3, 4);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (batch, share_a, share_b, stride_c, beta) in [
                (1, false, false, 0, 0.0),
                (3, false, false, m * n, 0.0),
                (3, true, false, m * n, 1.0),
                (2, false, true, m * n + 6, 0.5),
            ] {
                let g = Gemm {
                    elem: Elem::F32,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    batch,
                    stride_a: if share_a { 0 } else { m * k },
                    stride_b: if share_b { 0 } else { k * n },
                    stride_c,
                    alpha: 1.5,
                    beta,
                    bf16_operands: false,
                };
                let (a, b) = (rand(batch * m * k), rand(batch * k * n));
                let c0 = rand(batch.max(1) * (stride_c.max(m * n)) + m * n);
                let (mut want, mut got) = (c0.clone(), c0);
                row_major(&g, &a, &b, &mut want);
                let cm = ColumnMajor::of(&g).unwrap();
                cublas_reference(&cm, &b, &a, &mut got, f64::from(g.alpha), f64::from(g.beta));
                assert_eq!(got, want, "ta {ta} tb {tb} batch {batch} shared {share_a}/{share_b} stride_c {stride_c}");
            }
        }
        let huge = Gemm::single(Elem::F32, [1 << 31, 2, 2], (false, false), 1.0, 0.0);
        assert!(ColumnMajor::of(&huge).is_none());
    }

    #[test]
    fn unsupported_bf16_gemms_go_to_the_host() {
        let unsupported = cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED;
        assert!(matches!(gemm_error(Elem::BF16, unsupported), DevError::Host(_)));
        assert!(matches!(gemm_error(Elem::F32, unsupported), DevError::Device(_)));
        assert!(matches!(gemm_error(Elem::BF16, cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED), DevError::Device(_)));
    }
}
