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

/// A model ready to run.
pub struct Session {
    plan: ExecPlan,
    backend: CpuBackend,
    /// Constants uploaded once.
    constants: Vec<(usize, <CpuBackend as Backend>::Buffer)>,
}

/// What a run did besides its outputs.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Peak bytes of activations live at once (constants excluded).
    pub peak_bytes: usize,
    /// Time per op type, when `ADAPTC_PROFILE` is set.
    pub profile: Option<Profile>,
}

impl Session {
    pub fn new(model: &Model, options: SessionOptions) -> Result<Session> {
        if options.device == Device::Cuda {
            return Err(RuntimeError::Backend {
                backend: "cuda".into(),
                reason: "the CUDA backend is not built yet".into(),
            });
        }
        let backend = CpuBackend;
        let plan = lower(model, Registry::cpu())?;
        let constants = plan.constants.iter().map(|(b, t)| Ok((*b, backend.upload(t)?))).collect::<Result<_>>()?;
        Ok(Session { plan, backend, constants })
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

    pub fn run_with_stats(&self, mut inputs: HashMap<String, Tensor>) -> Result<(Vec<(String, Tensor)>, RunStats)> {
        let be = &self.backend;
        let mut slots: Vec<Option<<CpuBackend as Backend>::Buffer>> = vec![None; self.plan.num_buffers];
        for (b, buf) in &self.constants {
            slots[*b] = Some(buf.clone());
        }
        let mut unknown: Vec<&String> =
            inputs.keys().filter(|k| !self.plan.inputs.iter().any(|i| &i.info.name == *k)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(RuntimeError::Input {
                name: unknown[0].clone(),
                reason: format!("the model has no such input (its inputs: {})", self.input_names().join(", ")),
            });
        }
        let mut usage = Usage::default();
        for pi in &self.plan.inputs {
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
        for (i, ins) in self.plan.instructions.iter().enumerate() {
            let args: Vec<Option<&<CpuBackend as Backend>::Buffer>> =
                ins.inputs.iter().map(|b| b.and_then(|b| slots[b].as_ref())).collect();
            let started = profile.as_ref().map(|_| Instant::now());
            let outs = be.execute(ins, &args)?;
            if let (Some(p), Some(t)) = (profile.as_mut(), started) {
                let took = t.elapsed();
                p.record(&ins.node.op().to_string(), || describe(ins, &slots), took);
            }
            for (slot, out) in ins.outputs.iter().zip(outs) {
                if let (Some(b), Some(o)) = (slot, out) {
                    usage.alloc(be.storage_key(&o), be.byte_size(&o));
                    slots[*b] = Some(o);
                }
            }
            for &b in &self.plan.memory.frees[i] {
                if let Some(buf) = slots[b].take() {
                    usage.free(be.storage_key(&buf), be.byte_size(&buf));
                }
            }
        }
        let mut out = Vec::with_capacity(self.plan.outputs.len());
        for (name, b) in &self.plan.outputs {
            let Some(buf) = slots[*b].as_ref() else {
                return Err(RuntimeError::Lowering(format!("graph output `{name}` was not produced")));
            };
            out.push((name.clone(), be.download(buf)?));
        }
        Ok((out, RunStats { peak_bytes: usage.peak, profile }))
    }
}

/// A node and its input shapes, for the per-node profile.
fn describe(ins: &crate::plan::Instruction, slots: &[Option<<CpuBackend as Backend>::Buffer>]) -> String {
    let shapes: Vec<String> = ins
        .inputs
        .iter()
        .map(|b| b.and_then(|b| slots[b].as_ref()).map_or("-".into(), |t| format!("{:?}", t.shape())))
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
