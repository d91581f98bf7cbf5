//! `append-adamw`: what it adds to a training graph, and what it refuses.

mod common;

use adaptc_passes::adapters::record::AdapterState;
use adaptc_passes::{PassManager, Registry};
use common::{fixture, rewrite};

const ADAPT: &str = "add-head{kind=classification labels=3},insert-lora{rank=4 alpha=8 targets=query,value}";

#[test]
fn appends_clip_and_one_update_per_trainable_tensor() {
    let (model, report) = rewrite(
        fixture("bert6.onnx"),
        &format!("{ADAPT},build-training-graph{{loss=cross-entropy}},append-adamw{{max_norm=1.0}}"),
    );
    let trainable = AdapterState::load(&model).unwrap().trainable;
    assert_eq!(report.stat("adamw.params").unwrap(), trainable.len() as i64);
    let outputs: Vec<&str> = model.graph.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(&outputs[..2], ["loss", "grad_norm"]);
    assert_eq!(outputs.len(), 2 + 3 * trainable.len());
    assert!(!outputs.iter().any(|o| o.starts_with("grad.")), "{outputs:?}");
    for w in &trainable {
        for name in [w.clone(), format!("adamw.m.{w}"), format!("adamw.v.{w}")] {
            assert!(model.graph.is_graph_input(&name), "input {name}");
            assert!(outputs.contains(&format!("next.{name}").as_str()), "output next.{name}");
        }
    }
    assert!(model.graph.is_graph_input("adamw.coefficients"));
    let ops = |t: &str| model.graph.nodes().filter(|(_, n)| n.op().op_type == t).count();
    assert_eq!(ops("AdamW"), trainable.len());
    assert_eq!(ops("ClipGradNorm"), 1);
    let clip = model.graph.nodes().find(|(_, n)| n.op().op_type == "ClipGradNorm").unwrap().1;
    assert_eq!(clip.attr("max_norm").and_then(|a| a.as_float()), Some(1.0));
}

#[test]
fn refuses_a_graph_without_gradients_and_a_bad_clip() {
    let mut model = fixture("bert6.onnx");
    let manager = PassManager::new(&Registry::builtin(), &format!("{ADAPT},append-adamw")).unwrap();
    let e = manager.run(&mut model).unwrap_err().to_string();
    assert!(e.contains("append-adamw") && e.contains("build-training-graph"), "{e}");
    for bad in ["0", "-1"] {
        let e = PassManager::new(&Registry::builtin(), &format!("append-adamw{{max_norm={bad}}}")).err().unwrap();
        assert!(e.to_string().contains("max_norm"), "{e}");
    }
    let e = PassManager::new(&Registry::builtin(), "append-adamw{accumulate=0}").err().unwrap();
    assert!(e.to_string().contains("accumulate"), "{e}");
}

#[test]
fn accumulation_carries_gradient_sums_and_applies_on_the_last_micro_batch() {
    let (model, report) = rewrite(
        fixture("bert6.onnx"),
        &format!("{ADAPT},build-training-graph{{loss=cross-entropy}},append-adamw{{accumulate=4}}"),
    );
    let trainable = AdapterState::load(&model).unwrap().trainable;
    assert_eq!(report.stat("adamw.carried").unwrap(), 4 * trainable.len() as i64);
    assert!(model.graph.is_graph_input("adamw.apply"));
    let outputs: Vec<&str> = model.graph.outputs.iter().map(|o| o.name.as_str()).collect();
    for w in &trainable {
        assert!(model.graph.is_graph_input(&format!("adamw.acc.{w}")));
        assert!(outputs.contains(&format!("next.adamw.acc.{w}").as_str()));
    }
    // Weights, both moments and the sums each pass through a Where on `adamw.apply`.
    let picks = model.graph.nodes().filter(|(_, n)| n.op().is("Where") && n.input(0) == Some("adamw.apply")).count();
    assert_eq!(picks, 4 * trainable.len());
}
