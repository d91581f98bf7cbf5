//! Ops that read and write low-precision values as stored, instead of through casts.
//!
//! An `autocast` graph keeps activations in bf16 and widens them (`Cast(to=f32)`) for the ops
//! that compute in f32; in the backward, their f32 gradients are rounded back to bf16
//! (`Cast(to=bf16)`). Where the reader is an op whose kernel can widen an operand itself, or
//! the writer one that can round its output itself, the cast is a pass over memory that
//! materialises an f32 copy — and when the backward reads the operand too, the copy lives from
//! the forward to the backward. Two op families are such readers and writers:
//!
//! - the loss: a model's bf16 logits, widened for `SoftmaxCrossEntropyLoss` (which becomes
//!   `ai.adaptc::SoftmaxCrossEntropyLoss`, whose outputs are f32 whatever the scores' type) and
//!   its gradient; the gradient rounded to bf16 for the head's product. At the benchmark shape
//!   each cast is of a 2 GiB f32 tensor, and two of them were live at the step's peak;
//! - fused attention: the queries, keys and values widened for `SoftmaxAttention` and its
//!   gradient (which also reads the output gradient, widened then transposed), and the three
//!   gradients rounded to bf16.
//!
//! And a layout op between a widening and a rounding to the same type (`Cast(to=f32)` →
//! Expand → `Cast(to=bf16)`: the keys and values that grouped-query attention repeats for each
//! query head) moves the stored elements themselves, so neither cast runs and the repeated
//! values are written at half the width; a layout op only a rounding reads (attention's f32
//! output transposed, then rounded) runs after it, on the rounded elements.
//!
//! Forward: a `Cast(to=f32)` whose value only such readers read (at the slots they widen
//! themselves, directly or through layout ops, or for its shape) is dropped, and its readers
//! read the Cast's input. Backward: an output that only a `Cast(to=bf16)` reads (directly or
//! through one layout op) is written in bf16 by the op (its `to` attribute), and the Cast is
//! dropped. All are exact: the kernels widen operands as the Cast
//! did (bf16 → f32 is exact, and commutes with moving elements) and round an output once, as
//! the Cast after them did; a widened bf16 value rounds back to itself.

use adaptc_ir::{Attribute, DataType, Graph, Node, NodeId, OpKey};

use super::Fusions;
use crate::ops::KernelFn;
use crate::registry::{Registry, ADAPTC_DOMAIN};

/// Ops that only move elements, which a widened value may pass through on its way to a reader.
const LAYOUT: &[&str] = &["Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Transpose"];

/// An op that widens some of its operands itself: `(domain, op type, slots)`.
const READERS: &[(&str, &str, &[usize])] = &[
    ("", "SoftmaxCrossEntropyLoss", &[0]),
    (ADAPTC_DOMAIN, "SoftmaxCrossEntropyLossGrad", &[1]),
    (ADAPTC_DOMAIN, "SoftmaxAttention", &[0, 1, 3]),
    (ADAPTC_DOMAIN, "SoftmaxAttentionGrad", &[0, 1, 3, 6]),
];

/// An op that can write its outputs in bf16 (`to`: one code, or one per output).
const WRITERS: &[(&str, bool)] = &[("SoftmaxCrossEntropyLossGrad", false), ("SoftmaxAttentionGrad", true)];

/// Adds the fusions of `graph`'s stored values to `f`.
pub fn find(graph: &Graph, f: &mut Fusions) {
    for id in graph.node_ids() {
        let node = graph.node(id);
        if let Some(&(_, per_output)) =
            WRITERS.iter().find(|(op, _)| node.op().domain == ADAPTC_DOMAIN && node.op().op_type == *op)
        {
            outputs_as_stored(graph, id, per_output, f);
        }
    }
    for id in graph.node_ids() {
        let node = graph.node(id);
        if node.op().is("Cast") && node.attr_int("to", 0) == i64::from(DataType::Float.code()) {
            operands_as_stored(graph, id, f);
        }
    }
    for id in graph.node_ids() {
        if MOVERS.iter().any(|op| graph.node(id).op().is(op)) {
            moved_as_stored(graph, id, f);
        }
    }
    for id in graph.node_ids() {
        if NARROW_FIRST.iter().any(|op| graph.node(id).op().is(op)) {
            narrowed_first(graph, id, f);
        }
    }
}

/// Layout ops that write as many elements as they read, or more: after a rounding they move
/// fewer bytes.
const NARROW_FIRST: &[&str] = &["Transpose", "Expand", "Tile"];

/// `y = L(v, …)` read only by `z = Cast(y, to=half)`: the Cast runs first,
/// in L's place, into a new value, and L moves the rounded elements into `z`, in the Cast's
/// place (fused attention's f32 output, transposed back to `[b, s, h, d]` and rounded for
/// the output projection). Exact: rounding commutes with moving elements.
fn narrowed_first(graph: &Graph, id: NodeId, f: &mut Fusions) {
    let mover = graph.node(id);
    let (Some(v), Some(y)) = (mover.input(0), mover.output(0)) else { return };
    if mover.outputs().len() != 1 {
        return;
    }
    // With a dims reader of `y` (which may run before the Cast's place), leave it.
    let Some((narrow_id, y_dims)) = one_reader_and_dims(graph, y) else { return };
    let narrow = graph.node(narrow_id);
    let Some(z) = narrow.output(0) else { return };
    let to = narrow.attr_int("to", 0);
    let half = [DataType::BFloat16, DataType::Float16].iter().any(|d| i64::from(d.code()) == to);
    if !narrow.op().is("Cast") || narrow.inputs().len() != 1 || !half || !y_dims.is_empty() {
        return;
    }
    let rounded = format!("{z}/rounded");
    if graph.producer(&rounded).is_some() || graph.initializer(&rounded).is_some() {
        return;
    }
    let (Some(cast_kernel), Some(move_kernel)) = (kernel_of(narrow), kernel_of(mover)) else { return };
    if !f.claim(&[id, narrow_id]) {
        return;
    }
    let cast = rebuilt(narrow, narrow.op().clone(), |_| v.to_string(), |_| rounded.clone());
    let moved =
        rebuilt(mover, mover.op().clone(), |x| if x == v { rounded.clone() } else { x.to_string() }, |_| z.to_string());
    f.replace.insert(id, (cast, cast_kernel));
    f.replace.insert(narrow_id, (moved, move_kernel));
}

/// Layout ops that may move stored elements between a widening and a rounding: one data
/// input (slot 0), the others parameters, one output.
const MOVERS: &[&str] = &["Expand", "Slice", "Transpose", "Tile"];

/// The element type `value` is stored in when a `Cast` makes it, directly or through layout
/// ops (which keep the type), or it is a graph input or initializer.
fn stored_type(graph: &Graph, value: &str, depth: usize) -> Option<i64> {
    if let Some(t) = graph.initializer(value) {
        return Some(i64::from(t.dtype().code()));
    }
    if let Some(input) = graph.inputs.iter().find(|i| i.name == value) {
        return input.ty.as_ref().and_then(|t| t.dtype()).map(|d| i64::from(d.code()));
    }
    let (id, _) = graph.producer(value)?;
    let node = graph.node(id);
    if node.op().is("Cast") {
        return node.attr("to").and_then(Attribute::as_int);
    }
    if depth < 4 && (is_layout(node) || MOVERS.iter().any(|op| node.op().is(op))) {
        return stored_type(graph, node.input(0)?, depth + 1);
    }
    None
}

/// The readers of `value` when they are one node (by slot 0) besides `Shape`/`Size` readers
/// and it is no graph output: (that node, the dims readers).
fn one_reader_and_dims(graph: &Graph, value: &str) -> Option<(NodeId, Vec<NodeId>)> {
    if graph.is_graph_output(value) {
        return None;
    }
    let (mut main, mut dims) = (None, Vec::new());
    for u in graph.uses(value) {
        match u.slot {
            Some(_) if reads_only_dims(graph.node(u.node)) => dims.push(u.node),
            Some(0) if main.is_none() => main = Some(u.node),
            _ => return None,
        }
    }
    Some((main?, dims))
}

/// `w = Cast(x, to=f32)`, `y = L(w, …)`, `z = Cast(y, to=T)` with `x` stored as `T`: `L`
/// moves `x`'s elements into `z` directly. The dims readers of `w` and `y` read `x` and `z`
/// (same shapes).
fn moved_as_stored(graph: &Graph, id: NodeId, f: &mut Fusions) {
    let mover = graph.node(id);
    let (Some(w), Some(y)) = (mover.input(0), mover.output(0)) else { return };
    if mover.outputs().len() != 1 {
        return;
    }
    let Some((widen_id, _)) = graph.producer(w) else { return };
    let widen = graph.node(widen_id);
    if !widen.op().is("Cast") || widen.attr_int("to", 0) != i64::from(DataType::Float.code()) {
        return;
    }
    let Some(x) = widen.input(0) else { return };
    let Some((reader, w_dims)) = one_reader_and_dims(graph, w) else { return };
    let Some((narrow_id, y_dims)) = one_reader_and_dims(graph, y) else { return };
    let narrow = graph.node(narrow_id);
    let Some(z) = narrow.output(0) else { return };
    let to = narrow.attr_int("to", 0);
    let half = [DataType::BFloat16, DataType::Float16].iter().any(|d| i64::from(d.code()) == to);
    if reader != id || !narrow.op().is("Cast") || !half || stored_type(graph, x, 0) != Some(to) {
        return;
    }
    let Some(kernel) = kernel_of(mover) else { return };
    let mut repointed = Vec::with_capacity(w_dims.len() + y_dims.len());
    for (dims_of, from, to) in [(&w_dims, w, x), (&y_dims, y, z)] {
        for &d in dims_of {
            let node = graph.node(d);
            let Some(k) = kernel_of(node) else { return };
            let swap = |v: &str| if v == from { to.to_string() } else { v.to_string() };
            repointed.push((d, rebuilt(node, node.op().clone(), swap, |v| v.to_string()), k));
        }
    }
    let dims: Vec<NodeId> = repointed.iter().map(|(d, _, _)| *d).collect();
    if !f.claim(&[&[widen_id, id, narrow_id][..], &dims].concat()) {
        return;
    }
    let moved =
        rebuilt(mover, mover.op().clone(), |v| if v == w { x.to_string() } else { v.to_string() }, |_| z.to_string());
    f.replace.insert(id, (moved, kernel));
    for (d, node, k) in repointed {
        f.replace.insert(d, (node, k));
    }
    f.absorbed.insert(widen_id);
    f.absorbed.insert(narrow_id);
}

fn is_layout(node: &Node) -> bool {
    LAYOUT.iter().any(|v| node.op().is(v))
}

fn reads_only_dims(node: &Node) -> bool {
    node.op().is("Shape") || node.op().is("Size")
}

/// The slots at which `node` widens operands itself (empty when it is not such a reader).
fn widening_slots(node: &Node) -> &'static [usize] {
    let op = node.op();
    READERS
        .iter()
        .find(|(domain, name, _)| {
            op.op_type == *name
                && if domain.is_empty() { adaptc_ir::is_default_domain(&op.domain) } else { op.domain == *domain }
        })
        .map_or(&[], |(_, _, slots)| slots)
}

/// The node as the plan has it so far (an earlier fusion here may have replaced it).
fn current(graph: &Graph, f: &Fusions, id: NodeId) -> Node {
    f.replace.get(&id).map_or_else(|| graph.node(id).clone(), |(n, _)| n.clone())
}

/// `node` rebuilt with `op` and its inputs and outputs mapped (attributes kept).
fn rebuilt(node: &Node, op: OpKey, input: impl Fn(&str) -> String, output: impl Fn(&str) -> String) -> Node {
    let inputs = node.inputs().iter().map(|v| input(v)).collect();
    let outputs = node.outputs().iter().map(|v| output(v)).collect();
    node.attrs().iter().fold(Node::new(op, inputs, outputs), |n, a| n.with_attr(a.clone())).named(node.label())
}

/// `node` with attribute `attr` set (replacing one of the same name).
fn with_attr(node: &Node, attr: Attribute) -> Node {
    let kept = node.attrs().iter().filter(|a| a.name != attr.name);
    let bare = Node::new(node.op().clone(), node.inputs().to_vec(), node.outputs().to_vec()).named(node.label());
    kept.fold(bare, |n, a| n.with_attr(a.clone())).with_attr(attr)
}

/// The CPU kernel of `node`'s op (the registry's; the device backend dispatches on the op).
fn kernel_of(node: &Node) -> Option<KernelFn> {
    Registry::cpu().get(node.op()).map(|d| d.kernel)
}

/// The one reader of `value` (by an input slot), when it is not a graph output.
fn sole_reader(graph: &Graph, value: &str) -> Option<NodeId> {
    if graph.is_graph_output(value) {
        return None;
    }
    match graph.uses(value) {
        [u] if u.slot.is_some() => Some(u.node),
        _ => None,
    }
}

/// A `Cast(to=bf16)` reading output `k` of the writer (directly or through one layout op), the
/// only reader on that path: (the cast, the layout op if any, bf16's code). bf16 only: the
/// writers compute half-type outputs in f32 and round once, so a cast from a half output to
/// another half type (two roundings) would not give the same bits.
fn narrowing_of(graph: &Graph, value: &str) -> Option<(NodeId, Option<NodeId>, i64)> {
    let sole = sole_reader(graph, value)?;
    let (layout, cast) = if is_layout(graph.node(sole)) {
        (Some(sole), sole_reader(graph, graph.node(sole).output(0)?)?)
    } else {
        (None, sole)
    };
    let node = graph.node(cast);
    let to = node.attr_int("to", 0);
    let bf16 = to == i64::from(DataType::BFloat16.code());
    (node.op().is("Cast") && bf16 && node.outputs().len() == 1).then_some((cast, layout, to))
}

/// Backward: the writer's outputs that only a half-type `Cast` reads are written in that type.
fn outputs_as_stored(graph: &Graph, id: NodeId, per_output: bool, f: &mut Fusions) {
    let node = graph.node(id);
    if node.attr("to").is_some() {
        return;
    }
    let found: Vec<Option<(NodeId, Option<NodeId>, i64)>> =
        node.outputs().iter().map(|o| if o.is_empty() { None } else { narrowing_of(graph, o) }).collect();
    if found.iter().all(Option::is_none) || (!per_output && found.len() != 1) {
        return;
    }
    let mut claimed = vec![id];
    for (cast, layout, _) in found.iter().flatten() {
        claimed.push(*cast);
        claimed.extend(layout);
    }
    let Some(kernel) = kernel_of(node) else { return };
    let mut layouts = Vec::new();
    for (cast, layout, _) in found.iter().flatten() {
        if let Some(l) = layout {
            let Some(k) = kernel_of(graph.node(*l)) else { return };
            layouts.push((*l, *cast, k));
        }
    }
    if !f.claim(&claimed) {
        return;
    }
    // Each narrowed output is written under the Cast's name (or, through a layout op, the
    // layout op writes the Cast's name); the others keep their names and f32.
    let rename = |o: &str| -> String {
        let k = node.outputs().iter().position(|x| x == o);
        match k.and_then(|k| found[k]) {
            Some((cast, None, _)) => graph.node(cast).output(0).unwrap_or(o).to_string(),
            _ => o.to_string(),
        }
    };
    let to = if per_output {
        let codes = found.iter().map(|x| x.map_or(i64::from(DataType::Float.code()), |(_, _, to)| to)).collect();
        Attribute::ints("to", codes)
    } else {
        Attribute::int("to", found[0].map_or(0, |(_, _, to)| to))
    };
    let fused = with_attr(&rebuilt(node, node.op().clone(), |v| v.to_string(), rename), to);
    f.replace.insert(id, (fused, kernel));
    for (l, cast, k) in layouts {
        let layout = graph.node(l);
        let out = graph.node(cast).output(0).unwrap_or_default().to_string();
        f.replace.insert(l, (rebuilt(layout, layout.op().clone(), |v| v.to_string(), |_| out.clone()), k));
    }
    for (cast, _, _) in found.iter().flatten() {
        f.absorbed.insert(*cast);
    }
}

/// The readers of a widened value, when only ops that widen it themselves read it.
#[derive(Default)]
struct Readers {
    /// Nodes reading the value itself (re-pointed at the Cast's input).
    direct: Vec<NodeId>,
    /// Every node involved.
    all: Vec<NodeId>,
}

/// Whether every reader of `value` widens it itself (at one of its widening slots), is a
/// layout op whose value only such readers read, or reads only its dims; collects them.
fn widening_readers(graph: &Graph, value: &str, depth: usize, out: &mut Readers) -> bool {
    if graph.is_graph_output(value) || depth > 3 {
        return false;
    }
    for u in graph.uses(value) {
        let node = graph.node(u.node);
        let ok = match u.slot {
            None => false,
            Some(slot) if widening_slots(node).contains(&slot) => true,
            Some(_) if reads_only_dims(node) => true,
            Some(slot) if is_layout(node) => {
                slot == 0 && node.outputs().len() == 1 && widening_readers(graph, &node.outputs()[0], depth + 1, out)
            }
            Some(_) => false,
        };
        if !ok {
            return false;
        }
        if depth == 0 && !out.direct.contains(&u.node) {
            out.direct.push(u.node);
        }
        if !out.all.contains(&u.node) {
            out.all.push(u.node);
        }
    }
    true
}

/// How a reader changes when it reads stored values: the loss becomes the `ai.adaptc` op (f32
/// outputs whatever the scores' type); the forward attention keeps an f32 output.
fn retyped(node: Node) -> (Node, Option<KernelFn>) {
    let op = node.op();
    if op.is("SoftmaxCrossEntropyLoss") {
        let op = OpKey::new(ADAPTC_DOMAIN, "SoftmaxCrossEntropyLoss");
        let node = rebuilt(&node, op, |v| v.to_string(), |v| v.to_string());
        return (node, Some(crate::ops::loss::softmax_cross_entropy_f32 as KernelFn));
    }
    if op.domain == ADAPTC_DOMAIN && op.op_type == "SoftmaxAttention" && node.attr("to").is_none() {
        return (with_attr(&node, Attribute::ints("to", vec![i64::from(DataType::Float.code())])), None);
    }
    (node, None)
}

/// Forward: `c = Cast(to=f32)(x)` read only by ops that widen it themselves.
fn operands_as_stored(graph: &Graph, cast_id: NodeId, f: &mut Fusions) {
    let cast = graph.node(cast_id);
    let (Some(x), Some(c)) = (cast.input(0), cast.output(0)) else { return };
    let mut readers = Readers::default();
    if !widening_readers(graph, c, 0, &mut readers)
        || !readers.all.iter().any(|&r| !widening_slots(graph.node(r)).is_empty())
    {
        return;
    }
    // A reader replaced by an earlier fusion here (a writer, or a reader of another widened
    // value) is rebuilt from its replacement; anything else already fused is left alone.
    let ours = |id: &NodeId| {
        f.replace.contains_key(id) && (!widening_slots(graph.node(*id)).is_empty() || is_layout(graph.node(*id)))
    };
    if readers.all.iter().any(|id| f.absorbed.contains(id) || (f.replace.contains_key(id) && !ours(id))) {
        return;
    }
    let fresh: Vec<NodeId> = readers.all.iter().copied().filter(|id| !f.replace.contains_key(id)).collect();
    if !f.claim(&[&[cast_id][..], &fresh].concat()) {
        return;
    }
    let mut changed = Vec::with_capacity(readers.all.len());
    for &id in &readers.all {
        let node = current(graph, f, id);
        let direct = readers.direct.contains(&id);
        let node = rebuilt(
            &node,
            node.op().clone(),
            |v| if direct && v == c { x.to_string() } else { v.to_string() },
            |v| v.to_string(),
        );
        let (node, retyped_kernel) = retyped(node);
        let earlier = f.replace.get(&id).map(|(_, k)| *k);
        let Some(kernel) = retyped_kernel.or(earlier).or_else(|| kernel_of(&node)) else { return };
        changed.push((id, node, kernel));
    }
    for (id, node, kernel) in changed {
        f.replace.insert(id, (node, kernel));
    }
    f.absorbed.insert(cast_id);
}
