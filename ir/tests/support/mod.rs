//! Test support shared by the IR and CLI round-trip tests: an independent comparison of two
//! ONNX files at the protobuf level (not through adaptc's IR).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use adaptc_ir::onnx::proto as pb;
use protobuf::Message;

/// Root of the ONNX backend test data (`scripts/fetch-test-data.sh` puts it there).
pub fn onnx_suite() -> PathBuf {
    if let Ok(p) = std::env::var("ADAPTC_ONNX_SUITE") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/onnx/backend/test/data");
    assert!(
        p.is_dir(),
        "the ONNX backend test data is missing at {}: run scripts/fetch-test-data.sh (or set ADAPTC_ONNX_SUITE)",
        p.display()
    );
    p
}

/// Parses a model file and moves every external tensor's bytes inline, so that models saved
/// with different data layouts compare equal when their content is equal.
pub fn canonical_model(path: &Path) -> Result<pb::ModelProto, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut model = pb::ModelProto::parse_from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(g) = model.graph.as_mut() {
        internalize_graph(g, dir)?;
    }
    Ok(model)
}

fn internalize_graph(g: &mut pb::GraphProto, dir: &Path) -> Result<(), String> {
    for t in &mut g.initializer {
        internalize(t, dir)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                internalize(t, dir)?;
            }
            for t in &mut a.tensors {
                internalize(t, dir)?;
            }
            if let Some(sg) = a.g.as_mut() {
                internalize_graph(sg, dir)?;
            }
            for sg in &mut a.graphs {
                internalize_graph(sg, dir)?;
            }
        }
    }
    Ok(())
}

fn internalize(t: &mut pb::TensorProto, dir: &Path) -> Result<(), String> {
    if t.data_location.map(|l| l.value()) != Some(1) {
        return Ok(());
    }
    let get = |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().to_string());
    let loc = get("location").ok_or("external tensor without location")?;
    let offset: usize = get("offset").map_or(Ok(0), |v| v.parse()).map_err(|e| format!("{e}"))?;
    let data = std::fs::read(dir.join(&loc)).map_err(|e| format!("{loc}: {e}"))?;
    let length: usize = get("length").map_or(Ok(data.len() - offset), |v| v.parse()).map_err(|e| format!("{e}"))?;
    t.raw_data = Some(data[offset..offset + length].to_vec());
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Compares two model files field by field (serialized canonical forms); `Err` says where
/// they first differ.
pub fn assert_same_model(a: &Path, b: &Path) -> Result<(), String> {
    let (ma, mb) = (canonical_model(a)?, canonical_model(b)?);
    let (ba, bb) = (ma.write_to_bytes().map_err(|e| e.to_string())?, mb.write_to_bytes().map_err(|e| e.to_string())?);
    if ba == bb {
        return Ok(());
    }
    Err(first_difference(&ma, &mb))
}

fn first_difference(a: &pb::ModelProto, b: &pb::ModelProto) -> String {
    if a.ir_version != b.ir_version {
        return format!("ir_version {:?} vs {:?}", a.ir_version, b.ir_version);
    }
    if a.opset_import != b.opset_import {
        return "opset_import differs".into();
    }
    let (ga, gb) = (a.graph.get_or_default(), b.graph.get_or_default());
    if ga.node.len() != gb.node.len() {
        return format!("{} vs {} nodes", ga.node.len(), gb.node.len());
    }
    for (i, (na, nb)) in ga.node.iter().zip(&gb.node).enumerate() {
        if na.write_to_bytes().ok() != nb.write_to_bytes().ok() {
            return format!("node {i} differs:\n{na:?}\nvs\n{nb:?}");
        }
    }
    for (ta, tb) in ga.initializer.iter().zip(&gb.initializer) {
        if ta.write_to_bytes().ok() != tb.write_to_bytes().ok() {
            return format!("initializer {} differs", ta.name());
        }
    }
    for (field, x, y) in [
        ("input", &ga.input, &gb.input),
        ("output", &ga.output, &gb.output),
        ("value_info", &ga.value_info, &gb.value_info),
    ] {
        if x != y {
            return format!("graph {field} differs");
        }
    }
    "models differ outside the graph's nodes and initializers".into()
}
