//! Typed values: the `ValueInfoProto` of graph inputs, outputs and intermediate annotations.

use crate::onnx::proto as pb;
use std::fmt;

use crate::dtype::DataType;
use crate::metadata::{Extras, Metadata};

/// One dimension of a (possibly symbolic) shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    Symbol(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The type of a value.
///
/// Tensor types are what adaptc reasons about; sequences, maps, optionals and sparse tensors
/// are carried as the full `TypeProto` so that they round-trip exactly. Accessors give the
/// element type and shape of tensor types.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeInfo(pub(crate) Box<pb::TypeProto>);

impl TypeInfo {
    /// A dense tensor type; `dims = None` means rank unknown.
    pub fn tensor(dtype: DataType, dims: Option<Vec<Dim>>) -> TypeInfo {
        let mut tensor = pb::type_proto::Tensor::new();
        tensor.elem_type = Some(dtype.code());
        if let Some(dims) = dims {
            let mut shape = pb::TensorShapeProto::new();
            for d in dims {
                let mut dim = pb::tensor_shape_proto::Dimension::new();
                match d {
                    Dim::Known(n) => dim.set_dim_value(n),
                    Dim::Symbol(s) => dim.set_dim_param(s),
                    Dim::Unknown => {}
                }
                shape.dim.push(dim);
            }
            tensor.shape = protobuf::MessageField::some(shape);
        }
        let mut ty = pb::TypeProto::new();
        ty.value = Some(pb::type_proto::Value::TensorType(tensor));
        TypeInfo(Box::new(ty))
    }

    fn tensor_proto(&self) -> Option<&pb::type_proto::Tensor> {
        match &self.0.value {
            Some(pb::type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        }
    }

    /// Whether this is a dense tensor type.
    pub fn is_tensor(&self) -> bool {
        self.tensor_proto().is_some()
    }

    /// Element type of a dense tensor type (`None` for other kinds or an unknown code).
    pub fn dtype(&self) -> Option<DataType> {
        self.tensor_proto().and_then(|t| DataType::from_code(t.elem_type()))
    }

    /// Shape of a dense tensor type; `None` when the rank is unknown or this is not a tensor.
    pub fn dims(&self) -> Option<Vec<Dim>> {
        let shape = self.tensor_proto()?.shape.as_ref()?;
        Some(
            shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => Dim::Known(*n),
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(s)) => Dim::Symbol(s.clone()),
                    _ => Dim::Unknown,
                })
                .collect(),
        )
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.value {
            Some(pb::type_proto::Value::TensorType(t)) => {
                match DataType::from_code(t.elem_type()) {
                    Some(d) => write!(f, "{d}")?,
                    None => write!(f, "dtype{}", t.elem_type())?,
                }
                match self.dims() {
                    Some(dims) => {
                        let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
                        write!(f, "[{}]", dims.join(", "))
                    }
                    None => f.write_str("[*]"),
                }
            }
            Some(pb::type_proto::Value::SequenceType(_)) => f.write_str("sequence"),
            Some(pb::type_proto::Value::MapType(_)) => f.write_str("map"),
            Some(pb::type_proto::Value::OptionalType(_)) => f.write_str("optional"),
            Some(pb::type_proto::Value::SparseTensorType(_)) => f.write_str("sparse_tensor"),
            _ => f.write_str("?"),
        }
    }
}

/// A named, optionally typed value: a graph input or output, or a `value_info` annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub ty: Option<TypeInfo>,
    pub doc_string: String,
    pub metadata: Metadata,
    pub(crate) extras: Extras,
}

impl ValueInfo {
    pub fn new(name: impl Into<String>, ty: Option<TypeInfo>) -> ValueInfo {
        let extras = Extras::default().with_explicit(crate::onnx::presence::bit::NAME);
        ValueInfo { name: name.into(), ty, doc_string: String::new(), metadata: Metadata::default(), extras }
    }

    /// A dense tensor value.
    pub fn tensor(name: impl Into<String>, dtype: DataType, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo::new(name, Some(TypeInfo::tensor(dtype, Some(dims))))
    }
}
