//! Typed errors of the IR crate. Every error names what it is about: the file, the tensor, the
//! node or the value, so that a user can find the fault in their model.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IrError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid ONNX model: {reason}")]
    Decode { path: PathBuf, reason: String },

    #[error("{path}: the model exceeds a safety limit: {reason}")]
    Limit { path: PathBuf, reason: String },

    #[error("external data of tensor `{tensor}` ({file}): {reason}")]
    ExternalData { tensor: String, file: String, reason: String },

    #[error("tensor `{tensor}` {reason}")]
    Tensor { tensor: String, reason: String },

    #[error("node `{node}` ({op}): {reason}")]
    Node { node: String, op: String, reason: String },

    #[error("invalid graph `{graph}`: {reason}")]
    Invalid { graph: String, reason: String },

    #[error("invalid graph: {}", .0.join("; "))]
    Verify(Vec<String>),

    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl IrError {
    pub(crate) fn tensor(tensor: &str, reason: impl Into<String>) -> IrError {
        IrError::Tensor { tensor: tensor.to_string(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> IrError {
        IrError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
