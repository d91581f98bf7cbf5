//! The loss reads the logits as the model stored them.
//!
//! An `autocast` model's head writes bf16 logits, and the graph widens them (`Cast(to=f32)`)
//! for the f32 loss; in the backward, the loss's f32 gradient is rounded back to bf16 for the
//! head's product. At the benchmark shape (16k tokens × 32k classes) each of those is a 2 GiB
//! f32 tensor, written once and read twice or more, and two of them are live at the loss's
//! gradient (the step's peak). Both conversions fold into the loss kernels:
//!
//! - forward: a `Cast(to=f32)` whose value only the losses read (as `SoftmaxCrossEntropyLoss`
//!   scores, as `SoftmaxCrossEntropyLossGrad` scores, through views, or for its shape) is
//!   dropped; its readers read the Cast's input, and the loss becomes
//!   `ai.adaptc::SoftmaxCrossEntropyLoss`, whose outputs are f32 whatever the scores' type;
//! - backward: a `SoftmaxCrossEntropyLossGrad` whose gradient only a `Cast` to a half type
//!   reads (directly or through one view) writes that type itself (`to`), and the Cast is
//!   dropped.
//!
//! Both are exact: the kernels widen scores as the Cast did (bf16 → f32 is exact) and compute
//! the gradient in f32 before rounding it once, as the Cast after them rounded it.

use adaptc_ir::{Attribute, DataType, Graph, Node, NodeId, OpKey};

use super::Fusions;
use crate::ops::KernelFn;
use crate::registry::{Registry, ADAPTC_DOMAIN};

/// Layout ops a loss's scores may pass through (they read their input's data in order).
const VIEWS: &[&str] = &["Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"];

/// Adds the loss fusions of `graph` to `f`.
pub fn find(graph: &Graph, f: &mut Fusions) {
    for id in graph.node_ids() {
        if is_adaptc(graph.node(id), "SoftmaxCrossEntropyLossGrad") {
            gradient_in_half(graph, id, f);
        }
    }
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.op().is("Cast") && node.attr_int("to", 0) == i64::from(DataType::Float.code()) {
            scores_as_stored(graph, id, f);
        }
    }
}

fn is_adaptc(node: &Node, op: &str) -> bool {
    node.op().domain == ADAPTC_DOMAIN && node.op().op_type == op
}

fn is_view(node: &Node) -> bool {
    VIEWS.iter().any(|v| node.op().is(v))
}

fn reads_only_dims(node: &Node) -> bool {
    node.op().is("Shape") || node.op().is("Size")
}

/// The node as the plan has it so far (a fusion may have replaced it already).
fn current(graph: &Graph, f: &Fusions, id: NodeId) -> Node {
    f.replace.get(&id).map_or_else(|| graph.node(id).clone(), |(n, _)| n.clone())
}

/// `node` rebuilt with `op`, its inputs and outputs mapped, and `extra` attributes added.
fn rebuilt(node: &Node, op: OpKey, input: impl Fn(&str) -> String, output: impl Fn(&str) -> String) -> Node {
    let inputs = node.inputs().iter().map(|v| input(v)).collect();
    let outputs = node.outputs().iter().map(|v| output(v)).collect();
    node.attrs().iter().fold(Node::new(op, inputs, outputs), |n, a| n.with_attr(a.clone())).named(node.label())
}

/// The CPU kernel of a node the fusion keeps as it is (a view, `Shape`).
fn kernel_of(node: &Node) -> Option<KernelFn> {
    Registry::cpu().get(node.op()).map(|d| d.kernel)
}

/// Backward: `SoftmaxCrossEntropyLossGrad` → [one view] → `Cast(to=bf16|f16)`, the gradient
/// read by nothing else.
fn gradient_in_half(graph: &Graph, grad_id: NodeId, f: &mut Fusions) {
    let grad = graph.node(grad_id);
    if grad.attr("to").is_some() || grad.outputs().len() != 1 {
        return;
    }
    let Some(g) = grad.output(0) else { return };
    let Some(sole) = sole_reader(graph, g) else { return };
    let (view, cast) = if is_view(graph.node(sole)) {
        let Some(r) = graph.node(sole).output(0) else { return };
        match sole_reader(graph, r) {
            Some(c) => (Some(sole), c),
            None => return,
        }
    } else {
        (None, sole)
    };
    let cast_node = graph.node(cast);
    let to = cast_node.attr_int("to", 0);
    let half = [DataType::BFloat16, DataType::Float16].iter().any(|d| i64::from(d.code()) == to);
    let Some(b) = cast_node.output(0) else { return };
    if !cast_node.op().is("Cast") || !half || !f.claim(&[&[grad_id, cast][..], view.as_slice()].concat()) {
        return;
    }
    let kernel = crate::ops::grad::softmax_cross_entropy_loss_grad::softmax_cross_entropy_loss_grad as KernelFn;
    let keep = |v: &str| v.to_string();
    match view {
        None => {
            let node = rebuilt(grad, grad.op().clone(), keep, |_| b.to_string());
            f.replace.insert(grad_id, (node.with_attr(Attribute::int("to", to)), kernel));
        }
        Some(v) => {
            let view_node = graph.node(v);
            let Some(view_kernel) = kernel_of(view_node) else { return };
            let node = rebuilt(grad, grad.op().clone(), keep, keep);
            f.replace.insert(grad_id, (node.with_attr(Attribute::int("to", to)), kernel));
            f.replace.insert(v, (rebuilt(view_node, view_node.op().clone(), keep, |_| b.to_string()), view_kernel));
        }
    }
    f.absorbed.insert(cast);
}

/// Every use of `value` when it has exactly one reader and is not a graph output.
fn sole_reader(graph: &Graph, value: &str) -> Option<NodeId> {
    if graph.is_graph_output(value) {
        return None;
    }
    match graph.uses(value) {
        [u] if u.slot.is_some() => Some(u.node),
        _ => None,
    }
}

/// The readers of a value that only the losses read: the nodes to re-point or retype.
#[derive(Default)]
struct LossReaders {
    /// Nodes reading the value itself (their input is re-pointed at the Cast's input).
    direct: Vec<NodeId>,
    /// Every `SoftmaxCrossEntropyLoss` reached (retyped to the `ai.adaptc` op).
    losses: Vec<NodeId>,
    /// Every node involved, for the claim.
    all: Vec<NodeId>,
}

/// Whether every reader of `value` is a loss's scores, a view whose value only such readers
/// read, or a dims read; collects them.
fn loss_readers(graph: &Graph, value: &str, depth: usize, direct: bool, out: &mut LossReaders) -> bool {
    if graph.is_graph_output(value) || depth > 3 {
        return false;
    }
    for u in graph.uses(value) {
        let node = graph.node(u.node);
        let ok = match u.slot {
            None => false,
            Some(slot) if node.op().is("SoftmaxCrossEntropyLoss") => {
                out.losses.push(u.node);
                slot == 0
            }
            Some(slot) if is_adaptc(node, "SoftmaxCrossEntropyLossGrad") => slot == 1,
            Some(_) if reads_only_dims(node) => true,
            Some(slot) if is_view(node) => {
                slot == 0 && node.outputs().len() == 1 && loss_readers(graph, &node.outputs()[0], depth + 1, false, out)
            }
            Some(_) => false,
        };
        if !ok {
            return false;
        }
        if direct && !out.direct.contains(&u.node) {
            out.direct.push(u.node);
        }
        if !out.all.contains(&u.node) {
            out.all.push(u.node);
        }
    }
    true
}

/// Forward: `c = Cast(to=f32)(x)` read only by the losses.
fn scores_as_stored(graph: &Graph, cast_id: NodeId, f: &mut Fusions) {
    let cast = graph.node(cast_id);
    let (Some(x), Some(c)) = (cast.input(0), cast.output(0)) else { return };
    let mut readers = LossReaders::default();
    if !loss_readers(graph, c, 0, true, &mut readers) || readers.losses.is_empty() {
        return;
    }
    // The gradient fusion may have replaced a SoftmaxCrossEntropyLossGrad already: it is
    // rebuilt from that replacement, so it is not claimed again.
    let fresh: Vec<NodeId> = readers.all.iter().copied().filter(|id| !f.replace.contains_key(id)).collect();
    let taken = readers.all.iter().any(|id| f.absorbed.contains(id))
        || readers
            .all
            .iter()
            .any(|id| f.replace.contains_key(id) && !is_adaptc(graph.node(*id), "SoftmaxCrossEntropyLossGrad"));
    if taken || !f.claim(&[&[cast_id][..], &fresh].concat()) {
        return;
    }
    let mut changed: Vec<(NodeId, Node)> = Vec::new();
    for &id in &readers.all {
        let node = current(graph, f, id);
        let op = if readers.losses.contains(&id) {
            OpKey::new(ADAPTC_DOMAIN, "SoftmaxCrossEntropyLoss")
        } else {
            node.op().clone()
        };
        let input = |v: &str| if readers.direct.contains(&id) && v == c { x.to_string() } else { v.to_string() };
        changed.push((id, rebuilt(&node, op, input, |v: &str| v.to_string())));
    }
    let mut kernels = Vec::with_capacity(changed.len());
    for (id, node) in changed {
        let kernel = match f.replace.get(&id) {
            Some((_, k)) => *k,
            None if readers.losses.contains(&id) => crate::ops::loss::softmax_cross_entropy_f32 as KernelFn,
            None => match kernel_of(&node) {
                Some(k) => k,
                None => return,
            },
        };
        kernels.push((id, node, kernel));
    }
    for (id, node, kernel) in kernels {
        f.replace.insert(id, (node, kernel));
    }
    f.absorbed.insert(cast_id);
}
