//! `checkpoint-activations`: activation checkpointing (recompute) on a training graph — trade
//! compute for memory. The backward sweep reads many forward activations; kept, they are all
//! alive at the end of the forward pass. With this pass, each transformer block keeps only
//! what it reads from outside (its residual-stream input, shared masks, weights); the values
//! its backward reads are recomputed from those by copies of the block's forward nodes, placed
//! right before the first backward node that reads them, so one block's activations are alive
//! at a time during the backward sweep.
//!
//! Blocks are the module-path blocks of [`crate::pattern::blocks`] (`encoder.layer.N`,
//! `model.layers.N`) among the forward nodes; nodes that `build-training-graph` emitted are the
//! backward. A value is recomputed when a backward node reads it and nothing outside its block
//! does (what is alive anyway is read as it is). The recomputation is the same ops on the same
//! inputs, so the loss and gradients do not change; blocks with random ops (Dropout,
//! Random*) are left as they are, with a note.
//!
//! Preconditions: a graph built by `build-training-graph`. Preserves: outputs and their values.
//! Example pipeline: `insert-lora{rank=8 targets=query,value},build-training-graph,checkpoint-activations`.
//! Statistics: `checkpoint.blocks` (blocks rewritten), `checkpoint.values` (activations no
//! longer kept), `checkpoint.recomputed_nodes` (forward nodes copied).

use std::collections::{BTreeMap, HashMap, HashSet};

use adaptc_ir::{Graph, Model, Node, NodeId};

use crate::adapters::record::CREATED_BY;
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::blocks::{node_block, node_module_path};
use crate::pattern::module_path::{block_of, path_from_adapter_node_name};
use crate::registry::PassInfo;

pub const PASS: &str = "checkpoint-activations";

/// Ops whose recomputation would not give the same values.
const RANDOM_OPS: &[&str] =
    &["Dropout", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"];

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "recompute each transformer block's activations in the backward pass instead of keeping them (less memory, more compute)",
        options: vec![],
        example: "insert-lora{rank=8 targets=query,value},build-training-graph,checkpoint-activations",
        build: |_| Ok(Box::new(CheckpointActivations)),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointActivations;

impl Pass for CheckpointActivations {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let graph = &mut model.graph;
        let backward: HashSet<NodeId> =
            graph.nodes().filter(|(_, n)| n.metadata.get(CREATED_BY) == Some(super::PASS)).map(|(id, _)| id).collect();
        if backward.is_empty() {
            return Err(PassError::failed(PASS, "the graph has no backward nodes: run build-training-graph first"));
        }
        let order = graph.topo_order()?;
        let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut blocks: BTreeMap<(String, usize), Vec<NodeId>> = BTreeMap::new();
        let mut block_of_node: HashMap<NodeId, (String, usize)> = HashMap::new();
        for &id in &order {
            if backward.contains(&id) {
                continue;
            }
            if let Some(key) = forward_block(graph, id, &block_of_node) {
                block_of_node.insert(id, key.clone());
                blocks.entry(key).or_default().push(id);
            }
        }
        if blocks.is_empty() {
            return Err(PassError::failed(
                PASS,
                "no forward node carries a block module path (`…layer.N…`, `…layers.N…`); nothing to checkpoint",
            ));
        }
        let (mut rewritten, mut values, mut copies) = (0i64, 0i64, 0i64);
        for ((stack, index), nodes) in &blocks {
            if let Some(op) =
                nodes.iter().map(|&n| graph.node(n).op().op_type.as_str()).find(|op| RANDOM_OPS.contains(op))
            {
                cx.note(format!("{stack}.{index} left as it is: it holds {op}, whose recomputation would differ"));
                continue;
            }
            let plan = Recompute::plan(graph, nodes, &backward);
            if plan.values.is_empty() {
                continue;
            }
            let (v, c) = plan.apply(graph, &position)?;
            rewritten += 1;
            values += v as i64;
            copies += c as i64;
        }
        Ok(PassOutcome::changed(rewritten > 0)
            .stat("checkpoint.blocks", rewritten)
            .stat("checkpoint.values", values)
            .stat("checkpoint.recomputed_nodes", copies))
    }
}

/// The block of a forward node, given the blocks of the nodes before it (graph order):
/// - its module path's block (exporter metadata or node name);
/// - for a node an adapter pass inserted (LoRA's products, scale and add), the module path its
///   name starts with;
/// - for a node with no module path that another pass wrote (`autocast`'s casts,
///   `fuse-attention`'s attention), the one block its inputs come from, when they come from
///   one (values from no block — shared masks, graph inputs, weights — do not count).
///
/// Why: a value a block's backward reads is recomputed only when it belongs to the block, so
/// nodes left out keep their outputs (the adapted layers' outputs, the casts of every
/// product, attention's inputs and output) alive from the forward to the backward.
fn forward_block(graph: &Graph, id: NodeId, known: &HashMap<NodeId, (String, usize)>) -> Option<(String, usize)> {
    if let Some(key) = node_block(graph, id) {
        return Some(key);
    }
    if let Some(path) = path_from_adapter_node_name(&graph.node(id).name) {
        return block_of(&path);
    }
    if node_module_path(graph, id).is_some() {
        return None;
    }
    let mut from: Option<&(String, usize)> = None;
    for (producer, _, _) in graph.producers_of(id) {
        match (known.get(&producer), from) {
            (Some(b), None) => from = Some(b),
            (Some(b), Some(f)) if b != f => return None,
            _ => {}
        }
    }
    from.cloned()
}

/// What to recompute in one block.
struct Recompute {
    /// The block's forward nodes.
    block: HashSet<NodeId>,
    /// Values to recompute: read by the backward and by nothing outside the block.
    values: Vec<String>,
    /// Values of the block that stay alive anyway (read outside the block, or graph outputs).
    alive: HashSet<String>,
}

impl Recompute {
    fn plan(graph: &Graph, nodes: &[NodeId], backward: &HashSet<NodeId>) -> Recompute {
        let block: HashSet<NodeId> = nodes.iter().copied().collect();
        let (mut values, mut alive) = (Vec::new(), HashSet::new());
        for &id in nodes {
            for v in graph.node(id).outputs().iter().filter(|v| !v.is_empty()) {
                let uses = graph.uses(v);
                let outside_forward =
                    uses.iter().any(|u| !block.contains(&u.node) && !backward.contains(&u.node) || u.slot.is_none());
                if outside_forward || graph.is_graph_output(v) {
                    alive.insert(v.clone());
                } else if uses.iter().any(|u| backward.contains(&u.node)) {
                    values.push(v.clone());
                }
            }
        }
        Recompute { block, values, alive }
    }

    /// Adds the copies, points the backward readers at them and moves them before the first
    /// such reader. Returns (values recomputed, nodes copied).
    fn apply(&self, graph: &mut Graph, position: &HashMap<NodeId, usize>) -> Result<(usize, usize), PassError> {
        let mut copies: HashMap<String, String> = HashMap::new();
        let mut added: Vec<NodeId> = Vec::new();
        for v in &self.values {
            self.copy_value(graph, v, &mut copies, &mut added)?;
        }
        let mut first: Option<(usize, NodeId)> = None;
        for v in &self.values {
            let readers: Vec<(NodeId, usize)> = graph
                .uses(v)
                .iter()
                .filter(|u| !self.block.contains(&u.node) && !added.contains(&u.node))
                .filter_map(|u| u.slot.map(|s| (u.node, s)))
                .collect();
            for (node, slot) in readers {
                graph.set_input(node, slot, &copies[v])?;
                let p = position.get(&node).copied().unwrap_or(usize::MAX);
                if first.is_none_or(|(fp, _)| p < fp) {
                    first = Some((p, node));
                }
            }
        }
        if let Some((_, anchor)) = first {
            graph.move_before(&added, anchor);
        }
        Ok((self.values.len(), added.len()))
    }

    /// The name of `value`'s recomputed copy, copying its producer (and, first, whatever of
    /// the block that producer reads and the backward does not keep).
    fn copy_value(
        &self,
        graph: &mut Graph,
        value: &str,
        copies: &mut HashMap<String, String>,
        added: &mut Vec<NodeId>,
    ) -> Result<String, PassError> {
        if let Some(c) = copies.get(value) {
            return Ok(c.clone());
        }
        let Some((producer, _)) = graph.producer(value) else { return Ok(value.to_string()) };
        if !self.block.contains(&producer) || self.alive.contains(value) {
            return Ok(value.to_string());
        }
        let original: Node = graph.node(producer).clone();
        let mut inputs = Vec::with_capacity(original.inputs().len());
        for input in original.inputs() {
            inputs.push(if input.is_empty() { String::new() } else { self.copy_value(graph, input, copies, added)? });
        }
        let mut outputs = Vec::with_capacity(original.outputs().len());
        for out in original.outputs() {
            outputs.push(if out.is_empty() { String::new() } else { graph.unique_name(&format!("{out}/recompute")) });
        }
        let mut node = Node::new(original.op().clone(), inputs, outputs.clone())
            .named(graph.unique_name(&format!("recompute/{}", original.label())));
        for a in original.attrs() {
            node = node.with_attr(a.clone());
        }
        node.metadata = original.metadata.clone();
        node.metadata.set(CREATED_BY, PASS);
        added.push(graph.add_node(node)?);
        for (out, copy) in original.outputs().iter().zip(&outputs) {
            if !out.is_empty() {
                copies.insert(out.clone(), copy.clone());
            }
        }
        Ok(copies[value].clone())
    }
}
