//! `fold-constants`: a golden dump of a folded shape computation, a numeric check of every op
//! against hand-computed arrays (per opset form), and the nodes it must leave alone.

mod common;

use adaptc_ir::{AttrValue, Attribute, DataType, Model, Node, OpKey, Tensor};
use common::*;

/// Folds the node producing `y` (inputs are initializers `in0`, `in1`, …) and returns `y`'s
/// folded value. `y` feeds an Identity whose output is the graph output, so that `y` itself
/// is foldable.
fn fold_one(opset: i64, inputs: Vec<Tensor>, node: Node) -> Tensor {
    let mut m = one_node_model(opset, inputs, node);
    let report = run("fold-constants", &mut m);
    let notes = &report.runs[0].notes;
    assert_eq!(stat(&report, "fold.nodes_folded"), 1, "not folded; notes: {notes:?}");
    assert_eq!(m.graph.num_nodes(), 1);
    m.graph.initializer("y").cloned().expect("y is an initializer")
}

/// Runs the folder on a node it must leave alone; returns the notes.
fn not_folded(opset: i64, inputs: Vec<Tensor>, node: Node) -> Vec<String> {
    not_folded_with("fold-constants", opset, inputs, node)
}

fn not_folded_with(pipeline: &str, opset: i64, inputs: Vec<Tensor>, node: Node) -> Vec<String> {
    let mut m = one_node_model(opset, inputs, node);
    let before = adaptc_ir::dump(&m);
    let report = run(pipeline, &mut m);
    assert!(!report.changed(), "folded: {}", adaptc_ir::dump(&m));
    assert_eq!(adaptc_ir::dump(&m), before);
    report.runs[0].notes.clone()
}

fn one_node_model(opset: i64, inputs: Vec<Tensor>, node: Node) -> Model {
    model(opset, |g| {
        for t in inputs {
            g.add_initializer(t).unwrap();
        }
        g.add_node(node).unwrap();
        g.add_node(node_with_outputs("Identity", &["y"], &["out"])).unwrap();
        g.outputs.push(output("out"));
    })
}

fn node_with_outputs(op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
    node(op, inputs, outputs)
}

/// A node `op(in0, in1, …) -> y` with attributes.
fn op(name: &str, n_inputs: usize, attrs: Vec<Attribute>) -> Node {
    let inputs: Vec<String> = (0..n_inputs).map(|i| format!("in{i}")).collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    node_with(name, &inputs, &["y"], attrs)
}

fn f(i: usize, dims: &[u64], v: &[f32]) -> Tensor {
    f32s(&format!("in{i}"), dims, v)
}

fn l(i: usize, dims: &[u64], v: &[i64]) -> Tensor {
    i64s(&format!("in{i}"), dims, v)
}

fn check_f32(t: &Tensor, dims: &[u64], values: &[f32]) {
    assert_eq!((t.dtype(), t.dims()), (DataType::Float, dims), "{}", t.name);
    assert_eq!(t.to_f32().unwrap(), values);
}

fn check_i64(t: &Tensor, dims: &[u64], values: &[i64]) {
    assert_eq!((t.dtype(), t.dims()), (DataType::Int64, dims), "{}", t.name);
    assert_eq!(t.to_i64().unwrap(), values);
}

fn check_i32(t: &Tensor, dims: &[u64], values: &[i64]) {
    assert_eq!((t.dtype(), t.dims()), (DataType::Int32, dims), "{}", t.name);
    assert_eq!(t.to_i64().unwrap(), values);
}

fn check_bool(t: &Tensor, dims: &[u64], values: &[bool]) {
    assert_eq!((t.dtype(), t.dims()), (DataType::Bool, dims), "{}", t.name);
    let got: Vec<bool> = t.bytes().unwrap().iter().map(|&b| b != 0).collect();
    assert_eq!(got, values);
}

fn iota_f32(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

fn iota_i64(n: usize) -> Vec<i64> {
    (0..n as i64).collect()
}

#[test]
fn folds_a_shape_computation_into_initializers() {
    let build = |g: &mut adaptc_ir::Graph| {
        g.inputs.push(f32_input("x", &[2, 3, 4]));
        g.add_initializer(f32s("src", &[6, 4], &[0.0; 24])).unwrap();
        g.add_node(node_with("Constant", &[], &["axes"], vec![Attribute::ints("value_ints", vec![0])])).unwrap();
        g.add_node(node("Shape", &["src"], &["s"]).named("shape")).unwrap();
        g.add_node(node_with("Constant", &[], &["idx"], vec![Attribute::int("value_int", 1)])).unwrap();
        g.add_node(node_with("Gather", &["s", "idx"], &["d"], vec![Attribute::int("axis", 0)])).unwrap();
        g.add_node(node("Unsqueeze", &["d", "axes"], &["du"])).unwrap();
        g.add_node(node_with("Constant", &[], &["minus1"], vec![Attribute::ints("value_ints", vec![-1])])).unwrap();
        g.add_node(node_with("Concat", &["minus1", "du"], &["shape"], vec![Attribute::int("axis", 0)])).unwrap();
        g.add_node(node("Reshape", &["x", "shape"], &["y"]).named("reshape")).unwrap();
        g.outputs.push(output("y"));
    };
    let mut m = model(17, build);
    let report = run("fold-constants", &mut m);
    assert_eq!(stat(&report, "fold.nodes_folded"), 7);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3, 4]
  init %src: f32[6, 4]
  init %axes: i64[1]
  init %s: i64[2]
  init %idx: i64[]
  init %d: i64[]
  init %du: i64[1]
  init %minus1: i64[1]
  init %shape: i64[2]
  %y = Reshape(%x, %shape)  # reshape
  output %y: ?
}
",
    );
    check_i64(m.graph.initializer("shape").unwrap(), &[2], &[-1, 4]);
    check_i64(m.graph.initializer("s").unwrap(), &[2], &[6, 4]);
    check_i64(m.graph.initializer("d").unwrap(), &[], &[4]);

    // With dce after it, only what the Reshape reads is left.
    let mut m = model(17, build);
    run("fold-constants,dce", &mut m);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3, 4]
  init %shape: i64[2]
  %y = Reshape(%x, %shape)  # reshape
  output %y: ?
}
",
    );
}

#[test]
fn constant_nodes_become_initializers() {
    let t = fold_one(17, vec![], op("Constant", 0, vec![Attribute::float("value_float", 2.5)]));
    check_f32(&t, &[], &[2.5]);
    let t = fold_one(
        17,
        vec![],
        op("Constant", 0, vec![Attribute::new("value_floats", AttrValue::Floats(vec![1.0, -1.0]))]),
    );
    check_f32(&t, &[2], &[1.0, -1.0]);
    let t = fold_one(17, vec![], op("Constant", 0, vec![Attribute::int("value_int", -3)]));
    check_i64(&t, &[], &[-3]);
    let t = fold_one(17, vec![], op("Constant", 0, vec![Attribute::ints("value_ints", vec![4, 5])]));
    check_i64(&t, &[2], &[4, 5]);
    let t =
        fold_one(17, vec![], op("Constant", 0, vec![Attribute::tensor("value", i64s("ignored", &[1, 2], &[7, 8]))]));
    check_i64(&t, &[1, 2], &[7, 8]);
    assert_eq!(t.name, "y");
    // String constants stay nodes.
    not_folded(17, vec![], op("Constant", 0, vec![Attribute::string("value_string", "hi")]));
}

#[test]
fn identity_and_cast() {
    check_f32(&fold_one(17, vec![f(0, &[2], &[1.0, 2.0])], op("Identity", 1, vec![])), &[2], &[1.0, 2.0]);
    // Identity of any type: f16 bytes are copied as they are.
    let half = Tensor::from_bytes("in0", DataType::Float16, vec![2], vec![0x00, 0x3c, 0x00, 0xc0]).unwrap();
    let t = fold_one(17, vec![half], op("Identity", 1, vec![]));
    assert_eq!((t.dtype(), t.bytes().unwrap().to_vec()), (DataType::Float16, vec![0x00, 0x3c, 0x00, 0xc0]));

    let to = |dt: DataType| vec![Attribute::int("to", i64::from(dt.code()))];
    let t = fold_one(17, vec![f(0, &[4], &[1.7, -1.7, 0.0, 2.5])], op("Cast", 1, to(DataType::Int64)));
    check_i64(&t, &[4], &[1, -1, 0, 2]);
    let t = fold_one(17, vec![l(0, &[3], &[0, 3, -2])], op("Cast", 1, to(DataType::Bool)));
    check_bool(&t, &[3], &[false, true, true]);
    let t = fold_one(17, vec![bools("in0", &[2], &[true, false])], op("Cast", 1, to(DataType::Float)));
    check_f32(&t, &[2], &[1.0, 0.0]);
    // Narrowing keeps the low 32 bits.
    let t = fold_one(17, vec![l(0, &[1], &[(1 << 33) + 5])], op("Cast", 1, to(DataType::Int32)));
    check_i32(&t, &[1], &[5]);
    let t = fold_one(17, vec![i32s("in0", &[2], &[-4, 9])], op("Cast", 1, to(DataType::Float)));
    check_f32(&t, &[2], &[-4.0, 9.0]);
    // Casts to types the folder does not evaluate are left alone.
    not_folded(17, vec![f(0, &[1], &[1.0])], op("Cast", 1, to(DataType::Float16)));
}

#[test]
fn shape_with_and_without_start_end() {
    let x = || f(0, &[2, 3, 4], &[0.0; 24]);
    check_i64(&fold_one(17, vec![x()], op("Shape", 1, vec![])), &[3], &[2, 3, 4]);
    let se = |attrs: &[(&str, i64)]| attrs.iter().map(|&(k, v)| Attribute::int(k, v)).collect::<Vec<_>>();
    check_i64(&fold_one(15, vec![x()], op("Shape", 1, se(&[("start", 1)]))), &[2], &[3, 4]);
    check_i64(&fold_one(15, vec![x()], op("Shape", 1, se(&[("start", -1)]))), &[1], &[4]);
    check_i64(&fold_one(15, vec![x()], op("Shape", 1, se(&[("end", -1)]))), &[2], &[2, 3]);
    check_i64(&fold_one(15, vec![x()], op("Shape", 1, se(&[("start", -10), ("end", 10)]))), &[3], &[2, 3, 4]);
    check_i64(&fold_one(15, vec![x()], op("Shape", 1, se(&[("start", 2), ("end", 1)]))), &[0], &[]);
    // Before opset 15 the attributes do not exist.
    check_i64(&fold_one(13, vec![x()], op("Shape", 1, se(&[("start", 1)]))), &[3], &[2, 3, 4]);
}

#[test]
fn unsqueeze_and_squeeze_in_both_opset_forms() {
    // Opset 11: axes attribute; negative axes count from the output rank.
    let t = fold_one(
        11,
        vec![f(0, &[3], &[1.0, 2.0, 3.0])],
        op("Unsqueeze", 1, vec![Attribute::ints("axes", vec![0, -1])]),
    );
    check_f32(&t, &[1, 3, 1], &[1.0, 2.0, 3.0]);
    // Opset 13: axes input.
    let t = fold_one(13, vec![l(0, &[2, 2], &[1, 2, 3, 4]), l(1, &[1], &[1])], op("Unsqueeze", 2, vec![]));
    check_i64(&t, &[2, 1, 2], &[1, 2, 3, 4]);
    let notes = not_folded(13, vec![l(0, &[2], &[1, 2]), l(1, &[2], &[0, 0])], op("Unsqueeze", 2, vec![]));
    assert!(notes[0].contains("axis 0 is repeated"), "{notes:?}");
    // At opset 13 the attribute form is not valid.
    not_folded(13, vec![l(0, &[2], &[1, 2])], op("Unsqueeze", 1, vec![Attribute::ints("axes", vec![0])]));

    let x = || f(0, &[1, 3, 1], &[1.0, 2.0, 3.0]);
    check_f32(&fold_one(11, vec![x()], op("Squeeze", 1, vec![])), &[3], &[1.0, 2.0, 3.0]);
    check_f32(
        &fold_one(11, vec![x()], op("Squeeze", 1, vec![Attribute::ints("axes", vec![0])])),
        &[3, 1],
        &[1.0, 2.0, 3.0],
    );
    check_f32(&fold_one(13, vec![x(), l(1, &[1], &[-1])], op("Squeeze", 2, vec![])), &[1, 3], &[1.0, 2.0, 3.0]);
    check_f32(&fold_one(13, vec![x()], op("Squeeze", 1, vec![])), &[3], &[1.0, 2.0, 3.0]);
    // An empty axes list means "all" to onnxruntime and "none" to the ONNX reference: not folded.
    assert!(not_folded(13, vec![x(), l(1, &[0], &[])], op("Squeeze", 2, vec![])).is_empty());
    let notes = not_folded(13, vec![x(), l(1, &[1], &[1])], op("Squeeze", 2, vec![]));
    assert!(notes[0].contains("cannot squeeze axis 1 of size 3"), "{notes:?}");
}

#[test]
fn reshape_with_zero_and_minus_one() {
    let x = || f(0, &[2, 3, 4], &iota_f32(24));
    let t = fold_one(13, vec![x(), l(1, &[2], &[0, -1])], op("Reshape", 2, vec![]));
    check_f32(&t, &[2, 12], &iota_f32(24));
    let t = fold_one(13, vec![x(), l(1, &[3], &[4, 0, 2])], op("Reshape", 2, vec![]));
    check_f32(&t, &[4, 3, 2], &iota_f32(24));
    // allowzero=1 (opset 14): 0 is a zero-sized dimension, not a copy.
    let empty = || f(0, &[2, 0], &[]);
    let allowzero = vec![Attribute::int("allowzero", 1)];
    check_f32(&fold_one(14, vec![empty(), l(1, &[2], &[0, 5])], op("Reshape", 2, allowzero.clone())), &[0, 5], &[]);
    let notes = not_folded(14, vec![empty(), l(1, &[2], &[0, 5])], op("Reshape", 2, vec![]));
    assert!(notes[0].contains("cannot reshape [2, 0] to [0, 5]"), "{notes:?}");
    let notes = not_folded(13, vec![x(), l(1, &[2], &[-1, -1])], op("Reshape", 2, vec![]));
    assert!(notes[0].contains("more than one -1"), "{notes:?}");
    let notes = not_folded(13, vec![x(), l(1, &[2], &[5, -1])], op("Reshape", 2, vec![]));
    assert!(notes[0].contains("cannot infer the -1"), "{notes:?}");
}

#[test]
fn concat_and_gather() {
    let t =
        fold_one(13, vec![l(0, &[2], &[1, 2]), l(1, &[1], &[3])], op("Concat", 2, vec![Attribute::int("axis", -1)]));
    check_i64(&t, &[3], &[1, 2, 3]);
    let t = fold_one(
        13,
        vec![f(0, &[2, 2], &[1.0, 2.0, 3.0, 4.0]), f(1, &[2, 1], &[5.0, 6.0])],
        op("Concat", 2, vec![Attribute::int("axis", 1)]),
    );
    check_f32(&t, &[2, 3], &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
    let notes =
        not_folded(13, vec![l(0, &[2], &[1, 2]), f(1, &[1], &[3.0])], op("Concat", 2, vec![Attribute::int("axis", 0)]));
    assert!(notes[0].contains("different types"), "{notes:?}");

    let data = || l(0, &[2, 3], &[1, 2, 3, 4, 5, 6]);
    // Axis 1 with 2-D indices, one negative: out shape [2] + [1, 2] + [].
    let t = fold_one(13, vec![data(), l(1, &[1, 2], &[0, -1])], op("Gather", 2, vec![Attribute::int("axis", 1)]));
    check_i64(&t, &[2, 1, 2], &[1, 3, 4, 6]);
    // A scalar index drops the axis; int32 indices work too.
    let t = fold_one(13, vec![data(), i32s("in1", &[], &[1])], op("Gather", 2, vec![]));
    check_i64(&t, &[3], &[4, 5, 6]);
    let notes = not_folded(13, vec![data(), l(1, &[1], &[3])], op("Gather", 2, vec![Attribute::int("axis", 1)]));
    assert!(notes[0].contains("index 3 is out of range for axis 1 of size 3"), "{notes:?}");
    // Raw (u8) data moves like any other.
    let bytes = Tensor::from_bytes("in0", DataType::Uint8, vec![3], vec![10, 20, 30]).unwrap();
    let t = fold_one(13, vec![bytes, l(1, &[2], &[2, 0])], op("Gather", 2, vec![]));
    assert_eq!((t.dtype(), t.dims(), t.bytes().unwrap().to_vec()), (DataType::Uint8, &[2u64][..], vec![30, 10]));
}

#[test]
fn slice_in_both_opset_forms() {
    // Opset 9: attributes.
    let attrs = vec![Attribute::ints("starts", vec![2]), Attribute::ints("ends", vec![5])];
    check_i64(&fold_one(9, vec![l(0, &[10], &iota_i64(10))], op("Slice", 1, attrs)), &[3], &[2, 3, 4]);

    // Opset 13: negative steps, a start past the end clamped, an end of INT64_MIN.
    let data = || l(0, &[3, 4], &iota_i64(12));
    let t = fold_one(
        13,
        vec![data(), l(1, &[2], &[-1, 3]), l(2, &[2], &[i64::MIN, 0]), l(3, &[2], &[0, 1]), l(4, &[2], &[-2, -1])],
        op("Slice", 5, vec![]),
    );
    check_i64(&t, &[2, 3], &[11, 10, 9, 3, 2, 1]);
    // INT64_MAX as "to the end", axes omitted.
    let t = fold_one(
        13,
        vec![l(0, &[10], &iota_i64(10)), l(1, &[1], &[1]), l(2, &[1], &[i64::MAX])],
        op("Slice", 3, vec![]),
    );
    check_i64(&t, &[9], &iota_i64(10)[1..]);
    // Negative axis, step 2, start clamped at 0, end clamped at the dimension.
    let t = fold_one(
        13,
        vec![data(), l(1, &[1], &[-100]), l(2, &[1], &[100]), l(3, &[1], &[-1]), l(4, &[1], &[2])],
        op("Slice", 5, vec![]),
    );
    check_i64(&t, &[3, 2], &[0, 2, 4, 6, 8, 10]);
    // An empty result.
    let t = fold_one(13, vec![data(), l(1, &[1], &[3]), l(2, &[1], &[1]), l(3, &[1], &[1])], op("Slice", 4, vec![]));
    check_i64(&t, &[3, 0], &[]);
    let notes = not_folded(
        13,
        vec![data(), l(1, &[1], &[0]), l(2, &[1], &[1]), l(3, &[1], &[0]), l(4, &[1], &[0])],
        op("Slice", 5, vec![]),
    );
    assert!(notes[0].contains("step is 0"), "{notes:?}");
}

#[test]
fn transpose_with_and_without_perm() {
    let t = fold_one(13, vec![f(0, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])], op("Transpose", 1, vec![]));
    check_f32(&t, &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // out[k][i][j] = in[i][j][k] = 12 i + 4 j + k.
    let t = fold_one(
        13,
        vec![l(0, &[2, 3, 4], &iota_i64(24))],
        op("Transpose", 1, vec![Attribute::ints("perm", vec![2, 0, 1])]),
    );
    let mut expected = Vec::new();
    for k in 0..4 {
        for i in 0..2 {
            for j in 0..3 {
                expected.push(12 * i + 4 * j + k);
            }
        }
    }
    check_i64(&t, &[4, 2, 3], &expected);
    let notes = not_folded(
        13,
        vec![l(0, &[2, 2], &[1, 2, 3, 4])],
        op("Transpose", 1, vec![Attribute::ints("perm", vec![0, 0])]),
    );
    assert!(notes[0].contains("not a permutation"), "{notes:?}");
}

#[test]
fn range_counts_like_onnx() {
    let scalars = |a: i64, b: i64, c: i64| vec![l(0, &[], &[a]), l(1, &[], &[b]), l(2, &[], &[c])];
    check_i64(&fold_one(13, scalars(0, 10, 3), op("Range", 3, vec![])), &[4], &[0, 3, 6, 9]);
    check_i64(&fold_one(13, scalars(5, 1, 1), op("Range", 3, vec![])), &[0], &[]);
    let t = fold_one(
        13,
        vec![i32s("in0", &[], &[10]), i32s("in1", &[], &[4]), i32s("in2", &[], &[-2])],
        op("Range", 3, vec![]),
    );
    check_i32(&t, &[3], &[10, 8, 6]);
    let t = fold_one(13, vec![f(0, &[], &[1.0]), f(1, &[], &[2.0]), f(2, &[], &[0.25])], op("Range", 3, vec![]));
    check_f32(&t, &[4], &[1.0, 1.25, 1.5, 1.75]);
    let notes = not_folded(13, scalars(0, 1, 0), op("Range", 3, vec![]));
    assert!(notes[0].contains("delta is 0"), "{notes:?}");
}

#[test]
fn arithmetic_broadcasts_like_numpy() {
    let t = fold_one(13, vec![f(0, &[2, 1], &[1.0, 2.0]), f(1, &[3], &[10.0, 20.0, 30.0])], op("Add", 2, vec![]));
    check_f32(&t, &[2, 3], &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    let t = fold_one(13, vec![l(0, &[1], &[5]), l(1, &[1, 2], &[1, 2])], op("Sub", 2, vec![]));
    check_i64(&t, &[1, 2], &[4, 3]);
    let t = fold_one(13, vec![i32s("in0", &[2], &[2, 3]), i32s("in1", &[], &[4])], op("Mul", 2, vec![]));
    check_i32(&t, &[2], &[8, 12]);
    // Integer division truncates toward zero.
    let t = fold_one(13, vec![l(0, &[4], &[7, -7, 7, -7]), l(1, &[4], &[2, 2, -2, -2])], op("Div", 2, vec![]));
    check_i64(&t, &[4], &[3, -3, -3, 3]);
    let t = fold_one(13, vec![f(0, &[2], &[1.0, -3.0]), f(1, &[], &[0.0])], op("Div", 2, vec![]));
    check_f32(&t, &[2], &[f32::INFINITY, f32::NEG_INFINITY]);
    let notes = not_folded(13, vec![l(0, &[1], &[1]), l(1, &[1], &[0])], op("Div", 2, vec![]));
    assert!(notes[0].contains("division by zero"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[1], &[1]), f(1, &[1], &[1.0])], op("Add", 2, vec![]));
    assert!(notes[0].contains("different types"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[2], &[1, 2]), l(1, &[3], &[1, 2, 3])], op("Add", 2, vec![]));
    assert!(notes[0].contains("do not broadcast"), "{notes:?}");
    // Before opset 7 there is no multidirectional broadcasting.
    let notes = not_folded(6, vec![l(0, &[2], &[1, 2]), l(1, &[1], &[1])], op("Add", 2, vec![]));
    assert!(notes[0].contains("broadcasting needs opset 7"), "{notes:?}");
    check_i64(&fold_one(6, vec![l(0, &[2], &[1, 2]), l(1, &[2], &[3, 4])], op("Add", 2, vec![])), &[2], &[4, 6]);

    check_i64(&fold_one(13, vec![l(0, &[2], &[1, -2])], op("Neg", 1, vec![])), &[2], &[-1, 2]);
    check_f32(&fold_one(13, vec![f(0, &[1], &[0.5])], op("Neg", 1, vec![])), &[1], &[-0.5]);
}

#[test]
fn equal_and_where() {
    let t = fold_one(13, vec![l(0, &[2, 2], &[1, 2, 3, 4]), l(1, &[2], &[1, 4])], op("Equal", 2, vec![]));
    check_bool(&t, &[2, 2], &[true, false, false, true]);
    let t = fold_one(13, vec![f(0, &[2], &[f32::NAN, 1.0]), f(1, &[2], &[f32::NAN, 1.0])], op("Equal", 2, vec![]));
    check_bool(&t, &[2], &[false, true]);
    let t = fold_one(
        13,
        vec![bools("in0", &[2], &[true, false]), l(1, &[2, 2], &[1, 2, 3, 4]), l(2, &[], &[0])],
        op("Where", 3, vec![]),
    );
    check_i64(&t, &[2, 2], &[1, 0, 3, 0]);
}

#[test]
fn leaves_non_constant_unknown_and_graph_output_nodes_alone() {
    // Unknown op, or a known op in another domain: silently left alone.
    assert!(not_folded(17, vec![f(0, &[1], &[4.0])], op("Sqrt", 1, vec![])).is_empty());
    let custom = Node::new(OpKey::new("com.example", "Add"), strings(&["in0", "in0"]), strings(&["y"]));
    assert!(not_folded(17, vec![f(0, &[1], &[4.0])], custom).is_empty());

    // An initializer that is also a graph input is not a constant.
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("w", &[1]));
        g.add_initializer(f32s("w", &[1], &[1.0])).unwrap();
        g.add_node(node("Neg", &["w"], &["y"])).unwrap();
        g.add_node(node("Identity", &["y"], &["out"])).unwrap();
        g.outputs.push(output("out"));
    });
    assert!(!run("fold-constants", &mut m).changed());

    // A node producing a graph output keeps producing it.
    let mut m = model(17, |g| {
        g.add_initializer(f32s("w", &[1], &[1.0])).unwrap();
        g.add_node(node("Neg", &["w"], &["y"])).unwrap();
        g.add_node(node_with("Constant", &[], &["k"], vec![Attribute::int("value_int", 1)])).unwrap();
        g.outputs.push(output("y"));
        g.outputs.push(output("k"));
    });
    assert!(!run("fold-constants", &mut m).changed());
    assert_eq!(m.graph.num_nodes(), 2);
}

#[test]
fn results_over_the_size_cap_are_not_folded() {
    let scalars = || vec![l(0, &[], &[0]), l(1, &[], &[3]), l(2, &[], &[1])];
    let mut m = one_node_model(13, scalars(), op("Range", 3, vec![]));
    let report = run("fold-constants{max-bytes=16}", &mut m);
    assert!(!report.changed());
    assert_eq!(stat(&report, "fold.too_large"), 1);
    // 3 × 8 bytes fits in 24.
    check_i64(
        &{
            let mut m = one_node_model(13, scalars(), op("Range", 3, vec![]));
            run("fold-constants{max-bytes=24}", &mut m);
            m.graph.initializer("y").cloned().unwrap()
        },
        &[3],
        &[0, 1, 2],
    );
    // A huge range is refused before anything is allocated.
    let huge = vec![l(0, &[], &[0]), l(1, &[], &[i64::MAX]), l(2, &[], &[1])];
    not_folded(13, huge, op("Range", 3, vec![]));
}

#[test]
fn a_model_without_the_default_domain_is_left_alone() {
    let mut m = one_node_model(13, vec![f(0, &[1], &[1.0])], op("Neg", 1, vec![]));
    m.opset_imports.clear();
    let report = run("fold-constants", &mut m);
    assert!(!report.changed());
    assert!(report.runs[0].notes[0].contains("does not import the default ONNX domain"));
}

#[test]
fn uses_inside_subgraphs_follow_the_folded_value() {
    // `y` is folded while an If branch reads it from the outer scope.
    let mut m = model(17, |g| {
        g.inputs.push(output("cond"));
        g.add_initializer(f32s("w", &[1], &[2.0])).unwrap();
        g.add_node(node("Neg", &["w"], &["y"])).unwrap();
        let mut branch = adaptc_ir::Graph::new("b");
        branch.add_node(node("Identity", &["y"], &["b_out"])).unwrap();
        branch.outputs.push(output("b_out"));
        let if_node = Node::new(OpKey::onnx("If"), strings(&["cond"]), strings(&["out"]))
            .with_attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch.clone()))))
            .with_attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch))));
        g.add_node(if_node).unwrap();
        g.outputs.push(output("out"));
    });
    let report = run("fold-constants", &mut m);
    assert_eq!(stat(&report, "fold.nodes_folded"), 1);
    check_f32(m.graph.initializer("y").unwrap(), &[1], &[-2.0]);
    assert!(m.graph.initializer("y.folded").is_none());
}

/// Like [`check_f32`], with NaN equal to NaN.
fn check_f32_nan(t: &Tensor, dims: &[u64], values: &[f32]) {
    assert_eq!((t.dtype(), t.dims()), (DataType::Float, dims), "{}", t.name);
    let got = t.to_f32().unwrap();
    let same = got.len() == values.len() && got.iter().zip(values).all(|(g, e)| g == e || (g.is_nan() && e.is_nan()));
    assert!(same, "got {got:?}, expected {values:?}");
}

#[test]
fn comparisons_broadcast_and_are_false_on_nan() {
    let a = || f(0, &[2, 1], &[1.0, 5.0]);
    let b = || f(1, &[3], &[0.0, 5.0, 9.0]);
    // [[1], [5]] against [0, 5, 9]: a [2, 3] result.
    check_bool(&fold_one(13, vec![a(), b()], op("Less", 2, vec![])), &[2, 3], &[false, true, true, false, false, true]);
    check_bool(
        &fold_one(13, vec![a(), b()], op("Greater", 2, vec![])),
        &[2, 3],
        &[true, false, false, true, false, false],
    );
    check_bool(
        &fold_one(13, vec![a(), b()], op("LessOrEqual", 2, vec![])),
        &[2, 3],
        &[false, true, true, false, true, true],
    );
    check_bool(
        &fold_one(13, vec![a(), b()], op("GreaterOrEqual", 2, vec![])),
        &[2, 3],
        &[true, false, false, true, true, false],
    );
    // A scalar on either side; int64 and int32.
    let t = fold_one(13, vec![l(0, &[3], &[1, 2, 3]), l(1, &[], &[2])], op("LessOrEqual", 2, vec![]));
    check_bool(&t, &[3], &[true, true, false]);
    let t = fold_one(13, vec![l(0, &[], &[2]), l(1, &[3], &[1, 2, 3])], op("Less", 2, vec![]));
    check_bool(&t, &[3], &[false, false, true]);
    // [-1, 4] against [[4], [-1]].
    let t = fold_one(
        13,
        vec![i32s("in0", &[2], &[-1, 4]), i32s("in1", &[2, 1], &[4, -1])],
        op("GreaterOrEqual", 2, vec![]),
    );
    check_bool(&t, &[2, 2], &[false, true, true, true]);
    let t = fold_one(13, vec![l(0, &[2], &[i64::MIN, 7]), l(1, &[2], &[i64::MAX, 7])], op("Greater", 2, vec![]));
    check_bool(&t, &[2], &[false, false]);
    // Every comparison with NaN is false.
    let nan = || vec![f(0, &[3], &[f32::NAN, 1.0, f32::NAN]), f(1, &[3], &[1.0, f32::NAN, f32::NAN])];
    for name in ["Less", "Greater", "LessOrEqual", "GreaterOrEqual"] {
        check_bool(&fold_one(13, nan(), op(name, 2, vec![])), &[3], &[false, false, false]);
    }

    let notes = not_folded(13, vec![l(0, &[1], &[1]), f(1, &[1], &[1.0])], op("Less", 2, vec![]));
    assert!(notes[0].contains("different types"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[2], &[1, 2]), l(1, &[3], &[1, 2, 3])], op("Greater", 2, vec![]));
    assert!(notes[0].contains("do not broadcast"), "{notes:?}");
    // Bool is not an ordered type here: left alone without a note.
    let bb = || vec![bools("in0", &[1], &[true]), bools("in1", &[1], &[false])];
    assert!(not_folded(13, bb(), op("Greater", 2, vec![])).is_empty());
}

#[test]
fn max_and_min_are_variadic_broadcast_and_propagate_nan() {
    // Three f32 inputs [2, 2], [2], []; the NaN wins wherever it is.
    let inputs = || vec![f(0, &[2, 2], &[1.0, 5.0, f32::NAN, -2.0]), f(1, &[2], &[3.0, 4.0]), f(2, &[], &[0.0])];
    check_f32_nan(&fold_one(13, inputs(), op("Max", 3, vec![])), &[2, 2], &[3.0, 5.0, f32::NAN, 4.0]);
    check_f32_nan(&fold_one(13, inputs(), op("Min", 3, vec![])), &[2, 2], &[0.0, 0.0, f32::NAN, -2.0]);
    // A NaN in a later input, and in the last one.
    let inputs =
        || vec![f(0, &[3], &[1.0, 2.0, 3.0]), f(1, &[3], &[f32::NAN, 0.0, 5.0]), f(2, &[3], &[2.0, 2.0, f32::NAN])];
    check_f32_nan(&fold_one(13, inputs(), op("Min", 3, vec![])), &[3], &[f32::NAN, 0.0, f32::NAN]);
    check_f32_nan(&fold_one(13, inputs(), op("Max", 3, vec![])), &[3], &[f32::NAN, 2.0, f32::NAN]);

    // Three int64 inputs [2, 1], [3], [2, 3].
    let inputs = || vec![l(0, &[2, 1], &[1, 10]), l(1, &[3], &[5, -3, 12]), l(2, &[2, 3], &[0, 0, 0, 11, 11, 11])];
    check_i64(&fold_one(13, inputs(), op("Max", 3, vec![])), &[2, 3], &[5, 1, 12, 11, 11, 12]);
    check_i64(&fold_one(13, inputs(), op("Min", 3, vec![])), &[2, 3], &[0, -3, 0, 5, -3, 10]);
    let t = fold_one(13, vec![i32s("in0", &[2], &[3, -7]), i32s("in1", &[], &[0])], op("Min", 2, vec![]));
    check_i32(&t, &[2], &[0, -7]);
    // One input is a copy.
    check_i64(&fold_one(13, vec![l(0, &[2], &[4, -4])], op("Max", 1, vec![])), &[2], &[4, -4]);

    let notes = not_folded(13, vec![l(0, &[1], &[1]), l(1, &[1], &[2]), f(2, &[1], &[3.0])], op("Max", 3, vec![]));
    assert!(notes[0].contains("different types"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[2], &[1, 2]), l(1, &[3], &[1, 2, 3])], op("Min", 2, vec![]));
    assert!(notes[0].contains("do not broadcast"), "{notes:?}");
    // Max-6/Min-6 (opsets 6 and 7) need equal shapes; broadcasting comes with opset 8.
    let notes = not_folded(7, vec![l(0, &[2], &[1, 5]), l(1, &[1], &[3])], op("Max", 2, vec![]));
    assert!(notes[0].contains("broadcasting needs opset 8"), "{notes:?}");
    check_i64(&fold_one(7, vec![l(0, &[2], &[1, 5]), l(1, &[2], &[3, 3])], op("Max", 2, vec![])), &[2], &[3, 5]);
    check_i64(&fold_one(8, vec![l(0, &[2], &[1, 5]), l(1, &[1], &[3])], op("Min", 2, vec![])), &[2], &[1, 3]);
}

#[test]
fn and_or_xor_not_and_is_nan() {
    // [[T, T], [F, F]] against [T, F].
    let ab = || vec![bools("in0", &[2, 2], &[true, true, false, false]), bools("in1", &[2], &[true, false])];
    check_bool(&fold_one(13, ab(), op("And", 2, vec![])), &[2, 2], &[true, false, false, false]);
    check_bool(&fold_one(13, ab(), op("Or", 2, vec![])), &[2, 2], &[true, true, true, false]);
    check_bool(&fold_one(13, ab(), op("Xor", 2, vec![])), &[2, 2], &[false, true, true, false]);
    // A scalar against a [2, 1].
    let t = fold_one(13, vec![bools("in0", &[], &[true]), bools("in1", &[2, 1], &[true, false])], op("Xor", 2, vec![]));
    check_bool(&t, &[2, 1], &[false, true]);
    let notes = not_folded(13, vec![l(0, &[2], &[1, 0]), l(1, &[2], &[1, 1])], op("And", 2, vec![]));
    assert!(notes[0].contains("not bool tensors"), "{notes:?}");
    let notes = not_folded(13, vec![bools("in0", &[1], &[true]), l(1, &[1], &[1])], op("Or", 2, vec![]));
    assert!(notes[0].contains("not bool tensors"), "{notes:?}");
    let notes =
        not_folded(13, vec![bools("in0", &[2], &[true, false]), bools("in1", &[3], &[true; 3])], op("And", 2, vec![]));
    assert!(notes[0].contains("do not broadcast"), "{notes:?}");

    check_bool(
        &fold_one(13, vec![bools("in0", &[2, 2], &[true, false, false, true])], op("Not", 1, vec![])),
        &[2, 2],
        &[false, true, true, false],
    );
    check_bool(&fold_one(13, vec![bools("in0", &[], &[false])], op("Not", 1, vec![])), &[], &[true]);
    let notes = not_folded(13, vec![f(0, &[1], &[0.0])], op("Not", 1, vec![]));
    assert!(notes[0].contains("not a bool tensor"), "{notes:?}");

    let t = fold_one(13, vec![f(0, &[2, 2], &[f32::NAN, 1.0, f32::INFINITY, -f32::NAN])], op("IsNaN", 1, vec![]));
    check_bool(&t, &[2, 2], &[true, false, false, true]);
    check_bool(&fold_one(13, vec![f(0, &[0], &[])], op("IsNaN", 1, vec![])), &[0], &[]);
    // Integers are never NaN, but IsNaN is not defined on them: left alone.
    assert!(not_folded(13, vec![l(0, &[1], &[1])], op("IsNaN", 1, vec![])).is_empty());
}

#[test]
fn expand_broadcasts_both_ways() {
    // [3, 1] to [2, 1, 4]: the input's 1 grows to 4, the shape's 1 takes the input's 3.
    let t = fold_one(13, vec![f(0, &[3, 1], &[0.0, 1.0, 2.0]), l(1, &[3], &[2, 1, 4])], op("Expand", 2, vec![]));
    let block = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0];
    check_f32(&t, &[2, 3, 4], &[block, block].concat());
    // A shape of lower rank than the input: the input's shape is kept.
    let x = || l(0, &[2, 3], &[1, 2, 3, 4, 5, 6]);
    check_i64(&fold_one(13, vec![x(), l(1, &[1], &[3])], op("Expand", 2, vec![])), &[2, 3], &[1, 2, 3, 4, 5, 6]);
    check_i64(&fold_one(13, vec![x(), l(1, &[1], &[1])], op("Expand", 2, vec![])), &[2, 3], &[1, 2, 3, 4, 5, 6]);
    check_i64(&fold_one(13, vec![x(), l(1, &[0], &[])], op("Expand", 2, vec![])), &[2, 3], &[1, 2, 3, 4, 5, 6]);
    // 1-dims of the shape do not shrink the input.
    check_i64(&fold_one(13, vec![x(), l(1, &[2], &[2, 1])], op("Expand", 2, vec![])), &[2, 3], &[1, 2, 3, 4, 5, 6]);
    // [1, 3] and [2, 1] broadcast up to [2, 3]; a scalar expands to any shape.
    let t = fold_one(13, vec![l(0, &[1, 3], &[7, 8, 9]), l(1, &[2], &[2, 1])], op("Expand", 2, vec![]));
    check_i64(&t, &[2, 3], &[7, 8, 9, 7, 8, 9]);
    check_bool(
        &fold_one(13, vec![bools("in0", &[], &[true]), l(1, &[2], &[1, 2])], op("Expand", 2, vec![])),
        &[1, 2],
        &[true, true],
    );
    // A zero in the shape gives an empty result.
    check_f32(&fold_one(13, vec![f(0, &[1], &[1.0]), l(1, &[2], &[0, 1])], op("Expand", 2, vec![])), &[0, 1], &[]);
    // Raw (u8) data.
    let bytes = Tensor::from_bytes("in0", DataType::Uint8, vec![2], vec![7, 9]).unwrap();
    let t = fold_one(13, vec![bytes, l(1, &[2], &[3, 1])], op("Expand", 2, vec![]));
    assert_eq!(
        (t.dtype(), t.dims(), t.bytes().unwrap().to_vec()),
        (DataType::Uint8, &[3u64, 2][..], vec![7, 9, 7, 9, 7, 9])
    );

    let notes = not_folded(13, vec![x(), l(1, &[2], &[2, -1])], op("Expand", 2, vec![]));
    assert!(notes[0].contains("negative dimension -1"), "{notes:?}");
    let notes = not_folded(13, vec![x(), l(1, &[1], &[4])], op("Expand", 2, vec![]));
    assert!(notes[0].contains("do not broadcast"), "{notes:?}");
    let notes = not_folded(13, vec![x(), f(1, &[1], &[3.0])], op("Expand", 2, vec![]));
    assert!(notes[0].contains("not an integer tensor"), "{notes:?}");
}

#[test]
fn gather_nd_with_negative_indices_and_batch_dims() {
    let data2 = || l(0, &[2, 2], &[0, 1, 2, 3]);
    // Full tuples pick elements, shorter ones pick slices.
    check_i64(&fold_one(13, vec![data2(), l(1, &[2, 2], &[0, 0, 1, 1])], op("GatherND", 2, vec![])), &[2], &[0, 3]);
    check_i64(&fold_one(13, vec![data2(), l(1, &[2, 1], &[1, 0])], op("GatherND", 2, vec![])), &[2, 2], &[2, 3, 0, 1]);
    let data3 = || f(0, &[2, 2, 2], &iota_f32(8));
    let t = fold_one(13, vec![data3(), l(1, &[2, 2], &[0, 1, 1, 0])], op("GatherND", 2, vec![]));
    check_f32(&t, &[2, 2], &[2.0, 3.0, 4.0, 5.0]);
    let t = fold_one(13, vec![data3(), l(1, &[2, 1, 2], &[0, 1, 1, 0])], op("GatherND", 2, vec![]));
    check_f32(&t, &[2, 1, 2], &[2.0, 3.0, 4.0, 5.0]);
    // Negative indices count from the end: [-1, -1] is [1, 2], [0, -3] is [0, 0].
    let t = fold_one(13, vec![l(0, &[2, 3], &iota_i64(6)), l(1, &[2, 2], &[-1, -1, 0, -3])], op("GatherND", 2, vec![]));
    check_i64(&t, &[2], &[5, 0]);
    // int32 indices.
    let t = fold_one(13, vec![l(0, &[3], &[10, 20, 30]), i32s("in1", &[2, 1], &[2, -3])], op("GatherND", 2, vec![]));
    check_i64(&t, &[2], &[30, 10]);

    // batch_dims=1: each batch of the indices reads its own batch of the data.
    let batch = vec![Attribute::int("batch_dims", 1)];
    let t = fold_one(13, vec![data3(), l(1, &[2, 1], &[1, 0])], op("GatherND", 2, batch.clone()));
    check_f32(&t, &[2, 2], &[2.0, 3.0, 4.0, 5.0]);
    // data[b][i][j] = 6 b + 3 i + j; batch 0 reads [0, 2] and [1, -1], batch 1 reads [1, 0] and [0, 1].
    let t = fold_one(
        13,
        vec![l(0, &[2, 2, 3], &iota_i64(12)), l(1, &[2, 2, 2], &[0, 2, 1, -1, 1, 0, 0, 1])],
        op("GatherND", 2, batch.clone()),
    );
    check_i64(&t, &[2, 2], &[2, 5, 9, 7]);

    // Out of range (positive and negative): left alone, the note names the node and the index.
    let gnd = || op("GatherND", 2, vec![]).named("gnd");
    let notes = not_folded(13, vec![l(0, &[2, 3], &iota_i64(6)), l(1, &[1, 2], &[0, 3])], gnd());
    assert!(notes[0].contains("left `gnd` (GatherND) alone"), "{notes:?}");
    assert!(notes[0].contains("index 3 is out of range"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[2, 3], &iota_i64(6)), l(1, &[1, 2], &[-3, 0])], gnd());
    assert!(notes[0].contains("index -3 is out of range"), "{notes:?}");
    let notes = not_folded(13, vec![l(0, &[2, 3], &iota_i64(6)), l(1, &[1, 2], &[0, -4])], gnd());
    assert!(notes[0].contains("index -4 is out of range"), "{notes:?}");
    // Tuples longer than the data's rank, batch dimensions that differ, batch_dims too large.
    let notes = not_folded(13, vec![data2(), l(1, &[1, 3], &[0, 0, 0])], op("GatherND", 2, vec![]));
    assert!(notes[0].contains("do not fit"), "{notes:?}");
    let notes = not_folded(13, vec![data3(), l(1, &[3, 1], &[0, 0, 0])], op("GatherND", 2, batch));
    assert!(notes[0].contains("do not fit"), "{notes:?}");
    let notes =
        not_folded(13, vec![data2(), l(1, &[2, 1], &[0, 0])], op("GatherND", 2, vec![Attribute::int("batch_dims", 2)]));
    assert!(notes[0].contains("batch_dims must be smaller"), "{notes:?}");
    let notes = not_folded(13, vec![data2(), f(1, &[1, 1], &[0.0])], op("GatherND", 2, vec![]));
    assert!(notes[0].contains("not integers"), "{notes:?}");
}
