//! Which ops of a real training step the CUDA backend would leave to the host — checked here,
//! without a GPU. The training graphs `adaptc train` builds for the two fixture families
//! (BERT classification, Llama causal LM: LoRA, fused attention, bf16 autocast, the optimizer
//! step) may contain only ops the device implements, besides shape arithmetic, which stays on
//! the host by design (a few elements each). An op missing from the device table would run on
//! the host with every step's activations copied both ways: at Llama scale the attention
//! mask's `GatherND` alone moves half a gigabyte per step.
//!
//! The same graphs can be captured as CUDA graphs (`--cuda-graphs`): no host computation reads
//! the step's data. A capture refuses a host read of a device value (a replay would repeat
//! it), so the step's inputs, state and everything computed from them must reach only device
//! kernels, and only in the slots those kernels read on the device: a shape, an axis list or
//! a bound is read on the host.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use adaptc_ir::Model;

#[path = "support/training_plans.rs"]
mod training_plans;
use adaptc_passes::{PassManager, Registry};
use training_plans::TRAINING_PLANS;

/// Ops that only ever see shapes and small index vectors in these graphs.
const SHAPE_ARITHMETIC: &[&str] = &["Shape", "Size", "Constant", "ConstantOfShape", "Range"];

fn training_graph(fixture: &str, pipeline: &str) -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(fixture);
    let mut model = adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    PassManager::new(&Registry::builtin(), pipeline).unwrap().run(&mut model).unwrap();
    model
}

fn host_ops(model: &Model) -> BTreeSet<String> {
    let device: BTreeSet<String> = adaptc_runtime::cuda::covered_ops().into_iter().collect();
    model
        .graph
        .nodes()
        .map(|(_, n)| {
            let op = n.op();
            if adaptc_ir::is_default_domain(&op.domain) {
                op.op_type.clone()
            } else {
                format!("{}::{}", op.domain, op.op_type)
            }
        })
        .filter(|op| !device.contains(op) && !SHAPE_ARITHMETIC.contains(&op.as_str()))
        .collect()
}

#[test]
fn a_llama_lora_training_step_has_a_device_kernel_for_every_op() {
    let model = training_graph(
        "llama4/model.onnx",
        "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16},\
         build-training-graph{loss=causal-lm},append-adamw{max_norm=1.0}",
    );
    let missing = host_ops(&model);
    assert!(missing.is_empty(), "ops the device lacks: {missing:?}");
}

#[test]
fn a_bert_lora_classification_step_has_a_device_kernel_for_every_op() {
    let model = training_graph(
        "bert6.onnx",
        "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},\
         fuse-attention,build-training-graph{loss=cross-entropy},append-adamw{max_norm=1.0}",
    );
    let missing = host_ops(&model);
    assert!(missing.is_empty(), "ops the device lacks: {missing:?}");
}

/// The first input slot from which each device kernel reads its inputs on the host (shapes,
/// starts and ends, axes, bounds: `host_ints` and `cpu_shape` in `runtime/src/cuda/ops`), and
/// the ops that run on the host whatever their inputs.
fn host_read_from(op: &str) -> Option<usize> {
    Some(match op {
        "Constant" | "ConstantOfShape" | "Range" => 0,
        "Reshape"
        | "Expand"
        | "Slice"
        | "Split"
        | "Unsqueeze"
        | "Squeeze"
        | "Flatten"
        | "Clip"
        | "Tile"
        | "Pad"
        | "ai.adaptc::IsNaNWhere"
        | "ai.adaptc::SumToShape"
        | "ai.adaptc::ReduceGrad" => 1,
        op if op.starts_with("Reduce") => 1,
        // The forward's shape, then its integer inputs (indices, starts); its float inputs
        // matter only by shape.
        "ai.adaptc::IndexMapGrad" => 1,
        _ => return None,
    })
}

/// Reads of values computed from the graph's inputs (the batch, the carried state) that the
/// device would make on the host: `op[slot] value`.
fn host_reads_of_step_data(model: &Model) -> Vec<String> {
    let g = &model.graph;
    let types = adaptc_passes::lower::elem_types::elem_types(g).unwrap();
    let float = |v: &str| types.get(v).is_some_and(|t| t.is_float());
    let mut data: HashSet<&str> = g.inputs.iter().map(|v| v.name.as_str()).collect();
    let mut reads = Vec::new();
    for id in g.topo_order().unwrap() {
        let n = g.node(id);
        let op = n.op();
        let op = if adaptc_ir::is_default_domain(&op.domain) {
            op.op_type.clone()
        } else {
            format!("{}::{}", op.domain, op.op_type)
        };
        // A Shape reads dims, which do not change from one replay to the next.
        if op == "Shape" || op == "Size" {
            continue;
        }
        let mut reads_data = false;
        for (slot, input) in n.inputs().iter().enumerate() {
            if data.contains(input.as_str()) {
                reads_data = true;
                let shape_only = op == "ai.adaptc::IndexMapGrad" && slot >= 2 && float(input);
                if host_read_from(&op).is_some_and(|from| slot >= from) && !shape_only {
                    reads.push(format!("{op}[{slot}] {input}"));
                }
            }
        }
        if reads_data {
            data.extend(n.outputs().iter().map(String::as_str));
        }
    }
    reads
}

#[test]
fn llama_and_bert_training_steps_can_be_captured_as_cuda_graphs() {
    for (fixture, pipeline) in TRAINING_PLANS {
        let model = training_graph(fixture, pipeline);
        let reads = host_reads_of_step_data(&model);
        assert!(reads.is_empty(), "{fixture}: host reads of the step's data: {reads:?}");
    }
}

/// The check finds what it looks for: a Reshape whose shape comes from the batch's values.
#[test]
fn a_shape_computed_from_the_batch_blocks_capture() {
    use adaptc_ir::{DataType, Dim, Graph, Node, OpKey, ValueInfo};
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(6)]));
    g.inputs.push(ValueInfo::tensor("dims", DataType::Int64, vec![Dim::Known(2)]));
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Unknown, Dim::Unknown]));
    g.add_node(Node::new(OpKey::onnx("Abs"), vec!["dims".into()], vec!["d".into()]).named("abs")).unwrap();
    g.add_node(Node::new(OpKey::onnx("Reshape"), vec!["x".into(), "d".into()], vec!["y".into()]).named("r")).unwrap();
    assert_eq!(host_reads_of_step_data(&Model::new(g, 21)), vec!["Reshape[1] d".to_string()]);
}
