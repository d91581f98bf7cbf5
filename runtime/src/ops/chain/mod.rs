//! `ElementwiseChain`: a program of elementwise steps that the plan makes of connected
//! elementwise nodes (`crate::fuse::chains`), so that the values passed between them are never
//! written to memory and read back. Gradient chains also hold `SumToShape`, which runs fused
//! only when it is a copy.
//!
//! Its meaning is that of running the steps one by one with their own kernels, and
//! [`sequential`] does exactly that: for the cases the fused evaluator does not cover (a step
//! on bf16 or integer operands, a value output smaller than the chain's shape, a `SumToShape`
//! that sums) and for errors
//! (shapes that do not broadcast), which then name the step's node. The fused evaluator
//! ([`eval`]) computes each step exactly as the step's kernel would, so both give the same
//! bits.

pub mod eval;
pub mod program;

use adaptc_ir::DataType;

pub use program::{Op, Program, Step};

use super::grad::common::shape_input;
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult, KernelError};
use crate::tensor::Tensor;

pub fn elementwise_chain(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let p = Program::from_node(c.node)?;
    let inputs: Vec<&Tensor> = (0..p.inputs).map(|k| i.req(k)).collect::<KResult<_>>()?;
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let types: Vec<DataType> = inputs.iter().map(|t| t.dtype()).collect();
    let dims = |r: usize| inputs.get(r).and_then(|t| shape_input(t, "shape").ok());
    let fused = match (p.shapes_of(&shapes, dims), p.f32_types(&types)) {
        (Ok(reg_shapes), Some(reg_types)) if p.walkable(&reg_shapes) => {
            eval::run(&p, &inputs, &reg_shapes, &reg_types).map(|values| (values, reg_shapes))
        }
        _ => None,
    };
    let (values, reg_shapes) = match fused {
        Some(v) => v,
        None => sequential(c, &p, &inputs)?,
    };
    let mut outputs = values;
    for &r in &p.shapes {
        let dims: Vec<i64> = reg_shapes[r].iter().map(|&d| d as i64).collect();
        outputs.push(Tensor::from_vec(vec![dims.len()], dims).map_err(|e| KernelError::Invalid(e.to_string()))?);
    }
    Ok(outputs)
}

/// Runs the steps one by one with their kernels; returns the value outputs and every
/// register's shape. A step's error names its node.
pub fn sequential(c: &OpCtx, p: &Program, inputs: &[&Tensor]) -> KResult<(Vec<Tensor>, Vec<Vec<usize>>)> {
    let mut regs: Vec<std::borrow::Cow<Tensor>> = inputs.iter().map(|&t| std::borrow::Cow::Borrowed(t)).collect();
    for s in &p.steps {
        let result = step(c, s, &regs[s.a], s.b.map(|b| &*regs[b]))
            .map_err(|e| KernelError::Invalid(format!("in fused node `{}` ({}): {e}", s.name, s.op.onnx())))?;
        regs.push(std::borrow::Cow::Owned(result));
    }
    let shapes = regs.iter().map(|t| t.shape().to_vec()).collect();
    Ok((p.values.iter().map(|&r| regs[r].clone().into_owned()).collect(), shapes))
}

/// One step with its op's own kernel: the registry's, as the node-by-node plan runs it.
fn step(c: &OpCtx, s: &Step, a: &Tensor, b: Option<&Tensor>) -> KResult<Tensor> {
    let n = s.op.arity();
    let node = s.op.node(vec!["a".into(), "b".into()][..n].to_vec(), "y".into());
    let Some(def) = crate::registry::Registry::cpu().get(node.op()) else { kbail!("no kernel for {}", node.op()) };
    let ctx = OpCtx { node: &node, opset: c.opset };
    let args = [Some(a), b];
    match (def.kernel)(&ctx, &Inputs(&args[..n]))?.into_iter().next() {
        Some(t) => Ok(t),
        None => kbail!("the {} kernel returned no output", s.op.onnx()),
    }
}

pub const OPS: &[(&str, KernelFn)] = &[("ElementwiseChain", elementwise_chain)];
