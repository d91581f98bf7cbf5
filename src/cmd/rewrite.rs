//! `adaptc rewrite`: load, run a pass pipeline, save.

use std::path::PathBuf;

use adaptc_ir::onnx::{self, ExternalMode, SaveOptions};
use adaptc_passes::{ManagerOptions, PassManager, Registry};
use anyhow::{Context, Result};

use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  adaptc rewrite model.onnx -o copy.onnx                 lossless copy (no pipeline)
  adaptc rewrite model.onnx -p \"fold-constants,cse,dce\" -o clean.onnx --stats
  adaptc rewrite big.onnx -o out.onnx --external always  weights into out.onnx.data
  adaptc rewrite model.onnx -p dce -o out.onnx --verify  then check OUTPUT against INPUT

Models whose input used external data are written with external data next to the output
(OUT.onnx.data, relative location); so is any model over 2 GiB. The output appears only when
everything succeeded: nothing is left half-written.

--verify runs `adaptc verify INPUT OUTPUT` in-process once OUTPUT is written: the same random
inputs through tract for both models, every output compared (--rtol, --atol, --seed, --dims,
--shape, --runs as for `adaptc verify`), the table printed. Beyond tolerance (or when tract
cannot run a model) the command fails with exit status 1, but OUTPUT stays written so that it
can be inspected.";

/// Run a pass pipeline over a model and write the result (no pipeline: a lossless copy).
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Input ONNX model.
    input: PathBuf,
    /// Output ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// Pass pipeline, e.g. "fold-constants,cse,dce" (see `adaptc passes`).
    #[arg(short, long)]
    pipeline: Option<String>,
    /// Skip verifying the graph after each pass.
    #[arg(long)]
    no_verify: bool,
    /// Print the graph dump after every pass that changed it.
    #[arg(long)]
    print_after_change: bool,
    /// Print a table of passes with timing and statistics.
    #[arg(long)]
    stats: bool,
    /// Stop after the first N passes (for bisecting a pipeline).
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    /// Where weights go: auto (external if the input used it or >2 GiB), always, never.
    #[arg(long, value_enum, default_value_t = External::Auto)]
    external: External,
    /// After writing OUTPUT, check numerically that it computes what INPUT does (tract, same
    /// random inputs); beyond tolerance exit 1, OUTPUT is kept.
    #[arg(long)]
    verify: bool,
    #[command(flatten, next_help_heading = "Numerical check (with --verify)")]
    check: crate::verify::CheckArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum External {
    Auto,
    Always,
    Never,
}

pub fn run(args: Args) -> Result<()> {
    let registry = Registry::builtin();
    // Build the pipeline first: a typo in an option fails before any loading.
    let manager = match &args.pipeline {
        Some(text) => Some(PassManager::new(&registry, text)?.with_options(ManagerOptions {
            verify_each: !args.no_verify,
            print_after_change: args.print_after_change,
            stop_after: args.stop_after,
        })),
        None => None,
    };
    let check = if args.verify { Some(args.check.settings()?) } else { None };
    let bar = Bar::new();
    let mut model = onnx::load_with(&args.input, &bar)?;
    adaptc_ir::verify(&model.graph).with_context(|| format!("{} is not a valid model", args.input.display()))?;
    if let Some(manager) = manager {
        let report = manager.run(&mut model)?;
        for run in &report.runs {
            if let Some(dump) = &run.dump_after {
                eprintln!("// ----- after {} -----\n{dump}", run.spec_text);
            }
            for note in &run.notes {
                eprintln!("note ({}): {note}", run.name);
            }
        }
        if args.stats {
            eprintln!("{report}");
        }
    }
    let options = SaveOptions {
        external: match args.external {
            External::Auto => ExternalMode::Auto,
            External::Always => ExternalMode::Always,
            External::Never => ExternalMode::Never,
        },
        progress: &bar,
        ..SaveOptions::default()
    };
    let saved = onnx::save(&model, &args.output, &options)?;
    if let Some(data) = &saved.data_path {
        eprintln!(
            "wrote {} ({} bytes) and {} ({} bytes; {} tensors copied file-to-file, {} written)",
            args.output.display(),
            saved.model_bytes,
            data.display(),
            saved.data_bytes,
            saved.tensors_copied,
            saved.tensors_written
        );
    } else {
        eprintln!("wrote {} ({} bytes)", args.output.display(), saved.model_bytes);
    }
    if let Some(settings) = check {
        let kept = || format!("--verify: {} was written and is kept", args.output.display());
        let before = onnx::load_with(&args.input, &bar).with_context(kept)?;
        let after = onnx::load_with(&args.output, &bar).with_context(kept)?;
        let report = crate::verify::check(&before, &args.input, &after, &args.output, &settings).with_context(kept)?;
        eprintln!("{report}");
        if let Some(reason) = report.failure() {
            anyhow::bail!("{}: {reason}", kept());
        }
    }
    Ok(())
}
