//! Normalisations and reductions: Softmax, LayerNormalization, ReduceMean, ReduceSum. Each
//! becomes one fused `ai.adaptc` gradient op that recomputes what it needs from the forward
//! values (LayerNorm's mean and inverse deviation are cheap next to storing them).

use adaptc_ir::Attribute;

use super::{r, Grads, Rule, RuleCx};
use crate::pass::PassError;

pub const OPS: &[&str] = &["Softmax", "LayerNormalization", "ReduceMean", "ReduceSum"];

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Softmax" => r(&[0], softmax),
        "LayerNormalization" => r(&[0, 1, 2], layer_norm),
        "ReduceMean" => r(&[0], reduce_mean),
        "ReduceSum" => r(&[0], reduce_sum),
        _ => return None,
    })
}

fn softmax(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    if cx.opset < 13 {
        return Err(cx.fail("Softmax before opset 13 (2-D coercion) is not supported; upgrade the model's opset"));
    }
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))?;
    let (x, y) = (cx.input(0)?, cx.output(0)?);
    let axis = cx.node.attr_int("axis", -1);
    Ok(vec![Some(cx.em.grad_op("SoftmaxGrad", &[&g, &y], vec![Attribute::int("axis", axis)], &x)?)])
}

fn layer_norm(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g =
        dys.first().cloned().flatten().ok_or_else(|| cx.fail("only the normalised output may be differentiated"))?;
    if dys.iter().skip(1).any(Option::is_some) {
        return Err(cx.fail("only the normalised output may be differentiated"));
    }
    let (x, scale) = (cx.input(0)?, cx.input(1)?);
    let attrs = cx.attrs(&["axis", "epsilon"]);
    let has_bias = cx.node.input(2).is_some();
    let wanted = [cx.wants(0), cx.wants(1), has_bias && cx.wants(2)];
    let outs = cx.em.grad_op_n("LayerNormalizationGrad", &[&g, &x, &scale], attrs, &x, &wanted)?;
    let mut grads = outs;
    grads.truncate(cx.node.inputs().len());
    Ok(grads)
}

/// The reduced axes: the `axes` attribute (older opsets) or a constant `axes` input.
fn axes(cx: &RuleCx) -> Result<Option<Vec<i64>>, PassError> {
    if let Some(a) = cx.node.attr("axes").and_then(|a| a.as_ints()) {
        return Ok(Some(a.to_vec()));
    }
    let Some(name) = cx.node.input(1) else { return Ok(None) };
    let graph = &cx.em.graph;
    if let Some(t) = graph.initializer(name) {
        return t.to_i64().map(Some).map_err(|e| cx.fail(&format!("axes: {e}")));
    }
    if let Some((id, _)) = graph.producer(name) {
        let n = graph.node(id);
        if n.op().is("Constant") {
            if let Some(t) = n.attr("value").and_then(|a| a.as_tensor()) {
                return t.to_i64().map(Some).map_err(|e| cx.fail(&format!("axes: {e}")));
            }
        }
    }
    Err(cx.fail("the reduced axes must be constant to differentiate"))
}

fn reduce(cx: &mut RuleCx, dys: &[Option<String>], mean: bool) -> Result<Grads, PassError> {
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))?;
    let x = cx.input(0)?;
    let axes = axes(cx)?.unwrap_or_default();
    if axes.is_empty() && cx.node.attr_int("noop_with_empty_axes", 0) != 0 {
        let mut v = vec![None; cx.node.inputs().len()];
        v[0] = Some(g);
        return Ok(v);
    }
    let shape = cx.em.shape_of(&x)?;
    let attrs = vec![
        Attribute::ints("axes", axes),
        Attribute::int("keepdims", cx.node.attr_int("keepdims", 1)),
        Attribute::int("mean", i64::from(mean)),
    ];
    let d = cx.em.grad_op("ReduceGrad", &[&g, &shape], attrs, &x)?;
    let mut v = vec![None; cx.node.inputs().len()];
    v[0] = Some(d);
    Ok(v)
}

fn reduce_mean(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    reduce(cx, dys, true)
}

fn reduce_sum(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    reduce(cx, dys, false)
}
