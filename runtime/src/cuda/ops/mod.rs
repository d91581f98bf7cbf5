//! Device implementations of ops, by family, and the table [`find`] that the backend looks
//! instructions up in. An implementation either produces every output on the device or
//! answers [`DevError::Host`] (a case it does not cover), so the CPU kernel remains the
//! reference for every op and the device path only ever adds speed.

mod attention;
pub(crate) mod chain;
mod elementwise;
mod flash;
mod layout;
mod loss;
mod matmul;
mod norm;
mod optim;
mod reduce;
mod softmax;

use super::device::Gpu;
use super::launch::{addr, host, DevError, DevResult};
use super::value::{alloc, CudaValue};
use crate::error::KernelError;
use crate::ops::OpCtx;
use crate::tensor::{Storage, Tensor};
use adaptc_ir::{DataType, OpKey};

/// A device implementation: inputs by slot (`None` for omitted optional ones), outputs in
/// slot order.
pub type DevOp = fn(&Gpu, &OpCtx, &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>>;

const ADAPTC: &str = "ai.adaptc";

/// The device implementation of an op, if there is one.
pub fn find(op: &OpKey) -> Option<DevOp> {
    let default = adaptc_ir::is_default_domain(&op.domain);
    let table: &[(&str, DevOp)] = if default {
        DEFAULT_OPS
    } else if op.domain == ADAPTC {
        ADAPTC_OPS
    } else {
        return None;
    };
    table.iter().find(|(name, _)| *name == op.op_type).map(|(_, f)| *f)
}

const DEFAULT_OPS: &[(&str, DevOp)] = &[
    ("Neg", elementwise::unary),
    ("Exp", elementwise::unary),
    ("Log", elementwise::unary),
    ("Sqrt", elementwise::unary),
    ("Reciprocal", elementwise::unary),
    ("Sigmoid", elementwise::unary),
    ("Tanh", elementwise::unary),
    ("Erf", elementwise::unary),
    ("Gelu", elementwise::unary),
    ("Relu", elementwise::unary),
    ("Abs", elementwise::unary),
    ("Cos", elementwise::unary),
    ("Sin", elementwise::unary),
    ("Floor", elementwise::unary),
    ("Ceil", elementwise::unary),
    ("Softplus", elementwise::unary),
    ("LeakyRelu", elementwise::unary),
    ("Clip", elementwise::clip),
    ("IsNaN", elementwise::is_nan),
    ("Add", elementwise::binary),
    ("Sub", elementwise::binary),
    ("Mul", elementwise::binary),
    ("Div", elementwise::binary),
    ("Max", elementwise::binary),
    ("Min", elementwise::binary),
    ("Pow", elementwise::binary),
    ("Sum", elementwise::sum),
    ("Equal", elementwise::compare),
    ("Less", elementwise::compare),
    ("LessOrEqual", elementwise::compare),
    ("Greater", elementwise::compare),
    ("GreaterOrEqual", elementwise::compare),
    ("And", elementwise::logic),
    ("Or", elementwise::logic),
    ("Xor", elementwise::logic),
    ("Not", elementwise::not),
    ("Where", elementwise::where_),
    ("Cast", elementwise::cast),
    ("CastLike", elementwise::cast),
    ("Reshape", layout::reshape_like),
    ("Flatten", layout::reshape_like),
    ("Squeeze", layout::reshape_like),
    ("Unsqueeze", layout::reshape_like),
    ("Identity", layout::identity),
    ("Shape", layout::shape_of),
    ("Size", layout::shape_of),
    ("Transpose", layout::transpose),
    ("Expand", layout::expand),
    ("Slice", layout::slice),
    ("Concat", layout::concat),
    ("Split", layout::split),
    ("Gather", layout::gather),
    ("GatherND", layout::gather_nd),
    ("MatMul", matmul::matmul),
    ("Gemm", matmul::gemm),
    ("ReduceSum", reduce::reduce),
    ("ReduceMean", reduce::reduce),
    ("ReduceMax", reduce::reduce),
    ("ReduceMin", reduce::reduce),
    ("ReduceSumSquare", reduce::reduce),
    ("Softmax", softmax::softmax),
    ("LogSoftmax", softmax::softmax),
    ("LayerNormalization", norm::layer_norm),
    ("SoftmaxCrossEntropyLoss", loss::softmax_cross_entropy),
];

const ADAPTC_OPS: &[(&str, DevOp)] = &[
    ("MatMulTrans", matmul::matmul_trans),
    ("MatMulAddBias", matmul::matmul_add_bias),
    ("SumToShape", reduce::sum_to_shape),
    ("ReduceGrad", reduce::reduce_grad),
    ("SoftmaxGrad", softmax::softmax_grad),
    ("AddSoftmax", softmax::add_softmax),
    ("IsNaNWhere", elementwise::is_nan_where),
    ("ElementwiseChain", chain::elementwise_chain),
    ("GeluGrad", elementwise::gelu_grad),
    ("LayerNormalizationGrad", norm::layer_norm_grad),
    ("SoftmaxCrossEntropyLossGrad", loss::softmax_cross_entropy_grad),
    ("SoftmaxCrossEntropyLoss", loss::softmax_cross_entropy_f32),
    ("IndexMapGrad", layout::index_map_grad),
    ("SoftmaxAttention", attention::softmax_attention),
    ("SoftmaxAttentionGrad", attention::softmax_attention_grad),
    ("ClipGradNorm", optim::clip_grad_norm),
    ("AdamW", optim::adamw),
];

/// Every op the device implements, as `domain::Op` (the parity suite checks each one).
pub fn covered_ops() -> Vec<String> {
    let d = DEFAULT_OPS.iter().map(|(n, _)| n.to_string());
    let a = ADAPTC_OPS.iter().map(|(n, _)| format!("{ADAPTC}::{n}"));
    d.chain(a).collect()
}

// ------------------------------------------------------------------ helpers the families share

/// Input `i`, which the op requires.
fn req<'a>(inputs: &[Option<&'a CudaValue>], i: usize) -> DevResult<&'a CudaValue> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| DevError::Kernel(KernelError::Invalid(format!("input {i} is required"))))
}

/// Input `i` if given.
fn opt<'a>(inputs: &[Option<&'a CudaValue>], i: usize) -> Option<&'a CudaValue> {
    inputs.get(i).copied().flatten()
}

/// Refuses (to the host) anything but f32.
fn want_f32(v: &CudaValue) -> DevResult<()> {
    if v.dtype() == DataType::Float {
        Ok(())
    } else {
        host(format!("{} (the device kernels compute in f32)", v.dtype()))
    }
}

/// The one element type of `vals`. Mixed types go to the host: the CPU kernel either takes
/// them (Pow's exponent, half-precision products widened) or gives the error.
fn common_dtype(vals: &[&CudaValue]) -> DevResult<DataType> {
    let Some(d) = vals.first().map(|v| v.dtype()) else { return host("no operands") };
    match vals.iter().find(|v| v.dtype() != d) {
        Some(v) => host(format!("operands of different types ({d} and {})", v.dtype())),
        None => Ok(d),
    }
}

/// Integer values of a (small) parameter input: downloaded once if it lives on the device.
fn host_ints(gpu: &Gpu, v: &CudaValue) -> DevResult<Vec<i64>> {
    Ok(crate::ops::util::ints(v.host(gpu)?)?)
}

/// A host stand-in with `v`'s shape and no meaningful data (zeroed bytes, which the allocator
/// maps lazily), for the CPU kernels that only compute a shape.
fn shape_proxy(v: &CudaValue) -> DevResult<Tensor> {
    Tensor::new(v.shape().to_vec(), Storage::U8(vec![0; v.numel()])).map_err(|e| DevError::Device(e.to_string()))
}

/// A new device value of `shape` and `dtype`, with its buffer, ready for a kernel to fill.
fn output(gpu: &Gpu, shape: Vec<usize>, dtype: DataType) -> DevResult<(cudarc::driver::CudaSlice<u8>, Vec<usize>)> {
    let n = crate::tensor::numel(&shape).ok_or_else(|| KernelError::Invalid(format!("shape {shape:?} overflows")))?;
    Ok((alloc(gpu, dtype, n)?, shape))
}

/// Wraps a filled buffer as a value.
fn done(mem: cudarc::driver::CudaSlice<u8>, shape: Vec<usize>, dtype: DataType) -> CudaValue {
    CudaValue::from_device(shape, dtype, std::sync::Arc::new(mem))
}

/// Device address of a value's buffer (uploading it first if needed).
fn dptr(gpu: &Gpu, v: &CudaValue) -> DevResult<u64> {
    Ok(addr(v.device(gpu)?.as_ref(), &gpu.stream))
}

/// Launches kernel `$name` with `$cfg` and the given parameters (references to locals, in the
/// kernel's order and types: pointers as `u64` addresses, `long long` as `i64`, `int` as `i32`).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let f = $gpu.function($name)?;
        let mut b = $gpu.stream.launch_builder(f);
        $( b.arg($arg); )*
        // SAFETY: the call site passes exactly the parameters the kernel declares, in order and
        // of the declared types, and every address belongs to a buffer that outlives the launch
        // (buffers are freed in stream order).
        unsafe { b.launch($cfg) }.map(|_| ()).map_err($crate::cuda::launch::DevError::from)
    }};
}
pub(crate) use launch;
