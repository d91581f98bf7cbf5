//! `MatMulTrans(a, b)` (attributes `transA`, `transB`, `fold`): numpy matmul with either
//! operand's last two dims read transposed, so the gradients of `MatMul` (`dy·Bᵀ`, `Aᵀ·dy`)
//! need no materialised transpose. `fold=1` sums `aᵀb` over every leading dim and row in one
//! GEMM: the weight gradient of `x @ W` for a 2-D `W`, without a `[batch, K, N]` temporary.

use super::real::{with_real, Real};
use crate::error::{kbail, KResult};
use crate::ops::matmul::{for_each_product, gemm_into, gemm_with, new_filled, Mat, View};
use crate::ops::util::{broadcast_index, broadcast_shapes, checked_numel};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Tensor};

fn flag(c: &OpCtx, name: &str) -> KResult<bool> {
    match c.int(name, 0) {
        0 => Ok(false),
        1 => Ok(true),
        v => kbail!("attribute {name} must be 0 or 1, got {v}"),
    }
}

pub fn matmul_trans(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (a, b) = (i.req(0)?, i.req(1)?);
    let (ta, tb, fold) = (flag(c, "transA")?, flag(c, "transB")?, flag(c, "fold")?);
    if a.dtype() != b.dtype() {
        kbail!("operands have different types: {} and {}", a.dtype(), b.dtype());
    }
    if a.rank() < 2 || b.rank() < 2 {
        kbail!("operands must have rank ≥ 2, got {:?} and {:?}", a.shape(), b.shape());
    }
    let (ash, bsh) = (a.shape(), b.shape());
    let (ar, ac) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (br, bc) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if fold {
        if !ta || tb {
            kbail!("fold=1 needs transA=1 and transB=0");
        }
        if ash[..ash.len() - 1] != bsh[..bsh.len() - 1] {
            kbail!("fold=1 needs a [..., M, K] and b [..., M, N] with the same leading dims, got {ash:?} and {bsh:?}");
        }
        let p: usize = ash[..ash.len() - 1].iter().product();
        let (k, n) = (ac, bc);
        checked_numel(&[k, n])?;
        // out[k×n] = Aᵀ·B over the [P, K] and [P, N] row-major views.
        let av = View { off: 0, rs: 1, cs: k };
        let bv = View { off: 0, rs: n, cs: 1 };
        fn go<T: Real>(a: &[T], b: &[T], av: View, bv: View, [k, n, p]: [usize; 3]) -> Vec<T> {
            let mut out = vec![T::zero(); k * n];
            gemm_into([k, n, p], Mat { data: a, view: av }, Mat { data: b, view: bv }, &mut out);
            out
        }
        let data = with_real!(a.data(), x => {
            Elem::wrap(go(x, Elem::slice(b.data()).unwrap_or(&[]), av, bv, [k, n, p]))
        }, _ => kbail!("MatMulTrans takes f32, f64, f16 or bf16, got {}", a.dtype()));
        return Ok(vec![Tensor::from_parts(vec![k, n], data)]);
    }
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        kbail!("inner dimensions differ: {ash:?} (transA={}) × {bsh:?} (transB={})", u8::from(ta), u8::from(tb));
    }
    let (abatch, bbatch) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
    let batch = broadcast_shapes(&[abatch, bbatch])?;
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let total = checked_numel(&out_shape)?;
    // A 2-D right operand and an untransposed left one: a's batch dims fold into its rows
    // (one tall GEMM, `b` packed once).
    let fold_rows = bbatch.is_empty() && !ta;
    let (ia, ib, m) = if fold_rows {
        (vec![0], vec![0], abatch.iter().product::<usize>() * m)
    } else {
        (broadcast_index(abatch, &batch), broadcast_index(bbatch, &batch), m)
    };
    // Element (r, c) of the logical operand: transposed views swap the strides.
    let av = if ta { View { off: 0, rs: 1, cs: ac } } else { View { off: 0, rs: ac, cs: 1 } };
    let bv = if tb { View { off: 0, rs: 1, cs: bc } } else { View { off: 0, rs: bc, cs: 1 } };
    let (amat, bmat) = (ar * ac, br * bc);
    fn go<T: Real>(
        a: &[T],
        b: &[T],
        (ia, ib): (&[usize], &[usize]),
        (av, bv): (View, View),
        (amat, bmat): (usize, usize),
        [m, n, k]: [usize; 3],
        total: usize,
    ) -> Vec<T> {
        // SAFETY: the products cover all `total` elements and gemm_with writes each whole.
        unsafe {
            new_filled(total, |out| {
                for_each_product(out, m * n, m * n * k, |p, threaded, o| {
                    let a = Mat { data: a, view: View { off: ia[p] * amat, ..av } };
                    let b = Mat { data: b, view: View { off: ib[p] * bmat, ..bv } };
                    gemm_with([m, n, k], a, b, o, threaded);
                })
            })
        }
    }
    let data = with_real!(a.data(), x => {
        let y = Elem::slice(b.data()).unwrap_or(&[]);
        Elem::wrap(go(x, y, (&ia, &ib), (av, bv), (amat, bmat), [m, n, k], total))
    }, _ => kbail!("MatMulTrans takes f32, f64, f16 or bf16, got {}", a.dtype()));
    Ok(vec![Tensor::from_parts(out_shape, data)])
}
