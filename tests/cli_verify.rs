//! `adaptc verify` and `adaptc rewrite --verify`: the numerical check through tract, its
//! table, its exit status, and the errors for models it cannot compare.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptc_ir::{onnx, DataType, Dim, Model, Node, OpKey, Tensor, TypeInfo, ValueInfo};
use tract_onnx::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn bert6() -> PathBuf {
    fixtures().join("models/bert6.onnx")
}

fn llama4() -> PathBuf {
    fixtures().join("models/llama4/model.onnx")
}

fn adaptc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptc")).args(args).output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn verify(a: &Path, b: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify", a.to_str().unwrap(), b.to_str().unwrap()];
    args.extend_from_slice(extra);
    adaptc(&args)
}

/// The table row of `output`: its whitespace-separated fields.
fn row<'a>(stdout: &'a str, output: &str) -> Vec<&'a str> {
    let line = stdout.lines().find(|l| l.starts_with(&format!("{output} "))).unwrap_or_else(|| panic!("{stdout}"));
    line.split_whitespace().collect()
}

/// `(max |A|, max abs diff, max rel diff)` of an output's row.
fn numbers(stdout: &str, output: &str) -> (f64, f64, f64) {
    let r = row(stdout, output);
    // output, shape (may contain spaces: "[2, 16, 64]"), then the three numbers and the result.
    let i = r.iter().position(|f| f.ends_with(']')).unwrap() + 1;
    (r[i].parse().unwrap(), r[i + 1].parse().unwrap(), r[i + 2].parse().unwrap())
}

fn save(model: &Model, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    onnx::save(model, &path, &Default::default()).unwrap();
    path
}

#[test]
fn a_model_against_itself_differs_by_nothing() {
    let out = verify(&bert6(), &bert6(), &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("input_ids i64[2, 16]: token ids in [0, 1000) (embedding `embeddings.word_embeddings.weight`)")
    );
    assert!(stdout.contains("attention_mask i64[2, 16]: mask: ones with trailing zeros"), "{stdout}");
    assert!(stdout.contains("token_type_ids i64[2, 16]: segment ids"), "{stdout}");
    for output in ["last_hidden_state", "pooler_output"] {
        let (scale, abs, rel) = numbers(&stdout, output);
        assert!(scale > 0.1, "{stdout}");
        assert_eq!((abs, rel), (0.0, 0.0), "{stdout}");
        assert_eq!(row(&stdout, output).last(), Some(&"ok"));
    }
    assert!(row(&stdout, "last_hidden_state").join(" ").contains("[2, 16, 64]"), "{stdout}");
    assert!(stdout.contains("all 2 outputs within rtol 1e-4, atol 1e-5"), "{stdout}");

    // Other sizes, seeds and several runs.
    let out = verify(&bert6(), &bert6(), &["--dims", "batch=3,seq=7", "--seed", "11", "--runs", "2"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(tract; seed 11, 2 runs)") && stdout.contains("[3, 7, 64]"), "{stdout}");
}

#[test]
fn a_model_with_external_data_against_itself() {
    let out = verify(&llama4(), &llama4(), &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(embedding `model.embed_tokens.weight`)"), "{stdout}");
    let (scale, abs, _) = numbers(&stdout, "logits");
    assert!(scale > 0.0 && abs == 0.0, "{stdout}");
    assert!(row(&stdout, "logits").join(" ").contains("[2, 16, 1000]"), "{stdout}");
}

#[test]
fn a_perturbed_weight_fails_with_the_difference_in_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = onnx::load(&bert6()).unwrap();
    let name = "encoder.layer.5.output.LayerNorm.bias";
    let t = m.graph.initializer(name).unwrap();
    let mut values = t.to_f32().unwrap();
    values[3] += 0.5;
    let perturbed = Tensor::from_f32(name, t.dims().to_vec(), &values).unwrap();
    *m.graph.initializer_mut(name).unwrap() = perturbed;
    let b = save(&m, tmp.path(), "perturbed.onnx");

    let out = verify(&bert6(), &b, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let (_, abs, rel) = numbers(&stdout, "last_hidden_state");
    assert!((abs - 0.5).abs() < 0.05, "the bias moves one feature by 0.5: {stdout}");
    assert!(rel > 1e-2, "{stdout}");
    assert_eq!(row(&stdout, "last_hidden_state").last(), Some(&"FAIL"), "{stdout}");
    assert!(stdout.contains("outputs beyond rtol 1e-4, atol 1e-5"), "{stdout}");
    assert!(stderr.contains("differ beyond tolerance"), "{stderr}");
    assert!(stderr.contains("`last_hidden_state` (max abs diff"), "{stderr}");

    // A loose enough tolerance accepts it.
    let out = verify(&bert6(), &b, &["--atol", "1", "--rtol", "0"]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn a_cleaned_up_model_matches_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, name) in [(bert6(), "bert.onnx"), (llama4(), "llama.onnx")] {
        let out_path = tmp.path().join(name);
        let (m, o) = (model.to_str().unwrap(), out_path.to_str().unwrap());
        let out = adaptc(&["rewrite", m, "-o", o, "-p", "fold-constants,cse,dce"]);
        assert!(out.status.success(), "{}", text(&out).1);
        let out = verify(&model, &out_path, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
    }
}

#[test]
fn rewrite_verify_prints_the_table_and_keeps_a_failing_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("clean.onnx");
    let o = out_path.to_str().unwrap();
    let out = adaptc(&["rewrite", bert6().to_str().unwrap(), "-o", o, "-p", "fold-constants,cse,dce", "--verify"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("all 2 outputs within rtol 1e-4, atol 1e-5"), "{stderr}");
    assert!(numbers(&stderr, "pooler_output").1 == 0.0, "{stderr}");

    // Specialising the output to seq=8 makes it take other inputs than the original at seq=16:
    // the check fails, the output stays.
    let bad = tmp.path().join("seq8.onnx");
    let b = bad.to_str().unwrap();
    let out =
        adaptc(&["rewrite", bert6().to_str().unwrap(), "-o", b, "-p", "specialize-shapes{dims=seq:8}", "--verify"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("--verify: {b} was written and is kept")), "{stderr}");
    assert!(stderr.contains("input `input_ids` has shape [2, 16] in A but [2, 8] in B"), "{stderr}");
    assert!(bad.is_file());

    // Bad check options fail before anything is written.
    let never = tmp.path().join("never.onnx");
    let out =
        adaptc(&["rewrite", bert6().to_str().unwrap(), "-o", never.to_str().unwrap(), "--verify", "--dims", "seq"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("--dims: `seq` is not `symbol:value`"), "{}", text(&out).1);
    assert!(!never.exists());
}

#[test]
fn inputs_with_defaults_are_not_fed_and_need_not_match() {
    // B exposes a weight as an optional input (as `lora-as-inputs` does): it keeps its default.
    let tmp = tempfile::tempdir().unwrap();
    let mut m = onnx::load(&bert6()).unwrap();
    let name = "encoder.layer.0.attention.self.query.bias";
    m.graph.inputs.push(ValueInfo::tensor(name, DataType::Float, vec![Dim::Known(64)]));
    let b = save(&m, tmp.path(), "with_optional_input.onnx");
    let out = verify(&bert6(), &b, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains(&format!("  {name} ")), "{stdout}");
}

#[test]
fn models_that_cannot_be_compared_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = tmp.path().join("missing.onnx");
    let out = verify(&bert6(), &missing, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains(&format!("B: {} does not exist", missing.display())), "{}", text(&out).1);

    // Different inputs: BERT takes token_type_ids, Llama does not.
    let out = verify(&bert6(), &llama4(), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stderr.contains("the models take different inputs: only A takes token_type_ids"), "{stderr}");

    // Same names, other element type.
    let mut m = onnx::load(&bert6()).unwrap();
    let dims = m.graph.inputs[0].ty.as_ref().unwrap().dims();
    m.graph.inputs[0].ty = Some(TypeInfo::tensor(DataType::Int32, dims));
    let b = save(&m, tmp.path(), "int32_ids.onnx");
    let out = verify(&bert6(), &b, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("input `input_ids` is i64 in A but i32 in B"), "{}", text(&out).1);

    // A symbol without a size.
    let out = verify(&bert6(), &bert6(), &["--dims", "batch=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out)
        .1
        .contains("input `input_ids` has the symbolic dimension `seq`; give its size with --dims seq=N"));

    // An op tract does not have: named, with its node.
    let mut g = adaptc_ir::Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2)]));
    g.add_node(Node::new(OpKey::new("com.example", "Frobnicate"), vec!["x".into()], vec!["y".into()]).named("frob"))
        .unwrap();
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Known(2)]));
    let mut custom = Model::new(g, 17);
    custom.set_opset("com.example", 1);
    let c = save(&custom, tmp.path(), "custom.onnx");
    let out = verify(&c, &c, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out).1;
    assert!(stderr.contains("tract cannot run op `com.example::Frobnicate` (node `frob`)"), "{stderr}");
}

// ----- the preparation against onnxruntime's reference outputs -----------------------------

/// A little-endian, C-order `.npy` array: (shape, raw bytes, dtype descr).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap().to_string();
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (shape, bytes[start + header_len..].to_vec(), descr)
}

/// The preparation `verify` applies (the same pipeline text), then tract with onnxruntime's
/// reference inputs fed as real inputs (not baked in): the outputs match onnxruntime's.
fn prepared_matches_onnxruntime(model: &Path, reference: &str) {
    let refdir = fixtures().join("reference").join(reference);
    let mut m = onnx::load(model).unwrap();
    let mut feeds = TVec::<TValue>::new();
    let mut shapes = Vec::new();
    for v in &m.graph.inputs {
        let (shape, data, descr) = read_npy(&refdir.join(format!("{}.npy", v.name)));
        assert_eq!(descr, "<i8");
        let values: Vec<i64> = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        shapes.push(format!("{}:{}", v.name, shape.iter().map(ToString::to_string).collect::<Vec<_>>().join("x")));
        feeds.push(tract_onnx::prelude::Tensor::from_shape(&shape, &values).unwrap().into());
    }
    let pipeline = format!(
        "specialize-shapes{{inputs={}}},fold-constants,decompose{{ops=Gelu,GatherND}},fold-constants,dce",
        shapes.join(",")
    );
    let manager = adaptc_passes::PassManager::new(&adaptc_passes::Registry::builtin(), &pipeline).unwrap();
    manager.run(&mut m).unwrap();
    for op in ["Gelu", "GatherND", "Shape"] {
        assert!(m.graph.nodes().all(|(_, n)| !n.op().is(op)), "{op} left in {}", model.display());
    }
    m.graph.value_info.clear();
    for o in &mut m.graph.outputs {
        let dtype = o.ty.as_ref().and_then(|t| t.dtype()).unwrap();
        o.ty = Some(TypeInfo::tensor(dtype, None));
    }
    let bytes = onnx::encode(&m).unwrap();
    let mut inference = tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).unwrap();
    for (i, t) in feeds.iter().enumerate() {
        inference.set_input_fact(i, InferenceFact::dt_shape(i64::datum_type(), t.shape())).unwrap();
    }
    let plan = inference.into_optimized().unwrap().into_runnable().unwrap();
    let got = plan.run(feeds).unwrap();
    for (o, g) in m.graph.outputs.iter().zip(got) {
        let (_, data, _) = read_npy(&refdir.join(format!("{}.npy", o.name)));
        let want: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let g: Vec<f32> = g.to_array_view::<f32>().unwrap().iter().copied().collect();
        assert_eq!(g.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = want.iter().zip(&g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale, "{} `{}`: max abs diff {diff} (max |ref| {scale})", model.display(), o.name);
    }
}

#[test]
fn the_preparation_keeps_onnxruntime_outputs() {
    prepared_matches_onnxruntime(&bert6(), "bert6");
    prepared_matches_onnxruntime(&llama4(), "llama4");
}
