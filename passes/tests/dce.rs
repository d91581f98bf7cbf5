//! `dce`: golden dumps on small graphs and the things it must keep.

mod common;

use adaptc_ir::{AttrValue, Attribute, Graph, Node, OpKey};
use common::*;

#[test]
fn removes_dead_chains_and_unused_initializers() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_initializer(f32s("w", &[2], &[1.0, 2.0])).unwrap();
        g.add_initializer(f32s("d", &[2], &[3.0, 4.0])).unwrap();
        g.add_initializer(f32s("unused", &[1], &[0.0])).unwrap();
        g.add_node(node("Add", &["x", "w"], &["a"]).named("add")).unwrap();
        g.add_node(node("Mul", &["a", "d"], &["dead1"]).named("mul")).unwrap();
        g.add_node(node("Neg", &["dead1"], &["dead2"]).named("neg")).unwrap();
        // A multi-output node with one used output stays whole.
        g.add_node(node("Split", &["a"], &["s0", "s1"]).named("split")).unwrap();
        g.add_node(node("Relu", &["s0"], &["y"]).named("relu")).unwrap();
        // A node with no outputs is dead by definition.
        g.add_node(node("Abs", &["x"], &[]).named("sink")).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("dce", &mut m);
    assert!(report.changed());
    assert_eq!(stat(&report, "dce.nodes_removed"), 3);
    assert_eq!(stat(&report, "dce.initializers_removed"), 2);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2]
  init %w: f32[2]
  %a = Add(%x, %w)  # add
  %s0, %s1 = Split(%a)  # split
  %y = Relu(%s0)  # relu
  output %y: ?
}
",
    );
    // A second run finds nothing.
    let again = run("dce", &mut m);
    assert!(!again.changed());
    assert_eq!(again.runs[0].stats, vec![("dce.nodes_removed".into(), 0), ("dce.initializers_removed".into(), 0)]);
}

#[test]
fn keeps_graph_outputs_and_graph_inputs() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        // An initializer that is also a graph input: only a default value, part of the interface.
        g.inputs.push(f32_input("bias", &[2]));
        g.add_initializer(f32s("bias", &[2], &[0.0, 0.0])).unwrap();
        // An initializer that is a graph output directly.
        g.add_initializer(f32s("table", &[1], &[7.0])).unwrap();
        g.add_node(node("Neg", &["x"], &["y"])).unwrap();
        g.outputs.push(output("y"));
        g.outputs.push(output("table"));
    });
    let before = adaptc_ir::dump(&m);
    let report = run("dce", &mut m);
    assert!(!report.changed());
    assert_eq!(adaptc_ir::dump(&m), before);
}

#[test]
fn value_info_of_removed_values_is_dropped() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_node(node("Neg", &["x"], &["dead"])).unwrap();
        g.add_node(node("Abs", &["x"], &["y"])).unwrap();
        g.value_info.push(f32_input("dead", &[2]));
        g.value_info.push(f32_input("y", &[2]));
        g.outputs.push(output("y"));
    });
    run("dce", &mut m);
    let names: Vec<&str> = m.graph.value_info.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["y"]);
}

/// An `If` whose branches output `branch_out`; the then-branch also computes a dead value from
/// the outer `captured`.
fn if_node(captured: &str) -> Node {
    let mut then_branch = Graph::new("then");
    then_branch.add_node(node("Neg", &[captured], &["unused_inner"])).unwrap();
    then_branch.add_node(node("Identity", &["x"], &["t_out"])).unwrap();
    then_branch.outputs.push(output("t_out"));
    let mut else_branch = Graph::new("else");
    else_branch.add_node(node("Abs", &["x"], &["e_out"])).unwrap();
    else_branch.outputs.push(output("e_out"));
    Node::new(OpKey::onnx("If"), strings(&["cond"]), strings(&["y"]))
        .named("if")
        .with_attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(then_branch))))
        .with_attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(else_branch))))
}

#[test]
fn cleans_subgraphs_first_so_outer_values_die_too() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.inputs.push(output("cond"));
        g.add_node(node("Sqrt", &["x"], &["captured"]).named("only_used_inside")).unwrap();
        g.add_node(if_node("captured")).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("dce", &mut m);
    // The dead node in the branch, then the outer node that only it used.
    assert_eq!(stat(&report, "dce.nodes_removed"), 2);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2]
  input %cond: ?
  %y = If(%cond)  # if
    then_branch:
    graph then {
      %t_out = Identity(%x)
      output %t_out: ?
    }
    else_branch:
    graph else {
      %e_out = Abs(%x)
      output %e_out: ?
    }
  output %y: ?
}
",
    );
}
