//! `merge-lora`: the merged model is the base model's graph with merged weights (golden dump,
//! node and initializer counts, value names), computes what the adapted model computed (every
//! linear form, LoRA, rsLoRA, DoRA, PiSSA), handles shared weights (refused, or unshared), and
//! keeps what it cannot merge.

mod lora_support;

use std::collections::{BTreeMap, HashMap};

use adaptc_ir::{DataType, Dim, Graph, Model, ValueInfo};
use adaptc_passes::adapters::{AdapterRecord, AdapterState, Method};
use adaptc_passes::pattern::find_linear_layers;
use lora_support::*;

fn in_out(form: Form) -> bool {
    matches!(form, Form::MatMulBias | Form::MatMulNoBias | Form::GemmNoTrans | Form::GemmNoTransBias)
}

#[test]
fn merged_graph_is_the_base_graph() {
    let base = form_model(Form::MatMulBias);
    let mut m = base.clone();
    run("insert-lora{rank=2 alpha=4 targets=fc init=random}", &mut m);
    let report = run("merge-lora", &mut m);
    assert!(report.changed());
    assert_eq!(report.stat("merge.adapters"), Some(1));
    let expected = "
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
    assert_eq!(adaptc_ir::dump(&m), expected.trim_start());
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    assert_eq!(m.graph.node_ids().len(), base.graph.node_ids().len());
    assert!(m.graph.is_ordered(), "the base order is kept");
    assert!(m.metadata.get("adaptc.adapters").is_none(), "no records, no trainable set left");
    assert_ne!(init_values(&m, "fc.weight"), init_values(&base, "fc.weight"), "the weight moved");
    // Merging again finds nothing.
    let (outcome, notes) = run_pass("merge-lora", &mut m).unwrap();
    assert!(!outcome.changed);
    assert_eq!(notes, ["the model records no adapters; nothing to merge"]);
}

const VARIANTS: [&str; 4] = [
    "rank=2 alpha=4",
    "rank=4 alpha=3 rslora=true dropout=0.1",
    "rank=2 alpha=4 dora=true",
    "rank=3 alpha=6 dora=true rslora=true",
];

#[test]
fn merge_equals_unmerged_on_every_form() {
    for form in FORMS {
        for opts in VARIANTS {
            let ctx = format!("{form:?} {opts}");
            let mut m = form_model(form);
            run(&format!("insert-lora{{{opts} targets=fc init=random seed=8}}"), &mut m);
            let rec = state(&m).adapters[0].clone();
            let x = Arr::random(&form.x_dims(), 3);
            let feeds = HashMap::from([("x".to_string(), x)]);
            let adapted = eval(&m.graph, &feeds, "z");

            // W' computed independently from the adapter's values.
            let w = weight_out_in(&m, "fc.weight", in_out(form));
            let a = init_values(&m, &rec.params["lora_A"]);
            let b = init_values(&m, &rec.params["lora_B"]);
            let s = f64::from(rec.scale);
            let mut want = w.add(&b.matmul(&a).scale(s));
            if rec.method == Method::Dora {
                let mag = init_values(&m, &rec.params["magnitude"]);
                for r in 0..OUT {
                    let row = &mut want.data[r * IN..(r + 1) * IN];
                    let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                    row.iter_mut().for_each(|v| *v *= mag.data[r] / n);
                }
            }

            let base_nodes = form_model(form).graph.num_nodes();
            let base_inits = form_model(form).graph.num_initializers();
            run("merge-lora", &mut m);
            assert_eq!((m.graph.num_nodes(), m.graph.num_initializers()), (base_nodes, base_inits), "{ctx}");
            assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&form_model(form)), "{ctx}: the base graph");
            let merged_w = weight_out_in(&m, "fc.weight", in_out(form));
            assert!(merged_w.max_abs_diff(&want) < 1e-6, "{ctx}: W' = {}", merged_w.max_abs_diff(&want));
            let merged = eval(&m.graph, &feeds, "z");
            let d = merged.max_abs_diff(&adapted);
            assert!(d < 1e-5 * adapted.max_abs().max(1.0), "{ctx}: merged vs unmerged {d}");
        }
    }
}

#[test]
fn pissa_then_merge_gives_back_w() {
    let base = form_model(Form::MatMulTransposedBias);
    let mut m = base.clone();
    run("insert-lora{rank=3 alpha=6 targets=fc init=pissa},merge-lora", &mut m);
    let d = init_values(&m, "fc.weight").max_abs_diff(&init_values(&base, "fc.weight"));
    assert!(d < 1e-5, "{d}");
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
}

fn tied_model() -> Model {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    g.add_initializer(tensor("tied.weight", &Arr::random(&[IN, IN], 1))).unwrap();
    op(g, "MatMul", "/a/MatMul", &["x", "tied.weight"], &["ya"]);
    op(g, "Relu", "r", &["ya"], &["ra"]);
    op(g, "MatMul", "/b/MatMul", &["ra", "tied.weight"], &["yb"]);
    op(g, "Relu", "r2", &["yb"], &["z"]);
    g.outputs.push(ValueInfo::new("z", None));
    m
}

#[test]
fn shared_weights_are_refused_unless_unshared() {
    let base = tied_model();
    let feeds = HashMap::from([("x".to_string(), Arr::random(&[2, IN], 4))]);
    for targets in ["a", "a,b"] {
        let mut m = base.clone();
        run(&format!("insert-lora{{rank=2 targets={targets} init=random}}"), &mut m);
        let adapted = m.clone();
        let e = run_err("merge-lora", &mut m);
        assert_eq!(
            e,
            "pass `merge-lora` failed: `a`: base weight `tied.weight` is shared with `/b/MatMul`; merging would change \
             them too (merge-lora{unshare=true} gives this layer its own copy)"
        );
        assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&adapted), "{targets}: nothing changed");
        assert_eq!(state(&m), state(&adapted));
        assert_eq!(init_values(&m, "tied.weight"), init_values(&adapted, "tied.weight"));

        let want = eval(&adapted.graph, &feeds, "z");
        let report = run("merge-lora{unshare=true}", &mut m);
        let n = targets.split(',').count() as i64;
        assert_eq!(report.stat("merge.unshared"), Some(n));
        assert_eq!(m.graph.num_nodes(), base.graph.num_nodes());
        let got = eval(&m.graph, &feeds, "z");
        assert!(got.max_abs_diff(&want) < 1e-5, "{targets}: {}", got.max_abs_diff(&want));
        let g = &m.graph;
        let reads = |node: &str| g.nodes().find(|(_, n)| n.name == node).unwrap().1.inputs()[1].clone();
        assert_eq!(reads("/a/MatMul"), "a.weight", "{targets}: a gets its own copy");
        if n == 1 {
            assert_eq!(reads("/b/MatMul"), "tied.weight");
            assert_eq!(init_values(&m, "tied.weight"), init_values(&base, "tied.weight"), "b keeps the original");
        } else {
            assert_eq!(reads("/b/MatMul"), "b.weight");
            assert!(g.initializer("tied.weight").is_none(), "the unused original is removed");
        }
        assert_eq!(g.num_initializers(), n as usize + usize::from(n == 1));
    }
}

#[test]
fn unmergeable_adapters_are_kept_with_a_note() {
    let mut m = form_model(Form::MatMulBias);
    run("insert-lora{rank=2 targets=fc init=random}", &mut m);
    let mut st = state(&m);
    st.adapters.push(AdapterRecord {
        method: Method::Bottleneck,
        module: "enc.ffn".into(),
        target_node: String::new(),
        base_weight: String::new(),
        layout: None,
        params: BTreeMap::from([("down".to_string(), "enc.ffn.adapter.down".to_string())]),
        nodes: vec![],
        output: "h".into(),
        base_output: "h/base".into(),
        rank: 0,
        alpha: 0.0,
        scale: 0.0,
        rslora: false,
        extra: BTreeMap::new(),
    });
    st.trainable.insert("enc.ffn.adapter.down".into());
    st.store(&mut m);
    let (outcome, notes) = run_pass("merge-lora", &mut m).unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.get("merge.adapters"), Some(1));
    assert_eq!(outcome.get("merge.kept"), Some(1));
    assert_eq!(notes, ["enc.ffn: Bottleneck adapters cannot be merged into weights; kept"]);
    let left = state(&m);
    assert_eq!(left.adapters.len(), 1);
    assert_eq!(left.adapters[0].method, Method::Bottleneck);
    assert_eq!(left.trainable.iter().collect::<Vec<_>>(), ["enc.ffn.adapter.down"]);
}

#[test]
fn merge_after_lora_as_inputs_drops_the_inputs() {
    let base = form_model(Form::GemmTransB);
    let mut m = base.clone();
    run("insert-lora{rank=2 targets=fc init=random dora=true},lora-as-inputs", &mut m);
    assert_eq!(m.graph.inputs.len(), 4);
    let feeds = HashMap::from([("x".to_string(), Arr::random(&[3, IN], 4))]);
    let want = eval(&m.graph, &feeds, "z");
    run("merge-lora", &mut m);
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    assert!(eval(&m.graph, &feeds, "z").max_abs_diff(&want) < 1e-5);
}

#[test]
fn edited_adapters_are_reported_not_guessed() {
    let mut m = form_model(Form::MatMulBias);
    run("insert-lora{rank=2 targets=fc}", &mut m);
    let mut st = state(&m);
    st.adapters[0].nodes.push("fc/gone/Add".into());
    st.store(&mut m);
    let before = adaptc_ir::dump(&m);
    let e = run_err("merge-lora", &mut m);
    assert_eq!(e, "pass `merge-lora` failed: `fc`: adapter node `fc/gone/Add` is missing");
    assert_eq!(adaptc_ir::dump(&m), before);

    let mut m = form_model(Form::MatMulBias);
    run("insert-lora{rank=2 targets=fc}", &mut m);
    let mut st = state(&m);
    st.adapters[0].rank = 3;
    st.store(&mut m);
    let e = run_err("merge-lora", &mut m);
    assert_eq!(e, "pass `merge-lora` failed: `fc`: `fc.lora_A.weight` is f32[2, 6], expected f32[3, 6]");
}

#[test]
fn bert6_random_lora_merges_to_the_base_counts() {
    let base = load("bert6.onnx");
    let mut m = base.clone();
    run("insert-lora{rank=8 alpha=16 targets=query,value init=random}", &mut m);
    let st = state(&m);
    let layers: Vec<_> = find_linear_layers(&base.graph)
        .into_iter()
        .filter(|l| {
            let p = l.module_path.as_deref().unwrap();
            p.ends_with(".query") || p.ends_with(".value")
        })
        .collect();
    let x = Arr::random(&[2, 3, 64], 5);
    let unmerged: Vec<Arr> = layers
        .iter()
        .zip(&st.adapters)
        .map(|(l, r)| eval(&m.graph, &HashMap::from([(l.input.clone(), x.clone())]), &r.output))
        .collect();
    let report = run("merge-lora", &mut m);
    assert_eq!(report.stat("merge.adapters"), Some(12));
    assert_eq!(m.graph.num_nodes(), base.graph.num_nodes());
    assert_eq!(m.graph.num_initializers(), base.graph.num_initializers());
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    for ((l, before), rec) in layers.iter().zip(&unmerged).zip(&st.adapters) {
        let after = eval(&m.graph, &HashMap::from([(l.input.clone(), x.clone())]), &l.output);
        let d = after.max_abs_diff(before);
        assert!(d < 1e-5 * before.max_abs().max(1.0), "{}: {d}", rec.module);
    }
}

#[test]
fn llama4_merges_dora_to_the_base_counts() {
    let base = load("llama4/model.onnx");
    let mut m = base.clone();
    let targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    run(&format!("insert-lora{{rank=4 alpha=8 targets={targets} init=random dora=true}},merge-lora"), &mut m);
    assert_eq!(m.graph.num_nodes(), base.graph.num_nodes());
    assert_eq!(m.graph.num_initializers(), base.graph.num_initializers());
    assert_eq!(AdapterState::load(&m).unwrap(), AdapterState::default());
    // Merged weights are held in memory now (the writer decides where they go).
    let plain = |m: &Model| adaptc_ir::dump(m).replace(" (external)", "");
    assert_eq!(plain(&m), plain(&base));
}

/// `x → fc1 → Relu → fc2 → Relu → head → logits` (the head writes a graph output).
fn mlp() -> Model {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    g.add_initializer(tensor("fc1.weight", &Arr::random(&[IN, IN], 1))).unwrap();
    g.add_initializer(tensor("fc1.bias", &Arr::random(&[IN], 2))).unwrap();
    g.add_initializer(tensor("fc2.weight", &Arr::random(&[IN, OUT], 3))).unwrap();
    g.add_initializer(tensor("head.weight", &Arr::random(&[OUT, 3], 4))).unwrap();
    op(g, "MatMul", "/fc1/MatMul", &["x", "fc1.weight"], &["h1"]);
    op(g, "Add", "/fc1/Add", &["h1", "fc1.bias"], &["b1"]);
    op(g, "Relu", "r1", &["b1"], &["a1"]);
    op(g, "MatMul", "/fc2/MatMul", &["a1", "fc2.weight"], &["h2"]);
    op(g, "Relu", "r2", &["h2"], &["a2"]);
    op(g, "MatMul", "/head/MatMul", &["a2", "head.weight"], &["logits"]);
    g.outputs.push(ValueInfo::new("logits", None));
    m
}

#[test]
fn ia3_records_merge_after_lora_and_failures_roll_back() {
    let base = mlp();
    let mut m = base.clone();
    run("insert-lora{rank=2 alpha=4 targets=fc1,head init=random dora=true},insert-ia3{targets=fc2}", &mut m);
    let st = state(&m);
    assert_eq!(st.adapters.iter().map(|a| a.method).collect::<Vec<_>>(), [Method::Dora, Method::Dora, Method::Ia3]);
    // "Train" the IA3 vector.
    let l = st.adapters[2].params.values().next().unwrap().clone();
    let trained = Arr::random(&[OUT], 9).add(&Arr::new(&[1], vec![1.0]));
    let t = m.graph.initializer_mut(&l).unwrap();
    t.set_bytes(trained.data.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()).unwrap();
    let feeds = HashMap::from([("x".to_string(), Arr::random(&[2, IN], 6))]);
    let want = eval(&m.graph, &feeds, "logits");

    // An IA3 record that cannot be merged: the LoRA merges already applied are rolled back.
    let mut broken = m.clone();
    let mut bst = state(&broken);
    bst.adapters[2].nodes = vec!["no/such/Mul".into()];
    bst.store(&mut broken);
    let before = adaptc_ir::dump(&broken);
    let e = run_err("merge-lora", &mut broken);
    assert!(e.starts_with("pass `merge-lora` failed: IA3 on `fc2`:"), "{e}");
    assert_eq!(adaptc_ir::dump(&broken), before);
    assert_eq!(init_values(&broken, "fc1.weight"), init_values(&m, "fc1.weight"));

    let report = run("merge-lora", &mut m);
    assert_eq!(report.stat("merge.adapters"), Some(3));
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base), "the head's graph output has its name back");
    assert_eq!(AdapterState::load(&m).unwrap(), AdapterState::default());
    let got = eval(&m.graph, &feeds, "logits");
    assert!(got.max_abs_diff(&want) < 1e-5, "{}", got.max_abs_diff(&want));
}

#[test]
fn constant_node_weights_merge_in_place() {
    let mut m = Model::new(Graph::new("g"), 17);
    let g = &mut m.graph;
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(IN as i64)]));
    let w = Arr::random(&[OUT, IN], 1);
    op_with(g, "Constant", "/fc/Constant", &[], &["fc.w"], vec![adaptc_ir::Attribute::tensor("value", tensor("", &w))]);
    op_with(g, "Gemm", "/fc/Gemm", &["x", "fc.w"], &["y"], vec![adaptc_ir::Attribute::int("transB", 1)]);
    g.outputs.push(ValueInfo::new("y", None));
    let base = m.clone();
    run("insert-lora{rank=2 alpha=2 targets=fc init=random}", &mut m);
    let feeds = HashMap::from([("x".to_string(), Arr::random(&[2, IN], 6))]);
    let want = eval(&m.graph, &feeds, "y");
    run("merge-lora", &mut m);
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(&base));
    assert!(eval(&m.graph, &feeds, "y").max_abs_diff(&want) < 1e-5);
    assert!(eval(&m.graph, &feeds, "y").max_abs_diff(&eval(&base.graph, &feeds, "y")) > 1e-3);
}
