//! Deterministic text dump, one node a line; golden tests diff it.
//!
//! ```text
//! model ir_version=10 opsets=[ai.onnx=20]
//! graph main_graph {
//!   input %x: f32[batch, 64]
//!   init %w: f32[64, 64]
//!   %y = MatMul(%x, %w)  # node_name
//!   output %y: f32[batch, 64]
//! }
//! ```

use std::fmt::Write;

use crate::attr::AttrValue;
use crate::graph::Graph;
use crate::model::Model;
use crate::tensor::Tensor;

/// Dumps a model: header line, then the main graph.
pub fn dump(model: &Model) -> String {
    let opsets: Vec<String> = model
        .opset_imports
        .iter()
        .map(|o| format!("{}={}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
        .collect();
    let mut out = format!("model ir_version={} opsets=[{}]\n", model.ir_version, opsets.join(", "));
    dump_into(&model.graph, 0, &mut out);
    out
}

/// Dumps one graph.
pub fn dump_graph(graph: &Graph) -> String {
    let mut out = String::new();
    dump_into(graph, 0, &mut out);
    out
}

fn tensor_sig(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims().iter().map(u64::to_string).collect();
    format!("{}[{}]", t.dtype(), dims.join(", "))
}

fn dump_into(graph: &Graph, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(out, "{pad}graph {} {{", graph.name);
    for v in &graph.inputs {
        let ty = v.ty.as_ref().map_or("?".to_string(), ToString::to_string);
        let _ = writeln!(out, "{pad}  input %{}: {ty}", v.name);
    }
    for t in graph.initializers() {
        let ext = if t.is_external() { " (external)" } else { "" };
        let _ = writeln!(out, "{pad}  init %{}: {}{ext}", t.name, tensor_sig(t));
    }
    let order = graph.topo_order().unwrap_or_else(|_| graph.node_ids());
    for id in order {
        let node = graph.node(id);
        let outs: Vec<String> =
            node.outputs().iter().map(|o| if o.is_empty() { "_".to_string() } else { format!("%{o}") }).collect();
        let ins: Vec<String> =
            node.inputs().iter().map(|i| if i.is_empty() { "_".to_string() } else { format!("%{i}") }).collect();
        let mut attrs = Vec::new();
        let mut bodies = Vec::new();
        for a in node.attrs() {
            let v = match &a.value {
                AttrValue::Float(f) => format!("{f:?}"),
                AttrValue::Int(i) => i.to_string(),
                AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
                AttrValue::Tensor(t) => format!("tensor {}", tensor_sig(t)),
                AttrValue::Floats(v) => format!("{v:?}"),
                AttrValue::Ints(v) => format!("{v:?}"),
                AttrValue::Strings(v) => {
                    format!("{:?}", v.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>())
                }
                AttrValue::Graph(_) | AttrValue::Graphs(_) => {
                    bodies.push(a);
                    continue;
                }
                AttrValue::Tensors(ts) => format!("tensors x{}", ts.len()),
                AttrValue::SparseTensor(_) => "sparse_tensor".to_string(),
                AttrValue::SparseTensors(s) => format!("sparse_tensors x{}", s.len()),
                AttrValue::Type(t) => format!("type {t}"),
                AttrValue::Types(t) => format!("types x{}", t.len()),
                AttrValue::Undefined => format!("@{}", a.ref_attr_name),
            };
            attrs.push(format!("{}={v}", a.name));
        }
        let attrs = if attrs.is_empty() { String::new() } else { format!(" {{{}}}", attrs.join(", ")) };
        let name = if node.name.is_empty() { String::new() } else { format!("  # {}", node.name) };
        let _ = writeln!(out, "{pad}  {} = {}({}){attrs}{name}", outs.join(", "), node.op(), ins.join(", "));
        for a in bodies {
            for g in a.graphs() {
                let _ = writeln!(out, "{pad}    {}:", a.name);
                dump_into(g, depth + 2, out);
            }
        }
    }
    for v in &graph.outputs {
        let ty = v.ty.as_ref().map_or("?".to_string(), ToString::to_string);
        let _ = writeln!(out, "{pad}  output %{}: {ty}", v.name);
    }
    let _ = writeln!(out, "{pad}}}");
}
