//! `insert-lora`: LoRA, rsLoRA and DoRA adapters on linear layers, in PyTorch's convention.
//!
//! For every selected layer `y = x·Wᵀ + b` (any [`LinearForm`](crate::pattern::LinearForm):
//! `MatMul` over `[in, out]`, `Gemm` with `transB` 0 or 1, `MatMul(x, Transpose(W))`; activations
//! of any rank) the pass adds two `float32` initializers in PEFT's layout whatever the base
//! weight's layout, `<module>.lora_A.weight [r, in]` and `<module>.lora_B.weight [out, r]`, and
//! rewrites the layer to
//!
//! ```text
//! y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ          s = alpha / r   (rslora: alpha / √r)
//! ```
//!
//! as `Add(base, Mul(MatMul(MatMul(drop(x), Transpose(A)), Transpose(B)), s))` after the
//! layer's final value (after the bias `Add` when there is one). Consumers keep reading the
//! same value name; the base producer now writes `<value>/base`. `drop` is a `Dropout` with
//! ratio `dropout` on the adapter branch only (none when `dropout=0`).
//!
//! `dora=true` (DoRA) adds `<module>.lora_magnitude_vector [out]`, initialised to the row norms
//! `‖W + s·BA‖` (over `in`), and computes exactly `y = (m/n) ⊙ (x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ) + b`
//! with `n = ‖W + s·BA‖` per output row evaluated in the graph from the current A and B (the
//! node producing `n` carries [`STOP_GRADIENT`]): the bias is not scaled, so with a separate
//! bias `Add` the adapter attaches before it, and with a `Gemm` bias it works on `gemm − b`.
//! The norm is `Sqrt(MatMul(ones[in], V⊙V))` on `Vᵀ = W + s·AᵀBᵀ` for `[in, out]` weights
//! (`Sqrt(MatMul(V⊙V, ones[in]))` for `[out, in]`), which is valid at every opset.
//!
//! Initialisation (`init`, `seed`): see [`super::init`]. `pissa` and `olora` replace the base
//! weight by the residual `W − s·BA` (in its stored layout), so a weight shared with other
//! nodes is refused. Every new node is tagged `adaptc.pass=insert-lora` and named under the
//! module path; one [`AdapterRecord`] per layer (method `lora` or `dora`) and the trainable
//! initializers go into the model's adapter state.
//!
//! Preconditions: `float32` base weights; `dropout > 0` needs default-domain opset ≥ 12
//! (`Dropout`'s `ratio` input). A layer that already has an adapter is skipped with a note.
//! Preserves: the outputs at `init=default|gaussian` (exactly: B = 0 adds zeros), up to
//! rounding at `pissa`/`olora` and with `dora=true`; graph inputs and outputs; every other node.
//!
//! Example pipeline: `insert-lora{rank=8 alpha=16 targets=query,value}`. Statistics:
//! `lora.inserted`, `lora.params`, `lora.skipped`, `lora.residual_weights`.

use std::collections::BTreeMap;

use adaptc_ir::{Attribute, DataType, Graph, Model, Tensor};

use super::init::{init_lora, layer_seed, LoraInit, SplitMix64, INIT_CHOICES};
use super::linalg::{read_weight, store_weight, Mat};
use super::record::{AdapterRecord, AdapterState, Layout, Method, STOP_GRADIENT};
use super::rewriter::Rewriter;
use super::sites::{checked_sites, Site};
use super::targets::Selection;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{constant_tensor, LinearForm, LinearLayer};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "insert-lora";

/// The shape of one LoRA/DoRA adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub rslora: bool,
    pub dora: bool,
    /// Dropout ratio on the adapter branch (0: no `Dropout` node).
    pub dropout: f32,
}

impl LoraConfig {
    /// The scaling `s`: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("rank must be at least 1".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("alpha must be finite, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }
}

/// The `insert-lora` pass.
#[derive(Clone, Debug)]
pub struct InsertLora {
    /// `None` when `targets` was not given (an error when the pass runs).
    selection: Option<Selection>,
    described: String,
    cfg: LoraConfig,
    init: LoraInit,
    seed: u64,
}

const OPTIONS: &[OptionInfo] = &[
    OptionInfo::new("rank", OptionKind::Int, Some("8"), "LoRA rank r (≥ 1)"),
    OptionInfo::new("alpha", OptionKind::Float, Some("8"), "scaling numerator: s = alpha/r (alpha/√r with rslora)"),
    OptionInfo::new(
        "targets",
        OptionKind::List,
        None,
        "modules to adapt, PEFT-style: name suffixes (query,value), re:<regex> on the full path, or all-linear",
    ),
    OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave alone, matched like targets"),
    OptionInfo::new("layers", OptionKind::List, Some(""), "only these block indices (0,1,2); empty: all"),
    OptionInfo::new("dropout", OptionKind::Float, Some("0"), "dropout ratio on the adapter input, in [0, 1)"),
    OptionInfo::new(
        "init",
        OptionKind::Enum(INIT_CHOICES),
        Some("default"),
        "A/B init: default (Kaiming A, B=0), gaussian, pissa, olora (SVD/QR of W, base becomes the residual), random",
    ),
    OptionInfo::new("seed", OptionKind::Int, Some("0"), "seed of the initialisation (per layer, with the module path)"),
    OptionInfo::new("rslora", OptionKind::Bool, Some("false"), "rank-stabilised scaling s = alpha/√r"),
    OptionInfo::new("dora", OptionKind::Bool, Some("false"), "DoRA: learned magnitude times the direction of W + s·BA"),
];

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "insert LoRA/rsLoRA/DoRA adapters (A [r,in], B [out,r], trainable) into the selected linear layers",
        options: OPTIONS.to_vec(),
        example: "insert-lora{rank=8 alpha=16 targets=query,value}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let cfg = LoraConfig {
        rank: o.usize("rank")?,
        alpha: o.f64("alpha")? as f32,
        rslora: o.bool("rslora")?,
        dora: o.bool("dora")?,
        dropout: o.f64("dropout")? as f32,
    };
    if cfg.rank == 0 {
        return Err(PassError::bad_option(PASS, "rank", "must be at least 1"));
    }
    if !cfg.alpha.is_finite() {
        return Err(PassError::bad_option(PASS, "alpha", "does not fit in a float32"));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(PassError::bad_option(PASS, "dropout", format!("must be in [0, 1), got {}", cfg.dropout)));
    }
    let init = o.choice("init")?;
    let init =
        LoraInit::parse(&init).ok_or_else(|| PassError::bad_option(PASS, "init", format!("unknown `{init}`")))?;
    let (exclude, layers) = (o.list("exclude")?, o.list("layers")?);
    let (selection, described) = if o.is_set("targets") {
        let targets = o.list("targets")?;
        (Some(Selection::parse(PASS, &targets, &exclude, &layers)?), Selection::describe(&targets, &exclude, &layers))
    } else {
        // Still check `exclude` and `layers` now, so their mistakes surface before running.
        Selection::parse(PASS, &["all-linear".to_string()], &exclude, &layers)?;
        (None, String::new())
    };
    Ok(Box::new(InsertLora { selection, described, cfg, init, seed: o.usize("seed")? as u64 }))
}

/// One layer's planned insertion.
struct Plan {
    layer: LinearLayer,
    a: Vec<f32>,
    b: Vec<f32>,
    residual: Option<Mat>,
}

impl Pass for InsertLora {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let Some(selection) = &self.selection else {
            return Err(PassError::bad_option(
                PASS,
                "targets",
                "is required: name the modules to adapt, e.g. targets=query,value, or targets=all-linear for every \
                 linear layer but the output head",
            ));
        };
        if self.cfg.dropout > 0.0 {
            let opset = model.opset("").unwrap_or(0);
            if opset < 12 {
                return Err(PassError::failed(
                    PASS,
                    format!("dropout > 0 needs default-domain opset ≥ 12 (Dropout's ratio input); the model imports {opset}"),
                ));
            }
        }
        let mut state = AdapterState::load(model)?;
        let graph = &model.graph;
        let selected = selection.select(graph);
        if selected.is_empty() {
            return Err(selection.no_match(PASS, graph, &self.described));
        }

        // Plan every layer (initial values, residuals, all checks) before changing anything.
        let scale = self.cfg.scale();
        let (sites, skipped) = checked_sites(
            PASS,
            graph,
            selected,
            "adapting",
            |layer| existing_adapter(&state, graph, layer).map(|m| format!("a {m:?} adapter")),
            cx,
        )?;
        let mut plans = Vec::new();
        for Site { layer, module, .. } in sites {
            let (out, inp, r) = (layer.out_features as usize, layer.in_features as usize, self.cfg.rank);
            let layout = Layout::from(layer.layout);
            let w = if self.init.replaces_base() {
                check_unshared(graph, &layer).map_err(|e| fail(&module, format!("init={}: {e}", self.init.name())))?;
                Some(read_weight(graph, &layer.weight, layout).map_err(|e| fail(&module, e))?)
            } else {
                None
            };
            let mut rng = SplitMix64::new(layer_seed(self.seed, &module));
            let lw = init_lora(self.init, &mut rng, (out, inp, r), scale, w.as_ref()).map_err(|e| fail(&module, e))?;
            check_insert(graph, &state, &layer, &self.cfg, lw.a.len(), lw.b.len(), None)?;
            plans.push(Plan { layer, a: lw.a, b: lw.b, residual: lw.residual });
        }

        let mut params = 0i64;
        let mut residuals = 0i64;
        let inserted = plans.len() as i64;
        // Everything was checked; should the graph API still refuse a step, the graph is put
        // back as it was (cloning a graph shares the tensors' bytes).
        let backup = model.graph.clone();
        let applied = plans.into_iter().try_for_each(|plan| {
            let layout = Layout::from(plan.layer.layout);
            if let Some(res) = &plan.residual {
                let module = plan.layer.module_path.as_deref().unwrap_or_default();
                store_weight(&mut model.graph, &plan.layer.weight, layout, res).map_err(|e| fail(module, e))?;
                residuals += 1;
            }
            params +=
                (plan.a.len() + plan.b.len()) as i64 + if self.cfg.dora { plan.layer.out_features as i64 } else { 0 };
            insert(&mut model.graph, &mut state, &plan.layer, &self.cfg, plan.a, plan.b, None, self.init.name())
        });
        if let Err(e) = applied {
            model.graph = backup;
            return Err(e);
        }
        if inserted > 0 {
            state.store(model);
        }
        let mut outcome =
            PassOutcome::changed(inserted > 0).stat("lora.inserted", inserted).stat("lora.params", params);
        if skipped > 0 {
            outcome = outcome.stat("lora.skipped", skipped);
        }
        if residuals > 0 {
            outcome = outcome.stat("lora.residual_weights", residuals);
        }
        Ok(outcome)
    }
}

/// Inserts one LoRA (or, with `cfg.dora`, DoRA) adapter with the given weights on `layer`:
/// `a` is `A [r, in]` and `b` is `B [out, r]`, row-major (PEFT's `lora_A.weight` and
/// `lora_B.weight`); `magnitude` is DoRA's `[out]` vector (`None`: the row norms of
/// `W + s·BA`). Records the adapter in `state` (the caller stores it in the model). The base
/// weight is left as it is. Errors name the module; every check runs before the graph is
/// changed, so a refused adapter leaves `graph` and `state` as they were.
pub fn insert_lora_with(
    graph: &mut Graph,
    state: &mut AdapterState,
    layer: &LinearLayer,
    cfg: &LoraConfig,
    a: Vec<f32>,
    b: Vec<f32>,
    magnitude: Option<Vec<f32>>,
) -> Result<(), PassError> {
    check_insert(graph, state, layer, cfg, a.len(), b.len(), magnitude.as_ref().map(Vec::len))?;
    insert(graph, state, layer, cfg, a, b, magnitude, "given")
}

fn fail(module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, format!("`{module}`: {reason}"))
}

/// The method of an adapter already recorded on this layer, if any.
fn existing_adapter(state: &AdapterState, graph: &Graph, layer: &LinearLayer) -> Option<Method> {
    let node = &graph.node(layer.node).name;
    state
        .adapters
        .iter()
        .find(|a| {
            (matches!(a.method, Method::Lora | Method::Dora) && Some(&a.module) == layer.module_path.as_ref())
                || (!node.is_empty() && a.target_node == *node)
        })
        .map(|a| a.method)
}

/// Every check of an insertion, so that a failure leaves the graph as it was.
fn check_insert(
    graph: &Graph,
    state: &AdapterState,
    layer: &LinearLayer,
    cfg: &LoraConfig,
    a_len: usize,
    b_len: usize,
    magnitude_len: Option<usize>,
) -> Result<(), PassError> {
    let Some(module) = layer.module_path.as_deref() else {
        return Err(PassError::failed(PASS, "the layer has no module path, so its adapter cannot be named"));
    };
    cfg.check().map_err(|e| fail(module, e))?;
    if !graph.contains_node(layer.node) {
        return Err(fail(module, "the layer's node is not in this graph"));
    }
    if let Some(m) = existing_adapter(state, graph, layer) {
        return Err(fail(module, format!("the layer already has a {m:?} adapter")));
    }
    let (r, inp, out) = (cfg.rank, layer.in_features as usize, layer.out_features as usize);
    if a_len != r * inp {
        return Err(fail(module, format!("lora_A has {a_len} values, expected [r, in] = [{r}, {inp}]")));
    }
    if b_len != out * r {
        return Err(fail(module, format!("lora_B has {b_len} values, expected [out, r] = [{out}, {r}]")));
    }
    match (cfg.dora, magnitude_len) {
        (true, Some(n)) if n != out => {
            return Err(fail(module, format!("the DoRA magnitude has {n} values, expected [out] = [{out}]")));
        }
        (false, Some(_)) => return Err(fail(module, "a magnitude vector was given, but the adapter is not DoRA")),
        _ => {}
    }
    let w = constant_tensor(graph, &layer.weight)
        .ok_or_else(|| fail(module, format!("weight `{}` is not a constant", layer.weight)))?;
    if w.dtype() != DataType::Float {
        return Err(fail(
            module,
            format!(
                "weight `{}` is {}; only f32 (float32) base weights are supported (the adapter is float32 and \
                 ONNX does not mix element types)",
                layer.weight,
                w.dtype()
            ),
        ));
    }
    if layer.output.is_empty() || graph.producer(&layer.output).is_none() {
        return Err(fail(module, format!("the layer's output `{}` has no producer", layer.output)));
    }
    Ok(())
}

/// Checks that the layer's weight feeds only this layer (directly, or through its Transpose),
/// so that replacing its values changes nothing else.
pub(crate) fn check_unshared(graph: &Graph, layer: &LinearLayer) -> Result<(), String> {
    let own = layer.transpose_node.unwrap_or(layer.node);
    let mut others: Vec<String> =
        graph.uses(&layer.weight).iter().filter(|u| u.node != own).map(|u| graph.node(u.node).label()).collect();
    if let Some(t) = layer.transpose_node {
        let t_out = graph.node(t).output(0).unwrap_or_default();
        others.extend(graph.uses(t_out).iter().filter(|u| u.node != layer.node).map(|u| graph.node(u.node).label()));
    }
    if graph.is_graph_output(&layer.weight) {
        others.push("a graph output".into());
    }
    if others.is_empty() {
        Ok(())
    } else {
        others.sort();
        others.dedup();
        Err(format!(
            "base weight `{}` is shared with {}, and its values would change for them too",
            layer.weight,
            others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Builds the adapter (all checks done).
#[allow(clippy::too_many_arguments)]
fn insert(
    graph: &mut Graph,
    state: &mut AdapterState,
    layer: &LinearLayer,
    cfg: &LoraConfig,
    a: Vec<f32>,
    b: Vec<f32>,
    magnitude: Option<Vec<f32>>,
    init: &str,
) -> Result<(), PassError> {
    let module = layer.module_path.clone().unwrap_or_default();
    let (r, inp, out) = (cfg.rank, layer.in_features as usize, layer.out_features as usize);
    let layout = Layout::from(layer.layout);
    let s = cfg.scale();
    let magnitude = match (cfg.dora, magnitude) {
        (false, _) => None,
        (true, Some(m)) => Some(m),
        (true, None) => {
            let w = read_weight(graph, &layer.weight, layout).map_err(|e| fail(&module, e))?;
            let ba = Mat::from_f32(out, r, &b).matmul(&Mat::from_f32(r, inp, &a));
            Some(w.add_scaled(f64::from(s), &ba).row_norms().into_iter().map(|v| v as f32).collect())
        }
    };
    let target_node = graph.node(layer.node).name.clone();
    let matmul_out = graph.node(layer.node).output(0).unwrap_or_default().to_string();
    let perm = || vec![Attribute::ints("perm", vec![1, 0])];

    let mut rw = Rewriter::new(graph, PASS, &module);
    let a_name =
        rw.initializer(&format!("{module}.lora_A.weight"), Tensor::from_f32("", vec![r as u64, inp as u64], &a)?)?;
    let b_name =
        rw.initializer(&format!("{module}.lora_B.weight"), Tensor::from_f32("", vec![out as u64, r as u64], &b)?)?;
    let m_name = match &magnitude {
        Some(m) => Some(
            rw.initializer(&format!("{module}.lora_magnitude_vector"), Tensor::from_f32("", vec![out as u64], m)?)?,
        ),
        None => None,
    };
    // DoRA scales the bias-free result, so it attaches before a separate bias Add.
    let attach = if cfg.dora && layer.bias_node.is_some() { matmul_out } else { layer.output.clone() };
    let gemm_bias = if cfg.dora && layer.form == LinearForm::Gemm { layer.bias.clone() } else { None };
    let base = rw.detach(&attach)?;

    let x = if cfg.dropout > 0.0 {
        let ratio = rw.scalar("lora_dropout_ratio", cfg.dropout)?;
        rw.node("Dropout", &[&layer.input, &ratio], vec![], "lora_dropout")?
    } else {
        layer.input.clone()
    };
    let at = rw.node("Transpose", &[&a_name], perm(), "lora_A_t")?;
    let bt = rw.node("Transpose", &[&b_name], perm(), "lora_B_t")?;
    let xa = rw.node("MatMul", &[&x, &at], vec![], "lora_A")?;
    let xab = rw.node("MatMul", &[&xa, &bt], vec![], "lora_B")?;
    let s_name = rw.scalar("lora_scale", s)?;
    let delta = rw.node("Mul", &[&xab, &s_name], vec![], "lora_scaled")?;
    match &m_name {
        None => rw.node_into("Add", &[&base, &delta], vec![], "lora_add", &attach)?,
        Some(m_name) => {
            // n = ‖W + s·BA‖ per output row, from the current A and B, as a constant for autodiff.
            let ones = rw.initializer(
                &format!("{module}/dora_ones"),
                Tensor::from_f32("", vec![inp as u64], &vec![1.0; inp])?,
            )?;
            let n2 = match layout {
                Layout::InOut => {
                    let dw = rw.node("MatMul", &[&at, &bt], vec![], "dora_delta")?;
                    let sdw = rw.node("Mul", &[&dw, &s_name], vec![], "dora_delta_scaled")?;
                    let v = rw.node("Add", &[&layer.weight, &sdw], vec![], "dora_weight")?;
                    let sq = rw.node("Mul", &[&v, &v], vec![], "dora_weight_sq")?;
                    rw.node("MatMul", &[&ones, &sq], vec![], "dora_norm_sq")?
                }
                Layout::OutIn => {
                    let dw = rw.node("MatMul", &[&b_name, &a_name], vec![], "dora_delta")?;
                    let sdw = rw.node("Mul", &[&dw, &s_name], vec![], "dora_delta_scaled")?;
                    let v = rw.node("Add", &[&layer.weight, &sdw], vec![], "dora_weight")?;
                    let sq = rw.node("Mul", &[&v, &v], vec![], "dora_weight_sq")?;
                    rw.node("MatMul", &[&sq, &ones], vec![], "dora_norm_sq")?
                }
            };
            let n = rw.node("Sqrt", &[&n2], vec![], "dora_norm")?;
            if let Some((id, _)) = rw.graph.producer(&n) {
                rw.graph.node_mut(id).metadata.set(STOP_GRADIENT, "true");
            }
            let mn = rw.node("Div", &[m_name, &n], vec![], "dora_scale")?;
            match &gemm_bias {
                Some(bias) => {
                    let unbiased = rw.node("Sub", &[&base, bias], vec![], "dora_unbiased")?;
                    let sum = rw.node("Add", &[&unbiased, &delta], vec![], "dora_sum")?;
                    let scaled = rw.node("Mul", &[&sum, &mn], vec![], "dora_scaled")?;
                    rw.node_into("Add", &[&scaled, bias], vec![], "dora_bias", &attach)?;
                }
                None => {
                    let sum = rw.node("Add", &[&base, &delta], vec![], "dora_sum")?;
                    rw.node_into("Mul", &[&sum, &mn], vec![], "dora_scaled", &attach)?;
                }
            }
        }
    }
    let nodes = std::mem::take(&mut rw.created);

    let mut params = BTreeMap::from([("lora_A".to_string(), a_name.clone()), ("lora_B".to_string(), b_name.clone())]);
    state.trainable.insert(a_name);
    state.trainable.insert(b_name);
    if let Some(m) = m_name {
        params.insert("magnitude".to_string(), m.clone());
        state.trainable.insert(m);
    }
    let mut extra = BTreeMap::new();
    extra.insert("init".to_string(), serde_json::Value::from(init));
    // Through the shortest decimal text, so 0.1f32 is recorded as 0.1, not 0.10000000149….
    let dropout: f64 = cfg.dropout.to_string().parse().unwrap_or(f64::from(cfg.dropout));
    extra.insert("dropout".to_string(), serde_json::Value::from(dropout));
    state.adapters.push(AdapterRecord {
        method: if cfg.dora { Method::Dora } else { Method::Lora },
        module,
        target_node,
        base_weight: layer.weight.clone(),
        layout: Some(layout),
        params,
        nodes,
        output: attach,
        base_output: base,
        rank: r,
        alpha: cfg.alpha,
        scale: s,
        rslora: cfg.rslora,
        extra,
    });
    Ok(())
}
