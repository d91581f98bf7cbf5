//! `Resize` (and the older `Upsample`): nearest, linear and cubic interpolation, with every
//! coordinate transformation mode, antialiasing, `exclude_outside`, `keep_aspect_ratio_policy`
//! and `axes`.
//!
//! Interpolation is separable, so each resized axis is processed in turn: every output
//! coordinate gets a small window of input indices and weights (as onnx's reference computes
//! them), applied along that axis.

use super::num::Num;
use super::util::{axes as norm_axes, checked_numel, floats, ints};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

#[derive(Clone, Copy)]
enum Mode {
    Nearest(Nearest),
    Linear { antialias: bool },
    Cubic { a: f64, antialias: bool },
}

#[derive(Clone, Copy)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Interpolation weights for the window around a source coordinate whose fractional part is
/// `ratio` (in (0, 1]).
fn coeffs(mode: Mode, ratio: f64, scale: f64) -> Vec<f64> {
    match mode {
        Mode::Nearest(n) => {
            if ratio.fract() == 0.0 {
                return vec![0.0, 1.0];
            }
            let right = match n {
                Nearest::RoundPreferFloor => ratio > 0.5,
                Nearest::RoundPreferCeil => ratio >= 0.5,
                Nearest::Floor => false,
                Nearest::Ceil => true,
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        Mode::Linear { antialias: false } => vec![1.0 - ratio, ratio],
        Mode::Linear { antialias: true } => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> =
                (start..start + footprint).map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0)).collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        Mode::Cubic { a, antialias: false } => {
            let r = ratio;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a) * ((1.0 - r) + 1.0) - 4.0 * a,
            ]
        }
        Mode::Cubic { a, antialias: true } => {
            let s = scale.min(1.0);
            let f = |x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end).map(|i| f(s * (i as f64 - ratio))).collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
    }
}

/// Settings shared by every axis.
struct Setup<'a> {
    mode: Mode,
    transform: &'a str,
    exclude_outside: bool,
    extrapolation: f64,
}

/// Resizes axis `ax` of `data` (`shape`) to `out_w` with `scale`; `roi` is (start, end) for
/// `tf_crop_and_resize`.
fn resize_axis(
    data: &[f64],
    shape: &[usize],
    ax: usize,
    out_w: usize,
    scale: f64,
    roi: (f64, f64),
    s: &Setup,
) -> KResult<Vec<f64>> {
    let in_w = shape[ax];
    let outer: usize = shape[..ax].iter().product();
    let inner: usize = shape[ax + 1..].iter().product();
    let mut out = vec![0f64; outer * out_w * inner];
    if in_w == 0 {
        if out.is_empty() {
            return Ok(out);
        }
        kbail!("cannot resize an empty axis to {out_w}");
    }
    let out_f = scale * in_w as f64;
    let mut windows = Vec::with_capacity(out_w);
    for y in 0..out_w {
        let yf = y as f64;
        let mut extrapolated = false;
        let x = match s.transform {
            "align_corners" => {
                if out_f == 1.0 {
                    0.0
                } else {
                    yf * (in_w as f64 - 1.0) / (out_f - 1.0)
                }
            }
            "asymmetric" => yf / scale,
            "tf_crop_and_resize" => {
                let x = if out_f == 1.0 {
                    (roi.1 - roi.0) * (in_w as f64 - 1.0) / 2.0
                } else {
                    yf * (roi.1 - roi.0) * (in_w as f64 - 1.0) / (out_f - 1.0)
                } + roi.0 * (in_w as f64 - 1.0);
                extrapolated = x < 0.0 || x > in_w as f64 - 1.0;
                x
            }
            "pytorch_half_pixel" => {
                if out_f == 1.0 {
                    -0.5
                } else {
                    (yf + 0.5) / scale - 0.5
                }
            }
            "half_pixel" => (yf + 0.5) / scale - 0.5,
            "half_pixel_symmetric" => {
                let adjustment = out_w as f64 / out_f;
                let center = in_w as f64 / 2.0;
                center * (1.0 - adjustment) + (yf + 0.5) / scale - 0.5
            }
            other => unsupported!("coordinate_transformation_mode \"{other}\""),
        };
        let ratio = if x.fract() == 0.0 { 1.0 } else { x - x.floor() };
        let mut c = coeffs(s.mode, ratio, scale);
        let n = c.len() as i64;
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor() as i64;
        let frac = xp - p as f64;
        let off = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = p + off - pad;
        let idx: Vec<i64> = (0..n).map(|k| start + k).collect();
        if s.exclude_outside {
            for (w, &i) in c.iter_mut().zip(&idx) {
                if i < 0 || i >= in_w as i64 {
                    *w = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            c.iter_mut().for_each(|w| *w /= sum);
        }
        let idx: Vec<usize> = idx.iter().map(|&i| i.clamp(0, in_w as i64 - 1) as usize).collect();
        windows.push((idx, c, extrapolated));
    }
    for o in 0..outer {
        for (y, (idx, c, extrapolated)) in windows.iter().enumerate() {
            for r in 0..inner {
                out[(o * out_w + y) * inner + r] = if *extrapolated {
                    s.extrapolation
                } else {
                    idx.iter().zip(c).map(|(&i, &w)| w * data[(o * in_w + i) * inner + r]).sum()
                };
            }
        }
    }
    Ok(out)
}

/// The core: resize `x` along `axes` to `sizes` (or by `scales`).
fn resize_core(
    c: &OpCtx,
    x: &Tensor,
    roi: Option<Vec<f64>>,
    scales: Option<Vec<f64>>,
    sizes: Option<Vec<i64>>,
    setup: &Setup,
) -> KResult<Tensor> {
    let r = x.rank();
    let ax = match c.ints("axes") {
        Some(a) => norm_axes(&a, r)?,
        None => (0..r).collect(),
    };
    let mut scale = vec![1.0f64; r];
    let mut out: Vec<usize> = x.shape().to_vec();
    match (scales.filter(|s| !s.is_empty()), sizes.filter(|s| !s.is_empty())) {
        (Some(s), None) => {
            if s.len() != ax.len() || s.iter().any(|&v| v <= 0.0) {
                kbail!("scales {s:?} do not fit {} axes", ax.len());
            }
            for (k, &a) in ax.iter().enumerate() {
                scale[a] = s[k];
                out[a] = (s[k] * x.shape()[a] as f64) as usize;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != ax.len() || sz.iter().any(|&v| v < 0) {
                kbail!("sizes {sz:?} do not fit {} axes", ax.len());
            }
            for (k, &a) in ax.iter().enumerate() {
                scale[a] = sz[k] as f64 / x.shape()[a].max(1) as f64;
                out[a] = sz[k] as usize;
            }
            let policy = c.string("keep_aspect_ratio_policy").unwrap_or_else(|| "stretch".into());
            if policy != "stretch" {
                let chosen = ax.iter().map(|&a| scale[a]);
                let s = match policy.as_str() {
                    "not_larger" => chosen.fold(f64::INFINITY, f64::min),
                    "not_smaller" => chosen.fold(f64::NEG_INFINITY, f64::max),
                    other => kbail!("keep_aspect_ratio_policy \"{other}\" is unknown"),
                };
                for &a in &ax {
                    scale[a] = s;
                    out[a] = (s * x.shape()[a] as f64 + 0.5) as usize;
                }
            }
        }
        (Some(_), Some(_)) => kbail!("only one of scales and sizes may be given"),
        (None, None) => kbail!("one of scales and sizes is required"),
    }
    checked_numel(&out)?;
    if ax.iter().any(|&a| !(1e-6..=1e6).contains(&scale[a]) && out[a] > 0) {
        kbail!("scales {scale:?} are out of range");
    }
    let roi_full = match roi.filter(|v| !v.is_empty()) {
        Some(v) if v.len() == 2 * ax.len() => {
            let mut full = vec![(0.0, 1.0); r];
            for (k, &a) in ax.iter().enumerate() {
                full[a] = (v[k], v[k + ax.len()]);
            }
            full
        }
        Some(v) => kbail!("roi {v:?} does not fit {} axes", ax.len()),
        None => vec![(0.0, 1.0); r],
    };
    let mut data = floats(x)?;
    let mut shape = x.shape().to_vec();
    for &a in &ax {
        let identity = scale[a] == 1.0 && out[a] == shape[a] && roi_full[a] == (0.0, 1.0);
        if identity {
            continue;
        }
        data = resize_axis(&data, &shape, a, out[a], scale[a], roi_full[a], setup)?;
        shape[a] = out[a];
    }
    to_dtype(shape, data, x.dtype())
}

/// Rounds and saturates back to an integer type, like onnx's `saturate_cast`.
fn to_dtype(shape: Vec<usize>, v: Vec<f64>, dtype: adaptc_ir::DataType) -> KResult<Tensor> {
    fn go<T: Num>(v: &[f64]) -> Storage {
        let (lo, hi) = (T::lowest().to_f64(), T::highest().to_f64());
        T::wrap(v.iter().map(|&x| T::from_f64(if T::IS_FLOAT { x } else { round_even(x).clamp(lo, hi) })).collect())
    }
    let zero =
        Storage::zeros(dtype, 0).ok_or_else(|| crate::error::KernelError::Unsupported(format!("{dtype} output")))?;
    if matches!(zero, Storage::Bool(_) | Storage::Str(_)) {
        kbail!("cannot resize {dtype}");
    }
    let data = typed(&zero, &v);
    fn typed(z: &Storage, v: &[f64]) -> Storage {
        match z {
            Storage::F32(_) => go::<f32>(v),
            Storage::F64(_) => go::<f64>(v),
            Storage::F16(_) => go::<half::f16>(v),
            Storage::BF16(_) => go::<half::bf16>(v),
            Storage::I8(_) => go::<i8>(v),
            Storage::I16(_) => go::<i16>(v),
            Storage::I32(_) => go::<i32>(v),
            Storage::I64(_) => go::<i64>(v),
            Storage::U8(_) => go::<u8>(v),
            Storage::U16(_) => go::<u16>(v),
            Storage::U32(_) => go::<u32>(v),
            _ => go::<u64>(v),
        }
    }
    Ok(Tensor::from_parts(shape, data))
}

fn round_even(x: f64) -> f64 {
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        x.round()
    }
}

fn mode_of(c: &OpCtx, default_nearest: Nearest) -> KResult<Mode> {
    let antialias = c.int("antialias", 0) != 0;
    Ok(match c.string("mode").as_deref().unwrap_or("nearest") {
        "nearest" => Mode::Nearest(match c.string("nearest_mode").as_deref() {
            None => default_nearest,
            Some("round_prefer_floor") => Nearest::RoundPreferFloor,
            Some("round_prefer_ceil") => Nearest::RoundPreferCeil,
            Some("floor") => Nearest::Floor,
            Some("ceil") => Nearest::Ceil,
            Some(other) => kbail!("nearest_mode \"{other}\" is unknown"),
        }),
        "linear" | "bilinear" | "trilinear" => Mode::Linear { antialias },
        "cubic" | "bicubic" => Mode::Cubic { a: f64::from(c.float("cubic_coeff_a", -0.75)), antialias },
        other => kbail!("mode \"{other}\" is unknown"),
    })
}

pub fn resize(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    if c.opset < 11 {
        let scales = floats(i.req(1)?)?;
        let setup = Setup {
            mode: mode_of(c, Nearest::Floor)?,
            transform: "asymmetric",
            exclude_outside: false,
            extrapolation: 0.0,
        };
        return Ok(vec![resize_core(c, x, None, Some(scales), None, &setup)?]);
    }
    let transform = c.string("coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
    let setup = Setup {
        mode: mode_of(c, Nearest::RoundPreferFloor)?,
        transform: &transform,
        exclude_outside: c.int("exclude_outside", 0) != 0,
        extrapolation: f64::from(c.float("extrapolation_value", 0.0)),
    };
    let roi = i.opt(1).map(floats).transpose()?;
    let scales = i.opt(2).map(floats).transpose()?;
    let sizes = i.opt(3).map(ints).transpose()?;
    Ok(vec![resize_core(c, x, roi, scales, sizes, &setup)?])
}

pub fn upsample(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let scales = match i.opt(1) {
        Some(s) => floats(s)?,
        None => c.floats("scales").map(|v| v.iter().map(|&f| f64::from(f)).collect()).unwrap_or_default(),
    };
    let setup = Setup {
        mode: mode_of(c, Nearest::Floor)?,
        transform: "asymmetric",
        exclude_outside: false,
        extrapolation: 0.0,
    };
    Ok(vec![resize_core(c, x, None, Some(scales), None, &setup)?])
}

pub const OPS: &[(&str, KernelFn)] = &[("Resize", resize), ("Upsample", upsample)];
