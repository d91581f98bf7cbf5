//! `prune-layers`: removes whole transformer blocks, connecting the residual stream around them.
//!
//! The blocks and the stream value each one reads and hands on come from
//! [`crate::pattern::find_block_stacks`] (module paths plus graph structure, no op names). For
//! every run of consecutive removed blocks, whatever read the run's output now reads its input;
//! then dead-code elimination drops everything nothing reads any more — the removed blocks'
//! nodes and weights — while values that kept blocks still read stay, even when the exporter
//! computed them inside a removed block (shared attention masks and reshape targets live in the
//! first block of dynamo exports; the notes name such survivors). A removed last block whose
//! output is a graph output hands that name to its input, so the model's interface is unchanged.
//!
//! Adapter records of removed layers are dropped with them (and their trainable tensors).
//! `layers` are module indices (`layers=4,5` removes `encoder.layer.4` and `encoder.layer.5`);
//! a graph with several stacks (an encoder and a decoder) needs `stack=<container path>`.
//!
//! `drop=N by=angular calib=rows.jsonl` chooses the blocks by measurement instead: adaptc's CPU
//! runtime runs the model on the calibration rows and the `N` blocks whose output hidden state
//! is closest in angle to their input (see [`super::block_distance`]) go; the notes list every
//! block's distance.
//!
//! Statistics: `prune.blocks_removed`, `prune.nodes_removed`, `prune.initializers_removed`,
//! `prune.params_before`, `prune.params_after` (initializer elements of the model).
//!
//! Preconditions: a verified graph whose nodes carry module paths. Preserves: graph inputs and
//! outputs (names and types), every kept block, value names.
//!
//! Example pipelines: `prune-layers{layers=4,5}`,
//! `prune-layers{drop=2 by=angular calib=train.jsonl samples=64}`.

use std::collections::BTreeSet;

use adaptc_ir::{Graph, Model, Node, OpKey};

use super::block_distance::{block_distances, Calibration};
use crate::adapters::record::AdapterState;
use crate::canonicalize::dce::remove_dead_code;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{find_block_stacks, node_block, BlockStack};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "prune-layers";

/// Which blocks go.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// These module indices.
    Layers(BTreeSet<usize>),
    /// The `drop` blocks with the smallest angular distance on calibration data.
    Angular { drop: usize, calibration: Calibration },
}

/// The `prune-layers` pass.
#[derive(Clone, Debug)]
pub struct PruneLayers {
    choice: Choice,
    stack: Option<String>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "remove whole transformer blocks, connecting the residual stream around them",
        options: vec![
            OptionInfo::new("layers", OptionKind::List, Some(""), "block indices to remove (e.g. 4,5)"),
            OptionInfo::new(
                "drop",
                OptionKind::Int,
                Some("0"),
                "instead of layers: remove this many blocks, those that change the hidden state least (by=angular)",
            ),
            OptionInfo::new(
                "by",
                OptionKind::Enum(&["angular"]),
                Some("angular"),
                "with drop: the measure, the angular distance between a block's input and output hidden states",
            ),
            OptionInfo::new(
                "calib",
                OptionKind::String,
                Some(""),
                "with drop: calibration rows, JSONL keyed by the model's input names (e.g. input_ids, attention_mask)",
            ),
            OptionInfo::new("samples", OptionKind::Int, Some("64"), "with drop: calibration rows to read at most"),
            OptionInfo::new("batch", OptionKind::Int, Some("8"), "with drop: calibration rows per run"),
            OptionInfo::new(
                "stack",
                OptionKind::String,
                Some(""),
                "the block container to prune when the model has several (e.g. encoder.layer)",
            ),
        ],
        example: "prune-layers{layers=4,5}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let mut layers = BTreeSet::new();
    for l in o.list("layers")? {
        let i = l
            .parse::<usize>()
            .map_err(|_| PassError::bad_option(PASS, "layers", format!("`{l}` is not a block index")))?;
        layers.insert(i);
    }
    let drop = o.usize("drop")?;
    let calib = o.string("calib")?;
    let choice = match (layers.is_empty(), drop) {
        (false, 0) => Choice::Layers(layers),
        (false, _) => return Err(PassError::bad_option(PASS, "drop", "give either `layers` or `drop`, not both")),
        (true, 0) => Choice::Layers(layers), // refused when run: the registry builds every pass bare
        (true, drop) => {
            if calib.is_empty() {
                return Err(PassError::bad_option(
                    PASS,
                    "calib",
                    "`drop` measures the blocks on sample data: give calib=FILE.jsonl (rows keyed by the model's \
                     input names, e.g. input_ids and attention_mask)",
                ));
            }
            let calibration = Calibration {
                data: calib.into(),
                samples: o.usize("samples")?.max(1),
                batch: o.usize("batch")?.max(1),
            };
            Choice::Angular { drop, calibration }
        }
    };
    let stack = o.string("stack")?;
    Ok(Box::new(PruneLayers { choice, stack: (!stack.is_empty()).then_some(stack) }))
}

impl PruneLayers {
    /// Removes blocks `layers` of the model's only stack (or of `stack`).
    pub fn new(layers: impl IntoIterator<Item = usize>, stack: Option<String>) -> PruneLayers {
        PruneLayers { choice: Choice::Layers(layers.into_iter().collect()), stack }
    }

    /// The module indices to remove from `stack`.
    fn removed(&self, model: &Model, stack: &BlockStack, cx: &mut PassContext) -> Result<BTreeSet<usize>, PassError> {
        let indices: Vec<usize> = stack.blocks.iter().map(|b| b.index).collect();
        match &self.choice {
            Choice::Layers(layers) if layers.is_empty() => Err(PassError::bad_option(
                PASS,
                "layers",
                "name the blocks to remove, e.g. `layers=4,5`, or use drop=N",
            )),
            Choice::Layers(layers) => match layers.iter().find(|l| !indices.contains(l)) {
                Some(missing) => Err(PassError::bad_option(
                    PASS,
                    "layers",
                    format!("`{}` has no block {missing}; its blocks are {:?}", stack.name, indices),
                )),
                None => Ok(layers.clone()),
            },
            Choice::Angular { drop, .. } if *drop >= indices.len() => Err(PassError::bad_option(
                PASS,
                "drop",
                format!("`{}` has {} blocks; drop must leave at least one", stack.name, indices.len()),
            )),
            Choice::Angular { drop, calibration } => {
                let distances = block_distances(model, stack, calibration).map_err(|r| {
                    PassError::failed(PASS, format!("measuring the blocks on {}: {r}", calibration.data.display()))
                })?;
                let mut order: Vec<usize> = (0..indices.len()).collect();
                order.sort_by(|&a, &b| distances[a].total_cmp(&distances[b]).then(a.cmp(&b)));
                let removed: BTreeSet<usize> = order[..*drop].iter().map(|&i| indices[i]).collect();
                let shown: Vec<String> = indices.iter().zip(&distances).map(|(i, d)| format!("{i}: {d:.4}")).collect();
                cx.note(format!(
                    "angular distance per block of `{}` ({}): {}; removing {:?}",
                    stack.name,
                    calibration.data.display(),
                    shown.join(", "),
                    removed
                ));
                Ok(removed)
            }
        }
    }

    fn choose<'s>(&self, stacks: &'s [BlockStack]) -> Result<&'s BlockStack, PassError> {
        let names = || stacks.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
        match &self.stack {
            Some(want) => stacks.iter().find(|s| &s.name == want).ok_or_else(|| {
                PassError::bad_option(
                    PASS,
                    "stack",
                    format!("the model has no block stack `{want}`; it has {}", names()),
                )
            }),
            None if stacks.len() == 1 => Ok(&stacks[0]),
            None => Err(PassError::bad_option(
                PASS,
                "stack",
                format!("the model has several block stacks ({}); say which with `stack=`", names()),
            )),
        }
    }
}

impl Pass for PruneLayers {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let stacks = find_block_stacks(&model.graph).map_err(|r| PassError::failed(PASS, r))?;
        let stack = self.choose(&stacks)?;
        let removed = self.removed(model, stack, cx)?;

        // Runs of consecutive removed blocks: (stream in of the first, stream out of the last).
        let mut runs: Vec<(String, String)> = Vec::new();
        let mut previous_removed = false;
        for block in &stack.blocks {
            let gone = removed.contains(&block.index);
            match (gone, previous_removed, runs.last_mut()) {
                (true, true, Some(run)) => run.1 = block.output.clone(),
                (true, _, _) => runs.push((block.input.clone(), block.output.clone())),
                _ => {}
            }
            previous_removed = gone;
        }

        let params_before = params(&model.graph);
        let graph = &mut model.graph;
        for (input, output) in &runs {
            bypass(graph, input, output)?;
        }
        let (nodes_removed, initializers_removed) = remove_dead_code(graph)?;
        note_survivors(graph, &stack.name, &removed, cx);
        drop_stale_adapters(model, cx)?;

        Ok(PassOutcome::changed(true)
            .stat("prune.blocks_removed", removed.len() as i64)
            .stat("prune.nodes_removed", nodes_removed)
            .stat("prune.initializers_removed", initializers_removed)
            .stat("prune.params_before", params_before)
            .stat("prune.params_after", params(&model.graph)))
    }
}

/// Makes every reader of `output` read `input` instead. A graph output keeps its name: the
/// value `input` is renamed to it (or copied by an `Identity` when it cannot be renamed).
fn bypass(graph: &mut Graph, input: &str, output: &str) -> Result<(), PassError> {
    graph.replace_all_uses_with(output, input)?;
    if !graph.is_graph_output(output) {
        return Ok(());
    }
    let (old_producer, slot) = graph
        .producer(output)
        .ok_or_else(|| PassError::failed(PASS, format!("graph output `{output}` has no producer")))?;
    let retired = graph.unique_name(&format!("{output}.pruned"));
    graph.rename_output(old_producer, slot, &retired)?;
    match graph.producer(input) {
        Some((p, s)) if !graph.is_graph_output(input) && !graph.is_graph_input(input) => {
            // The interface entry steps aside while `input` takes over the name.
            let slots: Vec<usize> = (0..graph.outputs.len()).filter(|&i| graph.outputs[i].name == output).collect();
            for &i in &slots {
                graph.outputs[i].name = input.to_string();
            }
            graph.rename_output(p, s, output)?;
            graph.replace_all_uses_with(input, output)?;
            for &i in &slots {
                graph.outputs[i].name = output.to_string();
            }
            graph.value_info.retain(|v| v.name != input);
        }
        _ => {
            let name = graph.unique_name(&format!("{output}/pruned_identity"));
            graph.add_node(
                Node::new(OpKey::onnx("Identity"), vec![input.to_string()], vec![output.to_string()]).named(name),
            )?;
        }
    }
    Ok(())
}

/// Notes the nodes of removed blocks that stay because kept blocks read what they compute.
fn note_survivors(graph: &Graph, stack: &str, removed: &BTreeSet<usize>, cx: &mut PassContext) {
    let survivors: Vec<String> = graph
        .nodes()
        .filter(|(id, _)| node_block(graph, *id).is_some_and(|(s, b)| s == stack && removed.contains(&b)))
        .map(|(_, n)| n.label())
        .collect();
    if !survivors.is_empty() {
        let shown: Vec<&str> = survivors.iter().take(5).map(String::as_str).collect();
        cx.note(format!(
            "{} node(s) of the removed blocks stay because kept blocks read what they compute (shared masks or shapes): {}{}",
            survivors.len(),
            shown.join(", "),
            if survivors.len() > shown.len() { ", …" } else { "" }
        ));
    }
}

/// Drops adapter records whose layer is gone, and trainable names that no longer exist.
fn drop_stale_adapters(model: &mut Model, cx: &mut PassContext) -> Result<(), PassError> {
    let mut state = AdapterState::load(model)?;
    let graph = &model.graph;
    let node_names: BTreeSet<&str> = graph.nodes().map(|(_, n)| n.name.as_str()).collect();
    let before = (state.adapters.len(), state.trainable.len());
    state.adapters.retain(|r| node_names.contains(r.target_node.as_str()));
    state.trainable.retain(|t| graph.initializer(t).is_some() || graph.is_graph_input(t));
    if (state.adapters.len(), state.trainable.len()) != before {
        cx.note(format!(
            "dropped {} adapter record(s) and {} trainable tensor(s) of the removed blocks",
            before.0 - state.adapters.len(),
            before.1 - state.trainable.len()
        ));
        state.store(model);
    }
    Ok(())
}

/// Initializer elements of the graph.
fn params(graph: &Graph) -> i64 {
    graph.initializers().map(|t| t.numel() as i64).sum()
}
