//! The CPU backend: buffers are shared host tensors and instructions call the registry's
//! kernels directly (which use rayon and the `gemm` crate for their parallel parts).

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::Result;
use crate::ops::{Inputs, OpCtx};
use crate::plan::Instruction;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buffer = Arc<Tensor>;

    fn name(&self) -> &str {
        "cpu"
    }

    fn upload(&self, t: &Tensor) -> Result<Arc<Tensor>> {
        Ok(Arc::new(t.clone()))
    }

    fn download(&self, b: &Arc<Tensor>) -> Result<Tensor> {
        Ok(b.as_ref().clone())
    }

    fn byte_size(&self, b: &Arc<Tensor>) -> usize {
        b.byte_size()
    }

    fn storage_key(&self, b: &Arc<Tensor>) -> usize {
        b.storage_key()
    }

    fn shape<'a>(&self, b: &'a Arc<Tensor>) -> &'a [usize] {
        b.shape()
    }

    fn execute(&self, ins: &Instruction, inputs: &[Option<&Arc<Tensor>>]) -> Result<Vec<Option<Arc<Tensor>>>> {
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(|b| b.map(Arc::as_ref)).collect();
        let ctx = OpCtx { node: &ins.node, opset: ins.opset };
        let (label, op) = ins.describe();
        let outs = (ins.kernel)(&ctx, &Inputs(&refs)).map_err(|e| e.at(&label, &op))?;
        crate::backend::declared_outputs(ins, outs.into_iter().map(Arc::new).collect(), &label, &op)
    }
}
