//! Transformer blocks and the residual stream that threads them.
//!
//! A *block* is every node whose module path names the same repeated container entry
//! (`encoder.layer.3`, `model.layers.0`, `transformer.h.11`, see [`block_of`]); a *stack* is
//! the sequence of blocks under one container (`encoder.layer`). The residual stream is found
//! from the graph, not from op names: what block `i` hands to block `i+1` is the one value it
//! produces that block `i+1` reads and no later block does (exporters compute shared values —
//! attention masks, reshape targets, rotary tables — once, inside the first block, and every
//! block reads those; where only two blocks are left, the stream is also the one of those with
//! the stream's type); what the last block hands on is the one value no other block reads. The
//! first block's input is the value it reads the way the second block reads its stream input
//! (the same consumers: op types and operand slots), or, for a single block, the input whose
//! type equals the block's output type.
//!
//! [`find_block_stacks`] reads only the graph's structure and metadata and changes nothing;
//! when the stream cannot be told apart it says why, listing the candidates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use adaptc_ir::{Graph, NodeId};

use super::module_path::{block_of, node_name_scopes_path, path_from_node_name};

/// One transformer block: its nodes and the residual stream value entering and leaving it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The index in the module path (`encoder.layer.3` → 3).
    pub index: usize,
    /// The block's nodes, in graph order.
    pub nodes: Vec<NodeId>,
    /// The residual stream value the block reads.
    pub input: String,
    /// The residual stream value the block produces for what follows.
    pub output: String,
}

/// The blocks under one container, in index order; consecutive blocks are linked
/// (`blocks[i].output == blocks[i + 1].input`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockStack {
    /// The container path (`encoder.layer`, `model.layers`).
    pub name: String,
    pub blocks: Vec<Block>,
}

impl BlockStack {
    /// The block with module index `index`.
    pub fn block(&self, index: usize) -> Option<&Block> {
        self.blocks.iter().find(|b| b.index == index)
    }
}

/// The module path of a node: its `name_scopes` metadata, else its TorchScript-style name.
pub(crate) fn node_module_path(graph: &Graph, id: NodeId) -> Option<String> {
    node_name_scopes_path(graph, id).or_else(|| path_from_node_name(&graph.node(id).name))
}

/// The node's (stack, block index), when its module path lies inside a block.
pub fn node_block(graph: &Graph, id: NodeId) -> Option<(String, usize)> {
    block_of(&node_module_path(graph, id)?)
}

/// Every block stack of `graph`, with each block's residual stream input and output.
///
/// Errors (as text, for the caller to wrap) when no node carries a block path, or a stack's
/// stream is ambiguous or broken.
pub fn find_block_stacks(graph: &Graph) -> Result<Vec<BlockStack>, String> {
    let order = graph.topo_order().map_err(|e| e.to_string())?;
    let mut members: BTreeMap<String, BTreeMap<usize, Vec<NodeId>>> = BTreeMap::new();
    let mut block_of_node: HashMap<NodeId, (String, usize)> = HashMap::new();
    for &id in &order {
        if let Some((stack, index)) = node_block(graph, id) {
            members.entry(stack.clone()).or_default().entry(index).or_default().push(id);
            block_of_node.insert(id, (stack, index));
        }
    }
    if members.is_empty() {
        return Err("no node carries a module path inside a repeated block (`…layer.N…`, `…layers.N…`, `…h.N…`); \
                    blocks are found from the exporter's `pkg.torch.onnx.name_scopes` metadata or TorchScript node names"
            .to_string());
    }
    members.into_iter().map(|(name, blocks)| link_stack(graph, &name, blocks, &block_of_node)).collect()
}

/// What one block reads from and hands to the rest of the graph.
struct Boundary {
    index: usize,
    nodes: Vec<NodeId>,
    /// Non-constant values produced outside the block that it reads, in first-read order.
    reads: Vec<String>,
    /// Values it produces that something outside reads (or graph outputs), with the indices
    /// of the same-stack blocks that read them and whether anything else does.
    hands: Vec<(String, BTreeSet<usize>)>,
}

fn link_stack(
    graph: &Graph,
    name: &str,
    blocks: BTreeMap<usize, Vec<NodeId>>,
    block_of_node: &HashMap<NodeId, (String, usize)>,
) -> Result<BlockStack, String> {
    let bounds: Vec<Boundary> =
        blocks.into_iter().map(|(index, nodes)| boundary(graph, name, index, nodes, block_of_node)).collect();
    let n = bounds.len();
    let last_hands: Vec<&String> =
        bounds[n - 1].hands.iter().filter(|(_, readers)| readers.is_empty()).map(|(v, _)| v).collect();
    let stream_type = match last_hands.as_slice() {
        [one] => graph.value_type(one),
        _ => None,
    };
    let mut outputs = Vec::with_capacity(n);
    for (i, b) in bounds.iter().enumerate() {
        let candidates: Vec<&String> = match bounds.get(i + 1) {
            // Read by the next block and by no block after it.
            Some(next) => b
                .hands
                .iter()
                .filter(|(_, readers)| readers.contains(&next.index) && readers.iter().all(|&r| r <= next.index))
                .map(|(v, _)| v)
                .collect(),
            // Read by no other block of the stack.
            None => b.hands.iter().filter(|(_, readers)| readers.is_empty()).map(|(v, _)| v).collect(),
        };
        // Shared values read by the next block only (a two-block stack) look like the stream;
        // the stream has the type of the value the last block hands on.
        let candidates = match (candidates.len(), bounds.get(i + 1), stream_type.as_ref()) {
            (2.., Some(_), Some(t)) => {
                candidates.into_iter().filter(|v| graph.value_type(v).as_ref() == Some(t)).collect()
            }
            _ => candidates,
        };
        match candidates.as_slice() {
            [one] => outputs.push((*one).clone()),
            [] => {
                return Err(format!("block {name}.{}: no value leaves it for {}", b.index, successor(name, &bounds, i)))
            }
            many => {
                return Err(format!(
                    "block {name}.{}: cannot tell the residual stream among the values it hands to {}: {}",
                    b.index,
                    successor(name, &bounds, i),
                    list(many)
                ))
            }
        }
    }
    let mut linked = Vec::with_capacity(n);
    for (i, b) in bounds.iter().enumerate() {
        let input = if i == 0 { first_input(graph, name, &bounds, &outputs)? } else { outputs[i - 1].clone() };
        if !b.reads.contains(&input) {
            return Err(format!(
                "block {name}.{} does not read `{input}`, the stream value block {name}.{} hands on; the blocks are not chained",
                b.index,
                bounds[i - 1].index
            ));
        }
        linked.push(Block { index: b.index, nodes: b.nodes.clone(), input, output: outputs[i].clone() });
    }
    Ok(BlockStack { name: name.to_string(), blocks: linked })
}

fn boundary(
    graph: &Graph,
    stack: &str,
    index: usize,
    nodes: Vec<NodeId>,
    block_of_node: &HashMap<NodeId, (String, usize)>,
) -> Boundary {
    let inside: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let mut reads: Vec<String> = Vec::new();
    let mut hands = Vec::new();
    for &id in &nodes {
        let node = graph.node(id);
        for v in node.inputs().iter().filter(|v| !v.is_empty()) {
            let produced_inside = graph.producer(v).is_some_and(|(p, _)| inside.contains(&p));
            if !produced_inside && !is_constant(graph, v) && !reads.contains(v) {
                reads.push(v.clone());
            }
        }
        for v in node.outputs().iter().filter(|v| !v.is_empty()) {
            let mut readers = BTreeSet::new();
            let mut outside = graph.is_graph_output(v);
            for u in graph.uses(v) {
                if inside.contains(&u.node) {
                    continue;
                }
                outside = true;
                if let Some((s, b)) = block_of_node.get(&u.node) {
                    if s == stack {
                        readers.insert(*b);
                    }
                }
            }
            if outside {
                hands.push((v.clone(), readers));
            }
        }
    }
    Boundary { index, nodes, reads, hands }
}

/// The first block's stream input: its only read; else the value it reads the way the second
/// block reads its stream input; else the read whose type equals the block's output type.
fn first_input(graph: &Graph, stack: &str, bounds: &[Boundary], outputs: &[String]) -> Result<String, String> {
    let first = &bounds[0];
    if let [only] = first.reads.as_slice() {
        return Ok(only.clone());
    }
    if let Some(second) = bounds.get(1) {
        // The same readers as in the second block; failing that, those readers and more (the
        // first block may also derive shared values, a mask or a shape, from its input).
        let want = signature(graph, &second.nodes, &outputs[0]);
        let exact: Vec<&String> = first.reads.iter().filter(|v| signature(graph, &first.nodes, v) == want).collect();
        if let [one] = exact.as_slice() {
            return Ok((*one).clone());
        }
        let covering: Vec<&String> =
            first.reads.iter().filter(|v| covers(&signature(graph, &first.nodes, v), &want)).collect();
        if let [one] = covering.as_slice() {
            return Ok((*one).clone());
        }
    }
    let out_type = graph.value_type(&outputs[0]);
    let by_type: Vec<&String> = match &out_type {
        Some(t) => first.reads.iter().filter(|v| graph.value_type(v).as_ref() == Some(t)).collect(),
        None => Vec::new(),
    };
    match by_type.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(format!(
            "block {stack}.{}: cannot tell which of the values it reads is the residual stream: {}",
            first.index,
            list(&first.reads.iter().collect::<Vec<_>>())
        )),
    }
}

/// How `nodes` read `value`: the sorted (op type, operand slot) pairs.
fn signature(graph: &Graph, nodes: &[NodeId], value: &str) -> Vec<(String, usize)> {
    let mut sig: Vec<(String, usize)> = graph
        .uses(value)
        .iter()
        .filter(|u| nodes.contains(&u.node))
        .map(|u| (graph.node(u.node).op().op_type.clone(), u.slot.unwrap_or(usize::MAX)))
        .collect();
    sig.sort();
    sig
}

/// Whether the sorted multiset `have` contains every element of the sorted multiset `want`.
fn covers(have: &[(String, usize)], want: &[(String, usize)]) -> bool {
    let mut rest = have.iter();
    want.iter().all(|w| rest.any(|h| h == w))
}

/// Initializers (not overridable graph inputs) and `Constant` outputs.
fn is_constant(graph: &Graph, value: &str) -> bool {
    (graph.initializer(value).is_some() && !graph.is_graph_input(value))
        || graph.producer(value).is_some_and(|(p, _)| graph.node(p).op().is("Constant"))
}

fn successor(stack: &str, bounds: &[Boundary], i: usize) -> String {
    match bounds.get(i + 1) {
        Some(next) => format!("block {stack}.{}", next.index),
        None => "the rest of the graph".to_string(),
    }
}

fn list(values: &[&String]) -> String {
    values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
}
