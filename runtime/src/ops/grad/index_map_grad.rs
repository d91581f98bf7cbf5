//! `IndexMapGrad(dy, x_shape, fwd_in_0, …)`: the gradient of any pure data-movement op (Slice,
//! Gather, Transpose, Concat, Pad, Split, Expand, Tile, Reshape, …) with respect to one input,
//! from the forward op's own kernel — so every such op needs no gradient rule of its own.
//!
//! Attributes: `op` (the forward op type, default domain), `input` (which forward input is
//! differentiated), `output` (default 0: which forward output `dy` belongs to), `fwd_opset`
//! (the forward node's opset), optional `fwd_outputs` (the forward node's output count; Split
//! without sizes needs it, and infers it from `dy` when absent), and the forward node's own
//! attributes copied verbatim. The inputs after `x_shape` are the forward node's, the
//! differentiated one omitted; optional `fwd_shapes` lists the forward inputs given by their
//! shape (int64 dims) instead of their value — float inputs, which matter only by shape.
//!
//! The forward kernel runs on an index map: the differentiated input is replaced by the int64
//! tensor `1, 2, …, numel` of shape `x_shape`, every other float input by int64 zeros of its
//! shape (integer inputs — indices, starts, axes — are kept), so each output element holds
//! `1 +` the position of `x` it was copied from, or a value ≤ 0 when it came from elsewhere
//! (another Concat operand, Pad's constant). Then `dx[src] += dy[p]`: a scatter-add, so
//! repeated Gather indices and Expand's copies accumulate. Counting from 1 makes "no source"
//! include 0, the value Pad fills with when its constant is omitted.
//!
//! Reshape-like ops, Transpose and Gather take direct paths with the same result.

use adaptc_ir::{AttrValue, Attribute, DataType, Node, OpKey};

use super::common::shape_input;
use super::real::{with_real, Real};
use crate::error::{kbail, KResult};
use crate::ops::util::{axes, axis, checked_numel, ints};
use crate::ops::{Inputs, OpCtx};
use crate::registry::Registry;
use crate::tensor::{Elem, Storage, Tensor};

/// This op's own attributes, not handed to the forward kernel.
const OWN_ATTRS: &[&str] = &["op", "input", "output", "fwd_opset", "fwd_outputs", "fwd_shapes"];

/// Ops whose output is their first input's elements in the same order.
const RESHAPES: &[&str] = &["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

pub fn index_map_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let dy = i.req(0)?;
    let x_shape = shape_input(i.req(1)?, "x_shape")?;
    let Some(op) = c.string("op") else { kbail!("attribute `op` (the forward op type) is required") };
    let Some(fwd_opset) = c.node.attr("fwd_opset").and_then(Attribute::as_int) else {
        kbail!("attribute `fwd_opset` is required")
    };
    let input = c.int("input", -1);
    let output = c.int("output", 0);
    if input < 0 || output < 0 {
        kbail!("attributes `input` ({input}) and `output` ({output}) must be given and ≥ 0");
    }
    let (input, output) = (input as usize, output as usize);
    let n = checked_numel(&x_shape)?;
    if !matches!(dy.dtype(), DataType::Float | DataType::Double) {
        kbail!("dy must be f32 or f64, got {}", dy.dtype());
    }
    let fwd: Vec<Option<&Tensor>> = i.0.get(2..).unwrap_or(&[]).to_vec();
    if RESHAPES.contains(&op.as_str()) && input == 0 && output == 0 {
        if dy.numel() != n {
            kbail!("{op}: dy has shape {:?}, which does not hold the {n} elements of {x_shape:?}", dy.shape());
        }
        return Ok(vec![dy.with_shape(x_shape)]);
    }
    if op == "Gather" && input == 0 && output == 0 {
        let Some(indices) = fwd.get(1).copied().flatten() else { kbail!("Gather: the indices input is missing") };
        return gather_grad(c, dy, &x_shape, indices).map(|t| vec![t]);
    }
    if op == "Transpose" && input == 0 && output == 0 {
        return transpose_grad(c, dy, x_shape).map(|t| vec![t]);
    }
    let src = source_map(c, &op, fwd_opset, input, output, &x_shape, &fwd, dy)?;
    fn scatter<T: Real>(dy: &[T], src: &[i64], n: usize) -> KResult<Vec<T>> {
        let mut dx = vec![T::zero(); n];
        for (&g, &s) in dy.iter().zip(src) {
            if s > 0 {
                let Some(o) = dx.get_mut(s as usize - 1) else { kbail!("index map value {s} is out of range") };
                *o += g;
            }
        }
        Ok(dx)
    }
    let data = with_real!(dy.data(), g => Elem::wrap(scatter(g, &src, n)?), _ => kbail!("dy must be f32 or f64"));
    Ok(vec![Tensor::from_parts(x_shape, data)])
}

/// For every element of forward output `output`, 1 + the position of `x` it copies, or ≤ 0.
/// For each element of the forward output `output`, 1 + the position of `x` it was copied
/// from (≤ 0: from elsewhere): the forward kernel run on an index map. `dy` only gives the
/// output's shape; float forward inputs only their shapes. The CUDA backend computes the map
/// here and scatters on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn source_map(
    c: &OpCtx,
    op: &str,
    fwd_opset: i64,
    input: usize,
    output: usize,
    x_shape: &[usize],
    fwd: &[Option<&Tensor>],
    dy: &Tensor,
) -> KResult<Vec<i64>> {
    let n = checked_numel(x_shape)?;
    let Ok(n64) = i64::try_from(n) else { kbail!("x_shape {x_shape:?} is too large") };
    let iota = Tensor::from_parts(x_shape.to_vec(), Storage::I64((1..=n64).collect()));
    let by_shape = c.node.attr("fwd_shapes").and_then(Attribute::as_ints).unwrap_or_default();
    let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(fwd.len().max(input + 1));
    for (k, t) in fwd.iter().enumerate() {
        owned.push(match t {
            _ if k == input => None,
            Some(t) if by_shape.contains(&(k as i64)) => {
                let shape = shape_input(t, "a forward input given by its shape")?;
                Some(Tensor::from_parts(shape.clone(), Storage::I64(vec![0; checked_numel(&shape)?])))
            }
            Some(t)
                if matches!(t.dtype(), DataType::Float | DataType::Double | DataType::Float16 | DataType::BFloat16) =>
            {
                Some(Tensor::from_parts(t.shape().to_vec(), Storage::I64(vec![0; t.numel()])))
            }
            _ => None,
        });
    }
    owned.resize_with(owned.len().max(input + 1), || None);
    let refs: Vec<Option<&Tensor>> = (0..owned.len())
        .map(|k| if k == input { Some(&iota) } else { owned[k].as_ref().or(fwd.get(k).copied().flatten()) })
        .collect();
    let n_out = match c.node.attr("fwd_outputs").and_then(Attribute::as_int) {
        Some(k) if k > output as i64 => k as usize,
        Some(k) => kbail!("fwd_outputs={k} leaves no output {output}"),
        None if op == "Split" => split_outputs(c, x_shape, dy, output),
        None => output + 1,
    };
    let names = |k: usize, p: &str| (0..k).map(|j| format!("{p}{j}")).collect::<Vec<_>>();
    let in_names = refs.iter().enumerate().map(|(k, t)| if t.is_some() { format!("in{k}") } else { String::new() });
    let mut node = Node::new(OpKey::onnx(op), in_names.collect(), names(n_out, "out"));
    for a in c.node.attrs() {
        if !OWN_ATTRS.contains(&a.name.as_str()) {
            node = node.with_attr(a.clone());
        }
    }
    if op == "Pad" && fwd_opset < 11 {
        // Pad before opset 11 takes its constant as an attribute: make it "no source".
        node = node.with_attr(Attribute::new("value", AttrValue::Float(0.0)));
    }
    let Some(def) = Registry::cpu().get(node.op()) else { kbail!("IndexMapGrad: no kernel for the forward op {op}") };
    let ctx = OpCtx { node: &node, opset: fwd_opset };
    let mut outs = match (def.kernel)(&ctx, &Inputs(&refs)) {
        Ok(o) => o,
        Err(e) => kbail!("IndexMapGrad: the forward op {op} failed on the index map: {e}"),
    };
    if output >= outs.len() {
        kbail!("IndexMapGrad: the forward op {op} has no output {output}");
    }
    let out = outs.swap_remove(output);
    if out.shape() != dy.shape() {
        kbail!("IndexMapGrad: {op} output {output} has shape {:?} but dy has {:?}", out.shape(), dy.shape());
    }
    match out.into_data() {
        Storage::I64(v) => Ok(v),
        other => kbail!("IndexMapGrad: {op} is not a data-movement op (its output is {}, not int64)", other.dtype()),
    }
}

/// Split's output count when neither sizes nor `num_outputs` give it: `x`'s axis over `dy`'s.
fn split_outputs(c: &OpCtx, x_shape: &[usize], dy: &Tensor, output: usize) -> usize {
    let Ok(ax) = axis(c.int("axis", 0), x_shape.len()) else { return output + 1 };
    match dy.shape().get(ax) {
        Some(&d) if x_shape[ax].checked_rem(d) == Some(0) => (x_shape[ax] / d).max(output + 1),
        _ => output + 1,
    }
}

/// Gather's gradient directly: `dx[o, idx[j], r] += dy[o, j, r]`.
fn gather_grad(c: &OpCtx, dy: &Tensor, x_shape: &[usize], indices: &Tensor) -> KResult<Tensor> {
    if x_shape.is_empty() {
        kbail!("Gather: data must have rank ≥ 1");
    }
    let ax = axis(c.int("axis", 0), x_shape.len())?;
    let dim = x_shape[ax];
    let idx = ints(indices)?;
    let mut want = x_shape[..ax].to_vec();
    want.extend_from_slice(indices.shape());
    want.extend_from_slice(&x_shape[ax + 1..]);
    if dy.shape() != want.as_slice() {
        kbail!("IndexMapGrad: Gather output has shape {want:?} but dy has {:?}", dy.shape());
    }
    let mut rows = Vec::with_capacity(idx.len());
    for &v in &idx {
        let r = if v < 0 { v + dim as i64 } else { v };
        if r < 0 || r >= dim as i64 {
            kbail!("Gather: index {v} is out of range for an axis of size {dim}");
        }
        rows.push(r as usize);
    }
    let outer: usize = x_shape[..ax].iter().product();
    let inner: usize = x_shape[ax + 1..].iter().product();
    let n = checked_numel(x_shape)?;
    fn go<T: Real>(dy: &[T], rows: &[usize], [outer, dim, inner, n]: [usize; 4]) -> Vec<T> {
        let mut dx = vec![T::zero(); n];
        for o in 0..outer {
            for (j, &r) in rows.iter().enumerate() {
                let src = &dy[(o * rows.len() + j) * inner..][..inner];
                let dst = &mut dx[(o * dim + r) * inner..][..inner];
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
            }
        }
        dx
    }
    let data = with_real!(dy.data(), g => Elem::wrap(go(g, &rows, [outer, dim, inner, n])), _ => kbail!("dy must be f32 or f64"));
    Ok(Tensor::from_parts(x_shape.to_vec(), data))
}

/// Transpose's gradient directly: `dy` transposed by the inverse permutation.
fn transpose_grad(c: &OpCtx, dy: &Tensor, x_shape: Vec<usize>) -> KResult<Tensor> {
    let rank = x_shape.len();
    let perm = match c.ints("perm") {
        Some(p) => {
            let p = axes(&p, rank)?;
            if p.len() != rank {
                kbail!("Transpose: perm {p:?} does not match rank {rank}");
            }
            p
        }
        None => (0..rank).rev().collect(),
    };
    let fwd_shape: Vec<usize> = perm.iter().map(|&p| x_shape[p]).collect();
    if dy.shape() != fwd_shape.as_slice() {
        kbail!("IndexMapGrad: Transpose output has shape {fwd_shape:?} but dy has {:?}", dy.shape());
    }
    let mut inverse = vec![0; rank];
    for (k, &p) in perm.iter().enumerate() {
        inverse[p] = k;
    }
    Ok(crate::ops::shape::permute(dy, &inverse))
}
