//! Pattern matching over the IR: finding the structures passes rewrite.
//!
//! The linear-layer matcher ([`find_linear_layers`], [`match_linear`]) recognises `y = x·W + b`
//! in every form exporters produce — `MatMul(x, W)`, `MatMul` + `Add(bias)` in either operand
//! order, `Gemm` with `transB` 0 or 1, `MatMul(x, Transpose(W))` — and reports the activation,
//! the weight and its orientation, the bias, the value holding the result and the PyTorch
//! module path (from `pkg.torch.onnx.name_scopes` metadata, TorchScript node names or parameter
//! names, see [`module_path`]). Attention MatMuls (two activations) are not linear layers.
//!
//! Preconditions: none beyond a well-formed graph; weights are only looked at through their
//! dtype and shape, so matching never reads tensor bytes. Matching changes nothing; a failed
//! match says why ([`NoMatch::reason`]).
//!
//! ```no_run
//! use adaptc_passes::pattern::{block_index, find_linear_layers};
//! let model = adaptc_ir::onnx::load("bert.onnx".as_ref())?;
//! for layer in find_linear_layers(&model.graph) {
//!     let path = layer.module_path.as_deref().unwrap_or("?");
//!     println!("{path} [{} -> {}] block {:?}", layer.in_features, layer.out_features, block_index(path));
//! }
//! # Ok::<(), adaptc_ir::IrError>(())
//! ```
//!
//! [`find_block_stacks`] finds the repeated transformer blocks and the residual stream value
//! each one reads and hands on (what `prune-layers` cuts along).
//!
//! Passes that target modules PEFT-style (`targets=query,value`) match on the last component
//! of [`LinearLayer::module_path`].

pub mod blocks;
pub mod linear;
pub mod module_path;

pub use blocks::{find_block_stacks, node_block, Block, BlockStack};
pub use linear::{
    constant_tensor, find_linear_layers, linear_candidates, match_linear, LinearForm, LinearLayer, NoMatch,
    WeightLayout,
};
pub use module_path::{block_index, block_of, parse_name_scopes, PathSource};
