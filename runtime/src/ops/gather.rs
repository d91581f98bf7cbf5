//! Indexing ops: Gather, GatherElements, GatherND, ScatterND, ScatterElements, OneHot,
//! Compress. Every index is range-checked (negative indices count from the end).

use super::num::Num;
use super::util::{axis, checked_numel, ints, strides};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Elem, Storage, Tensor};

/// Normalises index `v` into `[0, dim)`.
fn index(v: i64, dim: usize) -> KResult<usize> {
    let d = dim as i64;
    let u = if v < 0 { v + d } else { v };
    if u < 0 || u >= d {
        kbail!("index {v} is out of range for a dimension of size {dim}");
    }
    Ok(u as usize)
}

pub fn gather(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, ind) = (i.req(0)?, i.req(1)?);
    if x.rank() == 0 {
        kbail!("data must have rank ≥ 1");
    }
    let ax = axis(c.int("axis", 0), x.rank())?;
    let idx = ints(ind)?;
    let dim = x.shape()[ax];
    let idx: Vec<usize> = idx.iter().map(|&v| index(v, dim)).collect::<KResult<_>>()?;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..].iter().product();
    let mut out = x.shape()[..ax].to_vec();
    out.extend_from_slice(ind.shape());
    out.extend_from_slice(&x.shape()[ax + 1..]);
    let n = checked_numel(&out)?;
    let mut map = Vec::with_capacity(n);
    for o in 0..outer {
        for &j in &idx {
            let base = (o * dim + j) * inner;
            map.extend(base..base + inner);
        }
    }
    Ok(vec![Tensor::from_parts(out, x.data().take(&map))])
}

pub fn gather_elements(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, ind) = (i.req(0)?, i.req(1)?);
    let ax = axis(c.int("axis", 0), x.rank())?;
    if ind.rank() != x.rank() {
        kbail!("indices rank {} differs from data rank {}", ind.rank(), x.rank());
    }
    let idx = ints(ind)?;
    let st = strides(x.shape());
    let ist = strides(ind.shape());
    let mut map = Vec::with_capacity(idx.len());
    for (k, &v) in idx.iter().enumerate() {
        let mut off = 0;
        for d in 0..x.rank() {
            let p = (k / ist[d]) % ind.shape()[d];
            let p = if d == ax {
                index(v, x.shape()[d])?
            } else if p < x.shape()[d] {
                p
            } else {
                kbail!("indices shape {:?} exceeds data {:?}", ind.shape(), x.shape())
            };
            off += p * st[d];
        }
        map.push(off);
    }
    Ok(vec![Tensor::from_parts(ind.shape().to_vec(), x.data().take(&map))])
}

/// The flat offsets addressed by GatherND/ScatterND index tuples, with the slice size.
fn nd_offsets(x: &Tensor, ind: &Tensor, batch: usize) -> KResult<(Vec<usize>, usize, Vec<usize>)> {
    let idx = ints(ind)?;
    let Some(&k) = ind.shape().last() else { kbail!("indices must have rank ≥ 1") };
    if batch + k > x.rank() || batch >= ind.rank() {
        kbail!("index tuples of length {k} with {batch} batch dims do not fit data of rank {}", x.rank());
    }
    let st = strides(x.shape());
    let inner: usize = x.shape()[batch + k..].iter().product();
    let batch_size: usize = x.shape()[..batch].iter().product();
    let tuples: usize = ind.shape()[..ind.rank() - 1].iter().product();
    let per_batch = tuples / batch_size.max(1);
    let mut offs = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let b = t / per_batch.max(1);
        let mut off = b * if batch > 0 { st[batch - 1] } else { 0 };
        for j in 0..k {
            off += index(idx[t * k + j], x.shape()[batch + j])? * st[batch + j];
        }
        offs.push(off);
    }
    let mut out = ind.shape()[..ind.rank() - 1].to_vec();
    out.extend_from_slice(&x.shape()[batch + k..]);
    Ok((offs, inner, out))
}

pub fn gather_nd(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, ind) = (i.req(0)?, i.req(1)?);
    let batch = c.int("batch_dims", 0).max(0) as usize;
    let (offs, inner, out) = nd_offsets(x, ind, batch)?;
    let map: Vec<usize> = offs.iter().flat_map(|&o| o..o + inner).collect();
    Ok(vec![Tensor::from_parts(out, x.data().take(&map))])
}

/// How a scatter combines the old and the new value.
fn reduction<T: Num>(name: &str) -> KResult<fn(T, T) -> T> {
    Ok(match name {
        "none" => |_, n| n,
        "add" => |o: T, n: T| o.add(n),
        "mul" => |o: T, n: T| o.mul(n),
        "max" => |o: T, n: T| if n > o { n } else { o },
        "min" => |o: T, n: T| if n < o { n } else { o },
        other => unsupported!("reduction \"{other}\""),
    })
}

/// Writes `updates` at `targets` (one offset per update element) into a copy of `x`.
fn scatter(x: &Tensor, updates: &Tensor, targets: &[usize], red: &str) -> KResult<Tensor> {
    if x.dtype() != updates.dtype() {
        kbail!("updates are {} but data is {}", updates.dtype(), x.dtype());
    }
    fn go<T: Num>(x: &[T], u: &[T], targets: &[usize], red: &str) -> KResult<Storage> {
        let f = reduction::<T>(red)?;
        let mut v = x.to_vec();
        for (&t, &n) in targets.iter().zip(u) {
            v[t] = f(v[t], n);
        }
        Ok(T::wrap(v))
    }
    fn strings(x: &[String], u: &Storage, targets: &[usize]) -> Storage {
        let mut v = x.to_vec();
        for (&t, n) in targets.iter().zip(String::slice(u).unwrap_or(&[])) {
            v[t] = n.clone();
        }
        Storage::Str(v)
    }
    let data = crate::with_num!(x.data(), v => go(v, <_ as Elem>::slice(updates.data()).unwrap_or(&[]), targets, red)?, _ => match x.data() {
        Storage::Str(v) => strings(v, updates.data(), targets),
        _ => kbail!("unreachable"),
    });
    Ok(Tensor::from_parts(x.shape().to_vec(), data))
}

pub fn scatter_nd(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, ind, upd) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let (offs, inner, out) = nd_offsets(x, ind, 0)?;
    if upd.shape() != out.as_slice() {
        kbail!("updates shape {:?} should be {out:?}", upd.shape());
    }
    let targets: Vec<usize> = offs.iter().flat_map(|&o| o..o + inner).collect();
    Ok(vec![scatter(x, upd, &targets, &c.string("reduction").unwrap_or_else(|| "none".into()))?])
}

pub fn scatter_elements(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, ind, upd) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let ax = axis(c.int("axis", 0), x.rank())?;
    if ind.shape() != upd.shape() || ind.rank() != x.rank() {
        kbail!("indices {:?} and updates {:?} must match and have the data's rank", ind.shape(), upd.shape());
    }
    let idx = ints(ind)?;
    let st = strides(x.shape());
    let ist = strides(ind.shape());
    let mut targets = Vec::with_capacity(idx.len());
    for (k, &v) in idx.iter().enumerate() {
        let mut off = 0;
        for d in 0..x.rank() {
            let p = (k / ist[d]) % ind.shape()[d];
            let p = if d == ax {
                index(v, x.shape()[d])?
            } else if p < x.shape()[d] {
                p
            } else {
                kbail!("indices exceed data")
            };
            off += p * st[d];
        }
        targets.push(off);
    }
    Ok(vec![scatter(x, upd, &targets, &c.string("reduction").unwrap_or_else(|| "none".into()))?])
}

pub fn one_hot(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (ind, depth, values) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let idx = super::util::floats(ind)?;
    let Some(&d) = super::util::floats(depth)?.first() else { kbail!("depth must be a scalar") };
    if d < 1.0 || d > super::util::MAX_ELEMENTS as f64 {
        kbail!("depth {d} is invalid");
    }
    let d = d as usize;
    if values.numel() != 2 {
        kbail!("values must hold [off, on]");
    }
    let rank = ind.rank() + 1;
    let ax = axis(c.int("axis", -1), rank)?;
    let mut out = ind.shape().to_vec();
    out.insert(ax, d);
    let n = checked_numel(&out)?;
    let inner: usize = ind.shape()[ax..].iter().product();
    let mut map = Vec::with_capacity(n);
    for k in 0..n {
        let o = k / (d * inner);
        let j = (k / inner) % d;
        let r = k % inner;
        let v = idx[o * inner + r].trunc() as i64;
        let v = if v < 0 { v + d as i64 } else { v };
        map.push(usize::from(v == j as i64));
    }
    Ok(vec![Tensor::from_parts(out, values.data().take(&map))])
}

pub fn compress(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, cond) = (i.req(0)?, i.req(1)?);
    let Some(cv) = cond.as_slice::<bool>() else { kbail!("condition must be bool") };
    let (src, ax) = match c.node.attr("axis").and_then(|a| a.as_int()) {
        Some(a) => (x.clone(), axis(a, x.rank())?),
        None => (x.with_shape(vec![x.numel()]), 0),
    };
    let dim = src.shape()[ax];
    let keep: Vec<usize> = (0..dim.min(cv.len())).filter(|&k| cv[k]).collect();
    let outer: usize = src.shape()[..ax].iter().product();
    let inner: usize = src.shape()[ax + 1..].iter().product();
    let mut map = Vec::new();
    for o in 0..outer {
        for &k in &keep {
            let base = (o * dim + k) * inner;
            map.extend(base..base + inner);
        }
    }
    let mut out = src.shape().to_vec();
    out[ax] = keep.len();
    Ok(vec![Tensor::from_parts(out, src.data().take(&map))])
}

/// `Unique`: distinct elements (or slices along `axis`), sorted or in order of appearance,
/// with first indices, inverse indices and counts.
pub fn unique(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (src, ax) = match c.node.attr("axis").and_then(|a| a.as_int()) {
        Some(a) => (x.clone(), axis(a, x.rank())?),
        None => (x.with_shape(vec![x.numel()]), 0),
    };
    let dim = src.shape()[ax];
    let outer: usize = src.shape()[..ax].iter().product();
    let inner: usize = src.shape()[ax + 1..].iter().product();
    // Each slice as a comparable key: its elements' flat indices, compared by value.
    let slice_idx = |k: usize| -> Vec<usize> {
        (0..outer).flat_map(|o| (0..inner).map(move |r| (o * dim + k) * inner + r)).collect()
    };
    let keys: Vec<Vec<KeyVal>> = (0..dim).map(|k| slice_idx(k).iter().map(|&j| key(src.data(), j)).collect()).collect();
    let mut firsts: Vec<usize> = Vec::new();
    let mut inverse = vec![0usize; dim];
    let mut counts: Vec<i64> = Vec::new();
    for k in 0..dim {
        match firsts.iter().position(|&f| keys[f] == keys[k]) {
            Some(u) => {
                inverse[k] = u;
                counts[u] += 1;
            }
            None => {
                inverse[k] = firsts.len();
                firsts.push(k);
                counts.push(1);
            }
        }
    }
    let mut order: Vec<usize> = (0..firsts.len()).collect();
    if c.int("sorted", 1) != 0 {
        order.sort_by(|&p, &q| cmp_keys(&keys[firsts[p]], &keys[firsts[q]]));
    }
    let mut rank = vec![0usize; order.len()];
    for (new, &old) in order.iter().enumerate() {
        rank[old] = new;
    }
    let mut shape = src.shape().to_vec();
    shape[ax] = order.len();
    let mut map = Vec::new();
    for o in 0..outer {
        for &u in &order {
            let base = (o * dim + firsts[u]) * inner;
            map.extend(base..base + inner);
        }
    }
    let y = Tensor::from_parts(shape, src.data().take(&map));
    let n = order.len();
    let idx = order.iter().map(|&u| firsts[u] as i64).collect();
    let inv = inverse.iter().map(|&u| rank[u] as i64).collect();
    let cnt = order.iter().map(|&u| counts[u]).collect();
    Ok(vec![
        y,
        Tensor::from_parts(vec![n], Storage::I64(idx)),
        Tensor::from_parts(vec![dim], Storage::I64(inv)),
        Tensor::from_parts(vec![n], Storage::I64(cnt)),
    ])
}

/// A comparable element value.
#[derive(Clone, PartialEq)]
enum KeyVal {
    Num(f64),
    Int(i128),
    Str(String),
}

fn key(s: &Storage, j: usize) -> KeyVal {
    match s {
        Storage::Str(v) => KeyVal::Str(v[j].clone()),
        Storage::F32(_) | Storage::F64(_) | Storage::F16(_) | Storage::BF16(_) => {
            crate::with_float!(s, v => KeyVal::Num(v[j].to_f64()), _ => KeyVal::Num(0.0))
        }
        other => crate::with_num!(other, v => KeyVal::Int(v[j].to_i128()), _ => KeyVal::Int(0)),
    }
}

fn cmp_keys(a: &[KeyVal], b: &[KeyVal]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (KeyVal::Num(p), KeyVal::Num(q)) => p.total_cmp(q),
            (KeyVal::Int(p), KeyVal::Int(q)) => p.cmp(q),
            (KeyVal::Str(p), KeyVal::Str(q)) => p.cmp(q),
            _ => std::cmp::Ordering::Equal,
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("Unique", unique),
    ("Gather", gather),
    ("GatherElements", gather_elements),
    ("GatherND", gather_nd),
    ("ScatterND", scatter_nd),
    ("ScatterElements", scatter_elements),
    ("Scatter", scatter_elements),
    ("OneHot", one_hot),
    ("Compress", compress),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_indices_are_errors() {
        assert_eq!(index(-1, 3).unwrap(), 2);
        assert!(index(3, 3).is_err());
        assert!(index(-4, 3).is_err());
    }
}
