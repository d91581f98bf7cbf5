//! Operator nodes.

use std::fmt;

use crate::attr::Attribute;
use crate::metadata::{Extras, Metadata};

/// The default ONNX operator domain, as written in files (`""`, also spelled `ai.onnx`).
pub const ONNX_DOMAIN: &str = "";

/// Which operator a node runs: `(domain, op_type)`. Unknown domains and ops are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpKey {
    pub domain: String,
    pub op_type: String,
}

impl OpKey {
    /// An operator of the default ONNX domain.
    pub fn onnx(op_type: &str) -> OpKey {
        OpKey { domain: ONNX_DOMAIN.to_string(), op_type: op_type.to_string() }
    }

    pub fn new(domain: &str, op_type: &str) -> OpKey {
        OpKey { domain: domain.to_string(), op_type: op_type.to_string() }
    }

    /// Whether this is `op_type` of the default domain (`""` or `ai.onnx`).
    pub fn is(&self, op_type: &str) -> bool {
        self.op_type == op_type && is_default_domain(&self.domain)
    }
}

/// `""` and `ai.onnx` both name the default domain.
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

impl fmt::Display for OpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_default_domain(&self.domain) {
            f.write_str(&self.op_type)
        } else {
            write!(f, "{}::{}", self.domain, self.op_type)
        }
    }
}

/// A node. Inputs and outputs are value names (`""` marks an omitted optional slot); they and
/// the attributes change only through [`crate::Graph`], which keeps its use lists in step.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub(crate) op: OpKey,
    pub overload: String,
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    pub(crate) attrs: Vec<Attribute>,
    pub doc_string: String,
    pub metadata: Metadata,
    /// `NodeProto.device_configurations`, carried verbatim.
    pub(crate) device_configurations: Vec<crate::onnx::proto::NodeDeviceConfigurationProto>,
    pub(crate) extras: Extras,
}

impl Node {
    pub fn new(op: OpKey, inputs: Vec<String>, outputs: Vec<String>) -> Node {
        Node {
            name: String::new(),
            op,
            overload: String::new(),
            inputs,
            outputs,
            attrs: Vec::new(),
            doc_string: String::new(),
            metadata: Metadata::default(),
            device_configurations: Vec::new(),
            extras: Extras::default(),
        }
    }

    /// Builder: sets the node name.
    pub fn named(mut self, name: impl Into<String>) -> Node {
        self.name = name.into();
        self
    }

    /// Builder: adds an attribute (replacing one of the same name).
    pub fn with_attr(mut self, attr: Attribute) -> Node {
        self.attrs.retain(|a| a.name != attr.name);
        self.attrs.push(attr);
        self
    }

    pub fn op(&self) -> &OpKey {
        &self.op
    }

    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The input in `slot`, `None` when absent or omitted (`""`).
    pub fn input(&self, slot: usize) -> Option<&str> {
        self.inputs.get(slot).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn output(&self, slot: usize) -> Option<&str> {
        self.outputs.get(slot).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn attrs(&self) -> &[Attribute] {
        &self.attrs
    }

    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// An integer attribute, or `default` when absent.
    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(Attribute::as_int).unwrap_or(default)
    }

    /// Whether the node holds subgraphs (If/Loop/Scan bodies, or any GRAPH attribute).
    pub fn has_subgraphs(&self) -> bool {
        self.attrs.iter().any(|a| !a.graphs().is_empty())
    }

    /// A label for messages: the node name, or its first output when unnamed.
    pub fn label(&self) -> String {
        if !self.name.is_empty() {
            self.name.clone()
        } else if let Some(o) = self.outputs.iter().find(|o| !o.is_empty()) {
            format!("<unnamed {} producing {o}>", self.op)
        } else {
            format!("<unnamed {}>", self.op)
        }
    }
}
