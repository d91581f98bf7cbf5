//! `ModelProto` → [`Model`]: every field is either modelled or carried verbatim.

use onnx_protobuf as pb;
use pb::attribute_proto::AttributeType as AT;

use crate::attr::{AttrValue, Attribute, SparseTensor};
use crate::error::IrError;
use crate::external::ExternalResolver;
use crate::graph::Graph;
use crate::metadata::Extras;
use crate::model::{Model, OpsetImport};
use crate::node::{Node, OpKey};
use crate::value::{TypeInfo, ValueInfo};

use super::tensor_codec::{decode_tensor, metadata_from};

pub(crate) struct Decoder {
    resolver: Option<ExternalResolver>,
    had_external: bool,
}

impl Decoder {
    /// `resolver` is `None` when the model did not come from a file (no folder to resolve
    /// external data against): external tensors are then refused.
    pub(crate) fn new(resolver: Option<ExternalResolver>) -> Decoder {
        Decoder { resolver, had_external: false }
    }

    pub(crate) fn model(mut self, mut proto: pb::ModelProto) -> Result<Model, IrError> {
        let graph = match proto.graph.take() {
            Some(g) => self.graph(g)?,
            None => Graph::default(),
        };
        let opset_imports = proto
            .opset_import
            .iter()
            .map(|o| OpsetImport { domain: o.domain.clone(), version: o.version })
            .collect();
        Ok(Model {
            ir_version: proto.ir_version,
            opset_imports,
            producer_name: std::mem::take(&mut proto.producer_name),
            producer_version: std::mem::take(&mut proto.producer_version),
            domain: std::mem::take(&mut proto.domain),
            model_version: proto.model_version,
            doc_string: std::mem::take(&mut proto.doc_string),
            metadata: metadata_from(&proto.metadata_props),
            graph,
            functions: std::mem::take(&mut proto.functions),
            training_info: std::mem::take(&mut proto.training_info),
            extras: Extras::from_special(&proto.special_fields),
            had_external_data: self.had_external,
        })
    }

    fn graph(&mut self, mut proto: pb::GraphProto) -> Result<Graph, IrError> {
        let mut graph = Graph::new(std::mem::take(&mut proto.name));
        graph.doc_string = std::mem::take(&mut proto.doc_string);
        graph.metadata = metadata_from(&proto.metadata_props);
        graph.extras = Extras::from_special(&proto.special_fields);
        graph.inputs = proto.input.iter().map(value_info).collect();
        graph.outputs = proto.output.iter().map(value_info).collect();
        graph.value_info = proto.value_info.iter().map(value_info).collect();
        graph.quantization_annotation = std::mem::take(&mut proto.quantization_annotation);
        for t in std::mem::take(&mut proto.initializer) {
            let tensor = self.tensor(t)?;
            graph.add_initializer(tensor)?;
        }
        for s in std::mem::take(&mut proto.sparse_initializer) {
            graph.sparse_initializers.push(self.sparse(s)?);
        }
        for n in std::mem::take(&mut proto.node) {
            let node = self.node(n)?;
            graph.add_node(node)?;
        }
        Ok(graph)
    }

    fn tensor(&mut self, proto: pb::TensorProto) -> Result<crate::tensor::Tensor, IrError> {
        let t = decode_tensor(proto, self.resolver.as_mut())?;
        self.had_external |= t.is_external();
        Ok(t)
    }

    /// Sparse tensors are carried verbatim, but their parts are checked like any tensor.
    fn sparse(&mut self, proto: pb::SparseTensorProto) -> Result<SparseTensor, IrError> {
        for part in [&proto.values, &proto.indices] {
            if let Some(t) = part.as_ref() {
                decode_tensor(t.clone(), None)?;
            }
        }
        if proto.dims.iter().any(|&d| d < 0) {
            return Err(IrError::tensor(&proto.values.name, format!("sparse shape {:?} has a negative dimension", proto.dims)));
        }
        Ok(SparseTensor(Box::new(proto)))
    }

    fn node(&mut self, mut proto: pb::NodeProto) -> Result<Node, IrError> {
        let mut node = Node::new(
            OpKey { domain: std::mem::take(&mut proto.domain), op_type: std::mem::take(&mut proto.op_type) },
            std::mem::take(&mut proto.input),
            std::mem::take(&mut proto.output),
        );
        node.name = std::mem::take(&mut proto.name);
        node.overload = std::mem::take(&mut proto.overload);
        node.doc_string = std::mem::take(&mut proto.doc_string);
        node.metadata = metadata_from(&proto.metadata_props);
        node.extras = Extras::from_special(&proto.special_fields);
        for a in std::mem::take(&mut proto.attribute) {
            let attr = self.attr(a).map_err(|e| IrError::Node {
                node: node.label(),
                op: node.op.to_string(),
                reason: e.to_string(),
            })?;
            node.attrs.push(attr);
        }
        Ok(node)
    }

    fn attr(&mut self, mut a: pb::AttributeProto) -> Result<Attribute, IrError> {
        let declared = a.type_.enum_value().map_err(|code| IrError::Invalid {
            graph: String::new(),
            reason: format!("attribute `{}` has unknown type code {code}", a.name),
        })?;
        let explicit_type = declared != AT::UNDEFINED;
        let ty = if explicit_type { declared } else { infer_attr_type(&a) };
        let value = match ty {
            AT::FLOAT => AttrValue::Float(a.f),
            AT::INT => AttrValue::Int(a.i),
            AT::STRING => AttrValue::String(std::mem::take(&mut a.s)),
            AT::TENSOR => match a.t.take() {
                Some(t) => AttrValue::Tensor(self.tensor(t)?),
                None => AttrValue::Tensor(self.tensor(pb::TensorProto::new())?),
            },
            AT::GRAPH => AttrValue::Graph(Box::new(self.graph(a.g.take().unwrap_or_default())?)),
            AT::SPARSE_TENSOR => AttrValue::SparseTensor(self.sparse(a.sparse_tensor.take().unwrap_or_default())?),
            AT::TYPE_PROTO => AttrValue::Type(TypeInfo(Box::new(a.tp.take().unwrap_or_default()))),
            AT::FLOATS => AttrValue::Floats(std::mem::take(&mut a.floats)),
            AT::INTS => AttrValue::Ints(std::mem::take(&mut a.ints)),
            AT::STRINGS => AttrValue::Strings(std::mem::take(&mut a.strings)),
            AT::TENSORS => AttrValue::Tensors(
                std::mem::take(&mut a.tensors).into_iter().map(|t| self.tensor(t)).collect::<Result<_, _>>()?,
            ),
            AT::GRAPHS => AttrValue::Graphs(
                std::mem::take(&mut a.graphs).into_iter().map(|g| self.graph(g)).collect::<Result<_, _>>()?,
            ),
            AT::SPARSE_TENSORS => AttrValue::SparseTensors(
                std::mem::take(&mut a.sparse_tensors).into_iter().map(|s| self.sparse(s)).collect::<Result<_, _>>()?,
            ),
            AT::TYPE_PROTOS => AttrValue::Types(
                std::mem::take(&mut a.type_protos).into_iter().map(|t| TypeInfo(Box::new(t))).collect(),
            ),
            AT::UNDEFINED => AttrValue::Undefined,
        };
        Ok(Attribute {
            name: std::mem::take(&mut a.name),
            value,
            ref_attr_name: std::mem::take(&mut a.ref_attr_name),
            doc_string: std::mem::take(&mut a.doc_string),
            explicit_type,
            extras: Extras::from_special(&a.special_fields),
        })
    }
}

/// IR v1 attributes have no `type`: infer it from the populated field.
fn infer_attr_type(a: &pb::AttributeProto) -> AT {
    if a.g.is_some() {
        AT::GRAPH
    } else if a.t.is_some() {
        AT::TENSOR
    } else if a.sparse_tensor.is_some() {
        AT::SPARSE_TENSOR
    } else if a.tp.is_some() {
        AT::TYPE_PROTO
    } else if !a.floats.is_empty() {
        AT::FLOATS
    } else if !a.ints.is_empty() {
        AT::INTS
    } else if !a.strings.is_empty() {
        AT::STRINGS
    } else if !a.tensors.is_empty() {
        AT::TENSORS
    } else if !a.graphs.is_empty() {
        AT::GRAPHS
    } else if !a.sparse_tensors.is_empty() {
        AT::SPARSE_TENSORS
    } else if !a.type_protos.is_empty() {
        AT::TYPE_PROTOS
    } else if !a.s.is_empty() {
        AT::STRING
    } else if a.f != 0.0 {
        AT::FLOAT
    } else if a.i != 0 {
        AT::INT
    } else {
        AT::UNDEFINED
    }
}

fn value_info(v: &pb::ValueInfoProto) -> ValueInfo {
    ValueInfo {
        name: v.name.clone(),
        ty: v.type_.as_ref().map(|t| TypeInfo(Box::new(t.clone()))),
        doc_string: v.doc_string.clone(),
        metadata: metadata_from(&v.metadata_props),
        extras: Extras::from_special(&v.special_fields),
    }
}
