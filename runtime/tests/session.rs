//! Sessions refuse what they cannot run before running anything: unknown ops at lowering
//! (naming the node), and inputs with the wrong name, type or shape at `run`.

use std::collections::HashMap;

use adaptc_ir::{DataType, Dim, Graph, Model, Node, OpKey, ValueInfo};
use adaptc_runtime::{RuntimeError, Session, SessionOptions, Tensor};

/// `y = Relu(x + b)` with `x: f32[batch, 3]` and `b` an initializer.
fn model(op: &str) -> Model {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("batch".into()), Dim::Known(3)]));
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Symbol("batch".into()), Dim::Known(3)]));
    g.add_initializer(adaptc_ir::Tensor::from_f32("b", vec![3], &[1.0, -2.0, 0.5]).unwrap()).unwrap();
    g.add_node(Node::new(OpKey::onnx("Add"), vec!["x".into(), "b".into()], vec!["s".into()]).named("add")).unwrap();
    g.add_node(Node::new(OpKey::onnx(op), vec!["s".into()], vec!["y".into()]).named("act")).unwrap();
    Model::new(g, 21)
}

fn x(shape: Vec<usize>, v: Vec<f32>) -> HashMap<String, Tensor> {
    HashMap::from([("x".to_string(), Tensor::from_vec(shape, v).unwrap())])
}

#[test]
fn runs_and_reports_peak_memory() {
    let s = Session::new(&model("Relu"), SessionOptions::default()).unwrap();
    let (out, stats) = s.run_with_stats(x(vec![2, 3], vec![0.0, 0.0, 0.0, -5.0, 5.0, 1.0])).unwrap();
    assert_eq!(out[0].0, "y");
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[1.0, 0.0, 0.5, 0.0, 3.0, 1.5]);
    assert!(stats.peak_bytes >= 24);
    // Empty batch.
    let out = s.run(x(vec![0, 3], vec![])).unwrap();
    assert_eq!(out[0].1.shape(), &[0, 3]);
}

#[test]
fn unknown_ops_fail_at_lowering_naming_the_node() {
    let err = Session::new(&model("NoSuchOp"), SessionOptions::default()).err().unwrap();
    assert!(matches!(err, RuntimeError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("`act`") && err.to_string().contains("NoSuchOp"), "{err}");
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let s = Session::new(&model("Relu"), SessionOptions::default()).unwrap();
    let e = s.run(HashMap::new()).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("required"), "{e}");
    let e = s.run(x(vec![1, 4], vec![0.0; 4])).unwrap_err().to_string();
    assert!(e.contains("dimension 1 must be 3"), "{e}");
    let e = s.run(x(vec![3], vec![0.0; 3])).unwrap_err().to_string();
    assert!(e.contains("rank"), "{e}");
    let ints = HashMap::from([("x".to_string(), Tensor::from_vec(vec![1, 3], vec![1i64, 2, 3]).unwrap())]);
    let e = s.run(ints).unwrap_err().to_string();
    assert!(e.contains("element type f32"), "{e}");
    let mut extra = x(vec![1, 3], vec![0.0; 3]);
    extra.insert("z".into(), Tensor::scalar(1.0f32));
    let e = s.run(extra).unwrap_err().to_string();
    assert!(e.contains("`z`") && e.contains("no such input"), "{e}");
}

#[test]
fn cuda_is_refused_clearly() {
    let opts = SessionOptions { device: adaptc_runtime::Device::Cuda };
    let e = Session::new(&model("Relu"), opts).err().unwrap().to_string();
    assert!(e.contains("the CUDA backend is not built yet"), "{e}");
}
