//! One optimizer step, made one of two ways.
//!
//! - **In the graph** (one micro-batch per step, the usual case): `append-adamw` adds the
//!   gradient clip and the AdamW update to the training graph, and the session carries the
//!   weights and moments from each run to the next ([`Session::bind_state`]). Per step only
//!   the batch and seven scalars go in and the loss and the gradient norm come out; the
//!   weights stay on the device until a checkpoint, an evaluation or the end reads them.
//! - **On the host** (gradient accumulation): the graph returns `grad.<w>`, which are summed
//!   over the micro-batches, averaged, clipped and applied by [`AdamW`] here.
//!
//! Both give the same weights bit for bit on the CPU backend: both update with the runtime's
//! `AdamWCoefficients::update`, and the graph's clip computes the norm as the host's does
//! (tested in `tests/in_graph_step.rs`).

use std::collections::HashMap;

use adaptc_ir::Model;
use adaptc_passes::autodiff::optimizer::{append_adamw, moment_inputs, COEFFICIENTS_INPUT, GRAD_NORM_OUTPUT};
use adaptc_passes::autodiff::GRAD_PREFIX;
use adaptc_runtime::{Placement, Profile, Session, SessionOptions, Tensor};

use crate::error::{Result, TrainError};
use crate::optimizer::{clip_grad_norm_tensors, AdamW, Moments};

/// What a step reports.
pub struct StepOutput {
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub peak_bytes: usize,
    pub profile: Option<Profile>,
    /// Where the last micro-batch's instructions ran and what it copied (CUDA only).
    pub placement: Option<Placement>,
}

/// The training session and where its update is made.
pub enum Stepper {
    InGraph(Session),
    Host(Session),
}

impl Stepper {
    /// Builds the session for `training` (a training graph with `loss` and `grad.<w>`
    /// outputs). The in-graph optimizer is used when a step is one micro-batch.
    pub fn new(
        mut training: Model,
        options: SessionOptions,
        params: &[(String, Tensor)],
        grad_accum: usize,
        max_grad_norm: Option<f32>,
    ) -> Result<Stepper> {
        if grad_accum > 1 {
            return Ok(Stepper::Host(Session::new(&training, options)?));
        }
        let state = append_adamw(&mut training, params.iter().map(|(n, _)| n.as_str()), max_grad_norm)?;
        let mut session = Session::new(&training, options)?;
        session.bind_state(&state.carried)?;
        Ok(Stepper::InGraph(session))
    }

    /// Loads weights and optimizer moments into the session (at the start, and on resume).
    pub fn load(&self, params: &[(String, Tensor)], optimizer: &AdamW) -> Result<()> {
        let Stepper::InGraph(session) = self else { return Ok(()) };
        for ((name, value), mo) in params.iter().zip(optimizer.moments()) {
            session.set_state(name, value)?;
            let [m, v] = moment_inputs(name);
            session.set_state(&m, &Tensor::from_vec(value.shape().to_vec(), mo.m.clone())?)?;
            session.set_state(&v, &Tensor::from_vec(value.shape().to_vec(), mo.v.clone())?)?;
        }
        Ok(())
    }

    /// Reads the weights and moments back from the session into `params` and `optimizer`
    /// (before a checkpoint, an evaluation, or the end).
    pub fn sync(&self, params: &mut [(String, Tensor)], optimizer: &mut AdamW) -> Result<()> {
        let Stepper::InGraph(session) = self else { return Ok(()) };
        let mut moments = Vec::with_capacity(params.len());
        for (name, value) in params.iter_mut() {
            *value = session.state(name)?;
            let [m, v] = moment_inputs(name);
            let m = session.state(&m)?;
            let v = session.state(&v)?;
            moments.push(Moments { name: name.clone(), m: f32s(&m)?.to_vec(), v: f32s(&v)?.to_vec() });
        }
        optimizer.set_moments(moments)
    }

    /// One optimizer step at learning rate `lr` on `batches` (one per micro-batch; feeds by
    /// input name). `params` are the weights the host holds: the host path reads and updates
    /// them, the in-graph path leaves them stale until [`Stepper::sync`].
    pub fn step(
        &self,
        batches: Vec<HashMap<String, Tensor>>,
        lr: f32,
        params: &mut [(String, Tensor)],
        optimizer: &mut AdamW,
        max_grad_norm: Option<f32>,
        step: u64,
    ) -> Result<StepOutput> {
        let mut out = StepOutput { loss: 0.0, grad_norm: 0.0, peak_bytes: 0, profile: None, placement: None };
        let micro = batches.len().max(1);
        let mut loss_sum = 0f64;
        let mut grads: Option<Vec<(String, Tensor)>> = None;
        for mut feeds in batches {
            let session = match self {
                Stepper::InGraph(s) => {
                    let k = optimizer.next_coefficients(lr)?;
                    feeds.insert(COEFFICIENTS_INPUT.into(), Tensor::from_vec(vec![k.len()], k.to_vec())?);
                    s
                }
                Stepper::Host(s) => {
                    feeds.extend(params.iter().cloned());
                    s
                }
            };
            let (outputs, stats) = session.run_with_stats(feeds)?;
            out.peak_bytes = out.peak_bytes.max(stats.peak_bytes);
            out.placement = stats.placement;
            if let Some(p) = &stats.profile {
                out.profile.get_or_insert_with(Profile::default).merge(p);
            }
            let mut outputs: HashMap<String, Tensor> = outputs.into_iter().collect();
            let loss = scalar(outputs.get("loss"), "loss")?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { step, what: format!("the loss is {loss}") });
            }
            loss_sum += loss;
            if let Stepper::InGraph(_) = self {
                out.grad_norm = scalar(outputs.get(GRAD_NORM_OUTPUT), GRAD_NORM_OUTPUT)? as f32;
                continue;
            }
            let micro_grads: Vec<(String, Tensor)> = params
                .iter()
                .map(|(n, _)| {
                    outputs
                        .remove(&format!("{GRAD_PREFIX}{n}"))
                        .map(|g| (n.clone(), g))
                        .ok_or_else(|| TrainError::Config(format!("the training graph has no gradient for `{n}`")))
                })
                .collect::<Result<_>>()?;
            grads = Some(match grads {
                None => micro_grads,
                Some(acc) => add_grads(acc, micro_grads)?,
            });
        }
        out.loss = loss_sum / micro as f64;
        if let Some(mut grads) = grads {
            if micro > 1 {
                scale_grads(&mut grads, 1.0 / micro as f32)?;
            }
            out.grad_norm = clip_grad_norm_tensors(&mut grads, max_grad_norm.unwrap_or(f32::INFINITY))?;
            if out.grad_norm.is_finite() {
                optimizer.step_tensors(lr, params, &grads)?;
            }
        }
        if !out.grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step, what: format!("the gradient norm is {}", out.grad_norm) });
        }
        Ok(out)
    }
}

fn add_grads(acc: Vec<(String, Tensor)>, more: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    acc.into_iter()
        .zip(more)
        .map(|((n, a), (_, b))| {
            let sum: Vec<f32> = f32s(&a)?.iter().zip(f32s(&b)?).map(|(x, y)| x + y).collect();
            Ok((n, Tensor::from_vec(a.shape().to_vec(), sum)?))
        })
        .collect()
}

fn scale_grads(grads: &mut [(String, Tensor)], s: f32) -> Result<()> {
    for (_, g) in grads.iter_mut() {
        let v: Vec<f32> = f32s(g)?.iter().map(|x| x * s).collect();
        *g = Tensor::from_vec(g.shape().to_vec(), v)?;
    }
    Ok(())
}

fn f32s(t: &Tensor) -> Result<&[f32]> {
    t.as_slice::<f32>().ok_or_else(|| TrainError::Config(format!("expected a float32 tensor, got {}", t.dtype())))
}

fn scalar(t: Option<&Tensor>, name: &str) -> Result<f64> {
    let t = t.ok_or_else(|| TrainError::Config(format!("the training graph has no `{name}` output")))?;
    Ok(f64::from(*f32s(t)?.first().ok_or_else(|| TrainError::Config(format!("`{name}` is empty")))?))
}
