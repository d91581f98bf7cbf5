//! [`Model`] → `ModelProto`. Where each tensor's bytes go is decided by a caller-supplied
//! placement function (inline, or a range of an external data file it has just written).

use super::proto as pb;
use pb::attribute_proto::AttributeType as AT;
use protobuf::{EnumOrUnknown, MessageField};

use crate::attr::{AttrValue, Attribute};
use crate::error::IrError;
use crate::graph::Graph;
use crate::model::Model;
use crate::tensor::Tensor;
use crate::value::ValueInfo;

use super::presence::{bit, put_bytes, put_f32, put_i64, put_str};
use super::tensor_codec::{encode_tensor, metadata_to, Placement};

/// Decides, for each tensor in encoding order, where its bytes go.
pub(crate) type Place<'a> = dyn FnMut(&Tensor) -> Result<Placement, IrError> + 'a;

pub(crate) fn encode_model(model: &Model, place: &mut Place<'_>) -> Result<pb::ModelProto, IrError> {
    let mut proto = pb::ModelProto::new();
    proto.opset_import = model
        .opset_imports
        .iter()
        .map(|o| {
            let mut p = pb::OperatorSetIdProto::new();
            p.domain = put_str(&o.domain, &o.extras, bit::DOMAIN);
            p.version = put_i64(o.version, &o.extras, bit::VERSION);
            p.special_fields = o.extras.to_special();
            p
        })
        .collect();
    let x = &model.extras;
    proto.ir_version = put_i64(model.ir_version, x, bit::IR_VERSION);
    proto.producer_name = put_str(&model.producer_name, x, bit::PRODUCER_NAME);
    proto.producer_version = put_str(&model.producer_version, x, bit::PRODUCER_VERSION);
    proto.domain = put_str(&model.domain, x, bit::DOMAIN);
    proto.model_version = put_i64(model.model_version, x, bit::MODEL_VERSION);
    proto.doc_string = put_str(&model.doc_string, x, bit::DOC_STRING);
    proto.configuration = model.configuration.clone();
    proto.metadata_props = metadata_to(&model.metadata);
    proto.graph = MessageField::some(encode_graph(&model.graph, place)?);
    proto.functions = model.functions.clone();
    proto.training_info = model.training_info.clone();
    proto.special_fields = model.extras.to_special();
    Ok(proto)
}

fn encode_graph(graph: &Graph, place: &mut Place<'_>) -> Result<pb::GraphProto, IrError> {
    let mut proto = pb::GraphProto::new();
    proto.name = put_str(&graph.name, &graph.extras, bit::NAME);
    proto.doc_string = put_str(&graph.doc_string, &graph.extras, bit::DOC_STRING);
    proto.metadata_props = metadata_to(&graph.metadata);
    proto.input = graph.inputs.iter().map(value_info).collect();
    proto.output = graph.outputs.iter().map(value_info).collect();
    proto.value_info = graph.value_info.iter().map(value_info).collect();
    proto.quantization_annotation = graph.quantization_annotation.clone();
    proto.sparse_initializer = graph.sparse_initializers.iter().map(|s| (*s.0).clone()).collect();
    for t in graph.initializers() {
        let placement = place(t)?;
        proto.initializer.push(encode_tensor(t, placement)?);
    }
    // Invariant: the order is written back untouched when it is already topological.
    let order = if graph.is_ordered() { graph.node_ids() } else { graph.topo_order()? };
    for id in order {
        let node = graph.node(id);
        let mut n = pb::NodeProto::new();
        n.input = node.inputs().to_vec();
        n.output = node.outputs().to_vec();
        let x = &node.extras;
        n.name = put_str(&node.name, x, bit::NAME);
        n.op_type = put_str(&node.op().op_type, x, bit::OP_TYPE);
        n.domain = put_str(&node.op().domain, x, bit::DOMAIN);
        n.overload = put_str(&node.overload, x, bit::OVERLOAD);
        n.doc_string = put_str(&node.doc_string, x, bit::DOC_STRING);
        n.metadata_props = metadata_to(&node.metadata);
        n.device_configurations = node.device_configurations.clone();
        n.special_fields = node.extras.to_special();
        for a in node.attrs() {
            n.attribute.push(encode_attr(a, place)?);
        }
        proto.node.push(n);
    }
    proto.special_fields = graph.extras.to_special();
    Ok(proto)
}

fn encode_attr(a: &Attribute, place: &mut Place<'_>) -> Result<pb::AttributeProto, IrError> {
    let mut p = pb::AttributeProto::new();
    let x = &a.extras;
    p.name = put_str(&a.name, x, bit::NAME);
    p.ref_attr_name = put_str(&a.ref_attr_name, x, bit::REF_ATTR_NAME);
    p.doc_string = put_str(&a.doc_string, x, bit::DOC_STRING);
    // Default-valued scalars that were present in the file (whatever the type) come back.
    p.f = put_f32(0.0, x, bit::F);
    p.i = put_i64(0, x, bit::I);
    p.s = put_bytes(&[], x, bit::S);
    let ty = match &a.value {
        AttrValue::Float(v) => {
            p.f = put_f32(*v, x, bit::F);
            AT::FLOAT
        }
        AttrValue::Int(v) => {
            p.i = put_i64(*v, x, bit::I);
            AT::INT
        }
        AttrValue::String(v) => {
            p.s = put_bytes(v, x, bit::S);
            AT::STRING
        }
        AttrValue::Tensor(t) => {
            let placement = place(t)?;
            p.t = MessageField::some(encode_tensor(t, placement)?);
            AT::TENSOR
        }
        AttrValue::Graph(g) => {
            p.g = MessageField::some(encode_graph(g, place)?);
            AT::GRAPH
        }
        AttrValue::SparseTensor(s) => {
            p.sparse_tensor = MessageField::some((*s.0).clone());
            AT::SPARSE_TENSOR
        }
        AttrValue::Type(t) => {
            p.tp = MessageField::some((*t.0).clone());
            AT::TYPE_PROTO
        }
        AttrValue::Floats(v) => {
            p.floats = v.clone();
            AT::FLOATS
        }
        AttrValue::Ints(v) => {
            p.ints = v.clone();
            AT::INTS
        }
        AttrValue::Strings(v) => {
            p.strings = v.clone();
            AT::STRINGS
        }
        AttrValue::Tensors(ts) => {
            for t in ts {
                let placement = place(t)?;
                p.tensors.push(encode_tensor(t, placement)?);
            }
            AT::TENSORS
        }
        AttrValue::Graphs(gs) => {
            for g in gs {
                p.graphs.push(encode_graph(g, place)?);
            }
            AT::GRAPHS
        }
        AttrValue::SparseTensors(ss) => {
            p.sparse_tensors = ss.iter().map(|s| (*s.0).clone()).collect();
            AT::SPARSE_TENSORS
        }
        AttrValue::Types(ts) => {
            p.type_protos = ts.iter().map(|t| (*t.0).clone()).collect();
            AT::TYPE_PROTOS
        }
        AttrValue::Undefined => AT::UNDEFINED,
    };
    if a.explicit_type {
        p.type_ = Some(EnumOrUnknown::new(ty));
    }
    p.special_fields = a.extras.to_special();
    Ok(p)
}

fn value_info(v: &ValueInfo) -> pb::ValueInfoProto {
    let mut p = pb::ValueInfoProto::new();
    p.name = put_str(&v.name, &v.extras, bit::NAME);
    if let Some(ty) = &v.ty {
        p.type_ = MessageField::some((*ty.0).clone());
    }
    p.doc_string = put_str(&v.doc_string, &v.extras, bit::DOC_STRING);
    p.metadata_props = metadata_to(&v.metadata);
    p.special_fields = v.extras.to_special();
    p
}
