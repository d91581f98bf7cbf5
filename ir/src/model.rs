//! A model: the main graph plus the file-level fields that travel with it.

use crate::onnx::proto as pb;

use crate::graph::Graph;
use crate::metadata::{Extras, Metadata};

/// An operator set a model imports (`domain` `""` is the default ONNX domain).
#[derive(Clone, Debug, PartialEq)]
pub struct OpsetImport {
    pub domain: String,
    pub version: i64,
    pub(crate) extras: Extras,
}

impl OpsetImport {
    pub fn new(domain: impl Into<String>, version: i64) -> OpsetImport {
        let explicit = crate::onnx::presence::bit::DOMAIN | crate::onnx::presence::bit::VERSION;
        OpsetImport { domain: domain.into(), version, extras: Extras::default().with_explicit(explicit) }
    }
}

/// A model. Fields adaptc does not rewrite (local functions, training info) are carried
/// verbatim.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ir_version: i64,
    pub opset_imports: Vec<OpsetImport>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub metadata: Metadata,
    pub graph: Graph,
    pub(crate) functions: Vec<pb::FunctionProto>,
    pub(crate) training_info: Vec<pb::TrainingInfoProto>,
    /// `ModelProto.configuration` (multi-device configurations), carried verbatim.
    pub(crate) configuration: Vec<pb::DeviceConfigurationProto>,
    pub(crate) extras: Extras,
    /// Whether any tensor of the loaded file lived in external data.
    pub(crate) had_external_data: bool,
}

impl Model {
    /// An empty model importing the default ONNX domain at `opset`.
    pub fn new(graph: Graph, opset: i64) -> Model {
        Model {
            ir_version: 10,
            opset_imports: vec![OpsetImport::new("", opset)],
            producer_name: "adaptc".to_string(),
            graph,
            ..Model::default()
        }
    }

    /// The imported version of `domain` (`""` and `ai.onnx` are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let default = crate::node::is_default_domain(domain);
        self.opset_imports
            .iter()
            .find(|o| o.domain == domain || (default && crate::node::is_default_domain(&o.domain)))
            .map(|o| o.version)
    }

    /// Sets (or adds) the imported version of `domain`.
    pub fn set_opset(&mut self, domain: &str, version: i64) {
        match self.opset_imports.iter_mut().find(|o| o.domain == domain) {
            Some(o) => o.version = version,
            None => self.opset_imports.push(OpsetImport::new(domain, version)),
        }
    }

    /// Names (`domain::name`) of the model-local functions.
    pub fn function_names(&self) -> Vec<String> {
        self.functions.iter().map(|f| format!("{}::{}", f.domain(), f.name())).collect()
    }

    /// Whether the model was loaded from a file that used external data.
    pub fn had_external_data(&self) -> bool {
        self.had_external_data
    }
}
