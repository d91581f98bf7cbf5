//! `adaptc verify`: do two models compute the same thing? Same random inputs through tract,
//! every output compared.

use std::path::PathBuf;

use adaptc_ir::onnx;
use anyhow::{bail, Context, Result};

use crate::progress::Bar;
use crate::verify::{self, CheckArgs};

const AFTER_HELP: &str = "\
Examples:
  adaptc verify base.onnx merged.onnx                      same outputs within rtol 1e-4, atol 1e-5?
  adaptc verify a.onnx b.onnx --dims batch=1,seq=64 --runs 3 --seed 7
  adaptc verify a.onnx b.onnx --shape pixel_values:1x3x224x224

Both models get the same inputs, generated from their graph inputs: token ids below the
embedding table's size (for `input_ids`, or any integer input that indexes an embedding),
masks of ones with trailing zeros (`attention_mask`), zeros then ones (`token_type_ids`),
positions (`position_ids`), N(0, 1) floats, random booleans. Inputs with an initializer
default (e.g. adapter weights exposed as optional inputs) are not fed and keep their defaults;
the models must agree on the others (names and types).

Each model is prepared for tract in memory (specialize-shapes, fold-constants, decompose
Gelu/GatherND, dce; declared intermediate shapes dropped) and run by tract. Per output it
prints the shape, max |A|, the max absolute difference and the max relative difference
(relative to max |A|); an output passes when max|A-B| <= atol + rtol * max|A|.

Exit status: 0 when every output is within tolerance; 1 when one is not, or when the models
take different inputs, or tract cannot run one of them (the message names the op and node).";

/// Check that two models compute the same outputs (same random inputs, run by tract).
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The reference model.
    a: PathBuf,
    /// The model to compare with it.
    b: PathBuf,
    #[command(flatten)]
    check: CheckArgs,
}

pub fn run(args: Args) -> Result<()> {
    let settings = args.check.settings()?;
    for (which, path) in [("A", &args.a), ("B", &args.b)] {
        if !path.is_file() {
            bail!("{which}: {} does not exist or is not a file", path.display());
        }
    }
    let bar = Bar::new();
    let a = onnx::load_with(&args.a, &bar).with_context(|| format!("cannot load A ({})", args.a.display()))?;
    let b = onnx::load_with(&args.b, &bar).with_context(|| format!("cannot load B ({})", args.b.display()))?;
    let report = verify::check(&a, &args.a, &b, &args.b, &settings)?;
    println!("{report}");
    if let Some(reason) = report.failure() {
        bail!("{reason}");
    }
    Ok(())
}
