//! `prune-channels`: golden dumps of pruned FFNs (BERT and Llama style) and an attention block,
//! the numbers (the pruned model equals the original with the removed channels' consumer rows
//! zeroed) in every weight layout, the choice of the lowest-scored channels, bert6 and llama4
//! end to end, and the refusals (with the model left unchanged).

mod common;
mod prune_support;

use std::collections::HashMap;

use adaptc_ir::{Dim, Model};
use adaptc_passes::adapters::record::TRAINABLE;
use adaptc_passes::{PassManager, Registry, RunReport};
use prune_support::*;

fn run(pipeline: &str, model: &mut Model) -> RunReport {
    common::run(pipeline, model)
}

/// Runs `pipeline` expecting a failure: its text, after checking the model did not change.
fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = adaptc_ir::dump(model);
    let err = match PassManager::new(&Registry::builtin(), pipeline) {
        Err(e) => e.to_string(),
        Ok(m) => match m.run(model) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{pipeline} should fail, but ran: {r}"),
        },
    };
    assert_eq!(adaptc_ir::dump(model), before, "a refused run changed the model");
    err
}

fn stat(r: &RunReport, key: &str) -> i64 {
    common::stat(r, key)
}

/// Runs `prune-channels{<options> report=…}`: the run report and the JSON report.
fn report_json(options: &str, model: &mut Model) -> (RunReport, serde_json::Value) {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("adaptc-prune-{}-{n}.json", std::process::id()));
    let r = run(&format!("prune-channels{{{options} report={}}}", path.display()), model);
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    (r, json)
}

fn removed(json: &serde_json::Value, kind: &str) -> Vec<usize> {
    json["blocks"][0][kind][0]["removed"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
}

fn feeds(name: &str, dims: &[usize], seed: u64) -> HashMap<String, Arr> {
    HashMap::from([(name.to_string(), Arr::random(dims, seed))])
}

/// `[out, in]` view of a stored weight.
fn out_in(model: &Model, name: &str, in_out: bool) -> Arr {
    let w = Arr::from_tensor(model.graph.initializer(name).unwrap());
    if in_out {
        transpose(&w, &[1, 0])
    } else {
        w
    }
}

/// Zeroes input features `features` of the stored weight `name` (blocks of `block`).
fn zero_inputs(model: &mut Model, name: &str, in_out: bool, features: &[usize], block: usize) {
    let t = model.graph.initializer(name).unwrap();
    let mut a = Arr::from_tensor(t);
    let (rows, cols) = (a.dims[0], a.dims[1]);
    for &f in features {
        for j in f * block..(f + 1) * block {
            if in_out {
                (0..cols).for_each(|c| a.data[j * cols + c] = 0.0);
            } else {
                (0..rows).for_each(|r| a.data[r * cols + j] = 0.0);
            }
        }
    }
    model.graph.replace_initializer(tensor(name, &a)).unwrap();
}

fn in_out(form: Form) -> bool {
    matches!(form, Form::MatMulBias | Form::GemmNoTrans | Form::MatMulNoBias)
}

fn declared_dims(model: &Model, value: &str) -> Option<Vec<Dim>> {
    model.graph.value_info.iter().find(|v| v.name == value).and_then(|v| v.ty.as_ref()?.dims())
}

// ----- FFN -----------------------------------------------------------------------------------

#[test]
fn bert_ffn_golden() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let r = run("prune-channels{ffn=0.25}", &mut m);
    assert_eq!(stat(&r, "prune.ffn_groups"), 1);
    assert_eq!(stat(&r, "prune.channels_removed"), 2);
    assert_eq!(stat(&r, "prune.params_before"), (FFN * HIDDEN * 2 + FFN + HIDDEN) as i64);
    assert_eq!(stat(&r, "prune.params_after"), (6 * HIDDEN * 2 + 6 + HIDDEN) as i64);
    common::assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[2, 3, 6]
  init %encoder.layer.0.intermediate.dense.weight: f32[6, 6]
  init %encoder.layer.0.intermediate.dense.bias: f32[6]
  init %encoder.layer.0.output.dense.weight: f32[6, 6]
  init %encoder.layer.0.output.dense.bias: f32[6]
  %h_mm = MatMul(%x, %encoder.layer.0.intermediate.dense.weight)  # /encoder/layer/0/intermediate/dense/MatMul
  %h = Add(%h_mm, %encoder.layer.0.intermediate.dense.bias)  # /encoder/layer/0/intermediate/dense/Add
  %a = Gelu(%h)  # /encoder/layer.0/intermediate/Gelu
  %y_mm = MatMul(%a, %encoder.layer.0.output.dense.weight)  # /encoder/layer/0/output/dense/MatMul
  %y = Add(%y_mm, %encoder.layer.0.output.dense.bias)  # /encoder/layer/0/output/dense/Add
  output %y: ?
}
"#,
    );
    assert_eq!(declared_dims(&m, "h"), Some(vec![Dim::Known(2), Dim::Known(3), Dim::Known(6)]));
    assert_eq!(declared_dims(&m, "a"), Some(vec![Dim::Known(2), Dim::Known(3), Dim::Known(6)]));
}

#[test]
fn ffn_numbers_in_every_layout() {
    let pairs = [
        (Form::MatMulBias, Form::MatMulBias),
        (Form::GemmTransB, Form::GemmNoTrans),
        (Form::GemmNoTrans, Form::GemmTransB),
        (Form::MatMulTransposed, Form::MatMulTransposed),
        (Form::MatMulBias, Form::MatMulTransposed),
    ];
    for (up, down) in pairs {
        let original = bert_ffn(up, down);
        let mut pruned = original.clone();
        let (r, json) = report_json("ffn=0.375", &mut pruned);
        assert_eq!(stat(&r, "prune.channels_removed"), 3, "{up:?}/{down:?}");
        let gone = removed(&json, "ffn");

        // The lowest products of the producer's output-channel norm and the consumer's
        // input-channel norm.
        let wu = out_in(&original, "encoder.layer.0.intermediate.dense.weight", in_out(up));
        let wd = out_in(&original, "encoder.layer.0.output.dense.weight", in_out(down));
        let norm = |a: &Arr, row: Option<usize>, col: Option<usize>| -> f64 {
            let (r, c) = (a.dims[0], a.dims[1]);
            let mut s = 0.0;
            for i in 0..r {
                for j in 0..c {
                    if row.is_none_or(|x| x == i) && col.is_none_or(|x| x == j) {
                        s += a.data[i * c + j] * a.data[i * c + j];
                    }
                }
            }
            s.sqrt()
        };
        let scores: Vec<f64> = (0..FFN).map(|j| norm(&wu, Some(j), None) * norm(&wd, None, Some(j))).collect();
        let mut order: Vec<usize> = (0..FFN).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut lowest = order[..3].to_vec();
        lowest.sort();
        assert_eq!(gone, lowest, "{up:?}/{down:?}: {scores:?}");

        let mut zeroed = original.clone();
        zero_inputs(&mut zeroed, "encoder.layer.0.output.dense.weight", in_out(down), &gone, 1);
        let x_dims = original.graph.inputs[0].ty.as_ref().unwrap().dims().unwrap();
        let x_dims: Vec<usize> = x_dims.iter().map(|d| if let Dim::Known(n) = d { *n as usize } else { 0 }).collect();
        let f = feeds("x", &x_dims, 42);
        let want = eval(&zeroed.graph, &f, "y");
        let got = eval(&pruned.graph, &f, "y");
        assert!(got.max_abs_diff(&want) < 1e-12, "{up:?}/{down:?}: {}", got.max_abs_diff(&want));
        let full = eval(&original.graph, &f, "y");
        assert!(full.max_abs_diff(&got) > 1e-6, "pruning changed nothing?");
    }
}

#[test]
fn llama_ffn_golden_and_numbers() {
    let original = llama_ffn();
    let mut m = original.clone();
    let (r, json) = report_json("ffn=0.5", &mut m);
    assert_eq!(stat(&r, "prune.channels_removed"), 4);
    assert_eq!(json["blocks"][0]["ffn"][0]["producers"].as_array().unwrap().len(), 2);
    assert_eq!(json["blocks"][0]["ffn"][0]["channels_after"], 4);
    assert_eq!(json["params_after"].as_u64().unwrap(), 3 * 4 * HIDDEN as u64);
    common::assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[2, 3, 6]
  init %model.layers.0.mlp.gate_proj.weight: f32[6, 4]
  init %model.layers.0.mlp.up_proj.weight: f32[6, 4]
  init %model.layers.0.mlp.down_proj.weight: f32[4, 6]
  %gate = MatMul(%x, %model.layers.0.mlp.gate_proj.weight)  # /model/layers/0/mlp/gate_proj/MatMul
  %sig = Sigmoid(%gate)  # /model/layers.0/mlp/act_fn/Sigmoid
  %silu = Mul(%gate, %sig)  # /model/layers.0/mlp/act_fn/Mul
  %up = MatMul(%x, %model.layers.0.mlp.up_proj.weight)  # /model/layers/0/mlp/up_proj/MatMul
  %prod = Mul(%silu, %up)  # /model/layers.0/mlp/Mul
  %y = MatMul(%prod, %model.layers.0.mlp.down_proj.weight)  # /model/layers/0/mlp/down_proj/MatMul
  output %y: ?
}
"#,
    );
    let gone = removed(&json, "ffn");
    let mut zeroed = original.clone();
    zero_inputs(&mut zeroed, "model.layers.0.mlp.down_proj.weight", true, &gone, 1);
    let f = feeds("x", &[2, 3, HIDDEN], 7);
    let diff = eval(&m.graph, &f, "y").max_abs_diff(&eval(&zeroed.graph, &f, "y"));
    assert!(diff < 1e-12, "{diff}");
}

#[test]
fn path_constants_with_channels_are_cut() {
    // up → Mul(·, s[8]) → Gelu → down: `s` loses the same channels.
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let s = Arr::random(&[FFN], 9);
    m.graph.add_initializer(tensor("s", &s)).unwrap();
    let gelu = m.graph.producer("a").unwrap().0;
    op(&mut m.graph, "Mul", "/encoder/layer.0/intermediate/scale", &["h", "s"], &["hs"]);
    m.graph.set_input(gelu, 0, "hs").unwrap();
    let original = m.clone();
    let (_, json) = report_json("ffn=0.25", &mut m);
    let gone = removed(&json, "ffn");
    assert_eq!(m.graph.initializer("s").unwrap().dims(), &[6]);
    let mut zeroed = original.clone();
    zero_inputs(&mut zeroed, "encoder.layer.0.output.dense.weight", true, &gone, 1);
    let f = feeds("x", &[2, 3, HIDDEN], 3);
    assert!(eval(&m.graph, &f, "y").max_abs_diff(&eval(&zeroed.graph, &f, "y")) < 1e-12);
}

// ----- attention -----------------------------------------------------------------------------

#[test]
fn attention_heads_golden_and_numbers() {
    let original = attention(HEADS);
    let mut m = original.clone();
    let (r, json) = report_json("heads=1", &mut m);
    assert_eq!(stat(&r, "prune.heads_removed"), 1);
    assert_eq!(stat(&r, "prune.attention_groups"), 1);
    let head = &json["blocks"][0]["attention"][0];
    assert_eq!((head["heads_before"].as_u64(), head["heads_after"].as_u64()), (Some(3), Some(2)));
    let gone = removed(&json, "attention");

    // The head's score: the sum of the L2 norms of its q/k/v output channels and o input channels.
    let a = "encoder.layer.0.attention";
    let block_norm = |w: &Arr, h: usize, rows: bool| -> f64 {
        let (r, c) = (w.dims[0], w.dims[1]);
        let mut s = 0.0;
        for i in 0..r {
            for j in 0..c {
                let inside = if rows { i / HEAD == h } else { j / HEAD == h };
                if inside {
                    s += w.data[i * c + j].powi(2);
                }
            }
        }
        s.sqrt()
    };
    let scores: Vec<f64> = (0..HEADS)
        .map(|h| {
            ["query", "key", "value"]
                .iter()
                .map(|p| block_norm(&out_in(&original, &format!("{a}.self.{p}.weight"), true), h, true))
                .sum::<f64>()
                + block_norm(&out_in(&original, &format!("{a}.output.dense.weight"), true), h, false)
        })
        .collect();
    let lowest = (0..HEADS).min_by(|&x, &y| scores[x].total_cmp(&scores[y])).unwrap();
    assert_eq!(gone, vec![lowest], "{scores:?}");

    let mut zeroed = original.clone();
    zero_inputs(&mut zeroed, &format!("{a}.output.dense.weight"), true, &gone, HEAD);
    let f = feeds("x", &[2, 5, HIDDEN], 11);
    let diff = eval(&m.graph, &f, "y").max_abs_diff(&eval(&zeroed.graph, &f, "y"));
    assert!(diff < 1e-12, "{diff}");
    common::assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[2, 5, 6]
  init %scale: f32[]
  init %encoder.layer.0.attention.self.query.weight: f32[6, 8]
  init %encoder.layer.0.attention.self.query.bias: f32[8]
  init %encoder.layer.0.attention.self.key.weight: f32[6, 8]
  init %encoder.layer.0.attention.self.key.bias: f32[8]
  init %encoder.layer.0.attention.self.value.weight: f32[6, 8]
  init %encoder.layer.0.attention.self.value.bias: f32[8]
  init %encoder.layer.0.attention.output.dense.weight: f32[8, 6]
  init %encoder.layer.0.attention.output.dense.bias: f32[6]
  init %kv_shape_pruned: i64[4]
  init %split_shape_pruned: i64[4]
  init %merge_shape_pruned: i64[3]
  %query_out_mm = MatMul(%x, %encoder.layer.0.attention.self.query.weight)  # /encoder/layer/0/attention/self/query/MatMul
  %query_out = Add(%query_out_mm, %encoder.layer.0.attention.self.query.bias)  # /encoder/layer/0/attention/self/query/Add
  %query_heads = Reshape(%query_out, %split_shape_pruned)  # /encoder/layer/0/attention/self/query/Reshape
  %query_t = Transpose(%query_heads) {perm=[0, 2, 1, 3]}  # /encoder/layer/0/attention/self/query/Transpose
  %key_out_mm = MatMul(%x, %encoder.layer.0.attention.self.key.weight)  # /encoder/layer/0/attention/self/key/MatMul
  %key_out = Add(%key_out_mm, %encoder.layer.0.attention.self.key.bias)  # /encoder/layer/0/attention/self/key/Add
  %key_heads = Reshape(%key_out, %kv_shape_pruned)  # /encoder/layer/0/attention/self/key/Reshape
  %key_t = Transpose(%key_heads) {perm=[0, 2, 3, 1]}  # /encoder/layer/0/attention/self/key/Transpose
  %value_out_mm = MatMul(%x, %encoder.layer.0.attention.self.value.weight)  # /encoder/layer/0/attention/self/value/MatMul
  %value_out = Add(%value_out_mm, %encoder.layer.0.attention.self.value.bias)  # /encoder/layer/0/attention/self/value/Add
  %value_heads = Reshape(%value_out, %kv_shape_pruned)  # /encoder/layer/0/attention/self/value/Reshape
  %value_t = Transpose(%value_heads) {perm=[0, 2, 1, 3]}  # /encoder/layer/0/attention/self/value/Transpose
  %scores = MatMul(%query_t, %key_t)  # /attn/scores
  %scaled = Mul(%scores, %scale)  # /attn/scale
  %probs = Softmax(%scaled) {axis=-1}  # /attn/softmax
  %ctx = MatMul(%probs, %value_t)  # /attn/context
  %ctx_t = Transpose(%ctx) {perm=[0, 2, 1, 3]}  # /attn/merge_t
  %merged = Reshape(%ctx_t, %merge_shape_pruned)  # /attn/merge
  %y_mm = MatMul(%merged, %encoder.layer.0.attention.output.dense.weight)  # /encoder/layer/0/attention/output/dense/MatMul
  %y = Add(%y_mm, %encoder.layer.0.attention.output.dense.bias)  # /encoder/layer/0/attention/output/dense/Add
  output %y: ?
}
"#,
    );
    // The originals had no other reader and are gone; the copies say 2 heads.
    assert_eq!(Arr::from_tensor(m.graph.initializer("split_shape_pruned").unwrap()).data, vec![0.0, 0.0, 2.0, 4.0]);
    assert_eq!(Arr::from_tensor(m.graph.initializer("merge_shape_pruned").unwrap()).data, vec![0.0, 0.0, 8.0]);
    assert_eq!(declared_dims(&m, "query_heads"), None, "stale head shapes are dropped");
    assert_eq!(declared_dims(&m, "query_out"), Some(vec![Dim::Known(2), Dim::Known(5), Dim::Known(8)]));
}

#[test]
fn grouped_query_attention_is_refused() {
    let mut m = attention(1);
    let e = run_err("prune-channels{heads=1}", &mut m);
    assert!(e.contains("grouped-query attention is not supported yet"), "{e}");
    assert!(e.contains("3 heads of 4") && e.contains("1 heads of 4"), "{e}");
}

// ----- refusals ------------------------------------------------------------------------------

#[test]
fn options_out_of_range() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let e = run_err("prune-channels{ffn=1.5}", &mut m);
    assert!(e.contains("option `ffn`: 1.5 is not a fraction in [0, 1)"), "{e}");
    let e = run_err("prune-channels{heads=2.5}", &mut m);
    assert!(e.contains("option `heads`"), "{e}");
    let e = run_err("prune-channels", &mut m);
    assert!(e.contains("nothing to prune: give ffn="), "{e}");
}

#[test]
fn nothing_to_prune() {
    let mut m = attention(HEADS);
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(e.contains("nothing to prune: no FFN group"), "{e}");
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let e = run_err("prune-channels{heads=1}", &mut m);
    assert!(e.contains("nothing to prune: no attention block"), "{e}");
    let e = run_err("prune-channels{ffn=0.25 targets=3}", &mut m);
    assert!(e.contains("nothing to prune: no FFN group"), "{e}");
}

#[test]
fn trainable_weights_are_refused() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let w = "encoder.layer.0.intermediate.dense.weight";
    let mut t = m.graph.initializer(w).unwrap().clone();
    t.metadata.set(TRAINABLE, "true");
    m.graph.replace_initializer(t).unwrap();
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(e.contains("FFN `encoder.layer.0.output.dense`") && e.contains("is trainable"), "{e}");
}

#[test]
fn non_elementwise_path_is_refused() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    let consumer = m.graph.producer("y_mm").unwrap().0;
    op_with(
        &mut m.graph,
        "Softmax",
        "/encoder/layer.0/intermediate/Softmax",
        &["a"],
        &["sm"],
        vec![adaptc_ir::Attribute::int("axis", -1)],
    );
    m.graph.set_input(consumer, 0, "sm").unwrap();
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(
        e.contains("goes through Softmax `/encoder/layer.0/intermediate/Softmax`, which is not element-wise"),
        "{e}"
    );
}

#[test]
fn values_read_outside_the_path_are_refused() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    m.graph.outputs.push(adaptc_ir::ValueInfo::new("a", None));
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(e.contains("`a` on the path from the producers to the consumer is a graph output"), "{e}");

    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    op(&mut m.graph, "Relu", "spy", &["h"], &["spied"]);
    m.graph.outputs.push(adaptc_ir::ValueInfo::new("spied", None));
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(e.contains("`h` on the path from the producers to the consumer is also read by `spy`"), "{e}");
}

#[test]
fn constants_that_cannot_be_cut_are_refused() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    m.graph.add_initializer(tensor("odd", &Arr::random(&[2, FFN], 1))).unwrap();
    let gelu = m.graph.producer("a").unwrap().0;
    op(&mut m.graph, "Add", "/encoder/layer.0/intermediate/odd", &["h", "odd"], &["ho"]);
    m.graph.set_input(gelu, 0, "ho").unwrap();
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(e.contains("the constant `odd` [2, 8]"), "{e}");
}

// ----- fixtures ------------------------------------------------------------------------------

fn fixture(rel: &str) -> Model {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel);
    adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn bert6_ffn_quarter() {
    let mut m = fixture("bert6.onnx");
    let (r, json) = report_json("ffn=0.25", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(stat(&r, "prune.ffn_groups"), 6);
    assert_eq!(stat(&r, "prune.channels_removed"), 6 * 32);
    let per_block = (64 * 32 * 2 + 32) as i64;
    assert_eq!(stat(&r, "prune.params_before") - stat(&r, "prune.params_after"), 6 * per_block);
    let blocks = json["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b["block"], i);
        let f = &b["ffn"][0];
        assert_eq!(f["module"], format!("encoder.layer.{i}.output.dense"));
        assert_eq!((f["channels_before"].as_u64(), f["channels_after"].as_u64()), (Some(128), Some(96)));
        assert_eq!(b["params_removed"].as_i64(), Some(per_block));
    }
    let layers = adaptc_passes::pattern::find_linear_layers(&m.graph);
    let widths: Vec<u64> = layers
        .iter()
        .filter(|l| l.module_path.as_deref().is_some_and(|p| p.ends_with("intermediate.dense")))
        .map(|l| l.out_features)
        .collect();
    assert_eq!(widths, vec![96; 6]);
    for v in m.graph.value_info.iter().filter(|v| !v.name.starts_with("embeddings.")) {
        if let Some(dims) = v.ty.as_ref().and_then(|t| t.dims()) {
            assert_ne!(dims.last(), Some(&Dim::Known(128)), "`{}` is still declared with 128 channels", v.name);
        }
    }
}

#[test]
fn bert6_heads_and_targets() {
    let mut m = fixture("bert6.onnx");
    let r = run("prune-channels{ffn=0.5 heads=1 targets=0,1}", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(stat(&r, "prune.ffn_groups"), 2);
    assert_eq!(stat(&r, "prune.attention_groups"), 2);
    assert_eq!(stat(&r, "prune.heads_removed"), 2);
    let layers = adaptc_passes::pattern::find_linear_layers(&m.graph);
    let width = |suffix: &str| -> Vec<u64> {
        layers
            .iter()
            .filter(|l| l.module_path.as_deref().is_some_and(|p| p.ends_with(suffix)))
            .map(|l| l.out_features)
            .collect()
    };
    assert_eq!(width("attention.self.query"), vec![48, 48, 64, 64, 64, 64]);
    assert_eq!(width("intermediate.dense"), vec![64, 64, 128, 128, 128, 128]);
}

#[test]
fn llama4_ffn_and_gqa() {
    let mut m = fixture("llama4/model.onnx");
    let r = run("prune-channels{ffn=0.25}", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
    let groups = stat(&r, "prune.ffn_groups");
    assert!(groups >= 1);
    assert_eq!(stat(&r, "prune.channels_removed"), groups * 32);
    assert_eq!(stat(&r, "prune.params_before") - stat(&r, "prune.params_after"), groups * 3 * 64 * 32);
    let layers = adaptc_passes::pattern::find_linear_layers(&m.graph);
    for l in layers.iter().filter(|l| l.module_path.as_deref().is_some_and(|p| p.ends_with("down_proj"))) {
        assert_eq!(l.in_features, 96);
    }

    let mut m = fixture("llama4/model.onnx");
    let r = run(r"prune-channels{ffn=0.5 targets=re:.*layers\.1\..*}", &mut m);
    assert_eq!((stat(&r, "prune.ffn_groups"), stat(&r, "prune.channels_removed")), (1, 64));

    let mut m = fixture("llama4/model.onnx");
    let e = run_err("prune-channels{heads=1}", &mut m);
    assert!(e.contains("grouped-query attention is not supported yet"), "{e}");
}

#[test]
fn shared_shape_constants_are_cloned() {
    // `split_shape` is also read by an unrelated Reshape: it stays, the block gets a copy.
    let mut m = attention(HEADS);
    m.graph.inputs.push(adaptc_ir::ValueInfo::tensor(
        "other",
        adaptc_ir::DataType::Float,
        vec![Dim::Known(1), Dim::Known(1), Dim::Known(12)],
    ));
    op(&mut m.graph, "Reshape", "unrelated", &["other", "split_shape"], &["other_heads"]);
    m.graph.outputs.push(adaptc_ir::ValueInfo::new("other_heads", None));
    run("prune-channels{heads=1}", &mut m);
    assert_eq!(Arr::from_tensor(m.graph.initializer("split_shape").unwrap()).data, vec![0.0, 0.0, 3.0, 4.0]);
    assert_eq!(m.graph.node(m.graph.producer("other_heads").unwrap().0).input(1), Some("split_shape"));
    assert_eq!(m.graph.node(m.graph.producer("query_heads").unwrap().0).input(1), Some("split_shape_pruned"));
}

#[test]
fn unprovable_head_layouts_are_refused() {
    // A per-head table [1, H, 1, 1] multiplies the scores: the pass would have to cut it too.
    let mut m = attention(HEADS);
    m.graph.add_initializer(tensor("per_head", &Arr::random(&[1, HEADS, 1, 1], 3))).unwrap();
    let softmax = m.graph.producer("probs").unwrap().0;
    op(&mut m.graph, "Mul", "/attn/per_head", &["scaled", "per_head"], &["tabled"]);
    m.graph.set_input(softmax, 0, "tabled").unwrap();
    let e = run_err("prune-channels{heads=1}", &mut m);
    assert!(e.contains("cannot prove the head split: `/attn/per_head` reads `per_head`"), "{e}");
}

#[test]
fn adapted_weights_are_refused() {
    let mut m = bert_ffn(Form::MatMulBias, Form::MatMulBias);
    run("insert-lora{targets=intermediate.dense rank=2}", &mut m);
    let e = run_err("prune-channels{ffn=0.25}", &mut m);
    assert!(
        e.contains("1 adapter(s) (e.g. on `encoder.layer.0.intermediate.dense`)") && e.contains("merge-lora"),
        "{e}"
    );
}
