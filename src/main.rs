//! The `adaptc` command line: argument parsing, progress and reports. No model logic lives
//! here; every command calls the library crates.

mod cmd;
mod platform;
mod progress;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: platform::Allocator = platform::Allocator;

const AFTER_HELP: &str = "\
Examples:
  adaptc inspect model.onnx                      what is in a model: ops, parameters, linear layers
  adaptc rewrite model.onnx -o copy.onnx         lossless copy through the IR
  adaptc rewrite model.onnx -p dce,cse -o out.onnx
  adaptc passes                                  every pass with its options
  adaptc export adapted.onnx --peft adapter/     LoRA adapters as a PEFT folder (or --merged out.onnx)
  adaptc import-peft model.onnx --adapter adapter/ -o adapted.onnx
  adaptc verify model.onnx out.onnx              same outputs on the same random inputs (tract)
  adaptc run model.onnx --input x=x.npy --out-dir out/   run on the CPU runtime, outputs as .npy

Pipelines are MLIR-style text: passes separated by commas, options in braces separated by
spaces, list values separated by commas:  \"fold-constants,cse,dce\"";

/// adaptc: a compiler for model adaptation on ONNX graphs.
#[derive(Parser)]
#[command(name = "adaptc", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Rewrite(cmd::rewrite::Args),
    Inspect(cmd::inspect::Args),
    Passes(cmd::passes::Args),
    Export(cmd::export::Args),
    ImportPeft(cmd::import_peft::Args),
    Verify(cmd::verify::Args),
    Run(cmd::run::Args),
    Train(cmd::train::Args),
}

fn main() -> ExitCode {
    if let Err(e) = platform::check_cpu() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    platform::tune_allocator();
    platform::quiet_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Rewrite(args) => cmd::rewrite::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Passes(args) => cmd::passes::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::ImportPeft(args) => cmd::import_peft::run(args),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Train(args) => cmd::train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: library errors often repeat their source's text
/// in their own message, which `{:#}` would print twice.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
