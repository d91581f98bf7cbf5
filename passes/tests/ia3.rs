//! `insert-ia3` and `merge_ia3`: golden dumps, identity at insertion, exact merge checked against
//! the math computed here, negative cases, and the BERT / Llama fixtures.

mod common;

use std::path::PathBuf;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, ValueInfo};
use adaptc_passes::adapters::ia3::merge_ia3;
use adaptc_passes::adapters::{AdapterState, Layout, Method};
use adaptc_passes::{PassManager, Registry};
use common::*;

/// `x [b, s, 4]` → key (`MatMul + Add`, `[4, 3]`) → Relu → `h`; value (`MatMul(x, Transpose(W[3, 4]))`,
/// no bias); `output.dense` (`MatMul + Add`, `[3, 4]`) reads `h`. Outputs `y`, `v`, and `h` (so
/// `h` has a reader besides the feedforward layer).
fn block() -> Model {
    model(20, |g| {
        g.inputs.push(ValueInfo::tensor(
            "x",
            DataType::Float,
            vec![Dim::Symbol("batch".into()), Dim::Symbol("seq".into()), Dim::Known(4)],
        ));
        g.add_initializer(f32s("wk", &[4, 3], &seq(12, 0.1))).unwrap();
        g.add_initializer(f32s("bk", &[3], &[0.5, -0.25, 1.0])).unwrap();
        g.add_initializer(f32s("layer.0.value.weight", &[3, 4], &seq(12, -0.05))).unwrap();
        g.add_initializer(f32s("wo", &[3, 4], &seq(12, 0.2))).unwrap();
        g.add_initializer(f32s("bo", &[4], &[0.1, 0.2, 0.3, 0.4])).unwrap();
        add(g, node("MatMul", &["x", "wk"], &["k0"]).named("/layer.0/key/MatMul"));
        add(g, node("Add", &["k0", "bk"], &["k"]).named("/layer.0/key/Add"));
        add(g, node("Relu", &["k"], &["h"]).named("/layer.0/act/Relu"));
        add(
            g,
            node_with("Transpose", &["layer.0.value.weight"], &["vt"], vec![Attribute::ints("perm", vec![1, 0])])
                .named("/layer.0/value/Transpose"),
        );
        add(g, node("MatMul", &["x", "vt"], &["v"]).named("/layer.0/value/MatMul"));
        add(g, node("MatMul", &["h", "wo"], &["y0"]).named("/layer.0/output/dense/MatMul"));
        add(g, node("Add", &["y0", "bo"], &["y"]).named("/layer.0/output/dense/Add"));
        g.outputs.push(output("y"));
        g.outputs.push(output("v"));
        g.outputs.push(output("h"));
    })
}

fn add(g: &mut Graph, n: adaptc_ir::Node) {
    g.add_node(n).unwrap();
}

/// `n` values `start, start + 0.1, …` with alternating signs, so no two weights are equal.
fn seq(n: usize, start: f32) -> Vec<f32> {
    (0..n).map(|i| (start + 0.1 * i as f32) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect()
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).to_f32_lossy().unwrap()
}

fn set_values(m: &mut Model, name: &str, v: &[f32]) {
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    m.graph.initializer_mut(name).unwrap().set_bytes(bytes).unwrap();
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

const BLOCK: &str = "insert-ia3{targets=key,value,dense feedforward=dense}";

#[test]
fn golden_dump_and_record() {
    let mut m = block();
    let report = run(BLOCK, &mut m);
    assert_eq!(stat(&report, "ia3.inserted"), 3);
    assert_eq!(stat(&report, "ia3.input_side"), 1);
    assert_eq!(stat(&report, "ia3.output_side"), 2);
    assert_eq!(stat(&report, "ia3.params"), 3 + 3 + 3);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[batch, seq, 4]
  init %wk: f32[4, 3]
  init %bk: f32[3]
  init %layer.0.value.weight: f32[3, 4]
  init %wo: f32[3, 4]
  init %bo: f32[4]
  init %layer.0.key.ia3_l: f32[3]
  init %layer.0.value.ia3_l: f32[3]
  init %layer.0.output.dense.ia3_l: f32[3]
  %k0 = MatMul(%x, %wk)  # /layer.0/key/MatMul
  %k/base = Add(%k0, %bk)  # /layer.0/key/Add
  %vt = Transpose(%layer.0.value.weight) {perm=[1, 0]}  # /layer.0/value/Transpose
  %v/base = MatMul(%x, %vt)  # /layer.0/value/MatMul
  %k = Mul(%k/base, %layer.0.key.ia3_l)  # layer.0.key/ia3/Mul
  %h = Relu(%k)  # /layer.0/act/Relu
  %v = Mul(%v/base, %layer.0.value.ia3_l)  # layer.0.value/ia3/Mul
  %layer.0.output.dense/ia3 = Mul(%h, %layer.0.output.dense.ia3_l)  # layer.0.output.dense/ia3/Mul
  %y0 = MatMul(%layer.0.output.dense/ia3, %wo)  # /layer.0/output/dense/MatMul
  %y = Add(%y0, %bo)  # /layer.0/output/dense/Add
  output %y: ?
  output %v: ?
  output %h: ?
}
"#,
    );
    // Identity at insertion: every vector is ones.
    for l in ["layer.0.key.ia3_l", "layer.0.value.ia3_l", "layer.0.output.dense.ia3_l"] {
        assert!(values(&m, l).iter().all(|&v| v == 1.0), "{l}");
    }
    // New nodes are tagged with the pass.
    for (_, n) in m.graph.nodes().filter(|(_, n)| n.name.contains("/ia3/")) {
        assert_eq!(n.metadata.get("adaptc.pass"), Some("insert-ia3"));
    }

    let state = AdapterState::load(&m).unwrap();
    assert_eq!(
        state.trainable.iter().cloned().collect::<Vec<_>>(),
        strings(&["layer.0.key.ia3_l", "layer.0.output.dense.ia3_l", "layer.0.value.ia3_l"])
    );
    assert_eq!(state.adapters.len(), 3);
    let key = &state.adapters[0];
    assert_eq!(key.method, Method::Ia3);
    assert_eq!(key.module, "layer.0.key");
    assert_eq!(key.target_node, "/layer.0/key/MatMul");
    assert_eq!(key.base_weight, "wk");
    assert_eq!(key.layout, Some(Layout::InOut));
    assert_eq!(key.params["ia3"], "layer.0.key.ia3_l");
    assert_eq!((key.output.as_str(), key.base_output.as_str()), ("k", "k/base"));
    assert_eq!(key.extra["side"], "output");
    assert_eq!(key.extra["peft_shape"], serde_json::json!([3, 1]));
    assert_eq!(key.extra["mergeable"], true);
    let value = &state.adapters[1];
    assert_eq!((value.base_weight.as_str(), value.layout), ("layer.0.value.weight", Some(Layout::OutIn)));
    let ff = &state.adapters[2];
    assert_eq!(ff.extra["side"], "input");
    assert_eq!(ff.extra["feedforward"], true);
    assert_eq!(ff.extra["peft_shape"], serde_json::json!([1, 3]));
    assert_eq!((ff.output.as_str(), ff.base_output.as_str()), ("layer.0.output.dense/ia3", "h"));
    assert_eq!(ff.nodes, strings(&["layer.0.output.dense/ia3/Mul"]));
}

/// `x·W + b` for one row `x`, with `W` in the given layout.
fn linear(x: &[f32], w: &[f32], b: Option<&[f32]>, inp: usize, out: usize, layout: Layout) -> Vec<f32> {
    (0..out)
        .map(|o| {
            let mut acc = b.map_or(0.0, |b| b[o]);
            for (i, xi) in x.iter().enumerate().take(inp) {
                let wio = match layout {
                    Layout::InOut => w[i * out + o],
                    Layout::OutIn => w[o * inp + i],
                };
                acc += xi * wio;
            }
            acc
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= tol * (1.0 + q.abs()))
}

#[test]
fn merge_is_exact_and_restores_the_graph() {
    let base = block();
    let mut m = base.clone();
    run(BLOCK, &mut m);
    // "Train": give the vectors values other than one.
    let (lk, lv, lf) = ([1.5, -0.5, 2.0], [0.25, 3.0, -1.0], [0.5, 2.5, -2.0]);
    set_values(&mut m, "layer.0.key.ia3_l", &lk);
    set_values(&mut m, "layer.0.value.ia3_l", &lv);
    set_values(&mut m, "layer.0.output.dense.ia3_l", &lf);
    let (wk, bk, wv, wo, bo) =
        (values(&m, "wk"), values(&m, "bk"), values(&m, "layer.0.value.weight"), values(&m, "wo"), values(&m, "bo"));

    let state = AdapterState::load(&m).unwrap();
    for rec in &state.adapters {
        merge_ia3(&mut m.graph, rec).unwrap();
        adaptc_ir::verify(&m.graph).unwrap();
    }
    // The graph is the base graph again: same nodes, names, initializers (shapes) and order.
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));

    // Weights computed independently: output side scales each output feature, input side each
    // input feature, in the stored layout.
    let expect_wk: Vec<f32> = (0..12).map(|idx| wk[idx] * lk[idx % 3]).collect(); // [in 4, out 3]
    let expect_bk: Vec<f32> = (0..3).map(|o| bk[o] * lk[o]).collect();
    let expect_wv: Vec<f32> = (0..12).map(|idx| wv[idx] * lv[idx / 4]).collect(); // [out 3, in 4]
    let expect_wo: Vec<f32> = (0..12).map(|idx| wo[idx] * lf[idx / 4]).collect(); // [in 3, out 4]
    assert_eq!(values(&m, "wk"), expect_wk);
    assert_eq!(values(&m, "bk"), expect_bk);
    assert_eq!(values(&m, "layer.0.value.weight"), expect_wv);
    assert_eq!(values(&m, "wo"), expect_wo);
    assert_eq!(values(&m, "bo"), bo, "the input side leaves the bias alone");

    // The merged layers compute what the adapted ones did.
    let x = [0.3, -1.2, 0.7, 2.0];
    let adapted_k: Vec<f32> =
        linear(&x, &wk, Some(&bk), 4, 3, Layout::InOut).iter().zip(lk).map(|(y, l)| y * l).collect();
    assert!(close(&linear(&x, &values(&m, "wk"), Some(&values(&m, "bk")), 4, 3, Layout::InOut), &adapted_k, 1e-6));
    let adapted_v: Vec<f32> = linear(&x, &wv, None, 4, 3, Layout::OutIn).iter().zip(lv).map(|(y, l)| y * l).collect();
    assert!(close(&linear(&x, &values(&m, "layer.0.value.weight"), None, 4, 3, Layout::OutIn), &adapted_v, 1e-6));
    let h = [0.5, 1.5, -0.75];
    let scaled: Vec<f32> = h.iter().zip(lf).map(|(a, l)| a * l).collect();
    let adapted_y = linear(&scaled, &wo, Some(&bo), 3, 4, Layout::InOut);
    assert!(close(&linear(&h, &values(&m, "wo"), Some(&bo), 3, 4, Layout::InOut), &adapted_y, 1e-6));
}

#[test]
fn merge_gemm_with_bias_and_graph_output() {
    // Gemm transB=1 whose output is a graph output.
    let mut m = model(20, |g| {
        g.inputs.push(f32_input("x", &[2, 4]));
        g.add_initializer(f32s("fc.weight", &[3, 4], &seq(12, 0.3))).unwrap();
        g.add_initializer(f32s("fc.bias", &[3], &[1.0, 2.0, 3.0])).unwrap();
        add(
            g,
            node_with("Gemm", &["x", "fc.weight", "fc.bias"], &["y"], vec![Attribute::int("transB", 1)])
                .named("/fc/Gemm"),
        );
        g.outputs.push(output("y"));
    });
    let base = m.clone();
    run("insert-ia3{targets=fc}", &mut m);
    assert!(m.graph.is_graph_output("y"));
    assert_eq!(m.graph.producer("y").map(|(n, _)| m.graph.node(n).op().op_type.clone()).as_deref(), Some("Mul"));
    set_values(&mut m, "fc.ia3_l", &[2.0, -1.0, 0.5]);
    let rec = AdapterState::load(&m).unwrap().adapters.remove(0);
    merge_ia3(&mut m.graph, &rec).unwrap();
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    let w = values(&base, "fc.weight");
    let expect: Vec<f32> = (0..12).map(|i| w[i] * [2.0, -1.0, 0.5][i / 4]).collect();
    assert_eq!(values(&m, "fc.weight"), expect);
    assert_eq!(values(&m, "fc.bias"), vec![2.0, -2.0, 1.5]);
}

#[test]
fn merge_refuses_a_shared_weight() {
    let mut m = block();
    // A second reader of `wk`.
    m.graph.add_node(node("MatMul", &["x", "wk"], &["other"]).named("other")).unwrap();
    m.graph.outputs.push(output("other"));
    // `other` has no module path, so it is not selected; only `key` is adapted.
    run("insert-ia3{targets=key}", &mut m);
    let before = adaptc_ir::dump(&m);
    let rec = AdapterState::load(&m).unwrap().adapters.remove(0);
    let err = merge_ia3(&mut m.graph, &rec).unwrap_err().to_string();
    assert!(err.contains("`wk` is shared with `other`"), "{err}");
    assert_eq!(adaptc_ir::dump(&m), before, "nothing changed");

    let mut wrong = rec.clone();
    wrong.method = Method::Lora;
    assert!(merge_ia3(&mut m.graph, &wrong).unwrap_err().to_string().contains("not IA3"));
}

#[test]
fn already_adapted_layers_are_skipped() {
    let mut m = block();
    run("insert-ia3{targets=key}", &mut m);
    let report = run(BLOCK, &mut m);
    assert_eq!(stat(&report, "ia3.skipped"), 1);
    assert_eq!(stat(&report, "ia3.inserted"), 2);
    assert!(report.runs[0].notes.iter().any(|n| n.contains("layer.0.key: skipped")), "{:?}", report.runs[0].notes);
    assert_eq!(AdapterState::load(&m).unwrap().of(Method::Ia3).count(), 3);
}

#[test]
fn negative_cases_name_the_reason() {
    let mut m = block();
    let err = run_err("insert-ia3{targets=query}", &mut m);
    assert!(err.contains("no linear layer matches targets=query"), "{err}");
    assert!(err.contains("layer.0.key"), "lists what exists: {err}");

    let err = run_err("insert-ia3{targets=key,value feedforward=dense}", &mut m);
    assert!(err.contains("`dense` is not one of targets (key,value)"), "{err}");
    assert!(err.contains("subset"), "{err}");

    // With a regex target the subset rule is checked on the graph.
    let err = run_err("insert-ia3{targets=re:.*key feedforward=dense}", &mut m);
    assert!(err.contains("matches `layer.0.output.dense`, which targets"), "{err}");

    let err = run_err("insert-ia3", &mut m);
    assert!(err.contains("option `targets`: is required"), "{err}");
    assert!(err.contains("feedforward=down_proj"), "suggests a configuration: {err}");

    // A non-float weight is refused before anything changes.
    let mut q = model(20, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Int32, vec![Dim::Known(2), Dim::Known(4)]));
        g.add_initializer(i32s("fc.weight", &[4, 3], &[1; 12])).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["y"]).named("/fc/MatMul"));
        g.outputs.push(output("y"));
    });
    let err = run_err("insert-ia3{targets=fc}", &mut q);
    assert!(err.contains("is i32, not a float type"), "{err}");
}

// ----- fixtures ------------------------------------------------------------------------------

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

fn load(rel: &str) -> Model {
    adaptc_ir::onnx::load(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A fresh scratch folder under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptc-ia3-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bert6_applies_round_trips_and_merges() {
    let base = load("bert6.onnx");
    let mut m = base.clone();
    let report = run("insert-ia3{targets=key,value,output.dense feedforward=output.dense}", &mut m);
    // Per block: key, value (output side); attention.output.dense, output.dense (input side,
    // PEFT's suffix rule).
    assert_eq!(stat(&report, "ia3.inserted"), 24);
    assert_eq!(stat(&report, "ia3.output_side"), 12);
    assert_eq!(stat(&report, "ia3.input_side"), 12);
    // key/value: 64 each; attention.output.dense: in 64; output.dense: in 128 (intermediate).
    assert_eq!(stat(&report, "ia3.params"), 6 * (64 + 64 + 64 + 128));
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(
        m.graph.inputs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["input_ids", "attention_mask", "token_type_ids"]
    );

    let dir = scratch("bert6");
    let path = dir.join("bert6_ia3.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    let state = AdapterState::load(&back).unwrap();
    assert_eq!(state, AdapterState::load(&m).unwrap());
    assert_eq!(state.trainable.len(), 24);
    assert!(state.trainable.contains("encoder.layer.3.attention.self.key.ia3_l"));
    let ff = state.adapters.iter().find(|a| a.module == "encoder.layer.0.output.dense").unwrap();
    assert_eq!(ff.extra["side"], "input");

    // Merging every record (after "training") gives back the base graph structure.
    let mut merged = back;
    for rec in &state.adapters {
        let l = merged.graph.initializer(&rec.params["ia3"]).unwrap().numel() as usize;
        let v: Vec<f32> = (0..l).map(|i| 1.0 + 0.01 * (i % 7) as f32).collect();
        set_values(&mut merged, &rec.params["ia3"], &v);
    }
    for rec in &state.adapters {
        merge_ia3(&mut merged.graph, rec).unwrap();
    }
    adaptc_ir::verify(&merged.graph).unwrap();
    assert_eq!(merged.graph.num_nodes(), base.graph.num_nodes());
    assert_eq!(merged.graph.num_initializers(), base.graph.num_initializers());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama4_with_external_data() {
    let mut m = load("llama4/model.onnx");
    let report = run("insert-ia3{targets=k_proj,v_proj,down_proj feedforward=down_proj}", &mut m);
    assert_eq!(stat(&report, "ia3.inserted"), 12);
    assert_eq!(stat(&report, "ia3.input_side"), 4);
    adaptc_ir::verify(&m.graph).unwrap();

    let dir = scratch("llama4");
    let path = dir.join("model.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let mut back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    let state = AdapterState::load(&back).unwrap();
    assert_eq!(state, AdapterState::load(&m).unwrap());
    let down = state.adapters.iter().find(|a| a.module == "model.layers.2.mlp.down_proj").unwrap();
    assert_eq!(down.extra["side"], "input");
    assert_eq!(down.layout, Some(Layout::InOut));

    // Merge one input-side adapter whose base weight lives in the external data file.
    let w_before = values(&back, &down.base_weight);
    let l = back.graph.initializer(&down.params["ia3"]).unwrap().numel() as usize;
    let out = w_before.len() / l;
    let scale: Vec<f32> = (0..l).map(|i| 0.5 + i as f32 / l as f32).collect();
    set_values(&mut back, &down.params["ia3"], &scale);
    merge_ia3(&mut back.graph, down).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    let expect: Vec<f32> = (0..w_before.len()).map(|idx| w_before[idx] * scale[idx / out]).collect();
    assert_eq!(values(&back, &down.base_weight), expect);
    assert!(back.graph.initializer(&down.params["ia3"]).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
