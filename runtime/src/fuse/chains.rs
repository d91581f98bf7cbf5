//! Elementwise chains: connected elementwise nodes (f32 arithmetic and math, casts between f32
//! and bf16) that the plan runs as one `ElementwiseChain` instruction ([`crate::ops::chain`]),
//! so the values passed between them stay in registers. A training graph is mostly such
//! chains between its products: LoRA's casts, scale and add, RMSNorm's scaling, SiLU's gate,
//! and their gradients; one node each, they move most of a step's bytes.
//!
//! A chain grows from its last node (its root) backwards: a producer joins when every reader
//! of its value is in the chain, or comes after the root in the plan's order (the chain then
//! also writes the value, as an extra output), or is a plain `Shape` read (the chain then
//! gives the shape as an output, from the program's shapes). The chain's instruction takes the
//! root's place; its inputs are all produced before the root, and everything it writes is read
//! only after, so the order stays a topological one.

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Graph, Node, NodeId, OpKey};

use super::Fusions;
use crate::ops::chain::{Op, Program, Step};
use crate::registry::ADAPTC_DOMAIN;

/// The most steps, inputs and value outputs of one chain: the device kernel's fixed arrays.
pub const MAX_STEPS: usize = 32;
pub const MAX_INPUTS: usize = 8;
pub const MAX_VALUES: usize = 6;

/// A chain being grown.
struct Chain {
    root: NodeId,
    members: HashSet<NodeId>,
    /// `Shape` nodes whose outputs the chain gives.
    shapes: Vec<NodeId>,
}

/// Adds the chains of `graph`'s nodes not yet in a fusion to `f`.
pub fn find(graph: &Graph, order: &[NodeId], f: &mut Fusions) {
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut taken: HashSet<NodeId> = HashSet::new();
    for &root in order.iter().rev() {
        if taken.contains(&root) || !f.claim(&[root]) || Op::of(graph.node(root)).is_none() {
            continue;
        }
        let chain = grow(graph, &pos, root, |n| !taken.contains(&n) && f.claim(&[n]));
        if chain.members.len() < 2 {
            continue;
        }
        let node = fused_node(graph, &pos, &chain);
        taken.extend(chain.members.iter().copied());
        for &m in chain.members.iter().filter(|&&m| m != root) {
            f.absorbed.insert(m);
        }
        for &s in &chain.shapes {
            f.absorbed.insert(s);
        }
        f.replace.insert(root, (node, crate::ops::chain::elementwise_chain));
    }
}

/// The chain rooted at `root`: producers join until none more can.
fn grow(graph: &Graph, pos: &HashMap<NodeId, usize>, root: NodeId, free: impl Fn(NodeId) -> bool) -> Chain {
    let mut chain = Chain { root, members: HashSet::from([root]), shapes: Vec::new() };
    loop {
        let mut grew = false;
        let mut members: Vec<NodeId> = chain.members.iter().copied().collect();
        members.sort_by_key(|m| std::cmp::Reverse(pos[m]));
        for m in members {
            for input in graph.node(m).inputs() {
                let Some((p, _)) = graph.producer(input) else { continue };
                if chain.members.contains(&p) || !free(p) || Op::of(graph.node(p)).is_none() {
                    continue;
                }
                let Some(shapes) = joinable(graph, pos, &chain, p, &free) else { continue };
                let before = chain.shapes.len();
                chain.members.insert(p);
                chain.shapes.extend(shapes);
                if within_limits(graph, pos, &chain) {
                    grew = true;
                } else {
                    chain.members.remove(&p);
                    chain.shapes.truncate(before);
                }
            }
        }
        if !grew {
            return chain;
        }
    }
}

/// Whether `p` can join `chain`: each reader of its value is a member, a plain `Shape` read
/// (returned, to be absorbed) whose readers all come after the root, or any node after the
/// root.
fn joinable(
    graph: &Graph,
    pos: &HashMap<NodeId, usize>,
    chain: &Chain,
    p: NodeId,
    free: impl Fn(NodeId) -> bool,
) -> Option<Vec<NodeId>> {
    let after_root = |n: NodeId| pos.get(&n).is_some_and(|&i| i > pos[&chain.root]);
    let value = graph.node(p).output(0)?;
    let mut shapes = Vec::new();
    for u in graph.uses(value) {
        u.slot?;
        if chain.members.contains(&u.node) {
            continue;
        }
        let reader = graph.node(u.node);
        let plain_shape = free(u.node)
            && reader.op().is("Shape")
            && adaptc_ir::is_default_domain(&reader.op().domain)
            && reader.attrs().is_empty()
            && reader.outputs().len() == 1;
        if plain_shape {
            let dims = reader.output(0)?;
            if graph.uses(dims).iter().all(|r| r.slot.is_some() && after_root(r.node)) {
                shapes.push(u.node);
                continue;
            }
        }
        if !after_root(u.node) {
            return None;
        }
    }
    Some(shapes)
}

/// Whether the chain fits the device kernel's arrays.
fn within_limits(graph: &Graph, pos: &HashMap<NodeId, usize>, chain: &Chain) -> bool {
    let (members, inputs, values) = boundary(graph, pos, chain);
    members.len() <= MAX_STEPS && inputs.len() <= MAX_INPUTS && values.len() <= MAX_VALUES
}

/// The chain's members in plan order, its external inputs (first use first) and the members
/// whose values it writes (the root first).
fn boundary(graph: &Graph, pos: &HashMap<NodeId, usize>, chain: &Chain) -> (Vec<NodeId>, Vec<String>, Vec<NodeId>) {
    let mut members: Vec<NodeId> = chain.members.iter().copied().collect();
    members.sort_by_key(|m| pos[m]);
    let made: HashSet<&str> = members.iter().filter_map(|&m| graph.node(m).output(0)).collect();
    let mut inputs: Vec<String> = Vec::new();
    for &m in &members {
        for i in graph.node(m).inputs() {
            if !made.contains(i.as_str()) && !inputs.contains(i) {
                inputs.push(i.clone());
            }
        }
    }
    let mut values = vec![chain.root];
    for &m in members.iter().filter(|&&m| m != chain.root) {
        let Some(v) = graph.node(m).output(0) else { continue };
        let read_outside =
            graph.uses(v).iter().any(|u| !chain.members.contains(&u.node) && !chain.shapes.contains(&u.node));
        if read_outside || graph.is_graph_output(v) {
            values.push(m);
        }
    }
    (members, inputs, values)
}

/// The `ElementwiseChain` node standing for `chain`.
fn fused_node(graph: &Graph, pos: &HashMap<NodeId, usize>, chain: &Chain) -> Node {
    let (members, inputs, values) = boundary(graph, pos, chain);
    // Registers: the inputs, then one per member in order.
    let mut reg: HashMap<&str, usize> = inputs.iter().enumerate().map(|(k, v)| (v.as_str(), k)).collect();
    for (k, &m) in members.iter().enumerate() {
        if let Some(out) = graph.node(m).output(0) {
            reg.insert(out, inputs.len() + k);
        }
    }
    let steps = members
        .iter()
        .map(|&m| {
            let node = graph.node(m);
            // Every member is an op a chain holds and reads registers defined before it.
            let op = Op::of(node).unwrap_or(Op::ToF32);
            let arg = |slot: usize| node.input(slot).and_then(|v| reg.get(v).copied()).unwrap_or(0);
            Step { op, a: arg(0), b: (op.arity() == 2).then(|| arg(1)), name: node.label() }
        })
        .collect();
    let value_of = |n: NodeId| graph.node(n).output(0).and_then(|v| reg.get(v).copied().map(|r| (r, v.to_string())));
    let value_outs: Vec<(usize, String)> = values.iter().filter_map(|&m| value_of(m)).collect();
    let shape_outs: Vec<(usize, String)> = chain
        .shapes
        .iter()
        .filter_map(|&s| {
            let shape = graph.node(s);
            Some((*reg.get(shape.input(0)?)?, shape.output(0)?.to_string()))
        })
        .collect();
    let program = Program {
        inputs: inputs.len(),
        steps,
        values: value_outs.iter().map(|(r, _)| *r).collect(),
        shapes: shape_outs.iter().map(|(r, _)| *r).collect(),
    };
    let outputs = value_outs.into_iter().chain(shape_outs).map(|(_, v)| v).collect();
    let label = format!("{} (+{} elementwise)", graph.node(chain.root).label(), members.len() - 1);
    program
        .to_attrs()
        .into_iter()
        .fold(Node::new(OpKey::new(ADAPTC_DOMAIN, "ElementwiseChain"), inputs, outputs), |n, a| n.with_attr(a))
        .named(label)
}
