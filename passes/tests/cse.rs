//! `cse`: golden dumps, and the merges it must refuse.

mod common;

use adaptc_ir::{AttrValue, Attribute, Graph, Node, OpKey};
use common::*;

#[test]
fn merges_duplicate_nodes_and_cascades() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 3]));
        g.add_initializer(f32s("w", &[3], &[1.0, 2.0, 3.0])).unwrap();
        g.add_node(node("Add", &["x", "w"], &["a1"]).named("add1")).unwrap();
        g.add_node(node("Add", &["x", "w"], &["a2"]).named("add2")).unwrap();
        // Identical once a1 and a2 are one value.
        g.add_node(node("Neg", &["a1"], &["n1"]).named("neg1")).unwrap();
        g.add_node(node("Neg", &["a2"], &["n2"]).named("neg2")).unwrap();
        // Same op and inputs, different attribute values: never merged.
        g.add_node(node_with("Transpose", &["x"], &["t1"], vec![Attribute::ints("perm", vec![1, 0])])).unwrap();
        g.add_node(node_with("Transpose", &["x"], &["t2"], vec![Attribute::ints("perm", vec![0, 1])])).unwrap();
        // Same attributes written in another order: merged.
        let attrs = [Attribute::float("alpha", 0.5), Attribute::int("transB", 1)];
        g.add_node(node_with("Gemm", &["x", "x"], &["g1"], attrs.to_vec())).unwrap();
        g.add_node(node_with("Gemm", &["x", "x"], &["g2"], attrs.iter().rev().cloned().collect())).unwrap();
        g.add_node(node("Sum", &["n1", "n2", "t1", "t2", "g1", "g2"], &["y"]).named("sum")).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("cse", &mut m);
    assert!(report.changed());
    assert_eq!(stat(&report, "cse.nodes_merged"), 3);
    assert_eq!(stat(&report, "cse.initializers_merged"), 0);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3]
  init %w: f32[3]
  %a1 = Add(%x, %w)  # add1
  %n1 = Neg(%a1)  # neg1
  %t1 = Transpose(%x) {perm=[1, 0]}
  %t2 = Transpose(%x) {perm=[0, 1]}
  %g1 = Gemm(%x, %x) {alpha=0.5, transB=1}
  %y = Sum(%n1, %n1, %t1, %t2, %g1, %g1)  # sum
  output %y: ?
}
",
    );
    assert!(!run("cse", &mut m).changed());
}

#[test]
fn merges_identical_small_constant_initializers_only() {
    let build = |g: &mut Graph| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_initializer(f32s("c1", &[2], &[1.0, 2.0])).unwrap();
        g.add_initializer(f32s("c2", &[2], &[1.0, 2.0])).unwrap();
        // Same bytes, other shape or type: different values.
        g.add_initializer(f32s("c3", &[2, 1], &[1.0, 2.0])).unwrap();
        g.add_initializer(i64s("c4", &[2], &[1, 2])).unwrap();
        // A graph input's initializer is only a default: never merged.
        g.inputs.push(f32_input("c5", &[2]));
        g.add_initializer(f32s("c5", &[2], &[1.0, 2.0])).unwrap();
        g.add_node(node("Add", &["x", "c1"], &["a"])).unwrap();
        g.add_node(node("Mul", &["a", "c2"], &["b"])).unwrap();
        g.add_node(node("Mul", &["b", "c3"], &["c"])).unwrap();
        g.add_node(node("Sub", &["c", "c5"], &["d"])).unwrap();
        g.add_node(node("Reshape", &["d", "c4"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    };
    let mut m = model(17, build);
    let report = run("cse", &mut m);
    assert_eq!(stat(&report, "cse.initializers_merged"), 1);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2]
  input %c5: f32[2]
  init %c1: f32[2]
  init %c3: f32[2, 1]
  init %c4: i64[2]
  init %c5: f32[2]
  %a = Add(%x, %c1)
  %b = Mul(%a, %c1)
  %c = Mul(%b, %c3)
  %d = Sub(%c, %c5)
  %y = Reshape(%d, %c4)
  output %y: ?
}
",
    );

    // Turned off, or over the size limit: nothing merges.
    for pipeline in ["cse{initializers=false}", "cse{max-bytes=7}"] {
        let mut m = model(17, build);
        let before = adaptc_ir::dump(&m);
        let report = run(pipeline, &mut m);
        assert!(!report.changed(), "{pipeline}");
        assert_eq!(adaptc_ir::dump(&m), before, "{pipeline}");
    }
}

#[test]
fn graph_outputs_survive_and_are_never_removed() {
    // Only the later duplicate is a graph output: it survives and takes the earlier one's uses.
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_node(node("Neg", &["x"], &["early"]).named("early")).unwrap();
        g.add_node(node("Abs", &["early"], &["z"]).named("user")).unwrap();
        g.add_node(node("Neg", &["x"], &["late"]).named("late")).unwrap();
        g.outputs.push(output("late"));
        g.outputs.push(output("z"));
    });
    let report = run("cse", &mut m);
    assert_eq!(stat(&report, "cse.nodes_merged"), 1);
    assert!(m.graph.is_ordered());
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2]
  %late = Neg(%x)  # late
  %z = Abs(%late)  # user
  output %late: ?
  output %z: ?
}
",
    );

    // Both are graph outputs: neither can go.
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_node(node("Neg", &["x"], &["y1"])).unwrap();
        g.add_node(node("Neg", &["x"], &["y2"])).unwrap();
        g.outputs.push(output("y1"));
        g.outputs.push(output("y2"));
    });
    assert!(!run("cse", &mut m).changed());
    assert_eq!(m.graph.num_nodes(), 2);
}

#[test]
fn never_merges_subgraphs_random_ops_or_other_domains() {
    let branch = |name: &str| {
        let mut b = Graph::new(name);
        b.add_node(node("Identity", &["x"], &[&format!("{name}_out")])).unwrap();
        b.outputs.push(output(&format!("{name}_out")));
        b
    };
    let if_node = |out: &str| {
        Node::new(OpKey::onnx("If"), strings(&["cond"]), strings(&[out]))
            .with_attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch("t")))))
            .with_attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch("e")))))
    };
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.inputs.push(output("cond"));
        g.add_node(if_node("i1")).unwrap();
        g.add_node(if_node("i2")).unwrap();
        g.add_node(node("RandomNormalLike", &["x"], &["r1"])).unwrap();
        g.add_node(node("RandomNormalLike", &["x"], &["r2"])).unwrap();
        g.add_node(node("Dropout", &["x"], &["d1"])).unwrap();
        g.add_node(node("Dropout", &["x"], &["d2"])).unwrap();
        g.add_node(Node::new(OpKey::new("com.example", "Counter"), strings(&["x"]), strings(&["c1"]))).unwrap();
        g.add_node(Node::new(OpKey::new("com.example", "Counter"), strings(&["x"]), strings(&["c2"]))).unwrap();
        g.add_node(node("Sum", &["i1", "i2", "r1", "r2", "d1", "d2", "c1", "c2"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("cse", &mut m);
    assert!(!report.changed());
    assert_eq!(m.graph.num_nodes(), 9);
}

#[test]
fn distinguishes_output_arity_and_tensor_attributes() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[4]));
        // Same op and input, different output count (for Split-1 that is the number of parts).
        // (The dump prints an omitted output as a bare `%`.)
        g.add_node(node("Split", &["x"], &["s1"])).unwrap();
        g.add_node(node("Split", &["x"], &["s2", ""])).unwrap();
        // Constant nodes compare their tensors by value.
        let c = |v: f32| Attribute::tensor("value", f32s("", &[1], &[v]));
        g.add_node(node_with("Constant", &[], &["k1"], vec![c(1.0)])).unwrap();
        g.add_node(node_with("Constant", &[], &["k2"], vec![c(1.0)])).unwrap();
        g.add_node(node_with("Constant", &[], &["k3"], vec![c(2.0)])).unwrap();
        g.add_node(node("Sum", &["s1", "s2", "k1", "k2", "k3"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("cse", &mut m);
    assert_eq!(stat(&report, "cse.nodes_merged"), 1);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[4]
  %s1 = Split(%x)
  %s2, _ = Split(%x)
  %k1 = Constant() {value=tensor f32[1]}
  %k3 = Constant() {value=tensor f32[1]}
  %y = Sum(%s1, %s2, %k1, %k1, %k3)
  output %y: ?
}
",
    );
}
