//! The graph: nodes on a petgraph DAG with slot-carrying edges, plus the value tables.
//!
//! Values are SSA names. The graph keeps, for every value, its producer `(node, slot)` and its
//! uses `(node, slot)`, and mirrors producer → consumer links as petgraph edges that carry
//! `(src_slot, dst_slot)`. A use by a subgraph (an If/Loop/Scan body reading an outer value) is
//! an *implicit* use with no slot, so that ordering and dead-code elimination see it.
//!
//! Invariant: `producers`, `uses` and the DAG edges always agree with the nodes' input and
//! output lists; that is why nodes' inputs, outputs and attributes change only through methods
//! of this type.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::onnx::proto as pb;
use indexmap::IndexMap;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;

use crate::attr::{Attribute, SparseTensor};
use crate::error::IrError;
use crate::metadata::{Extras, Metadata};
use crate::node::Node;
use crate::tensor::Tensor;
use crate::value::{Dim, TypeInfo, ValueInfo};

/// Stable handle of a node in its graph (stays valid while other nodes are removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

/// A use of a value: by `node` in input `slot`, or implicitly by one of its subgraphs (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    pub node: NodeId,
    pub slot: Option<usize>,
}

/// DAG edge payload: producer output slot → consumer input slot (`None`: captured by a body).
#[derive(Clone, Debug)]
struct Edge {
    src_slot: usize,
    dst_slot: Option<usize>,
}

/// A graph (the main graph of a model, or a subgraph held by a node attribute).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub doc_string: String,
    pub metadata: Metadata,
    dag: StableGraph<Node, Edge>,
    /// Node order as loaded or inserted; written back as-is when it is topological.
    order: Vec<NodeId>,
    producers: HashMap<String, (NodeId, usize)>,
    uses: HashMap<String, Vec<Use>>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub value_info: Vec<ValueInfo>,
    initializers: IndexMap<String, Tensor>,
    pub sparse_initializers: Vec<SparseTensor>,
    pub(crate) quantization_annotation: Vec<pb::TensorAnnotation>,
    pub(crate) extras: Extras,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    // ----- nodes -----------------------------------------------------------------------------

    /// Adds a node at the end of the node order. Fails if one of its outputs already has a
    /// producer (values are single-assignment).
    pub fn add_node(&mut self, node: Node) -> Result<NodeId, IrError> {
        let mut seen = HashSet::new();
        for out in node.outputs.iter().filter(|o| !o.is_empty()) {
            if !seen.insert(out.as_str()) {
                return Err(self.node_error(&node, format!("produces `{out}` twice")));
            }
            if let Some(&(other, _)) = self.producers.get(out) {
                let other = self.dag[other.0].label();
                return Err(self.node_error(&node, format!("output `{out}` is already produced by node `{other}`")));
            }
        }
        let id = NodeId(self.dag.add_node(node));
        self.order.push(id);
        self.link_inputs(id);
        let outputs: Vec<(usize, String)> = self.dag[id.0]
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.is_empty())
            .map(|(i, o)| (i, o.clone()))
            .collect();
        for (slot, out) in outputs {
            for u in self.uses.get(&out).cloned().unwrap_or_default() {
                self.dag.add_edge(id.0, u.node.0, Edge { src_slot: slot, dst_slot: u.slot });
            }
            self.producers.insert(out, (id, slot));
        }
        Ok(id)
    }

    /// Registers the uses (explicit inputs and subgraph captures) of node `id`.
    fn link_inputs(&mut self, id: NodeId) {
        for (value, slot) in node_links(&self.dag[id.0]) {
            self.add_use(value, Use { node: id, slot });
        }
    }

    fn add_use(&mut self, value: String, u: Use) {
        if let Some(&(p, src_slot)) = self.producers.get(&value) {
            self.dag.add_edge(p.0, u.node.0, Edge { src_slot, dst_slot: u.slot });
        }
        self.uses.entry(value).or_default().push(u);
    }

    fn remove_use(&mut self, value: &str, u: Use) {
        if let Some(list) = self.uses.get_mut(value) {
            if let Some(pos) = list.iter().position(|x| *x == u) {
                list.remove(pos);
            }
            if list.is_empty() {
                self.uses.remove(value);
            }
        }
        if let Some(&(p, _)) = self.producers.get(value) {
            let edge = self.dag.edges_connecting(p.0, u.node.0).find(|e| e.weight().dst_slot == u.slot).map(|e| e.id());
            if let Some(e) = edge {
                self.dag.remove_edge(e);
            }
        }
    }

    fn unlink_inputs(&mut self, id: NodeId) {
        for (value, slot) in node_links(&self.dag[id.0]) {
            self.remove_use(&value, Use { node: id, slot });
        }
    }

    /// Removes a node. Refuses while one of its outputs is still used or is a graph output.
    pub fn remove_node(&mut self, id: NodeId) -> Result<Node, IrError> {
        let node = self.node(id);
        for out in node.outputs.iter().filter(|o| !o.is_empty()) {
            if self.uses.get(out).is_some_and(|u| !u.is_empty()) {
                let user = self.uses[out][0].node;
                return Err(self.node_error(
                    node,
                    format!("cannot be removed: its output `{out}` is used by `{}`", self.node(user).label()),
                ));
            }
            if self.is_graph_output(out) {
                return Err(self.node_error(node, format!("cannot be removed: `{out}` is a graph output")));
            }
        }
        self.unlink_inputs(id);
        for out in self.dag[id.0].outputs.clone() {
            self.producers.remove(&out);
        }
        self.order.retain(|&n| n != id);
        self.dag
            .remove_node(id.0)
            .ok_or_else(|| IrError::Invalid { graph: self.name.clone(), reason: "node vanished".into() })
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id.0]
    }

    /// Mutable access to a node's free-form fields (name, doc string, metadata). Inputs,
    /// outputs and attributes change through [`Graph::set_input`] and [`Graph::set_attr`].
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.dag[id.0]
    }

    pub fn contains_node(&self, id: NodeId) -> bool {
        self.dag.contains_node(id.0)
    }

    /// Node ids in the graph's current order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.order.clone()
    }

    /// Nodes in the graph's current order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.order.iter().map(move |&id| (id, &self.dag[id.0]))
    }

    /// Data edges leaving `id`: `(output slot, consumer, consumer input slot)`; the consumer
    /// slot is `None` when a subgraph of the consumer captures the value.
    pub fn consumers_of(&self, id: NodeId) -> Vec<(usize, NodeId, Option<usize>)> {
        let mut out: Vec<_> = self
            .dag
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| (e.weight().src_slot, NodeId(e.target()), e.weight().dst_slot))
            .collect();
        out.sort();
        out
    }

    /// Data edges entering `id`: `(producer, producer output slot, input slot)`.
    pub fn producers_of(&self, id: NodeId) -> Vec<(NodeId, usize, Option<usize>)> {
        let mut out: Vec<_> = self
            .dag
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (NodeId(e.source()), e.weight().src_slot, e.weight().dst_slot))
            .collect();
        out.sort();
        out
    }

    pub fn num_nodes(&self) -> usize {
        self.order.len()
    }

    /// Rewires input `slot` of `id` to `value` (`""` clears an optional input).
    pub fn set_input(&mut self, id: NodeId, slot: usize, value: &str) -> Result<(), IrError> {
        let node = self.node(id);
        if slot >= node.inputs.len() {
            if slot > node.inputs.len() {
                return Err(self.node_error(node, format!("has no input slot {slot}")));
            }
            self.dag[id.0].inputs.push(String::new());
        }
        let old = self.dag[id.0].inputs[slot].clone();
        if !old.is_empty() {
            self.remove_use(&old, Use { node: id, slot: Some(slot) });
        }
        self.dag[id.0].inputs[slot] = value.to_string();
        if !value.is_empty() {
            self.add_use(value.to_string(), Use { node: id, slot: Some(slot) });
        }
        Ok(())
    }

    /// Renames output `slot` of `id` to the fresh name `new`, leaving the uses of the old name
    /// in place: they (and a graph output of that name) now wait for another producer. This is
    /// how a rewrite slots nodes in after a value while keeping its name for every consumer:
    /// rename the producer's output, then add nodes that produce the old name again.
    pub fn rename_output(&mut self, id: NodeId, slot: usize, new: &str) -> Result<String, IrError> {
        let node = self.node(id);
        let old = match node.outputs.get(slot) {
            Some(o) if !o.is_empty() => o.clone(),
            _ => return Err(self.node_error(node, format!("has no output in slot {slot}"))),
        };
        if self.name_taken(new) {
            return Err(self.node_error(node, format!("cannot rename `{old}` to `{new}`: the name is taken")));
        }
        let stale: Vec<_> = self
            .dag
            .edges_directed(id.0, Direction::Outgoing)
            .filter(|e| e.weight().src_slot == slot)
            .map(|e| e.id())
            .collect();
        for e in stale {
            self.dag.remove_edge(e);
        }
        self.producers.remove(&old);
        self.dag[id.0].outputs[slot] = new.to_string();
        self.producers.insert(new.to_string(), (id, slot));
        Ok(old)
    }

    /// Adds or replaces an attribute; subgraph captures are recomputed.
    pub fn set_attr(&mut self, id: NodeId, attr: Attribute) {
        self.unlink_inputs(id);
        let node = &mut self.dag[id.0];
        match node.attrs.iter_mut().find(|a| a.name == attr.name) {
            Some(slot) => *slot = attr,
            None => node.attrs.push(attr),
        }
        self.link_inputs(id);
    }

    /// Removes an attribute, returning it.
    pub fn remove_attr(&mut self, id: NodeId, name: &str) -> Option<Attribute> {
        self.unlink_inputs(id);
        let node = &mut self.dag[id.0];
        let pos = node.attrs.iter().position(|a| a.name == name);
        let removed = pos.map(|p| node.attrs.remove(p));
        self.link_inputs(id);
        removed
    }

    /// Every node input reading `old` now reads `new`. Graph outputs are not renamed: they are
    /// the model's interface.
    pub fn replace_all_uses_with(&mut self, old: &str, new: &str) -> Result<usize, IrError> {
        let uses = self.uses.get(old).cloned().unwrap_or_default();
        for u in &uses {
            match u.slot {
                Some(slot) => self.set_input(u.node, slot, new)?,
                None => {
                    self.unlink_inputs(u.node);
                    for attr in &mut self.dag[u.node.0].attrs {
                        for g in attr.graphs_mut() {
                            g.rename_free_value(old, new);
                        }
                    }
                    self.link_inputs(u.node);
                }
            }
        }
        Ok(uses.len())
    }

    /// Renames uses of an outer-scope value throughout this subgraph and its own subgraphs.
    fn rename_free_value(&mut self, old: &str, new: &str) {
        for id in self.node_ids() {
            let node = self.node(id);
            let slots: Vec<usize> = node.inputs.iter().enumerate().filter(|(_, v)| *v == old).map(|(i, _)| i).collect();
            for slot in slots {
                let _ = self.set_input(id, slot, new);
            }
            if node_captures(self.node(id)).contains(old) {
                self.unlink_inputs(id);
                for attr in &mut self.dag[id.0].attrs {
                    for g in attr.graphs_mut() {
                        g.rename_free_value(old, new);
                    }
                }
                self.link_inputs(id);
            }
        }
        for o in &mut self.outputs {
            if o.name == old && !self.producers.contains_key(old) {
                o.name = new.to_string();
            }
        }
    }

    // ----- values ----------------------------------------------------------------------------

    /// The node and output slot that produce `value`, if a node does.
    pub fn producer(&self, value: &str) -> Option<(NodeId, usize)> {
        self.producers.get(value).copied()
    }

    /// Every use of `value` by a node of this graph.
    pub fn uses(&self, value: &str) -> &[Use] {
        self.uses.get(value).map_or(&[], Vec::as_slice)
    }

    /// Names of all values used by some node of this graph (including subgraph captures).
    pub fn used_values(&self) -> impl Iterator<Item = &str> {
        self.uses.iter().filter(|(_, u)| !u.is_empty()).map(|(v, _)| v.as_str())
    }

    pub fn is_graph_output(&self, value: &str) -> bool {
        self.outputs.iter().any(|o| o.name == value)
    }

    pub fn is_graph_input(&self, value: &str) -> bool {
        self.inputs.iter().any(|i| i.name == value)
    }

    /// The declared type of a value: from graph inputs/outputs, `value_info`, or an initializer.
    pub fn value_type(&self, value: &str) -> Option<TypeInfo> {
        if let Some(t) = self.initializers.get(value) {
            let dims = t.dims().iter().map(|&d| Dim::Known(d as i64)).collect();
            return Some(TypeInfo::tensor(t.dtype(), Some(dims)));
        }
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|v| v.name == value)
            .and_then(|v| v.ty.clone())
    }

    /// Whether any value, node or initializer already uses `name`.
    pub fn name_taken(&self, name: &str) -> bool {
        self.producers.contains_key(name)
            || self.uses.contains_key(name)
            || self.initializers.contains_key(name)
            || self.inputs.iter().any(|v| v.name == name)
            || self.outputs.iter().any(|v| v.name == name)
            || self.nodes().any(|(_, n)| n.name == name)
    }

    /// A fresh value name starting with `base` (`base`, `base_1`, `base_2`, …).
    pub fn unique_name(&self, base: &str) -> String {
        if !self.name_taken(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|n| !self.name_taken(n)).unwrap_or_default()
    }

    // ----- initializers ----------------------------------------------------------------------

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.get(name)
    }

    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.initializers.get_mut(name)
    }

    /// Initializers in file order.
    pub fn initializers(&self) -> impl Iterator<Item = &Tensor> {
        self.initializers.values()
    }

    pub fn num_initializers(&self) -> usize {
        self.initializers.len()
    }

    /// Adds an initializer; its name must be new.
    pub fn add_initializer(&mut self, tensor: Tensor) -> Result<(), IrError> {
        if self.initializers.contains_key(&tensor.name) {
            return Err(IrError::Invalid {
                graph: self.name.clone(),
                reason: format!("initializer `{}` is defined twice", tensor.name),
            });
        }
        self.initializers.insert(tensor.name.clone(), tensor);
        Ok(())
    }

    /// Replaces the initializer of the same name in place (same position), returning the old
    /// one: how a pass changes a weight's shape without rewiring its readers.
    pub fn replace_initializer(&mut self, tensor: Tensor) -> Result<Tensor, IrError> {
        match self.initializers.get_mut(&tensor.name) {
            Some(slot) => Ok(std::mem::replace(slot, tensor)),
            None => {
                Err(IrError::Invalid { graph: self.name.clone(), reason: format!("no initializer `{}`", tensor.name) })
            }
        }
    }

    /// Removes an initializer, keeping the order of the others. Refuses while it is used.
    pub fn remove_initializer(&mut self, name: &str) -> Result<Tensor, IrError> {
        if let Some(u) = self.uses(name).first() {
            return Err(IrError::Invalid {
                graph: self.name.clone(),
                reason: format!("initializer `{name}` is still used by node `{}`", self.node(u.node).label()),
            });
        }
        self.initializers
            .shift_remove(name)
            .ok_or_else(|| IrError::Invalid { graph: self.name.clone(), reason: format!("no initializer `{name}`") })
    }

    // ----- order -----------------------------------------------------------------------------

    /// A topological order that stays as close as possible to the current order (a node is
    /// placed as early as its position allows). Fails on a cycle, naming nodes on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let position: HashMap<NodeId, usize> = self.order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut indegree: HashMap<NodeId, usize> = HashMap::new();
        for &n in &self.order {
            indegree.insert(n, self.dag.edges_directed(n.0, Direction::Incoming).count());
        }
        let mut ready: BinaryHeap<Reverse<(usize, NodeId)>> =
            self.order.iter().filter(|n| indegree[n] == 0).map(|&n| Reverse((position[&n], n))).collect();
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(Reverse((_, n))) = ready.pop() {
            out.push(n);
            for e in self.dag.edges_directed(n.0, Direction::Outgoing) {
                let m = NodeId(e.target());
                let d = indegree.get_mut(&m).expect("edge to a node of this graph");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse((position[&m], m)));
                }
            }
        }
        if out.len() != self.order.len() {
            let stuck: BTreeSet<String> =
                self.order.iter().filter(|n| indegree[n] > 0).take(5).map(|&n| self.node(n).label()).collect();
            return Err(IrError::Invalid {
                graph: self.name.clone(),
                reason: format!(
                    "the graph has a cycle through {} node(s), including: {}",
                    self.order.len() - out.len(),
                    stuck.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(out)
    }

    /// Whether the current node order is topological.
    pub fn is_ordered(&self) -> bool {
        let position: HashMap<NodeId, usize> = self.order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        self.dag.edge_references().all(|e| position[&NodeId(e.source())] < position[&NodeId(e.target())])
    }

    /// Moves `ids` (kept in the given order) to just before `anchor` in the node order, which
    /// is the order [`Graph::topo_order`] stays close to: a pass places nodes it appended where
    /// they should run (recomputed activations right before their first reader). Ids not in
    /// the graph, or `anchor` among `ids`, leave the order unchanged.
    pub fn move_before(&mut self, ids: &[NodeId], anchor: NodeId) {
        let moving: HashSet<NodeId> = ids.iter().copied().collect();
        if moving.contains(&anchor) || !ids.iter().all(|id| self.order.contains(id)) {
            return;
        }
        let mut order = Vec::with_capacity(self.order.len());
        for &n in &self.order {
            if n == anchor {
                order.extend_from_slice(ids);
            }
            if !moving.contains(&n) {
                order.push(n);
            }
        }
        if order.len() == self.order.len() {
            self.order = order;
        }
    }

    /// Re-sorts the node order topologically (stable).
    pub fn sort(&mut self) -> Result<(), IrError> {
        self.order = self.topo_order()?;
        Ok(())
    }

    /// Values read from an enclosing scope: used here (or deeper) but not defined here.
    pub fn free_values(&self) -> BTreeSet<String> {
        let mut defined: HashSet<&str> = HashSet::new();
        defined.extend(self.inputs.iter().map(|v| v.name.as_str()));
        defined.extend(self.initializers.keys().map(String::as_str));
        defined.extend(self.sparse_initializers.iter().map(SparseTensor::name));
        defined.extend(self.producers.keys().map(String::as_str));
        let mut free = BTreeSet::new();
        for (value, uses) in &self.uses {
            if !uses.is_empty() && !defined.contains(value.as_str()) {
                free.insert(value.clone());
            }
        }
        for o in &self.outputs {
            if !defined.contains(o.name.as_str()) {
                free.insert(o.name.clone());
            }
        }
        free
    }

    fn node_error(&self, node: &Node, reason: String) -> IrError {
        IrError::Node { node: node.label(), op: node.op.to_string(), reason }
    }
}

/// Every value a node reads: explicit inputs with their slot, then subgraph captures (no slot).
fn node_links(node: &Node) -> Vec<(String, Option<usize>)> {
    let mut links: Vec<(String, Option<usize>)> = node
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(slot, v)| (v.clone(), Some(slot)))
        .collect();
    links.extend(node_captures(node).into_iter().map(|c| (c, None)));
    links
}

/// Outer values captured by the subgraphs of a node.
fn node_captures(node: &Node) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for attr in &node.attrs {
        for g in attr.graphs() {
            out.extend(g.free_values());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::OpKey;

    fn chain() -> (Graph, NodeId) {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new("x", None));
        g.outputs.push(ValueInfo::new("z", None));
        let a = g.add_node(Node::new(OpKey::onnx("Relu"), vec!["x".into()], vec!["y".into()])).unwrap();
        g.add_node(Node::new(OpKey::onnx("Neg"), vec!["y".into()], vec!["z".into()])).unwrap();
        (g, a)
    }

    #[test]
    fn rename_output_then_reproduce_the_old_name() {
        let (mut g, a) = chain();
        assert_eq!(g.rename_output(a, 0, "y_base").unwrap(), "y");
        assert!(g.producer("y").is_none());
        assert_eq!(g.uses("y").len(), 1, "the consumer still reads `y`");
        assert!(crate::verify(&g).is_err(), "`y` is dangling until something produces it");
        g.add_node(Node::new(OpKey::onnx("Sigmoid"), vec!["y_base".into()], vec!["y".into()])).unwrap();
        crate::verify(&g).unwrap();
        let order: Vec<String> = g.topo_order().unwrap().iter().map(|&n| g.node(n).op().op_type.clone()).collect();
        assert_eq!(order, ["Relu", "Sigmoid", "Neg"]);
        assert!(g.rename_output(a, 0, "x").is_err(), "taken names are refused");
    }

    #[test]
    fn removal_refuses_live_outputs() {
        let (mut g, a) = chain();
        let err = g.remove_node(a).unwrap_err().to_string();
        assert!(err.contains("used by"), "{err}");
    }
}
