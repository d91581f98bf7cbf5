//! Typed errors of the runtime. Each names what is at fault: the node and its op, the input,
//! or the file, so that a user can find the problem in their model or data.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// No kernel exists for an op (found at lowering, before anything runs).
    #[error("node `{node}` ({op}): unsupported op{}", if .reason.is_empty() { String::new() } else { format!(": {}", .reason) })]
    Unsupported { node: String, op: String, reason: String },

    /// A kernel refused its inputs or attributes (bad shapes, out-of-range indices, …).
    #[error("node `{node}` ({op}): {reason}")]
    Kernel { node: String, op: String, reason: String },

    /// The caller's inputs do not match the model's declared inputs.
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },

    /// The graph cannot be lowered (missing values, cycles, non-tensor types).
    #[error("cannot lower the graph: {0}")]
    Lowering(String),

    /// A tensor cannot be represented on the host (unsupported element type, bad size).
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },

    #[error("backend `{backend}`: {reason}")]
    Backend { backend: String, reason: String },

    #[error(transparent)]
    Ir(#[from] adaptc_ir::IrError),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The error a kernel returns: the failing node and op are filled in by the executor, which
/// knows them; kernels only say what is wrong.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The inputs or attributes are invalid for the op.
    #[error("{0}")]
    Invalid(String),
    /// A valid case this runtime does not implement (an attribute mode, an element type).
    #[error("{0}")]
    Unsupported(String),
}

impl KernelError {
    /// The error for `node` running `op`.
    pub fn at(self, node: &str, op: &str) -> RuntimeError {
        let (node, op) = (node.to_string(), op.to_string());
        match self {
            KernelError::Invalid(reason) => RuntimeError::Kernel { node, op, reason },
            KernelError::Unsupported(reason) => RuntimeError::Unsupported { node, op, reason },
        }
    }
}

/// `bail!`-like shorthand for kernels: invalid input.
macro_rules! kbail {
    ($($arg:tt)*) => { return Err($crate::error::KernelError::Invalid(format!($($arg)*))) };
}
pub(crate) use kbail;

/// A case the runtime does not implement.
macro_rules! unsupported {
    ($($arg:tt)*) => { return Err($crate::error::KernelError::Unsupported(format!($($arg)*))) };
}
pub(crate) use unsupported;

pub type KResult<T> = std::result::Result<T, KernelError>;
