//! `SumToShape(dy, shape)`: the gradient of an operand that numpy broadcasting stretched —
//! `dy` summed back down to the operand's `shape` (leading extra dims summed away, dims where
//! `shape` has 1 summed and kept as 1).

use super::common::{shape_input, sum_plan, sum_to};
use super::real::with_real;
use crate::error::{kbail, KResult};
use crate::ops::util::checked_numel;
use crate::ops::{Inputs, OpCtx};
use crate::tensor::{Elem, Tensor};

pub fn sum_to_shape(_: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let dy = i.req(0)?;
    let target = shape_input(i.req(1)?, "shape")?;
    let dims = sum_plan(dy.shape(), &target)?;
    let n = checked_numel(&target)?;
    if dy.shape() == target.as_slice() && matches!(dy.dtype(), adaptc_ir::DataType::Float | adaptc_ir::DataType::Double)
    {
        // Nothing was broadcast (the pass could not prove it): share dy rather than copy it.
        return Ok(vec![dy.clone()]);
    }
    let data = with_real!(dy.data(), v => Elem::wrap(sum_to(v, &dims, n)), _ => kbail!("dy must be f32 or f64, got {}", dy.dtype()));
    Ok(vec![Tensor::from_parts(target, data)])
}
