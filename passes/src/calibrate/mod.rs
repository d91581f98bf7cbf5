//! Running a model on sample data, for passes that choose what to change by measuring it
//! (`prune-layers{drop=2 by=angular}`).
//!
//! - [`data`]: calibration rows (JSONL, one object per row keyed by the model's input names)
//!   read into padded batches;
//! - [`observe`]: the model run by adaptc's CPU runtime on those batches, returning chosen
//!   intermediate values (made extra graph outputs of a copy; the model itself is untouched).

pub mod data;
pub mod observe;

pub use data::{read_batches, Batch};
pub use observe::observe;
