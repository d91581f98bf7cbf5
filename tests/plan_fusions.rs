//! The plan's fusions are exact, on a real training graph: a Llama LoRA step with fused
//! attention and activations stored in bf16 (`adaptc train --autocast bf16-activations`) gives
//! the node-by-node plan's loss and gradients bit for bit, while its loss and attention read
//! the bf16 values as stored (no widening casts before them, no narrowing casts after their
//! gradients).

use std::collections::HashMap;
use std::path::Path;

use adaptc_ir::Model;
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};

fn training_graph(pipeline: &str) -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama4/model.onnx");
    let mut model = adaptc_ir::onnx::load(&path).unwrap();
    PassManager::new(&Registry::builtin(), pipeline).unwrap().run(&mut model).unwrap();
    model
}

/// Two rows of 24 tokens, the second padded for its last 5.
fn inputs(model: &Model) -> HashMap<String, Tensor> {
    let (b, s) = (2, 24);
    let mut seed = 11u64;
    let ids: Vec<i64> = (0..b * s)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) % 200) as i64
        })
        .collect();
    let mask: Vec<i64> = (0..b * s).map(|k| i64::from(k < s || k % s < s - 5)).collect();
    let pos: Vec<i64> = (0..b * s).map(|k| (k % s) as i64).collect();
    let all = [("input_ids", ids), ("attention_mask", mask), ("position_ids", pos)];
    let declared: Vec<&str> = model.graph.inputs.iter().map(|v| v.name.as_str()).collect();
    all.into_iter()
        .filter(|(n, _)| declared.contains(n))
        .map(|(n, v)| (n.to_string(), Tensor::from_vec(vec![b, s], v).unwrap()))
        .collect()
}

/// The op of the instruction that writes each buffer.
fn producers(s: &Session) -> HashMap<usize, String> {
    let mut m = HashMap::new();
    for ins in &s.plan().instructions {
        for b in ins.outputs.iter().flatten() {
            m.insert(*b, ins.node.op().to_string());
        }
    }
    m
}

#[test]
fn a_bf16_llama_step_is_the_same_fused_and_node_by_node() {
    let model = training_graph(
        "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16 activations=bf16},\
         build-training-graph{loss=causal-lm}",
    );
    let feeds = inputs(&model);
    let fused = Session::new(&model, SessionOptions::default()).unwrap();
    let plain = Session::new(&model, SessionOptions { unfused: true, ..Default::default() }).unwrap();

    // The fused plan: the loss and attention read their bf16 operands as stored.
    let made_by = producers(&fused);
    let ops: Vec<String> = fused.plan().instructions.iter().map(|i| i.node.op().to_string()).collect();
    assert!(ops.iter().any(|o| o == "ai.adaptc::SoftmaxCrossEntropyLoss"), "{ops:?}");
    let mut attention = 0;
    for ins in &fused.plan().instructions {
        let op = ins.node.op().to_string();
        let slots: &[usize] = match op.as_str() {
            "ai.adaptc::SoftmaxAttention" => &[0, 1, 3],
            "ai.adaptc::SoftmaxAttentionGrad" => &[0, 1, 3, 6],
            _ => continue,
        };
        attention += 1;
        for &k in slots {
            let b = ins.inputs[k].expect("an operand");
            assert_ne!(
                made_by.get(&b).map(String::as_str),
                Some("Cast"),
                "{} operand {k} is widened",
                ins.node.label()
            );
        }
    }
    assert_eq!(attention, 8, "four layers' attention and gradients");
    // Attention's f32 output is rounded before it is transposed back for the output projection.
    let outputs: Vec<usize> = fused
        .plan()
        .instructions
        .iter()
        .filter(|i| i.node.op().op_type == "SoftmaxAttention")
        .filter_map(|i| i.outputs[0])
        .collect();
    for ins in fused.plan().instructions.iter().filter(|i| i.node.op().is("Transpose")) {
        let reads_attention = ins.inputs.iter().flatten().any(|b| outputs.contains(b));
        assert!(!reads_attention, "{} transposes attention's f32 output", ins.node.label());
    }
    // Grouped-query attention's repeated keys and values are repeated in bf16, as stored.
    let expands: Vec<&adaptc_runtime::plan::Instruction> =
        fused.plan().instructions.iter().filter(|i| i.node.op().is("Expand")).collect();
    assert!(!expands.is_empty());
    for ins in expands {
        let x = ins.inputs[0].expect("an operand");
        assert_ne!(made_by.get(&x).map(String::as_str), Some("Cast"), "{} repeats a widened value", ins.node.label());
    }

    let (a, b) = (fused.run(feeds.clone()).unwrap(), plain.run(feeds).unwrap());
    assert_eq!(a.len(), b.len());
    let bits = |t: &Tensor| t.to_le_bytes();
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}");
        assert!(bits(x) == bits(y), "{name} differs between the fused and the node-by-node plan");
    }
    let loss = a.iter().find(|(n, _)| n == "loss").and_then(|(_, t)| t.as_slice::<f32>().map(|v| v[0]));
    assert!(loss.is_some_and(|l| l.is_finite() && l > 0.0), "loss {loss:?}");
}
