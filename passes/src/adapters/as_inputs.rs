//! `lora-as-inputs`: makes every LoRA/DoRA adapter weight also a graph input of the same name.
//!
//! In ONNX an initializer whose name is also a graph input is a default value that the caller
//! may override, so after this pass one deployed model serves many adapters: feed another
//! adapter's `…lora_A.weight` / `…lora_B.weight` (and DoRA's `…lora_magnitude_vector`) at run
//! time, or nothing to get the stored one (the layout onnxruntime's multi-LoRA serving
//! expects). The initializers stay; each new input is declared with the initializer's type
//! and shape, and appended after the existing inputs in record order.
//!
//! Preconditions: adapters recorded by `insert-lora` / `import-peft`. Preserves: the outputs
//! for the default inputs, every node. Idempotent: weights that already are graph inputs are
//! left alone (the second run reports no change). `merge-lora` still works afterwards: it
//! merges the stored values and drops these inputs.
//!
//! Example pipeline: `insert-lora{targets=query,value},lora-as-inputs`. Statistics:
//! `lora.inputs_added`.

use adaptc_ir::{Dim, Model, ValueInfo};

use super::record::{AdapterState, Method};
use crate::options::Options;
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "lora-as-inputs";

/// The `lora-as-inputs` pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoraAsInputs;

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "expose LoRA/DoRA adapter weights as optional graph inputs (stored values as defaults)",
        options: Vec::new(),
        example: "insert-lora{targets=query,value},lora-as-inputs",
        build: |_: &Options| Ok(Box::new(LoraAsInputs)),
    }
}

impl Pass for LoraAsInputs {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let state = AdapterState::load(model)?;
        let graph = &mut model.graph;
        let mut added = 0i64;
        for rec in state.adapters.iter().filter(|r| matches!(r.method, Method::Lora | Method::Dora)) {
            for name in rec.params.values() {
                if graph.is_graph_input(name) {
                    continue;
                }
                let Some(t) = graph.initializer(name) else {
                    return Err(PassError::failed(
                        PASS,
                        format!("`{}`: adapter weight `{name}` is not an initializer", rec.module),
                    ));
                };
                let dims = t.dims().iter().map(|&d| Dim::Known(d as i64)).collect();
                graph.inputs.push(ValueInfo::tensor(name.clone(), t.dtype(), dims));
                added += 1;
            }
        }
        if state.adapters.is_empty() {
            cx.note("the model records no adapters");
        }
        Ok(PassOutcome::changed(added > 0).stat("lora.inputs_added", added))
    }
}
