//! Element types of tensors, with the ONNX codes they travel under.

use std::fmt;

/// An ONNX tensor element type.
///
/// Every type up to ONNX 1.22 is known by name so that its storage size can be checked at the
/// boundary; a code we do not know is refused at import, because the size of its data (and so
/// the safety of reading it) cannot be established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    BFloat16,
    Float8E4M3FN,
    Float8E4M3FNUZ,
    Float8E5M2,
    Float8E5M2FNUZ,
    Uint4,
    Int4,
    Float4E2M1,
    Float8E8M0,
    Uint2,
    Int2,
}

use DataType::*;

const ALL: [DataType; 26] = [
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    BFloat16,
    Float8E4M3FN,
    Float8E4M3FNUZ,
    Float8E5M2,
    Float8E5M2FNUZ,
    Uint4,
    Int4,
    Float4E2M1,
    Float8E8M0,
    Uint2,
    Int2,
];

impl DataType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn code(self) -> i32 {
        ALL.iter().position(|&d| d == self).map_or(0, |i| i as i32 + 1)
    }

    /// The type for an ONNX code, or `None` for 0 (undefined) and codes we do not know.
    pub fn from_code(code: i32) -> Option<DataType> {
        usize::try_from(code).ok().and_then(|c| c.checked_sub(1)).and_then(|i| ALL.get(i).copied())
    }

    /// Storage width of one element in bits; `None` for strings (variable length).
    pub fn bit_width(self) -> Option<u64> {
        Some(match self {
            Uint2 | Int2 => 2,
            Uint4 | Int4 | Float4E2M1 => 4,
            Uint8 | Int8 | Bool | Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 => 8,
            Uint16 | Int16 | Float16 | BFloat16 => 16,
            Float | Int32 | Uint32 => 32,
            Int64 | Double | Uint64 | Complex64 => 64,
            Complex128 => 128,
            String => return None,
        })
    }

    /// Bytes needed to store `numel` packed elements (sub-byte types pack low bits first);
    /// `None` on overflow or for strings.
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        let bits = numel.checked_mul(self.bit_width()?)?;
        Some(bits.div_ceil(8))
    }

    /// Whether the type is a floating-point type the adaptation passes may treat as weights.
    pub fn is_float(self) -> bool {
        matches!(self, Float | Float16 | BFloat16 | Double)
    }

    /// The ONNX name of the type (`FLOAT`, `BFLOAT16`, …).
    pub fn name(self) -> &'static str {
        match self {
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            BFloat16 => "BFLOAT16",
            Float8E4M3FN => "FLOAT8E4M3FN",
            Float8E4M3FNUZ => "FLOAT8E4M3FNUZ",
            Float8E5M2 => "FLOAT8E5M2",
            Float8E5M2FNUZ => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4E2M1 => "FLOAT4E2M1",
            Float8E8M0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
        }
    }

    /// Short lower-case name used in dumps (`f32`, `bf16`, `i64`, …).
    pub fn short(self) -> &'static str {
        match self {
            Float => "f32",
            Uint8 => "u8",
            Int8 => "i8",
            Uint16 => "u16",
            Int16 => "i16",
            Int32 => "i32",
            Int64 => "i64",
            String => "str",
            Bool => "bool",
            Float16 => "f16",
            Double => "f64",
            Uint32 => "u32",
            Uint64 => "u64",
            Complex64 => "c64",
            Complex128 => "c128",
            BFloat16 => "bf16",
            Float8E4M3FN => "f8e4m3fn",
            Float8E4M3FNUZ => "f8e4m3fnuz",
            Float8E5M2 => "f8e5m2",
            Float8E5M2FNUZ => "f8e5m2fnuz",
            Uint4 => "u4",
            Int4 => "i4",
            Float4E2M1 => "f4e2m1",
            Float8E8M0 => "f8e8m0",
            Uint2 => "u2",
            Int2 => "i2",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_onnx() {
        for code in 1..=26 {
            assert_eq!(DataType::from_code(code).map(DataType::code), Some(code));
        }
        assert_eq!(DataType::from_code(0), None);
        assert_eq!(DataType::from_code(27), None);
        assert_eq!(DataType::from_code(-3), None);
        assert_eq!(Float.code(), 1);
        assert_eq!(BFloat16.code(), 16);
        assert_eq!(Int4.code(), 22);
        assert_eq!(Float4E2M1.code(), 23);
    }

    #[test]
    fn packed_sizes() {
        assert_eq!(Int4.storage_bytes(3), Some(2));
        assert_eq!(Int2.storage_bytes(5), Some(2));
        assert_eq!(Float.storage_bytes(10), Some(40));
        assert_eq!(Float.storage_bytes(u64::MAX), None);
        assert_eq!(String.storage_bytes(1), None);
    }
}
