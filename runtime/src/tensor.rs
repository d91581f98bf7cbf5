//! Host tensors: a shape and a typed vector, the values kernels read and write on the CPU.
//!
//! Storage is an enum over typed `Vec`s so that one generic kernel serves every element type
//! (see [`with_storage!`](crate::with_storage)); the IR's byte-level [`adaptc_ir::Tensor`]
//! converts to and from it at the boundary.

use std::sync::Arc;

use half::{bf16, f16};

use adaptc_ir::DataType;

use crate::error::{Result, RuntimeError};

/// Typed element storage, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
}

/// Runs `$body` with `$v` bound to the typed vector of any storage variant.
#[macro_export]
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
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
            $crate::tensor::Storage::Str($v) => $body,
        }
    };
}

/// An element type that storage can hold.
pub trait Elem: Clone + Send + Sync + 'static {
    const DTYPE: DataType;
    fn wrap(v: Vec<Self>) -> Storage;
    fn slice(s: &Storage) -> Option<&[Self]>;
    fn into_vec(s: Storage) -> Option<Vec<Self>>;
}

macro_rules! elem {
    ($t:ty, $variant:ident, $dt:ident) => {
        impl Elem for $t {
            const DTYPE: DataType = DataType::$dt;
            fn wrap(v: Vec<Self>) -> Storage {
                Storage::$variant(v)
            }
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_vec(s: Storage) -> Option<Vec<Self>> {
                match s {
                    Storage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
elem!(f32, F32, Float);
elem!(f64, F64, Double);
elem!(f16, F16, Float16);
elem!(bf16, BF16, BFloat16);
elem!(i8, I8, Int8);
elem!(i16, I16, Int16);
elem!(i32, I32, Int32);
elem!(i64, I64, Int64);
elem!(u8, U8, Uint8);
elem!(u16, U16, Uint16);
elem!(u32, U32, Uint32);
elem!(u64, U64, Uint64);
elem!(bool, Bool, Bool);
elem!(String, Str, String);

impl Storage {
    pub fn len(&self) -> usize {
        with_storage!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DataType {
        fn dt<T: Elem>(_: &[T]) -> DataType {
            T::DTYPE
        }
        with_storage!(self, v => dt(v))
    }

    /// `n` default values (zeros, `false`, empty strings) of `dtype`.
    pub fn zeros(dtype: DataType, n: usize) -> Option<Storage> {
        Some(match dtype {
            DataType::Float => Storage::F32(vec![0.0; n]),
            DataType::Double => Storage::F64(vec![0.0; n]),
            DataType::Float16 => Storage::F16(vec![f16::ZERO; n]),
            DataType::BFloat16 => Storage::BF16(vec![bf16::ZERO; n]),
            DataType::Int8 => Storage::I8(vec![0; n]),
            DataType::Int16 => Storage::I16(vec![0; n]),
            DataType::Int32 => Storage::I32(vec![0; n]),
            DataType::Int64 => Storage::I64(vec![0; n]),
            DataType::Uint8 => Storage::U8(vec![0; n]),
            DataType::Uint16 => Storage::U16(vec![0; n]),
            DataType::Uint32 => Storage::U32(vec![0; n]),
            DataType::Uint64 => Storage::U64(vec![0; n]),
            DataType::Bool => Storage::Bool(vec![false; n]),
            DataType::String => Storage::Str(vec![String::new(); n]),
            _ => return None,
        })
    }

    /// The elements at `idx`, in that order (the workhorse of the data-movement ops).
    /// Callers guarantee every index is in range.
    pub fn take(&self, idx: &[usize]) -> Storage {
        fn go<T: Elem>(v: &[T], idx: &[usize]) -> Storage {
            T::wrap(idx.iter().map(|&i| v[i].clone()).collect())
        }
        with_storage!(self, v => go(v, idx))
    }

    /// The elements read through `strides` from `base`, laid out row-major as `shape`
    /// (transposes, broadcasts): see [`crate::ops::strided::gather`].
    pub fn gather_strided(&self, shape: &[usize], strides: &[usize], base: usize) -> Storage {
        fn go<T: Elem>(v: &[T], shape: &[usize], st: &[usize], base: usize) -> Storage {
            T::wrap(crate::ops::strided::gather(v, shape, st, base))
        }
        with_storage!(self, v => go(v, shape, strides, base))
    }

    /// Bytes one element occupies in memory (strings count their pointer).
    pub fn elem_bytes(&self) -> usize {
        fn size<T>(_: &[T]) -> usize {
            std::mem::size_of::<T>()
        }
        with_storage!(self, v => size(v))
    }
}

/// A host tensor. The elements are shared: cloning a tensor, or reshaping one (Reshape,
/// Flatten, Squeeze, Unsqueeze, Identity), copies no data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; the element count must match.
    pub fn new(shape: Vec<usize>, data: Storage) -> Result<Tensor> {
        let numel = numel(&shape).ok_or_else(|| RuntimeError::Tensor {
            name: String::new(),
            reason: format!("shape {shape:?} overflows"),
        })?;
        if numel != data.len() {
            return Err(RuntimeError::Tensor {
                name: String::new(),
                reason: format!("shape {shape:?} needs {numel} elements but {} were given", data.len()),
            });
        }
        Ok(Tensor { shape, data: Arc::new(data) })
    }

    /// A tensor from a typed vector.
    pub fn from_vec<T: Elem>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor> {
        Tensor::new(shape, T::wrap(v))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Elem>(v: T) -> Tensor {
        Tensor { shape: vec![], data: Arc::new(T::wrap(vec![v])) }
    }

    /// Builds a tensor the caller knows is consistent (kernels computing their own outputs).
    pub(crate) fn from_parts(shape: Vec<usize>, data: Storage) -> Tensor {
        debug_assert_eq!(numel(&shape), Some(data.len()), "shape {shape:?}");
        Tensor { shape, data: Arc::new(data) }
    }

    /// The same elements, shared, under another shape the caller knows has their count.
    pub(crate) fn with_shape(&self, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(numel(&shape), Some(self.data.len()), "shape {shape:?}");
        Tensor { shape, data: Arc::clone(&self.data) }
    }

    /// The address of the shared elements: equal for tensors that alias.
    pub(crate) fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.data) as usize
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    pub fn data(&self) -> &Storage {
        &self.data
    }

    /// The elements, moved out when this tensor is their only owner, else copied.
    pub fn into_data(self) -> Storage {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The values, when the element type is `T`.
    pub fn as_slice<T: Elem>(&self) -> Option<&[T]> {
        T::slice(&self.data)
    }

    /// The same elements under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor> {
        match numel(&shape) {
            Some(n) if n == self.data.len() => Ok(Tensor { shape, data: self.data }),
            _ => Err(RuntimeError::Tensor {
                name: String::new(),
                reason: format!("shape {shape:?} needs another element count than the {} given", self.data.len()),
            }),
        }
    }

    /// Bytes the elements occupy in memory.
    pub fn byte_size(&self) -> usize {
        self.numel() * self.data.elem_bytes()
    }

    /// A tensor from the IR's byte-level tensor (initializers, attribute values, `.pb` files).
    pub fn from_ir(t: &adaptc_ir::Tensor) -> Result<Tensor> {
        let shape: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
        if t.dtype() == DataType::String {
            let strings = t.strings().unwrap_or(&[]);
            let v = strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
            return Tensor::new(shape, Storage::Str(v)).map_err(|e| named(e, &t.name));
        }
        let bytes = t.bytes()?;
        let data = storage_from_le_bytes(t.dtype(), &bytes).ok_or_else(|| RuntimeError::Tensor {
            name: t.name.clone(),
            reason: format!("element type {} is not supported by the runtime", t.dtype()),
        })?;
        Tensor::new(shape, data).map_err(|e| named(e, &t.name))
    }

    /// The IR tensor named `name` holding these values.
    pub fn to_ir(&self, name: &str) -> Result<adaptc_ir::Tensor> {
        let dims = self.shape.iter().map(|&d| d as u64).collect();
        if let Storage::Str(_) = *self.data {
            return Err(RuntimeError::Tensor {
                name: name.to_string(),
                reason: "STRING tensors cannot be converted to raw bytes".into(),
            });
        }
        Ok(adaptc_ir::Tensor::from_bytes(name, self.dtype(), dims, self.to_le_bytes())?)
    }

    /// Little-endian raw bytes (ONNX `raw_data` layout, also `.npy`'s); strings give nothing.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self.data.as_ref() {
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U8(v) => v.clone(),
            Storage::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            Storage::Str(_) => Vec::new(),
        }
    }
}

fn named(e: RuntimeError, name: &str) -> RuntimeError {
    match e {
        RuntimeError::Tensor { reason, .. } => RuntimeError::Tensor { name: name.to_string(), reason },
        other => other,
    }
}

/// Product of dims, `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Typed storage from little-endian bytes; `None` for element types the runtime does not hold
/// or a byte count that is not a whole number of elements.
pub fn storage_from_le_bytes(dtype: DataType, b: &[u8]) -> Option<Storage> {
    macro_rules! chunks {
        ($t:ty, $n:expr) => {{
            if b.len() % $n != 0 {
                return None;
            }
            b.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n]))).collect()
        }};
    }
    Some(match dtype {
        DataType::Float => Storage::F32(chunks!(f32, 4)),
        DataType::Double => Storage::F64(chunks!(f64, 8)),
        DataType::Float16 => Storage::F16(chunks!(f16, 2)),
        DataType::BFloat16 => Storage::BF16(chunks!(bf16, 2)),
        DataType::Int8 => Storage::I8(b.iter().map(|&x| x as i8).collect()),
        DataType::Int16 => Storage::I16(chunks!(i16, 2)),
        DataType::Int32 => Storage::I32(chunks!(i32, 4)),
        DataType::Int64 => Storage::I64(chunks!(i64, 8)),
        DataType::Uint8 => Storage::U8(b.to_vec()),
        DataType::Uint16 => Storage::U16(chunks!(u16, 2)),
        DataType::Uint32 => Storage::U32(chunks!(u32, 4)),
        DataType::Uint64 => Storage::U64(chunks!(u64, 8)),
        DataType::Bool => Storage::Bool(b.iter().map(|&x| x != 0).collect()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ir_round_trip() {
        let t = Tensor::from_vec(vec![2, 2], vec![1.0f32, -2.0, 3.5, 0.0]).unwrap();
        let ir = t.to_ir("w").unwrap();
        assert_eq!(Tensor::from_ir(&ir).unwrap(), t);
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        assert!(Tensor::from_vec(vec![3], vec![1i64, 2]).is_err());
        assert!(Tensor::from_vec(vec![usize::MAX, 3], Vec::<i64>::new()).is_err());
    }
}
