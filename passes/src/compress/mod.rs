//! Compression passes: weight quantization and its inverse, layer and magnitude pruning,
//! low-rank factorization.
//!
//! - [`quantize`]: `quantize-weights` — round-to-nearest int8/int4 quantization of linear-layer
//!   weights, per output channel or in blocks along the input features, written as standard
//!   ONNX `DequantizeLinear` (QDQ) or as onnxruntime's `com.microsoft::MatMulNBits`, with a
//!   per-layer error and size report;
//! - [`dequantize`]: `dequantize-weights` — QDQ weights and `MatMulNBits` back to float
//!   weights with the exact dequantized values, reporting what a re-quantization would add;
//! - [`prune_layers`]: `prune-layers` — removes whole transformer blocks along the residual
//!   stream, named or chosen by [`block_distance`] on calibration data;
//! - [`prune_channels`]: `prune-channels` — structured pruning of FFN intermediate channels and
//!   attention heads, cutting the weights themselves (the model really shrinks), with a
//!   per-block report;
//! - [`quant`]: the numbers (grids, rounding, packing, the operand layouts), shared by the
//!   quantization passes;
//! - [`opset`]: raising a model's default-domain opset (DequantizeLinear with int4 or blocks
//!   needs opset 21) only when no operator of the graph changes meaning on the way;
//! - [`prune`]: `prune-weights` — magnitude pruning of linear-layer weights in place,
//!   unstructured or `N:M` (2:4) along the input features; [`sparsity`] holds the rules;
//! - [`factorize`]: `factorize-lowrank` — a layer's weight replaced by truncated-SVD factors
//!   `A·B` (a rank, or the energy to keep), two MatMuls; [`lowrank`] holds the numbers;
//! - [`layer_weights`]: the selected layers' weights, grouped and checked for a pass that
//!   rewrites their values; [`parallel`] and [`report`]: per-weight threads, JSON reports.
//!
//! ```no_run
//! use adaptc_passes::{PassManager, Registry};
//! let mut model = adaptc_ir::onnx::load("bert.onnx".as_ref())?;
//! let pipeline = "quantize-weights{bits=4 block=32 scheme=asym format=qdq report=quant.json}";
//! let report = PassManager::new(&Registry::builtin(), pipeline)?.run(&mut model)?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod block_distance;
pub mod dequantize;
pub mod factorize;
pub mod layer_weights;
pub mod lowrank;
pub mod opset;
#[rustfmt::skip]
mod opset_history;
pub mod parallel;
pub mod prune;
pub mod prune_channels;
pub mod prune_layers;
pub mod quant;
pub mod quantize;
pub mod report;
pub mod sparsity;

pub use dequantize::DequantizeWeights;
pub use factorize::FactorizeLowrank;
pub use lowrank::RankRule;
pub use prune::PruneWeights;
pub use prune_channels::PruneChannels;
pub use prune_layers::PruneLayers;
pub use quant::{Grid, QuantizedMatrix, Scheme};
pub use quantize::{Format, QuantizeWeights};
pub use sparsity::Pattern;
