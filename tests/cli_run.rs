//! `adaptc run`: runs a model on the CPU runtime from .npy inputs to .npy outputs, and refuses
//! bad inputs with a clear message, a non-zero exit and nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use adaptc_runtime::{npy, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn adaptc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptc")).args(args).output().unwrap()
}

fn bert_inputs() -> Vec<String> {
    let refdir = fixtures().join("reference/bert6");
    ["input_ids", "token_type_ids", "attention_mask"]
        .iter()
        .map(|n| format!("{n}={}", refdir.join(format!("{n}.npy")).display()))
        .collect()
}

#[test]
fn runs_bert_and_writes_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixtures().join("models/bert6.onnx");
    let mut args = vec!["run".to_string(), model.display().to_string()];
    for i in bert_inputs() {
        args.extend(["--input".to_string(), i]);
    }
    args.extend(["--out-dir".to_string(), out.display().to_string()]);
    let o = adaptc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in ["last_hidden_state", "pooler_output"] {
        let got = npy::read(&out.join(format!("{name}.npy"))).unwrap();
        let want = npy::read(&fixtures().join(format!("reference/bert6/{name}.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape());
        let (g, w) = (got.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-4 * scale, "{name}: {diff}");
    }
}

/// Runs bert6 with `inputs` and expects a failure mentioning `needle`, with nothing written.
fn refused(inputs: &[String], extra: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixtures().join("models/bert6.onnx");
    let mut args = vec!["run".to_string(), model.display().to_string()];
    for i in inputs {
        args.extend(["--input".to_string(), i.clone()]);
    }
    args.extend(["--out-dir".to_string(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = adaptc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {needle}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "nothing is written");
}

#[test]
fn bad_inputs_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let good = bert_inputs();
    // Missing input.
    refused(&good[..2], &[], "attention_mask");
    // Extra input.
    let mut extra = good.clone();
    extra.push(good[0].replacen("input_ids=", "nonsense=", 1));
    refused(&extra, &[], "no such input");
    // Wrong element type.
    let f = tmp.path().join("f.npy");
    std::fs::write(&f, npy::encode(&Tensor::from_vec(vec![2, 8], vec![0f32; 16]).unwrap()).unwrap()).unwrap();
    let mut wrong = good.clone();
    wrong[0] = format!("input_ids={}", f.display());
    refused(&wrong, &[], "element type");
    // Unreadable file.
    let junk = tmp.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    let mut bad = good.clone();
    bad[0] = format!("input_ids={}", junk.display());
    refused(&bad, &[], "not a .npy file");
    // CUDA without the feature, or without a device.
    refused(&good, &["--device", "cuda"], &cuda_refusal());
}

/// What `--device cuda` says on this build and machine (no GPU in CI).
fn cuda_refusal() -> String {
    if cfg!(feature = "cuda") {
        "no CUDA device".into()
    } else {
        "built without the CUDA backend".into()
    }
}
