//! `adaptc train`: adapt a model with a pass pipeline, train what it made trainable on the
//! CPU runtime, and write the run folder (metrics, checkpoints, adapted/merged ONNX, PEFT
//! adapter, loss curve).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adaptc_ir::{onnx, DataType};
use adaptc_passes::{PassManager, Pipeline, Registry};
use adaptc_train::trainer::{Objective, Observer, RunDir, Stop, TrainConfig};
use adaptc_train::{artifacts, AdamWConfig, DataOptions, Dataset, Decay, EvalRecord, StepRecord, Task, TextTokenizer};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cmd::run::DeviceArg;
use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  # LoRA on a sentence encoder with a new 2-class head (--labels adds add-head first):
  adaptc train minilm.onnx --data train.jsonl --eval eval.jsonl --task classification --labels 2 \\
      -p \"insert-lora{rank=8 alpha=16 targets=query,value}\" --epochs 3 --batch-size 16 --lr 1e-3 --out runs/sst
  # Causal LM, LoRA on every linear layer, a fixed number of steps:
  adaptc train llama.onnx --data corpus.jsonl --task causal-lm -p \"insert-lora{rank=8 targets=all-linear}\" \\
      --steps 200 --batch-size 8 --lr 3e-4 --out runs/lm
  # Continue a run that was stopped (Ctrl-C, kill, crash) from its last checkpoint:
  adaptc train ... --out runs/sst --resume
  # On an NVIDIA GPU, in mixed precision (bf16 products, f32 adapters and optimizer state),
  # each step replayed as one CUDA graph:
  adaptc train llama.onnx ... --device cuda --autocast bf16 --cuda-graphs
  # Less memory for long sequences: recompute each block's activations in the backward pass
  # (attention is already fused by default, so its scores are never stored):
  adaptc train llama.onnx ... --checkpoint-activations

Data: JSONL, one row per line, with integer arrays named like the model's inputs
(input_ids, attention_mask, token_type_ids, …) and an integer `label` for classification; or a
`text` string with --tokenizer tokenizer.json. Batches are padded to their longest row.

The run folder (--out) receives metrics.jsonl (one line per step and per evaluation),
checkpoints/step-N/ (written atomically; the last --keep-checkpoints kept), eval_predictions.jsonl
(classification: the last evaluation's class per --eval row), adapted.onnx
(adapters unmerged, trained weights), merged.onnx (adapters merged, head included: the model
to deploy), adapter/ (PEFT adapter_model.safetensors + adapter_config.json) and loss.png.
Ctrl-C saves a checkpoint and stops; --resume continues exactly where the last checkpoint
left off. A non-finite loss stops the run without applying the step.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TaskArg {
    Classification,
    CausalLm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ScheduleArg {
    Cosine,
    Linear,
    Constant,
}

/// Train adapters (or any trainable set) on adaptc's runtime (CPU or CUDA) and export the result.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The base model.
    model: PathBuf,
    /// Training rows (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation rows (JSONL), scored every --eval-every steps and at the end.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, value_enum)]
    task: TaskArg,
    /// Classes of a classification task; adds `add-head{kind=classification labels=N}` first
    /// unless the pipeline already adds a head.
    #[arg(long)]
    labels: Option<usize>,
    /// The adaptation pipeline, e.g. "insert-lora{rank=8 alpha=16 targets=query,value}".
    #[arg(short = 'p', long = "pipeline", default_value = "")]
    pipeline: String,
    /// Passes over the training data (the step count follows from it).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<u64>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches whose gradients are averaged before each optimizer step (summed in the
    /// graph, on the device with --device cuda).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Warmup steps (default: 10% of the steps).
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long, value_enum, default_value = "linear")]
    schedule: ScheduleArg,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every N steps (default: once per epoch).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// `tokenizer.json` for rows that hold `text`.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Truncate rows to this many tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// The run folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Where the training graph runs, optimizer step included (cuda: a `--features cuda` build
    /// and an NVIDIA GPU; the adapter weights and AdamW moments then stay on the GPU).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Recompute each transformer block's activations during the backward pass instead of
    /// keeping them (the `checkpoint-activations` pass): less memory, more compute, same results.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Mixed precision: run every MatMul/Gemm in bf16 (the `autocast{dtype=bf16}` pass) with
    /// frozen weights stored in bf16; adapters, optimizer state and the loss stay f32. Halves
    /// the frozen weights' memory and uses the GPU's bf16 tensor cores; on the CPU it only
    /// shows what bf16 does to the loss. `bf16-activations` also stores the activations in
    /// bf16 between ops (`activations=bf16`), as a model loaded in bf16 does: about half the
    /// activation memory and traffic; norms' statistics, masks and the loss stay f32.
    #[arg(long, value_enum)]
    autocast: Option<AutocastArg>,
    /// Keep attention as the exported ops instead of fusing each attention core into one op
    /// that never stores the [batch, heads, seq, seq] scores (the `fuse-attention` pass, on by
    /// default: same results up to float rounding, far less memory at long sequences).
    #[arg(long)]
    no_fuse_attention: bool,
    /// With --device cuda: capture a training step into a CUDA graph after two warm-up steps
    /// and replay it for every later step of the same batch shape, so the host launches one
    /// graph per step instead of one kernel per instruction. A step that cannot be captured
    /// runs as usual, and the run report says why.
    #[arg(long)]
    cuda_graphs: bool,
}

/// The precision `--autocast` runs the products in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AutocastArg {
    /// Products in bf16, activations f32 (`torch.autocast` on an f32 model).
    Bf16,
    /// Products in bf16 and activations stored in bf16 (a bf16 model under `torch.autocast`).
    Bf16Activations,
}

pub fn run(args: Args) -> Result<()> {
    adaptc_runtime::check_device(args.device.device())?;
    if args.cuda_graphs && args.device.device() != adaptc_runtime::Device::Cuda {
        bail!("--cuda-graphs replays training steps on a GPU: it needs --device cuda");
    }
    let objective = match (args.task, args.labels) {
        (TaskArg::Classification, Some(n)) if n >= 2 => Objective::Classification { labels: n },
        (TaskArg::Classification, Some(n)) => bail!("--labels {n}: a classification task needs at least 2 labels"),
        (TaskArg::Classification, None) => bail!("--task classification needs --labels N"),
        (TaskArg::CausalLm, Some(_)) => bail!("--labels is for classification; causal-lm predicts tokens"),
        (TaskArg::CausalLm, None) => Objective::CausalLm,
    };
    if args.batch_size == 0 || args.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    // The pipeline, with the head first when --labels asks for one.
    let mut pipeline = Pipeline::parse(&args.pipeline)?;
    if let Objective::Classification { labels } = objective {
        if !pipeline.passes.iter().any(|p| p.name == "add-head") {
            let head = Pipeline::parse(&format!("add-head{{kind=classification labels={labels}}}"))?;
            pipeline.passes.splice(0..0, head.passes);
        }
    }
    let registry = Registry::builtin();
    let manager = PassManager::new(&registry, &pipeline.to_string())?;
    let run_dir = RunDir(args.out.clone());
    if run_dir.metrics().exists() && !args.resume {
        bail!(
            "{} already holds a run (metrics.jsonl); pass --resume to continue it, or choose another --out",
            args.out.display()
        );
    }

    let bar = Bar::new();
    let mut model =
        onnx::load_with(&args.model, &bar).with_context(|| format!("cannot load {}", args.model.display()))?;
    adaptc_ir::verify(&model.graph).with_context(|| format!("{} is not a valid model", args.model.display()))?;
    let report = manager.run(&mut model)?;
    for run in &report.runs {
        for note in &run.notes {
            eprintln!("note ({}): {note}", run.name);
        }
    }

    let inputs: Vec<(String, DataType)> = model
        .graph
        .inputs
        .iter()
        .filter(|v| model.graph.initializer(&v.name).is_none())
        .map(|v| (v.name.clone(), v.ty.as_ref().and_then(|t| t.dtype()).unwrap_or(DataType::Int64)))
        .collect();
    let tokenizer = args.tokenizer.as_deref().map(|t| TextTokenizer::from_file(t, args.max_len)).transpose()?;
    let task = match objective {
        Objective::Classification { labels } => Task::Classification { labels },
        Objective::CausalLm => Task::LanguageModel,
    };
    let options = DataOptions { task, max_len: args.max_len };
    let data = Dataset::load(&args.data, &inputs, &options, tokenizer.as_ref())?;
    let eval = args.eval.as_deref().map(|e| Dataset::load(e, &inputs, &options, tokenizer.as_ref())).transpose()?;

    let per_step = args.batch_size * args.grad_accum;
    let steps_per_epoch = data.len().div_ceil(per_step) as u64;
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * steps_per_epoch,
        (None, None) => bail!("give --epochs E or --steps N"),
    };
    if steps == 0 {
        bail!("nothing to train: 0 steps");
    }
    let config = TrainConfig {
        objective,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        steps,
        lr: args.lr,
        warmup: args.warmup.unwrap_or(steps / 10),
        decay: match args.schedule {
            ScheduleArg::Cosine => Decay::Cosine,
            ScheduleArg::Linear => Decay::Linear,
            ScheduleArg::Constant => Decay::Constant,
        },
        min_lr_ratio: 0.0,
        adamw: AdamWConfig { weight_decay: args.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        seed: args.seed,
        eval_every: args.eval_every.or(Some(steps_per_epoch)),
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep_checkpoints.max(1),
        device: args.device.device(),
        checkpoint_activations: args.checkpoint_activations,
        autocast: args.autocast.is_some(),
        bf16_activations: args.autocast == Some(AutocastArg::Bf16Activations),
        fuse_attention: !args.no_fuse_attention,
        cuda_graphs: args.cuda_graphs,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot install the Ctrl-C handler")?;
    let mut progress = Progress::new(stop);
    let outcome = adaptc_train::train(&model, &config, &data, eval.as_ref(), &run_dir, args.resume, &mut progress);
    progress.bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(from) = outcome.resumed_from {
        eprintln!("resumed from step {from}");
    }
    if outcome.stop == Stop::Interrupted {
        eprintln!(
            "interrupted: checkpoint saved at step {} in {}; continue with --resume",
            outcome.step,
            run_dir.checkpoints().display()
        );
        std::process::exit(130);
    }
    let trained = artifacts::with_params(&model, &outcome.params)?;
    let mut written = artifacts::write(&args.out, &trained)?;
    if !outcome.predictions.is_empty() {
        let text: String = outcome
            .predictions
            .iter()
            .enumerate()
            .map(|(row, p)| format!("{{\"row\": {row}, \"prediction\": {p}}}\n"))
            .collect();
        let path = args.out.join("eval_predictions.jsonl");
        let mut tmp = tempfile::NamedTempFile::new_in(&args.out)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
        written.files.push("eval_predictions.jsonl".into());
    }
    for note in &written.notes {
        eprintln!("note: {note}");
    }
    if let Some(e) = &outcome.last_eval {
        match e.eval_accuracy {
            Some(acc) => eprintln!("eval at step {}: loss {:.4}, accuracy {:.2}%", e.step, e.eval_loss, acc * 100.0),
            None => eprintln!("eval at step {}: loss {:.4}", e.step, e.eval_loss),
        }
    }
    if let Some(profile) = &outcome.profile {
        eprintln!("time per op over all training steps (ADAPTC_PROFILE):\n{profile}");
    }
    if let Some(placement) = &outcome.last_step_placement {
        eprintln!("last step: {placement}");
    }
    eprintln!(
        "trained {} steps; peak activation memory {:.1} MiB; wrote {} in {}",
        outcome.step,
        outcome.peak_bytes as f64 / (1 << 20) as f64,
        written.files.join(", "),
        args.out.display()
    );
    Ok(())
}

/// The progress bar and the Ctrl-C flag.
struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn new(stop: Arc<AtomicBool>) -> Progress {
        Progress { bar: ProgressBar::hidden(), stop }
    }
}

impl Observer for Progress {
    fn on_start(&mut self, first_step: u64, total: u64) {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_position(first_step);
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = bar;
    }

    fn on_step(&mut self, r: &StepRecord) {
        self.bar.set_position(r.step);
        self.bar.set_message(format!("loss {:.4} {:.0} tok/s", r.loss, r.tokens_per_s));
    }

    fn on_eval(&mut self, r: &EvalRecord) {
        let acc = r.eval_accuracy.map(|a| format!(", accuracy {:.2}%", a * 100.0)).unwrap_or_default();
        self.bar.println(format!("step {}: eval loss {:.4}{acc}", r.step, r.eval_loss));
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
