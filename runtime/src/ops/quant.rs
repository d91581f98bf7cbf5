//! Quantization: DequantizeLinear and QuantizeLinear (per tensor, per axis, blocked), and
//! `com.microsoft::MatMulNBits` (the layout the `quantize-weights` pass writes).

use adaptc_ir::DataType;

use super::util::{axis, checked_numel, floats};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

/// For every element of `x_shape`, the index of its scale/zero point: a scalar, one per
/// `axis` index, or one per block of `block` along `axis`.
fn param_index(x_shape: &[usize], p_shape: &[usize], ax: i64, block: i64) -> KResult<Vec<usize>> {
    let n: usize = x_shape.iter().product();
    let pn: usize = p_shape.iter().product();
    if pn == 1 && p_shape.len() <= 1 {
        return Ok(vec![0; n]);
    }
    let a = axis(ax, x_shape.len())?;
    let st = super::util::strides(x_shape);
    if p_shape.len() == 1 && block <= 0 {
        if p_shape[0] != x_shape[a] {
            kbail!("{} scales for an axis of size {}", p_shape[0], x_shape[a]);
        }
        return Ok((0..n).map(|k| (k / st[a]) % x_shape[a]).collect());
    }
    if p_shape.len() != x_shape.len() || block <= 0 {
        kbail!("scale shape {p_shape:?} does not fit input {x_shape:?} (block_size {block})");
    }
    let b = block as usize;
    for d in 0..x_shape.len() {
        let want = if d == a { x_shape[d].div_ceil(b) } else { x_shape[d] };
        if p_shape[d] != want {
            kbail!("blocked scale shape {p_shape:?} does not fit input {x_shape:?} with block {b}");
        }
    }
    let pst = super::util::strides(p_shape);
    Ok((0..n)
        .map(|k| {
            (0..x_shape.len())
                .map(|d| {
                    let c = (k / st[d]) % x_shape[d];
                    (if d == a { c / b } else { c }) * pst[d]
                })
                .sum()
        })
        .collect())
}

pub fn dequantize_linear(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, s) = (i.req(0)?, i.req(1)?);
    let zp = i.opt(2);
    if !matches!(x.dtype(), DataType::Int8 | DataType::Uint8 | DataType::Int16 | DataType::Uint16 | DataType::Int32) {
        unsupported!("dequantizing {}", x.dtype());
    }
    let idx = param_index(x.shape(), s.shape(), c.int("axis", 1), c.int("block_size", 0))?;
    let xv = floats(x)?;
    let sv = floats(s)?;
    let zv = match zp {
        Some(z) => floats(z)?,
        None => vec![0.0; sv.len()],
    };
    if zv.len() != sv.len() {
        kbail!("zero point and scale differ in size");
    }
    let y: Vec<f64> = xv.iter().zip(&idx).map(|(&v, &k)| (v - zv[k]) * sv[k]).collect();
    let t = Tensor::from_parts(x.shape().to_vec(), Storage::F64(y));
    // f32 arithmetic is what the reference does; rounding through f32 matches it.
    let t32 = super::cast::cast_to(&t, DataType::Float)?;
    Ok(vec![super::cast::cast_to(&t32, s.dtype())?])
}

pub fn quantize_linear(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, s) = (i.req(0)?, i.req(1)?);
    let zp = i.opt(2);
    let out_dtype = match (zp, c.int("output_dtype", 0)) {
        (Some(z), _) => z.dtype(),
        (None, 0) => DataType::Uint8,
        (None, code) => match i32::try_from(code).ok().and_then(DataType::from_code) {
            Some(d) => d,
            None => kbail!("output_dtype {code} is unknown"),
        },
    };
    let (lo, hi) = match out_dtype {
        DataType::Uint8 => (0.0, 255.0),
        DataType::Int8 => (-128.0, 127.0),
        DataType::Uint16 => (0.0, 65535.0),
        DataType::Int16 => (-32768.0, 32767.0),
        other => unsupported!("quantizing to {other}"),
    };
    let idx = param_index(x.shape(), s.shape(), c.int("axis", 1), c.int("block_size", 0))?;
    let xv = floats(x)?;
    let sv = floats(s)?;
    let zv = match zp {
        Some(z) => floats(z)?,
        None => vec![0.0; sv.len()],
    };
    let y: Vec<f64> = xv
        .iter()
        .zip(&idx)
        .map(|(&v, &k)| {
            let q = (v as f32 / sv[k] as f32) as f64;
            let r = q.round();
            let r = if (q - q.trunc()).abs() == 0.5 { 2.0 * (q / 2.0).round() } else { r };
            (r + zv[k]).clamp(lo, hi)
        })
        .collect();
    let t = Tensor::from_parts(x.shape().to_vec(), Storage::F64(y));
    Ok(vec![super::cast::cast_to(&t, out_dtype)?])
}

/// Unpacks `count` codes of `bits` bits, low bits first.
fn unpack(bytes: &[u8], bits: usize, count: usize) -> Vec<u8> {
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..count).map(|j| bytes.get(j / per).map_or(0, |b| (b >> ((j % per) * bits)) & mask)).collect()
}

/// `com.microsoft::MatMulNBits`: `A[…, K] · dequant(B)ᵀ` with B `[N, K/block, block·bits/8]`.
pub fn matmul_nbits(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (a, b, s) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let attr = |name: &str| -> KResult<usize> {
        match c.int(name, 0) {
            v if v > 0 => Ok(v as usize),
            _ => kbail!("attribute `{name}` is missing or not positive"),
        }
    };
    let (k, n, bits, block) = (attr("K")?, attr("N")?, c.int("bits", 4).max(1) as usize, attr("block_size")?);
    if !matches!(bits, 2 | 4 | 8) || (block * bits) % 8 != 0 {
        unsupported!("bits={bits} with block_size={block}");
    }
    if i.opt(4).is_some() {
        unsupported!("g_idx (act-order)");
    }
    let (nb, blob) = (k.div_ceil(block), block * bits / 8);
    let Some(bv) = b.as_slice::<u8>() else { kbail!("B must be uint8") };
    if bv.len() != n * nb * blob {
        kbail!("B has {} bytes, expected {}", bv.len(), n * nb * blob);
    }
    let sv = floats(s)?;
    if sv.len() != n * nb {
        kbail!("scales have {} values, expected {}", sv.len(), n * nb);
    }
    let zp_row = (nb * bits).div_ceil(8);
    let zps: Option<Vec<f64>> = match i.opt(3) {
        None => None,
        Some(z) if z.dtype() == DataType::Uint8 => {
            let zb = z.as_slice::<u8>().unwrap_or(&[]);
            if zb.len() != n * zp_row {
                kbail!("zero points have {} bytes, expected {}", zb.len(), n * zp_row);
            }
            Some((0..n).flat_map(|ch| unpack(&zb[ch * zp_row..(ch + 1) * zp_row], bits, nb)).map(f64::from).collect())
        }
        Some(z) => unsupported!("{} zero points (only packed uint8)", z.dtype()),
    };
    let mid = f64::from(1u32 << (bits - 1));
    // W[K, N], f32.
    let mut w = vec![0f32; k * n];
    for ch in 0..n {
        for blk in 0..nb {
            let start = (ch * nb + blk) * blob;
            let codes = unpack(&bv[start..start + blob], bits, block);
            let scale = sv[ch * nb + blk];
            let zp = zps.as_ref().map_or(mid, |z| z[ch * nb + blk]);
            for (j, &q) in codes.iter().enumerate() {
                let kk = blk * block + j;
                if kk < k {
                    w[kk * n + ch] = ((f64::from(q) - zp) * scale) as f32;
                }
            }
        }
    }
    if a.shape().last() != Some(&k) {
        kbail!("A {:?} does not end in K = {k}", a.shape());
    }
    let a32 = super::cast::cast_to(a, DataType::Float)?;
    let wt = Tensor::from_parts(vec![k, n], Storage::F32(w));
    let mut y = super::matmul::matmul_tensors(&a32, &wt)?;
    if let Some(bias) = i.opt(5) {
        let b32 = super::cast::cast_to(bias, DataType::Float)?;
        let shape = super::util::broadcast_shapes(&[y.shape(), b32.shape()])?;
        checked_numel(&shape)?;
        let (yv, bv) = (y.as_slice::<f32>().unwrap_or(&[]), b32.as_slice::<f32>().unwrap_or(&[]));
        let v = super::util::zip_broadcast(yv, y.shape(), bv, b32.shape(), &shape, |p, q| p + q);
        y = Tensor::from_parts(shape, Storage::F32(v));
    }
    Ok(vec![super::cast::cast_to(&y, a.dtype())?])
}

/// `(q − zp)` for a matmul operand, with a scalar zero point or one per row (`per_row`) or
/// column of the last two dims.
fn centered(q: &Tensor, zp: Option<&Tensor>, per_row: bool) -> KResult<Tensor> {
    let v = floats(q)?;
    let z = match zp {
        Some(z) => floats(z)?,
        None => vec![0.0],
    };
    let r = q.rank();
    let (rows, cols) =
        if r >= 2 { (q.shape()[r - 2], q.shape()[r - 1]) } else { (1, q.shape().first().copied().unwrap_or(1)) };
    let out: Vec<f64> = if z.len() == 1 {
        v.iter().map(|x| x - z[0]).collect()
    } else if per_row && z.len() == rows {
        v.iter().enumerate().map(|(k, x)| x - z[(k / cols.max(1)) % rows.max(1)]).collect()
    } else if !per_row && z.len() == cols {
        v.iter().enumerate().map(|(k, x)| x - z[k % cols.max(1)]).collect()
    } else {
        unsupported!("zero point of shape {:?}", zp.map(|t| t.shape().to_vec()))
    };
    Ok(Tensor::from_parts(q.shape().to_vec(), Storage::F64(out)))
}

pub fn matmul_integer(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = centered(i.req(0)?, i.opt(2), true)?;
    let b = centered(i.req(1)?, i.opt(3), false)?;
    let y = super::matmul::matmul_tensors(&a, &b)?;
    Ok(vec![super::cast::cast_to(&y, DataType::Int32)?])
}

pub fn qlinear_matmul(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = centered(i.req(0)?, i.opt(2), true)?;
    let b = centered(i.req(3)?, i.opt(5), false)?;
    let scalar = |k: usize| -> KResult<f64> {
        match floats(i.req(k)?)?.as_slice() {
            [v] => Ok(*v),
            _ => unsupported!("per-channel scales"),
        }
    };
    let (sa, sb, sy) = (scalar(1)?, scalar(4)?, scalar(6)?);
    let zy = match i.opt(7) {
        Some(z) => floats(z)?.first().copied().unwrap_or(0.0),
        None => 0.0,
    };
    let out_dtype = i.opt(7).map_or(i.req(0)?.dtype(), |z| z.dtype());
    let (lo, hi) = match out_dtype {
        DataType::Uint8 => (0.0, 255.0),
        DataType::Int8 => (-128.0, 127.0),
        other => unsupported!("QLinearMatMul to {other}"),
    };
    let y = super::matmul::matmul_tensors(&a, &b)?;
    let v: Vec<f64> = floats(&y)?
        .iter()
        .map(|&acc| {
            let q = acc * (sa * sb / sy) as f32 as f64;
            let q = q as f32 as f64;
            let r = if (q - q.trunc()).abs() == 0.5 { 2.0 * (q / 2.0).round() } else { q.round() };
            (r + zy).clamp(lo, hi)
        })
        .collect();
    let t = Tensor::from_parts(y.shape().to_vec(), Storage::F64(v));
    Ok(vec![super::cast::cast_to(&t, out_dtype)?])
}

pub fn dynamic_quantize_linear(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let v = floats(x)?;
    let min = v.iter().copied().fold(0.0f64, f64::min) as f32;
    let max = v.iter().copied().fold(0.0f64, f64::max) as f32;
    let scale = if max == min { 1.0f32 } else { (max - min) / 255.0 };
    let round = |q: f32| -> f32 {
        if (q - q.trunc()).abs() == 0.5 {
            2.0 * (q / 2.0).round()
        } else {
            q.round()
        }
    };
    let zp = round((0.0 - min) / scale).clamp(0.0, 255.0);
    let y: Vec<u8> = v.iter().map(|&x| (round(x as f32 / scale) + zp).clamp(0.0, 255.0) as u8).collect();
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::U8(y)), Tensor::scalar(scale), Tensor::scalar(zp as u8)])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("DequantizeLinear", dequantize_linear),
    ("QuantizeLinear", quantize_linear),
    ("MatMulInteger", matmul_integer),
    ("QLinearMatMul", qlinear_matmul),
    ("DynamicQuantizeLinear", dynamic_quantize_linear),
];

/// Ops of the `com.microsoft` domain.
pub const MS_OPS: &[(&str, KernelFn)] = &[("MatMulNBits", matmul_nbits)];
