//! The repository's exported transformers run end to end and match onnxruntime's outputs
//! (`tests/fixtures/reference/*`, made by `scripts/make_reference_outputs.py`) within 1e-4
//! relative to the output's largest magnitude.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adaptc_runtime::{npy, Session, SessionOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn check(model_rel: &str, reference: &str) {
    let refdir = fixtures().join("reference").join(reference);
    let model = adaptc_ir::onnx::load(&fixtures().join("models").join(model_rel)).unwrap();
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let inputs: HashMap<_, _> = session
        .required_inputs()
        .iter()
        .map(|n| (n.to_string(), npy::read(&refdir.join(format!("{n}.npy"))).unwrap()))
        .collect();
    let (outputs, stats) = session.run_with_stats(inputs).unwrap();
    assert!(stats.peak_bytes > 0);
    for (name, got) in outputs {
        let want = npy::read(&refdir.join(format!("{name}.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape(), "{model_rel} output `{name}`");
        let (g, w) = (got.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(diff <= 1e-4, "{model_rel} output `{name}`: max relative difference {diff} to onnxruntime");
    }
}

#[test]
fn bert6_matches_onnxruntime() {
    check("bert6.onnx", "bert6");
}

#[test]
fn llama4_matches_onnxruntime() {
    check("llama4/model.onnx", "llama4");
}
