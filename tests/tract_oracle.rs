//! Rewrites must not change what a model computes. The reference outputs were computed by
//! onnxruntime on the exported models (`scripts/make_reference_outputs.py`); tract-onnx, a
//! second independent runtime, runs adaptc's rewritten models and the outputs are compared.

use std::path::{Path, PathBuf};
use std::process::Command;

use adaptc_ir::{onnx, Tensor};
use tract_onnx::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A little-endian, C-order `.npy` array: (shape, raw bytes, dtype descr).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap().to_string();
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (shape, bytes[start + header_len..].to_vec(), descr)
}

fn npy_i64(path: &Path) -> (Vec<usize>, Vec<i64>) {
    let (shape, data, descr) = read_npy(path);
    assert_eq!(descr, "<i8");
    (shape, data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
}

fn npy_f32(path: &Path) -> Vec<f32> {
    let (_, data, descr) = read_npy(path);
    assert_eq!(descr, "<f4");
    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Runs a model without inputs in tract. tract cannot parse the dynamo exporter's symbolic
/// shape expressions (`Min(128, seq)`) in `value_info` and output types; they are annotations
/// only, so tract gets a copy without them.
fn run_tract(path: &Path) -> Vec<Vec<f32>> {
    let mut m = onnx::load(path).unwrap();
    m.graph.value_info.clear();
    for o in &mut m.graph.outputs {
        let dtype = o.ty.as_ref().and_then(|t| t.dtype()).unwrap();
        o.ty = Some(adaptc_ir::TypeInfo::tensor(dtype, None));
    }
    decompose_gelu(&mut m.graph);
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain.onnx");
    onnx::save(&m, &plain, &Default::default()).unwrap();
    let model = tract_onnx::onnx()
        .model_for_path(&plain)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot run {}: {e:?}", path.display()));
    let out = model.run(tvec![]).unwrap();
    out.iter().map(|t| t.to_array_view::<f32>().unwrap().iter().copied().collect()).collect()
}

/// tract 0.22 has no `Gelu` (opset 20): rewrite it by its ONNX definition,
/// `0.5 · x · (1 + erf(x / √2))` (the exporter's Gelu uses `approximate="none"`).
fn decompose_gelu(g: &mut adaptc_ir::Graph) {
    use adaptc_ir::{Node, OpKey};
    let gelus: Vec<_> = g.nodes().filter(|(_, n)| n.op().is("Gelu")).map(|(id, _)| id).collect();
    if gelus.is_empty() {
        return;
    }
    for (name, v) in [("gelu_rsqrt2", std::f32::consts::FRAC_1_SQRT_2), ("gelu_one", 1.0), ("gelu_half", 0.5)] {
        g.add_initializer(Tensor::from_f32(name, vec![], &[v]).unwrap()).unwrap();
    }
    for id in gelus {
        let node = g.node(id).clone();
        assert!(node
            .attr("approximate")
            .is_none_or(|a| matches!(&a.value, adaptc_ir::AttrValue::String(s) if s == b"none")));
        let (x, y) = (node.inputs()[0].clone(), node.outputs()[0].clone());
        let t = |s: &str| format!("{y}__{s}");
        let steps = [
            ("Mul", vec![x.clone(), "gelu_rsqrt2".into()], t("scaled")),
            ("Erf", vec![t("scaled")], t("erf")),
            ("Add", vec![t("erf"), "gelu_one".into()], t("plus1")),
            ("Mul", vec![x.clone(), t("plus1")], t("xp")),
            ("Mul", vec![t("xp"), "gelu_half".into()], t("out")),
        ];
        for (op, ins, out) in steps {
            g.add_node(Node::new(OpKey::onnx(op), ins, vec![out])).unwrap();
        }
        g.replace_all_uses_with(&y, &t("out")).unwrap();
        g.remove_node(id).unwrap();
    }
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Bakes the reference inputs into the model as constants (its inputs become initializers),
/// folds it with `adaptc rewrite -p fold-constants,cse,dce`, runs the result in tract and
/// compares with onnxruntime's outputs. With constant inputs the shape arithmetic, the mask
/// computation and the embedding lookups all fold, so this exercises the folder on real
/// exporter patterns.
fn check_folded(model_rel: &str, reference: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let refdir = fixtures().join("reference").join(reference);
    let mut model = onnx::load(&fixtures().join("models").join(model_rel)).unwrap();
    let inputs: Vec<String> = model.graph.inputs.iter().map(|v| v.name.clone()).collect();
    model.graph.inputs.clear();
    for name in &inputs {
        let (shape, values) = npy_i64(&refdir.join(format!("{name}.npy")));
        let dims = shape.iter().map(|&d| d as u64).collect();
        model.graph.add_initializer(Tensor::from_i64(name.clone(), dims, &values).unwrap()).unwrap();
    }
    let outputs: Vec<String> = model.graph.outputs.iter().map(|v| v.name.clone()).collect();
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
    // Without shape inference (the runtime issue) shapes of activations stay symbolic, so
    // only the constant part folds: position ids, token types, the mask arithmetic.
    assert!(
        after.graph.num_nodes() + 15 <= before,
        "folding removed too little: {before} -> {}",
        after.graph.num_nodes()
    );
    assert!(after.graph.initializer("token_type_ids").is_none(), "the token-type lookup was folded");

    let got = run_tract(&folded);
    assert_eq!(got.len(), outputs.len());
    for (name, g) in outputs.iter().zip(&got) {
        let want = npy_f32(&refdir.join(format!("{name}.npy")));
        let d = max_rel_diff(&want, g);
        assert!(d <= 1e-4, "{model_rel} output `{name}`: max relative difference {d} to onnxruntime");
    }
}

#[test]
fn folding_a_specialised_bert_keeps_its_outputs() {
    check_folded("bert6.onnx", "bert6");
}

#[test]
fn folding_a_specialised_llama_keeps_its_outputs() {
    check_folded("llama4/model.onnx", "llama4");
}
