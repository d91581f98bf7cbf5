//! Gradient kernels: the ops of the `ai.adaptc` domain that the autodiff pass emits for the
//! backward graph. Each is the vector–Jacobian product of a forward ONNX op (or of a family,
//! for [`index_map_grad`]), written once over f32 (the training path: contiguous slices,
//! rows across threads, vectorisable math) and f64 (the finite-difference tests). Half-type
//! gradients (an `autocast` graph's bf16 products) run in f32 and are rounded once on the way
//! out ([`in_f32`]), as a GPU library computes them.
//!
//! One op per file; [`common`] holds the broadcasting moves and [`real`] the float math they
//! share.

pub mod common;
pub mod real;

pub mod gelu_grad;
pub mod index_map_grad;
pub mod layer_norm_grad;
pub mod matmul_trans;
pub mod reduce_grad;
pub mod softmax_cross_entropy_loss_grad;
pub mod softmax_grad;
pub mod sum_to_shape;

use super::matmul::in_f32;
use super::KernelFn;

/// `(op type, kernel)` entries whose kernel widens half-type operands to f32 first, then
/// (after `;`) entries whose kernel handles the types itself.
macro_rules! widening {
    ($($name:literal => $kernel:path),* $(,)?; $($own:literal => $own_kernel:path),* $(,)?) => {
        &[$(($name, {
            fn k(c: &super::OpCtx, i: &super::Inputs) -> crate::error::KResult<Vec<crate::tensor::Tensor>> {
                in_f32(c, i, $kernel).unwrap_or_else(|| $kernel(c, i))
            }
            k as KernelFn
        }),)* $(($own, $own_kernel as KernelFn)),*]
    };
}

/// The `ai.adaptc` ops, by op type.
pub const OPS: &[(&str, KernelFn)] = widening![
    "SumToShape" => sum_to_shape::sum_to_shape,
    "MatMulTrans" => matmul_trans::matmul_trans,
    "SoftmaxGrad" => softmax_grad::softmax_grad,
    "LayerNormalizationGrad" => layer_norm_grad::layer_norm_grad,
    "GeluGrad" => gelu_grad::gelu_grad,
    "ReduceGrad" => reduce_grad::reduce_grad,
    "IndexMapGrad" => index_map_grad::index_map_grad;
    // Widens bf16 scores itself and writes the type its `to` attribute asks for.
    "SoftmaxCrossEntropyLossGrad" => softmax_cross_entropy_loss_grad::softmax_cross_entropy_loss_grad,
];
