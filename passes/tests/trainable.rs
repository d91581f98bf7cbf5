//! `mark-trainable`: BitFit, norm tuning, full fine-tuning and name regexes on a small graph
//! with every kind of parameter, then on the BERT and Llama fixtures.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use adaptc_ir::{Attribute, Model};
use adaptc_passes::adapters::AdapterState;
use adaptc_passes::{PassManager, Registry};
use common::*;

/// A linear layer named only through `name_scopes` (weight `val_3`), a Gemm with a bias, a
/// LayerNormalization, a decomposed RMSNorm (`w · (x · Reciprocal(Sqrt(·)))`), a rank-0
/// constant and an initializer that is also a graph input.
fn zoo() -> Model {
    model(20, |g| {
        g.inputs.push(f32_input("x", &[2, 4]));
        g.inputs.push(f32_input("override", &[4]));
        g.add_initializer(f32s("val_3", &[4, 4], &[0.5; 16])).unwrap();
        g.add_initializer(f32s("enc.q.bias", &[4], &[0.0; 4])).unwrap();
        g.add_initializer(f32s("head.weight", &[3, 4], &[0.5; 12])).unwrap();
        g.add_initializer(f32s("head.bias", &[3], &[0.0; 3])).unwrap();
        g.add_initializer(f32s("val_ln_w", &[4], &[1.0; 4])).unwrap();
        g.add_initializer(f32s("val_ln_b", &[4], &[0.0; 4])).unwrap();
        g.add_initializer(f32s("norm.weight", &[4], &[1.0; 4])).unwrap();
        g.add_initializer(f32s("eps", &[], &[1e-6])).unwrap();
        g.add_initializer(f32s("override", &[4], &[0.0; 4])).unwrap();
        let mut mm = node("MatMul", &["x", "val_3"], &["q0"]).named("node_MatMul_3");
        mm.metadata.set("pkg.torch.onnx.name_scopes", "['', 'enc', 'enc.q', 'linear']");
        g.add_node(mm).unwrap();
        let mut add = node("Add", &["q0", "enc.q.bias"], &["q"]).named("node_linear");
        add.metadata.set("pkg.torch.onnx.name_scopes", "['', 'enc', 'enc.q', 'linear']");
        g.add_node(add).unwrap();
        let mut ln =
            node_with("LayerNormalization", &["q", "val_ln_w", "val_ln_b"], &["n"], vec![Attribute::int("axis", -1)])
                .named("node_layer_norm");
        ln.metadata.set("pkg.torch.onnx.name_scopes", "['', 'enc', 'enc.LayerNorm', 'layer_norm']");
        g.add_node(ln).unwrap();
        g.add_node(node("Mul", &["n", "n"], &["sq"])).unwrap();
        g.add_node(node("Add", &["sq", "eps"], &["sq_eps"])).unwrap();
        g.add_node(node("Sqrt", &["sq_eps"], &["rt"])).unwrap();
        g.add_node(node("Reciprocal", &["rt"], &["rsqrt"])).unwrap();
        g.add_node(node("Mul", &["n", "rsqrt"], &["normed"])).unwrap();
        g.add_node(node("Mul", &["norm.weight", "normed"], &["r"]).named("/norm/Mul")).unwrap();
        g.add_node(node("Add", &["r", "override"], &["r2"])).unwrap();
        g.add_node(
            node_with("Gemm", &["r2", "head.weight", "head.bias"], &["y"], vec![Attribute::int("transB", 1)])
                .named("/head/Gemm"),
        )
        .unwrap();
        g.outputs.push(output("y"));
    })
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn trainable(m: &Model) -> BTreeSet<String> {
    AdapterState::load(m).unwrap().trainable
}

fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = adaptc_ir::dump(model);
    let state = AdapterState::load(model).unwrap();
    let err = PassManager::new(&Registry::builtin(), pipeline)
        .and_then(|m| m.run(model))
        .map(|_| ())
        .expect_err("the pipeline should fail")
        .to_string();
    assert_eq!(adaptc_ir::dump(model), before, "a failed pass must leave the model unchanged");
    assert_eq!(AdapterState::load(model).unwrap(), state);
    err
}

#[test]
fn bias_is_bitfit() {
    let mut m = zoo();
    let before = adaptc_ir::dump(&m);
    let report = run("mark-trainable", &mut m);
    assert_eq!(trainable(&m), set(&["enc.q.bias", "head.bias", "val_ln_b"]));
    assert_eq!(stat(&report, "trainable.tensors"), 3);
    assert_eq!(stat(&report, "trainable.added"), 3);
    assert_eq!(stat(&report, "trainable.params"), 4 + 3 + 4);
    assert_eq!(stat(&report, "trainable.bytes"), 4 * 11);
    assert_eq!(adaptc_ir::dump(&m), before, "the graph itself is not changed");
    // Running again adds nothing.
    let report = run("mark-trainable{targets=bias}", &mut m);
    assert!(!report.changed());
    assert_eq!(stat(&report, "trainable.added"), 0);
}

#[test]
fn layernorm_finds_layer_and_rms_norms() {
    let mut m = zoo();
    run("mark-trainable{targets=layernorm}", &mut m);
    assert_eq!(trainable(&m), set(&["norm.weight", "val_ln_b", "val_ln_w"]));
}

#[test]
fn all_skips_scalars_and_graph_inputs() {
    let mut m = zoo();
    let report = run("mark-trainable{targets=all}", &mut m);
    assert_eq!(
        trainable(&m),
        set(&["enc.q.bias", "head.bias", "head.weight", "norm.weight", "val_3", "val_ln_b", "val_ln_w"])
    );
    assert_eq!(stat(&report, "trainable.params"), 16 + 4 + 12 + 3 + 4 + 4 + 4);
}

#[test]
fn regex_matches_pytorch_names() {
    let mut m = zoo();
    run(r"mark-trainable{targets=re:enc\.q\.weight}", &mut m);
    assert_eq!(trainable(&m), set(&["val_3"]), "the anonymous weight is enc.q.weight");
    let mut m = zoo();
    run(r"mark-trainable{targets=re:enc\.LayerNorm\..*,re:head\.weight}", &mut m);
    assert_eq!(trainable(&m), set(&["head.weight", "val_ln_b", "val_ln_w"]));
    let mut m = zoo();
    run(r"mark-trainable{targets=re:norm\.weight}", &mut m);
    assert_eq!(trainable(&m), set(&["norm.weight"]));
    // Lists combine; a target matching nothing is a note when others match.
    let mut m = zoo();
    let report = run(r"mark-trainable{targets=layernorm,re:nothing}", &mut m);
    assert_eq!(trainable(&m).len(), 3);
    assert!(
        report.runs[0].notes.iter().any(|n| n.contains("`re:nothing` matched nothing")),
        "{:?}",
        report.runs[0].notes
    );
}

#[test]
fn negative_cases_name_the_reason() {
    let mut m = zoo();
    let err = run_err(r"mark-trainable{targets=re:decoder\..*}", &mut m);
    assert!(err.contains("nothing matched targets=re:decoder"), "{err}");
    assert!(err.contains("enc.q.weight"), "shows what names look like: {err}");
    let err = run_err("mark-trainable{targets=biases}", &mut m);
    assert!(err.contains("unknown target `biases`"), "{err}");
    let err = run_err("mark-trainable{targets=re:(}", &mut m);
    assert!(err.contains("bad regex"), "{err}");

    let mut plain = model(20, |g| {
        g.inputs.push(f32_input("x", &[2, 4]));
        g.add_initializer(f32s("w", &[4, 4], &[0.5; 16])).unwrap();
        g.add_node(node("MatMul", &["x", "w"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    let err = run_err("mark-trainable{targets=bias,layernorm}", &mut plain);
    assert!(err.contains("no linear layer or LayerNormalization has a bias initializer"), "{err}");
    assert!(err.contains("no LayerNormalization, RMSNormalization or decomposed RMSNorm"), "{err}");
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

#[test]
fn bert6_bitfit_and_layernorm() {
    let base = adaptc_ir::onnx::load(&fixture("bert6.onnx")).unwrap();
    let biases: BTreeSet<String> =
        base.graph.initializers().map(|t| t.name.clone()).filter(|n| n.ends_with(".bias")).collect();
    assert_eq!(biases.len(), 50);
    let mut m = base.clone();
    run("mark-trainable{targets=bias}", &mut m);
    assert_eq!(trainable(&m), biases, "every linear and LayerNorm bias, nothing else");

    let mut m = base.clone();
    run("mark-trainable{targets=layernorm}", &mut m);
    let ln: BTreeSet<String> =
        base.graph.initializers().map(|t| t.name.clone()).filter(|n| n.contains("LayerNorm.")).collect();
    assert_eq!(ln.len(), 26);
    assert_eq!(trainable(&m), ln);

    // The query weights are anonymous (`val_N`) and found by their PyTorch names.
    let mut m = base.clone();
    run(r"mark-trainable{targets=re:.*attention\.self\.query\.weight}", &mut m);
    let chosen = trainable(&m);
    assert_eq!(chosen.len(), 6);
    assert!(chosen.iter().all(|n| n.starts_with("val_")), "{chosen:?}");

    let mut m = base;
    let report = run("mark-trainable{targets=all}", &mut m);
    assert!(stat(&report, "trainable.tensors") > 100);
    let dir = std::env::temp_dir().join(format!("adaptc-trainable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bert6_all.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    assert_eq!(trainable(&back), trainable(&m));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama4_rms_norms_and_no_biases() {
    let base = adaptc_ir::onnx::load(&fixture("llama4/model.onnx")).unwrap();
    let mut m = base.clone();
    run("mark-trainable{targets=layernorm}", &mut m);
    let norms: BTreeSet<String> =
        base.graph.initializers().map(|t| t.name.clone()).filter(|n| n.ends_with("norm.weight")).collect();
    assert_eq!(norms.len(), 9, "2 per block and the final norm");
    assert_eq!(trainable(&m), norms);

    let mut m = base.clone();
    let err = run_err("mark-trainable{targets=bias}", &mut m);
    assert!(err.contains("nothing matched targets=bias"), "{err}");

    let mut m = base.clone();
    run(r"mark-trainable{targets=re:.*\.q_proj\.weight}", &mut m);
    assert_eq!(trainable(&m).len(), 4);

    let mut m = base;
    let report = run("mark-trainable{targets=all}", &mut m);
    let expect = m.graph.initializers().filter(|t| t.dtype().is_float() && !t.dims().is_empty()).count();
    assert_eq!(stat(&report, "trainable.tensors") as usize, expect);
    assert!(trainable(&m).contains("model.embed_tokens.weight"));
    assert!(!trainable(&m).contains("val_71"), "rank-0 constants are left out");
}
