//! Planning one attention block: score the heads, choose the lowest, list the cuts of q/k/v/o
//! and the reshape constants that must say the new head count. Nothing is changed here.

use std::collections::BTreeMap;

use adaptc_ir::{Graph, Node, NodeId, Tensor};

use super::amount::Amount;
use super::attention::{AttentionGroup, ShapeTail};
use super::owned::check_layer;
use super::plan_ffn::feature_axis;
use super::report::HeadReport;
use super::score::{block_scores, choose, sq_norms};
use super::shrink::Cut;
use super::{Edits, PASS};
use crate::adapters::record::{AdapterState, CREATED_BY};
use crate::pass::PassError;
use crate::pattern::constant_tensor;

/// Reshapes that read `shape` get a copy of it with some entries changed. The copy is new (the
/// original may be shared with other blocks): a new constant, or a new `Concat` reading a new
/// constant in place of the old one.
#[derive(Clone, Debug)]
pub struct ShapeEdit {
    pub reshapes: Vec<NodeId>,
    pub shape: String,
    pub concat: Option<NodeId>,
    /// The constant to replace (the shape itself, or one `Concat` input), its slot in the
    /// `Concat`, and its new values.
    pub constant: String,
    pub concat_slot: Option<usize>,
    pub values: Vec<i64>,
}

impl ShapeEdit {
    pub fn apply(&self, graph: &mut Graph) -> Result<(), PassError> {
        let old = constant_tensor(graph, &self.constant)
            .ok_or_else(|| PassError::failed(PASS, format!("`{}` is no longer a constant", self.constant)))?;
        let dtype = old.dtype();
        let name = graph.unique_name(&format!("{}_pruned", self.constant));
        let bytes: Vec<u8> = match dtype {
            adaptc_ir::DataType::Int32 => self.values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
            _ => self.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        graph.add_initializer(Tensor::from_bytes(name.clone(), dtype, vec![self.values.len() as u64], bytes)?)?;
        let new_shape = match (self.concat, self.concat_slot) {
            (Some(concat), Some(slot)) => {
                let old = graph.node(concat).clone();
                let mut inputs = old.inputs().to_vec();
                inputs[slot] = name;
                let out = graph.unique_name(&format!("{}_pruned", self.shape));
                let mut node = old.attrs().iter().cloned().fold(
                    Node::new(old.op().clone(), inputs, vec![out.clone()])
                        .named(graph.unique_name(&format!("{}_pruned", old.name))),
                    Node::with_attr,
                );
                node.metadata.set(CREATED_BY, PASS);
                graph.add_node(node)?;
                out
            }
            _ => name,
        };
        for &r in &self.reshapes {
            graph.set_input(r, 1, &new_shape)?;
        }
        // The originals go when nothing else reads them.
        if let Some(concat) = self.concat {
            if graph.uses(&self.shape).is_empty() && !graph.is_graph_output(&self.shape) {
                graph.remove_node(concat)?;
            }
        }
        if graph.uses(&self.constant).is_empty() && !graph.is_graph_output(&self.constant) {
            if graph.initializer(&self.constant).is_some() {
                graph.remove_initializer(&self.constant)?;
            } else if let Some((id, _)) = graph.producer(&self.constant) {
                graph.remove_node(id)?;
            }
        }
        Ok(())
    }
}

/// Plans the block, adding its cuts and shape edits to `edits`; the reason when it cannot be
/// pruned.
pub fn plan_heads(
    graph: &Graph,
    state: &AdapterState,
    group: &AttentionGroup,
    amount: Amount,
    edits: &mut Edits,
) -> Result<HeadReport, String> {
    for layer in group.layers() {
        check_layer(graph, state, layer)?;
    }
    let (heads, d) = (group.heads, group.head_size);
    let width = heads * d;
    let mut sq = Vec::new();
    for (layer, out) in group.qkv.iter().map(|l| (l, true)).chain(std::iter::once((&group.o, false))) {
        let w = layer.weight_tensor(graph).ok_or_else(|| format!("`{}` is not a constant", layer.weight))?;
        let norms = sq_norms(w, feature_axis(layer, out))?;
        if norms.len() != width {
            return Err(format!("`{}` {:?} does not have {width} head channels", layer.weight, w.dims()));
        }
        sq.push(norms);
    }
    let (kept, removed) = choose(&block_scores(&sq, d), amount.removed(heads));
    let new_heads = kept.len();
    let mut params = 0u64;
    let mut cut = |value: &str, axis: usize, edits: &mut Edits| -> Result<(), String> {
        let t = constant_tensor(graph, value).ok_or_else(|| format!("`{value}` is not a constant"))?;
        params += t.numel() / width as u64 * (removed.len() * d) as u64;
        edits.cuts.push(Cut { value: value.to_string(), axis, block: d, keep: kept.clone() });
        Ok(())
    };
    for l in &group.qkv {
        cut(&l.weight, feature_axis(l, true), edits)?;
        if let Some(b) = &l.bias {
            let rank = constant_tensor(graph, b).map_or(1, |t| t.dims().len());
            cut(b, rank - 1, edits)?;
        }
        if let Some(t) = l.transpose_node.and_then(|t| graph.node(t).output(0)) {
            edits.resize(t, 0, width, new_heads * d);
        }
        if let Some(mm) = graph.node(l.node).output(0).filter(|mm| *mm != l.output) {
            edits.resize(mm, 0, width, new_heads * d);
        }
        edits.resize(&l.output, 0, width, new_heads * d);
    }
    cut(&group.o.weight, feature_axis(&group.o, false), edits)?;
    if let Some(t) = group.o.transpose_node.and_then(|t| graph.node(t).output(0)) {
        edits.resize(t, 1, width, new_heads * d);
    }
    for &id in &group.region {
        edits.forgotten.extend(graph.node(id).outputs().iter().filter(|o| !o.is_empty()).cloned());
    }
    if !removed.is_empty() {
        shape_edits(group.splits.iter(), 1, heads as i64, new_heads as i64, edits);
        shape_edits(std::iter::once(&group.merge), 0, width as i64, (new_heads * d) as i64, edits);
    }
    Ok(HeadReport {
        module: group.module(graph),
        head_size: d,
        heads_before: heads,
        heads_after: new_heads,
        removed,
        params_removed: params,
    })
}

/// The edits that make entry `back` (from the end) of these reshapes' shapes say `new` where
/// it says `old` (a `-1` stays: it is inferred).
fn shape_edits<'t>(tails: impl Iterator<Item = &'t ShapeTail>, back: usize, old: i64, new: i64, edits: &mut Edits) {
    let mut by_shape: BTreeMap<(String, String), ShapeEdit> = BTreeMap::new();
    for tail in tails {
        let Some(entry) = tail.from_end(back) else { continue };
        if entry.value != old {
            continue;
        }
        let key = (tail.shape.clone(), entry.constant.clone());
        let edit = by_shape.entry(key).or_insert_with(|| {
            let mut values: Vec<i64> =
                tail.entries.iter().filter(|e| e.constant == entry.constant).map(|e| e.value).collect();
            if let Some(v) = values.get_mut(entry.index) {
                *v = new;
            }
            ShapeEdit {
                reshapes: Vec::new(),
                shape: tail.shape.clone(),
                concat: tail.concat,
                constant: entry.constant.clone(),
                concat_slot: entry.concat_slot,
                values,
            }
        });
        edit.reshapes.push(tail.reshape);
    }
    edits.shapes.extend(by_shape.into_values());
}
