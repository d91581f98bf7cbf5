//! Elementwise chains: the plan runs connected elementwise nodes as one `ElementwiseChain`
//! instruction, and its outputs are bit for bit those of the node-by-node plan — with
//! broadcast and bf16 inputs, `Shape` reads and values read after the chain, in the cases the
//! fused evaluator covers and in those it hands back to the step-by-step path.

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, ValueInfo};
use adaptc_runtime::{Session, SessionOptions, Tensor};
use half::bf16;

fn node(op: &str, inputs: &[&str], out: &str) -> Node {
    Node::new(OpKey::onnx(op), inputs.iter().map(|s| s.to_string()).collect(), vec![out.into()]).named(out)
}

fn cast(input: &str, to: DataType, out: &str) -> Node {
    node("Cast", &[input], out).with_attr(Attribute::int("to", to.code() as i64))
}

fn known(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Known(d as i64)).collect()
}

/// `x: f32[b, t, d]`, `r: f32[b, t, 1]`, `h: bf16[b, t, d]`, weight `w: f32[d]`:
/// an RMSNorm-like scaling, a bf16 residual, SiLU, a cast to bf16, with `Shape(a)` and a late
/// reader of the sigmoid; and a chain through every other op the chains hold.
fn model(b: usize, t: usize, d: usize, extra: impl FnOnce(&mut Graph)) -> Model {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, known(&[b, t, d])));
    g.inputs.push(ValueInfo::tensor(
        "r",
        DataType::Float,
        vec![Dim::Known(b as i64), Dim::Symbol("t".into()), Dim::Known(1)],
    ));
    g.inputs.push(ValueInfo::tensor("h", DataType::BFloat16, known(&[b, t, d])));
    let w: Vec<f32> = (0..d).map(|k| 0.5 + (k % 7) as f32 * 0.25).collect();
    g.add_initializer(adaptc_ir::Tensor::from_f32("w", vec![d as u64], &w).unwrap()).unwrap();
    for (name, v) in [("one", 1.0f32), ("half", 0.5), ("two", 2.0)] {
        g.add_initializer(adaptc_ir::Tensor::from_f32(name, vec![], &[v]).unwrap()).unwrap();
    }
    for n in [
        node("Mul", &["x", "r"], "a"),
        node("Mul", &["w", "a"], "b"),
        cast("h", DataType::Float, "hf"),
        node("Add", &["b", "hf"], "c"),
        node("Sigmoid", &["c"], "s"),
        node("Mul", &["c", "s"], "silu"),
        cast("silu", DataType::BFloat16, "e"),
        node("Shape", &["a"], "dims"),
        node("Neg", &["s"], "late"),
        // Every other op, one after another.
        node("Abs", &["x"], "u0"),
        node("Add", &["u0", "one"], "u1"),
        node("Sqrt", &["u1"], "u2"),
        node("Log", &["u2"], "u3"),
        node("Exp", &["u3"], "u4"),
        node("Reciprocal", &["u4"], "u5"),
        node("Tanh", &["u5"], "u6"),
        node("Erf", &["u6"], "u7"),
        node("Sub", &["u7", "half"], "u8"),
        node("Relu", &["u8"], "u9"),
        node("Div", &["u9", "u1"], "u10"),
        node("Pow", &["u10", "two"], "u11"),
        node("Neg", &["u11"], "u12"),
    ] {
        g.add_node(n).unwrap();
    }
    g.outputs.push(ValueInfo::tensor("e", DataType::BFloat16, known(&[b, t, d])));
    g.outputs.push(ValueInfo::tensor("dims", DataType::Int64, known(&[3])));
    g.outputs.push(ValueInfo::tensor("late", DataType::Float, known(&[b, t, d])));
    g.outputs.push(ValueInfo::tensor("u12", DataType::Float, known(&[b, t, d])));
    extra(&mut g);
    Model::new(g, 21)
}

fn inputs(b: usize, t: usize, d: usize) -> HashMap<String, Tensor> {
    let n = b * t * d;
    let x: Vec<f32> = (0..n).map(|k| ((k * 37 % 101) as f32 - 50.0) * 0.07).collect();
    let r: Vec<f32> = (0..b * t).map(|k| 0.3 + k as f32 * 0.11).collect();
    let h: Vec<bf16> = (0..n).map(|k| bf16::from_f32(((k * 13 % 29) as f32 - 14.0) * 0.1)).collect();
    HashMap::from([
        ("x".to_string(), Tensor::from_vec(vec![b, t, d], x).unwrap()),
        ("r".to_string(), Tensor::from_vec(vec![b, t, 1], r).unwrap()),
        ("h".to_string(), Tensor::from_vec(vec![b, t, d], h).unwrap()),
    ])
}

/// Runs `m` fused and unfused: every output the same bits. Returns the fused plan's ops.
fn same_bits(m: &Model, feed: HashMap<String, Tensor>) -> Vec<String> {
    let fused = Session::new(m, SessionOptions::default()).unwrap();
    let plain = Session::new(m, SessionOptions { unfused: true, ..Default::default() }).unwrap();
    let (a, b) = (fused.run(feed.clone()).unwrap(), plain.run(feed).unwrap());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{na}");
        assert!(ta.to_le_bytes() == tb.to_le_bytes(), "{na} differs between the fused and the node-by-node plan");
    }
    fused.plan().instructions.iter().map(|i| i.node.op().op_type.clone()).collect()
}

#[test]
fn chains_give_the_bits_of_the_node_by_node_plan() {
    // Small (one chunk) and large (parallel chunks, a partial last one).
    for (b, t, d) in [(2, 3, 5), (2, 3, 12_001)] {
        let ops = same_bits(&model(b, t, d, |_| {}), inputs(b, t, d));
        // Two chains and the late Neg; no elementwise node and no Shape left on its own.
        assert_eq!(ops.iter().filter(|o| *o == "ElementwiseChain").count(), 2, "{ops:?}");
        assert_eq!(ops.len(), 3, "{ops:?}");
    }
}

/// A value the chain must write that is smaller than the chain (`r²`, read after it), and a
/// bf16 Add inside a chain: both leave the fused evaluator, and the steps run one by one.
#[test]
fn chains_outside_the_fused_path_run_step_by_step() {
    let m = model(2, 3, 7, |g| {
        for n in [
            node("Mul", &["r", "r"], "rr"),
            node("Mul", &["x", "rr"], "xr"),
            node("Add", &["h", "h"], "hh"),
            cast("hh", DataType::Float, "hhf"),
            node("Add", &["xr", "hhf"], "y"),
            node("Neg", &["rr"], "rr_late"),
        ] {
            g.add_node(n).unwrap();
        }
        g.outputs.push(ValueInfo::tensor("y", DataType::Float, known(&[2, 3, 7])));
        g.outputs.push(ValueInfo::tensor("rr_late", DataType::Float, known(&[2, 3, 1])));
    });
    let ops = same_bits(&m, inputs(2, 3, 7));
    assert_eq!(ops.iter().filter(|o| *o == "ElementwiseChain").count(), 3, "{ops:?}");
}

/// Shapes that do not broadcast fail naming the node inside the chain.
#[test]
fn a_bad_broadcast_names_the_node_in_the_chain() {
    let s = Session::new(&model(2, 3, 5, |_| {}), SessionOptions::default()).unwrap();
    let mut feed = inputs(2, 3, 5);
    feed.insert("r".into(), Tensor::from_vec(vec![2, 2, 1], vec![1.0f32; 4]).unwrap());
    let err = s.run(feed).unwrap_err().to_string();
    assert!(err.contains("`a`") && err.contains("Mul") && err.contains("broadcast"), "{err}");
}

/// The backward's `SumToShape` joins chains: fused where nothing is summed (the target is the
/// operand's shape), step by step where it sums (`[b, t, d]` down to `r`'s `[b, t, 1]`).
#[test]
fn sum_to_shape_steps_fuse_when_they_copy() {
    let sum = |i: &str, dims: &str, o: &str| {
        Node::new(OpKey::new("ai.adaptc", "SumToShape"), vec![i.into(), dims.into()], vec![o.into()]).named(o)
    };
    let m = model(2, 3, 7, |g| {
        for n in [
            node("Shape", &["x"], "x_dims"),
            node("Shape", &["r"], "r_dims"),
            node("Mul", &["x", "r"], "g1"),
            sum("g1", "x_dims", "c1"),
            cast("c1", DataType::BFloat16, "o1"),
            node("Mul", &["x", "r"], "g2"),
            sum("g2", "r_dims", "c2"),
            node("Neg", &["c2"], "o2"),
        ] {
            g.add_node(n).unwrap();
        }
        g.outputs.push(ValueInfo::tensor("o1", DataType::BFloat16, known(&[2, 3, 7])));
        g.outputs.push(ValueInfo::tensor("o2", DataType::Float, known(&[2, 3, 1])));
    });
    let ops = same_bits(&m, inputs(2, 3, 7));
    assert_eq!(ops.iter().filter(|o| *o == "ElementwiseChain").count(), 4, "{ops:?}");
    assert!(!ops.iter().any(|o| o == "SumToShape"), "{ops:?}");
}

/// A run of 40 elementwise nodes, one of them a graph output: chains stop at the device
/// kernel's 32 steps, the graph output is written from inside its chain, and the bits are the
/// node-by-node plan's.
#[test]
fn long_runs_split_at_the_step_limit_and_keep_graph_outputs() {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, known(&[3, 5])));
    let mut prev = "x".to_string();
    for k in 0..40 {
        let out = format!("v{k}");
        let n = if k % 2 == 0 { node("Neg", &[&prev], &out) } else { node("Add", &[&prev, "x"], &out) };
        g.add_node(n).unwrap();
        prev = out;
    }
    g.outputs.push(ValueInfo::tensor("v39", DataType::Float, known(&[3, 5])));
    g.outputs.push(ValueInfo::tensor("v10", DataType::Float, known(&[3, 5])));
    let m = Model::new(g, 21);
    let x: Vec<f32> = (0..15).map(|k| k as f32 * 0.5 - 3.0).collect();
    let ops = same_bits(&m, HashMap::from([("x".to_string(), Tensor::from_vec(vec![3, 5], x).unwrap())]));
    assert_eq!(ops, ["ElementwiseChain", "ElementwiseChain"], "{ops:?}");
}

/// A hand-written `ElementwiseChain` is checked like any node: a program that reads a register
/// it has not made is refused by name, and one the fused walk cannot take (a dead step on an
/// input larger than the chain) runs step by step instead of reading out of bounds.
#[test]
fn hand_written_chains_are_checked() {
    let chain = |args: Vec<i64>, outputs: Vec<&str>| {
        let mut g = Graph::new("g");
        g.inputs.push(ValueInfo::tensor("big", DataType::Float, known(&[4, 3])));
        g.inputs.push(ValueInfo::tensor("small", DataType::Float, known(&[3])));
        let node = Node::new(
            OpKey::new("ai.adaptc", "ElementwiseChain"),
            vec!["big".into(), "small".into()],
            outputs.iter().map(|s| s.to_string()).collect(),
        )
        .named("hand")
        .with_attr(Attribute::ints("codes", vec![2, 5])) // Mul, Neg
        .with_attr(Attribute::ints("args", args))
        .with_attr(Attribute::ints("values", vec![3]))
        .with_attr(Attribute::ints("shapes", vec![]));
        g.add_node(node).unwrap();
        g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Symbol("n".into())]));
        Model::new(g, 21)
    };
    let feed = HashMap::from([
        ("big".to_string(), Tensor::from_vec(vec![4, 3], vec![1.0f32; 12]).unwrap()),
        ("small".to_string(), Tensor::from_vec(vec![3], vec![1.0f32, -2.0, 3.0]).unwrap()),
    ]);
    // Step 0 multiplies `big` by itself (dead), step 1 negates `small`: y = −small.
    let s = Session::new(&chain(vec![0, 0, 1, -1], vec!["y"]), SessionOptions::default()).unwrap();
    let out = s.run(feed.clone()).unwrap();
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[-1.0, 2.0, -3.0]);
    // Step 0 reads register 3, its own.
    let s = Session::new(&chain(vec![3, 0, 1, -1], vec!["y"]), SessionOptions::default()).unwrap();
    let err = s.run(feed).unwrap_err().to_string();
    assert!(err.contains("hand") && err.contains("register 3"), "{err}");
}

/// `nodes` over an f32 input `x` and a bf16 input `h` (both [b, t, d]), f32 `output`; with
/// their values.
fn f32_and_bf16_model<const N: usize>(
    b: usize,
    t: usize,
    d: usize,
    nodes: [Node; N],
    output: &str,
) -> (Model, HashMap<String, Tensor>) {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, known(&[b, t, d])));
    g.inputs.push(ValueInfo::tensor("h", DataType::BFloat16, known(&[b, t, d])));
    for n in nodes {
        g.add_node(n).unwrap();
    }
    g.outputs.push(ValueInfo::tensor(output, DataType::Float, known(&[b, t, d])));
    let feed = inputs(b, t, d).into_iter().filter(|(k, _)| k == "x" || k == "h").collect();
    (Model::new(g, 21), feed)
}

/// A backward-shaped graph: the late chain reads the forward's SiLU output and a widened
/// bf16 input. It recomputes both instead (SiLU from its pre-activation, which it reads
/// anyway; the f32 value from the bf16 one), so the forward never writes them; the bits stay
/// the node-by-node plan's.
#[test]
fn late_chains_recompute_what_costs_no_new_reads() {
    let (b, t, d) = (2, 3, 9);
    let (m, feed) = f32_and_bf16_model(
        b,
        t,
        d,
        [
            cast("h", DataType::Float, "hf"),
            node("Add", &["x", "hf"], "c"),
            node("Sigmoid", &["c"], "g"),
            node("Mul", &["c", "g"], "s"),
            cast("s", DataType::BFloat16, "e"),
            cast("e", DataType::Float, "q"),
            node("Softmax", &["q"], "p"),
            // The "backward": reads p, s, c and hf after the Softmax.
            node("Mul", &["p", "s"], "d1"),
            node("Mul", &["d1", "c"], "d2"),
            node("Mul", &["d2", "hf"], "d3"),
        ],
        "d3",
    );
    same_bits(&m, feed);
    let plan = Session::new(&m, SessionOptions::default()).unwrap();
    let written: Vec<&String> = plan.plan().instructions.iter().flat_map(|i| i.node.outputs()).collect();
    for v in ["s", "g", "hf"] {
        assert!(!written.iter().any(|w| *w == v), "`{v}` is written: {written:?}");
    }
    let last = plan.plan().instructions.last().unwrap();
    assert_eq!(last.node.op().op_type, "ElementwiseChain");
    let mut read = last.node.inputs().to_vec();
    read.sort();
    assert_eq!(read, ["c", "h", "p"], "the backward chain reads {read:?}");
}

/// A widening cast whose readers are all chains, on both sides of a non-elementwise op: each
/// chain widens the bf16 value itself, so the cast never runs and the f32 value never exists.
#[test]
fn a_value_every_reader_recomputes_is_never_written() {
    let (m, feed) = f32_and_bf16_model(
        2,
        3,
        9,
        [
            cast("h", DataType::Float, "hf"),
            node("Mul", &["x", "hf"], "m1"),
            node("Softmax", &["m1"], "p"),
            node("Mul", &["p", "hf"], "m2"),
        ],
        "m2",
    );
    let ops = same_bits(&m, feed);
    assert_eq!(ops, ["ElementwiseChain", "Softmax", "ElementwiseChain"], "{ops:?}");
    let plan = Session::new(&m, SessionOptions::default()).unwrap();
    for ins in &plan.plan().instructions {
        assert!(!ins.node.outputs().iter().any(|o| o == "hf"), "`hf` is written by {}", ins.node.label());
    }
}
