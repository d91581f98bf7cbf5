//! Emitting nodes for the training graph: fresh names under a prefix (`grad/`, `loss/`), every node tagged with the pass, and
//! small conveniences (typed scalar constants, `Shape` of a forward value computed once).

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Node, OpKey, Tensor};

use crate::adapters::record::CREATED_BY;
use crate::pass::PassError;

/// The domain of adaptc's own gradient ops (implemented by the runtime: `ops/grad/`).
pub const ADAPTC_DOMAIN: &str = "ai.adaptc";

/// Adds backward nodes to a graph.
pub struct Emitter<'g> {
    pub graph: &'g mut Graph,
    pass: &'static str,
    /// Names start with `<prefix>/` (`grad`, `loss`).
    prefix: &'static str,
    /// `Shape(v)` already emitted, by forward value.
    shapes: HashMap<String, String>,
    /// Whether a node of [`ADAPTC_DOMAIN`] was emitted (the model must then import it).
    pub uses_adaptc_domain: bool,
    /// Element types of the forward values, inferred on first need.
    elem_types: Option<HashMap<String, DataType>>,
}

impl<'g> Emitter<'g> {
    pub fn new(graph: &'g mut Graph, pass: &'static str, prefix: &'static str) -> Emitter<'g> {
        Emitter { graph, pass, prefix, shapes: HashMap::new(), uses_adaptc_domain: false, elem_types: None }
    }

    /// Adds `op(inputs)` of the default domain; returns its single output, named after `hint`.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<Attribute>, hint: &str) -> Result<String, PassError> {
        Ok(self.node(OpKey::onnx(op), inputs, attrs, hint, 1)?.remove(0))
    }

    /// Adds `op(inputs)` of the default domain writing the given (fresh) value name.
    pub fn op_into(&mut self, op: &str, inputs: &[&str], output: &str) -> Result<(), PassError> {
        let node_name = self.graph.unique_name(&format!("{}/{output}/{op}", self.prefix));
        let mut node = Node::new(OpKey::onnx(op), inputs.iter().map(|s| s.to_string()).collect(), vec![output.into()])
            .named(node_name);
        node.metadata.set(CREATED_BY, self.pass);
        self.graph.add_node(node)?;
        Ok(())
    }

    /// Adds `ai.adaptc::op(inputs)`; returns its single output.
    pub fn grad_op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        hint: &str,
    ) -> Result<String, PassError> {
        Ok(self.grad_op_n(op, inputs, attrs, hint, &[true])?.remove(0).unwrap_or_default())
    }

    /// Adds `ai.adaptc::op(inputs)` with the outputs marked `true` in `wanted` (the others are
    /// left empty, which the runtime skips).
    pub fn grad_op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        hint: &str,
        wanted: &[bool],
    ) -> Result<Vec<Option<String>>, PassError> {
        self.uses_adaptc_domain = true;
        let names = self.node(OpKey::new(ADAPTC_DOMAIN, op), inputs, attrs, hint, wanted.len())?;
        Ok(names.into_iter().zip(wanted).map(|(n, &w)| w.then_some(n)).collect())
    }

    fn node(
        &mut self,
        op: OpKey,
        inputs: &[&str],
        attrs: Vec<Attribute>,
        hint: &str,
        outputs: usize,
    ) -> Result<Vec<String>, PassError> {
        let hint = hint.strip_prefix(self.prefix).and_then(|h| h.strip_prefix('/')).unwrap_or(hint);
        let base = format!("{}/{hint}", self.prefix);
        // Distinct suffixes keep a multi-output node's names apart before any is taken.
        let outs: Vec<String> = (0..outputs)
            .map(|i| self.graph.unique_name(&if outputs == 1 { base.clone() } else { format!("{base}.{i}") }))
            .collect();
        let node_name = self.graph.unique_name(&format!("{base}/{}", op.op_type));
        let mut node = Node::new(op, inputs.iter().map(|s| s.to_string()).collect(), outs.clone()).named(node_name);
        for a in attrs {
            node = node.with_attr(a);
        }
        node.metadata.set(CREATED_BY, self.pass);
        self.graph.add_node(node)?;
        Ok(outs)
    }

    /// A scalar constant with `like`'s element type (`CastLike` of an f64 constant).
    pub fn scalar_like(&mut self, value: f64, like: &str) -> Result<String, PassError> {
        let c = self.constant_f64(value)?;
        self.cast_like(&c, like, &format!("{like}/const"))
    }

    /// `value` converted to `like`'s element type: a `Cast` to that type when it is known, so
    /// the backward does not keep `like` alive (a `CastLike` would read it) just for its type.
    pub fn cast_like(&mut self, value: &str, like: &str, hint: &str) -> Result<String, PassError> {
        match self.elem_type(like) {
            Some(d) => self.op("Cast", &[value], vec![Attribute::int("to", d.code() as i64)], hint),
            None => self.op("CastLike", &[value, like], vec![], hint),
        }
    }

    /// An f64 scalar `Constant` node.
    fn constant_f64(&mut self, value: f64) -> Result<String, PassError> {
        let bytes = value.to_le_bytes().to_vec();
        let t = Tensor::from_bytes("", DataType::Double, vec![], bytes)?;
        self.op("Constant", &[], vec![Attribute::tensor("value", t)], "const")
    }

    /// An int64 vector `Constant` node (axes, shapes).
    pub fn ints(&mut self, values: &[i64], hint: &str) -> Result<String, PassError> {
        let t = Tensor::from_i64("", vec![values.len() as u64], values)?;
        self.op("Constant", &[], vec![Attribute::tensor("value", t)], hint)
    }

    /// `Shape(value)`, emitted once per value.
    pub fn shape_of(&mut self, value: &str) -> Result<String, PassError> {
        if let Some(s) = self.shapes.get(value) {
            return Ok(s.clone());
        }
        let s = self.op("Shape", &[value], vec![], &format!("{value}/shape"))?;
        self.shapes.insert(value.to_string(), s.clone());
        Ok(s)
    }

    /// `dy` summed down to `like`'s shape, unless the declared shapes show it already has it.
    pub fn sum_to(&mut self, dy: &str, like: &str, forward_out: &str) -> Result<String, PassError> {
        if self.same_static_shape(like, forward_out) {
            return Ok(dy.to_string());
        }
        let shape = self.shape_of(like)?;
        self.grad_op("SumToShape", &[dy, &shape], vec![], &format!("{like}/sum"))
    }

    /// The declared rank of a value, when known.
    pub fn rank(&self, value: &str) -> Option<usize> {
        self.graph.value_type(value).and_then(|t| t.dims()).map(|d| d.len())
    }

    /// Whether two values certainly have the same shape (equal known dims or equal symbols).
    pub fn same_static_shape(&self, a: &str, b: &str) -> bool {
        let dims = |v: &str| self.graph.value_type(v).and_then(|t| t.dims());
        match (dims(a), dims(b)) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter().zip(&y).all(|(p, q)| match (p, q) {
                        (Dim::Known(m), Dim::Known(n)) => m == n,
                        (Dim::Symbol(m), Dim::Symbol(n)) => m == n,
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    /// The element type of a value, when declared.
    pub fn dtype(&self, value: &str) -> Option<DataType> {
        self.graph.value_type(value).and_then(|t| t.dtype())
    }

    /// The element type of a forward value, declared or inferred from its producers
    /// ([`crate::lower::elem_types`], computed once).
    pub fn elem_type(&mut self, value: &str) -> Option<DataType> {
        if let Some(d) = self.dtype(value) {
            return Some(d);
        }
        if self.elem_types.is_none() {
            self.elem_types = crate::lower::elem_types::elem_types(self.graph).ok();
        }
        self.elem_types.as_ref().and_then(|t| t.get(value)).copied()
    }
}
