//! The linear-layer matcher: finds `y = x·W (+ b)` however the exporter spelled it.
//!
//! Recognised forms (`W` a constant of rank 2, `x` an activation of any rank ≥ 1):
//! - `MatMul(x, W[in,out])`, optionally followed by `Add(·, b)` / `Add(b, ·)` with `b` a 1-D
//!   constant of length `out` ([`LinearForm::MatMul`], [`WeightLayout::InOut`]);
//! - `Gemm(x, W, C?)` with `transA=0`, `alpha=1`, `beta=1`; `transB=0` stores `[in,out]`,
//!   `transB=1` stores `[out,in]`; `C` is `[out]` or `[1,out]` ([`LinearForm::Gemm`]);
//! - `MatMul(x, Transpose(W[out,in], perm=[1,0]))`, optionally with a bias `Add`
//!   ([`LinearForm::MatMulTransposed`], [`WeightLayout::OutIn`]).
//!
//! A constant is an initializer that is not also a graph input (a graph input may be
//! overridden at run time), or the output of a `Constant` node with a `value` tensor.
//! MatMuls of two activations (attention scores, attention-weighted values) are not linear
//! layers. Matching never changes the graph; a failed match says why in [`NoMatch::reason`].

use std::fmt;

use adaptc_ir::{Dim, Graph, NodeId, Tensor};

use super::module_path::{recover_module_path, PathSource};

/// How the layer is spelled in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearForm {
    /// `MatMul(x, W[in,out])`.
    MatMul,
    /// `Gemm(x, W, C?)` with `transB` 0 or 1.
    Gemm,
    /// `MatMul(x, Transpose(W[out,in]))`.
    MatMulTransposed,
}

/// How the stored weight is oriented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[in, out]`: `y = x·W` (the dynamo exporter's folded `Wᵀ`, GPT-2's Conv1D).
    InOut,
    /// `[out, in]`: PyTorch's `Linear.weight`.
    OutIn,
}

/// A matched linear layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearLayer {
    /// The MatMul or Gemm node.
    pub node: NodeId,
    pub form: LinearForm,
    /// The activation input.
    pub input: String,
    /// The constant holding the weight: an initializer name, or the output of a `Constant`
    /// node. For [`LinearForm::MatMulTransposed`], the constant feeding the Transpose.
    pub weight: String,
    /// The `Transpose` node of [`LinearForm::MatMulTransposed`].
    pub transpose_node: Option<NodeId>,
    pub layout: WeightLayout,
    /// The bias constant: Gemm's `C`, or the other input of the bias `Add`.
    pub bias: Option<String>,
    /// The bias `Add`, when the bias is a separate node (a Gemm adds its own bias).
    pub bias_node: Option<NodeId>,
    /// The value holding the layer's result (the bias Add's output when there is one).
    pub output: String,
    pub in_features: u64,
    pub out_features: u64,
    /// The PyTorch module path, e.g. `encoder.layer.0.attention.self.query`.
    pub module_path: Option<String>,
    pub path_source: PathSource,
}

impl LinearLayer {
    /// The weight tensor (an initializer or a `Constant` node's value).
    pub fn weight_tensor<'g>(&self, graph: &'g Graph) -> Option<&'g Tensor> {
        constant_tensor(graph, &self.weight)
    }

    /// The bias tensor, when there is a bias.
    pub fn bias_tensor<'g>(&self, graph: &'g Graph) -> Option<&'g Tensor> {
        constant_tensor(graph, self.bias.as_deref()?)
    }

    /// Nodes of the pattern in graph-independent order: the MatMul/Gemm, then the Transpose
    /// and the bias Add when present.
    pub fn nodes(&self) -> Vec<NodeId> {
        std::iter::once(self.node).chain(self.transpose_node).chain(self.bias_node).collect()
    }
}

/// Why a node is not a linear layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMatch {
    pub reason: String,
}

impl NoMatch {
    fn new(reason: impl Into<String>) -> NoMatch {
        NoMatch { reason: reason.into() }
    }
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for NoMatch {}

/// The tensor of a constant value: an initializer that is not a graph input, or the `value`
/// of the `Constant` node producing it.
pub fn constant_tensor<'g>(graph: &'g Graph, value: &str) -> Option<&'g Tensor> {
    match operand(graph, value) {
        Operand::Const(t) => Some(t),
        _ => None,
    }
}

/// What feeds an input slot.
enum Operand<'g> {
    Const(&'g Tensor),
    /// An initializer that is also a graph input (its value can be overridden).
    GraphInputInit,
    Activation,
}

fn operand<'g>(graph: &'g Graph, value: &str) -> Operand<'g> {
    if let Some(t) = graph.initializer(value) {
        return if graph.is_graph_input(value) { Operand::GraphInputInit } else { Operand::Const(t) };
    }
    if let Some((p, 0)) = graph.producer(value) {
        let node = graph.node(p);
        if node.op().is("Constant") && node.inputs().is_empty() {
            if let Some(t) = node.attr("value").and_then(|a| a.as_tensor()) {
                return Operand::Const(t);
            }
        }
    }
    Operand::Activation
}

fn is_activation(graph: &Graph, value: &str) -> bool {
    matches!(operand(graph, value), Operand::Activation)
}

/// Every linear layer of `graph`, in graph order; each MatMul/Gemm is matched at most once.
pub fn find_linear_layers(graph: &Graph) -> Vec<LinearLayer> {
    linear_candidates(graph).into_iter().filter_map(|(_, r)| r.ok()).collect()
}

/// Every MatMul and Gemm of `graph` in graph order with its match result, for reports and
/// debugging ("why was this MatMul not adapted?").
pub fn linear_candidates(graph: &Graph) -> Vec<(NodeId, Result<LinearLayer, NoMatch>)> {
    graph
        .nodes()
        .filter(|(_, n)| n.op().is("MatMul") || n.op().is("Gemm"))
        .map(|(id, _)| (id, match_linear(graph, id)))
        .collect()
}

/// Matches the linear layer whose MatMul or Gemm is `node`.
pub fn match_linear(graph: &Graph, node: NodeId) -> Result<LinearLayer, NoMatch> {
    if !graph.contains_node(node) {
        return Err(NoMatch::new("the node is not in this graph"));
    }
    let op = graph.node(node).op();
    if op.is("MatMul") {
        match_matmul(graph, node)
    } else if op.is("Gemm") {
        match_gemm(graph, node)
    } else {
        Err(NoMatch::new(format!("{op} is not a MatMul or Gemm")))
    }
}

/// What the matchers have established before the bias and the module path are looked at.
struct Core {
    form: LinearForm,
    input: String,
    weight: String,
    transpose_node: Option<NodeId>,
    layout: WeightLayout,
    in_features: u64,
    out_features: u64,
}

fn match_matmul(graph: &Graph, id: NodeId) -> Result<LinearLayer, NoMatch> {
    let node = graph.node(id);
    let (Some(x), Some(w), 2) = (node.input(0), node.input(1), node.inputs().len()) else {
        return Err(NoMatch::new(format!("MatMul has inputs {:?}, expected two", node.inputs())));
    };
    if node.output(0).is_none() {
        return Err(NoMatch::new("MatMul has no output"));
    }
    let x_is_activation = is_activation(graph, x);
    let (weight, transpose_node, layout, tensor) = match operand(graph, w) {
        Operand::Const(t) => (w.to_string(), None, WeightLayout::InOut, t),
        Operand::GraphInputInit => return Err(graph_input_weight(w)),
        Operand::Activation => match transposed_constant(graph, w)? {
            Some((tr, src, t)) => (src, Some(tr), WeightLayout::OutIn, t),
            None => {
                let why = if x_is_activation {
                    "both inputs are activations, as in attention"
                } else {
                    "input 0 is the constant, so this computes W·x, not x·W"
                };
                return Err(NoMatch::new(format!("input 1 `{w}` is an activation, not a constant weight ({why})")));
            }
        },
    };
    if !x_is_activation {
        return Err(NoMatch::new(format!(
            "input 0 `{x}` is a constant too: a MatMul of two constants is constant folding's job"
        )));
    }
    let dims = rank2(&weight, tensor)?;
    let (in_features, out_features) = match layout {
        WeightLayout::InOut => (dims[0], dims[1]),
        WeightLayout::OutIn => (dims[1], dims[0]),
    };
    check_activation(graph, x, in_features, false)?;
    let form = if transpose_node.is_some() { LinearForm::MatMulTransposed } else { LinearForm::MatMul };
    let core = Core { form, input: x.to_string(), weight, transpose_node, layout, in_features, out_features };
    finish(graph, id, core, None)
}

/// `value` = `Transpose(C, perm=[1,0])` of a rank-2 constant `C`: `(transpose, C, tensor)`.
/// `Ok(None)` when `value` is not a Transpose of a constant; an error when it is one of the
/// wrong kind.
fn transposed_constant<'g>(graph: &'g Graph, value: &str) -> Result<Option<(NodeId, String, &'g Tensor)>, NoMatch> {
    let Some((tr, 0)) = graph.producer(value) else {
        return Ok(None);
    };
    let t_node = graph.node(tr);
    if !t_node.op().is("Transpose") {
        return Ok(None);
    }
    let Some(src) = t_node.input(0) else {
        return Ok(None);
    };
    let tensor = match operand(graph, src) {
        Operand::Const(t) => t,
        Operand::GraphInputInit => return Err(graph_input_weight(src)),
        Operand::Activation => return Ok(None),
    };
    let dims = rank2(src, tensor)?;
    let perm = t_node.attr("perm").and_then(|a| a.as_ints()).map(<[i64]>::to_vec);
    if perm.as_ref().is_some_and(|p| p.as_slice() != [1, 0]) {
        return Err(NoMatch::new(format!(
            "input 1 is a Transpose of constant `{src}` {dims:?} with perm {:?}, expected [1, 0]",
            perm.unwrap_or_default()
        )));
    }
    Ok(Some((tr, src.to_string(), tensor)))
}

fn match_gemm(graph: &Graph, id: NodeId) -> Result<LinearLayer, NoMatch> {
    let node = graph.node(id);
    let trans_a = node.attr_int("transA", 0);
    if trans_a != 0 {
        return Err(NoMatch::new(format!("Gemm with transA={trans_a} is not a linear layer")));
    }
    let trans_b = node.attr_int("transB", 0);
    if trans_b != 0 && trans_b != 1 {
        return Err(NoMatch::new(format!("Gemm has transB={trans_b}, expected 0 or 1")));
    }
    let alpha = node.attr("alpha").and_then(|a| a.as_float()).unwrap_or(1.0);
    if alpha != 1.0 {
        return Err(NoMatch::new(format!("Gemm with alpha={alpha} is not a plain linear layer (alpha must be 1)")));
    }
    let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
        return Err(NoMatch::new(format!("Gemm has inputs {:?}, expected A and B", node.inputs())));
    };
    if node.inputs().len() > 3 || node.output(0).is_none() {
        return Err(NoMatch::new("Gemm has unexpected inputs or no output"));
    }
    let c = node.input(2);
    let beta = node.attr("beta").and_then(|a| a.as_float()).unwrap_or(1.0);
    if c.is_some() && beta != 1.0 {
        return Err(NoMatch::new(format!("Gemm with beta={beta} is not a plain linear layer (beta must be 1)")));
    }
    let tensor = match operand(graph, w) {
        Operand::Const(t) => t,
        Operand::GraphInputInit => return Err(graph_input_weight(w)),
        Operand::Activation => {
            return Err(NoMatch::new(format!("input 1 `{w}` is an activation, not a constant weight")));
        }
    };
    if !is_activation(graph, x) {
        return Err(NoMatch::new(format!(
            "input 0 `{x}` is a constant too: a Gemm of two constants is constant folding's job"
        )));
    }
    let dims = rank2(w, tensor)?;
    let (layout, in_features, out_features) =
        if trans_b == 1 { (WeightLayout::OutIn, dims[1], dims[0]) } else { (WeightLayout::InOut, dims[0], dims[1]) };
    check_activation(graph, x, in_features, true)?;
    let bias = match c {
        None => None,
        Some(c) => {
            let t = match operand(graph, c) {
                Operand::Const(t) => t,
                Operand::GraphInputInit => {
                    return Err(NoMatch::new(format!("bias C `{c}` is a graph input, not a constant")));
                }
                Operand::Activation => {
                    return Err(NoMatch::new(format!("input C `{c}` is an activation, not a constant bias")));
                }
            };
            let ok = t.dims() == [out_features] || t.dims() == [1, out_features];
            if !ok {
                return Err(NoMatch::new(format!(
                    "bias C `{c}` has shape {:?}, expected [{out_features}] or [1, {out_features}]",
                    t.dims()
                )));
            }
            Some(c.to_string())
        }
    };
    let core = Core {
        form: LinearForm::Gemm,
        input: x.to_string(),
        weight: w.to_string(),
        transpose_node: None,
        layout,
        in_features,
        out_features,
    };
    finish(graph, id, core, bias)
}

fn graph_input_weight(w: &str) -> NoMatch {
    NoMatch::new(format!(
        "weight `{w}` is an initializer that is also a graph input (it can be overridden), not a constant"
    ))
}

fn rank2(name: &str, t: &Tensor) -> Result<[u64; 2], NoMatch> {
    match *t.dims() {
        [a, b] => Ok([a, b]),
        ref d => Err(NoMatch::new(format!("weight `{name}` is {}-D {d:?}, expected 2-D", d.len()))),
    }
}

/// Checks what is known of the activation's shape: rank ≥ 1 (exactly 2 for Gemm) and a last
/// dimension equal to `in_features`.
fn check_activation(graph: &Graph, x: &str, in_features: u64, gemm: bool) -> Result<(), NoMatch> {
    let Some(dims) = graph.value_type(x).and_then(|t| t.dims()) else {
        return Ok(());
    };
    if dims.is_empty() || (gemm && dims.len() != 2) {
        return Err(NoMatch::new(format!("activation `{x}` has rank {}", dims.len())));
    }
    // Gemm with transA=0 reads the last dimension of A, as does MatMul.
    if let Some(Dim::Known(k)) = dims.last() {
        if *k >= 0 && *k as u64 != in_features {
            return Err(NoMatch::new(format!(
                "activation `{x}` has last dimension {k}, but the weight has {in_features} input features"
            )));
        }
    }
    Ok(())
}

/// Takes a following bias `Add` (unless Gemm already has one) and recovers the module path.
fn finish(graph: &Graph, id: NodeId, core: Core, gemm_bias: Option<String>) -> Result<LinearLayer, NoMatch> {
    let out = graph.node(id).output(0).unwrap_or_default().to_string();
    let (bias, bias_node, output) = match gemm_bias {
        Some(b) => (Some(b), None, out),
        None => match bias_add(graph, &out, core.out_features) {
            Some((add, b, add_out)) => (Some(b), Some(add), add_out),
            None => (None, None, out),
        },
    };
    let mut nodes = vec![id];
    nodes.extend(core.transpose_node);
    nodes.extend(bias_node);
    let mut params = vec![core.weight.as_str()];
    params.extend(bias.as_deref());
    let (module_path, path_source) = recover_module_path(graph, &nodes, &params);
    Ok(LinearLayer {
        node: id,
        form: core.form,
        input: core.input,
        weight: core.weight,
        transpose_node: core.transpose_node,
        layout: core.layout,
        bias,
        bias_node,
        output,
        in_features: core.in_features,
        out_features: core.out_features,
        module_path,
        path_source,
    })
}

/// `Add(mm, b)` or `Add(b, mm)` as the only use of `mm` (which is not a graph output), with `b`
/// a 1-D constant of length `out`: `(add, b, add output)`.
fn bias_add(graph: &Graph, mm: &str, out: u64) -> Option<(NodeId, String, String)> {
    if graph.is_graph_output(mm) {
        return None;
    }
    let [u] = graph.uses(mm) else { return None };
    let slot = u.slot?;
    let add = graph.node(u.node);
    if !add.op().is("Add") || add.inputs().len() != 2 || slot > 1 {
        return None;
    }
    let b = add.input(1 - slot)?;
    let t = constant_tensor(graph, b)?;
    if t.dims() != [out] {
        return None;
    }
    Some((u.node, b.to_string(), add.output(0)?.to_string()))
}

#[cfg(test)]
mod tests {
    use adaptc_ir::{Attribute, DataType, Node, OpKey, Tensor, ValueInfo};

    use super::*;

    fn zeros(name: &str, dims: &[u64]) -> Tensor {
        let n: u64 = dims.iter().product();
        Tensor::from_f32(name, dims.to_vec(), &vec![0.0; n as usize]).unwrap()
    }

    fn graph_with_x(in_features: i64) -> Graph {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::tensor(
            "x",
            DataType::Float,
            vec![Dim::Symbol("batch".into()), Dim::Symbol("seq".into()), Dim::Known(in_features)],
        ));
        g
    }

    fn op(g: &mut Graph, op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeId {
        let node = Node::new(
            OpKey::onnx(op_type),
            inputs.iter().map(|s| s.to_string()).collect(),
            outputs.iter().map(|s| s.to_string()).collect(),
        )
        .named(name);
        g.add_node(node).unwrap()
    }

    fn gemm(g: &mut Graph, attrs: Vec<Attribute>, inputs: &[&str]) -> NodeId {
        let mut node =
            Node::new(OpKey::onnx("Gemm"), inputs.iter().map(|s| s.to_string()).collect(), vec!["y".to_string()])
                .named("/fc/Gemm");
        for a in attrs {
            node = node.with_attr(a);
        }
        g.add_node(node).unwrap()
    }

    fn gemm_graph() -> Graph {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Symbol("n".into()), Dim::Known(4)]));
        g.add_initializer(zeros("fc.weight", &[3, 4])).unwrap();
        g.add_initializer(zeros("fc.bias", &[3])).unwrap();
        g
    }

    fn reason(r: Result<LinearLayer, NoMatch>) -> String {
        r.expect_err("expected no match").reason
    }

    #[test]
    fn matmul_with_bias_either_order() {
        for swap in [false, true] {
            let mut g = graph_with_x(4);
            g.add_initializer(zeros("w", &[4, 3])).unwrap();
            g.add_initializer(zeros("b", &[3])).unwrap();
            let mm = op(&mut g, "MatMul", "/enc/layer.2/q/MatMul", &["x", "w"], &["mm"]);
            let ins: &[&str] = if swap { &["b", "mm"] } else { &["mm", "b"] };
            let add = op(&mut g, "Add", "/enc/layer.2/q/Add", ins, &["y"]);
            let l = match_linear(&g, mm).unwrap();
            assert_eq!(l.form, LinearForm::MatMul);
            assert_eq!(l.layout, WeightLayout::InOut);
            assert_eq!((l.in_features, l.out_features), (4, 3));
            assert_eq!(l.bias.as_deref(), Some("b"));
            assert_eq!(l.bias_node, Some(add));
            assert_eq!(l.output, "y");
            assert_eq!(l.module_path.as_deref(), Some("enc.layer.2.q"));
            assert_eq!(l.path_source, PathSource::NodeName);
            assert_eq!(find_linear_layers(&g), vec![l]);
        }
    }

    #[test]
    fn output_used_twice_keeps_add_out_of_the_layer() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        g.add_initializer(zeros("b", &[3])).unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "w"], &["mm"]);
        op(&mut g, "Add", "add", &["mm", "b"], &["y"]);
        op(&mut g, "Relu", "relu", &["mm"], &["r"]);
        let l = match_linear(&g, mm).unwrap();
        assert_eq!(l.bias, None);
        assert_eq!(l.bias_node, None);
        assert_eq!(l.output, "mm");
    }

    #[test]
    fn graph_output_keeps_add_out_of_the_layer() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        g.add_initializer(zeros("b", &[3])).unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "w"], &["mm"]);
        op(&mut g, "Add", "add", &["mm", "b"], &["y"]);
        g.outputs.push(ValueInfo::new("mm", None));
        assert_eq!(match_linear(&g, mm).unwrap().bias, None);
    }

    #[test]
    fn residual_and_wrong_shape_adds_are_not_biases() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        g.add_initializer(zeros("b4", &[4])).unwrap();
        g.add_initializer(zeros("b2d", &[1, 3])).unwrap();
        g.inputs.push(ValueInfo::new("r", None));
        let mm1 = op(&mut g, "MatMul", "mm1", &["x", "w"], &["mm1"]);
        op(&mut g, "Add", "residual", &["r", "mm1"], &["y1"]);
        let mm2 = op(&mut g, "MatMul", "mm2", &["x", "w"], &["mm2"]);
        op(&mut g, "Add", "wrong_len", &["mm2", "b4"], &["y2"]);
        let mm3 = op(&mut g, "MatMul", "mm3", &["x", "w"], &["mm3"]);
        op(&mut g, "Add", "two_d", &["mm3", "b2d"], &["y3"]);
        for mm in [mm1, mm2, mm3] {
            let l = match_linear(&g, mm).unwrap();
            assert_eq!((l.bias, l.bias_node), (None, None));
        }
    }

    #[test]
    fn gemm_forms() {
        let mut g = gemm_graph();
        let id = gemm(&mut g, vec![Attribute::int("transB", 1)], &["x", "fc.weight", "fc.bias"]);
        let l = match_linear(&g, id).unwrap();
        assert_eq!(l.form, LinearForm::Gemm);
        assert_eq!(l.layout, WeightLayout::OutIn);
        assert_eq!((l.in_features, l.out_features), (4, 3));
        assert_eq!(l.bias.as_deref(), Some("fc.bias"));
        assert_eq!(l.bias_node, None);
        assert_eq!(l.output, "y");
        assert_eq!(l.module_path.as_deref(), Some("fc"));

        // No C; a beta other than 1 then has no effect.
        let mut g = gemm_graph();
        let id = gemm(&mut g, vec![Attribute::int("transB", 1), Attribute::float("beta", 0.5)], &["x", "fc.weight"]);
        let l = match_linear(&g, id).unwrap();
        assert_eq!(l.bias, None);
    }

    #[test]
    fn gemm_trans_a_is_refused() {
        let mut g = gemm_graph();
        let id = gemm(&mut g, vec![Attribute::int("transA", 1), Attribute::int("transB", 1)], &["x", "fc.weight"]);
        assert_eq!(reason(match_linear(&g, id)), "Gemm with transA=1 is not a linear layer");
    }

    #[test]
    fn gemm_alpha_and_beta_must_be_one() {
        let mut g = gemm_graph();
        let id = gemm(&mut g, vec![Attribute::int("transB", 1), Attribute::float("alpha", 0.5)], &["x", "fc.weight"]);
        let r = reason(match_linear(&g, id));
        assert!(r.contains("alpha=0.5"), "{r}");

        let mut g = gemm_graph();
        let id = gemm(
            &mut g,
            vec![Attribute::int("transB", 1), Attribute::float("beta", 2.0)],
            &["x", "fc.weight", "fc.bias"],
        );
        let r = reason(match_linear(&g, id));
        assert!(r.contains("beta=2"), "{r}");
    }

    #[test]
    fn gemm_bias_must_fit() {
        let mut g = gemm_graph();
        g.add_initializer(zeros("c", &[2, 3])).unwrap();
        let id = gemm(&mut g, vec![Attribute::int("transB", 1)], &["x", "fc.weight", "c"]);
        let r = reason(match_linear(&g, id));
        assert!(r.contains("[2, 3]"), "{r}");

        let mut g = gemm_graph();
        g.add_initializer(zeros("c", &[1, 3])).unwrap();
        let id = gemm(&mut g, vec![Attribute::int("transB", 1)], &["x", "fc.weight", "c"]);
        assert_eq!(match_linear(&g, id).unwrap().bias.as_deref(), Some("c"));
    }

    #[test]
    fn weight_that_is_a_graph_input_is_not_constant() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        g.inputs.push(ValueInfo::tensor("w", DataType::Float, vec![Dim::Known(4), Dim::Known(3)]));
        let mm = op(&mut g, "MatMul", "mm", &["x", "w"], &["y"]);
        let r = reason(match_linear(&g, mm));
        assert!(r.contains("graph input"), "{r}");
        assert!(find_linear_layers(&g).is_empty());
    }

    #[test]
    fn three_d_weight() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[2, 4, 3])).unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "w"], &["y"]);
        let r = reason(match_linear(&g, mm));
        assert!(r.contains("weight `w` is 3-D"), "{r}");
    }

    #[test]
    fn attention_and_reversed_matmuls() {
        let mut g = graph_with_x(4);
        g.inputs.push(ValueInfo::new("k", None));
        g.add_initializer(zeros("w", &[3, 4])).unwrap();
        op(&mut g, "Transpose", "t", &["k"], &["kT"]);
        let qk = op(&mut g, "MatMul", "qk", &["x", "kT"], &["s"]);
        let wx = op(&mut g, "MatMul", "wx", &["w", "x"], &["z"]);
        let r = reason(match_linear(&g, qk));
        assert!(r.contains("is an activation") && r.contains("attention"), "{r}");
        let r = reason(match_linear(&g, wx));
        assert!(r.contains("is an activation") && r.contains("W·x"), "{r}");
        assert!(find_linear_layers(&g).is_empty());
    }

    #[test]
    fn matmul_transposed() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("dec.layers.1.up.weight", &[3, 4])).unwrap();
        let t = g
            .add_node(
                Node::new(OpKey::onnx("Transpose"), vec!["dec.layers.1.up.weight".into()], vec!["t".into()])
                    .named("node_t")
                    .with_attr(Attribute::ints("perm", vec![1, 0])),
            )
            .unwrap();
        let mm = op(&mut g, "MatMul", "node_matmul", &["x", "t"], &["y"]);
        let l = match_linear(&g, mm).unwrap();
        assert_eq!(l.form, LinearForm::MatMulTransposed);
        assert_eq!(l.layout, WeightLayout::OutIn);
        assert_eq!(l.transpose_node, Some(t));
        assert_eq!(l.weight, "dec.layers.1.up.weight");
        assert_eq!((l.in_features, l.out_features), (4, 3));
        assert_eq!(l.module_path.as_deref(), Some("dec.layers.1.up"));
        assert_eq!(l.path_source, PathSource::Initializer);
        assert_eq!(l.nodes(), vec![mm, t]);
    }

    #[test]
    fn transpose_with_other_perm_is_refused() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 4])).unwrap();
        g.add_node(
            Node::new(OpKey::onnx("Transpose"), vec!["w".into()], vec!["t".into()])
                .with_attr(Attribute::ints("perm", vec![0, 1])),
        )
        .unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "t"], &["y"]);
        let r = reason(match_linear(&g, mm));
        assert!(r.contains("perm [0, 1]"), "{r}");
    }

    #[test]
    fn constant_node_weight() {
        let mut g = graph_with_x(4);
        g.add_node(
            Node::new(OpKey::onnx("Constant"), vec![], vec!["cw".into()])
                .with_attr(Attribute::tensor("value", zeros("", &[4, 2]))),
        )
        .unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "cw"], &["y"]);
        let l = match_linear(&g, mm).unwrap();
        assert_eq!(l.weight, "cw");
        assert_eq!(l.out_features, 2);
        assert_eq!(l.weight_tensor(&g).unwrap().dims(), &[4, 2]);
    }

    #[test]
    fn activation_shape_must_agree() {
        let mut g = graph_with_x(5);
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        let mm = op(&mut g, "MatMul", "mm", &["x", "w"], &["y"]);
        let r = reason(match_linear(&g, mm));
        assert!(r.contains("last dimension 5"), "{r}");
    }

    #[test]
    fn rank_one_activation_and_unknown_shapes_match() {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(4)]));
        g.inputs.push(ValueInfo::new("u", None));
        g.add_initializer(zeros("w", &[4, 3])).unwrap();
        let a = op(&mut g, "MatMul", "a", &["x", "w"], &["ya"]);
        let b = op(&mut g, "MatMul", "b", &["u", "w"], &["yb"]);
        assert_eq!(find_linear_layers(&g).iter().map(|l| l.node).collect::<Vec<_>>(), vec![a, b]);
    }

    #[test]
    fn other_ops_and_constant_pairs() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("w", &[4, 4])).unwrap();
        let relu = op(&mut g, "Relu", "relu", &["x"], &["r"]);
        let cc = op(&mut g, "MatMul", "cc", &["w", "w"], &["c"]);
        assert!(reason(match_linear(&g, relu)).contains("not a MatMul or Gemm"));
        assert!(reason(match_linear(&g, cc)).contains("constant"));
    }

    #[test]
    fn name_scopes_win_over_names() {
        let mut g = graph_with_x(4);
        g.add_initializer(zeros("head.weight", &[4, 3])).unwrap();
        let mm = op(&mut g, "MatMul", "/other/MatMul", &["x", "head.weight"], &["y"]);
        g.node_mut(mm).metadata.set(super::super::module_path::NAME_SCOPES_KEY, "['', 'lm_head', 'linear_28']");
        let l = match_linear(&g, mm).unwrap();
        assert_eq!((l.module_path.as_deref(), l.path_source), (Some("lm_head"), PathSource::NameScopes));

        // Unparseable metadata falls through to the node name.
        g.node_mut(mm).metadata.set(super::super::module_path::NAME_SCOPES_KEY, "garbage");
        let l = match_linear(&g, mm).unwrap();
        assert_eq!((l.module_path.as_deref(), l.path_source), (Some("other"), PathSource::NodeName));

        g.node_mut(mm).name = "node_MatMul_3".into();
        let l = match_linear(&g, mm).unwrap();
        assert_eq!((l.module_path.as_deref(), l.path_source), (Some("head"), PathSource::Initializer));
    }
}
