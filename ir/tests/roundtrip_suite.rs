//! Lossless round trip of every model in the ONNX 1.22.0 backend test data (node tests and
//! the light CNNs): load into the IR, save, and compare the files at the protobuf level.

mod support;

use std::path::{Path, PathBuf};

use adaptc_ir::onnx::{load, save, SaveOptions};

fn models_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(models_under(&p));
        } else if p.extension().is_some_and(|x| x == "onnx") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn round_trip_all(models: &[PathBuf]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let out = tmp.path().join(format!("m{i}.onnx"));
        let result = load(m)
            .map_err(|e| format!("load: {e}"))
            .and_then(|model| {
                adaptc_ir::verify(&model.graph).map_err(|e| format!("verify: {e}"))?;
                save(&model, &out, &SaveOptions::default()).map_err(|e| format!("save: {e}"))
            })
            .and_then(|_| support::assert_same_model(m, &out));
        if let Err(e) = result {
            failures.push(format!("{}: {e}", m.display()));
        }
    }
    failures
}

#[test]
fn node_suite_round_trips_losslessly() {
    let models = models_under(&support::onnx_suite().join("node"));
    assert_eq!(models.len(), 1765, "expected the 1,765 node tests of onnx 1.22.0");
    let failures = round_trip_all(&models);
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), models.len(), failures.join("\n"));
}

#[test]
fn light_cnns_round_trip_losslessly() {
    let models = models_under(&support::onnx_suite().join("light"));
    assert_eq!(models.len(), 9);
    let failures = round_trip_all(&models);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
