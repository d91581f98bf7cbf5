//! Compression passes: weight quantization and its inverse.
//!
//! - [`quantize`]: `quantize-weights` — round-to-nearest int8/int4 quantization of linear-layer
//!   weights, per output channel or in blocks along the input features, written as standard
//!   ONNX `DequantizeLinear` (QDQ) or as onnxruntime's `com.microsoft::MatMulNBits`, with a
//!   per-layer error and size report;
//! - [`dequantize`]: `dequantize-weights` — QDQ weights and `MatMulNBits` back to float
//!   weights with the exact dequantized values, reporting what a re-quantization would add;
//! - [`quant`]: the numbers (grids, rounding, packing, the operand layouts), shared by both;
//! - [`prune_channels`]: `prune-channels` — structured pruning of FFN intermediate channels and
//!   attention heads, cutting the weights themselves (the model really shrinks), with a
//!   per-block report;
//! - [`opset`]: raising a model's default-domain opset (DequantizeLinear with int4 or blocks
//!   needs opset 21) only when no operator of the graph changes meaning on the way.
//!
//! ```no_run
//! use adaptc_passes::{PassManager, Registry};
//! let mut model = adaptc_ir::onnx::load("bert.onnx".as_ref())?;
//! let pipeline = "quantize-weights{bits=4 block=32 scheme=asym format=qdq report=quant.json}";
//! let report = PassManager::new(&Registry::builtin(), pipeline)?.run(&mut model)?;
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod dequantize;
pub mod opset;
#[rustfmt::skip]
mod opset_history;
pub mod prune_channels;
pub mod quant;
pub mod quantize;

pub use dequantize::DequantizeWeights;
pub use prune_channels::PruneChannels;
pub use quant::{Grid, QuantizedMatrix, Scheme};
pub use quantize::{Format, QuantizeWeights};
