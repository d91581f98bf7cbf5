//! Shape and data-movement ops: Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Expand, Shape,
//! Size, Concat, Split, Tile, ConstantOfShape, Range, EyeLike, Trilu, Depth/SpaceToDepth.
//!
//! Movement is expressed as an index map (output element ← input element) applied with
//! [`Storage::take`], so one implementation serves every element type.

use super::num::Num;
use super::util::{
    axes, axis, broadcast_shapes, broadcast_strides, checked_numel, ints, strided_index, strides, to_shape,
};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

pub fn reshape(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let spec = ints(i.req(1)?)?;
    let allowzero = c.int("allowzero", 0) != 0;
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (k, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(k);
                shape.push(1);
            }
            -1 => kbail!("shape {spec:?} has more than one -1"),
            0 if !allowzero => match x.shape().get(k) {
                Some(&d) => shape.push(d),
                None => kbail!("shape {spec:?} copies dimension {k} which the input {:?} lacks", x.shape()),
            },
            d if d < 0 => kbail!("shape {spec:?} has a negative dimension"),
            d => shape.push(d as usize),
        }
    }
    if let Some(k) = infer {
        let known: usize = shape.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, &d)| d).product();
        if known == 0 || x.numel() % known != 0 {
            kbail!("cannot reshape {:?} into {spec:?}", x.shape());
        }
        shape[k] = x.numel() / known;
    }
    if crate::tensor::numel(&shape) != Some(x.numel()) {
        kbail!("cannot reshape {:?} ({} elements) into {shape:?}", x.shape(), x.numel());
    }
    Ok(vec![x.with_shape(shape)])
}

pub fn flatten(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let r = x.rank() as i64;
    let a = c.int("axis", 1);
    if a < -r || a > r {
        kbail!("axis {a} is out of range for rank {r}");
    }
    let a = if a < 0 { a + r } else { a } as usize;
    let outer: usize = x.shape()[..a].iter().product();
    let inner: usize = x.shape()[a..].iter().product();
    Ok(vec![x.with_shape(vec![outer, inner])])
}

/// Axes from the `axes` input (opset ≥ 13) or attribute (older).
fn axes_arg(c: &OpCtx, i: &Inputs, since: i64, slot: usize) -> KResult<Option<Vec<i64>>> {
    if c.opset >= since {
        i.opt(slot).map(ints).transpose()
    } else {
        Ok(c.ints("axes"))
    }
}

pub fn squeeze(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let shape = match axes_arg(c, i, 13, 1)? {
        Some(list) => {
            let ax = axes(&list, x.rank())?;
            for &a in &ax {
                if x.shape()[a] != 1 {
                    kbail!("cannot squeeze axis {a} of size {} (shape {:?})", x.shape()[a], x.shape());
                }
            }
            x.shape().iter().enumerate().filter(|(k, _)| !ax.contains(k)).map(|(_, &d)| d).collect()
        }
        None => x.shape().iter().copied().filter(|&d| d != 1).collect(),
    };
    Ok(vec![x.with_shape(shape)])
}

pub fn unsqueeze(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let Some(list) = axes_arg(c, i, 13, 1)? else { kbail!("axes are required") };
    let rank = x.rank() + list.len();
    let ax = axes(&list, rank)?;
    let mut shape = Vec::with_capacity(rank);
    let mut src = x.shape().iter();
    for k in 0..rank {
        if ax.contains(&k) {
            shape.push(1);
        } else {
            shape.push(src.next().copied().unwrap_or(1));
        }
    }
    Ok(vec![x.with_shape(shape)])
}

/// The index map of a transpose by `perm`.
pub fn transpose_index(shape: &[usize], perm: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    strided_index(&out_shape, &out_st, 0)
}

/// Transposes `x` by `perm` (already validated).
pub fn permute(x: &Tensor, perm: &[usize]) -> Tensor {
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    if perm.iter().enumerate().all(|(k, &p)| k == p) {
        return x.clone();
    }
    let st = strides(x.shape());
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    Tensor::from_parts(out_shape.clone(), x.data().gather_strided(&out_shape, &out_st, 0))
}

pub fn transpose(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let perm = match c.ints("perm") {
        Some(p) => {
            let p = axes(&p, x.rank())?;
            if p.len() != x.rank() {
                kbail!("perm {p:?} does not match rank {}", x.rank());
            }
            p
        }
        None => (0..x.rank()).rev().collect(),
    };
    Ok(vec![permute(x, &perm)])
}

pub fn expand(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let target = to_shape(&ints(i.req(1)?)?)?;
    let out = broadcast_shapes(&[x.shape(), &target])?;
    checked_numel(&out)?;
    let st = broadcast_strides(x.shape(), &out);
    Ok(vec![Tensor::from_parts(out.clone(), x.data().gather_strided(&out, &st, 0))])
}

pub fn shape(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let start = clamp(c.int("start", 0));
    let end = clamp(c.int("end", r));
    let dims: Vec<i64> = x.shape()[start..end.max(start)].iter().map(|&d| d as i64).collect();
    Ok(vec![Tensor::from_parts(vec![dims.len()], Storage::I64(dims))])
}

pub fn size(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![Tensor::scalar(i.req(0)?.numel() as i64)])
}

/// Concatenates tensors of one type along `axis`.
pub fn concat_tensors(parts: &[&Tensor], ax: usize) -> KResult<Tensor> {
    let Some(first) = parts.first() else { kbail!("needs at least one input") };
    let rank = first.rank();
    let mut out = first.shape().to_vec();
    out[ax] = 0;
    for p in parts {
        if p.rank() != rank || p.dtype() != first.dtype() {
            kbail!(
                "inputs differ in rank or type: {:?} {} vs {:?} {}",
                p.shape(),
                p.dtype(),
                first.shape(),
                first.dtype()
            );
        }
        for k in 0..rank {
            if k != ax && p.shape()[k] != first.shape()[k] {
                kbail!("input shapes {:?} and {:?} differ outside axis {ax}", p.shape(), first.shape());
            }
        }
        out[ax] += p.shape()[ax];
    }
    let outer: usize = out[..ax].iter().product();
    let inner: usize = out[ax + 1..].iter().product();
    fn go<T: crate::tensor::Elem>(parts: &[&Tensor], outer: usize, inner: usize, ax: usize, n: usize) -> Storage {
        let mut v: Vec<T> = Vec::with_capacity(n);
        let slices: Vec<&[T]> = parts.iter().map(|p| p.as_slice::<T>().unwrap_or(&[])).collect();
        for o in 0..outer {
            for (p, s) in parts.iter().zip(&slices) {
                let chunk = p.shape()[ax] * inner;
                v.extend_from_slice(&s[o * chunk..(o + 1) * chunk]);
            }
        }
        T::wrap(v)
    }
    let n = checked_numel(&out)?;
    let data = go_typed(first.data(), parts, outer, inner, ax, n);
    fn go_typed(s: &Storage, parts: &[&Tensor], outer: usize, inner: usize, ax: usize, n: usize) -> Storage {
        match s {
            Storage::F32(_) => go::<f32>(parts, outer, inner, ax, n),
            Storage::F64(_) => go::<f64>(parts, outer, inner, ax, n),
            Storage::F16(_) => go::<half::f16>(parts, outer, inner, ax, n),
            Storage::BF16(_) => go::<half::bf16>(parts, outer, inner, ax, n),
            Storage::I8(_) => go::<i8>(parts, outer, inner, ax, n),
            Storage::I16(_) => go::<i16>(parts, outer, inner, ax, n),
            Storage::I32(_) => go::<i32>(parts, outer, inner, ax, n),
            Storage::I64(_) => go::<i64>(parts, outer, inner, ax, n),
            Storage::U8(_) => go::<u8>(parts, outer, inner, ax, n),
            Storage::U16(_) => go::<u16>(parts, outer, inner, ax, n),
            Storage::U32(_) => go::<u32>(parts, outer, inner, ax, n),
            Storage::U64(_) => go::<u64>(parts, outer, inner, ax, n),
            Storage::Bool(_) => go::<bool>(parts, outer, inner, ax, n),
            Storage::Str(_) => go::<String>(parts, outer, inner, ax, n),
        }
    }
    Ok(Tensor::from_parts(out, data))
}

pub fn concat(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let parts = i.present();
    let Some(first) = parts.first() else { kbail!("needs at least one input") };
    let ax = axis(c.int("axis", 0), first.rank())?;
    Ok(vec![concat_tensors(&parts, ax)?])
}

/// Slices `x` along `ax` into pieces of the given sizes.
pub fn split_sizes(x: &Tensor, ax: usize, sizes: &[usize]) -> Vec<Tensor> {
    let st = strides(x.shape());
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        let mut shape = x.shape().to_vec();
        shape[ax] = s;
        let idx = strided_index(&shape, &st, start * st[ax]);
        out.push(Tensor::from_parts(shape, x.data().take(&idx)));
        start += s;
    }
    out
}

pub fn split(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let ax = axis(c.int("axis", 0), x.rank())?;
    let len = x.shape()[ax];
    let explicit = if c.opset >= 13 { i.opt(1).map(ints).transpose()? } else { c.ints("split") };
    let n_out = c.node.outputs().len();
    let sizes: Vec<usize> = match explicit {
        Some(s) => {
            let s = to_shape(&s)?;
            if s.iter().sum::<usize>() != len {
                kbail!("split sizes {s:?} do not add up to {len}");
            }
            s
        }
        None => {
            let n = if c.opset >= 18 && c.has("num_outputs") { c.int("num_outputs", 1) as usize } else { n_out };
            if n == 0 {
                kbail!("split into zero outputs");
            }
            let chunk = len.div_ceil(n);
            if c.opset < 18 && len % n != 0 {
                kbail!("axis of size {len} does not split evenly into {n}");
            }
            let mut v = vec![chunk; n];
            let total = chunk * n;
            if total > len {
                v[n - 1] = chunk - (total - len).min(chunk);
            }
            if v.iter().sum::<usize>() != len {
                kbail!("axis of size {len} cannot be split into {n} pieces");
            }
            v
        }
    };
    Ok(split_sizes(x, ax, &sizes))
}

pub fn tile(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let reps = ints(i.req(1)?)?;
    if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
        kbail!("repeats {reps:?} do not fit rank {}", x.rank());
    }
    let out: Vec<usize> = x.shape().iter().zip(&reps).map(|(&d, &r)| d * r as usize).collect();
    let n = checked_numel(&out)?;
    let st = strides(x.shape());
    let ost = strides(&out);
    let idx: Vec<usize> =
        (0..n).map(|k| (0..out.len()).map(|d| ((k / ost[d]) % out[d] % x.shape()[d].max(1)) * st[d]).sum()).collect();
    Ok(vec![Tensor::from_parts(out, x.data().take(&idx))])
}

pub fn constant_of_shape(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let shape = to_shape(&ints(i.req(0)?)?)?;
    let n = checked_numel(&shape)?;
    let value = match c.node.attr("value").and_then(|a| a.as_tensor()) {
        Some(t) => Tensor::from_ir(t).map_err(|e| crate::error::KernelError::Invalid(e.to_string()))?,
        None => Tensor::scalar(0.0f32),
    };
    if value.numel() != 1 {
        kbail!("value must hold one element");
    }
    Ok(vec![Tensor::from_parts(shape, value.data().take(&vec![0; n]))])
}

pub fn range(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (s, l, d) = (i.req(0)?, i.req(1)?, i.req(2)?);
    fn go<T: Num>(s: &Tensor, l: &Tensor, d: &Tensor) -> KResult<Storage> {
        let get = |t: &Tensor| t.as_slice::<T>().and_then(|v| v.first().copied());
        let (Some(s), Some(l), Some(d)) = (get(s), get(l), get(d)) else {
            kbail!("start, limit and delta must be scalars of one type")
        };
        let (sf, lf, df) = (s.to_f64(), l.to_f64(), d.to_f64());
        if df == 0.0 {
            kbail!("delta is zero");
        }
        let n = ((lf - sf) / df).ceil().max(0.0);
        if n > super::util::MAX_ELEMENTS as f64 {
            kbail!("range of {n} elements is too large");
        }
        let n = n as usize;
        let mut v = Vec::with_capacity(n);
        let mut x = s;
        for _ in 0..n {
            v.push(x);
            x = x.add(d);
        }
        Ok(T::wrap(v))
    }
    let data = range_typed(s, l, d)?;
    fn range_typed(s: &Tensor, l: &Tensor, d: &Tensor) -> KResult<Storage> {
        match s.data() {
            Storage::F32(_) => go::<f32>(s, l, d),
            Storage::F64(_) => go::<f64>(s, l, d),
            Storage::F16(_) => go::<half::f16>(s, l, d),
            Storage::BF16(_) => go::<half::bf16>(s, l, d),
            Storage::I16(_) => go::<i16>(s, l, d),
            Storage::I32(_) => go::<i32>(s, l, d),
            Storage::I64(_) => go::<i64>(s, l, d),
            other => kbail!("Range does not take {}", other.dtype()),
        }
    }
    Ok(vec![Tensor::from_parts(vec![data.len()], data)])
}

pub fn eye_like(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    if x.rank() != 2 {
        kbail!("input must be 2-D, got {:?}", x.shape());
    }
    let dtype = match c.node.attr("dtype").and_then(|a| a.as_int()) {
        Some(code) => match i32::try_from(code).ok().and_then(adaptc_ir::DataType::from_code) {
            Some(d) => d,
            None => kbail!("dtype {code} is unknown"),
        },
        None => x.dtype(),
    };
    let (r, cols) = (x.shape()[0], x.shape()[1]);
    let k = c.int("k", 0);
    let ones: Vec<f64> =
        (0..r * cols).map(|p| if (p % cols) as i64 - (p / cols) as i64 == k { 1.0 } else { 0.0 }).collect();
    let t = Tensor::from_parts(vec![r, cols], Storage::F64(ones));
    Ok(vec![super::cast::cast_to(&t, dtype)?])
}

pub fn trilu(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    if x.rank() < 2 {
        kbail!("input must have rank ≥ 2, got {:?}", x.shape());
    }
    let k = match i.opt(1) {
        Some(t) => *ints(t)?.first().unwrap_or(&0),
        None => 0,
    };
    let upper = c.int("upper", 1) != 0;
    let (r, cols) = (x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]);
    let keep = |p: usize| {
        let (row, col) = (((p / cols.max(1)) % r.max(1)) as i64, (p % cols.max(1)) as i64);
        if upper {
            col - row >= k
        } else {
            col - row <= k
        }
    };
    let zero = Storage::zeros(x.dtype(), 1).unwrap_or(Storage::F32(vec![0.0]));
    let n = x.numel();
    let both = concat_storage(x.data(), &zero);
    let idx: Vec<usize> = (0..n).map(|p| if keep(p) { p } else { n }).collect();
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), both.take(&idx))])
}

/// `a` followed by `b` (same type): lets index maps point at a fill value past the data.
pub fn concat_storage(a: &Storage, b: &Storage) -> Storage {
    let ta = Tensor::from_parts(vec![a.len()], a.clone());
    let tb = Tensor::from_parts(vec![b.len()], b.clone());
    match concat_tensors(&[&ta, &tb], 0) {
        Ok(t) => t.into_data(),
        Err(_) => a.clone(),
    }
}

pub fn depth_to_space(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let b = c.int("blocksize", 0);
    let [n, ch, h, w] = x.shape() else { kbail!("input must be 4-D, got {:?}", x.shape()) };
    let (n, ch, h, w) = (*n, *ch, *h, *w);
    if b <= 0 || ch % (b * b) as usize != 0 {
        kbail!("blocksize {b} does not divide {ch} channels");
    }
    let b = b as usize;
    let crd = c.string("mode").as_deref() == Some("CRD");
    let co = ch / (b * b);
    let (tmp_shape, perm): (Vec<usize>, [usize; 6]) =
        if crd { (vec![n, co, b, b, h, w], [0, 1, 4, 2, 5, 3]) } else { (vec![n, b, b, co, h, w], [0, 3, 4, 1, 5, 2]) };
    let t = x.with_shape(tmp_shape);
    let p = permute(&t, &perm);
    Ok(vec![Tensor::from_parts(vec![n, co, h * b, w * b], p.into_data())])
}

pub fn space_to_depth(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let b = c.int("blocksize", 0);
    let [n, ch, h, w] = x.shape() else { kbail!("input must be 4-D, got {:?}", x.shape()) };
    let (n, ch, h, w) = (*n, *ch, *h, *w);
    if b <= 0 || h % b as usize != 0 || w % b as usize != 0 {
        kbail!("blocksize {b} does not divide {h}x{w}");
    }
    let b = b as usize;
    let t = x.with_shape(vec![n, ch, h / b, b, w / b, b]);
    let p = permute(&t, &[0, 3, 5, 1, 2, 4]);
    Ok(vec![Tensor::from_parts(vec![n, ch * b * b, h / b, w / b], p.into_data())])
}

pub fn reverse_sequence(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let lens = ints(i.req(1)?)?;
    let (bax, tax) = (axis(c.int("batch_axis", 1), x.rank())?, axis(c.int("time_axis", 0), x.rank())?);
    if bax == tax || lens.len() != x.shape()[bax] {
        kbail!("batch_axis {bax}, time_axis {tax} and {} lengths do not fit {:?}", lens.len(), x.shape());
    }
    let st = strides(x.shape());
    let t = x.shape()[tax] as i64;
    let mut map = Vec::with_capacity(x.numel());
    for k in 0..x.numel() {
        let (b, ti) = ((k / st[bax]) % x.shape()[bax], ((k / st[tax]) % x.shape()[tax]) as i64);
        let len = lens[b];
        if !(0..=t).contains(&len) {
            kbail!("sequence length {len} is out of range for {t} steps");
        }
        let src = if ti < len { len - 1 - ti } else { ti };
        map.push((k as i64 + (src - ti) * st[tax] as i64) as usize);
    }
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), x.data().take(&map))])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("ReverseSequence", reverse_sequence),
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Transpose", transpose),
    ("Expand", expand),
    ("Shape", shape),
    ("Size", size),
    ("Concat", concat),
    ("Split", split),
    ("Tile", tile),
    ("ConstantOfShape", constant_of_shape),
    ("Range", range),
    ("EyeLike", eye_like),
    ("Trilu", trilu),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", space_to_depth),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_concat() {
        let x = Tensor::from_vec(vec![2, 3], vec![0, 1, 2, 3, 4, 5i32]).unwrap();
        let t = permute(&x, &[1, 0]);
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.as_slice::<i32>().unwrap(), &[0, 3, 1, 4, 2, 5]);
        let c = concat_tensors(&[&x, &x], 1).unwrap();
        assert_eq!(c.as_slice::<i32>().unwrap(), &[0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]);
        let parts = split_sizes(&x, 1, &[1, 2]);
        assert_eq!(parts[1].as_slice::<i32>().unwrap(), &[1, 2, 4, 5]);
    }
}
