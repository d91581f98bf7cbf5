//! Raising a model's default-domain opset without changing what it computes.
//!
//! `DequantizeLinear` needs opset 13 for a per-channel `axis`, 19 for `float16`/`bfloat16`
//! scales and 21 for `int4`/`uint4` data and `block_size`. When a model imports an older opset,
//! `quantize-weights` raises it — but only after checking that no operator of the graph (or of
//! its subgraphs) changes meaning on the way: for every default-domain node, every schema version
//! the operator gained in `(old, new]` (from `opset_history.rs`, generated from `onnx.defs` by
//! `scripts/crosscheck/quantize_opset_table.py`) must be on the reviewed list below. A change
//! not on the list, an operator unknown to the table, an operator that does not exist at the old
//! opset or is deprecated at the new one, and model-local functions (whose bodies import the
//! opset too) all refuse the raise, naming the node and the reason.
//!
//! The reviewed list covers opsets 13–21; older versions are never reviewed, so a model below
//! opset 12 is only raised when none of its operators changed since. Changes classified as
//! keeping every existing model's meaning:
//! - **type-only** (new element types: bfloat16 at 13, int/uint 8/16 arithmetic at 14, optional
//!   and sequence types at 16, float8 and strings at 19, int4/uint4 at 21, bool reductions at
//!   20, …) — the schema diff (`onnx.defs`) shows no attribute or input change;
//! - **an optional attribute or input whose default is the old behaviour**: Reshape-14
//!   `allowzero`, GRU/LSTM/RNN-14 `layout`, Shape-15 `start`/`end`, ScatterElements/ScatterND-16
//!   `reduction`, Pad-18 `axes`, Resize-18 `antialias`/`axes`/`keep_aspect_ratio_policy`,
//!   LpPool-18 `ceil_mode`/`dilations`, AveragePool-19 `dilations`, Pad-19 `wrap`, Resize-19
//!   `half_pixel_symmetric`, Cast/CastLike-19 `saturate` (float8 only), Dequantize/QuantizeLinear
//!   13 `axis`, 19, 21 `block_size`/`output_dtype`, Resize-13 (`roi`/`scales` optional),
//!   OptionalHasElement/GetElement-18.
//!
//! Changes that are safe for some nodes only (checked per node):
//! - ReduceSum-13 and the other Reduce*-18: `axes` moved from an attribute to an input — safe
//!   when the node has no `axes` attribute;
//! - Squeeze-13, Unsqueeze-13: the same for `axes`;
//! - Split-13: `split` moved to an input — safe without a `split` attribute; Split-18: without a
//!   `split` input the new `num_outputs` attribute is required — safe when the node has a
//!   `split` input;
//! - Softmax/LogSoftmax/Hardmax-13: `axis` now names one axis (default −1) instead of flattening
//!   to 2-D from `axis` (default 1) — safe when `axis` is given as −1;
//! - BatchNormalization-14: training outputs redefined — safe with a single output;
//! - Resize-13: the `tf_half_pixel_for_nn` coordinate mode was removed — safe otherwise.
//!
//! Refused: RoiAlign-16 (the default coordinate mode changed), DFT-20 (`axis` became an input),
//! GridSample-20 (mode names changed), GroupNormalization-21 (scale and bias became
//! per-channel), and everything older than 13.

use std::collections::BTreeSet;

use adaptc_ir::{is_default_domain, Graph, Model, Node};

use super::opset_history::{DEPRECATED, HISTORY, NEWEST_OPSET};

/// What a schema version means for nodes written against an older opset.
#[derive(Clone, Copy)]
enum Change {
    /// Same meaning for every existing node.
    Safe,
    /// Same meaning when the predicate holds; the text says what changed.
    SafeIf(fn(&Node) -> bool, &'static str),
    /// Meaning or interface changed.
    Unsafe(&'static str),
}

/// Versions that only added element types.
const TYPES_ONLY: &[(i64, &[&str])] = &[
    (
        13,
        &[
            "Abs",
            "Add",
            "ArgMax",
            "ArgMin",
            "Cast",
            "Ceil",
            "Clip",
            "Concat",
            "Constant",
            "DepthToSpace",
            "Div",
            "Dropout",
            "Equal",
            "Erf",
            "Exp",
            "Expand",
            "Flatten",
            "Floor",
            "Gather",
            "GatherElements",
            "GatherND",
            "Gemm",
            "Greater",
            "Identity",
            "If",
            "IsNaN",
            "LRN",
            "Less",
            "Log",
            "Loop",
            "MatMul",
            "Max",
            "Mean",
            "MeanVarianceNormalization",
            "Min",
            "Mod",
            "Mul",
            "Neg",
            "NegativeLogLikelihoodLoss",
            "NonZero",
            "Pad",
            "Pow",
            "Reciprocal",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSumSquare",
            "Relu",
            "Reshape",
            "ScatterElements",
            "ScatterND",
            "Shape",
            "Sigmoid",
            "Sign",
            "Size",
            "Slice",
            "SoftmaxCrossEntropyLoss",
            "SpaceToDepth",
            "Sqrt",
            "Sub",
            "Sum",
            "Tanh",
            "Tile",
            "Transpose",
        ],
    ),
    (14, &["Add", "CumSum", "Div", "Identity", "Mul", "Relu", "Sub"]),
    (15, &["BatchNormalization", "Pow"]),
    (16, &["GreaterOrEqual", "Identity", "If", "LeakyRelu", "LessOrEqual", "Loop", "PRelu", "Scan", "Where"]),
    (18, &["OptionalGetElement", "OptionalHasElement", "ScatterElements", "ScatterND"]),
    (19, &["Constant", "Equal", "Identity", "If", "Loop", "Reshape", "Scan", "Shape", "Size"]),
    (20, &["ConstantOfShape", "IsInf", "IsNaN", "ReduceMax", "ReduceMin"]),
    (
        21,
        &[
            "Cast",
            "CastLike",
            "Constant",
            "ConstantOfShape",
            "Flatten",
            "Identity",
            "If",
            "Loop",
            "Pad",
            "QLinearMatMul",
            "Reshape",
            "Scan",
            "Shape",
            "Size",
            "Squeeze",
            "Transpose",
            "Unsqueeze",
        ],
    ),
];

/// Versions that added an optional attribute or input whose default keeps the old behaviour.
const COMPATIBLE_ADDITIONS: &[(&str, i64)] = &[
    ("AveragePool", 19),
    ("Cast", 19),
    ("CastLike", 19),
    ("DequantizeLinear", 13),
    ("DequantizeLinear", 19),
    ("DequantizeLinear", 21),
    ("GRU", 14),
    ("LSTM", 14),
    ("LpPool", 18),
    ("Pad", 18),
    ("Pad", 19),
    ("QuantizeLinear", 13),
    ("QuantizeLinear", 19),
    ("QuantizeLinear", 21),
    ("RNN", 14),
    ("Reshape", 14),
    ("Resize", 18),
    ("Resize", 19),
    ("ScatterElements", 16),
    ("ScatterND", 16),
    ("Shape", 15),
];

const REDUCE_18: &[&str] = &[
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
];

fn no_attr(node: &Node, name: &str) -> bool {
    node.attr(name).is_none()
}

fn has_input(node: &Node, slot: usize) -> bool {
    node.input(slot).is_some_and(|s| !s.is_empty())
}

/// The classification of `op` gaining schema version `version`.
fn change(op: &str, version: i64) -> Change {
    if TYPES_ONLY.iter().any(|(v, ops)| *v == version && ops.contains(&op))
        || COMPATIBLE_ADDITIONS.contains(&(op, version))
    {
        return Change::Safe;
    }
    match (op, version) {
        ("ReduceSum", 13) => Change::SafeIf(|n| no_attr(n, "axes"), "`axes` moved from an attribute to an input"),
        (r, 18) if REDUCE_18.contains(&r) => {
            Change::SafeIf(|n| no_attr(n, "axes"), "`axes` moved from an attribute to an input")
        }
        ("Squeeze" | "Unsqueeze", 13) => {
            Change::SafeIf(|n| no_attr(n, "axes"), "`axes` moved from an attribute to an input")
        }
        ("Split", 13) => Change::SafeIf(|n| no_attr(n, "split"), "`split` moved from an attribute to an input"),
        ("Split", 18) => {
            Change::SafeIf(|n| has_input(n, 1), "without a `split` input the new `num_outputs` attribute is required")
        }
        ("Softmax" | "LogSoftmax" | "Hardmax", 13) => Change::SafeIf(
            |n| n.attr("axis").and_then(|a| a.as_int()) == Some(-1),
            "`axis` now names one axis (default -1) instead of coercing to 2-D from `axis` (default 1); only \
             axis=-1 keeps its meaning",
        ),
        ("BatchNormalization", 14) => Change::SafeIf(
            |n| n.outputs().iter().filter(|o| !o.is_empty()).count() == 1,
            "the training-mode outputs were redefined",
        ),
        ("Resize", 13) => Change::SafeIf(
            |n| {
                n.attr("coordinate_transformation_mode").and_then(|a| match &a.value {
                    adaptc_ir::AttrValue::String(s) => Some(s.as_slice()),
                    _ => None,
                }) != Some(b"tf_half_pixel_for_nn".as_slice())
            },
            "the `tf_half_pixel_for_nn` coordinate mode was removed",
        ),
        ("RoiAlign", 16) => Change::Unsafe("the default `coordinate_transformation_mode` changed"),
        ("DFT", 20) => Change::Unsafe("`axis` moved from an attribute to an input"),
        ("GridSample", 20) => Change::Unsafe("the `mode` names changed (bilinear → linear, bicubic → cubic)"),
        ("GroupNormalization", 21) => Change::Unsafe("`scale` and `bias` became per-channel instead of per-group"),
        _ => Change::Unsafe("this change was not reviewed (adaptc reviews opsets 13 to 21)"),
    }
}

/// Why the default-domain opset of `model` cannot be raised from `from` to `to`: one line per
/// problem (at most 10), empty when the raise keeps the model's meaning.
pub fn raise_problems(model: &Model, from: i64, to: i64) -> Vec<String> {
    let mut problems = BTreeSet::new();
    if to > NEWEST_OPSET {
        problems.insert(format!("opset {to} is newer than the operator table (opset {NEWEST_OPSET})"));
    }
    let functions = model.function_names();
    if !functions.is_empty() {
        problems.insert(format!(
            "the model has local functions ({}), whose bodies import the opset too; raising it is not supported",
            functions.join(", ")
        ));
    }
    check_graph(&model.graph, from, to, &mut problems);
    let mut out: Vec<String> = problems.into_iter().collect();
    if out.len() > 10 {
        let more = out.len() - 10;
        out.truncate(10);
        out.push(format!("… and {more} more"));
    }
    out
}

fn check_graph(graph: &Graph, from: i64, to: i64, problems: &mut BTreeSet<String>) {
    for (_, node) in graph.nodes() {
        for attr in node.attrs() {
            for g in attr.graphs() {
                check_graph(g, from, to, problems);
            }
        }
        if !is_default_domain(&node.op().domain) {
            continue;
        }
        let op = node.op().op_type.as_str();
        let label = node.label();
        let Ok(i) = HISTORY.binary_search_by(|(name, _)| (*name).cmp(op)) else {
            problems.insert(format!("node `{label}`: `{op}` is not an operator of the ONNX default domain"));
            continue;
        };
        let versions = HISTORY[i].1;
        if !versions.iter().any(|&v| v <= from) {
            problems.insert(format!("node `{label}`: `{op}` does not exist at opset {from}"));
            continue;
        }
        if let Some(&latest) = versions.iter().filter(|&&v| v <= to).max() {
            if DEPRECATED.contains(&(op, latest)) && latest > from {
                problems.insert(format!("node `{label}`: `{op}` is deprecated at opset {to}"));
            }
        }
        for &v in versions.iter().filter(|&&v| v > from && v <= to) {
            match change(op, v) {
                Change::Safe => {}
                Change::SafeIf(ok, what) => {
                    if !ok(node) {
                        problems.insert(format!("node `{label}`: {op}-{v} changed for this node: {what}"));
                    }
                }
                Change::Unsafe(what) => {
                    problems.insert(format!("{op}-{v} (used by node `{label}`): {what}"));
                }
            }
        }
    }
}

/// The IR version a default-domain opset needs (ONNX's versioning table): 21 → 10, 19 → 9,
/// 15 → 8, 13 → 7.
pub fn ir_version_for(opset: i64) -> i64 {
    match opset {
        o if o >= 21 => 10,
        19 | 20 => 9,
        15..=18 => 8,
        _ => 7,
    }
}

/// Sets the version of the model's default-domain import (whichever spelling it uses) and
/// raises the IR version when the opset needs a newer one.
pub fn set_default_opset(model: &mut Model, version: i64) {
    match model.opset_imports.iter_mut().find(|o| is_default_domain(&o.domain)) {
        Some(o) => o.version = version,
        None => model.opset_imports.push(adaptc_ir::OpsetImport::new("", version)),
    }
    model.ir_version = model.ir_version.max(ir_version_for(version));
}

#[cfg(test)]
mod tests {
    use adaptc_ir::{Attribute, OpKey};

    use super::*;

    fn model_with(opset: i64, nodes: Vec<Node>) -> Model {
        let mut g = Graph::new("g");
        for n in nodes {
            g.add_node(n).unwrap();
        }
        Model::new(g, opset)
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node::new(
            OpKey::onnx(op),
            inputs.iter().map(|s| s.to_string()).collect(),
            outputs.iter().map(|s| s.to_string()).collect(),
        )
        .named(format!("n_{}", outputs[0]))
    }

    #[test]
    fn history_is_sorted_for_binary_search() {
        assert!(HISTORY.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(HISTORY.iter().all(|(_, v)| v.windows(2).all(|w| w[0] < w[1])));
    }

    #[test]
    fn transformer_ops_raise_from_20_to_21() {
        let ops = ["Add", "MatMul", "Reshape", "Transpose", "Softmax", "Cast", "Shape", "Squeeze", "Unsqueeze"];
        let nodes = ops.iter().enumerate().map(|(i, op)| node(op, &["x"], &[&format!("y{i}")])).collect();
        let m = model_with(20, nodes);
        assert_eq!(raise_problems(&m, 20, 21), Vec::<String>::new());
    }

    #[test]
    fn semantic_changes_are_refused_per_node() {
        let squeeze_attr = node("Squeeze", &["x"], &["a"]).with_attr(Attribute::ints("axes", vec![0]));
        let squeeze_plain = node("Squeeze", &["x"], &["b"]);
        let softmax = node("Softmax", &["x"], &["c"]);
        let split = node("Split", &["x"], &["d", "e"]);
        let gn = node("GroupNormalization", &["x", "s", "b"], &["f"]);
        let m = model_with(12, vec![squeeze_attr, squeeze_plain, softmax, split]);
        let p = raise_problems(&m, 12, 21).join("\n");
        assert!(p.contains("node `n_a`: Squeeze-13 changed"), "{p}");
        assert!(!p.contains("n_b"), "{p}");
        assert!(p.contains("node `n_c`: Softmax-13"), "{p}");
        assert!(p.contains("Split-18"), "{p}");
        let m = model_with(18, vec![gn]);
        let p = raise_problems(&m, 18, 21).join("\n");
        assert!(p.contains("GroupNormalization-21") && p.contains("per-channel"), "{p}");
        // Older than 13: not reviewed.
        let m = model_with(11, vec![node("Max", &["x", "x"], &["y"])]);
        let p = raise_problems(&m, 11, 21).join("\n");
        assert!(p.contains("Max-12") && p.contains("not reviewed"), "{p}");
        let m = model_with(11, vec![node("Add", &["x", "x"], &["y"])]);
        assert_eq!(raise_problems(&m, 11, 21), Vec::<String>::new());
        let m = model_with(20, vec![node("Frobnicate", &["x"], &["y"])]);
        assert!(raise_problems(&m, 20, 21)[0].contains("not an operator"));
    }

    #[test]
    fn ir_version_follows_the_opset() {
        let mut m = model_with(20, vec![]);
        m.ir_version = 8;
        set_default_opset(&mut m, 21);
        assert_eq!((m.opset(""), m.ir_version), (Some(21), 10));
        let mut m = model_with(12, vec![]);
        m.opset_imports[0].domain = "ai.onnx".into();
        m.ir_version = 6;
        set_default_opset(&mut m, 13);
        assert_eq!((m.opset_imports.len(), m.opset(""), m.ir_version), (1, Some(13), 7));
    }
}
