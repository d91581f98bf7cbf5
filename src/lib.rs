//! adaptc: a compiler for model adaptation on ONNX graphs.
//!
//! This facade re-exports the crates: [`ir`] (graph IR and ONNX I/O), [`passes`] (pass
//! infrastructure and rewrites) and [`runtime`] (execution).

pub use adaptc_ir as ir;
pub use adaptc_passes as passes;
pub use adaptc_runtime as runtime;
