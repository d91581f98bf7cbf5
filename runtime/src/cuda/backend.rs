//! [`CudaBackend`]: runs each instruction on the device when [`super::ops`] covers it, on the
//! host otherwise, and keeps count of both and of the copies in between.

use std::sync::Arc;

use super::device::Gpu;
use super::launch::DevError;
use super::ops;
use super::value::CudaValue;
use crate::backend::{Backend, Placement};

/// The backend's outputs, matched to the instruction's slots.
fn declared(ins: &Instruction, outs: Vec<CudaValue>, label: &str, op: &str) -> Result<Vec<Option<Arc<CudaValue>>>> {
    crate::backend::declared_outputs(ins, outs.into_iter().map(Arc::new).collect(), label, op)
}
use crate::error::{Result, RuntimeError};
use crate::ops::{Inputs, OpCtx};
use crate::plan::Instruction;
use crate::tensor::Tensor;

/// Inputs this small, all on the host, keep an instruction on the host (shape arithmetic,
/// masks built from `attention_mask`): launching a kernel would cost more than the work.
/// `ADAPTC_CUDA_HOST_ELEMENTS` overrides it (0: every op the device has goes to the device,
/// as the parity suite wants).
const HOST_ELEMENTS: usize = 1 << 14;

/// The element count of an op's output when small inputs can broadcast into a large one
/// (`Expand` to its shape input's value, elementwise ops to their inputs' common shape), so such
/// an op runs on the device when its *output* is large: the causal masks of exported decoders
/// are built from `[b, s]` and `[s]` values into `[b, 1, s, s]`, and on the host every step
/// would copy them over. `None` for other ops, or when the shapes do not broadcast (the kernel
/// reports that).
fn broadcast_elements(ins: &Instruction, inputs: &[Option<&Arc<CudaValue>>]) -> Option<usize> {
    let op = ins.node.op();
    let chain = op.domain == crate::registry::ADAPTC_DOMAIN && op.op_type == "ElementwiseChain";
    if !adaptc_ir::is_default_domain(&op.domain) && !chain {
        return None;
    }
    let shapes: Vec<Vec<usize>> = match op.op_type.as_str() {
        "Expand" => {
            let x = inputs.first().copied().flatten()?;
            let dims = inputs.get(1).copied().flatten()?;
            let host = dims.host_if_present()?;
            let dims: Vec<usize> =
                host.as_slice::<i64>()?.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
            vec![x.shape().to_vec(), dims]
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Where" | "And" | "Or" | "Xor" | "Equal" | "Less"
        | "LessOrEqual" | "Greater" | "GreaterOrEqual" => inputs.iter().flatten().map(|v| v.shape().to_vec()).collect(),
        // A chain's int64 inputs are SumToShape dims, not elements.
        "ElementwiseChain" => inputs
            .iter()
            .flatten()
            .filter(|v| v.dtype() != adaptc_ir::DataType::Int64)
            .map(|v| v.shape().to_vec())
            .collect(),
        _ => return None,
    };
    let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    crate::ops::util::broadcast_shapes(&refs).ok().map(|s| s.iter().product())
}

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    host_elements: usize,
}

impl CudaBackend {
    /// Opens device `ordinal`, compiling the kernels for it; errors (no driver, no device, no
    /// cuBLAS or NVRTC) say what is missing.
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        let host_elements =
            std::env::var("ADAPTC_CUDA_HOST_ELEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(HOST_ELEMENTS);
        Ok(CudaBackend { gpu: Gpu::shared(ordinal)?, host_elements })
    }

    /// The device, for what runs whole runs rather than instructions (CUDA graphs).
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn backend_error(&self, reason: String) -> RuntimeError {
        RuntimeError::Backend { backend: self.gpu.name.clone(), reason }
    }

    /// The instruction on the host: inputs downloaded where needed, the CPU kernel, outputs
    /// left on the host until a device reader uploads them.
    fn run_on_host(
        &self,
        ins: &Instruction,
        inputs: &[Option<&Arc<CudaValue>>],
    ) -> Result<Vec<Option<Arc<CudaValue>>>> {
        let (label, op) = ins.describe();
        let mut refs: Vec<Option<&Tensor>> = Vec::with_capacity(inputs.len());
        for v in inputs {
            refs.push(match v {
                Some(v) => Some(v.host(&self.gpu).map_err(|e| self.dev_error(e, &label, &op))?),
                None => None,
            });
        }
        let ctx = OpCtx { node: &ins.node, opset: ins.opset };
        let outs = (ins.kernel)(&ctx, &Inputs(&refs)).map_err(|e| e.at(&label, &op))?;
        declared(ins, outs.into_iter().map(CudaValue::from_host).collect(), &label, &op)
    }

    fn dev_error(&self, e: DevError, label: &str, op: &str) -> RuntimeError {
        match e {
            DevError::Kernel(k) => k.at(label, op),
            DevError::Host(r) | DevError::Device(r) => self.backend_error(format!("node `{label}` ({op}): {r}")),
        }
    }
}

impl Backend for CudaBackend {
    type Buffer = Arc<CudaValue>;

    fn name(&self) -> &str {
        &self.gpu.name
    }

    fn upload(&self, t: &Tensor) -> Result<Arc<CudaValue>> {
        // Lazily: the copy happens when a device kernel first reads the value.
        Ok(Arc::new(CudaValue::from_host(t.clone())))
    }

    fn download(&self, b: &Arc<CudaValue>) -> Result<Tensor> {
        b.host(&self.gpu).cloned().map_err(|e| self.backend_error(format!("download: {e:?}")))
    }

    fn byte_size(&self, b: &Arc<CudaValue>) -> usize {
        b.byte_size()
    }

    fn storage_key(&self, b: &Arc<CudaValue>) -> usize {
        b.storage_key()
    }

    fn shape<'a>(&self, b: &'a Arc<CudaValue>) -> &'a [usize] {
        b.shape()
    }

    fn execute(&self, ins: &Instruction, inputs: &[Option<&Arc<CudaValue>>]) -> Result<Vec<Option<Arc<CudaValue>>>> {
        let (label, op) = ins.describe();
        let small_host = inputs.iter().flatten().all(|v| !v.on_device())
            && inputs.iter().flatten().map(|v| v.numel()).sum::<usize>() <= self.host_elements
            && self.host_elements > 0
            && broadcast_elements(ins, inputs).is_none_or(|n| n <= self.host_elements);
        let reason = match ops::find(ins.node.op()) {
            None => "no device kernel".to_string(),
            Some(_) if small_host => String::new(),
            Some(f) => {
                let ctx = OpCtx { node: &ins.node, opset: ins.opset };
                let vals: Vec<Option<&CudaValue>> = inputs.iter().map(|v| v.map(Arc::as_ref)).collect();
                match f(&self.gpu, &ctx, &vals) {
                    Ok(outs) => {
                        self.gpu.count_device_op(&op);
                        return declared(ins, outs, &label, &op);
                    }
                    Err(DevError::Host(reason)) => reason,
                    Err(e) => return Err(self.dev_error(e, &label, &op)),
                }
            }
        };
        if !reason.is_empty() {
            self.gpu.count_host_op(&op, &reason);
        }
        self.run_on_host(ins, inputs)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.stream.synchronize().map_err(|e| self.backend_error(format!("synchronize: {e}")))
    }

    fn begin_run(&self) {
        self.gpu.take_counters();
        // A run that failed before `end_run` may have left the flag set.
        let mut flag = self.gpu.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.gpu.stream.memset_zeros(&mut *flag);
    }

    fn end_run(&self) -> Result<()> {
        let mut flag = self.gpu.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let code = self.gpu.stream.clone_dtoh(&*flag).map_err(|e| self.backend_error(e.to_string()))?;
        let code = code.first().copied().unwrap_or(0);
        if code != 0 {
            self.gpu.stream.memset_zeros(&mut *flag).map_err(|e| self.backend_error(e.to_string()))?;
            let what = if code == 1 { "a Gather or GatherND index" } else { "a cross-entropy label" };
            return Err(self.backend_error(format!(
                "{what} was out of range (the kernel cannot name the node: run on the CPU backend for the details)"
            )));
        }
        Ok(())
    }

    fn report(&self) -> Option<Placement> {
        Some(self.gpu.take_counters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adaptc_ir::{Node, OpKey};

    fn instruction(op: &str) -> Instruction {
        let node = Node::new(OpKey::onnx(op), vec!["a".into(), "b".into()], vec!["y".into()]);
        let kernel = crate::registry::Registry::cpu().get(node.op()).expect("a CPU kernel").kernel;
        Instruction { node, kernel, opset: 21, inputs: vec![Some(0), Some(1)], outputs: vec![Some(2)] }
    }

    fn value(shape: Vec<usize>, v: Vec<i64>) -> Arc<CudaValue> {
        Arc::new(CudaValue::from_host(Tensor::from_vec(shape, v).unwrap()))
    }

    #[test]
    fn small_inputs_that_broadcast_into_a_large_output_are_seen() {
        // The decoder mask's batch-index grid: [b, 1, 1, 1] expanded to [b, 1, s, s].
        let x = value(vec![8, 1, 1, 1], (0..8).collect());
        let dims = value(vec![4], vec![8, 1, 2048, 2048]);
        assert_eq!(broadcast_elements(&instruction("Expand"), &[Some(&x), Some(&dims)]), Some(8 * 2048 * 2048));
        let (col, row) = (value(vec![64, 1], vec![0; 64]), value(vec![1, 64], vec![0; 64]));
        assert_eq!(broadcast_elements(&instruction("Add"), &[Some(&col), Some(&row)]), Some(64 * 64));
        assert_eq!(broadcast_elements(&instruction("Where"), &[Some(&col), Some(&row)]), Some(64 * 64));
        // Ops whose output is no larger than their inputs, and shapes that do not broadcast.
        assert_eq!(broadcast_elements(&instruction("Neg"), &[Some(&col)]), None);
        let bad = value(vec![5, 3], vec![0; 15]);
        assert_eq!(broadcast_elements(&instruction("Add"), &[Some(&col), Some(&bad)]), None);
        let negative = value(vec![2], vec![-1, 4]);
        assert_eq!(broadcast_elements(&instruction("Expand"), &[Some(&col), Some(&negative)]), None);
    }

    #[test]
    fn a_chains_size_leaves_out_its_sum_dims() {
        let node = Node::new(OpKey::new(crate::registry::ADAPTC_DOMAIN, "ElementwiseChain"), vec![], vec![]);
        let chain = Instruction {
            node,
            kernel: crate::ops::chain::elementwise_chain,
            opset: 1,
            inputs: vec![Some(0), Some(1), Some(2)],
            outputs: vec![Some(3)],
        };
        let f32s = |shape: Vec<usize>| {
            let n = shape.iter().product();
            Arc::new(CudaValue::from_host(Tensor::from_vec(shape, vec![0.0f32; n]).unwrap()))
        };
        let (col, row, dims) = (f32s(vec![64, 1]), f32s(vec![1, 64]), value(vec![3], vec![2, 64, 64]));
        assert_eq!(broadcast_elements(&chain, &[Some(&col), Some(&row), Some(&dims)]), Some(64 * 64));
    }
}
