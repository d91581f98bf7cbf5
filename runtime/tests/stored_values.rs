//! The plan's stored-value fusion (`fuse::stored`) on the loss: bf16 logits read as stored by
//! the loss and its gradient, the gradient written in bf16, with the same values, bit for bit,
//! as the node-by-node plan's `Cast(to=f32)` → loss → gradient → `Cast(to=bf16)`. (Attention's
//! operands, on a whole training graph: `tests/plan_fusions.rs`.)

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, ValueInfo};
use adaptc_runtime::{Session, SessionOptions, Tensor};
use half::bf16;

const CLASSES: usize = 40;

/// The end of a causal-LM training graph: bf16 `logits [2, 3, C]` widened, viewed as
/// `[6, C]` (or, with `flatten` false, `[6, C]` logits read directly, as a classifier's), the
/// mean loss with ignored labels, its gradient, viewed back and rounded to bf16. With
/// `widened_is_output`, the f32 logits are a graph output too, which rules the fusion out.
fn loss_graph(flatten: bool, widened_is_output: bool, narrow: DataType) -> Model {
    let mut g = Graph::new("loss");
    let dims: Vec<Dim> = if flatten { vec![2, 3, CLASSES] } else { vec![6, CLASSES] }
        .into_iter()
        .map(|d| Dim::Known(d as i64))
        .collect();
    g.inputs.push(ValueInfo::tensor("logits", DataType::BFloat16, dims.clone()));
    g.inputs.push(ValueInfo::tensor("labels", DataType::Int64, vec![Dim::Known(6)]));
    g.inputs.push(ValueInfo::tensor("dloss", DataType::Float, vec![]));
    g.outputs.push(ValueInfo::tensor("loss", DataType::Float, vec![]));
    g.outputs.push(ValueInfo::tensor("dlogits", narrow, dims));
    g.outputs.push(ValueInfo::tensor("dims", DataType::Int64, vec![Dim::Known(if flatten { 3 } else { 2 })]));
    if widened_is_output {
        g.outputs.push(ValueInfo::tensor("wide", DataType::Float, vec![]));
    }
    let node = |op: OpKey, i: &[&str], o: &[&str], label: &str| {
        Node::new(op, i.iter().map(|s| s.to_string()).collect(), o.iter().map(|s| s.to_string()).collect()).named(label)
    };
    let to = |d: DataType| Attribute::int("to", i64::from(d.code()));
    g.add_node(node(OpKey::onnx("Cast"), &["logits"], &["wide"], "widen").with_attr(to(DataType::Float))).unwrap();
    g.add_node(node(OpKey::onnx("Shape"), &["wide"], &["dims"], "dims")).unwrap();
    let scores = if flatten {
        g.add_node(node(OpKey::onnx("Flatten"), &["wide"], &["flat"], "flat").with_attr(Attribute::int("axis", 2)))
            .unwrap();
        "flat"
    } else {
        "wide"
    };
    let attrs = [Attribute::string("reduction", "mean"), Attribute::int("ignore_index", -100)];
    let sce = node(OpKey::onnx("SoftmaxCrossEntropyLoss"), &[scores, "labels"], &["loss"], "loss");
    g.add_node(attrs.iter().fold(sce, |n, a| n.with_attr(a.clone()))).unwrap();
    let grad =
        node(OpKey::new("ai.adaptc", "SoftmaxCrossEntropyLossGrad"), &["dloss", scores, "labels"], &["g"], "grad");
    g.add_node(attrs.iter().fold(grad, |n, a| n.with_attr(a.clone()))).unwrap();
    let g_shaped = if flatten {
        g.add_node(node(OpKey::onnx("Reshape"), &["g", "dims"], &["g_shaped"], "unflat")).unwrap();
        "g_shaped"
    } else {
        "g"
    };
    g.add_node(node(OpKey::onnx("Cast"), &[g_shaped], &["dlogits"], "narrow").with_attr(to(narrow))).unwrap();
    Model::new(g, 21)
}

fn feeds(flatten: bool) -> HashMap<String, Tensor> {
    let shape = if flatten { vec![2, 3, CLASSES] } else { vec![6, CLASSES] };
    let logits: Vec<bf16> = (0..6 * CLASSES)
        .map(|k| bf16::from_f32(((k * 37 % 101) as f32 - 50.0) * 0.11 + (k / CLASSES) as f32))
        .collect();
    HashMap::from([
        ("logits".to_string(), Tensor::from_vec(shape, logits).unwrap()),
        ("labels".to_string(), Tensor::from_vec(vec![6], vec![3i64, -100, 39, 0, 17, -100]).unwrap()),
        ("dloss".to_string(), Tensor::from_vec(vec![], vec![1.0f32]).unwrap()),
    ])
}

fn run(model: &Model, unfused: bool, flatten: bool) -> (Vec<String>, HashMap<String, Tensor>) {
    let s = Session::new(model, SessionOptions { unfused, ..Default::default() }).unwrap();
    let ops = s.plan().instructions.iter().map(|i| i.node.op().to_string()).collect();
    (ops, s.run(feeds(flatten)).unwrap().into_iter().collect())
}

#[test]
fn the_loss_reads_bf16_logits_as_stored_and_writes_a_bf16_gradient() {
    for flatten in [true, false] {
        let model = loss_graph(flatten, false, DataType::BFloat16);
        let (ops, fused) = run(&model, false, flatten);
        let (reference_ops, reference) = run(&model, true, flatten);
        assert!(!ops.iter().any(|o| o == "Cast"), "flatten {flatten}: {ops:?}");
        assert!(ops.iter().any(|o| o == "ai.adaptc::SoftmaxCrossEntropyLoss"), "{ops:?}");
        assert_eq!(reference_ops.iter().filter(|o| *o == "Cast").count(), 2, "{reference_ops:?}");
        let loss = fused["loss"].as_slice::<f32>().unwrap()[0];
        assert_eq!(fused["loss"].dtype(), DataType::Float);
        assert_eq!(loss.to_bits(), reference["loss"].as_slice::<f32>().unwrap()[0].to_bits(), "flatten {flatten}");
        assert!(loss.is_finite() && loss > 0.0);
        let (a, b) = (&fused["dlogits"], &reference["dlogits"]);
        assert_eq!((a.dtype(), a.shape()), (DataType::BFloat16, b.shape()), "flatten {flatten}");
        let bits = |t: &Tensor| t.as_slice::<bf16>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "flatten {flatten}");
        // The ignored rows' gradient is 0; the others' rows sum to 0 (softmax − one-hot).
        let g: Vec<f32> = a.as_slice::<bf16>().unwrap().iter().map(|v| v.to_f32()).collect();
        assert!(g[CLASSES..2 * CLASSES].iter().all(|&v| v == 0.0));
        assert!(g[..CLASSES].iter().sum::<f32>().abs() < 1e-2);
        assert_eq!(fused["dims"].as_slice::<i64>(), reference["dims"].as_slice::<i64>());
    }
}

#[test]
fn the_fusion_leaves_widened_logits_that_something_else_reads() {
    let model = loss_graph(true, true, DataType::BFloat16);
    let (ops, _) = run(&model, false, true);
    // The forward Cast stays (its value is a graph output); the gradient's narrowing still folds.
    assert_eq!(ops.iter().filter(|o| *o == "Cast").count(), 1, "{ops:?}");
    assert!(ops.iter().any(|o| o == "SoftmaxCrossEntropyLoss"), "{ops:?}");
    // A narrowing to f16 stays a Cast (only bf16 folds: a half output cast to another half
    // type would round twice); the forward still reads the bf16 logits as stored.
    let (ops, _) = run(&loss_graph(true, false, DataType::Float16), false, true);
    assert_eq!(ops.iter().filter(|o| *o == "Cast").count(), 1, "{ops:?}");
    assert!(ops.iter().any(|o| o == "ai.adaptc::SoftmaxCrossEntropyLoss"), "{ops:?}");
}

/// `kv [1, 2, 1, 3, 4]` (bf16) widened, `Expand`ed to 4 copies per group and rounded back
/// (grouped-query attention's keys), then a `Transpose` between a widening and a rounding; the
/// widened value's and the repeated value's shapes read too. With `narrow` another type than
/// the stored one, the casts must stay.
fn repeat_graph(narrow: DataType) -> Model {
    let mut g = Graph::new("repeat");
    let known = |d: &[i64]| d.iter().map(|&n| Dim::Known(n)).collect::<Vec<_>>();
    g.inputs.push(ValueInfo::tensor("kv", DataType::BFloat16, known(&[1, 2, 1, 3, 4])));
    g.inputs.push(ValueInfo::tensor("to", DataType::Int64, known(&[5])));
    g.outputs.push(ValueInfo::tensor("t", narrow, known(&[1, 2, 4, 4, 3])));
    g.outputs.push(ValueInfo::tensor("dims", DataType::Int64, known(&[5])));
    g.outputs.push(ValueInfo::tensor("wide_dims", DataType::Int64, known(&[5])));
    let node = |op: &str, i: &[&str], o: &str| {
        Node::new(OpKey::onnx(op), i.iter().map(|s| s.to_string()).collect(), vec![o.to_string()]).named(o)
    };
    let to = |d: DataType| Attribute::int("to", i64::from(d.code()));
    g.add_node(node("Cast", &["kv"], "wide").with_attr(to(DataType::Float))).unwrap();
    g.add_node(node("Shape", &["wide"], "wide_dims")).unwrap();
    g.add_node(node("Expand", &["wide", "to"], "rep")).unwrap();
    g.add_node(node("Shape", &["rep"], "dims")).unwrap();
    g.add_node(node("Cast", &["rep"], "rep16").with_attr(to(narrow))).unwrap();
    g.add_node(node("Cast", &["rep16"], "rep32").with_attr(to(DataType::Float))).unwrap();
    g.add_node(node("Transpose", &["rep32"], "tr").with_attr(Attribute::ints("perm", vec![0, 1, 2, 4, 3]))).unwrap();
    g.add_node(node("Cast", &["tr"], "t").with_attr(to(narrow))).unwrap();
    Model::new(g, 21)
}

#[test]
fn layout_ops_between_a_widening_and_a_rounding_move_the_stored_elements() {
    let kv: Vec<bf16> = (0..24).map(|k| bf16::from_f32((k as f32 - 11.5) * 0.37)).collect();
    let feeds = HashMap::from([
        ("kv".to_string(), Tensor::from_vec(vec![1, 2, 1, 3, 4], kv).unwrap()),
        ("to".to_string(), Tensor::from_vec(vec![5], vec![1i64, 2, 4, 3, 4]).unwrap()),
    ]);
    let run = |model: &Model, unfused: bool| {
        let s = Session::new(model, SessionOptions { unfused, ..Default::default() }).unwrap();
        let ops: Vec<String> = s.plan().instructions.iter().map(|i| i.node.op().to_string()).collect();
        let out: HashMap<String, Tensor> = s.run(feeds.clone()).unwrap().into_iter().collect();
        (ops, out)
    };
    let model = repeat_graph(DataType::BFloat16);
    let ((ops, fused), (plain_ops, plain)) = (run(&model, false), run(&model, true));
    assert!(!ops.iter().any(|o| o == "Cast"), "{ops:?}");
    assert_eq!(plain_ops.iter().filter(|o| *o == "Cast").count(), 4, "{plain_ops:?}");
    for name in ["t", "dims", "wide_dims"] {
        assert_eq!(fused[name].dtype(), plain[name].dtype(), "{name}");
        assert_eq!(fused[name].to_le_bytes(), plain[name].to_le_bytes(), "{name}");
    }
    assert_eq!(fused["t"].shape(), &[1, 2, 4, 4, 3]);
    // bf16 stored, rounded to f16: the Expand's casts are arithmetic, not a round trip, and
    // stay; the Transpose's value is then stored in f16 and rounded to f16, which folds.
    let model = repeat_graph(DataType::Float16);
    let ((ops, fused), (_, plain)) = (run(&model, false), run(&model, true));
    assert_eq!(ops, ["Cast", "Shape", "Expand", "Shape", "Cast", "Transpose"]);
    assert_eq!(fused["t"].to_le_bytes(), plain["t"].to_le_bytes());
}

/// `x` (f32) transposed, then rounded to bf16: the rounding runs first and the transpose moves
/// bf16 elements, same bits. With a `Shape` of the transposed value (which could run before
/// the rounding's place) the order stays.
#[test]
fn a_layout_op_only_a_rounding_reads_runs_after_it() {
    let graph = |dims_reader: bool| {
        let mut g = Graph::new("round");
        let known = |d: &[i64]| d.iter().map(|&n| Dim::Known(n)).collect::<Vec<_>>();
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, known(&[2, 3, 5])));
        g.outputs.push(ValueInfo::tensor("z", DataType::BFloat16, known(&[5, 2, 3])));
        let node = |op: &str, i: &str, o: &str| Node::new(OpKey::onnx(op), vec![i.into()], vec![o.into()]).named(o);
        g.add_node(node("Transpose", "x", "y").with_attr(Attribute::ints("perm", vec![2, 0, 1]))).unwrap();
        let to = Attribute::int("to", i64::from(DataType::BFloat16.code()));
        g.add_node(node("Cast", "y", "z").with_attr(to)).unwrap();
        if dims_reader {
            g.outputs.push(ValueInfo::tensor("dims", DataType::Int64, known(&[3])));
            g.add_node(node("Shape", "y", "dims")).unwrap();
        }
        Model::new(g, 21)
    };
    let x: Vec<f32> = (0..30).map(|k| (k as f32 - 14.5) * 0.123_457).collect();
    let feeds = HashMap::from([("x".to_string(), Tensor::from_vec(vec![2, 3, 5], x).unwrap())]);
    for dims_reader in [false, true] {
        let model = graph(dims_reader);
        let run = |unfused: bool| {
            let s = Session::new(&model, SessionOptions { unfused, ..Default::default() }).unwrap();
            let ops: Vec<String> = s.plan().instructions.iter().map(|i| i.node.op().to_string()).collect();
            (ops, s.run(feeds.clone()).unwrap())
        };
        let ((ops, fused), (_, plain)) = (run(false), run(true));
        let want: &[&str] = if dims_reader { &["Transpose", "Cast"] } else { &["Cast", "Transpose"] };
        let got: Vec<&str> = ops.iter().map(String::as_str).filter(|o| *o != "Shape").collect();
        assert_eq!(got, want, "dims reader {dims_reader}");
        for ((name, a), (_, b)) in fused.iter().zip(&plain) {
            assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
            assert_eq!(a.to_le_bytes(), b.to_le_bytes(), "{name}");
        }
    }
}
