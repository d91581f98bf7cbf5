//! Ops that fit no family: Constant, Clip, CumSum, NonZero, TopK, Dropout (inference).

use adaptc_ir::AttrValue;

use super::num::Num;
use super::util::{axis, floats, ints};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::{Storage, Tensor};

/// The value of a `Constant` node (also used by the planner to preload it).
pub fn constant_value(c: &OpCtx) -> KResult<Tensor> {
    let ir = |e: crate::error::RuntimeError| crate::error::KernelError::Invalid(e.to_string());
    let Some(a) = c.node.attrs().first() else { kbail!("has no value attribute") };
    Ok(match (a.name.as_str(), &a.value) {
        ("value", AttrValue::Tensor(t)) => Tensor::from_ir(t).map_err(ir)?,
        ("value_float", AttrValue::Float(v)) => Tensor::scalar(*v),
        ("value_floats", AttrValue::Floats(v)) => Tensor::from_parts(vec![v.len()], Storage::F32(v.clone())),
        ("value_int", AttrValue::Int(v)) => Tensor::scalar(*v),
        ("value_ints", AttrValue::Ints(v)) => Tensor::from_parts(vec![v.len()], Storage::I64(v.clone())),
        ("value_string", AttrValue::String(s)) => Tensor::scalar(String::from_utf8_lossy(s).into_owned()),
        ("value_strings", AttrValue::Strings(v)) => Tensor::from_parts(
            vec![v.len()],
            Storage::Str(v.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()),
        ),
        ("sparse_value", _) => unsupported!("sparse constants"),
        (name, _) => kbail!("attribute `{name}` is not a constant value"),
    })
}

pub fn constant(c: &OpCtx, _: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![constant_value(c)?])
}

pub fn clip(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (lo, hi) = if c.opset < 11 {
        (Some(f64::from(c.float("min", f32::MIN))), Some(f64::from(c.float("max", f32::MAX))))
    } else {
        let get = |k: usize| -> KResult<Option<f64>> {
            match i.opt(k) {
                Some(t) => Ok(floats(t)?.first().copied()),
                None => Ok(None),
            }
        };
        (get(1)?, get(2)?)
    };
    fn go<T: Num>(v: &[T], lo: Option<f64>, hi: Option<f64>) -> Storage {
        let lo = lo.map(T::from_f64);
        let hi = hi.map(T::from_f64);
        T::wrap(
            v.iter()
                .map(|&x| {
                    let mut y = x;
                    if let Some(l) = lo {
                        if y < l {
                            y = l;
                        }
                    }
                    if let Some(h) = hi {
                        if y > h {
                            y = h;
                        }
                    }
                    y
                })
                .collect(),
        )
    }
    let data = crate::with_arith!(x.data(), v => go(v, lo, hi), _ => kbail!("cannot clip {}", x.dtype()));
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), data)])
}

pub fn cum_sum(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    cumulative(c, i, false)
}

pub fn cum_prod(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    cumulative(c, i, true)
}

/// Running sums or products along an axis (`exclusive` shifts by one, `reverse` runs back).
fn cumulative(c: &OpCtx, i: &Inputs, prod: bool) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let Some(&a) = ints(i.req(1)?)?.first() else { kbail!("axis must be a scalar") };
    let ax = axis(a, x.rank())?;
    let (excl, rev) = (c.int("exclusive", 0) != 0, c.int("reverse", 0) != 0);
    let outer: usize = x.shape()[..ax].iter().product();
    let dim = x.shape()[ax];
    let inner: usize = x.shape()[ax + 1..].iter().product();
    fn go<T: Num>(v: &[T], [outer, dim, inner]: [usize; 3], excl: bool, rev: bool, prod: bool) -> Storage {
        let mut out = vec![T::zero(); v.len()];
        let (init, f): (T, fn(T, T) -> T) = if prod { (T::one(), T::mul) } else { (T::zero(), T::add) };
        for o in 0..outer {
            for r in 0..inner {
                let mut acc = init;
                for s in 0..dim {
                    let j = if rev { dim - 1 - s } else { s };
                    let at = (o * dim + j) * inner + r;
                    if excl {
                        out[at] = acc;
                        acc = f(acc, v[at]);
                    } else {
                        acc = f(acc, v[at]);
                        out[at] = acc;
                    }
                }
            }
        }
        T::wrap(out)
    }
    let data = crate::with_arith!(x.data(), v => go(v, [outer, dim, inner], excl, rev, prod), _ => kbail!("cannot sum {}", x.dtype()));
    Ok(vec![Tensor::from_parts(x.shape().to_vec(), data)])
}

pub fn non_zero(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    fn go<T: Num>(v: &[T]) -> Vec<usize> {
        v.iter().enumerate().filter(|(_, &x)| x != T::zero()).map(|(k, _)| k).collect()
    }
    let hits = crate::with_num!(x.data(), v => go(v), _ => kbail!("cannot test strings for zero"));
    let rank = x.rank();
    let st = super::util::strides(x.shape());
    let mut out = vec![0i64; rank * hits.len()];
    for (j, &k) in hits.iter().enumerate() {
        for d in 0..rank {
            out[d * hits.len() + j] = ((k / st[d]) % x.shape()[d]) as i64;
        }
    }
    Ok(vec![Tensor::from_parts(vec![rank, hits.len()], Storage::I64(out))])
}

pub fn top_k(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let k = match (c.opset >= 10, i.opt(1)) {
        (true, Some(t)) => ints(t)?.first().copied().unwrap_or(0),
        _ => c.int("k", 0),
    };
    let ax = axis(c.int("axis", -1), x.rank())?;
    let dim = x.shape()[ax];
    if k < 0 || k as usize > dim {
        kbail!("k = {k} is out of range for an axis of size {dim}");
    }
    let k = k as usize;
    let largest = c.int("largest", 1) != 0;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..].iter().product();
    let vals = floats(x)?;
    let mut idx = Vec::with_capacity(outer * k * inner);
    let mut map = vec![0usize; outer * k * inner];
    for o in 0..outer {
        for r in 0..inner {
            let mut order: Vec<usize> = (0..dim).collect();
            let at = |j: usize| vals[(o * dim + j) * inner + r];
            order.sort_by(|&p, &q| {
                let ord = at(p).partial_cmp(&at(q)).unwrap_or(std::cmp::Ordering::Equal);
                (if largest { ord.reverse() } else { ord }).then(p.cmp(&q))
            });
            for (s, &j) in order.iter().take(k).enumerate() {
                map[(o * k + s) * inner + r] = (o * dim + j) * inner + r;
            }
        }
    }
    for &m in &map {
        idx.push(((m / inner.max(1)) % dim.max(1)) as i64);
    }
    let mut shape = x.shape().to_vec();
    shape[ax] = k;
    Ok(vec![Tensor::from_parts(shape.clone(), x.data().take(&map)), Tensor::from_parts(shape, Storage::I64(idx))])
}

/// Inference-mode dropout: the identity, with an all-true mask when asked for.
pub fn dropout(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let training = match i.opt(2) {
        Some(t) => t.as_slice::<bool>().and_then(|v| v.first().copied()).unwrap_or(false),
        None => false,
    };
    let ratio = match i.opt(1) {
        Some(t) => floats(t)?.first().copied().unwrap_or(0.5),
        None => f64::from(c.float("ratio", 0.5)),
    };
    if training && ratio != 0.0 {
        unsupported!("training-mode dropout (random)");
    }
    let mut out = vec![x.clone()];
    if c.node.outputs().len() > 1 {
        out.push(Tensor::from_parts(x.shape().to_vec(), Storage::Bool(vec![true; x.numel()])));
    }
    Ok(out)
}

pub fn string_concat(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (a, b) = (i.req(0)?, i.req(1)?);
    let (Some(x), Some(y)) = (a.as_slice::<String>(), b.as_slice::<String>()) else {
        kbail!("expects string inputs, got {} and {}", a.dtype(), b.dtype())
    };
    let out = super::util::broadcast_shapes(&[a.shape(), b.shape()])?;
    let (ia, ib) = (super::util::broadcast_index(a.shape(), &out), super::util::broadcast_index(b.shape(), &out));
    let v = ia.iter().zip(&ib).map(|(&p, &q)| format!("{}{}", x[p], y[q])).collect();
    Ok(vec![Tensor::from_parts(out, Storage::Str(v))])
}

/// Determinants of the trailing square matrices (LU with partial pivoting, in f64).
pub fn det(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let r = x.rank();
    if r < 2 || x.shape()[r - 1] != x.shape()[r - 2] {
        kbail!("input must end in a square matrix, got {:?}", x.shape());
    }
    let m = x.shape()[r - 1];
    let v = floats(x)?;
    let count = v.len() / (m * m).max(1);
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let mut a = v[k * m * m..(k + 1) * m * m].to_vec();
        let mut d = 1.0;
        for col in 0..m {
            let p = (col..m).max_by(|&p, &q| a[p * m + col].abs().total_cmp(&a[q * m + col].abs())).unwrap_or(col);
            if a[p * m + col] == 0.0 {
                d = 0.0;
                break;
            }
            if p != col {
                for j in 0..m {
                    a.swap(p * m + j, col * m + j);
                }
                d = -d;
            }
            d *= a[col * m + col];
            for row in col + 1..m {
                let f = a[row * m + col] / a[col * m + col];
                for j in col..m {
                    a[row * m + j] -= f * a[col * m + j];
                }
            }
        }
        out.push(d);
    }
    let t = Tensor::from_parts(x.shape()[..r - 2].to_vec(), Storage::F64(out));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("StringConcat", string_concat),
    ("Det", det),
    ("Constant", constant),
    ("Clip", clip),
    ("CumSum", cum_sum),
    ("CumProd", cum_prod),
    ("NonZero", non_zero),
    ("TopK", top_k),
    ("Dropout", dropout),
];
