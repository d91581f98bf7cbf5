//! `ai.adaptc::SoftmaxAttention` and `SoftmaxAttentionGrad` on the device (the spec is the CPU
//! kernel's, `ops::fused_attention`): "blocked cuBLAS". The query rows are taken in blocks of
//! `rows`, every (batch) product at once, so the scores live only in a scratch of
//! `products × rows × N` f32 (at most [`SCRATCH_BYTES`] per buffer, and at least one row).
//!
//! Forward, per block: `S = a_blk·b` (one strided-batched GEMM), one kernel
//! (`attn_probs_f32`: bias added, each row's log-Σ-exp written to `lse`, the probabilities
//! written over the scores), then `y_blk = P·v` (GEMM into the rows of `y`).
//!
//! Backward, per block: `S = a_blk·b` and `dP = dy_blk·vᵀ` (GEMMs), one kernel
//! (`attn_grad_probs_f32`: `P = exp(S + bias − lse)` over the scores, `δ = Σ dy ⊙ y` per row and
//! `dS = P ⊙ (dP − δ)` over dP), then `da_blk = dS·bᵀ`, `db += a_blkᵀ·dS` and `dv += Pᵀ·dy_blk`
//! (GEMMs; the first block writes `db` and `dv` with beta 0, later ones add with beta 1, so
//! they need no zeroing).
//!
//! With `products="bf16"` (set by `autocast`) and a head size of 32 or 64 on sm_80 or newer,
//! the op takes the fused flash kernels instead (`flash.rs`); otherwise every GEMM here runs on
//! bf16 tensor cores from the f32 buffers (`Gemm::bf16_operands`), the kernels unchanged: the
//! CPU kernel rounds the same operands.
//!
//! Covered: f32 operands, `a`, `b`, `v` with the same batch dims, a bias of any shape that
//! broadcasts to the scores (or none). With a `to` attribute (written by the plan's
//! `fuse::stored`, which hands the ops bf16 values as stored), `a`, `b`, `v` and `dy` may also
//! be bf16: the flash kernels read them as they are when all of them are, otherwise they are
//! widened to f32 first (exact); the outputs are computed in f32 and take `to`'s types. Other
//! element types, broadcast batch dims and empty operands go to the host (the CPU kernel), as
//! does a bias whose batch dims do not fit a [`Layout`]. `ADAPTC_CUDA_ATTENTION_ROWS` caps the rows per block (the GPU tests use it to
//! run several blocks and a partial last one on small models).

use adaptc_ir::DataType;

use super::elementwise::convert;
use super::flash;
use super::matmul::{run_gemm, Elem, Gemm};
use super::{done, dptr, host, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, broadcast, per_row, Layout};
use crate::cuda::value::{alloc, CudaValue};
use crate::error::KernelError;
use crate::ops::util::broadcast_shapes;
use crate::ops::OpCtx;

/// Bytes of one block's scratch buffer (the scores; the backward has a second one for their
/// gradient).
const SCRATCH_BYTES: usize = 256 << 20;

/// Bytes per element of every buffer here (f32).
const F32: usize = 4;

/// Query rows per block: as many as keep `buffers` scratch buffers of `products × rows × n` f32
/// within `limit` bytes each, at least 1 and at most `m` (and at most `cap`, when given).
fn block_rows(products: usize, m: usize, n: usize, limit: usize, cap: Option<usize>) -> usize {
    let per_row = products.saturating_mul(n).saturating_mul(F32).max(1);
    let rows = (limit / per_row).clamp(1, m.max(1));
    cap.map_or(rows, |c| rows.min(c.max(1)))
}

/// The row blocks `(first row, rows)` that cover `0..m` in order.
fn blocks(m: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m).step_by(rows.max(1)).map(move |r0| (r0, rows.min(m - r0)))
}

/// The rows-per-block cap from `ADAPTC_CUDA_ATTENTION_ROWS`, if set to a number.
fn rows_cap() -> Option<usize> {
    std::env::var("ADAPTC_CUDA_ATTENTION_ROWS").ok().and_then(|v| v.parse().ok())
}

/// The address `elems` f32 elements past `p`.
fn at(p: u64, elems: usize) -> u64 {
    p + (elems * F32) as u64
}

/// How the kernels read the bias: batch point `p`'s offset is `layout`'s operand 0 at `p`,
/// then `rs` per query row and `cs` per key column (0 where it broadcasts).
struct BiasView {
    layout: Layout,
    rs: i64,
    cs: i64,
}

/// The checked shapes of one call.
struct Geometry {
    /// The batch dims, shared by `a`, `b` and `v`.
    batch: Vec<usize>,
    products: usize,
    m: usize,
    k: usize,
    n: usize,
    dv: usize,
    bias: Option<BiasView>,
    /// The products may round their operands to bf16 (`products="bf16"`).
    bf16_products: bool,
}

fn invalid(msg: String) -> DevResult<Geometry> {
    Err(KernelError::Invalid(msg).into())
}

impl Geometry {
    fn new(a: &CudaValue, b: &CudaValue, bias: Option<&CudaValue>, v: &CudaValue) -> DevResult<Geometry> {
        for x in [a, b, v] {
            if !matches!(x.dtype(), DataType::Float | DataType::BFloat16) {
                return host(format!("{} attention operands", x.dtype()));
            }
        }
        if let Some(t) = bias {
            want_f32(t)?;
        }
        let (ash, bsh, vsh) = (a.shape(), b.shape(), v.shape());
        if ash.len() < 2 || bsh.len() < 2 || vsh.len() < 2 {
            return invalid(format!("a, b and v must have rank ≥ 2, got {ash:?}, {bsh:?}, {vsh:?}"));
        }
        let split = |s: &[usize]| (s[..s.len() - 2].to_vec(), s[s.len() - 2], s[s.len() - 1]);
        let ((ab, m, k), (bb, k2, n), (vb, n2, dv)) = (split(ash), split(bsh), split(vsh));
        if k != k2 || n != n2 {
            return invalid(format!("shapes do not chain: a {ash:?} · b {bsh:?} · v {vsh:?}"));
        }
        if ab != bb || ab != vb {
            // Valid when they broadcast (the CPU kernel checks), but not a case covered here.
            return host("attention operands whose batch dims broadcast");
        }
        let products: usize = ab.iter().product();
        if [products, m, k, n, dv].contains(&0) {
            return host("empty attention operands");
        }
        let mut scores = ab.clone();
        scores.extend([m, n]);
        let bias = match bias {
            None => None,
            Some(t) => {
                if broadcast_shapes(&[t.shape(), &scores]).ok().as_deref() != Some(&scores[..]) {
                    return invalid(format!("bias {:?} does not broadcast to the scores {scores:?}", t.shape()));
                }
                let st = broadcast(t.shape(), &scores);
                let r = st.len();
                Some(BiasView { layout: Layout::new(&ab, &[&st[..r - 2]])?, rs: st[r - 2], cs: st[r - 1] })
            }
        };
        Ok(Geometry { batch: ab, products, m, k, n, dv, bias, bf16_products: false })
    }

    /// The batch dims followed by `tail`.
    fn shape(&self, tail: &[usize]) -> Vec<usize> {
        let mut s = self.batch.clone();
        s.extend_from_slice(tail);
        s
    }

    /// The bias's address (0 when absent) and how to read it.
    fn bias_args(&self, gpu: &Gpu, bias: Option<&CudaValue>) -> DevResult<(u64, Layout, i64, i64)> {
        match (bias, &self.bias) {
            (Some(t), Some(bv)) => Ok((dptr(gpu, t)?, bv.layout, bv.rs, bv.cs)),
            _ => Ok((0, Layout::default(), 0, 0)),
        }
    }

    /// The flash kernels' view of this call (operands all f32 or all bf16).
    fn flash_call(
        &self,
        gpu: &Gpu,
        (a, b, bias, v): (&CudaValue, &CudaValue, Option<&CudaValue>, &CudaValue),
        masked_rows_zero: i32,
    ) -> DevResult<flash::Call> {
        Ok(flash::Call {
            bf16: a.dtype() == DataType::BFloat16,
            a: dptr(gpu, a)?,
            b: dptr(gpu, b)?,
            v: dptr(gpu, v)?,
            bias: self.bias_args(gpu, bias)?,
            products: self.products,
            m: self.m,
            n: self.n,
            d: self.k,
            masked_rows_zero,
        })
    }

    /// `S = a_blk · b` for rows `r0 .. r0 + r` of every product, packed into `s`.
    fn scores(&self, gpu: &Gpu, (ap, bp, sp): (u64, u64, u64), (r0, r): (usize, usize)) -> DevResult<()> {
        let (m, k, n) = (self.m, self.k, self.n);
        let g = self.gemm(r, n, k, (false, false), (m * k, k * n, r * n), 0.0);
        run_gemm(gpu, g, at(ap, r0 * k), bp, sp)
    }

    /// An f32 batched GEMM over the products: dims `[m, n, k]`, transposes, strides of A, B, C.
    fn gemm(&self, m: usize, n: usize, k: usize, (ta, tb): (bool, bool), st: (usize, usize, usize), beta: f32) -> Gemm {
        let (stride_a, stride_b, stride_c) = st;
        Gemm {
            elem: Elem::F32,
            m,
            n,
            k,
            ta,
            tb,
            batch: self.products,
            stride_a,
            stride_b,
            stride_c,
            alpha: 1.0,
            beta,
            bf16_operands: self.bf16_products,
        }
    }
}

/// The `products` attribute: `"bf16"` or absent (the CPU kernel's rule).
fn bf16_products(c: &OpCtx) -> DevResult<bool> {
    match c.string("products").as_deref() {
        None => Ok(false),
        Some("bf16") => Ok(true),
        Some(other) => {
            Err(KernelError::Invalid(format!("attribute products must be \"bf16\" when given, got {other:?}")).into())
        }
    }
}

fn masked_rows_zero(c: &OpCtx) -> DevResult<i32> {
    match c.int("masked_rows_zero", 0) {
        v @ (0 | 1) => Ok(v as i32),
        v => Err(KernelError::Invalid(format!("attribute masked_rows_zero must be 0 or 1, got {v}")).into()),
    }
}

/// The output types the `to` attribute gives (one `Cast` code per output), if any.
fn output_types(c: &OpCtx, outputs: usize) -> DevResult<Option<Vec<DataType>>> {
    let Some(codes) = c.node.attr("to").and_then(|a| a.as_ints()) else { return Ok(None) };
    let types: Option<Vec<DataType>> =
        codes.iter().map(|&code| i32::try_from(code).ok().and_then(DataType::from_code)).collect();
    match types {
        Some(t) if t.len() == outputs => Ok(Some(t)),
        _ => Err(KernelError::Invalid(format!("attribute to must give {outputs} type codes, got {codes:?}")).into()),
    }
}

/// The operands as the kernels read them: as they are when they share one type (f32, or bf16
/// for the flash kernels), otherwise (or for the blocked path) every one widened to f32, as
/// the CPU kernel widens them. Without `to`, operands must be f32 (the host kernel gives the
/// outputs of other types).
fn operands(gpu: &Gpu, typed: bool, flash: bool, xs: &[&CudaValue]) -> DevResult<Vec<CudaValue>> {
    let bf16 = xs.iter().all(|x| x.dtype() == DataType::BFloat16);
    if !typed && xs.iter().any(|x| x.dtype() != DataType::Float) {
        return host("attention operands other than f32 without output types");
    }
    let to = if bf16 && flash { DataType::BFloat16 } else { DataType::Float };
    xs.iter().map(|x| convert(gpu, x, to)).collect()
}

/// The f32 result `y` as `types[k]` asks (as it is without `to`).
fn typed(gpu: &Gpu, y: CudaValue, types: &Option<Vec<DataType>>, k: usize) -> DevResult<CudaValue> {
    match types.as_ref().and_then(|t| t.get(k)) {
        Some(&t) if t != y.dtype() => convert(gpu, &y, t),
        _ => Ok(y),
    }
}

pub fn softmax_attention(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b, bias, v) = (req(i, 0)?, req(i, 1)?, opt(i, 2), req(i, 3)?);
    let zero = masked_rows_zero(c)?;
    let types = output_types(c, 1)?;
    let g = Geometry { bf16_products: bf16_products(c)?, ..Geometry::new(a, b, bias, v)? };
    let (m, n, dv, products) = (g.m, g.n, g.dv, g.products);
    let flash = flash::applies(gpu, g.bf16_products, g.k, dv);
    let ops = operands(gpu, types.is_some(), flash, &[a, b, v])?;
    let (a, b, v) = (&ops[0], &ops[1], &ops[2]);
    let (y, yshape) = output(gpu, g.shape(&[m, dv]), DataType::Float)?;
    let (lse, lshape) = output(gpu, g.shape(&[m]), DataType::Float)?;
    if flash {
        let call = g.flash_call(gpu, (a, b, bias, v), zero)?;
        call.forward(gpu, addr(&y, &gpu.stream), addr(&lse, &gpu.stream))?;
        let y = typed(gpu, done(y, yshape, DataType::Float), &types, 0)?;
        return Ok(vec![y, done(lse, lshape, DataType::Float)]);
    }
    let rows = block_rows(products, m, n, SCRATCH_BYTES, rows_cap());
    let s = alloc(gpu, DataType::Float, products * rows * n)?;
    let (ap, bp, vp) = (dptr(gpu, a)?, dptr(gpu, b)?, dptr(gpu, v)?);
    let (biasp, bl, brs, bcs) = g.bias_args(gpu, bias)?;
    let (sp, yp, lp) = (addr(&s, &gpu.stream), addr(&y, &gpu.stream), addr(&lse, &gpu.stream));
    let (pi, mi, ni) = (products as i64, m as i64, n as i64);
    for (r0, r) in blocks(m, rows) {
        g.scores(gpu, (ap, bp, sp), (r0, r))?;
        let (ri, r0i) = (r as i64, r0 as i64);
        let cfg = per_row(products * r);
        launch!(gpu, "attn_probs_f32", cfg, &sp, &biasp, &bl, &brs, &bcs, &lp, &pi, &ri, &mi, &r0i, &ni, &zero)?;
        // y rows r0 .. r0 + r of every product = P · v.
        run_gemm(gpu, g.gemm(r, dv, n, (false, false), (r * n, n * dv, m * dv), 0.0), sp, vp, at(yp, r0 * dv))?;
    }
    let y = typed(gpu, done(y, yshape, DataType::Float), &types, 0)?;
    Ok(vec![y, done(lse, lshape, DataType::Float)])
}

pub fn softmax_attention_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b, bias, v) = (req(i, 0)?, req(i, 1)?, opt(i, 2), req(i, 3)?);
    let (y, lse, dy) = (req(i, 4)?, req(i, 5)?, req(i, 6)?);
    let zero = masked_rows_zero(c)?;
    for x in [y, lse] {
        want_f32(x)?;
    }
    let types = output_types(c, 3)?;
    let g = Geometry { bf16_products: bf16_products(c)?, ..Geometry::new(a, b, bias, v)? };
    let (m, k, n, dv, products) = (g.m, g.k, g.n, g.dv, g.products);
    let flash = flash::applies(gpu, g.bf16_products, k, dv);
    let ops = operands(gpu, types.is_some(), flash, &[a, b, v, dy])?;
    let (a, b, v, dy) = (&ops[0], &ops[1], &ops[2], &ops[3]);
    let count = |tail: &[usize]| crate::tensor::numel(&g.shape(tail));
    if Some(y.numel()) != count(&[m, dv]) || dy.shape() != y.shape() || Some(lse.numel()) != count(&[m]) {
        let (ys, ls, ds) = (y.shape(), lse.shape(), dy.shape());
        return Err(KernelError::Invalid(format!(
            "y {ys:?}, lse {ls:?} and dy {ds:?} do not match the forward's shapes"
        ))
        .into());
    }
    let (da, dashape) = output(gpu, a.shape().to_vec(), DataType::Float)?;
    let (db, dbshape) = output(gpu, b.shape().to_vec(), DataType::Float)?;
    let (dvv, dvshape) = output(gpu, v.shape().to_vec(), DataType::Float)?;
    let outputs = |da, db, dvv| -> DevResult<Vec<CudaValue>> {
        Ok(vec![
            typed(gpu, done(da, dashape, DataType::Float), &types, 0)?,
            typed(gpu, done(db, dbshape, DataType::Float), &types, 1)?,
            typed(gpu, done(dvv, dvshape, DataType::Float), &types, 2)?,
        ])
    };
    if flash {
        let call = g.flash_call(gpu, (a, b, bias, v), zero)?;
        let delta = alloc(gpu, DataType::Float, products * m)?;
        let ins = (dptr(gpu, y)?, dptr(gpu, lse)?, dptr(gpu, dy)?);
        let s = &gpu.stream;
        call.backward(gpu, ins, addr(&delta, s), (addr(&da, s), addr(&db, s), addr(&dvv, s)))?;
        return outputs(da, db, dvv);
    }
    let rows = block_rows(products, m, n, SCRATCH_BYTES, rows_cap());
    let s = alloc(gpu, DataType::Float, products * rows * n)?;
    let dp = alloc(gpu, DataType::Float, products * rows * n)?;
    let (ap, bp, vp) = (dptr(gpu, a)?, dptr(gpu, b)?, dptr(gpu, v)?);
    let (yp, lp, dyp) = (dptr(gpu, y)?, dptr(gpu, lse)?, dptr(gpu, dy)?);
    let (biasp, bl, brs, bcs) = g.bias_args(gpu, bias)?;
    let (sp, dpp) = (addr(&s, &gpu.stream), addr(&dp, &gpu.stream));
    let (dap, dbp, dvp) = (addr(&da, &gpu.stream), addr(&db, &gpu.stream), addr(&dvv, &gpu.stream));
    let (pi, mi, ni, dvi) = (products as i64, m as i64, n as i64, dv as i64);
    for (r0, r) in blocks(m, rows) {
        g.scores(gpu, (ap, bp, sp), (r0, r))?;
        // dP = dy_blk · vᵀ.
        run_gemm(gpu, g.gemm(r, n, dv, (false, true), (m * dv, n * dv, r * n), 0.0), at(dyp, r0 * dv), vp, dpp)?;
        let (ri, r0i) = (r as i64, r0 as i64);
        launch!(
            gpu,
            "attn_grad_probs_f32",
            per_row(products * r),
            &sp,
            &dpp,
            &biasp,
            &bl,
            &brs,
            &bcs,
            &lp,
            &yp,
            &dyp,
            &pi,
            &ri,
            &mi,
            &r0i,
            &ni,
            &dvi,
            &zero
        )?;
        // da rows r0 .. r0 + r = dS · bᵀ; db (+)= a_blkᵀ · dS; dv (+)= Pᵀ · dy_blk.
        run_gemm(gpu, g.gemm(r, k, n, (false, true), (r * n, k * n, m * k), 0.0), dpp, bp, at(dap, r0 * k))?;
        let beta = if r0 == 0 { 0.0 } else { 1.0 };
        run_gemm(gpu, g.gemm(k, n, r, (true, false), (m * k, r * n, k * n), beta), at(ap, r0 * k), dpp, dbp)?;
        run_gemm(gpu, g.gemm(n, dv, r, (true, false), (r * n, m * dv, n * dv), beta), sp, at(dyp, r0 * dv), dvp)?;
    }
    outputs(da, db, dvv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Storage, Tensor};

    #[test]
    fn blocks_respect_the_scratch_bound_and_cover_every_row() {
        let limits = [1usize, 4, 1000, 4096, 1 << 20, SCRATCH_BYTES];
        for products in [1usize, 3, 48, 1024] {
            for m in [1usize, 7, 64, 100, 4097] {
                for n in [1usize, 16, 513] {
                    for limit in limits {
                        for cap in [None, Some(0), Some(5), Some(10_000)] {
                            let rows = block_rows(products, m, n, limit, cap);
                            assert!((1..=m).contains(&rows), "rows {rows} of {m}");
                            let bytes = products * rows * n * F32;
                            assert!(rows == 1 || bytes <= limit, "{products}×{rows}×{n} f32 over {limit} bytes");
                            if let Some(c) = cap {
                                assert!(rows <= c.max(1));
                            }
                            // The largest block within the bound, unless capped.
                            if cap.is_none() && rows < m {
                                assert!(products * (rows + 1) * n * F32 > limit);
                            }
                            let mut next = 0;
                            for (r0, r) in blocks(m, rows) {
                                assert_eq!(r0, next, "blocks in order, without gaps or overlap");
                                assert!((1..=rows).contains(&r));
                                next = r0 + r;
                            }
                            assert_eq!(next, m, "every row covered");
                        }
                    }
                }
            }
        }
        // A BERT-base step (48 products of 512 keys): every query row at once.
        assert_eq!(block_rows(48, 512, 512, SCRATCH_BYTES, None), 512);
        // 4 × 32 heads of 8192 keys: 8192 · 4 B · 128 = 4 MiB per row, so 64 rows.
        assert_eq!(block_rows(128, 8192, 8192, SCRATCH_BYTES, None), 64);
        // Blocks of 5 over 16 rows: 5, 5, 5 and a partial 1.
        assert_eq!(blocks(16, 5).collect::<Vec<_>>(), [(0, 5), (5, 5), (10, 5), (15, 1)]);
        assert_eq!(blocks(0, 5).count(), 0);
    }

    fn value(shape: &[usize], dtype: DataType) -> CudaValue {
        let n = shape.iter().product();
        let data = Storage::zeros(dtype, n).expect("a numeric type");
        CudaValue::from_host(Tensor::new(shape.to_vec(), data).expect("matching count"))
    }

    fn f(shape: &[usize]) -> CudaValue {
        value(shape, DataType::Float)
    }

    /// What the device covers, what goes to the host and what is an error — decided from
    /// shapes and types alone (no device needed).
    #[test]
    fn geometry_covers_same_batch_f32_and_any_broadcast_bias() {
        let (a, b, v) = (f(&[2, 3, 5, 4]), f(&[2, 3, 4, 6]), f(&[2, 3, 6, 7]));
        let g = Geometry::new(&a, &b, None, &v).expect("covered");
        assert_eq!((g.products, g.m, g.k, g.n, g.dv), (6, 5, 4, 6, 7));
        assert_eq!(g.shape(&[5]), [2, 3, 5]);
        // A padding mask [B, 1, 1, N]: per batch entry, not per head or row.
        let bias = f(&[2, 1, 1, 6]);
        let bv = Geometry::new(&a, &b, Some(&bias), &v).expect("covered").bias.expect("a bias");
        assert_eq!((bv.rs, bv.cs), (0, 1));
        assert_eq!(bv.layout, Layout::new(&[2, 3], &[&[6, 0]]).expect("a layout"));
        // A causal mask [M, N] shared by every product, a per-row bias [B, 1, M, 1].
        let bv = Geometry::new(&a, &b, Some(&f(&[5, 6])), &v).expect("covered").bias.expect("a bias");
        assert_eq!((bv.rs, bv.cs, bv.layout), (6, 1, Layout::new(&[2, 3], &[&[0, 0]]).expect("a layout")));
        let bv = Geometry::new(&a, &b, Some(&f(&[2, 1, 5, 1])), &v).expect("covered").bias.expect("a bias");
        assert_eq!((bv.rs, bv.cs), (1, 0));
        // To the host: other types, broadcast batch dims, empty operands.
        let host_cases = [
            Geometry::new(&value(&[2, 3, 5, 4], DataType::Double), &b, None, &v),
            Geometry::new(&a, &b, Some(&value(&[2, 1, 1, 6], DataType::Float16)), &v),
            Geometry::new(&f(&[1, 3, 5, 4]), &b, None, &v),
            Geometry::new(&a, &f(&[3, 4, 6]), None, &v),
            Geometry::new(&f(&[2, 3, 0, 4]), &b, None, &v),
        ];
        for r in host_cases {
            assert!(matches!(r, Err(DevError::Host(_))), "{:?}", r.err());
        }
        // Errors, as the CPU kernel gives them: shapes that do not chain, a bias that does not
        // broadcast, rank 1.
        let errors = [
            Geometry::new(&a, &f(&[2, 3, 5, 6]), None, &v),
            Geometry::new(&a, &b, None, &f(&[2, 3, 5, 7])),
            Geometry::new(&a, &b, Some(&f(&[2, 1, 2, 6])), &v),
            Geometry::new(&f(&[4]), &b, None, &v),
        ];
        for r in errors {
            assert!(matches!(r, Err(DevError::Kernel(_))), "{:?}", r.err());
        }
    }

    use crate::cuda::launch::DevError;

    #[test]
    fn kernels_are_entry_points() {
        for name in ["attn_probs_f32", "attn_grad_probs_f32"] {
            assert!(crate::cuda::ENTRY_POINTS.contains(&name));
        }
    }
}
