//! `add-head`: the graph it builds (first output `logits`, trainable head weights, tagged
//! nodes), its numbers against pooling computed by hand from the base model's hidden states
//! (MiniLM with padding in the batch, and small graphs for the opset and no-mask variants),
//! and its refusals (changing nothing).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use adaptc_ir::{DataType, Dim, Model, Tensor as IrTensor, ValueInfo};
use adaptc_passes::adapters::record::{CREATED_BY, TRAINABLE};
use adaptc_passes::adapters::{AdapterState, Method};
use adaptc_passes::{PassContext, PassSpec, Registry};
use adaptc_runtime::{Session, SessionOptions, Tensor};
use common::{f32s, node, run};

fn minilm() -> Option<Model> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/minilm/model.onnx");
    if !path.exists() {
        eprintln!("SKIPPED: {} is missing (tests/data links to the shared test data)", path.display());
        return None;
    }
    Some(adaptc_ir::onnx::load(&path).unwrap())
}

fn run_model(model: &Model, feeds: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    let session = Session::new(model, SessionOptions::default()).unwrap();
    let feeds = feeds.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    session.run(feeds).unwrap().into_iter().collect()
}

fn f32_init(model: &Model, name: &str) -> Vec<f32> {
    model.graph.initializer(name).unwrap().to_f32().unwrap()
}

/// `pooled [rows, hidden] · W [hidden, labels] + b`, in f64.
fn linear(pooled: &[Vec<f64>], w: &[f32], b: &[f32]) -> Vec<f64> {
    let labels = b.len();
    let mut out = Vec::new();
    for row in pooled {
        for j in 0..labels {
            let dot: f64 = row.iter().enumerate().map(|(k, x)| x * f64::from(w[k * labels + j])).sum();
            out.push(dot + f64::from(b[j]));
        }
    }
    out
}

/// Masked mean (or the first token) of `h [rows, seq, hidden]`.
fn pool(h: &Tensor, mask: Option<&[i64]>, cls: bool) -> Vec<Vec<f64>> {
    let (rows, seq, hidden) = (h.shape()[0], h.shape()[1], h.shape()[2]);
    let v = h.as_slice::<f32>().unwrap();
    (0..rows)
        .map(|r| {
            (0..hidden)
                .map(|k| {
                    let at = |s: usize| f64::from(v[(r * seq + s) * hidden + k]);
                    if cls {
                        return at(0);
                    }
                    let keep = |s: usize| mask.map_or(1.0, |m| m[r * seq + s] as f64);
                    let n: f64 = (0..seq).map(keep).sum();
                    (0..seq).map(|s| at(s) * keep(s)).sum::<f64>() / n
                })
                .collect()
        })
        .collect()
}

fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
    let got = got.as_slice::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(*g) - w).abs() <= tol, "[{i}]: {g} vs {w}");
    }
}

/// A nonzero bias, so that the `Add` is checked too.
fn set_bias(model: &mut Model, labels: usize) -> Vec<f32> {
    let b: Vec<f32> = (0..labels).map(|i| 0.1 * i as f32 - 0.05).collect();
    let mut t = model.graph.initializer("classifier.bias").unwrap().clone();
    t.set_bytes(b.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
    model.graph.replace_initializer(t).unwrap();
    b
}

#[test]
fn minilm_head_matches_pooled_hidden_states() {
    let Some(base) = minilm() else { return };
    // Two rows, the first padded from 6 to 9 tokens.
    let ids: Vec<i64> =
        vec![101, 2023, 3715, 2003, 2307, 102, 0, 0, 0, 101, 1996, 2117, 3715, 2003, 2025, 2204, 1012, 102];
    let mask: Vec<i64> = (0..18).map(|i| i64::from(!(6..9).contains(&i))).collect();
    let feeds = [
        ("input_ids", Tensor::from_vec(vec![2, 9], ids).unwrap()),
        ("attention_mask", Tensor::from_vec(vec![2, 9], mask.clone()).unwrap()),
        ("token_type_ids", Tensor::from_vec(vec![2, 9], vec![0i64; 18]).unwrap()),
    ];
    let base_out = run_model(&base, &feeds);
    let h = &base_out["last_hidden_state"];
    assert_eq!(h.shape(), &[2, 9, 384]);

    for (pooling, labels) in [("mean", 3usize), ("cls", 2)] {
        let mut model = base.clone();
        let report = run(&format!("add-head{{labels={labels} pooling={pooling} seed=7}}"), &mut model);
        assert_eq!(common::stat(&report, "head.hidden"), 384);
        assert_eq!(common::stat(&report, "head.params"), (384 * labels + labels) as i64);
        adaptc_ir::verify(&model.graph).unwrap();

        // `logits [batch, labels]` first, the old outputs after it.
        let outs: Vec<&str> = model.graph.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outs, ["logits", "last_hidden_state", "pooler_output"]);
        let ty = model.graph.outputs[0].ty.as_ref().unwrap();
        assert_eq!(ty.dtype(), Some(DataType::Float));
        assert_eq!(ty.dims().unwrap(), vec![Dim::Symbol("batch".into()), Dim::Known(labels as i64)]);

        // Exactly the head's two tensors are trainable, in the state and as tags.
        let state = AdapterState::load(&model).unwrap();
        let want: BTreeSet<String> = ["classifier.bias", "classifier.weight"].iter().map(|s| s.to_string()).collect();
        assert_eq!(state.trainable, want);
        let tagged: BTreeSet<String> = model
            .graph
            .initializers()
            .filter(|t| t.metadata.get(TRAINABLE) == Some("true"))
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(tagged, want);
        let rec = &state.adapters[0];
        assert_eq!((rec.method, rec.module.as_str(), rec.output.as_str()), (Method::Head, "classifier", "logits"));
        assert_eq!(rec.extra["pooling"], pooling);
        assert_eq!(model.graph.initializer("classifier.weight").unwrap().dims(), &[384, labels as u64]);
        // Every inserted node is tagged and named under the module path.
        let inserted: Vec<_> = model.graph.nodes().filter(|(_, n)| n.metadata.get(CREATED_BY).is_some()).collect();
        assert_eq!(inserted.len(), rec.nodes.len());
        assert!(inserted
            .iter()
            .all(|(_, n)| n.metadata.get(CREATED_BY) == Some("add-head") && n.name.starts_with("classifier/")));

        let w = f32_init(&model, "classifier.weight");
        let std = (w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((0.015..0.025).contains(&std), "{std}");
        let b = set_bias(&mut model, labels);
        let out = run_model(&model, &feeds);
        assert_eq!(out["logits"].shape(), &[2, labels]);
        assert_eq!(&out["last_hidden_state"], h);
        let pooled = pool(h, Some(&mask), pooling == "cls");
        assert_close(&out["logits"], &linear(&pooled, &w, &b), 1e-5);
    }
}

/// `x [batch, seq, 4] → MatMul(W) → h`; with `typed`, `h`'s type is declared.
fn encoder(opset: i64, with_mask: bool, typed: bool) -> Model {
    common::model(opset, |g| {
        let batch_seq = vec![Dim::Symbol("b".into()), Dim::Symbol("s".into())];
        let mut x_dims = batch_seq.clone();
        x_dims.push(Dim::Known(4));
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, x_dims.clone()));
        if with_mask {
            g.inputs.push(ValueInfo::tensor("attention_mask", DataType::Int64, batch_seq));
        }
        let w: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        g.add_initializer(f32s("enc.weight", &[4, 4], &w)).unwrap();
        g.add_node(node("MatMul", &["x", "enc.weight"], &["h"]).named("enc/MatMul")).unwrap();
        g.outputs.push(if typed { ValueInfo::tensor("h", DataType::Float, x_dims) } else { ValueInfo::new("h", None) });
    })
}

fn small_feeds(with_mask: bool) -> (Vec<(&'static str, Tensor)>, Vec<i64>) {
    let x: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
    let mask = vec![1i64, 1, 0, 1, 1, 1];
    let mut feeds = vec![("x", Tensor::from_vec(vec![2, 3, 4], x).unwrap())];
    if with_mask {
        feeds.push(("attention_mask", Tensor::from_vec(vec![2, 3], mask.clone()).unwrap()));
    }
    (feeds, mask)
}

#[test]
fn opset_variants_and_no_mask() {
    // opset 12: Unsqueeze/ReduceSum take axes as attributes; 17: ReduceMean does; 20: inputs.
    for (opset, with_mask) in [(12, true), (17, false), (20, true), (20, false)] {
        let base = encoder(opset, with_mask, true);
        let (feeds, mask) = small_feeds(with_mask);
        let h = run_model(&base, &feeds).remove("h").unwrap();
        let mut model = base.clone();
        run("add-head{labels=2}", &mut model);
        let ops: Vec<String> = model.graph.nodes().map(|(_, n)| n.op().op_type.clone()).collect();
        assert_eq!(ops.contains(&"ReduceMean".to_string()), !with_mask, "{opset}: {ops:?}");
        let w = f32_init(&model, "classifier.weight");
        let b = set_bias(&mut model, 2);
        let out = run_model(&model, &feeds);
        let pooled = pool(&h, with_mask.then_some(&mask[..]), false);
        assert_close(&out["logits"], &linear(&pooled, &w, &b), 1e-5);
        let dims = model.graph.outputs[0].ty.as_ref().unwrap().dims().unwrap();
        assert_eq!(dims, vec![Dim::Symbol("b".into()), Dim::Known(2)]);
    }
}

#[test]
fn hidden_size_from_the_weight_when_the_type_is_unknown() {
    let mut model = encoder(20, false, false);
    run("add-head{labels=3 pooling=cls input=h}", &mut model);
    assert_eq!(model.graph.initializer("classifier.weight").unwrap().dims(), &[4, 3]);
    let dims = model.graph.outputs[0].ty.as_ref().unwrap().dims().unwrap();
    assert_eq!(dims, vec![Dim::Symbol("batch".into()), Dim::Known(3)]);
    let (feeds, _) = small_feeds(false);
    let out = run_model(&model, &feeds);
    let h = run_model(&encoder(20, false, false), &feeds).remove("h").unwrap();
    let w = f32_init(&model, "classifier.weight");
    assert_close(&out["logits"], &linear(&pool(&h, None, true), &w, &[0.0; 3]), 1e-5);
    // The seed decides the weights.
    let mut other = encoder(20, false, false);
    run("add-head{labels=3 pooling=cls input=h seed=1}", &mut other);
    assert_ne!(f32_init(&other, "classifier.weight"), w);
}

/// Runs `spec` on `model` expecting an error; checks the model did not change.
fn refused(model: &Model, spec: PassSpec) -> String {
    let pass = match Registry::builtin().build(&spec) {
        Ok(p) => p,
        Err(e) => return e.to_string(),
    };
    let mut m = model.clone();
    let e = pass.run(&mut m, &mut PassContext::new()).expect_err("the pass should fail").to_string();
    assert_eq!(adaptc_ir::dump(&m), adaptc_ir::dump(model), "{e}");
    e
}

#[test]
fn refusals_change_nothing() {
    let model = encoder(20, true, true);
    let spec = |kv: &[(&str, &str)]| kv.iter().fold(PassSpec::new("add-head"), |s, &(k, v)| s.with(k, v));
    let e = refused(&model, spec(&[("labels", "1")]));
    assert_eq!(e, "pass `add-head`: option `labels`: a classifier needs at least 2 labels, got 1");
    let e = refused(&model, spec(&[("labels", "2"), ("kind", "regression")]));
    assert!(e.starts_with("pass `add-head`: option `kind`:") && e.contains("classification"), "{e}");
    let e = refused(&model, spec(&[]));
    assert!(e.contains("option `labels`: is required"), "{e}");
    let e = refused(&model, spec(&[("labels", "2"), ("input", "nope")]));
    assert!(e.contains("no value `nope` in the graph (outputs: `h` f32[b, s, 4])"), "{e}");

    let mut headed = model.clone();
    run("add-head{labels=2}", &mut headed);
    let e = refused(&headed, spec(&[("labels", "2")]));
    assert!(e.contains("already has a `logits` value (a graph output)"), "{e}");

    // No rank-3 output: the message names the outputs.
    let flat = common::model(20, |g| {
        g.inputs.push(common::f32_input("x", &[2, 4]));
        g.add_node(node("Relu", &["x"], &["y"])).unwrap();
        g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Known(2), Dim::Known(4)]));
    });
    let e = refused(&flat, spec(&[("labels", "2")]));
    assert!(e.contains("no graph output of rank 3") && e.contains("outputs: `y` f32[2, 4]"), "{e}");
    let e = refused(&flat, spec(&[("labels", "2"), ("input", "y")]));
    assert!(e.contains("`y` has rank 2"), "{e}");

    // Unknown type and no weight to read the hidden size from.
    let opaque = common::model(20, |g| {
        g.inputs.push(ValueInfo::new("x", None));
        g.add_node(node("Relu", &["x"], &["y"])).unwrap();
        g.outputs.push(ValueInfo::new("y", None));
    });
    let e = refused(&opaque, spec(&[("labels", "2"), ("input", "y")]));
    assert!(e.contains("cannot tell the hidden size of `y`"), "{e}");

    // An existing `classifier.weight`.
    let mut taken = model.clone();
    taken.graph.add_initializer(IrTensor::from_f32("classifier.weight", vec![1], &[0.0]).unwrap()).unwrap();
    let e = refused(&taken, spec(&[("labels", "2")]));
    assert!(e.contains("already has `classifier.weight`"), "{e}");
}
