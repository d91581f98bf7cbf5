//! Node attributes, typed.

use crate::onnx::proto as pb;

use crate::graph::Graph;
use crate::metadata::Extras;
use crate::tensor::Tensor;
use crate::value::TypeInfo;

/// A sparse tensor (as an initializer or attribute), carried verbatim.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTensor(pub(crate) Box<pb::SparseTensorProto>);

impl SparseTensor {
    /// The value name (the name of its `values` tensor).
    pub fn name(&self) -> &str {
        self.0.values.name()
    }

    /// The dense shape.
    pub fn dims(&self) -> &[i64] {
        &self.0.dims
    }
}

/// The value of an attribute.
#[derive(Clone, Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(Tensor),
    Graph(Box<Graph>),
    SparseTensor(SparseTensor),
    Type(TypeInfo),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<Graph>),
    SparseTensors(Vec<SparseTensor>),
    Types(Vec<TypeInfo>),
    /// A reference to an attribute of the enclosing function (`ref_attr_name`) with no value.
    Undefined,
}

/// A node attribute.
#[derive(Clone, Debug)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    /// Inside a function body: the name of the function attribute this one refers to.
    pub ref_attr_name: String,
    pub doc_string: String,
    /// Whether the file recorded the `type` field (IR v1 files infer it from the populated field).
    pub(crate) explicit_type: bool,
    pub(crate) extras: Extras,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        use crate::onnx::presence::bit;
        // A fresh scalar attribute writes its value even when it is 0 or empty.
        let explicit = match value {
            AttrValue::Float(_) => bit::F,
            AttrValue::Int(_) => bit::I,
            AttrValue::String(_) => bit::S,
            _ => 0,
        };
        Attribute {
            name: name.into(),
            value,
            ref_attr_name: String::new(),
            doc_string: String::new(),
            explicit_type: true,
            extras: Extras::default().with_explicit(explicit | bit::NAME),
        }
    }

    pub fn int(name: impl Into<String>, v: i64) -> Attribute {
        Attribute::new(name, AttrValue::Int(v))
    }

    pub fn float(name: impl Into<String>, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }

    pub fn ints(name: impl Into<String>, v: Vec<i64>) -> Attribute {
        Attribute::new(name, AttrValue::Ints(v))
    }

    pub fn string(name: impl Into<String>, v: impl Into<Vec<u8>>) -> Attribute {
        Attribute::new(name, AttrValue::String(v.into()))
    }

    pub fn tensor(name: impl Into<String>, t: Tensor) -> Attribute {
        Attribute::new(name, AttrValue::Tensor(t))
    }

    pub fn as_int(&self) -> Option<i64> {
        match self.value {
            AttrValue::Int(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_float(&self) -> Option<f32> {
        match self.value {
            AttrValue::Float(v) => Some(v),
            _ => None,
        }
    }

    /// A string attribute's value, when it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            AttrValue::String(v) => std::str::from_utf8(v).ok(),
            _ => None,
        }
    }

    pub fn as_ints(&self) -> Option<&[i64]> {
        match &self.value {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match &self.value {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Subgraphs held by this attribute.
    pub fn graphs(&self) -> &[Graph] {
        match &self.value {
            AttrValue::Graph(g) => std::slice::from_ref(g.as_ref()),
            AttrValue::Graphs(gs) => gs,
            _ => &[],
        }
    }

    pub(crate) fn graphs_mut(&mut self) -> &mut [Graph] {
        match &mut self.value {
            AttrValue::Graph(g) => std::slice::from_mut(g.as_mut()),
            AttrValue::Graphs(gs) => gs,
            _ => &mut [],
        }
    }
}
