//! `dce`: dead-code elimination.
//!
//! Removes nodes none of whose outputs is used or is a graph output, walking the graph in
//! reverse topological order so that a chain of dead nodes goes in one sweep (and sweeping
//! again until nothing changes). Then removes initializers that no node uses (a use by a
//! subgraph counts) and that are neither graph inputs nor graph outputs. Subgraphs (If, Loop,
//! Scan bodies) are cleaned the same way first, which can make outer values unused; their
//! own inputs and outputs are their interface and are kept. Sparse initializers are kept.
//!
//! Every operator is treated as pure: ONNX's default domains have no side effects, and a
//! custom-domain op whose result nothing reads is dropped like any other. Nodes without
//! outputs are dead by definition. `value_info` entries of removed values are dropped.
//!
//! Preconditions: the graph is acyclic (it verifies). Preserves: graph inputs and outputs,
//! everything that contributes to an output, node order of the survivors.
//!
//! Example pipeline: `fold-constants,dce`. Statistics: `dce.nodes_removed`,
//! `dce.initializers_removed`.

use std::collections::HashSet;

use adaptc_ir::{AttrValue, Graph, IrError, Model};

use crate::canonicalize::drop_value_info;
use crate::options::Options;
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// The `dce` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dce;

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: "dce",
        summary: "remove nodes and initializers that no graph output depends on",
        options: Vec::new(),
        example: "fold-constants,dce",
        build: |_: &Options| Ok(Box::new(Dce)),
    }
}

#[derive(Default)]
struct Removed {
    nodes: i64,
    initializers: i64,
}

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let mut removed = Removed::default();
        eliminate(&mut model.graph, &mut removed)?;
        Ok(PassOutcome::changed(removed.nodes + removed.initializers > 0)
            .stat("dce.nodes_removed", removed.nodes)
            .stat("dce.initializers_removed", removed.initializers))
    }
}

/// Runs `dce` on `graph` for another pass; returns (nodes, initializers) removed.
pub(crate) fn remove_dead_code(graph: &mut Graph) -> Result<(i64, i64), IrError> {
    let mut removed = Removed::default();
    eliminate(graph, &mut removed)?;
    Ok((removed.nodes, removed.initializers))
}

/// Removes dead code from `graph` and, first, from its subgraphs.
fn eliminate(graph: &mut Graph, removed: &mut Removed) -> Result<(), IrError> {
    for id in graph.node_ids() {
        if !graph.node(id).has_subgraphs() {
            continue;
        }
        let attrs: Vec<_> = graph.node(id).attrs().iter().filter(|a| !a.graphs().is_empty()).cloned().collect();
        for mut attr in attrs {
            let before = removed.nodes + removed.initializers;
            match &mut attr.value {
                AttrValue::Graph(g) => eliminate(g, removed)?,
                AttrValue::Graphs(gs) => {
                    for g in gs {
                        eliminate(g, removed)?;
                    }
                }
                _ => {}
            }
            if removed.nodes + removed.initializers != before {
                graph.set_attr(id, attr);
            }
        }
    }

    let mut gone: HashSet<String> = HashSet::new();
    loop {
        let mut progress = false;
        for id in graph.topo_order()?.into_iter().rev() {
            let node = graph.node(id);
            let dead = node
                .outputs()
                .iter()
                .filter(|o| !o.is_empty())
                .all(|o| graph.uses(o).is_empty() && !graph.is_graph_output(o));
            if dead {
                let node = graph.remove_node(id)?;
                gone.extend(node.outputs().iter().filter(|o| !o.is_empty()).cloned());
                removed.nodes += 1;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }

    let unused: Vec<String> = graph
        .initializers()
        .map(|t| t.name.clone())
        .filter(|n| graph.uses(n).is_empty() && !graph.is_graph_input(n) && !graph.is_graph_output(n))
        .collect();
    for name in unused {
        graph.remove_initializer(&name)?;
        removed.initializers += 1;
        gone.insert(name);
    }
    drop_value_info(graph, &gone);
    Ok(())
}
