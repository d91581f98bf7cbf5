//! `quantize-weights` and `dequantize-weights`: golden dumps for both formats, the numbers checked
//! against a decoder written here from the ONNX and onnxruntime specifications (error within half
//! a step, sym/asym/per-channel/blocked layouts, int4 packing), the exact inverse, bert6 in both
//! formats, and the refusals.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Tensor, ValueInfo};
use adaptc_passes::pattern::find_linear_layers;
use adaptc_passes::{PassManager, Registry, RunReport};
use common::*;

// ----- fixtures ------------------------------------------------------------------------------

/// Deterministic values in [-1, 1), with a few larger ones so groups have distinct ranges.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
            if i % 37 == 5 {
                v * 3.0
            } else {
                v
            }
        })
        .collect()
}

/// `x [batch, K]` through three linear layers of every stored layout, summed into `y`:
/// - `layer.0.query`: `MatMul(x, Wq[K, 16]) + Add(bq)` (`[in, out]`);
/// - `layer.0.key`: `Gemm(x, Wk[16, K], bk, transB=1)` (`[out, in]`);
/// - `layer.0.value`: `MatMul(x, Transpose(Wv[16, K]))` (`[out, in]`).
fn tiny(k: u64, opset: i64) -> Model {
    model(opset, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("batch".into()), Dim::Known(k as i64)]));
        g.add_initializer(f32s("layer.0.query.weight", &[k, 16], &values(k as usize * 16, 1))).unwrap();
        g.add_initializer(f32s("layer.0.query.bias", &[16], &values(16, 2))).unwrap();
        g.add_initializer(f32s("layer.0.key.weight", &[16, k], &values(k as usize * 16, 3))).unwrap();
        g.add_initializer(f32s("layer.0.key.bias", &[16], &values(16, 4))).unwrap();
        g.add_initializer(f32s("layer.0.value.weight", &[16, k], &values(k as usize * 16, 5))).unwrap();
        add(g, node("MatMul", &["x", "layer.0.query.weight"], &["q0"]).named("/layer.0/query/MatMul"));
        add(g, node("Add", &["q0", "layer.0.query.bias"], &["q"]).named("/layer.0/query/Add"));
        add(
            g,
            node_with(
                "Gemm",
                &["x", "layer.0.key.weight", "layer.0.key.bias"],
                &["k"],
                vec![Attribute::int("transB", 1)],
            )
            .named("/layer.0/key/Gemm"),
        );
        add(
            g,
            node_with("Transpose", &["layer.0.value.weight"], &["vt"], vec![Attribute::ints("perm", vec![1, 0])])
                .named("/layer.0/value/Transpose"),
        );
        add(g, node("MatMul", &["x", "vt"], &["v"]).named("/layer.0/value/MatMul"));
        add(g, node("Add", &["q", "k"], &["qk"]).named("/sum/Add"));
        add(g, node("Add", &["qk", "v"], &["y"]).named("/sum/Add_1"));
        g.outputs.push(output("y"));
    })
}

fn add(g: &mut Graph, n: adaptc_ir::Node) {
    g.add_node(n).unwrap();
}

const WEIGHTS: [&str; 3] = ["layer.0.query.weight", "layer.0.key.weight", "layer.0.value.weight"];

fn weight_values(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializer(name).unwrap_or_else(|| panic!("no initializer {name}")).to_f32_lossy().unwrap()
}

fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = adaptc_ir::dump(model);
    let err = PassManager::new(&Registry::builtin(), pipeline)
        .and_then(|m| m.run(model))
        .map(|_| ())
        .expect_err("the pipeline should fail")
        .to_string();
    assert_eq!(adaptc_ir::dump(model), before, "a failed pass must leave the model unchanged");
    err
}

fn notes(report: &RunReport) -> Vec<String> {
    report.runs.iter().flat_map(|r| r.notes.clone()).collect()
}

/// A fresh directory under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adaptc-quantize-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ----- an independent decoder (ONNX DequantizeLinear-21 and onnxruntime's MatMulNBits) ---------

fn ints(t: &Tensor) -> Vec<i32> {
    let b = t.bytes().unwrap();
    let n = t.numel() as usize;
    match t.dtype() {
        DataType::Int8 => b.iter().map(|&v| v as i8 as i32).collect(),
        DataType::Uint8 => b.iter().map(|&v| v as i32).collect(),
        // Two per byte, the first element in the low nibble.
        DataType::Int4 => (0..n).map(|i| (((b[i / 2] >> (4 * (i % 2))) << 4) as i8 >> 4) as i32).collect(),
        DataType::Uint4 => (0..n).map(|i| ((b[i / 2] >> (4 * (i % 2))) & 0xF) as i32).collect(),
        other => panic!("{other}"),
    }
}

/// What a `DequantizeLinear` producing `value` feeds its readers, and its parts.
struct Qdq {
    values: Vec<f32>,
    q: Tensor,
    scale: Tensor,
    zp: Option<Tensor>,
    axis: i64,
    block: i64,
    /// `|scale|` of each element's group.
    steps: Vec<f32>,
}

fn decode_qdq(m: &Model, value: &str) -> Qdq {
    let g = &m.graph;
    let (id, _) = g.producer(value).unwrap_or_else(|| panic!("`{value}` has no producer"));
    let n = g.node(id);
    assert_eq!(n.op().op_type, "DequantizeLinear");
    let init = |slot: usize| n.input(slot).filter(|s| !s.is_empty()).map(|s| g.initializer(s).unwrap().clone());
    let (q, scale, zp) = (init(0).unwrap(), init(1).unwrap(), init(2));
    let (axis, block) = (n.attr_int("axis", 1), n.attr_int("block_size", 0));
    let dims: Vec<usize> = q.dims().iter().map(|&d| d as usize).collect();
    assert_eq!(dims.len(), 2);
    let (levels, scales) = (ints(&q), scale.to_f32_lossy().unwrap());
    let zps = zp.as_ref().map_or(vec![0; scales.len()], ints);
    let mut values = Vec::new();
    let mut steps = Vec::new();
    for r in 0..dims[0] {
        for c in 0..dims[1] {
            let s = match (axis, block) {
                (0, 0) => r,
                (1, 0) => c,
                (0, b) => (r / b as usize) * dims[1] + c,
                (1, b) => r * dims[1].div_ceil(b as usize) + c / b as usize,
                other => panic!("{other:?}"),
            };
            let i = r * dims[1] + c;
            values.push((levels[i] - zps[s]) as f32 * scales[s]);
            steps.push(scales[s].abs());
        }
    }
    Qdq { values, q, scale, zp, axis, block, steps }
}

/// `W[K, N]` of a `MatMulNBits` node, decoded from onnxruntime's layout description.
struct NBits {
    w: Vec<f32>,
    k: usize,
    n: usize,
    steps: Vec<f32>,
    input: String,
}

fn decode_nbits(m: &Model, node_name: &str) -> NBits {
    let g = &m.graph;
    let (_, n) = g.nodes().find(|(_, n)| n.name == node_name).unwrap_or_else(|| panic!("no node {node_name}"));
    assert_eq!((n.op().domain.as_str(), n.op().op_type.as_str()), ("com.microsoft", "MatMulNBits"));
    let attr = |a: &str| n.attr(a).and_then(|a| a.as_int()).unwrap() as usize;
    let (k, nn, bits, bs) = (attr("K"), attr("N"), attr("bits"), attr("block_size"));
    assert!(n.attr("accuracy_level").is_none());
    let init = |slot: usize| n.input(slot).filter(|s| !s.is_empty()).map(|s| g.initializer(s).unwrap().clone());
    let (b, scales, zp) = (init(1).unwrap(), init(2).unwrap(), init(3));
    let nb = k.div_ceil(bs);
    let blob = bs * bits / 8;
    assert_eq!(b.dims(), [nn as u64, nb as u64, blob as u64]);
    assert_eq!(b.dtype(), DataType::Uint8);
    assert_eq!(scales.dims(), [(nn * nb) as u64]);
    let (bb, sc) = (b.bytes().unwrap().into_owned(), scales.to_f32_lossy().unwrap());
    let zrow = (nb * bits).div_ceil(8);
    let zb = zp.map(|z| {
        assert_eq!(z.dims(), [(nn * zrow) as u64]);
        z.bytes().unwrap().into_owned()
    });
    let field = |bytes: &[u8], i: usize| -> i32 {
        let per = 8 / bits;
        ((bytes[i / per] >> (bits * (i % per))) & ((1u16 << bits) - 1) as u8) as i32
    };
    let mut w = vec![0f32; k * nn];
    let mut steps = vec![0f32; k * nn];
    for c in 0..nn {
        for kk in 0..k {
            let blk = kk / bs;
            let code = field(&bb[(c * nb + blk) * blob..(c * nb + blk + 1) * blob], kk % bs);
            let z = zb.as_ref().map_or(1 << (bits - 1), |z| field(&z[c * zrow..(c + 1) * zrow], blk));
            w[kk * nn + c] = (code - z) as f32 * sc[c * nb + blk];
            steps[kk * nn + c] = sc[c * nb + blk].abs();
        }
    }
    NBits { w, k, n: nn, steps, input: n.input(0).unwrap().to_string() }
}

/// `w` stored `[R, C]`, transposed.
fn transpose(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    (0..c * r).map(|i| w[(i % r) * c + i / r]).collect()
}

/// Every element within `limit · step` of the original (a relative slack for f32 rounding).
fn assert_within_steps(original: &[f32], dequantized: &[f32], steps: &[f32], limit: f32, what: &str) {
    assert_eq!(original.len(), dequantized.len(), "{what}");
    for (i, ((a, b), s)) in original.iter().zip(dequantized).zip(steps).enumerate() {
        assert!((a - b).abs() <= limit * s * 1.000_01 + 1e-7, "{what}[{i}]: {a} → {b}, step {s}");
    }
}

// ----- golden dumps ---------------------------------------------------------------------------

#[test]
fn golden_qdq_int8_per_channel() {
    let mut m = tiny(32, 20);
    let report = run("quantize-weights", &mut m);
    assert_eq!(stat(&report, "quant.layers"), 3);
    assert_eq!(stat(&report, "quant.weights"), 3 * 512);
    assert_eq!(stat(&report, "quant.bytes_before"), 3 * 2048);
    assert_eq!(stat(&report, "quant.bytes_after"), 3 * (512 + 16 * 4));
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[batch, 32]
  init %layer.0.query.bias: f32[16]
  init %layer.0.key.bias: f32[16]
  init %layer.0.query.weight_quantized: i8[32, 16]
  init %layer.0.query.weight_scale: f32[16]
  init %layer.0.key.weight_quantized: i8[16, 32]
  init %layer.0.key.weight_scale: f32[16]
  init %layer.0.value.weight_quantized: i8[16, 32]
  init %layer.0.value.weight_scale: f32[16]
  %layer.0.query.weight = DequantizeLinear(%layer.0.query.weight_quantized, %layer.0.query.weight_scale) {axis=1}  # layer.0.query/DequantizeLinear
  %q0 = MatMul(%x, %layer.0.query.weight)  # /layer.0/query/MatMul
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %layer.0.key.weight = DequantizeLinear(%layer.0.key.weight_quantized, %layer.0.key.weight_scale) {axis=0}  # layer.0.key/DequantizeLinear
  %k = Gemm(%x, %layer.0.key.weight, %layer.0.key.bias) {transB=1}  # /layer.0/key/Gemm
  %qk = Add(%q, %k)  # /sum/Add
  %layer.0.value.weight = DequantizeLinear(%layer.0.value.weight_quantized, %layer.0.value.weight_scale) {axis=0}  # layer.0.value/DequantizeLinear
  %vt = Transpose(%layer.0.value.weight) {perm=[1, 0]}  # /layer.0/value/Transpose
  %v = MatMul(%x, %vt)  # /layer.0/value/MatMul
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
    for (_, n) in m.graph.nodes().filter(|(_, n)| n.op().op_type == "DequantizeLinear") {
        assert_eq!(n.metadata.get("adaptc.pass"), Some("quantize-weights"));
    }
}

#[test]
fn golden_qdq_int4_blocked_raises_the_opset() {
    let mut m = tiny(32, 20);
    m.ir_version = 9;
    let report = run("quantize-weights{bits=4 block=16 scheme=asym}", &mut m);
    assert!(notes(&report).iter().any(|n| n.contains("raised the default-domain opset to 21")), "{:?}", notes(&report));
    // 512 int4 = 256 bytes; 2 blocks × 16 channels: 32 f32 scales + 32 uint4 zero points.
    assert_eq!(stat(&report, "quant.bytes_after"), 3 * (256 + 128 + 16));
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=21]
graph g {
  input %x: f32[batch, 32]
  init %layer.0.query.bias: f32[16]
  init %layer.0.key.bias: f32[16]
  init %layer.0.query.weight_quantized: u4[32, 16]
  init %layer.0.query.weight_scale: f32[2, 16]
  init %layer.0.query.weight_zero_point: u4[2, 16]
  init %layer.0.key.weight_quantized: u4[16, 32]
  init %layer.0.key.weight_scale: f32[16, 2]
  init %layer.0.key.weight_zero_point: u4[16, 2]
  init %layer.0.value.weight_quantized: u4[16, 32]
  init %layer.0.value.weight_scale: f32[16, 2]
  init %layer.0.value.weight_zero_point: u4[16, 2]
  %layer.0.query.weight = DequantizeLinear(%layer.0.query.weight_quantized, %layer.0.query.weight_scale, %layer.0.query.weight_zero_point) {axis=0, block_size=16}  # layer.0.query/DequantizeLinear
  %q0 = MatMul(%x, %layer.0.query.weight)  # /layer.0/query/MatMul
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %layer.0.key.weight = DequantizeLinear(%layer.0.key.weight_quantized, %layer.0.key.weight_scale, %layer.0.key.weight_zero_point) {axis=1, block_size=16}  # layer.0.key/DequantizeLinear
  %k = Gemm(%x, %layer.0.key.weight, %layer.0.key.bias) {transB=1}  # /layer.0/key/Gemm
  %qk = Add(%q, %k)  # /sum/Add
  %layer.0.value.weight = DequantizeLinear(%layer.0.value.weight_quantized, %layer.0.value.weight_scale, %layer.0.value.weight_zero_point) {axis=1, block_size=16}  # layer.0.value/DequantizeLinear
  %vt = Transpose(%layer.0.value.weight) {perm=[1, 0]}  # /layer.0/value/Transpose
  %v = MatMul(%x, %vt)  # /layer.0/value/MatMul
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
}

#[test]
fn golden_matmulnbits() {
    let mut m = tiny(32, 20);
    let report = run("quantize-weights{bits=4 block=16 scheme=asym format=matmulnbits}", &mut m);
    assert_eq!(stat(&report, "quant.layers"), 3);
    // B: 16 × 2 × 8 bytes; 32 f32 scales; zero points 16 × 1 byte.
    assert_eq!(stat(&report, "quant.bytes_after"), 3 * (256 + 128 + 16));
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20, com.microsoft=1]
graph g {
  input %x: f32[batch, 32]
  init %layer.0.query.bias: f32[16]
  init %layer.0.key.bias: f32[16]
  init %layer.0.query.weight_quantized: u8[16, 2, 8]
  init %layer.0.query.weight_scale: f32[32]
  init %layer.0.query.weight_zero_point: u8[16]
  init %layer.0.key.weight_quantized: u8[16, 2, 8]
  init %layer.0.key.weight_scale: f32[32]
  init %layer.0.key.weight_zero_point: u8[16]
  init %layer.0.value.weight_quantized: u8[16, 2, 8]
  init %layer.0.value.weight_scale: f32[32]
  init %layer.0.value.weight_zero_point: u8[16]
  %q0 = com.microsoft::MatMulNBits(%x, %layer.0.query.weight_quantized, %layer.0.query.weight_scale, %layer.0.query.weight_zero_point) {K=32, N=16, bits=4, block_size=16}  # /layer.0/query/MatMul
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %k/matmulnbits = com.microsoft::MatMulNBits(%x, %layer.0.key.weight_quantized, %layer.0.key.weight_scale, %layer.0.key.weight_zero_point) {K=32, N=16, bits=4, block_size=16}  # /layer.0/key/Gemm
  %k = Add(%k/matmulnbits, %layer.0.key.bias)  # layer.0.key/bias/Add
  %qk = Add(%q, %k)  # /sum/Add
  %v = com.microsoft::MatMulNBits(%x, %layer.0.value.weight_quantized, %layer.0.value.weight_scale, %layer.0.value.weight_zero_point) {K=32, N=16, bits=4, block_size=16}  # /layer.0/value/MatMul
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
    // And back: MatMul(x, W[K, N]) under the MatMulNBits node's name; a Gemm's bias stays an Add.
    let report = run("dequantize-weights", &mut m);
    assert_eq!(stat(&report, "dequant.matmulnbits"), 3);
    assert_dump(
        &m,
        r#"
model ir_version=10 opsets=[ai.onnx=20, com.microsoft=1]
graph g {
  input %x: f32[batch, 32]
  init %layer.0.query.bias: f32[16]
  init %layer.0.key.bias: f32[16]
  init %layer.0.query.weight: f32[32, 16]
  init %layer.0.key.weight: f32[32, 16]
  init %layer.0.value.weight: f32[32, 16]
  %q0 = MatMul(%x, %layer.0.query.weight)  # /layer.0/query/MatMul
  %q = Add(%q0, %layer.0.query.bias)  # /layer.0/query/Add
  %k/matmulnbits = MatMul(%x, %layer.0.key.weight)  # /layer.0/key/Gemm
  %k = Add(%k/matmulnbits, %layer.0.key.bias)  # layer.0.key/bias/Add
  %qk = Add(%q, %k)  # /sum/Add
  %v = MatMul(%x, %layer.0.value.weight)  # /layer.0/value/MatMul
  %y = Add(%qk, %v)  # /sum/Add_1
  output %y: ?
}
"#,
    );
}

// ----- numbers --------------------------------------------------------------------------------

#[test]
fn qdq_error_is_within_half_a_step_and_layouts_follow_onnx() {
    for (bits, block, scheme) in [
        (8, 0, "sym"),
        (8, 0, "asym"),
        (8, 16, "sym"),
        (4, 16, "sym"),
        (4, 16, "asym"),
        (4, 0, "asym"),
        (4, 32, "sym-full"),
    ] {
        let base = tiny(32, 21);
        let mut m = base.clone();
        run(&format!("quantize-weights{{bits={bits} block={block} scheme={scheme}}}"), &mut m);
        adaptc_ir::verify(&m.graph).unwrap();
        for w in WEIGHTS {
            let what = format!("{w} bits={bits} block={block} {scheme}");
            let original = weight_values(&base, w);
            let d = decode_qdq(&m, w);
            let limit = if scheme == "sym-full" { 1.0 } else { 0.5 };
            assert_within_steps(&original, &d.values, &d.steps, limit, &what);
            // The data type says the scheme: signed without zero point, unsigned with one.
            let expect_type = match (bits, scheme) {
                (8, "asym") => DataType::Uint8,
                (8, _) => DataType::Int8,
                (4, "asym") => DataType::Uint4,
                _ => DataType::Int4,
            };
            assert_eq!(d.q.dtype(), expect_type, "{what}");
            assert_eq!(d.zp.is_some(), scheme == "asym", "{what}");
            if let Some(zp) = &d.zp {
                assert_eq!((zp.dtype(), zp.dims()), (expect_type, d.scale.dims()), "{what}");
            }
            // Per channel: one scale per output feature along the output axis; blocked: the
            // input axis, ceil(K / block) scales per channel.
            let in_out = w == "layer.0.query.weight";
            let out_axis = if in_out { 1 } else { 0 };
            if block == 0 {
                assert_eq!((d.axis, d.block, d.scale.dims()), (out_axis, 0, &[16u64][..]), "{what}");
            } else {
                let nb = 32u64.div_ceil(block as u64);
                let dims = if in_out { vec![nb, 16] } else { vec![16, nb] };
                assert_eq!((d.axis, d.block, d.scale.dims().to_vec()), (1 - out_axis, block, dims), "{what}");
            }
            let levels = ints(&d.q);
            match scheme {
                // Narrow symmetric: levels within ±(2^(b-1) − 1), each group's extreme exactly there.
                "sym" => {
                    let lim = (1 << (bits - 1)) - 1;
                    assert!(levels.iter().all(|&l| l.abs() <= lim), "{what}");
                    assert!(levels.contains(&lim) || levels.contains(&-lim), "{what}");
                }
                "sym-full" => assert!(levels.contains(&-(1 << (bits - 1))), "{what}"),
                _ => assert!(levels.iter().all(|&l| (0..1 << bits).contains(&l)), "{what}"),
            }
        }
    }
}

#[test]
fn per_channel_sym_int8_is_max_abs_over_127() {
    let base = tiny(32, 20);
    let mut m = base.clone();
    run("quantize-weights{targets=query}", &mut m);
    let w = weight_values(&base, "layer.0.query.weight"); // [32, 16]
    let d = decode_qdq(&m, "layer.0.query.weight");
    let scales = d.scale.to_f32().unwrap();
    let levels = ints(&d.q);
    for c in 0..16 {
        let amax = (0..32).map(|r| w[r * 16 + c].abs()).fold(0f32, f32::max);
        assert_eq!(scales[c], amax / 127.0);
        for r in 0..32 {
            assert_eq!(levels[r * 16 + c], (w[r * 16 + c] * (1.0 / scales[c])).round() as i32);
        }
    }
    // Only the query layer was chosen; the others are untouched.
    assert_eq!(weight_values(&m, "layer.0.key.weight"), weight_values(&base, "layer.0.key.weight"));
    assert!(m.graph.initializer("layer.0.value.weight").is_some());
}

#[test]
fn matmulnbits_decodes_to_the_same_weights_as_qdq() {
    for (bits, block, scheme) in [(4, 16, "asym"), (4, 16, "sym"), (4, 32, "sym-full"), (8, 16, "asym"), (8, 32, "sym")]
    {
        let base = tiny(32, 21);
        let mut qdq = base.clone();
        run(&format!("quantize-weights{{bits={bits} block={block} scheme={scheme}}}"), &mut qdq);
        let mut nb = base.clone();
        run(&format!("quantize-weights{{bits={bits} block={block} scheme={scheme} format=matmulnbits}}"), &mut nb);
        adaptc_ir::verify(&nb.graph).unwrap();
        for (w, node, in_out) in [
            ("layer.0.query.weight", "/layer.0/query/MatMul", true),
            ("layer.0.key.weight", "/layer.0/key/Gemm", false),
            ("layer.0.value.weight", "/layer.0/value/MatMul", false),
        ] {
            let what = format!("{w} bits={bits} block={block} {scheme}");
            let d = decode_nbits(&nb, node);
            assert_eq!((d.k, d.n, d.input.as_str()), (32, 16, "x"), "{what}");
            let q = decode_qdq(&qdq, w);
            let qdq_kn = if in_out { q.values.clone() } else { transpose(&q.values, 16, 32) };
            assert_eq!(d.w, qdq_kn, "{what}");
            let original = weight_values(&base, w);
            let original_kn = if in_out { original } else { transpose(&original, 16, 32) };
            let limit = if scheme == "sym-full" { 1.0 } else { 0.5 };
            assert_within_steps(&original_kn, &d.w, &d.steps, limit, &what);
        }
    }
}

#[test]
fn block_that_does_not_divide_the_input_features() {
    // K = 40 with block 16: blocks of 16, 16 and 8. QDQ keeps ceil(40/16) = 3 scales per
    // channel (ONNX's blocked quantization); MatMulNBits pads the last block with zeros.
    let base = tiny(40, 21);
    let mut qdq = base.clone();
    run("quantize-weights{bits=4 block=16 scheme=asym}", &mut qdq);
    let d = decode_qdq(&qdq, "layer.0.query.weight");
    assert_eq!(d.scale.dims(), [3, 16]);
    assert_within_steps(&weight_values(&base, "layer.0.query.weight"), &d.values, &d.steps, 0.5, "qdq");
    let mut nb = base.clone();
    run("quantize-weights{bits=4 block=16 scheme=asym format=matmulnbits}", &mut nb);
    let n = decode_nbits(&nb, "/layer.0/query/MatMul");
    assert_eq!(n.w, d.values);
    let b = nb.graph.initializer("layer.0.query.weight_quantized").unwrap();
    assert_eq!(b.dims(), [16, 3, 8]);
    let bytes = b.bytes().unwrap();
    for c in 0..16 {
        assert!(bytes[c * 24 + 20..c * 24 + 24].iter().all(|&x| x == 0), "padding of channel {c}");
    }
    // Zero points: 3 blocks → 2 bytes per channel, the unused high nibble holds 8.
    let zp = nb.graph.initializer("layer.0.query.weight_zero_point").unwrap();
    assert_eq!(zp.dims(), [32]);
    assert!(zp.bytes().unwrap().chunks(2).all(|c| c[1] >> 4 == 8));
}

#[test]
fn int4_packing_round_trips() {
    // Levels written by the pass come back through the ONNX raw layout decoder above, and the
    // packed bytes are exactly two levels per byte, low nibble first.
    let base = tiny(32, 21);
    let mut m = base.clone();
    run("quantize-weights{bits=4 block=16 scheme=sym targets=query}", &mut m);
    let q = decode_qdq(&m, "layer.0.query.weight").q;
    assert_eq!(q.dtype(), DataType::Int4);
    let bytes = q.bytes().unwrap();
    assert_eq!(bytes.len(), 32 * 16 / 2);
    let levels = ints(&q);
    for (i, b) in bytes.iter().enumerate() {
        let lo = levels[2 * i] & 0xF;
        let hi = levels[2 * i + 1] & 0xF;
        assert_eq!(*b as i32, lo | (hi << 4));
    }
    let w = weight_values(&base, "layer.0.query.weight");
    let scales = decode_qdq(&m, "layer.0.query.weight").scale.to_f32().unwrap(); // [2, 16]
    for r in 0..32 {
        for c in 0..16 {
            let s = scales[(r / 16) * 16 + c];
            assert_eq!(levels[r * 16 + c], (w[r * 16 + c] * (1.0 / s)).round().clamp(-7.0, 7.0) as i32);
        }
    }
}

#[test]
fn float16_weights_keep_float16_scales() {
    let mut m = model(17, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Float16, vec![Dim::Known(2), Dim::Known(32)]));
        let v: Vec<u8> = values(32 * 8, 9).iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        g.add_initializer(Tensor::from_bytes("blk.0.fc.weight", DataType::Float16, vec![32, 8], v).unwrap()).unwrap();
        add(g, node("MatMul", &["x", "blk.0.fc.weight"], &["h"]).named("/blk.0/fc/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    });
    let base = m.clone();
    run("quantize-weights", &mut m);
    assert_eq!(m.opset(""), Some(19), "float16 scales need DequantizeLinear-19");
    let d = decode_qdq(&m, "blk.0.fc.weight");
    assert_eq!(d.scale.dtype(), DataType::Float16);
    assert_within_steps(&weight_values(&base, "blk.0.fc.weight"), &d.values, &d.steps, 0.5, "f16");
}

// ----- the exact inverse ------------------------------------------------------------------------

#[test]
fn dequantize_is_the_exact_inverse() {
    for pipeline in [
        "quantize-weights",
        "quantize-weights{bits=4 block=16 scheme=asym}",
        "quantize-weights{bits=4 block=32 scheme=sym-full}",
        "quantize-weights{bits=4 block=16 scheme=asym format=matmulnbits}",
        "quantize-weights{bits=8 block=32 scheme=sym format=matmulnbits}",
    ] {
        let base = tiny(32, 20);
        let mut m = base.clone();
        run(pipeline, &mut m);
        let nbits = pipeline.contains("matmulnbits");
        // Expected values, decoded independently from the quantized form.
        let expected: HashMap<&str, Vec<f32>> = [
            ("layer.0.query.weight", "/layer.0/query/MatMul"),
            ("layer.0.key.weight", "/layer.0/key/Gemm"),
            ("layer.0.value.weight", "/layer.0/value/MatMul"),
        ]
        .into_iter()
        .map(|(w, node)| (w, if nbits { decode_nbits(&m, node).w } else { decode_qdq(&m, w).values }))
        .collect();

        let report = run("dequantize-weights", &mut m);
        adaptc_ir::verify(&m.graph).unwrap();
        let key = if nbits { "dequant.matmulnbits" } else { "dequant.qdq" };
        assert_eq!(stat(&report, key), 3, "{pipeline}");
        assert_eq!(stat(&report, "dequant.skipped"), 0, "{pipeline}");
        assert_eq!(stat(&report, "dequant.bytes_after"), 3 * 2048, "{pipeline}");
        for (w, values) in &expected {
            let got = weight_values(&m, w);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{pipeline}: {w}"
            );
        }
        // Nothing quantized is left, and the layers are linear layers again with their paths.
        assert!(m.graph.initializers().all(|t| t.dtype() == DataType::Float), "{pipeline}");
        let mut paths: Vec<String> = find_linear_layers(&m.graph).into_iter().filter_map(|l| l.module_path).collect();
        paths.sort();
        assert_eq!(paths, strings(&["layer.0.key", "layer.0.query", "layer.0.value"]), "{pipeline}");
        if nbits {
            // MatMulNBits came back as MatMul(x, W[K, N]) (+ Add for the Gemm's bias).
            assert_eq!(m.graph.initializer("layer.0.key.weight").unwrap().dims(), [32, 16]);
            assert!(m.graph.nodes().all(|(_, n)| n.op().op_type != "MatMulNBits"));
            assert!(m.graph.nodes().all(|(_, n)| n.metadata.get("adaptc.pass").is_none() || n.op().is("Add")));
        } else {
            // QDQ: the very graph we started from, with the dequantized values.
            // (Initializers come back at the end of the list.)
            let sorted = |d: String| {
                let mut lines: Vec<String> = d.lines().map(str::to_string).collect();
                lines.sort();
                lines
            };
            let after = adaptc_ir::dump(&m).replace("ai.onnx=21", "ai.onnx=20");
            assert_eq!(sorted(after), sorted(adaptc_ir::dump(&base)), "{pipeline}");
        }
        // Re-quantizing the dequantized weights with the same settings is (nearly) free.
        assert!(stat(&report, "dequant.requant_max_abs_err_e9") < 1_000, "{pipeline}: {report}");
        // And quantizing again reproduces the same quantized model.
        if pipeline == "quantize-weights" {
            let mut again = m.clone();
            run(pipeline, &mut again);
            let mut first = base.clone();
            run(pipeline, &mut first);
            for w in WEIGHTS {
                assert_eq!(decode_qdq(&again, w).values, decode_qdq(&first, w).values);
            }
        }
    }
}

#[test]
fn dequantize_handles_per_tensor_and_foreign_layouts() {
    // A DequantizeLinear written by someone else: per-tensor uint8 with a zero point on a
    // Constant node, feeding a MatMul; and one of an activation, which is left alone.
    let mut m = model(21, |g| {
        g.inputs.push(f32_input("x", &[2, 4]));
        g.inputs.push(ValueInfo::tensor("xa", DataType::Uint8, vec![Dim::Known(4)]));
        let q = Tensor::from_bytes("wq", DataType::Uint8, vec![4, 2], vec![0, 10, 128, 255, 7, 9, 100, 200]).unwrap();
        g.add_initializer(q).unwrap();
        add(g, node_with("Constant", &[], &["ws"], vec![Attribute::tensor("value", f32s("", &[], &[0.5]))]));
        g.add_initializer(Tensor::from_bytes("wz", DataType::Uint8, vec![], vec![128]).unwrap()).unwrap();
        add(g, node("DequantizeLinear", &["wq", "ws", "wz"], &["w"]).named("dq_w"));
        add(g, node("DequantizeLinear", &["xa", "ws", "wz"], &["a"]).named("dq_act"));
        add(g, node("MatMul", &["x", "w"], &["y"]).named("/fc/MatMul"));
        g.outputs.push(output("y"));
        g.outputs.push(output("a"));
    });
    let report = run("dequantize-weights", &mut m);
    assert_eq!(stat(&report, "dequant.qdq"), 1);
    assert_eq!(weight_values(&m, "w"), vec![-64.0, -59.0, 0.0, 63.5, -60.5, -59.5, -14.0, 36.0]);
    // `ws` and `wz` still feed the activation's DequantizeLinear; `wq` is gone.
    assert!(m.graph.initializer("wq").is_none());
    assert!(m.graph.initializer("wz").is_some());
    assert!(m.graph.nodes().any(|(_, n)| n.name == "dq_act"));
    adaptc_ir::verify(&m.graph).unwrap();
}

// ----- bert6 ------------------------------------------------------------------------------------

fn load_bert6() -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/bert6.onnx");
    adaptc_ir::onnx::load(&path).unwrap()
}

#[test]
fn bert6_in_both_formats() {
    let base = load_bert6();
    let linear_bytes: i64 =
        find_linear_layers(&base.graph).iter().map(|l| l.weight_tensor(&base.graph).unwrap().byte_len() as i64).sum();
    let dir = scratch("bert6");
    for (pipeline, limit, opset) in [
        ("quantize-weights", 0.30, 20),
        ("quantize-weights{bits=4 block=32 scheme=asym}", 0.18, 21),
        ("quantize-weights{bits=4 block=32 scheme=sym}", 0.18, 21),
        ("quantize-weights{format=matmulnbits}", 0.30, 20),
        ("quantize-weights{bits=4 block=32 scheme=asym format=matmulnbits}", 0.18, 20),
    ] {
        let mut m = base.clone();
        let report_path = dir.join("report.json");
        let report = run(&format!("{pipeline},dce"), &mut m);
        adaptc_ir::verify(&m.graph).unwrap();
        assert_eq!(m.opset(""), Some(opset), "{pipeline}");
        // All 37 linear layers (36 MatMul + the pooler's Gemm): embeddings stay float.
        assert_eq!(stat(&report, "quant.layers"), 37, "{pipeline}");
        assert_eq!(stat(&report, "quant.bytes_before"), linear_bytes, "{pipeline}");
        let ratio = stat(&report, "quant.bytes_after") as f64 / linear_bytes as f64;
        assert!(ratio <= limit, "{pipeline}: {ratio}");
        for t in base.graph.initializers().filter(|t| t.name.contains("embeddings")) {
            assert!(m.graph.initializer(&t.name).is_some_and(|u| u.same_value(t)), "{}", t.name);
        }
        // The written model loads back and verifies.
        let path = dir.join("q.onnx");
        adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
        let back = adaptc_ir::onnx::load(&path).unwrap();
        adaptc_ir::verify(&back.graph).unwrap();
        assert_eq!(adaptc_ir::dump(&back), adaptc_ir::dump(&m));
        // Round trip back to float and its report.
        let mut with_report = base.clone();
        run(&format!("{}report={}}}", pipeline_with_open_brace(pipeline), report_path.display()), &mut with_report);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        assert_eq!(json["total_layers"], 37);
        assert_eq!(json["layers"].as_array().unwrap().len(), 37);
        let first = &json["layers"][0];
        assert_eq!(first["module"], "encoder.layer.0.attention.self.query");
        assert!(first["max_abs_err"].as_f64().unwrap() >= first["mean_abs_err"].as_f64().unwrap());
        assert!(first["bytes_after"].as_u64().unwrap() < first["bytes_before"].as_u64().unwrap());
        let report = run("dequantize-weights,dce", &mut m);
        assert_eq!(stat(&report, "dequant.qdq") + stat(&report, "dequant.matmulnbits"), 37, "{pipeline}");
        assert_eq!(find_linear_layers(&m.graph).len(), 37, "{pipeline}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quantize-weights{…}` → `quantize-weights{… ` (and `quantize-weights` → `quantize-weights{`),
/// to append one more option.
fn pipeline_with_open_brace(p: &str) -> String {
    match p.strip_suffix('}') {
        Some(open) => format!("{open} "),
        None => format!("{p}{{"),
    }
}

#[test]
fn every_linear_form_quantizes_and_comes_back() {
    // The exporter spellings of tests/fixtures/models/linear_forms (MatMul, MatMul + Add either
    // order, Gemm transB 0/1, MatMul(Transpose(W))): quantize, verify, write and read back,
    // dequantize, and compare the weight with the original (as [in, out], within one step).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/linear_forms");
    let scratch = scratch("forms");
    let as_in_out = |m: &Model| -> Vec<f32> {
        let layers = find_linear_layers(&m.graph);
        assert_eq!(layers.len(), 1);
        let l = &layers[0];
        let w = l.weight_tensor(&m.graph).unwrap().to_f32_lossy().unwrap();
        match l.layout {
            adaptc_passes::pattern::WeightLayout::InOut => w,
            adaptc_passes::pattern::WeightLayout::OutIn => {
                transpose(&w, l.out_features as usize, l.in_features as usize)
            }
        }
    };
    for file in ["matmul.onnx", "matmul_add.onnx", "gemm_transb.onnx", "gemm_notrans.onnx", "matmul_transpose.onnx"] {
        let base = adaptc_ir::onnx::load(&dir.join(file)).unwrap();
        let original = as_in_out(&base);
        let (lo, hi) = original.iter().fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        for (options, bits) in [
            ("", 8),
            ("bits=4 block=16 scheme=asym", 4),
            ("bits=4 block=16 scheme=sym-full format=matmulnbits", 4),
            ("format=matmulnbits", 8),
        ] {
            let what = format!("{file} {options}");
            let mut m = base.clone();
            let report = run(&format!("quantize-weights{{targets=re:.* {options}}}"), &mut m);
            assert_eq!(stat(&report, "quant.layers"), 1, "{what}");
            adaptc_ir::verify(&m.graph).unwrap();
            let path = scratch.join("q.onnx");
            adaptc_ir::onnx::save(&m, &path, &Default::default()).unwrap();
            let mut back = adaptc_ir::onnx::load(&path).unwrap();
            let report = run("dequantize-weights,dce", &mut back);
            assert_eq!(stat(&report, "dequant.qdq") + stat(&report, "dequant.matmulnbits"), 1, "{what}");
            let step = (hi - lo) / ((1 << bits) - 1) as f32;
            for (a, b) in original.iter().zip(as_in_out(&back)) {
                assert!((a - b).abs() <= step * 1.0001, "{what}: {a} → {b} (step {step})");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

// ----- refusals -------------------------------------------------------------------------------

#[test]
fn bad_options_are_refused_before_running() {
    let build = |p: &str| PassManager::new(&Registry::builtin(), p).err().map(|e| e.to_string()).unwrap_or_default();
    let e = build("quantize-weights{bits=3}");
    assert!(e.contains("option `bits`") && e.contains("3 bits are not supported: use 8"), "{e}");
    let e = build("quantize-weights{bits=4 block=48}");
    assert!(e.contains("option `block`") && e.contains("power of two"), "{e}");
    let e = build("quantize-weights{block=8}");
    assert!(e.contains("option `block`"), "{e}");
    let e = build("quantize-weights{scheme=nf4}");
    assert!(e.contains("option `scheme`"), "{e}");
    let e = build("quantize-weights{format=gguf}");
    assert!(e.contains("option `format`"), "{e}");
}

#[test]
fn trainable_weights_are_refused() {
    let mut m = tiny(32, 20);
    m.graph.initializer_mut("layer.0.key.weight").unwrap().metadata.set("adaptc.trainable", "true");
    let e = run_err("quantize-weights", &mut m);
    assert!(e.contains("`layer.0.key`") && e.contains("is trainable"), "{e}");
    // Excluding it lets the rest through.
    run("quantize-weights{exclude=key}", &mut m);
    assert!(m.graph.initializer("layer.0.key.weight").is_some());
}

#[test]
fn non_float_weights_are_refused() {
    let mut m = model(20, |g| {
        g.inputs.push(ValueInfo::tensor("x", DataType::Int32, vec![Dim::Known(2), Dim::Known(4)]));
        g.add_initializer(i32s("fc.weight", &[4, 3], &[1; 12])).unwrap();
        add(g, node("MatMul", &["x", "fc.weight"], &["h"]).named("/fc/MatMul"));
        add(g, node("Relu", &["h"], &["y"]));
        g.outputs.push(output("y"));
    });
    let e = run_err("quantize-weights", &mut m);
    assert!(e.contains("`fc`") && e.contains("is i32") && e.contains("only float32, float16 and bfloat16"), "{e}");
}

#[test]
fn shared_weights_serve_every_reader_in_qdq_and_are_refused_by_matmulnbits() {
    // One weight read by two layers and by a Gather (a tied embedding).
    let shared = || {
        model(20, |g| {
            g.inputs.push(f32_input("x", &[2, 32]));
            g.inputs.push(ValueInfo::tensor("ids", DataType::Int64, vec![Dim::Known(2)]));
            g.add_initializer(f32s("enc.proj.weight", &[32, 16], &values(512, 7))).unwrap();
            add(g, node("MatMul", &["x", "enc.proj.weight"], &["a"]).named("/enc/proj/MatMul"));
            add(g, node("MatMul", &["x", "enc.proj.weight"], &["b"]).named("/dec/proj/MatMul"));
            add(g, node("Gather", &["enc.proj.weight", "ids"], &["e"]).named("/embed/Gather"));
            add(g, node("Add", &["a", "b"], &["y"]));
            g.outputs.push(output("y"));
            g.outputs.push(output("e"));
        })
    };
    let mut m = shared();
    let report = run("quantize-weights{bits=4 block=16}", &mut m);
    assert_eq!(stat(&report, "quant.layers"), 2);
    assert_eq!(stat(&report, "quant.shared"), 1);
    assert!(notes(&report).iter().any(|n| n.contains("/embed/Gather")), "{:?}", notes(&report));
    assert_eq!(m.graph.uses("enc.proj.weight").len(), 3);
    assert_eq!(
        m.graph.producer("enc.proj.weight").map(|(id, _)| m.graph.node(id).op().op_type.clone()).as_deref(),
        Some("DequantizeLinear")
    );
    adaptc_ir::verify(&m.graph).unwrap();

    let mut m = shared();
    let e = run_err("quantize-weights{bits=4 block=16 format=matmulnbits}", &mut m);
    assert!(e.contains("is shared") && e.contains("/embed/Gather") && e.contains("format=qdq"), "{e}");
}

#[test]
fn matmulnbits_per_channel_needs_a_power_of_two() {
    let mut m = tiny(40, 20);
    let e = run_err("quantize-weights{format=matmulnbits}", &mut m);
    assert!(e.contains("K=40") && e.contains("block=32"), "{e}");
    let mut m = tiny(32, 20);
    let report = run("quantize-weights{format=matmulnbits}", &mut m);
    assert_eq!(stat(&report, "quant.layers"), 3);
    assert_eq!(decode_nbits(&m, "/layer.0/query/MatMul").steps.len(), 512);
}

#[test]
fn opset_raise_is_refused_when_an_operator_would_change() {
    // Opset 17: Split without a `split` input becomes invalid at 18 (num_outputs required).
    let with_split = || {
        let mut m = tiny(32, 17);
        m.graph.add_node(node("Split", &["y"], &["y0", "y1"]).named("/split/Split")).unwrap();
        m.graph.outputs.push(output("y0"));
        m.graph.outputs.push(output("y1"));
        m
    };
    let mut m = with_split();
    let e = run_err("quantize-weights{bits=4 block=16}", &mut m);
    assert!(e.contains("needs opset 21") && e.contains("Split-18") && e.contains("format=matmulnbits"), "{e}");
    // int8 per channel needs only 13: nothing to raise. MatMulNBits needs no raise either.
    let mut m = with_split();
    run("quantize-weights", &mut m);
    assert_eq!(m.opset(""), Some(17));
    let mut m = with_split();
    run("quantize-weights{bits=4 block=16 format=matmulnbits}", &mut m);
    assert_eq!((m.opset(""), m.opset("com.microsoft")), (Some(17), Some(1)));
    // Without the Split the raise goes through (Add, MatMul, Gemm, Transpose are unchanged).
    let mut m = tiny(32, 17);
    run("quantize-weights{bits=4 block=16}", &mut m);
    assert_eq!(m.opset(""), Some(21));
}

#[test]
fn lora_adapted_models_quantize_the_base_only() {
    // QLoRA's layout: the frozen base weights quantized, the trainable adapters left in float.
    let mut m = tiny(32, 20);
    let report = run("insert-lora{rank=4 targets=query,value},quantize-weights{bits=4 block=16}", &mut m);
    adaptc_ir::verify(&m.graph).unwrap();
    assert_eq!(stat(&report, "quant.layers"), 3);
    for w in WEIGHTS {
        decode_qdq(&m, w);
    }
    let trainable = adaptc_passes::adapters::AdapterState::load(&m).unwrap().trainable;
    assert_eq!(trainable.len(), 4, "{trainable:?}");
    for name in &trainable {
        assert_eq!(m.graph.initializer(name).map(Tensor::dtype), Some(DataType::Float), "{name}");
    }
}

#[test]
fn nothing_selected_is_an_error() {
    let mut m = tiny(32, 20);
    let e = run_err("quantize-weights{targets=nonexistent}", &mut m);
    assert!(e.contains("no linear layer matches targets=nonexistent"), "{e}");
}

#[test]
fn dequantize_without_quantized_weights_changes_nothing() {
    let mut m = tiny(32, 20);
    let before = adaptc_ir::dump(&m);
    let report = run("dequantize-weights", &mut m);
    assert!(!report.runs[0].changed);
    assert_eq!(adaptc_ir::dump(&m), before);
}
