//! Canonicalization: passes that simplify a graph without changing what it computes.
//!
//! - [`dce`]: dead-code elimination (unused nodes and initializers);
//! - [`cse`]: common-subexpression elimination (duplicate nodes and constant initializers);
//! - [`fold_constants`]: evaluates nodes whose inputs are all constants.
//!
//! A typical clean-up pipeline is `fold-constants,cse,dce`: folding turns shape arithmetic
//! into initializers, CSE merges what became identical, DCE drops what is left unused.

pub mod cse;
pub mod dce;
pub mod fold_constants;

use std::collections::HashSet;

use adaptc_ir::{Graph, IrError, NodeId, Tensor};

/// Whether `value` is a constant of `graph`: an initializer that is not also a graph input (a
/// graph input may be overridden at run time, so its initializer is only a default) and is not
/// trainable (training changes it; see `adapters::record::TRAINABLE`).
pub(crate) fn is_constant(graph: &Graph, value: &str) -> bool {
    graph.initializer(value).is_some_and(|t| t.metadata.get(crate::adapters::record::TRAINABLE) != Some("true"))
        && !graph.is_graph_input(value)
}

/// Removes `value_info` entries for values that no longer exist.
pub(crate) fn drop_value_info(graph: &mut Graph, removed: &HashSet<String>) {
    if !removed.is_empty() {
        graph.value_info.retain(|v| !removed.contains(&v.name));
    }
}

/// Replaces node `id` by initializers holding its outputs, keeping the output names.
///
/// `values[i]` becomes output `i` (the tensors' own names are ignored). The graph API removes a
/// node only once its outputs are unused, so the uses move to temporary initializers first and
/// come back to the original names once the node is gone.
pub(crate) fn replace_node_with_initializers(
    graph: &mut Graph,
    id: NodeId,
    values: Vec<Tensor>,
) -> Result<(), IrError> {
    let outputs: Vec<String> = graph.node(id).outputs().to_vec();
    let mut temps = Vec::with_capacity(outputs.len());
    for (out, mut tensor) in outputs.iter().zip(values) {
        if out.is_empty() {
            continue;
        }
        let tmp = graph.unique_name(&format!("{out}.folded"));
        tensor.name = tmp.clone();
        graph.add_initializer(tensor)?;
        graph.replace_all_uses_with(out, &tmp)?;
        temps.push((out.clone(), tmp));
    }
    graph.remove_node(id)?;
    for (out, tmp) in temps {
        let Some(mut tensor) = graph.initializer(&tmp).cloned() else {
            continue;
        };
        tensor.name = out.clone();
        graph.add_initializer(tensor)?;
        graph.replace_all_uses_with(&tmp, &out)?;
        graph.remove_initializer(&tmp)?;
    }
    Ok(())
}
