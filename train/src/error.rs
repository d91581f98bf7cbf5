//! [`TrainError`]: every failure of the training building blocks, naming the file, line,
//! parameter or checkpoint at fault.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors of `adaptc-train`.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Reading or writing a file or folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A row of a training or evaluation file is not usable (`line` is 1-based).
    #[error("{} line {line}: {reason}", file.display())]
    Row { file: PathBuf, line: usize, reason: String },

    /// A data file, or the model inputs it should feed, cannot be used as a whole.
    #[error("{}: {reason}", file.display())]
    Data { file: PathBuf, reason: String },

    /// A `tokenizer.json` cannot be loaded or used.
    #[error("tokenizer {}: {reason}", file.display())]
    Tokenizer { file: PathBuf, reason: String },

    /// A checkpoint folder is incomplete, corrupt or does not fit this run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },

    /// The checkpoint was written by a run with another configuration.
    #[error(
        "checkpoint {}: it was written by a run with configuration `{found}`, but this run's is \
         `{expected}`; resume with the same configuration, or train into a new output folder",
        path.display()
    )]
    ConfigMismatch { path: PathBuf, found: String, expected: String },

    /// Parameters, gradients and optimizer state do not fit together.
    #[error("optimizer: {0}")]
    Optimizer(String),

    /// A setting is out of range (a schedule with `warmup > total`, a batch size of 0, …).
    #[error("{0}")]
    Config(String),

    /// A metrics file cannot be read back (`line` is 1-based).
    #[error("{} line {line}: {reason}", file.display())]
    Metrics { file: PathBuf, line: usize, reason: String },

    #[error(transparent)]
    Runtime(#[from] adaptc_runtime::RuntimeError),

    /// Building the training graph (or another pass) failed.
    #[error(transparent)]
    Pass(#[from] adaptc_passes::PassError),

    /// The loss or the gradients stopped being finite; the step was not applied.
    #[error(
        "training stopped at step {step}: {what}; no update was applied and no non-finite weight was \
         written (lower --lr, or resume from the last checkpoint)"
    )]
    NonFinite { step: u64, what: String },
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn checkpoint(path: &Path, reason: impl Into<String>) -> TrainError {
        TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
