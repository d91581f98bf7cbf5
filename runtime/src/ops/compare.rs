//! Comparisons and boolean logic (bool outputs), and `Where`.

use super::num::Num;
use super::strided::map3;
use super::util::{broadcast_index, broadcast_shapes, checked_numel, zip_broadcast};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Elem, Storage, Tensor};

/// `f(a, b)` over two tensors of one type (any type for equality) giving bools.
fn compare(a: &Tensor, b: &Tensor, ord: fn(std::cmp::Ordering) -> bool, eq_only: bool) -> KResult<Tensor> {
    let out = broadcast_shapes(&[a.shape(), b.shape()])?;
    checked_numel(&out)?;
    fn num<T: Num>(
        x: &[T],
        xs: &[usize],
        y: &[T],
        ys: &[usize],
        out: &[usize],
        ord: fn(std::cmp::Ordering) -> bool,
    ) -> Vec<bool> {
        zip_broadcast(x, xs, y, ys, out, |p, q| p.partial_cmp(&q).is_some_and(ord))
    }
    macro_rules! go {
        ($($v:ident),*) => {
            match (a.data(), b.data()) {
                $((Storage::$v(x), Storage::$v(y)) => num(x, a.shape(), y, b.shape(), &out, ord),)*
                (Storage::Str(x), Storage::Str(y)) if eq_only => {
                    let (ia, ib) = (broadcast_index(a.shape(), &out), broadcast_index(b.shape(), &out));
                    ia.iter().zip(&ib).map(|(&i, &j)| x[i] == y[j]).collect()
                }
                _ => kbail!("cannot compare {} with {}", a.dtype(), b.dtype()),
            }
        };
    }
    let v = go!(F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool);
    Ok(Tensor::from_parts(out, Storage::Bool(v)))
}

macro_rules! cmp_op {
    ($name:ident, $pat:pat, $eq:expr) => {
        pub fn $name(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
            Ok(vec![compare(i.req(0)?, i.req(1)?, |o| matches!(o, $pat), $eq)?])
        }
    };
}
use std::cmp::Ordering::{Equal, Greater, Less};
cmp_op!(equal, Equal, true);
cmp_op!(less, Less, false);
cmp_op!(greater, Greater, false);
cmp_op!(less_or_equal, Less | Equal, false);
cmp_op!(greater_or_equal, Greater | Equal, false);

fn logic(i: &Inputs, f: fn(bool, bool) -> bool) -> KResult<Tensor> {
    let (a, b) = (i.req(0)?, i.req(1)?);
    let (Some(x), Some(y)) = (a.as_slice::<bool>(), b.as_slice::<bool>()) else {
        kbail!("expects bool inputs, got {} and {}", a.dtype(), b.dtype())
    };
    let out = broadcast_shapes(&[a.shape(), b.shape()])?;
    Ok(Tensor::from_parts(out.clone(), Storage::Bool(zip_broadcast(x, a.shape(), y, b.shape(), &out, f))))
}

pub fn and(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![logic(i, |a, b| a && b)?])
}

pub fn or(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![logic(i, |a, b| a || b)?])
}

pub fn xor(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    Ok(vec![logic(i, |a, b| a ^ b)?])
}

/// `Where(cond, x, y)` with three-way broadcasting.
pub fn where_(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (c, x, y) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let Some(cv) = c.as_slice::<bool>() else { kbail!("condition must be bool, got {}", c.dtype()) };
    if x.dtype() != y.dtype() {
        kbail!("X and Y have different types: {} and {}", x.dtype(), y.dtype());
    }
    let out = broadcast_shapes(&[c.shape(), x.shape(), y.shape()])?;
    checked_numel(&out)?;
    let shapes = [c.shape(), x.shape(), y.shape()];
    fn go<T: Elem>(cv: &[bool], x: &[T], y: &Storage, shapes: [&[usize]; 3], out: &[usize]) -> Storage {
        let y = T::slice(y).unwrap_or(&[]);
        T::wrap(map3((cv, x, y), shapes, out, |c, x, y| if c { x.clone() } else { y.clone() }))
    }
    let data = crate::with_storage!(x.data(), xv => go(cv, xv, y.data(), shapes, &out));
    Ok(vec![Tensor::from_parts(out, data)])
}

pub const OPS: &[(&str, KernelFn)] = &[
    ("Equal", equal),
    ("Less", less),
    ("Greater", greater),
    ("LessOrEqual", less_or_equal),
    ("GreaterOrEqual", greater_or_equal),
    ("And", and),
    ("Or", or),
    ("Xor", xor),
    ("Where", where_),
];
