//! `insert-prompt`: golden dumps on small graphs shaped like exported embeddings (BERT-style
//! sliced position ids, Llama-style `Range` positions and sliced logits), initial values,
//! declared shapes, negative cases, and the BERT / Llama fixtures.

mod common;

use std::path::PathBuf;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, TypeInfo, ValueInfo};
use adaptc_passes::adapters::{AdapterState, Method};
use adaptc_passes::{PassManager, Registry};
use common::*;

fn ids_input(name: &str) -> ValueInfo {
    ValueInfo::tensor(name, DataType::Int64, vec![Dim::Symbol("batch".into()), Dim::Symbol("seq".into())])
}

fn sym(s: &str) -> Dim {
    Dim::Symbol(s.into())
}

fn add(g: &mut Graph, n: adaptc_ir::Node) {
    g.add_node(n).unwrap();
}

fn table(rows: usize, d: usize, base: f32) -> Vec<f32> {
    (0..rows * d).map(|i| base + i as f32).collect()
}

/// BERT-like embeddings as the dynamo exporter writes them: positions are
/// `position_ids[:, :seq]` with `seq` read from `Shape(token_type_ids)`, the mask is applied
/// after a Cast.
fn bert_like() -> Model {
    model(20, |g| {
        g.inputs.push(ids_input("input_ids"));
        g.inputs.push(ids_input("attention_mask"));
        g.inputs.push(ids_input("token_type_ids"));
        g.add_initializer(f32s("embeddings.word_embeddings.weight", &[10, 4], &table(10, 4, 0.0))).unwrap();
        g.add_initializer(f32s("embeddings.position_embeddings.weight", &[16, 4], &table(16, 4, 100.0))).unwrap();
        g.add_initializer(f32s("embeddings.token_type_embeddings.weight", &[2, 4], &table(2, 4, 1000.0))).unwrap();
        g.add_initializer(i64s("embeddings.position_ids", &[1, 16], &(0..16).collect::<Vec<_>>())).unwrap();
        g.add_initializer(i64s("val_0", &[1], &[0])).unwrap();
        g.add_initializer(i64s("val_1", &[1], &[1])).unwrap();
        g.add_initializer(i64s("val_2", &[1], &[2])).unwrap();
        add(
            g,
            node_with(
                "Shape",
                &["token_type_ids"],
                &["val_seq"],
                vec![Attribute::int("start", 1), Attribute::int("end", 2)],
            )
            .named("node_Shape_1"),
        );
        add(
            g,
            node("Slice", &["embeddings.position_ids", "val_0", "val_seq", "val_1", "val_1"], &["slice_1"])
                .named("node_slice_1"),
        );
        add(
            g,
            node("Gather", &["embeddings.word_embeddings.weight", "input_ids"], &["embedding"]).named("node_embedding"),
        );
        add(
            g,
            node("Gather", &["embeddings.token_type_embeddings.weight", "token_type_ids"], &["embedding_1"])
                .named("node_embedding_1"),
        );
        add(g, node("Add", &["embedding", "embedding_1"], &["add"]).named("node_add"));
        add(
            g,
            node("Gather", &["embeddings.position_embeddings.weight", "slice_1"], &["embedding_2"])
                .named("node_embedding_2"),
        );
        add(g, node("Add", &["add", "embedding_2"], &["add_1"]).named("node_add_1"));
        add(
            g,
            node_with("Cast", &["attention_mask"], &["_to_copy"], vec![Attribute::int("to", 1)]).named("node__to_copy"),
        );
        add(g, node("Unsqueeze", &["_to_copy", "val_2"], &["unsqueeze"]).named("node_unsqueeze"));
        add(g, node("Mul", &["add_1", "unsqueeze"], &["hidden"]).named("node_mul"));
        g.outputs.push(ValueInfo::tensor("hidden", DataType::Float, vec![sym("batch"), sym("seq"), Dim::Known(4)]));
        g.value_info.push(ValueInfo::tensor(
            "embedding",
            DataType::Float,
            vec![sym("batch"), sym("seq"), Dim::Known(4)],
        ));
        g.value_info.push(ValueInfo::tensor("slice_1", DataType::Int64, vec![Dim::Known(1), sym("Min(16, seq)")]));
        g.value_info.push(ValueInfo::tensor("val_seq", DataType::Int64, vec![Dim::Known(1)]));
    })
}

/// Llama-like: positions `Range(0, seq)` from `Shape(attention_mask)`, a head producing
/// `logits`.
fn llama_like() -> Model {
    model(20, |g| {
        g.inputs.push(ids_input("input_ids"));
        g.inputs.push(ids_input("attention_mask"));
        g.add_initializer(f32s("model.embed_tokens.weight", &[12, 4], &table(12, 4, 0.5))).unwrap();
        g.add_initializer(f32s("pos_table", &[16, 4], &table(16, 4, -50.0))).unwrap();
        g.add_initializer(f32s("val_head", &[4, 12], &[0.01; 48])).unwrap();
        g.add_initializer(i64s("val_5", &[], &[0])).unwrap();
        g.add_initializer(i64s("val_7", &[], &[1])).unwrap();
        add(
            g,
            node_with(
                "Shape",
                &["attention_mask"],
                &["val_2"],
                vec![Attribute::int("start", 1), Attribute::int("end", 2)],
            )
            .named("node_Shape_2"),
        );
        add(g, node("Squeeze", &["val_2"], &["sym_size"]).named("node_sym_size"));
        add(g, node("Range", &["val_5", "sym_size", "val_7"], &["arange"]).named("node_arange"));
        add(g, node("Gather", &["model.embed_tokens.weight", "input_ids"], &["embedding"]).named("node_embedding"));
        add(g, node("Gather", &["pos_table", "arange"], &["pos"]).named("node_pos"));
        add(g, node("Add", &["embedding", "pos"], &["h"]).named("node_add"));
        add(g, node("MatMul", &["h", "val_head"], &["logits"]).named("node_linear"));
        g.outputs.push(ValueInfo::tensor("logits", DataType::Float, vec![sym("batch"), sym("seq"), Dim::Known(12)]));
        g.value_info.push(ValueInfo::tensor("arange", DataType::Int64, vec![sym("seq")]));
    })
}

fn values(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).to_f32_lossy().unwrap()
}

fn declared(infos: &[ValueInfo], name: &str) -> String {
    infos.iter().find(|v| v.name == name).and_then(|v| v.ty.as_ref()).map(TypeInfo::to_string).unwrap_or_default()
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
fn bert_like_golden_dump() {
    let mut m = bert_like();
    let report = run("insert-prompt{tokens=2}", &mut m);
    assert_eq!(stat(&report, "prompt.tokens"), 2);
    assert_eq!(stat(&report, "prompt.params"), 8);
    assert_eq!(stat(&report, "prompt.inputs_extended"), 3);
    assert_eq!(stat(&report, "prompt.value_infos_updated"), 3);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %input_ids: i64[batch, seq]
  input %attention_mask: i64[batch, seq]
  input %token_type_ids: i64[batch, seq]
  init %embeddings.word_embeddings.weight: f32[10, 4]
  init %embeddings.position_embeddings.weight: f32[16, 4]
  init %embeddings.token_type_embeddings.weight: f32[2, 4]
  init %embeddings.position_ids: i64[1, 16]
  init %val_0: i64[1]
  init %val_1: i64[1]
  init %val_2: i64[1]
  init %prompt/tokens: i64[1]
  init %prompt_embeddings: f32[2, 4]
  init %prompt/prompt_dims: i64[2]
  init %prompt/slice_starts: i64[1]
  init %prompt/slice_ends: i64[1]
  init %prompt/slice_axes: i64[1]
  %prompt/batch = Shape(%input_ids) {start=0, end=1}  # prompt/batch/Shape
  %prompt/pad_shape = Concat(%prompt/batch, %prompt/tokens) {axis=0}  # prompt/pad_shape/Concat
  %prompt/input_ids.pad = ConstantOfShape(%prompt/pad_shape) {value=tensor i64[1]}  # prompt/input_ids.pad/ConstantOfShape
  %prompt/input_ids = Concat(%prompt/input_ids.pad, %input_ids) {axis=1}  # prompt/input_ids/Concat
  %embedding/base = Gather(%embeddings.word_embeddings.weight, %prompt/input_ids)  # node_embedding
  %prompt/attention_mask.pad = ConstantOfShape(%prompt/pad_shape) {value=tensor i64[1]}  # prompt/attention_mask.pad/ConstantOfShape
  %prompt/attention_mask = Concat(%prompt/attention_mask.pad, %attention_mask) {axis=1}  # prompt/attention_mask/Concat
  %_to_copy = Cast(%prompt/attention_mask) {to=1}  # node__to_copy
  %unsqueeze = Unsqueeze(%_to_copy, %val_2)  # node_unsqueeze
  %prompt/token_type_ids.pad = ConstantOfShape(%prompt/pad_shape) {value=tensor i64[1]}  # prompt/token_type_ids.pad/ConstantOfShape
  %prompt/token_type_ids = Concat(%prompt/token_type_ids.pad, %token_type_ids) {axis=1}  # prompt/token_type_ids/Concat
  %val_seq = Shape(%prompt/token_type_ids) {start=1, end=2}  # node_Shape_1
  %slice_1 = Slice(%embeddings.position_ids, %val_0, %val_seq, %val_1, %val_1)  # node_slice_1
  %embedding_1 = Gather(%embeddings.token_type_embeddings.weight, %prompt/token_type_ids)  # node_embedding_1
  %embedding_2 = Gather(%embeddings.position_embeddings.weight, %slice_1)  # node_embedding_2
  %prompt/prompt_shape = Concat(%prompt/batch, %prompt/prompt_dims) {axis=0}  # prompt/prompt_shape/Concat
  %prompt/prompt = Expand(%prompt_embeddings, %prompt/prompt_shape)  # prompt/prompt/Expand
  %prompt/embeddings_rest = Slice(%embedding/base, %prompt/slice_starts, %prompt/slice_ends, %prompt/slice_axes)  # prompt/embeddings_rest/Slice
  %embedding = Concat(%prompt/prompt, %prompt/embeddings_rest) {axis=1}  # prompt/embeddings/Concat
  %add = Add(%embedding, %embedding_1)  # node_add
  %add_1 = Add(%add, %embedding_2)  # node_add_1
  %hidden = Mul(%add_1, %unsqueeze)  # node_mul
  output %hidden: f32[batch, seq + 2, 4]
}
"#,
    );
    // Inputs are unchanged; every reader of them is one of the new nodes.
    for input in ["input_ids", "attention_mask", "token_type_ids"] {
        for u in m.graph.uses(input) {
            assert_eq!(m.graph.node(u.node).metadata.get("adaptc.pass"), Some("insert-prompt"), "{input}");
        }
    }
    // Pads: zeros for ids and token types, ones for the mask.
    let pad = |name: &str| {
        let (id, _) = m.graph.producer(name).unwrap();
        m.graph.node(id).attr("value").unwrap().as_tensor().unwrap().to_i64().unwrap()
    };
    assert_eq!(pad("prompt/input_ids.pad"), vec![0]);
    assert_eq!(pad("prompt/token_type_ids.pad"), vec![0]);
    assert_eq!(pad("prompt/attention_mask.pad"), vec![1]);
    assert_eq!(m.graph.initializer("prompt/slice_starts").unwrap().to_i64().unwrap(), vec![2]);
    assert_eq!(m.graph.initializer("prompt/prompt_dims").unwrap().to_i64().unwrap(), vec![2, 4]);

    // init=random: U(-0.5, 0.5).
    let p = values(&m, "prompt_embeddings");
    assert!(p.iter().all(|v| (-0.5..0.5).contains(v)) && p.iter().any(|&v| v != 0.0), "{p:?}");

    // Declared shapes downstream of the lengthened inputs cover p + T positions.
    assert_eq!(declared(&m.graph.value_info, "embedding"), "f32[batch, seq + 2, 4]");
    assert_eq!(declared(&m.graph.value_info, "slice_1"), "i64[1, Min(16, (seq + 2))]");
    assert_eq!(declared(&m.graph.value_info, "val_seq"), "i64[1]");
    assert_eq!(declared(&m.graph.inputs, "input_ids"), "i64[batch, seq]");

    let state = AdapterState::load(&m).unwrap();
    assert_eq!(state.trainable.iter().cloned().collect::<Vec<_>>(), strings(&["prompt_embeddings"]));
    let rec = &state.adapters[0];
    assert_eq!(rec.method, Method::Prompt);
    assert_eq!(rec.params["prompt_embeddings"], "prompt_embeddings");
    assert_eq!((rec.output.as_str(), rec.base_output.as_str()), ("embedding", "embedding/base"));
    assert_eq!(rec.target_node, "");
    assert_eq!(rec.extra["embedding_node"], "node_embedding");
    assert_eq!(rec.extra["embedding_module"], "embeddings.word_embeddings");
    assert_eq!(rec.extra["extended"], serde_json::json!(["input_ids", "attention_mask", "token_type_ids"]));
    assert_eq!(rec.extra["mergeable"], false);
    assert_eq!(rec.extra["seq_symbol"], "seq");

    // A second prompt is refused.
    let err = run_err("insert-prompt{tokens=2}", &mut m);
    assert!(err.contains("already has a soft prompt"), "{err}");
}

#[test]
fn llama_like_vocab_init_and_sliced_logits() {
    let mut m = llama_like();
    let report = run("insert-prompt{tokens=3 init=vocab seed=5 slice=logits}", &mut m);
    assert_eq!(stat(&report, "prompt.inputs_extended"), 2, "token_type_ids is absent and skipped");
    assert_eq!(stat(&report, "prompt.outputs_sliced"), 1);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %input_ids: i64[batch, seq]
  input %attention_mask: i64[batch, seq]
  init %model.embed_tokens.weight: f32[12, 4]
  init %pos_table: f32[16, 4]
  init %val_head: f32[4, 12]
  init %val_5: i64[]
  init %val_7: i64[]
  init %prompt/tokens: i64[1]
  init %prompt_embeddings: f32[3, 4]
  init %prompt/prompt_dims: i64[2]
  init %prompt/slice_starts: i64[1]
  init %prompt/slice_ends: i64[1]
  init %prompt/slice_axes: i64[1]
  %prompt/batch = Shape(%input_ids) {start=0, end=1}  # prompt/batch/Shape
  %prompt/pad_shape = Concat(%prompt/batch, %prompt/tokens) {axis=0}  # prompt/pad_shape/Concat
  %prompt/input_ids.pad = ConstantOfShape(%prompt/pad_shape) {value=tensor i64[1]}  # prompt/input_ids.pad/ConstantOfShape
  %prompt/input_ids = Concat(%prompt/input_ids.pad, %input_ids) {axis=1}  # prompt/input_ids/Concat
  %embedding/base = Gather(%model.embed_tokens.weight, %prompt/input_ids)  # node_embedding
  %prompt/attention_mask.pad = ConstantOfShape(%prompt/pad_shape) {value=tensor i64[1]}  # prompt/attention_mask.pad/ConstantOfShape
  %prompt/attention_mask = Concat(%prompt/attention_mask.pad, %attention_mask) {axis=1}  # prompt/attention_mask/Concat
  %val_2 = Shape(%prompt/attention_mask) {start=1, end=2}  # node_Shape_2
  %sym_size = Squeeze(%val_2)  # node_sym_size
  %arange = Range(%val_5, %sym_size, %val_7)  # node_arange
  %pos = Gather(%pos_table, %arange)  # node_pos
  %prompt/prompt_shape = Concat(%prompt/batch, %prompt/prompt_dims) {axis=0}  # prompt/prompt_shape/Concat
  %prompt/prompt = Expand(%prompt_embeddings, %prompt/prompt_shape)  # prompt/prompt/Expand
  %prompt/embeddings_rest = Slice(%embedding/base, %prompt/slice_starts, %prompt/slice_ends, %prompt/slice_axes)  # prompt/embeddings_rest/Slice
  %embedding = Concat(%prompt/prompt, %prompt/embeddings_rest) {axis=1}  # prompt/embeddings/Concat
  %h = Add(%embedding, %pos)  # node_add
  %logits/base = MatMul(%h, %val_head)  # node_linear
  %logits = Slice(%logits/base, %prompt/slice_starts, %prompt/slice_ends, %prompt/slice_axes)  # prompt/logits.sliced/Slice
  output %logits: f32[batch, seq, 12]
}
"#,
    );
    // init=vocab: the prompt rows are table rows, for ids recorded in the adapter record.
    let rec = AdapterState::load(&m).unwrap().adapters.remove(0);
    let ids: Vec<u64> = rec.extra["init_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let table = values(&m, "model.embed_tokens.weight");
    let expect: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * 4..i as usize * 4 + 4].to_vec()).collect();
    assert_eq!(values(&m, "prompt_embeddings"), expect);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "distinct ids while the vocabulary allows");
    assert_eq!(declared(&m.graph.value_info, "arange"), "i64[seq + 3]");
    assert_eq!(rec.extra["sliced"], serde_json::json!(["logits"]));
}

#[test]
fn zero_tokens_is_a_no_op() {
    let mut m = bert_like();
    let before = adaptc_ir::dump(&m);
    let report = run("insert-prompt{tokens=0}", &mut m);
    assert!(!report.changed());
    assert_eq!(adaptc_ir::dump(&m), before);
    assert!(AdapterState::load(&m).unwrap().adapters.is_empty());
}

#[test]
fn negative_cases_name_the_reason() {
    let mut m = bert_like();
    let err = run_err("insert-prompt{input=ids}", &mut m);
    assert!(err.contains("the graph has no input `ids`"), "{err}");
    assert!(err.contains("input_ids, attention_mask, token_type_ids"), "lists the inputs: {err}");
    let err = run_err("insert-prompt{mask=mask}", &mut m);
    assert!(err.contains("no input `mask` (option `mask`)"), "{err}");
    let err = run_err("insert-prompt{slice=logits}", &mut m);
    assert!(err.contains("`logits` is not a graph output"), "{err}");
    let err = run_err("insert-prompt{extend=input_ids}", &mut m);
    assert!(err.contains("already the `input` or `mask`"), "{err}");

    // The ids only reach the table through an Add: no embedding lookup.
    let mut g = model(20, |g| {
        g.inputs.push(ids_input("input_ids"));
        g.add_initializer(f32s("table", &[10, 4], &table(10, 4, 0.0))).unwrap();
        g.add_initializer(i64s("one", &[], &[1])).unwrap();
        add(g, node("Add", &["input_ids", "one"], &["shifted"]));
        add(g, node("Gather", &["table", "shifted"], &["e"]));
        g.outputs.push(output("e"));
    });
    let err = run_err("insert-prompt", &mut g);
    assert!(err.contains("no token-embedding lookup found"), "{err}");

    // A fixed sequence length cannot be lengthened.
    let mut f = model(20, |g| {
        g.inputs.push(ValueInfo::tensor("input_ids", DataType::Int64, vec![Dim::Known(1), Dim::Known(8)]));
        g.add_initializer(f32s("table", &[10, 4], &table(10, 4, 0.0))).unwrap();
        add(g, node("Gather", &["table", "input_ids"], &["e"]));
        g.outputs.push(output("e"));
    });
    let err = run_err("insert-prompt", &mut f);
    assert!(err.contains("fixed sequence length 8"), "{err}");

    // Old opsets are refused.
    let mut old = bert_like();
    old.set_opset("", 12);
    let err = run_err("insert-prompt", &mut old);
    assert!(err.contains("opset ≥ 13"), "{err}");
}

#[test]
fn cast_indices_and_old_shape_form() {
    // Indices through a Cast; opset 14 builds the batch size with Shape + Slice.
    let mut m = model(14, |g| {
        g.inputs.push(ValueInfo::tensor("input_ids", DataType::Int32, vec![sym("b"), sym("t")]));
        g.add_initializer(f32s("table", &[10, 4], &table(10, 4, 0.0))).unwrap();
        add(g, node_with("Cast", &["input_ids"], &["ids64"], vec![Attribute::int("to", 7)]));
        add(g, node("Gather", &["table", "ids64"], &["e"]));
        g.outputs.push(ValueInfo::tensor("e", DataType::Float, vec![sym("b"), sym("t"), Dim::Known(4)]));
    });
    run("insert-prompt{tokens=1}", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
    let (batch, _) = m.graph.producer("prompt/batch").unwrap();
    assert!(m.graph.node(batch).op().is("Slice"));
    let (pad, _) = m.graph.producer("prompt/input_ids.pad").unwrap();
    let value = m.graph.node(pad).attr("value").unwrap().as_tensor().unwrap();
    assert_eq!(value.dtype(), DataType::Int32, "pads take the input's type");
    assert_eq!(declared(&m.graph.outputs, "e"), "f32[b, t + 1, 4]");
}

// ----- fixtures ------------------------------------------------------------------------------

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

#[test]
fn bert6_prompt() {
    let mut m = adaptc_ir::onnx::load(&fixture("bert6.onnx")).unwrap();
    let inputs_before = m.graph.inputs.clone();
    let report = run("insert-prompt{tokens=20 init=vocab}", &mut m);
    assert_eq!(stat(&report, "prompt.params"), 20 * 64);
    assert_eq!(stat(&report, "prompt.inputs_extended"), 3);
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(m.graph.inputs, inputs_before, "inputs unchanged");
    let names: Vec<&str> = m.graph.inputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);

    // The word-embedding lookup's value is now Concat(Expand(P), Slice(E)).
    let (concat, _) = m.graph.producer("embedding").unwrap();
    let concat = m.graph.node(concat);
    assert!(concat.op().is("Concat"));
    assert_eq!(concat.attr_int("axis", 0), 1);
    let op_of = |v: &str| m.graph.node(m.graph.producer(v).unwrap().0).op().op_type.clone();
    assert_eq!(op_of(concat.input(0).unwrap()), "Expand");
    assert_eq!(op_of(concat.input(1).unwrap()), "Slice");
    let (gather, _) = m.graph.producer("embedding/base").unwrap();
    assert_eq!(m.graph.node(gather).name, "node_embedding");
    assert_eq!(m.graph.node(gather).input(1), Some("prompt/input_ids"));
    for input in ["input_ids", "attention_mask", "token_type_ids"] {
        assert!(m
            .graph
            .uses(input)
            .iter()
            .all(|u| m.graph.node(u.node).metadata.get("adaptc.pass") == Some("insert-prompt")));
    }
    assert_eq!(declared(&m.graph.outputs, "last_hidden_state"), "f32[batch, seq + 20, 64]");
    assert_eq!(declared(&m.graph.outputs, "pooler_output"), "f32[batch, 64]");
    assert!(stat(&report, "prompt.value_infos_updated") > 100);

    let dir = std::env::temp_dir().join(format!("adaptc-prompt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bert6_prompt.onnx");
    adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
    let back = adaptc_ir::onnx::load(&path).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(AdapterState::load(&back).unwrap(), AdapterState::load(&m).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama4_prompt_with_sliced_logits() {
    let mut m = adaptc_ir::onnx::load(&fixture("llama4/model.onnx")).unwrap();
    let report = run("insert-prompt{tokens=4 slice=logits}", &mut m);
    assert_eq!(stat(&report, "prompt.inputs_extended"), 2);
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(declared(&m.graph.outputs, "logits"), "f32[batch, seq, 1000]");
    let (slice, _) = m.graph.producer("logits").unwrap();
    assert!(m.graph.node(slice).op().is("Slice"));
}
