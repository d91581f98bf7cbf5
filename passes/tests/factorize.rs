//! `factorize-lowrank`: golden dumps for the three linear forms, full rank reproduces every
//! form's outputs (f64 evaluator), a truncated rank leaves exactly the SVD tail on a matrix with
//! known singular values, `energy` picks the right rank, bert6 at full rank, and the refusals.

mod common;
mod lora_support;

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, ValueInfo};
use adaptc_passes::pattern::find_linear_layers;
use adaptc_passes::{PassManager, Registry};
use common::*;
use lora_support::{eval, form_model, form_weights, linear, Arr, FORMS};

// ----- fixtures ------------------------------------------------------------------------------

fn values(n: usize, seed: u64) -> Vec<f32> {
    Arr::random(&[n], seed).data.into_iter().map(|v| v as f32).collect()
}

fn add(g: &mut Graph, n: adaptc_ir::Node) {
    g.add_node(n).unwrap();
}

/// `x [batch, K]` through `layer.0.query` (`MatMul + Add`, `[in, out]`), `layer.0.key` (`Gemm
/// transB=1`, `[out, in]`) and `layer.0.value` (`MatMul(x, Transpose(W))`, `[out, in]`), summed.
fn tiny(k: u64) -> Model {
    model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("batch".into()), Dim::Known(k as i64)]));
        g.add_initializer(f32s("layer.0.query.weight", &[k, 8], &values(k as usize * 8, 1))).unwrap();
        g.add_initializer(f32s("layer.0.query.bias", &[8], &values(8, 2))).unwrap();
        g.add_initializer(f32s("layer.0.key.weight", &[8, k], &values(k as usize * 8, 3))).unwrap();
        g.add_initializer(f32s("layer.0.key.bias", &[8], &values(8, 4))).unwrap();
        g.add_initializer(f32s("layer.0.value.weight", &[8, k], &values(k as usize * 8, 5))).unwrap();
        add(g, node("MatMul", &["x", "layer.0.query.weight"], &["q0"]).named("/layer.0/query/MatMul"));
        add(g, node("Add", &["q0", "layer.0.query.bias"], &["q"]).named("/layer.0/query/Add"));
        add(
            g,
            node_with(
                "Gemm",
                &["x", "layer.0.key.weight", "layer.0.key.bias"],
                &["k"],
                vec![Attribute::int("transB", 1)],
            )
            .named("/layer.0/key/Gemm"),
        );
        add(
            g,
            node_with("Transpose", &["layer.0.value.weight"], &["vt"], vec![Attribute::ints("perm", vec![1, 0])])
                .named("/layer.0/value/Transpose"),
        );
        add(g, node("MatMul", &["x", "vt"], &["v"]).named("/layer.0/value/MatMul"));
        add(g, node("Add", &["q", "k"], &["qk"]).named("/sum/Add"));
        add(g, node("Add", &["qk", "v"], &["y"]).named("/sum/Add_1"));
        g.outputs.push(output("y"));
    })
}

fn snapshot(m: &Model) -> (String, Vec<(String, Vec<u8>)>) {
    let inits = m.graph.initializers().map(|t| (t.name.clone(), t.bytes().unwrap().into_owned())).collect();
    (adaptc_ir::dump(m), inits)
}

fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = snapshot(model);
    let err = PassManager::new(&Registry::builtin(), pipeline)
        .and_then(|m| m.run(model))
        .map(|_| ())
        .expect_err("the pipeline should fail")
        .to_string();
    assert!(snapshot(model) == before, "a failed pass must leave the model unchanged");
    err
}

/// A Householder reflection `I − 2vvᵀ/vᵀv` of size `n` (orthogonal).
fn reflection(n: usize, seed: u64) -> Arr {
    let v = Arr::random(&[n], seed);
    let vv: f64 = v.data.iter().map(|x| x * x).sum();
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            q[i * n + j] = f64::from(u8::from(i == j)) - 2.0 * v.data[i] * v.data[j] / vv;
        }
    }
    Arr::new(&[n, n], q)
}

const SINGULAR: [f64; 5] = [4.0, 3.0, 2.0, 1.0, 0.5];

/// `W [in=6, out=5] = Q6 · [diag(SINGULAR); 0] · Q5`: singular values exactly [`SINGULAR`].
fn known_svd_weight() -> Arr {
    let mut d = vec![0.0; 6 * 5];
    for (i, s) in SINGULAR.iter().enumerate() {
        d[i * 5 + i] = *s;
    }
    reflection(6, 31).matmul(&Arr::new(&[6, 5], d)).matmul(&reflection(5, 32))
}

/// `x [n, 6] → MatMul(x, fc.weight [6, 5]) → y`.
fn known_svd_model() -> Model {
    model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("n".into()), Dim::Known(6)]));
        g.add_initializer(lora_support::tensor("fc.weight", &known_svd_weight())).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    })
}

fn dims(m: &Model, name: &str) -> Vec<u64> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).dims().to_vec()
}

fn frobenius(a: &Arr) -> f64 {
    a.data.iter().map(|v| v * v).sum::<f64>().sqrt()
}

// ----- golden ----------------------------------------------------------------------------------

#[test]
fn golden_three_forms_at_rank_two() {
    let mut m = tiny(4);
    let report = run("factorize-lowrank{rank=2}", &mut m);
    assert!(report.runs[0].changed);
    assert_eq!(stat(&report, "lowrank.layers"), 3);
    assert_eq!(stat(&report, "lowrank.params_before"), 3 * 32);
    assert_eq!(stat(&report, "lowrank.params_after"), 3 * 2 * 12);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[batch, 4]
  init %layer.0.query.bias: f32[8]
  init %layer.0.key.bias: f32[8]
  init %layer.0.query.weight_lowrank_a: f32[4, 2]
  init %layer.0.query.weight_lowrank_b: f32[2, 8]
  init %layer.0.key.weight_lowrank_a: f32[4, 2]
  init %layer.0.key.weight_lowrank_b: f32[2, 8]
  init %layer.0.value.weight_lowrank_a: f32[4, 2]
  init %layer.0.value.weight_lowrank_b: f32[2, 8]
  %q0/lowrank = MatMul(%x, %layer.0.query.weight_lowrank_a)  # /layer.0/query/MatMul_lowrank_a
  %q0 = MatMul(%q0/lowrank, %layer.0.query.weight_lowrank_b)  # /layer.0/query/MatMul_lowrank_b
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %k/lowrank = MatMul(%x, %layer.0.key.weight_lowrank_a)  # /layer.0/key/Gemm_lowrank_a
  %k/matmul = MatMul(%k/lowrank, %layer.0.key.weight_lowrank_b)  # /layer.0/key/Gemm_lowrank_b
  %k = Add(%k/matmul, %layer.0.key.bias)  # /layer.0/key/Gemm_bias
  %qk = Add(%q, %k)  # /sum/Add
  %v/lowrank = MatMul(%x, %layer.0.value.weight_lowrank_a)  # /layer.0/value/MatMul_lowrank_a
  %v = MatMul(%v/lowrank, %layer.0.value.weight_lowrank_b)  # /layer.0/value/MatMul_lowrank_b
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
    // Every new MatMul is a linear layer again, with the old module path.
    let paths: Vec<String> = find_linear_layers(&m.graph).into_iter().filter_map(|l| l.module_path).collect();
    assert_eq!(paths.len(), 6);
    for p in ["layer.0.query", "layer.0.key", "layer.0.value"] {
        assert_eq!(paths.iter().filter(|x| *x == p).count(), 2, "{paths:?}");
    }
    for (_, n) in m.graph.nodes().filter(|(_, n)| n.op().op_type == "MatMul") {
        assert!(matches!(n.metadata.get("adaptc.lowrank"), Some("a" | "b")), "{}", n.name);
    }
}

// ----- numerics --------------------------------------------------------------------------------

#[test]
fn full_rank_reproduces_every_form() {
    let (w, b) = form_weights();
    for form in FORMS {
        let base = form_model(form);
        let mut m = base.clone();
        let report = run("factorize-lowrank{targets=fc rank=5}", &mut m);
        assert_eq!(stat(&report, "lowrank.layers"), 1, "{form:?}");
        assert!(stat(&report, "lowrank.max_rel_err_e6") <= 1, "{form:?}: {}", stat(&report, "lowrank.max_rel_err_e6"));
        adaptc_ir::verify(&m.graph).unwrap();
        assert!(m.graph.initializer("fc.weight").is_none(), "{form:?}: the old weight goes");
        assert!(m.graph.nodes().all(|(_, n)| n.op().op_type != "Transpose" && n.op().op_type != "Gemm"));
        let x = Arr::random(&form.x_dims(), 21);
        let feeds = HashMap::from([("x".to_string(), x.clone())]);
        let y = eval(&m.graph, &feeds, "z");
        let expected = eval(&base.graph, &feeds, "z");
        let rel = y.max_abs_diff(&expected) / expected.max_abs();
        assert!(rel < 1e-5, "{form:?}: {rel}");
        let by_hand = linear(&x, &w, form.has_bias().then_some(&b));
        let by_hand = Arr { dims: by_hand.dims.clone(), data: by_hand.data.iter().map(|v| v.max(0.0)).collect() };
        assert!(y.max_abs_diff(&by_hand) / by_hand.max_abs() < 1e-5, "{form:?}");
    }
}

#[test]
fn truncation_leaves_exactly_the_svd_tail() {
    let total: f64 = SINGULAR.iter().map(|s| s * s).sum();
    let w = known_svd_weight();
    for rank in 1..=5 {
        let mut m = known_svd_model();
        let report = run(&format!("factorize-lowrank{{targets=fc rank={rank}}}"), &mut m);
        let tail: f64 = SINGULAR[rank..].iter().map(|s| s * s).sum();
        let expected = (tail / total).sqrt();
        let got = stat(&report, "lowrank.max_rel_err_e6") as f64 / 1e6;
        assert!((got - expected).abs() < 2e-6, "rank {rank}: {got} vs {expected}");
        assert_eq!(dims(&m, "fc.weight_lowrank_a"), [6, rank as u64]);
        assert_eq!(dims(&m, "fc.weight_lowrank_b"), [rank as u64, 5]);
        // Through the graph: x = I gives A·B itself (before the Relu).
        let x = Arr::new(&[6, 6], (0..36).map(|i| f64::from(u8::from(i % 7 == 0))).collect());
        let h = eval(&m.graph, &HashMap::from([("x".to_string(), x)]), "h");
        let diff = Arr::new(&[6, 5], h.data.iter().zip(&w.data).map(|(a, b)| a - b).collect());
        let rel = frobenius(&diff) / frobenius(&w);
        assert!((rel - expected).abs() < 2e-6, "rank {rank}: {rel} vs {expected}");
    }
}

#[test]
fn energy_picks_the_smallest_sufficient_rank() {
    // Energies 16, 9, 4, 1, 0.25 of 30.25: cumulative 0.529, 0.826, 0.959, 0.992, 1.
    for (energy, rank) in [(0.5, 1), (0.8, 2), (0.826, 2), (0.9, 3), (0.96, 4), (0.995, 5), (1.0, 5)] {
        let mut m = known_svd_model();
        run(&format!("factorize-lowrank{{targets=fc energy={energy}}}"), &mut m);
        assert_eq!(dims(&m, "fc.weight_lowrank_a"), [6, rank], "energy {energy}");
    }
}

#[test]
fn rank_above_min_keeps_full_rank_and_says_so() {
    let mut m = form_model(lora_support::Form::GemmTransB);
    let report = run("factorize-lowrank{targets=fc rank=9}", &mut m);
    assert_eq!(stat(&report, "lowrank.params_before"), 30);
    assert_eq!(stat(&report, "lowrank.params_after"), 55);
    let notes = &report.runs[0].notes;
    assert!(notes.iter().any(|n| n == "`fc`: rank=9 ≥ min(in, out) = 5: kept full rank"), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("55 parameters, more than the 30")), "{notes:?}");
}

#[test]
fn report_and_shared_weights() {
    let dir = lora_support::TempDir::new("lowrank-report");
    let path = dir.0.join("lowrank.json");
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 8]));
        g.add_initializer(f32s("enc.proj.weight", &[8, 4], &values(32, 7))).unwrap();
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["a"]).named("/enc/proj/MatMul"));
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["b"]).named("/dec/proj/MatMul"));
        add(g, node("Add", &["a", "b"], &["y"]));
        g.outputs.push(output("y"));
    });
    let report = run(&format!("factorize-lowrank{{targets=proj rank=2 report={}}}", path.display()), &mut m);
    assert_eq!(stat(&report, "lowrank.layers"), 2);
    // One pair of factors serves both layers.
    assert_eq!(m.graph.uses("enc.proj.weight_lowrank_a").len(), 2);
    assert!(m.graph.initializer("enc.proj.weight").is_none());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["rule"], "rank=2");
    assert_eq!(json["total_layers"], 2);
    let layer = &json["layers"][0];
    assert_eq!(layer["module"], "enc.proj");
    assert_eq!(layer["shape"], serde_json::json!([8, 4]));
    assert_eq!(layer["rank"], 2);
    assert_eq!(layer["params_before"], 32);
    assert_eq!(layer["params_after"], 24);
    let (err, energy) = (layer["rel_err"].as_f64().unwrap(), layer["energy"].as_f64().unwrap());
    assert!((err * err - (1.0 - energy)).abs() < 1e-5, "{err} {energy}");
}

#[test]
fn half_precision_weights_give_factors_of_their_type() {
    // Full rank, rounded to the type: float16 keeps 11 bits, bfloat16 8.
    for (dtype, limit) in [(DataType::Float16, 3_000), (DataType::BFloat16, 20_000)] {
        let mut m = model(17, |g| {
            g.inputs.push(ValueInfo::tensor("x", dtype, vec![Dim::Known(2), Dim::Known(8)]));
            let bytes = values(32, 9)
                .iter()
                .flat_map(|&v| match dtype {
                    DataType::Float16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let t = adaptc_ir::Tensor::from_bytes("fc.weight", dtype, vec![8, 4], bytes).unwrap();
            g.add_initializer(t).unwrap();
            add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
            add(g, node("Relu", &["h"], &["y"]));
            g.outputs.push(output("y"));
        });
        let report = run("factorize-lowrank{targets=fc rank=4}", &mut m);
        let err = stat(&report, "lowrank.max_rel_err_e6");
        assert!(err > 0 && err < limit, "{dtype}: {err}");
        for name in ["fc.weight_lowrank_a", "fc.weight_lowrank_b"] {
            assert_eq!(m.graph.initializer(name).unwrap().dtype(), dtype);
        }
    }
}

// ----- bert6 -----------------------------------------------------------------------------------

#[test]
fn bert6_full_rank() {
    let base = lora_support::load("bert6.onnx");
    let layers = find_linear_layers(&base.graph);
    let (mut before, mut after) = (0i64, 0i64);
    for l in &layers {
        let (k, n) = (l.in_features as i64, l.out_features as i64);
        before += k * n;
        after += k.min(n) * (k + n);
    }
    let mut m = base.clone();
    let start = std::time::Instant::now();
    let report = run("factorize-lowrank{rank=384}", &mut m);
    eprintln!("factorize-lowrank{{rank=384}} on bert6 (37 layers): {:?}", start.elapsed());
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(stat(&report, "lowrank.layers"), 37);
    assert_eq!(stat(&report, "lowrank.params_before"), before);
    assert_eq!(stat(&report, "lowrank.params_after"), after);
    assert!(stat(&report, "lowrank.max_rel_err_e6") <= 2, "{}", stat(&report, "lowrank.max_rel_err_e6"));
    assert_eq!(find_linear_layers(&m.graph).len(), 74);
    // One note per kind, not one per layer.
    let notes = &report.runs[0].notes;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("rank=384 ≥ min(in, out) for 37 layers (`encoder.layer.0.attention.self.query`"));
    assert!(notes[1].contains(&format!("hold more parameters factorized than dense: {before} → {after} in total")));
    // No value changed shape: every value_info entry still describes a value of the graph.
    for v in &m.graph.value_info {
        assert!(m.graph.producer(&v.name).is_some() || m.graph.initializer(&v.name).is_some(), "{}", v.name);
        let old = base.graph.value_info.iter().find(|o| o.name == v.name).unwrap();
        assert_eq!(format!("{:?}", old.ty), format!("{:?}", v.ty), "{}", v.name);
    }
    // It saves and loads back.
    let dir = lora_support::TempDir::new("lowrank-bert6");
    let path = dir.0.join("f.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(adaptc_ir::dump(&back), adaptc_ir::dump(&m));
}

#[test]
fn llama4_with_external_data() {
    let base = lora_support::load("llama4/model.onnx");
    let mut m = base.clone();
    // Random initial weights have a flat spectrum: a fixed rank is what shrinks them.
    let report = run("factorize-lowrank{rank=8}", &mut m);
    assert_eq!(stat(&report, "lowrank.layers"), 28, "every projection, not the head");
    assert!(stat(&report, "lowrank.params_after") < stat(&report, "lowrank.params_before"));
    let dir = lora_support::TempDir::new("lowrank-llama4");
    let path = dir.0.join("model.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    // The factors went to the external data file with the rest (the dump marks them so).
    assert_eq!(adaptc_ir::dump(&back).replace(" (external)", ""), adaptc_ir::dump(&m).replace(" (external)", ""));
    assert_eq!(find_linear_layers(&back.graph).len(), 2 * 28 + 1);
    for t in m.graph.initializers().filter(|t| t.name.ends_with("_lowrank_a")) {
        assert!(back.graph.initializer(&t.name).is_some_and(|u| u.same_value(t)), "{}", t.name);
    }
}

// ----- refusals --------------------------------------------------------------------------------

#[test]
fn bad_options_are_refused_before_running() {
    let build = |p: &str| PassManager::new(&Registry::builtin(), p).err().map(|e| e.to_string()).unwrap_or_default();
    let e = build("factorize-lowrank{rank=4 energy=0.9}");
    assert!(e.contains("give either rank or energy, not both"), "{e}");
    // Neither: energy=0.95.
    assert!(build("factorize-lowrank").is_empty());
    let e = build("factorize-lowrank{energy=0}");
    assert!(e.contains("option `energy`") && e.contains("0 is not in (0, 1]"), "{e}");
    let e = build("factorize-lowrank{energy=1.5}");
    assert!(e.contains("option `energy`") && e.contains("1.5 is not in (0, 1]"), "{e}");
    let e = build("factorize-lowrank{rank=0}");
    assert!(e.contains("option `rank`") && e.contains("at least 1"), "{e}");
}

#[test]
fn trainable_weights_are_refused() {
    let mut m = tiny(4);
    m.graph.initializer_mut("layer.0.value.weight").unwrap().metadata.set("adaptc.trainable", "true");
    let e = run_err("factorize-lowrank{rank=2}", &mut m);
    assert!(e.contains("`layer.0.value`") && e.contains("`layer.0.value.weight` is trainable"), "{e}");
}

#[test]
fn tied_weights_are_refused_naming_the_reader() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 8]));
        g.inputs.push(ValueInfo::tensor("ids", DataType::Int64, vec![Dim::Known(2)]));
        g.add_initializer(f32s("lm_head.weight", &[4, 8], &values(32, 7))).unwrap();
        add(g, node("Gather", &["lm_head.weight", "ids"], &["e"]).named("/embed/Gather"));
        add(
            g,
            node_with("Gemm", &["x", "lm_head.weight"], &["h"], vec![Attribute::int("transB", 1)])
                .named("/lm_head/Gemm"),
        );
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
        g.outputs.push(output("e"));
    });
    let e = run_err("factorize-lowrank{rank=2}", &mut m);
    assert!(e.contains("`lm_head`") && e.contains("also read by `/embed/Gather` (Gather)"), "{e}");
}

#[test]
fn non_float_weights_and_empty_selections_are_refused() {
    let mut m = model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Int32, vec![Dim::Known(2), Dim::Known(4)]));
        g.add_initializer(i32s("fc.weight", &[4, 3], &[1; 12])).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    });
    let e = run_err("factorize-lowrank{rank=2}", &mut m);
    assert!(e.contains("`fc`") && e.contains("is i32"), "{e}");
    let mut m = tiny(4);
    let e = run_err("factorize-lowrank{rank=2 targets=nonexistent}", &mut m);
    assert!(e.contains("no linear layer matches targets=nonexistent"), "{e}");
}

/// Speed on one BERT-base-sized FFN weight (`[384, 1536]`, full SVD for `energy`): run with
/// `cargo test --release -p adaptc-passes --test factorize -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release"]
fn speed_384_by_1536() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 384]));
        g.add_initializer(f32s("ffn.weight", &[384, 1536], &values(384 * 1536, 5))).unwrap();
        add(g, node("MatMul", &["x", "ffn.weight"], &["h"]).named("/ffn/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    });
    let start = std::time::Instant::now();
    let report = run("factorize-lowrank{targets=ffn energy=0.95}", &mut m);
    eprintln!(
        "factorize-lowrank{{energy=0.95}} on one [384, 1536] weight: {:?} (rank {})",
        start.elapsed(),
        dims(&m, "ffn.weight_lowrank_a")[1]
    );
    assert_eq!(stat(&report, "lowrank.layers"), 1);
}

#[test]
fn adapted_layers_are_refused() {
    let mut m = tiny(4);
    run("insert-lora{rank=2 targets=query}", &mut m);
    let e = run_err("factorize-lowrank{rank=2}", &mut m);
    assert!(e.contains("`layer.0.query`") && e.contains("carries a Lora adapter") && e.contains("merge-lora"), "{e}");
    // The adapter's own MatMuls are never selected; the other layers go through.
    let report = run("factorize-lowrank{rank=2 exclude=query}", &mut m);
    assert_eq!(stat(&report, "lowrank.layers"), 2);
    run("merge-lora", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
}
