//! CUDA graphs: a whole run captured once and replayed, so a training step costs one launch
//! from the host instead of one per instruction.
//!
//! A graph replays the addresses it was captured with, so everything it reads or writes from
//! outside must stay where it was: the fed inputs are copied into buffers of the graph's own
//! before each launch; the carried state (weights, moments) is read from its buffers and the
//! step's new state copied back into them at the end of the graph, unless a kernel flagged an
//! error (a failed step leaves the state as it was, as an eager run does); the returned
//! outputs are copied into buffers the host reads after the launch. Memory the run allocates
//! while it is captured belongs to the graph (stream-ordered allocations become its nodes).
//!
//! Memory that must outlive the capture (what the capture uploads, the outputs' buffers) is
//! allocated on a side stream, which is never captured; such buffers are freed only when the
//! main stream is idle (a replay ends by reading its outputs).
//!
//! What cannot be replayed is refused while capturing, never silently baked in:
//! - reading a device value on the host ([`super::CudaValue::host`] fails): a host instruction
//!   on the step's data, whose result a replay would repeat;
//! - anything the driver refuses under capture (a synchronisation, a kernel compiled late).
//!
//! The fed inputs and the carried state are on the device only (no host copy) from the start
//! of such a run, so every value a host instruction computes comes from constants and shapes
//! alone, and uploading it once, as the capture does ([`Gpu::upload_bytes`]), is what each
//! replay would have done.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr};

use super::device::Gpu;
use super::launch::{addr, elementwise, DevError, DevResult};
use super::ops::launch;
use super::value::{CudaValue, DeviceMem};

/// A captured run and the buffers it was captured with.
pub struct StepGraph {
    graph: CudaGraph,
    /// Fed inputs by plan input index: the graph reads these buffers.
    pub inputs: Vec<(usize, Arc<CudaValue>)>,
    /// Returned outputs by plan output index: the graph writes these buffers last.
    pub outputs: Vec<(usize, Arc<CudaValue>)>,
    /// Uploads made during the capture, which the graph reads at every replay.
    _uploads: Vec<DeviceMem>,
    /// The captured run's peak of live bytes and where its instructions ran, reported for
    /// each replay.
    pub peak_bytes: usize,
    pub placement: Option<crate::backend::Placement>,
}

// SAFETY: the graph is only launched by the session that owns it, from one thread at a time
// (the session's runner holds it behind a lock); the driver's graph objects may be used from
// any thread when access is serialised.
unsafe impl Send for StepGraph {}
unsafe impl Sync for StepGraph {}

impl StepGraph {
    /// Launches the graph (the fed inputs must be in place).
    pub fn launch(&self) -> DevResult<()> {
        Ok(self.graph.launch()?)
    }
}

impl Gpu {
    /// Whether a run is being captured.
    pub fn capturing(&self) -> bool {
        self.capture.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Starts capturing the stream. Relaxed mode: the capture itself uploads values
    /// ([`Gpu::upload_bytes`]) with calls the stricter modes forbid.
    pub fn begin_capture(&self) -> DevResult<()> {
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
        *self.capture.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        Ok(())
    }

    /// Ends the capture and instantiates the graph; `inputs` and `outputs` are the buffers it
    /// was captured with. Every buffer the captured run allocated must be dropped by now.
    pub fn end_capture(
        &self,
        inputs: Vec<(usize, Arc<CudaValue>)>,
        outputs: Vec<(usize, Arc<CudaValue>)>,
    ) -> DevResult<StepGraph> {
        let uploads = self.capture.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0))?;
        let graph = graph.ok_or_else(|| DevError::Device("the capture recorded nothing".into()))?;
        graph.upload()?;
        Ok(StepGraph { graph, inputs, outputs, _uploads: uploads, peak_bytes: 0, placement: None })
    }

    /// Ends a capture that failed, dropping what it recorded, and clears the errors that the
    /// frees of its buffers left in the context, so the eager run that follows starts clean.
    pub fn abort_capture(&self) {
        self.capture.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The capture may be invalidated already; either way nothing of it is kept.
        let _ = self.stream.end_capture(CUgraphInstantiate_flags(0));
        let _ = self.ctx.check_err();
    }

    /// Copies host bytes into new device memory. While capturing, the memory is allocated
    /// and filled at once on the side stream, outside the graph (which reads it at every
    /// replay, so it is kept with the graph); otherwise on the stream, from its pool.
    pub fn upload_bytes(&self, bytes: &[u8]) -> DevResult<DeviceMem> {
        let mut capture = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        let mem = match capture.as_mut() {
            None if bytes.is_empty() => Arc::new(self.stream.alloc_zeros::<u8>(1)?),
            None => Arc::new(self.stream.clone_htod(bytes)?),
            Some(kept) => {
                // SAFETY: filled right below (an empty upload's one byte is never read).
                let mut mem = unsafe { self.side.alloc::<u8>(bytes.len().max(1)) }?;
                if !bytes.is_empty() {
                    self.side.memcpy_htod(bytes, &mut mem)?;
                }
                self.side.synchronize()?;
                let mem = Arc::new(mem);
                kept.push(mem.clone());
                mem
            }
        };
        self.count_upload(bytes.len());
        Ok(mem)
    }

    /// Device memory that outlives a capture (the outputs it hands to the host): allocated on
    /// the side stream, so the graph does not own it. Used only by the stream after the
    /// allocation has completed.
    pub fn lasting_alloc(&self, bytes: usize) -> DevResult<CudaSlice<u8>> {
        // SAFETY: the graph writes every byte before the host reads any.
        let mem = unsafe { self.side.alloc::<u8>(bytes.max(1)) }?;
        self.side.synchronize()?;
        Ok(mem)
    }

    /// The addresses of a `bytes`-byte copy from `src` to `dst`; `None` when there is nothing
    /// to copy (no bytes, or the same buffer).
    fn copy_addresses(&self, src: &CudaSlice<u8>, dst: &CudaSlice<u8>, bytes: usize) -> DevResult<Option<(u64, u64)>> {
        if src.len() < bytes || dst.len() < bytes {
            return Err(DevError::Device(format!("a {bytes}-byte copy between smaller buffers")));
        }
        let (s, d) = (addr(src, &self.stream), addr(dst, &self.stream));
        Ok((bytes > 0 && s != d).then_some((s, d)))
    }

    /// Copies `src`'s bytes into `dst` on the stream (recorded as a graph node while capturing).
    pub fn copy_device(&self, src: &CudaSlice<u8>, dst: &CudaSlice<u8>, bytes: usize) -> DevResult<()> {
        let Some((s, d)) = self.copy_addresses(src, dst, bytes)? else { return Ok(()) };
        // SAFETY: both buffers hold `bytes` bytes and live until the copy is done (the caller
        // keeps them; stream order keeps later frees after it).
        unsafe { cudarc::driver::result::memcpy_dtod_async(d, s, bytes, self.stream.cu_stream()) }?;
        Ok(())
    }

    /// Copies `src`'s bytes into `dst` unless a kernel of the run has flagged an error (a
    /// label out of range): the step's new state goes into the state's buffers only when the
    /// step succeeded, so a failed replay leaves the state as it was, as a failed eager run
    /// does.
    pub fn copy_unless_flagged(&self, src: &CudaSlice<u8>, dst: &CudaSlice<u8>, bytes: usize) -> DevResult<()> {
        let Some((s, d)) = self.copy_addresses(src, dst, bytes)? else { return Ok(()) };
        let flag = self.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let f = addr(&*flag, &self.stream);
        let n = bytes as i64;
        launch!(self, "copy_unless_flagged", elementwise(bytes), &s, &d, &n, &f)
    }

    /// Copies a host tensor's bytes into existing device memory (a graph's input buffer).
    pub fn write_bytes(&self, bytes: &[u8], dst: &DeviceMem) -> DevResult<()> {
        if bytes.len() > dst.len() {
            return Err(DevError::Device(format!("{} bytes into a {}-byte buffer", bytes.len(), dst.len())));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // The buffer is shared with the graph (an `Arc`): copy through its address.
        let (d, _g) = dst.device_ptr(&self.stream);
        // SAFETY: `dst` holds at least `bytes.len()` bytes; a copy from pageable memory returns
        // once the source has been read.
        unsafe { cudarc::driver::result::memcpy_htod_async(d, bytes, self.stream.cu_stream()) }?;
        self.count_upload(bytes.len());
        Ok(())
    }

    /// Hands the default pool's cached memory back to the driver (after a capture, the graph
    /// has memory of its own and the eager runs' cache would only double the footprint).
    pub fn trim_pool(&self) {
        if let Ok(Some(pool)) = super::device::default_pool(&self.ctx) {
            // SAFETY: the device's default pool, which lives as long as the context.
            let _ = unsafe { cudarc::driver::result::mem_pool::trim_to(pool, 0) };
        }
    }
}
