//! Rewrites must not change what a model computes: tract-onnx, an independent runtime, runs the
//! model before and after and the outputs are compared.

use std::path::{Path, PathBuf};
use std::process::Command;

use adaptc_ir::{onnx, DataType, Tensor};
use tract_onnx::prelude::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(rel)
}

/// Token ids and a mask with some padding, [2, 16].
fn bert_inputs() -> (Vec<i64>, Vec<i64>) {
    let ids: Vec<i64> = (0..32).map(|i| (i * 37 + 11) % 1000).collect();
    let mask: Vec<i64> = (0..32).map(|i| if i >= 16 && i % 16 >= 12 { 0 } else { 1 }).collect();
    (ids, mask)
}

fn run_tract(path: &Path, inputs: TVec<TValue>) -> Vec<Vec<f32>> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap_or_else(|e| panic!("tract cannot load {}: {e:?}", path.display()));
    let model = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = model.run(inputs).unwrap();
    out.iter().map(|t| t.to_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn folding_a_specialised_bert_keeps_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, mask) = bert_inputs();

    // Reference: the exported model with real inputs.
    let reference = run_tract(
        &fixture("bert6.onnx"),
        tvec![
            tract_ndarray::Array2::from_shape_vec((2, 16), ids.clone()).unwrap().into_tensor().into(),
            tract_ndarray::Array2::from_shape_vec((2, 16), mask.clone()).unwrap().into_tensor().into(),
        ],
    );

    // The same model with its inputs baked in as constants: now the shape arithmetic, the mask
    // computation and the embedding lookups are constant and fold away.
    let mut model = onnx::load(&fixture("bert6.onnx")).unwrap();
    let names: Vec<String> = model.graph.inputs.iter().map(|v| v.name.clone()).collect();
    assert_eq!(names, ["input_ids", "attention_mask"]);
    model.graph.inputs.clear();
    model.graph.add_initializer(Tensor::from_i64("input_ids", vec![2, 16], &ids).unwrap()).unwrap();
    model.graph.add_initializer(Tensor::from_i64("attention_mask", vec![2, 16], &mask).unwrap()).unwrap();
    let baked = tmp.path().join("baked.onnx");
    onnx::save(&model, &baked, &Default::default()).unwrap();

    let folded = tmp.path().join("folded.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_adaptc"))
        .args(["rewrite", baked.to_str().unwrap(), "-o", folded.to_str().unwrap()])
        .args(["-p", "fold-constants,cse,dce", "--stats"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let before = onnx::load(&baked).unwrap().graph.num_nodes();
    let after = onnx::load(&folded).unwrap();
    assert!(after.graph.num_nodes() < before, "folding removed nothing ({before} nodes)");
    assert!(after.graph.initializer("input_ids").is_none(), "the embedding lookups were folded");
    assert_eq!(after.graph.initializers().filter(|t| t.dtype() == DataType::Int64 && t.dims() == [2, 16]).count(), 0);

    let got = run_tract(&folded, tvec![]);
    assert_eq!(got.len(), reference.len());
    for (i, (r, g)) in reference.iter().zip(&got).enumerate() {
        let d = max_rel_diff(r, g);
        assert!(d <= 1e-5, "output {i}: max relative difference {d}");
    }
}

#[test]
fn canonical_pipeline_on_llama_keeps_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("llama.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_adaptc"))
        .args(["rewrite", fixture("llama4/model.onnx").to_str().unwrap(), "-o", out_path.to_str().unwrap()])
        .args(["-p", "fold-constants,cse,dce"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<i64> = (0..24).map(|i| (i * 53 + 7) % 1000).collect();
    let mask = vec![1i64; 24];
    let inputs = || -> TVec<TValue> {
        tvec![
            tract_ndarray::Array2::from_shape_vec((2, 12), ids.clone()).unwrap().into_tensor().into(),
            tract_ndarray::Array2::from_shape_vec((2, 12), mask.clone()).unwrap().into_tensor().into(),
        ]
    };
    let reference = run_tract(&fixture("llama4/model.onnx"), inputs());
    let got = run_tract(&out_path, inputs());
    for (r, g) in reference.iter().zip(&got) {
        assert!(max_rel_diff(r, g) <= 1e-6);
    }
}
