//! `merge-lora`: folds LoRA and DoRA adapters into their base weights and removes them.
//!
//! For every recorded `lora`/`dora` adapter (see [`super::record`]), the base weight becomes
//!
//! ```text
//! LoRA:  W' = W + s·BA
//! DoRA:  W' = diag(m/n)·(W + s·BA),   n = ‖W + s·BA‖ per output row (from the final A, B)
//! ```
//!
//! computed in `f64` and stored once as `f32`, in the weight's stored layout (`[in, out]`
//! weights get `(s·BA)ᵀ`). The adapter's nodes and initializers go (also the graph inputs
//! `lora-as-inputs` made of them: their initializer values are what is merged), the base
//! producer writes the layer's value under its original name again, and the record and its
//! trainable entries are dropped. A LoRA-only model comes back with the base model's node
//! count, initializer count and value names; only the weight values differ. The bias is
//! untouched (DoRA does not scale it).
//!
//! A base weight read by other nodes than this layer (tied or shared weights) is not changed
//! silently: the pass fails naming the layer and the other readers, unless `unshare=true`, in
//! which case the layer gets its own merged copy (`<module>.weight`) and the others keep the
//! original. IA3 records are merged too, after the LoRA/DoRA ones, by
//! [`super::ia3::merge_ia3`]; bottleneck and prompt adapters cannot be merged and stay (with a
//! note).
//!
//! Preconditions: the adapters were made by `insert-lora` (or `import-peft`) and not edited;
//! `float32` weights. All LoRA/DoRA records are checked before anything changes, and a failure
//! while applying (an IA3 record that cannot be merged) restores the graph, so a failure leaves
//! the model as it was. Preserves: the function of the adapted model (up to `f32` rounding).
//!
//! Example pipeline: `insert-lora{targets=query,value init=random},merge-lora`. Statistics:
//! `merge.adapters`, `merge.unshared`, `merge.kept`.

use std::collections::{BTreeSet, HashMap, HashSet};

use adaptc_ir::{DataType, Graph, Model, NodeId, Tensor};

use super::linalg::{read_weight, store_weight, Mat};
use super::record::{AdapterRecord, AdapterState, Layout, Method};
use crate::canonicalize::drop_value_info;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "merge-lora";

/// The `merge-lora` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeLora {
    /// Give a layer whose base weight is shared its own merged copy instead of failing.
    pub unshare: bool,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "fold LoRA/DoRA adapters into their base weights (W += s·BA) and remove the adapter nodes",
        options: vec![OptionInfo::new(
            "unshare",
            OptionKind::Bool,
            Some("false"),
            "when a base weight is shared with other nodes, give the layer its own merged copy instead of failing",
        )],
        example: "insert-lora{targets=query,value init=random},merge-lora",
        build: |o: &Options| Ok(Box::new(MergeLora { unshare: o.bool("unshare")? })),
    }
}

/// One adapter's merge, fully checked and computed.
struct MergePlan {
    module: String,
    weight: String,
    layout: Layout,
    /// The merged weight, `[out, in]`.
    merged: Mat,
    /// With `unshare`: the node and input slot reading the weight, to rewire to a copy.
    unshare: Option<(NodeId, usize)>,
    adapter_nodes: Vec<NodeId>,
    output: String,
    base_producer: (NodeId, usize),
    params: Vec<String>,
}

impl Pass for MergeLora {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let mut state = AdapterState::load(model)?;
        if state.adapters.is_empty() {
            cx.note("the model records no adapters; nothing to merge");
            return Ok(PassOutcome::unchanged().stat("merge.adapters", 0));
        }
        // Check and compute every LoRA/DoRA merge first; IA3 merges (output or input scaling
        // of a weight) come after them, since an IA3 vector scales the LoRA-adapted layer.
        let mut plans = Vec::new();
        let mut ia3 = Vec::new();
        let mut merged_records = BTreeSet::new();
        let mut kept = 0i64;
        for (i, rec) in state.adapters.iter().enumerate() {
            match rec.method {
                Method::Lora | Method::Dora => {
                    plans.push(plan(&model.graph, rec, self.unshare)?);
                    merged_records.insert(i);
                }
                Method::Ia3 if rec.extra.get("mergeable").and_then(|v| v.as_bool()) != Some(false) => {
                    ia3.push(i);
                    merged_records.insert(i);
                }
                Method::Ia3 | Method::Bottleneck | Method::Prompt => {
                    cx.note(format!("{}: {:?} adapters cannot be merged into weights; kept", rec.module, rec.method));
                    kept += 1;
                }
                Method::Head => {
                    cx.note(format!("{}: a task head is part of the model, not a weight delta; kept", rec.module));
                    kept += 1;
                }
            }
        }

        let unshared = plans.iter().filter(|p| p.unshare.is_some()).count() as i64;
        let mut removed_params: BTreeSet<String> = BTreeSet::new();
        for &i in &merged_records {
            removed_params.extend(state.adapters[i].params.values().cloned());
        }
        // All or nothing: a failure half-way (an IA3 record that cannot be merged) restores the
        // graph as it was. Cloning a graph shares the tensors' bytes.
        let backup = model.graph.clone();
        let applied = plans
            .into_iter()
            .try_for_each(|p| apply(&mut model.graph, p))
            .and_then(|()| ia3.iter().try_for_each(|&i| super::ia3::merge_ia3(&mut model.graph, &state.adapters[i])));
        if let Err(e) = applied {
            model.graph = backup;
            return Err(e);
        }
        let merged = merged_records.len() as i64;
        let mut i = 0;
        state.adapters.retain(|_| {
            i += 1;
            !merged_records.contains(&(i - 1))
        });
        state.trainable.retain(|t| !removed_params.contains(t));
        if merged > 0 {
            state.store(model);
        }
        Ok(PassOutcome::changed(merged > 0)
            .stat("merge.adapters", merged)
            .stat("merge.unshared", unshared)
            .stat("merge.kept", kept))
    }
}

fn fail(module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, format!("`{module}`: {reason}"))
}

/// An `f32` parameter of the adapter with the expected shape.
fn param(graph: &Graph, rec: &AdapterRecord, role: &str, dims: &[u64]) -> Result<Vec<f32>, PassError> {
    let module = &rec.module;
    let name = rec.params.get(role).ok_or_else(|| fail(module, format!("the record has no `{role}` parameter")))?;
    let t = graph.initializer(name).ok_or_else(|| fail(module, format!("initializer `{name}` ({role}) is missing")))?;
    if t.dtype() != DataType::Float || t.dims() != dims {
        return Err(fail(module, format!("`{name}` is {}{:?}, expected f32{dims:?}", t.dtype(), t.dims())));
    }
    t.to_f32().map_err(|e| fail(module, e))
}

/// Finds the base MatMul/Gemm of a record from the value its adapter reads, and the node and
/// slot through which it reads the weight: `(layer node, reader, reader slot)`.
fn locate(graph: &Graph, rec: &AdapterRecord, producer: NodeId) -> Option<(NodeId, NodeId, usize)> {
    let mut candidates = vec![producer];
    candidates.extend(graph.node(producer).inputs().iter().filter_map(|v| graph.producer(v)).map(|(p, _)| p));
    candidates.into_iter().find_map(|c| {
        let node = graph.node(c);
        if !(node.op().is("MatMul") || node.op().is("Gemm")) {
            return None;
        }
        let w = node.input(1)?;
        if w == rec.base_weight {
            return Some((c, c, 1));
        }
        let (t, _) = graph.producer(w).filter(|&(_, slot)| slot == 0)?;
        let tn = graph.node(t);
        (tn.op().is("Transpose") && tn.input(0) == Some(rec.base_weight.as_str())).then_some((c, t, 0))
    })
}

fn plan(graph: &Graph, rec: &AdapterRecord, unshare: bool) -> Result<MergePlan, PassError> {
    let module = rec.module.as_str();
    let layout = rec.layout.ok_or_else(|| fail(module, "the record has no weight layout"))?;
    let by_name: HashMap<&str, NodeId> = graph.nodes().map(|(id, n)| (n.name.as_str(), id)).collect();
    let adapter_nodes = rec
        .nodes
        .iter()
        .map(|n| by_name.get(n.as_str()).copied().ok_or_else(|| fail(module, format!("adapter node `{n}` is missing"))))
        .collect::<Result<Vec<_>, _>>()?;
    let ours: HashSet<NodeId> = adapter_nodes.iter().copied().collect();
    let base_producer = graph
        .producer(&rec.base_output)
        .ok_or_else(|| fail(module, format!("the base value `{}` is no longer produced", rec.base_output)))?;
    match graph.producer(&rec.output) {
        Some((p, _)) if ours.contains(&p) => {}
        _ => return Err(fail(module, format!("`{}` is not produced by the adapter", rec.output))),
    }
    let (layer, reader, slot) = locate(graph, rec, base_producer.0).ok_or_else(|| {
        fail(module, format!("cannot find the MatMul/Gemm reading `{}` behind `{}`", rec.base_weight, rec.base_output))
    })?;

    // Who else reads the weight (or its Transpose)?
    let mut others: Vec<String> = graph
        .uses(&rec.base_weight)
        .iter()
        .filter(|u| u.node != reader && !ours.contains(&u.node))
        .map(|u| graph.node(u.node).label())
        .collect();
    if reader != layer {
        let t_out = graph.node(reader).output(0).unwrap_or_default();
        others.extend(
            graph
                .uses(t_out)
                .iter()
                .filter(|u| u.node != layer && !ours.contains(&u.node))
                .map(|u| graph.node(u.node).label()),
        );
    }
    if graph.is_graph_output(&rec.base_weight) || graph.is_graph_input(&rec.base_weight) {
        others.push("the graph's interface".into());
    }
    others.sort();
    others.dedup();
    let unshare = if others.is_empty() {
        None
    } else if unshare {
        Some((reader, slot))
    } else {
        return Err(fail(
            module,
            format!(
                "base weight `{}` is shared with {}; merging would change them too (merge-lora{{unshare=true}} gives \
                 this layer its own copy)",
                rec.base_weight,
                others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
            ),
        ));
    };

    let w = read_weight(graph, &rec.base_weight, layout).map_err(|e| fail(module, e))?;
    let (out, inp, r) = (w.rows, w.cols, rec.rank);
    let a = param(graph, rec, "lora_A", &[r as u64, inp as u64])?;
    let b = param(graph, rec, "lora_B", &[out as u64, r as u64])?;
    let ba = Mat::from_f32(out, r, &b).matmul(&Mat::from_f32(r, inp, &a));
    let mut merged = w.add_scaled(f64::from(rec.scale), &ba);
    if rec.method == Method::Dora {
        let m = param(graph, rec, "magnitude", &[out as u64])?;
        let norms = merged.row_norms();
        for (row, (&mv, &n)) in m.iter().zip(&norms).enumerate() {
            if n == 0.0 || !n.is_finite() {
                return Err(fail(module, format!("row {row} of W + s·BA has norm {n}, so DoRA's m/n is undefined")));
            }
            let f = f64::from(mv) / n;
            merged.data[row * inp..(row + 1) * inp].iter_mut().for_each(|v| *v *= f);
        }
    }
    if let Some(bad) = merged.data.iter().position(|v| !(*v as f32).is_finite()) {
        return Err(fail(module, format!("the merged weight is not finite in float32 (element {bad})")));
    }
    Ok(MergePlan {
        module: module.to_string(),
        weight: rec.base_weight.clone(),
        layout,
        merged,
        unshare,
        adapter_nodes,
        output: rec.output.clone(),
        base_producer,
        params: rec.params.values().cloned().collect(),
    })
}

/// Applies a checked plan: removes the adapter, gives the value its name back, writes the weight.
fn apply(graph: &mut Graph, p: MergePlan) -> Result<(), PassError> {
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut gone: HashSet<String> = HashSet::new();
    for &id in &p.adapter_nodes {
        let n = graph.node(id);
        read.extend(n.inputs().iter().filter(|v| !v.is_empty()).cloned());
        gone.extend(n.outputs().iter().filter(|v| !v.is_empty()).cloned());
    }

    // Park the consumers (and graph outputs) of the layer's value on a temporary name, so the
    // adapter can be removed and the base producer can take the name back.
    let tmp = graph.unique_name(&format!("{}/merging", p.output));
    graph.replace_all_uses_with(&p.output, &tmp)?;
    for o in graph.outputs.iter_mut().filter(|o| o.name == p.output) {
        o.name = tmp.clone();
    }
    let same_named: Vec<NodeId> = graph.nodes().filter(|(_, n)| n.name == p.output).map(|(id, _)| id).collect();
    let parked_name = graph.unique_name(&format!("{}/node", p.output));
    for &id in &same_named {
        graph.node_mut(id).name = parked_name.clone();
    }
    let ours: HashSet<NodeId> = p.adapter_nodes.iter().copied().collect();
    for id in graph.topo_order()?.into_iter().rev().filter(|id| ours.contains(id)) {
        graph.remove_node(id)?;
    }
    graph.rename_output(p.base_producer.0, p.base_producer.1, &p.output)?;
    for &id in &same_named {
        graph.node_mut(id).name = p.output.clone();
    }
    graph.replace_all_uses_with(&tmp, &p.output)?;
    for o in graph.outputs.iter_mut().filter(|o| o.name == tmp) {
        o.name = p.output.clone();
    }

    match p.unshare {
        None => store_weight(graph, &p.weight, p.layout, &p.merged).map_err(|e| fail(&p.module, e))?,
        Some((node, slot)) => {
            let stored = match p.layout {
                Layout::OutIn => p.merged.clone(),
                Layout::InOut => p.merged.transpose(),
            };
            let name = graph.unique_name(&format!("{}.weight", p.module));
            let t = Tensor::from_f32(name.clone(), vec![stored.rows as u64, stored.cols as u64], &stored.to_f32())?;
            graph.add_initializer(t)?;
            graph.set_input(node, slot, &name)?;
            read.insert(p.weight.clone());
        }
    }

    // The adapter's initializers (and the base weight, if unsharing left it unused).
    let params: HashSet<&String> = p.params.iter().collect();
    for name in read {
        if graph.initializer(&name).is_none() || !graph.uses(&name).is_empty() || graph.is_graph_output(&name) {
            continue;
        }
        if graph.is_graph_input(&name) {
            if !params.contains(&name) {
                continue;
            }
            graph.inputs.retain(|i| i.name != name);
        }
        graph.remove_initializer(&name)?;
        gone.insert(name);
    }
    gone.insert(tmp);
    gone.remove(&p.output);
    drop_value_info(graph, &gone);
    Ok(())
}
