//! `build-training-graph`: reverse-mode autodiff on the IR.
//!
//! From a model, its trainable set (what the adapter passes and `mark-trainable` recorded)
//! and a loss, builds one graph computing the loss and the gradient of every trainable tensor:
//!
//! - the loss (see [`loss`]) is appended to the chosen output; the model's outputs are
//!   replaced by `loss` followed by `grad.<name>` for each trainable tensor, in the trainable
//!   set's order, and the forward work no longer needed (a pooler, unused outputs) is removed;
//! - every trainable initializer also becomes a graph input (keeping its value as the
//!   default), so a trainer feeds the current weights on each step;
//! - the backward sweep visits only nodes between a trainable tensor and the loss
//!   ([`activity`]) in reverse topological order, and emits each node's VJP ([`rules`]) as
//!   ordinary nodes; gradients of a value read several times are added.
//!
//! The result is an IR graph like any other: printable, verifiable, runnable by adaptc's
//! runtime, and exportable as ONNX. The gradient ops of the `ai.adaptc` domain it may contain
//! are documented in the runtime (`ops/grad/`).
//!
//! Preconditions: a non-empty trainable set; every node between it and the loss has a rule.
//! Example pipeline: `insert-lora{rank=8 targets=query,value},build-training-graph{loss=cross-entropy}`.
//! Statistics: `train.params` (trainable tensors), `train.backward_nodes` (nodes emitted).

mod activity;
pub mod checkpoint;
mod emit;
mod loss;
pub mod optimizer;
pub mod rules;

use std::collections::{BTreeSet, HashMap};

use adaptc_ir::{Dim, Model, ValueInfo};

pub use emit::ADAPTC_DOMAIN;
pub use loss::{LossKind, IGNORE_INDEX};

use crate::adapters::record::AdapterState;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;
use emit::Emitter;

/// The pass name.
pub const PASS: &str = "build-training-graph";

/// The prefix of gradient outputs: `grad.<trainable name>`.
pub const GRAD_PREFIX: &str = "grad.";

/// The scalar loss output.
pub const LOSS_OUTPUT: &str = "loss";

/// The `build-training-graph` pass.
#[derive(Clone, Debug)]
pub struct BuildTrainingGraph {
    pub loss: LossKind,
    /// The model output the loss reads (default: the first output).
    pub output: Option<String>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "append a loss and build the backward graph: outputs loss and grad.<w> for every trainable w",
        options: vec![
            OptionInfo::new("loss", OptionKind::Enum(LossKind::NAMES), Some("cross-entropy"), "the loss"),
            OptionInfo::new("output", OptionKind::String, None, "the model output the loss reads (default: the first)"),
        ],
        example: "insert-lora{rank=8 targets=query,value},build-training-graph{loss=cross-entropy}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let loss =
        LossKind::parse(&o.choice("loss")?).ok_or_else(|| PassError::bad_option(PASS, "loss", "unknown loss"))?;
    let output = if o.is_set("output") { Some(o.string("output")?) } else { None };
    Ok(Box::new(BuildTrainingGraph { loss, output }))
}

impl Pass for BuildTrainingGraph {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let trainable = AdapterState::load(model)?.trainable;
        let emitted = build_training_graph(model, self.loss, self.output.as_deref(), &trainable)?;
        Ok(PassOutcome::changed(true)
            .stat("train.params", trainable.len() as i64)
            .stat("train.backward_nodes", emitted as i64))
    }
}

/// Rewrites `model` into its training graph (see the module docs); returns how many backward
/// nodes were emitted.
pub fn build_training_graph(
    model: &mut Model,
    kind: LossKind,
    output: Option<&str>,
    trainable: &BTreeSet<String>,
) -> Result<usize, PassError> {
    if trainable.is_empty() {
        return Err(PassError::failed(
            PASS,
            "nothing is trainable: insert an adapter (insert-lora, …) or mark-trainable first",
        ));
    }
    let graph = &mut model.graph;
    for t in trainable {
        if graph.initializer(t).is_none() {
            return Err(PassError::failed(PASS, format!("trainable tensor `{t}` is not an initializer of the graph")));
        }
    }
    let output = match output {
        Some(o) if graph.outputs.iter().any(|v| v.name == o) => o.to_string(),
        Some(o) => {
            let names: Vec<&str> = graph.outputs.iter().map(|v| v.name.as_str()).collect();
            return Err(PassError::bad_option(
                PASS,
                "output",
                format!("the model has no output `{o}` (its outputs: {})", names.join(", ")),
            ));
        }
        None => graph
            .outputs
            .first()
            .map(|v| v.name.clone())
            .ok_or_else(|| PassError::failed(PASS, "the model has no outputs"))?,
    };
    let opsets: HashMap<String, i64> = model.opset_imports.iter().map(|o| (o.domain.clone(), o.version)).collect();
    let graph = &mut model.graph;

    let mut em = Emitter::new(graph, PASS, "loss");
    let loss_value = loss::append(&mut em, kind, &output)?;
    let steps = activity::backward_steps(em.graph, trainable, &loss_value)?;

    let before = em.graph.num_nodes();
    let mut em = Emitter::new(em.graph, PASS, "grad");
    let mut contributions: HashMap<String, Vec<String>> = HashMap::new();
    let seed = em.scalar_like(1.0, &loss_value)?;
    contributions.insert(loss_value.clone(), vec![seed]);
    for step in steps {
        let node = em.graph.node(step.node).clone();
        let mut dys = Vec::with_capacity(node.outputs().len());
        for out in node.outputs() {
            dys.push(match contributions.remove(out) {
                Some(parts) => Some(sum(&mut em, parts, out)?),
                None => None,
            });
        }
        let rule = rules::rule_of(node.op())
            .ok_or_else(|| PassError::failed(PASS, format!("no gradient rule for {}", node.op())))?;
        let domain = if adaptc_ir::is_default_domain(&node.op().domain) { "" } else { node.op().domain.as_str() };
        let opset = opsets.get(domain).or_else(|| opsets.get("ai.onnx")).copied().unwrap_or(21);
        let mut cx = rules::RuleCx { em: &mut em, node: &node, opset, wanted: step.wanted.clone() };
        let grads = (rule.vjp)(&mut cx, &dys)?;
        for (slot, g) in grads.into_iter().enumerate() {
            if let (Some(g), true) = (g, step.wanted.get(slot).copied().unwrap_or(false)) {
                contributions.entry(node.inputs()[slot].clone()).or_default().push(g);
            }
        }
    }

    let mut grad_names = Vec::with_capacity(trainable.len());
    for t in trainable {
        let parts = contributions.remove(t).unwrap_or_default();
        if parts.is_empty() {
            return Err(PassError::failed(PASS, format!("no gradient reached trainable tensor `{t}`")));
        }
        let g = sum(&mut em, parts, t)?;
        let name = format!("{GRAD_PREFIX}{t}");
        if em.graph.name_taken(&name) {
            return Err(PassError::failed(PASS, format!("the graph already has a value named `{name}`")));
        }
        em.op_into("Identity", &[&g], &name)?;
        grad_names.push((t.clone(), name));
    }
    let loss_out = em.graph.unique_name(LOSS_OUTPUT);
    em.op_into("Identity", &[&loss_value], &loss_out)?;
    let uses_domain = em.uses_adaptc_domain;
    let emitted = em.graph.num_nodes() - before;

    // The loss has the element type of the output it scores.
    let loss_type = graph.value_type(&output).and_then(|t| t.dtype()).unwrap_or(adaptc_ir::DataType::Float);
    let mut outputs = vec![ValueInfo::tensor(loss_out, loss_type, Vec::<Dim>::new())];
    for (t, name) in &grad_names {
        outputs.push(typed_like(graph, t, name));
    }
    graph.outputs = outputs;
    for t in trainable {
        if !graph.is_graph_input(t) {
            let info = typed_like(graph, t, t);
            graph.inputs.push(info);
        }
    }
    crate::canonicalize::dce::remove_dead_code(graph)?;
    if uses_domain {
        model.set_opset(ADAPTC_DOMAIN, 1);
    }
    Ok(emitted)
}

/// The sum of a value's gradient contributions.
fn sum(em: &mut Emitter, mut parts: Vec<String>, value: &str) -> Result<String, PassError> {
    let mut acc = parts.remove(0);
    for p in parts {
        acc = em.op("Add", &[&acc, &p], vec![], value)?;
    }
    Ok(acc)
}

/// A value info named `name` with `value`'s declared type.
fn typed_like(graph: &adaptc_ir::Graph, value: &str, name: &str) -> ValueInfo {
    ValueInfo::new(name, graph.value_type(value))
}
