//! Data movement. Reshape-like ops reshape the gradient back; Transpose applies the inverse
//! permutation; Expand sums; every other pure index map (Slice, Gather, Concat, Pad, Split, …)
//! scatters the gradient through `ai.adaptc::IndexMapGrad`, which reruns the forward op on an
//! index tensor to learn where each output element came from.

use adaptc_ir::Attribute;

use super::{r, Grads, Rule, RuleCx, Slots};
use crate::pass::PassError;

pub const OPS: &[&str] = &[
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Expand",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Concat",
    "Split",
    "Pad",
    "Tile",
];

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => r(&[0], reshape_back),
        "Transpose" => r(&[0], transpose),
        "Expand" => r(&[0], expand),
        "Slice" | "Gather" | "GatherElements" | "GatherND" | "Pad" | "Tile" => r(&[0], index_map),
        "Split" => r(&[0], index_map),
        "Concat" => Rule { slots: Slots::All, vjp: index_map },
        _ => return None,
    })
}

fn single(cx: &RuleCx, dys: &[Option<String>]) -> Result<String, PassError> {
    dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))
}

/// The gradient vector: `g` at slot 0, `None` for the node's other inputs.
fn at_first(cx: &RuleCx, g: String) -> Grads {
    let mut v = vec![None; cx.node.inputs().len()];
    v[0] = Some(g);
    v
}

fn reshape_back(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = single(cx, dys)?;
    let x = cx.input(0)?;
    let shape = cx.em.shape_of(&x)?;
    let d = cx.em.op("Reshape", &[&g, &shape], vec![], &x)?;
    Ok(at_first(cx, d))
}

fn transpose(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = single(cx, dys)?;
    let x = cx.input(0)?;
    let attrs = match cx.node.attr("perm").and_then(|a| a.as_ints()) {
        // No perm reverses the dims, which is its own inverse.
        None => vec![],
        Some(perm) => {
            let mut inverse = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                let p = usize::try_from(p).ok().filter(|&p| p < perm.len()).ok_or_else(|| cx.fail("bad perm"))?;
                inverse[p] = i as i64;
            }
            vec![Attribute::ints("perm", inverse)]
        }
    };
    let d = cx.em.op("Transpose", &[&g], attrs, &x)?;
    Ok(at_first(cx, d))
}

fn expand(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = single(cx, dys)?;
    let (x, y) = (cx.input(0)?, cx.output(0)?);
    let d = cx.em.sum_to(&g, &x, &y)?;
    Ok(at_first(cx, d))
}

/// `IndexMapGrad(dy, Shape(x), forward inputs with x's slot left empty)` for each wanted slot
/// and each output that has a gradient (Split's outputs add up). The other float inputs (the
/// other operands of a Concat, Pad's constant) matter to the index map only by their shape, so
/// they are passed as `Shape(v)` (attribute `fwd_shapes`): the backward then keeps no forward
/// value alive for its shape alone, and the plan need not even write one that it can fuse away.
fn index_map(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let n = cx.node.inputs().len();
    let mut grads: Grads = Vec::with_capacity(n);
    for slot in 0..n {
        if !cx.wants(slot) {
            grads.push(None);
            continue;
        }
        let x = cx.input(slot)?;
        let shape = cx.em.shape_of(&x)?;
        let mut forward = Vec::with_capacity(n);
        let mut by_shape = Vec::new();
        for (i, v) in cx.node.inputs().iter().enumerate() {
            if i == slot || v.is_empty() {
                forward.push(String::new());
            } else if cx.em.elem_type(v).is_some_and(|t| t.is_float()) {
                forward.push(cx.em.shape_of(v)?);
                by_shape.push(i as i64);
            } else {
                forward.push(v.clone());
            }
        }
        let mut parts = Vec::new();
        for (k, dy) in dys.iter().enumerate() {
            let Some(dy) = dy else { continue };
            let mut inputs: Vec<String> = vec![dy.clone(), shape.clone()];
            inputs.extend(forward.iter().cloned());
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let mut attrs = vec![
                Attribute::string("op", cx.node.op().op_type.as_bytes().to_vec()),
                Attribute::int("input", slot as i64),
                Attribute::int("output", k as i64),
                Attribute::int("fwd_opset", cx.opset),
            ];
            if !by_shape.is_empty() {
                attrs.push(Attribute::ints("fwd_shapes", by_shape.clone()));
            }
            attrs.extend(cx.node.attrs().iter().cloned());
            parts.push(cx.em.grad_op("IndexMapGrad", &refs, attrs, &x)?);
        }
        let mut acc = parts.pop().ok_or_else(|| cx.fail("no gradient reached its outputs"))?;
        for p in parts {
            acc = cx.em.op("Add", &[&acc, &p], vec![], &x)?;
        }
        grads.push(Some(acc));
    }
    Ok(grads)
}
