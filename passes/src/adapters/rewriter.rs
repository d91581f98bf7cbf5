//! A small helper for passes that insert nodes: fresh, readable names under the layer's module
//! path, every new node tagged with the pass that made it (`adaptc.pass` metadata), and the
//! list of inserted nodes kept for the adapter record.

use adaptc_ir::{Attribute, Graph, IrError, Node, OpKey, Tensor};

use super::record::CREATED_BY;

/// Inserts nodes and initializers for one rewrite site.
pub struct Rewriter<'g> {
    pub graph: &'g mut Graph,
    pass: &'static str,
    prefix: String,
    /// Names of the nodes inserted so far.
    pub created: Vec<String>,
}

impl<'g> Rewriter<'g> {
    /// `prefix` names the site (usually the module path, e.g. `encoder.layer.0.attention.self.query`).
    pub fn new(graph: &'g mut Graph, pass: &'static str, prefix: &str) -> Rewriter<'g> {
        Rewriter { graph, pass, prefix: prefix.to_string(), created: Vec::new() }
    }

    /// Adds `op(inputs)` with a fresh output named `<prefix>/<what>`; returns the output name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attribute>, what: &str) -> Result<String, IrError> {
        let out = self.graph.unique_name(&format!("{}/{what}", self.prefix));
        self.node_into(op, inputs, attrs, what, &out)?;
        Ok(out)
    }

    /// Adds `op(inputs)` producing the given value name (which must have no producer).
    pub fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        what: &str,
        output: &str,
    ) -> Result<(), IrError> {
        let name = self.graph.unique_name(&format!("{}/{what}/{op}", self.prefix));
        let mut node =
            Node::new(OpKey::onnx(op), inputs.iter().map(|s| s.to_string()).collect(), vec![output.to_string()])
                .named(name.clone());
        for a in attrs {
            node = node.with_attr(a);
        }
        node.metadata.set(CREATED_BY, self.pass);
        self.graph.add_node(node)?;
        self.created.push(name);
        Ok(())
    }

    /// Adds an initializer under `name` (made unique if taken); returns the name used.
    pub fn initializer(&mut self, name: &str, mut tensor: Tensor) -> Result<String, IrError> {
        let name = self.graph.unique_name(name);
        tensor.name = name.clone();
        self.graph.add_initializer(tensor)?;
        Ok(name)
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, what: &str, value: f32) -> Result<String, IrError> {
        let t = Tensor::from_f32("", vec![], &[value])?;
        self.initializer(&format!("{}/{what}", self.prefix), t)
    }

    /// An int64 vector constant (axes, shapes, perms).
    pub fn ints(&mut self, what: &str, values: &[i64]) -> Result<String, IrError> {
        let t = Tensor::from_i64("", vec![values.len() as u64], values)?;
        self.initializer(&format!("{}/{what}", self.prefix), t)
    }

    /// Lets nodes be slotted in after `value` (a node output): its producer now writes a fresh
    /// `<value>/base` name, which is returned; consumers and graph outputs keep reading
    /// `value`, which the caller must produce again (with [`Rewriter::node_into`]).
    pub fn detach(&mut self, value: &str) -> Result<String, IrError> {
        let (node, slot) = self.graph.producer(value).ok_or_else(|| IrError::Invalid {
            graph: self.graph.name.clone(),
            reason: format!("`{value}` is not produced by a node, so nothing can be inserted after it"),
        })?;
        let fresh = self.graph.unique_name(&format!("{value}/base"));
        self.graph.rename_output(node, slot, &fresh)?;
        Ok(fresh)
    }
}
