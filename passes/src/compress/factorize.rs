//! `factorize-lowrank`: each selected linear layer's weight replaced by a truncated-SVD pair of
//! smaller matrices (PELA-style low-rank approximation).
//!
//! For every linear layer chosen by `targets` (default `all-linear`: every linear layer but an
//! output head; `exclude` and `layers` narrow the choice, see [`crate::adapters::targets`]),
//! `W` (read as `[in, out]` whatever its stored layout) becomes `A [in, r]` and `B [r, out]`
//! ([`super::lowrank`] gives the numbers) and the layer becomes
//! `MatMul(MatMul(x, A), B)`, followed by the original bias:
//! - `MatMul(x, W) (+ Add(b))`: the bias `Add` stays as it was;
//! - `Gemm(x, W, C?)` (`transB` 0 or 1): `C` becomes an `Add` after the second MatMul;
//! - `MatMul(x, Transpose(W))`: the `Transpose` goes (unless something else reads it).
//!
//! The rank is `rank=R` (`R ≥ min(in, out)` keeps full rank: exact up to rounding, and more
//! parameters when `R·(in + out) > in·out`, which the pass notes) or, without `rank`, the
//! smallest rank keeping `energy` of `Σ s_i²` (default 0.95; `energy=1` is full rank); giving
//! both is an error. A layer's output keeps its name, so its
//! readers are untouched and no existing value changes shape. The new MatMuls take the old
//! node's metadata (the exporter's `name_scopes`) and names derived from its name, so later
//! passes recover the same module path for both (and treat them as two linear layers:
//! `quantize-weights` after this pass quantizes `A` and `B`); they are marked
//! `adaptc.lowrank=a|b`. The factors are initializers `<W>_lowrank_a` and `<W>_lowrank_b` in
//! the weight's own type (float32, float16 or bfloat16; the SVD runs in `f64`); layers sharing
//! a weight share its factors; the old weight goes once nothing reads it.
//!
//! Refused, changing nothing (all SVDs run before the graph is touched): a trainable weight, a
//! weight of another type, a non-finite weight, a weight read by anything but selected linear
//! layers of one layout (see [`super::layer_weights`]), a layer carrying a recorded adapter
//! (merge it first: the record points at the weight and node this pass replaces).
//!
//! Reports: statistics `lowrank.layers`, `lowrank.params_before`, `lowrank.params_after`,
//! `lowrank.max_rel_err_e6` (the largest relative Frobenius error `‖W − A·B‖/‖W‖` of a layer,
//! ×1e6); with `report=path.json`, a JSON file with every weight's module, shape, rank, kept
//! energy, parameters before/after and relative error, and the totals.
//!
//! Preconditions: none beyond a verified graph. Preserves: graph inputs and outputs, every
//! value other than the replaced weights (and a Gemm's or Transpose's internal wiring), their
//! shapes.
//!
//! Example pipelines: `factorize-lowrank{rank=64}`, `factorize-lowrank{energy=0.9 exclude=query}`.

use std::path::PathBuf;

use adaptc_ir::{Graph, Model, Node, OpKey, Tensor};
use serde::Serialize;

use super::layer_weights::{fail, select_weights, LayerWeight};
use super::lowrank::{factorize, Factors, RankRule};
use super::parallel::map_parallel;
use super::quant::encode_floats;
use super::report::write_json;
use crate::adapters::linalg::Mat;
use crate::adapters::record::{AdapterState, CREATED_BY};
use crate::adapters::targets::Selection;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{LinearForm, LinearLayer, WeightLayout};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "factorize-lowrank";

/// Node metadata marking the two MatMuls of a factorized layer: `a` (`x·A`) or `b` (`·B`).
pub const LOWRANK_KEY: &str = "adaptc.lowrank";

/// The `factorize-lowrank` pass.
#[derive(Clone, Debug)]
pub struct FactorizeLowrank {
    rule: RankRule,
    selection: Selection,
    described: String,
    report: Option<PathBuf>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "replace linear-layer weights by truncated-SVD factors W ≈ A·B (rank or energy), two MatMuls each",
        options: vec![
            OptionInfo::new(
                "rank",
                OptionKind::Int,
                Some("0"),
                "the rank r of every factorization, ≥ 1 (0: not given, energy decides); give rank or energy",
            ),
            OptionInfo::new(
                "energy",
                OptionKind::Float,
                Some("0.95"),
                "without rank: the smallest r keeping this fraction of Σ s_i², in (0, 1]",
            ),
            OptionInfo::new(
                "targets",
                OptionKind::List,
                Some("all-linear"),
                "modules to factorize, PEFT-style (`query`, `re:<regex>`, `all-linear` = every linear layer but the head)",
            ),
            OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave whole, matched like targets"),
            OptionInfo::new("layers", OptionKind::List, Some(""), "only blocks with these indices (default: all)"),
            OptionInfo::new("report", OptionKind::String, Some(""), "write a per-layer JSON report to this file"),
        ],
        example: "factorize-lowrank{energy=0.95}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    if o.is_set("rank") && o.is_set("energy") {
        return Err(PassError::bad_option(PASS, "energy", "give either rank or energy, not both"));
    }
    let rule = if o.is_set("rank") {
        let rank = o.usize("rank")?;
        if rank == 0 {
            return Err(PassError::bad_option(PASS, "rank", "the rank must be at least 1"));
        }
        RankRule::Rank(rank)
    } else {
        let energy = o.f64("energy")?;
        if !(energy > 0.0 && energy <= 1.0) {
            return Err(PassError::bad_option(
                PASS,
                "energy",
                format!("{energy} is not in (0, 1]: it is the fraction of Σ s_i² to keep (0.95, or 1 for full rank)"),
            ));
        }
        RankRule::Energy(energy)
    };
    let (targets, exclude, layers) = (o.list("targets")?, o.list("exclude")?, o.list("layers")?);
    let selection = Selection::parse(PASS, &targets, &exclude, &layers)?;
    let described = Selection::describe(&targets, &exclude, &layers);
    let report = o.string("report")?;
    let report = (!report.is_empty()).then(|| PathBuf::from(report));
    Ok(Box::new(FactorizeLowrank { rule, selection, described, report }))
}

impl FactorizeLowrank {
    /// The pass for every linear layer but the head (`all-linear`), for library use.
    pub fn new(rule: RankRule) -> FactorizeLowrank {
        let all = ["all-linear".to_string()];
        FactorizeLowrank {
            rule,
            selection: Selection::parse(PASS, &all, &[], &[]).expect("all-linear parses"),
            described: Selection::describe(&all, &[], &[]),
            report: None,
        }
    }
}

/// One weight in the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub module: String,
    /// The MatMul/Gemm nodes reading the weight (more than one when layers share it).
    pub nodes: Vec<String>,
    pub weight: String,
    /// The stored shape.
    pub shape: [u64; 2],
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
    /// The fraction of `Σ s_i²` the kept singular values hold.
    pub energy: f64,
    pub params_before: u64,
    pub params_after: u64,
    /// `‖W − A·B‖_F / ‖W‖_F`, with the factors as stored.
    pub rel_err: f64,
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pass: &'static str,
    /// `rank=R` or `energy=E`.
    pub rule: String,
    pub layers: Vec<LayerReport>,
    /// Linear layers factorized (a weight shared by two layers counts twice).
    pub total_layers: usize,
    pub total_params_before: u64,
    pub total_params_after: u64,
    pub max_rel_err: f64,
}

/// One weight's factors, computed before anything changes.
struct Plan {
    weight: LayerWeight,
    factors: Factors,
    report: LayerReport,
}

impl Pass for FactorizeLowrank {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let state = AdapterState::load(model)?;
        let weights = select_weights(PASS, &model.graph, &state, &self.selection, &self.described)?;
        let graph = &model.graph;
        for w in &weights {
            refuse_adapted(graph, &state, w)?;
        }
        let plans = map_parallel(weights, |w| self.plan(graph, w)).into_iter().collect::<Result<Vec<_>, _>>()?;
        let report = self.report(&plans);
        if let Some(path) = &self.report {
            write_json(PASS, path, &report)?;
        }

        self.notes(&plans, cx);
        for plan in &plans {
            apply(&mut model.graph, plan)?;
        }
        Ok(PassOutcome::changed(!plans.is_empty())
            .stat("lowrank.layers", report.total_layers as i64)
            .stat("lowrank.params_before", report.total_params_before as i64)
            .stat("lowrank.params_after", report.total_params_after as i64)
            .stat("lowrank.max_rel_err_e6", (report.max_rel_err * 1e6).round() as i64))
    }
}

impl FactorizeLowrank {
    /// Reads one weight and computes its factors.
    fn plan(&self, graph: &Graph, weight: LayerWeight) -> Result<Plan, PassError> {
        let values = weight.values(PASS, graph)?;
        let (k, n) = (weight.in_features, weight.out_features);
        let w = match weight.layout {
            WeightLayout::InOut => Mat::from_f32(k, n, &values),
            WeightLayout::OutIn => Mat::from_f32(n, k, &values).transpose(),
        };
        drop(values);
        let factors = factorize(&w, self.rule, weight.dtype).map_err(|e| fail(PASS, &weight.module, e))?;
        let report = LayerReport {
            module: weight.module.clone(),
            nodes: weight.layers.iter().map(|l| graph.node(l.node).label()).collect(),
            weight: weight.weight.clone(),
            shape: weight.dims,
            in_features: k,
            out_features: n,
            rank: factors.rank,
            energy: factors.energy,
            params_before: (k * n) as u64,
            params_after: (factors.rank * (k + n)) as u64,
            rel_err: factors.rel_err,
        };
        Ok(Plan { weight, factors, report })
    }

    /// Says which layers kept full rank and which grew, one line each (per layer when one).
    fn notes(&self, plans: &[Plan], cx: &mut PassContext) {
        if let RankRule::Rank(asked) = self.rule {
            let full: Vec<&LayerReport> =
                plans.iter().map(|p| &p.report).filter(|r| asked >= r.in_features.min(r.out_features)).collect();
            match full[..] {
                [] => {}
                [r] => cx.note(format!("`{}`: rank={asked} ≥ min(in, out) = {}: kept full rank", r.module, r.rank)),
                _ => cx.note(format!(
                    "rank={asked} ≥ min(in, out) for {} layers ({}): kept full rank",
                    full.len(),
                    modules(&full)
                )),
            }
        }
        let grown: Vec<&LayerReport> =
            plans.iter().map(|p| &p.report).filter(|r| r.params_after > r.params_before).collect();
        match grown[..] {
            [] => {}
            [r] => cx.note(format!(
                "`{}`: rank {} factors hold {} parameters, more than the {} of the {}×{} weight",
                r.module, r.rank, r.params_after, r.params_before, r.in_features, r.out_features
            )),
            _ => cx.note(format!(
                "{} layers ({}) hold more parameters factorized than dense: {} → {} in total",
                grown.len(),
                modules(&grown),
                grown.iter().map(|r| r.params_before).sum::<u64>(),
                grown.iter().map(|r| r.params_after).sum::<u64>()
            )),
        }
    }

    fn report(&self, plans: &[Plan]) -> Report {
        Report {
            pass: PASS,
            rule: match self.rule {
                RankRule::Rank(r) => format!("rank={r}"),
                RankRule::Energy(e) => format!("energy={e}"),
            },
            layers: plans.iter().map(|p| p.report.clone()).collect(),
            total_layers: plans.iter().map(|p| p.weight.layers.len()).sum(),
            total_params_before: plans.iter().map(|p| p.report.params_before).sum(),
            total_params_after: plans.iter().map(|p| p.report.params_after).sum(),
            max_rel_err: plans.iter().map(|p| p.report.rel_err).fold(0.0, f64::max),
        }
    }
}

/// The first three modules, and how many more.
fn modules(layers: &[&LayerReport]) -> String {
    let mut text = layers.iter().take(3).map(|r| format!("`{}`", r.module)).collect::<Vec<_>>().join(", ");
    if layers.len() > 3 {
        text += &format!(", … {} more", layers.len() - 3);
    }
    text
}

/// A layer carrying a recorded adapter keeps its weight: the record names the weight and the
/// MatMul/Gemm that `merge-lora` folds into, and both go away here.
fn refuse_adapted(graph: &Graph, state: &AdapterState, w: &LayerWeight) -> Result<(), PassError> {
    let names: Vec<String> = w.layers.iter().map(|l| graph.node(l.node).name.clone()).collect();
    let adapter = state
        .adapters
        .iter()
        .find(|a| a.base_weight == w.weight || (!a.target_node.is_empty() && names.contains(&a.target_node)));
    match adapter {
        Some(a) => Err(fail(
            PASS,
            &w.module,
            format!(
                "the layer carries a {:?} adapter (`{}`): factorizing would remove the weight it merges into; \
                 merge it first (merge-lora) or exclude the layer",
                a.method, a.module
            ),
        )),
        None => Ok(()),
    }
}

/// Adds the factors and rewires every layer of the plan to them; drops what is left unread.
fn apply(graph: &mut Graph, plan: &Plan) -> Result<(), PassError> {
    let w = &plan.weight;
    let (k, n, r) = (w.in_features as u64, w.out_features as u64, plan.factors.rank as u64);
    let a = add_initializer(graph, &format!("{}_lowrank_a", w.weight), w, vec![k, r], &plan.factors.a)?;
    let b = add_initializer(graph, &format!("{}_lowrank_b", w.weight), w, vec![r, n], &plan.factors.b)?;
    for layer in &w.layers {
        rewire(graph, layer, &w.module, &a, &b)?;
    }
    w.remove_if_unused(graph)?;
    Ok(())
}

fn add_initializer(
    graph: &mut Graph,
    base: &str,
    w: &LayerWeight,
    dims: Vec<u64>,
    values: &[f32],
) -> Result<String, PassError> {
    let name = graph.unique_name(base);
    graph.add_initializer(Tensor::from_bytes(name.clone(), w.dtype, dims, encode_floats(w.dtype, values))?)?;
    Ok(name)
}

/// `MatMul(x, W)` / `Gemm(x, W, C)` / `MatMul(x, Transpose(W))` → `MatMul(MatMul(x, A), B)`
/// (`+ Add(C)` for a Gemm bias), producing the layer's old output value.
fn rewire(graph: &mut Graph, layer: &LinearLayer, module: &str, a: &str, b: &str) -> Result<(), PassError> {
    let old = graph.node(layer.node).clone();
    let out = old.output(0).unwrap_or_default().to_string();
    let base = if old.name.is_empty() { format!("{module}/MatMul") } else { old.name.clone() };
    let tmp = graph.unique_name(&format!("{out}/dense"));
    graph.rename_output(layer.node, 0, &tmp)?;

    let gemm_bias = if layer.form == LinearForm::Gemm { layer.bias.clone() } else { None };
    let mid = graph.unique_name(&format!("{out}/lowrank"));
    let b_out = if gemm_bias.is_some() { graph.unique_name(&format!("{out}/matmul")) } else { out.clone() };
    let name_a = graph.unique_name(&format!("{base}_lowrank_a"));
    graph.add_node(like(&old, vec![layer.input.clone(), a.to_string()], mid.clone(), name_a, "a"))?;
    let name_b = graph.unique_name(&format!("{base}_lowrank_b"));
    graph.add_node(like(&old, vec![mid, b.to_string()], b_out.clone(), name_b, "b"))?;
    if let Some(c) = gemm_bias {
        let name = graph.unique_name(&format!("{base}_bias"));
        let mut add = Node::new(OpKey::onnx("Add"), vec![b_out, c], vec![out]).named(name);
        add.metadata.set(CREATED_BY, PASS);
        graph.add_node(add)?;
    }
    graph.remove_node(layer.node)?;
    if let Some(t) = layer.transpose_node {
        let t_out = graph.node(t).output(0).unwrap_or_default().to_string();
        if graph.uses(&t_out).is_empty() && !graph.is_graph_output(&t_out) {
            graph.remove_node(t)?;
            graph.value_info.retain(|v| v.name != t_out);
        }
    }
    Ok(())
}

/// A MatMul carrying `old`'s metadata and doc string, marked as factor `which`.
fn like(old: &Node, inputs: Vec<String>, output: String, name: String, which: &str) -> Node {
    let mut node = Node::new(OpKey::onnx("MatMul"), inputs, vec![output]).named(name);
    for (key, value) in old.metadata.iter() {
        if key != CREATED_BY {
            node.metadata.set(key, value);
        }
    }
    node.metadata.set(LOWRANK_KEY, which);
    node.doc_string = old.doc_string.clone();
    node
}
