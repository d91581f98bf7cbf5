//! `ai.adaptc::SoftmaxAttention` and its gradient: the `MatMul → Add(bias) → Softmax →
//! MatMul` core of attention in one op (the `fuse-attention` pass writes it), computed block
//! by block so the `[…, M, N]` scores and probabilities are never stored.
//!
//! `SoftmaxAttention(a, b, bias?, v) → (y, lse)`: `y = softmax(a·b + bias)·v` over the last
//! axis, `a: […, M, K]`, `b: […, K, N]` (the keys already transposed and scaled, as exporters
//! write it), `v: […, N, Dv]`, `bias` broadcasting to `[…, M, N]`; batch dims broadcast like
//! MatMul's. `lse: […, M]` is each row's log-Σ-exp of the scores, kept so the backward can
//! rebuild the probabilities (`p = exp(s − lse)`) instead of reading them back. A row whose
//! scores are all −∞ (fully masked) gives zeros when `masked_rows_zero=1` (the exporters'
//! `IsNaN → Where` guard, fused in) and NaN otherwise (plain softmax).
//!
//! `SoftmaxAttentionGrad(a, b, bias?, v, y, lse, dy) → (da, db, dv)`, with
//! `dP = dy·vᵀ`, `dS = P ⊙ (dP − rowsum(dy ⊙ y))`, `da = dS·bᵀ`, `db = aᵀ·dS`, `dv = Pᵀ·dy`
//! (`rowsum(dP ⊙ P) = rowsum(dy ⊙ y)`: one dot per row instead of a pass over N).
//!
//! Both run [`block_rows`] query rows at a time per (batch) product, products across threads; half
//! types run in f32 ([`in_f32`]).
//!
//! Operands may also mix types (the plan's [`crate::fuse::stored`] hands the ops bf16 values as
//! stored where the graph widened them for the op): every operand is then converted to f32,
//! as the dropped `Cast(to=f32)` would, and the outputs take the types of the `to` attribute (one
//! `Cast` code per output: the forward's `y`, the gradient's `da`, `db`, `dv`; the forward's
//! `lse` is f32). Without `to`, the outputs have the operands' one type.
//!
//! Attribute `products="bf16"` (written by `autocast`) lets every product of the op round its
//! two operands to bf16 — `a·b` and `P·v` in the forward, `dy·vᵀ`, `dS·bᵀ`, `aᵀ·dS`, `Pᵀ·dy`
//! in the backward — as `torch.autocast` runs attention and as cuBLAS's bf16 tensor-core mode
//! does; accumulation, the softmax, `lse`, `δ` and the outputs stay in the op's type.

use rayon::prelude::*;

use adaptc_ir::DataType;

use super::grad::real::{self, Real};
use super::matmul::{gemm_accumulate, gemm_with, in_f32, Mat, View};
use super::util::{broadcast_index, broadcast_shapes, broadcast_strides, checked_numel, strided_index};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Elem, Storage, Tensor};

/// Score elements per thread's block: 64 Ki f32 (256 KiB) stays in L2 next to the operands.
const BLOCK_ELEMENTS: usize = 1 << 16;

/// Query rows computed together: as many as fill [`BLOCK_ELEMENTS`] (short sequences in one
/// block, so each product is two GEMMs), at least 16 (GEMMs too thin to pay otherwise).
fn block_rows(m: usize, n: usize) -> usize {
    (BLOCK_ELEMENTS / n.max(1)).max(16).min(m.max(1))
}

/// The shapes of one call, checked.
struct Dims {
    /// Batch products, and for each the index of the `a`, `b`, `v` matrix it reads.
    ia: Vec<usize>,
    ib: Vec<usize>,
    iv: Vec<usize>,
    /// Offset of each product's bias matrix, and the bias strides along rows and columns.
    bias_off: Vec<usize>,
    bias_rs: usize,
    bias_cs: usize,
    m: usize,
    k: usize,
    n: usize,
    dv: usize,
    batch: Vec<usize>,
}

impl Dims {
    fn new(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, v: &Tensor) -> KResult<Dims> {
        if a.dtype() != b.dtype() || a.dtype() != v.dtype() || bias.is_some_and(|t| t.dtype() != a.dtype()) {
            kbail!("a, b, v and bias must have one element type");
        }
        if a.rank() < 2 || b.rank() < 2 || v.rank() < 2 {
            kbail!("a, b and v must have rank ≥ 2, got {:?}, {:?}, {:?}", a.shape(), b.shape(), v.shape());
        }
        let split = |t: &Tensor| {
            let s = t.shape();
            (s[..s.len() - 2].to_vec(), s[s.len() - 2], s[s.len() - 1])
        };
        let ((ab, m, k), (bb, k2, n), (vb, n2, dv)) = (split(a), split(b), split(v));
        if k != k2 || n != n2 {
            kbail!("shapes do not chain: a {:?} · b {:?} · v {:?}", a.shape(), b.shape(), v.shape());
        }
        let batch = broadcast_shapes(&[&ab, &bb, &vb])?;
        let mut scores = batch.clone();
        scores.extend([m, n]);
        checked_numel(&scores)?;
        let (bias_off, bias_rs, bias_cs) = match bias {
            Some(t) => {
                if broadcast_shapes(&[t.shape(), &scores]).ok().as_deref() != Some(&scores[..]) {
                    kbail!("bias {:?} does not broadcast to the scores {scores:?}", t.shape());
                }
                let st = broadcast_strides(t.shape(), &scores);
                let r = st.len();
                let batch_st = &st[..r - 2];
                let offs = strided_index(&batch, batch_st, 0);
                (offs, st[r - 2], st[r - 1])
            }
            None => (vec![0; batch.iter().product()], 0, 0),
        };
        Ok(Dims {
            ia: broadcast_index(&ab, &batch),
            ib: broadcast_index(&bb, &batch),
            iv: broadcast_index(&vb, &batch),
            bias_off,
            bias_rs,
            bias_cs,
            m,
            k,
            n,
            dv,
            batch,
        })
    }

    fn products(&self) -> usize {
        self.ia.len()
    }
}

/// The forward's operands.
#[derive(Clone, Copy)]
struct Operands<'t, T> {
    a: &'t [T],
    b: &'t [T],
    bias: Option<&'t [T]>,
    v: &'t [T],
}

impl<'t, T: Elem> Operands<'t, T> {
    fn of(a: &'t Tensor, b: &'t Tensor, bias: Option<&'t Tensor>, v: &'t Tensor) -> Operands<'t, T> {
        Operands { a: slice_of(a), b: slice_of(b), bias: bias.map(slice_of), v: slice_of(v) }
    }
}

/// Rows `r0..r0+rows` of product `p`'s scores `a·b + bias` into `s` (`rows × n`).
fn scores<T: Real>(d: &Dims, p: usize, (r0, rows): (usize, usize), x: Operands<T>, s: &mut [T]) {
    let (m, k, n) = (d.m, d.k, d.n);
    let (a, b, bias) = (x.a, x.b, x.bias);
    let av = View { off: d.ia[p] * m * k + r0 * k, rs: k, cs: 1 };
    let bv = View { off: d.ib[p] * k * n, rs: n, cs: 1 };
    // SAFETY: MaybeUninit<T> has T's layout; gemm_with writes every element.
    let out = unsafe { &mut *(s as *mut [T] as *mut [std::mem::MaybeUninit<T>]) };
    gemm_with([rows, n, k], Mat { data: a, view: av }, Mat { data: b, view: bv }, out, false);
    if let Some(bias) = bias {
        for (i, row) in s.chunks_exact_mut(n).enumerate() {
            let base = d.bias_off[p] + (r0 + i) * d.bias_rs;
            if d.bias_cs == 1 {
                // A contiguous bias row (the usual mask): a slice loop, which vectorises.
                row.iter_mut().zip(&bias[base..base + n]).for_each(|(x, &b)| *x += b);
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x += bias[base + j * d.bias_cs];
                }
            }
        }
    }
}

/// The probabilities of a score row from its log-Σ-exp (in place); a fully masked row
/// (`lse = −∞`) becomes zeros, or NaN unless `zero_masked`.
fn probabilities<T: Real>(row: &mut [T], lse: T, zero_masked: bool) {
    if lse == T::c(f64::NEG_INFINITY) {
        let fill = if zero_masked { T::zero() } else { T::c(f64::NAN) };
        row.iter_mut().for_each(|x| *x = fill);
    } else {
        row.iter_mut().for_each(|x| *x = (*x - lse).exp());
    }
}

/// Softmax of a score row in place (one `exp` per element); returns the row's log-Σ-exp
/// (−∞ for a fully masked row, which becomes zeros, or NaN unless `zero_masked`).
fn softmax_row<T: Real>(row: &mut [T], zero_masked: bool) -> T {
    // Vectorising helpers: eight accumulators each (a single running sum or max would chain).
    let mx = real::max(row);
    if mx == T::c(f64::NEG_INFINITY) {
        probabilities(row, mx, zero_masked);
        return mx;
    }
    row.iter_mut().for_each(|x| *x = (*x - mx).exp());
    let sum = real::sum(row);
    let inv = T::one() / sum;
    row.iter_mut().for_each(|x| *x *= inv);
    mx + T::c(sum.to_f64().ln())
}

/// Whether the products round their operands to bf16 (the `products` attribute).
fn bf16_products(c: &OpCtx) -> KResult<bool> {
    match c.string("products").as_deref() {
        None => Ok(false),
        Some("bf16") => Ok(true),
        Some(other) => kbail!("attribute products must be \"bf16\" when given, got {other:?}"),
    }
}

/// Rounds every element to the nearest bf16 (ties to even), in place.
fn round_bf16<T: Real>(x: &mut [T]) {
    x.iter_mut().for_each(|v| *v = T::c(f64::from(half::bf16::from_f32(v.to_f64() as f32).to_f32())));
}

/// `x` rounded to bf16 when `round`, else `x` itself.
fn maybe_rounded<T: Real>(x: &[T], round: bool) -> std::borrow::Cow<'_, [T]> {
    if !round {
        return std::borrow::Cow::Borrowed(x);
    }
    let mut v = x.to_vec();
    round_bf16(&mut v);
    std::borrow::Cow::Owned(v)
}

fn flag(c: &OpCtx) -> KResult<bool> {
    match c.int("masked_rows_zero", 0) {
        0 => Ok(false),
        1 => Ok(true),
        v => kbail!("attribute masked_rows_zero must be 0 or 1, got {v}"),
    }
}

/// The output types the `to` attribute asks for (one `Cast` code per output), if given.
fn output_types(c: &OpCtx, outputs: usize) -> KResult<Option<Vec<DataType>>> {
    let Some(codes) = c.node.attr("to").and_then(|a| a.as_ints()) else { return Ok(None) };
    if codes.len() != outputs {
        kbail!("attribute to must give {outputs} types, got {codes:?}");
    }
    codes.iter().map(|&code| super::util::float_type(code)).collect::<KResult<Vec<_>>>().map(Some)
}

/// Runs `kernel` with operands of mixed types, or with output types the `to` attribute fixes:
/// half-type operands (and, when the types are mixed, every operand) converted to f32, the
/// first outputs cast to `to`'s types, the others (the forward's `lse`) left as computed.
/// `None` when neither applies (the kernel's own path).
fn with_types(c: &OpCtx, i: &Inputs, kernel: KernelFn, typed: usize) -> Option<KResult<Vec<Tensor>>> {
    let run = || -> KResult<Option<Vec<Tensor>>> {
        let types = output_types(c, typed)?;
        let present = i.present();
        let mixed = present.iter().any(|t| t.dtype() != present[0].dtype());
        if types.is_none() && !mixed {
            return Ok(None);
        }
        let wide: Vec<Option<Tensor>> =
            i.0.iter()
                .map(|t| {
                    // Half types widen; with mixed types every operand becomes f32, as the
                    // `Cast(to=f32)` the plan dropped before it gave it.
                    t.map(|t| match t.dtype() {
                        DataType::Float => Ok(t.clone()),
                        DataType::Double if !mixed => Ok(t.clone()),
                        _ => super::cast::cast_to(t, DataType::Float),
                    })
                    .transpose()
                })
                .collect::<KResult<_>>()?;
        let refs: Vec<Option<&Tensor>> = wide.iter().map(Option::as_ref).collect();
        let outs = kernel(c, &Inputs(&refs))?;
        let Some(types) = types else { return Ok(Some(outs)) };
        let cast = outs.iter().enumerate().map(|(k, y)| match types.get(k) {
            Some(&d) => super::cast::cast_to(y, d),
            None => Ok(y.clone()),
        });
        cast.collect::<KResult<Vec<_>>>().map(Some)
    };
    run().transpose()
}

pub fn softmax_attention(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = with_types(c, i, softmax_attention_plain, 1) {
        return r;
    }
    softmax_attention_plain(c, i)
}

/// SoftmaxAttention with operands of one type (and outputs of that type).
fn softmax_attention_plain(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = in_f32(c, i, softmax_attention_plain) {
        return r;
    }
    let (a, b, bias, v) = (i.req(0)?, i.req(1)?, i.opt(2), i.req(3)?);
    let d = Dims::new(a, b, bias, v)?;
    let zero_masked = flag(c)?;
    let round = bf16_products(c)?;
    fn go<T: Real>(d: &Dims, x: Operands<T>, zero: bool, round: bool) -> (Vec<T>, Vec<T>) {
        let (m, n, dv) = (d.m, d.n, d.dv);
        let mut y = vec![T::zero(); d.products() * m * dv];
        let mut lse = vec![T::zero(); d.products() * m];
        let per = |(p, (y, lse)): (usize, (&mut [T], &mut [T]))| {
            let block = block_rows(m, n);
            let mut s = vec![T::zero(); block * n];
            for r0 in (0..m).step_by(block) {
                let rows = block.min(m - r0);
                let s = &mut s[..rows * n];
                scores(d, p, (r0, rows), x, s);
                for (r, row) in s.chunks_exact_mut(n).enumerate() {
                    lse[r0 + r] = softmax_row(row, zero);
                }
                if round {
                    round_bf16(s);
                }
                let pm = Mat { data: &*s, view: View { off: 0, rs: n, cs: 1 } };
                let vm = Mat { data: x.v, view: View { off: d.iv[p] * n * dv, rs: dv, cs: 1 } };
                // SAFETY: MaybeUninit<T> has T's layout; gemm_with writes every element.
                let out = unsafe { &mut *(&mut y[r0 * dv..(r0 + rows) * dv] as *mut [T] as *mut [_]) };
                gemm_with([rows, dv, n], pm, vm, out, false);
            }
        };
        if m * dv > 0 {
            y.par_chunks_mut(m * dv).zip(lse.par_chunks_mut(m)).enumerate().for_each(per);
        }
        (y, lse)
    }
    fn wrapped<T: Real>(d: &Dims, x: Operands<T>, zero: bool, round: bool) -> (Storage, Storage) {
        let (a, b, v) = (maybe_rounded(x.a, round), maybe_rounded(x.b, round), maybe_rounded(x.v, round));
        let (y, lse) = go(d, Operands { a: &a, b: &b, bias: x.bias, v: &v }, zero, round);
        (T::wrap(y), T::wrap(lse))
    }
    let (y, lse) = match a.dtype() {
        DataType::Float => wrapped::<f32>(&d, Operands::of(a, b, bias, v), zero_masked, round),
        DataType::Double => wrapped::<f64>(&d, Operands::of(a, b, bias, v), zero_masked, round),
        other => kbail!("SoftmaxAttention takes f32, f64, f16 or bf16, got {other}"),
    };
    let mut yshape = d.batch.clone();
    yshape.extend([d.m, d.dv]);
    let mut lshape = d.batch.clone();
    lshape.push(d.m);
    Ok(vec![Tensor::from_parts(yshape, y), Tensor::from_parts(lshape, lse)])
}

pub fn softmax_attention_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = with_types(c, i, softmax_attention_grad_plain, 3) {
        return r;
    }
    softmax_attention_grad_plain(c, i)
}

/// SoftmaxAttentionGrad with operands of one type (and gradients of that type).
fn softmax_attention_grad_plain(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = in_f32(c, i, softmax_attention_grad_plain) {
        return r;
    }
    let (a, b, bias, v) = (i.req(0)?, i.req(1)?, i.opt(2), i.req(3)?);
    let (y, lse, dy) = (i.req(4)?, i.req(5)?, i.req(6)?);
    let d = Dims::new(a, b, bias, v)?;
    let zero_masked = flag(c)?;
    let round = bf16_products(c)?;
    let rows = d.products() * d.m;
    if y.numel() != rows * d.dv || dy.shape() != y.shape() || lse.numel() != rows {
        kbail!("y {:?}, lse {:?} and dy {:?} do not match the forward's shapes", y.shape(), lse.shape(), dy.shape());
    }
    if [y.dtype(), lse.dtype(), dy.dtype()].iter().any(|&t| t != a.dtype()) {
        kbail!("y, lse and dy must have a's element type {}", a.dtype());
    }
    /// One product's gradients, accumulated into `da`, `db`, `dv` (its own matrices);
    /// `dyp` is `dy` as the products read it (rounded to bf16 when `round`).
    #[allow(clippy::too_many_arguments)]
    fn product<T: Real>(
        d: &Dims,
        p: usize,
        x: Operands<T>,
        (y, lse, dy, dyp): (&[T], &[T], &[T], &[T]),
        (zero, round): (bool, bool),
        (da, db, dv): (&mut [T], &mut [T], &mut [T]),
    ) {
        let (m, k, n, dvn) = (d.m, d.k, d.n, d.dv);
        let (a, b, v) = (x.a, x.b, x.v);
        let block = block_rows(m, n);
        let cap = block * n;
        let (mut s, mut dp) = (vec![T::zero(); cap], vec![T::zero(); cap]);
        for r0 in (0..m).step_by(block) {
            let rows = block.min(m - r0);
            let (s, dp) = (&mut s[..rows * n], &mut dp[..rows * n]);
            scores(d, p, (r0, rows), x, s);
            let row0 = p * m + r0;
            for (r, row) in s.chunks_exact_mut(n).enumerate() {
                probabilities(row, lse[row0 + r], zero);
            }
            // dP = dy·vᵀ (vᵀ: element (j, c) of v's [N, Dv] read transposed).
            let dym = Mat { data: dyp, view: View { off: row0 * dvn, rs: dvn, cs: 1 } };
            let vt = Mat { data: v, view: View { off: d.iv[p] * n * dvn, rs: 1, cs: dvn } };
            // SAFETY: MaybeUninit<T> has T's layout; gemm_with writes every element.
            gemm_with([rows, n, dvn], dym, vt, unsafe { &mut *(&mut *dp as *mut [T] as *mut [_]) }, false);
            // dS = P ⊙ (dP − rowsum(dy ⊙ y)), into dp.
            for (r, (prow, dprow)) in s.chunks_exact(n).zip(dp.chunks_exact_mut(n)).enumerate() {
                let o = (row0 + r) * dvn;
                let delta = real::dot(&dy[o..o + dvn], &y[o..o + dvn]);
                for (g, &pv) in dprow.iter_mut().zip(prow) {
                    *g = pv * (*g - delta);
                }
            }
            if round {
                round_bf16(dp);
                round_bf16(s);
            }
            let ds = Mat { data: &*dp, view: View { off: 0, rs: n, cs: 1 } };
            let pt = Mat { data: &*s, view: View { off: 0, rs: 1, cs: n } };
            // da[r0.., :] += dS·bᵀ ; db += aᵀ·dS ; dv += Pᵀ·dy.
            let bt = Mat { data: b, view: View { off: d.ib[p] * k * n, rs: 1, cs: n } };
            gemm_accumulate([rows, k, n], ds, bt, &mut da[r0 * k..(r0 + rows) * k], false);
            let at = Mat { data: a, view: View { off: d.ia[p] * m * k + r0 * k, rs: 1, cs: k } };
            gemm_accumulate([k, n, rows], at, ds, db, false);
            gemm_accumulate([n, dvn, rows], pt, dym, dv, false);
        }
    }
    fn go<T: Real>(
        d: &Dims,
        ins: Operands<T>,
        outs: (&[T], &[T], &[T], &[T]),
        zero: (bool, bool),
        counts: [usize; 3],
    ) -> [Vec<T>; 3] {
        let (m, k, n, dvn) = (d.m, d.k, d.n, d.dv);
        let mut da = vec![T::zero(); counts[0] * m * k];
        let mut db = vec![T::zero(); counts[1] * k * n];
        let mut dv = vec![T::zero(); counts[2] * n * dvn];
        let distinct = |idx: &[usize], count: usize| idx.len() == count;
        if distinct(&d.ia, counts[0]) && distinct(&d.ib, counts[1]) && distinct(&d.iv, counts[2]) && m * k * n * dvn > 0
        {
            // Every product owns its own matrices (no broadcast batch): products in parallel.
            da.par_chunks_mut(m * k)
                .zip(db.par_chunks_mut(k * n))
                .zip(dv.par_chunks_mut(n * dvn))
                .enumerate()
                .for_each(|(p, ((ga, gb), gv))| product(d, p, ins, outs, zero, (ga, gb, gv)));
        } else {
            let (mut ga, mut gb, mut gv) = (vec![T::zero(); m * k], vec![T::zero(); k * n], vec![T::zero(); n * dvn]);
            for p in 0..d.products() {
                ga.fill(T::zero());
                gb.fill(T::zero());
                gv.fill(T::zero());
                product(d, p, ins, outs, zero, (&mut ga, &mut gb, &mut gv));
                let add = |dst: &mut [T], src: &[T]| dst.iter_mut().zip(src).for_each(|(x, &g)| *x += g);
                add(&mut da[d.ia[p] * m * k..][..m * k], &ga);
                add(&mut db[d.ib[p] * k * n..][..k * n], &gb);
                add(&mut dv[d.iv[p] * n * dvn..][..n * dvn], &gv);
            }
        }
        [da, db, dv]
    }
    let count = |t: &Tensor| t.shape()[..t.rank() - 2].iter().product::<usize>();
    let counts = [count(a), count(b), count(v)];
    fn wrapped<T: Real>(
        d: &Dims,
        x: Operands<T>,
        outs: [&Tensor; 3],
        (zero, round): (bool, bool),
        counts: [usize; 3],
    ) -> [Storage; 3] {
        let (a, b, v) = (maybe_rounded(x.a, round), maybe_rounded(x.b, round), maybe_rounded(x.v, round));
        let dy = slice_of(outs[2]);
        let dyp = maybe_rounded(dy, round);
        let outs = (slice_of(outs[0]), slice_of(outs[1]), dy, &dyp[..]);
        go(d, Operands { a: &a, b: &b, bias: x.bias, v: &v }, outs, (zero, round), counts).map(T::wrap)
    }
    let outs = [y, lse, dy];
    let grads = match a.dtype() {
        DataType::Float => wrapped::<f32>(&d, Operands::of(a, b, bias, v), outs, (zero_masked, round), counts),
        DataType::Double => wrapped::<f64>(&d, Operands::of(a, b, bias, v), outs, (zero_masked, round), counts),
        other => kbail!("SoftmaxAttentionGrad takes f32, f64, f16 or bf16, got {other}"),
    };
    let [da, db, dv] = grads;
    Ok(vec![
        Tensor::from_parts(a.shape().to_vec(), da),
        Tensor::from_parts(b.shape().to_vec(), db),
        Tensor::from_parts(v.shape().to_vec(), dv),
    ])
}

/// `t`'s elements as `T` (empty when of another type: the callers checked the types).
fn slice_of<T: Elem>(t: &Tensor) -> &[T] {
    Elem::slice(t.data()).unwrap_or(&[])
}

/// The `ai.adaptc` ops of this file.
pub const OPS: &[(&str, KernelFn)] =
    &[("SoftmaxAttention", softmax_attention), ("SoftmaxAttentionGrad", softmax_attention_grad)];
