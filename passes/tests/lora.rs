//! `insert-lora` and `lora-as-inputs`: golden dumps, the LoRA/rsLoRA/DoRA formulas checked
//! numerically on every linear form (with the reference evaluator of `lora_support`), the
//! initialisations (default, gaussian, random, pissa, olora), the PEFT importer's entry point,
//! the fixture models (bert6, llama4 with external data), and the failure reasons.

mod lora_support;

use std::collections::HashMap;

use adaptc_ir::{DataType, Dim, Graph, Model, Tensor, ValueInfo};
use adaptc_passes::adapters::lora::{insert_lora_with, LoraConfig};
use adaptc_passes::adapters::record::STOP_GRADIENT;
use adaptc_passes::adapters::{AdapterState, Layout, Method};
use adaptc_passes::pattern::{find_linear_layers, LinearLayer};
use lora_support::*;

fn x_feed(form: Form, seed: u64) -> (Arr, HashMap<String, Arr>) {
    let x = Arr::random(&form.x_dims(), seed);
    let feeds = HashMap::from([("x".to_string(), x.clone())]);
    (x, feeds)
}

fn in_out(form: Form) -> bool {
    matches!(form, Form::MatMulBias | Form::MatMulNoBias | Form::GemmNoTrans | Form::GemmNoTransBias)
}

/// `y` by the formula, from the model's own (f32-stored) weights:
/// LoRA `x·Wᵀ + b + s·x·Aᵀ·Bᵀ`, DoRA `(m/n)⊙(x·Wᵀ + s·x·Aᵀ·Bᵀ) + b`, `n = ‖W + s·BA‖_row`.
fn formula(model: &Model, form: Form, x: &Arr, s: f64, dora: bool) -> Arr {
    let w = weight_out_in(model, "fc.weight", in_out(form));
    let a = init_values(model, "fc.lora_A.weight");
    let b = init_values(model, "fc.lora_B.weight");
    let core = x.matmul(&w.t()).add(&x.matmul(&a.t()).matmul(&b.t()).scale(s));
    let core = if dora {
        let v = w.add(&b.matmul(&a).scale(s));
        let m = init_values(model, "fc.lora_magnitude_vector");
        let f: Vec<f64> = (0..OUT)
            .map(|r| m.data[r] / v.data[r * IN..(r + 1) * IN].iter().map(|e| e * e).sum::<f64>().sqrt())
            .collect();
        core.mul(&Arr::new(&[OUT], f))
    } else {
        core
    };
    if form.has_bias() {
        core.add(&init_values(model, "fc.bias"))
    } else {
        core
    }
}

// ----- golden dumps ----------------------------------------------------------------------------

const BASE_DUMP: &str = "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3, 6]
  init %fc.weight: f32[6, 5]
  init %fc.bias: f32[5]
  %mm = MatMul(%x, %fc.weight)  # /fc/MatMul
  %y = Add(%mm, %fc.bias)  # /fc/Add
  %z = Relu(%y)  # relu
  output %z: ?
}
";

#[test]
fn golden_dump_of_insert_lora_on_matmul_with_bias() {
    let mut m = form_model(Form::MatMulBias);
    assert_eq!(adaptc_ir::dump(&m), BASE_DUMP.trim_start());
    let report = run("insert-lora{rank=2 alpha=4 targets=fc}", &mut m);
    assert!(report.changed());
    assert_eq!(report.stat("lora.inserted"), Some(1));
    assert_eq!(report.stat("lora.params"), Some(2 * 6 + 5 * 2));
    let expected = "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3, 6]
  init %fc.weight: f32[6, 5]
  init %fc.bias: f32[5]
  init %fc.lora_A.weight: f32[2, 6]
  init %fc.lora_B.weight: f32[5, 2]
  init %fc/lora_scale: f32[]
  %mm = MatMul(%x, %fc.weight)  # /fc/MatMul
  %y/base = Add(%mm, %fc.bias)  # /fc/Add
  %fc/lora_A_t = Transpose(%fc.lora_A.weight) {perm=[1, 0]}  # fc/lora_A_t/Transpose
  %fc/lora_B_t = Transpose(%fc.lora_B.weight) {perm=[1, 0]}  # fc/lora_B_t/Transpose
  %fc/lora_A = MatMul(%x, %fc/lora_A_t)  # fc/lora_A/MatMul
  %fc/lora_B = MatMul(%fc/lora_A, %fc/lora_B_t)  # fc/lora_B/MatMul
  %fc/lora_scaled = Mul(%fc/lora_B, %fc/lora_scale)  # fc/lora_scaled/Mul
  %y = Add(%y/base, %fc/lora_scaled)  # fc/lora_add/Add
  %z = Relu(%y)  # relu
  output %z: ?
}
";
    assert_eq!(adaptc_ir::dump(&m), expected.trim_start());
    let g = &m.graph;
    for (_, n) in g.nodes().filter(|(_, n)| n.name.starts_with("fc/")) {
        assert_eq!(n.metadata.get("adaptc.pass"), Some("insert-lora"), "{}", n.name);
    }
    assert_eq!(init_values(&m, "fc/lora_scale").data, vec![2.0]);

    let st = state(&m);
    assert_eq!(st.adapters.len(), 1);
    let r = &st.adapters[0];
    assert_eq!((r.method, r.module.as_str(), r.target_node.as_str()), (Method::Lora, "fc", "/fc/MatMul"));
    assert_eq!((r.base_weight.as_str(), r.layout), ("fc.weight", Some(Layout::InOut)));
    assert_eq!((r.output.as_str(), r.base_output.as_str()), ("y", "y/base"));
    assert_eq!((r.rank, r.alpha, r.scale, r.rslora), (2, 4.0, 2.0, false));
    assert_eq!(r.params["lora_A"], "fc.lora_A.weight");
    assert_eq!(r.params["lora_B"], "fc.lora_B.weight");
    assert_eq!(r.nodes.len(), 6);
    assert_eq!(r.extra["init"], "default");
    assert_eq!(st.trainable.iter().collect::<Vec<_>>(), ["fc.lora_A.weight", "fc.lora_B.weight"]);
}

#[test]
fn golden_dump_of_dora_on_gemm_with_bias_and_dropout() {
    let mut m = form_model(Form::GemmTransB);
    run("insert-lora{rank=2 alpha=4 targets=fc dora=true dropout=0.1}", &mut m);
    let expected = "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[3, 6]
  init %fc.weight: f32[5, 6]
  init %fc.bias: f32[5]
  init %fc.lora_A.weight: f32[2, 6]
  init %fc.lora_B.weight: f32[5, 2]
  init %fc.lora_magnitude_vector: f32[5]
  init %fc/lora_dropout_ratio: f32[]
  init %fc/lora_scale: f32[]
  init %fc/dora_ones: f32[6]
  %y/base = Gemm(%x, %fc.weight, %fc.bias) {transB=1}  # /fc/Gemm
  %fc/lora_dropout = Dropout(%x, %fc/lora_dropout_ratio)  # fc/lora_dropout/Dropout
  %fc/lora_A_t = Transpose(%fc.lora_A.weight) {perm=[1, 0]}  # fc/lora_A_t/Transpose
  %fc/lora_B_t = Transpose(%fc.lora_B.weight) {perm=[1, 0]}  # fc/lora_B_t/Transpose
  %fc/lora_A = MatMul(%fc/lora_dropout, %fc/lora_A_t)  # fc/lora_A/MatMul
  %fc/lora_B = MatMul(%fc/lora_A, %fc/lora_B_t)  # fc/lora_B/MatMul
  %fc/lora_scaled = Mul(%fc/lora_B, %fc/lora_scale)  # fc/lora_scaled/Mul
  %fc/dora_delta = MatMul(%fc.lora_B.weight, %fc.lora_A.weight)  # fc/dora_delta/MatMul
  %fc/dora_delta_scaled = Mul(%fc/dora_delta, %fc/lora_scale)  # fc/dora_delta_scaled/Mul
  %fc/dora_weight = Add(%fc.weight, %fc/dora_delta_scaled)  # fc/dora_weight/Add
  %fc/dora_weight_sq = Mul(%fc/dora_weight, %fc/dora_weight)  # fc/dora_weight_sq/Mul
  %fc/dora_norm_sq = MatMul(%fc/dora_weight_sq, %fc/dora_ones)  # fc/dora_norm_sq/MatMul
  %fc/dora_norm = Sqrt(%fc/dora_norm_sq)  # fc/dora_norm/Sqrt
  %fc/dora_scale = Div(%fc.lora_magnitude_vector, %fc/dora_norm)  # fc/dora_scale/Div
  %fc/dora_unbiased = Sub(%y/base, %fc.bias)  # fc/dora_unbiased/Sub
  %fc/dora_sum = Add(%fc/dora_unbiased, %fc/lora_scaled)  # fc/dora_sum/Add
  %fc/dora_scaled = Mul(%fc/dora_sum, %fc/dora_scale)  # fc/dora_scaled/Mul
  %y = Add(%fc/dora_scaled, %fc.bias)  # fc/dora_bias/Add
  %z = Relu(%y)  # relu
  output %z: ?
}
";
    assert_eq!(adaptc_ir::dump(&m), expected.trim_start());
    let g = &m.graph;
    let (norm, _) = g.producer("fc/dora_norm").unwrap();
    assert_eq!(g.node(norm).metadata.get(STOP_GRADIENT), Some("true"), "n is a constant for autodiff");
    let st = state(&m);
    let r = &st.adapters[0];
    assert_eq!((r.method, r.layout), (Method::Dora, Some(Layout::OutIn)));
    assert_eq!(r.params["magnitude"], "fc.lora_magnitude_vector");
    assert_eq!(r.extra["dropout"], 0.1);
    assert!(st.trainable.contains("fc.lora_magnitude_vector"));
}

#[test]
fn dora_attaches_before_a_separate_bias_add() {
    let mut m = form_model(Form::MatMulBias);
    run("insert-lora{rank=2 alpha=4 targets=fc dora=true}", &mut m);
    let g = &m.graph;
    // The bias Add is untouched and still reads `mm`, now the DoRA result.
    let (add, _) = g.producer("y").unwrap();
    assert_eq!(g.node(add).name, "/fc/Add");
    assert_eq!(g.node(add).inputs(), ["mm", "fc.bias"]);
    let (mm, _) = g.producer("mm").unwrap();
    assert_eq!(g.node(mm).name, "fc/dora_scaled/Mul");
    let r = &state(&m).adapters[0];
    assert_eq!((r.output.as_str(), r.base_output.as_str()), ("mm", "mm/base"));
}

// ----- numbers -------------------------------------------------------------------------------

const VARIANTS: [(&str, f64, bool); 4] = [
    ("rank=2 alpha=4", 2.0, false),
    ("rank=4 alpha=3 rslora=true dropout=0.1", 1.5, false),
    ("rank=2 alpha=4 dora=true", 2.0, true),
    ("rank=3 alpha=6 dora=true rslora=true", 3.464_101_615_137_754_6, true),
];

#[test]
fn every_form_computes_the_lora_and_dora_formulas() {
    for form in FORMS {
        for (opts, s, dora) in VARIANTS {
            let ctx = format!("{form:?} {opts}");
            let mut m = form_model(form);
            run(&format!("insert-lora{{{opts} targets=fc init=random seed=3}}"), &mut m);
            let r = &state(&m).adapters[0];
            assert!((f64::from(r.scale) - s).abs() < 1e-6, "{ctx}: scale {}", r.scale);
            assert_eq!(r.layout, Some(if in_out(form) { Layout::InOut } else { Layout::OutIn }), "{ctx}");
            let (x, feeds) = x_feed(form, 5);
            let got = eval(&m.graph, &feeds, "y");
            let want = formula(&m, form, &x, f64::from(r.scale), dora);
            assert!(got.max_abs_diff(&want) < 1e-9, "{ctx}: {}", got.max_abs_diff(&want));
            // The adapter really moves the output (init=random).
            let base = eval(&form_model(form).graph, &feeds, "y");
            assert!(got.max_abs_diff(&base) > 1e-3, "{ctx}: the output should move");
            // And the rest of the graph reads the adapted value.
            let z = eval(&m.graph, &feeds, "z");
            assert!(z.data.iter().zip(&got.data).all(|(z, y)| *z == y.max(0.0)), "{ctx}");
        }
    }
}

#[test]
fn default_init_leaves_outputs_unchanged() {
    for form in FORMS {
        let (_, feeds) = x_feed(form, 9);
        let base = eval(&form_model(form).graph, &feeds, "z");

        let mut m = form_model(form);
        run("insert-lora{rank=2 alpha=16 targets=fc}", &mut m);
        assert!(init_values(&m, "fc.lora_B.weight").data.iter().all(|&v| v == 0.0), "{form:?}: B = 0");
        let a = init_values(&m, "fc.lora_A.weight");
        let bound = 1.0 / (IN as f64).sqrt();
        assert!(a.data.iter().all(|v| v.abs() <= bound) && a.max_abs() > 0.0, "{form:?}: A ~ U(±1/√in)");
        assert_eq!(eval(&m.graph, &feeds, "z"), base, "{form:?}: exactly the base output");

        // DoRA at init: m = ‖W‖_row, so m/n = 1 up to rounding.
        let mut m = form_model(form);
        run("insert-lora{rank=2 alpha=16 targets=fc dora=true}", &mut m);
        let w = weight_out_in(&m, "fc.weight", in_out(form));
        let mag = init_values(&m, "fc.lora_magnitude_vector");
        for r in 0..OUT {
            let n = w.data[r * IN..(r + 1) * IN].iter().map(|e| e * e).sum::<f64>().sqrt();
            assert!((mag.data[r] - n).abs() < 1e-6, "{form:?}: m = ‖W‖ row {r}");
        }
        let d = eval(&m.graph, &feeds, "z").max_abs_diff(&base);
        assert!(d < 1e-6, "{form:?}: DoRA at init {d}");
    }
}

#[test]
fn gaussian_init_and_seeds() {
    let mut m = load("bert6.onnx");
    run("insert-lora{rank=8 alpha=16 targets=query,value init=gaussian seed=1}", &mut m);
    let st = state(&m);
    let mut all = Vec::new();
    for r in &st.adapters {
        all.extend(init_values(&m, &r.params["lora_A"]).data);
        assert!(init_values(&m, &r.params["lora_B"]).data.iter().all(|&v| v == 0.0));
    }
    assert_eq!(all.len(), 12 * 8 * 64);
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let std = (all.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / all.len() as f64).sqrt();
    assert!(mean.abs() < 0.01 && (std - 1.0 / 8.0).abs() < 0.01, "N(0, (1/r)²): mean {mean}, std {std}");

    // Same seed, same values; another seed, other values; layers differ from each other.
    let a_of = |seed: u64| {
        let mut m = form_model(Form::MatMulBias);
        run(&format!("insert-lora{{targets=fc seed={seed} init=random}}"), &mut m);
        (init_values(&m, "fc.lora_A.weight"), init_values(&m, "fc.lora_B.weight"))
    };
    assert_eq!(a_of(4), a_of(4));
    assert_ne!(a_of(4).0, a_of(5).0);
    let first = init_values(&m, &st.adapters[0].params["lora_A"]);
    let second = init_values(&m, &st.adapters[1].params["lora_A"]);
    assert_ne!(first, second);
}

#[test]
fn pissa_moves_the_top_singular_part_into_the_adapter() {
    for form in [Form::MatMulBias, Form::GemmTransB, Form::MatMulTransposedBias] {
        let (_, feeds) = x_feed(form, 2);
        let base_model = form_model(form);
        let base = eval(&base_model.graph, &feeds, "y");
        let w = weight_out_in(&base_model, "fc.weight", in_out(form));
        for (rank, alpha) in [(2, 4.0), (5, 5.0)] {
            let ctx = format!("{form:?} rank {rank}");
            let mut m = form_model(form);
            let report = run(&format!("insert-lora{{rank={rank} alpha={alpha} targets=fc init=pissa}}"), &mut m);
            assert_eq!(report.stat("lora.residual_weights"), Some(1), "{ctx}");
            let s = alpha / rank as f64;
            let res = weight_out_in(&m, "fc.weight", in_out(form));
            let a = init_values(&m, "fc.lora_A.weight");
            let b = init_values(&m, "fc.lora_B.weight");
            let back = res.add(&b.matmul(&a).scale(s));
            assert!(back.max_abs_diff(&w) < 1e-5, "{ctx}: W_res + s·BA = W ({})", back.max_abs_diff(&w));
            if rank == 5 {
                assert!(res.max_abs() < 1e-5, "{ctx}: full rank leaves W_res ≈ 0 ({})", res.max_abs());
            } else {
                // B's columns are orthogonal, A's rows too (singular vectors scaled by √(σ/s)).
                let btb = b.t().matmul(&b);
                assert!(btb.data[1].abs() < 1e-5 && btb.data[2].abs() < 1e-5, "{ctx}");
            }
            let d = eval(&m.graph, &feeds, "y").max_abs_diff(&base);
            assert!(d < 1e-5, "{ctx}: output unchanged up to rounding ({d})");
        }
    }
    // With DoRA the magnitude is ‖W_res + s·BA‖ = ‖W‖ (PEFT initialises it after PiSSA).
    let mut m = form_model(Form::GemmTransB);
    run("insert-lora{rank=2 alpha=4 targets=fc init=pissa dora=true}", &mut m);
    let (w, _) = form_weights();
    let mag = init_values(&m, "fc.lora_magnitude_vector");
    for r in 0..OUT {
        let n = w.data[r * IN..(r + 1) * IN].iter().map(|e| e * e).sum::<f64>().sqrt();
        assert!((mag.data[r] - n).abs() < 1e-5);
    }
}

#[test]
fn olora_follows_peft() {
    for form in [Form::MatMulNoBias, Form::GemmTransB] {
        let (_, feeds) = x_feed(form, 2);
        let base_model = form_model(form);
        let w = weight_out_in(&base_model, "fc.weight", in_out(form));
        let mut m = form_model(form);
        run("insert-lora{rank=3 alpha=6 targets=fc init=olora}", &mut m);
        let res = weight_out_in(&m, "fc.weight", in_out(form));
        let a = init_values(&m, "fc.lora_A.weight");
        let b = init_values(&m, "fc.lora_B.weight");
        assert!(res.add(&b.matmul(&a).scale(2.0)).max_abs_diff(&w) < 1e-5, "{form:?}");
        // B = Q[:, :r] has orthonormal columns; A = R[:r] is upper triangular.
        let btb = b.t().matmul(&b);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((btb.data[i * 3 + j] - want).abs() < 1e-5, "{form:?}: QᵀQ = I");
            }
            for j in 0..i {
                assert!(a.data[i * IN + j].abs() < 1e-6, "{form:?}: R is upper triangular");
            }
        }
        let d = eval(&m.graph, &feeds, "y").max_abs_diff(&eval(&base_model.graph, &feeds, "y"));
        assert!(d < 1e-5, "{form:?}: {d}");
    }
}

// ----- the importer's entry point --------------------------------------------------------------

fn the_layer(g: &Graph) -> LinearLayer {
    find_linear_layers(g).into_iter().next().unwrap()
}

#[test]
fn insert_lora_with_given_weights() {
    for form in [Form::MatMulBias, Form::GemmTransB] {
        let mut m = form_model(form);
        let layer = the_layer(&m.graph);
        let cfg = LoraConfig { rank: 2, alpha: 3.0, rslora: true, dora: true, dropout: 0.0 };
        assert!((cfg.scale() - 3.0 / 2f32.sqrt()).abs() < 1e-6);
        let a: Vec<f32> = Arr::random(&[2, IN], 1).data.iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = Arr::random(&[OUT, 2], 2).data.iter().map(|&v| v as f32).collect();
        let mag: Vec<f32> = (0..OUT).map(|i| 1.0 + i as f32).collect();
        let mut st = AdapterState::load(&m).unwrap();
        insert_lora_with(&mut m.graph, &mut st, &layer, &cfg, a.clone(), b.clone(), Some(mag.clone())).unwrap();
        st.store(&mut m);
        adaptc_ir::verify(&m.graph).unwrap();
        assert_eq!(init_values(&m, "fc.lora_A.weight").data, a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        assert_eq!(
            init_values(&m, "fc.lora_magnitude_vector").data,
            mag.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()
        );
        let (x, feeds) = x_feed(form, 4);
        let d = eval(&m.graph, &feeds, "y").max_abs_diff(&formula(&m, form, &x, f64::from(cfg.scale()), true));
        assert!(d < 1e-9, "{form:?}: {d}");
        assert_eq!(state(&m).adapters[0].extra["init"], "given");
    }
}

#[test]
fn insert_lora_with_checks_shapes_and_changes_nothing_on_error() {
    let base = form_model(Form::MatMulBias);
    let layer = the_layer(&base.graph);
    let lora = LoraConfig { rank: 2, alpha: 2.0, rslora: false, dora: false, dropout: 0.0 };
    let dora = LoraConfig { dora: true, ..lora.clone() };
    let rank0 = LoraConfig { rank: 0, ..lora.clone() };
    let zeros = |n: usize| vec![0.0f32; n];
    type Case<'a> = (&'a LoraConfig, Vec<f32>, Vec<f32>, Option<Vec<f32>>, &'a str);
    let cases: Vec<Case> = vec![
        (&lora, zeros(7), zeros(10), None, "`fc`: lora_A has 7 values, expected [r, in] = [2, 6]"),
        (&lora, zeros(12), zeros(9), None, "`fc`: lora_B has 9 values, expected [out, r] = [5, 2]"),
        (&dora, zeros(12), zeros(10), Some(zeros(4)), "`fc`: the DoRA magnitude has 4 values, expected [out] = [5]"),
        (
            &lora,
            zeros(12),
            zeros(10),
            Some(zeros(5)),
            "`fc`: a magnitude vector was given, but the adapter is not DoRA",
        ),
        (&rank0, vec![], vec![], None, "`fc`: rank must be at least 1"),
    ];
    for (cfg, a, b, mag, reason) in cases {
        let mut m = base.clone();
        let mut st = AdapterState::default();
        let e = insert_lora_with(&mut m.graph, &mut st, &layer, cfg, a, b, mag).unwrap_err().to_string();
        assert_eq!(e, format!("pass `insert-lora` failed: {reason}"));
        assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base), "nothing changed");
        assert_eq!(st, AdapterState::default());
    }
    // A second adapter on the same layer is refused.
    let mut m = base.clone();
    let mut st = AdapterState::default();
    insert_lora_with(&mut m.graph, &mut st, &layer, &lora, zeros(12), zeros(10), None).unwrap();
    let e = insert_lora_with(&mut m.graph, &mut st, &layer, &lora, zeros(12), zeros(10), None).unwrap_err();
    assert!(e.to_string().contains("already has a Lora adapter"), "{e}");
}

// ----- fixture models ----------------------------------------------------------------------------

/// Evaluates one layer of a real model from a random input (the rest of the model is not
/// needed: the evaluator follows producers back to the fed input).
fn layer_output(g: &Graph, input: &str, output: &str, in_features: usize) -> Arr {
    let x = Arr::random(&[2, 3, in_features], 77);
    eval(g, &HashMap::from([(input.to_string(), x)]), output)
}

#[test]
fn bert6_query_value_adds_the_expected_parameters_and_round_trips() {
    let base = load("bert6.onnx");
    let mut m = base.clone();
    let report = run("insert-lora{rank=8 alpha=16 targets=query,value}", &mut m);
    let params = 6 * 2 * (8 * 64 + 64 * 8);
    assert_eq!(report.stat("lora.inserted"), Some(12));
    assert_eq!(report.stat("lora.params"), Some(params));
    let st = state(&m);
    let counted: u64 = st.trainable.iter().map(|t| m.graph.initializer(t).unwrap().numel()).sum();
    assert_eq!(counted, params as u64, "trainable parameters");
    assert_eq!(m.graph.num_nodes(), base.graph.num_nodes() + 12 * 6);
    assert_eq!(m.graph.num_initializers(), base.graph.num_initializers() + 12 * 3);
    let modules: Vec<&str> = st.adapters.iter().map(|a| a.module.as_str()).collect();
    assert_eq!(modules[..2], ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]);
    assert!(st.adapters.iter().all(|a| a.scale == 2.0 && a.layout == Some(Layout::InOut)));

    // Identity at init, layer by layer: exactly the base values.
    for (rec, layer) in st.adapters.iter().zip(find_linear_layers(&base.graph).iter().filter(|l| {
        let p = l.module_path.as_deref().unwrap();
        p.ends_with(".query") || p.ends_with(".value")
    })) {
        let before = layer_output(&base.graph, &layer.input, &layer.output, 64);
        let after = layer_output(&m.graph, &layer.input, &rec.output, 64);
        assert_eq!(before, after, "{}", rec.module);
    }

    // Save and load: the adapter state and the graph survive.
    let dir = TempDir::new("lora-bert6");
    let path = dir.0.join("bert6_lora.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(state(&back), st);
    assert_eq!(adaptc_ir::dump(&back), adaptc_ir::dump(&m));
    let rec = &st.adapters[0];
    assert_eq!(init_values(&back, &rec.params["lora_A"]), init_values(&m, &rec.params["lora_A"]));
}

#[test]
fn llama4_all_projections_with_external_data() {
    let base = load("llama4/model.onnx");
    let mut m = base.clone();
    let targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    let report = run(&format!("insert-lora{{rank=4 alpha=8 targets={targets} dora=true}}"), &mut m);
    let layers: Vec<LinearLayer> =
        find_linear_layers(&base.graph).into_iter().filter(|l| l.module_path.as_deref() != Some("lm_head")).collect();
    assert_eq!(layers.len(), 28);
    let params: u64 = layers.iter().map(|l| 4 * (l.in_features + l.out_features) + l.out_features).sum();
    assert_eq!(report.stat("lora.inserted"), Some(28));
    assert_eq!(report.stat("lora.params"), Some(params as i64));
    let st = state(&m);
    assert!(st.adapters.iter().all(|a| a.method == Method::Dora));

    // DoRA at init reproduces each layer up to rounding.
    for (rec, layer) in st.adapters.iter().zip(&layers).step_by(5) {
        let inf = layer.in_features as usize;
        let before = layer_output(&base.graph, &layer.input, &layer.output, inf);
        let after = layer_output(&m.graph, &layer.input, &rec.output, inf);
        assert!(before.max_abs_diff(&after) < 1e-5 * before.max_abs().max(1.0), "{}", rec.module);
    }

    let dir = TempDir::new("lora-llama4");
    let path = dir.0.join("model.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(state(&back), st);
    assert_eq!(back.graph.num_nodes(), m.graph.num_nodes());
}

#[test]
fn all_linear_never_adapts_adapter_internals_and_skips_adapted_layers() {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    g.add_initializer(tensor("fc1.weight", &Arr::random(&[IN, IN], 1))).unwrap();
    g.add_initializer(tensor("fc2.weight", &Arr::random(&[IN, OUT], 2))).unwrap();
    g.add_initializer(tensor("head.weight", &Arr::random(&[OUT, 3], 3))).unwrap();
    op(g, "MatMul", "/fc1/MatMul", &["x", "fc1.weight"], &["h1"]);
    op(g, "Relu", "r1", &["h1"], &["a1"]);
    op(g, "MatMul", "/fc2/MatMul", &["a1", "fc2.weight"], &["h2"]);
    op(g, "MatMul", "/head/MatMul", &["h2", "head.weight"], &["logits"]);
    g.outputs.push(ValueInfo::new("logits", None));
    let report = run("insert-lora{rank=2 targets=all-linear}", &mut m);
    assert_eq!(report.stat("lora.inserted"), Some(2), "the head is left out");
    let (outcome, notes) = run_pass("insert-lora{rank=2 targets=all-linear}", &mut m).unwrap();
    assert!(!outcome.changed);
    assert_eq!(outcome.get("lora.inserted"), Some(0));
    assert_eq!(outcome.get("lora.skipped"), Some(2));
    assert_eq!(notes, ["fc1: skipped, it already has a Lora adapter", "fc2: skipped, it already has a Lora adapter"]);
    assert_eq!(state(&m).adapters.len(), 2);
    // Naming the head explicitly adapts it.
    let report = run("insert-lora{rank=2 targets=head}", &mut m);
    assert_eq!(report.stat("lora.inserted"), Some(1));
}

// ----- lora-as-inputs ----------------------------------------------------------------------------

#[test]
fn lora_as_inputs_exposes_adapter_weights_with_defaults() {
    let mut m = form_model(Form::GemmTransB);
    run("insert-lora{rank=2 targets=fc dora=true init=random}", &mut m);
    let (_, feeds) = x_feed(Form::GemmTransB, 1);
    let before = eval(&m.graph, &feeds, "z");
    let report = run("lora-as-inputs", &mut m);
    assert!(report.changed());
    assert_eq!(report.stat("lora.inputs_added"), Some(3));
    let inputs: Vec<String> =
        m.graph.inputs.iter().map(|i| format!("{}: {}", i.name, i.ty.as_ref().unwrap())).collect();
    assert_eq!(
        inputs,
        [
            "x: f32[3, 6]",
            "fc.lora_A.weight: f32[2, 6]",
            "fc.lora_B.weight: f32[5, 2]",
            "fc.lora_magnitude_vector: f32[5]"
        ]
    );
    assert!(m.graph.initializer("fc.lora_A.weight").is_some(), "the initializer stays as the default");
    assert_eq!(eval(&m.graph, &feeds, "z"), before, "defaults give the same output");
    // Another adapter fed at run time: B = 0 gives the DoRA-scaled base.
    let mut other = feeds.clone();
    other.insert("fc.lora_B.weight".into(), Arr::new(&[OUT, 2], vec![0.0; OUT * 2]));
    assert_ne!(eval(&m.graph, &other, "z"), before);

    // Idempotent, and the linear matcher no longer sees the adapter MatMuls as layers.
    let report = run("lora-as-inputs", &mut m);
    assert!(!report.changed());
    assert_eq!(report.stat("lora.inputs_added"), Some(0));
    assert_eq!(find_linear_layers(&m.graph).len(), 1);
}

// ----- failures --------------------------------------------------------------------------------

#[test]
fn targets_are_required_and_options_are_checked() {
    let base = form_model(Form::MatMulBias);
    let mut m = base.clone();
    let e = run_err("insert-lora{rank=4}", &mut m);
    assert_eq!(
        e,
        "pass `insert-lora`: option `targets`: is required: name the modules to adapt, e.g. targets=query,value, or \
         targets=all-linear for every linear layer but the output head"
    );
    assert_eq!(
        run_err("insert-lora{rank=0 targets=fc}", &mut m),
        "pass `insert-lora`: option `rank`: must be at least 1"
    );
    assert_eq!(
        run_err("insert-lora{dropout=1 targets=fc}", &mut m),
        "pass `insert-lora`: option `dropout`: must be in [0, 1), got 1"
    );
    assert_eq!(
        run_err("insert-lora{init=loftq targets=fc}", &mut m),
        "pass `insert-lora`: option `init`: expected one of default|gaussian|pissa|olora|random, got `loftq`"
    );
    assert!(run_err("insert-lora{layers=x targets=fc}", &mut m).contains("`x` is not a block index"));
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
}

#[test]
fn no_match_lists_the_available_module_paths() {
    let base = load("bert6.onnx");
    let mut m = base.clone();
    let e = run_err("insert-lora{targets=q_proj exclude=key}", &mut m);
    assert!(
        e.starts_with(
            "pass `insert-lora` failed: no linear layer matches targets=q_proj exclude=key; available module paths (37): \
             encoder.layer.0.attention.self.query, encoder.layer.0.attention.self.key,"
        ),
        "{e}"
    );
    assert!(e.ends_with(", … and 17 more"), "{e}");
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    assert!(m.metadata.get("adaptc.adapters").is_none());
}

#[test]
fn pissa_rank_above_min_in_out_is_refused() {
    let base = form_model(Form::GemmTransB);
    let mut m = base.clone();
    let e = run_err("insert-lora{rank=6 targets=fc init=pissa}", &mut m);
    assert_eq!(
        e,
        "pass `insert-lora` failed: `fc`: init=pissa needs rank ≤ min(in, out) = 5, got rank 6 for a [5, 6] weight"
    );
    assert_eq!(init_values(&m, "fc.weight"), init_values(&base, "fc.weight"));
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
}

#[test]
fn residual_inits_refuse_shared_weights() {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    g.add_initializer(tensor("tied.weight", &Arr::random(&[IN, IN], 1))).unwrap();
    op(g, "MatMul", "/a/MatMul", &["x", "tied.weight"], &["ya"]);
    op(g, "MatMul", "/b/MatMul", &["ya", "tied.weight"], &["yb"]);
    op(g, "Relu", "r", &["yb"], &["z"]);
    g.outputs.push(ValueInfo::new("z", None));
    let base = m.clone();
    let e = run_err("insert-lora{rank=2 targets=a init=olora}", &mut m);
    assert_eq!(
        e,
        "pass `insert-lora` failed: `a`: init=olora: base weight `tied.weight` is shared with `/b/MatMul`, and its \
         values would change for them too"
    );
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    assert_eq!(init_values(&m, "tied.weight"), init_values(&base, "tied.weight"));
    // Plain LoRA on a tied weight is fine.
    run("insert-lora{rank=2 targets=a,b}", &mut m);
}

#[test]
fn non_f32_weights_are_refused_with_the_reason() {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float16, vec![Dim::Known(2), Dim::Known(4)]));
    g.add_initializer(Tensor::from_bytes("fc.weight", DataType::Float16, vec![4, 3], vec![0; 24]).unwrap()).unwrap();
    op(g, "MatMul", "/fc/MatMul", &["x", "fc.weight"], &["y"]);
    g.outputs.push(ValueInfo::new("y", None));
    let base = m.clone();
    let e = run_err("insert-lora{targets=fc}", &mut m);
    assert_eq!(
        e,
        "pass `insert-lora` failed: `fc`: weight `fc.weight` is f16; only f32 (float32) base weights are supported \
         (the adapter is float32 and ONNX does not mix element types)"
    );
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
}

#[test]
fn dropout_needs_opset_12() {
    let mut m = form_model(Form::MatMulBias);
    m.set_opset("", 11);
    let e = run_err("insert-lora{targets=fc dropout=0.1}", &mut m);
    assert_eq!(
        e,
        "pass `insert-lora` failed: dropout > 0 needs default-domain opset ≥ 12 (Dropout's ratio input); the model \
         imports 11"
    );
    run("insert-lora{targets=fc}", &mut m);
}

#[test]
fn a_module_called_twice_is_refused() {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    g.add_initializer(tensor("fc.weight", &Arr::random(&[IN, IN], 1))).unwrap();
    op(g, "MatMul", "/fc/MatMul", &["x", "fc.weight"], &["y1"]);
    op(g, "MatMul", "/fc/MatMul_1", &["y1", "fc.weight"], &["y2"]);
    g.outputs.push(ValueInfo::new("y2", None));
    let base = m.clone();
    let e = run_err("insert-lora{targets=re:.*}", &mut m);
    assert!(
        e.contains("`fc`: the module is applied at more than one place (nodes `/fc/MatMul` and `/fc/MatMul_1`)"),
        "{e}"
    );
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
}
