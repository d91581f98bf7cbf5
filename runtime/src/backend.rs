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

    /// The buffer's shape.
    fn shape<'a>(&self, b: &'a Self::Buffer) -> &'a [usize];

    /// Runs one instruction; returns one buffer per declared output slot (`None` for omitted
    /// optional outputs).
    fn execute(&self, ins: &Instruction, inputs: &[Option<&Self::Buffer>]) -> Result<Vec<Option<Self::Buffer>>>;

    /// Waits until all work submitted so far has finished (for per-instruction timings);
    /// synchronous backends have nothing to wait for.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Called at the start of every run (to reset per-run counters).
    fn begin_run(&self) {}

    /// Called after the last instruction, before the outputs are read: reports errors that
    /// asynchronous kernels could only flag (an index out of range).
    fn end_run(&self) -> Result<()> {
        Ok(())
    }

    /// Where the last run's instructions ran and what was copied (`None` for backends where
    /// everything runs in one place).
    fn report(&self) -> Option<Placement> {
        None
    }
}

/// Matches the outputs a kernel produced to the instruction's declared output slots: `None`
/// for slots the graph leaves empty, an error naming the node for a declared output the kernel
/// did not produce.
pub fn declared_outputs<B>(ins: &Instruction, outs: Vec<B>, label: &str, op: &str) -> Result<Vec<Option<B>>> {
    let mut outs = outs.into_iter();
    let mut result = Vec::with_capacity(ins.outputs.len());
    for (slot, want) in ins.outputs.iter().enumerate() {
        match (want, outs.next()) {
            (Some(_), Some(v)) => result.push(Some(v)),
            (None, _) => result.push(None),
            (Some(_), None) => {
                return Err(crate::error::RuntimeError::Unsupported {
                    node: label.to_string(),
                    op: op.to_string(),
                    reason: format!("output {slot} is not produced by this runtime"),
                })
            }
        }
    }
    Ok(result)
}

/// Where a run's instructions ran (by op) and what crossed between host and device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub backend: String,
    /// Op → instructions run on the device.
    pub device: std::collections::BTreeMap<String, usize>,
    /// Op → (instructions run on the host, why the first one was).
    pub host: std::collections::BTreeMap<String, (usize, String)>,
    pub uploads: usize,
    pub upload_bytes: usize,
    pub downloads: usize,
    pub download_bytes: usize,
    /// What CUDA graphs did in the run (`SessionOptions::cuda_graphs`): warming up, captured,
    /// replayed, or why they are off.
    pub graph: Option<String>,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{}: {} instructions on the device, {} uploads ({:.1} MiB), {} downloads ({:.1} MiB)",
            self.backend,
            self.device.values().sum::<usize>(),
            self.uploads,
            mib(self.upload_bytes),
            self.downloads,
            mib(self.download_bytes)
        )?;
        if !self.host.is_empty() {
            let host: Vec<String> = self.host.iter().map(|(op, (n, why))| format!("{op}×{n} ({why})")).collect();
            write!(f, "; on the host: {}", host.join(", "))?;
        }
        if let Some(g) = &self.graph {
            write!(f, "; CUDA graph: {g}")?;
        }
        Ok(())
    }
}
