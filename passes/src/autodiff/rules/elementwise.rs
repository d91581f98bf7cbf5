//! Elementwise ops. Binary ops broadcast, so each operand's gradient is summed back to its
//! shape (`SumToShape`, skipped when the declared shapes show no broadcasting).

use super::{r, Grads, Rule, RuleCx};
use crate::pass::PassError;

pub const OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Relu",
    "Gelu",
    "Sin",
    "Cos",
    "Identity",
    "Cast",
    "CastLike",
    "Where",
];

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Add" => r(&[0, 1], add),
        "Sub" => r(&[0, 1], sub),
        "Mul" => r(&[0, 1], mul),
        "Div" => r(&[0, 1], div),
        "Neg" => r(&[0], neg),
        "Pow" => r(&[0, 1], pow),
        "Sqrt" => r(&[0], sqrt),
        "Reciprocal" => r(&[0], reciprocal),
        "Exp" => r(&[0], exp),
        "Log" => r(&[0], log),
        "Tanh" => r(&[0], tanh),
        "Sigmoid" => r(&[0], sigmoid),
        "Erf" => r(&[0], erf),
        "Relu" => r(&[0], relu),
        "Gelu" => r(&[0], gelu),
        "Sin" => r(&[0], sin),
        "Cos" => r(&[0], cos),
        "Identity" => r(&[0], identity),
        "Cast" | "CastLike" => r(&[0], cast),
        "Where" => r(&[1, 2], where_),
        _ => return None,
    })
}

/// The gradient of a single-output node.
fn dy(cx: &RuleCx, dys: &[Option<String>]) -> Result<String, PassError> {
    dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))
}

/// `g` summed to input `slot`'s shape.
fn to_input(cx: &mut RuleCx, g: &str, slot: usize) -> Result<String, PassError> {
    let (x, y) = (cx.input(slot)?, cx.output(0)?);
    cx.em.sum_to(g, &x, &y)
}

fn one(g: String) -> Grads {
    vec![Some(g)]
}

fn add(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    (0..2).map(|slot| if cx.wants(slot) { to_input(cx, &g, slot).map(Some) } else { Ok(None) }).collect()
}

fn sub(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let mut out = vec![None, None];
    if cx.wants(0) {
        out[0] = Some(to_input(cx, &g, 0)?);
    }
    if cx.wants(1) {
        let n = cx.em.op("Neg", &[&g], vec![], &cx.hint(1))?;
        out[1] = Some(to_input(cx, &n, 1)?);
    }
    Ok(out)
}

fn mul(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let mut out = vec![None, None];
    if cx.wants(0) {
        let p = cx.em.op("Mul", &[&g, &b], vec![], &a)?;
        out[0] = Some(to_input(cx, &p, 0)?);
    }
    if cx.wants(1) {
        let p = cx.em.op("Mul", &[&g, &a], vec![], &b)?;
        out[1] = Some(to_input(cx, &p, 1)?);
    }
    Ok(out)
}

fn div(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let (a, b, y) = (cx.input(0)?, cx.input(1)?, cx.output(0)?);
    let mut out = vec![None, None];
    if cx.wants(0) {
        let q = cx.em.op("Div", &[&g, &b], vec![], &a)?;
        out[0] = Some(to_input(cx, &q, 0)?);
    }
    if cx.wants(1) {
        // d(a/b)/db = -(a/b)/b = -y/b.
        let gy = cx.em.op("Mul", &[&g, &y], vec![], &b)?;
        let q = cx.em.op("Div", &[&gy, &b], vec![], &b)?;
        let n = cx.em.op("Neg", &[&q], vec![], &b)?;
        out[1] = Some(to_input(cx, &n, 1)?);
    }
    Ok(out)
}

fn neg(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    Ok(one(cx.em.op("Neg", &[&g], vec![], &cx.hint(0))?))
}

fn pow(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    if cx.wants(1) {
        return Err(cx.fail("the gradient of an exponent is not supported"));
    }
    let g = dy(cx, dys)?;
    let (x, e) = (cx.input(0)?, cx.input(1)?);
    // d(x^e)/dx = e · x^(e-1).
    let ex = cx.em.cast_like(&e, &x, &x)?;
    let one_ = cx.em.scalar_like(1.0, &x)?;
    let em1 = cx.em.op("Sub", &[&ex, &one_], vec![], &x)?;
    let p = cx.em.op("Pow", &[&x, &em1], vec![], &x)?;
    let d = cx.em.op("Mul", &[&p, &ex], vec![], &x)?;
    let gd = cx.em.op("Mul", &[&g, &d], vec![], &x)?;
    Ok(vec![Some(to_input(cx, &gd, 0)?), None])
}

fn sqrt(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let (x, y) = (cx.input(0)?, cx.output(0)?);
    // d√x = 1 / (2√x).
    let twice = cx.em.op("Add", &[&y, &y], vec![], &x)?;
    Ok(one(cx.em.op("Div", &[&g, &twice], vec![], &x)?))
}

fn reciprocal(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let (x, y) = (cx.input(0)?, cx.output(0)?);
    // d(1/x) = -1/x² = -y².
    let yy = cx.em.op("Mul", &[&y, &y], vec![], &x)?;
    let p = cx.em.op("Mul", &[&g, &yy], vec![], &x)?;
    Ok(one(cx.em.op("Neg", &[&p], vec![], &x)?))
}

fn exp(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let y = cx.output(0)?;
    Ok(one(cx.em.op("Mul", &[&g, &y], vec![], &cx.hint(0))?))
}

fn log(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    Ok(one(cx.em.op("Div", &[&g, &x], vec![], &x)?))
}

fn tanh(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let y = cx.output(0)?;
    // d tanh = 1 - y²: g - g·y·y.
    let gy = cx.em.op("Mul", &[&g, &y], vec![], &y)?;
    let gyy = cx.em.op("Mul", &[&gy, &y], vec![], &y)?;
    Ok(one(cx.em.op("Sub", &[&g, &gyy], vec![], &cx.hint(0))?))
}

fn sigmoid(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let y = cx.output(0)?;
    // dσ = y(1-y) = y - y².
    let yy = cx.em.op("Mul", &[&y, &y], vec![], &y)?;
    let d = cx.em.op("Sub", &[&y, &yy], vec![], &y)?;
    Ok(one(cx.em.op("Mul", &[&g, &d], vec![], &cx.hint(0))?))
}

fn erf(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    // d erf(x) = 2/√π · exp(-x²).
    let xx = cx.em.op("Mul", &[&x, &x], vec![], &x)?;
    let n = cx.em.op("Neg", &[&xx], vec![], &x)?;
    let e = cx.em.op("Exp", &[&n], vec![], &x)?;
    let c = cx.em.scalar_like(std::f64::consts::FRAC_2_SQRT_PI, &x)?;
    let d = cx.em.op("Mul", &[&e, &c], vec![], &x)?;
    Ok(one(cx.em.op("Mul", &[&g, &d], vec![], &x)?))
}

fn relu(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    let zero = cx.em.scalar_like(0.0, &x)?;
    let pos = cx.em.op("Greater", &[&x, &zero], vec![], &x)?;
    let mask = cx.em.op("CastLike", &[&pos, &g], vec![], &x)?;
    Ok(one(cx.em.op("Mul", &[&g, &mask], vec![], &x)?))
}

fn gelu(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    let mut attrs = Vec::new();
    if let Some(a) = cx.node.attr("approximate") {
        attrs.push(a.clone());
    }
    Ok(one(cx.em.grad_op("GeluGrad", &[&g, &x], attrs, &x)?))
}

fn sin(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    let c = cx.em.op("Cos", &[&x], vec![], &x)?;
    Ok(one(cx.em.op("Mul", &[&g, &c], vec![], &x)?))
}

fn cos(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    let s = cx.em.op("Sin", &[&x], vec![], &x)?;
    let p = cx.em.op("Mul", &[&g, &s], vec![], &x)?;
    Ok(one(cx.em.op("Neg", &[&p], vec![], &x)?))
}

fn identity(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    Ok(one(dy(cx, dys)?))
}

/// A float-to-float cast: the gradient is cast back to the input's type.
fn cast(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let x = cx.input(0)?;
    let back = cx.em.cast_like(&g, &x, &x)?;
    let mut grads = vec![Some(back)];
    if cx.node.inputs().len() > 1 {
        grads.push(None);
    }
    Ok(grads)
}

fn where_(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dy(cx, dys)?;
    let cond = cx.input(0)?;
    let zero = cx.em.scalar_like(0.0, &g)?;
    let mut out = vec![None, None, None];
    if cx.wants(1) {
        let w = cx.em.op("Where", &[&cond, &g, &zero], vec![], &cx.hint(1))?;
        out[1] = Some(to_input(cx, &w, 1)?);
    }
    if cx.wants(2) {
        let w = cx.em.op("Where", &[&cond, &zero, &g], vec![], &cx.hint(2))?;
        out[2] = Some(to_input(cx, &w, 2)?);
    }
    Ok(out)
}
