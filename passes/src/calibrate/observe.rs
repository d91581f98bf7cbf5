//! Running a model on calibration batches and reading intermediate values.

use std::collections::HashMap;

use adaptc_ir::{Model, ValueInfo};
use adaptc_runtime::{Session, SessionOptions, Tensor};

use super::data::Batch;

/// Runs `model` on every batch and returns, per batch, the `values` in the order asked. The
/// values become extra outputs of a copy of the model; `model` is not changed.
pub fn observe(model: &Model, values: &[String], batches: &[Batch]) -> Result<Vec<Vec<Tensor>>, String> {
    let mut probe = model.clone();
    for v in values {
        if !probe.graph.is_graph_output(v) {
            probe.graph.outputs.push(ValueInfo::new(v.clone(), None));
        }
    }
    let session = Session::new(&probe, SessionOptions::default()).map_err(|e| e.to_string())?;
    let mut seen = Vec::with_capacity(batches.len());
    for batch in batches {
        let feeds: HashMap<String, Tensor> = batch.inputs.iter().cloned().collect();
        let outputs: HashMap<String, Tensor> = session.run(feeds).map_err(|e| e.to_string())?.into_iter().collect();
        let picked = values
            .iter()
            .map(|v| outputs.get(v).cloned().ok_or_else(|| format!("the runtime returned no `{v}`")))
            .collect::<Result<Vec<_>, _>>()?;
        seen.push(picked);
    }
    Ok(seen)
}
