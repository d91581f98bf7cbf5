//! The element types gradient kernels compute in (f32 and f64), and the f32 math that the
//! training path needs to vectorise: an `exp` and an `erf` built from polynomials and bit
//! tricks that compile to SIMD on baseline x86-64 (the libm calls do not).

use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::ops::num::Num;

/// A float type a gradient kernel runs in. Kernels are written once over `Real`; f64 serves
/// the finite-difference tests, f32 the training path.
pub trait Real:
    Num
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    /// A constant (converted once by the caller, never per element).
    fn c(v: f64) -> Self;
    /// `n` as this type (element counts used as divisors).
    fn count(n: usize) -> Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    /// The larger of two values; a NaN in `self` is kept.
    fn max(self, o: Self) -> Self;
}

impl Real for f64 {
    fn c(v: f64) -> Self {
        v
    }
    fn count(n: usize) -> Self {
        n as f64
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    /// The forward Gelu's erf, so that finite differences of Gelu agree with GeluGrad.
    fn erf(self) -> Self {
        crate::ops::unary::erf_f(self)
    }
    fn max(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

impl Real for f32 {
    fn c(v: f64) -> Self {
        v as f32
    }
    fn count(n: usize) -> Self {
        n as f32
    }
    fn exp(self) -> Self {
        exp_f32(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn erf(self) -> Self {
        erf_f32(self)
    }
    fn max(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

/// `e^x` in f32 (Cephes `expf`: x = n·ln2 + r, a degree-6 polynomial for e^r, 2^n built in the
/// exponent bits), within 2 ulp of the true value; `x < −87` gives 0 and `x > 88` saturates
/// near f32's largest value. NaN stays NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' published coefficients
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let under = x < -87.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_375, xc));
    let mut p = 1.987_569_150_0e-4f32;
    p = p.mul_add(r, 1.398_199_950_7e-3);
    p = p.mul_add(r, 8.333_451_907_3e-3);
    p = p.mul_add(r, 4.166_579_589_4e-2);
    p = p.mul_add(r, 1.666_666_545_9e-1);
    p = p.mul_add(r, 5.000_000_120_1e-1);
    let e = (p * r).mul_add(r, r) + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let v = e * scale;
    if under {
        0.0
    } else {
        v
    }
}

/// erf in f32, vectorisable: the Maclaurin series below |x| = 1 (where the tail form
/// cancels), Abramowitz–Stegun 7.1.26 with [`exp_f32`] above; within 2e-7 of erf.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let x2 = x * x;
    // (2/√π)·Σ (−1)ⁿ x^{2n+1} / (n!(2n+1)), eleven terms: below 1e-9 for |x| < 1.
    const SERIES: [f32; 11] = [
        1.0000000000e+00,
        -3.3333333333e-01,
        1.0000000000e-01,
        -2.3809523810e-02,
        4.6296296296e-03,
        -7.5757575758e-04,
        1.0683760684e-04,
        -1.3227513228e-05,
        1.4589169001e-06,
        -1.4503852223e-07,
        1.3122532964e-08,
    ];
    let mut p = SERIES[10];
    for &c in SERIES[..10].iter().rev() {
        p = p.mul_add(x2, c);
    }
    let series = std::f32::consts::FRAC_2_SQRT_PI * x * p;
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * exp_f32(-a * a);
    let tail = if x < 0.0 { -y } else { y };
    if a < 1.0 {
        series
    } else {
        tail
    }
}

/// Φ(x), the standard normal CDF, and the Gaussian `e^{−x²/2}` (φ without its 1/√(2π)) in
/// f32, vectorisable, from one [`exp_f32`]: Gelu needs the first, its gradient both.
///
/// Φ comes from erfc(z), z = |x|/√2, on the side of x where it does not cancel, as
/// `t·P(t)·e^{−z²}` with `t = 1/(1 + z/2)` and `P` a degree-9 polynomial fitted here to
/// erfc(z)·e^{z²}/t in relative error (1.7e-7 over z ∈ [0, 9.5]; with f32 rounding, within
/// 1e-6 relative for |x| < 4 and 5e-6 to |x| = 12). Unlike `1 − erf`, the tail keeps its
/// relative accuracy.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn normal_cdf_gauss_f32(x: f32) -> (f32, f32) {
    const FIT: [f32; 10] = [
        -0.025_546_230_375_766_754,
        0.064_675_264_060_497_28,
        0.030_143_119_394_779_205,
        -0.197_718_843_817_710_88,
        0.078_858_368_098_735_81,
        0.058_510_519_564_151_764,
        0.180_361_479_520_797_73,
        0.246_517_330_408_096_3,
        0.282_104_104_757_308_96,
        0.282_094_746_828_079_2,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / z.mul_add(0.5, 1.0);
    let mut p = FIT[0];
    for &c in &FIT[1..] {
        p = p.mul_add(t, c);
    }
    let gauss = exp_f32(-0.5 * x * x);
    let half_tail = 0.5 * t * p * gauss;
    (if x < 0.0 { half_tail } else { 1.0 - half_tail }, gauss)
}

/// Φ(x) alone: see [`normal_cdf_gauss_f32`].
#[inline(always)]
pub fn normal_cdf_f32(x: f32) -> f32 {
    normal_cdf_gauss_f32(x).0
}

/// Runs `$body` with `$v` bound to the f32 or f64 vector of a storage; other types go to
/// `$other`.
macro_rules! with_real {
    ($s:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F64($v) => $body,
            _ => $other,
        }
    };
}
pub(crate) use with_real;

/// `Σ a·b` with eight independent accumulators, so that the f32 loop vectorises.
#[inline]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().copied().sum::<T>();
    for (&x, &y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `Σ a` with eight independent accumulators.
#[inline]
pub fn sum<T: Real>(a: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let ac = a.chunks_exact(8);
    let rest = ac.remainder();
    for x in ac {
        for k in 0..8 {
            acc[k] += x[k];
        }
    }
    acc.iter().copied().sum::<T>() + rest.iter().copied().sum::<T>()
}

/// The largest value (−∞ for an empty slice), eight lanes at a time.
#[inline]
pub fn max<T: Real>(a: &[T]) -> T {
    let mut acc = [T::lowest(); 8];
    let ac = a.chunks_exact(8);
    let rest = ac.remainder();
    for x in ac {
        for k in 0..8 {
            acc[k] = acc[k].max(x[k]);
        }
    }
    acc.iter().chain(rest).copied().fold(T::lowest(), T::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), (x as f64).exp());
            let rel = ((got as f64 - want) / want).abs();
            assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn erf_f32_matches_f64() {
        let mut x = -6.0f32;
        while x < 6.0 {
            assert!((erf_f32(x) as f64 - crate::ops::unary::erf_f(x as f64)).abs() < 2e-7, "erf({x})");
            x += 0.0007;
        }
    }

    #[test]
    fn lane_reductions() {
        let v: Vec<f64> = (0..21).map(|k| k as f64 - 7.0).collect();
        assert_eq!(sum(&v), v.iter().sum::<f64>());
        assert_eq!(dot(&v, &v), v.iter().map(|x| x * x).sum::<f64>());
        assert_eq!(max(&v), 13.0);
        assert_eq!(max::<f32>(&[]), f32::NEG_INFINITY);
    }
}
