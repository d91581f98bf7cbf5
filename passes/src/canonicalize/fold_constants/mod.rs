//! `fold-constants`: evaluates nodes whose inputs are all constants.
//!
//! A constant is an initializer that is not also a graph input (a graph input may be
//! overridden at run time). The graph is walked once in topological order; a folded node is
//! replaced by initializers under its output names, so chains (`Shape → Gather → Unsqueeze →
//! Concat`) fold in one run. `Constant` nodes become initializers (`value`, `value_float(s)`,
//! `value_int(s)`; string and sparse constants stay nodes).
//!
//! Evaluated, in plain Rust, following the ONNX definitions of the model's default-domain
//! opset (`model.opset("")`): Identity, Cast (between f32, i64, i32, bool), Shape (with
//! `start`/`end` from opset 15), Unsqueeze and Squeeze (axes an attribute before opset 13, an
//! input from 13), Reshape (shape input, `allowzero` from opset 14), Concat, Gather, Slice
//! (attributes before opset 10, inputs with optional axes and steps from 10), Transpose, Range,
//! Add/Sub/Mul/Div (f32, i64, i32; numpy broadcasting from opset 7; integer division truncates
//! toward zero), Neg, Equal, Less/Greater/LessOrEqual/GreaterOrEqual, Max/Min (variadic, NaN
//! propagates, broadcasting from opset 8), And/Or/Xor/Not, IsNaN, Expand, GatherND (with
//! `batch_dims`), Where. Data-movement ops (Reshape, (Un)Squeeze, Concat, Gather, GatherND,
//! Expand, Slice, Transpose, Where, Identity) accept any byte-aligned numeric type.
//!
//! `Shape` also folds when its input is not a constant but has a declared type
//! ([`Graph::value_type`]: a graph input, a graph output or a `value_info` entry) whose every
//! dimension is known: once `specialize-shapes` has made the inputs concrete, the dynamo
//! exporter's `Shape → Gather → Range/Concat` chains fold. A declared type is a contract of
//! the model (a runtime refuses inputs that do not match it), so the folded value is what the
//! node computes on every valid input.
//!
//! Left alone: unknown ops and domains, ops on other types, nodes holding subgraphs (subgraphs
//! are not searched), nodes producing a graph output (the output must stay produced by a
//! node), results over `max-bytes` (folding must not bloat the model; counted in
//! `fold.too_large`), inputs over 64 MiB, and nodes whose constant inputs are invalid for the
//! op (out-of-range indices, integer division by zero, mismatched shapes: a note names the
//! node and the reason). Also a `Squeeze` with an empty axes list, which onnxruntime and the
//! ONNX reference read differently. Inputs that become unused stay: run `dce` afterwards.
//!
//! Preconditions: the graph verifies and imports the default ONNX domain. Preserves: graph
//! inputs and outputs and what they compute, value names. Example pipeline:
//! `fold-constants,cse,dce`. Statistics: `fold.nodes_folded`, `fold.too_large`.

mod array;
mod ops;

use adaptc_ir::{is_default_domain, AttrValue, Dim, Graph, Model, NodeId, Tensor};

use crate::canonicalize::{is_constant, replace_node_with_initializers};
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// Default cap on a folded result, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// Why a node was not folded.
#[derive(Debug, PartialEq)]
pub(crate) enum Skip {
    /// An op, type or form the folder does not evaluate.
    Unsupported,
    /// The result (or an input) is over the size cap.
    TooLarge,
    /// The constant inputs are not valid for the op (the model is wrong or we are).
    Invalid(String),
}

/// The `fold-constants` pass.
#[derive(Clone, Copy, Debug)]
pub struct FoldConstants {
    /// Largest result folded, in bytes.
    pub max_bytes: u64,
}

impl Default for FoldConstants {
    fn default() -> FoldConstants {
        FoldConstants { max_bytes: DEFAULT_MAX_BYTES }
    }
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: "fold-constants",
        summary: "evaluate nodes whose inputs are all constants (shape arithmetic, casts, Constant nodes)",
        options: vec![OptionInfo::new(
            "max-bytes",
            OptionKind::Int,
            Some("1048576"),
            "largest result folded into an initializer, in bytes",
        )],
        example: "fold-constants{max-bytes=65536},dce",
        build: |o: &Options| Ok(Box::new(FoldConstants { max_bytes: o.usize("max-bytes")? as u64 })),
    }
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let Some(opset) = model.opset("") else {
            cx.note("fold-constants: the model does not import the default ONNX domain; nothing folded");
            return Ok(PassOutcome::unchanged().stat("fold.nodes_folded", 0).stat("fold.too_large", 0));
        };
        let graph = &mut model.graph;
        let (mut folded, mut too_large) = (0, 0);
        for id in graph.topo_order()? {
            match evaluate(graph, id, opset, self.max_bytes) {
                Ok(values) => {
                    replace_node_with_initializers(graph, id, values)?;
                    folded += 1;
                }
                Err(Skip::Unsupported) => {}
                Err(Skip::TooLarge) => too_large += 1,
                Err(Skip::Invalid(reason)) => {
                    let node = graph.node(id);
                    cx.note(format!("fold-constants: left `{}` ({}) alone: {reason}", node.label(), node.op()));
                }
            }
        }
        Ok(PassOutcome::changed(folded > 0).stat("fold.nodes_folded", folded).stat("fold.too_large", too_large))
    }
}

/// The values of node `id`'s outputs, if it can and should be folded.
fn evaluate(graph: &Graph, id: NodeId, opset: i64, max_bytes: u64) -> Result<Vec<Tensor>, Skip> {
    let node = graph.node(id);
    if !is_default_domain(&node.op().domain) || node.has_subgraphs() {
        return Err(Skip::Unsupported);
    }
    if node.outputs().len() != 1 || node.output(0).is_none() || node.outputs().iter().any(|o| graph.is_graph_output(o))
    {
        return Err(Skip::Unsupported);
    }
    if node.op().op_type == "Constant" {
        return constant_value(node).map(|t| vec![t]);
    }
    if node.op().op_type == "Shape" {
        if let [x] = node.inputs() {
            if !x.is_empty() && !is_constant(graph, x) {
                let dims = declared_dims(graph, x).ok_or(Skip::Unsupported)?;
                let cx = ops::Cx { node, inputs: &[None], opset, max_bytes };
                return ops::shape_of(&cx, &dims).map(|t| vec![t]);
            }
        }
    }
    let mut inputs = Vec::with_capacity(node.inputs().len());
    for v in node.inputs() {
        if v.is_empty() {
            inputs.push(None);
        } else if is_constant(graph, v) {
            inputs.push(graph.initializer(v));
        } else {
            return Err(Skip::Unsupported);
        }
    }
    let cx = ops::Cx { node, inputs: &inputs, opset, max_bytes };
    ops::eval(&cx).map(|t| vec![t])
}

/// The dims of `value`'s declared tensor type, when its rank and every dimension are known.
fn declared_dims(graph: &Graph, value: &str) -> Option<Vec<u64>> {
    let dims = graph.value_type(value)?.dims()?;
    dims.iter()
        .map(|d| match d {
            Dim::Known(n) => u64::try_from(*n).ok(),
            Dim::Symbol(_) | Dim::Unknown => None,
        })
        .collect()
}

/// The tensor a `Constant` node holds.
fn constant_value(node: &adaptc_ir::Node) -> Result<Tensor, Skip> {
    let [attr] = node.attrs() else {
        return Err(Skip::Unsupported);
    };
    let out = node.output(0).unwrap_or_default();
    let invalid = |e: adaptc_ir::IrError| Skip::Invalid(e.to_string());
    match (attr.name.as_str(), &attr.value) {
        ("value", AttrValue::Tensor(t)) => {
            let mut t = t.clone();
            t.name = out.to_string();
            Ok(t)
        }
        ("value_float", AttrValue::Float(f)) => Tensor::from_f32(out, vec![], &[*f]).map_err(invalid),
        ("value_floats", AttrValue::Floats(v)) => Tensor::from_f32(out, vec![v.len() as u64], v).map_err(invalid),
        ("value_int", AttrValue::Int(i)) => Tensor::from_i64(out, vec![], &[*i]).map_err(invalid),
        ("value_ints", AttrValue::Ints(v)) => Tensor::from_i64(out, vec![v.len() as u64], v).map_err(invalid),
        _ => Err(Skip::Unsupported),
    }
}
