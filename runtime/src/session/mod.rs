//! Sessions: a lowered model bound to a backend, run on named inputs.
//!
//! `run` checks the caller's inputs against the graph's declared inputs (names, element
//! types, ranks, static dims) before executing, so mistakes are reported by input name rather
//! than as a kernel failure deep in the graph.
//!
//! A session can also carry state from one run to the next ([`Session::bind_state`]): an
//! output named in a binding is not returned but kept, as the backend's buffer, and becomes
//! the bound input of the next run. A training step whose graph updates its own weights and
//! optimizer moments (`append-adamw`) then runs with nothing but the batch crossing to the
//! device, and the state is read back only when asked ([`Session::state`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use adaptc_ir::{Dim, Model};

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{Result, RuntimeError};
use crate::memory::Usage;
use crate::plan::{lower, ExecPlan};
use crate::profile::Profile;
use crate::registry::Registry;
use crate::tensor::Tensor;

#[cfg(feature = "cuda")]
mod graphed;

/// Where to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    pub device: Device,
    /// Run every node as its own instruction, without the plan-time fusions (to compare
    /// numerics or profiles with the fused plan; `ADAPTC_NO_FUSE=1` does the same).
    pub unfused: bool,
    /// On CUDA, capture a run into a CUDA graph and replay it for the runs after that have
    /// inputs of the same shapes (`graphed.rs`): one launch per run instead of one per
    /// instruction. Ignored on the CPU.
    pub cuda_graphs: bool,
}

/// Checks that `device` can be used here, before any work is done for it: the CUDA backend
/// must be built in, and a driver and a device present.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda => crate::cuda::probe().map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(not_built()),
    }
}

#[cfg(not(feature = "cuda"))]
fn not_built() -> RuntimeError {
    RuntimeError::Backend {
        backend: "cuda".into(),
        reason:
            "this adaptc was built without the CUDA backend; rebuild it with `cargo build --release --features cuda`"
                .into(),
    }
}

/// A model ready to run.
pub struct Session {
    plan: ExecPlan,
    engine: Engine,
    /// Inputs fed from the previous run's outputs ([`Session::bind_state`]).
    bindings: Vec<Binding>,
}

/// One carried value: plan input `input` (by index) takes plan output `output` of the last run.
#[derive(Clone, Debug)]
struct Binding {
    input: usize,
    output: usize,
}

/// The backend a session runs on, with the constants it has uploaded once.
enum Engine {
    Cpu(Runner<CpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Runner<crate::cuda::CudaBackend>, Option<Box<Mutex<graphed::Replays>>>),
}

/// What a run did besides its outputs.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Peak bytes of activations live at once (constants excluded).
    pub peak_bytes: usize,
    /// Time per op type, when `ADAPTC_PROFILE` is set.
    pub profile: Option<Profile>,
    /// Where instructions ran and what was copied (the CUDA backend; `None` on the CPU).
    pub placement: Option<crate::backend::Placement>,
}

impl Session {
    pub fn new(model: &Model, options: SessionOptions) -> Result<Session> {
        let plan = lower(model, Registry::cpu(), !options.unfused)?;
        let engine = match options.device {
            Device::Cpu => Engine::Cpu(Runner::new(CpuBackend, &plan)?),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let runner = Runner::new(crate::cuda::CudaBackend::open(0)?, &plan)?;
                let replays = options.cuda_graphs.then(|| Box::new(Mutex::new(graphed::replays())));
                Engine::Cuda(runner, replays)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => return Err(not_built()),
        };
        Ok(Session { plan, engine, bindings: Vec::new() })
    }

    /// Carries state between runs: for each `(input, output)` pair, `output` of one run is kept
    /// on the backend and fed as `input` to the next, and is no longer among the returned
    /// outputs. Until a run produces it, the input takes the value given to
    /// [`Session::set_state`], or else its initializer. Replaces earlier bindings and clears
    /// the carried values.
    pub fn bind_state(&mut self, pairs: &[(String, String)]) -> Result<()> {
        let mut bindings = Vec::with_capacity(pairs.len());
        for (input, output) in pairs {
            let Some(i) = self.plan.inputs.iter().position(|p| &p.info.name == input) else {
                return Err(RuntimeError::Input {
                    name: input.clone(),
                    reason: "cannot carry state into it: the model has no such input".into(),
                });
            };
            let Some(o) = self.plan.outputs.iter().position(|(n, _)| n == output) else {
                return Err(RuntimeError::Input {
                    name: input.clone(),
                    reason: format!("cannot carry state from `{output}`: the model has no such output"),
                });
            };
            if bindings.iter().any(|b: &Binding| b.input == i || b.output == o) {
                return Err(RuntimeError::Input {
                    name: input.clone(),
                    reason: format!("is bound twice (or `{output}` feeds two inputs)"),
                });
            }
            bindings.push(Binding { input: i, output: o });
        }
        self.bindings = bindings;
        match &self.engine {
            Engine::Cpu(r) => r.carried().clear(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, replays) => {
                r.carried().clear();
                graphed::forget(replays.as_deref());
            }
        }
        Ok(())
    }

    /// Sets the value a bound input takes on the next run (checked like a fed input).
    pub fn set_state(&self, name: &str, value: &Tensor) -> Result<()> {
        let input = self.bound_input(name)?;
        check_input(&self.plan.inputs[input].info, value)?;
        match &self.engine {
            Engine::Cpu(r) => r.set_carried(input, value),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, replays) => {
                // A capture reads the state's buffers, which this replaces.
                graphed::forget(replays.as_deref());
                r.set_carried(input, value)
            }
        }
    }

    /// The value a bound input will take on the next run, copied to the host.
    pub fn state(&self, name: &str) -> Result<Tensor> {
        let input = self.bound_input(name)?;
        let found = match &self.engine {
            Engine::Cpu(r) => r.get_carried(input)?,
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, _) => r.get_carried(input)?,
        };
        match (found, &self.plan.inputs[input].default) {
            (Some(t), _) => Ok(t),
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => {
                Err(RuntimeError::Input { name: name.to_string(), reason: "carried state has no value yet".into() })
            }
        }
    }

    fn bound_input(&self, name: &str) -> Result<usize> {
        self.bindings.iter().map(|b| b.input).find(|&i| self.plan.inputs[i].info.name == name).ok_or_else(|| {
            RuntimeError::Input { name: name.to_string(), reason: "is not carried state (see bind_state)".into() }
        })
    }

    /// The backend's name (`cpu`, `cuda:0 (NVIDIA H100 …)`).
    pub fn backend_name(&self) -> String {
        match &self.engine {
            Engine::Cpu(r) => r.backend.name().to_string(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, _) => r.backend.name().to_string(),
        }
    }

    /// Names of the inputs the caller must give (those without an initializer default, and not
    /// carried state).
    pub fn required_inputs(&self) -> Vec<&str> {
        let bound = |i: usize| self.bindings.iter().any(|b| b.input == i);
        self.plan
            .inputs
            .iter()
            .enumerate()
            .filter(|(i, p)| p.default.is_none() && !bound(*i))
            .map(|(_, p)| p.info.name.as_str())
            .collect()
    }

    pub fn input_names(&self) -> Vec<&str> {
        self.plan.inputs.iter().map(|i| i.info.name.as_str()).collect()
    }

    /// Names of the outputs a run returns (those not carried as state).
    pub fn output_names(&self) -> Vec<&str> {
        let carried: Vec<usize> = self.bindings.iter().map(|b| b.output).collect();
        self.plan
            .outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| !carried.contains(i))
            .map(|(_, (n, _))| n.as_str())
            .collect()
    }

    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// Runs the model; outputs come in the graph's output order (less the carried ones).
    pub fn run(&self, inputs: HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
        self.run_with_stats(inputs).map(|(o, _)| o)
    }

    pub fn run_with_stats(&self, inputs: HashMap<String, Tensor>) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let mut unknown: Vec<&String> =
            inputs.keys().filter(|k| !self.plan.inputs.iter().any(|i| &i.info.name == *k)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(RuntimeError::Input {
                name: unknown[0].clone(),
                reason: format!("the model has no such input (its inputs: {})", self.input_names().join(", ")),
            });
        }
        if let Some(b) = self.bindings.iter().find(|b| inputs.contains_key(&self.plan.inputs[b.input].info.name)) {
            return Err(RuntimeError::Input {
                name: self.plan.inputs[b.input].info.name.clone(),
                reason: "is carried state: set it with set_state, not as a fed input".into(),
            });
        }
        match &self.engine {
            Engine::Cpu(r) => r.run(&self.plan, inputs, &self.bindings),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, Some(replays)) => r.run_replayed(&self.plan, inputs, &self.bindings, replays),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r, None) => r.run(&self.plan, inputs, &self.bindings),
        }
    }
}

/// A backend and the plan's constants uploaded to it once; runs the plan's instructions in
/// order, freeing each buffer after its last reader.
struct Runner<B: Backend> {
    backend: B,
    constants: Vec<(usize, B::Buffer)>,
    /// Carried state by plan input index: the buffers the next run reads.
    carried: Mutex<HashMap<usize, B::Buffer>>,
}

impl<B: Backend> Runner<B> {
    fn new(backend: B, plan: &ExecPlan) -> Result<Runner<B>> {
        let constants = plan.constants.iter().map(|(b, t)| Ok((*b, backend.upload(t)?))).collect::<Result<_>>()?;
        Ok(Runner { backend, constants, carried: Mutex::new(HashMap::new()) })
    }

    fn carried(&self) -> MutexGuard<'_, HashMap<usize, B::Buffer>> {
        // A panic elsewhere cannot leave the map half-updated: every change is one insert.
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_carried(&self, input: usize, t: &Tensor) -> Result<()> {
        let buf = self.backend.upload(t)?;
        self.carried().insert(input, buf);
        Ok(())
    }

    fn get_carried(&self, input: usize) -> Result<Option<Tensor>> {
        let buf = self.carried().get(&input).cloned();
        buf.map(|b| self.backend.download(&b)).transpose()
    }

    fn run(
        &self,
        plan: &ExecPlan,
        inputs: HashMap<String, Tensor>,
        bindings: &[Binding],
    ) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let carried_in = self.carried().clone();
        let feeds = resolve_feeds(plan, inputs, &carried_in)?;
        self.run_fed(plan, feeds, &carried_in, bindings, &mut |t| self.backend.upload(&t))
    }

    /// A run instruction by instruction: `feed` turns each fed tensor into the backend's
    /// buffer, `carried_in` holds the state buffers.
    fn run_fed(
        &self,
        plan: &ExecPlan,
        feeds: Vec<(usize, Tensor)>,
        carried_in: &HashMap<usize, B::Buffer>,
        bindings: &[Binding],
        feed: &mut dyn FnMut(Tensor) -> Result<B::Buffer>,
    ) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let be = &self.backend;
        be.begin_run();
        let mut fed = Vec::with_capacity(feeds.len());
        for (index, t) in feeds {
            fed.push((index, feed(t)?));
        }
        let (mut slots, mut usage) = self.bind(plan, &fed, carried_in);
        let profile = self.execute(plan, &mut slots, &mut usage)?;
        be.end_run()?;
        let (returned, carried_out) = collect_outputs::<B>(plan, &slots, bindings)?;
        let mut out = Vec::with_capacity(returned.len());
        for (index, buf) in returned {
            out.push((plan.outputs[index].0.clone(), be.download(&buf)?));
        }
        // Only a run that finished replaces the state, so a failed step leaves it as it was.
        self.carried().extend(carried_out);
        Ok((out, RunStats { peak_bytes: usage.peak, profile, placement: be.report() }))
    }

    /// The run's buffers before its first instruction: constants, carried state, fed inputs.
    fn bind(
        &self,
        plan: &ExecPlan,
        fed: &[(usize, B::Buffer)],
        carried_in: &HashMap<usize, B::Buffer>,
    ) -> (Vec<Option<B::Buffer>>, Usage) {
        let be = &self.backend;
        let mut slots: Vec<Option<B::Buffer>> = vec![None; plan.num_buffers];
        for (b, buf) in &self.constants {
            slots[*b] = Some(buf.clone());
        }
        let mut usage = Usage::default();
        let state = carried_in.iter().map(|(i, b)| (*i, b));
        for (index, buf) in state.chain(fed.iter().map(|(i, b)| (*i, b))) {
            usage.alloc(be.storage_key(buf), be.byte_size(buf));
            slots[plan.inputs[index].buf] = Some(buf.clone());
        }
        (slots, usage)
    }

    /// Runs every instruction in order, each buffer freed after its last reader; the profile
    /// when `ADAPTC_PROFILE` asks for one.
    fn execute(&self, plan: &ExecPlan, slots: &mut [Option<B::Buffer>], usage: &mut Usage) -> Result<Option<Profile>> {
        let be = &self.backend;
        let mut profile = crate::profile::enabled().then(Profile::default);
        let mut peak_watch = (profile.is_some() && crate::profile::memory()).then(|| PeakWatch::new(plan));
        for (i, ins) in plan.instructions.iter().enumerate() {
            let args: Vec<Option<&B::Buffer>> = ins.inputs.iter().map(|b| b.and_then(|b| slots[b].as_ref())).collect();
            let started = profile.as_ref().map(|_| Instant::now());
            let outs = be.execute(ins, &args)?;
            if let (Some(p), Some(t)) = (profile.as_mut(), started) {
                be.synchronize()?;
                let took = t.elapsed();
                let bytes = operand_bytes(be, ins, &args, &outs);
                p.record(&ins.node.op().to_string(), || describe(be, ins, slots), took, bytes);
            }
            for (slot, out) in ins.outputs.iter().zip(outs) {
                if let (Some(b), Some(o)) = (slot, out) {
                    usage.alloc(be.storage_key(&o), be.byte_size(&o));
                    slots[*b] = Some(o);
                }
            }
            if let Some(w) = peak_watch.as_mut() {
                w.observe(be, usage, i, slots);
            }
            for &b in &plan.memory.frees[i] {
                if let Some(buf) = slots[b].take() {
                    usage.free(be.storage_key(&buf), be.byte_size(&buf));
                }
            }
        }
        if let (Some(p), Some(w)) = (profile.as_mut(), peak_watch) {
            p.peak = w.result(plan);
        }
        Ok(profile)
    }
}

/// Every plan input that is not carried state, with its tensor: the one given, else its
/// default (initializer); each checked against its declared type.
fn resolve_feeds<T>(
    plan: &ExecPlan,
    mut inputs: HashMap<String, Tensor>,
    carried_in: &HashMap<usize, T>,
) -> Result<Vec<(usize, Tensor)>> {
    let mut feeds = Vec::with_capacity(plan.inputs.len());
    for (index, pi) in plan.inputs.iter().enumerate() {
        if carried_in.contains_key(&index) {
            continue;
        }
        let t = match inputs.remove(&pi.info.name) {
            Some(t) => t,
            None => match &pi.default {
                Some(d) => d.clone(),
                None => {
                    return Err(RuntimeError::Input {
                        name: pi.info.name.clone(),
                        reason: "is required but was not given".into(),
                    })
                }
            },
        };
        check_input(&pi.info, &t)?;
        feeds.push((index, t));
    }
    Ok(feeds)
}

/// Outputs an executed run returns: (plan output index, buffer) in output order, and the
/// (plan input index, buffer) pairs the bindings carry to the next run.
#[allow(clippy::type_complexity)]
fn collect_outputs<B: Backend>(
    plan: &ExecPlan,
    slots: &[Option<B::Buffer>],
    bindings: &[Binding],
) -> Result<(Vec<(usize, B::Buffer)>, Vec<(usize, B::Buffer)>)> {
    let mut returned = Vec::with_capacity(plan.outputs.len());
    let mut carried = Vec::with_capacity(bindings.len());
    for (index, (name, b)) in plan.outputs.iter().enumerate() {
        let Some(buf) = slots[*b].as_ref() else {
            return Err(RuntimeError::Lowering(format!("graph output `{name}` was not produced")));
        };
        match bindings.iter().find(|bd| bd.output == index) {
            Some(bd) => carried.push((bd.input, buf.clone())),
            None => returned.push((index, buf.clone())),
        }
    }
    Ok((returned, carried))
}

/// Which buffers were live when a run's live bytes peaked (`ADAPTC_PROFILE=memory`).
struct PeakWatch {
    /// Each buffer's value name and producer (empty for constants, which are not counted).
    names: Vec<String>,
    peak: usize,
    at: Option<usize>,
    live: Vec<(u64, usize)>,
}

impl PeakWatch {
    fn new(plan: &ExecPlan) -> PeakWatch {
        let mut names = vec![String::new(); plan.num_buffers];
        for pi in &plan.inputs {
            names[pi.buf] = format!("{} (graph input)", pi.info.name);
        }
        for ins in &plan.instructions {
            for (b, name) in ins.outputs.iter().zip(ins.node.outputs()) {
                if let Some(b) = b {
                    names[*b] = format!("{name} ({} {})", ins.node.op(), ins.node.label());
                }
            }
        }
        PeakWatch { names, peak: 0, at: None, live: Vec::new() }
    }

    /// After instruction `i`: a new peak snapshots the live buffers (each storage once).
    fn observe<B: Backend>(&mut self, be: &B, usage: &Usage, i: usize, slots: &[Option<B::Buffer>]) {
        if usage.live <= self.peak {
            return;
        }
        self.peak = usage.live;
        self.at = Some(i);
        let mut seen = std::collections::HashSet::new();
        self.live = slots
            .iter()
            .enumerate()
            .filter_map(|(b, s)| s.as_ref().map(|buf| (b, buf)))
            .filter(|(b, buf)| !self.names[*b].is_empty() && seen.insert(be.storage_key(buf)))
            .map(|(b, buf)| (be.byte_size(buf) as u64, b))
            .collect();
    }

    fn result(mut self, plan: &ExecPlan) -> Option<(String, Vec<(u64, String)>)> {
        let i = self.at?;
        let (label, op) = plan.instructions[i].describe();
        self.live.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let live = self.live.into_iter().map(|(bytes, b)| (bytes, self.names[b].clone())).collect();
        Some((format!("instruction {i} of {}, {op} {label}", plan.instructions.len()), live))
    }
}

/// The bytes an instruction reads and writes (the profile's "GiB moved"): its inputs and
/// outputs, except an output that shares an input's storage (a view: Reshape, an unbroadcast
/// SumToShape) and that input, and the data of `Shape`/`Size`, which read only dims.
fn operand_bytes<B: Backend>(
    be: &B,
    ins: &crate::plan::Instruction,
    args: &[Option<&B::Buffer>],
    outs: &[Option<B::Buffer>],
) -> u64 {
    let op = ins.node.op();
    let default_domain = adaptc_ir::is_default_domain(&op.domain);
    let written_bytes = || outs.iter().flatten().map(|b| be.byte_size(b) as u64).sum::<u64>();
    if default_domain && matches!(op.op_type.as_str(), "Shape" | "Size") {
        return written_bytes();
    }
    let ins_keys: Vec<usize> = args.iter().flatten().map(|b| be.storage_key(b)).collect();
    let out_keys: Vec<usize> = outs.iter().flatten().map(|b| be.storage_key(b)).collect();
    let written = outs.iter().flatten().filter(|b| !ins_keys.contains(&be.storage_key(b)));
    let written = written.map(|b| be.byte_size(b) as u64).sum::<u64>();
    // A Gather reads only the rows it writes out (an embedding lookup reads a few rows of a
    // large table), and its indices.
    if default_domain && op.op_type == "Gather" {
        let indices = args.get(1).copied().flatten().map_or(0, |b| be.byte_size(b) as u64);
        return 2 * written + indices;
    }
    let read = args.iter().flatten().filter(|b| !out_keys.contains(&be.storage_key(b)));
    read.map(|b| be.byte_size(b) as u64).sum::<u64>() + written
}

/// A node and its input shapes, for the per-node profile.
fn describe<B: Backend>(be: &B, ins: &crate::plan::Instruction, slots: &[Option<B::Buffer>]) -> String {
    let shapes: Vec<String> = ins
        .inputs
        .iter()
        .map(|b| b.and_then(|b| slots[b].as_ref()).map_or("-".into(), |t| format!("{:?}", be.shape(t))))
        .collect();
    format!("{} {} {}", ins.node.op(), ins.node.label(), shapes.join(" "))
}

/// Checks a fed tensor against the declared type of its input.
fn check_input(info: &adaptc_ir::ValueInfo, t: &Tensor) -> Result<()> {
    let Some(ty) = &info.ty else { return Ok(()) };
    let err = |reason: String| RuntimeError::Input { name: info.name.clone(), reason };
    if let Some(d) = ty.dtype() {
        if d != t.dtype() {
            return Err(err(format!("expected element type {d}, got {}", t.dtype())));
        }
    }
    if let Some(dims) = ty.dims() {
        if dims.len() != t.rank() {
            return Err(err(format!("expected rank {} ({}), got shape {:?}", dims.len(), show(&dims), t.shape())));
        }
        for (k, (d, &n)) in dims.iter().zip(t.shape()).enumerate() {
            if let Dim::Known(v) = d {
                if *v >= 0 && *v as usize != n {
                    return Err(err(format!("dimension {k} must be {v} ({}), got shape {:?}", show(&dims), t.shape())));
                }
            }
        }
    }
    Ok(())
}

fn show(dims: &[Dim]) -> String {
    format!("[{}]", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
}
