//! `append-adamw`: the optimizer step inside the training graph.
//!
//! After `build-training-graph`, the graph returns `loss` and `grad.<w>` and the trainer
//! clips and steps on the host, so every step downloads the gradients and uploads the
//! weights. This pass appends the step itself, so one run of the graph is one whole training
//! step and its state can stay where it is computed (`Session::bind_state` in the runtime):
//!
//! - `ai.adaptc::ClipGradNorm(grad.<w>…) → (grad_norm, scale)` (`max_norm` when clipping);
//! - for each trainable `w`, `ai.adaptc::AdamW(w, grad.<w>, adamw.m.<w>, adamw.v.<w>, scale,
//!   adamw.coefficients) → (next.<w>, next.adamw.m.<w>, next.adamw.v.<w>)`;
//! - new inputs `adamw.m.<w>`, `adamw.v.<w>` (the moments, no default) and
//!   `adamw.coefficients` (the step's seven scalars: see the runtime's `ops/optim.rs`);
//! - outputs `loss`, `grad_norm`, then the three `next.*` values per trainable tensor; the
//!   `grad.<w>` outputs are gone (they are consumed in the graph).
//!
//! [`StepState`] lists which output feeds which input on the next step.
//!
//! With `accumulate=k > 1` a step is k runs (micro-batches): each adds its gradients into
//! `adamw.acc.<w>` (carried state too), and the update reads their mean `acc · (1/k)`; the
//! boolean input `adamw.apply` says which run is the last. On the other runs `next.<w>` and the
//! moments are the inputs unchanged (`Where(apply, updated, current)`), and on the last the
//! sums restart from zero.
//!
//! Preconditions: the graph is a training graph (it has `loss` and a `grad.<w>` output for
//! every trainable `w`, all float32).
//! Example pipeline: `insert-lora{rank=8},build-training-graph{loss=cross-entropy},append-adamw{max_norm=1.0}`.
//! Statistics: `adamw.params` (tensors the step updates).

use adaptc_ir::{Attribute, DataType, Dim, Model, Node, OpKey, ValueInfo};

use super::{ADAPTC_DOMAIN, GRAD_PREFIX, LOSS_OUTPUT};
use crate::adapters::record::{AdapterState, CREATED_BY};
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "append-adamw";

/// The boolean scalar input that marks a step's last micro-batch (`accumulate > 1`).
pub const APPLY_INPUT: &str = "adamw.apply";

/// The input carrying the step's scalars.
pub const COEFFICIENTS_INPUT: &str = "adamw.coefficients";

/// How many scalars [`COEFFICIENTS_INPUT`] holds.
pub const COEFFICIENTS: usize = 7;

/// The output carrying the gradients' global norm (before clipping).
pub const GRAD_NORM_OUTPUT: &str = "grad_norm";

/// The prefix of the updated values: `next.<input>`.
pub const NEXT_PREFIX: &str = "next.";

/// The input names of a trainable tensor's moments.
pub fn moment_inputs(w: &str) -> [String; 2] {
    [format!("adamw.m.{w}"), format!("adamw.v.{w}")]
}

/// The input name of a trainable tensor's gradient sum (`accumulate > 1`).
pub fn accumulator_input(w: &str) -> String {
    format!("adamw.acc.{w}")
}

/// The `append-adamw` pass.
#[derive(Clone, Debug)]
pub struct AppendAdamW {
    /// Clip the gradients' global L2 norm to this (`None`: report it, do not clip).
    pub max_norm: Option<f32>,
    /// Micro-batches per step (1: every run is a whole step).
    pub accumulate: usize,
}

impl Default for AppendAdamW {
    fn default() -> AppendAdamW {
        AppendAdamW { max_norm: None, accumulate: 1 }
    }
}

/// What carries over from one step to the next: each `(input, output)` pair says that the
/// output of a run is the input of the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct StepState {
    pub carried: Vec<(String, String)>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "append clip-grad-norm and an AdamW step to a training graph: one run is one whole training step",
        options: vec![
            OptionInfo::new(
                "max_norm",
                OptionKind::Float,
                None,
                "clip the gradients' global L2 norm to this (default: no clipping)",
            ),
            OptionInfo::new(
                "accumulate",
                OptionKind::Int,
                Some("1"),
                "micro-batches per step: gradients are summed over this many runs, the update uses their mean",
            ),
        ],
        example: "insert-lora{rank=8},build-training-graph{loss=cross-entropy},append-adamw{max_norm=1.0}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let max_norm = if o.is_set("max_norm") { Some(o.f64("max_norm")? as f32) } else { None };
    if let Some(m) = max_norm {
        if !(m > 0.0 && m.is_finite()) {
            return Err(PassError::bad_option(PASS, "max_norm", format!("must be a finite number > 0, got {m}")));
        }
    }
    let accumulate = o.usize("accumulate")?;
    if accumulate == 0 {
        return Err(PassError::bad_option(PASS, "accumulate", "must be at least 1"));
    }
    Ok(Box::new(AppendAdamW { max_norm, accumulate }))
}

impl Pass for AppendAdamW {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let trainable = AdapterState::load(model)?.trainable;
        let state = append_adamw(model, trainable.iter().map(String::as_str), self.max_norm, self.accumulate)?;
        Ok(PassOutcome::changed(true)
            .stat("adamw.params", trainable.len() as i64)
            .stat("adamw.carried", state.carried.len() as i64))
    }
}

/// Appends the optimizer step for `trainable` (see the module docs); the graph is unchanged
/// when an error is returned.
pub fn append_adamw<'a>(
    model: &mut Model,
    trainable: impl IntoIterator<Item = &'a str>,
    max_norm: Option<f32>,
    accumulate: usize,
) -> Result<StepState, PassError> {
    let trainable: Vec<&str> = trainable.into_iter().collect();
    if accumulate == 0 {
        return Err(PassError::bad_option(PASS, "accumulate", "must be at least 1"));
    }
    let summed = accumulate > 1;
    let graph = &model.graph;
    if trainable.is_empty() {
        return Err(PassError::failed(
            PASS,
            "nothing is trainable: build the training graph of an adapted model first",
        ));
    }
    if !graph.outputs.iter().any(|o| o.name == LOSS_OUTPUT) {
        return Err(PassError::failed(PASS, "the graph has no `loss` output: run build-training-graph first"));
    }
    let mut grads = Vec::with_capacity(trainable.len());
    for &w in &trainable {
        let grad = format!("{GRAD_PREFIX}{w}");
        if !graph.outputs.iter().any(|o| o.name == grad) {
            return Err(PassError::failed(PASS, format!("the graph has no gradient output `{grad}`")));
        }
        let ty = graph.value_type(w);
        if ty.as_ref().and_then(|t| t.dtype()).is_some_and(|d| d != DataType::Float) {
            return Err(PassError::failed(PASS, format!("`{w}` is not float32; AdamW keeps float32 parameters")));
        }
        grads.push(grad);
    }
    let mut fresh = vec![COEFFICIENTS_INPUT.to_string(), GRAD_NORM_OUTPUT.to_string(), APPLY_INPUT.to_string()];
    for &w in &trainable {
        let [m, v] = moment_inputs(w);
        let acc = accumulator_input(w);
        for s in [w.to_string(), m, v, acc] {
            fresh.push(format!("{NEXT_PREFIX}{s}"));
            fresh.push(s);
        }
    }
    fresh.retain(|n| !trainable.contains(&n.as_str()));
    if let Some(taken) = fresh.iter().find(|n| graph.name_taken(n)) {
        return Err(PassError::failed(PASS, format!("the graph already has a value named `{taken}`")));
    }

    let mut g = model.graph.clone();
    let tag = |n: Node| {
        let mut n = n;
        n.metadata.set(CREATED_BY, PASS);
        n
    };
    // With accumulation the update reads mean(acc + grad), and the sums are carried.
    let mut sums = Vec::new();
    if summed {
        let inverse = g.unique_name("adamw/inverse_accumulate");
        g.add_initializer(adaptc_ir::Tensor::from_f32(&inverse, vec![], &[1.0f32 / accumulate as f32])?)?;
        g.inputs.push(ValueInfo::tensor(APPLY_INPUT, DataType::Bool, Vec::<Dim>::new()));
        for (&w, grad) in trainable.iter().zip(grads.iter_mut()) {
            let acc = accumulator_input(w);
            let sum = g.unique_name(&format!("adamw/{w}/sum"));
            let mean = g.unique_name(&format!("adamw/{w}/mean"));
            let add = Node::new(OpKey::onnx("Add"), vec![acc.clone(), grad.clone()], vec![sum.clone()])
                .named(g.unique_name(&format!("adamw/{w}/Add")));
            g.add_node(tag(add))?;
            let mul = Node::new(OpKey::onnx("Mul"), vec![sum.clone(), inverse.clone()], vec![mean.clone()])
                .named(g.unique_name(&format!("adamw/{w}/Mul")));
            g.add_node(tag(mul))?;
            *grad = mean;
            sums.push((acc, sum));
        }
    }
    let scale = g.unique_name("adamw/scale");
    let mut clip = Node::new(
        OpKey::new(ADAPTC_DOMAIN, "ClipGradNorm"),
        grads.clone(),
        vec![GRAD_NORM_OUTPUT.to_string(), scale.clone()],
    )
    .named(g.unique_name("adamw/ClipGradNorm"));
    if let Some(m) = max_norm {
        clip = clip.with_attr(Attribute::float("max_norm", m));
    }
    g.add_node(tag(clip))?;
    let scalar = |name: &str| ValueInfo::tensor(name, DataType::Float, Vec::<Dim>::new());
    let mut outputs = vec![g.outputs.iter().find(|o| o.name == LOSS_OUTPUT).cloned().unwrap_or(scalar(LOSS_OUTPUT))];
    outputs.push(scalar(GRAD_NORM_OUTPUT));
    let mut carried = Vec::with_capacity(3 * trainable.len());
    g.inputs.push(ValueInfo::tensor(COEFFICIENTS_INPUT, DataType::Float, vec![Dim::Known(COEFFICIENTS as i64)]));
    for (&w, grad) in trainable.iter().zip(&grads) {
        let [m, v] = moment_inputs(w);
        let ty = g.value_type(w);
        let like = |name: &str| ValueInfo::new(name, ty.clone());
        let state = [w.to_string(), m.clone(), v.clone()];
        let next: Vec<String> = state.iter().map(|s| format!("{NEXT_PREFIX}{s}")).collect();
        // Accumulating: the update is kept only on the step's last run.
        let updated: Vec<String> = if summed {
            state.iter().map(|s| g.unique_name(&format!("adamw/{s}/updated"))).collect()
        } else {
            next.clone()
        };
        let node = Node::new(
            OpKey::new(ADAPTC_DOMAIN, "AdamW"),
            vec![w.into(), grad.clone(), m.clone(), v.clone(), scale.clone(), COEFFICIENTS_INPUT.into()],
            updated.clone(),
        )
        .named(g.unique_name(&format!("adamw/{w}/AdamW")));
        g.add_node(tag(node))?;
        if summed {
            for ((s, u), n) in state.iter().zip(&updated).zip(&next) {
                let pick =
                    Node::new(OpKey::onnx("Where"), vec![APPLY_INPUT.into(), u.clone(), s.clone()], vec![n.clone()])
                        .named(g.unique_name(&format!("adamw/{s}/Where")));
                g.add_node(tag(pick))?;
            }
        }
        for s in [&m, &v] {
            g.inputs.push(like(s));
        }
        if !g.is_graph_input(w) {
            g.inputs.push(like(w));
        }
        for (s, n) in state.into_iter().zip(next) {
            outputs.push(like(&n));
            carried.push((s, n));
        }
    }
    if summed {
        let zero = g.unique_name("adamw/zero");
        g.add_initializer(adaptc_ir::Tensor::from_f32(&zero, vec![], &[0.0])?)?;
        for ((acc, sum), &w) in sums.into_iter().zip(&trainable) {
            let next = format!("{NEXT_PREFIX}{acc}");
            let restart =
                Node::new(OpKey::onnx("Where"), vec![APPLY_INPUT.into(), zero.clone(), sum], vec![next.clone()])
                    .named(g.unique_name(&format!("adamw/{acc}/Where")));
            g.add_node(tag(restart))?;
            let ty = g.value_type(w);
            g.inputs.push(ValueInfo::new(acc.clone(), ty.clone()));
            outputs.push(ValueInfo::new(next.clone(), ty));
            carried.push((acc, next));
        }
    }
    g.outputs = outputs;
    crate::canonicalize::dce::remove_dead_code(&mut g)?;
    model.graph = g;
    model.set_opset(ADAPTC_DOMAIN, 1);
    Ok(StepState { carried })
}
