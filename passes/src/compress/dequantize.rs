//! `dequantize-weights`: turns quantized weights back into float initializers, with exactly the
//! values the quantized form computes, so a quantized base can be merged with adapters (or
//! pruned, factorized …) and quantized again later.
//!
//! - `DequantizeLinear(x, scale[, zero_point])` (default domain) whose `x`, `scale` and
//!   `zero_point` are constants (initializers that are not graph inputs, or `Constant` nodes)
//!   becomes an initializer under the node's output name, holding `(x − zero_point) · scale`
//!   computed in `f32` and rounded once to the scale's type — per tensor, per axis (`axis`) or
//!   blocked (`block_size`, opset 21), for `int8`/`uint8`/`int16`/`uint16`/`int32`/`int4`/
//!   `uint4`/`int2`/`uint2` data. A `DequantizeLinear` of an activation is not a weight and is
//!   left alone.
//! - `com.microsoft::MatMulNBits(A, B, scales[, zero_points][, g_idx][, bias])` with constant
//!   `B`, `scales` and (uint8) `zero_points` becomes `MatMul(A, W[K, N])` (plus `Add(bias)`),
//!   `W[k, n] = (code − zp) · scale` with the implicit zero point `2^(bits−1)` when there are no
//!   zero points (bits 2, 4 or 8). The MatMul keeps the node's name and metadata, so the
//!   module path is recovered as before quantization. `W` is named after `B` without its
//!   `_quantized` suffix (the name `quantize-weights` gave it) when that name is free, else
//!   `<B>_dequantized`.
//!
//! The quantized initializers are removed once nothing else reads them. Float zero points, a
//! `g_idx` input, an `output_dtype` other than the scale's type, float8 data or operands that do
//! not fit the attributes are left alone with a note (`dequant.skipped`).
//!
//! The re-quantization error: each dequantized weight is quantized again with the settings it
//! came with (bits from the data type, the same groups; `asym` when there are zero points,
//! otherwise `sym-full` when a level reaches `−2^(b−1)` and `sym` when not; see
//! [`super::quant`]) and compared with itself. `dequant.requant_max_abs_err_e9` is the largest
//! change (units of 1e-9) and `dequant.requant_changed` the number of weights that would
//! change — what re-quantizing an unmodified base costs on top of the original quantization.
//!
//! Statistics: `dequant.qdq`, `dequant.matmulnbits`, `dequant.skipped`, `dequant.bytes_before`
//! (quantized data, scales, zero points), `dequant.bytes_after` (float weights),
//! `dequant.requant_max_abs_err_e9`, `dequant.requant_changed`.
//!
//! Preconditions: none beyond a verified graph. Preserves: graph inputs and outputs, value names
//! (the dequantized value keeps its name; the layer's output keeps its name), and the computed
//! values exactly.
//!
//! Example pipeline: `dequantize-weights,insert-lora{targets=query,value}`.

use adaptc_ir::{is_default_domain, DataType, Graph, Model, Node, NodeId, OpKey, Tensor};

use super::quant::{quantize_group, round_to, sign_extend, unpack_bits, Grid, GroupParams, Scheme};
use super::quantize::MS_DOMAIN;
use crate::adapters::record::CREATED_BY;
use crate::options::Options;
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::constant_tensor;
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "dequantize-weights";

/// The `dequantize-weights` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct DequantizeWeights;

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "turn DequantizeLinear of constants and MatMulNBits back into float weights (exact values)",
        options: Vec::new(),
        example: "dequantize-weights,dce",
        build: |_: &Options| Ok(Box::new(DequantizeWeights)),
    }
}

/// What a node becomes.
enum Kind {
    /// The output becomes an initializer.
    Qdq,
    /// `MatMul(input, W)` (+ `Add(bias)`).
    NBits { input: String, bias: Option<String> },
}

/// One node's rewrite, computed before anything changes.
struct Plan {
    node: NodeId,
    kind: Kind,
    /// The constant operands to drop once unused.
    operands: Vec<String>,
    dtype: DataType,
    dims: Vec<u64>,
    values: Vec<f32>,
    bytes_before: u64,
    /// Largest change and number of changed weights when re-quantized (None: no grid for it).
    requant: Option<(f64, u64)>,
}

impl Pass for DequantizeWeights {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let graph = &model.graph;
        let mut plans = Vec::new();
        let mut skipped = 0i64;
        for (id, node) in graph.nodes() {
            let planned = if is_default_domain(&node.op().domain) && node.op().op_type == "DequantizeLinear" {
                plan_dq(graph, id)
            } else if node.op().domain == MS_DOMAIN && node.op().op_type == "MatMulNBits" {
                plan_nbits(graph, id)
            } else {
                continue;
            };
            match planned {
                Ok(Some(p)) => plans.push(p),
                Ok(None) => {}
                Err(why) => {
                    skipped += 1;
                    cx.note(format!("`{}` ({}) left alone: {why}", node.label(), node.op()));
                }
            }
        }

        let (mut qdq, mut nbits) = (0i64, 0i64);
        let (mut before, mut after) = (0u64, 0u64);
        let (mut requant_max, mut requant_changed) = (0f64, 0u64);
        for plan in plans {
            before += plan.bytes_before;
            after += plan.dtype.storage_bytes(plan.values.len() as u64).unwrap_or(0);
            if let Some((m, c)) = plan.requant {
                requant_max = requant_max.max(m);
                requant_changed += c;
            }
            match plan.kind {
                Kind::Qdq => qdq += 1,
                Kind::NBits { .. } => nbits += 1,
            }
            apply(&mut model.graph, plan)?;
        }
        if qdq + nbits > 0 {
            cx.note(format!(
                "re-quantizing the {} dequantized weight(s) with their own settings would change {requant_changed} \
                 value(s), by at most {requant_max:e}",
                qdq + nbits
            ));
        }
        Ok(PassOutcome::changed(qdq + nbits > 0)
            .stat("dequant.qdq", qdq)
            .stat("dequant.matmulnbits", nbits)
            .stat("dequant.skipped", skipped)
            .stat("dequant.bytes_before", before as i64)
            .stat("dequant.bytes_after", after as i64)
            .stat("dequant.requant_max_abs_err_e9", (requant_max * 1e9).round() as i64)
            .stat("dequant.requant_changed", requant_changed as i64))
    }
}

/// The constant feeding input `slot`: `Ok(None)` when the slot is empty, `Err` when it is not a
/// constant.
fn operand<'g>(graph: &'g Graph, node: &Node, slot: usize) -> Result<Option<(&'g Tensor, String)>, String> {
    match node.input(slot) {
        None | Some("") => Ok(None),
        Some(name) => match constant_tensor(graph, name) {
            Some(t) => Ok(Some((t, name.to_string()))),
            None => Err(format!("input {slot} `{name}` is not a constant")),
        },
    }
}

/// Integer elements of a quantized tensor, widened to `i32`, and the element width in bits.
fn decode_ints(t: &Tensor) -> Result<(Vec<i32>, u32, bool), String> {
    let bytes = t.bytes().map_err(|e| e.to_string())?;
    let n = t.numel() as usize;
    let (values, bits, signed) = match t.dtype() {
        DataType::Int8 => (bytes.iter().map(|&b| i32::from(b as i8)).collect(), 8, true),
        DataType::Uint8 => (bytes.iter().map(|&b| i32::from(b)).collect(), 8, false),
        DataType::Int16 => {
            (bytes.chunks_exact(2).map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))).collect(), 16, true)
        }
        DataType::Uint16 => {
            (bytes.chunks_exact(2).map(|c| i32::from(u16::from_le_bytes([c[0], c[1]]))).collect(), 16, false)
        }
        DataType::Int32 => {
            (bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), 32, true)
        }
        d @ (DataType::Int4 | DataType::Int2) => {
            let bits = d.bit_width().unwrap_or(4) as u32;
            (unpack_bits(&bytes, bits, n).into_iter().map(|v| sign_extend(v, bits)).collect(), bits, true)
        }
        d @ (DataType::Uint4 | DataType::Uint2) => {
            let bits = d.bit_width().unwrap_or(4) as u32;
            (unpack_bits(&bytes, bits, n).into_iter().map(i32::from).collect(), bits, false)
        }
        other => return Err(format!("{other} data is not supported")),
    };
    Ok((values, bits, signed))
}

fn float_values(t: &Tensor, what: &str) -> Result<Vec<f32>, String> {
    match t.dtype() {
        DataType::Float | DataType::Float16 | DataType::BFloat16 => t.to_f32_lossy().map_err(|e| e.to_string()),
        other => Err(format!("the {what} `{}` is {other}, not float32/float16/bfloat16", t.name)),
    }
}

/// `DequantizeLinear` of constants → its values.
fn plan_dq(graph: &Graph, id: NodeId) -> Result<Option<Plan>, String> {
    let node = graph.node(id);
    let Some(x_name) = node.input(0).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let Some(x) = constant_tensor(graph, x_name) else {
        return Ok(None);
    };
    if node.output(0).is_none_or(str::is_empty) {
        return Err("it has no output".into());
    }
    let (scale, scale_name) = operand(graph, node, 1)?.ok_or("it has no scale")?;
    let zp = operand(graph, node, 2)?;
    let dtype = scale.dtype();
    let scales = float_values(scale, "scale")?;
    if let Some(od) = node.attr("output_dtype").and_then(|a| a.as_int()) {
        if od != 0 && od != i64::from(dtype.code()) {
            return Err(format!("output_dtype {od} differs from the scale's type {dtype}"));
        }
    }
    let (levels, bits, signed) = decode_ints(x)?;
    let zps = match &zp {
        None => vec![0; scales.len()],
        Some((t, _)) => {
            if t.dtype() != x.dtype() || t.dims() != scale.dims() {
                return Err(format!("the zero point `{}` does not match the data's type or the scale's shape", t.name));
            }
            decode_ints(t)?.0
        }
    };
    let dims: Vec<u64> = x.dims().to_vec();
    let rank = dims.len() as i64;
    let axis = node.attr_int("axis", 1);
    let block = node.attr_int("block_size", 0);
    // Scale index of every element.
    let index: Vec<usize> = if block == 0 && scales.len() == 1 {
        vec![0; levels.len()]
    } else {
        let a = if axis < 0 { axis + rank } else { axis };
        if a < 0 || a >= rank {
            return Err(format!("axis {axis} is out of range for rank {rank}"));
        }
        let a = a as usize;
        let d = dims[a] as usize;
        let inner: usize = dims[a + 1..].iter().product::<u64>() as usize;
        if block == 0 {
            if scale.dims() != [dims[a]] {
                return Err(format!("the scale has shape {:?}, expected [{}] for axis {a}", scale.dims(), dims[a]));
            }
            (0..levels.len()).map(|i| (i / inner) % d).collect()
        } else {
            let b = block as usize;
            let nb = d.div_ceil(b);
            let mut expect = dims.clone();
            expect[a] = nb as u64;
            if block < 0 || scale.dims() != expect.as_slice() {
                return Err(format!(
                    "the scale has shape {:?}, expected {expect:?} for block_size {block} on axis {a}",
                    scale.dims()
                ));
            }
            (0..levels.len())
                .map(|i| {
                    let (outer, rest) = (i / (d * inner), i % (d * inner));
                    let (c, inn) = (rest / inner, rest % inner);
                    outer * nb * inner + (c / b) * inner + inn
                })
                .collect()
        }
    };
    let values: Vec<f32> =
        levels.iter().zip(&index).map(|(&q, &s)| round_to(dtype, (q - zps[s]) as f32 * scales[s])).collect();

    // Re-quantization: same groups, the scheme the data implies.
    let requant = if bits == 4 || bits == 8 {
        let scheme = if !signed || zps.iter().any(|&z| z != 0) {
            Scheme::Asym
        } else if levels.contains(&-(1 << (bits - 1))) {
            Scheme::SymFull
        } else {
            Scheme::Sym
        };
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); scales.len()];
        for (i, &s) in index.iter().enumerate() {
            groups[s].push(i);
        }
        Some(requant_error(&values, &groups, Grid::new(bits, scheme), dtype))
    } else {
        None
    };
    let mut operands = vec![x_name.to_string(), scale_name];
    operands.extend(zp.map(|(_, n)| n));
    let bytes_before = operands.iter().filter_map(|n| constant_tensor(graph, n)).map(Tensor::byte_len).sum();
    Ok(Some(Plan { node: id, kind: Kind::Qdq, operands, dtype, dims, values, bytes_before, requant }))
}

/// `MatMulNBits` with constant operands → `W[K, N]`.
fn plan_nbits(graph: &Graph, id: NodeId) -> Result<Option<Plan>, String> {
    let node = graph.node(id);
    let attr = |name: &str| -> Result<usize, String> {
        match node.attr(name).and_then(|a| a.as_int()) {
            Some(v) if v > 0 => Ok(v as usize),
            _ => Err(format!("attribute `{name}` is missing or not positive")),
        }
    };
    let (k, n, bits, block) = (attr("K")?, attr("N")?, attr("bits")?, attr("block_size")?);
    if !matches!(bits, 2 | 4 | 8) || (block * bits) % 8 != 0 {
        return Err(format!("bits={bits} with block_size={block} is not a MatMulNBits layout"));
    }
    let input = node.input(0).filter(|s| !s.is_empty()).ok_or("it has no input A")?.to_string();
    if node.output(0).is_none_or(str::is_empty) {
        return Err("it has no output".into());
    }
    let (b, b_name) = operand(graph, node, 1)?.ok_or("it has no B")?;
    let (scale, scale_name) = operand(graph, node, 2)?.ok_or("it has no scales")?;
    let zp = operand(graph, node, 3)?;
    if node.input(4).is_some_and(|s| !s.is_empty()) {
        return Err("a g_idx input (act-order) is not supported".into());
    }
    let bias = node.input(5).filter(|s| !s.is_empty()).map(str::to_string);
    let (nb, blob) = (k.div_ceil(block), block * bits / 8);
    if b.dtype() != DataType::Uint8 || b.numel() as usize != n * nb * blob {
        return Err(format!("B `{b_name}` is {}{:?}, expected uint8 with {n}·{nb}·{blob} bytes", b.dtype(), b.dims()));
    }
    let dtype = scale.dtype();
    let scales = float_values(scale, "scales")?;
    if scales.len() != n * nb {
        return Err(format!("scales `{scale_name}` has {} values, expected {}", scales.len(), n * nb));
    }
    let zp_row = (nb * bits).div_ceil(8);
    let zp_bytes = match &zp {
        None => None,
        Some((t, name)) => {
            if t.dtype() != DataType::Uint8 {
                return Err(format!(
                    "zero points `{name}` are {}: only packed uint8 zero points are supported",
                    t.dtype()
                ));
            }
            if t.numel() as usize != n * zp_row {
                return Err(format!("zero points `{name}` have {} bytes, expected {}", t.numel(), n * zp_row));
            }
            Some(t.bytes().map_err(|e| e.to_string())?.into_owned())
        }
    };
    let b_bytes = b.bytes().map_err(|e| e.to_string())?;
    let mid = 1u8 << (bits - 1);
    let bits32 = bits as u32;
    let mut values = vec![0f32; k * n];
    let mut codes = vec![0u8; k * n]; // channel-major, for the re-quantization check
    let mut params = Vec::with_capacity(n * nb);
    for ch in 0..n {
        let zps = zp_bytes.as_ref().map(|z| unpack_bits(&z[ch * zp_row..(ch + 1) * zp_row], bits32, nb));
        for blk in 0..nb {
            let start = (ch * nb + blk) * blob;
            let block_codes = unpack_bits(&b_bytes[start..start + blob], bits32, block);
            let p = GroupParams { scale: scales[ch * nb + blk], zero_point: zps.as_ref().map_or(mid, |z| z[blk]) };
            params.push(p);
            for (j, &c) in block_codes.iter().enumerate() {
                let kk = blk * block + j;
                if kk < k {
                    values[kk * n + ch] = super::quant::dequantize_code(c, p, dtype);
                    codes[ch * k + kk] = c;
                }
            }
        }
    }
    let scheme = if zp.is_some() {
        Scheme::Asym
    } else if codes.contains(&0) {
        Scheme::SymFull
    } else {
        Scheme::Sym
    };
    let requant = if bits == 4 || bits == 8 {
        let groups: Vec<Vec<usize>> = (0..n)
            .flat_map(|ch| (0..nb).map(move |blk| (ch, blk)))
            .map(|(ch, blk)| (blk * block..((blk + 1) * block).min(k)).map(|kk| kk * n + ch).collect())
            .collect();
        Some(requant_error(&values, &groups, Grid::new(bits as u32, scheme), dtype))
    } else {
        None
    };
    let mut operands = vec![b_name, scale_name];
    operands.extend(zp.map(|(_, n)| n));
    let bytes_before = operands.iter().filter_map(|o| constant_tensor(graph, o)).map(Tensor::byte_len).sum();
    Ok(Some(Plan {
        node: id,
        kind: Kind::NBits { input, bias },
        operands,
        dtype,
        dims: vec![k as u64, n as u64],
        values,
        bytes_before,
        requant,
    }))
}

/// The largest change, and how many values change, when `values` are quantized again group by
/// group with `grid` and dequantized.
fn requant_error(values: &[f32], groups: &[Vec<usize>], grid: Grid, dtype: DataType) -> (f64, u64) {
    let (mut max, mut changed) = (0f64, 0u64);
    let mut buf = Vec::new();
    let mut codes = Vec::new();
    for g in groups {
        buf.clear();
        buf.extend(g.iter().map(|&i| values[i]));
        codes.resize(buf.len(), 0);
        let p = quantize_group(&buf, grid, dtype, &mut codes);
        for (&v, &c) in buf.iter().zip(&codes) {
            let again = super::quant::dequantize_code(c, p, dtype);
            if again != v {
                changed += 1;
                max = max.max((f64::from(again) - f64::from(v)).abs());
            }
        }
    }
    (max, changed)
}

fn encode(dtype: DataType, values: &[f32]) -> Vec<u8> {
    super::quant::encode_floats(dtype, values)
}

/// Removes a constant operand (initializer or `Constant` node) nothing reads any more.
fn drop_if_unused(graph: &mut Graph, name: &str) -> Result<(), PassError> {
    if !graph.uses(name).is_empty() || graph.is_graph_output(name) || graph.is_graph_input(name) {
        return Ok(());
    }
    if graph.initializer(name).is_some() {
        graph.remove_initializer(name)?;
    } else if let Some((id, _)) = graph.producer(name) {
        graph.remove_node(id)?;
    }
    graph.value_info.retain(|v| v.name != name);
    Ok(())
}

fn apply(graph: &mut Graph, plan: Plan) -> Result<(), PassError> {
    let old = graph.node(plan.node).clone();
    let out = old.output(0).unwrap_or_default().to_string();
    let tmp = graph.unique_name(&format!("{out}/quantized"));
    graph.rename_output(plan.node, 0, &tmp)?;
    let bytes = encode(plan.dtype, &plan.values);
    match plan.kind {
        Kind::Qdq => {
            graph.add_initializer(Tensor::from_bytes(out, plan.dtype, plan.dims, bytes)?)?;
        }
        Kind::NBits { input, bias } => {
            let b = &plan.operands[0];
            let name = match b.strip_suffix("_quantized") {
                Some(base) if !base.is_empty() && !graph.name_taken(base) => base.to_string(),
                _ => graph.unique_name(&format!("{b}_dequantized")),
            };
            graph.add_initializer(Tensor::from_bytes(name.clone(), plan.dtype, plan.dims, bytes)?)?;
            let mm_out = if bias.is_some() { graph.unique_name(&format!("{out}/matmul")) } else { out.clone() };
            let mut mm =
                Node::new(OpKey::onnx("MatMul"), vec![input, name], vec![mm_out.clone()]).named(old.name.clone());
            for (key, value) in old.metadata.iter() {
                if key != CREATED_BY {
                    mm.metadata.set(key, value);
                }
            }
            mm.doc_string = old.doc_string.clone();
            graph.add_node(mm)?;
            if let Some(bias) = bias {
                let add_name = graph.unique_name(&format!("{}/bias/Add", old.label()));
                let mut add = Node::new(OpKey::onnx("Add"), vec![mm_out, bias], vec![out]).named(add_name);
                add.metadata.set(CREATED_BY, PASS);
                graph.add_node(add)?;
            }
        }
    }
    graph.remove_node(plan.node)?;
    for name in &plan.operands {
        drop_if_unused(graph, name)?;
    }
    Ok(())
}
