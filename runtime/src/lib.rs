//! adaptc's execution runtime: lowering an IR graph to an execution plan and running it on a
//! backend.
//!
//! ```no_run
//! use std::collections::HashMap;
//! use adaptc_runtime::{Session, SessionOptions, Tensor};
//! let model = adaptc_ir::onnx::load("model.onnx".as_ref())?;
//! let session = Session::new(&model, SessionOptions::default())?;
//! let x = Tensor::from_vec(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0])?;
//! let outputs = session.run(HashMap::from([("x".to_string(), x)]))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layers: [`tensor`] (host tensors) → [`ops`] (CPU kernels) → [`registry`] (op → kernel) →
//! [`plan`] (lowering) + [`memory`] (liveness) → [`backend`] / [`cpu`] → [`session`].

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod fuse;
pub mod memory;
pub mod npy;
pub mod ops;
pub mod plan;
pub mod profile;
pub mod registry;
pub mod replay;
pub mod session;
pub mod tensor;

pub use backend::{Backend, Placement};
pub use error::{Result, RuntimeError};
pub use profile::Profile;
pub use session::{check_device, Device, RunStats, Session, SessionOptions};
pub use tensor::{Storage, Tensor};
