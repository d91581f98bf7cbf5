//! `adaptc rewrite` without a pipeline is a lossless copy, for inline and external-data models
//! exported by the PyTorch dynamo exporter; with canonical passes the outputs stay the same
//! numerically (checked by tract, an independent runtime).

#[path = "../ir/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(rel)
}

fn adaptc(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_adaptc")).args(args).output().unwrap();
    assert!(out.status.success(), "adaptc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn rewrite(input: &Path, output: &Path, extra: &[&str]) {
    let mut args = vec!["rewrite", input.to_str().unwrap(), "-o", output.to_str().unwrap()];
    args.extend_from_slice(extra);
    adaptc(&args);
}

#[test]
fn inline_bert_round_trips_losslessly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bert.onnx");
    rewrite(&fixture("bert6.onnx"), &out, &[]);
    support::assert_same_model(&fixture("bert6.onnx"), &out).unwrap();
    assert!(!tmp.path().join("bert.onnx.data").exists(), "an inline model stays inline");
    // Same size too: nothing dropped or added (bytes differ only in field order, which
    // protobuf leaves to the writer: ONNX's C++ writes by field number, rust-protobuf by
    // declaration order).
    assert_eq!(std::fs::metadata(fixture("bert6.onnx")).unwrap().len(), std::fs::metadata(&out).unwrap().len());
}

#[test]
fn external_data_llama_round_trips_losslessly() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("elsewhere");
    std::fs::create_dir(&sub).unwrap();
    let out = sub.join("llama.onnx");
    rewrite(&fixture("llama4/model.onnx"), &out, &[]);
    let data = sub.join("llama.onnx.data");
    assert!(data.is_file(), "a model that used external data is written with external data");
    support::assert_same_model(&fixture("llama4/model.onnx"), &out).unwrap();
    // The output refers to its own data file, by a relative location.
    let text = std::fs::read(&out).unwrap();
    assert!(text.windows(b"llama.onnx.data".len()).any(|w| w == b"llama.onnx.data"));
    assert!(!text.windows(b"model.onnx.data".len()).any(|w| w == b"model.onnx.data"));
    // Rewriting the rewritten model in place keeps it intact.
    rewrite(&out, &out, &[]);
    support::assert_same_model(&fixture("llama4/model.onnx"), &out).unwrap();
}

#[test]
fn external_mode_always_and_back_to_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = tmp.path().join("bert_ext.onnx");
    rewrite(&fixture("bert6.onnx"), &ext, &["--external", "always"]);
    assert!(tmp.path().join("bert_ext.onnx.data").is_file());
    let (before, after) =
        (std::fs::metadata(fixture("bert6.onnx")).unwrap().len(), std::fs::metadata(&ext).unwrap().len());
    assert!(after + 1_000_000 < before, "weights moved out of the model file ({before} -> {after} bytes)");
    // Same content once the external data is read back inline.
    support::assert_same_model(&fixture("bert6.onnx"), &ext).unwrap();
    let back = tmp.path().join("bert_inline.onnx");
    rewrite(&ext, &back, &["--external", "never"]);
    assert!(!tmp.path().join("bert_inline.onnx.data").exists());
    // Content is equal once external data is read back inline.
    let (a, b) = (support::canonical_model(&ext).unwrap(), support::canonical_model(&back).unwrap());
    assert_eq!(a.graph.initializer.len(), b.graph.initializer.len());
    for (x, y) in a.graph.initializer.iter().zip(&b.graph.initializer) {
        assert_eq!(x.raw_data, y.raw_data, "{}", x.name());
    }
}

#[test]
fn comparison_detects_a_changed_model() {
    // The lossless checks above are only meaningful if the comparison can fail.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned.onnx");
    rewrite(&fixture("bert6.onnx"), &out, &["-p", "dce"]);
    let mut m = support::canonical_model(&out).unwrap();
    m.graph.as_mut().unwrap().node[3].name.as_mut().unwrap().push('x');
    let changed = tmp.path().join("changed.onnx");
    std::fs::write(&changed, protobuf::Message::write_to_bytes(&m).unwrap()).unwrap();
    let err = support::assert_same_model(&out, &changed).unwrap_err();
    assert!(err.contains("node 3"), "{err}");
}
