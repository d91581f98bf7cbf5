//! Helpers shared by the pass tests: small graph builders and a one-call pipeline runner.
#![allow(dead_code)]

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, Tensor, ValueInfo};
use adaptc_passes::{PassManager, Registry, RunReport};

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A default-domain node named after its first output.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
    Node::new(OpKey::onnx(op), strings(inputs), strings(outputs))
}

pub fn node_with(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<Attribute>) -> Node {
    attrs.into_iter().fold(node(op, inputs, outputs), Node::with_attr)
}

pub fn f32_input(name: &str, dims: &[i64]) -> ValueInfo {
    ValueInfo::tensor(name, DataType::Float, dims.iter().map(|&d| Dim::Known(d)).collect())
}

pub fn output(name: &str) -> ValueInfo {
    ValueInfo::new(name, None)
}

pub fn f32s(name: &str, dims: &[u64], values: &[f32]) -> Tensor {
    Tensor::from_f32(name, dims.to_vec(), values).unwrap()
}

pub fn i64s(name: &str, dims: &[u64], values: &[i64]) -> Tensor {
    Tensor::from_i64(name, dims.to_vec(), values).unwrap()
}

pub fn i32s(name: &str, dims: &[u64], values: &[i32]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_bytes(name, DataType::Int32, dims.to_vec(), bytes).unwrap()
}

pub fn bools(name: &str, dims: &[u64], values: &[bool]) -> Tensor {
    let bytes = values.iter().map(|&b| u8::from(b)).collect();
    Tensor::from_bytes(name, DataType::Bool, dims.to_vec(), bytes).unwrap()
}

/// A model of `tests/fixtures/models/` (the BERT and Llama fixtures).
pub fn fixture(rel: &str) -> Model {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel);
    adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `model` after `pipeline`, with the report.
pub fn rewrite(mut model: Model, pipeline: &str) -> (Model, RunReport) {
    let report = run(pipeline, &mut model);
    (model, report)
}

/// `[b, s]` token ids below `vocab`, spread deterministically.
pub fn token_ids(b: usize, s: usize, vocab: i64) -> adaptc_runtime::Tensor {
    let v: Vec<i64> = (0..b * s).map(|k| (k as i64 * 7919 + 13) % vocab).collect();
    adaptc_runtime::Tensor::from_vec(vec![b, s], v).unwrap()
}

/// Runs `pipeline` with the builtin passes (verify-each on) and returns the report.
pub fn run(pipeline: &str, model: &mut Model) -> RunReport {
    let manager = PassManager::new(&Registry::builtin(), pipeline).unwrap_or_else(|e| panic!("{pipeline}: {e}"));
    manager.run(model).unwrap_or_else(|e| panic!("{pipeline}: {e}"))
}

/// A counter of a report (0 when absent).
pub fn stat(report: &RunReport, key: &str) -> i64 {
    report.stat(key).unwrap_or(0)
}

/// Builds a model at `opset` from a graph edited by `build`.
pub fn model(opset: i64, build: impl FnOnce(&mut Graph)) -> Model {
    let mut g = Graph::new("g");
    build(&mut g);
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, opset)
}

/// Compares a dump with the expected text, showing both on a mismatch.
pub fn assert_dump(model: &Model, expected: &str) {
    let actual = adaptc_ir::dump(model);
    let expected = expected.trim_start_matches('\n');
    assert!(actual == expected, "dump mismatch\n--- expected\n{expected}\n--- actual\n{actual}");
}
