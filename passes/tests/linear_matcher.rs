//! The linear-layer matcher against models exported by PyTorch, with oracles written by
//! `scripts/make_fixtures.py` from the torch module tree (`*.expected.json`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use adaptc_ir::{Graph, Model, NodeId};
use adaptc_passes::pattern::{
    block_index, find_linear_layers, match_linear, LinearForm, LinearLayer, PathSource, WeightLayout,
};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

fn load(rel: &str) -> Model {
    let path = fixture(rel);
    adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn expected(rel: &str) -> Value {
    let path = fixture(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn node_by_name(g: &Graph, name: &str) -> NodeId {
    let found: Vec<NodeId> = g.nodes().filter(|(_, n)| n.name == name).map(|(id, _)| id).collect();
    assert_eq!(found.len(), 1, "node name `{name}` should name exactly one node");
    found[0]
}

fn str_or_none(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Checks one matched layer against its oracle entry.
fn check_layer(g: &Graph, l: &LinearLayer, e: &Value, source: PathSource) {
    let path = e["module_path"].as_str().unwrap();
    let ctx = format!("layer {path}");
    let node = g.node(l.node);
    assert_eq!(node.name, e["node_name"].as_str().unwrap(), "{ctx}: node");
    assert_eq!(node.op().op_type, e["op_type"].as_str().unwrap(), "{ctx}: op");
    assert_eq!(l.module_path.as_deref(), Some(path), "{ctx}: module path");
    assert_eq!(l.path_source, source, "{ctx}: path source");
    assert_eq!(l.in_features, e["in_features"].as_u64().unwrap(), "{ctx}: in_features");
    assert_eq!(l.out_features, e["out_features"].as_u64().unwrap(), "{ctx}: out_features");
    assert_eq!(l.weight, e["weight"].as_str().unwrap(), "{ctx}: weight");
    let shape: Vec<u64> = e["weight_shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    assert_eq!(l.weight_tensor(g).expect("weight is a constant").dims(), shape.as_slice(), "{ctx}: weight shape");
    let layout = match e["weight_layout"].as_str().unwrap() {
        "in_out" => WeightLayout::InOut,
        "out_in" => WeightLayout::OutIn,
        other => panic!("{ctx}: unknown layout {other}"),
    };
    assert_eq!(l.layout, layout, "{ctx}: layout");

    let has_bias = e["has_bias"].as_bool().unwrap();
    assert_eq!(l.bias.is_some(), has_bias, "{ctx}: has_bias");
    assert_eq!(l.bias.as_deref(), e["bias"].as_str(), "{ctx}: bias");
    if has_bias {
        let bias = l.bias_tensor(g).expect("bias is a constant");
        assert_eq!(bias.dims().last(), Some(&l.out_features), "{ctx}: bias length");
    }

    // The oracle names the node that adds the bias: the Gemm itself, or the Add.
    match l.form {
        LinearForm::Gemm => {
            assert_eq!(l.bias_node, None, "{ctx}: a Gemm adds its own bias");
            if has_bias {
                assert_eq!(e["bias_node"].as_str(), Some(node.name.as_str()), "{ctx}: bias node");
            }
            assert_eq!(l.output, node.outputs()[0], "{ctx}: output");
        }
        LinearForm::MatMul | LinearForm::MatMulTransposed => match str_or_none(&e["bias_node"]) {
            Some(add) => {
                let add_id = node_by_name(g, add);
                assert_eq!(l.bias_node, Some(add_id), "{ctx}: bias node");
                assert_eq!(l.output, g.node(add_id).outputs()[0], "{ctx}: output after the bias Add");
            }
            None => {
                assert_eq!(l.bias_node, None, "{ctx}: bias node");
                assert_eq!(l.output, node.outputs()[0], "{ctx}: output");
            }
        },
    }
    let form = match (e["op_type"].as_str().unwrap(), e.get("transpose_node").and_then(str_or_none)) {
        ("Gemm", _) => LinearForm::Gemm,
        ("MatMul", None) => LinearForm::MatMul,
        ("MatMul", Some(_)) => LinearForm::MatMulTransposed,
        (other, _) => panic!("{ctx}: unexpected op {other}"),
    };
    assert_eq!(l.form, form, "{ctx}: form");
    let transpose = e.get("transpose_node").and_then(str_or_none).map(|t| node_by_name(g, t));
    assert_eq!(l.transpose_node, transpose, "{ctx}: transpose node");
    // The activation is not a constant, and it is what the MatMul/Gemm reads first.
    assert_eq!(node.inputs()[0], l.input, "{ctx}: input");
    assert!(g.initializer(&l.input).is_none(), "{ctx}: input is an activation");
}

/// find_linear_layers finds exactly the oracle's layers (in graph order), and every
/// attention MatMul is refused as an activation-activation product.
fn check_model(g: &Graph, exp: &Value, source: PathSource) -> Vec<LinearLayer> {
    let layers = find_linear_layers(g);
    let want = exp["linear_layers"].as_array().unwrap();
    let got_names: Vec<&str> = layers.iter().map(|l| g.node(l.node).name.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|e| e["node_name"].as_str().unwrap()).collect();
    assert_eq!(
        got_names.iter().collect::<BTreeSet<_>>(),
        want_names.iter().collect::<BTreeSet<_>>(),
        "the set of linear layers"
    );
    assert_eq!(layers.len(), want.len(), "each layer exactly once");

    // Graph order.
    let order: Vec<NodeId> = g.node_ids();
    let pos = |id: NodeId| order.iter().position(|&n| n == id).unwrap();
    assert!(layers.windows(2).all(|w| pos(w[0].node) < pos(w[1].node)), "layers come in graph order");

    for e in want {
        let name = e["node_name"].as_str().unwrap();
        let l = layers.iter().find(|l| g.node(l.node).name == name).unwrap();
        check_layer(g, l, e, source);
        assert_eq!(&match_linear(g, l.node).unwrap(), l, "match_linear agrees with find_linear_layers");
    }

    let attention = exp["attention_matmuls"].as_array().unwrap();
    for a in attention {
        let name = a["node_name"].as_str().unwrap();
        let id = node_by_name(g, name);
        let inputs: Vec<&str> = a["inputs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(g.node(id).inputs(), inputs.as_slice(), "attention MatMul {name}: inputs");
        let err = match_linear(g, id).expect_err(name);
        assert!(err.reason.contains("activation"), "attention MatMul {name}: {}", err.reason);
        assert!(layers.iter().all(|l| l.node != id), "attention MatMul {name} is not a layer");
    }

    // Every MatMul/Gemm is either a linear layer or an attention MatMul.
    let matmuls = g.nodes().filter(|(_, n)| n.op().is("MatMul") || n.op().is("Gemm")).count();
    assert_eq!(matmuls, want.len() + attention.len(), "every MatMul/Gemm is accounted for");
    layers
}

#[test]
fn bert6_finds_all_37_linear_layers() {
    let model = load("bert6.onnx");
    let g = &model.graph;
    let exp = expected("bert6.expected.json");
    let layers = check_model(g, &exp, PathSource::NameScopes);
    assert_eq!(layers.len(), 37);
    assert_eq!(exp["attention_matmuls"].as_array().unwrap().len(), 12);

    let pooler = layers.last().unwrap();
    assert_eq!(pooler.module_path.as_deref(), Some("pooler.dense"));
    assert_eq!((pooler.form, pooler.layout), (LinearForm::Gemm, WeightLayout::OutIn));
    assert_eq!(block_index("pooler.dense"), None);

    // Six layers of six layers each, with the block index recoverable from the path.
    for (i, l) in layers[..36].iter().enumerate() {
        assert_eq!((l.form, l.layout), (LinearForm::MatMul, WeightLayout::InOut));
        assert!(l.bias_node.is_some());
        assert_eq!(block_index(l.module_path.as_deref().unwrap()), Some(i / 6), "{:?}", l.module_path);
    }
    let queries = layers.iter().filter(|l| l.module_path.as_deref().unwrap().ends_with(".query")).count();
    assert_eq!(queries, 6);
}

#[test]
fn llama4_finds_all_29_linear_layers() {
    let model = load("llama4/model.onnx");
    let g = &model.graph;
    let exp = expected("llama4/expected.json");
    let layers = check_model(g, &exp, PathSource::NameScopes);
    assert_eq!(layers.len(), 29);

    // No biases: the residual Adds after o_proj and down_proj read two activations.
    assert!(layers.iter().all(|l| l.bias.is_none() && l.bias_node.is_none()));
    for l in &layers[..28] {
        let path = l.module_path.as_deref().unwrap();
        let block = block_index(path).unwrap_or_else(|| panic!("{path} has a block index"));
        assert!(path.starts_with(&format!("model.layers.{block}.")));
    }
    let head = &layers[28];
    assert_eq!(head.module_path.as_deref(), Some("lm_head"));
    assert_eq!(head.out_features, 1000);
    assert!(g.is_graph_output(&head.output), "lm_head writes the logits");
}

fn linear_form(file: &str, source: PathSource) -> Vec<LinearLayer> {
    let model = load(&format!("linear_forms/{file}"));
    let exp = expected("linear_forms/expected.json");
    let entry = &exp[file];
    assert!(entry.is_object(), "expected.json has an entry for {file}");
    check_model(&model.graph, entry, source)
}

#[test]
fn form_matmul() {
    let layers = linear_form("matmul.onnx", PathSource::NameScopes);
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].form, LinearForm::MatMul);
}

#[test]
fn form_matmul_add_bias_first() {
    let layers = linear_form("matmul_add.onnx", PathSource::NodeName);
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].bias.as_deref(), Some("onnx::Add_102"));
}

#[test]
fn form_gemm_transb() {
    let layers = linear_form("gemm_transb.onnx", PathSource::Initializer);
    assert_eq!((layers[0].form, layers[0].layout), (LinearForm::Gemm, WeightLayout::OutIn));
}

#[test]
fn form_gemm_notrans() {
    let layers = linear_form("gemm_notrans.onnx", PathSource::Initializer);
    assert_eq!((layers[0].form, layers[0].layout), (LinearForm::Gemm, WeightLayout::InOut));
    assert_eq!(block_index(layers[0].module_path.as_deref().unwrap()), Some(0));
}

#[test]
fn form_matmul_transpose() {
    let layers = linear_form("matmul_transpose.onnx", PathSource::Initializer);
    assert_eq!((layers[0].form, layers[0].layout), (LinearForm::MatMulTransposed, WeightLayout::OutIn));
    assert!(layers[0].transpose_node.is_some());
}

#[test]
fn form_attention_only_has_no_layers() {
    let layers = linear_form("attention_only.onnx", PathSource::None);
    assert!(layers.is_empty());
}
