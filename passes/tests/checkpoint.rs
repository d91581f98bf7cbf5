//! `checkpoint-activations` on the training graphs of the BERT and Llama fixtures: the same
//! loss and gradients as without it (the recomputation is the same ops on the same inputs),
//! a lower peak of live activations, and a clear refusal on a graph with no backward.

use std::collections::HashMap;

use adaptc_ir::Model;
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};

mod common;

use common::{fixture, rewrite, token_ids as ids};

/// Runs both graphs on `inputs`: every output equal, and the checkpointed peak lower.
fn same_outputs_less_memory(plain: &Model, checkpointed: &Model, inputs: HashMap<String, Tensor>) -> (usize, usize) {
    let run = |m: &Model| Session::new(m, SessionOptions::default()).unwrap().run_with_stats(inputs.clone()).unwrap();
    let ((a, sa), (b, sb)) = (run(plain), run(checkpointed));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let (x, y) = (ta.as_slice::<f32>().unwrap(), tb.as_slice::<f32>().unwrap());
        for (k, (p, q)) in x.iter().zip(y).enumerate() {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1e-3), "{na}[{k}]: {p} vs {q}");
        }
    }
    assert!(sb.peak_bytes < sa.peak_bytes, "peak {} with checkpointing vs {} without", sb.peak_bytes, sa.peak_bytes);
    (sa.peak_bytes, sb.peak_bytes)
}

#[test]
fn bert_training_graph_keeps_its_values_with_less_memory() {
    let base = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},build-training-graph{loss=cross-entropy}";
    let (plain, _) = rewrite(fixture("bert6.onnx"), base);
    let (ckpt, report) = rewrite(fixture("bert6.onnx"), &format!("{base},checkpoint-activations"));
    let stats = &report.runs.last().unwrap().stats;
    let stat = |k: &str| stats.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap();
    assert!(stat("checkpoint.blocks") >= 2 && stat("checkpoint.values") > 0, "{stats:?}");
    let (b, s) = (4, 32);
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 100)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).unwrap()),
        ("labels".to_string(), Tensor::from_vec(vec![b], vec![0i64, 2, 1, 2]).unwrap()),
    ]);
    let (before, after) = same_outputs_less_memory(&plain, &ckpt, inputs);
    println!("bert6 peak activations: {before} → {after} bytes");
}

#[test]
fn llama_training_graph_keeps_its_values_with_less_memory() {
    let base = "insert-lora{rank=8 alpha=16 targets=all-linear},build-training-graph{loss=causal-lm}";
    let (plain, _) = rewrite(fixture("llama4/model.onnx"), base);
    let (ckpt, _) = rewrite(fixture("llama4/model.onnx"), &format!("{base},checkpoint-activations"));
    let (b, s) = (2, 24);
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 1000)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
    ]);
    let (before, after) = same_outputs_less_memory(&plain, &ckpt, inputs);
    println!("llama4 peak activations: {before} → {after} bytes");
}

/// `adaptc train`'s own pipeline on Llama (LoRA on all linear layers, fused attention, bf16
/// autocast): the nodes other passes wrote without a module path — LoRA's products and add,
/// autocast's casts, the fused attention — belong to their layer's block and are recomputed
/// with it, rather than keeping their outputs alive from the forward to the backward.
#[test]
fn adapter_cast_and_attention_nodes_are_recomputed_with_their_block() {
    let base = "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16},build-training-graph{loss=causal-lm}";
    let (plain, _) = rewrite(fixture("llama4/model.onnx"), base);
    let (ckpt, _) = rewrite(fixture("llama4/model.onnx"), &format!("{base},checkpoint-activations"));
    let recomputed: Vec<&str> =
        ckpt.graph.nodes().map(|(_, n)| n.name.as_str()).filter(|n| n.starts_with("recompute/")).collect();
    for part in ["/lora_add/", "/lora_B/", "/f32/Cast", "SoftmaxAttention"] {
        assert!(recomputed.iter().any(|n| n.contains(part)), "no recomputed node named like {part}: {recomputed:?}");
    }
    let (b, s) = (2, 24);
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 1000)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
    ]);
    let (before, after) = same_outputs_less_memory(&plain, &ckpt, inputs);
    println!("llama4 (autocast, fused attention) peak activations: {before} → {after} bytes");
}

#[test]
fn a_graph_without_backward_is_refused() {
    let mut model = fixture("bert6.onnx");
    let err = PassManager::new(&Registry::builtin(), "checkpoint-activations").unwrap().run(&mut model).unwrap_err();
    assert!(err.to_string().contains("run build-training-graph first"), "{err}");
}
