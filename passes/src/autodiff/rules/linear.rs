//! Products: MatMul and Gemm. Transposes are flags of `ai.adaptc::MatMulTrans`, never
//! materialised; the gradient of a 2-D weight read by a batched product is one GEMM over all
//! rows (`fold=1`), not a per-batch product summed afterwards.

use adaptc_ir::Attribute;

use super::{r, Grads, Rule, RuleCx};
use crate::pass::PassError;

pub const OPS: &[&str] = &["MatMul", "Gemm"];

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "MatMul" => r(&[0, 1], matmul),
        "Gemm" => r(&[0, 1, 2], gemm),
        _ => return None,
    })
}

fn flags(trans_a: bool, trans_b: bool) -> Vec<Attribute> {
    let mut v = Vec::new();
    if trans_a {
        v.push(Attribute::int("transA", 1));
    }
    if trans_b {
        v.push(Attribute::int("transB", 1));
    }
    v
}

fn product(cx: &mut RuleCx, a: &str, b: &str, ta: bool, tb: bool, hint: &str) -> Result<String, PassError> {
    cx.em.grad_op("MatMulTrans", &[a, b], flags(ta, tb), hint)
}

/// `C = A·B`: `dA = dC·Bᵀ`, `dB = Aᵀ·dC`, each summed back over broadcast batch dims.
fn matmul(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))?;
    let (a, b, c) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let (ra, rb) = (cx.em.rank(&a), cx.em.rank(&b));
    if ra == Some(1) || rb == Some(1) {
        return Err(cx.fail("products with a 1-D operand are not supported"));
    }
    let mut out = vec![None, None];
    if cx.wants(0) {
        let d = product(cx, &g, &b, false, true, &a)?;
        // A 2-D B broadcasts over A's batch dims, so dA already has A's shape.
        out[0] = Some(if rb == Some(2) { d } else { cx.em.sum_to(&d, &a, &c)? });
    }
    if cx.wants(1) {
        out[1] = Some(if rb == Some(2) {
            let mut attrs = flags(true, false);
            attrs.push(Attribute::int("fold", 1));
            cx.em.grad_op("MatMulTrans", &[&a, &g], attrs, &b)?
        } else {
            let d = product(cx, &a, &g, true, false, &b)?;
            cx.em.sum_to(&d, &b, &c)?
        });
    }
    Ok(out)
}

/// `Y = α·op(A)·op(B) + β·C` (2-D).
fn gemm(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))?;
    let ta = cx.node.attr_int("transA", 0) != 0;
    let tb = cx.node.attr_int("transB", 0) != 0;
    let alpha = cx.node.attr("alpha").and_then(|a| a.as_float()).unwrap_or(1.0);
    let beta = cx.node.attr("beta").and_then(|a| a.as_float()).unwrap_or(1.0);
    let (a, b, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let ga = if alpha != 1.0 {
        let s = cx.em.scalar_like(f64::from(alpha), &g)?;
        cx.em.op("Mul", &[&g, &s], vec![], &y)?
    } else {
        g.clone()
    };
    let mut out = vec![None, None, None];
    if cx.wants(0) {
        // op(A) = dY·op(B)ᵀ; A = op(A) or its transpose.
        out[0] = Some(if ta { product(cx, &b, &ga, tb, true, &a)? } else { product(cx, &ga, &b, false, !tb, &a)? });
    }
    if cx.wants(1) {
        out[1] = Some(if tb { product(cx, &ga, &a, true, ta, &b)? } else { product(cx, &a, &ga, !ta, false, &b)? });
    }
    if cx.wants(2) {
        let c = cx.input(2)?;
        let gc = if beta != 1.0 {
            let s = cx.em.scalar_like(f64::from(beta), &g)?;
            cx.em.op("Mul", &[&g, &s], vec![], &c)?
        } else {
            g.clone()
        };
        out[2] = Some(cx.em.sum_to(&gc, &c, &y)?);
    }
    Ok(out)
}
