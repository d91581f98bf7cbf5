//! `adaptc import-peft`: apply a PEFT LoRA/rsLoRA/DoRA adapter folder to an ONNX base model.

use std::path::PathBuf;

use adaptc_ir::onnx::{self, ExternalMode, SaveOptions};
use adaptc_passes::peft::{self, ImportOptions};
use anyhow::{Context, Result};

use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  adaptc import-peft model.onnx --adapter my-lora/ -o adapted.onnx
  adaptc import-peft llama.onnx --adapter lora/ -o out.onnx --external always

Each `<prefix><module>.lora_A.weight` / `.lora_B.weight` (and DoRA `.lora_magnitude_vector`)
tensor is attached to the linear layer with that module path (see `adaptc inspect`). Module
paths are tried as saved, then without a leading `model.`, then with one added, so an adapter
trained on LlamaForCausalLM fits an export of LlamaModel and the other way round. Rank, alpha,
rsLoRA, rank_pattern and alpha_pattern come from adapter_config.json. Modules that cannot be
found, and shapes that do not fit, are errors listing what was and was not matched; nothing is
written then.";

/// Insert the LoRA adapters of a PEFT adapter folder into an ONNX model.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Base ONNX model (exported from the model the adapter was trained on).
    input: PathBuf,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Output ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// Prefix of tensor names in front of module paths.
    #[arg(long, default_value = peft::DEFAULT_PREFIX)]
    prefix: String,
    /// Where weights go: auto (external if the input used it or >2 GiB), always, never.
    #[arg(long, value_enum, default_value_t = External::Auto)]
    external: External,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum External {
    Auto,
    Always,
    Never,
}

pub fn run(args: Args) -> Result<()> {
    // The adapter is small: read and check it before loading the model.
    let adapter = peft::read_adapter(&args.adapter)?;
    let bar = Bar::new();
    let mut model = onnx::load_with(&args.input, &bar)?;
    adaptc_ir::verify(&model.graph).with_context(|| format!("{} is not a valid model", args.input.display()))?;
    let report = peft::import_adapter(&mut model, &adapter, &ImportOptions { prefix: args.prefix.clone() })
        .with_context(|| format!("importing {} into {}", args.adapter.display(), args.input.display()))?;
    adaptc_ir::verify(&model.graph).context("the adapted graph does not verify")?;

    let ranks: std::collections::BTreeSet<usize> = report.modules.iter().map(|m| m.rank).collect();
    eprintln!(
        "imported {} modules ({} parameters; r={}{}{}; {})",
        report.modules.len(),
        report.params,
        ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("/"),
        if report.rslora { ", rsLoRA" } else { "" },
        if report.dora { ", DoRA" } else { "" },
        report.mapping
    );
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
    eprintln!("wrote {} ({} bytes)", args.output.display(), saved.model_bytes);
    Ok(())
}
