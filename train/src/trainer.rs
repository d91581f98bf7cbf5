//! The training loop: the training graph (`build-training-graph`) run on padded batches,
//! the optimizer step inside the graph ([`crate::step`]: clip and AdamW, weights and moments
//! kept by the session) at the schedule's learning rate, evaluation, metrics and atomic
//! checkpoints.
//!
//! Resuming restores the trainable weights, AdamW's moments and step, and the data position
//! of the last checkpoint, so a resumed run takes exactly the steps an uninterrupted run
//! would (the loop draws no random numbers: the data order is a function of seed and epoch).
//! A non-finite loss or gradient norm stops the run with an error, so no non-finite weight is
//! ever saved or returned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use adaptc_ir::{DataType, Model, ValueInfo};
use adaptc_passes::adapters::record::AdapterState;
use adaptc_passes::autodiff::{build_training_graph, LossKind, IGNORE_INDEX};
use adaptc_runtime::{Device, Profile, Session, SessionOptions, Tensor};

use crate::checkpoint::{self, Checkpoint};
use crate::data::{Batch, Dataset};
use crate::error::{Result, TrainError};
use crate::metrics::{EvalRecord, MetricsWriter, StepRecord};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::schedule::{Decay, Schedule};
use crate::step::Stepper;
use crate::Loader;

/// What the model is trained to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Cross-entropy of the first output `[batch, labels]` against each row's `label`.
    Classification { labels: usize },
    /// Next-token cross-entropy of the first output `[batch, seq, vocab]`, padding ignored.
    CausalLm,
}

/// Everything that shapes a run's result (its fingerprint guards `--resume`).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub objective: Objective,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps in all.
    pub steps: u64,
    pub lr: f32,
    pub warmup: u64,
    pub decay: Decay,
    pub min_lr_ratio: f32,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    pub seed: u64,
    /// Evaluate every N steps (and at the end) when there is evaluation data.
    pub eval_every: Option<u64>,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Where the training and evaluation graphs run (the optimizer step included). Not part
    /// of the fingerprint: a run may resume on another device.
    pub device: Device,
    /// Recompute each block's activations in the backward pass (`checkpoint-activations`):
    /// less memory, about one more forward pass of compute. Same results, so not part of the
    /// fingerprint either.
    pub checkpoint_activations: bool,
    /// Run the products in bf16 (the `autocast{dtype=bf16}` pass, on the training and the
    /// evaluation graphs): frozen weights in bf16, the trainable f32 masters cast on the way
    /// in, everything else f32. Changes the numbers, so it is part of the fingerprint.
    pub autocast: bool,
    /// With `autocast`, also store activations in bf16 between ops (`activations=bf16`), as a
    /// model loaded in bf16 runs: half the activation memory and traffic. Changes the numbers.
    pub bf16_activations: bool,
    /// Fuse each attention core into one op that never stores the scores (`fuse-attention`):
    /// same results up to float rounding, much less memory at long sequences.
    pub fuse_attention: bool,
    /// On CUDA, capture a training step into a CUDA graph and replay it (one launch per step;
    /// `SessionOptions::cuda_graphs`). Not part of the fingerprint: same kernels, same results.
    pub cuda_graphs: bool,
}

impl TrainConfig {
    /// A text that changes whenever a setting that shapes the result changes.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:?} batch={} accum={} steps={} lr={} warmup={} decay={} min_lr={} adamw={:?} clip={:?} seed={}",
            self.objective,
            self.batch_size,
            self.grad_accum,
            self.steps,
            self.lr,
            self.warmup,
            self.decay.name(),
            self.min_lr_ratio,
            self.adamw,
            self.max_grad_norm,
            self.seed
        ) + match (self.autocast, self.bf16_activations) {
            (false, _) => "",
            (true, false) => " autocast=bf16",
            (true, true) => " autocast=bf16 activations=bf16",
        }
    }
}

/// Hooks for a front end: progress display and interruption (Ctrl-C).
pub trait Observer {
    fn on_start(&mut self, _first_step: u64, _total: u64) {}
    fn on_step(&mut self, _record: &StepRecord) {}
    fn on_eval(&mut self, _record: &EvalRecord) {}
    /// Checked before each step; `true` saves a checkpoint and stops.
    fn interrupted(&self) -> bool {
        false
    }
}

/// An observer that does nothing.
pub struct Quiet;

impl Observer for Quiet {}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Finished,
    Interrupted,
}

/// The result of [`train`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The trained weights, by initializer name.
    pub params: Vec<(String, Tensor)>,
    pub step: u64,
    pub stop: Stop,
    /// Where training resumed from, if it did.
    pub resumed_from: Option<u64>,
    pub last_eval: Option<EvalRecord>,
    /// The last evaluation's predicted class per evaluation row (classification).
    pub predictions: Vec<usize>,
    /// Peak activation bytes of a training step.
    pub peak_bytes: usize,
    /// Time per op over all training steps, when `ADAPTC_PROFILE` is set.
    pub profile: Option<Profile>,
    /// Where the last step's instructions ran and what it copied between host and device
    /// (CUDA; `None` on the CPU).
    pub last_step_placement: Option<adaptc_runtime::Placement>,
}

/// The files of a run folder.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
}

/// Trains `adapted`'s trainable tensors (its adapter state) on `data`.
pub fn train(
    adapted: &Model,
    cfg: &TrainConfig,
    data: &Dataset,
    eval: Option<&Dataset>,
    run: &RunDir,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let trainable = AdapterState::load(adapted)?.trainable;
    let mut training = adapted.clone();
    let mut evaluation = params_as_inputs(adapted, &trainable);
    for graph in [&mut training, &mut evaluation] {
        use adaptc_passes::lower::{autocast::Autocast, fuse_attention::FuseAttention};
        use adaptc_passes::{Pass as _, PassContext};
        if cfg.fuse_attention {
            FuseAttention.run(graph, &mut PassContext::default())?;
        }
        if cfg.autocast {
            let pass = Autocast { low_activations: cfg.bf16_activations, ..Autocast::default() };
            pass.run(graph, &mut PassContext::default())?;
        }
    }
    let loss = match cfg.objective {
        Objective::Classification { .. } => LossKind::CrossEntropy,
        Objective::CausalLm => LossKind::CausalLm,
    };
    build_training_graph(&mut training, loss, None, &trainable)?;
    if cfg.checkpoint_activations {
        use adaptc_passes::{Pass as _, PassContext};
        adaptc_passes::autodiff::checkpoint::CheckpointActivations.run(&mut training, &mut PassContext::default())?;
    }
    let mut params = initial_params(adapted, &trainable)?;
    let options = SessionOptions { device: cfg.device, cuda_graphs: cfg.cuda_graphs, ..Default::default() };
    let stepper = Stepper::new(training, options.clone(), &params, cfg.grad_accum, cfg.max_grad_norm)?;
    let eval_session = match eval {
        // Evaluations run rarely, each batch shape once or twice: not worth a capture.
        Some(_) => Some(Session::new(&evaluation, SessionOptions { cuda_graphs: false, ..options })?),
        None => None,
    };

    let mut optimizer = AdamW::new(cfg.adamw, params.iter().map(|(n, t)| (n.as_str(), t.numel())))?;
    let mut loader = Loader::new(data, cfg.batch_size, cfg.seed, false)?;
    let schedule = Schedule::new(cfg.lr, cfg.warmup, cfg.steps, cfg.decay, cfg.min_lr_ratio)?;
    let fingerprint = cfg.fingerprint();
    let mut step = 0u64;
    let mut resumed_from = None;
    let mut metrics = if resume {
        match checkpoint::resume(&run.checkpoints(), &fingerprint)? {
            Some(ck) => {
                check_same_params(&params, &ck.params)?;
                params = ck.params.clone();
                optimizer = ck.optimizer(cfg.adamw)?;
                loader.seek(ck.position)?;
                step = ck.step;
                resumed_from = Some(step);
                MetricsWriter::resume(&run.metrics(), step)?
            }
            None => MetricsWriter::create(&run.metrics())?,
        }
    } else {
        MetricsWriter::create(&run.metrics())?
    };

    stepper.load(&params, &optimizer)?;
    observer.on_start(step, cfg.steps);
    let mut last_eval = None;
    let mut predictions = Vec::new();
    let mut peak_bytes = 0;
    let mut profile = None;
    let mut last_step_placement = None;
    let mut stop = Stop::Finished;
    while step < cfg.steps {
        if observer.interrupted() {
            stepper.sync(&mut params, &mut optimizer)?;
            save(cfg, run, step, &params, &optimizer, &loader, &fingerprint)?;
            stop = Stop::Interrupted;
            break;
        }
        let started = Instant::now();
        let mut batches = Vec::with_capacity(cfg.grad_accum);
        let mut tokens = 0usize;
        for _ in 0..cfg.grad_accum {
            let batch = loader.next_batch()?;
            tokens += batch.tokens();
            batches.push(feeds(&batch, cfg.objective));
        }
        let lr = schedule.lr_at(step);
        let out = stepper.step(batches, lr, &mut optimizer, step + 1)?;
        peak_bytes = peak_bytes.max(out.peak_bytes);
        if let Some(p) = &out.profile {
            profile.get_or_insert_with(Profile::default).merge(p);
        }
        let (loss, grad_norm) = (out.loss, out.grad_norm);
        last_step_placement = out.placement;
        step += 1;
        let took = started.elapsed().as_secs_f64();
        let record = StepRecord {
            step,
            loss,
            lr: f64::from(lr),
            step_time_s: took,
            tokens_per_s: tokens as f64 / took.max(1e-9),
            grad_norm: Some(f64::from(grad_norm)),
        };
        metrics.step(&record)?;
        observer.on_step(&record);
        let eval_due = cfg.eval_every.is_some_and(|e| e > 0 && step.is_multiple_of(e)) || step == cfg.steps;
        let save_due = step.is_multiple_of(cfg.checkpoint_every.max(1)) || step == cfg.steps;
        if (eval_due && eval.is_some()) || save_due {
            stepper.sync(&mut params, &mut optimizer)?;
        }
        if let (Some(ds), Some(session), true) = (eval, eval_session.as_ref(), eval_due) {
            let (record, preds) = evaluate(session, ds, cfg, &params, step)?;
            predictions = preds;
            metrics.eval(&record)?;
            observer.on_eval(&record);
            last_eval = Some(record);
        }
        if save_due {
            save(cfg, run, step, &params, &optimizer, &loader, &fingerprint)?;
        }
    }
    stepper.sync(&mut params, &mut optimizer)?;
    Ok(Outcome { params, step, stop, resumed_from, last_eval, predictions, peak_bytes, profile, last_step_placement })
}

/// Runs the forward model on every row of `data`: mean loss, accuracy (of the class, or of the
/// next token) and, for classification, each row's predicted class.
pub fn evaluate(
    session: &Session,
    data: &Dataset,
    cfg: &TrainConfig,
    params: &[(String, Tensor)],
    step: u64,
) -> Result<(EvalRecord, Vec<usize>)> {
    let (mut loss_sum, mut count, mut correct) = (0f64, 0usize, 0usize);
    let mut predictions = Vec::new();
    for batch in data.in_order(cfg.batch_size) {
        let batch = batch?;
        let mut feeds = batch.feeds();
        feeds.extend(params.iter().cloned());
        let outputs = session.run(feeds)?;
        let logits = &outputs.first().ok_or_else(|| TrainError::Config("the model has no outputs".into()))?.1;
        let values = f32s(logits)?;
        match cfg.objective {
            Objective::Classification { labels } => {
                let rows = batch.rows.len();
                if logits.shape() != [rows, labels] {
                    return Err(TrainError::Config(format!(
                        "the model's first output has shape {:?}, expected [{rows}, {labels}] logits",
                        logits.shape()
                    )));
                }
                let targets = ints(&batch.labels)?;
                for (r, row) in values.chunks(labels).enumerate() {
                    let t = targets[r] as usize;
                    loss_sum += cross_entropy(row, t);
                    count += 1;
                    let best = argmax(row);
                    correct += usize::from(best == t);
                    predictions.push(best);
                }
            }
            Objective::CausalLm => {
                let shape = logits.shape().to_vec();
                let (b, s, v) = match shape.as_slice() {
                    [b, s, v] => (*b, *s, *v),
                    _ => return Err(TrainError::Config(format!("expected [batch, seq, vocab] logits, got {shape:?}"))),
                };
                let ids = batch
                    .inputs
                    .iter()
                    .find(|(n, _)| n == "input_ids")
                    .ok_or_else(|| TrainError::Config("causal-lm needs `input_ids`".into()))?;
                let ids = ints(&ids.1)?;
                for r in 0..b {
                    for p in 0..batch.lengths[r].saturating_sub(1).min(s - 1) {
                        let t = ids[r * s + p + 1];
                        if t == IGNORE_INDEX || t < 0 || t as usize >= v {
                            continue;
                        }
                        let row = &values[(r * s + p) * v..(r * s + p + 1) * v];
                        loss_sum += cross_entropy(row, t as usize);
                        correct += usize::from(argmax(row) == t as usize);
                        count += 1;
                    }
                }
            }
        }
    }
    let n = count.max(1) as f64;
    Ok((EvalRecord { step, eval_loss: loss_sum / n, eval_accuracy: Some(correct as f64 / n) }, predictions))
}

/// The adapted model whose trainable initializers are also graph inputs, so an evaluation
/// session takes the current weights as feeds.
pub fn params_as_inputs(model: &Model, trainable: &std::collections::BTreeSet<String>) -> Model {
    let mut m = model.clone();
    for t in trainable {
        if !m.graph.is_graph_input(t) {
            let ty = m.graph.value_type(t);
            m.graph.inputs.push(ValueInfo::new(t.clone(), ty));
        }
    }
    m
}

/// The trainable initializers' values, as f32 tensors in the trainable set's order.
fn initial_params(model: &Model, trainable: &std::collections::BTreeSet<String>) -> Result<Vec<(String, Tensor)>> {
    trainable
        .iter()
        .map(|name| {
            let t = model
                .graph
                .initializer(name)
                .ok_or_else(|| TrainError::Config(format!("trainable tensor `{name}` is not an initializer")))?;
            if t.dtype() != DataType::Float {
                return Err(TrainError::Config(format!(
                    "trainable tensor `{name}` is {}; training keeps trainable weights in float32",
                    t.dtype()
                )));
            }
            Ok((name.clone(), Tensor::from_ir(t)?))
        })
        .collect()
}

fn check_same_params(now: &[(String, Tensor)], saved: &[(String, Tensor)]) -> Result<()> {
    let same =
        now.len() == saved.len() && now.iter().zip(saved).all(|((a, x), (b, y))| a == b && x.shape() == y.shape());
    if same {
        Ok(())
    } else {
        Err(TrainError::Config(
            "the checkpoint's trainable tensors differ from this pipeline's (names or shapes)".into(),
        ))
    }
}

/// A batch's feeds for the training graph (labels only for classification: the causal-LM
/// loss reads its targets from `input_ids`).
fn feeds(batch: &Batch, objective: Objective) -> HashMap<String, Tensor> {
    let mut f = batch.feeds();
    if let Objective::Classification { .. } = objective {
        f.insert("labels".into(), batch.labels.clone());
    }
    f
}

fn save(
    cfg: &TrainConfig,
    run: &RunDir,
    step: u64,
    params: &[(String, Tensor)],
    optimizer: &AdamW,
    loader: &Loader,
    fingerprint: &str,
) -> Result<()> {
    let ck = Checkpoint {
        step,
        params: params.to_vec(),
        optimizer_step: optimizer.step_count(),
        moments: optimizer.moments().to_vec(),
        rng: vec![cfg.seed],
        position: loader.position(),
        fingerprint: fingerprint.to_string(),
    };
    ck.save(&run.checkpoints(), cfg.keep_checkpoints)?;
    Ok(())
}

/// The values of an f32 tensor, or an error naming its type.
pub(crate) fn f32s(t: &Tensor) -> Result<&[f32]> {
    t.as_slice::<f32>().ok_or_else(|| TrainError::Config(format!("expected a float32 tensor, got {}", t.dtype())))
}

fn ints(t: &Tensor) -> Result<Vec<i64>> {
    if let Some(v) = t.as_slice::<i64>() {
        return Ok(v.to_vec());
    }
    if let Some(v) = t.as_slice::<i32>() {
        return Ok(v.iter().map(|&x| i64::from(x)).collect());
    }
    Err(TrainError::Config(format!("expected integer labels, got {}", t.dtype())))
}

fn cross_entropy(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = row.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln() + f64::from(max);
    lse - f64::from(row[target])
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}
