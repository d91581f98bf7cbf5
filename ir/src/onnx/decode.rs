//! `ModelProto` → [`Model`]: every field is either modelled or carried verbatim.

use super::proto as pb;
use pb::attribute_proto::AttributeType as AT;

use crate::attr::{AttrValue, Attribute, SparseTensor};
use crate::error::IrError;
use crate::external::ExternalResolver;
use crate::graph::Graph;
use crate::metadata::Extras;
use crate::model::{Model, OpsetImport};
use crate::node::{Node, OpKey};
use crate::value::{TypeInfo, ValueInfo};

use super::presence::{bit, take_f32, take_i64, take_str};
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
        let opset_imports = std::mem::take(&mut proto.opset_import)
            .into_iter()
            .map(|mut o| {
                let mut extras = Extras::from_special(&o.special_fields);
                let domain = take_str(o.domain.take(), &mut extras, bit::DOMAIN);
                let version = take_i64(o.version.take(), &mut extras, bit::VERSION);
                OpsetImport { domain, version, extras }
            })
            .collect();
        let mut extras = Extras::from_special(&proto.special_fields);
        Ok(Model {
            ir_version: take_i64(proto.ir_version.take(), &mut extras, bit::IR_VERSION),
            opset_imports,
            producer_name: take_str(proto.producer_name.take(), &mut extras, bit::PRODUCER_NAME),
            producer_version: take_str(proto.producer_version.take(), &mut extras, bit::PRODUCER_VERSION),
            domain: take_str(proto.domain.take(), &mut extras, bit::DOMAIN),
            model_version: take_i64(proto.model_version.take(), &mut extras, bit::MODEL_VERSION),
            doc_string: take_str(proto.doc_string.take(), &mut extras, bit::DOC_STRING),
            metadata: metadata_from(&proto.metadata_props),
            graph,
            functions: std::mem::take(&mut proto.functions),
            training_info: std::mem::take(&mut proto.training_info),
            configuration: std::mem::take(&mut proto.configuration),
            extras,
            had_external_data: self.had_external,
        })
    }

    fn graph(&mut self, mut proto: pb::GraphProto) -> Result<Graph, IrError> {
        let mut extras = Extras::from_special(&proto.special_fields);
        let mut graph = Graph::new(take_str(proto.name.take(), &mut extras, bit::NAME));
        graph.doc_string = take_str(proto.doc_string.take(), &mut extras, bit::DOC_STRING);
        graph.metadata = metadata_from(&proto.metadata_props);
        graph.extras = extras;
        graph.inputs = std::mem::take(&mut proto.input).into_iter().map(value_info).collect();
        graph.outputs = std::mem::take(&mut proto.output).into_iter().map(value_info).collect();
        graph.value_info = std::mem::take(&mut proto.value_info).into_iter().map(value_info).collect();
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
            return Err(IrError::tensor(
                proto.values.name(),
                format!("sparse shape {:?} has a negative dimension", proto.dims),
            ));
        }
        Ok(SparseTensor(Box::new(proto)))
    }

    fn node(&mut self, mut proto: pb::NodeProto) -> Result<Node, IrError> {
        let mut extras = Extras::from_special(&proto.special_fields);
        let domain = take_str(proto.domain.take(), &mut extras, bit::DOMAIN);
        let op_type = take_str(proto.op_type.take(), &mut extras, bit::OP_TYPE);
        let mut node =
            Node::new(OpKey { domain, op_type }, std::mem::take(&mut proto.input), std::mem::take(&mut proto.output));
        node.name = take_str(proto.name.take(), &mut extras, bit::NAME);
        node.overload = take_str(proto.overload.take(), &mut extras, bit::OVERLOAD);
        node.doc_string = take_str(proto.doc_string.take(), &mut extras, bit::DOC_STRING);
        node.metadata = metadata_from(&proto.metadata_props);
        node.device_configurations = std::mem::take(&mut proto.device_configurations);
        node.extras = extras;
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
        let mut extras = Extras::from_special(&a.special_fields);
        let name = take_str(a.name.take(), &mut extras, bit::NAME);
        let explicit_type = a.type_.is_some();
        let declared = match a.type_ {
            Some(t) => t.enum_value().map_err(|code| IrError::Invalid {
                graph: String::new(),
                reason: format!("attribute `{name}` has unknown type code {code}"),
            })?,
            None => AT::UNDEFINED,
        };
        let ty = if declared != AT::UNDEFINED { declared } else { infer_attr_type(&a) };
        // Scalars are taken whatever the type, so their presence survives either way.
        let f = take_f32(a.f.take(), &mut extras, bit::F);
        let i = take_i64(a.i.take(), &mut extras, bit::I);
        let s = match a.s.take() {
            Some(s) => {
                if s.is_empty() {
                    extras.explicit |= bit::S;
                }
                s
            }
            None => Vec::new(),
        };
        let ref_attr_name = take_str(a.ref_attr_name.take(), &mut extras, bit::REF_ATTR_NAME);
        let doc_string = take_str(a.doc_string.take(), &mut extras, bit::DOC_STRING);
        let value = match ty {
            AT::FLOAT => AttrValue::Float(f),
            AT::INT => AttrValue::Int(i),
            AT::STRING => AttrValue::String(s),
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
        Ok(Attribute { name, value, ref_attr_name, doc_string, explicit_type, extras })
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
    } else if a.s.is_some() {
        AT::STRING
    } else if a.f.is_some() {
        AT::FLOAT
    } else if a.i.is_some() {
        AT::INT
    } else {
        AT::UNDEFINED
    }
}

fn value_info(mut v: pb::ValueInfoProto) -> ValueInfo {
    let mut extras = Extras::from_special(&v.special_fields);
    ValueInfo {
        name: take_str(v.name.take(), &mut extras, bit::NAME),
        ty: v.type_.take().map(|t| TypeInfo(Box::new(t))),
        doc_string: take_str(v.doc_string.take(), &mut extras, bit::DOC_STRING),
        metadata: metadata_from(&v.metadata_props),
        extras,
    }
}
