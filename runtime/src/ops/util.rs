//! Index arithmetic shared by kernels: strides, numpy broadcasting, axis normalisation and
//! reading small integer tensors (shapes, axes, pads).

use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The numpy broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> KResult<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                kbail!("shapes {:?} cannot be broadcast together", shapes);
            }
        }
    }
    Ok(out)
}

/// Strides of `in_shape` seen from the broadcast `out_shape` (0 along broadcast dims).
pub fn broadcast_strides(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let st = strides(in_shape);
    let off = out_shape.len() - in_shape.len();
    (0..out_shape.len()).map(|i| if i < off || in_shape[i - off] == 1 { 0 } else { st[i - off] }).collect()
}

/// For every element of `out_shape`, the index of the input element it reads when `in_shape`
/// is broadcast to it.
pub fn broadcast_index(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let st = broadcast_strides(in_shape, out_shape);
    strided_index(out_shape, &st, 0)
}

/// Offsets `base + Σ i_k · stride_k` over every index of `shape`, row-major.
pub fn strided_index(shape: &[usize], st: &[usize], base: usize) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = shape.len();
    if rank == 0 {
        out.push(base);
        return out;
    }
    let mut idx = vec![0usize; rank];
    let mut off = base;
    let (last, last_st) = (shape[rank - 1], st[rank - 1]);
    loop {
        for j in 0..last {
            out.push(off + j * last_st);
        }
        // Advance the odometer over all but the last dim.
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            off += st[k];
            if idx[k] < shape[k] {
                break;
            }
            off -= st[k] * idx[k];
            idx[k] = 0;
        }
    }
}

/// Elementwise `f(a, b)` with numpy broadcasting, into `out_shape`.
pub fn zip_broadcast<A: Copy + Sync, B: Copy + Sync, O: Send>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    out_shape: &[usize],
    f: impl Fn(A, B) -> O + Sync + Send,
) -> Vec<O> {
    super::strided::map2(a, ash, b, bsh, out_shape, f)
}

/// Element count from which elementwise kernels split work across threads.
pub const PAR_THRESHOLD: usize = 1 << 16;

/// A new vector of `len` elements written in chunks of `chunk` elements, in parallel when
/// `len ≥ min_par`: `fill(start, out)` writes `out`, the elements `start..start + out.len()`.
/// Kernels that compute every output element use it to skip zero-filling memory they
/// overwrite anyway.
///
/// # Safety
/// `fill` must write every element of each slice it is given.
pub(crate) unsafe fn new_filled_chunks<T: Send>(
    len: usize,
    chunk: usize,
    min_par: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if len >= min_par && chunk > 0 {
        spare.par_chunks_mut(chunk).enumerate().for_each(|(k, o)| fill(k * chunk, o));
    } else {
        fill(0, spare);
    }
    // SAFETY: the chunks cover all `len` elements and the caller guarantees `fill` wrote each.
    unsafe { out.set_len(len) };
    out
}

/// The float type a `Cast`-style `to` code names (what the ops that write a chosen output type
/// accept), refusing other codes.
pub fn float_type(code: i64) -> KResult<adaptc_ir::DataType> {
    use adaptc_ir::DataType;
    match i32::try_from(code).ok().and_then(DataType::from_code) {
        Some(d @ (DataType::Float | DataType::Double | DataType::Float16 | DataType::BFloat16)) => Ok(d),
        _ => kbail!("attribute to holds {code}, not the code of a float type"),
    }
}

/// Normalises a possibly negative axis against `rank`.
pub fn axis(a: i64, rank: usize) -> KResult<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        kbail!("axis {a} is out of range for rank {rank}");
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// Normalises a list of axes, refusing duplicates.
pub fn axes(list: &[i64], rank: usize) -> KResult<Vec<usize>> {
    let mut out = Vec::with_capacity(list.len());
    for &a in list {
        let a = axis(a, rank)?;
        if out.contains(&a) {
            kbail!("axis {a} is repeated in {list:?}");
        }
        out.push(a);
    }
    Ok(out)
}

/// The values of an integer tensor (shapes, axes, indices) as i64.
pub fn ints(t: &Tensor) -> KResult<Vec<i64>> {
    Ok(match t.data() {
        Storage::I64(v) => v.clone(),
        Storage::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Storage::U64(v) => v.iter().map(|&x| x as i64).collect(),
        other => kbail!("expected an integer tensor, got {}", other.dtype()),
    })
}

/// The values of a numeric tensor as f64 (scalars such as Clip bounds, Pad values).
pub fn floats(t: &Tensor) -> KResult<Vec<f64>> {
    use crate::ops::num::Num;
    fn go<T: Num>(v: &[T]) -> Vec<f64> {
        v.iter().map(|&x| x.to_f64()).collect()
    }
    Ok(crate::with_num!(t.data(), v => go(v), _ => kbail!("expected a numeric tensor, got strings")))
}

/// A shape from i64 values, refusing negatives.
pub fn to_shape(dims: &[i64]) -> KResult<Vec<usize>> {
    dims.iter()
        .map(|&d| {
            if d < 0 {
                Err(crate::error::KernelError::Invalid(format!("negative dimension in {dims:?}")))
            } else {
                Ok(d as usize)
            }
        })
        .collect()
}

/// Checked element count for an output shape (refuses absurd sizes instead of aborting).
pub fn checked_numel(shape: &[usize]) -> KResult<usize> {
    match crate::tensor::numel(shape) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => kbail!("output shape {shape:?} is too large"),
    }
}

/// Largest tensor a kernel will allocate (2^34 elements); beyond this is a malformed model.
pub const MAX_ELEMENTS: usize = 1 << 34;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[&[2, 1, 3], &[4, 1]]).unwrap(), vec![2, 4, 3]);
        assert!(broadcast_shapes(&[&[2, 3], &[4]]).is_err());
        assert_eq!(broadcast_index(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        let out = zip_broadcast(&[1, 2], &[2, 1], &[10, 20, 30], &[3], &[2, 3], |a, b| a + b);
        assert_eq!(out, vec![11, 21, 31, 12, 22, 32]);
        assert_eq!(broadcast_index(&[0], &[2, 0]), Vec::<usize>::new());
    }

    #[test]
    fn negative_axes() {
        assert_eq!(axis(-1, 3).unwrap(), 2);
        assert!(axis(3, 3).is_err());
        assert!(axis(-4, 3).is_err());
        assert!(axes(&[0, -3], 3).is_err());
    }
}
