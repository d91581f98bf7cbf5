//! `mark-trainable`: choose existing initializers to train — BitFit (*BitFit: Simple
//! Parameter-efficient Fine-tuning for Transformer-based Masked Language-models*), LayerNorm
//! tuning, full fine-tuning, or any set picked by parameter name. The graph is not changed;
//! the chosen initializers join [`AdapterState::trainable`] (kept in the model's metadata).
//!
//! `targets` is a list of:
//! - `bias`: the bias of every linear layer (the linear-layer matcher's bias: a bias `Add`'s
//!   constant or Gemm's `C`) and of every `LayerNormalization` (input `B`);
//! - `layernorm`: the scale and bias of every `LayerNormalization`, the scale of every
//!   `RMSNormalization`, and — for graphs where RMSNorm is decomposed (Llama, Qwen2:
//!   `Pow → ReduceMean → Add → Sqrt → Reciprocal → Mul`) — the learned weight of each such norm.
//!   Heuristic for the latter: a `Mul` (either operand order) of a 1-D float initializer with
//!   more than one element and a value computed from a `Reciprocal` or `Sqrt` through at most
//!   three `Mul`/`Div`/`Cast` steps (`weight · (x · rsqrt(mean(x²) + ε))`, with the cast back
//!   to the input type HF inserts). Attention's scalar scale and RoPE's `inv_freq` do not
//!   fit it;
//! - `all`: every float initializer of rank ≥ 1 (full fine-tuning). Rank-0 initializers are
//!   exporter constants (ε, fill values, scale factors), never PyTorch parameters, and are left
//!   out; buffers the exporter stored as initializers (`rotary_emb.inv_freq`,
//!   `position_ids`-like float tables) cannot be told from parameters and are included — use
//!   `re:` to be precise;
//! - `re:<regex>`: initializers one of whose PyTorch-style names the regex matches in full. An
//!   initializer's names are its own name; `<module>.weight` / `<module>.bias` when it is the
//!   weight or bias of a linear layer with a module path (so the exporter's anonymous `val_84`
//!   is also `encoder.layer.0.attention.self.query.weight`); `<module>.weight` / `.bias` for a
//!   `LayerNormalization`'s scale / bias, `<module>.weight` for an RMSNorm weight, with the
//!   module from the node's `name_scopes` (or its TorchScript name). E.g.
//!   `re:.*\.(query|value)\.weight`.
//!
//! Initializers that are also graph inputs are never chosen. Tied or shared initializers are
//! chosen once. It is an error when nothing matches.
//!
//! Preconditions: none. Preserves: the graph (only the adapter state changes).
//! Example pipeline: `mark-trainable{targets=bias}` (BitFit),
//! `insert-lora{rank=8 alpha=16 targets=query,value},mark-trainable{targets=layernorm}`.
//! Statistics: `trainable.tensors` (chosen), `trainable.added` (not trainable before),
//! `trainable.params` and `trainable.bytes` (of the chosen tensors).

use std::collections::{BTreeMap, BTreeSet};

use adaptc_ir::{Graph, Model, NodeId};
use regex::Regex;

use super::record::AdapterState;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::find_linear_layers;
use crate::pattern::module_path::{node_name_scopes_path, path_from_node_name};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "mark-trainable";

/// How many `Mul`/`Div`/`Cast` steps the RMSNorm heuristic looks back for `Reciprocal`/`Sqrt`.
const RMS_LOOKBACK: usize = 3;

/// One `targets` entry.
#[derive(Clone, Debug)]
pub enum Selector {
    Bias,
    LayerNorm,
    All,
    Regex(Regex),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, PassError> {
        match text {
            "bias" => Ok(Selector::Bias),
            "layernorm" => Ok(Selector::LayerNorm),
            "all" => Ok(Selector::All),
            _ => match text.strip_prefix("re:") {
                Some(re) => Regex::new(&format!("^(?:{re})$"))
                    .map(Selector::Regex)
                    .map_err(|e| PassError::bad_option(PASS, "targets", format!("bad regex `{re}`: {e}"))),
                None => Err(PassError::bad_option(
                    PASS,
                    "targets",
                    format!("unknown target `{text}`; expected bias, layernorm, all or re:<regex>"),
                )),
            },
        }
    }
}

/// The `mark-trainable` pass.
#[derive(Clone, Debug)]
pub struct MarkTrainable {
    pub selectors: Vec<Selector>,
    targets: Vec<String>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "mark existing initializers trainable: biases (BitFit), norms, all, or by PyTorch parameter name",
        options: vec![OptionInfo::new(
            "targets",
            OptionKind::List,
            Some("bias"),
            "bias, layernorm, all, re:<regex on PyTorch-style parameter names> (a list)",
        )],
        example: "mark-trainable{targets=bias}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let targets = o.list("targets")?;
    if targets.is_empty() {
        return Err(PassError::bad_option(PASS, "targets", "no targets given (bias, layernorm, all or re:<regex>)"));
    }
    let selectors = targets.iter().map(|t| Selector::parse(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(Box::new(MarkTrainable { selectors, targets }))
}

impl Pass for MarkTrainable {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let mut state = AdapterState::load(model)?;
        let graph = &model.graph;
        let mut chosen = BTreeSet::new();
        let mut empty = Vec::new();
        for (sel, text) in self.selectors.iter().zip(&self.targets) {
            let found = select(graph, sel);
            if found.is_empty() {
                empty.push((text.clone(), why_empty(graph, sel)));
            }
            chosen.extend(found);
        }
        if chosen.is_empty() {
            let reasons: Vec<String> = empty.iter().map(|(t, why)| format!("`{t}`: {why}")).collect();
            return Err(PassError::failed(
                PASS,
                format!("nothing matched targets={}: {}", self.targets.join(","), reasons.join("; ")),
            ));
        }
        for (t, why) in &empty {
            cx.note(format!("target `{t}` matched nothing: {why}"));
        }
        let (mut params, mut bytes) = (0u64, 0u64);
        for name in &chosen {
            if let Some(t) = graph.initializer(name) {
                params += t.numel();
                bytes += t.byte_len();
            }
        }
        let tensors = chosen.len();
        let mut added = 0;
        for name in chosen {
            added += usize::from(state.trainable.insert(name));
        }
        if added > 0 {
            state.store(model);
        }
        Ok(PassOutcome::changed(added > 0)
            .stat("trainable.tensors", tensors as i64)
            .stat("trainable.added", added as i64)
            .stat("trainable.params", params as i64)
            .stat("trainable.bytes", bytes as i64))
    }
}

/// Whether `name` is an initializer that may be trained (not a graph input).
fn eligible(graph: &Graph, name: &str) -> bool {
    graph.initializer(name).is_some() && !graph.is_graph_input(name)
}

/// The initializers one selector chooses.
pub fn select(graph: &Graph, sel: &Selector) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match sel {
        Selector::Bias => {
            for l in find_linear_layers(graph) {
                out.extend(l.bias);
            }
            for (_, n) in graph.nodes().filter(|(_, n)| n.op().is("LayerNormalization")) {
                out.extend(n.input(2).map(str::to_string));
            }
        }
        Selector::LayerNorm => {
            out.extend(norm_params(graph).into_iter().map(|(init, _, _)| init));
        }
        Selector::All => {
            out.extend(
                graph.initializers().filter(|t| t.dtype().is_float() && !t.dims().is_empty()).map(|t| t.name.clone()),
            );
        }
        Selector::Regex(re) => {
            for (init, names) in pytorch_names(graph) {
                if names.iter().any(|n| re.is_match(n)) {
                    out.insert(init);
                }
            }
        }
    }
    out.retain(|n| eligible(graph, n));
    out
}

fn why_empty(graph: &Graph, sel: &Selector) -> String {
    match sel {
        Selector::Bias => "no linear layer or LayerNormalization has a bias initializer".into(),
        Selector::LayerNorm => "no LayerNormalization, RMSNormalization or decomposed RMSNorm weight found".into(),
        Selector::All => "the graph has no float initializer of rank ≥ 1 (other than graph inputs)".into(),
        Selector::Regex(_) => {
            let names: Vec<String> = pytorch_names(graph).into_values().flatten().take(8).collect();
            format!("no parameter name matches (names look like: {})", names.join(", "))
        }
    }
}

/// Norm parameters: (initializer, node, role), role `weight` or `bias`.
fn norm_params(graph: &Graph) -> Vec<(String, NodeId, &'static str)> {
    let mut out = Vec::new();
    for (id, n) in graph.nodes() {
        if n.op().is("LayerNormalization") {
            out.extend(n.input(1).map(|s| (s.to_string(), id, "weight")));
            out.extend(n.input(2).map(|s| (s.to_string(), id, "bias")));
        } else if n.op().is("RMSNormalization") {
            out.extend(n.input(1).map(|s| (s.to_string(), id, "weight")));
        } else if n.op().is("Mul") && n.inputs().len() == 2 {
            for (w, v) in [(0, 1), (1, 0)] {
                let (Some(w), Some(v)) = (n.input(w), n.input(v)) else {
                    continue;
                };
                let Some(t) = graph.initializer(w) else {
                    continue;
                };
                let vector = t.dtype().is_float() && t.dims().len() == 1 && t.dims()[0] > 1;
                if vector && graph.initializer(v).is_none() && from_rsqrt(graph, v, RMS_LOOKBACK) {
                    out.push((w.to_string(), id, "weight"));
                }
            }
        }
    }
    out.retain(|(init, _, _)| graph.initializer(init).is_some());
    out
}

/// Whether `value` is computed by `Reciprocal`/`Sqrt`, or from one through at most `depth`
/// `Mul`/`Div`/`Cast` nodes.
fn from_rsqrt(graph: &Graph, value: &str, depth: usize) -> bool {
    let Some((p, _)) = graph.producer(value) else {
        return false;
    };
    let node = graph.node(p);
    if node.op().is("Reciprocal") || node.op().is("Sqrt") {
        return true;
    }
    if depth == 0 || !(node.op().is("Mul") || node.op().is("Div") || node.op().is("Cast")) {
        return false;
    }
    node.inputs().iter().filter(|i| !i.is_empty()).any(|i| from_rsqrt(graph, i, depth - 1))
}

/// Every initializer's PyTorch-style names (see the module docs).
pub fn pytorch_names(graph: &Graph) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in graph.initializers() {
        names.entry(t.name.clone()).or_default().insert(t.name.clone());
    }
    let mut add = |init: &str, name: String| {
        if let Some(set) = names.get_mut(init) {
            set.insert(name);
        }
    };
    for l in find_linear_layers(graph) {
        let Some(path) = &l.module_path else { continue };
        add(&l.weight, format!("{path}.weight"));
        if let Some(b) = &l.bias {
            add(b, format!("{path}.bias"));
        }
    }
    for (init, node, role) in norm_params(graph) {
        let path = node_name_scopes_path(graph, node).or_else(|| path_from_node_name(&graph.node(node).name));
        if let Some(path) = path {
            add(&init, format!("{path}.{role}"));
        }
    }
    names
}
