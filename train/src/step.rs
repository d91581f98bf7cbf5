//! One optimizer step, inside the training graph.
//!
//! `append-adamw` adds the gradient clip and the AdamW update to the training graph, and the
//! session carries the weights, the moments and, with gradient accumulation, the gradient sums
//! from each run to the next ([`Session::bind_state`]). Per micro-batch only the batch and
//! seven scalars go in and the loss and the gradient norm come out; the weights stay where the
//! graph runs (the device, for CUDA) until a checkpoint, an evaluation or the end reads them
//! ([`Stepper::sync`]).
//!
//! The results are the host optimizer's ([`AdamW`] with [`crate::clip_grad_norm`]) bit for
//! bit on the CPU backend: the graph's update is the runtime's `AdamWCoefficients::update`,
//! which [`AdamW`] calls too, and its clip and averaging round as the host's do (tested in
//! `tests/in_graph_step.rs` against the host optimizer on the graph's gradients).

use std::collections::HashMap;

use adaptc_ir::Model;
use adaptc_passes::autodiff::optimizer::{
    accumulator_input, append_adamw, moment_inputs, APPLY_INPUT, COEFFICIENTS_INPUT, GRAD_NORM_OUTPUT,
};
use adaptc_runtime::{Placement, Profile, Session, SessionOptions, Tensor};

use crate::error::{Result, TrainError};
use crate::optimizer::{AdamW, Moments};
use crate::trainer::f32s;

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

/// The training session, which makes whole optimizer steps.
pub struct Stepper {
    session: Session,
    /// Micro-batches per step.
    accumulate: usize,
}

impl Stepper {
    /// Builds the session for `training` (a training graph with `loss` and `grad.<w>` outputs
    /// for the `params`, in their order), with `accumulate` micro-batches per step.
    pub fn new(
        mut training: Model,
        options: SessionOptions,
        params: &[(String, Tensor)],
        accumulate: usize,
        max_grad_norm: Option<f32>,
    ) -> Result<Stepper> {
        let state = append_adamw(&mut training, params.iter().map(|(n, _)| n.as_str()), max_grad_norm, accumulate)?;
        let mut session = Session::new(&training, options)?;
        session.bind_state(&state.carried)?;
        Ok(Stepper { session, accumulate })
    }

    /// Loads weights and optimizer moments into the session (at the start, and on resume;
    /// gradient sums start at zero, as every step does).
    pub fn load(&self, params: &[(String, Tensor)], optimizer: &AdamW) -> Result<()> {
        for ((name, value), mo) in params.iter().zip(optimizer.moments()) {
            let shape = value.shape().to_vec();
            self.session.set_state(name, value)?;
            let [m, v] = moment_inputs(name);
            self.session.set_state(&m, &Tensor::from_vec(shape.clone(), mo.m.clone())?)?;
            self.session.set_state(&v, &Tensor::from_vec(shape.clone(), mo.v.clone())?)?;
            if self.accumulate > 1 {
                let zeros = Tensor::from_vec(shape, vec![0f32; value.numel()])?;
                self.session.set_state(&accumulator_input(name), &zeros)?;
            }
        }
        Ok(())
    }

    /// Reads the weights and moments back from the session into `params` and `optimizer`
    /// (before a checkpoint, an evaluation, or the end).
    pub fn sync(&self, params: &mut [(String, Tensor)], optimizer: &mut AdamW) -> Result<()> {
        let mut moments = Vec::with_capacity(params.len());
        for (name, value) in params.iter_mut() {
            *value = self.session.state(name)?;
            let [m, v] = moment_inputs(name);
            let m = self.session.state(&m)?;
            let v = self.session.state(&v)?;
            moments.push(Moments { name: name.clone(), m: f32s(&m)?.to_vec(), v: f32s(&v)?.to_vec() });
        }
        optimizer.set_moments(moments)
    }

    /// One optimizer step at learning rate `lr` on `batches`, one per micro-batch (feeds by
    /// input name; as many as the stepper accumulates). `step` (from 1) names the step in
    /// errors.
    pub fn step(
        &self,
        batches: Vec<HashMap<String, Tensor>>,
        lr: f32,
        optimizer: &mut AdamW,
        step: u64,
    ) -> Result<StepOutput> {
        if batches.len() != self.accumulate {
            return Err(TrainError::Config(format!(
                "a step takes {} micro-batches, {} were given",
                self.accumulate,
                batches.len()
            )));
        }
        let k = optimizer.next_coefficients(lr)?;
        let coefficients = Tensor::from_vec(vec![k.len()], k.to_vec())?;
        let mut out = StepOutput { loss: 0.0, grad_norm: 0.0, peak_bytes: 0, profile: None, placement: None };
        let mut loss_sum = 0f64;
        let last = batches.len() - 1;
        for (i, mut feeds) in batches.into_iter().enumerate() {
            feeds.insert(COEFFICIENTS_INPUT.into(), coefficients.clone());
            if self.accumulate > 1 {
                feeds.insert(APPLY_INPUT.into(), Tensor::scalar(i == last));
            }
            let (outputs, stats) = self.session.run_with_stats(feeds)?;
            out.peak_bytes = out.peak_bytes.max(stats.peak_bytes);
            out.placement = stats.placement;
            if let Some(p) = &stats.profile {
                out.profile.get_or_insert_with(Profile::default).merge(p);
            }
            let outputs: HashMap<String, Tensor> = outputs.into_iter().collect();
            let loss = scalar(outputs.get("loss"), "loss")?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { step, what: format!("the loss is {loss}") });
            }
            loss_sum += loss;
            out.grad_norm = scalar(outputs.get(GRAD_NORM_OUTPUT), GRAD_NORM_OUTPUT)? as f32;
        }
        out.loss = loss_sum / self.accumulate as f64;
        if !out.grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step, what: format!("the gradient norm is {}", out.grad_norm) });
        }
        Ok(out)
    }
}

fn scalar(t: Option<&Tensor>, name: &str) -> Result<f64> {
    let t = t.ok_or_else(|| TrainError::Config(format!("the training graph has no `{name}` output")))?;
    Ok(f64::from(*f32s(t)?.first().ok_or_else(|| TrainError::Config(format!("`{name}` is empty")))?))
}
