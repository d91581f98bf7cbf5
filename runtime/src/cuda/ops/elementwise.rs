//! Elementwise families: unary math, broadcasting binary arithmetic (f32, and bf16 for the
//! ops whose f32 result rounded once is the exactly rounded one), Sum, comparisons, logic,
//! Where, Cast (bf16 included), the NaN guard of exported attention, and GeluGrad.

use adaptc_ir::DataType;

use super::{common_dtype, done, dptr, host, launch, opt, output, req, want_f32, DevResult, Gpu};
use crate::cuda::launch::{addr, broadcast, elementwise as grid, Layout};
use crate::cuda::value::{device_elem_bytes, CudaValue};
use crate::error::KernelError;
use crate::ops::util::broadcast_shapes;
use crate::ops::OpCtx;

/// Codes of `unary_f32` in kernels.cu.
fn unary_code(op: &str, c: &OpCtx) -> DevResult<(i32, f32, f32)> {
    Ok(match op {
        "Neg" => (0, 0.0, 0.0),
        "Exp" => (1, 0.0, 0.0),
        "Log" => (2, 0.0, 0.0),
        "Sqrt" => (3, 0.0, 0.0),
        "Reciprocal" => (4, 0.0, 0.0),
        "Sigmoid" => (5, 0.0, 0.0),
        "Tanh" => (6, 0.0, 0.0),
        "Erf" => (7, 0.0, 0.0),
        "Gelu" => match c.string("approximate").as_deref().unwrap_or("none") {
            "none" => (8, 0.0, 0.0),
            "tanh" => (9, 0.0, 0.0),
            other => return Err(KernelError::Invalid(format!("approximate must be none or tanh, got {other}")).into()),
        },
        "Relu" => (10, 0.0, 0.0),
        "Abs" => (11, 0.0, 0.0),
        "Cos" => (12, 0.0, 0.0),
        "Sin" => (13, 0.0, 0.0),
        "Floor" => (14, 0.0, 0.0),
        "Ceil" => (15, 0.0, 0.0),
        "Softplus" => (16, 0.0, 0.0),
        "LeakyRelu" => (21, c.float("alpha", 0.01), 0.0),
        other => return host(format!("no device code for {other}")),
    })
}

/// Runs `unary_f32` with `code` over `x`.
fn run_unary(gpu: &Gpu, x: &CudaValue, (code, a, b): (i32, f32, f32)) -> DevResult<CudaValue> {
    want_f32(x)?;
    let n = x.numel();
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Float)?;
    if n > 0 {
        let (xp, yp, n) = (dptr(gpu, x)?, addr(&y, &gpu.stream), n as i64);
        launch!(gpu, "unary_f32", grid(n as usize), &code, &xp, &yp, &n, &a, &b)?;
    }
    Ok(done(y, shape, DataType::Float))
}

pub fn unary(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let code = unary_code(&c.node.op().op_type, c)?;
    Ok(vec![run_unary(gpu, req(i, 0)?, code)?])
}

/// Clip with scalar bounds (inputs since opset 11, attributes before).
pub fn clip(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let bound = |slot: usize, attr: &str, default: f32| -> DevResult<f32> {
        if c.opset < 11 {
            // Before opset 11 the bounds are attributes whose defaults are the finite extremes.
            return Ok(c.float(attr, if slot == 1 { f32::MIN } else { f32::MAX }));
        }
        match opt(i, slot) {
            None => Ok(default),
            Some(v) => {
                let t = v.host(gpu)?;
                match t.as_slice::<f32>() {
                    Some([b]) => Ok(*b),
                    _ => host("Clip bounds that are not f32 scalars"),
                }
            }
        }
    };
    let (lo, hi) = (bound(1, "min", f32::NEG_INFINITY)?, bound(2, "max", f32::INFINITY)?);
    Ok(vec![run_unary(gpu, x, (20, lo, hi))?])
}

pub fn is_nan(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    want_f32(x)?;
    Ok(vec![nan_mask(gpu, x)?])
}

fn nan_mask(gpu: &Gpu, x: &CudaValue) -> DevResult<CudaValue> {
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Bool)?;
    let n = x.numel() as i64;
    if n > 0 {
        let (xp, yp) = (dptr(gpu, x)?, addr(&y, &gpu.stream));
        launch!(gpu, "is_nan_f32", grid(n as usize), &xp, &yp, &n)?;
    }
    Ok(done(y, shape, DataType::Bool))
}

/// `IsNaNWhere(p, z)` → (isnan(p), Where(isnan(p), z, p)) with a scalar `z`: one NaN-replacing
/// pass instead of a mask and a Where.
pub fn is_nan_where(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (p, z) = (req(i, 0)?, req(i, 1)?);
    want_f32(p)?;
    let zt = z.host(gpu)?;
    let Some(&[zv]) = zt.as_slice::<f32>() else { return host("a replacement value that is not an f32 scalar") };
    if z.shape().len() > p.shape().len() {
        return host("a replacement of higher rank than the guarded value");
    }
    Ok(vec![nan_mask(gpu, p)?, run_unary(gpu, p, (19, zv, 0.0))?])
}

pub fn gelu_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (dy, x) = (req(i, 0)?, req(i, 1)?);
    want_f32(dy)?;
    want_f32(x)?;
    if dy.shape() != x.shape() {
        return host("dy and x of different shapes");
    }
    let approx: i32 = match c.string("approximate").as_deref().unwrap_or("none") {
        "none" => 0,
        "tanh" => 1,
        other => return Err(KernelError::Invalid(format!("approximate must be none or tanh, got {other}")).into()),
    };
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Float)?;
    let n = x.numel() as i64;
    if n > 0 {
        let (dp, xp, yp) = (dptr(gpu, dy)?, dptr(gpu, x)?, addr(&y, &gpu.stream));
        launch!(gpu, "gelu_grad_f32", grid(n as usize), &dp, &xp, &yp, &n, &approx)?;
    }
    Ok(vec![done(y, shape, DataType::Float)])
}

/// The broadcast output shape of `vals` and a layout with one operand per value.
fn broadcast_layout(vals: &[&CudaValue]) -> DevResult<(Vec<usize>, Layout)> {
    let shapes: Vec<&[usize]> = vals.iter().map(|v| v.shape()).collect();
    let out = broadcast_shapes(&shapes)?;
    let st: Vec<Vec<i64>> = shapes.iter().map(|s| broadcast(s, &out)).collect();
    let refs: Vec<&[i64]> = st.iter().map(Vec::as_slice).collect();
    Ok((out.clone(), Layout::new(&out, &refs)?))
}

/// Runs a two-operand broadcasting kernel `name(op, L, a, b, y, n)`.
pub(super) fn run_binary(
    gpu: &Gpu,
    name: &str,
    code: i32,
    (a, b): (&CudaValue, &CudaValue),
    out_dtype: DataType,
) -> DevResult<CudaValue> {
    let (shape, l) = broadcast_layout(&[a, b])?;
    let (y, shape) = output(gpu, shape, out_dtype)?;
    let n = crate::tensor::numel(&shape).unwrap_or(0) as i64;
    if n > 0 {
        let (ap, bp, yp) = (dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
        launch!(gpu, name, grid(n as usize), &code, &l, &ap, &bp, &yp, &n)?;
    }
    Ok(done(y, shape, out_dtype))
}

/// The broadcasting arithmetic kernel for operands of `dtype` computing `op`. bf16 takes the
/// ops whose f32 result, rounded once, is what the CPU gives (Add, Sub, Mul, Max, Min: see
/// `BINARY` in kernels.cu); Div and Pow would round twice, so they stay on the host.
fn binary_kernel(dtype: DataType, op: &str) -> DevResult<(&'static str, i32)> {
    let code = match op {
        "Add" | "Sum" => 0,
        "Sub" => 1,
        "Mul" => 2,
        "Div" => 3,
        "Max" => 4,
        "Min" => 5,
        "Pow" => 6,
        other => return host(format!("no device code for {other}")),
    };
    match dtype {
        DataType::Float => Ok(("binary_f32", code)),
        DataType::BFloat16 if matches!(code, 0 | 1 | 2 | 4 | 5) => Ok(("binary_bf16", code)),
        other => host(format!("{op} of {other} on the device")),
    }
}

pub fn binary(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    // Max and Min are variadic; the device takes the common two-operand form.
    if i.len() != 2 {
        return host("not two operands");
    }
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    let dtype = common_dtype(&[a, b])?;
    let (name, code) = binary_kernel(dtype, &c.node.op().op_type)?;
    Ok(vec![run_binary(gpu, name, code, (a, b), dtype)?])
}

/// Sum: left to right, one broadcasting Add per further input (rounding after each, as the CPU
/// kernel does); a single input is passed through.
pub fn sum(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let vals: Vec<&CudaValue> = i.iter().copied().flatten().collect();
    let dtype = common_dtype(&vals)?;
    let (name, code) = binary_kernel(dtype, "Sum")?;
    let Some((first, rest)) = vals.split_first() else { return host("no operands") };
    let mut acc = first.reshaped(first.shape().to_vec())?;
    for v in rest {
        acc = run_binary(gpu, name, code, (&acc, v), dtype)?;
    }
    Ok(vec![acc])
}

pub fn compare(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    if a.dtype() != b.dtype() {
        return Err(KernelError::Invalid(format!("operands differ in type: {} and {}", a.dtype(), b.dtype())).into());
    }
    let name = match a.dtype() {
        DataType::Float => "compare_f32",
        DataType::Int64 => "compare_i64",
        DataType::Int32 => "compare_i32",
        other => return host(format!("comparisons of {other}")),
    };
    let code = match c.node.op().op_type.as_str() {
        "Equal" => 0,
        "Less" => 1,
        "LessOrEqual" => 2,
        "Greater" => 3,
        "GreaterOrEqual" => 4,
        other => return host(format!("no device code for {other}")),
    };
    Ok(vec![run_binary(gpu, name, code, (a, b), DataType::Bool)?])
}

pub fn logic(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (a, b) = (req(i, 0)?, req(i, 1)?);
    if a.dtype() != DataType::Bool || b.dtype() != DataType::Bool {
        return Err(KernelError::Invalid("logic ops take bool tensors".into()).into());
    }
    let code = match c.node.op().op_type.as_str() {
        "And" => 0,
        "Or" => 1,
        _ => 2,
    };
    Ok(vec![run_binary(gpu, "logic_u8", code, (a, b), DataType::Bool)?])
}

pub fn not(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    if x.dtype() != DataType::Bool {
        return Err(KernelError::Invalid(format!("expects a bool tensor, got {}", x.dtype())).into());
    }
    let (y, shape) = output(gpu, x.shape().to_vec(), DataType::Bool)?;
    let n = x.numel() as i64;
    if n > 0 {
        let (xp, yp) = (dptr(gpu, x)?, addr(&y, &gpu.stream));
        launch!(gpu, "not_u8", grid(n as usize), &xp, &yp, &n)?;
    }
    Ok(vec![done(y, shape, DataType::Bool)])
}

pub fn where_(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (c, a, b) = (req(i, 0)?, req(i, 1)?, req(i, 2)?);
    if c.dtype() != DataType::Bool {
        return Err(KernelError::Invalid(format!("the condition must be bool, got {}", c.dtype())).into());
    }
    if a.dtype() != b.dtype() {
        return Err(KernelError::Invalid(format!("branches differ in type: {} and {}", a.dtype(), b.dtype())).into());
    }
    let name = match device_elem_bytes(a.dtype()) {
        Some(1) => "where_b1",
        Some(2) => "where_b2",
        Some(4) => "where_b4",
        Some(8) => "where_b8",
        _ => return host(format!("Where over {}", a.dtype())),
    };
    let (shape, l) = broadcast_layout(&[c, a, b])?;
    let (y, shape) = output(gpu, shape, a.dtype())?;
    let n = crate::tensor::numel(&shape).unwrap_or(0) as i64;
    if n > 0 {
        let (cp, ap, bp, yp) = (dptr(gpu, c)?, dptr(gpu, a)?, dptr(gpu, b)?, addr(&y, &gpu.stream));
        launch!(gpu, name, grid(n as usize), &l, &cp, &ap, &bp, &yp, &n)?;
    }
    Ok(vec![done(y, shape, a.dtype())])
}

fn short(d: DataType) -> Option<&'static str> {
    Some(match d {
        DataType::Float => "f32",
        DataType::BFloat16 => "bf16",
        DataType::Int64 => "i64",
        DataType::Int32 => "i32",
        DataType::Bool => "bool",
        _ => return None,
    })
}

/// The casts kernels.cu has, `(from, to)` by [`short`] name: every pair of f32, i64, i32 and
/// bool, and bf16 with f32 and bool (conversions that round once). Integer ↔ bf16 would
/// round twice through f32, so those go to the host.
const CASTS: &[(&str, &str)] = &[
    ("f32", "i64"),
    ("f32", "i32"),
    ("f32", "bool"),
    ("f32", "bf16"),
    ("i64", "f32"),
    ("i64", "i32"),
    ("i64", "bool"),
    ("i32", "f32"),
    ("i32", "i64"),
    ("i32", "bool"),
    ("bool", "f32"),
    ("bool", "i64"),
    ("bool", "i32"),
    ("bool", "bf16"),
    ("bf16", "f32"),
    ("bf16", "bool"),
];

/// The kernel name of the cast `from` → `to`, if the device has one.
fn cast_kernel(from: DataType, to: DataType) -> Option<String> {
    let (s, d) = (short(from)?, short(to)?);
    CASTS.contains(&(s, d)).then(|| format!("cast_{s}_{d}"))
}

pub fn cast(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let to = if c.node.op().op_type == "CastLike" {
        req(i, 1)?.dtype()
    } else {
        let code = c.int("to", 0) as i32;
        DataType::from_code(code).ok_or_else(|| KernelError::Invalid(format!("unknown element type code {code}")))?
    };
    Ok(vec![convert(gpu, x, to)?])
}

/// `x` as `to` (a view of `x` when it has that type already): what `Cast` computes, for the
/// ops that take operands of another type.
pub(super) fn convert(gpu: &Gpu, x: &CudaValue, to: DataType) -> DevResult<CudaValue> {
    if to == x.dtype() {
        return x.reshaped(x.shape().to_vec());
    }
    let Some(name) = cast_kernel(x.dtype(), to) else {
        return host(format!("a cast from {} to {to}", x.dtype()));
    };
    let (y, shape) = output(gpu, x.shape().to_vec(), to)?;
    let n = x.numel() as i64;
    if n > 0 {
        let (xp, yp) = (dptr(gpu, x)?, addr(&y, &gpu.stream));
        launch!(gpu, &name, grid(n as usize), &xp, &yp, &n)?;
    }
    Ok(done(y, shape, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::DevError;

    /// Every cast in the table is a kernel the device loads (a missing one would only show on
    /// a GPU, as a driver error rather than a host fallback).
    #[test]
    fn every_cast_in_the_table_is_an_entry_point() {
        for (s, d) in CASTS {
            let name = format!("cast_{s}_{d}");
            assert!(crate::cuda::ENTRY_POINTS.contains(&name.as_str()), "{name} is not an entry point");
        }
        assert_eq!(cast_kernel(DataType::Float, DataType::BFloat16).as_deref(), Some("cast_f32_bf16"));
        assert_eq!(cast_kernel(DataType::Int64, DataType::BFloat16), None);
    }

    #[test]
    fn bf16_arithmetic_is_the_ops_that_round_once() {
        for op in ["Add", "Sum", "Sub", "Mul", "Max", "Min"] {
            assert_eq!(binary_kernel(DataType::BFloat16, op).ok().map(|k| k.0), Some("binary_bf16"), "{op}");
        }
        for op in ["Div", "Pow"] {
            assert!(matches!(binary_kernel(DataType::BFloat16, op), Err(DevError::Host(_))), "{op}");
        }
        assert!(matches!(binary_kernel(DataType::Float16, "Add"), Err(DevError::Host(_))));
        assert_eq!(binary_kernel(DataType::Float, "Pow").ok(), Some(("binary_f32", 6)));
    }
}
