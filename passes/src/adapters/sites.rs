//! The layers an adapter pass is about to adapt, checked once for every method: each module is
//! applied at one place only, is not adapted already (skipped with a note), and has a float
//! constant weight and an output some node produces. Passes plan their own tensors on top.

use std::collections::BTreeMap;

use adaptc_ir::{DataType, Graph};

use crate::pass::{PassContext, PassError};
use crate::pattern::LinearLayer;

/// A layer that passed the common checks.
pub(crate) struct Site {
    pub layer: LinearLayer,
    /// The module path (empty when the layer has none).
    pub module: String,
    /// The weight's element type (a float type).
    pub dtype: DataType,
}

/// Checks `selected` for `pass`, in order. `existing` names the adapter a layer already has
/// (`Some("a Lora adapter")`): such layers are skipped with a note and counted in the second
/// value returned. `verb` says what the pass does to a module, for the refusal of shared ones.
pub(crate) fn checked_sites(
    pass: &str,
    graph: &Graph,
    selected: Vec<LinearLayer>,
    verb: &str,
    existing: impl Fn(&LinearLayer) -> Option<String>,
    cx: &mut PassContext,
) -> Result<(Vec<Site>, i64), PassError> {
    let fail = |module: &str, reason: String| PassError::failed(pass, format!("`{module}`: {reason}"));
    let mut sites = Vec::new();
    let mut seen = BTreeMap::<String, String>::new();
    let mut skipped = 0;
    for layer in selected {
        let module = layer.module_path.clone().unwrap_or_default();
        let label = graph.node(layer.node).label();
        if let Some(first) = seen.insert(module.clone(), label.clone()) {
            return Err(fail(
                &module,
                format!(
                    "the module is applied at more than one place (nodes `{first}` and `{label}`); {verb} a module \
                     that is called twice is not supported (exclude it)"
                ),
            ));
        }
        if let Some(what) = existing(&layer) {
            cx.note(format!("{module}: skipped, it already has {what}"));
            skipped += 1;
            continue;
        }
        let Some(w) = layer.weight_tensor(graph) else {
            return Err(fail(&module, format!("the weight `{}` is not a constant", layer.weight)));
        };
        let dtype = w.dtype();
        if !dtype.is_float() {
            return Err(fail(&module, format!("the weight `{}` is {dtype}, not a float type", layer.weight)));
        }
        if graph.producer(&layer.output).is_none() {
            return Err(fail(&module, format!("the layer's output `{}` has no producer", layer.output)));
        }
        sites.push(Site { layer, module, dtype });
    }
    Ok((sites, skipped))
}
