//! `insert-adapter`: golden dumps (sequential; parallel with the GELU decomposition and a
//! scale), identity at insertion, initial values, records, negative cases, BERT.

mod common;

use std::path::PathBuf;

use adaptc_ir::{DataType, Dim, Model, ValueInfo};
use adaptc_passes::adapters::{AdapterState, Layout, Method};
use adaptc_passes::{PassManager, Registry};
use common::*;

/// `x [b, s, 4]` → `dense` (`MatMul + Add`, `[4, 4]`) → residual `Add(x, ·)` → `y`.
fn sublayer(opset: i64) -> Model {
    model(opset, |g| {
        g.inputs.push(ValueInfo::tensor(
            "x",
            DataType::Float,
            vec![Dim::Symbol("batch".into()), Dim::Symbol("seq".into()), Dim::Known(4)],
        ));
        g.add_initializer(f32s("w", &[4, 4], &[0.1; 16])).unwrap();
        g.add_initializer(f32s("b", &[4], &[0.0, 1.0, 2.0, 3.0])).unwrap();
        g.add_node(node("MatMul", &["x", "w"], &["d0"]).named("/block/output/dense/MatMul")).unwrap();
        g.add_node(node("Add", &["d0", "b"], &["d"]).named("/block/output/dense/Add")).unwrap();
        g.add_node(node("Add", &["x", "d"], &["y"]).named("/block/output/residual")).unwrap();
        g.outputs.push(output("y"));
    })
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).to_f32_lossy().unwrap()
}

fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = adaptc_ir::dump(model);
    let err = PassManager::new(&Registry::builtin(), pipeline)
        .and_then(|m| m.run(model))
        .map(|_| ())
        .expect_err("the pipeline should fail")
        .to_string();
    assert_eq!(adaptc_ir::dump(model), before, "a failed pass must leave the model unchanged");
    err
}

#[test]
fn sequential_golden_dump_identity_and_record() {
    let mut m = sublayer(20);
    let report = run("insert-adapter{bottleneck=2 targets=output.dense}", &mut m);
    assert_eq!(stat(&report, "adapter.inserted"), 1);
    assert_eq!(stat(&report, "adapter.params"), 2 * 4 + 2 + 4 * 2 + 4);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[batch, seq, 4]
  init %w: f32[4, 4]
  init %b: f32[4]
  init %block.output.dense.adapter.down.weight: f32[2, 4]
  init %block.output.dense.adapter.down.bias: f32[2]
  init %block.output.dense.adapter.up.weight: f32[4, 2]
  init %block.output.dense.adapter.up.bias: f32[4]
  %d0 = MatMul(%x, %w)  # /block/output/dense/MatMul
  %d/base = Add(%d0, %b)  # /block/output/dense/Add
  %block.output.dense/adapter.down_t = Transpose(%block.output.dense.adapter.down.weight) {perm=[1, 0]}  # block.output.dense/adapter.down_t/Transpose
  %block.output.dense/adapter.down = MatMul(%d/base, %block.output.dense/adapter.down_t)  # block.output.dense/adapter.down/MatMul
  %block.output.dense/adapter.down_bias = Add(%block.output.dense/adapter.down, %block.output.dense.adapter.down.bias)  # block.output.dense/adapter.down_bias/Add
  %block.output.dense/adapter.act = Relu(%block.output.dense/adapter.down_bias)  # block.output.dense/adapter.act/Relu
  %block.output.dense/adapter.up_t = Transpose(%block.output.dense.adapter.up.weight) {perm=[1, 0]}  # block.output.dense/adapter.up_t/Transpose
  %block.output.dense/adapter.up = MatMul(%block.output.dense/adapter.act, %block.output.dense/adapter.up_t)  # block.output.dense/adapter.up/MatMul
  %block.output.dense/adapter.up_bias = Add(%block.output.dense/adapter.up, %block.output.dense.adapter.up.bias)  # block.output.dense/adapter.up_bias/Add
  %d = Add(%d/base, %block.output.dense/adapter.up_bias)  # block.output.dense/adapter/Add
  %y = Add(%x, %d)  # /block/output/residual
  output %y: ?
}
"#,
    );
    // Identity at insertion: the up-projection and both biases are zero, so the branch adds
    // exact zeros; W_down is small, truncated at 2σ = 0.02, and not all zero.
    assert!(values(&m, "block.output.dense.adapter.up.weight").iter().all(|&v| v == 0.0));
    assert!(values(&m, "block.output.dense.adapter.up.bias").iter().all(|&v| v == 0.0));
    assert!(values(&m, "block.output.dense.adapter.down.bias").iter().all(|&v| v == 0.0));
    let down = values(&m, "block.output.dense.adapter.down.weight");
    assert!(down.iter().all(|v| v.abs() <= 0.02 + 1e-7), "{down:?}");
    assert!(down.iter().any(|&v| v != 0.0));

    let state = AdapterState::load(&m).unwrap();
    assert_eq!(state.trainable.len(), 4);
    let rec = &state.adapters[0];
    assert_eq!(rec.method, Method::Bottleneck);
    assert_eq!(rec.module, "block.output.dense");
    assert_eq!(rec.target_node, "/block/output/dense/MatMul");
    assert_eq!(rec.layout, Some(Layout::InOut));
    assert_eq!((rec.output.as_str(), rec.base_output.as_str()), ("d", "d/base"));
    assert_eq!(rec.rank, 2);
    assert_eq!(rec.scale, 1.0);
    assert_eq!(rec.params["down"], "block.output.dense.adapter.down.weight");
    assert_eq!(rec.params["up_bias"], "block.output.dense.adapter.up.bias");
    assert_eq!(rec.extra["placement"], "sequential");
    assert_eq!(rec.extra["activation"], "relu");
    assert_eq!(rec.extra["mergeable"], false);
    assert_eq!(rec.nodes.len(), 8);
}

#[test]
fn parallel_with_gelu_before_opset_20_and_a_scale() {
    let mut m = sublayer(17);
    run("insert-adapter{bottleneck=3 targets=dense placement=parallel activation=gelu scale=4}", &mut m);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[batch, seq, 4]
  init %w: f32[4, 4]
  init %b: f32[4]
  init %block.output.dense.adapter.down.weight: f32[3, 4]
  init %block.output.dense.adapter.down.bias: f32[3]
  init %block.output.dense.adapter.up.weight: f32[4, 3]
  init %block.output.dense.adapter.up.bias: f32[4]
  init %block.output.dense/adapter.const.sqrt2: f32[]
  init %block.output.dense/adapter.const.one: f32[]
  init %block.output.dense/adapter.const.half: f32[]
  init %block.output.dense/adapter.const.scale: f32[]
  %d0 = MatMul(%x, %w)  # /block/output/dense/MatMul
  %d/base = Add(%d0, %b)  # /block/output/dense/Add
  %block.output.dense/adapter.down_t = Transpose(%block.output.dense.adapter.down.weight) {perm=[1, 0]}  # block.output.dense/adapter.down_t/Transpose
  %block.output.dense/adapter.down = MatMul(%x, %block.output.dense/adapter.down_t)  # block.output.dense/adapter.down/MatMul
  %block.output.dense/adapter.down_bias = Add(%block.output.dense/adapter.down, %block.output.dense.adapter.down.bias)  # block.output.dense/adapter.down_bias/Add
  %block.output.dense/adapter.act_div = Div(%block.output.dense/adapter.down_bias, %block.output.dense/adapter.const.sqrt2)  # block.output.dense/adapter.act_div/Div
  %block.output.dense/adapter.act_erf = Erf(%block.output.dense/adapter.act_div)  # block.output.dense/adapter.act_erf/Erf
  %block.output.dense/adapter.act_add = Add(%block.output.dense/adapter.act_erf, %block.output.dense/adapter.const.one)  # block.output.dense/adapter.act_add/Add
  %block.output.dense/adapter.act_mul = Mul(%block.output.dense/adapter.down_bias, %block.output.dense/adapter.act_add)  # block.output.dense/adapter.act_mul/Mul
  %block.output.dense/adapter.act = Mul(%block.output.dense/adapter.act_mul, %block.output.dense/adapter.const.half)  # block.output.dense/adapter.act/Mul
  %block.output.dense/adapter.up_t = Transpose(%block.output.dense.adapter.up.weight) {perm=[1, 0]}  # block.output.dense/adapter.up_t/Transpose
  %block.output.dense/adapter.up = MatMul(%block.output.dense/adapter.act, %block.output.dense/adapter.up_t)  # block.output.dense/adapter.up/MatMul
  %block.output.dense/adapter.up_bias = Add(%block.output.dense/adapter.up, %block.output.dense.adapter.up.bias)  # block.output.dense/adapter.up_bias/Add
  %block.output.dense/adapter.scale = Mul(%block.output.dense/adapter.up_bias, %block.output.dense/adapter.const.scale)  # block.output.dense/adapter.scale/Mul
  %d = Add(%d/base, %block.output.dense/adapter.scale)  # block.output.dense/adapter/Add
  %y = Add(%x, %d)  # /block/output/residual
  output %y: ?
}
"#,
    );
    assert_eq!(values(&m, "block.output.dense/adapter.const.scale"), vec![4.0]);
    let rec = &AdapterState::load(&m).unwrap().adapters[0];
    assert_eq!((rec.extra["placement"].as_str(), rec.extra["activation"].as_str()), (Some("parallel"), Some("gelu")));
    assert_eq!(rec.scale, 4.0);
}

#[test]
fn gelu_is_one_op_from_opset_20_and_values_follow_the_seed() {
    let mut a = sublayer(20);
    run("insert-adapter{bottleneck=4 targets=dense activation=gelu seed=7}", &mut a);
    assert!(a.graph.nodes().any(|(_, n)| n.op().is("Gelu")));
    assert!(!a.graph.nodes().any(|(_, n)| n.op().is("Erf")));
    let mut b = sublayer(20);
    run("insert-adapter{bottleneck=4 targets=dense activation=gelu seed=7}", &mut b);
    let mut c = sublayer(20);
    run("insert-adapter{bottleneck=4 targets=dense activation=gelu seed=8}", &mut c);
    let w = "block.output.dense.adapter.down.weight";
    assert_eq!(values(&a, w), values(&b, w), "same seed, same values");
    assert_ne!(values(&a, w), values(&c, w), "another seed, other values");
}

#[test]
fn negative_cases_name_the_reason() {
    let mut m = sublayer(20);
    let err = run_err("insert-adapter{targets=query}", &mut m);
    assert!(err.contains("no linear layer matches targets=query"), "{err}");
    assert!(err.contains("block.output.dense"), "{err}");
    let err = run_err("insert-adapter", &mut m);
    assert!(err.contains("option `targets`: is required") && err.contains("o_proj,down_proj"), "{err}");
    let err = run_err("insert-adapter{bottleneck=0 targets=dense}", &mut m);
    assert!(err.contains("option `bottleneck`: must be at least 1"), "{err}");
    let err = run_err("insert-adapter{targets=dense placement=serial}", &mut m);
    assert!(err.contains("expected one of sequential|parallel"), "{err}");

    // A second adapter on the same layer is skipped with a note.
    run("insert-adapter{bottleneck=2 targets=dense}", &mut m);
    let report = run("insert-adapter{bottleneck=2 targets=dense}", &mut m);
    assert_eq!(stat(&report, "adapter.skipped"), 1);
    assert!(!report.changed());
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

#[test]
fn bert6_houlsby_and_parallel() {
    let base = adaptc_ir::onnx::load(&fixture("bert6.onnx")).unwrap();
    let mut m = base.clone();
    let report = run("insert-adapter{bottleneck=16 targets=output.dense}", &mut m);
    // attention.output.dense and output.dense in 6 blocks; d = 64.
    assert_eq!(stat(&report, "adapter.inserted"), 12);
    assert_eq!(stat(&report, "adapter.params"), 12 * (16 * 64 + 16 + 64 * 16 + 64));
    adaptc_ir::verify(&m.graph).unwrap();
    // The residual Add still reads the adapted value under its old name.
    let state = AdapterState::load(&m).unwrap();
    let rec = state.adapters.iter().find(|a| a.module == "encoder.layer.2.attention.output.dense").unwrap();
    assert!(m.graph.uses(&rec.output).iter().any(|u| m.graph.node(u.node).op().is("Add")));
    assert_eq!(
        m.graph.node(m.graph.producer(&rec.output).unwrap().0).metadata.get("adaptc.pass"),
        Some("insert-adapter")
    );

    let dir = std::env::temp_dir().join(format!("adaptc-bottleneck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bert6_adapter.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(AdapterState::load(&back).unwrap(), state);
    let _ = std::fs::remove_dir_all(&dir);

    // Parallel on the FFN output layer reads its 128-wide input.
    let mut p = base;
    let report = run(
        "insert-adapter{bottleneck=8 targets=re:.*\\.output\\.dense placement=parallel exclude=attention.output.dense}",
        &mut p,
    );
    assert_eq!(stat(&report, "adapter.inserted"), 6);
    let w = p.graph.initializer("encoder.layer.0.output.dense.adapter.down.weight").unwrap();
    assert_eq!(w.dims(), &[8, 128]);
    adaptc_ir::verify(&p.graph).unwrap();
}
