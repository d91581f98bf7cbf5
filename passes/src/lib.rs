//! adaptc's pass infrastructure and graph rewrites.
//!
//! Everything that changes a model is a [`Pass`] over the IR of `adaptc-ir`. Passes are named
//! and take options, so a whole transformation is one line of pipeline text, the same in the
//! CLI, in tests and in docs (MLIR style):
//!
//! ```
//! use adaptc_passes::{PassManager, Registry};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut model = adaptc_ir::Model::new(adaptc_ir::Graph::new("g"), 17);
//! let manager = PassManager::new(&Registry::builtin(), "fold-constants{max-bytes=65536},cse,dce")?;
//! let report = manager.run(&mut model)?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! - [`pipeline`]: the pipeline text format ([`Pipeline`], [`PassSpec`], [`OptionValue`]);
//! - [`options`]: typed, schema-checked option access for pass constructors ([`Options`]);
//! - [`registry`]: name → [`PassInfo`] (summary, option schema, example, constructor);
//! - [`manager`]: [`PassManager`] runs a pipeline with verify-each, print-after-change,
//!   per-pass timing and statistics, and stop-after-N for bisecting;
//! - [`pattern`]: matchers for the structures passes rewrite (linear layers);
//! - [`canonicalize`]: `dce`, `cse`, `fold-constants`;
//! - [`adapters`]: adapter insertion, merging and the records they leave in the model;
//! - [`peft`]: LoRA adapters to and from Hugging Face PEFT folders (safetensors + config);
//! - [`lower`]: `specialize-shapes`, `decompose` (concrete shapes and a smaller op set for a
//!   runtime);
//! - [`compress`]: `quantize-weights`, `dequantize-weights` (int8/int4 weights as
//!   DequantizeLinear or MatMulNBits, and back), `prune-layers` (whole blocks),
//!   `prune-channels` (structured pruning of FFN channels and attention heads), `prune-weights`
//!   (magnitude pruning, unstructured or 2:4), `factorize-lowrank` (truncated-SVD factors
//!   `W ≈ A·B`);
//! - [`heads`]: `add-head` (a trainable classification head producing `logits`);
//! - [`calibrate`]: running a model on sample rows for passes that choose by measurement.
//!
//! # Adding a pass in three steps
//!
//! 1. Write a type implementing [`Pass`] in a module of its family (e.g.
//!    `adapters/lora.rs`), starting with a doc comment: what it does, preconditions, what it
//!    preserves, an example pipeline. `run` returns a [`PassOutcome`] that says truthfully
//!    whether the model changed, with counters named `family.counter`.
//! 2. Describe it with a `fn info() -> PassInfo`: kebab-case verb name, one-line summary,
//!    the option schema ([`OptionInfo`]: name, kind, default, help), an example pipeline and a
//!    `build` function that reads its options through [`Options`] (so a bad value is an error
//!    naming the pass and the option, before anything runs).
//! 3. Register it in [`Registry::builtin`], and add tests: a golden dump of a small graph
//!    before/after, a numeric check where the rewrite preserves meaning, and negative tests
//!    (the failure reason, and that nothing changed).

pub mod adapters;
pub mod autodiff;
pub mod calibrate;
pub mod canonicalize;
pub mod compress;
pub mod heads;
pub mod lower;
pub mod manager;
pub mod options;
mod pass;
pub mod pattern;
pub mod peft;
pub mod pipeline;
pub mod registry;

pub use manager::{ManagerOptions, PassManager, PassRun, RunReport};
pub use options::{OptionInfo, OptionKind, Options};
pub use pass::{Pass, PassContext, PassError, PassOutcome};
pub use pipeline::{OptionValue, PassSpec, Pipeline};
pub use registry::{PassInfo, Registry};
