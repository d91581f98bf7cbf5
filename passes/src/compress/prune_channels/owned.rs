//! Whether a group may change a parameter: it must be a constant that only the group reads,
//! not trainable and not the base of an adapter (whose shapes would no longer fit).

use adaptc_ir::{Graph, NodeId};

use crate::adapters::record::{AdapterState, TRAINABLE};
use crate::pattern::{constant_tensor, LinearLayer};

/// Checks the constant `value`, read only by `own` nodes.
pub fn check_param(graph: &Graph, state: &AdapterState, value: &str, own: &[NodeId]) -> Result<(), String> {
    let t = constant_tensor(graph, value).ok_or_else(|| format!("`{value}` is not a constant"))?;
    if t.metadata.get(TRAINABLE) == Some("true") || state.trainable.contains(value) {
        return Err(format!(
            "`{value}` is trainable (adaptc.trainable=true): pruning would change a tensor training updates; \
             prune before marking it trainable"
        ));
    }
    if let Some(a) = state.adapters.iter().find(|a| a.base_weight == value) {
        return Err(format!(
            "`{value}` carries a {:?} adapter on `{}`: merge the adapter (merge-lora) before pruning",
            a.method, a.module
        ));
    }
    if graph.is_graph_output(value) {
        return Err(format!("`{value}` is a graph output"));
    }
    if let Some(u) = graph.uses(value).iter().find(|u| !own.contains(&u.node)) {
        return Err(format!("`{value}` is also read by `{}`", graph.node(u.node).label()));
    }
    Ok(())
}

/// Checks a linear layer's weight and bias (and the transposed weight of
/// `MatMul(x, Transpose(W))`).
pub fn check_layer(graph: &Graph, state: &AdapterState, layer: &LinearLayer) -> Result<(), String> {
    let own = [layer.node];
    match layer.transpose_node {
        Some(t) => {
            check_param(graph, state, &layer.weight, &[t])?;
            let out = graph.node(t).output(0).unwrap_or_default();
            if let Some(u) = graph.uses(out).iter().find(|u| u.node != layer.node) {
                return Err(format!("the transposed weight `{out}` is also read by `{}`", graph.node(u.node).label()));
            }
        }
        None => check_param(graph, state, &layer.weight, &own)?,
    }
    if let Some(b) = &layer.bias {
        check_param(graph, state, b, &[layer.bias_node.unwrap_or(layer.node)])?;
    }
    Ok(())
}
