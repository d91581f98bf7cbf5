//! Reductions (ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare) and
//! ArgMax/ArgMin.
//!
//! The reduced axes are moved last (a transpose index map, skipped when they already are), so
//! every reduction is a fold over contiguous runs. Values are folded in f64 (i128 for integer
//! sums and products, so they stay exact).

use super::num::Num;
use super::util::{axes, axis, ints};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// Which reduction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reduction {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// The reduced axes of a Reduce* node: the `axes` input from `since`, the attribute before.
fn reduce_axes(c: &OpCtx, i: &Inputs, since: i64, rank: usize) -> KResult<Vec<usize>> {
    let list = if c.opset >= since { i.opt(1).map(ints).transpose()? } else { c.ints("axes") };
    match list {
        Some(l) if !l.is_empty() => axes(&l, rank),
        _ if c.int("noop_with_empty_axes", 0) != 0 => Ok(Vec::new()),
        _ => Ok((0..rank).collect()),
    }
}

/// Rearranges `x` so the reduced axes are last: (kept shape, run length, index map or None).
fn layout(shape: &[usize], red: &[usize]) -> (Vec<usize>, usize, Option<Vec<usize>>) {
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !red.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
    let run: usize = red.iter().map(|&a| shape[a]).product();
    let mut perm = kept.clone();
    let mut sorted = red.to_vec();
    sorted.sort_unstable();
    perm.extend(sorted);
    let identity = perm.iter().enumerate().all(|(k, &p)| k == p);
    let map = if identity { None } else { Some(super::shape::transpose_index(shape, &perm)) };
    (kept_shape, run, map)
}

pub fn reduce(x: &Tensor, red: &[usize], keepdims: bool, kind: Reduction) -> KResult<Tensor> {
    let (kept_shape, run, map) = layout(x.shape(), red);
    let out_shape: Vec<usize> = if keepdims {
        x.shape().iter().enumerate().map(|(a, &d)| if red.contains(&a) { 1 } else { d }).collect()
    } else {
        kept_shape.clone()
    };
    let groups: usize = kept_shape.iter().product();
    fn go<T: Num>(v: &[T], map: Option<&[usize]>, groups: usize, run: usize, kind: Reduction) -> Storage {
        let get = |g: usize, j: usize| match map {
            Some(m) => v[m[g * run + j]],
            None => v[g * run + j],
        };
        let out: Vec<T> = (0..groups)
            .map(|g| {
                let vals = (0..run).map(|j| get(g, j));
                if !T::IS_FLOAT
                    && matches!(kind, Reduction::Sum | Reduction::Prod | Reduction::SumSquare | Reduction::L1)
                {
                    let r: i128 = match kind {
                        Reduction::Sum => vals.map(|x| x.to_i128()).fold(0i128, i128::wrapping_add),
                        Reduction::Prod => vals.map(|x| x.to_i128()).fold(1i128, i128::wrapping_mul),
                        Reduction::SumSquare => vals.map(|x| x.to_i128() * x.to_i128()).fold(0i128, i128::wrapping_add),
                        _ => vals.map(|x| x.to_i128().abs()).fold(0i128, i128::wrapping_add),
                    };
                    return T::from_i128(r);
                }
                if matches!(kind, Reduction::Max | Reduction::Min) {
                    let mut acc = if kind == Reduction::Max { T::lowest() } else { T::highest() };
                    for x in vals {
                        if x.to_f64().is_nan() {
                            return x;
                        }
                        if (kind == Reduction::Max && x > acc) || (kind == Reduction::Min && x < acc) {
                            acc = x;
                        }
                    }
                    return acc;
                }
                let r = match kind {
                    Reduction::Sum => vals.map(|x| x.to_f64()).sum::<f64>(),
                    Reduction::Mean => vals.map(|x| x.to_f64()).sum::<f64>() / run as f64,
                    Reduction::Prod => vals.map(|x| x.to_f64()).product(),
                    Reduction::L1 => vals.map(|x| x.to_f64().abs()).sum(),
                    Reduction::L2 => vals.map(|x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt(),
                    Reduction::LogSum => vals.map(|x| x.to_f64()).sum::<f64>().ln(),
                    Reduction::LogSumExp => {
                        let all: Vec<f64> = vals.map(|x| x.to_f64()).collect();
                        let m = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        if m.is_infinite() {
                            all.iter().map(|x| x.exp()).sum::<f64>().ln()
                        } else {
                            m + all.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
                        }
                    }
                    Reduction::SumSquare => vals.map(|x| x.to_f64() * x.to_f64()).sum(),
                    Reduction::Max | Reduction::Min => 0.0,
                };
                T::from_f64(r)
            })
            .collect();
        T::wrap(out)
    }
    let data = crate::with_arith!(x.data(), v => go(v, map.as_deref(), groups, run, kind), _ => match x.data() {
        Storage::Bool(v) if matches!(kind, Reduction::Max | Reduction::Min) => {
            let v: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
            match go(&v, map.as_deref(), groups, run, kind) {
                Storage::U8(r) => Storage::Bool(r.into_iter().map(|b| b != 0).collect()),
                other => other,
            }
        }
        _ => kbail!("cannot reduce {} tensors", x.dtype()),
    });
    Ok(Tensor::from_parts(out_shape, data))
}

macro_rules! reduce_op {
    ($name:ident, $kind:ident, $since:expr) => {
        pub fn $name(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
            let x = i.req(0)?;
            let red = reduce_axes(c, i, $since, x.rank())?;
            if red.is_empty() {
                return Ok(vec![x.clone()]);
            }
            Ok(vec![reduce(x, &red, c.int("keepdims", 1) != 0, Reduction::$kind)?])
        }
    };
}
reduce_op!(reduce_sum, Sum, 13);
reduce_op!(reduce_mean, Mean, 18);
reduce_op!(reduce_max, Max, 18);
reduce_op!(reduce_min, Min, 18);
reduce_op!(reduce_prod, Prod, 18);
reduce_op!(reduce_l1, L1, 18);
reduce_op!(reduce_l2, L2, 18);
reduce_op!(reduce_log_sum, LogSum, 18);
reduce_op!(reduce_log_sum_exp, LogSumExp, 18);
reduce_op!(reduce_sum_square, SumSquare, 18);

fn arg(c: &OpCtx, i: &Inputs, max: bool) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let ax = axis(c.int("axis", 0), x.rank())?;
    let last = c.int("select_last_index", 0) != 0;
    let keep = c.int("keepdims", 1) != 0;
    let dim = x.shape()[ax];
    if dim == 0 {
        kbail!("cannot take the arg{} of an empty axis", if max { "max" } else { "min" });
    }
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..].iter().product();
    fn go<T: Num>(v: &[T], outer: usize, dim: usize, inner: usize, max: bool, last: bool) -> Vec<i64> {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for r in 0..inner {
                let mut best = 0;
                for j in 1..dim {
                    let (a, b) = (v[(o * dim + j) * inner + r], v[(o * dim + best) * inner + r]);
                    let better = if max { a > b } else { a < b };
                    if better || (last && a == b) {
                        best = j;
                    }
                }
                out.push(best as i64);
            }
        }
        out
    }
    let v = crate::with_num!(x.data(), v => go(v, outer, dim, inner, max, last), _ => kbail!("cannot take the arg of strings"));
    let mut shape = x.shape().to_vec();
    if keep {
        shape[ax] = 1;
    } else {
        shape.remove(ax);
    }
    Ok(vec![Tensor::from_parts(shape, Storage::I64(v))])
}

pub fn arg_max(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    arg(c, i, true)
}

pub fn arg_min(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    arg(c, i, false)
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("ReduceSum", reduce_sum),
    ("ReduceMean", reduce_mean),
    ("ReduceMax", reduce_max),
    ("ReduceMin", reduce_min),
    ("ReduceProd", reduce_prod),
    ("ReduceL1", reduce_l1),
    ("ReduceL2", reduce_l2),
    ("ReduceLogSum", reduce_log_sum),
    ("ReduceLogSumExp", reduce_log_sum_exp),
    ("ReduceSumSquare", reduce_sum_square),
    ("ArgMax", arg_max),
    ("ArgMin", arg_min),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_middle_axis_and_empty() {
        let x = Tensor::from_vec(vec![2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let s = reduce(&x, &[1], false, Reduction::Sum).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.as_slice::<f32>().unwrap(), &[6.0, 9.0, 24.0, 27.0]);
        let e = Tensor::from_vec(vec![2, 0], Vec::<f32>::new()).unwrap();
        let s = reduce(&e, &[1], true, Reduction::Sum).unwrap();
        assert_eq!(s.as_slice::<f32>().unwrap(), &[0.0, 0.0]);
    }
}
