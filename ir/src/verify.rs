//! The verifier: the invariants every pass must preserve.
//!
//! Values are defined once; every node input and graph output is defined (here or, for a
//! subgraph, in an enclosing scope); the graph is acyclic; declared shapes have no negative
//! dimensions; attribute names are unique per node. Run after every pass in tests and with
//! `--verify-each`.

use std::collections::HashSet;

use crate::error::IrError;
use crate::graph::Graph;
use crate::value::{Dim, ValueInfo};

/// Most issues reported at once.
const MAX_ISSUES: usize = 20;

/// Checks a graph and its subgraphs; the error lists every problem found (up to 20).
pub fn verify(graph: &Graph) -> Result<(), IrError> {
    let mut issues = Vec::new();
    check(graph, &HashSet::new(), "", &mut issues);
    if issues.is_empty() {
        Ok(())
    } else {
        if issues.len() > MAX_ISSUES {
            let more = issues.len() - MAX_ISSUES;
            issues.truncate(MAX_ISSUES);
            issues.push(format!("... and {more} more"));
        }
        Err(IrError::Verify(issues))
    }
}

fn check(graph: &Graph, outer: &HashSet<String>, scope: &str, issues: &mut Vec<String>) {
    let here = if scope.is_empty() { String::new() } else { format!("in subgraph {scope}: ") };
    let mut defined: HashSet<String> = HashSet::new();
    for v in &graph.inputs {
        if v.name.is_empty() {
            issues.push(format!("{here}a graph input has an empty name"));
        } else if !defined.insert(v.name.clone()) {
            issues.push(format!("{here}graph input `{}` is declared twice", v.name));
        }
    }
    let mut initializers = HashSet::new();
    for t in graph.initializers() {
        initializers.insert(t.name.clone());
        defined.insert(t.name.clone());
    }
    for s in &graph.sparse_initializers {
        if !defined.insert(s.name().to_string()) {
            issues.push(format!("{here}sparse initializer `{}` redefines a value", s.name()));
        }
    }
    for (_, node) in graph.nodes() {
        for out in node.outputs().iter().filter(|o| !o.is_empty()) {
            if defined.contains(out) {
                let what = if initializers.contains(out) { "an initializer" } else { "a graph input" };
                issues.push(format!("{here}node `{}` redefines `{out}`, which is {what}", node.label()));
            }
        }
    }
    for (_, node) in graph.nodes() {
        defined.extend(node.outputs().iter().filter(|o| !o.is_empty()).cloned());
    }
    let visible = |v: &str| defined.contains(v) || outer.contains(v);
    for (_, node) in graph.nodes() {
        for (slot, input) in node.inputs().iter().enumerate() {
            if !input.is_empty() && !visible(input) {
                issues.push(format!(
                    "{here}node `{}` ({}) reads `{input}` in input {slot}, which nothing defines",
                    node.label(),
                    node.op()
                ));
            }
        }
        let mut names = HashSet::new();
        for a in node.attrs() {
            if !names.insert(a.name.as_str()) {
                issues.push(format!("{here}node `{}` has attribute `{}` twice", node.label(), a.name));
            }
        }
    }
    for o in &graph.outputs {
        if o.name.is_empty() {
            issues.push(format!("{here}a graph output has an empty name"));
        } else if !visible(&o.name) {
            issues.push(format!("{here}graph output `{}` is not defined", o.name));
        }
    }
    for v in graph.inputs.iter().chain(&graph.outputs).chain(&graph.value_info) {
        check_dims(v, &here, issues);
    }
    if let Err(e) = graph.topo_order() {
        issues.push(format!("{here}{e}"));
    }
    let inner: HashSet<String> = outer.union(&defined).cloned().collect();
    for (_, node) in graph.nodes() {
        for a in node.attrs() {
            for (i, g) in a.graphs().iter().enumerate() {
                let name = format!("{}{}.{}[{i}]", if scope.is_empty() { "" } else { "/" }, node.label(), a.name);
                check(g, &inner, &format!("{scope}{name}"), issues);
            }
        }
    }
}

fn check_dims(v: &ValueInfo, here: &str, issues: &mut Vec<String>) {
    if let Some(dims) = v.ty.as_ref().and_then(|t| t.dims()) {
        if dims.iter().any(|d| matches!(d, Dim::Known(n) if *n < 0)) {
            let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
            issues.push(format!("{here}value `{}` declares a negative dimension [{}]", v.name, dims.join(", ")));
        }
    }
}
