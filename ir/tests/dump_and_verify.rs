//! The text dump is deterministic and shows subgraphs nested; the verifier sees into them.

use adaptc_ir::{dump, verify, AttrValue, Attribute, DataType, Dim, Graph, Model, Node, OpKey, Tensor, ValueInfo};

fn branch(name: &str, op: &str) -> Graph {
    let mut g = Graph::new(name);
    g.outputs.push(ValueInfo::tensor(format!("{name}_out"), DataType::Float, vec![Dim::Known(4)]));
    g.add_node(Node::new(OpKey::onnx(op), vec!["x".into()], vec![format!("{name}_out")]).named(format!("{name}_node")))
        .unwrap();
    g
}

fn model_with_if() -> Model {
    let mut g = Graph::new("main");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("n".into())]));
    g.inputs.push(ValueInfo::tensor("c", DataType::Bool, vec![]));
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Symbol("n".into())]));
    g.add_initializer(Tensor::from_f32("w", vec![4], &[1.0, 2.0, 3.0, 4.0]).unwrap()).unwrap();
    let node = Node::new(OpKey::onnx("If"), vec!["c".into()], vec!["z".into()])
        .named("if")
        .with_attr(Attribute::new("then_branch", AttrValue::Graph(Box::new(branch("then", "Relu")))))
        .with_attr(Attribute::new("else_branch", AttrValue::Graph(Box::new(branch("else", "Neg")))));
    g.add_node(node).unwrap();
    g.add_node(Node::new(OpKey::onnx("Add"), vec!["z".into(), "w".into()], vec!["y".into()]).named("add")).unwrap();
    Model::new(g, 20)
}

#[test]
fn dump_is_golden_and_deterministic() {
    let m = model_with_if();
    let expected = "\
model ir_version=10 opsets=[ai.onnx=20]
graph main {
  input %x: f32[n]
  input %c: bool[]
  init %w: f32[4]
  %z = If(%c)  # if
    then_branch:
    graph then {
      %then_out = Relu(%x)  # then_node
      output %then_out: f32[4]
    }
    else_branch:
    graph else {
      %else_out = Neg(%x)  # else_node
      output %else_out: f32[4]
    }
  %y = Add(%z, %w)  # add
  output %y: f32[n]
}
";
    assert_eq!(dump(&m), expected);
    assert_eq!(dump(&m.clone()), dump(&m));
}

#[test]
fn subgraph_captures_order_and_verify() {
    let m = model_with_if();
    verify(&m.graph).unwrap();
    // The If reads `x` implicitly through its bodies: that is a use, with no slot.
    let uses = m.graph.uses("x");
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].slot, None);
    // A body reading an undefined value is caught, with the path to the body.
    let mut bad = model_with_if();
    let id = bad.graph.nodes().find(|(_, n)| n.name == "if").map(|(id, _)| id).unwrap();
    bad.graph.set_attr(
        id,
        Attribute::new(
            "else_branch",
            AttrValue::Graph(Box::new({
                let mut g = Graph::new("else");
                g.outputs.push(ValueInfo::new("e", None));
                g.add_node(Node::new(OpKey::onnx("Neg"), vec!["ghost".into()], vec!["e".into()])).unwrap();
                g
            })),
        ),
    );
    let err = verify(&bad.graph).unwrap_err().to_string();
    assert!(err.contains("if.else_branch") && err.contains("`ghost`"), "{err}");
}

#[test]
fn save_load_keeps_subgraphs() {
    let m = model_with_if();
    let bytes = adaptc_ir::onnx::encode(&m).unwrap();
    let back = adaptc_ir::onnx::decode(&bytes).unwrap();
    assert_eq!(dump(&back), dump(&m));
}
