//! `adaptc export --peft` and `adaptc import-peft` end to end on the bert6 fixture: the files
//! PEFT expects, adapters surviving the round trip bit for bit, adapters saved by PEFT itself
//! (tests/fixtures/peft, made by scripts/crosscheck/make_peft_fixtures.py) reproducing PEFT's
//! outputs when run by tract, and errors that name what is wrong and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptc_ir::{onnx, Model, Tensor, TypeInfo};
use adaptc_passes::adapters::AdapterState;
use adaptc_passes::peft::{LoraAdapterConfig, SafeTensors, TargetModules};
use adaptc_passes::{PassManager, Registry};
use tract_onnx::prelude::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn bert6() -> PathBuf {
    repo().join("tests/fixtures/models/bert6.onnx")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptc")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "adaptc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "adaptc {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// bert6 with LoRA on query and value (random init, so B ≠ 0).
fn adapted_bert6(dir: &Path, pipeline: &str) -> PathBuf {
    let out = dir.join("adapted.onnx");
    ok(&["rewrite", s(&bert6()), "-o", s(&out), "-p", pipeline]);
    out
}

#[test]
fn export_writes_what_peft_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let adapted = adapted_bert6(tmp.path(), "insert-lora{rank=4 alpha=8 targets=query,value init=random seed=5}");
    let dir = tmp.path().join("adapter");
    let msg =
        ok(&["export", s(&adapted), "--peft", s(&dir), "--base-model", "bert6", "--task-type", "FEATURE_EXTRACTION"]);
    assert!(msg.contains("12 modules, 24 tensors; r=4 lora_alpha=8"), "{msg}");

    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["adapter_config.json", "adapter_model.safetensors"]);

    let st = SafeTensors::read(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(st.metadata.get("format").map(String::as_str), Some("pt"));
    let names: Vec<&str> = st.names().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "one dtype: tensors in name order, as the Python library writes");
    assert_eq!(names.len(), 24);
    for layer in 0..6 {
        for m in ["query", "value"] {
            let key = format!("base_model.model.encoder.layer.{layer}.attention.self.{m}");
            assert_eq!(st.get(&format!("{key}.lora_A.weight")).unwrap().shape, &[4, 64]);
            assert_eq!(st.get(&format!("{key}.lora_B.weight")).unwrap().shape, &[64, 4]);
        }
    }
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 8);
    assert_eq!(json["target_modules"], serde_json::json!(["query", "value"]));
    assert_eq!(json["use_rslora"], false);
    assert_eq!(json["use_dora"], false);
    assert_eq!(json["fan_in_fan_out"], false);
    assert_eq!(json["bias"], "none");
    assert_eq!(json["task_type"], "FEATURE_EXTRACTION");
    assert_eq!(json["base_model_name_or_path"], "bert6");
    assert_eq!(json["rank_pattern"], serde_json::json!({}));

    // The values are the model's initializers.
    let model = onnx::load(&adapted).unwrap();
    let key = "encoder.layer.2.attention.self.value.lora_B.weight";
    assert_eq!(
        model.graph.initializer(key).unwrap().bytes().unwrap().as_ref(),
        st.get(&format!("base_model.model.{key}")).unwrap().data
    );
}

#[test]
fn import_of_an_exported_adapter_gives_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    // Mixed ranks and an rsLoRA group: rank_pattern/alpha_pattern carry them.
    let adapted = adapted_bert6(
        tmp.path(),
        "insert-lora{rank=8 alpha=16 targets=query init=random seed=1},\
         insert-lora{rank=2 alpha=4 targets=dense exclude=pooler.dense init=random seed=2 rslora=true}",
    );
    let dir = tmp.path().join("adapter");
    let msg = ok(&["export", s(&adapted), "--peft", s(&dir)]);
    assert!(msg.contains("rank_pattern for"), "{msg}");
    let cfg = LoraAdapterConfig::parse(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg.r, 2, "the most common rank (18 dense layers vs 6 queries)");
    assert!(cfg.use_rslora);
    match &cfg.target_modules {
        Some(TargetModules::List(l)) => {
            // `output.dense` covers `attention.output.dense` too; the pooler's `dense` is left alone.
            assert_eq!(l, &["intermediate.dense", "output.dense", "query"]);
        }
        other => panic!("{other:?}"),
    }

    let back = tmp.path().join("back.onnx");
    let msg = ok(&["import-peft", s(&bert6()), "--adapter", s(&dir), "-o", s(&back)]);
    assert!(msg.contains("imported 24 modules"), "{msg}");
    let (a, b) = (onnx::load(&adapted).unwrap(), onnx::load(&back).unwrap());
    let (sa, sb) = (AdapterState::load(&a).unwrap(), AdapterState::load(&b).unwrap());
    assert_eq!(sa.adapters.len(), 24);
    assert_eq!(sb.adapters.len(), 24);
    for ra in &sa.adapters {
        let rb = sb.adapters.iter().find(|r| r.module == ra.module).unwrap();
        assert_eq!(ra.rank, rb.rank, "{}", ra.module);
        assert!((ra.scale - rb.scale).abs() <= 1e-6 * ra.scale.abs(), "{}: {} vs {}", ra.module, ra.scale, rb.scale);
        for role in ["lora_A", "lora_B"] {
            let (ta, tb) =
                (a.graph.initializer(&ra.params[role]).unwrap(), b.graph.initializer(&rb.params[role]).unwrap());
            assert_eq!(ta.dims(), tb.dims());
            assert_eq!(ta.bytes().unwrap(), tb.bytes().unwrap(), "{} {role}", ra.module);
        }
    }
    assert_eq!(a.graph.num_nodes(), b.graph.num_nodes());
    assert_eq!(sa.trainable, sb.trainable);
}

// ------------------------------------------------------------------------------------------
// Adapters saved by PEFT, checked against PEFT's own outputs (tract runs the ONNX side).
// ------------------------------------------------------------------------------------------

fn npy(path: &Path) -> (Vec<u64>, Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'fortran_order': False"));
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap().to_string();
    let dims = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = dims.split(',').map(str::trim).filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect();
    (shape, bytes[start + len..].to_vec(), descr)
}

fn npy_f32(path: &Path) -> Vec<f32> {
    let (_, data, descr) = npy(path);
    assert_eq!(descr, "<f4");
    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Runs `model` in tract on bert6's reference inputs: the inputs become constants, shapes
/// fold, Gelu is decomposed (tract 0.22 lacks it) and the exporter's symbolic value types are
/// dropped.
fn run_tract_on_reference(model: &Path) -> Vec<Vec<f32>> {
    let refdir = repo().join("tests/fixtures/reference/bert6");
    let mut m: Model = onnx::load(model).unwrap();
    let inputs: Vec<String> = m.graph.inputs.iter().map(|v| v.name.clone()).collect();
    m.graph.inputs.clear();
    for name in &inputs {
        let (shape, data, descr) = npy(&refdir.join(format!("{name}.npy")));
        assert_eq!(descr, "<i8");
        let values: Vec<i64> = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        m.graph.add_initializer(Tensor::from_i64(name.clone(), shape, &values).unwrap()).unwrap();
    }
    PassManager::new(&Registry::builtin(), "fold-constants,decompose{ops=Gelu},fold-constants,dce")
        .unwrap()
        .run(&mut m)
        .unwrap();
    m.graph.value_info.clear();
    for o in &mut m.graph.outputs {
        let dtype = o.ty.as_ref().and_then(|t| t.dtype()).unwrap();
        o.ty = Some(TypeInfo::tensor(dtype, None));
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain.onnx");
    onnx::save(&m, &plain, &Default::default()).unwrap();
    let runnable = tract_onnx::onnx()
        .model_for_path(&plain)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot run {}: {e:?}", model.display()));
    let out = runnable.run(tvec![]).unwrap();
    out.iter().map(|t| t.to_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}

fn max_rel_diff(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    want.iter().zip(got).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_against_peft(fixture: &str, modules: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = repo().join("tests/fixtures/peft").join(fixture);
    let out = tmp.path().join("imported.onnx");
    let msg = ok(&["import-peft", s(&bert6()), "--adapter", s(&dir), "-o", s(&out)]);
    assert!(msg.contains(&format!("imported {modules} modules")), "{msg}");
    let got = run_tract_on_reference(&out);
    for (i, name) in ["last_hidden_state", "pooler_output"].iter().enumerate() {
        let want = npy_f32(&dir.join(format!("{name}.npy")));
        let d = max_rel_diff(&want, &got[i]);
        assert!(d <= 1e-4, "{fixture} `{name}`: max relative difference {d} to PEFT");
    }
    // And the base model's outputs are really different (the adapter does something).
    let base = npy_f32(&repo().join("tests/fixtures/reference/bert6/last_hidden_state.npy"));
    assert!(max_rel_diff(&base, &got[0]) > 1e-3);
}

#[test]
fn peft_rslora_adapter_reproduces_peft_outputs() {
    // r=4, alpha=8, use_rslora, target_modules query,key,dense (the pooler's Gemm included).
    check_against_peft("bert6-rslora", 31);
}

#[test]
fn peft_dora_adapter_with_patterns_reproduces_peft_outputs() {
    // DoRA r=2 alpha=4 on query,value; rank_pattern {layer 1 query: 4}, alpha_pattern {value: 2}.
    check_against_peft("bert6-dora", 12);
}

// ------------------------------------------------------------------------------------------
// Errors: what is wrong is named, nothing is written.
// ------------------------------------------------------------------------------------------

#[test]
fn import_onto_a_model_without_those_modules_lists_them_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let llama = repo().join("tests/fixtures/models/llama4/model.onnx");
    let dir = repo().join("tests/fixtures/peft/bert6-rslora");
    let e = fails(&["import-peft", s(&llama), "--adapter", s(&dir), "-o", s(&out)]);
    assert!(e.contains("31 of 31 adapter modules have no linear layer"), "{e}");
    assert!(e.contains("not found: `encoder.layer.0.attention.output.dense`, "), "{e}");
    assert!(e.contains("the model's linear layers: `lm_head`"), "{e}");
    assert!(!out.exists() && !tmp.path().join("out.onnx.data").exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left behind");
}

#[test]
fn shape_mismatch_is_an_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // An adapter exported from bert6 does not fit a model whose layers are narrower: take the
    // PEFT fixture's config but claim r = 3 for the queries.
    let dir = tmp.path().join("adapter");
    std::fs::create_dir(&dir).unwrap();
    let src = repo().join("tests/fixtures/peft/bert6-rslora");
    std::fs::copy(src.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json"))
        .unwrap()
        .replace("\"rank_pattern\": {}", "\"rank_pattern\": {\"query\": 3}");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let out = tmp.path().join("out.onnx");
    let e = fails(&["import-peft", s(&bert6()), "--adapter", s(&dir), "-o", s(&out)]);
    assert!(e.contains("6 of 31 modules do not fit the model"), "{e}");
    assert!(
        e.contains("`encoder.layer.0.attention.self.query` (graph layer 64 → 64, config r = 3): lora_A is [4, 64]"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn export_without_lora_is_an_error_and_creates_no_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    let e = fails(&["export", s(&bert6()), "--peft", s(&dir)]);
    assert!(e.contains("no LoRA or DoRA adapters to export"), "{e}");
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temporary folder left");
    let e = fails(&["export", s(&bert6())]);
    assert!(e.contains("--peft") && e.contains("--merged"), "{e}");
}

#[test]
fn export_into_an_existing_folder_replaces_only_the_adapter_files() {
    let tmp = tempfile::tempdir().unwrap();
    let adapted = adapted_bert6(tmp.path(), "insert-lora{rank=2 targets=value}");
    let dir = tmp.path().join("adapter");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("README.md"), "mine").unwrap();
    std::fs::write(dir.join("adapter_config.json"), "old").unwrap();
    ok(&["export", s(&adapted), "--peft", s(&dir)]);
    assert_eq!(std::fs::read_to_string(dir.join("README.md")).unwrap(), "mine");
    assert!(std::fs::read_to_string(dir.join("adapter_config.json")).unwrap().contains("\"peft_type\": \"LORA\""));
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["README.md", "adapter_config.json", "adapter_model.safetensors"]);
}

#[test]
fn export_merged_is_merge_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let adapted = adapted_bert6(tmp.path(), "insert-lora{rank=4 alpha=8 targets=query,value init=random}");
    let merged = tmp.path().join("merged.onnx");
    let via_rewrite = tmp.path().join("rewritten.onnx");
    ok(&["export", s(&adapted), "--merged", s(&merged)]);
    ok(&["rewrite", s(&adapted), "-o", s(&via_rewrite), "-p", "merge-lora"]);
    let (a, b, base) = (onnx::load(&merged).unwrap(), onnx::load(&via_rewrite).unwrap(), onnx::load(&bert6()).unwrap());
    assert_eq!(a.graph.num_nodes(), base.graph.num_nodes());
    assert_eq!(a.graph.num_initializers(), base.graph.num_initializers());
    assert_eq!(std::fs::read(&merged).unwrap(), std::fs::read(&via_rewrite).unwrap());
    assert!(AdapterState::load(&b).unwrap().of(adaptc_passes::adapters::Method::Lora).next().is_none());
    // Nothing to merge: an error, no file.
    let none = tmp.path().join("none.onnx");
    let e = fails(&["export", s(&bert6()), "--merged", s(&none)]);
    assert!(e.contains("no adapters that merge-lora can fold"), "{e}");
    assert!(!none.exists());
}
