//! MatMul (numpy semantics: 1-D promotion, broadcast batch dims) and Gemm.
//!
//! f32/f64 products go through [`gemm_into`], the one place that picks the GEMM
//! implementation (the `gemm` crate today), so it can be swapped after benchmarking; half
//! types (f16, bf16) are widened to f32 and rounded once at the end ([`in_f32`]); other
//! element types use a plain loop through f64 (exact for the integers the suite uses).

use std::mem::MaybeUninit;

use adaptc_ir::DataType;

use super::cast::cast_to;
use super::num::Num;
use super::util::{broadcast_index, broadcast_shapes, checked_numel};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Elem, Storage, Tensor};

/// A strided matrix view: element (r, c) is at `off + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

/// Element types the GEMM library handles.
pub trait GemmElem: Num {
    const FAST: bool;
}
impl<T: Num> GemmElem for T {
    const FAST: bool = matches!(T::DTYPE, adaptc_ir::DataType::Float | adaptc_ir::DataType::Double);
}

/// A matrix operand: its storage and where the matrix lies in it.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub view: View,
}

/// `out[m×n] = a[m×k] · b[k×n]` (out row-major, contiguous), threaded inside when large.
pub fn gemm_into<T: GemmElem>(dims: [usize; 3], a: Mat<T>, b: Mat<T>, out: &mut [T]) {
    // SAFETY: MaybeUninit<T> has T's layout, and gemm_with only writes initialised values.
    let out = unsafe { &mut *(out as *mut [T] as *mut [MaybeUninit<T>]) };
    gemm_with(dims, a, b, out, true)
}

/// A new vector of `len` elements written by `fill` (GEMM outputs: no zeroing pass over
/// memory the product overwrites anyway).
///
/// # Safety
/// `fill` must write every one of the `len` elements.
pub(crate) unsafe fn new_filled<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees `fill` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Products from this many multiply-adds on split one GEMM across threads.
const PAR_GEMM: usize = 1 << 18;

/// `count` independent products of `mat` output elements each (`one(p, threaded, out_p)`):
/// when there are enough of them, one per thread with single-threaded GEMMs (attention's
/// many small heads), else one after another, each threaded inside.
pub fn for_each_product<T: Send>(
    out: &mut [MaybeUninit<T>],
    mat: usize,
    macs: usize,
    one: impl Fn(usize, bool, &mut [MaybeUninit<T>]) + Sync + Send,
) {
    use rayon::prelude::*;
    if mat == 0 {
        return;
    }
    let count = out.len() / mat;
    let threads = rayon::current_num_threads();
    if count >= 2 * threads || (count >= threads && macs < PAR_GEMM * 16) {
        out.par_chunks_mut(mat).enumerate().for_each(|(p, o)| one(p, false, o));
    } else {
        out.chunks_mut(mat).enumerate().for_each(|(p, o)| one(p, true, o));
    }
}

/// [`gemm_into`] with the choice of threading inside the product; writes all m·n elements of
/// `out` without reading them.
pub fn gemm_with<T: GemmElem>(dims: [usize; 3], a: Mat<T>, b: Mat<T>, out: &mut [MaybeUninit<T>], threaded: bool) {
    gemm_raw(dims, a, b, out, threaded, false)
}

/// `out += a · b` (out initialised), threaded inside when large and `threaded`.
pub(crate) fn gemm_accumulate<T: GemmElem>(dims: [usize; 3], a: Mat<T>, b: Mat<T>, out: &mut [T], threaded: bool) {
    // SAFETY: MaybeUninit<T> has T's layout; with `accumulate` the elements are read as the
    // initialised values they are and overwritten with initialised values.
    let out = unsafe { &mut *(out as *mut [T] as *mut [MaybeUninit<T>]) };
    gemm_raw(dims, a, b, out, threaded, true)
}

/// The one call into the GEMM library: `out = a·b`, or `out += a·b` when `accumulate` (then
/// `out` must be initialised).
fn gemm_raw<T: GemmElem>(
    [m, n, k]: [usize; 3],
    a: Mat<T>,
    b: Mat<T>,
    out: &mut [MaybeUninit<T>],
    threaded: bool,
    accumulate: bool,
) {
    let (av, bv, a, b) = (a.view, b.view, a.data, b.data);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out.iter_mut().for_each(|x| {
                x.write(T::zero());
            });
        }
        return;
    }
    if T::FAST {
        let par = if threaded && m * n * k >= PAR_GEMM {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the views were checked by the callers to lie inside `a` and `b`, `out` holds
        // m·n elements, which gemm writes without reading unless `accumulate` (read_dst; then
        // the caller initialised them), and `T` is f32 or f64 (FAST), which `gemm` supports.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr() as *mut T,
                1,
                n as isize,
                accumulate,
                a.as_ptr().add(av.off),
                av.cs as isize,
                av.rs as isize,
                b.as_ptr().add(bv.off),
                bv.cs as isize,
                bv.rs as isize,
                if accumulate { T::one() } else { T::zero() },
                T::one(),
                false,
                false,
                false,
                par,
            );
        }
        return;
    }
    for r in 0..m {
        for c in 0..n {
            let mut acc = 0f64;
            for j in 0..k {
                acc += a[av.off + r * av.rs + j * av.cs].to_f64() * b[bv.off + j * bv.rs + c * bv.cs].to_f64();
            }
            let o = &mut out[r * n + c];
            if accumulate {
                // SAFETY: with `accumulate` the caller initialised `out`.
                let prev = unsafe { o.assume_init_read() };
                o.write(T::from_f64(prev.to_f64() + acc));
            } else {
                o.write(T::from_f64(acc));
            }
        }
    }
}

/// Runs `kernel` in f32 when an operand is f16 or bf16, the way GPU libraries compute
/// half-precision products (cuBLAS with an f32 compute type): every operand widened to f32
/// (exact), products accumulated in f32, each float output rounded once back to the half
/// type. This is the CPU reference for `autocast`'d graphs. `None`: no half operand.
pub fn in_f32(c: &OpCtx, i: &Inputs, kernel: KernelFn) -> Option<KResult<Vec<Tensor>>> {
    let half = i.present().iter().map(|t| t.dtype()).find(|d| matches!(d, DataType::Float16 | DataType::BFloat16))?;
    let run = || {
        let wide: Vec<Option<Tensor>> = i
            .0
            .iter()
            .map(|t| t.map(|t| if t.dtype() == half { cast_to(t, DataType::Float) } else { Ok(t.clone()) }).transpose())
            .collect::<KResult<_>>()?;
        let refs: Vec<Option<&Tensor>> = wide.iter().map(Option::as_ref).collect();
        kernel(c, &Inputs(&refs))?
            .iter()
            .map(|y| if y.dtype() == DataType::Float { cast_to(y, half) } else { Ok(y.clone()) })
            .collect()
    };
    Some(run())
}

pub fn matmul_tensors(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    if a.dtype() != b.dtype() {
        kbail!("operands have different types: {} and {}", a.dtype(), b.dtype());
    }
    if a.rank() == 0 || b.rank() == 0 {
        kbail!("operands must have rank ≥ 1, got {:?} and {:?}", a.shape(), b.shape());
    }
    let ash: Vec<usize> = if a.rank() == 1 { vec![1, a.shape()[0]] } else { a.shape().to_vec() };
    let bsh: Vec<usize> = if b.rank() == 1 { vec![b.shape()[0], 1] } else { b.shape().to_vec() };
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        kbail!("inner dimensions differ: {:?} × {:?}", a.shape(), b.shape());
    }
    let (abatch, bbatch) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
    let batch = broadcast_shapes(&[abatch, bbatch])?;
    // A 2-D right operand (a weight): a's batch dims fold into its rows, so the product is one
    // tall GEMM that packs `b` once instead of once per batch entry.
    let (ia, ib, rows) = if bbatch.is_empty() {
        (vec![0], vec![0], abatch.iter().product::<usize>() * m)
    } else {
        (broadcast_index(abatch, &batch), broadcast_index(bbatch, &batch), m)
    };
    let mut out_shape = batch.clone();
    if a.rank() > 1 {
        out_shape.push(m);
    }
    if b.rank() > 1 {
        out_shape.push(n);
    }
    checked_numel(&[ia.len(), rows, n])?;
    fn go<T: GemmElem>(a: &[T], b: &[T], ia: &[usize], ib: &[usize], [m, n, k]: [usize; 3]) -> Storage {
        // SAFETY: the products cover all ia.len() output matrices and gemm_with writes each
        // whole.
        let out = unsafe {
            new_filled(ia.len() * m * n, |out| {
                for_each_product(out, m * n, m * n * k, |p, threaded, o| {
                    let av = View { off: ia[p] * m * k, rs: k, cs: 1 };
                    let bv = View { off: ib[p] * k * n, rs: n, cs: 1 };
                    let (a, b) = (Mat { data: a, view: av }, Mat { data: b, view: bv });
                    gemm_with([m, n, k], a, b, o, threaded);
                })
            })
        };
        T::wrap(out)
    }
    let data = crate::with_arith!(a.data(), x => go(x, <_ as Elem>::slice(b.data()).unwrap_or(&[]), &ia, &ib, [rows, n, k]), _ => kbail!("MatMul does not take {}", a.dtype()));
    Ok(Tensor::from_parts(out_shape, data))
}

pub fn matmul(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = in_f32(c, i, matmul) {
        return r;
    }
    Ok(vec![matmul_tensors(i.req(0)?, i.req(1)?)?])
}

pub fn gemm_op(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = in_f32(c, i, gemm_op) {
        return r;
    }
    let (a, b) = (i.req(0)?, i.req(1)?);
    if a.rank() != 2 || b.rank() != 2 || a.dtype() != b.dtype() {
        kbail!("A and B must be 2-D of one type, got {:?} {} and {:?} {}", a.shape(), a.dtype(), b.shape(), b.dtype());
    }
    let (ta, tb) = (c.int("transA", 0) != 0, c.int("transB", 0) != 0);
    let (alpha, beta) = (f64::from(c.float("alpha", 1.0)), f64::from(c.float("beta", 1.0)));
    let (m, k) = if ta { (a.shape()[1], a.shape()[0]) } else { (a.shape()[0], a.shape()[1]) };
    let (k2, n) = if tb { (b.shape()[1], b.shape()[0]) } else { (b.shape()[0], b.shape()[1]) };
    if k != k2 {
        kbail!("inner dimensions differ: A {:?} (transA={ta}) × B {:?} (transB={tb})", a.shape(), b.shape());
    }
    let av = if ta { View { off: 0, rs: 1, cs: m } } else { View { off: 0, rs: k, cs: 1 } };
    let bv = if tb { View { off: 0, rs: 1, cs: k } } else { View { off: 0, rs: n, cs: 1 } };
    let cterm = match i.opt(2) {
        Some(ct) => {
            if ct.dtype() != a.dtype() {
                kbail!("C is {} but A is {}", ct.dtype(), a.dtype());
            }
            broadcast_shapes(&[ct.shape(), &[m, n]]).ok().filter(|s| s == &[m, n]).ok_or_else(|| {
                crate::error::KernelError::Invalid(format!("C {:?} does not broadcast to [{m}, {n}]", ct.shape()))
            })?;
            Some((ct, broadcast_index(ct.shape(), &[m, n])))
        }
        None => None,
    };
    checked_numel(&[m, n])?;
    fn go<T: GemmElem>(
        a: Mat<T>,
        b: Mat<T>,
        [m, n, k]: [usize; 3],
        [alpha, beta]: [f64; 2],
        cterm: Option<(&[T], &[usize])>,
    ) -> Storage {
        let mut out = vec![T::zero(); m * n];
        gemm_into([m, n, k], a, b, &mut out);
        if alpha != 1.0 {
            out.iter_mut().for_each(|x| *x = T::from_f64(x.to_f64() * alpha));
        }
        if let Some((cv, ci)) = cterm {
            for (x, &j) in out.iter_mut().zip(ci) {
                *x = if T::IS_FLOAT {
                    T::from_f64(x.to_f64() + beta * cv[j].to_f64())
                } else {
                    T::from_i128(x.to_i128() + (beta as i128) * cv[j].to_i128())
                };
            }
        }
        T::wrap(out)
    }
    let data = crate::with_arith!(a.data(), x => {
        let bs = <_ as Elem>::slice(b.data()).unwrap_or(&[]);
        let ct = cterm.as_ref().map(|(t, idx)| (<_ as Elem>::slice(t.data()).unwrap_or(&[]), idx.as_slice()));
        go(Mat { data: x, view: av }, Mat { data: bs, view: bv }, [m, n, k], [alpha, beta], ct)
    }, _ => kbail!("Gemm does not take {}", a.dtype()));
    Ok(vec![Tensor::from_parts(vec![m, n], data)])
}

/// `MatMulAddBias(x, w, bias)` = `Add(MatMul(x, w), bias)`, the plan-time fusion of a linear
/// layer (see `crate::fuse`): for f32 with a 2-D `w` and `bias` of `w`'s column count, the
/// output rows start as copies of `bias` and the GEMM accumulates into them, so the product is
/// never written out and read back for the add. Anything else runs as the two ops.
pub fn matmul_add_bias(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    if let Some(r) = in_f32(c, i, matmul_add_bias) {
        return r;
    }
    let (a, w, bias) = (i.req(0)?, i.req(1)?, i.req(2)?);
    if let (Some(av), Some(wv), Some(bv)) = (a.as_slice::<f32>(), w.as_slice::<f32>(), bias.as_slice::<f32>()) {
        let r = a.rank();
        if w.rank() == 2 && r >= 2 && a.shape()[r - 1] == w.shape()[0] && bias.shape() == [w.shape()[1]] {
            let (k, n) = (w.shape()[0], w.shape()[1]);
            let rows: usize = a.shape()[..r - 1].iter().product();
            checked_numel(&[rows, n])?;
            let mut out: Vec<f32> = Vec::with_capacity(rows * n);
            for _ in 0..rows {
                out.extend_from_slice(bv);
            }
            let am = Mat { data: av, view: View { off: 0, rs: k, cs: 1 } };
            let wm = Mat { data: wv, view: View { off: 0, rs: n, cs: 1 } };
            gemm_accumulate([rows, n, k], am, wm, &mut out, true);
            let mut shape = a.shape()[..r - 1].to_vec();
            shape.push(n);
            return Ok(vec![Tensor::from_parts(shape, Storage::F32(out))]);
        }
    }
    let y = matmul_tensors(a, w)?;
    super::binary::add(c, &Inputs(&[Some(&y), Some(bias)]))
}

pub const OPS: &[(&str, KernelFn)] = &[("MatMul", matmul), ("Gemm", gemm_op)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_broadcast_matmul() {
        let a = Tensor::from_vec(vec![2, 1, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_vec(vec![2, 1], vec![10.0f32, 1.0]).unwrap();
        let c = matmul_tensors(&a, &b).unwrap();
        assert_eq!(c.shape(), &[2, 1, 1]);
        assert_eq!(c.as_slice::<f32>().unwrap(), &[12.0, 34.0]);
        let v = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
        let m = Tensor::from_vec(vec![2, 2], vec![1i64, 2, 3, 4]).unwrap();
        let r = matmul_tensors(&v, &m).unwrap();
        assert_eq!(r.shape(), &[2]);
        assert_eq!(r.as_slice::<i64>().unwrap(), &[7, 10]);
        assert!(matmul_tensors(&m, &Tensor::from_vec(vec![3], vec![1i64, 2, 3]).unwrap()).is_err());
    }
}
