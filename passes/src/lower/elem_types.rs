//! Element types of a graph's values, for passes that rewrite by type (`autocast`).
//!
//! Exporters declare the types of graph inputs, outputs and initializers, but often not of
//! intermediate values. This walks the graph once in topological order: a declared type wins;
//! otherwise the node's op says (`Cast` → `to`, `Shape` → int64, comparisons → bool, …), and
//! for the many ops whose output has their data input's type (arithmetic, layout, `Gather`,
//! norms) the first input whose type is known decides. A value it cannot tell is absent, and a
//! caller treats it as "unknown", never as a guess.

use std::collections::HashMap;

use adaptc_ir::{DataType, Graph, IrError, Node};

/// Ops whose outputs are int64 whatever their inputs.
const INT64_OUT: &[&str] = &["Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"];

/// Ops whose outputs are bool.
const BOOL_OUT: &[&str] =
    &["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"];

/// The element type of every value whose type is declared or follows from its producer.
pub fn elem_types(graph: &Graph) -> Result<HashMap<String, DataType>, IrError> {
    let mut types: HashMap<String, DataType> = HashMap::new();
    for value in graph.inputs.iter().chain(&graph.value_info).chain(&graph.outputs) {
        if let Some(d) = value.ty.as_ref().and_then(|t| t.dtype()) {
            types.insert(value.name.clone(), d);
        }
    }
    for t in graph.initializers() {
        types.insert(t.name.clone(), t.dtype());
    }
    for id in graph.topo_order()? {
        let node = graph.node(id);
        for (slot, out) in node.outputs().iter().enumerate().filter(|(_, o)| !o.is_empty()) {
            if types.contains_key(out) {
                continue;
            }
            if let Some(d) = produced(node, slot, &types) {
                types.insert(out.clone(), d);
            }
        }
    }
    Ok(types)
}

/// The type `node` gives its output `slot`, from its op and its inputs' known types.
fn produced(node: &Node, slot: usize, types: &HashMap<String, DataType>) -> Option<DataType> {
    let op = node.op();
    let input = |i: usize| node.input(i).and_then(|v| types.get(v)).copied();
    if op.domain == crate::autodiff::ADAPTC_DOMAIN {
        // adaptc's own ops (fused attention, gradients) compute in their first input's type.
        return input(0);
    }
    if !adaptc_ir::is_default_domain(&op.domain) {
        return None;
    }
    let attr_type = |name: &str| node.attr(name).and_then(|a| a.as_int()).and_then(|c| DataType::from_code(c as i32));
    match op.op_type.as_str() {
        "Cast" => attr_type("to"),
        "CastLike" => input(1),
        "Constant" => node.attr("value").and_then(|a| a.as_tensor()).map(|t| t.dtype()),
        "ConstantOfShape" => {
            Some(node.attr("value").and_then(|a| a.as_tensor()).map_or(DataType::Float, |t| t.dtype()))
        }
        "Where" => input(1).or_else(|| input(2)),
        "TopK" | "MaxPool" if slot == 1 => Some(DataType::Int64),
        "Dropout" if slot == 1 => Some(DataType::Bool),
        t if INT64_OUT.contains(&t) => Some(DataType::Int64),
        t if BOOL_OUT.contains(&t) => Some(DataType::Bool),
        "QuantizeLinear" | "DequantizeLinear" | "RandomNormal" | "RandomUniform" | "EyeLike" | "If" | "Loop"
        | "Scan" => None,
        _ => (0..node.inputs().len()).find_map(input),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adaptc_ir::{Attribute, OpKey, Tensor, TypeInfo, ValueInfo};

    #[test]
    fn types_follow_declarations_then_ops() {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::new("x", Some(TypeInfo::tensor(DataType::Float, None))));
        g.add_initializer(Tensor::from_f32("w", vec![2, 2], &[0.0; 4]).unwrap()).unwrap();
        let node = |op: &str, i: &[&str], o: &str| {
            Node::new(OpKey::onnx(op), i.iter().map(|s| s.to_string()).collect(), vec![o.to_string()])
        };
        g.add_node(node("MatMul", &["x", "w"], "y")).unwrap();
        g.add_node(node("Shape", &["y"], "s")).unwrap();
        g.add_node(node("Greater", &["y", "x"], "b")).unwrap();
        g.add_node(node("Cast", &["y"], "h").with_attr(Attribute::int("to", DataType::BFloat16.code() as i64)))
            .unwrap();
        g.add_node(node("Identity", &["unknown"], "u")).unwrap();
        let t = elem_types(&g).unwrap();
        assert_eq!(t["y"], DataType::Float);
        assert_eq!(t["s"], DataType::Int64);
        assert_eq!(t["b"], DataType::Bool);
        assert_eq!(t["h"], DataType::BFloat16);
        assert!(!t.contains_key("u"));
    }
}
