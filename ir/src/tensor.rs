//! Constant tensors (initializers, attribute values) and where their bytes live.
//!
//! Bytes are owned, sliced out of an external data file, or computed on demand. Reading a
//! tensor's name, dtype or shape never touches its bytes, and an external tensor that no pass
//! changed is copied file-to-file on save without ever being decoded.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::dtype::DataType;
use crate::error::IrError;
use crate::external::ExternalSlice;
use crate::metadata::{Extras, Metadata};

/// A function that produces a tensor's bytes when they are first needed (for example a merged
/// weight that is only computed while the model is written out).
pub type LazyFn = dyn Fn() -> Result<Vec<u8>, IrError> + Send + Sync;

/// Where a tensor's bytes are.
#[derive(Clone)]
pub enum TensorData {
    /// Little-endian bytes in ONNX raw layout (sub-byte types packed, low bits first).
    Bytes(Arc<Vec<u8>>),
    /// One byte string per element, for `STRING` tensors.
    Strings(Arc<Vec<Vec<u8>>>),
    /// A checked slice of an external data file, read through a memory map on demand.
    External(ExternalSlice),
    /// Bytes computed on demand; the closure must return exactly `storage_bytes` bytes.
    Lazy(Arc<LazyFn>),
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            TensorData::Strings(s) => write!(f, "Strings({} items)", s.len()),
            TensorData::External(e) => write!(f, "External({e:?})"),
            TensorData::Lazy(_) => f.write_str("Lazy"),
        }
    }
}

/// How the tensor was encoded in the file it came from, so an untouched tensor is written back
/// the same way (typed fields stay typed fields, external stays external).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Encoding {
    /// Created by a pass: raw bytes inline, or external when the model is saved that way.
    #[default]
    Fresh,
    /// `raw_data`.
    Raw,
    /// The typed repeated field that matches the dtype (`float_data`, `int32_data`, …).
    Typed,
    /// External data; `extra` keeps keys other than location/offset/length, in order.
    External { extra: Vec<(String, String)> },
    /// Typed fields written in a non-canonical way (e.g. an int8 stored zero-extended); kept
    /// as they came so that an untouched tensor is written back identically.
    Verbatim(Box<crate::onnx::proto::TensorProto>),
}

/// A constant tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    dtype: DataType,
    dims: Vec<u64>,
    data: TensorData,
    pub doc_string: String,
    pub metadata: Metadata,
    pub(crate) encoding: Encoding,
    /// `TensorProto.segment` (begin, end), kept verbatim.
    pub(crate) segment: Option<(i64, i64)>,
    pub(crate) extras: Extras,
}

impl Tensor {
    /// A tensor from raw little-endian bytes; checks the byte count against dtype and dims.
    pub fn from_bytes(
        name: impl Into<String>,
        dtype: DataType,
        dims: Vec<u64>,
        bytes: Vec<u8>,
    ) -> Result<Tensor, IrError> {
        let name = name.into();
        let expected = expected_bytes(&name, dtype, &dims)?;
        if bytes.len() as u64 != expected {
            return Err(IrError::tensor(
                &name,
                format!(
                    "has {} bytes of data but {} {} elements of shape {:?} need {}",
                    bytes.len(),
                    numel_of(&dims).unwrap_or(0),
                    dtype,
                    dims,
                    expected
                ),
            ));
        }
        Ok(Tensor::with_data(name, dtype, dims, TensorData::Bytes(Arc::new(bytes))))
    }

    /// An f32 tensor.
    pub fn from_f32(name: impl Into<String>, dims: Vec<u64>, values: &[f32]) -> Result<Tensor, IrError> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(name, DataType::Float, dims, bytes)
    }

    /// An i64 tensor.
    pub fn from_i64(name: impl Into<String>, dims: Vec<u64>, values: &[i64]) -> Result<Tensor, IrError> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(name, DataType::Int64, dims, bytes)
    }

    /// A tensor whose bytes are produced by `f` when first read or when the model is saved.
    pub fn lazy(name: impl Into<String>, dtype: DataType, dims: Vec<u64>, f: Arc<LazyFn>) -> Result<Tensor, IrError> {
        let name = name.into();
        expected_bytes(&name, dtype, &dims)?;
        Ok(Tensor::with_data(name, dtype, dims, TensorData::Lazy(f)))
    }

    /// Assembles a tensor from already-checked parts (the importer checks before calling this).
    pub(crate) fn with_data(name: String, dtype: DataType, dims: Vec<u64>, data: TensorData) -> Tensor {
        Tensor {
            name,
            dtype,
            dims,
            data,
            doc_string: String::new(),
            metadata: Metadata::default(),
            encoding: Encoding::Fresh,
            segment: None,
            extras: Extras::default(),
        }
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Number of elements (dims were checked not to overflow when the tensor was made).
    pub fn numel(&self) -> u64 {
        numel_of(&self.dims).unwrap_or(0)
    }

    /// Storage size in bytes (0 for strings, whose size is not fixed).
    pub fn byte_len(&self) -> u64 {
        self.dtype.storage_bytes(self.numel()).unwrap_or(0)
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Whether the bytes live in an external file.
    pub fn is_external(&self) -> bool {
        matches!(self.data, TensorData::External(_))
    }

    /// Replaces the data (checked against dtype and dims); the tensor is now "changed" and is
    /// written as fresh raw bytes.
    pub fn set_bytes(&mut self, bytes: Vec<u8>) -> Result<(), IrError> {
        let expected = expected_bytes(&self.name, self.dtype, &self.dims)?;
        if bytes.len() as u64 != expected {
            return Err(IrError::tensor(
                &self.name,
                format!("new data has {} bytes, expected {expected}", bytes.len()),
            ));
        }
        self.data = TensorData::Bytes(Arc::new(bytes));
        self.encoding = Encoding::Fresh;
        Ok(())
    }

    /// The raw bytes: borrowed from memory or the file map, or computed for lazy tensors.
    /// String tensors have no raw form and return an error.
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>, IrError> {
        match &self.data {
            TensorData::Bytes(b) => Ok(Cow::Borrowed(b.as_slice())),
            TensorData::External(e) => e.bytes().map(Cow::Borrowed),
            TensorData::Lazy(f) => {
                let bytes = f()?;
                let expected = self.byte_len();
                if bytes.len() as u64 != expected {
                    return Err(IrError::tensor(
                        &self.name,
                        format!("lazy data produced {} bytes, expected {expected}", bytes.len()),
                    ));
                }
                Ok(Cow::Owned(bytes))
            }
            TensorData::Strings(_) => Err(IrError::tensor(&self.name, "is a STRING tensor and has no raw bytes")),
        }
    }

    /// The values of an f32 tensor.
    pub fn to_f32(&self) -> Result<Vec<f32>, IrError> {
        self.expect_dtype(DataType::Float)?;
        Ok(self.bytes()?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The values of an integer tensor (int64 or int32), widened to i64.
    pub fn to_i64(&self) -> Result<Vec<i64>, IrError> {
        let bytes = self.bytes()?;
        match self.dtype {
            DataType::Int64 => Ok(bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()),
            DataType::Int32 => {
                Ok(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect())
            }
            other => Err(IrError::tensor(&self.name, format!("is {other}, expected an integer tensor"))),
        }
    }

    /// Values of a float tensor of any float storage type, widened to f32.
    pub fn to_f32_lossy(&self) -> Result<Vec<f32>, IrError> {
        let bytes = self.bytes()?;
        match self.dtype {
            DataType::Float => {
                Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DataType::Float16 => {
                Ok(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            DataType::BFloat16 => {
                Ok(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            DataType::Double => Ok(bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect()),
            other => Err(IrError::tensor(&self.name, format!("is {other}, expected a float tensor"))),
        }
    }

    /// String elements of a STRING tensor.
    pub fn strings(&self) -> Option<&[Vec<u8>]> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            _ => None,
        }
    }

    fn expect_dtype(&self, dtype: DataType) -> Result<(), IrError> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(IrError::tensor(&self.name, format!("is {}, expected {dtype}", self.dtype)))
        }
    }

    /// Whether two tensors hold the same dtype, shape and bytes (used by CSE and tests).
    pub fn same_value(&self, other: &Tensor) -> bool {
        if self.dtype != other.dtype || self.dims != other.dims {
            return false;
        }
        match (&self.data, &other.data) {
            (TensorData::Strings(a), TensorData::Strings(b)) => a == b,
            (TensorData::Strings(_), _) | (_, TensorData::Strings(_)) => false,
            _ => match (self.bytes(), other.bytes()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

/// Product of dims, `None` on overflow.
pub fn numel_of(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Bytes a tensor of this dtype and shape must have, with overflow reported as an error.
pub(crate) fn expected_bytes(name: &str, dtype: DataType, dims: &[u64]) -> Result<u64, IrError> {
    let numel = numel_of(dims)
        .ok_or_else(|| IrError::tensor(name, format!("shape {dims:?} has more elements than fit in 64 bits")))?;
    if dtype == DataType::String {
        return Ok(0);
    }
    dtype
        .storage_bytes(numel)
        .ok_or_else(|| IrError::tensor(name, format!("shape {dims:?} of {dtype} overflows 64-bit byte counts")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_checked() {
        let err = Tensor::from_bytes("w", DataType::Float, vec![2, 2], vec![0; 15]).unwrap_err();
        assert!(err.to_string().contains("15 bytes"), "{err}");
        let t = Tensor::from_f32("w", vec![2], &[1.0, -2.5]).unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1.0, -2.5]);
        assert_eq!(t.byte_len(), 8);
    }

    #[test]
    fn overflowing_dims_are_errors() {
        let err = Tensor::from_bytes("w", DataType::Float, vec![u64::MAX, 2], vec![]).unwrap_err();
        assert!(err.to_string().contains("64 bits"), "{err}");
    }
}
