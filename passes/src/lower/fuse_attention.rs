//! `fuse-attention`: the `MatMul → Add(bias) → Softmax → MatMul` core of exported attention
//! as one `ai.adaptc::SoftmaxAttention`, whose kernels work through the query rows block by
//! block and never store the `[batch, heads, q, k]` scores or probabilities (nor does its
//! gradient, which rebuilds them from a per-row log-Σ-exp). This is what makes long sequences
//! fit in training memory; the arithmetic is the same up to float rounding.
//!
//! Matched, from each `Softmax` over the last axis:
//! `s = MatMul(a, b)`, optionally `s = Add(s, bias)` (either order), `p = Softmax(s)`,
//! optionally the exporters' guard for fully masked rows `p = Where(IsNaN(p), 0, p)`, then
//! `y = MatMul(p, v)` reading `p` as its left operand. The scale multiplications exporters put
//! on `a` and `b` stay outside (the op takes `a` and `b` as they are). Every intermediate must
//! be read only inside the pattern and none may be a graph output (`output_attentions`
//! models read the probabilities, so those are left alone, with a note).
//!
//! Run it before `build-training-graph` (autodiff differentiates the fused op; a trainable
//! attention bias is refused there). Models before opset 13 (whose Softmax flattens) are left
//! as they are, with a note. Preserves: every graph output's value up to float rounding; `y` keeps its name.
//! Example: `insert-lora{rank=8 targets=query,value},fuse-attention`. Statistics:
//! `fuse_attention.fused`, `fuse_attention.skipped`.

use adaptc_ir::{Attribute, Graph, Model, Node, NodeId, OpKey};

use crate::options::Options;
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

const NAME: &str = "fuse-attention";
const DOMAIN: &str = crate::autodiff::ADAPTC_DOMAIN;

/// The `fuse-attention` pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuseAttention;

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: NAME,
        summary: "fuse MatMul→Add→Softmax→MatMul attention into one op that never stores the scores",
        options: vec![],
        example: "insert-lora{rank=8 targets=query,value},fuse-attention",
        build: |_: &Options| Ok(Box::new(FuseAttention)),
    }
}

/// One matched attention core.
struct Core {
    /// Pattern nodes, readers first (the order they can be removed in).
    nodes: Vec<NodeId>,
    a: String,
    b: String,
    bias: Option<String>,
    v: String,
    y: String,
    masked_rows_zero: bool,
}

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let opset = model.opset("").unwrap_or(0);
        if opset < 13 {
            cx.note(format!("{NAME}: nothing fused: the model imports opset {opset}, before one-axis Softmax (13)"));
            return Ok(PassOutcome::changed(false));
        }
        let graph = &mut model.graph;
        let order = graph.topo_order()?;
        let (mut fused, mut skipped) = (0i64, 0i64);
        for &sm in &order {
            if !graph.contains_node(sm) || !graph.node(sm).op().is("Softmax") {
                continue;
            }
            match match_core(graph, sm) {
                Ok(core) => {
                    replace(graph, core, graph.node(sm).label())?;
                    fused += 1;
                }
                Err(Miss::Silent) => {}
                Err(Miss::Because(reason)) => {
                    cx.note(format!("{NAME}: left the attention at `{}` unfused: {reason}", graph.node(sm).label()));
                    skipped += 1;
                }
            }
        }
        if fused > 0 {
            model.set_opset(DOMAIN, 1);
        }
        Ok(PassOutcome::changed(fused > 0).stat("fuse_attention.fused", fused).stat("fuse_attention.skipped", skipped))
    }
}

/// Why a Softmax was not fused: not attention at all (no note), or attention that cannot be.
enum Miss {
    Silent,
    Because(String),
}

/// The only reader of `value` as `(node, slot)`, when it has exactly one and is not a graph
/// output.
fn sole_reader(graph: &Graph, value: &str) -> Option<(NodeId, usize)> {
    match graph.uses(value) {
        [u] if !graph.is_graph_output(value) => Some((u.node, u.slot?)),
        _ => None,
    }
}

fn producer_node<'g>(graph: &'g Graph, value: &str) -> Option<(NodeId, &'g Node)> {
    graph.producer(value).map(|(id, _)| (id, graph.node(id)))
}

fn is_zero_constant(graph: &Graph, value: &str) -> bool {
    let tensor = graph.initializer(value).cloned().or_else(|| {
        let (_, n) = producer_node(graph, value)?;
        n.op().is("Constant").then(|| n.attr("value").and_then(|a| a.as_tensor()).cloned()).flatten()
    });
    tensor.is_some_and(|t| t.numel() == 1 && t.to_f32_lossy().is_ok_and(|v| v.iter().all(|&x| x == 0.0)))
}

fn match_core(graph: &Graph, sm: NodeId) -> Result<Core, Miss> {
    let node = graph.node(sm);
    if node.attr_int("axis", -1) != -1 || node.inputs().len() != 1 {
        return Err(Miss::Silent);
    }
    let (s, p) = (node.input(0).unwrap_or_default(), node.output(0).unwrap_or_default());
    // Scores: MatMul(a, b), or Add(MatMul(a, b), bias) in either order.
    let (score_id, score) = producer_node(graph, s).ok_or(Miss::Silent)?;
    let mut nodes = vec![];
    let (mm1, bias) = if score.op().is("MatMul") {
        (score_id, None)
    } else if score.op().is("Add") {
        let side = (0..2)
            .find(|&k| score.input(k).and_then(|v| producer_node(graph, v)).is_some_and(|(_, n)| n.op().is("MatMul")));
        let k = side.ok_or(Miss::Silent)?;
        let (id, _) = producer_node(graph, score.input(k).unwrap_or_default()).ok_or(Miss::Silent)?;
        nodes.push(score_id);
        (id, score.input(1 - k).map(str::to_string))
    } else {
        return Err(Miss::Silent);
    };
    let first = graph.node(mm1);
    if first.inputs().len() != 2 {
        return Err(Miss::Silent);
    }
    // The reader of p: MatMul(p, v) directly, or through Where(IsNaN(p), 0, p).
    let (mut reader, mut masked_rows_zero) = (None, false);
    let uses = graph.uses(p);
    if uses.len() == 1 {
        reader = Some(uses[0].node);
    } else if uses.len() == 2 {
        let isnan = uses.iter().find(|u| graph.node(u.node).op().is("IsNaN")).map(|u| u.node);
        if let Some(isnan) = isnan {
            let flag = graph.node(isnan).output(0).unwrap_or_default();
            if let Some((w, 0)) = sole_reader(graph, flag) {
                let wn = graph.node(w);
                if wn.op().is("Where") && wn.input(2) == Some(p) && is_zero_constant(graph, wn.input(1).unwrap_or("")) {
                    nodes.extend([isnan, w]);
                    reader = sole_reader(graph, wn.output(0).unwrap_or_default())
                        .and_then(|(r, slot)| (slot == 0).then_some(r));
                    masked_rows_zero = true;
                    if reader.is_none() {
                        return Err(Miss::Because("the guarded probabilities are read outside the attention".into()));
                    }
                }
            }
        }
    }
    let mm2 = reader.ok_or_else(|| {
        if uses.len() > 1 {
            Miss::Because("the probabilities are read outside the attention (output_attentions?)".into())
        } else {
            Miss::Silent
        }
    })?;
    let second = graph.node(mm2);
    let read_p = if masked_rows_zero { nodes.last().and_then(|&w| graph.node(w).output(0)) } else { Some(p) };
    if !second.op().is("MatMul") || second.input(0) != read_p || second.inputs().len() != 2 {
        return Err(Miss::Silent);
    }
    if graph.is_graph_output(p) {
        return Err(Miss::Because("the probabilities are a graph output".into()));
    }
    let inner_ok = sole_reader(graph, first.output(0).unwrap_or_default()).is_some()
        && (bias.is_none() || sole_reader(graph, s).is_some());
    if !inner_ok {
        return Err(Miss::Because("the scores are read outside the attention".into()));
    }
    // Readers first: MatMul(p, v), Where, IsNaN, Softmax, Add, MatMul(a, b).
    let ordered: Vec<NodeId> = {
        let mut v = vec![mm2];
        if masked_rows_zero {
            v.extend([nodes[nodes.len() - 1], nodes[nodes.len() - 2]]);
        }
        v.push(sm);
        if bias.is_some() {
            v.push(nodes[0]);
        }
        v.push(mm1);
        v
    };
    Ok(Core {
        nodes: ordered,
        a: first.input(0).unwrap_or_default().to_string(),
        b: first.input(1).unwrap_or_default().to_string(),
        bias,
        v: second.input(1).unwrap_or_default().to_string(),
        y: second.output(0).unwrap_or_default().to_string(),
        masked_rows_zero,
    })
}

/// Replaces the pattern's nodes by one `SoftmaxAttention` producing `y` (and a fresh `lse`),
/// placed before `y`'s first reader.
fn replace(graph: &mut Graph, core: Core, label: String) -> Result<(), PassError> {
    let readers: Vec<NodeId> = graph.uses(&core.y).iter().map(|u| u.node).collect();
    // The last MatMul hands `y` over (to a name nobody reads) before the pattern goes.
    let spare = graph.unique_name(&format!("{}/unfused", core.y));
    graph.rename_output(core.nodes[0], 0, &spare)?;
    let lse = graph.unique_name(&format!("{}/lse", core.y));
    let bias = core.bias.clone().unwrap_or_default();
    let inputs = vec![core.a, core.b, bias, core.v];
    let mut node = Node::new(OpKey::new(DOMAIN, "SoftmaxAttention"), inputs, vec![core.y.clone(), lse])
        .named(graph.unique_name(&format!("{label}/SoftmaxAttention")))
        .with_attr(Attribute::int("masked_rows_zero", i64::from(core.masked_rows_zero)));
    node.metadata.set("adaptc.pass", NAME);
    let id = graph.add_node(node)?;
    for old in &core.nodes {
        graph.remove_node(*old)?;
    }
    let order = graph.topo_order()?;
    if let Some(&first) = order.iter().find(|n| readers.contains(n)) {
        graph.move_before(&[id], first);
    }
    Ok(())
}
