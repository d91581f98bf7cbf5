//! Elementwise chains: connected elementwise nodes (f32 arithmetic and math, casts between f32
//! and bf16) that the plan runs as one `ElementwiseChain` instruction ([`crate::ops::chain`]),
//! so the values passed between them stay in registers. A training graph is mostly such
//! chains between its products: LoRA's casts, scale and add, RMSNorm's scaling, SiLU's gate,
//! and their gradients; one node each, they move most of a step's bytes.
//!
//! A chain grows from its last node (its root) backwards: a producer joins when every reader
//! of its value is in the chain, or comes after the root in the plan's order (the chain then
//! also writes the value, as an extra output), or is a plain `Shape` read (the chain then
//! gives the shape as an output, from the program's shapes). The chain's instruction takes the
//! root's place; its inputs are all produced before the root, and everything it writes is read
//! only after, so the order stays a topological one.
//!
//! A chain also *recomputes* a producer it cannot take over (its value has readers elsewhere,
//! typically a forward value the backward reads) when that costs no new reads ([`Recompute`]):
//! the producer is rebuilt from inputs the chain reads anyway, or from one value read after the
//! chain anyway, or it widens a value to f32 (reading the narrow value is cheaper). When every
//! reader of a value recomputes it, the value is never written at all: SiLU's gate and sigmoid,
//! for instance, are rebuilt in the backward from the gate's pre-activation, which it reads
//! anyway, so the forward neither writes nor keeps them. The recomputed steps are the same ops
//! on the same inputs, so the results keep their bits.

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Graph, Node, NodeId, OpKey};

use super::Fusions;
use crate::ops::chain::{Op, Program, Step};
use crate::registry::ADAPTC_DOMAIN;

/// The most steps, inputs and value outputs of one chain: the device kernel's fixed arrays.
pub const MAX_STEPS: usize = 32;
pub const MAX_INPUTS: usize = 8;
pub const MAX_VALUES: usize = 6;

/// A chain being grown.
struct Chain {
    root: NodeId,
    /// Every step: the nodes the chain takes over, and the copies it recomputes.
    members: HashSet<NodeId>,
    /// The members that are copies: their nodes still run elsewhere (or nowhere, when every
    /// reader recomputes them), and the chain never writes their values.
    copies: HashSet<NodeId>,
    /// `Shape` nodes whose outputs the chain gives.
    shapes: Vec<NodeId>,
}

impl Chain {
    /// Whether `n` is a member the chain takes over (not a copy).
    fn owns(&self, n: NodeId) -> bool {
        self.members.contains(&n) && !self.copies.contains(&n)
    }
}

/// What the chains built so far recompute, which changes who reads what: a reader that
/// recomputes a value no longer reads it, and a chain that recomputes reads the inputs instead,
/// which the graph's use lists do not show.
#[derive(Default)]
struct Recomputed {
    /// Producer → the nodes (owned by some chain) that read their own copy of its value.
    covered: HashMap<NodeId, HashSet<NodeId>>,
    /// Value → the roots of the chains whose copies read it.
    readers: HashMap<String, Vec<NodeId>>,
    /// Owned member → the root of its chain, where it runs.
    runs_at: HashMap<NodeId, NodeId>,
}

impl Recomputed {
    /// Whether `reader`'s use of `producer`'s value is served by a copy.
    fn covers(&self, producer: NodeId, reader: NodeId) -> bool {
        self.covered.get(&producer).is_some_and(|r| r.contains(&reader))
    }

    /// Whether nothing reads `producer`'s value any more: every graph use is recomputed, no
    /// copy reads it, and it is not a graph output.
    fn unread(&self, graph: &Graph, producer: NodeId) -> bool {
        let Some(value) = graph.node(producer).output(0) else { return false };
        !graph.is_graph_output(value)
            && !self.readers.contains_key(value)
            && graph.uses(value).iter().all(|u| u.slot.is_some() && self.covers(producer, u.node))
    }

    /// Records that `node` no longer runs, so it reads none of its inputs.
    fn drop_reader(&mut self, graph: &Graph, node: NodeId) {
        for input in graph.node(node).inputs() {
            if let Some((q, _)) = graph.producer(input) {
                self.covered.entry(q).or_default().insert(node);
            }
        }
    }

    /// Records `chain`'s copies once it is built.
    fn record(&mut self, graph: &Graph, chain: &Chain) {
        let made: HashSet<&str> = chain.members.iter().filter_map(|&m| graph.node(m).output(0)).collect();
        for &m in chain.members.iter().filter(|&&m| chain.owns(m)) {
            self.runs_at.insert(m, chain.root);
        }
        for &c in &chain.copies {
            let node = graph.node(c);
            if let Some(value) = node.output(0) {
                let owned_readers = graph.uses(value).iter().map(|u| u.node).filter(|&r| chain.owns(r));
                self.covered.entry(c).or_default().extend(owned_readers);
            }
            for input in node.inputs().iter().filter(|i| !made.contains(i.as_str())) {
                self.readers.entry(input.clone()).or_default().push(chain.root);
            }
        }
    }
}

/// Adds the chains of `graph`'s nodes not yet in a fusion to `f`.
pub fn find(graph: &Graph, order: &[NodeId], f: &mut Fusions) {
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut taken: HashSet<NodeId> = HashSet::new();
    let mut recomputed = Recomputed::default();
    for &root in order.iter().rev() {
        if taken.contains(&root) || !f.claim(&[root]) || Op::of(graph.node(root)).is_none() {
            continue;
        }
        if recomputed.unread(graph, root) {
            // Every reader recomputes it: nothing to run, and its inputs lose a reader.
            f.absorbed.insert(root);
            recomputed.drop_reader(graph, root);
            continue;
        }
        let chain = grow(graph, &pos, root, f, &recomputed, |n| !taken.contains(&n) && f.claim(&[n]));
        if chain.members.len() < 2 {
            continue;
        }
        let node = fused_node(graph, &pos, &chain, &recomputed);
        recomputed.record(graph, &chain);
        taken.extend(chain.members.iter().copied().filter(|&m| chain.owns(m)));
        for &m in chain.members.iter().filter(|&&m| m != root && chain.owns(m)) {
            f.absorbed.insert(m);
        }
        for &s in &chain.shapes {
            f.absorbed.insert(s);
        }
        f.replace.insert(root, (node, crate::ops::chain::elementwise_chain));
    }
}

/// The chain rooted at `root`: producers join, or are recomputed, until none more can.
fn grow(
    graph: &Graph,
    pos: &HashMap<NodeId, usize>,
    root: NodeId,
    f: &Fusions,
    recomputed: &Recomputed,
    free: impl Fn(NodeId) -> bool,
) -> Chain {
    let mut chain = Chain { root, members: HashSet::from([root]), copies: HashSet::new(), shapes: Vec::new() };
    // Producers that join come first: recomputed ones only fill what room is left.
    let mut recompute = false;
    loop {
        let mut grew = false;
        let mut members: Vec<NodeId> = chain.members.iter().copied().collect();
        members.sort_by_key(|m| std::cmp::Reverse(pos[m]));
        for m in members {
            for input in graph.node(m).inputs() {
                let Some((p, _)) = graph.producer(input) else { continue };
                if chain.members.contains(&p) || Op::of(graph.node(p)).is_none() {
                    continue;
                }
                let joined = free(p).then(|| joinable(graph, pos, &chain, p, recomputed, &free)).flatten();
                let copies = match (&joined, recompute) {
                    (None, true) => worth_recomputing(graph, pos, &chain, p, f, recomputed),
                    _ => None,
                };
                if joined.is_none() && copies.is_none() {
                    continue;
                }
                let before = chain.shapes.len();
                chain.members.insert(p);
                let copies = copies.unwrap_or_default();
                chain.members.extend(copies.iter().copied());
                chain.copies.extend(copies.iter().copied());
                chain.shapes.extend(joined.unwrap_or_default());
                if within_limits(graph, pos, &chain, recomputed) {
                    grew = true;
                } else {
                    chain.members.remove(&p);
                    for c in &copies {
                        chain.members.remove(c);
                        chain.copies.remove(c);
                    }
                    chain.shapes.truncate(before);
                }
            }
        }
        match (grew, recompute) {
            (true, _) => recompute = false,
            (false, false) => recompute = true,
            (false, true) => return chain,
        }
    }
}

/// Whether `p` can join `chain`: each reader of its value is a member the chain owns, a
/// reader that recomputes the value, a plain `Shape` read (returned, to be absorbed) whose
/// readers all come after the root, or any node after the root.
fn joinable(
    graph: &Graph,
    pos: &HashMap<NodeId, usize>,
    chain: &Chain,
    p: NodeId,
    recomputed: &Recomputed,
    free: impl Fn(NodeId) -> bool,
) -> Option<Vec<NodeId>> {
    let after_root = |n: NodeId| pos.get(&n).is_some_and(|&i| i > pos[&chain.root]);
    let value = graph.node(p).output(0)?;
    // Chains that recompute from this value were built earlier, so their roots come later.
    if recomputed.readers.get(value).is_some_and(|roots| !roots.iter().all(|&r| after_root(r))) {
        return None;
    }
    let mut shapes = Vec::new();
    for u in graph.uses(value) {
        u.slot?;
        if chain.owns(u.node) || recomputed.covers(p, u.node) {
            continue;
        }
        let reader = graph.node(u.node);
        let plain_shape = free(u.node)
            && reader.op().is("Shape")
            && adaptc_ir::is_default_domain(&reader.op().domain)
            && reader.attrs().is_empty()
            && reader.outputs().len() == 1;
        if plain_shape {
            let dims = reader.output(0)?;
            if graph.uses(dims).iter().all(|r| r.slot.is_some() && after_root(r.node)) {
                shapes.push(u.node);
                continue;
            }
        }
        if !after_root(u.node) {
            return None;
        }
    }
    Some(shapes)
}

/// The copies that would let `chain` recompute `p` rather than read its value (`p` and the
/// producers it is rebuilt from), when that costs no more bytes and keeps no value alive
/// longer; `None` when it does not pay. See [`Recompute`].
fn worth_recomputing(
    graph: &Graph,
    pos: &HashMap<NodeId, usize>,
    chain: &Chain,
    p: NodeId,
    f: &Fusions,
    recomputed: &Recomputed,
) -> Option<Vec<NodeId>> {
    let (members, inputs, _) = boundary(graph, pos, chain, recomputed);
    let made: HashSet<&str> = members.iter().filter_map(|&m| graph.node(m).output(0)).collect();
    let r = Recompute { graph, pos, chain, f, recomputed, made, inputs };
    let (copies, _) = r.plan(p, 0)?;
    Some(copies)
}

/// Deciding what a chain recomputes. A producer `p` (an elementwise step, not a `SumToShape`,
/// which may sum) is rebuilt from its *leaves*: for each input, the chain's own input or
/// register it already is, or the input's producer rebuilt in turn (when that pays by
/// itself), or else the input read from memory. Rebuilding pays when it needs no leaf the
/// chain does not read already, or one leaf read after the chain anyway (it is no larger than
/// `p`'s value, which it replaces, and lives no longer), or when `p` is a cast to f32 (its
/// input is never wider than its output).
struct Recompute<'a> {
    graph: &'a Graph,
    pos: &'a HashMap<NodeId, usize>,
    chain: &'a Chain,
    f: &'a Fusions,
    recomputed: &'a Recomputed,
    made: HashSet<&'a str>,
    inputs: Vec<String>,
}

/// How deep a rebuilt value's producers are rebuilt in turn.
const MAX_DEPTH: usize = 6;

impl Recompute<'_> {
    /// The copies and new leaves that rebuild `p`, when that pays.
    fn plan(&self, p: NodeId, depth: usize) -> Option<(Vec<NodeId>, HashSet<String>)> {
        let node = self.graph.node(p);
        let op = Op::of(node)?;
        if op == Op::SumToShape || depth > MAX_DEPTH {
            return None;
        }
        let mut copies = vec![p];
        let mut leaves = HashSet::new();
        for v in node.inputs() {
            if self.made.contains(v.as_str()) || self.inputs.contains(v) {
                continue;
            }
            let rebuilt = self.graph.producer(v).and_then(|(q, _)| self.plan(q, depth + 1));
            match rebuilt {
                Some((c, l)) => {
                    copies.extend(c);
                    leaves.extend(l);
                }
                None if self.written(v) => {
                    leaves.insert(v.clone());
                }
                None => return None,
            }
        }
        let pays = match leaves.len() {
            0 => true,
            1 => {
                op == Op::ToF32
                    || leaves.iter().all(|v| read_after(self.graph, self.pos, self.chain.root, v, self.recomputed))
            }
            _ => false,
        };
        pays.then_some((copies, leaves))
    }

    /// Whether `v` is in memory for the chain to read: a graph input or constant, or the value
    /// of a node that runs (not one a fusion absorbed or replaced without writing it).
    fn written(&self, v: &str) -> bool {
        match self.graph.producer(v) {
            None => true,
            Some((q, _)) => {
                !self.f.absorbed.contains(&q)
                    && self.f.replace.get(&q).is_none_or(|(n, _)| n.outputs().iter().any(|o| o == v))
            }
        }
    }
}

/// Whether value `v` is read after `root` anyway (so reading it at `root` keeps it alive no
/// longer); a node that a chain took over reads where the chain runs.
fn read_after(graph: &Graph, pos: &HashMap<NodeId, usize>, root: NodeId, v: &str, recomputed: &Recomputed) -> bool {
    let after = |n: NodeId| {
        let at = recomputed.runs_at.get(&n).copied().unwrap_or(n);
        pos.get(&at).is_some_and(|&i| i > pos[&root])
    };
    let producer = graph.producer(v).map(|(q, _)| q);
    graph.is_graph_output(v)
        || recomputed.readers.get(v).is_some_and(|roots| roots.iter().any(|&r| after(r)))
        || graph.uses(v).iter().any(|u| after(u.node) && !producer.is_some_and(|q| recomputed.covers(q, u.node)))
}

/// Whether the chain fits the device kernel's arrays.
fn within_limits(graph: &Graph, pos: &HashMap<NodeId, usize>, chain: &Chain, recomputed: &Recomputed) -> bool {
    let (members, inputs, values) = boundary(graph, pos, chain, recomputed);
    members.len() <= MAX_STEPS && inputs.len() <= MAX_INPUTS && values.len() <= MAX_VALUES
}

/// The chain's members in plan order, its external inputs (first use first) and the owned
/// members whose values it writes (the root first): those read outside the chain, by a node
/// that does not recompute them or by another chain's copies, and graph outputs.
fn boundary(
    graph: &Graph,
    pos: &HashMap<NodeId, usize>,
    chain: &Chain,
    recomputed: &Recomputed,
) -> (Vec<NodeId>, Vec<String>, Vec<NodeId>) {
    let mut members: Vec<NodeId> = chain.members.iter().copied().collect();
    members.sort_by_key(|m| pos[m]);
    let made: HashSet<&str> = members.iter().filter_map(|&m| graph.node(m).output(0)).collect();
    let mut inputs: Vec<String> = Vec::new();
    for &m in &members {
        for i in graph.node(m).inputs() {
            if !made.contains(i.as_str()) && !inputs.contains(i) {
                inputs.push(i.clone());
            }
        }
    }
    let mut values = vec![chain.root];
    for &m in members.iter().filter(|&&m| m != chain.root && chain.owns(m)) {
        let Some(v) = graph.node(m).output(0) else { continue };
        let read_outside = recomputed.readers.contains_key(v)
            || graph
                .uses(v)
                .iter()
                .any(|u| !chain.owns(u.node) && !chain.shapes.contains(&u.node) && !recomputed.covers(m, u.node));
        if read_outside || graph.is_graph_output(v) {
            values.push(m);
        }
    }
    (members, inputs, values)
}

/// The `ElementwiseChain` node standing for `chain`.
fn fused_node(graph: &Graph, pos: &HashMap<NodeId, usize>, chain: &Chain, recomputed: &Recomputed) -> Node {
    let (members, inputs, values) = boundary(graph, pos, chain, recomputed);
    // Registers: the inputs, then one per member in order.
    let mut reg: HashMap<&str, usize> = inputs.iter().enumerate().map(|(k, v)| (v.as_str(), k)).collect();
    for (k, &m) in members.iter().enumerate() {
        if let Some(out) = graph.node(m).output(0) {
            reg.insert(out, inputs.len() + k);
        }
    }
    let steps = members
        .iter()
        .map(|&m| {
            let node = graph.node(m);
            // Every member is an op a chain holds and reads registers defined before it.
            let op = Op::of(node).unwrap_or(Op::ToF32);
            let arg = |slot: usize| node.input(slot).and_then(|v| reg.get(v).copied()).unwrap_or(0);
            Step { op, a: arg(0), b: (op.arity() == 2).then(|| arg(1)), name: node.label() }
        })
        .collect();
    let value_of = |n: NodeId| graph.node(n).output(0).and_then(|v| reg.get(v).copied().map(|r| (r, v.to_string())));
    let value_outs: Vec<(usize, String)> = values.iter().filter_map(|&m| value_of(m)).collect();
    let shape_outs: Vec<(usize, String)> = chain
        .shapes
        .iter()
        .filter_map(|&s| {
            let shape = graph.node(s);
            Some((*reg.get(shape.input(0)?)?, shape.output(0)?.to_string()))
        })
        .collect();
    let program = Program {
        inputs: inputs.len(),
        steps,
        values: value_outs.iter().map(|(r, _)| *r).collect(),
        shapes: shape_outs.iter().map(|(r, _)| *r).collect(),
    };
    let outputs = value_outs.into_iter().chain(shape_outs).map(|(_, v)| v).collect();
    let label = format!("{} (+{} elementwise)", graph.node(chain.root).label(), members.len() - 1);
    program
        .to_attrs()
        .into_iter()
        .fold(Node::new(OpKey::new(ADAPTC_DOMAIN, "ElementwiseChain"), inputs, outputs), |n, a| n.with_attr(a))
        .named(label)
}
