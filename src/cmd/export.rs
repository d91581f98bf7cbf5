//! `adaptc export`: an adapted model's LoRA adapters as a PEFT adapter folder, and/or the model
//! with its adapters merged into the base weights.

use std::path::PathBuf;

use adaptc_ir::onnx::{self, SaveOptions};
use adaptc_passes::peft::{self, ExportOptions};
use adaptc_passes::{ManagerOptions, PassManager, Registry};
use anyhow::{bail, Context, Result};

use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  adaptc export adapted.onnx --peft adapter/                 adapter_model.safetensors + adapter_config.json
  adaptc export adapted.onnx --peft adapter/ --base-model sentence-transformers/all-MiniLM-L6-v2 --task-type FEATURE_EXTRACTION
  adaptc export adapted.onnx --merged merged.onnx            same as `rewrite -p merge-lora`

The PEFT folder loads with `PeftModel.from_pretrained(model, \"adapter/\")` on the Hugging Face
model the ONNX file was exported from. Tensor names are `<prefix><module path>.lora_A.weight`
etc.; use --prefix when PEFT's model wraps the exported module under another name (e.g.
`base_model.model.bert.` for a BertForSequenceClassification around an exported BertModel).
Layers with different ranks or alphas are written as rank_pattern/alpha_pattern. The folder is
written atomically: on error nothing is created or changed.";

/// Export an adapted model's LoRA/DoRA adapters for PEFT, or the merged model.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["peft", "merged"])))]
pub struct Args {
    /// Adapted ONNX model (with adaptc's adapter records).
    input: PathBuf,
    /// Write a PEFT adapter folder here.
    #[arg(long, value_name = "DIR")]
    peft: Option<PathBuf>,
    /// `base_model_name_or_path` in adapter_config.json.
    #[arg(long, value_name = "NAME", requires = "peft")]
    base_model: Option<String>,
    /// `task_type` in adapter_config.json (CAUSAL_LM, SEQ_CLS, FEATURE_EXTRACTION, …).
    #[arg(long, value_name = "T", requires = "peft")]
    task_type: Option<String>,
    /// Prefix of tensor names in front of module paths.
    #[arg(long, default_value = peft::DEFAULT_PREFIX, requires = "peft")]
    prefix: String,
    /// Write the model with every mergeable adapter folded into its base weights here.
    #[arg(long, value_name = "OUT.onnx")]
    merged: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let bar = Bar::new();
    // Build the merge pipeline first: a missing pass fails before loading.
    let merge = match &args.merged {
        Some(_) => Some(PassManager::new(&Registry::builtin(), "merge-lora")?.with_options(ManagerOptions {
            verify_each: true,
            print_after_change: false,
            stop_after: None,
        })),
        None => None,
    };
    let mut model = onnx::load_with(&args.input, &bar)?;
    adaptc_ir::verify(&model.graph).with_context(|| format!("{} is not a valid model", args.input.display()))?;

    // Everything is computed and checked before anything is written.
    let adapter = match &args.peft {
        Some(_) => {
            let opts = ExportOptions {
                prefix: args.prefix.clone(),
                base_model_name_or_path: args.base_model.clone(),
                task_type: args.task_type.clone(),
            };
            Some(
                peft::adapter_from_model(&model, &opts)
                    .with_context(|| format!("exporting {}", args.input.display()))?,
            )
        }
        None => None,
    };
    if let (Some(out), Some(manager)) = (&args.merged, merge) {
        let report = manager.run(&mut model)?;
        if !report.runs.iter().any(|r| r.changed) {
            bail!(
                "{} has no adapters that merge-lora can fold; nothing written to {}",
                args.input.display(),
                out.display()
            );
        }
        for run in &report.runs {
            for note in &run.notes {
                eprintln!("note ({}): {note}", run.name);
            }
        }
    }

    if let (Some(dir), Some(adapter)) = (&args.peft, &adapter) {
        for note in &adapter.notes {
            eprintln!("note: {note}");
        }
        peft::write_adapter(dir, adapter)?;
        let c = &adapter.config;
        let mut extra = String::new();
        if !c.rank_pattern.is_empty() {
            extra += &format!(", rank_pattern for {}", plural(c.rank_pattern.entries().count(), "module"));
        }
        if !c.alpha_pattern.is_empty() {
            extra += &format!(", alpha_pattern for {}", plural(c.alpha_pattern.entries().count(), "module"));
        }
        let targets = match &c.target_modules {
            Some(peft::TargetModules::List(l)) => l.join(","),
            Some(peft::TargetModules::Regex(r)) => format!("regex {r}"),
            None => String::new(),
        };
        eprintln!(
            "wrote {} ({}, {} tensors; r={} lora_alpha={}{}{}{}; target_modules={targets})",
            dir.display(),
            plural(adapter.modules.len(), "module"),
            adapter.tensors.len(),
            c.r,
            c.lora_alpha,
            if c.use_rslora { ", rsLoRA" } else { "" },
            if c.use_dora { ", DoRA" } else { "" },
            extra
        );
    }
    if let Some(out) = &args.merged {
        let saved = onnx::save(&model, out, &SaveOptions { progress: &bar, ..SaveOptions::default() })?;
        eprintln!("wrote {} ({} bytes)", out.display(), saved.model_bytes);
    }
    Ok(())
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
