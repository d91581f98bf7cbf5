//! The backend interface: where buffers live and how an instruction runs on them.
//!
//! The CPU backend is the first implementation and the numerical oracle; a CUDA backend
//! implements the same trait (device buffers, uploads and downloads, one kernel launch per
//! instruction) so plans and sessions do not change.

use crate::error::Result;
use crate::plan::Instruction;
use crate::tensor::Tensor;

pub trait Backend {
    /// A tensor resident on the device; cloning it shares the data.
    type Buffer: Clone;

    /// The backend's name for messages (`cpu`, `cuda:0`).
    fn name(&self) -> &str;

    /// Copies a host tensor to the device.
    fn upload(&self, t: &Tensor) -> Result<Self::Buffer>;

    /// Copies a buffer back to the host.
    fn download(&self, b: &Self::Buffer) -> Result<Tensor>;

    /// Bytes a buffer occupies (for the memory report).
    fn byte_size(&self, b: &Self::Buffer) -> usize;

    /// Identifies the memory behind a buffer: buffers that alias (a reshape of another) share
    /// it, so the memory report counts them once.
    fn storage_key(&self, b: &Self::Buffer) -> usize;

    /// Runs one instruction; returns one buffer per declared output slot (`None` for omitted
    /// optional outputs).
    fn execute(&self, ins: &Instruction, inputs: &[Option<&Self::Buffer>]) -> Result<Vec<Option<Self::Buffer>>>;
}
