//! The building blocks of `adaptc train`, each independent of how gradients are computed:
//!
//! - [`optimizer`]: AdamW with PyTorch's semantics, and global-norm gradient clipping;
//! - [`schedule`]: learning-rate warmup and cosine / linear / constant decay;
//! - [`data`]: JSONL rows (token ids, or text through [`tokenize`]) checked against the
//!   model's inputs, and padded batches as runtime tensors;
//! - [`loader`]: the deterministic per-epoch shuffle and the resumable [`Position`];
//! - [`checkpoint`]: atomic `checkpoints/step-<N>/` folders (parameters, optimizer state, RNG,
//!   data position, configuration fingerprint), the last K kept;
//! - [`metrics`]: the `metrics.jsonl` log, truncated on resume;
//! - [`plot`]: the loss chart, `loss.png`;
//! - [`step`]: one optimizer step inside the training graph (`append-adamw`: clip, AdamW,
//!   gradient accumulation; weights and moments kept in the session);
//! - [`trainer`]: the loop that ties them to the training graph and the runtime;
//! - [`artifacts`]: adapted/merged ONNX, the PEFT adapter and the plot, written at the end.
//!
//! Errors are [`TrainError`]s that name the file, line, parameter or checkpoint at fault.

pub mod artifacts;
mod atomic;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod loader;
pub mod metrics;
pub mod optimizer;
pub mod plot;
pub mod schedule;
pub mod step;
pub mod tokenize;
pub mod trainer;

pub use checkpoint::Checkpoint;
pub use data::{Batch, DataOptions, Dataset, Task};
pub use error::{Result, TrainError};
pub use loader::{Loader, Position};
pub use metrics::{EvalRecord, MetricsWriter, Record, StepRecord};
pub use optimizer::{clip_grad_norm, clip_grad_norm_tensors, AdamW, AdamWConfig, Moments, ParamGrad};
pub use plot::plot_loss;
pub use schedule::{Decay, Schedule};
pub use tokenize::TextTokenizer;
pub use trainer::{train, Objective, Observer, Outcome, RunDir, Stop, TrainConfig};
