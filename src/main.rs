//! The `adaptc` command line: argument parsing, progress and reports. No model logic lives
//! here; every command calls the library crates.

mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  adaptc inspect model.onnx                      what is in a model: ops, parameters, linear layers
  adaptc rewrite model.onnx -o copy.onnx         lossless copy through the IR
  adaptc rewrite model.onnx -p dce,cse -o out.onnx
  adaptc passes                                  every pass with its options

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Rewrite(args) => cmd::rewrite::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Passes(args) => cmd::passes::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
