//! The CUDA backend (cargo feature `cuda`): device buffers, NVRTC-compiled kernels and cuBLAS
//! GEMMs behind the same [`Backend`](crate::backend::Backend) trait as the CPU backend, so plans
//! and sessions do not change.
//!
//! What a machine needs at run time: an NVIDIA driver for CUDA 13 (`libcuda.so`), and
//! `libcublas.so.13` and `libnvrtc.so.13` on the library path (the CUDA 13 toolkit, or the
//! `nvidia-cublas` and `nvidia-cuda-nvrtc` wheels). Nothing CUDA is needed to build: cudarc
//! loads the libraries when a session opens the device, and [`probe`] turns a missing library
//! or device into an error rather than the panic cudarc would give.
//!
//! How a graph runs here:
//! - every value is a [`CudaValue`] that lives on the host, the device or both, copied across at
//!   most once and only when a reader needs it there;
//! - an instruction runs on the device when [`ops`] has an implementation for its op and
//!   inputs, and on the host (the CPU kernel) otherwise, or when all its inputs are small host
//!   values (shape arithmetic: `Shape → Gather → Concat → Reshape` never touches the device);
//! - each host fallback and each copy is counted, and `--stats` prints the counts.

mod backend;
mod compile;
mod device;
mod graph;
mod launch;
mod ops;
mod value;

pub use backend::CudaBackend;
pub use compile::{compile, compile_kernels, nvrtc_available, Contraction, KERNEL_SOURCE, PRELUDE};
pub(crate) use device::Gpu;
pub use device::{probe, ENTRY_POINTS};
pub(crate) use graph::StepGraph;
pub(crate) use launch::{addr as address, DevError};
pub use ops::chain::specialised_source;
pub use ops::covered_ops;
pub use value::CudaValue;
pub(crate) use value::DeviceMem;
