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

/// The `append-adamw` pass.
#[derive(Clone, Debug, Default)]
pub struct AppendAdamW {
    /// Clip the gradients' global L2 norm to this (`None`: report it, do not clip).
    pub max_norm: Option<f32>,
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
        options: vec![OptionInfo::new(
            "max_norm",
            OptionKind::Float,
            None,
            "clip the gradients' global L2 norm to this (default: no clipping)",
        )],
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
    Ok(Box::new(AppendAdamW { max_norm }))
}

impl Pass for AppendAdamW {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let trainable = AdapterState::load(model)?.trainable;
        let state = append_adamw(model, trainable.iter().map(String::as_str), self.max_norm)?;
        Ok(PassOutcome::changed(true).stat("adamw.params", (state.carried.len() / 3) as i64))
    }
}

/// Appends the optimizer step for `trainable` (see the module docs); the graph is unchanged
/// when an error is returned.
pub fn append_adamw<'a>(
    model: &mut Model,
    trainable: impl IntoIterator<Item = &'a str>,
    max_norm: Option<f32>,
) -> Result<StepState, PassError> {
    let trainable: Vec<&str> = trainable.into_iter().collect();
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
    let mut fresh = vec![COEFFICIENTS_INPUT.to_string(), GRAD_NORM_OUTPUT.to_string()];
    for &w in &trainable {
        let m = moment_inputs(w);
        fresh.extend([format!("{NEXT_PREFIX}{w}"), format!("{NEXT_PREFIX}{}", m[0]), format!("{NEXT_PREFIX}{}", m[1])]);
        fresh.extend(m);
    }
    if let Some(taken) = fresh.iter().find(|n| graph.name_taken(n)) {
        return Err(PassError::failed(PASS, format!("the graph already has a value named `{taken}`")));
    }

    let mut g = model.graph.clone();
    let tag = |n: Node| {
        let mut n = n;
        n.metadata.set(CREATED_BY, PASS);
        n
    };
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
        let node = Node::new(
            OpKey::new(ADAPTC_DOMAIN, "AdamW"),
            vec![w.into(), grad.clone(), m.clone(), v.clone(), scale.clone(), COEFFICIENTS_INPUT.into()],
            next.clone(),
        )
        .named(g.unique_name(&format!("adamw/{w}/AdamW")));
        g.add_node(tag(node))?;
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
    g.outputs = outputs;
    crate::canonicalize::dce::remove_dead_code(&mut g)?;
    model.graph = g;
    model.set_opset(ADAPTC_DOMAIN, 1);
    Ok(StepState { carried })
}
