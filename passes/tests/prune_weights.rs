//! `prune-weights`: the graph is untouched but for the weight data (golden dump), unstructured
//! pruning zeroes exactly the requested count of smallest magnitudes, `N:M` keeps the `N`
//! largest of every group along the input features in both stored layouts, the layer outputs
//! equal `x·W_pruned + b` written out by hand (f64 evaluator), bert6 at 2:4, and the refusals.

mod common;
mod lora_support;

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Tensor, ValueInfo};
use adaptc_passes::pattern::find_linear_layers;
use adaptc_passes::{PassManager, Registry};
use common::*;
use lora_support::{eval, form_model, linear, Arr, FORMS};

// ----- fixtures ------------------------------------------------------------------------------

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    Arr::random(&[n], seed).data.into_iter().map(|v| v as f32).collect()
}

fn add(g: &mut Graph, n: adaptc_ir::Node) {
    g.add_node(n).unwrap();
}

/// `x [batch, K]` through three linear layers of every stored layout, summed into `y`:
/// - `layer.0.query`: `MatMul(x, Wq[K, 8]) + Add(bq)` (`[in, out]`);
/// - `layer.0.key`: `Gemm(x, Wk[8, K], bk, transB=1)` (`[out, in]`);
/// - `layer.0.value`: `MatMul(x, Transpose(Wv[8, K]))` (`[out, in]`).
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

/// `(name, in_out)` of the three weights of [`tiny`].
const WEIGHTS: [(&str, bool); 3] =
    [("layer.0.query.weight", true), ("layer.0.key.weight", false), ("layer.0.value.weight", false)];

fn weight(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).to_f32_lossy().unwrap()
}

/// The dump and every initializer's bytes: what "changed nothing" compares.
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

/// Element `(channel, feature)` of a stored weight.
fn at(w: &[f32], k: usize, n: usize, in_out: bool, channel: usize, feature: usize) -> f32 {
    if in_out {
        w[feature * n + channel]
    } else {
        w[channel * k + feature]
    }
}

// ----- golden ----------------------------------------------------------------------------------

#[test]
fn golden_structure_is_unchanged() {
    let mut m = tiny(16);
    let report = run("prune-weights", &mut m);
    assert!(report.runs[0].changed);
    assert_eq!(stat(&report, "prune.layers"), 3);
    assert_eq!(stat(&report, "prune.weights"), 3 * 128);
    assert_eq!(stat(&report, "prune.zeros"), 3 * 64);
    assert_eq!(stat(&report, "prune.sparsity_permille"), 500);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[batch, 16]
  init %layer.0.query.weight: f32[16, 8]
  init %layer.0.query.bias: f32[8]
  init %layer.0.key.weight: f32[8, 16]
  init %layer.0.key.bias: f32[8]
  init %layer.0.value.weight: f32[8, 16]
  %q0 = MatMul(%x, %layer.0.query.weight)  # /layer.0/query/MatMul
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %k = Gemm(%x, %layer.0.key.weight, %layer.0.key.bias) {transB=1}  # /layer.0/key/Gemm
  %vt = Transpose(%layer.0.value.weight) {perm=[1, 0]}  # /layer.0/value/Transpose
  %v = MatMul(%x, %vt)  # /layer.0/value/MatMul
  %qk = Add(%q, %k)  # /sum/Add
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
    // Biases are not pruned.
    assert_eq!(weight(&m, "layer.0.query.bias"), values(8, 2));
    // A second run finds nothing left to do.
    let report = run("prune-weights", &mut m);
    assert!(!report.runs[0].changed);
    assert_eq!(stat(&report, "prune.zeros"), 3 * 64);
}

// ----- numerics --------------------------------------------------------------------------------

#[test]
fn unstructured_zeroes_exactly_the_smallest() {
    for sparsity in [0.25, 0.29, 0.5, 0.9] {
        let base = tiny(25);
        let mut m = base.clone();
        let report = run(&format!("prune-weights{{sparsity={sparsity}}}"), &mut m);
        let numel = 25 * 8;
        let count = (sparsity * numel as f64 + 1e-9).floor() as usize;
        assert_eq!(stat(&report, "prune.zeros"), 3 * count as i64, "{sparsity}");
        for (name, _) in WEIGHTS {
            let (before, after) = (weight(&base, name), weight(&m, name));
            let zeroed: Vec<f32> = (0..numel).filter(|&i| after[i] == 0.0).map(|i| before[i].abs()).collect();
            assert_eq!(zeroed.len(), count, "{name} {sparsity}");
            let kept_min = (0..numel).filter(|&i| after[i] != 0.0).map(|i| before[i].abs()).fold(f32::MAX, f32::min);
            let zeroed_max = zeroed.iter().copied().fold(0.0, f32::max);
            assert!(zeroed_max <= kept_min, "{name} {sparsity}: zeroed {zeroed_max} > kept {kept_min}");
            for i in (0..numel).filter(|&i| after[i] != 0.0) {
                assert_eq!(after[i], before[i], "kept values are unchanged");
            }
        }
    }
}

#[test]
fn n_of_m_keeps_the_largest_per_group_in_both_layouts() {
    for (pattern, n, mm) in [("2:4", 2, 4), ("4:8", 4, 8), ("1:2", 1, 2)] {
        let k = 16;
        let base = tiny(k as u64);
        let mut m = base.clone();
        let report = run(&format!("prune-weights{{pattern={pattern}}}"), &mut m);
        assert_eq!(stat(&report, "prune.zeros"), (3 * k * 8 * (mm - n) / mm) as i64, "{pattern}");
        for (name, in_out) in WEIGHTS {
            let (before, after) = (weight(&base, name), weight(&m, name));
            for channel in 0..8 {
                for start in (0..k).step_by(mm) {
                    let group: Vec<usize> = (start..start + mm).collect();
                    let kept: Vec<usize> =
                        group.iter().copied().filter(|&f| at(&after, k, 8, in_out, channel, f) != 0.0).collect();
                    assert_eq!(kept.len(), n, "{name} {pattern} channel {channel} group {start}");
                    let mut by_mag = group.clone();
                    by_mag.sort_by(|&a, &b| {
                        let (va, vb) = (at(&before, k, 8, in_out, channel, a), at(&before, k, 8, in_out, channel, b));
                        vb.abs().total_cmp(&va.abs())
                    });
                    let mut expected = by_mag[..n].to_vec();
                    expected.sort();
                    assert_eq!(kept, expected, "{name} {pattern} channel {channel} group {start}");
                }
            }
        }
    }
}

/// `W [out, in]` with the `count` smallest magnitudes zeroed, written independently of the pass.
fn prune_by_hand(w: &Arr, count: usize) -> Arr {
    let mut order: Vec<usize> = (0..w.data.len()).collect();
    order.sort_by(|&a, &b| w.data[a].abs().total_cmp(&w.data[b].abs()));
    let mut out = w.clone();
    for &i in &order[..count] {
        out.data[i] = 0.0;
    }
    out
}

/// `W [out, in]` keeping the `n` largest of every `m` input features per output row.
fn n_of_m_by_hand(w: &Arr, n: usize, m: usize) -> Arr {
    let (rows, cols) = (w.dims[0], w.dims[1]);
    let mut out = w.clone();
    for r in 0..rows {
        for start in (0..cols).step_by(m) {
            let mut idx: Vec<usize> = (start..start + m).map(|c| r * cols + c).collect();
            idx.sort_by(|&a, &b| w.data[b].abs().total_cmp(&w.data[a].abs()));
            for &i in &idx[n..] {
                out.data[i] = 0.0;
            }
        }
    }
    out
}

#[test]
fn outputs_equal_the_pruned_layer_in_every_form() {
    let (w, b) = lora_support::form_weights();
    // IN = 6: unstructured, and 2:3 / 1:2 groups along the input features.
    for (options, expected_w) in [
        ("sparsity=0.4", prune_by_hand(&w, 12)),
        ("pattern=2:3", n_of_m_by_hand(&w, 2, 3)),
        ("pattern=1:2", n_of_m_by_hand(&w, 1, 2)),
    ] {
        for form in FORMS {
            let mut m = form_model(form);
            let report = run(&format!("prune-weights{{targets=fc {options}}}"), &mut m);
            assert_eq!(stat(&report, "prune.layers"), 1, "{form:?} {options}");
            adaptc_ir::verify(&m.graph).unwrap();
            let x = Arr::random(&form.x_dims(), 21);
            let feeds = HashMap::from([("x".to_string(), x.clone())]);
            let y = eval(&m.graph, &feeds, "y");
            let expected = linear(&x, &expected_w, form.has_bias().then_some(&b));
            // The weights are f32: compare with the f32-rounded formula's precision.
            assert!(y.max_abs_diff(&expected) < 1e-6, "{form:?} {options}: {}", y.max_abs_diff(&expected));
        }
    }
}

#[test]
fn float16_and_constant_weights_keep_their_storage() {
    let mut m = model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Float16, vec![Dim::Known(2), Dim::Known(8)]));
        let vals = values(32, 9);
        let bytes = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        g.add_initializer(Tensor::from_bytes("fc.weight", DataType::Float16, vec![8, 4], bytes).unwrap()).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
        let c = Tensor::from_f32("", vec![4, 3], &values(12, 10)).unwrap();
        add(g, node_with("Constant", &[], &["proj.w"], vec![Attribute::tensor("value", c)]).named("/proj/Constant"));
        add(g, node("Relu", &["h"], &["r"]));
        add(g, node("Cast", &["r"], &["rf"]).with_attr(Attribute::int("to", 1)));
        add(g, node("MatMul", &["rf", "proj.w"], &["y"]).named("/proj/MatMul"));
        g.outputs.push(output("y"));
    });
    let report = run("prune-weights{targets=fc,proj sparsity=0.5}", &mut m);
    assert_eq!(stat(&report, "prune.layers"), 2);
    assert_eq!(stat(&report, "prune.zeros"), 16 + 6);
    let t = m.graph.initializer("fc.weight").unwrap();
    assert_eq!(t.dtype(), DataType::Float16);
    assert_eq!(t.to_f32_lossy().unwrap().iter().filter(|v| **v == 0.0).count(), 16);
    let layer = find_linear_layers(&m.graph).into_iter().find(|l| l.weight == "proj.w").unwrap();
    let c = layer.weight_tensor(&m.graph).unwrap().to_f32().unwrap();
    assert_eq!(c.iter().filter(|v| **v == 0.0).count(), 6);
}

#[test]
fn report_lists_every_layer() {
    let dir = lora_support::TempDir::new("prune-report");
    let path = dir.0.join("prune.json");
    let mut m = tiny(16);
    run(&format!("prune-weights{{pattern=2:4 report={}}}", path.display()), &mut m);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["pattern"], "2:4");
    assert_eq!(json["total_layers"], 3);
    assert_eq!(json["total_weights"], 384);
    assert_eq!(json["total_zeros"], 192);
    assert_eq!(json["sparsity"], 0.5);
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[1]["module"], "layer.0.key");
    assert_eq!(layers[1]["weight"], "layer.0.key.weight");
    assert_eq!(layers[1]["shape"], serde_json::json!([8, 16]));
    assert_eq!(layers[1]["zeros"], 64);
    assert_eq!(layers[1]["elements"], 128);
    assert_eq!(layers[1]["sparsity"], 0.5);
    assert!(!dir.0.join("prune.json.tmp").exists());
}

#[test]
fn shared_weights_are_pruned_once_for_every_layer() {
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 8]));
        g.add_initializer(f32s("enc.proj.weight", &[8, 4], &values(32, 7))).unwrap();
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["a"]).named("/enc/proj/MatMul"));
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["b"]).named("/dec/proj/MatMul"));
        add(g, node("Add", &["a", "b"], &["y"]));
        g.outputs.push(output("y"));
    });
    let report = run("prune-weights{targets=proj}", &mut m);
    assert_eq!(stat(&report, "prune.layers"), 2);
    assert_eq!(stat(&report, "prune.weights"), 32);
    assert_eq!(stat(&report, "prune.zeros"), 16);
    assert!(report.runs[0].notes.iter().any(|n| n.contains("shared by")), "{:?}", report.runs[0].notes);
}

// ----- bert6 -----------------------------------------------------------------------------------

#[test]
fn bert6_two_of_four() {
    let base = lora_support::load("bert6.onnx");
    let mut m = base.clone();
    let start = std::time::Instant::now();
    let report = run("prune-weights{pattern=2:4}", &mut m);
    eprintln!("prune-weights{{pattern=2:4}} on bert6: {:?}", start.elapsed());
    adaptc_ir::verify(&m.graph).unwrap();
    let layers = find_linear_layers(&base.graph);
    let numel: i64 = layers.iter().map(|l| l.weight_tensor(&base.graph).unwrap().numel() as i64).sum();
    assert_eq!(stat(&report, "prune.layers"), 37);
    assert_eq!(stat(&report, "prune.weights"), numel);
    assert_eq!(stat(&report, "prune.zeros"), numel / 2);
    assert_eq!(stat(&report, "prune.sparsity_permille"), 500);
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base), "only weight data changes");
    for l in find_linear_layers(&m.graph) {
        let w = l.weight_tensor(&m.graph).unwrap().to_f32_lossy().unwrap();
        let (k, n) = (l.in_features as usize, l.out_features as usize);
        let in_out = l.layout == adaptc_passes::pattern::WeightLayout::InOut;
        for channel in (0..n).step_by(37) {
            for start in (0..k).step_by(4) {
                let nz = (start..start + 4).filter(|&f| at(&w, k, n, in_out, channel, f) != 0.0).count();
                assert_eq!(nz, 2, "{:?} channel {channel} group {start}", l.module_path);
            }
        }
    }
    // Embeddings are not linear layers and stay dense.
    for t in base.graph.initializers().filter(|t| t.name.contains("embeddings")) {
        assert!(m.graph.initializer(&t.name).is_some_and(|u| u.same_value(t)), "{}", t.name);
    }
}

#[test]
fn llama4_with_external_data() {
    let base = lora_support::load("llama4/model.onnx");
    let mut m = base.clone();
    let report = run("prune-weights{sparsity=0.5}", &mut m);
    assert_eq!(stat(&report, "prune.layers"), 28, "every projection, not the head");
    let dir = lora_support::TempDir::new("prune-llama4");
    let path = dir.0.join("model.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    let mut pruned = 0;
    for l in find_linear_layers(&back.graph) {
        let w = l.weight_tensor(&back.graph).unwrap().to_f32_lossy().unwrap();
        let zeros = w.iter().filter(|v| **v == 0.0).count();
        if l.module_path.as_deref() == Some("lm_head") {
            assert!(zeros < w.len() / 2, "the head stays dense");
        } else {
            assert_eq!(zeros, w.len() / 2, "{:?}", l.module_path);
            pruned += 1;
        }
    }
    assert_eq!(pruned, 28);
}

// ----- refusals --------------------------------------------------------------------------------

#[test]
fn bad_options_are_refused_before_running() {
    let build = |p: &str| PassManager::new(&Registry::builtin(), p).err().map(|e| e.to_string()).unwrap_or_default();
    let e = build("prune-weights{sparsity=1.5}");
    assert!(e.contains("option `sparsity`") && e.contains("1.5 is not a fraction in [0, 1)"), "{e}");
    let e = build("prune-weights{pattern=3:2}");
    assert!(e.contains("option `pattern`") && e.contains("1 ≤ N < M"), "{e}");
    let e = build("prune-weights{pattern=2:4 sparsity=0.3}");
    assert!(e.contains("option `sparsity`") && e.contains("contradicts pattern=2:4"), "{e}");
    let e = build("prune-weights{pattern=block}");
    assert!(e.contains("option `pattern`") && e.contains("neither `unstructured` nor N:M"), "{e}");
    // A consistent sparsity is accepted.
    assert!(build("prune-weights{pattern=2:4 sparsity=0.5}").is_empty());
}

#[test]
fn groups_must_divide_the_input_features() {
    let mut m = tiny(6);
    let e = run_err("prune-weights{pattern=2:4}", &mut m);
    assert!(e.contains("`layer.0.query`") && e.contains("6 input features, not a multiple of 4"), "{e}");
}

#[test]
fn trainable_weights_are_refused() {
    let mut m = tiny(16);
    m.graph.initializer_mut("layer.0.key.weight").unwrap().metadata.set("adaptc.trainable", "true");
    let e = run_err("prune-weights", &mut m);
    assert!(e.contains("`layer.0.key`") && e.contains("`layer.0.key.weight` is trainable"), "{e}");
    // Excluding it lets the rest through.
    let report = run("prune-weights{exclude=key}", &mut m);
    assert_eq!(stat(&report, "prune.layers"), 2);
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
    let e = run_err("prune-weights", &mut m);
    assert!(e.contains("`lm_head.weight` is also read by `/embed/Gather` (Gather)"), "{e}");
    // An unselected layer reading the weight is a reader too.
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2, 8]));
        g.add_initializer(f32s("enc.proj.weight", &[8, 4], &values(32, 7))).unwrap();
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["a"]).named("/enc/proj/MatMul"));
        add(g, node("MatMul", &["x", "enc.proj.weight"], &["b"]).named("/dec/proj/MatMul"));
        add(g, node("Add", &["a", "b"], &["y"]));
        g.outputs.push(output("y"));
    });
    let e = run_err("prune-weights{targets=enc.proj}", &mut m);
    assert!(e.contains("also read by `/dec/proj/MatMul` (MatMul)"), "{e}");
}

#[test]
fn non_float_and_non_finite_weights_are_refused() {
    let mut m = model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Int32, vec![Dim::Known(2), Dim::Known(4)]));
        g.add_initializer(i32s("fc.weight", &[4, 3], &[1; 12])).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    });
    let e = run_err("prune-weights", &mut m);
    assert!(e.contains("`fc`") && e.contains("is i32") && e.contains("only float32, float16 and bfloat16"), "{e}");

    let mut m = tiny(16);
    let mut w = weight(&m, "layer.0.value.weight");
    w[5] = f32::NAN;
    let t = f32s("layer.0.value.weight", &[8, 16], &w);
    m.graph.initializer_mut("layer.0.value.weight").unwrap().set_bytes(t.bytes().unwrap().into_owned()).unwrap();
    let e = run_err("prune-weights", &mut m);
    assert!(e.contains("`layer.0.value`") && e.contains("non-finite value (NaN) at element 5"), "{e}");
}

#[test]
fn nothing_selected_is_an_error() {
    let mut m = tiny(16);
    let e = run_err("prune-weights{targets=nonexistent}", &mut m);
    assert!(e.contains("no linear layer matches targets=nonexistent"), "{e}");
}
