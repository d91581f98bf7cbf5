//! Elementwise unary ops: math functions and activations.
//!
//! Floats are computed in `f64` and rounded back, so f16/bf16/f32 share one definition;
//! ops that are defined on integers (Abs, Neg, Sign, Relu) also have an exact integer path.

use super::num::Num;
use super::util::{new_filled_chunks, PAR_THRESHOLD};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Elem, Storage, Tensor};

/// `f` over every element: plain loops over slices (so they vectorise), in parallel chunks
/// for large tensors, into memory written once.
fn map_vec<T: Num, U: Elem>(v: &[T], f: &(impl Fn(T) -> U + Sync)) -> Vec<U> {
    // SAFETY: each chunk `o` starts at `s` and `v[s..]` is at least as long, so every element
    // of `o` is written.
    unsafe {
        new_filled_chunks(v.len(), PAR_THRESHOLD / 2, PAR_THRESHOLD, |s, o| {
            for (o, &x) in o.iter_mut().zip(&v[s..]) {
                o.write(f(x));
            }
        })
    }
}

/// Applies a float function to a float tensor, keeping its type.
pub fn float_map(t: &Tensor, f: impl Fn(f64) -> f64 + Sync) -> KResult<Tensor> {
    fn go<T: Num>(v: &[T], f: &(impl Fn(f64) -> f64 + Sync)) -> Storage {
        T::wrap(map_vec(v, &|x: T| T::from_f64(f(x.to_f64()))))
    }
    let data = crate::with_float!(t.data(), v => go(v, &f), _ => kbail!("expects a float tensor, got {}", t.dtype()));
    Ok(Tensor::from_parts(t.shape().to_vec(), data))
}

/// Applies `ff` to floats and `fi` to integers.
fn num_map(t: &Tensor, ff: impl Fn(f64) -> f64 + Sync, fi: impl Fn(i128) -> i128 + Sync) -> KResult<Tensor> {
    fn go<T: Num>(v: &[T], ff: &(impl Fn(f64) -> f64 + Sync), fi: &(impl Fn(i128) -> i128 + Sync)) -> Storage {
        if T::IS_FLOAT {
            T::wrap(map_vec(v, &|x: T| T::from_f64(ff(x.to_f64()))))
        } else {
            T::wrap(map_vec(v, &|x: T| T::from_i128(fi(x.to_i128()))))
        }
    }
    let data =
        crate::with_arith!(t.data(), v => go(v, &ff, &fi), _ => kbail!("expects a numeric tensor, got {}", t.dtype()));
    Ok(Tensor::from_parts(t.shape().to_vec(), data))
}

/// A predicate over floats giving a bool tensor.
fn float_pred(t: &Tensor, f: impl Fn(f64) -> bool + Sync) -> KResult<Tensor> {
    fn go<T: Num>(v: &[T], f: &(impl Fn(f64) -> bool + Sync)) -> Vec<bool> {
        map_vec(v, &|x: T| f(x.to_f64()))
    }
    let data = crate::with_float!(t.data(), v => go(v, &f), _ => kbail!("expects a float tensor, got {}", t.dtype()));
    Ok(Tensor::from_parts(t.shape().to_vec(), Storage::Bool(data)))
}

macro_rules! float_unary {
    ($($name:ident => $f:expr;)*) => {$(
        pub fn $name(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
            Ok(vec![float_map(i.req(0)?, $f)?])
        }
    )*};
}

float_unary! {
    sqrt => f64::sqrt;
    exp => f64::exp;
    log => f64::ln;
    reciprocal => |x| 1.0 / x;
    sin => f64::sin;
    cos => f64::cos;
    tan => f64::tan;
    asin => f64::asin;
    acos => f64::acos;
    atan => f64::atan;
    sinh => f64::sinh;
    cosh => f64::cosh;
    asinh => f64::asinh;
    acosh => f64::acosh;
    atanh => f64::atanh;
    tanh => f64::tanh;
    ceil => f64::ceil;
    floor => f64::floor;
    round => round_half_even;
    sigmoid => sigmoid_f;
    softsign => |x| x / (1.0 + x.abs());
    softplus => |x: f64| if x > 30.0 { x } else { x.exp().ln_1p() };
    erf => erf_f;
    mish => |x: f64| x * (if x > 30.0 { x } else { x.exp().ln_1p() }).tanh();
}

pub(crate) fn sigmoid_f(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Rounds half to even, like numpy and ONNX `Round`.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// The error function (Abramowitz–Stegun 7.1.26 is too coarse; this is W. J. Cody's rational
/// approximation via erfc, accurate to ~1e-15).
#[allow(clippy::excessive_precision)] // Cody's published coefficients, kept verbatim
pub fn erf_f(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 0.5 {
        let t = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_020_2e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_6,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [
            2.844_236_833_439_170_6e3,
            1.282_616_526_077_372_3e3,
            2.440_246_379_344_441_7e2,
            2.360_129_095_234_412_1e1,
            1.0,
        ];
        let num = (((p[4] * t + p[3]) * t + p[2]) * t + p[1]) * t + p[0];
        let den = (((q[4] * t + q[3]) * t + q[2]) * t + q[1]) * t + q[0];
        return x * num / den;
    } else if ax < 4.0 {
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_6e3,
            1.712_047_612_634_070_7e3,
            8.819_522_212_417_690_9e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_376,
            5.641_884_969_886_700_9e-1,
            2.153_115_354_744_038_3e-8,
        ];
        let q = [
            1.230_339_354_803_749_4e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_3e3,
            5.371_811_018_620_098_6e2,
            1.176_939_508_913_125e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let mut num = p[8];
        let mut den = q[8];
        for k in (0..8).rev() {
            num = num * ax + p[k];
            den = den * ax + q[k];
        }
        (-ax * ax).exp() * num / den
    } else {
        let p = [
            -6.587_491_615_298_378e-4,
            -1.608_378_514_874_227_5e-2,
            -1.257_817_261_112_292_6e-1,
            -3.603_448_999_498_044_4e-1,
            -3.053_266_349_612_323_4e-1,
            -1.631_538_713_730_709_6e-2,
        ];
        let q = [
            2.335_204_976_268_691_8e-3,
            6.051_834_131_244_132e-2,
            5.279_051_029_514_284e-1,
            1.872_952_849_923_460_4,
            2.568_520_192_289_822,
            1.0,
        ];
        let z = 1.0 / (ax * ax);
        let mut num = p[5];
        let mut den = q[5];
        for k in (0..5).rev() {
            num = num * z + p[k];
            den = den * z + q[k];
        }
        let frac_1_sqrt_pi = 0.564_189_583_547_756_3;
        (-ax * ax).exp() / ax * (frac_1_sqrt_pi + z * num / den)
    };
    // `r` is erfc(|x|).
    if x < 0.0 {
        r - 1.0
    } else {
        1.0 - r
    }
}

pub fn abs(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![num_map(i.req(0)?, f64::abs, i128::abs)?])
}

pub fn neg(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![num_map(i.req(0)?, |x| -x, |x| -x)?])
}

pub fn sign(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![num_map(
        i.req(0)?,
        |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        },
        i128::signum,
    )?])
}

pub fn relu(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![num_map(i.req(0)?, |x| if x > 0.0 { x } else { 0.0 }, |x| x.max(0))?])
}

pub fn leaky_relu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 0.01));
    Ok(vec![float_map(i.req(0)?, move |x| if x >= 0.0 { x } else { a * x })?])
}

pub fn elu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 1.0));
    Ok(vec![float_map(i.req(0)?, move |x| if x >= 0.0 { x } else { a * (x.exp() - 1.0) })?])
}

pub fn celu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 1.0));
    Ok(vec![float_map(i.req(0)?, move |x| x.max(0.0) + (a * ((x / a).exp() - 1.0)).min(0.0))?])
}

pub fn selu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 1.673_263_2));
    let g = f64::from(c.float("gamma", 1.050_701));
    Ok(vec![float_map(i.req(0)?, move |x| if x > 0.0 { g * x } else { g * a * (x.exp() - 1.0) })?])
}

pub fn thresholded_relu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 1.0));
    Ok(vec![float_map(i.req(0)?, move |x| if x > a { x } else { 0.0 })?])
}

pub fn hard_sigmoid(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 0.2));
    let b = f64::from(c.float("beta", 0.5));
    Ok(vec![float_map(i.req(0)?, move |x| (a * x + b).clamp(0.0, 1.0))?])
}

pub fn hard_swish(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![float_map(i.req(0)?, |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0))?])
}

pub fn shrink(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let l = f64::from(c.float("lambd", 0.5));
    let b = f64::from(c.float("bias", 0.0));
    let f = move |x: f64| {
        if x < -l {
            x + b
        } else if x > l {
            x - b
        } else {
            0.0
        }
    };
    Ok(vec![num_map(i.req(0)?, f, move |x| f(x as f64) as i128)?])
}

pub fn swish(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let a = f64::from(c.float("alpha", 1.0));
    Ok(vec![float_map(i.req(0)?, move |x| x * sigmoid_f(a * x))?])
}

pub fn gelu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    match c.string("approximate").as_deref().unwrap_or("none") {
        "none" => {
            if let Some(v) = x.as_slice::<f32>() {
                // f32 through the vectorisable normal CDF (x·Φ(x), ~1e-6 relative), not libm's
                // f64 erf.
                let f = |x: f32| x * super::grad::real::normal_cdf_f32(x);
                return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::F32(map_vec(v, &f)))]);
            }
            Ok(vec![float_map(x, |x| 0.5 * x * (1.0 + erf_f(x * std::f64::consts::FRAC_1_SQRT_2)))?])
        }
        "tanh" => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            Ok(vec![float_map(x, move |x| 0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh()))?])
        }
        other => unsupported!("approximate=\"{other}\""),
    }
}

pub fn is_nan(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    if let Some(v) = x.as_slice::<f32>() {
        return Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::Bool(map_vec(v, &|x: f32| x.is_nan())))]);
    }
    Ok(vec![float_pred(x, f64::is_nan)?])
}

/// `m = IsNaN(y)` and `Where(m, z, y)` in one pass (plan fusion, `crate::fuse`: the NaN guard
/// that exported attention puts after its softmax). Inputs `(y, z)`, outputs `(m, where)`.
/// Without a NaN and with a scalar `z` of y's type, the Where's result is `y` itself, shared
/// rather than copied; otherwise it is the Where kernel's.
pub fn is_nan_where(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (y, z) = (i.req(0)?, i.req(1)?);
    let Some(mask) = is_nan(c, &Inputs(&[Some(y)]))?.into_iter().next() else { kbail!("IsNaN gave no output") };
    let any = mask.as_slice::<bool>().is_none_or(|m| m.iter().any(|&b| b));
    if !any && z.numel() == 1 && z.rank() <= y.rank() && z.dtype() == y.dtype() {
        return Ok(vec![mask, y.clone()]);
    }
    let Some(out) = super::compare::where_(c, &Inputs(&[Some(&mask), Some(z), Some(y)]))?.into_iter().next() else {
        kbail!("Where gave no output")
    };
    Ok(vec![mask, out])
}

pub fn is_inf(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (pos, neg) = (c.int("detect_positive", 1) != 0, c.int("detect_negative", 1) != 0);
    Ok(vec![float_pred(i.req(0)?, move |x| (pos && x == f64::INFINITY) || (neg && x == f64::NEG_INFINITY))?])
}

pub fn not(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let Some(v) = x.as_slice::<bool>() else { kbail!("expects a bool tensor, got {}", x.dtype()) };
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), Storage::Bool(v.iter().map(|b| !b).collect()))])
}

pub fn bitwise_not(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    Ok(vec![num_map(x, |v| v, |v| !v)?])
}

pub fn identity(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![i.req(0)?.clone()])
}

/// The registry's view of this module.
pub const OPS: &[(&str, KernelFn)] = &[
    ("Sqrt", sqrt),
    ("Exp", exp),
    ("Log", log),
    ("Reciprocal", reciprocal),
    ("Sin", sin),
    ("Cos", cos),
    ("Tan", tan),
    ("Asin", asin),
    ("Acos", acos),
    ("Atan", atan),
    ("Sinh", sinh),
    ("Cosh", cosh),
    ("Asinh", asinh),
    ("Acosh", acosh),
    ("Atanh", atanh),
    ("Tanh", tanh),
    ("Ceil", ceil),
    ("Floor", floor),
    ("Round", round),
    ("Sigmoid", sigmoid),
    ("Softsign", softsign),
    ("Softplus", softplus),
    ("Erf", erf),
    ("Mish", mish),
    ("Abs", abs),
    ("Neg", neg),
    ("Sign", sign),
    ("Relu", relu),
    ("LeakyRelu", leaky_relu),
    ("Elu", elu),
    ("Celu", celu),
    ("Selu", selu),
    ("ThresholdedRelu", thresholded_relu),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", hard_swish),
    ("Shrink", shrink),
    ("Swish", swish),
    ("Gelu", gelu),
    ("IsNaN", is_nan),
    ("IsInf", is_inf),
    ("Not", not),
    ("BitwiseNot", bitwise_not),
    ("Identity", identity),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
            (5.0, 0.999_999_999_998_462_5),
        ] {
            assert!((erf_f(x) - want).abs() < 1e-12, "erf({x}) = {}", erf_f(x));
        }
    }

    #[test]
    fn round_is_half_to_even() {
        assert_eq!([0.5, 1.5, 2.5, -0.5, -1.5, 2.4].map(round_half_even), [0.0, 2.0, 2.0, -0.0, -2.0, 2.0]);
    }
}
