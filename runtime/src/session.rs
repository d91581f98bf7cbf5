//! Sessions: a lowered model bound to a backend, run on named inputs.
//!
//! `run` checks the caller's inputs against the graph's declared inputs (names, element
//! types, ranks, static dims) before executing, so mistakes are reported by input name rather
//! than as a kernel failure deep in the graph.

use std::collections::HashMap;
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
}

/// The backend a session runs on, with the constants it has uploaded once.
enum Engine {
    Cpu(Runner<CpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Runner<crate::cuda::CudaBackend>),
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
        let plan = lower(model, Registry::cpu())?;
        let engine = match options.device {
            Device::Cpu => Engine::Cpu(Runner::new(CpuBackend, &plan)?),
            #[cfg(feature = "cuda")]
            Device::Cuda => Engine::Cuda(Runner::new(crate::cuda::CudaBackend::open(0)?, &plan)?),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => return Err(not_built()),
        };
        Ok(Session { plan, engine })
    }

    /// The backend's name (`cpu`, `cuda:0 (NVIDIA H100 …)`).
    pub fn backend_name(&self) -> String {
        match &self.engine {
            Engine::Cpu(r) => r.backend.name().to_string(),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r) => r.backend.name().to_string(),
        }
    }

    /// Names of the inputs the caller must give (those without an initializer default).
    pub fn required_inputs(&self) -> Vec<&str> {
        self.plan.inputs.iter().filter(|i| i.default.is_none()).map(|i| i.info.name.as_str()).collect()
    }

    pub fn input_names(&self) -> Vec<&str> {
        self.plan.inputs.iter().map(|i| i.info.name.as_str()).collect()
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.plan.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// Runs the model; outputs come in the graph's output order.
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
        match &self.engine {
            Engine::Cpu(r) => r.run(&self.plan, inputs),
            #[cfg(feature = "cuda")]
            Engine::Cuda(r) => r.run(&self.plan, inputs),
        }
    }
}

/// A backend and the plan's constants uploaded to it once; runs the plan's instructions in
/// order, freeing each buffer after its last reader.
struct Runner<B: Backend> {
    backend: B,
    constants: Vec<(usize, B::Buffer)>,
}

impl<B: Backend> Runner<B> {
    fn new(backend: B, plan: &ExecPlan) -> Result<Runner<B>> {
        let constants = plan.constants.iter().map(|(b, t)| Ok((*b, backend.upload(t)?))).collect::<Result<_>>()?;
        Ok(Runner { backend, constants })
    }

    fn run(&self, plan: &ExecPlan, mut inputs: HashMap<String, Tensor>) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let be = &self.backend;
        be.begin_run();
        let mut slots: Vec<Option<B::Buffer>> = vec![None; plan.num_buffers];
        for (b, buf) in &self.constants {
            slots[*b] = Some(buf.clone());
        }
        let mut usage = Usage::default();
        for pi in &plan.inputs {
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
            let buf = be.upload(&t)?;
            usage.alloc(be.storage_key(&buf), be.byte_size(&buf));
            slots[pi.buf] = Some(buf);
        }
        let mut profile = crate::profile::enabled().then(Profile::default);
        for (i, ins) in plan.instructions.iter().enumerate() {
            let args: Vec<Option<&B::Buffer>> = ins.inputs.iter().map(|b| b.and_then(|b| slots[b].as_ref())).collect();
            let started = profile.as_ref().map(|_| Instant::now());
            let outs = be.execute(ins, &args)?;
            if let (Some(p), Some(t)) = (profile.as_mut(), started) {
                be.synchronize()?;
                let took = t.elapsed();
                p.record(&ins.node.op().to_string(), || describe(be, ins, &slots), took);
            }
            for (slot, out) in ins.outputs.iter().zip(outs) {
                if let (Some(b), Some(o)) = (slot, out) {
                    usage.alloc(be.storage_key(&o), be.byte_size(&o));
                    slots[*b] = Some(o);
                }
            }
            for &b in &plan.memory.frees[i] {
                if let Some(buf) = slots[b].take() {
                    usage.free(be.storage_key(&buf), be.byte_size(&buf));
                }
            }
        }
        be.end_run()?;
        let mut out = Vec::with_capacity(plan.outputs.len());
        for (name, b) in &plan.outputs {
            let Some(buf) = slots[*b].as_ref() else {
                return Err(RuntimeError::Lowering(format!("graph output `{name}` was not produced")));
            };
            out.push((name.clone(), be.download(buf)?));
        }
        Ok((out, RunStats { peak_bytes: usage.peak, profile, placement: be.report() }))
    }
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
