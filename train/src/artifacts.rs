//! What a run leaves for deployment: `adapted.onnx` (adapters kept, trained weights),
//! `merged.onnx` (adapters folded into the base weights, head included: the deployable model),
//! `adapter/` (PEFT format) and `loss.png`.

use std::path::Path;

use adaptc_ir::onnx::{self, SaveOptions};
use adaptc_ir::Model;
use adaptc_passes::peft::{self, ExportOptions};
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::Tensor;

use crate::error::{Result, TrainError};
use crate::metrics::{loss_series, read_records};

/// The adapted model with the trained values in place of its trainable initializers.
pub fn with_params(model: &Model, params: &[(String, Tensor)]) -> Result<Model> {
    let mut m = model.clone();
    for (name, value) in params {
        let old = m
            .graph
            .initializer(name)
            .ok_or_else(|| TrainError::Config(format!("trained tensor `{name}` is not an initializer of the model")))?;
        let mut t = value.to_ir(name)?;
        t.metadata = old.metadata.clone();
        t.doc_string = old.doc_string.clone();
        m.graph.replace_initializer(t).map_err(|e| TrainError::Config(format!("`{name}`: {e}")))?;
    }
    Ok(m)
}

/// What [`write`] produced, and what it could not.
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<String>,
    /// Artifacts skipped, with the reason (e.g. no LoRA adapter to export in PEFT format).
    pub notes: Vec<String>,
}

/// Writes `adapted.onnx`, `merged.onnx`, `adapter/` and `loss.png` into `run`.
pub fn write(run: &Path, trained: &Model) -> Result<Written> {
    let mut w = Written::default();
    let save = |m: &Model, name: &str, w: &mut Written| -> Result<()> {
        let path = run.join(name);
        onnx::save(m, &path, &SaveOptions::default())
            .map_err(|e| TrainError::Config(format!("cannot write {}: {e}", path.display())))?;
        w.files.push(name.to_string());
        Ok(())
    };
    save(trained, "adapted.onnx", &mut w)?;

    let mut merged = trained.clone();
    let merge = PassManager::new(&Registry::builtin(), "merge-lora,dce")?;
    match merge.run(&mut merged) {
        Ok(_) => save(&merged, "merged.onnx", &mut w)?,
        Err(e) => w.notes.push(format!("merged.onnx not written: {e}")),
    }

    match peft::adapter_from_model(trained, &ExportOptions::default()) {
        Ok(adapter) if !adapter.tensors.is_empty() => {
            let dir = run.join("adapter");
            peft::write_adapter(&dir, &adapter)
                .map_err(|e| TrainError::Config(format!("cannot write {}: {e}", dir.display())))?;
            w.files.push("adapter/".into());
            w.notes.extend(adapter.notes);
        }
        Ok(_) => w.notes.push("adapter/ not written: the model has no LoRA adapter".into()),
        Err(e) => w.notes.push(format!("adapter/ not written: {e}")),
    }

    let records = read_records(&run.join("metrics.jsonl"))?;
    let (train, eval) = loss_series(&records);
    crate::plot::plot_loss(&run.join("loss.png"), &train, &eval, 800, 480)?;
    w.files.push("loss.png".into());
    Ok(w)
}
