//! What adapter passes leave behind in the model: one [`AdapterRecord`] per inserted adapter
//! and the set of trainable initializers, stored as JSON in the model's `metadata_props`
//! (key `adaptc.adapters`), so that a later run (`merge-lora`, `export --peft`, training) acts
//! on an adapted ONNX file without guessing what was inserted.

use std::collections::{BTreeMap, BTreeSet};

use adaptc_ir::Model;
use serde::{Deserialize, Serialize};

use crate::pass::PassError;

/// The `metadata_props` key holding the adapter state.
pub const METADATA_KEY: &str = "adaptc.adapters";

/// Initializer metadata marking a trainable tensor (`adaptc.trainable=true`), kept in step with
/// [`AdapterState::trainable`] by [`AdapterState::store`]. Canonical passes read it: a trainable
/// initializer is not a constant, so `fold-constants` never folds it and `cse` never ties it.
pub const TRAINABLE: &str = "adaptc.trainable";

/// The metadata key every node inserted by a pass carries, with the pass name as value.
pub const CREATED_BY: &str = "adaptc.pass";

/// Node metadata marking a value that autodiff must treat as a constant (its producer's output
/// gets no gradient), e.g. DoRA's weight norm: `adaptc.stop_gradient=true`.
pub const STOP_GRADIENT: &str = "adaptc.stop_gradient";

/// Which method an adapter implements (`methods.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Lora,
    Dora,
    Ia3,
    Bottleneck,
    Prompt,
    /// A task head (`add-head`): trained with the adapters, kept by `merge-lora`, and for PEFT
    /// a `modules_to_save` module rather than an adapter.
    Head,
}

/// How the base weight is stored, so a merge can fold `ΔW` in the right orientation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `[in, out]`: `y = x · W` (MatMul, Gemm transB=0; PEFT's `fan_in_fan_out`).
    InOut,
    /// `[out, in]`: `y = x · Wᵀ` (Gemm transB=1, MatMul over Transpose(W); PyTorch's Linear).
    OutIn,
}

impl From<crate::pattern::WeightLayout> for Layout {
    fn from(l: crate::pattern::WeightLayout) -> Layout {
        match l {
            crate::pattern::WeightLayout::InOut => Layout::InOut,
            crate::pattern::WeightLayout::OutIn => Layout::OutIn,
        }
    }
}

/// One inserted adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    pub method: Method,
    /// Module path of the adapted layer (`encoder.layer.0.attention.self.query`).
    pub module: String,
    /// The base MatMul/Gemm node the adapter attaches to (empty for prompt tuning).
    pub target_node: String,
    /// Base weight initializer and its layout (empty / `None` when not a linear adapter).
    pub base_weight: String,
    pub layout: Option<Layout>,
    /// Role → initializer name: `lora_A`, `lora_B`, `magnitude`, `ia3`, `down`, `up`, …
    pub params: BTreeMap<String, String>,
    /// Names of the nodes the pass inserted.
    pub nodes: Vec<String>,
    /// The value whose name the adapter's result took over (consumers read it unchanged).
    pub output: String,
    /// The renamed base value the adapter reads (`<output>` before the adapter).
    pub base_output: String,
    /// LoRA family: rank, alpha, the scaling `s` actually applied, rsLoRA.
    pub rank: usize,
    pub alpha: f32,
    pub scale: f32,
    pub rslora: bool,
    /// Method-specific settings (IA3 `feedforward`, bottleneck `placement`, …).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Everything adapter passes recorded in a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterState {
    pub adapters: Vec<AdapterRecord>,
    /// Initializers training updates (adapter weights and any `mark-trainable` choices).
    pub trainable: BTreeSet<String>,
}

impl AdapterState {
    /// Reads the state from the model's metadata (empty when there is none).
    pub fn load(model: &Model) -> Result<AdapterState, PassError> {
        match model.metadata.get(METADATA_KEY) {
            None => Ok(AdapterState::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                PassError::failed("adapters", format!("the model's `{METADATA_KEY}` metadata is not valid: {e}"))
            }),
        }
    }

    /// Writes the state into the model's metadata (removing the key when empty) and marks the
    /// trainable initializers (see [`TRAINABLE`]).
    pub fn store(&self, model: &mut Model) {
        let names: Vec<String> = model.graph.initializers().map(|t| t.name.clone()).collect();
        for name in names {
            let trainable = self.trainable.contains(&name);
            if let Some(t) = model.graph.initializer_mut(&name) {
                if trainable {
                    t.metadata.set(TRAINABLE, "true");
                } else if t.metadata.get(TRAINABLE).is_some() {
                    t.metadata.0.retain(|(k, _)| k != TRAINABLE);
                }
            }
        }
        if self.adapters.is_empty() && self.trainable.is_empty() {
            model.metadata.0.retain(|(k, _)| k != METADATA_KEY);
        } else {
            let text = serde_json::to_string(self).unwrap_or_default();
            model.metadata.set(METADATA_KEY, text);
        }
    }

    /// The adapters of one method.
    pub fn of(&self, method: Method) -> impl Iterator<Item = &AdapterRecord> {
        self.adapters.iter().filter(move |a| a.method == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_metadata() {
        let mut model = Model::new(adaptc_ir::Graph::new("g"), 17);
        assert_eq!(AdapterState::load(&model).unwrap(), AdapterState::default());
        let mut state = AdapterState::default();
        state.trainable.insert("q.lora_A.weight".into());
        state.adapters.push(AdapterRecord {
            method: Method::Lora,
            module: "q".into(),
            target_node: "mm".into(),
            base_weight: "w".into(),
            layout: Some(Layout::InOut),
            params: [("lora_A".to_string(), "q.lora_A.weight".to_string())].into(),
            nodes: vec!["n1".into()],
            output: "y".into(),
            base_output: "y_base".into(),
            rank: 8,
            alpha: 16.0,
            scale: 2.0,
            rslora: false,
            extra: BTreeMap::new(),
        });
        state.store(&mut model);
        assert_eq!(AdapterState::load(&model).unwrap(), state);
        AdapterState::default().store(&mut model);
        assert!(model.metadata.get(METADATA_KEY).is_none());
        model.metadata.set(METADATA_KEY, "{not json");
        assert!(AdapterState::load(&model).unwrap_err().to_string().contains("not valid"));
    }
}
