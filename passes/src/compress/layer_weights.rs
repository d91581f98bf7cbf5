//! The weights of the selected linear layers, grouped and checked for a pass that rewrites
//! their values (`prune-weights`, `factorize-lowrank`).
//!
//! Such a pass changes what every reader of the weight sees, so a weight qualifies only when
//! all its readers are selected linear layers of one stored layout (several layers may share
//! it: they all get the same new values). Refused, naming the weight and the reason: a weight
//! that is not `float32`/`float16`/`bfloat16`, trainable (`adaptc.trainable=true` or listed
//! in the adapter state), read by anything else (a tied embedding's `Gather`, an unselected
//! layer, a graph output), or read as `[in,out]` by one layer and `[out,in]` by another.
//! Checking reads no weight data; [`LayerWeight::values`] does, and refuses non-finite values.

use adaptc_ir::{Attribute, DataType, Graph, NodeId, Tensor};

use super::quant::encode_floats;
use crate::adapters::record::{AdapterState, TRAINABLE};
use crate::adapters::targets::Selection;
use crate::pass::PassError;
use crate::pattern::{LinearLayer, WeightLayout};

/// One weight of the selected layers, checked.
#[derive(Clone, Debug)]
pub struct LayerWeight {
    /// The constant holding the weight (an initializer or a `Constant` node's output).
    pub weight: String,
    /// The `Constant` node holding the weight, when it is not an initializer.
    pub constant_node: Option<NodeId>,
    /// The layers reading it, in graph order (at least one).
    pub layers: Vec<LinearLayer>,
    /// The first layer's module path (the weight's name when it has none).
    pub module: String,
    pub dtype: DataType,
    /// The stored shape.
    pub dims: [u64; 2],
    pub layout: WeightLayout,
    pub in_features: usize,
    pub out_features: usize,
}

/// The error of `pass` about `module`.
pub fn fail(pass: &str, module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(pass, format!("`{module}`: {reason}"))
}

/// The layers `selection` picks in `graph`, grouped by weight (graph order) and checked.
/// Nothing selected is an error listing the available module paths.
pub fn select_weights(
    pass: &str,
    graph: &Graph,
    state: &AdapterState,
    selection: &Selection,
    described: &str,
) -> Result<Vec<LayerWeight>, PassError> {
    let selected = selection.select(graph);
    if selected.is_empty() {
        return Err(selection.no_match(pass, graph, described));
    }
    let mut by_weight: Vec<(String, Vec<LinearLayer>)> = Vec::new();
    for layer in selected {
        match by_weight.iter_mut().find(|(w, _)| *w == layer.weight) {
            Some((_, ls)) => ls.push(layer),
            None => by_weight.push((layer.weight.clone(), vec![layer])),
        }
    }
    by_weight.into_iter().map(|(weight, layers)| check(pass, graph, state, weight, layers)).collect()
}

fn layout_name(layout: WeightLayout) -> &'static str {
    match layout {
        WeightLayout::InOut => "[in,out]",
        WeightLayout::OutIn => "[out,in]",
    }
}

fn check(
    pass: &str,
    graph: &Graph,
    state: &AdapterState,
    weight: String,
    layers: Vec<LinearLayer>,
) -> Result<LayerWeight, PassError> {
    let first = &layers[0];
    let module = first.module_path.clone().unwrap_or_else(|| weight.clone());
    let tensor = first
        .weight_tensor(graph)
        .ok_or_else(|| fail(pass, &module, format!("the weight `{weight}` is not a constant")))?;
    let dtype = tensor.dtype();
    if !matches!(dtype, DataType::Float | DataType::Float16 | DataType::BFloat16) {
        return Err(fail(
            pass,
            &module,
            format!("the weight `{weight}` is {dtype}; only float32, float16 and bfloat16 weights are supported"),
        ));
    }
    if tensor.metadata.get(TRAINABLE) == Some("true") || state.trainable.contains(&weight) {
        return Err(fail(
            pass,
            &module,
            format!(
                "the weight `{weight}` is trainable (adaptc.trainable=true): rewriting it would change what training \
                 updates; exclude the layer, or compress before marking it trainable"
            ),
        ));
    }
    if let Some(other) = layers.iter().find(|l| l.layout != first.layout) {
        return Err(fail(
            pass,
            &module,
            format!(
                "the weight `{weight}` is read as {} by `{}` and as {} by `{}`: its input-feature axis is ambiguous",
                layout_name(first.layout),
                graph.node(first.node).label(),
                layout_name(other.layout),
                graph.node(other.node).label()
            ),
        ));
    }
    let others = other_readers(graph, &weight, &layers);
    if !others.is_empty() {
        return Err(fail(
            pass,
            &module,
            format!(
                "the weight `{weight}` is also read by {}; rewriting it would change what they read (select every \
                 layer reading it, or exclude this one)",
                others.join(", ")
            ),
        ));
    }
    let [d0, d1] = *tensor.dims() else {
        return Err(fail(pass, &module, format!("the weight `{weight}` is not 2-D: {:?}", tensor.dims())));
    };
    let (k, n) = (first.in_features as usize, first.out_features as usize);
    if tensor.numel() != (k * n) as u64 {
        return Err(fail(pass, &module, format!("the weight `{weight}` [{d0}, {d1}] does not hold {k}×{n} values")));
    }
    let constant_node =
        if graph.initializer(&weight).is_some() { None } else { graph.producer(&weight).map(|(id, _)| id) };
    let layout = first.layout;
    Ok(LayerWeight {
        weight,
        constant_node,
        layers,
        module,
        dtype,
        dims: [d0, d1],
        layout,
        in_features: k,
        out_features: n,
    })
}

/// Readers of `weight` (and of the layers' transposed copies) besides the layers themselves.
fn other_readers(graph: &Graph, weight: &str, layers: &[LinearLayer]) -> Vec<String> {
    let own: Vec<NodeId> = layers.iter().flat_map(|l| std::iter::once(l.node).chain(l.transpose_node)).collect();
    let mut others: Vec<String> = graph
        .uses(weight)
        .iter()
        .filter(|u| !own.contains(&u.node))
        .map(|u| format!("`{}` ({})", graph.node(u.node).label(), graph.node(u.node).op()))
        .collect();
    if graph.is_graph_output(weight) {
        others.push(format!("the graph output `{weight}`"));
    }
    for l in layers {
        let Some(t) = l.transpose_node else { continue };
        let t_out = graph.node(t).output(0).unwrap_or_default();
        others.extend(
            graph
                .uses(t_out)
                .iter()
                .filter(|u| !own.contains(&u.node))
                .map(|u| format!("`{}` ({})", graph.node(u.node).label(), graph.node(u.node).op())),
        );
        if graph.is_graph_output(t_out) {
            others.push(format!("the graph output `{t_out}`"));
        }
    }
    others.sort();
    others.dedup();
    others
}

impl LayerWeight {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.in_features * self.out_features
    }

    /// The stored values widened to `f32` (exact for all three float types), refusing
    /// non-finite ones.
    pub fn values(&self, pass: &str, graph: &Graph) -> Result<Vec<f32>, PassError> {
        let tensor = self.layers[0]
            .weight_tensor(graph)
            .ok_or_else(|| fail(pass, &self.module, format!("the weight `{}` is not a constant", self.weight)))?;
        let values = tensor.to_f32_lossy().map_err(|e| fail(pass, &self.module, e))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(fail(
                pass,
                &self.module,
                format!("the weight `{}` has a non-finite value ({}) at element {i}", self.weight, values[i]),
            ));
        }
        Ok(values)
    }

    /// `values` (stored layout) encoded in the weight's own type, ready for [`Self::store`].
    pub fn encode(&self, values: &[f32]) -> Vec<u8> {
        encode_floats(self.dtype, values)
    }

    /// Writes `bytes` (from [`Self::encode`]) into the weight; the initializer keeps its name,
    /// position and metadata, a `Constant` node gets a new `value`.
    pub fn store(&self, pass: &str, graph: &mut Graph, bytes: Vec<u8>) -> Result<(), PassError> {
        if let Some(t) = graph.initializer_mut(&self.weight) {
            return t.set_bytes(bytes).map_err(PassError::from);
        }
        let id = self.constant_node.ok_or_else(|| {
            fail(pass, &self.module, format!("the weight `{}` is neither an initializer nor a Constant", self.weight))
        })?;
        let old = graph.node(id).attr("value").and_then(|a| a.as_tensor()).ok_or_else(|| {
            fail(pass, &self.module, format!("the Constant holding `{}` has no tensor value", self.weight))
        })?;
        let t = Tensor::from_bytes(old.name.clone(), self.dtype, old.dims().to_vec(), bytes)?;
        graph.set_attr(id, Attribute::tensor("value", t));
        Ok(())
    }

    /// Removes the weight (initializer or `Constant` node, and its value_info) once nothing
    /// reads it.
    pub fn remove_if_unused(&self, graph: &mut Graph) -> Result<bool, PassError> {
        if !graph.uses(&self.weight).is_empty() || graph.is_graph_output(&self.weight) {
            return Ok(false);
        }
        match self.constant_node {
            Some(id) => {
                graph.remove_node(id)?;
            }
            None => {
                graph.remove_initializer(&self.weight)?;
            }
        }
        graph.value_info.retain(|v| v.name != self.weight);
        Ok(true)
    }
}
