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

macro_rules! half_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const IS_SIGNED: bool = true;
            fn to_f64(self) -> f64 { self.to_f64() }
            fn from_f64(v: f64) -> Self { <$t>::from_f64(v) }
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
