//! `build-training-graph`: every VJP rule against central finite differences in f64.
//!
//! Each case is a small graph whose operands are f64 initializers; the chosen ones are made
//! trainable, the output gets an `mse` loss against random targets, and the training graph's
//! `grad.<w>` outputs (run by the CPU runtime) are compared with `(L(w+h) − L(w−h)) / 2h`,
//! where `L` is the same training graph's `loss` output with `w` fed perturbed.

mod common;

use std::collections::{BTreeSet, HashMap};

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, Tensor as IrTensor, ValueInfo};
use adaptc_passes::autodiff::{build_training_graph, LossKind, GRAD_PREFIX};
use adaptc_runtime::{Session, SessionOptions, Tensor};
use common::{node, node_with, strings};

const H: f64 = 1e-5;

/// A deterministic generator of test values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn values(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

fn f64_tensor(name: &str, dims: &[u64], values: &[f64]) -> IrTensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    IrTensor::from_bytes(name, DataType::Double, dims.to_vec(), bytes).unwrap()
}

/// A test case under construction.
struct Case {
    graph: Graph,
    rng: Rng,
    trainable: BTreeSet<String>,
    opset: i64,
}

impl Case {
    fn new(seed: u64) -> Case {
        Case { graph: Graph::new("case"), rng: Rng(seed), trainable: BTreeSet::new(), opset: 18 }
    }

    /// A trainable f64 initializer with values in [lo, hi).
    fn param(&mut self, name: &str, dims: &[u64], lo: f64, hi: f64) -> &mut Case {
        let n = dims.iter().product::<u64>() as usize;
        let v = self.rng.values(n, lo, hi);
        self.graph.add_initializer(f64_tensor(name, dims, &v)).unwrap();
        self.trainable.insert(name.into());
        self
    }

    /// A frozen f64 initializer.
    fn frozen(&mut self, name: &str, dims: &[u64], lo: f64, hi: f64) -> &mut Case {
        let n = dims.iter().product::<u64>() as usize;
        let v = self.rng.values(n, lo, hi);
        self.graph.add_initializer(f64_tensor(name, dims, &v)).unwrap();
        self
    }

    fn init(&mut self, t: IrTensor) -> &mut Case {
        self.graph.add_initializer(t).unwrap();
        self
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> &mut Case {
        self.init(IrTensor::from_i64(name, vec![values.len() as u64], values).unwrap())
    }

    fn node(&mut self, n: Node) -> &mut Case {
        self.graph.add_node(n).unwrap();
        self
    }

    /// Declares the f64 output `y` with `dims`, builds the training graph and checks it.
    fn check(&mut self, y: &str, dims: &[i64]) {
        let dims: Vec<Dim> = dims.iter().map(|&d| Dim::Known(d)).collect();
        self.graph.outputs.push(ValueInfo::tensor(y, DataType::Double, dims.clone()));
        let mut model = Model::new(self.graph.clone(), self.opset);
        build_training_graph(&mut model, LossKind::Mse, None, &self.trainable)
            .unwrap_or_else(|e| panic!("build-training-graph: {e}"));
        adaptc_ir::verify(&model.graph).unwrap_or_else(|e| panic!("the training graph does not verify: {e}"));
        let n: usize = dims.iter().map(|d| if let Dim::Known(k) = d { *k as usize } else { 1 }).product();
        let shape: Vec<usize> = dims.iter().map(|d| if let Dim::Known(k) = d { *k as usize } else { 1 }).collect();
        let targets = Tensor::from_vec(shape, self.rng.values(n, -1.0, 1.0)).unwrap();
        check_gradients(&model, &self.trainable, HashMap::from([("targets".to_string(), targets)]));
    }
}

/// Compares every `grad.<w>` with central differences of `loss`.
fn check_gradients(model: &Model, trainable: &BTreeSet<String>, data: HashMap<String, Tensor>) {
    let session = Session::new(model, SessionOptions::default()).unwrap_or_else(|e| panic!("lowering: {e}"));
    let params: HashMap<String, Vec<f64>> = trainable
        .iter()
        .map(|t| (t.clone(), model.graph.initializer(t).unwrap().bytes().unwrap().chunks(8).map(f64_of).collect()))
        .collect();
    let shapes: HashMap<String, Vec<usize>> = trainable
        .iter()
        .map(|t| (t.clone(), model.graph.initializer(t).unwrap().dims().iter().map(|&d| d as usize).collect()))
        .collect();
    let run = |params: &HashMap<String, Vec<f64>>| -> HashMap<String, Tensor> {
        let mut feeds = data.clone();
        for (k, v) in params {
            feeds.insert(k.clone(), Tensor::from_vec(shapes[k].clone(), v.clone()).unwrap());
        }
        session.run(feeds).unwrap_or_else(|e| panic!("run: {e}")).into_iter().collect()
    };
    let base = run(&params);
    let loss_of = |out: &HashMap<String, Tensor>| out["loss"].as_slice::<f64>().expect("f64 loss")[0];
    assert!(loss_of(&base).is_finite());
    for t in trainable {
        let analytic = base[&format!("{GRAD_PREFIX}{t}")].as_slice::<f64>().expect("f64 gradient").to_vec();
        assert_eq!(analytic.len(), params[t].len(), "gradient of `{t}` has the wrong size");
        for (i, &want) in analytic.iter().enumerate() {
            let mut p = params.clone();
            p.get_mut(t).unwrap()[i] += H;
            let up = loss_of(&run(&p));
            p.get_mut(t).unwrap()[i] -= 2.0 * H;
            let down = loss_of(&run(&p));
            let numeric = (up - down) / (2.0 * H);
            let err = (numeric - want).abs();
            assert!(
                err <= 1e-7 + 1e-5 * numeric.abs(),
                "d loss / d {t}[{i}]: analytic {want} vs finite differences {numeric} (error {err:e})"
            );
        }
    }
}

fn f64_of(b: &[u8]) -> f64 {
    f64::from_le_bytes(b.try_into().unwrap())
}

fn unary(op: &str, lo: f64, hi: f64, attrs: Vec<Attribute>) {
    let mut c = Case::new(op.len() as u64);
    c.param("x", &[2, 3], lo, hi).node(node_with(op, &["x"], &["y"], attrs)).check("y", &[2, 3]);
}

#[test]
fn unary_ops() {
    unary("Neg", -1.0, 1.0, vec![]);
    unary("Sqrt", 0.5, 2.0, vec![]);
    unary("Reciprocal", 0.5, 2.0, vec![]);
    unary("Exp", -1.0, 1.0, vec![]);
    unary("Log", 0.5, 2.0, vec![]);
    unary("Tanh", -2.0, 2.0, vec![]);
    unary("Sigmoid", -3.0, 3.0, vec![]);
    unary("Erf", -2.0, 2.0, vec![]);
    unary("Relu", 0.1, 1.0, vec![]);
    unary("Relu", -1.0, -0.1, vec![]);
    unary("Gelu", -3.0, 3.0, vec![]);
    unary("Gelu", -3.0, 3.0, vec![Attribute::string("approximate", "tanh")]);
    unary("Sin", -3.0, 3.0, vec![]);
    unary("Cos", -3.0, 3.0, vec![]);
    unary("Identity", -1.0, 1.0, vec![]);
    unary("Cast", -1.0, 1.0, vec![Attribute::int("to", DataType::Double.code() as i64)]);
}

#[test]
fn binary_ops_with_broadcasting() {
    for op in ["Add", "Sub", "Mul", "Div"] {
        let mut c = Case::new(7);
        c.param("a", &[2, 3, 4], -1.0, 1.0).param("b", &[3, 1], 0.5, 2.0);
        c.node(node(op, &["a", "b"], &["y"])).check("y", &[2, 3, 4]);
        // The broadcast operand first, and a frozen operand.
        let mut c = Case::new(8);
        c.param("a", &[4], 0.5, 2.0).frozen("b", &[2, 3, 4], 0.5, 2.0);
        c.node(node(op, &["a", "b"], &["y"])).check("y", &[2, 3, 4]);
    }
}

#[test]
fn pow_with_constant_exponent() {
    for e in [2.0, 3.0, 0.5] {
        let mut c = Case::new(3);
        c.param("x", &[2, 3], 0.5, 2.0).init(f64_tensor("e", &[], &[e]));
        c.node(node("Pow", &["x", "e"], &["y"])).check("y", &[2, 3]);
    }
}

#[test]
fn where_routes_gradients() {
    let mut c = Case::new(4);
    let cond = [true, false, true, true, false, false];
    c.init(common::bools("cond", &[2, 3], &cond)).param("a", &[2, 3], -1.0, 1.0).param("b", &[3], -1.0, 1.0);
    c.node(node("Where", &["cond", "a", "b"], &["y"])).check("y", &[2, 3]);
}

#[test]
fn matmul_shapes() {
    // Activations times a 2-D weight (the folded weight gradient).
    let mut c = Case::new(5);
    c.param("x", &[2, 3, 4], -1.0, 1.0).param("w", &[4, 5], -1.0, 1.0);
    c.node(node("MatMul", &["x", "w"], &["y"])).check("y", &[2, 3, 5]);
    // Batched on both sides (attention), with broadcasting of a batch dim.
    let mut c = Case::new(6);
    c.param("q", &[2, 1, 3, 4], -1.0, 1.0).param("k", &[3, 4, 2], -1.0, 1.0);
    c.node(node("MatMul", &["q", "k"], &["y"])).check("y", &[2, 3, 3, 2]);
    // 2-D by 2-D.
    let mut c = Case::new(9);
    c.param("a", &[3, 4], -1.0, 1.0).param("b", &[4, 2], -1.0, 1.0);
    c.node(node("MatMul", &["a", "b"], &["y"])).check("y", &[3, 2]);
}

#[test]
fn gemm_all_transposes() {
    for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let mut c = Case::new(10 + ta * 2 + tb);
        let a_dims: &[u64] = if ta == 1 { &[4, 3] } else { &[3, 4] };
        let b_dims: &[u64] = if tb == 1 { &[5, 4] } else { &[4, 5] };
        c.param("a", a_dims, -1.0, 1.0).param("b", b_dims, -1.0, 1.0).param("c", &[5], -1.0, 1.0);
        let attrs = vec![
            Attribute::int("transA", ta as i64),
            Attribute::int("transB", tb as i64),
            Attribute::float("alpha", 0.5),
            Attribute::float("beta", 2.0),
        ];
        c.node(node_with("Gemm", &["a", "b", "c"], &["y"], attrs)).check("y", &[3, 5]);
    }
}

#[test]
fn reshapes_and_transpose() {
    let mut c = Case::new(11);
    c.param("x", &[2, 3, 4], -1.0, 1.0).ints("shape", &[6, 4]);
    c.node(node("Reshape", &["x", "shape"], &["y"])).check("y", &[6, 4]);
    let mut c = Case::new(12);
    c.param("x", &[2, 3, 4], -1.0, 1.0);
    c.node(node_with("Flatten", &["x"], &["y"], vec![Attribute::int("axis", 2)])).check("y", &[6, 4]);
    let mut c = Case::new(13);
    c.param("x", &[2, 1, 4], -1.0, 1.0).ints("axes", &[1]);
    c.node(node("Squeeze", &["x", "axes"], &["y"])).check("y", &[2, 4]);
    let mut c = Case::new(14);
    c.param("x", &[2, 4], -1.0, 1.0).ints("axes", &[0, 2]);
    c.node(node("Unsqueeze", &["x", "axes"], &["y"])).check("y", &[1, 2, 1, 4]);
    let mut c = Case::new(15);
    c.param("x", &[2, 3, 4], -1.0, 1.0);
    c.node(node_with("Transpose", &["x"], &["y"], vec![Attribute::ints("perm", vec![1, 2, 0])])).check("y", &[3, 4, 2]);
    let mut c = Case::new(16);
    c.param("x", &[2, 3], -1.0, 1.0);
    c.node(node("Transpose", &["x"], &["y"])).check("y", &[3, 2]);
    let mut c = Case::new(17);
    c.param("x", &[3, 1], -1.0, 1.0).ints("shape", &[2, 3, 4]);
    c.node(node("Expand", &["x", "shape"], &["y"])).check("y", &[2, 3, 4]);
}

#[test]
fn index_maps() {
    // Slice with a negative step.
    let mut c = Case::new(18);
    c.param("x", &[4, 5], -1.0, 1.0).ints("starts", &[3, 1]).ints("ends", &[0, 5]).ints("axes", &[0, 1]);
    c.ints("steps", &[-1, 2]);
    c.node(node("Slice", &["x", "starts", "ends", "axes", "steps"], &["y"])).check("y", &[3, 2]);
    // Gather with repeated indices accumulates.
    let mut c = Case::new(19);
    c.param("x", &[3, 4], -1.0, 1.0).init(IrTensor::from_i64("idx", vec![2, 2], &[0, 2, 2, -1]).unwrap());
    c.node(node_with("Gather", &["x", "idx"], &["y"], vec![Attribute::int("axis", 1)])).check("y", &[3, 2, 2]);
    // Concat of three operands, one frozen.
    let mut c = Case::new(20);
    c.param("a", &[2, 1], -1.0, 1.0).frozen("b", &[2, 2], -1.0, 1.0).param("c", &[2, 3], -1.0, 1.0);
    c.node(node_with("Concat", &["a", "b", "c"], &["y"], vec![Attribute::int("axis", 1)])).check("y", &[2, 6]);
    // Pad (constant), Tile.
    let mut c = Case::new(21);
    c.param("x", &[2, 3], -1.0, 1.0).ints("pads", &[1, 0, 0, 2]);
    c.node(node("Pad", &["x", "pads"], &["y"])).check("y", &[3, 5]);
    let mut c = Case::new(22);
    c.param("x", &[2, 3], -1.0, 1.0).ints("reps", &[2, 1]);
    c.node(node("Tile", &["x", "reps"], &["y"])).check("y", &[4, 3]);
    // GatherElements.
    let mut c = Case::new(23);
    c.param("x", &[2, 3], -1.0, 1.0).init(IrTensor::from_i64("idx", vec![2, 2], &[0, 0, 2, 1]).unwrap());
    c.node(node_with("GatherElements", &["x", "idx"], &["y"], vec![Attribute::int("axis", 1)])).check("y", &[2, 2]);
}

#[test]
fn split_outputs_add_up() {
    let mut c = Case::new(24);
    c.param("x", &[2, 6], -1.0, 1.0).ints("split", &[2, 4]);
    c.node(node_with("Split", &["x", "split"], &["p", "q"], vec![Attribute::int("axis", 1)]));
    c.node(node("Transpose", &["q"], &["qt"])).ints("shape", &[2, 4]);
    c.node(node("Reshape", &["qt", "shape"], &["q2"]));
    c.node(node("Concat", &["p", "q2"], &["y"]).with_attr(Attribute::int("axis", 1))).check("y", &[2, 6]);
}

#[test]
fn softmax_axes() {
    for axis in [-1, 1, 0] {
        let mut c = Case::new(25);
        c.param("x", &[2, 3, 4], -2.0, 2.0);
        c.node(node_with("Softmax", &["x"], &["y"], vec![Attribute::int("axis", axis)])).check("y", &[2, 3, 4]);
    }
}

#[test]
fn layer_norm_all_inputs() {
    for axis in [-1, 1] {
        let mut c = Case::new(26);
        let norm: &[u64] = if axis == -1 { &[4] } else { &[3, 4] };
        c.param("x", &[2, 3, 4], -2.0, 2.0).param("scale", norm, 0.5, 1.5).param("bias", norm, -0.5, 0.5);
        let attrs = vec![Attribute::int("axis", axis), Attribute::float("epsilon", 1e-5)];
        c.node(node_with("LayerNormalization", &["x", "scale", "bias"], &["y"], attrs)).check("y", &[2, 3, 4]);
    }
    // Without a bias input, and a frozen scale.
    let mut c = Case::new(27);
    c.param("x", &[3, 4], -2.0, 2.0).frozen("scale", &[4], 0.5, 1.5);
    c.node(node("LayerNormalization", &["x", "scale"], &["y"])).check("y", &[3, 4]);
}

#[test]
fn reductions() {
    for (op, keep) in [("ReduceMean", 1), ("ReduceMean", 0), ("ReduceSum", 0), ("ReduceSum", 1)] {
        let mut c = Case::new(28);
        c.param("x", &[2, 3, 4], -1.0, 1.0).ints("axes", &[-1, 0]);
        let dims: &[i64] = if keep == 1 { &[1, 3, 1] } else { &[3] };
        c.node(node_with(op, &["x", "axes"], &["y"], vec![Attribute::int("keepdims", keep)])).check("y", dims);
    }
    // Axes as an attribute (opset 13 ReduceMean), and all axes.
    let mut c = Case::new(29);
    c.opset = 13;
    c.param("x", &[2, 3], -1.0, 1.0);
    c.node(node_with("ReduceMean", &["x"], &["y"], vec![Attribute::ints("axes", vec![1])])).check("y", &[2, 1]);
    let mut c = Case::new(30);
    c.param("x", &[2, 3], -1.0, 1.0);
    c.node(node_with("ReduceSum", &["x"], &["y"], vec![Attribute::int("keepdims", 0)])).check("y", &[]);
}

/// A residual MLP block: values read twice (x by the MatMul and the residual Add), a frozen
/// LayerNorm, GELU and a LoRA-like low-rank path.
#[test]
fn residual_block_with_lora_path() {
    let mut c = Case::new(31);
    c.frozen("x", &[2, 3, 4], -1.0, 1.0).frozen("w", &[4, 4], -0.5, 0.5).frozen("ln_s", &[4], 0.5, 1.5);
    c.frozen("ln_b", &[4], -0.1, 0.1).param("lora_a", &[4, 2], -0.5, 0.5).param("lora_b", &[2, 4], -0.5, 0.5);
    c.init(f64_tensor("scale", &[], &[2.0]));
    c.node(node("LayerNormalization", &["x", "ln_s", "ln_b"], &["h"]));
    c.node(node("MatMul", &["h", "w"], &["base"]));
    c.node(node("MatMul", &["h", "lora_a"], &["down"]));
    c.node(node("MatMul", &["down", "lora_b"], &["up"]));
    c.node(node("Mul", &["up", "scale"], &["scaled"]));
    c.node(node("Add", &["base", "scaled"], &["lin"]));
    c.node(node("Gelu", &["lin"], &["act"]));
    c.node(node("Add", &["act", "h"], &["res"]));
    c.node(node("Softmax", &["res"], &["y"])).check("y", &[2, 3, 4]);
}

/// The two cross-entropy losses, through the whole pass (labels fed as graph inputs).
#[test]
fn cross_entropy_losses() {
    // Classification: logits = x·W + b.
    let mut rng = Rng(40);
    let mut g = Graph::new("cls");
    g.add_initializer(f64_tensor("x", &[4, 3], &rng.values(12, -1.0, 1.0))).unwrap();
    g.add_initializer(f64_tensor("w", &[3, 5], &rng.values(15, -1.0, 1.0))).unwrap();
    g.add_initializer(f64_tensor("b", &[5], &rng.values(5, -1.0, 1.0))).unwrap();
    g.add_node(node("MatMul", &["x", "w"], &["xw"])).unwrap();
    g.add_node(node("Add", &["xw", "b"], &["logits"])).unwrap();
    g.outputs.push(ValueInfo::tensor("logits", DataType::Double, vec![Dim::Known(4), Dim::Known(5)]));
    let mut model = Model::new(g, 18);
    let trainable: BTreeSet<String> = strings(&["w", "b"]).into_iter().collect();
    build_training_graph(&mut model, LossKind::CrossEntropy, None, &trainable).unwrap();
    let labels = Tensor::from_vec(vec![4], vec![0i64, 4, 2, 2]).unwrap();
    check_gradients(&model, &trainable, HashMap::from([("labels".to_string(), labels)]));

    // Causal LM: logits = Embed(input_ids)·W, padding masked.
    let mut rng = Rng(41);
    let mut g = Graph::new("lm");
    g.inputs.push(ValueInfo::tensor(
        "input_ids",
        DataType::Int64,
        vec![Dim::Symbol("b".into()), Dim::Symbol("s".into())],
    ));
    g.inputs.push(ValueInfo::tensor(
        "attention_mask",
        DataType::Int64,
        vec![Dim::Symbol("b".into()), Dim::Symbol("s".into())],
    ));
    let (emb, w) = (rng.values(18, -1.0, 1.0), rng.values(18, -1.0, 1.0));
    g.add_initializer(f64_tensor("emb", &[6, 3], &emb)).unwrap();
    g.add_initializer(f64_tensor("w", &[3, 6], &w)).unwrap();
    g.add_node(node("Gather", &["emb", "input_ids"], &["h"])).unwrap();
    g.add_node(node("MatMul", &["h", "w"], &["logits"])).unwrap();
    g.outputs.push(ValueInfo::tensor(
        "logits",
        DataType::Double,
        vec![Dim::Symbol("b".into()), Dim::Symbol("s".into()), Dim::Known(6)],
    ));
    let mut model = Model::new(g, 18);
    let trainable: BTreeSet<String> = strings(&["emb", "w"]).into_iter().collect();
    build_training_graph(&mut model, LossKind::CausalLm, None, &trainable).unwrap();
    let (id_values, mask_values) = ([1i64, 5, 2, 3, 4, 4, 0, 0], [1i64, 1, 1, 1, 1, 1, 0, 0]);
    let ids = Tensor::from_vec(vec![2, 4], id_values.to_vec()).unwrap();
    let mask = Tensor::from_vec(vec![2, 4], mask_values.to_vec()).unwrap();
    let feeds = HashMap::from([("input_ids".to_string(), ids), ("attention_mask".to_string(), mask)]);
    // The loss itself: mean over b and t < 3 with mask[b, t + 1] = 1 of
    // −log softmax(emb[ids[b, t]]·w)[ids[b, t + 1]] (Hugging Face's shift), here 4 terms.
    let mut terms = Vec::new();
    for b in 0..2 {
        for t in 0..3 {
            let (at, next) = (b * 4 + t, b * 4 + t + 1);
            if mask_values[next] == 0 {
                continue;
            }
            let h = &emb[id_values[at] as usize * 3..][..3];
            let logits: Vec<f64> = (0..6).map(|v| (0..3).map(|k| h[k] * w[k * 6 + v]).sum()).collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            terms.push(lse - logits[id_values[next] as usize]);
        }
    }
    assert_eq!(terms.len(), 4);
    let want = terms.iter().sum::<f64>() / terms.len() as f64;
    let session = Session::new(&model, SessionOptions::default()).unwrap();
    let out: HashMap<String, Tensor> = session.run(feeds.clone()).unwrap().into_iter().collect();
    let got = out["loss"].as_slice::<f64>().unwrap()[0];
    assert!((got - want).abs() <= 1e-12 * want.abs(), "causal-lm loss {got} vs {want}");
    check_gradients(&model, &trainable, feeds);
}

#[test]
fn training_graph_shape() {
    let mut c = Case::new(50);
    c.frozen("x", &[2, 4], -1.0, 1.0).frozen("w", &[4, 3], -1.0, 1.0).param("b", &[3], -1.0, 1.0);
    c.frozen("unused_w", &[4, 3], -1.0, 1.0);
    c.node(node("MatMul", &["x", "w"], &["xw"])).node(node("Add", &["xw", "b"], &["y"]));
    c.node(node("MatMul", &["x", "unused_w"], &["other"]));
    c.graph.outputs.push(ValueInfo::tensor("y", DataType::Double, vec![Dim::Known(2), Dim::Known(3)]));
    c.graph.outputs.push(ValueInfo::tensor("other", DataType::Double, vec![Dim::Known(2), Dim::Known(3)]));
    let mut model = Model::new(c.graph.clone(), 18);
    build_training_graph(&mut model, LossKind::Mse, None, &c.trainable).unwrap();
    let outs: Vec<&str> = model.graph.outputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(outs, ["loss", "grad.b"]);
    // The trainable tensor is an input (with its value kept as the default); the unused
    // output's work is gone; the frozen weight gets no gradient.
    assert!(model.graph.is_graph_input("b") && model.graph.initializer("b").is_some());
    assert!(model.graph.producer("other").is_none());
    assert!(model.graph.nodes().all(|(_, n)| !n.outputs().iter().any(|o| o == "grad.w")));
}

#[test]
fn refusals_name_the_cause() {
    let build = |graph: &Graph, trainable: &[&str]| {
        let mut model = Model::new(graph.clone(), 18);
        let t: BTreeSet<String> = strings(trainable).into_iter().collect();
        build_training_graph(&mut model, LossKind::Mse, None, &t).map(|_| ()).unwrap_err().to_string()
    };
    let mut c = Case::new(60);
    c.param("x", &[2, 3], -1.0, 1.0).frozen("z", &[2, 3], -1.0, 1.0);
    c.node(node("Mod", &["x", "z"], &["y"]).with_attr(Attribute::int("fmod", 1)));
    c.graph.outputs.push(ValueInfo::tensor("y", DataType::Double, vec![Dim::Known(2), Dim::Known(3)]));
    let e = build(&c.graph, &["x"]);
    assert!(e.contains("(Mod)") && e.contains("no gradient rule"), "{e}");
    let e = build(&c.graph, &[]);
    assert!(e.contains("nothing is trainable"), "{e}");
    let e = build(&c.graph, &["nope"]);
    assert!(e.contains("`nope` is not an initializer"), "{e}");
    let e = build(&c.graph, &["z", "x"]);
    assert!(e.contains("no gradient rule"), "{e}");
    // A trainable tensor the loss does not read.
    let mut c = Case::new(61);
    c.param("x", &[2, 3], -1.0, 1.0).param("unused", &[3], -1.0, 1.0);
    c.node(node("Neg", &["x"], &["y"]));
    c.graph.outputs.push(ValueInfo::tensor("y", DataType::Double, vec![Dim::Known(2), Dim::Known(3)]));
    let e = build(&c.graph, &["x", "unused"]);
    assert!(e.contains("`unused`") && e.contains("do not influence"), "{e}");
}
