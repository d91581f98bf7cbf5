//! `autocast{dtype=bf16}` on the BERT and Llama fixtures: every product runs in bf16, frozen
//! weights are stored in bf16 while adapters stay f32, and the forward outputs, the loss and
//! every gradient of the training graph stay within bf16 tolerance of the f32 model's.

use std::collections::HashMap;

use adaptc_ir::{DataType, Model};
use adaptc_passes::{PassContext, PassManager, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};

mod common;

use common::{fixture, rewrite, token_ids as ids};

fn bert_inputs(b: usize, s: usize) -> HashMap<String, Tensor> {
    HashMap::from([
        ("input_ids".to_string(), ids(b, s, 100)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).unwrap()),
    ])
}

fn run(m: &Model, inputs: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    Session::new(m, SessionOptions::default()).unwrap().run(inputs.clone()).unwrap()
}

/// ‖a − b‖ / ‖b‖ over f32 tensors.
fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Every output of `low` (f32, same names as `full`) within `tol` relative L2 of `full`'s, and
/// not bit-identical to it (the products really ran in bf16); returns the largest error.
fn close_not_equal(low: &[(String, Tensor)], full: &[(String, Tensor)], tol: f64) -> f64 {
    assert_eq!(low.len(), full.len());
    let mut worst = 0f64;
    let mut identical = true;
    for ((nl, tl), (nf, tf)) in low.iter().zip(full) {
        assert_eq!(nl, nf);
        assert_eq!(tl.dtype(), DataType::Float, "{nl} is {}", tl.dtype());
        let e = rel_l2(tl, tf);
        assert!(e <= tol, "{nl}: relative error {e:.2e} > {tol:.0e}");
        identical &= tl.as_slice::<f32>() == tf.as_slice::<f32>();
        worst = worst.max(e);
    }
    assert!(!identical, "the bf16 graph computed exactly the f32 values");
    worst
}

#[test]
fn bert_forward_runs_in_bf16_with_f32_adapters() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let (full, _) = rewrite(fixture("bert6.onnx"), adapt);
    let (low, report) = rewrite(fixture("bert6.onnx"), &format!("{adapt},autocast{{dtype=bf16}}"));
    let products = full.graph.nodes().filter(|(_, n)| n.op().is("MatMul") || n.op().is("Gemm")).count() as i64;
    assert_eq!(report.stat("autocast.products").unwrap(), products);
    assert_eq!(report.stat("autocast.skipped").unwrap(), 0);
    assert!(report.stat("autocast.weights").unwrap() > 0);
    for t in low.graph.initializers() {
        let trainable = t.metadata.get("adaptc.trainable") == Some("true");
        if trainable {
            assert_eq!(t.dtype(), DataType::Float, "trainable {} must stay an f32 master", t.name);
        }
        if t.name.ends_with("attention.self.key.weight") {
            assert_eq!(t.dtype(), DataType::BFloat16, "frozen {} read only by a product", t.name);
        }
    }
    adaptc_ir::verify(&low.graph).unwrap();
    let inputs = bert_inputs(3, 16);
    let worst = close_not_equal(&run(&low, &inputs), &run(&full, &inputs), 2e-2);
    println!("bert6 forward, bf16 vs f32: worst relative L2 {worst:.2e}");
}

#[test]
fn bert_training_graph_in_bf16_matches_f32_loss_and_gradients() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let loss = "build-training-graph{loss=cross-entropy}";
    let (full, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},{loss}"));
    let (low, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},autocast,{loss}"));
    let mut inputs = bert_inputs(4, 32);
    inputs.insert("labels".into(), Tensor::from_vec(vec![4], vec![0i64, 2, 1, 2]).unwrap());
    let worst = close_not_equal(&run(&low, &inputs), &run(&full, &inputs), 5e-2);
    println!("bert6 training graph, bf16 vs f32: worst relative L2 {worst:.2e}");
}

#[test]
fn llama_training_graph_in_bf16_matches_f32_loss_and_gradients() {
    let adapt = "insert-lora{rank=8 alpha=16 targets=all-linear}";
    let loss = "build-training-graph{loss=causal-lm}";
    let (full, _) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},{loss}"));
    let (low, report) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},autocast,{loss}"));
    assert_eq!(report.stat("autocast.skipped").unwrap(), 0);
    let (b, s) = (2, 24);
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 1000)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
    ]);
    let worst = close_not_equal(&run(&low, &inputs), &run(&full, &inputs), 5e-2);
    println!("llama4 training graph, bf16 vs f32: worst relative L2 {worst:.2e}");
}

#[test]
fn an_old_opset_is_refused_and_nothing_changes() {
    let mut model = fixture("bert6.onnx");
    for o in model.opset_imports.iter_mut().filter(|o| adaptc_ir::is_default_domain(&o.domain)) {
        o.version = 12;
    }
    let before = adaptc_ir::dump(&model);
    let pass = Registry::builtin().build(&adaptc_passes::Pipeline::parse("autocast").unwrap().passes[0]).unwrap();
    let err = pass.run(&mut model, &mut PassContext::default()).unwrap_err();
    assert!(err.to_string().contains("opset 12"), "{err}");
    assert_eq!(adaptc_ir::dump(&model), before);
}

#[test]
fn f16_is_not_offered() {
    let err = PassManager::new(&Registry::builtin(), "autocast{dtype=f16}").err().unwrap();
    assert!(err.to_string().contains("bf16"), "{err}");
}

#[test]
fn fused_attention_is_marked_for_bf16_products_and_its_gradient_inherits_it() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let loss = "build-training-graph{loss=cross-entropy}";
    let (full, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},fuse-attention,{loss}"));
    let (low, report) = rewrite(fixture("bert6.onnx"), &format!("{adapt},fuse-attention,autocast,{loss}"));
    let count = |m: &Model, op: &str| {
        m.graph
            .nodes()
            .filter(|(_, n)| n.op().op_type == op && n.attr("products").and_then(|a| a.as_str()) == Some("bf16"))
            .count()
    };
    let layers = full.graph.nodes().filter(|(_, n)| n.op().op_type == "SoftmaxAttention").count();
    assert!(layers >= 2);
    assert_eq!(report.stat("autocast.attention").unwrap(), layers as i64);
    assert_eq!(count(&low, "SoftmaxAttention"), layers);
    assert_eq!(count(&low, "SoftmaxAttentionGrad"), layers);
    assert_eq!(count(&full, "SoftmaxAttention"), 0);
    let mut inputs = bert_inputs(4, 32);
    inputs.insert("labels".into(), Tensor::from_vec(vec![4], vec![0i64, 2, 1, 2]).unwrap());
    let worst = close_not_equal(&run(&low, &inputs), &run(&full, &inputs), 5e-2);
    println!("bert6 fused training graph, bf16 (attention products too) vs f32: worst relative L2 {worst:.2e}");
}

/// Runs `m` on `inputs`: its outputs and the plan's peak of live bytes.
fn run_peak(m: &Model, inputs: &HashMap<String, Tensor>) -> (Vec<(String, Tensor)>, usize) {
    let (out, stats) = Session::new(m, SessionOptions::default()).unwrap().run_with_stats(inputs.clone()).unwrap();
    (out, stats.peak_bytes)
}

/// `activations=bf16` on the Llama training graph (`adaptc train --autocast bf16-activations`'s
/// pipeline): activations are rounded where they are written and layout ops move bf16
/// values, the loss and every gradient stay within bf16 tolerance of the f32 model's and
/// differ from products-only autocast's, and the plan's peak of live bytes drops.
#[test]
fn llama_training_graph_with_bf16_activations_stays_close_with_less_memory() {
    let adapt = "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention";
    let loss = "build-training-graph{loss=causal-lm}";
    let (full, _) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},{loss}"));
    let (products, _) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},autocast,{loss}"));
    let (low, report) = rewrite(fixture("llama4/model.onnx"), &format!("{adapt},autocast{{activations=bf16}},{loss}"));
    assert!(report.stat("autocast.activations").unwrap() > 0);
    assert!(report.stat("autocast.layout").unwrap() > 0);
    adaptc_ir::verify(&low.graph).unwrap();
    let (b, s) = (2, 24);
    let mut mask = vec![1i64; b * s];
    mask[s - 3..s].fill(0);
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 1000)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], mask).unwrap()),
    ]);
    let (out_full, _) = run_peak(&full, &inputs);
    let (out_products, peak_products) = run_peak(&products, &inputs);
    let (out_low, peak_low) = run_peak(&low, &inputs);
    let worst = close_not_equal(&out_low, &out_full, 5e-2);
    close_not_equal(&out_low, &out_products, 5e-2);
    println!("llama4 training graph, bf16 activations vs f32: worst relative L2 {worst:.2e}; peak {peak_products} → {peak_low} bytes");
    assert!(peak_low * 10 < peak_products * 9, "peak {peak_low} with bf16 activations vs {peak_products}");
}

/// BERT's attention is not fused: its additive mask (large negatives) and what adds it to the
/// scores stay f32, so padded positions stay finite and the loss and gradients stay close.
#[test]
fn bert_training_graph_with_bf16_activations_keeps_masks_f32() {
    let adapt = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value}";
    let loss = "build-training-graph{loss=cross-entropy}";
    let (full, _) = rewrite(fixture("bert6.onnx"), &format!("{adapt},{loss}"));
    let (low, report) = rewrite(fixture("bert6.onnx"), &format!("{adapt},autocast{{activations=bf16}},{loss}"));
    assert!(report.stat("autocast.activations").unwrap() > 0);
    let mut inputs = bert_inputs(4, 32);
    let mut mask = vec![1i64; 4 * 32];
    mask[20..32].fill(0);
    inputs.insert("attention_mask".into(), Tensor::from_vec(vec![4, 32], mask).unwrap());
    inputs.insert("labels".into(), Tensor::from_vec(vec![4], vec![0i64, 2, 1, 2]).unwrap());
    let worst = close_not_equal(&run(&low, &inputs), &run(&full, &inputs), 5e-2);
    println!("bert6 training graph, bf16 activations vs f32: worst relative L2 {worst:.2e}");
}
