//! Lowering: passes that make a model concrete and plain enough for a particular runtime.
//!
//! - [`specialize_shapes`]: `specialize-shapes` gives symbolic dimensions (`batch`, `seq`)
//!   concrete values, so that `fold-constants` can evaluate the shape arithmetic an exporter
//!   left in the graph;
//! - [`decompose`]: `decompose` rewrites ops a runtime may lack (`Gelu`, `GatherND` with
//!   constant indices) into simpler, equivalent ONNX;
//! - [`autocast`]: `autocast{dtype=bf16}` runs the products in bf16 (mixed precision), with
//!   [`elem_types`] telling which values are f32;
//! - [`fuse_attention`]: `fuse-attention` makes the core of attention one op whose kernels
//!   never store the scores (training memory at long sequences).
//!
//! Together they prepare a dynamo-exported model for a runtime with a smaller op set (this is
//! what `adaptc verify` does before handing a model to tract):
//! `specialize-shapes{dims=batch:2,seq:16},fold-constants,decompose,fold-constants,dce`.

pub mod autocast;
pub mod decompose;
pub mod elem_types;
pub mod fuse_attention;
pub mod specialize_shapes;

use adaptc_ir::{Attribute, Graph, IrError, Node, OpKey, Tensor};

/// Metadata key recording which pass created a node (the same key the adapter passes use).
const CREATED_BY: &str = "adaptc.pass";

/// Inserts the nodes replacing one node: fresh names under `prefix` (`<prefix>/<what>`), every
/// new node tagged with the pass that made it.
pub(crate) struct Builder<'g> {
    pub graph: &'g mut Graph,
    pass: &'static str,
    prefix: String,
}

impl<'g> Builder<'g> {
    pub(crate) fn new(graph: &'g mut Graph, pass: &'static str, prefix: &str) -> Builder<'g> {
        Builder { graph, pass, prefix: prefix.to_string() }
    }

    /// Adds `op(inputs)` with a fresh output `<prefix>/<what>`; returns the output's name.
    pub(crate) fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        what: &str,
    ) -> Result<String, IrError> {
        let out = self.graph.unique_name(&format!("{}/{what}", self.prefix));
        self.node_into(op, inputs, attrs, what, &out)?;
        Ok(out)
    }

    /// Adds `op(inputs)` producing `output` (a name without a producer).
    pub(crate) fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        what: &str,
        output: &str,
    ) -> Result<(), IrError> {
        let name = self.graph.unique_name(&format!("{}/{what}/{op}", self.prefix));
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        let mut node = Node::new(OpKey::onnx(op), inputs, vec![output.to_string()]).named(name);
        for a in attrs {
            node = node.with_attr(a);
        }
        node.metadata.set(CREATED_BY, self.pass);
        self.graph.add_node(node)?;
        Ok(())
    }

    /// Adds an initializer named `<prefix>/<what>` (made unique); returns its name.
    pub(crate) fn constant(&mut self, what: &str, mut tensor: Tensor) -> Result<String, IrError> {
        let name = self.graph.unique_name(&format!("{}/{what}", self.prefix));
        tensor.name = name.clone();
        self.graph.add_initializer(tensor)?;
        Ok(name)
    }
}
