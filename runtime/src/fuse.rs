//! Plan-time fusions: pairs of nodes that lowering turns into one instruction, so that a value
//! only the second node reads is never written out and read back.
//!
//! Each fusion is exact up to f32 rounding order and applies only when the intermediate value
//! has no other reader and is not a graph output. The graph itself is not changed: fusions are
//! a property of the plan, like buffer reuse.

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Graph, Node, NodeId, OpKey};

use crate::ops::KernelFn;
use crate::registry::ADAPTC_DOMAIN;

/// A fused instruction replacing the node it is keyed by; `absorbed` nodes emit nothing.
pub struct Fusions {
    pub replace: HashMap<NodeId, (Node, KernelFn)>,
    pub absorbed: HashSet<NodeId>,
}

/// Finds the fusions of `graph`.
pub fn find(graph: &Graph) -> Fusions {
    let mut f = Fusions { replace: HashMap::new(), absorbed: HashSet::new() };
    for id in graph.node_ids() {
        if let Some((add, node)) = matmul_bias(graph, id) {
            f.replace.insert(id, (node, crate::ops::matmul::matmul_add_bias));
            f.absorbed.insert(add);
        }
    }
    f
}

/// `Add(MatMul(x, w), bias)` with a constant `bias` (the linear layers of exported
/// transformers): one `MatMulAddBias(x, w, bias)` whose GEMM starts from the bias rows instead
/// of zeros.
fn matmul_bias(graph: &Graph, id: NodeId) -> Option<(NodeId, Node)> {
    let mm = graph.node(id);
    if !mm.op().is("MatMul") || mm.inputs().len() != 2 || mm.outputs().len() != 1 {
        return None;
    }
    let y = mm.output(0)?;
    let [use_] = graph.uses(y) else { return None };
    if graph.is_graph_output(y) || use_.slot.is_none() {
        return None;
    }
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
    let fused = Node::new(
        OpKey::new(ADAPTC_DOMAIN, "MatMulAddBias"),
        vec![mm.inputs()[0].clone(), mm.inputs()[1].clone(), bias.clone()],
        add.outputs().to_vec(),
    )
    .named(format!("{}+{}", mm.label(), add.label()));
    Some((use_.node, fused))
}
