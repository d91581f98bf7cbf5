//! The optimizer step inside the training graph (`append-adamw`, weights and moments carried
//! by the session) against the host optimizer on the same graph: the same weights, moments,
//! losses and gradient norms, bit for bit, over several clipped steps on the CPU backend.

use std::collections::HashMap;
use std::path::Path;

use adaptc_ir::Model;
use adaptc_passes::adapters::record::AdapterState;
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::{SessionOptions, Tensor};
use adaptc_train::step::Stepper;
use adaptc_train::{AdamW, AdamWConfig};

fn training_graph() -> (Model, Vec<(String, Tensor)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/bert6.onnx");
    let mut model = adaptc_ir::onnx::load(&path).unwrap();
    let pipeline = "add-head{kind=classification labels=3},insert-lora{rank=4 alpha=8 targets=query,value},\
                    build-training-graph{loss=cross-entropy}";
    PassManager::new(&Registry::builtin(), pipeline).unwrap().run(&mut model).unwrap();
    let trainable = AdapterState::load(&model).unwrap().trainable;
    let params = trainable
        .iter()
        .map(|n| {
            let t = Tensor::from_ir(model.graph.initializer(n).unwrap()).unwrap();
            // LoRA's B starts at zero; give every weight values so that both factors move.
            let v: Vec<f32> = (0..t.numel()).map(|k| ((k * 37 % 101) as f32 - 50.0) * 1e-3).collect();
            (n.clone(), Tensor::from_vec(t.shape().to_vec(), v).unwrap())
        })
        .collect();
    (model, params)
}

fn batch(step: usize) -> HashMap<String, Tensor> {
    let (b, s) = (3, 12);
    let ids: Vec<i64> = (0..b * s).map(|k| ((k * 31 + step * 7) % 90 + 5) as i64).collect();
    HashMap::from([
        ("input_ids".to_string(), Tensor::from_vec(vec![b, s], ids).unwrap()),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).unwrap()),
        ("labels".to_string(), Tensor::from_vec(vec![b], vec![(step % 3) as i64, 2, 0]).unwrap()),
    ])
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.as_slice::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// The weights, the optimizer, and each step's (loss, grad norm) after a run.
type Trained = (Vec<(String, Tensor)>, AdamW, Vec<(f64, f32)>);

/// Runs `steps` steps with a fresh optimizer.
fn train(in_graph: bool, steps: usize, max_norm: Option<f32>) -> Trained {
    let (model, mut params) = training_graph();
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let mut opt = AdamW::new(cfg, params.iter().map(|(n, t)| (n.as_str(), t.numel()))).unwrap();
    // More than one micro-batch per step selects the host optimizer; one batch in a call is
    // the same step either way.
    let accum = if in_graph { 1 } else { 2 };
    let stepper = Stepper::new(model, SessionOptions::default(), &params, accum, max_norm).unwrap();
    assert_eq!(matches!(stepper, Stepper::InGraph(_)), in_graph);
    stepper.load(&params, &opt).unwrap();
    let mut trace = Vec::new();
    for s in 0..steps {
        let lr = 1e-2 * (s + 1) as f32;
        let out = stepper.step(vec![batch(s)], lr, &mut params, &mut opt, max_norm, s as u64 + 1).unwrap();
        trace.push((out.loss, out.grad_norm));
    }
    stepper.sync(&mut params, &mut opt).unwrap();
    (params, opt, trace)
}

#[test]
fn in_graph_adamw_matches_the_host_optimizer_bit_for_bit() {
    // A clip norm well below the gradients' so that every step is clipped.
    let max_norm = Some(1e-3);
    let (host_params, host_opt, host_trace) = train(false, 4, max_norm);
    let (graph_params, graph_opt, graph_trace) = train(true, 4, max_norm);
    assert!(host_trace.iter().all(|(_, n)| *n > 1e-2), "the clip must act: {host_trace:?}");
    assert_eq!(host_trace, graph_trace);
    assert_eq!(host_opt.step_count(), graph_opt.step_count());
    for ((name, h), (_, g)) in host_params.iter().zip(&graph_params) {
        assert_eq!(bits(h), bits(g), "weights of `{name}`");
    }
    for (h, g) in host_opt.moments().iter().zip(graph_opt.moments()) {
        assert_eq!(h.m, g.m, "first moment of `{}`", h.name);
        assert_eq!(h.v, g.v, "second moment of `{}`", h.name);
    }
    // And the weights did move.
    let (_, start) = training_graph();
    assert!(start.iter().zip(&graph_params).any(|((_, a), (_, b))| bits(a) != bits(b)));
    println!("4 clipped steps: losses {:?}", graph_trace.iter().map(|t| t.0).collect::<Vec<_>>());
}

#[test]
fn unclipped_steps_also_match() {
    let (host_params, _, host_trace) = train(false, 2, None);
    let (graph_params, _, graph_trace) = train(true, 2, None);
    assert_eq!(host_trace, graph_trace);
    for ((name, h), (_, g)) in host_params.iter().zip(&graph_params) {
        assert_eq!(bits(h), bits(g), "weights of `{name}`");
    }
}

#[test]
fn accumulating_two_copies_of_a_batch_is_one_step_on_it() {
    // (g + g) · ½ = g exactly in f32, so the host path's accumulation over two identical
    // micro-batches must give the in-graph step's weights, moments and loss bit for bit.
    let max_norm = Some(1e-3);
    let (graph_params, graph_opt, graph_trace) = train(true, 2, max_norm);
    let (model, mut params) = training_graph();
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let mut opt = AdamW::new(cfg, params.iter().map(|(n, t)| (n.as_str(), t.numel()))).unwrap();
    let stepper = Stepper::new(model, SessionOptions::default(), &params, 2, max_norm).unwrap();
    let mut trace = Vec::new();
    for s in 0..2 {
        let lr = 1e-2 * (s + 1) as f32;
        let out = stepper.step(vec![batch(s), batch(s)], lr, &mut params, &mut opt, max_norm, s as u64 + 1).unwrap();
        trace.push((out.loss, out.grad_norm));
    }
    assert_eq!(trace, graph_trace);
    for ((name, h), (_, g)) in params.iter().zip(&graph_params) {
        assert_eq!(bits(h), bits(g), "weights of `{name}`");
    }
    assert_eq!(opt.moments(), graph_opt.moments());
}
