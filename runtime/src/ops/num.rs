//! The numeric element types and what kernels need of them: conversions (through `f64` for
//! floats, `i128` for integers, so every integer value survives) and wrapping arithmetic.

use half::{bf16, f16};

use crate::tensor::Elem;

/// A numeric element type (every storage type but strings).
pub trait Num: Elem + Copy + PartialOrd + Default {
    const IS_FLOAT: bool;
    const IS_SIGNED: bool;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn to_i128(self) -> i128;
    fn from_i128(v: i128) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    /// The lowest value (−∞ for floats): the identity of max.
    fn lowest() -> Self;
    /// The highest value (+∞ for floats): the identity of min.
    fn highest() -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Division; integer division by zero gives 0 rather than a panic.
    fn div(self, o: Self) -> Self;
}

macro_rules! int_num {
    ($($t:ty: $signed:expr),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = false;
            const IS_SIGNED: bool = $signed;
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_i128(self) -> i128 { self as i128 }
            fn from_i128(v: i128) -> Self { v as $t }
            fn zero() -> Self { 0 }
            fn one() -> Self { 1 }
            fn lowest() -> Self { <$t>::MIN }
            fn highest() -> Self { <$t>::MAX }
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn div(self, o: Self) -> Self { if o == 0 { 0 } else { self.wrapping_div(o) } }
        }
    )*};
}
int_num!(i8: true, i16: true, i32: true, i64: true, u8: false, u16: false, u32: false, u64: false);

macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const IS_SIGNED: bool = true;
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_i128(self) -> i128 { self as i128 }
            fn from_i128(v: i128) -> Self { v as $t }
            fn zero() -> Self { 0.0 }
            fn one() -> Self { 1.0 }
            fn lowest() -> Self { <$t>::NEG_INFINITY }
            fn highest() -> Self { <$t>::INFINITY }
            fn add(self, o: Self) -> Self { self + o }
            fn sub(self, o: Self) -> Self { self - o }
            fn mul(self, o: Self) -> Self { self * o }
            fn div(self, o: Self) -> Self { self / o }
        }
    )*};
}
float_num!(f32, f64);

/// `v` rounded once (to nearest, ties to even) to a half type. `half`'s own `from_f64` drops
/// low bits before rounding, so a value just above a tie can round down. Here `v` goes to f32
/// exactly when it is an f32 (the usual case: f32 products and casts), else rounded to odd
/// (toward zero, lowest bit set: the sticky bit), which f32's 13+ extra bits carry through to
/// the one correct rounding `from_f32` does.
fn half_from_f64<H>(v: f64, from_f32: fn(f32) -> H) -> H {
    let t = v as f32;
    if f64::from(t) == v || v.is_nan() {
        return from_f32(t);
    }
    let toward_zero = if f64::from(t).abs() > v.abs() { f32::from_bits(t.to_bits() - 1) } else { t };
    from_f32(f32::from_bits(toward_zero.to_bits() | 1))
}

macro_rules! half_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const IS_SIGNED: bool = true;
            fn to_f64(self) -> f64 { self.to_f64() }
            fn from_f64(v: f64) -> Self { half_from_f64(v, <$t>::from_f32) }
            fn to_i128(self) -> i128 { self.to_f32() as i128 }
            fn from_i128(v: i128) -> Self { <$t>::from_f32(v as f32) }
            fn zero() -> Self { <$t>::ZERO }
            fn one() -> Self { <$t>::ONE }
            fn lowest() -> Self { <$t>::NEG_INFINITY }
            fn highest() -> Self { <$t>::INFINITY }
            fn add(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() + o.to_f32()) }
            fn sub(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() - o.to_f32()) }
            fn mul(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() * o.to_f32()) }
            fn div(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() / o.to_f32()) }
        }
    )*};
}
half_num!(f16, bf16);

impl Num for bool {
    const IS_FLOAT: bool = false;
    const IS_SIGNED: bool = false;
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i128(self) -> i128 {
        i128::from(self)
    }
    fn from_i128(v: i128) -> Self {
        v != 0
    }
    fn zero() -> Self {
        false
    }
    fn one() -> Self {
        true
    }
    fn lowest() -> Self {
        false
    }
    fn highest() -> Self {
        true
    }
    fn add(self, o: Self) -> Self {
        self || o
    }
    fn sub(self, o: Self) -> Self {
        self ^ o
    }
    fn mul(self, o: Self) -> Self {
        self && o
    }
    fn div(self, o: Self) -> Self {
        self && o
    }
}

/// Converts between numeric types: integers exactly (wrapping), floats through `f64`.
pub fn convert<A: Num, B: Num>(a: A) -> B {
    if A::IS_FLOAT || B::IS_FLOAT {
        B::from_f64(a.to_f64())
    } else {
        B::from_i128(a.to_i128())
    }
}

/// Runs `$body` with `$v` bound to the typed vector of any numeric storage (bool included);
/// strings go to `$other`.
#[macro_export]
macro_rules! with_num {
    ($s:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F64($v) => $body,
            $crate::tensor::Storage::F16($v) => $body,
            $crate::tensor::Storage::BF16($v) => $body,
            $crate::tensor::Storage::I8($v) => $body,
            $crate::tensor::Storage::I16($v) => $body,
            $crate::tensor::Storage::I32($v) => $body,
            $crate::tensor::Storage::I64($v) => $body,
            $crate::tensor::Storage::U8($v) => $body,
            $crate::tensor::Storage::U16($v) => $body,
            $crate::tensor::Storage::U32($v) => $body,
            $crate::tensor::Storage::U64($v) => $body,
            $crate::tensor::Storage::Bool($v) => $body,
            $crate::tensor::Storage::Str(_) => $other,
        }
    };
}

/// Like [`with_num!`] for the types arithmetic is defined on (no bool, no strings).
#[macro_export]
macro_rules! with_arith {
    ($s:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F64($v) => $body,
            $crate::tensor::Storage::F16($v) => $body,
            $crate::tensor::Storage::BF16($v) => $body,
            $crate::tensor::Storage::I8($v) => $body,
            $crate::tensor::Storage::I16($v) => $body,
            $crate::tensor::Storage::I32($v) => $body,
            $crate::tensor::Storage::I64($v) => $body,
            $crate::tensor::Storage::U8($v) => $body,
            $crate::tensor::Storage::U16($v) => $body,
            $crate::tensor::Storage::U32($v) => $body,
            $crate::tensor::Storage::U64($v) => $body,
            _ => $other,
        }
    };
}

/// Like [`with_num!`] for the float types only.
#[macro_export]
macro_rules! with_float {
    ($s:expr, $v:ident => $body:expr, _ => $other:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F64($v) => $body,
            $crate::tensor::Storage::F16($v) => $body,
            $crate::tensor::Storage::BF16($v) => $body,
            _ => $other,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_round_once_from_f64() {
        // Just above a tie, the extra bits only in the lowest mantissa bits: rounds up.
        let above_tie = f32::from_bits(0x3f80_8001);
        assert_eq!(<bf16 as Num>::from_f64(f64::from(above_tie)).to_bits(), 0x3f81);
        // An exact tie rounds to even, both ways.
        assert_eq!(<bf16 as Num>::from_f64(f64::from(f32::from_bits(0x3f80_8000))).to_bits(), 0x3f80);
        assert_eq!(<bf16 as Num>::from_f64(f64::from(f32::from_bits(0x3f81_8000))).to_bits(), 0x3f82);
        // An f64 that is no f32, just above a bf16 tie: the sticky bit carries it up.
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(<bf16 as Num>::from_f64(v).to_bits(), 0x3f81);
        assert_eq!(<bf16 as Num>::from_f64(-v).to_bits(), 0xbf81);
        // f16: the same for its 10-bit mantissa.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-45);
        assert_eq!(<f16 as Num>::from_f64(v).to_bits(), 0x3c01);
        // Overflow, tiny values and NaN.
        assert!(<bf16 as Num>::from_f64(1e39).to_f32().is_infinite());
        assert_eq!(<bf16 as Num>::from_f64(-1e-50).to_bits(), 0x8000);
        assert!(<bf16 as Num>::from_f64(f64::NAN).to_f32().is_nan());
    }
}
