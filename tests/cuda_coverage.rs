//! Which ops of a real training step the CUDA backend would leave to the host — checked here,
//! without a GPU. The training graphs `adaptc train` builds for the two fixture families
//! (BERT classification, Llama causal LM: LoRA, fused attention, bf16 autocast, the optimizer
//! step) may contain only ops the device implements, besides shape arithmetic, which stays on
//! the host by design (a few elements each). An op missing from the device table would run on
//! the host with every step's activations copied both ways: at Llama scale the attention
//! mask's `GatherND` alone moves half a gigabyte per step.

use std::collections::BTreeSet;
use std::path::Path;

use adaptc_ir::Model;
use adaptc_passes::{PassManager, Registry};

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
