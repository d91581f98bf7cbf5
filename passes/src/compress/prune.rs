//! `prune-weights`: magnitude pruning of linear-layer weights, in place.
//!
//! For every linear layer chosen by `targets` (PEFT-style module paths, default `all-linear`:
//! every linear layer but an output head; `exclude` and `layers` narrow the choice, see
//! [`crate::adapters::targets`]), the weights of smallest `|w|` become zero
//! ([`super::sparsity`] gives the rules):
//! - `pattern=unstructured`: exactly `floor(sparsity · numel)` weights of each layer;
//! - `pattern=N:M` (`2:4`, `4:8`): in every group of `M` consecutive input features of each
//!   output channel, the `M − N` smallest — the layout sparse tensor cores run. The groups run
//!   along the reduction axis whatever the stored layout, so `in_features` must be a multiple
//!   of `M`. `N:M` fixes the sparsity at `1 − N/M`; a `sparsity` that says otherwise is an
//!   error.
//!
//! The graph keeps its nodes, values and shapes; only the weight data changes (in its own
//! type: float32, float16 or bfloat16; zero is exact in all three). Dense kernels gain nothing
//! from the zeros: they pay off in a sparse runtime, in compression, or as a starting point for
//! sparse fine-tuning. Pruning again with the same options changes nothing (the pass says so),
//! and a weight none of whose values changes is not rewritten (external data stays external).
//!
//! Refused, changing nothing (every weight is checked and planned before any is written): a
//! trainable weight, a weight of another type, a non-finite weight, a weight read by anything
//! but selected linear layers of one layout (see [`super::layer_weights`]), an `N:M` pattern
//! whose `M` does not divide a layer's input features.
//!
//! Reports: statistics `prune.layers`, `prune.weights` (elements of the pruned weights),
//! `prune.zeros` (zeros among them afterwards) and `prune.sparsity_permille`; with
//! `report=path.json`, a JSON file with every weight's module, nodes, shape, zeros and achieved
//! sparsity, and the totals.
//!
//! Preconditions: none beyond a verified graph. Preserves: the graph's structure, names and
//! shapes, every unselected weight.
//!
//! Example pipelines: `prune-weights{sparsity=0.5}`, `prune-weights{pattern=2:4 exclude=key}`.

use std::path::PathBuf;

use adaptc_ir::Model;
use serde::Serialize;

use super::layer_weights::{fail, select_weights, LayerWeight};
use super::report::write_json;
use super::sparsity::{prune_n_of_m, prune_unstructured, unstructured_count, Pattern};
use crate::adapters::record::AdapterState;
use crate::adapters::targets::Selection;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::WeightLayout;
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "prune-weights";

/// The `prune-weights` pass.
#[derive(Clone, Debug)]
pub struct PruneWeights {
    pattern: Pattern,
    selection: Selection,
    described: String,
    report: Option<PathBuf>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "zero the smallest-magnitude weights of linear layers (unstructured or N:M such as 2:4)",
        options: vec![
            OptionInfo::new(
                "sparsity",
                OptionKind::Float,
                Some("0.5"),
                "fraction of each layer's weights to zero, in [0, 1) (N:M patterns fix it at 1 - N/M)",
            ),
            OptionInfo::new(
                "pattern",
                OptionKind::String,
                Some("unstructured"),
                "unstructured, or N:M: keep the N largest of every M input features per output channel (2:4)",
            ),
            OptionInfo::new(
                "targets",
                OptionKind::List,
                Some("all-linear"),
                "modules to prune, PEFT-style (`query`, `re:<regex>`, `all-linear` = every linear layer but the head)",
            ),
            OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave dense, matched like targets"),
            OptionInfo::new("layers", OptionKind::List, Some(""), "only blocks with these indices (default: all)"),
            OptionInfo::new("report", OptionKind::String, Some(""), "write a per-layer JSON report to this file"),
        ],
        example: "prune-weights{pattern=2:4}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let sparsity = o.f64("sparsity")?;
    if !(0.0..1.0).contains(&sparsity) {
        return Err(PassError::bad_option(
            PASS,
            "sparsity",
            format!("{sparsity} is not a fraction in [0, 1) (0.5 zeroes half of each layer's weights)"),
        ));
    }
    let text = o.string("pattern")?;
    let pattern = if text == "unstructured" {
        Pattern::Unstructured { sparsity }
    } else {
        let pattern = Pattern::parse_n_of_m(&text)
            .unwrap_or_else(|| Err(format!("`{text}` is neither `unstructured` nor N:M (e.g. 2:4)")))
            .map_err(|reason| PassError::bad_option(PASS, "pattern", reason))?;
        if o.is_set("sparsity") && (sparsity - pattern.sparsity()).abs() > 1e-9 {
            return Err(PassError::bad_option(
                PASS,
                "sparsity",
                format!(
                    "sparsity={sparsity} contradicts pattern={pattern}, which zeroes {} of the weights; leave \
                     sparsity out with an N:M pattern",
                    pattern.sparsity()
                ),
            ));
        }
        pattern
    };
    let (targets, exclude, layers) = (o.list("targets")?, o.list("exclude")?, o.list("layers")?);
    let selection = Selection::parse(PASS, &targets, &exclude, &layers)?;
    let described = Selection::describe(&targets, &exclude, &layers);
    let report = o.string("report")?;
    let report = (!report.is_empty()).then(|| PathBuf::from(report));
    Ok(Box::new(PruneWeights { pattern, selection, described, report }))
}

impl PruneWeights {
    /// The pass for every linear layer but the head (`all-linear`), for library use.
    pub fn new(pattern: Pattern) -> PruneWeights {
        let all = ["all-linear".to_string()];
        PruneWeights {
            pattern,
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
    pub dtype: String,
    /// The stored shape.
    pub shape: [u64; 2],
    pub in_features: usize,
    pub out_features: usize,
    pub elements: u64,
    /// Zeros after pruning.
    pub zeros: u64,
    /// `zeros / elements`.
    pub sparsity: f64,
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pass: &'static str,
    pub pattern: String,
    /// The sparsity asked for (the pattern's for N:M).
    pub target_sparsity: f64,
    pub layers: Vec<LayerReport>,
    /// Linear layers pruned (a weight shared by two layers counts twice).
    pub total_layers: usize,
    pub total_weights: u64,
    pub total_zeros: u64,
    pub sparsity: f64,
}

/// One weight's new data, computed before anything is written (in the weight's own type, so
/// all plans together take at most the selected weights' size).
struct Plan {
    weight: LayerWeight,
    /// The pruned weight's bytes; `None` when pruning changed no value.
    bytes: Option<Vec<u8>>,
    changed: usize,
    report: LayerReport,
}

impl Pass for PruneWeights {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let state = AdapterState::load(model)?;
        let weights = select_weights(PASS, &model.graph, &state, &self.selection, &self.described)?;
        if let Pattern::NOfM { m, .. } = self.pattern {
            if let Some(w) = weights.iter().find(|w| w.in_features.checked_rem(m) != Some(0)) {
                return Err(fail(
                    PASS,
                    &w.module,
                    format!(
                        "pattern={} groups {m} input features, but the weight `{}` has {} input features, not a \
                         multiple of {m}; exclude the layer or use pattern=unstructured",
                        self.pattern, w.weight, w.in_features
                    ),
                ));
            }
        }
        let mut plans = weights.into_iter().map(|w| self.plan(&model.graph, w)).collect::<Result<Vec<_>, _>>()?;
        let report = self.report(&plans);
        if let Some(path) = &self.report {
            write_json(PASS, path, &report)?;
        }

        let mut changed = 0;
        for plan in &mut plans {
            if let Some(bytes) = plan.bytes.take() {
                plan.weight.store(PASS, &mut model.graph, bytes)?;
            }
            changed += plan.changed;
            if plan.weight.layers.len() > 1 {
                cx.note(format!(
                    "`{}`: the weight `{}` is shared by {}; all of them read the pruned weight",
                    plan.weight.module,
                    plan.weight.weight,
                    plan.report.nodes.join(", ")
                ));
            }
        }
        Ok(PassOutcome::changed(changed > 0)
            .stat("prune.layers", report.total_layers as i64)
            .stat("prune.weights", report.total_weights as i64)
            .stat("prune.zeros", report.total_zeros as i64)
            .stat("prune.sparsity_permille", (report.sparsity * 1000.0).round() as i64))
    }
}

impl PruneWeights {
    fn plan(&self, graph: &adaptc_ir::Graph, weight: LayerWeight) -> Result<Plan, PassError> {
        let mut values = weight.values(PASS, graph)?;
        let changed = match self.pattern {
            Pattern::Unstructured { sparsity } => {
                let count = unstructured_count(sparsity, values.len());
                prune_unstructured(&mut values, count, weight.in_features, weight.layout == WeightLayout::InOut)
            }
            Pattern::NOfM { n, m } => {
                prune_n_of_m(&mut values, weight.in_features, weight.layout == WeightLayout::InOut, n, m)
            }
        };
        let zeros = values.iter().filter(|v| **v == 0.0).count() as u64;
        let report = LayerReport {
            module: weight.module.clone(),
            nodes: weight.layers.iter().map(|l| graph.node(l.node).label()).collect(),
            weight: weight.weight.clone(),
            dtype: weight.dtype.to_string(),
            shape: weight.dims,
            in_features: weight.in_features,
            out_features: weight.out_features,
            zeros,
            sparsity: if values.is_empty() { 0.0 } else { zeros as f64 / values.len() as f64 },
            elements: values.len() as u64,
        };
        let bytes = (changed > 0).then(|| weight.encode(&values));
        Ok(Plan { weight, bytes, changed, report })
    }

    fn report(&self, plans: &[Plan]) -> Report {
        let total_weights: u64 = plans.iter().map(|p| p.report.elements).sum();
        let total_zeros: u64 = plans.iter().map(|p| p.report.zeros).sum();
        Report {
            pass: PASS,
            pattern: self.pattern.to_string(),
            target_sparsity: self.pattern.sparsity(),
            layers: plans.iter().map(|p| p.report.clone()).collect(),
            total_layers: plans.iter().map(|p| p.weight.layers.len()).sum(),
            total_weights,
            total_zeros,
            sparsity: if total_weights == 0 { 0.0 } else { total_zeros as f64 / total_weights as f64 },
        }
    }
}
