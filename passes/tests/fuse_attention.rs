//! `fuse-attention` on the BERT and Llama fixtures: every layer's attention core becomes one
//! `SoftmaxAttention`, the forward outputs and the training graph's loss and gradients stay
//! those of the unfused model (float rounding apart), the activation peak drops, and
//! attention whose probabilities are read elsewhere is left alone with a note.

use std::collections::HashMap;

use adaptc_ir::{Model, ValueInfo};
use adaptc_passes::{PassContext, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};

mod common;

use common::{fixture, rewrite, token_ids as ids};

/// A mask with the last `pad` positions of row 0 padded.
fn mask(b: usize, s: usize, pad: usize) -> Tensor {
    let v: Vec<i64> = (0..b * s).map(|k| i64::from(!(k / s == 0 && k % s >= s - pad))).collect();
    Tensor::from_vec(vec![b, s], v).unwrap()
}

fn bert_inputs(b: usize, s: usize) -> HashMap<String, Tensor> {
    HashMap::from([
        ("input_ids".to_string(), ids(b, s, 100)),
        ("attention_mask".to_string(), mask(b, s, 5)),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).unwrap()),
    ])
}

/// Runs both models: every output within `tol` (relative to the tensor's scale); returns the
/// activation peaks (unfused, fused).
fn same_outputs(full: &Model, fused: &Model, inputs: &HashMap<String, Tensor>, tol: f32) -> (usize, usize) {
    let run = |m: &Model| Session::new(m, SessionOptions::default()).unwrap().run_with_stats(inputs.clone()).unwrap();
    let ((a, sa), (b, sb)) = (run(full), run(fused));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let (x, y) = (ta.as_slice::<f32>().unwrap(), tb.as_slice::<f32>().unwrap());
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (k, (p, q)) in x.iter().zip(y).enumerate() {
            assert!((p - q).abs() <= tol * scale, "{na}[{k}]: {p} vs {q} (scale {scale})");
        }
    }
    (sa.peak_bytes, sb.peak_bytes)
}

fn fused_count(m: &Model) -> usize {
    m.graph.nodes().filter(|(_, n)| n.op().op_type == "SoftmaxAttention").count()
}

#[test]
fn bert_forward_is_unchanged() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let (full, _) = rewrite(fixture("bert6.onnx"), adapt);
    let (fused, report) = rewrite(fixture("bert6.onnx"), &format!("{adapt},fuse-attention,dce"));
    let layers = full.graph.nodes().filter(|(_, n)| n.op().is("Softmax")).count();
    assert!(layers >= 2);
    assert_eq!(report.stat("fuse_attention.fused").unwrap(), layers as i64);
    assert_eq!(fused_count(&fused), layers);
    assert!(!fused.graph.nodes().any(|(_, n)| n.op().is("Softmax") || n.op().is("IsNaN")));
    same_outputs(&full, &fused, &bert_inputs(3, 20), 1e-5);
}

#[test]
fn bert_training_graph_keeps_loss_and_gradients_with_less_memory() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let loss = "build-training-graph{loss=cross-entropy}";
    let (full, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},{loss}"));
    let (fused, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},fuse-attention,{loss}"));
    assert!(fused.graph.nodes().any(|(_, n)| n.op().op_type == "SoftmaxAttentionGrad"));
    let mut inputs = bert_inputs(4, 96);
    inputs.insert("labels".into(), Tensor::from_vec(vec![4], vec![0i64, 2, 1, 2]).unwrap());
    let (before, after) = same_outputs(&full, &fused, &inputs, 1e-4);
    assert!(after < before, "peak {after} fused vs {before} unfused");
    println!("bert6 training graph, seq 96: peak activations {before} → {after} bytes");
}

#[test]
fn llama_training_graph_keeps_loss_and_gradients_with_less_memory() {
    let adapt = "insert-lora{rank=8 alpha=16 targets=all-linear}";
    let loss = "build-training-graph{loss=causal-lm}";
    let (full, _) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},{loss}"));
    let (fused, report) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},fuse-attention,{loss}"));
    assert!(report.stat("fuse_attention.fused").unwrap() >= 2);
    let (b, s) = (2, 64);
    let inputs =
        HashMap::from([("input_ids".to_string(), ids(b, s, 1000)), ("attention_mask".to_string(), mask(b, s, 7))]);
    let (before, after) = same_outputs(&full, &fused, &inputs, 1e-4);
    assert!(after < before, "peak {after} fused vs {before} unfused");
    println!("llama4 training graph, seq 64: peak activations {before} → {after} bytes");
}

#[test]
fn attention_whose_probabilities_are_read_elsewhere_is_left_alone() {
    let mut model = fixture("bert6.onnx");
    let softmax =
        model.graph.nodes().find(|(_, n)| n.op().is("Softmax")).map(|(_, n)| n.output(0).unwrap().to_string());
    model.graph.outputs.push(ValueInfo::new(softmax.unwrap(), None));
    let layers = model.graph.nodes().filter(|(_, n)| n.op().is("Softmax")).count();
    let pass = Registry::builtin().build(&adaptc_passes::Pipeline::parse("fuse-attention").unwrap().passes[0]).unwrap();
    let mut cx = PassContext::default();
    pass.run(&mut model, &mut cx).unwrap();
    assert_eq!(fused_count(&model), layers - 1);
    assert!(cx.notes.iter().any(|n| n.contains("unfused")), "{:?}", cx.notes);
}
