//! Planning one FFN group: score its channels, choose the lowest, and list the cuts and the
//! declared shapes to change. Nothing is changed here.

use adaptc_ir::Graph;

use super::amount::Amount;
use super::ffn::FfnGroup;
use super::owned::{check_layer, check_param};
use super::report::FfnReport;
use super::score::{channel_scores, choose, sq_norms};
use super::shrink::Cut;
use super::Edits;
use crate::adapters::record::AdapterState;
use crate::pattern::{constant_tensor, LinearLayer, WeightLayout};

/// The axis of a layer's stored weight that holds its output (`out = true`) or input features.
pub fn feature_axis(layer: &LinearLayer, out: bool) -> usize {
    match (layer.layout, out) {
        (WeightLayout::InOut, true) | (WeightLayout::OutIn, false) => 1,
        _ => 0,
    }
}

/// Plans the group, adding its cuts to `edits`; the reason when it cannot be pruned.
pub fn plan_ffn(
    graph: &Graph,
    state: &AdapterState,
    group: &FfnGroup,
    amount: Amount,
    edits: &mut Edits,
) -> Result<FfnReport, String> {
    for layer in group.layers() {
        check_layer(graph, state, layer)?;
    }
    let own: Vec<_> = group.path.clone();
    for c in &group.constants {
        check_param(graph, state, c, &own)?;
    }
    let width = group.width;
    let mut sq = Vec::new();
    for (layer, out) in group.producers.iter().map(|p| (p, true)).chain(std::iter::once((&group.consumer, false))) {
        let w = layer.weight_tensor(graph).ok_or_else(|| format!("`{}` is not a constant", layer.weight))?;
        let norms = sq_norms(w, feature_axis(layer, out))?;
        if norms.len() != width {
            return Err(format!("`{}` {:?} does not have {width} channels", layer.weight, w.dims()));
        }
        sq.push(norms);
    }
    let (kept, removed) = choose(&channel_scores(&sq), amount.removed(width));
    let mut params = 0u64;
    let mut cut = |value: &str, axis: usize, edits: &mut Edits| -> Result<(), String> {
        let t = constant_tensor(graph, value).ok_or_else(|| format!("`{value}` is not a constant"))?;
        params += t.numel() / width as u64 * removed.len() as u64;
        edits.cuts.push(Cut { value: value.to_string(), axis, block: 1, keep: kept.clone() });
        Ok(())
    };
    for p in &group.producers {
        cut(&p.weight, feature_axis(p, true), edits)?;
        if let Some(b) = &p.bias {
            let rank = constant_tensor(graph, b).map_or(1, |t| t.dims().len());
            cut(b, rank - 1, edits)?;
        }
        if let Some(t) = p.transpose_node.and_then(|t| graph.node(t).output(0)) {
            edits.resize(t, 0, width, kept.len());
        }
    }
    for c in &group.constants {
        let rank = constant_tensor(graph, c).map_or(1, |t| t.dims().len());
        cut(c, rank - 1, edits)?;
    }
    let consumer = &group.consumer;
    cut(&consumer.weight, feature_axis(consumer, false), edits)?;
    if let Some(t) = consumer.transpose_node.and_then(|t| graph.node(t).output(0)) {
        edits.resize(t, 1, width, kept.len());
    }
    for v in &group.values {
        edits.resize(v, 0, width, kept.len());
    }
    Ok(FfnReport {
        module: group.module(graph),
        producers: group.producers.iter().map(|p| p.module_path.clone().unwrap_or_else(|| p.weight.clone())).collect(),
        channels_before: width,
        channels_after: kept.len(),
        removed,
        params_removed: params,
    })
}
