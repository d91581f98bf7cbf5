//! `autocast{activations=bf16}`: activations stored in bf16 between ops, the way a model
//! loaded in bf16 runs (`model.to(torch.bfloat16)` under `torch.autocast`), while every op
//! still computes in f32.
//!
//! Each f32 activation an op writes is rounded once: `y = op(…)` becomes `y/act = op(…)`,
//! `y/bf16 = Cast(y/act, bf16)`, `y = Cast(y/bf16, f32)`, so readers see the rounded value
//! under its old name. Nothing is lost to the plan: the rounding pair folds into the
//! elementwise chain that writes the value, the widening into each chain that reads it, and
//! so the value crosses memory in bf16 (half the bytes, half the memory when the backward
//! keeps it). Layout ops (`Transpose`, `Reshape` and kin) that read a widened value move
//! behind the widening and shuffle the bf16 value instead. Autodiff differentiates through
//! the casts, so gradients are rounded at the same places, as in a bf16 model.
//!
//! What stays f32, "where safe":
//! - statistics: a reduction's output and what is computed from statistics alone (a norm's
//!   mean, variance and scale), and values only reductions read (the squares a variance sums);
//! - values that mix an activation with a non-activation (an additive attention mask, whose
//!   large negatives would overflow bf16 to −∞);
//! - products' outputs (already bf16-exact: the products themselves round), casts, graph
//!   outputs, and everything computed from weights alone.
//!
//! An *activation* is an f32 value computed from another activation, or looked up from a
//! constant table by runtime indices (an embedding `Gather`).

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Attribute, DataType, Graph, NodeId};

use super::super::Builder;
use super::NAME;
use crate::canonicalize::is_constant;
use crate::pass::PassError;

/// Ops that only move elements: run on the bf16 value, then widened.
const LAYOUT: &[&str] = &["Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

/// How many activations were rounded and layout ops moved behind the widening.
pub(super) struct Stored {
    pub rounded: usize,
    pub layout: usize,
}

/// Rounds `graph`'s f32 activations to `dtype` where they are written (see the module doc);
/// `products` are the MatMul/Gemm nodes the pass runs in low precision.
pub(super) fn store_low(
    graph: &mut Graph,
    dtype: DataType,
    products: &HashSet<NodeId>,
    types: &HashMap<String, DataType>,
) -> Result<Stored, PassError> {
    let order = graph.topo_order()?;
    let full = activations(graph, &order, products, types);
    let mut stored = Stored { rounded: 0, layout: 0 };
    // value → its low-precision source, for values a widening cast produces.
    let mut low: HashMap<String, String> = HashMap::new();
    for id in order {
        let node = graph.node(id);
        let Some(out) = node.output(0).map(str::to_string) else { continue };
        if node.outputs().len() != 1 || !full.contains(&out) || graph.is_graph_output(&out) {
            continue;
        }
        let layout = adaptc_ir::is_default_domain(&node.op().domain) && LAYOUT.contains(&node.op().op_type.as_str());
        if let Some(source) = node.input(0).and_then(|x| low.get(x)).filter(|_| layout).cloned() {
            let x = node.input(0).unwrap_or_default().to_string();
            graph.set_input(id, 0, &source)?;
            let label = graph.node(id).label();
            let narrow = graph.unique_name(&format!("{out}/{}", super::short(dtype)));
            graph.rename_output(id, 0, &narrow)?;
            widen(graph, &label, &narrow, &out)?;
            remove_if_unread(graph, &x)?;
            low.insert(out, narrow);
            stored.layout += 1;
            continue;
        }
        let readers = graph.uses(&out);
        let only_reductions = readers.iter().all(|u| reduction(graph.node(u.node).op().op_type.as_str()));
        if readers.is_empty() || only_reductions {
            continue;
        }
        let label = graph.node(id).label();
        let wide = graph.unique_name(&format!("{out}/act"));
        graph.rename_output(id, 0, &wide)?;
        let narrow = graph.unique_name(&format!("{out}/{}", super::short(dtype)));
        Builder::new(graph, NAME, &label).node_into(
            "Cast",
            &[wide.as_str()],
            vec![Attribute::int("to", dtype.code() as i64)],
            super::short(dtype),
            &narrow,
        )?;
        widen(graph, &label, &narrow, &out)?;
        low.insert(out, narrow);
        stored.rounded += 1;
    }
    Ok(stored)
}

/// `out = Cast(narrow, f32)`.
fn widen(graph: &mut Graph, label: &str, narrow: &str, out: &str) -> Result<(), PassError> {
    Builder::new(graph, NAME, label).node_into(
        "Cast",
        &[narrow],
        vec![Attribute::int("to", DataType::Float.code() as i64)],
        "f32",
        out,
    )?;
    Ok(())
}

/// Removes the producer of `value` when nothing reads it any more.
fn remove_if_unread(graph: &mut Graph, value: &str) -> Result<(), PassError> {
    if graph.uses(value).is_empty() && !graph.is_graph_output(value) {
        if let Some((id, _)) = graph.producer(value) {
            graph.remove_node(id)?;
        }
    }
    Ok(())
}

fn reduction(op: &str) -> bool {
    op.starts_with("Reduce")
}

/// What an f32 value computed from runtime inputs holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An activation: what the model computes, safe to round.
    Activation,
    /// A statistic: a reduction's output, or computed from statistics alone.
    Statistic,
    /// Anything else (an additive attention mask built from integer inputs), and what adds one
    /// to an activation: values whose magnitude bf16 may not hold.
    Other,
}

/// Ops through which an `Other` value (a mask's large negatives) reaches their output as is.
const PASSES_MAGNITUDE: &[&str] = &["Add", "Sub", "Where", "Max", "Min", "Sum"];

/// The f32 activations of `graph` (see [`Kind`]): the values that may be stored rounded when
/// their producer is not a product, a cast or a reduction.
fn activations(
    graph: &Graph,
    order: &[NodeId],
    products: &HashSet<NodeId>,
    types: &HashMap<String, DataType>,
) -> HashSet<String> {
    let mut kind: HashMap<String, Kind> = HashMap::new();
    let mut varying: HashSet<String> =
        graph.inputs.iter().filter(|v| graph.initializer(&v.name).is_none()).map(|v| v.name.clone()).collect();
    let f32 = |v: &str| types.get(v) == Some(&DataType::Float);
    let mut full = HashSet::new();
    for &id in order {
        let node = graph.node(id);
        if !node.inputs().iter().any(|v| varying.contains(v)) {
            continue;
        }
        let outputs: Vec<&String> = node.outputs().iter().filter(|o| !o.is_empty()).collect();
        varying.extend(outputs.iter().map(|o| o.to_string()));
        let op = node.op();
        let default = adaptc_ir::is_default_domain(&op.domain);
        let kinds: Vec<Kind> = node.inputs().iter().filter_map(|v| kind.get(v).copied()).collect();
        let out_kind = if default && reduction(&op.op_type) {
            Kind::Statistic
        } else if kinds.contains(&Kind::Other) && default && PASSES_MAGNITUDE.contains(&op.op_type.as_str()) {
            Kind::Other
        } else if kinds.contains(&Kind::Activation) {
            Kind::Activation
        } else if kinds.contains(&Kind::Statistic) {
            Kind::Statistic
        } else if default && op.op_type == "Gather" && node.input(0).is_some_and(|t| f32(t) && is_constant(graph, t)) {
            Kind::Activation
        } else {
            Kind::Other
        };
        for o in outputs.into_iter().filter(|o| f32(o)) {
            kind.insert(o.clone(), out_kind);
            // Products and casts already write what they should; everything else rounds.
            let written_low = products.contains(&id) || (default && op.op_type == "Cast");
            if out_kind == Kind::Activation && !written_low {
                full.insert(o.clone());
            }
        }
    }
    full
}
