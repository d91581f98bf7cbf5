//! `prune-channels`: structured pruning that really shrinks the model — FFN intermediate
//! channels and attention heads are cut out of the weights, so the pruned model has fewer
//! parameters and does less work, with no masks left behind.
//!
//! **FFN channels** (`ffn=f`, a fraction in `[0, 1)`): an FFN group is found by structure, not by
//! names ([`ffn`]): producer linear layers (BERT's `intermediate.dense`; Llama's `gate_proj` and
//! `up_proj`) whose `F` outputs reach one consumer (`output.dense`, `down_proj`) with `F` input
//! features only through element-wise ops (activations, SwiGLU's `Mul`, scalar constants). Each
//! channel `j` scores the product of the L2 norms of the producers' output channel `j` and the
//! consumer's input channel `j`; the `round(f·F)` lowest go (one is always kept). Producer
//! weights and biases lose those output channels, the consumer's weight those input rows,
//! whatever the stored layout (`MatMul` `[in, out]`, `Gemm` `transB` 0/1, `MatMul(x,
//! Transpose(W))`); a `[1, …, F]` constant on the path is cut too.
//!
//! **Attention heads** (`heads=h`: a fraction, or a whole number of heads per block): q/k/v
//! projections read the same input and are reshaped to `[.., H, D]`; the output projection reads
//! the merged heads ([`attention`]). A head scores the sum of the L2 norms of its q/k/v output
//! channels and o input channels; the lowest go, q/k/v lose their output blocks (and bias
//! blocks), o its input block, and the reshape constants that say `H` or `H·D` get the new
//! counts (a constant shared with anything else is cloned first). First version: grouped-query
//! attention (fewer k/v than q heads) and head layouts the graph does not prove are refused,
//! naming the node.
//!
//! `targets` (default `all`) restricts the groups: a block index (`0`, `3`) or a module path
//! matched as in [`crate::adapters::targets`] against any layer of the group.
//!
//! All or nothing: every chosen group is planned before anything changes; a refused group
//! (a non-element-wise op on the path, a value read outside the path, a shared, trainable or
//! adapted weight, GQA) fails the pass with the reason and the model is left as it was.
//! Declared shapes (`value_info`) of the changed values are rewritten or dropped so
//! onnxruntime's shape inference agrees.
//!
//! Reports: statistics `prune.ffn_groups`, `prune.channels_removed`, `prune.attention_groups`,
//! `prune.heads_removed`, `prune.params_before`, `prune.params_after` (initializer elements of
//! the whole model); with `report=path.json`, per block the channels and heads before and after,
//! the removed indices and the parameters removed.
//!
//! Not found (yet), so not pruned: an FFN with a `Reshape` on its path (GPT-2's `Gemm`s on 2-D
//! views), attention whose k/v read another input (cross-attention) or a fused QKV weight, and
//! layers carrying adapters (their `Add` hides the structure: merge them first; the "nothing to
//! prune" error says so).
//!
//! Preconditions: a verified graph; run `dce` first if old values linger. Preserves: graph
//! inputs and outputs, node and value names; not the function — pruning is an approximation
//! (the pruned model equals the original with the removed channels' consumer rows zeroed).
//!
//! Example pipelines: `prune-channels{ffn=0.25}`, `prune-channels{ffn=0.5 heads=1 targets=0,1
//! report=prune.json},dce`.

pub mod amount;
pub mod attention;
pub mod ffn;
pub mod owned;
pub mod plan_attention;
pub mod plan_ffn;
pub mod report;
pub mod score;
pub mod shrink;

use std::path::PathBuf;

use adaptc_ir::{Graph, Model};

use self::amount::Amount;
use self::report::Report;
use self::shrink::{forget_declared, resize_declared, Cut};
use crate::adapters::record::{AdapterState, CREATED_BY};
use crate::adapters::targets::Target;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{find_linear_layers, LinearLayer};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "prune-channels";

/// The `prune-channels` pass.
#[derive(Clone, Debug)]
pub struct PruneChannels {
    ffn: Option<Amount>,
    heads: Option<Amount>,
    targets: Vec<GroupTarget>,
    report: Option<PathBuf>,
}

/// One `targets` entry.
#[derive(Clone, Debug)]
enum GroupTarget {
    All,
    Block(usize),
    Module(Target),
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "structured pruning: remove the lowest-magnitude FFN channels and attention heads from the weights",
        options: vec![
            OptionInfo::new(
                "ffn",
                OptionKind::Float,
                Some("0"),
                "fraction of intermediate channels removed in every FFN, in [0, 1)",
            ),
            OptionInfo::new(
                "heads",
                OptionKind::String,
                Some(""),
                "attention heads removed per block: a fraction (0.25) or a count (2); empty = none",
            ),
            OptionInfo::new(
                "targets",
                OptionKind::List,
                Some("all"),
                "groups to prune: block indices (0,3) or module paths PEFT-style (`re:<regex>`); default all",
            ),
            OptionInfo::new("report", OptionKind::String, Some(""), "write a per-block JSON report to this file"),
        ],
        example: "prune-channels{ffn=0.25}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let ffn = Amount::ffn(o.f64("ffn")?)?;
    let heads = Amount::heads(&o.string("heads")?)?;
    let targets = o
        .list("targets")?
        .iter()
        .map(|t| match t.parse::<usize>() {
            Ok(b) => Ok(GroupTarget::Block(b)),
            Err(_) if t == "all" => Ok(GroupTarget::All),
            Err(_) => Target::parse(PASS, "targets", t).map(GroupTarget::Module),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = o.string("report")?;
    let report = (!report.is_empty()).then(|| PathBuf::from(report));
    // The registry builds every example with defaults too, so "nothing asked" is checked in `run`.
    Ok(Box::new(PruneChannels { ffn, heads, targets, report }))
}

/// Everything a run will change, planned before the first change.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    pub cuts: Vec<Cut>,
    /// `(value, axis counted from the end, old, new)`: declared shapes to rewrite.
    pub resized: Vec<(String, usize, u64, u64)>,
    /// Values whose declared shapes are dropped.
    pub forgotten: Vec<String>,
    /// Reshape shape constants replaced by new ones.
    pub shapes: Vec<plan_attention::ShapeEdit>,
}

impl Edits {
    fn resize(&mut self, value: &str, from_end: usize, old: usize, new: usize) {
        self.resized.push((value.to_string(), from_end, old as u64, new as u64));
    }

    fn apply(&self, graph: &mut Graph) -> Result<(), PassError> {
        for cut in &self.cuts {
            cut.apply(graph).map_err(|e| PassError::failed(PASS, e))?;
        }
        for edit in &self.shapes {
            edit.apply(graph)?;
        }
        if !self.shapes.is_empty() {
            graph.sort()?;
        }
        for (value, from_end, old, new) in &self.resized {
            resize_declared(graph, value, *from_end, *old, *new);
        }
        for value in &self.forgotten {
            forget_declared(graph, value);
        }
        Ok(())
    }
}

impl PruneChannels {
    /// Whether `targets` choose the group in `block` whose layers have these module paths.
    fn wants(&self, block: Option<usize>, paths: &[&str]) -> bool {
        self.targets.iter().any(|t| match t {
            GroupTarget::All => true,
            GroupTarget::Block(b) => block == Some(*b),
            GroupTarget::Module(m) => paths.iter().any(|p| m.matches(p)),
        })
    }
}

/// Adapters join their result to the base layer's with an `Add`, which hides the structure.
fn adapter_hint(state: &AdapterState) -> String {
    match state.adapters.len() {
        0 => String::new(),
        n => format!(
            "; the model carries {n} adapter(s) (e.g. on `{}`), whose Add hides the structure: merge them first \
             (merge-lora), then prune",
            state.adapters[0].module
        ),
    }
}

/// The module paths of `layers`.
fn paths<'l>(layers: impl Iterator<Item = &'l LinearLayer>) -> Vec<&'l str> {
    layers.filter_map(|l| l.module_path.as_deref()).collect()
}

/// Initializer elements of the model.
fn params(graph: &Graph) -> u64 {
    graph.initializers().map(|t| t.numel()).sum()
}

impl Pass for PruneChannels {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        if self.ffn.is_none() && self.heads.is_none() {
            return Err(PassError::failed(PASS, "nothing to prune: give ffn=<fraction> and/or heads=<fraction|count>"));
        }
        let state = AdapterState::load(model)?;
        let graph = &model.graph;
        let layers: Vec<LinearLayer> = find_linear_layers(graph)
            .into_iter()
            .filter(|l| graph.node(l.node).metadata.get(CREATED_BY).is_none())
            .collect();
        let mut edits = Edits::default();
        let mut ffn_reports = Vec::new();
        let mut head_reports = Vec::new();

        if let Some(amount) = self.ffn {
            let mut refusals = Vec::new();
            for found in ffn::find_ffn_groups(graph, &layers) {
                match found {
                    Ok(group) if self.wants(group.block, &paths(group.layers())) => {
                        let report = plan_ffn::plan_ffn(graph, &state, &group, amount, &mut edits)
                            .map_err(|r| PassError::failed(PASS, format!("FFN `{}`: {r}", group.module(graph))))?;
                        ffn_reports.push((group.block, report));
                    }
                    Ok(_) => {}
                    Err(r) if self.wants(r.block, &[&r.module]) => {
                        refusals.push(format!("`{}`: {}", r.module, r.reason));
                    }
                    Err(_) => {}
                }
            }
            if let Some(first) = refusals.first() {
                return Err(PassError::failed(PASS, format!("cannot prune the FFN {first}")));
            }
            if ffn_reports.is_empty() {
                return Err(PassError::failed(
                    PASS,
                    format!(
                        "nothing to prune: no FFN group (producer linear layers → element-wise ops → one consumer \
                         linear layer) matches the targets{}",
                        adapter_hint(&state)
                    ),
                ));
            }
        }

        if let Some(amount) = self.heads {
            let groups = attention::find_attention_groups(graph, &layers);
            let mut any = false;
            for found in groups {
                let group = match found {
                    Ok(group) => group,
                    Err(r) if self.wants(r.block, &[&r.module]) => {
                        return Err(PassError::failed(PASS, format!("attention `{}`: {}", r.module, r.reason)));
                    }
                    Err(_) => continue,
                };
                if !self.wants(group.block, &paths(group.layers())) {
                    continue;
                }
                any = true;
                let report = plan_attention::plan_heads(graph, &state, &group, amount, &mut edits)
                    .map_err(|r| PassError::failed(PASS, format!("attention `{}`: {r}", group.module(graph))))?;
                head_reports.push((group.block, report));
            }
            if !any {
                return Err(PassError::failed(
                    PASS,
                    format!(
                        "nothing to prune: no attention block (q/k/v projections reshaped to [.., H, D] and an output \
                         projection of the merged heads) matches the targets{}",
                        adapter_hint(&state)
                    ),
                ));
            }
        }

        let before = params(graph);
        let report = Report::new(ffn_reports, head_reports, before);
        if report.channels_removed == 0 && report.heads_removed == 0 {
            cx.note("every chosen group is too small for the fraction asked: nothing removed");
        }
        edits.apply(&mut model.graph)?;
        let after = params(&model.graph);
        let report = Report { params_after: after, ..report };
        if let Some(path) = &self.report {
            report.write(path)?;
        }
        Ok(PassOutcome::changed(report.channels_removed > 0 || report.heads_removed > 0)
            .stat("prune.ffn_groups", report.ffn_groups as i64)
            .stat("prune.channels_removed", report.channels_removed as i64)
            .stat("prune.attention_groups", report.attention_groups as i64)
            .stat("prune.heads_removed", report.heads_removed as i64)
            .stat("prune.params_before", before as i64)
            .stat("prune.params_after", after as i64))
    }
}
