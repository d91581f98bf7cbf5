//! Plan-time fusions: nodes that lowering turns into one instruction, so that values passed
//! between them are never written out and read back. Casts that ops can do themselves go
//! first ([`stored`]: the loss and fused attention read and write bf16 values as stored), then pairs with a dedicated kernel (a
//! product and its bias, a mask and its softmax, the NaN guard); then chains of elementwise
//! nodes ([`chains`]) among the nodes left.
//!
//! The pairs are exact up to f32 rounding order and apply only when the intermediate value has
//! no other reader and is not a graph output; chains are exact. The graph itself is not
//! changed: fusions are a property of the plan, like buffer reuse.

pub mod chains;
pub mod stored;

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Graph, Node, NodeId, OpKey};

use crate::ops::KernelFn;
use crate::registry::ADAPTC_DOMAIN;

/// A fused instruction replacing the node it is keyed by; `absorbed` nodes emit nothing.
pub struct Fusions {
    pub replace: HashMap<NodeId, (Node, KernelFn)>,
    pub absorbed: HashSet<NodeId>,
}

impl Fusions {
    /// Whether none of `nodes` is part of a fusion yet (each node joins at most one, and the
    /// graph's node order, not the pattern order, decides which).
    fn claim(&self, nodes: &[NodeId]) -> bool {
        nodes.iter().all(|n| !self.replace.contains_key(n) && !self.absorbed.contains(n))
    }
}

/// Finds the fusions of `graph`; none when `enabled` is false or `ADAPTC_NO_FUSE` is set (to
/// compare numerics or profiles with the node-by-node plan).
pub fn find(graph: &Graph, enabled: bool) -> Fusions {
    let mut f = Fusions { replace: HashMap::new(), absorbed: HashSet::new() };
    if !enabled || std::env::var_os("ADAPTC_NO_FUSE").is_some_and(|v| !v.is_empty() && v != "0") {
        return f;
    }
    stored::find(graph, &mut f);
    for id in graph.node_ids() {
        if let Some(m) = matmul_bias(graph, id) {
            let shapes: Vec<NodeId> = m.shapes.iter().map(|(s, _)| *s).collect();
            if f.claim(&[&[id, m.add], &shapes[..]].concat()) {
                f.replace.insert(id, (m.fused, crate::ops::matmul::matmul_add_bias));
                f.absorbed.insert(m.add);
                for (shape_id, shape) in m.shapes {
                    f.replace.insert(shape_id, (shape, crate::ops::shape::shape));
                }
            }
        }
        if let Some((add, node)) = add_softmax(graph, id) {
            if f.claim(&[id, add]) {
                f.replace.insert(id, (node, crate::ops::softmax::add_softmax));
                f.absorbed.insert(add);
            }
        }
        if let Some((where_, node)) = is_nan_where(graph, id) {
            if f.claim(&[id, where_]) {
                f.replace.insert(id, (node, crate::ops::unary::is_nan_where));
                f.absorbed.insert(where_);
            }
        }
    }
    if let Ok(order) = graph.topo_order() {
        chains::find(graph, &order, &mut f);
    }
    f
}

/// A MatMul+bias fusion: the fused node, the Add it absorbs, and the `Shape` readers of the
/// product, re-pointed at the Add's output.
struct MatMulBias {
    fused: Node,
    add: NodeId,
    shapes: Vec<(NodeId, Node)>,
}

/// `Add(MatMul(x, w), bias)` with a constant `bias` (the linear layers of exported
/// transformers): one `MatMulAddBias(x, w, bias)` whose GEMM starts from the bias rows instead
/// of zeros. Besides the Add, the product may be read by `Shape` nodes (the training graph's
/// broadcast gradients ask for it): a 1-D bias does not change the shape, so they read the
/// Add's output instead.
fn matmul_bias(graph: &Graph, id: NodeId) -> Option<MatMulBias> {
    let mm = graph.node(id);
    if !mm.op().is("MatMul") || mm.inputs().len() != 2 || mm.outputs().len() != 1 {
        return None;
    }
    let y = mm.output(0)?;
    if graph.is_graph_output(y) || graph.uses(y).iter().any(|u| u.slot.is_none()) {
        return None;
    }
    let (adds, shapes): (Vec<&adaptc_ir::Use>, Vec<&adaptc_ir::Use>) =
        graph.uses(y).iter().partition(|u| !graph.node(u.node).op().is("Shape"));
    let [use_] = adds.as_slice() else { return None };
    let add = graph.node(use_.node);
    if !add.op().is("Add") || add.inputs().len() != 2 || add.outputs().len() != 1 {
        return None;
    }
    let bias = add.inputs().iter().find(|v| v.as_str() != y)?;
    let constant =
        graph.initializer(bias).is_some_and(|t| t.dims().len() == 1) && !graph.inputs.iter().any(|i| &i.name == bias);
    if !constant {
        return None;
    }
    let sum = add.output(0)?;
    let shapes = shapes
        .iter()
        .map(|u| {
            let reader = graph.node(u.node);
            let node = reader
                .attrs()
                .iter()
                .fold(Node::new(reader.op().clone(), vec![sum.to_string()], reader.outputs().to_vec()), |n, a| {
                    n.with_attr(a.clone())
                });
            (u.node, node.named(reader.label()))
        })
        .collect();
    let fused = Node::new(
        OpKey::new(ADAPTC_DOMAIN, "MatMulAddBias"),
        vec![mm.inputs()[0].clone(), mm.inputs()[1].clone(), bias.clone()],
        add.outputs().to_vec(),
    )
    .named(format!("{}+{}", mm.label(), add.label()));
    Some(MatMulBias { fused, add: use_.node, shapes })
}

/// `Softmax(Add(x, mask))` where only the Softmax reads the sum (attention scores plus their
/// mask): one `AddSoftmax(x, mask)` with the Softmax's attributes, which adds each row as it
/// reads it.
fn add_softmax(graph: &Graph, id: NodeId) -> Option<(NodeId, Node)> {
    let sm = graph.node(id);
    if !sm.op().is("Softmax") || sm.inputs().len() != 1 || sm.outputs().len() != 1 {
        return None;
    }
    let (add_id, add) = sole_producer(graph, sm.input(0)?, "Add")?;
    if add.inputs().len() != 2 {
        return None;
    }
    let fused = sm.attrs().iter().fold(
        Node::new(OpKey::new(ADAPTC_DOMAIN, "AddSoftmax"), add.inputs().to_vec(), sm.outputs().to_vec()),
        |n, a| n.with_attr(a.clone()),
    );
    Some((add_id, fused.named(format!("{}+{}", add.label(), sm.label()))))
}

/// `m = IsNaN(y)` and `Where(m, z, y)` with a constant scalar `z` (the guard exported attention
/// puts after its softmax): one `IsNaNWhere(y, z) → (m, where)`, which shares `y` as the
/// Where's result when there is no NaN. Other readers of `m` (the Where's gradient) still get it.
fn is_nan_where(graph: &Graph, id: NodeId) -> Option<(NodeId, Node)> {
    let isnan = graph.node(id);
    if !isnan.op().is("IsNaN") || isnan.inputs().len() != 1 || isnan.outputs().len() != 1 {
        return None;
    }
    let (y, m) = (isnan.input(0)?, isnan.output(0)?);
    let (where_id, where_) = graph.uses(m).iter().find_map(|u| {
        let w = graph.node(u.node);
        let z = w.input(1)?;
        let scalar_const = graph.initializer(z).is_some_and(|t| t.dims().iter().product::<u64>() == 1)
            && !graph.inputs.iter().any(|i| i.name == z);
        let fits = w.op().is("Where")
            && w.inputs().len() == 3
            && w.outputs().len() == 1
            && w.input(0) == Some(m)
            && w.input(2) == Some(y)
            && scalar_const;
        fits.then_some((u.node, w))
    })?;
    let fused = Node::new(
        OpKey::new(ADAPTC_DOMAIN, "IsNaNWhere"),
        vec![y.to_string(), where_.input(1)?.to_string()],
        vec![m.to_string(), where_.output(0)?.to_string()],
    )
    .named(format!("{}+{}", isnan.label(), where_.label()));
    Some((where_id, fused))
}

/// The node of type `op` that produces `value`, when `value` has that one reader and is not a
/// graph output (so a fusion may leave it unwritten).
fn sole_producer<'g>(graph: &'g Graph, value: &str, op: &str) -> Option<(NodeId, &'g Node)> {
    if graph.is_graph_output(value) || graph.uses(value).len() != 1 {
        return None;
    }
    let (id, _) = graph.producer(value)?;
    let node = graph.node(id);
    (node.op().is(op) && node.outputs().len() == 1).then_some((id, node))
}
