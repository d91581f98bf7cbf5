//! `ReduceGrad(dy, x_shape)` (attributes `axes`, `keepdims` = 1, `mean` = 0): the gradient of
//! ReduceSum (`mean=0`) and ReduceMean (`mean=1`) — `dy` broadcast back over the reduced axes
//! of `x_shape` (re-inserted as size 1 when `keepdims=0`), divided by the count they held for a
//! mean. Absent or empty `axes` reduce every axis, unless `noop_with_empty_axes=1` (copied
//! from the forward node), which makes the reduction, and so its gradient, the identity.

use super::common::{broadcast_to, plan, shape_input};
use super::real::{with_real, Real};
use crate::error::{kbail, KResult};
use crate::ops::util::{axes, checked_numel};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Tensor};

fn flag(c: &OpCtx, name: &str, default: i64) -> KResult<bool> {
    match c.int(name, default) {
        0 => Ok(false),
        1 => Ok(true),
        v => kbail!("attribute {name} must be 0 or 1, got {v}"),
    }
}

pub fn reduce_grad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let dy = i.req(0)?;
    let x_shape = shape_input(i.req(1)?, "x_shape")?;
    let (keepdims, mean) = (flag(c, "keepdims", 1)?, flag(c, "mean", 0)?);
    let rank = x_shape.len();
    let listed = c.ints("axes").unwrap_or_default();
    let reduced: Vec<bool> = if listed.is_empty() {
        vec![!flag(c, "noop_with_empty_axes", 0)?; rank]
    } else {
        let ax = axes(&listed, rank)?;
        (0..rank).map(|d| ax.contains(&d)).collect()
    };
    let want: Vec<usize> = if keepdims || !reduced.contains(&true) {
        x_shape.iter().zip(&reduced).map(|(&d, &r)| if r { 1 } else { d }).collect()
    } else {
        x_shape.iter().zip(&reduced).filter(|&(_, &r)| !r).map(|(&d, _)| d).collect()
    };
    if dy.shape() != want.as_slice() {
        kbail!(
            "dy has shape {:?}, but reducing {x_shape:?} over {listed:?} (keepdims={}) gives {want:?}",
            dy.shape(),
            u8::from(keepdims)
        );
    }
    let n = checked_numel(&x_shape)?;
    let count: usize = x_shape.iter().zip(&reduced).filter(|&(_, &r)| r).map(|(&d, _)| d).product();
    let kept: Vec<bool> = reduced.iter().map(|&r| !r).collect();
    let dims = plan(&x_shape, &kept);
    fn go<T: Real>(dy: &[T], dims: &[(usize, bool)], n: usize, div: Option<usize>) -> Vec<T> {
        match div {
            Some(k) if k > 1 => {
                let inv = T::one() / T::count(k);
                let scaled: Vec<T> = dy.iter().map(|&v| v * inv).collect();
                broadcast_to(&scaled, dims, n)
            }
            _ => broadcast_to(dy, dims, n),
        }
    }
    let div = mean.then_some(count);
    let data = with_real!(dy.data(), v => Elem::wrap(go(v, &dims, n, div)),
        _ => kbail!("ReduceGrad takes f32 or f64, got {}", dy.dtype()));
    Ok(vec![Tensor::from_parts(x_shape, data)])
}
