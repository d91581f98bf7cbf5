//! Which nodes the backward sweep visits: those on a path from a trainable tensor to the loss.
//!
//! A value is *active* when it depends differentiably on a trainable tensor (forward pass over
//! the rules' differentiable slots; integer and boolean values, non-differentiable ops and
//! nodes tagged `adaptc.stop_gradient` cut the path). A value *needs* a gradient when it is
//! active and the loss depends on it (backward pass). Frozen weights are never active, so
//! they get no gradient, and activation gradients are computed only where a trainable tensor
//! lies upstream.

use std::collections::{BTreeSet, HashSet};

use adaptc_ir::{DataType, Graph, NodeId};

use super::rules::{self, NON_DIFFERENTIABLE};
use crate::adapters::record::STOP_GRADIENT;
use crate::pass::PassError;

/// A node to differentiate and the input slots whose gradients are wanted.
pub struct Step {
    pub node: NodeId,
    pub wanted: Vec<bool>,
}

/// The nodes to differentiate, in reverse topological order.
pub fn backward_steps(graph: &Graph, trainable: &BTreeSet<String>, loss: &str) -> Result<Vec<Step>, PassError> {
    let order = graph.topo_order()?;
    let mut active: HashSet<&str> = trainable.iter().map(String::as_str).collect();
    for &id in &order {
        let node = graph.node(id);
        if node.metadata.get(STOP_GRADIENT).is_some() {
            continue;
        }
        let op = node.op().op_type.as_str();
        let default_domain = adaptc_ir::is_default_domain(&node.op().domain);
        if default_domain && NON_DIFFERENTIABLE.contains(&op) {
            continue;
        }
        // Ops without a rule still pass activity on, so the backward pass can name them.
        let reaches = match rules::rule_of(node.op()) {
            Some(rule) => node
                .inputs()
                .iter()
                .enumerate()
                .any(|(slot, i)| rule.slots.contains(slot) && active.contains(i.as_str())),
            None => node.inputs().iter().any(|i| active.contains(i.as_str())),
        };
        if !reaches || (op == "Cast" && !casts_to_float(node)) {
            continue;
        }
        for out in node.outputs().iter().filter(|o| !o.is_empty()) {
            let float = graph.value_type(out).and_then(|t| t.dtype()).is_none_or(DataType::is_float);
            if float {
                active.insert(out.as_str());
            }
        }
    }
    if !active.contains(loss) {
        return Err(PassError::failed(
            super::PASS,
            format!("the loss `{loss}` does not depend on any trainable tensor ({})", list(trainable)),
        ));
    }
    let mut needed: HashSet<&str> = HashSet::from([loss]);
    let mut steps = Vec::new();
    for &id in order.iter().rev() {
        let node = graph.node(id);
        if !node.outputs().iter().any(|o| needed.contains(o.as_str()) && active.contains(o.as_str())) {
            continue;
        }
        let op = node.op();
        let rule = rules::rule_of(op);
        let Some(rule) = rule else {
            return Err(PassError::failed(
                super::PASS,
                format!(
                    "node `{}` ({op}) lies between a trainable tensor and the loss, and has no gradient rule \
                     (ops with rules: {})",
                    node.label(),
                    rules::supported_ops().join(", ")
                ),
            ));
        };
        let wanted: Vec<bool> = node
            .inputs()
            .iter()
            .enumerate()
            .map(|(slot, i)| !i.is_empty() && rule.slots.contains(slot) && active.contains(i.as_str()))
            .collect();
        for (slot, w) in wanted.iter().enumerate() {
            if *w {
                needed.insert(node.inputs()[slot].as_str());
            }
        }
        steps.push(Step { node: id, wanted });
    }
    let unreached: Vec<&String> = trainable.iter().filter(|t| !needed.contains(t.as_str())).collect();
    if !unreached.is_empty() {
        return Err(PassError::failed(
            super::PASS,
            format!(
                "trainable tensor(s) {} do not influence the loss `{loss}`",
                unreached.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(steps)
}

fn casts_to_float(node: &adaptc_ir::Node) -> bool {
    let to = node.attr_int("to", 0);
    i32::try_from(to).ok().and_then(DataType::from_code).is_some_and(DataType::is_float)
}

fn list(names: &BTreeSet<String>) -> String {
    let v: Vec<&str> = names.iter().map(String::as_str).take(5).collect();
    if names.len() > 5 {
        format!("{}, … {} in all", v.join(", "), names.len())
    } else {
        v.join(", ")
    }
}
