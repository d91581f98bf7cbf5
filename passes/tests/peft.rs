//! PEFT interchange at the library level: the safetensors codec (round trips, byte-identity
//! with files written by Python, hostile headers), adapter_config.json as PEFT writes it, and
//! export → import of adapters on the bert6 fixture.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use adaptc_passes::adapters::{AdapterState, Method};
use adaptc_passes::peft::safetensors::{pt_metadata, serialize, Dtype, OwnedTensor, SafeTensors, MAX_HEADER_BYTES};
use adaptc_passes::peft::{
    adapter_from_model, import_adapter, read_adapter, ExportOptions, ImportOptions, LoraAdapterConfig, PathMapping,
    PeftError, TargetModules,
};
use adaptc_passes::{PassManager, Registry};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn peft_fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/peft").join(name)
}

/// A folder under the system temp dir, removed on drop (passes has no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "adaptc-peft-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bert6() -> adaptc_ir::Model {
    adaptc_ir::onnx::load(&repo().join("tests/fixtures/models/bert6.onnx")).unwrap()
}

// ------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------

#[test]
fn safetensors_round_trip_all_float_kinds() {
    let f16: Vec<u8> = [1.5f32, -2.0, 0.25].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = [3.0f32, -0.5].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let tensors = vec![
        OwnedTensor::f32("b.weight", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
        OwnedTensor { name: "a.half".into(), dtype: Dtype::F16, shape: vec![3], data: f16 },
        OwnedTensor { name: "c.bf".into(), dtype: Dtype::BF16, shape: vec![1, 2], data: bf16 },
        OwnedTensor::f32("empty", vec![0, 4], &[]),
        OwnedTensor {
            name: "ids".into(),
            dtype: Dtype::I64,
            shape: vec![2],
            data: vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        },
    ];
    let bytes = serialize(&tensors, Some(&pt_metadata())).unwrap();
    let st = SafeTensors::parse(bytes.clone(), "mem").unwrap();
    assert_eq!(st.metadata, pt_metadata());
    // Largest element type first, then by name (the Python library's order).
    assert_eq!(st.names().collect::<Vec<_>>(), vec!["ids", "b.weight", "empty", "c.bf", "a.half"]);
    assert_eq!(st.get("b.weight").unwrap().to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(st.get("a.half").unwrap().to_f32().unwrap(), vec![1.5, -2.0, 0.25]);
    assert_eq!(st.get("c.bf").unwrap().to_f32().unwrap(), vec![3.0, -0.5]);
    assert_eq!(st.get("c.bf").unwrap().shape, &[1, 2]);
    assert!(st.get("empty").unwrap().to_f32().unwrap().is_empty());
    assert!(st.get("ids").unwrap().to_f32().unwrap_err().contains("expected a float tensor"));
    // Re-serialising what was read gives the same bytes.
    let again: Vec<OwnedTensor> = st
        .tensors()
        .iter()
        .map(|t| {
            let v = st.get(&t.name).unwrap();
            OwnedTensor { name: t.name.clone(), dtype: v.dtype, shape: v.shape.to_vec(), data: v.data.to_vec() }
        })
        .collect();
    assert_eq!(serialize(&again, Some(&st.metadata)).unwrap(), bytes);
}

#[test]
fn files_written_by_python_re_serialise_byte_for_byte() {
    for name in ["bert6-rslora", "bert6-dora"] {
        let path = peft_fixture(name).join("adapter_model.safetensors");
        let original = std::fs::read(&path).unwrap();
        let st = SafeTensors::read(&path).unwrap();
        assert_eq!(st.metadata, pt_metadata());
        let tensors: Vec<OwnedTensor> = st
            .names()
            .map(|n| {
                let v = st.get(n).unwrap();
                OwnedTensor { name: n.to_string(), dtype: v.dtype, shape: v.shape.to_vec(), data: v.data.to_vec() }
            })
            .collect();
        assert_eq!(serialize(&tensors, Some(&st.metadata)).unwrap(), original, "{name}");
    }
}

/// A file from a header text and a data section.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

fn hostile(bytes: Vec<u8>) -> String {
    let e = SafeTensors::parse(bytes, "evil.safetensors").unwrap_err().to_string();
    assert!(e.starts_with("evil.safetensors: "), "the error names the file: {e}");
    e
}

#[test]
fn hostile_headers_are_refused_with_the_reason() {
    // Truncated: shorter than the length prefix; a header longer than the file.
    assert!(hostile(vec![1, 2, 3]).contains("truncated"));
    let mut b = file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4);
    b.truncate(20);
    assert!(hostile(b).contains("truncated: the header claims"));
    // A huge header length is refused before anything is allocated.
    let mut b = (u64::MAX).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let e = hostile(b);
    assert!(e.contains(&format!("exceeds the limit of {MAX_HEADER_BYTES}")), "{e}");
    let mut b = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(hostile(b).contains("exceeds the limit"));
    // Offsets out of bounds.
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4));
    assert!(e.contains("tensor `a`") && e.contains("out of bounds"), "{e}");
    let e = hostile(file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551616]}}"#,
        4,
    ));
    assert!(e.contains("tensor `a`"), "{e}");
    // Overlapping tensors.
    let e = hostile(file(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    ));
    assert!(e.contains("tensor `b`") && e.contains("overlaps tensor `a`"), "{e}");
    // A gap, and bytes no tensor covers.
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8));
    assert!(e.contains("leaving bytes 0..4"), "{e}");
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8));
    assert!(e.contains("4 trailing bytes"), "{e}");
    // Bad dtype; shape and byte size disagreeing; offsets running backwards; overflow.
    let e = hostile(file(r#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("tensor `a`: unsupported dtype `Q7`"), "{e}");
    let e = hostile(file(r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("needs 6 bytes"), "{e}");
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, 4));
    assert!(e.contains("run backwards"), "{e}");
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("overflows"), "{e}");
    // Not JSON, not an object, missing fields, duplicate names, bad metadata.
    assert!(hostile(file("{nope", 0)).contains("not valid JSON"));
    assert!(hostile(file("[1,2]", 0)).contains("does not start with `{`"));
    let e = hostile(file(r#"{"a":{"dtype":"F32","shape":[1]}}"#, 4));
    assert!(e.contains("tensor `a`: bad header entry"), "{e}");
    let e = hostile(file(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        8,
    ));
    assert!(e.contains("`a` appears twice"), "{e}");
    let e = hostile(file(r#"{"__metadata__":{"format":1}}"#, 0));
    assert!(e.contains("__metadata__"), "{e}");
    // Invalid UTF-8.
    let mut b = file(r#"{"a":1}"#, 0);
    b[10] = 0xff;
    assert!(hostile(b).contains("not UTF-8"));
}

#[test]
fn an_empty_file_with_only_metadata_is_valid() {
    let st = SafeTensors::parse(file(r#"{"__metadata__":{"format":"pt"}}  "#, 0), "m").unwrap();
    assert!(st.is_empty());
}

#[test]
fn serialize_refuses_inconsistent_tensors() {
    let bad = OwnedTensor { name: "x".into(), dtype: Dtype::F32, shape: vec![3], data: vec![0; 8] };
    assert!(serialize(&[bad], None).unwrap_err().to_string().contains("tensor `x`: 8 bytes of data for shape [3]"));
    let t = OwnedTensor::f32("x", vec![1], &[1.0]);
    assert!(serialize(&[t.clone(), t], None).unwrap_err().to_string().contains("given twice"));
}

// ------------------------------------------------------------------------------------------
// adapter_config.json
// ------------------------------------------------------------------------------------------

#[test]
fn config_written_by_peft_parses() {
    let text = std::fs::read_to_string(peft_fixture("bert6-rslora").join("adapter_config.json")).unwrap();
    let c = LoraAdapterConfig::parse(&text).unwrap();
    assert_eq!((c.r, c.lora_alpha, c.use_rslora, c.use_dora), (4, 8.0, true, false));
    let Some(TargetModules::List(mut t)) = c.target_modules.clone() else { panic!("{:?}", c.target_modules) };
    t.sort();
    assert_eq!(t, vec!["dense", "key", "query"]);
    assert_eq!(c.init_lora_weights, serde_json::Value::Bool(false));
    assert!((c.scaling("encoder.layer.0.attention.self.query") - 4.0).abs() < 1e-12, "8/√4");
    // What adaptc writes reads back the same.
    assert_eq!(LoraAdapterConfig::parse(&c.to_json()).unwrap(), c);

    let text = std::fs::read_to_string(peft_fixture("bert6-dora").join("adapter_config.json")).unwrap();
    let c = LoraAdapterConfig::parse(&text).unwrap();
    assert!(c.use_dora);
    assert_eq!(c.rank_alpha("encoder.layer.1.attention.self.query"), (4, 4.0));
    assert_eq!(c.rank_alpha("encoder.layer.0.attention.self.query"), (2, 4.0));
    assert_eq!(c.rank_alpha("encoder.layer.3.attention.self.value"), (2, 2.0));
}

// ------------------------------------------------------------------------------------------
// export and import on bert6
// ------------------------------------------------------------------------------------------

fn adapt(model: &mut adaptc_ir::Model, pipeline: &str) {
    PassManager::new(&Registry::builtin(), pipeline).unwrap().run(model).unwrap();
}

#[test]
fn export_writes_peft_names_layouts_and_patterns() {
    let mut m = bert6();
    adapt(
        &mut m,
        "insert-lora{rank=4 alpha=8 targets=query init=random seed=1},\
         insert-lora{rank=2 alpha=3 targets=value layers=0,1 init=random seed=2 rslora=true}",
    );
    let adapter = adapter_from_model(&m, &ExportOptions::default()).unwrap();
    let c = &adapter.config;
    assert_eq!((c.r, c.lora_alpha, c.use_rslora), (4, 8.0, false));
    assert_eq!(
        c.target_modules,
        Some(TargetModules::List(vec![
            "layer.0.attention.self.value".into(),
            "layer.1.attention.self.value".into(),
            "query".into()
        ]))
    );
    // rsLoRA value layers: r = 2 via rank_pattern; their scaling 3/√2 kept through alpha = s·r.
    assert_eq!(c.rank_alpha("encoder.layer.0.attention.self.value").0, 2);
    assert!((c.scaling("encoder.layer.1.attention.self.value") - 3.0 / 2f64.sqrt()).abs() < 1e-6);
    assert_eq!(c.rank_alpha("encoder.layer.5.attention.self.query"), (4, 8.0));
    assert_eq!(adapter.tensors.len(), 2 * 8);
    let a = adapter
        .tensors
        .iter()
        .find(|t| t.name == "base_model.model.encoder.layer.0.attention.self.value.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape, vec![2, 64]);
    let b = adapter
        .tensors
        .iter()
        .find(|t| t.name == "base_model.model.encoder.layer.3.attention.self.query.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape, vec![64, 4]);
    // Values are the model's initializers, unchanged.
    let init = m.graph.initializer("encoder.layer.3.attention.self.query.lora_B.weight").unwrap();
    assert_eq!(init.bytes().unwrap().as_ref(), b.data.as_slice());
}

#[test]
fn export_refuses_models_without_lora_and_mixed_dora() {
    let e = adapter_from_model(&bert6(), &ExportOptions::default()).unwrap_err();
    assert!(matches!(e, PeftError::Mismatch(_)) && e.to_string().contains("no LoRA or DoRA adapters"), "{e}");
    let mut m = bert6();
    adapt(&mut m, "insert-lora{targets=query},insert-lora{targets=value dora=true}");
    let e = adapter_from_model(&m, &ExportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("mixes DoRA"), "{e}");
    let mut m = bert6();
    adapt(&mut m, "insert-lora{targets=query}");
    let e = adapter_from_model(&m, &ExportOptions { task_type: Some("NOPE".into()), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown task type `NOPE`"), "{e}");
}

#[test]
fn export_then_import_restores_the_same_adapters() {
    let mut m = bert6();
    adapt(&mut m, "insert-lora{rank=4 alpha=16 targets=query,dense init=random seed=3 dora=true}");
    let adapter = adapter_from_model(&m, &ExportOptions::default()).unwrap();
    let tmp = TempDir::new();
    let dir = tmp.path().join("adapter");
    adaptc_passes::peft::write_adapter(&dir, &adapter).unwrap();
    let loaded = read_adapter(&dir).unwrap();
    assert!(loaded.config.use_dora);

    let mut base = bert6();
    let report = import_adapter(&mut base, &loaded, &ImportOptions::default()).unwrap();
    assert_eq!(report.mapping, PathMapping::Exact);
    assert_eq!(report.modules.len(), 6 + 6 * 3 + 1);
    let (before, after) = (AdapterState::load(&m).unwrap(), AdapterState::load(&base).unwrap());
    assert_eq!(after.adapters.len(), before.adapters.len());
    for rec in &before.adapters {
        let got = after.adapters.iter().find(|a| a.module == rec.module).unwrap();
        assert_eq!((got.method, got.rank, got.scale), (Method::Dora, rec.rank, rec.scale));
        for role in ["lora_A", "lora_B", "magnitude"] {
            let x = m.graph.initializer(&rec.params[role]).unwrap();
            let y = base.graph.initializer(&got.params[role]).unwrap();
            assert_eq!(x.dims(), y.dims(), "{} {role}", rec.module);
            assert_eq!(x.bytes().unwrap(), y.bytes().unwrap(), "{} {role}", rec.module);
        }
    }
    adaptc_ir::verify(&base.graph).unwrap();
}

/// A one-module adapter folder with the given tensors and config.
fn adapter_dir(dir: &Path, config: &str, tensors: &[OwnedTensor]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), serialize(tensors, Some(&pt_metadata())).unwrap()).unwrap();
}

const Q: &str = "base_model.model.encoder.layer.0.attention.self.query";

#[test]
fn import_errors_list_matched_and_unmatched_and_change_nothing() {
    let tmp = TempDir::new();
    let cfg = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}"#;
    let pair = |module: &str, r: u64, inp: u64, out: u64| {
        vec![
            OwnedTensor::f32(format!("{module}.lora_A.weight"), vec![r, inp], &vec![0.5; (r * inp) as usize]),
            OwnedTensor::f32(format!("{module}.lora_B.weight"), vec![out, r], &vec![0.5; (out * r) as usize]),
        ]
    };
    let check = |name: &str, cfg: &str, tensors: Vec<OwnedTensor>, want: &[&str]| {
        let dir = tmp.path().join(name);
        adapter_dir(&dir, cfg, &tensors);
        let mut m = bert6();
        let nodes = m.graph.num_nodes();
        let e =
            import_adapter(&mut m, &read_adapter(&dir).unwrap(), &ImportOptions::default()).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{name}: `{w}` not in: {e}");
        }
        assert_eq!(m.graph.num_nodes(), nodes, "{name}: the model changed");
        assert!(AdapterState::load(&m).unwrap().adapters.is_empty());
    };

    // Unknown module: listed as not found, the found one listed too.
    let mut t = pair(Q, 2, 64, 64);
    t.extend(pair("base_model.model.encoder.layer.0.attention.self.qkv", 2, 64, 64));
    check(
        "unknown",
        cfg,
        t,
        &[
            "1 of 2 adapter modules",
            "not found: `encoder.layer.0.attention.self.qkv`",
            "found: `encoder.layer.0.attention.self.query`",
        ],
    );
    // Shape mismatch: lora_A with the wrong input width; rank disagreeing with the config.
    check("shape", cfg, pair(Q, 2, 32, 64), &["lora_A is [2, 32], expected [r, in] = [2, 64]"]);
    check("rank", cfg, pair(Q, 3, 64, 64), &["config r = 2", "lora_A is [3, 64]"]);
    // Tensors adaptc does not import.
    let mut t = pair(Q, 2, 64, 64);
    t.push(OwnedTensor::f32("base_model.model.embeddings.word_embeddings.lora_embedding_A", vec![2, 4], &[0.0; 8]));
    check("embedding", cfg, t, &["cannot import", "lora_embedding_A"]);
    // A missing half; a magnitude without use_dora.
    check("half", cfg, pair(Q, 2, 64, 64)[..1].to_vec(), &["no lora_B"]);
    let mut t = pair(Q, 2, 64, 64);
    t.push(OwnedTensor::f32(format!("{Q}.lora_magnitude_vector"), vec![64], &[1.0; 64]));
    check("magnitude", cfg, t, &["use_dora is false"]);
    // Already adapted: importing the same adapter twice.
    let dir = tmp.path().join("twice");
    adapter_dir(&dir, cfg, &pair(Q, 2, 64, 64));
    let adapter = read_adapter(&dir).unwrap();
    let mut m = bert6();
    import_adapter(&mut m, &adapter, &ImportOptions::default()).unwrap();
    let e = import_adapter(&mut m, &adapter, &ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("already has a Lora adapter"), "{e}");
}

#[test]
fn import_maps_a_leading_model_component() {
    // An adapter trained on a wrapper whose base module is `model` (as LlamaForCausalLM's).
    let tmp = TempDir::new();
    let dir = tmp.path().join("wrapped");
    let m = "base_model.model.model.encoder.layer.2.attention.self.query";
    adapter_dir(
        &dir,
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["query"], "rank_pattern": {}}"#,
        &[
            OwnedTensor::f32(format!("{m}.lora_A.weight"), vec![1, 64], &[0.1; 64]),
            OwnedTensor::f32(format!("{m}.lora_B.weight"), vec![64, 1], &[0.1; 64]),
        ],
    );
    let mut model = bert6();
    let report = import_adapter(&mut model, &read_adapter(&dir).unwrap(), &ImportOptions::default()).unwrap();
    assert_eq!(report.mapping, PathMapping::StripModel);
    assert_eq!(report.modules[0].module, "encoder.layer.2.attention.self.query");
    assert_eq!(report.modules[0].adapter_module, "model.encoder.layer.2.attention.self.query");
}

#[test]
fn read_adapter_names_the_broken_file() {
    let tmp = TempDir::new();
    let dir = tmp.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    let e = read_adapter(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "PREFIX_TUNING"}"#).unwrap();
    let e = read_adapter(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json: peft_type is `PREFIX_TUNING`"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 2}"#).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap();
    let e = read_adapter(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("truncated"), "{e}");
}
