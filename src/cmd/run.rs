//! `adaptc run`: executes a model on adaptc's runtime (CPU, or CUDA in a `--features cuda`
//! build) with inputs from `.npy` files and writes every graph output as `.npy`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adaptc_ir::onnx;
use adaptc_runtime::{npy, Device, Session, SessionOptions};
use anyhow::{bail, Context, Result};

use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  adaptc run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --out-dir out/
  adaptc run model.onnx --input x=x.npy --out-dir out/ --device cuda

Every input without an initializer default must be given, as a little-endian C-order .npy
array of the declared element type and shape. Each graph output is written to
OUT_DIR/<output name>.npy (characters other than letters, digits, '.', '-' and '_' become '_').
Outputs are written only when the whole run succeeded, each to a temporary file renamed into
place. With ADAPTC_PROFILE=1 set, the time spent per op type is printed to stderr.

--device cuda needs a build with `--features cuda`, an NVIDIA GPU with a CUDA 13 driver, and
libcublas.so.13 and libnvrtc.so.13 on the library path; it prints to stderr which ops ran on
the GPU and which on the CPU, and how much was copied between them.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU runtime (always built; the numerical reference).
    Cpu,
    /// The first NVIDIA GPU (needs a build with `--features cuda` and a CUDA 13 driver).
    Cuda,
}

impl DeviceArg {
    pub fn device(self) -> Device {
        match self {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
}

/// Run a model on adaptc's runtime (CPU, or CUDA): inputs from .npy files, outputs to .npy files.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The model to run.
    model: PathBuf,
    /// An input as NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Folder to write OUTPUT_NAME.npy files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

/// A file name for an output name: anything unusual becomes `_`, and names that would mean
/// something else to the file system (`.`, `..`, empty) are prefixed.
pub fn file_name(output: &str) -> String {
    let mut s: String = output
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        s = format!("output_{s}");
    }
    format!("{s}.npy")
}

pub fn run(args: Args) -> Result<()> {
    adaptc_runtime::check_device(args.device.device())?;
    let mut inputs = HashMap::new();
    for spec in &args.inputs {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--input `{spec}` is not NAME=FILE.npy");
        };
        if inputs.contains_key(name) {
            bail!("input `{name}` is given twice");
        }
        let t = npy::read(Path::new(file)).with_context(|| format!("input `{name}`"))?;
        inputs.insert(name.to_string(), t);
    }
    let bar = Bar::new();
    let model = onnx::load_with(&args.model, &bar).with_context(|| format!("cannot load {}", args.model.display()))?;
    let session = Session::new(&model, SessionOptions { device: args.device.device(), ..Default::default() })?;
    let (outputs, stats) = session.run_with_stats(inputs)?;
    if let Some(placement) = &stats.placement {
        eprintln!("{placement}");
    }
    if let Some(profile) = &stats.profile {
        eprintln!("{profile}");
    }

    // Encode everything first so that a failure writes nothing.
    let mut files = Vec::with_capacity(outputs.len());
    let mut seen = HashMap::new();
    for (name, t) in &outputs {
        let file = file_name(name);
        if let Some(other) = seen.insert(file.clone(), name.clone()) {
            bail!("outputs `{other}` and `{name}` would both be written to {file}");
        }
        let bytes = npy::encode(t).with_context(|| format!("output `{name}`"))?;
        files.push((name, file, bytes, t.shape().to_vec(), t.dtype()));
    }
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    for (name, file, bytes, shape, dtype) in files {
        let path = args.out_dir.join(&file);
        let mut tmp = tempfile::NamedTempFile::new_in(&args.out_dir)
            .with_context(|| format!("cannot write in {}", args.out_dir.display()))?;
        std::io::Write::write_all(&mut tmp, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{name}: {dtype}{shape:?} -> {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn output_names_become_safe_file_names() {
        assert_eq!(file_name("logits"), "logits.npy");
        assert_eq!(file_name("a/b:0"), "a_b_0.npy");
        assert_eq!(file_name(".."), "output_...npy");
        assert_eq!(file_name(""), "output_.npy");
    }
}
