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

/// A `Shape` read of an activation, placed last in the graph (as the backward of a training
/// graph reads the forward's values to size gradients), does not keep the activation alive:
/// the plan reads its dims as soon as it exists. `big = Relu(x)`, three Negs after it, then
/// `Shape(big)`: kept to the end, `big`, `a` and `b` (4 KiB each) would be live at once.
#[test]
fn shape_reads_do_not_extend_a_buffers_life() {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(1024)]));
    g.outputs.push(ValueInfo::tensor("c", DataType::Float, vec![Dim::Known(1024)]));
    g.outputs.push(ValueInfo::tensor("dims", DataType::Int64, vec![Dim::Known(1)]));
    let node = |op: &str, i: &str, o: &str| Node::new(OpKey::onnx(op), vec![i.into()], vec![o.into()]).named(o);
    for n in [node("Relu", "x", "big"), node("Neg", "big", "a"), node("Neg", "a", "b"), node("Neg", "b", "c")] {
        g.add_node(n).unwrap();
    }
    g.add_node(node("Shape", "big", "dims")).unwrap();
    // Unfused: as one elementwise chain the Negs would not write `a` and `b` at all.
    let s = Session::new(&Model::new(g, 21), SessionOptions { unfused: true, ..Default::default() }).unwrap();
    let v: Vec<f32> = (0..1024).map(|k| k as f32 - 500.0).collect();
    let (out, stats) = s.run_with_stats(x(vec![1024], v.clone())).unwrap();
    let get = |name: &str| out.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap();
    assert_eq!(get("dims").as_slice::<i64>().unwrap(), &[1024]);
    let want: Vec<f32> = v.iter().map(|&x| -x.max(0.0)).collect();
    assert_eq!(get("c").as_slice::<f32>().unwrap(), &want[..]);
    // At most two 4 KiB buffers (and the 8-byte dims) live at once.
    assert!(stats.peak_bytes <= 2 * 4096 + 8, "peak {} bytes", stats.peak_bytes);
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

/// Without the `cuda` feature, or without a device, a CUDA session is refused with a reason
/// (on a GPU machine with the feature the suite in tests/cuda.rs takes over).
#[test]
fn cuda_is_refused_clearly() {
    let opts = SessionOptions { device: adaptc_runtime::Device::Cuda, ..Default::default() };
    match Session::new(&model("Relu"), opts) {
        Ok(_) => {
            if !cfg!(feature = "cuda") {
                panic!("a CUDA session opened in a build without the feature");
            }
        }
        Err(e) => {
            let e = e.to_string();
            let want = if cfg!(feature = "cuda") { "no CUDA device" } else { "built without the CUDA backend" };
            assert!(e.contains(want), "{e}");
        }
    }
}

/// `y = x·W + b` with the product also read by `Shape` (as training graphs do): the plan fuses
/// MatMul and Add into one instruction, the Shape reads the sum, and the values are right.
#[test]
fn matmul_bias_fuses_past_shape_readers() {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(2)]));
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Known(2), Dim::Known(3)]));
    g.outputs.push(ValueInfo::tensor("s", DataType::Int64, vec![Dim::Known(2)]));
    g.add_initializer(adaptc_ir::Tensor::from_f32("w", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap()).unwrap();
    g.add_initializer(adaptc_ir::Tensor::from_f32("b", vec![3], &[0.5, -1.0, 2.0]).unwrap()).unwrap();
    g.add_node(Node::new(OpKey::onnx("MatMul"), vec!["x".into(), "w".into()], vec!["p".into()]).named("mm")).unwrap();
    g.add_node(Node::new(OpKey::onnx("Add"), vec!["p".into(), "b".into()], vec!["y".into()]).named("add")).unwrap();
    g.add_node(Node::new(OpKey::onnx("Shape"), vec!["p".into()], vec!["s".into()]).named("shape")).unwrap();
    let s = Session::new(&Model::new(g, 21), SessionOptions::default()).unwrap();
    let ops: Vec<String> = s.plan().instructions.iter().map(|i| i.node.op().op_type.clone()).collect();
    assert_eq!(ops, ["MatMulAddBias", "Shape"], "{ops:?}");
    let out = s.run(x(vec![2, 2], vec![1.0, 0.0, -1.0, 2.0])).unwrap();
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[1.5, 1.0, 5.0, 7.5, 7.0, 11.0]);
    assert_eq!(out[1].1.as_slice::<i64>().unwrap(), &[2, 3]);
}

/// Exported attention's `Where(IsNaN(Softmax(scores + mask)), 0, ·)`, on `scores: [2, 3, 4]`
/// and `mask` (shape `mask_shape`, in either Add operand order). With `fused` false the sum
/// and the zero are graph outputs/inputs, which rules the fusions out: the reference plan.
fn masked_softmax(mask_shape: Vec<usize>, mask_first: bool, fused: bool) -> Model {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(3), Dim::Known(4)]));
    let mask: Vec<f32> = (0..mask_shape.iter().product::<usize>())
        .map(|k| if k % 3 == 1 { f32::NEG_INFINITY } else { k as f32 * 0.25 })
        .collect();
    g.add_initializer(adaptc_ir::Tensor::from_f32("m", mask_shape.iter().map(|&d| d as u64).collect(), &mask).unwrap())
        .unwrap();
    if fused {
        g.add_initializer(adaptc_ir::Tensor::from_f32("zero", vec![], &[0.0]).unwrap()).unwrap();
    } else {
        g.inputs.push(ValueInfo::tensor("zero", DataType::Float, vec![]));
        g.outputs.push(ValueInfo::tensor("sum", DataType::Float, vec![]));
    }
    for out in ["p", "nan", "y"] {
        g.outputs.push(ValueInfo::tensor(out, DataType::Float, vec![]));
    }
    let add_in = if mask_first { vec!["m".into(), "x".into()] } else { vec!["x".into(), "m".into()] };
    g.add_node(Node::new(OpKey::onnx("Add"), add_in, vec!["sum".into()]).named("add")).unwrap();
    g.add_node(Node::new(OpKey::onnx("Softmax"), vec!["sum".into()], vec!["p".into()]).named("softmax")).unwrap();
    g.add_node(Node::new(OpKey::onnx("IsNaN"), vec!["p".into()], vec!["nan".into()]).named("isnan")).unwrap();
    g.add_node(
        Node::new(OpKey::onnx("Where"), vec!["nan".into(), "zero".into(), "p".into()], vec!["y".into()]).named("where"),
    )
    .unwrap();
    Model::new(g, 21)
}

/// The attention fusions (`AddSoftmax`, `IsNaNWhere`) give what the separate kernels give,
/// for masks that broadcast in different ways, in both operand orders, and with rows that are
/// all −∞ (NaN after the softmax, zeroed by the Where).
#[test]
fn attention_fusions_match_the_separate_kernels() {
    let xs: Vec<f32> = (0..24).map(|k| ((k * 7) % 11) as f32 * 0.3 - 1.5).collect();
    for (mask_shape, mask_first) in
        [(vec![2, 1, 4], false), (vec![4], true), (vec![2, 3, 4], false), (vec![1, 3, 1], false), (vec![], true)]
    {
        let run = |fused: bool| {
            let s = Session::new(&masked_softmax(mask_shape.clone(), mask_first, fused), SessionOptions::default())
                .unwrap();
            let ops: Vec<String> = s.plan().instructions.iter().map(|i| i.node.op().op_type.clone()).collect();
            let mut feeds = x(vec![2, 3, 4], xs.clone());
            if !fused {
                feeds.insert("zero".into(), Tensor::from_vec(vec![], vec![0f32]).unwrap());
            }
            let out: HashMap<String, Tensor> = s.run(feeds).unwrap().into_iter().collect();
            (ops, out)
        };
        let (ops, fused) = run(true);
        assert_eq!(ops, ["AddSoftmax", "IsNaNWhere"], "{mask_shape:?}");
        let (ops, reference) = run(false);
        assert_eq!(ops, ["Add", "Softmax", "IsNaN", "Where"], "{mask_shape:?}");
        for name in ["p", "nan", "y"] {
            let (a, b) = (&fused[name], &reference[name]);
            assert_eq!(a.shape(), b.shape(), "{name} {mask_shape:?}");
            if let (Some(a), Some(b)) = (a.as_slice::<f32>(), b.as_slice::<f32>()) {
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-6,
                        "{name} {mask_shape:?}: {a:?} vs {b:?}"
                    );
                }
            } else {
                assert_eq!(a.as_slice::<bool>(), b.as_slice::<bool>(), "{name} {mask_shape:?}");
            }
        }
        // The all −∞ mask row (shape [1, 3, 1]: row 1 of every batch) gives NaN, zeroed by Where.
        if mask_shape == [1, 3, 1] {
            assert!(fused["p"].as_slice::<f32>().unwrap()[4..8].iter().all(|v| v.is_nan()));
            assert_eq!(&fused["y"].as_slice::<f32>().unwrap()[4..8], &[0.0; 4]);
        }
    }
}

/// `total = acc + x` and `prev = Neg(acc)`, with `acc: f32[3]` defaulting to zeros: a running
/// sum when `total` is carried into `acc`.
fn accumulator() -> Model {
    let mut g = Graph::new("g");
    for name in ["x", "acc"] {
        g.inputs.push(ValueInfo::tensor(name, DataType::Float, vec![Dim::Known(3)]));
    }
    for name in ["prev", "total"] {
        g.outputs.push(ValueInfo::tensor(name, DataType::Float, vec![Dim::Known(3)]));
    }
    g.add_initializer(adaptc_ir::Tensor::from_f32("acc", vec![3], &[0.0; 3]).unwrap()).unwrap();
    g.add_node(Node::new(OpKey::onnx("Add"), vec!["acc".into(), "x".into()], vec!["total".into()]).named("add"))
        .unwrap();
    g.add_node(Node::new(OpKey::onnx("Neg"), vec!["acc".into()], vec!["prev".into()]).named("neg")).unwrap();
    Model::new(g, 21)
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn carried_state_feeds_the_next_run_and_stays_out_of_the_outputs() {
    let mut s = Session::new(&accumulator(), SessionOptions::default()).unwrap();
    s.bind_state(&[("acc".into(), "total".into())]).unwrap();
    assert_eq!(s.output_names(), ["prev"]);
    assert_eq!(s.required_inputs(), ["x"]);
    let feed = |v: [f32; 3]| HashMap::from([("x".to_string(), Tensor::from_vec(vec![3], v.to_vec()).unwrap())]);
    // Before any run the state is the initializer.
    assert_eq!(f32s(&s.state("acc").unwrap()), [0.0; 3]);
    let out = s.run(feed([1.0, 2.0, 3.0])).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(f32s(&out[0].1), [-0.0; 3]);
    let out = s.run(feed([1.0, 1.0, 1.0])).unwrap();
    assert_eq!(f32s(&out[0].1), [-1.0, -2.0, -3.0]);
    assert_eq!(f32s(&s.state("acc").unwrap()), [2.0, 3.0, 4.0]);
    // Set from outside, then carried on.
    s.set_state("acc", &Tensor::from_vec(vec![3], vec![10.0f32; 3]).unwrap()).unwrap();
    let out = s.run(feed([0.5; 3])).unwrap();
    assert_eq!(f32s(&out[0].1), [-10.0; 3]);
    assert_eq!(f32s(&s.state("acc").unwrap()), [10.5; 3]);
    // A refused run leaves the state as it was.
    let bad = HashMap::from([("x".to_string(), Tensor::from_vec(vec![2], vec![1.0f32; 2]).unwrap())]);
    assert!(s.run(bad).is_err());
    assert_eq!(f32s(&s.state("acc").unwrap()), [10.5; 3]);
    // Rebinding clears what was carried.
    s.bind_state(&[("acc".into(), "total".into())]).unwrap();
    assert_eq!(f32s(&s.state("acc").unwrap()), [0.0; 3]);
}

#[test]
fn carried_state_is_refused_by_name_when_misused() {
    let mut s = Session::new(&accumulator(), SessionOptions::default()).unwrap();
    let e = s.bind_state(&[("nope".into(), "total".into())]).unwrap_err().to_string();
    assert!(e.contains("`nope`") && e.contains("no such input"), "{e}");
    let e = s.bind_state(&[("acc".into(), "nope".into())]).unwrap_err().to_string();
    assert!(e.contains("`nope`") && e.contains("no such output"), "{e}");
    let e = s.bind_state(&[("acc".into(), "total".into()), ("acc".into(), "prev".into())]).unwrap_err().to_string();
    assert!(e.contains("bound twice"), "{e}");
    let e = s.state("acc").unwrap_err().to_string();
    assert!(e.contains("not carried state"), "{e}");
    s.bind_state(&[("acc".into(), "total".into())]).unwrap();
    let e = s.set_state("acc", &Tensor::from_vec(vec![4], vec![0.0f32; 4]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("`acc`") && e.contains("dimension 0 must be 3"), "{e}");
    let mut feeds = HashMap::from([("x".to_string(), Tensor::from_vec(vec![3], vec![0.0f32; 3]).unwrap())]);
    feeds.insert("acc".into(), Tensor::from_vec(vec![3], vec![0.0f32; 3]).unwrap());
    let e = s.run(feeds).unwrap_err().to_string();
    assert!(e.contains("`acc`") && e.contains("carried state"), "{e}");
}
