//! CUDA sessions that replay a captured run (`SessionOptions::cuda_graphs`): the policy
//! ([`crate::replay`]) says when; this file runs the three kinds of run on the device.
//!
//! Every run of such a session, eager ones included, puts its fed inputs and carried state on
//! the device only, so the eager runs before a capture place each instruction as the capture
//! will (they compile its kernels and upload its constants), and so a host instruction that
//! reads the step's data has to download it, which the capture refuses
//! (`cuda/graph.rs` says why that keeps replays exact).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{collect_outputs, resolve_feeds, Binding, RunStats, Runner};
use crate::backend::Backend;
use crate::cuda::{CudaBackend, CudaValue, StepGraph};
use crate::error::{Result, RuntimeError};
use crate::plan::ExecPlan;
use crate::replay::{Next, ReplayKey, ReplayPolicy};
use crate::tensor::Tensor;

pub type Replays = ReplayPolicy<StepGraph>;

/// Device buffers by plan input or output index.
type Buffers = Vec<(usize, Arc<CudaValue>)>;

/// The replay policy of a session: off when `ADAPTC_PROFILE` times each instruction (which
/// synchronises after each).
pub fn replays() -> Replays {
    let mut policy = ReplayPolicy::default();
    if crate::profile::enabled() {
        policy.turn_off("ADAPTC_PROFILE times each instruction");
    }
    policy
}

/// Drops the capture (the state it reads is being replaced).
pub fn forget(replays: Option<&Mutex<Replays>>) {
    if let Some(r) = replays {
        r.lock().unwrap_or_else(|p| p.into_inner()).reset();
    }
}

impl Runner<CudaBackend> {
    pub(super) fn run_replayed(
        &self,
        plan: &ExecPlan,
        inputs: HashMap<String, Tensor>,
        bindings: &[Binding],
        replays: &Mutex<Replays>,
    ) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let gpu = self.backend.gpu().clone();
        let carried_in = self.state_on_device()?;
        let feeds = resolve_feeds(plan, inputs, &carried_in)?;
        let key = ReplayKey(feeds.iter().map(|(i, t)| (*i, t.shape().to_vec(), t.dtype())).collect());
        let mut policy = replays.lock().unwrap_or_else(|p| p.into_inner());
        let next = policy.next(&key);
        if next == Next::Replay {
            if let Some(graph) = policy.graph() {
                return self.replay(plan, &feeds, graph);
            }
        }
        let mut note = None;
        if next == Next::Capture {
            match self.capture(plan, &feeds, &carried_in, bindings) {
                Ok(graph) => {
                    gpu.trim_pool();
                    policy.captured(graph);
                    if let Some(graph) = policy.graph() {
                        let (out, mut stats) = self.replay(plan, &feeds, graph)?;
                        if let Some(p) = stats.placement.as_mut() {
                            p.graph = Some("captured and launched".into());
                        }
                        return Ok((out, stats));
                    }
                }
                Err(reason) => {
                    policy.failed(&reason);
                    note = Some(format!("capture failed ({reason}); ran instruction by instruction"));
                }
            }
        }
        let mut to_device = |t: Tensor| -> Result<Arc<CudaValue>> {
            let v = CudaValue::from_host(t).device_only(&gpu).map_err(|e| backend_error(&gpu.name, e))?;
            Ok(Arc::new(v))
        };
        let (out, mut stats) = self.run_fed(plan, feeds, &carried_in, bindings, &mut to_device)?;
        policy.ran_eagerly();
        if let Some(p) = stats.placement.as_mut() {
            p.graph = Some(match (policy.off(), note) {
                (Some(off), _) => format!("off: {off}"),
                (None, Some(note)) => note,
                (None, None) => "warming up (the next runs of these shapes are captured)".into(),
            });
        }
        Ok((out, stats))
    }

    /// The carried state as device-only values (uploaded if set from the host): a capture
    /// reads their buffers, and a host copy would go stale once a replay rewrites them.
    fn state_on_device(&self) -> Result<HashMap<usize, Arc<CudaValue>>> {
        let gpu = self.backend.gpu();
        let mut carried = self.carried();
        for v in carried.values_mut() {
            let only = v.device_only(gpu).map_err(|e| backend_error(&gpu.name, e))?;
            *v = Arc::new(only);
        }
        Ok(carried.clone())
    }

    /// Captures one run into a graph (nothing runs yet). The fed inputs get buffers of the
    /// graph's own; the returned outputs are copied into buffers the host reads after each
    /// launch, the carried ones back into the state's buffers. On failure, the reason.
    fn capture(
        &self,
        plan: &ExecPlan,
        feeds: &[(usize, Tensor)],
        carried_in: &HashMap<usize, Arc<CudaValue>>,
        bindings: &[Binding],
    ) -> std::result::Result<StepGraph, String> {
        let gpu = self.backend.gpu();
        let mut inputs = Vec::with_capacity(feeds.len());
        for (index, t) in feeds {
            let v = CudaValue::from_host(t.clone()).device_only(gpu).map_err(|e| e.to_string())?;
            inputs.push((*index, Arc::new(v)));
        }
        self.backend.begin_run();
        gpu.begin_capture().map_err(|e| format!("the stream cannot be captured: {e}"))?;
        // Everything the captured run allocates is dropped inside, while still capturing.
        let captured = self.captured_run(plan, &inputs, carried_in, bindings);
        let (outputs, peak) = match captured {
            Ok(done) => done,
            Err(e) => {
                gpu.abort_capture();
                return Err(e.to_string());
            }
        };
        let mut graph = gpu.end_capture(inputs, outputs).map_err(|e| {
            gpu.abort_capture();
            format!("the graph could not be built: {e}")
        })?;
        graph.peak_bytes = peak;
        graph.placement = self.backend.report();
        Ok(graph)
    }

    /// The run recorded under capture, then the copies of its outputs: the returned ones into
    /// new buffers outside the graph (returned with the run's peak bytes), the carried ones
    /// into the state's buffers. Its own buffers are dropped before it returns.
    fn captured_run(
        &self,
        plan: &ExecPlan,
        inputs: &Buffers,
        carried_in: &HashMap<usize, Arc<CudaValue>>,
        bindings: &[Binding],
    ) -> Result<(Buffers, usize)> {
        let gpu = self.backend.gpu();
        let err = |e| backend_error(&gpu.name, e);
        let (mut slots, mut usage) = self.bind(plan, inputs, carried_in);
        self.execute(plan, &mut slots, &mut usage)?;
        let (returned, carried_out) = collect_outputs::<CudaBackend>(plan, &slots, bindings)?;
        let mut outputs = Vec::with_capacity(returned.len());
        for (index, buf) in returned {
            let fixed = gpu.lasting_alloc(buf.byte_size()).map_err(err)?;
            gpu.copy_device(buf.device(gpu).map_err(err)?, &fixed, buf.byte_size()).map_err(err)?;
            outputs.push((index, Arc::new(CudaValue::from_device(buf.shape().to_vec(), buf.dtype(), Arc::new(fixed)))));
        }
        let state: Vec<u64> =
            carried_in.values().filter_map(|v| v.device_if_present()).map(|m| address(gpu, m)).collect();
        for (input, buf) in carried_out {
            let dst = carried_in.get(&input).and_then(|v| v.device_if_present());
            let dst = dst.ok_or_else(|| RuntimeError::Lowering("carried state without a device buffer".into()))?;
            let src = buf.device(gpu).map_err(err)?;
            let (s, d) = (address(gpu, src), address(gpu, dst));
            // Copied in turn, one state buffer would be overwritten before it is read.
            if s != d && state.contains(&s) {
                return Err(RuntimeError::Lowering(format!(
                    "the new value of `{}` is another state input's buffer",
                    plan.inputs[input].info.name
                )));
            }
            gpu.copy_unless_flagged(src, dst, buf.byte_size()).map_err(err)?;
        }
        Ok((outputs, usage.peak))
    }

    /// Launches the captured run on this run's fed inputs and reads its outputs.
    fn replay(
        &self,
        plan: &ExecPlan,
        feeds: &[(usize, Tensor)],
        graph: &StepGraph,
    ) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let gpu = self.backend.gpu();
        let err = |e| backend_error(&gpu.name, e);
        for ((index, t), (slot, buf)) in feeds.iter().zip(&graph.inputs) {
            let mem = buf.device_if_present();
            match mem {
                Some(mem) if index == slot => gpu.write_bytes(&t.to_le_bytes(), mem).map_err(err)?,
                _ => return Err(RuntimeError::Lowering("a replay's inputs do not match its capture".into())),
            }
        }
        self.backend.begin_run();
        graph.launch().map_err(err)?;
        self.backend.end_run()?;
        let mut out = Vec::with_capacity(graph.outputs.len());
        for (index, buf) in &graph.outputs {
            // A fresh host copy each time: the buffer is rewritten by every launch.
            let mem = buf.device_if_present().cloned();
            let mem = mem.ok_or_else(|| RuntimeError::Lowering("a graph output without a buffer".into()))?;
            let fresh = CudaValue::from_device(buf.shape().to_vec(), buf.dtype(), mem);
            out.push((plan.outputs[*index].0.clone(), self.backend.download(&Arc::new(fresh))?));
        }
        let mut placement = graph.placement.clone();
        if let Some(p) = placement.as_mut() {
            p.graph = Some("replayed".into());
        }
        Ok((out, RunStats { peak_bytes: graph.peak_bytes, profile: None, placement }))
    }
}

fn address(gpu: &crate::cuda::Gpu, mem: &crate::cuda::DeviceMem) -> u64 {
    crate::cuda::address(mem, &gpu.stream)
}

fn backend_error(name: &str, e: crate::cuda::DevError) -> RuntimeError {
    RuntimeError::Backend { backend: name.to_string(), reason: e.to_string() }
}
