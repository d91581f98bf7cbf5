//! Exchanging LoRA adapters with Hugging Face PEFT.
//!
//! A PEFT LoRA adapter is a folder with `adapter_config.json` ([`config`]) and
//! `adapter_model.safetensors` ([`safetensors`]) holding, per adapted module,
//! `base_model.model.<module>.lora_A.weight [r, in]`, `….lora_B.weight [out, r]` and, for DoRA,
//! `….lora_magnitude_vector [out]`. adaptc's LoRA adapters use the same layout and are named
//! after the same module paths (recovered from the exported graph), so:
//!
//! - [`adapter_from_model`] turns the LoRA/DoRA adapters recorded in an adapted model
//!   ([`AdapterState`](crate::adapters::AdapterState)) into a [`PeftAdapter`], and
//!   [`write_adapter`] saves it as `PeftModel.from_pretrained` expects (`adaptc export --peft`);
//! - [`read_adapter`] loads a folder saved by PEFT, and [`import_adapter`] inserts its adapters
//!   into the matching linear layers of an ONNX base model (`adaptc import-peft`).
//!
//! Neither direction changes anything on error: export checks everything before writing, and
//! writes the folder atomically; import checks every module before inserting any adapter.

pub mod config;
mod export;
mod import;
pub mod safetensors;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use config::{LoraAdapterConfig, Pattern, TargetModules};
pub use export::{adapter_from_model, write_adapter, ExportOptions, PeftAdapter};
pub use import::{import_adapter, read_adapter, ImportOptions, ImportReport, LoadedAdapter, PathMapping};
pub use safetensors::{Dtype, OwnedTensor, SafeTensors, SafetensorsError};

/// The adapter configuration's file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter weights' file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts in front of module paths in weight names (`PeftModel.base_model.model`).
pub const DEFAULT_PREFIX: &str = "base_model.model.";

/// Errors of PEFT export and import. Each names the file, module or tensor at fault.
#[derive(Debug, Error)]
pub enum PeftError {
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),

    #[error("{file}: {reason}")]
    Config { file: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The adapter and the model do not fit together (nothing to export, unmatched modules,
    /// shape mismatches, unsupported tensors).
    #[error("{0}")]
    Mismatch(String),

    #[error(transparent)]
    Pass(#[from] crate::PassError),

    #[error(transparent)]
    Ir(#[from] adaptc_ir::IrError),
}

impl PeftError {
    fn io(path: &Path, source: std::io::Error) -> PeftError {
        PeftError::Io { path: path.to_path_buf(), source }
    }
}
