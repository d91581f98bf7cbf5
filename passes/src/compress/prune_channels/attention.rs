//! Finding attention blocks by structure: three linear layers reading the same input whose
//! results are each reshaped to `[.., H, D]` (q, k, v, in graph order), and the one linear
//! layer (o) that the values computed from them reach, reading the heads merged back to
//! `[.., H·D]`.
//!
//! The head split is taken as proven when: the three reshapes agree on `H` and `D` (otherwise:
//! grouped-query attention, refused); every value computed from q/k/v before o stays inside
//! (no graph output, no other linear layer); o reads a `Reshape` whose last entry is `H·D` or
//! `-1`; and no other op of the block reads a constant that mentions `H` or `H·D` (a per-head
//! table, a head-count reshape the pass does not understand), which is refused naming the node.
//! `H` and `D` come from the reshape constants — a constant tensor, or the constant tail of a
//! `Concat` of dynamic dims and constants — with `-1` for `H` inferred from the width.

use std::collections::{BTreeSet, HashMap, VecDeque};

use adaptc_ir::{DataType, Graph, NodeId};

use crate::pattern::{block_index, constant_tensor, LinearLayer};

/// Nodes the walk from q/k/v to o may visit before it gives up.
const MAX_REGION: usize = 400;

/// One entry of a reshape's shape that comes from a constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeEntry {
    pub value: i64,
    /// The constant holding it and the entry's index in it.
    pub constant: String,
    pub index: usize,
    /// The `Concat` input slot of `constant`, when the shape is a `Concat`.
    pub concat_slot: Option<usize>,
}

/// The constant tail of a `Reshape`'s shape input.
#[derive(Clone, Debug)]
pub struct ShapeTail {
    /// The reshape and its shape value.
    pub reshape: NodeId,
    pub shape: String,
    /// The `Concat` producing the shape, if any.
    pub concat: Option<NodeId>,
    /// The trailing constant entries, in order (the last is the shape's last entry).
    pub entries: Vec<ShapeEntry>,
}

impl ShapeTail {
    /// The entry `back` places from the end (0: the last).
    pub fn from_end(&self, back: usize) -> Option<&ShapeEntry> {
        self.entries.len().checked_sub(back + 1).map(|i| &self.entries[i])
    }
}

/// One attention block.
#[derive(Clone, Debug)]
pub struct AttentionGroup {
    /// q, k, v in graph order.
    pub qkv: [LinearLayer; 3],
    pub o: LinearLayer,
    pub heads: usize,
    pub head_size: usize,
    /// The reshapes splitting q, k, v into heads.
    pub splits: Vec<ShapeTail>,
    /// The reshape merging the heads before o.
    pub merge: ShapeTail,
    /// Nodes from the splits up to (not including) o.
    pub region: Vec<NodeId>,
    pub block: Option<usize>,
}

impl AttentionGroup {
    /// o's module path (or its node's name).
    pub fn module(&self, graph: &Graph) -> String {
        self.o.module_path.clone().unwrap_or_else(|| graph.node(self.o.node).label())
    }

    pub fn layers(&self) -> impl Iterator<Item = &LinearLayer> {
        self.qkv.iter().chain(std::iter::once(&self.o))
    }
}

/// An attention block that cannot be pruned, and why.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub module: String,
    pub block: Option<usize>,
    pub reason: String,
}

/// Every attention block (or the reason it cannot be pruned), in graph order.
pub fn find_attention_groups(graph: &Graph, layers: &[LinearLayer]) -> Vec<Result<AttentionGroup, Refusal>> {
    let mut by_input: Vec<(&str, Vec<(&LinearLayer, ShapeTail)>)> = Vec::new();
    for layer in layers {
        let Some(split) = split_reshape(graph, layer) else { continue };
        match by_input.iter_mut().find(|(i, _)| *i == layer.input) {
            Some((_, v)) => v.push((layer, split)),
            None => by_input.push((&layer.input, vec![(layer, split)])),
        }
    }
    let by_node: HashMap<NodeId, &LinearLayer> = layers.iter().map(|l| (l.node, l)).collect();
    by_input.into_iter().filter(|(_, v)| v.len() == 3).map(|(_, v)| match_block(graph, &by_node, v)).collect()
}

/// The `Reshape` reading `layer`'s result as its only use, with a constant tail of at least two
/// entries (`[.., H or -1, D]`).
fn split_reshape(graph: &Graph, layer: &LinearLayer) -> Option<ShapeTail> {
    let [u] = graph.uses(&layer.output) else { return None };
    let node = graph.node(u.node);
    if !node.op().is("Reshape") || u.slot != Some(0) || graph.is_graph_output(&layer.output) {
        return None;
    }
    let tail = shape_tail(graph, u.node)?;
    let d = tail.from_end(0)?.value;
    let h = tail.from_end(1)?.value;
    (d > 0 && (h > 0 || h == -1)).then_some(tail)
}

/// Reads the constant tail of `reshape`'s shape input.
pub fn shape_tail(graph: &Graph, reshape: NodeId) -> Option<ShapeTail> {
    let shape = graph.node(reshape).input(1)?.to_string();
    let ints = |value: &str| -> Option<Vec<i64>> {
        let t = constant_tensor(graph, value)?;
        (t.dims().len() == 1 && matches!(t.dtype(), DataType::Int64 | DataType::Int32)).then(|| t.to_i64().ok())?
    };
    if let Some(values) = ints(&shape) {
        let entries = values
            .into_iter()
            .enumerate()
            .map(|(index, value)| ShapeEntry { value, constant: shape.clone(), index, concat_slot: None })
            .collect();
        return Some(ShapeTail { reshape, shape, concat: None, entries });
    }
    let (concat, _) = graph.producer(&shape)?;
    let node = graph.node(concat);
    if !node.op().is("Concat") || node.attr_int("axis", 0) != 0 && node.attr_int("axis", 0) != -1 {
        return None;
    }
    let mut entries = Vec::new();
    for (slot, input) in node.inputs().iter().enumerate().rev() {
        let Some(values) = ints(input) else { break };
        let mut these: Vec<ShapeEntry> = values
            .into_iter()
            .enumerate()
            .map(|(index, value)| ShapeEntry { value, constant: input.clone(), index, concat_slot: Some(slot) })
            .collect();
        these.append(&mut entries);
        entries = these;
    }
    (!entries.is_empty()).then_some(ShapeTail { reshape, shape, concat: Some(concat), entries })
}

fn match_block(
    graph: &Graph,
    by_node: &HashMap<NodeId, &LinearLayer>,
    found: Vec<(&LinearLayer, ShapeTail)>,
) -> Result<AttentionGroup, Refusal> {
    let first = found[0].0;
    let module = first.module_path.clone().unwrap_or_else(|| graph.node(first.node).label());
    let block = first.module_path.as_deref().and_then(block_index);
    let refuse = |reason: String| Refusal { module: module.clone(), block, reason };

    // Heads and head size of each projection.
    let mut shapes = Vec::new();
    for (layer, tail) in &found {
        let d = tail.from_end(0).map_or(0, |e| e.value) as u64;
        let h = tail.from_end(1).map_or(0, |e| e.value);
        let width = layer.out_features;
        let heads = if h == -1 { width / d.max(1) } else { h as u64 };
        if d == 0 || heads * d != width {
            return Err(refuse(format!(
                "`{}` has {width} outputs but its reshape `{}` splits them into heads of {d} (H={h})",
                graph.node(layer.node).label(),
                graph.node(tail.reshape).label()
            )));
        }
        shapes.push((heads as usize, d as usize));
    }
    let (heads, head_size) = shapes[0];
    for ((layer, tail), &(h, d)) in found.iter().zip(&shapes).skip(1) {
        if (h, d) != (heads, head_size) {
            return Err(refuse(format!(
                "grouped-query attention is not supported yet: `{}` has {heads} heads of {head_size}, but `{}` (reshaped \
                 by `{}`) has {h} heads of {d}",
                first.module_path.clone().unwrap_or_else(|| graph.node(first.node).label()),
                layer.module_path.clone().unwrap_or_else(|| graph.node(layer.node).label()),
                graph.node(tail.reshape).label()
            )));
        }
    }

    // Everything computed from the heads, up to the linear layer that reads it.
    let mut region: BTreeSet<NodeId> = BTreeSet::new();
    let mut exits: BTreeSet<NodeId> = BTreeSet::new();
    let mut queue: VecDeque<NodeId> = found.iter().map(|(_, t)| t.reshape).collect();
    while let Some(id) = queue.pop_front() {
        if !region.insert(id) {
            continue;
        }
        if region.len() > MAX_REGION {
            return Err(refuse("the values computed from q/k/v do not reach an output projection".into()));
        }
        for out in graph.node(id).outputs().iter().filter(|o| !o.is_empty()) {
            if graph.is_graph_output(out) {
                return Err(refuse(format!("`{out}`, computed from the heads, is a graph output")));
            }
            for u in graph.uses(out) {
                if by_node.contains_key(&u.node) {
                    exits.insert(u.node);
                } else {
                    queue.push_back(u.node);
                }
            }
        }
    }
    let o = match exits.iter().map(|id| by_node[id]).collect::<Vec<_>>()[..] {
        [o] => o.clone(),
        [] => return Err(refuse("no linear layer reads the attention's result".into())),
        ref many => {
            let names: Vec<String> = many.iter().map(|l| graph.node(l.node).label()).collect();
            return Err(refuse(format!("the heads reach several linear layers ({})", names.join(", "))));
        }
    };
    let module = o.module_path.clone().unwrap_or_else(|| graph.node(o.node).label());
    let refuse = |reason: String| Refusal { module: module.clone(), block, reason };
    let width = (heads * head_size) as u64;
    let merge = graph
        .producer(&o.input)
        .filter(|(id, _)| graph.node(*id).op().is("Reshape") && region.contains(id))
        .and_then(|(id, _)| shape_tail(graph, id))
        .filter(|t| t.from_end(0).is_some_and(|e| e.value == -1 || e.value == width as i64))
        .ok_or_else(|| {
            refuse(format!(
                "`{}` does not read a Reshape of the heads to [.., {width}] (cannot prove how the heads are merged)",
                graph.node(o.node).label()
            ))
        })?;
    if o.in_features != width {
        return Err(refuse(format!(
            "`{}` reads {} features, not {heads}×{head_size}",
            graph.node(o.node).label(),
            o.in_features
        )));
    }

    // No other constant of the block may speak of the head count.
    let known: BTreeSet<(NodeId, String)> = found
        .iter()
        .map(|(_, t)| t)
        .chain(std::iter::once(&merge))
        .flat_map(|t| {
            let reader = t.concat.unwrap_or(t.reshape);
            t.entries.iter().map(move |e| (reader, e.constant.clone()))
        })
        .collect();
    for &id in &region {
        let node = graph.node(id);
        for input in node.inputs().iter().filter(|i| !i.is_empty()) {
            if known.contains(&(id, input.clone())) {
                continue;
            }
            if let Some(reason) = mentions_heads(graph, input, heads, width as usize) {
                return Err(refuse(format!(
                    "cannot prove the head split: `{}` reads `{input}`, {reason}",
                    node.label()
                )));
            }
        }
        // A Concat feeding a reshape in the block: its constants are shape entries.
        if node.op().is("Reshape") && !found.iter().any(|(_, t)| t.reshape == id) && merge.reshape != id {
            if let Some(tail) = shape_tail(graph, id) {
                if let Some(e) =
                    tail.entries.iter().find(|e| heads > 1 && (e.value == heads as i64 || e.value == width as i64))
                {
                    return Err(refuse(format!(
                        "cannot prove the head split: the shape of `{}` holds {} in `{}`",
                        node.label(),
                        e.value,
                        e.constant
                    )));
                }
            }
        }
    }
    let [a, b, c] = [found[0].0.clone(), found[1].0.clone(), found[2].0.clone()];
    Ok(AttentionGroup {
        qkv: [a, b, c],
        o,
        heads,
        head_size,
        splits: found.into_iter().map(|(_, t)| t).collect(),
        merge,
        region: region.into_iter().collect(),
        block,
    })
}

/// Why the constant `value` may depend on the head count (a dimension or an integer entry equal
/// to `H` or `H·D`), if it does.
fn mentions_heads(graph: &Graph, value: &str, heads: usize, width: usize) -> Option<String> {
    let t = constant_tensor(graph, value)?;
    if heads <= 1 {
        return None;
    }
    if t.numel() > 1 && t.dims().iter().any(|&d| d as usize == heads || d as usize == width) {
        return Some(format!("a constant of shape {:?} (H={heads})", t.dims()));
    }
    if matches!(t.dtype(), DataType::Int64 | DataType::Int32) && t.numel() <= 16 {
        let values = t.to_i64().ok()?;
        if let Some(v) = values.iter().find(|&&v| v == heads as i64 || v == width as i64) {
            return Some(format!("an integer constant holding {v} (H={heads}, H·D={width})"));
        }
    }
    None
}
