//! A small dense array for constant folding: shape plus typed elements.
//!
//! f32, int64, int32 and bool are typed (arithmetic works on them); every other byte-aligned
//! numeric type is carried as raw little-endian elements, enough for the data-movement ops
//! (reshape, transpose, slice, gather, concat, where). Index mappings are computed as flat
//! source positions, so one `take` implements every movement op.

use adaptc_ir::{DataType, Tensor};

use super::Skip;

/// Largest input the folder decodes, in bytes; larger constants are left alone.
pub(crate) const MAX_INPUT_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    /// Any other byte-aligned type: `bytes.len() == numel * elem`.
    Raw {
        dtype: DataType,
        elem: usize,
        bytes: Vec<u8>,
    },
}

/// Applies `$body` to the typed vector of any variant, rebuilding the same variant.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr, raw($dt:ident, $el:ident, $b:ident) => $raw:expr) => {
        match $data {
            Data::F32($v) => Data::F32($body),
            Data::I64($v) => Data::I64($body),
            Data::I32($v) => Data::I32($body),
            Data::Bool($v) => Data::Bool($body),
            Data::Raw { dtype: $dt, elem: $el, bytes: $b } => $raw,
        }
    };
}

impl Data {
    pub(crate) fn dtype(&self) -> DataType {
        match self {
            Data::F32(_) => DataType::Float,
            Data::I64(_) => DataType::Int64,
            Data::I32(_) => DataType::Int32,
            Data::Bool(_) => DataType::Bool,
            Data::Raw { dtype, .. } => *dtype,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::Bool(v) => v.len(),
            Data::Raw { elem, bytes, .. } => bytes.len() / (*elem).max(1),
        }
    }

    /// Elements at the given flat positions (all in range: callers compute them from shapes).
    pub(crate) fn take(&self, idx: &[usize]) -> Data {
        map_data!(self, v => idx.iter().map(|&i| v[i]).collect(), raw(dtype, elem, bytes) => {
            let mut out = Vec::with_capacity(idx.len() * elem);
            for &i in idx {
                out.extend_from_slice(&bytes[i * elem..(i + 1) * elem]);
            }
            Data::Raw { dtype: *dtype, elem: *elem, bytes: out }
        })
    }

    /// All elements of `parts` one after the other; `None` when their types differ.
    pub(crate) fn concat(parts: &[&Data]) -> Option<Data> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.dtype() != first.dtype()) {
            return None;
        }
        let mut out = (*first).clone();
        for p in &parts[1..] {
            match (&mut out, p) {
                (Data::F32(a), Data::F32(b)) => a.extend_from_slice(b),
                (Data::I64(a), Data::I64(b)) => a.extend_from_slice(b),
                (Data::I32(a), Data::I32(b)) => a.extend_from_slice(b),
                (Data::Bool(a), Data::Bool(b)) => a.extend_from_slice(b),
                (Data::Raw { bytes: a, .. }, Data::Raw { bytes: b, .. }) => a.extend_from_slice(b),
                _ => return None,
            }
        }
        Some(out)
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            Data::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// A dense array.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Arr {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Arr {
    pub(crate) fn new(dims: Vec<usize>, data: Data) -> Arr {
        Arr { dims, data }
    }

    /// Decodes a constant tensor (no larger than [`MAX_INPUT_BYTES`]).
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Arr, Skip> {
        let dtype = t.dtype();
        let bits = dtype.bit_width().ok_or(Skip::Unsupported)?;
        if bits % 8 != 0 {
            return Err(Skip::Unsupported);
        }
        if t.byte_len() > MAX_INPUT_BYTES {
            return Err(Skip::TooLarge);
        }
        let dims =
            t.dims().iter().map(|&d| usize::try_from(d).map_err(|_| Skip::TooLarge)).collect::<Result<_, _>>()?;
        let bytes = t.bytes().map_err(|e| Skip::Invalid(e.to_string()))?;
        let data = match dtype {
            DataType::Float => {
                Data::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DataType::Int64 => Data::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            DataType::Int32 => {
                Data::I32(bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DataType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
            _ => Data::Raw { dtype, elem: (bits / 8) as usize, bytes: bytes.into_owned() },
        };
        Ok(Arr { dims, data })
    }

    /// Encodes the array as a tensor named `name`.
    pub(crate) fn into_tensor(self, name: &str) -> Result<Tensor, Skip> {
        let dims = self.dims.iter().map(|&d| d as u64).collect();
        Tensor::from_bytes(name, self.data.dtype(), dims, self.data.to_bytes())
            .map_err(|e| Skip::Invalid(e.to_string()))
    }

    pub(crate) fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    pub(crate) fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The elements as i64 (int64 and int32 only).
    pub(crate) fn ints(&self) -> Option<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Some(v.clone()),
            Data::I32(v) => Some(v.iter().map(|&x| i64::from(x)).collect()),
            _ => None,
        }
    }
}

/// Elements of a shape, `None` on overflow.
pub(crate) fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Row-major strides of a shape.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Flat source positions of a strided view: output element at multi-index `i` reads
/// `base + Σ i[d] * strides[d]`. The caller guarantees every position is in range.
pub(crate) fn strided(out_dims: &[usize], view_strides: &[isize], base: isize) -> Vec<usize> {
    let total: usize = out_dims.iter().product();
    let mut res = Vec::with_capacity(total);
    if total == 0 {
        return res;
    }
    let rank = out_dims.len();
    let mut idx = vec![0usize; rank];
    let mut flat = base;
    for _ in 0..total {
        res.push(flat as usize);
        for d in (0..rank).rev() {
            idx[d] += 1;
            flat += view_strides[d];
            if idx[d] < out_dims[d] {
                break;
            }
            flat -= view_strides[d] * idx[d] as isize;
            idx[d] = 0;
        }
    }
    res
}

/// The multidirectional (numpy) broadcast of `shapes`.
pub(crate) fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>, Skip> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Skip::Invalid(format!("shapes {shapes:?} do not broadcast")));
            }
        }
    }
    Ok(out)
}

/// For each element of the broadcast shape `out`, the flat position in an input of shape
/// `dims` (which broadcasts to `out`).
pub(crate) fn broadcast_index(out: &[usize], dims: &[usize]) -> Vec<usize> {
    let off = out.len() - dims.len();
    let src = strides(dims);
    let mut view = vec![0isize; out.len()];
    for (i, &d) in dims.iter().enumerate() {
        view[off + i] = if d == 1 { 0 } else { src[i] as isize };
    }
    strided(out, &view, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views() {
        // Transpose of a 2x3.
        assert_eq!(strided(&[3, 2], &[1, 3], 0), vec![0, 3, 1, 4, 2, 5]);
        // Reverse a 4-vector.
        assert_eq!(strided(&[4], &[-1], 3), vec![3, 2, 1, 0]);
        assert_eq!(strided(&[0, 5], &[5, 1], 0), Vec::<usize>::new());
        assert_eq!(strided(&[], &[], 0), vec![0]);
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shape(&[&[2, 1, 3], &[4, 1]]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shape(&[&[], &[3]]).unwrap(), vec![3]);
        assert_eq!(broadcast_shape(&[&[0], &[1]]).unwrap(), vec![0]);
        assert!(broadcast_shape(&[&[2], &[3]]).is_err());
        assert_eq!(broadcast_index(&[2, 3], &[3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 3], &[2, 1]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
    }
}
