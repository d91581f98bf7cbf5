//! `insert-ia3`: IA3 (*Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
//! In-Context Learning*) with PEFT's semantics: learned vectors that rescale activations,
//! initialised to ones, so the model is unchanged when they are inserted.
//!
//! For every linear layer `y = x·Wᵀ + b` chosen by `targets` (PEFT's `target_modules`
//! matching, see [`super::targets`]; `exclude` and `layers` narrow the choice):
//! - if its module path also matches `feedforward` (PEFT's `feedforward_modules`), its *input*
//!   is scaled: `x' = x ⊙ l` with `l ∈ R^in`. The `Mul` sits on this layer's input edge only
//!   (the layer node's input is rewired): other readers of `x` keep reading `x`;
//! - otherwise its *output*, after the bias, is scaled: `y' = y ⊙ l` with `l ∈ R^out`. The
//!   layer's producer now writes `<y>/base`; every reader of `y` (and a graph output `y`)
//!   reads the scaled value under the old name.
//!
//! As in PEFT, `feedforward` must be a subset of `targets` (compared as written when every
//! target is a plain name; with `re:` or `all-linear` targets, every layer `feedforward`
//! matches must be one `targets` matches). Matching is PEFT's suffix rule, so
//! `feedforward=output.dense` also matches BERT's `attention.output.dense`, exactly as PEFT's
//! default BERT configuration does.
//!
//! The vector is a new initializer `<module>.ia3_l` (the name PEFT saves, less the
//! `base_model.model.` prefix) in the base weight's float type, filled with ones and marked
//! trainable. PEFT stores it as `[1, in]` (input side) or `[out, 1]` (output side); adaptc
//! keeps it 1-D (`[in]` / `[out]`, so it broadcasts over any activation rank) and records
//! PEFT's shape in the record's `extra.peft_shape` for exporters. One [`AdapterRecord`] per
//! layer (method `ia3`, param role `ia3`, `extra.side` = `input` | `output`,
//! `extra.mergeable` = true).
//!
//! [`merge_ia3`] folds a record back into the base weights (called by `merge-lora`):
//! output side `W' = diag(l)·W` (each output feature's weights scaled, in the stored layout)
//! and `b' = l ⊙ b`; input side `W' = W·diag(l)` (each input feature's weights scaled), bias
//! unchanged. Computed in `f32`, cast once to the weight's type; the `Mul` and `l` are removed
//! and the layer's producer writes the original value name again.
//!
//! Preconditions: the targeted layers' weights are float (`f32`, `f16`, `bf16`, `f64`)
//! initializers; a module applied at several places is refused; a layer that already has an
//! adapter record is skipped with a note. Preserves: graph inputs and outputs, existing value
//! names, and the outputs exactly (`l = 1`, so `x ⊙ l = x` bitwise).
//!
//! Example pipelines: `insert-ia3{targets=key,value,output.dense feedforward=output.dense}`
//! (BERT), `insert-ia3{targets=k_proj,v_proj,down_proj feedforward=down_proj}` (Llama).
//! Statistics: `ia3.inserted`, `ia3.input_side`, `ia3.output_side`, `ia3.params`,
//! `ia3.skipped`.

use std::collections::BTreeMap;

use adaptc_ir::{DataType, Graph, IrError, Model, NodeId, Tensor};

use super::record::{AdapterRecord, AdapterState, Layout, Method, CREATED_BY};
use super::rewriter::Rewriter;
use super::sites::{checked_sites, Site};
use super::targets::{Selection, Target};
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{find_linear_layers, match_linear, LinearLayer, WeightLayout};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "insert-ia3";

/// The pass that calls [`merge_ia3`], named in its errors.
const MERGE: &str = "merge-lora";

/// The param role of the scaling vector in [`AdapterRecord::params`].
pub const ROLE: &str = "ia3";

const TARGETS_HINT: &str = "name the layers to scale, e.g. `targets=key,value,output.dense \
                            feedforward=output.dense` for BERT or `targets=k_proj,v_proj,down_proj \
                            feedforward=down_proj` for Llama";

/// The `insert-ia3` pass.
#[derive(Clone, Debug)]
pub struct InsertIa3 {
    /// `None` when `targets` was not given (an error when the pass runs).
    selection: Option<Selection>,
    feedforward: Vec<Target>,
    /// `targets` as written, for messages.
    targets: Vec<String>,
    described: String,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "scale linear layers' outputs, or feedforward layers' inputs, by trainable vectors initialised to ones (IA3)",
        options: vec![
            OptionInfo::new(
                "targets",
                OptionKind::List,
                None,
                "modules to adapt, PEFT-style (`key`, `re:<regex>`, `all-linear`), e.g. key,value,output.dense",
            ),
            OptionInfo::new(
                "feedforward",
                OptionKind::List,
                Some(""),
                "targets whose input rather than output is scaled (PEFT's feedforward_modules, a subset of targets)",
            ),
            OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave alone, matched like targets"),
            OptionInfo::new("layers", OptionKind::List, Some(""), "only blocks with these indices (default: all)"),
        ],
        example: "insert-ia3{targets=key,value,output.dense feedforward=output.dense}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let (exclude, layers) = (o.list("exclude")?, o.list("layers")?);
    let feedforward_text = o.list("feedforward")?;
    let feedforward =
        feedforward_text.iter().map(|t| Target::parse(PASS, "feedforward", t)).collect::<Result<Vec<_>, _>>()?;
    if !o.is_set("targets") {
        // Check the other options now; the missing targets are reported when the pass runs
        // (so the registry can build every pass from its defaults).
        Selection::parse(PASS, &["all-linear".to_string()], &exclude, &layers)?;
        return Ok(Box::new(InsertIa3 { selection: None, feedforward, targets: Vec::new(), described: String::new() }));
    }
    let targets = o.list("targets")?;
    if targets.is_empty() {
        return Err(PassError::bad_option(PASS, "targets", format!("no targets given: {TARGETS_HINT}")));
    }
    let selection = Selection::parse(PASS, &targets, &exclude, &layers)?;
    // PEFT: `feedforward_modules` must be a subset of `target_modules` (when both are lists).
    let all_plain = selection.targets.iter().all(|t| matches!(t, Target::Suffix(_)));
    if all_plain {
        if let Some(bad) = feedforward_text.iter().find(|f| !targets.contains(f)) {
            return Err(PassError::bad_option(
                PASS,
                "feedforward",
                format!(
                    "`{bad}` is not one of targets ({}): feedforward must be a subset of targets, as PEFT's \
                     feedforward_modules must be of target_modules",
                    targets.join(",")
                ),
            ));
        }
    }
    let described = Selection::describe(&targets, &exclude, &layers);
    Ok(Box::new(InsertIa3 { selection: Some(selection), feedforward, targets, described }))
}

/// One layer's planned insertion.
struct Plan {
    layer: LinearLayer,
    module: String,
    input_side: bool,
    dtype: DataType,
}

impl Pass for InsertIa3 {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let Some(selection) = &self.selection else {
            return Err(PassError::bad_option(PASS, "targets", format!("is required: {TARGETS_HINT}")));
        };
        let mut state = AdapterState::load(model)?;
        let graph = &model.graph;
        self.check_feedforward_selected(graph)?;
        let selected = selection.select(graph);
        if selected.is_empty() {
            return Err(selection.no_match(PASS, graph, &self.described));
        }

        // Plan and check every layer before changing anything.
        let (sites, skipped) = checked_sites(
            PASS,
            graph,
            selected,
            "scaling",
            |layer| existing_adapter(&state, graph, layer).map(|m| format!("a {m:?} adapter")),
            cx,
        )?;
        let mut plans = Vec::new();
        for Site { layer, module, dtype } in sites {
            let input_side = self.feedforward.iter().any(|t| t.matches(&module));
            plans.push(Plan { layer, module, input_side, dtype });
        }

        let (mut inputs, mut outputs, mut params) = (0i64, 0i64, 0i64);
        for plan in &plans {
            let n = insert(&mut model.graph, &mut state, plan)?;
            params += n as i64;
            if plan.input_side {
                inputs += 1;
            } else {
                outputs += 1;
            }
        }
        if !plans.is_empty() {
            state.store(model);
        }
        let mut outcome = PassOutcome::changed(!plans.is_empty())
            .stat("ia3.inserted", plans.len() as i64)
            .stat("ia3.input_side", inputs)
            .stat("ia3.output_side", outputs)
            .stat("ia3.params", params);
        if skipped > 0 {
            outcome = outcome.stat("ia3.skipped", skipped);
        }
        Ok(outcome)
    }
}

impl InsertIa3 {
    /// With `re:` or `all-linear` targets the subset rule is checked on the graph: every layer
    /// `feedforward` matches must be one `targets` matches.
    fn check_feedforward_selected(&self, graph: &Graph) -> Result<(), PassError> {
        let Some(selection) = &self.selection else {
            return Ok(());
        };
        if self.feedforward.is_empty() || selection.targets.iter().all(|t| matches!(t, Target::Suffix(_))) {
            return Ok(());
        }
        for layer in find_linear_layers(graph) {
            let Some(path) = layer.module_path.as_deref() else {
                continue;
            };
            if self.feedforward.iter().any(|f| f.matches(path)) && !selection.targets.iter().any(|t| t.matches(path)) {
                return Err(PassError::bad_option(
                    PASS,
                    "feedforward",
                    format!(
                        "matches `{path}`, which targets ({}) does not: feedforward must be a subset of targets",
                        self.targets.join(",")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn fail(module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, format!("`{module}`: {reason}"))
}

/// The method of an adapter already recorded on this layer (same module path or node), if any.
fn existing_adapter(state: &AdapterState, graph: &Graph, layer: &LinearLayer) -> Option<Method> {
    let node = &graph.node(layer.node).name;
    state
        .adapters
        .iter()
        .find(|a| {
            (!a.target_node.is_empty() && a.target_node == *node)
                || (a.method == Method::Ia3 && Some(&a.module) == layer.module_path.as_ref())
        })
        .map(|a| a.method)
}

/// Inserts one scaling vector (all checks done); returns its length.
fn insert(graph: &mut Graph, state: &mut AdapterState, plan: &Plan) -> Result<usize, PassError> {
    let layer = &plan.layer;
    let module = &plan.module;
    let len = if plan.input_side { layer.in_features } else { layer.out_features } as usize;
    let ones = float_tensor("", plan.dtype, vec![len as u64], &vec![1.0; len]).map_err(|e| fail(module, e))?;
    let target_node = graph.node(layer.node).name.clone();
    let mut rw = Rewriter::new(graph, PASS, module);
    let l = rw.initializer(&format!("{module}.ia3_l"), ones)?;
    let (output, base_output) = if plan.input_side {
        let scaled = rw.node("Mul", &[&layer.input, &l], vec![], "ia3")?;
        rw.graph.set_input(layer.node, 0, &scaled)?;
        (scaled, layer.input.clone())
    } else {
        let base = rw.detach(&layer.output)?;
        rw.node_into("Mul", &[&base, &l], vec![], "ia3", &layer.output)?;
        (layer.output.clone(), base)
    };
    let peft_shape = if plan.input_side { [1, len] } else { [len, 1] };
    let extra = BTreeMap::from([
        ("side".to_string(), serde_json::Value::from(if plan.input_side { "input" } else { "output" })),
        ("feedforward".to_string(), serde_json::Value::from(plan.input_side)),
        ("peft_shape".to_string(), serde_json::Value::from(peft_shape.to_vec())),
        ("mergeable".to_string(), serde_json::Value::from(true)),
    ]);
    state.trainable.insert(l.clone());
    state.adapters.push(AdapterRecord {
        method: Method::Ia3,
        module: module.clone(),
        target_node,
        base_weight: layer.weight.clone(),
        layout: Some(Layout::from(layer.layout)),
        params: BTreeMap::from([(ROLE.to_string(), l)]),
        nodes: rw.created,
        output,
        base_output,
        rank: 0,
        alpha: 0.0,
        scale: 1.0,
        rslora: false,
        extra,
    });
    Ok(len)
}

// ----- merge -------------------------------------------------------------------------------

/// Folds one IA3 adapter (a record `insert-ia3` left) into its layer's weights, exactly:
/// output side `W' = diag(l)·W`, `b' = l ⊙ b`; input side `W' = W·diag(l)` (in the weight's
/// stored layout, computed in `f32` and cast once). Removes the `Mul` node and the `l`
/// initializer and makes the layer's producer write its original value name again. The
/// caller updates the [`AdapterState`] (drops the record and `l` from the trainable set).
///
/// Refuses, changing nothing, when the record is not an IA3 record, its nodes or vector are
/// missing, or the base weight (or bias) is not an initializer of this layer alone (merging
/// would change the other users).
pub fn merge_ia3(graph: &mut Graph, record: &AdapterRecord) -> Result<(), PassError> {
    let plan =
        plan_merge(graph, record).map_err(|e| PassError::failed(MERGE, format!("IA3 on `{}`: {e}", record.module)))?;
    apply_merge(graph, plan).map_err(|e| PassError::failed(MERGE, format!("IA3 on `{}`: {e}", record.module)))
}

/// Everything a merge changes, computed before anything is changed.
struct MergePlan {
    mul: NodeId,
    layer_node: NodeId,
    input_side: bool,
    l: String,
    weight: String,
    new_weight: Vec<u8>,
    bias: Option<(String, Vec<u8>)>,
}

fn plan_merge(graph: &Graph, record: &AdapterRecord) -> Result<MergePlan, String> {
    if record.method != Method::Ia3 {
        return Err(format!("the record is a {:?} adapter, not IA3", record.method));
    }
    let l = record.params.get(ROLE).ok_or("the record names no `ia3` vector")?.clone();
    let side = record.extra.get("side").and_then(|v| v.as_str()).ok_or("the record has no `side`")?;
    let input_side = match side {
        "input" => true,
        "output" => false,
        other => return Err(format!("unknown side `{other}`")),
    };
    let mul = graph
        .nodes()
        .find(|(_, n)| record.nodes.contains(&n.name) && n.op().is("Mul") && n.metadata.get(CREATED_BY) == Some(PASS))
        .map(|(id, _)| id)
        .ok_or_else(|| format!("its Mul node ({}) is not in the graph", record.nodes.join(", ")))?;
    let mul_node = graph.node(mul);
    let (Some(src), Some(out)) = (mul_node.input(0), mul_node.output(0)) else {
        return Err("its Mul node has no input or output".into());
    };
    if mul_node.input(1) != Some(l.as_str()) {
        return Err(format!("its Mul node does not read the vector `{l}`"));
    }
    let l_tensor = graph.initializer(&l).ok_or_else(|| format!("the vector `{l}` is not an initializer"))?;
    let scale = l_tensor.to_f32_lossy().map_err(|e| e.to_string())?;
    if graph.is_graph_input(&l) {
        return Err(format!("the vector `{l}` is a graph input, so its value is only known at run time"));
    }
    if graph.uses(&l).len() != 1 || graph.is_graph_output(&l) {
        return Err(format!("the vector `{l}` is used elsewhere too"));
    }

    let layer = if input_side {
        match graph.uses(out) {
            [u] if u.slot == Some(0) && !graph.is_graph_output(out) => {
                match_linear(graph, u.node).map_err(|e| e.reason)
            }
            _ => return Err(format!("the scaled input `{out}` should feed exactly the layer's input")),
        }
    } else {
        let (p, _) = graph.producer(src).ok_or_else(|| format!("the base value `{src}` has no producer"))?;
        layer_ending_at(graph, p)
    }
    .map_err(|e| format!("the adapted layer no longer matches: {e}"))?;
    if layer.weight != record.base_weight {
        return Err(format!("the layer's weight is `{}`, the record says `{}`", layer.weight, record.base_weight));
    }
    check_own_initializer(graph, &layer.weight, &own_weight_users(&layer), "weight")?;
    let w = graph.initializer(&layer.weight).ok_or("weight vanished")?;
    let dims = w.dims().to_vec();
    let (inp, outf) = (layer.in_features as usize, layer.out_features as usize);
    let expect = if input_side { inp } else { outf };
    if scale.len() != expect {
        return Err(format!("the vector `{l}` has {} values, the layer has {expect} {side} features", scale.len()));
    }
    let mut values = w.to_f32_lossy().map_err(|e| e.to_string())?;
    if values.len() != inp * outf {
        return Err(format!("weight `{}` {dims:?} does not hold {inp}×{outf} values", layer.weight));
    }
    // Row-major index → (in, out) feature of the element.
    let feature = |idx: usize| -> (usize, usize) {
        match layer.layout {
            WeightLayout::InOut => (idx / outf, idx % outf),
            WeightLayout::OutIn => (idx % inp, idx / inp),
        }
    };
    for (idx, v) in values.iter_mut().enumerate() {
        let (i, o) = feature(idx);
        *v *= if input_side { scale[i] } else { scale[o] };
    }
    let new_weight = encode_floats(w.dtype(), &values).map_err(|e| format!("weight `{}`: {e}", layer.weight))?;
    let bias = match (&layer.bias, input_side) {
        (Some(b), false) => {
            let users: Vec<NodeId> = vec![layer.bias_node.unwrap_or(layer.node)];
            check_own_initializer(graph, b, &users, "bias")?;
            let t = graph.initializer(b).ok_or("bias vanished")?;
            let mut bv = t.to_f32_lossy().map_err(|e| e.to_string())?;
            if bv.len() != outf {
                return Err(format!("bias `{b}` has {} values, expected {outf}", bv.len()));
            }
            for (v, s) in bv.iter_mut().zip(&scale) {
                *v *= s;
            }
            Some((b.to_string(), encode_floats(t.dtype(), &bv).map_err(|e| format!("bias `{b}`: {e}"))?))
        }
        _ => None,
    };
    if !input_side && graph.nodes().any(|(_, n)| n.name == out) {
        return Err(format!("a node is named `{out}`, so the value name cannot be given back"));
    }
    Ok(MergePlan { mul, layer_node: layer.node, input_side, l, weight: layer.weight, new_weight, bias })
}

/// The linear layer whose last node (bias `Add`, or the MatMul/Gemm itself) is `last`.
fn layer_ending_at(graph: &Graph, last: NodeId) -> Result<LinearLayer, String> {
    let node = graph.node(last);
    if node.op().is("MatMul") || node.op().is("Gemm") {
        return match_linear(graph, last).map_err(|e| e.reason);
    }
    if node.op().is("Add") {
        for input in node.inputs() {
            if let Some((p, 0)) = graph.producer(input) {
                if let Ok(l) = match_linear(graph, p) {
                    if l.bias_node == Some(last) {
                        return Ok(l);
                    }
                }
            }
        }
    }
    Err(format!("`{}` ({}) is not the end of a linear layer", node.label(), node.op()))
}

/// The nodes allowed to read the weight: the Transpose of `MatMul(x, Transpose(W))`, else the
/// MatMul/Gemm.
fn own_weight_users(layer: &LinearLayer) -> Vec<NodeId> {
    vec![layer.transpose_node.unwrap_or(layer.node)]
}

/// `name` must be an initializer (not a graph input or output) read only by `users`, and for a
/// Transpose user its output only by the layer.
fn check_own_initializer(graph: &Graph, name: &str, users: &[NodeId], what: &str) -> Result<(), String> {
    if graph.initializer(name).is_none() {
        return Err(format!("the {what} `{name}` is not an initializer (a Constant node?); it cannot be rewritten"));
    }
    if graph.is_graph_input(name) || graph.is_graph_output(name) {
        return Err(format!("the {what} `{name}` is a graph input or output"));
    }
    let mut others: Vec<String> =
        graph.uses(name).iter().filter(|u| !users.contains(&u.node)).map(|u| graph.node(u.node).label()).collect();
    for &u in users {
        let n = graph.node(u);
        if n.op().is("Transpose") {
            let t_out = n.output(0).unwrap_or_default();
            if graph.uses(t_out).len() != 1 || graph.is_graph_output(t_out) {
                others.push(format!("the users of `{t_out}`"));
            }
        }
    }
    if others.is_empty() {
        Ok(())
    } else {
        others.sort();
        others.dedup();
        Err(format!(
            "the {what} `{name}` is shared with {}; merging would change them too",
            others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
        ))
    }
}

fn apply_merge(graph: &mut Graph, plan: MergePlan) -> Result<(), IrError> {
    let name = graph.name.clone();
    graph.initializer_mut(&plan.weight).ok_or_else(|| missing(&name, &plan.weight))?.set_bytes(plan.new_weight)?;
    if let Some((b, bytes)) = plan.bias {
        graph.initializer_mut(&b).ok_or_else(|| missing(&name, &b))?.set_bytes(bytes)?;
    }
    let mul = graph.node(plan.mul);
    let src = mul.input(0).unwrap_or_default().to_string();
    let out = mul.output(0).unwrap_or_default().to_string();
    if plan.input_side {
        graph.set_input(plan.layer_node, 0, &src)?;
        graph.remove_node(plan.mul)?;
    } else {
        reattach(graph, plan.mul, &src, &out)?;
    }
    graph.remove_initializer(&plan.l)?;
    Ok(())
}

fn missing(graph: &str, name: &str) -> IrError {
    IrError::Invalid { graph: graph.to_string(), reason: format!("no initializer `{name}`") }
}

/// Removes `node` (which computes `name` from `base`) and makes the producer of `base` write
/// `name` again; every reader of `name` or `base`, and graph outputs of either name, read the
/// producer's output under `name` afterwards. The inverse of [`Rewriter::detach`] plus the
/// node that re-produced the name.
pub(crate) fn reattach(graph: &mut Graph, node: NodeId, base: &str, name: &str) -> Result<(), IrError> {
    let tmp = graph.unique_name(&format!("{name}/removed"));
    graph.rename_output(node, 0, &tmp)?;
    graph.remove_node(node)?;
    // `name` now has readers and no producer; move them (and a graph output) to `base`, which
    // frees the name, give the name to `base`'s producer, and move everyone back.
    graph.replace_all_uses_with(name, base)?;
    rename_graph_outputs(graph, name, base);
    let (p, slot) = graph.producer(base).ok_or_else(|| IrError::Invalid {
        graph: graph.name.clone(),
        reason: format!("`{base}` has no producer to give the name `{name}` back to"),
    })?;
    graph.rename_output(p, slot, name)?;
    graph.replace_all_uses_with(base, name)?;
    rename_graph_outputs(graph, base, name);
    Ok(())
}

fn rename_graph_outputs(graph: &mut Graph, from: &str, to: &str) {
    for o in graph.outputs.iter_mut().filter(|o| o.name == from) {
        o.name = to.to_string();
    }
}

// ----- float tensors (shared by the adapter passes of this family) ----------------------------

/// `values` encoded as `dtype` (`f32`, `f16`, `bf16`, `f64`), little-endian.
pub(crate) fn encode_floats(dtype: DataType, values: &[f32]) -> Result<Vec<u8>, String> {
    Ok(match dtype {
        DataType::Float => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Float16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        DataType::BFloat16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        DataType::Double => values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect(),
        other => return Err(format!("{other} is not a float type adapters can be written in")),
    })
}

/// A tensor of `dtype` holding `values`.
pub(crate) fn float_tensor(name: &str, dtype: DataType, dims: Vec<u64>, values: &[f32]) -> Result<Tensor, String> {
    let bytes = encode_floats(dtype, values)?;
    Tensor::from_bytes(name, dtype, dims, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_encode_in_every_float_type() {
        for dtype in [DataType::Float, DataType::Float16, DataType::BFloat16, DataType::Double] {
            let t = float_tensor("t", dtype, vec![3], &[1.0, -2.0, 0.5]).unwrap();
            assert_eq!(t.to_f32_lossy().unwrap(), vec![1.0, -2.0, 0.5], "{dtype}");
        }
        assert!(encode_floats(DataType::Int8, &[1.0]).unwrap_err().contains("not a float type"));
    }
}
