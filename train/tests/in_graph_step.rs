//! The optimizer step inside the training graph (`append-adamw`, weights, moments and gradient
//! sums carried by the session) against the host optimizer (`AdamW`, `clip_grad_norm_tensors`)
//! fed with the same graph's gradients: the same weights, moments, losses and gradient norms,
//! bit for bit, over several clipped steps on the CPU backend, with and without accumulation.

use std::collections::HashMap;
use std::path::Path;

use adaptc_ir::Model;
use adaptc_passes::adapters::record::AdapterState;
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};
use adaptc_train::step::Stepper;
use adaptc_train::{clip_grad_norm_tensors, AdamW, AdamWConfig};

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

fn optimizer(params: &[(String, Tensor)]) -> AdamW {
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    AdamW::new(cfg, params.iter().map(|(n, t)| (n.as_str(), t.numel()))).unwrap()
}

/// Micro-batch `i` of step `s`.
fn micro(s: usize, i: usize) -> HashMap<String, Tensor> {
    batch(s * 7 + i)
}

fn lr(s: usize) -> f32 {
    1e-2 * (s + 1) as f32
}

/// `steps` steps of `accumulate` micro-batches, in the graph.
fn in_graph(steps: usize, accumulate: usize, max_norm: Option<f32>) -> Trained {
    let (model, mut params) = training_graph();
    let mut opt = optimizer(&params);
    let stepper = Stepper::new(model, SessionOptions::default(), &params, accumulate, max_norm).unwrap();
    stepper.load(&params, &opt).unwrap();
    let mut trace = Vec::new();
    for s in 0..steps {
        let batches = (0..accumulate).map(|i| micro(s, i)).collect();
        let out = stepper.step(batches, lr(s), &mut opt, s as u64 + 1).unwrap();
        trace.push((out.loss, out.grad_norm));
    }
    stepper.sync(&mut params, &mut opt).unwrap();
    (params, opt, trace)
}

/// The same on the host: the training graph's gradients (weights fed each run) summed over
/// the micro-batches, averaged, clipped and applied by `AdamW`, as PyTorch + PEFT train.
fn on_host(steps: usize, accumulate: usize, max_norm: Option<f32>) -> Trained {
    let (model, mut params) = training_graph();
    let mut opt = optimizer(&params);
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let mut trace = Vec::new();
    for s in 0..steps {
        let mut sum: Option<Vec<Vec<f32>>> = None;
        let mut loss = 0f64;
        for i in 0..accumulate {
            let mut feeds = micro(s, i);
            feeds.extend(params.iter().cloned());
            let out: HashMap<String, Tensor> = session.run(feeds).unwrap().into_iter().collect();
            loss += f64::from(out["loss"].as_slice::<f32>().unwrap()[0]);
            let grads: Vec<Vec<f32>> =
                params.iter().map(|(n, _)| out[&format!("grad.{n}")].as_slice::<f32>().unwrap().to_vec()).collect();
            sum = Some(match sum {
                None => grads,
                Some(acc) => {
                    acc.iter().zip(&grads).map(|(a, g)| a.iter().zip(g).map(|(x, y)| x + y).collect()).collect()
                }
            });
        }
        let scale = 1.0 / accumulate as f32;
        let mut grads: Vec<(String, Tensor)> = params
            .iter()
            .zip(sum.unwrap())
            .map(|((n, p), g)| {
                let g = if accumulate > 1 { g.iter().map(|x| x * scale).collect() } else { g };
                (n.clone(), Tensor::from_vec(p.shape().to_vec(), g).unwrap())
            })
            .collect();
        let norm = clip_grad_norm_tensors(&mut grads, max_norm.unwrap_or(f32::INFINITY)).unwrap();
        opt.step_tensors(lr(s), &mut params, &grads).unwrap();
        trace.push((loss / accumulate as f64, norm));
    }
    (params, opt, trace)
}

fn assert_same(host: &Trained, graph: &Trained) {
    assert_eq!(host.2, graph.2, "losses and gradient norms");
    assert_eq!(host.1.step_count(), graph.1.step_count());
    for ((name, h), (_, g)) in host.0.iter().zip(&graph.0) {
        assert_eq!(bits(h), bits(g), "weights of `{name}`");
    }
    for (h, g) in host.1.moments().iter().zip(graph.1.moments()) {
        assert_eq!(h.m, g.m, "first moment of `{}`", h.name);
        assert_eq!(h.v, g.v, "second moment of `{}`", h.name);
    }
    let (_, start) = training_graph();
    assert!(start.iter().zip(&graph.0).any(|((_, a), (_, b))| bits(a) != bits(b)), "the weights did not move");
}

#[test]
fn in_graph_adamw_matches_the_host_optimizer_bit_for_bit() {
    // A clip norm well below the gradients' so that every step is clipped.
    let (host, graph) = (on_host(4, 1, Some(1e-3)), in_graph(4, 1, Some(1e-3)));
    assert!(host.2.iter().all(|(_, n)| *n > 1e-2), "the clip must act: {:?}", host.2);
    assert_same(&host, &graph);
    println!("4 clipped steps: losses {:?}", graph.2.iter().map(|t| t.0).collect::<Vec<_>>());
}

#[test]
fn unclipped_steps_also_match() {
    assert_same(&on_host(2, 1, None), &in_graph(2, 1, None));
}

#[test]
fn accumulated_steps_match_the_host_optimizer_bit_for_bit() {
    // Three different micro-batches per step, clipped.
    assert_same(&on_host(3, 3, Some(1e-3)), &in_graph(3, 3, Some(1e-3)));
}

#[test]
fn accumulating_two_copies_of_a_batch_is_one_step_on_it() {
    // (g + g) · ½ = g exactly in f32: accumulating two copies of each batch must give the
    // unaccumulated step's weights, moments and trace bit for bit.
    let (model, mut params) = training_graph();
    let mut opt = optimizer(&params);
    let stepper = Stepper::new(model, SessionOptions::default(), &params, 2, Some(1e-3)).unwrap();
    stepper.load(&params, &opt).unwrap();
    let mut trace = Vec::new();
    for s in 0..2 {
        let out = stepper.step(vec![micro(s, 0), micro(s, 0)], lr(s), &mut opt, s as u64 + 1).unwrap();
        trace.push((out.loss, out.grad_norm));
    }
    stepper.sync(&mut params, &mut opt).unwrap();
    assert_same(&(params, opt, trace), &in_graph(2, 1, Some(1e-3)));
}

#[test]
fn a_step_refuses_the_wrong_number_of_micro_batches() {
    let (model, params) = training_graph();
    let mut opt = optimizer(&params);
    let stepper = Stepper::new(model, SessionOptions::default(), &params, 2, None).unwrap();
    stepper.load(&params, &opt).unwrap();
    let e = stepper.step(vec![micro(0, 0)], 1e-3, &mut opt, 1).err().unwrap().to_string();
    assert!(e.contains("2 micro-batches"), "{e}");
}
