//! `Cast` and `CastLike`: numeric conversions (integers exact, floats through f64), bools,
//! and strings (parsed and printed the way numpy does for the test suite's cases).

use adaptc_ir::DataType;
use half::{bf16, f16};

use super::num::{convert, Num};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

/// Converts `t` to `to`.
pub fn cast_to(t: &Tensor, to: DataType) -> KResult<Tensor> {
    if t.dtype() == to {
        return Ok(t.clone());
    }
    if let Some(data) = between_f32_and_half(t.data(), to) {
        return Ok(Tensor::from_parts(t.shape().to_vec(), data));
    }
    fn from_num<A: Num>(v: &[A], to: DataType) -> KResult<Storage> {
        fn conv<A: Num, B: Num>(v: &[A]) -> Storage {
            B::wrap(v.iter().map(|&x| convert::<A, B>(x)).collect())
        }
        Ok(match to {
            DataType::Float => conv::<A, f32>(v),
            DataType::Double => conv::<A, f64>(v),
            DataType::Float16 => conv::<A, f16>(v),
            DataType::BFloat16 => conv::<A, bf16>(v),
            DataType::Int8 => conv::<A, i8>(v),
            DataType::Int16 => conv::<A, i16>(v),
            DataType::Int32 => conv::<A, i32>(v),
            DataType::Int64 => conv::<A, i64>(v),
            DataType::Uint8 => conv::<A, u8>(v),
            DataType::Uint16 => conv::<A, u16>(v),
            DataType::Uint32 => conv::<A, u32>(v),
            DataType::Uint64 => conv::<A, u64>(v),
            DataType::Bool => conv::<A, bool>(v),
            DataType::String => Storage::Str(v.iter().map(|&x| to_string(x)).collect()),
            other => unsupported!("cast to {other}"),
        })
    }
    let data = match t.data() {
        Storage::Str(s) => from_strings(s, to)?,
        other => crate::with_num!(other, v => from_num(v, to)?, _ => kbail!("unreachable")),
    };
    Ok(Tensor::from_parts(t.shape().to_vec(), data))
}

/// The conversions an `autocast` graph makes all the time (f32 ↔ bf16/f16), directly and
/// across threads: the same values as the general path through f64 (a half type widens to
/// f32 exactly, and f32 → f64 → f32 is the identity), at a fraction of its cost.
fn between_f32_and_half(data: &Storage, to: DataType) -> Option<Storage> {
    use rayon::prelude::*;
    fn map<A: Copy + Send + Sync, B: Copy + Send + Sync + Default>(v: &[A], f: impl Fn(A) -> B + Sync) -> Vec<B> {
        let mut out = vec![B::default(); v.len()];
        let each = |(o, a): (&mut [B], &[A])| o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a));
        if v.len() >= super::util::PAR_THRESHOLD {
            out.par_chunks_mut(1 << 14).zip(v.par_chunks(1 << 14)).for_each(each);
        } else {
            each((&mut out, v));
        }
        out
    }
    Some(match (data, to) {
        (Storage::F32(v), DataType::BFloat16) => Storage::BF16(map(v, bf16::from_f32)),
        (Storage::F32(v), DataType::Float16) => Storage::F16(map(v, f16::from_f32)),
        (Storage::BF16(v), DataType::Float) => Storage::F32(map(v, bf16::to_f32)),
        (Storage::F16(v), DataType::Float) => Storage::F32(map(v, f16::to_f32)),
        _ => return None,
    })
}

fn to_string<A: Num>(x: A) -> String {
    if A::IS_FLOAT {
        let f = x.to_f64();
        if f.is_nan() {
            "NaN".into()
        } else if f.is_infinite() {
            if f > 0.0 {
                "INF".into()
            } else {
                "-INF".into()
            }
        } else {
            format!("{f}")
        }
    } else {
        format!("{}", x.to_i128())
    }
}

fn from_strings(s: &[String], to: DataType) -> KResult<Storage> {
    fn parse<B: Num>(s: &[String]) -> KResult<Storage> {
        let mut out = Vec::with_capacity(s.len());
        for x in s {
            let x = x.trim();
            let v = if B::IS_FLOAT {
                match x.to_ascii_lowercase().as_str() {
                    "nan" => f64::NAN,
                    "inf" | "+inf" | "infinity" => f64::INFINITY,
                    "-inf" | "-infinity" => f64::NEG_INFINITY,
                    _ => match x.parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => kbail!("cannot parse {x:?} as a number"),
                    },
                }
            } else {
                match x.parse::<i128>() {
                    Ok(v) => {
                        out.push(B::from_i128(v));
                        continue;
                    }
                    Err(_) => match x.parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => kbail!("cannot parse {x:?} as a number"),
                    },
                }
            };
            out.push(B::from_f64(v));
        }
        Ok(B::wrap(out))
    }
    Ok(match to {
        DataType::Float => parse::<f32>(s)?,
        DataType::Double => parse::<f64>(s)?,
        DataType::Float16 => parse::<f16>(s)?,
        DataType::BFloat16 => parse::<bf16>(s)?,
        DataType::Int8 => parse::<i8>(s)?,
        DataType::Int16 => parse::<i16>(s)?,
        DataType::Int32 => parse::<i32>(s)?,
        DataType::Int64 => parse::<i64>(s)?,
        DataType::Uint8 => parse::<u8>(s)?,
        DataType::Uint16 => parse::<u16>(s)?,
        DataType::Uint32 => parse::<u32>(s)?,
        DataType::Uint64 => parse::<u64>(s)?,
        DataType::Bool => {
            Storage::Bool(s.iter().map(|x| !x.is_empty() && x != "0" && x != "False" && x != "false").collect())
        }
        DataType::String => Storage::Str(s.to_vec()),
        other => unsupported!("cast to {other}"),
    })
}

/// The target type of `Cast`'s `to` attribute.
fn target(c: &OpCtx) -> KResult<DataType> {
    let code = c.int("to", 0);
    match i32::try_from(code).ok().and_then(DataType::from_code) {
        Some(d) => Ok(d),
        None => kbail!("`to` = {code} is not a known element type"),
    }
}

pub fn cast(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![cast_to(i.req(0)?, target(c)?)?])
}

pub fn cast_like(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![cast_to(i.req(0)?, i.req(1)?.dtype())?])
}

/// Reinterprets the bits as another type of the same width (`BitCast`).
pub fn bit_cast(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let to = target(c)?;
    if x.dtype() == DataType::String || to == DataType::String {
        kbail!("BitCast does not apply to strings");
    }
    let bytes = x.to_le_bytes();
    let from_w = x.dtype().bit_width().unwrap_or(0);
    if to.bit_width() != Some(from_w) {
        kbail!("BitCast needs types of the same width: {} and {to}", x.dtype());
    }
    let Some(data) = crate::tensor::storage_from_le_bytes(to, &bytes) else { unsupported!("BitCast to {to}") };
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), data)])
}

pub const OPS: &[(&str, KernelFn)] = &[("Cast", cast), ("CastLike", cast_like), ("BitCast", bit_cast)];
