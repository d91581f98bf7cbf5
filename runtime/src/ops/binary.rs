//! Elementwise arithmetic with numpy broadcasting: Add/Sub/Mul/Div/Pow/Mod, the variadic
//! Max/Min/Sum/Mean, bit shifts and bitwise ops, PRelu.

use super::num::Num;
use super::util::{broadcast_shapes, checked_numel, zip_broadcast};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// Applies a binary op given per-kind closures: `fi` on integers (exact, as i128 then wrapped),
/// `ff` on floats (through f64).
pub fn binary(
    a: &Tensor,
    b: &Tensor,
    ff: impl Fn(f64, f64) -> f64 + Sync + Send + Copy,
    fi: impl Fn(i128, i128) -> i128 + Sync + Send + Copy,
) -> KResult<Tensor> {
    let out = broadcast_shapes(&[a.shape(), b.shape()])?;
    checked_numel(&out)?;
    macro_rules! go {
        ($($v:ident),*) => {
            match (a.data(), b.data()) {
                (Storage::F32(x), Storage::F32(y)) => Storage::F32(zip_broadcast(x, a.shape(), y, b.shape(), &out, |p, q| ff(f64::from(p), f64::from(q)) as f32)),
                (Storage::F64(x), Storage::F64(y)) => Storage::F64(zip_broadcast(x, a.shape(), y, b.shape(), &out, ff)),
                (Storage::F16(x), Storage::F16(y)) => Storage::F16(zip_broadcast(x, a.shape(), y, b.shape(), &out, |p, q| Num::from_f64(ff(p.to_f64(), q.to_f64())))),
                (Storage::BF16(x), Storage::BF16(y)) => Storage::BF16(zip_broadcast(x, a.shape(), y, b.shape(), &out, |p, q| Num::from_f64(ff(p.to_f64(), q.to_f64())))),
                $((Storage::$v(x), Storage::$v(y)) => Storage::$v(zip_broadcast(x, a.shape(), y, b.shape(), &out, |p, q| Num::from_i128(fi(p.to_i128(), q.to_i128())))),)*
                _ => kbail!("operands have different or non-numeric types: {} and {}", a.dtype(), b.dtype()),
            }
        };
    }
    let data = go!(I8, I16, I32, I64, U8, U16, U32, U64);
    Ok(Tensor::from_parts(out, data))
}

/// Fast f32 paths for the ops transformers run most, avoiding the f64 round trip.
fn fast_f32(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy) -> KResult<Option<Tensor>> {
    match (a.as_slice::<f32>(), b.as_slice::<f32>()) {
        (Some(x), Some(y)) => {
            let out = broadcast_shapes(&[a.shape(), b.shape()])?;
            checked_numel(&out)?;
            let v = zip_broadcast(x, a.shape(), y, b.shape(), &out, f);
            Ok(Some(Tensor::from_parts(out, Storage::F32(v))))
        }
        _ => Ok(None),
    }
}

macro_rules! simple {
    ($name:ident, $f32:expr, $ff:expr, $fi:expr) => {
        pub fn $name(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
            let (a, b) = (i.req(0)?, i.req(1)?);
            if let Some(t) = fast_f32(a, b, $f32)? {
                return Ok(vec![t]);
            }
            Ok(vec![binary(a, b, $ff, $fi)?])
        }
    };
}

simple!(add, |x, y| x + y, |x, y| x + y, |x, y| x.wrapping_add(y));
simple!(sub, |x, y| x - y, |x, y| x - y, |x, y| x.wrapping_sub(y));
simple!(mul, |x, y| x * y, |x, y| x * y, |x, y| x.wrapping_mul(y));
simple!(div, |x, y| x / y, |x, y| x / y, |x, y| if y == 0 { 0 } else { x.wrapping_div(y) });

/// `Pow`: the exponent may have another type than the base; the result has the base's type.
pub fn pow(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (a, b) = (i.req(0)?, i.req(1)?);
    if let Some(t) = fast_f32(a, b, f32::powf)? {
        return Ok(vec![t]);
    }
    let b = if a.dtype() == b.dtype() { b.clone() } else { super::cast::cast_to(b, a.dtype())? };
    Ok(vec![binary(a, &b, f64::powf, |x, y| if y < 0 { 0 } else { x.wrapping_pow(y.min(u32::MAX as i128) as u32) })?])
}

/// `Mod`: integer mod takes the divisor's sign (Python) unless `fmod=1` (C); floats need fmod.
pub fn modulo(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (a, b) = (i.req(0)?, i.req(1)?);
    let fmod = c.int("fmod", 0) != 0;
    if !fmod
        && matches!(
            a.dtype(),
            adaptc_ir::DataType::Float
                | adaptc_ir::DataType::Double
                | adaptc_ir::DataType::Float16
                | adaptc_ir::DataType::BFloat16
        )
    {
        kbail!("fmod must be 1 for floating-point inputs");
    }
    let fi = move |x: i128, y: i128| {
        if y == 0 {
            0
        } else if fmod {
            x % y
        } else {
            let r = x % y;
            if r != 0 && ((r < 0) != (y < 0)) {
                r + y
            } else {
                r
            }
        }
    };
    Ok(vec![binary(a, b, |x, y| x % y, fi)?])
}

pub fn bit_shift(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let left = match c.string("direction").as_deref() {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        other => kbail!("direction must be LEFT or RIGHT, got {other:?}"),
    };
    let (a, b) = (i.req(0)?, i.req(1)?);
    let bits = (a.data().elem_bytes() * 8) as i128;
    let f = move |x: i128, y: i128| {
        if !(0..bits).contains(&y) {
            0
        } else if left {
            x << y
        } else {
            x >> y
        }
    };
    Ok(vec![binary(a, b, |_, _| f64::NAN, f)?])
}

macro_rules! bitwise {
    ($name:ident, $op:tt) => {
        pub fn $name(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
            let (a, b) = (i.req(0)?, i.req(1)?);
            if let (Some(x), Some(y)) = (a.as_slice::<bool>(), b.as_slice::<bool>()) {
                let out = broadcast_shapes(&[a.shape(), b.shape()])?;
                let v = zip_broadcast(x, a.shape(), y, b.shape(), &out, |p, q| p $op q);
                return Ok(vec![Tensor::from_parts(out, Storage::Bool(v))]);
            }
            if a.data().dtype().is_float() {
                kbail!("bitwise ops need integer inputs, got {}", a.dtype());
            }
            Ok(vec![binary(a, b, |_, _| f64::NAN, |x, y| x $op y)?])
        }
    };
}
bitwise!(bitwise_and, &);
bitwise!(bitwise_or, |);
bitwise!(bitwise_xor, ^);

/// Folds a variadic op over its inputs with broadcasting.
fn variadic(i: &Inputs, f: fn(&Tensor, &Tensor) -> KResult<Tensor>) -> KResult<Tensor> {
    let all = i.present();
    let Some((first, rest)) = all.split_first() else { kbail!("needs at least one input") };
    let mut acc = (*first).clone();
    for t in rest {
        acc = f(&acc, t)?;
    }
    Ok(acc)
}

fn max2(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    binary(a, b, |x, y| if x.is_nan() || y.is_nan() { f64::NAN } else { x.max(y) }, |x, y| x.max(y))
}

fn min2(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    binary(a, b, |x, y| if x.is_nan() || y.is_nan() { f64::NAN } else { x.min(y) }, |x, y| x.min(y))
}

fn add2(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    binary(a, b, |x, y| x + y, |x, y| x.wrapping_add(y))
}

pub fn max(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![variadic(i, max2)?])
}

pub fn min(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![variadic(i, min2)?])
}

pub fn sum(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![variadic(i, add2)?])
}

pub fn mean(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let n = i.present().len() as f64;
    let s = variadic(i, add2)?;
    Ok(vec![super::unary::float_map(&s, move |x| x / n)?])
}

pub fn prelu(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, slope) = (i.req(0)?, i.req(1)?);
    Ok(vec![binary(x, slope, |x, a| if x < 0.0 { a * x } else { x }, |x, a| if x < 0 { a * x } else { x })?])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("Add", add),
    ("Sub", sub),
    ("Mul", mul),
    ("Div", div),
    ("Pow", pow),
    ("Mod", modulo),
    ("BitShift", bit_shift),
    ("BitwiseAnd", bitwise_and),
    ("BitwiseOr", bitwise_or),
    ("BitwiseXor", bitwise_xor),
    ("Max", max),
    ("Min", min),
    ("Sum", sum),
    ("Mean", mean),
    ("PRelu", prelu),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_add_and_python_mod() {
        let a = Tensor::from_vec(vec![2, 1], vec![1i64, -7]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![3i64, 4, 5]).unwrap();
        let s = binary(&a, &b, |x, y| x + y, |x, y| x + y).unwrap();
        assert_eq!(s.shape(), &[2, 3]);
        assert_eq!(s.as_slice::<i64>().unwrap(), &[4, 5, 6, -4, -3, -2]);
        let m = binary(&a, &b, |x, y| x % y, |x, y| ((x % y) + y) % y).unwrap();
        assert_eq!(m.as_slice::<i64>().unwrap(), &[1, 1, 1, 2, 1, 3]);
    }

    #[test]
    fn mismatched_types_and_shapes_are_errors() {
        let a = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
        let b = Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap();
        assert!(binary(&a, &b, |x, y| x + y, |x, y| x + y).is_err());
        let c = Tensor::from_vec(vec![3], vec![1i64, 2, 3]).unwrap();
        assert!(binary(&a, &c, |x, y| x + y, |x, y| x + y).is_err());
    }

    #[test]
    fn empty_tensors() {
        let a = Tensor::from_vec(vec![0, 3], Vec::<f32>::new()).unwrap();
        let b = Tensor::from_vec(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let s = binary(&a, &b, |x, y| x + y, |x, y| x + y).unwrap();
        assert_eq!(s.shape(), &[0, 3]);
    }
}
