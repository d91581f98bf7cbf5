//! Finding FFN groups by structure: producer linear layers whose `F` output channels reach one
//! consumer linear layer (`F` input features) only through element-wise ops, so that channel
//! `j` of every producer meets only channel `j` of the others and row `j` of the consumer.
//!
//! The search walks backwards from every linear layer's input. Element-wise ops are crossed:
//! unary activations (`Gelu`, `Erf`, `Sigmoid`, `Relu`, `Tanh`, …), `Add`/`Sub`/`Mul`/`Div`/
//! `Pow` with a constant, and `Mul` of two paths (SwiGLU's `SiLU(gate) · up`). A walk that ends
//! anywhere but at linear layers of width `F` is no FFN. A walk that ends at such layers but
//! crossed another op with one activation input (a `Softmax`, a `LayerNormalization`) is a
//! near miss and is refused with the op's name; so is a path with a constant that cannot be cut
//! along `F`, or a value read outside the path.

use std::collections::{BTreeSet, HashMap};

use adaptc_ir::{Graph, NodeId};

use crate::pattern::{block_index, constant_tensor, LinearLayer};

/// Unary ops that act on every element alone.
const UNARY: &[&str] = &[
    "Gelu",
    "Erf",
    "Sigmoid",
    "HardSigmoid",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Tanh",
    "Softplus",
    "Softsign",
    "HardSwish",
    "Mish",
    "ThresholdedRelu",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Sin",
    "Cos",
    "Identity",
];

/// Binary ops that act element-wise (with numpy broadcasting).
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow"];

/// Nodes a walk may cross before it gives up.
const MAX_PATH: usize = 32;

/// Producers, one consumer, and the element-wise path between them.
#[derive(Clone, Debug)]
pub struct FfnGroup {
    pub consumer: LinearLayer,
    /// In graph order of their MatMul/Gemm.
    pub producers: Vec<LinearLayer>,
    /// `F`: the producers' output and the consumer's input features.
    pub width: usize,
    /// The element-wise nodes between them.
    pub path: Vec<NodeId>,
    /// Constants on the path shaped `[1, …, 1, F]`: cut with the channels.
    pub constants: Vec<String>,
    /// Values with `F` channels on their last axis: the producers' results and the path's
    /// values (their declared shapes change).
    pub values: Vec<String>,
    pub block: Option<usize>,
}

impl FfnGroup {
    /// The consumer's module path (or its node's name).
    pub fn module(&self, graph: &Graph) -> String {
        self.consumer.module_path.clone().unwrap_or_else(|| graph.node(self.consumer.node).label())
    }

    /// Every linear layer of the group.
    pub fn layers(&self) -> impl Iterator<Item = &LinearLayer> {
        self.producers.iter().chain(std::iter::once(&self.consumer))
    }
}

/// A structure that looks like an FFN but cannot be pruned as one.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub module: String,
    pub block: Option<usize>,
    pub reason: String,
}

/// Every FFN group and every near miss, in the graph order of the consumers.
pub fn find_ffn_groups(graph: &Graph, layers: &[LinearLayer]) -> Vec<Result<FfnGroup, Refusal>> {
    let by_output: HashMap<&str, &LinearLayer> = layers.iter().map(|l| (l.output.as_str(), l)).collect();
    let order: HashMap<NodeId, usize> = graph.node_ids().into_iter().enumerate().map(|(i, id)| (id, i)).collect();
    layers.iter().filter_map(|c| match_group(graph, &by_output, &order, c)).collect()
}

/// What a backward walk from a consumer found.
#[derive(Default)]
struct Walk<'l> {
    producers: Vec<&'l LinearLayer>,
    path: Vec<NodeId>,
    constants: BTreeSet<String>,
    /// Reasons the structure, if it is an FFN, cannot be pruned.
    problems: Vec<String>,
}

fn match_group(
    graph: &Graph,
    by_output: &HashMap<&str, &LinearLayer>,
    order: &HashMap<NodeId, usize>,
    consumer: &LinearLayer,
) -> Option<Result<FfnGroup, Refusal>> {
    let width = consumer.in_features as usize;
    let mut walk = Walk::default();
    let mut stack = vec![consumer.input.clone()];
    let mut seen = BTreeSet::new();
    while let Some(value) = stack.pop() {
        if !seen.insert(value.clone()) {
            continue;
        }
        if let Some(p) = by_output.get(value.as_str()) {
            if p.out_features != consumer.in_features || p.node == consumer.node {
                return None;
            }
            walk.producers.push(p);
            continue;
        }
        let (id, _) = graph.producer(&value)?;
        if walk.path.len() >= MAX_PATH {
            return None;
        }
        walk.path.push(id);
        let node = graph.node(id);
        let op = node.op();
        let activations: Vec<&str> = node
            .inputs()
            .iter()
            .filter(|i| !i.is_empty() && constant_tensor(graph, i).is_none())
            .map(|s| s.as_str())
            .collect();
        let elementwise = adaptc_ir::is_default_domain(&op.domain)
            && node.outputs().len() == 1
            && ((UNARY.contains(&op.op_type.as_str()) && node.inputs().len() == 1)
                || (BINARY.contains(&op.op_type.as_str()) && node.inputs().len() == 2));
        if elementwise {
            if activations.len() == 2 && !op.is("Mul") {
                return None; // a residual or similar join: not an FFN path
            }
            if activations.is_empty() {
                return None;
            }
            for c in node.inputs().iter().filter(|i| !activations.contains(&i.as_str())) {
                check_constant(graph, node.label(), c, width, &mut walk);
            }
        } else if activations.len() == 1 {
            walk.problems.push(format!(
                "the path goes through {} `{}`, which is not element-wise",
                op.op_type,
                node.label()
            ));
        } else {
            return None;
        }
        stack.extend(activations.into_iter().map(str::to_string));
    }
    if walk.producers.is_empty() {
        return None;
    }
    walk.producers.sort_by_key(|p| position(order, p.node));
    walk.producers.dedup_by_key(|p| p.node);
    let module = consumer.module_path.clone().unwrap_or_else(|| graph.node(consumer.node).label());
    let block = consumer.module_path.as_deref().and_then(block_index);
    let refuse = |reason: String| Some(Err(Refusal { module: module.clone(), block, reason }));
    for p in &walk.producers {
        let pb = p.module_path.as_deref().and_then(block_index);
        if pb != block {
            return None; // layers of different blocks do not form one FFN
        }
    }
    if let Some(problem) = walk.problems.first() {
        return refuse(problem.clone());
    }

    // The channels must not leave the path: every value is read by path nodes or the consumer.
    let mut values: Vec<String> = Vec::new();
    for p in &walk.producers {
        if let Some(mm) = graph.node(p.node).output(0) {
            if mm != p.output {
                values.push(mm.to_string());
            }
        }
        values.push(p.output.clone());
    }
    walk.path.sort_by_key(|&id| position(order, id));
    for &id in &walk.path {
        values.extend(graph.node(id).outputs().iter().filter(|o| !o.is_empty()).cloned());
    }
    let inside: BTreeSet<NodeId> = walk
        .path
        .iter()
        .copied()
        .chain(std::iter::once(consumer.node))
        .chain(walk.producers.iter().flat_map(|p| p.bias_node))
        .collect();
    for v in &values {
        if graph.is_graph_output(v) {
            return refuse(format!("`{v}` on the path from the producers to the consumer is a graph output"));
        }
        if let Some(u) = graph.uses(v).iter().find(|u| !inside.contains(&u.node)) {
            return refuse(format!(
                "`{v}` on the path from the producers to the consumer is also read by `{}`",
                graph.node(u.node).label()
            ));
        }
    }
    Some(Ok(FfnGroup {
        consumer: consumer.clone(),
        producers: walk.producers.into_iter().cloned().collect(),
        width,
        path: walk.path,
        constants: walk.constants.into_iter().collect(),
        values,
        block,
    }))
}

/// A constant operand on the path: a scalar (or any size-1 tensor) passes; `[1, …, 1, F]` is
/// cut with the channels; anything else is a problem.
fn check_constant(graph: &Graph, node: String, value: &str, width: usize, walk: &mut Walk<'_>) {
    let Some(t) = constant_tensor(graph, value) else { return };
    let dims = t.dims();
    if t.numel() == 1 {
        return;
    }
    let leading_ones = dims[..dims.len().saturating_sub(1)].iter().all(|&d| d == 1);
    if leading_ones && dims.last() == Some(&(width as u64)) {
        walk.constants.insert(value.to_string());
    } else {
        walk.problems.push(format!(
            "the constant `{value}` {dims:?} read by `{node}` on the path is neither a scalar nor shaped [.., {width}] \
             along the channels"
        ));
    }
}

fn position(order: &HashMap<NodeId, usize>, id: NodeId) -> usize {
    order.get(&id).copied().unwrap_or(usize::MAX)
}
