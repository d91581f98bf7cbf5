//! For `prune_channels.rs`: an `f64` reference evaluator for the ops of FFNs and attention
//! blocks (element-wise activations, batched MatMul, Reshape with `0`/`-1`, Transpose,
//! Softmax), and small FFN and attention models in every weight layout.
#![allow(dead_code)]

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, Tensor, ValueInfo};

/// A dense row-major array.
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

impl Arr {
    pub fn new(dims: &[usize], data: Vec<f64>) -> Arr {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{dims:?}");
        Arr { dims: dims.to_vec(), data }
    }

    pub fn from_tensor(t: &Tensor) -> Arr {
        if matches!(t.dtype(), DataType::Int64 | DataType::Int32) {
            let data = t.to_i64().unwrap().into_iter().map(|v| v as f64).collect();
            return Arr::new(&t.dims().iter().map(|&d| d as usize).collect::<Vec<_>>(), data);
        }
        let data = t.to_f32_lossy().unwrap().into_iter().map(f64::from).collect();
        Arr::new(&t.dims().iter().map(|&d| d as usize).collect::<Vec<_>>(), data)
    }

    /// Deterministic values in [-1, 1).
    pub fn random(dims: &[usize], seed: u64) -> Arr {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n = dims.iter().product();
        let data = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect();
        Arr::new(dims, data)
    }

    pub fn max_abs_diff(&self, other: &Arr) -> f64 {
        assert_eq!(self.dims, other.dims, "shapes differ");
        self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    }

    fn map(&self, f: impl Fn(f64) -> f64) -> Arr {
        Arr { dims: self.dims.clone(), data: self.data.iter().map(|&v| f(v)).collect() }
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn pad(d: &[usize], rank: usize) -> Vec<usize> {
    std::iter::repeat_n(1, rank - d.len()).chain(d.iter().copied()).collect()
}

fn broadcast(a: &Arr, b: &Arr, f: impl Fn(f64, f64) -> f64) -> Arr {
    let rank = a.dims.len().max(b.dims.len());
    let (da, db) = (pad(&a.dims, rank), pad(&b.dims, rank));
    let dims: Vec<usize> = da
        .iter()
        .zip(&db)
        .map(|(&x, &y)| {
            assert!(x == y || x == 1 || y == 1, "cannot broadcast {:?} with {:?}", a.dims, b.dims);
            x.max(y)
        })
        .collect();
    let (sa, sb, so) = (strides(&da), strides(&db), strides(&dims));
    let n: usize = dims.iter().product();
    let data = (0..n)
        .map(|i| {
            let (mut ia, mut ib) = (0, 0);
            for k in 0..rank {
                let idx = (i / so[k]) % dims[k];
                if da[k] != 1 {
                    ia += idx * sa[k];
                }
                if db[k] != 1 {
                    ib += idx * sb[k];
                }
            }
            f(a.data[ia], b.data[ib])
        })
        .collect();
    Arr { dims, data }
}

pub fn transpose(a: &Arr, perm: &[usize]) -> Arr {
    let dims: Vec<usize> = perm.iter().map(|&p| a.dims[p]).collect();
    let (sa, so) = (strides(&a.dims), strides(&dims));
    let mut data = vec![0.0; a.data.len()];
    for (i, slot) in data.iter_mut().enumerate() {
        let mut src = 0;
        for (k, &p) in perm.iter().enumerate() {
            src += ((i / so[k]) % dims[k]) * sa[p];
        }
        *slot = a.data[src];
    }
    Arr { dims, data }
}

/// numpy matmul for operands of rank ≥ 2 with broadcast batch dimensions.
fn matmul(a: &Arr, b: &Arr) -> Arr {
    let (ra, rb) = (a.dims.len(), b.dims.len());
    assert!(ra >= 2 && rb >= 2, "MatMul {:?} · {:?}", a.dims, b.dims);
    let (m, k, n) = (a.dims[ra - 2], a.dims[ra - 1], b.dims[rb - 1]);
    assert_eq!(k, b.dims[rb - 2], "MatMul {:?} · {:?}", a.dims, b.dims);
    let rank = ra.max(rb);
    let (ba, bb) = (pad(&a.dims[..ra - 2], rank - 2), pad(&b.dims[..rb - 2], rank - 2));
    let batch: Vec<usize> = ba.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    let (sa, sb, so) = (strides(&ba), strides(&bb), strides(&batch));
    let nb: usize = batch.iter().product();
    let mut data = vec![0.0; nb * m * n];
    for bi in 0..nb {
        let (mut ia, mut ib) = (0, 0);
        for d in 0..batch.len() {
            let idx = (bi / so[d]) % batch[d];
            if ba[d] != 1 {
                ia += idx * sa[d];
            }
            if bb[d] != 1 {
                ib += idx * sb[d];
            }
        }
        for i in 0..m {
            for kk in 0..k {
                let av = a.data[ia * m * k + i * k + kk];
                for j in 0..n {
                    data[bi * m * n + i * n + j] += av * b.data[ib * k * n + kk * n + j];
                }
            }
        }
    }
    let mut dims = batch;
    dims.extend([m, n]);
    Arr { dims, data }
}

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse for exact comparisons; use a series / continued
    // fraction pair accurate to ~1e-15.
    if x.abs() < 2.5 {
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..80 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let t = x.abs();
        let mut f = 0.0;
        for n in (1..60).rev() {
            f = n as f64 / 2.0 / (t + f);
        }
        let v = 1.0 - (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f);
        v.copysign(x)
    }
}

fn reshape(a: &Arr, shape: &[f64]) -> Arr {
    let mut dims: Vec<i64> = shape.iter().map(|&v| v as i64).collect();
    for (i, d) in dims.iter_mut().enumerate() {
        if *d == 0 {
            *d = a.dims[i] as i64;
        }
    }
    let known: i64 = dims.iter().filter(|&&d| d != -1).product();
    for d in dims.iter_mut() {
        if *d == -1 {
            *d = a.data.len() as i64 / known;
        }
    }
    Arr::new(&dims.iter().map(|&d| d as usize).collect::<Vec<_>>(), a.data.clone())
}

fn softmax_last(a: &Arr) -> Arr {
    let n = *a.dims.last().unwrap();
    let mut data = a.data.clone();
    for row in data.chunks_mut(n) {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
    }
    Arr { dims: a.dims.clone(), data }
}

/// Evaluates `value` from `feeds` through its producers.
pub fn eval(graph: &Graph, feeds: &HashMap<String, Arr>, value: &str) -> Arr {
    let mut memo = feeds.clone();
    eval_into(graph, &mut memo, value)
}

fn eval_into(graph: &Graph, memo: &mut HashMap<String, Arr>, value: &str) -> Arr {
    if let Some(v) = memo.get(value) {
        return v.clone();
    }
    if let Some(t) = graph.initializer(value) {
        return Arr::from_tensor(t);
    }
    let (id, _) = graph.producer(value).unwrap_or_else(|| panic!("`{value}` is neither fed nor produced"));
    let node = graph.node(id).clone();
    let ins: Vec<Arr> = node.inputs().iter().filter(|i| !i.is_empty()).map(|i| eval_into(graph, memo, i)).collect();
    let out = match node.op().op_type.as_str() {
        "Constant" => Arr::from_tensor(node.attr("value").and_then(|a| a.as_tensor()).unwrap()),
        "MatMul" => matmul(&ins[0], &ins[1]),
        "Gemm" => {
            let a = if node.attr_int("transA", 0) == 1 { transpose(&ins[0], &[1, 0]) } else { ins[0].clone() };
            let b = if node.attr_int("transB", 0) == 1 { transpose(&ins[1], &[1, 0]) } else { ins[1].clone() };
            let y = matmul(&a, &b);
            match ins.get(2) {
                Some(c) => broadcast(&y, c, |x, y| x + y),
                None => y,
            }
        }
        "Add" => broadcast(&ins[0], &ins[1], |x, y| x + y),
        "Sub" => broadcast(&ins[0], &ins[1], |x, y| x - y),
        "Mul" => broadcast(&ins[0], &ins[1], |x, y| x * y),
        "Div" => broadcast(&ins[0], &ins[1], |x, y| x / y),
        "Pow" => broadcast(&ins[0], &ins[1], f64::powf),
        "Relu" => ins[0].map(|v| v.max(0.0)),
        "Sigmoid" => ins[0].map(|v| 1.0 / (1.0 + (-v).exp())),
        "Tanh" => ins[0].map(f64::tanh),
        "Erf" => ins[0].map(erf),
        "Gelu" => ins[0].map(|v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))),
        "Softmax" => softmax_last(&ins[0]),
        "Identity" => ins[0].clone(),
        "Reshape" => reshape(&ins[0], &ins[1].data),
        "Concat" => {
            assert!(ins.iter().all(|a| a.dims.len() == 1), "the test evaluator concatenates 1-D values only");
            let data: Vec<f64> = ins.iter().flat_map(|a| a.data.clone()).collect();
            Arr::new(&[data.len()], data)
        }
        "Transpose" => {
            let perm: Vec<usize> = match node.attr("perm").and_then(|a| a.as_ints()) {
                Some(p) => p.iter().map(|&v| v as usize).collect(),
                None => (0..ins[0].dims.len()).rev().collect(),
            };
            transpose(&ins[0], &perm)
        }
        other => panic!("the test evaluator does not know {other} (node `{}`)", node.label()),
    };
    memo.insert(value.to_string(), out.clone());
    out
}

// ----- graphs --------------------------------------------------------------------------------

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub fn op(g: &mut Graph, op: &str, name: &str, inputs: &[&str], outputs: &[&str]) {
    g.add_node(Node::new(OpKey::onnx(op), s(inputs), s(outputs)).named(name)).unwrap();
}

pub fn op_with(g: &mut Graph, op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<Attribute>) {
    let node = attrs.into_iter().fold(Node::new(OpKey::onnx(op), s(inputs), s(outputs)).named(name), Node::with_attr);
    g.add_node(node).unwrap();
}

pub fn tensor(name: &str, a: &Arr) -> Tensor {
    let values: Vec<f32> = a.data.iter().map(|&v| v as f32).collect();
    Tensor::from_f32(name, a.dims.iter().map(|&d| d as u64).collect(), &values).unwrap()
}

pub fn input(g: &mut Graph, name: &str, dims: &[i64]) {
    g.inputs.push(ValueInfo::tensor(name, DataType::Float, dims.iter().map(|&d| Dim::Known(d)).collect()));
}

pub fn declare(g: &mut Graph, name: &str, dims: &[i64]) {
    g.value_info.push(ValueInfo::tensor(name, DataType::Float, dims.iter().map(|&d| Dim::Known(d)).collect()));
}

/// How a linear layer `prefix` is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `MatMul(x, W[in,out]) + Add(b)`.
    MatMulBias,
    /// `Gemm(x, W[out,in], b, transB=1)` (x must be 2-D).
    GemmTransB,
    /// `Gemm(x, W[in,out], b)` (x must be 2-D).
    GemmNoTrans,
    /// `MatMul(x, Transpose(W[out,in])) + Add(b)`.
    MatMulTransposed,
    /// `MatMul(x, W[in,out])`, no bias.
    MatMulNoBias,
}

/// Adds the linear layer `prefix` (`W` given `[out, in]`) reading `x`, writing `y`.
pub fn linear(g: &mut Graph, form: Form, prefix: &str, x: &str, y: &str, w: &Arr, b: &Arr) {
    let p = prefix.replace('.', "/");
    let wname = format!("{prefix}.weight");
    let bname = format!("{prefix}.bias");
    let wt = transpose(w, &[1, 0]);
    match form {
        Form::MatMulBias => {
            g.add_initializer(tensor(&wname, &wt)).unwrap();
            g.add_initializer(tensor(&bname, b)).unwrap();
            let mm = format!("{y}_mm");
            op(g, "MatMul", &format!("/{p}/MatMul"), &[x, &wname], &[&mm]);
            op(g, "Add", &format!("/{p}/Add"), &[&mm, &bname], &[y]);
        }
        Form::MatMulNoBias => {
            g.add_initializer(tensor(&wname, &wt)).unwrap();
            op(g, "MatMul", &format!("/{p}/MatMul"), &[x, &wname], &[y]);
        }
        Form::GemmTransB => {
            g.add_initializer(tensor(&wname, w)).unwrap();
            g.add_initializer(tensor(&bname, b)).unwrap();
            op_with(g, "Gemm", &format!("/{p}/Gemm"), &[x, &wname, &bname], &[y], vec![Attribute::int("transB", 1)]);
        }
        Form::GemmNoTrans => {
            g.add_initializer(tensor(&wname, &wt)).unwrap();
            g.add_initializer(tensor(&bname, b)).unwrap();
            op(g, "Gemm", &format!("/{p}/Gemm"), &[x, &wname, &bname], &[y]);
        }
        Form::MatMulTransposed => {
            g.add_initializer(tensor(&wname, w)).unwrap();
            g.add_initializer(tensor(&bname, b)).unwrap();
            let t = format!("{y}_wt");
            let mm = format!("{y}_mm");
            op_with(
                g,
                "Transpose",
                &format!("/{p}/Transpose"),
                &[&wname],
                &[&t],
                vec![Attribute::ints("perm", vec![1, 0])],
            );
            op(g, "MatMul", &format!("/{p}/MatMul"), &[x, &t], &[&mm]);
            op(g, "Add", &format!("/{p}/Add"), &[&mm, &bname], &[y]);
        }
    }
}

pub const HIDDEN: usize = 6;
pub const FFN: usize = 8;

/// `x [.., 6] → up (8) → Gelu → down (6) → y`, BERT's FFN, in block 0; the producer and the
/// consumer in the given forms. `x` is `[2, 3, 6]`, or `[3, 6]` when a form is a Gemm.
pub fn bert_ffn(up: Form, down: Form) -> Model {
    let mut g = Graph::new("g");
    let gemm =
        matches!(up, Form::GemmTransB | Form::GemmNoTrans) || matches!(down, Form::GemmTransB | Form::GemmNoTrans);
    let x: &[i64] = if gemm { &[3, HIDDEN as i64] } else { &[2, 3, HIDDEN as i64] };
    input(&mut g, "x", x);
    g.outputs.push(ValueInfo::new("y", None));
    linear(
        &mut g,
        up,
        "encoder.layer.0.intermediate.dense",
        "x",
        "h",
        &Arr::random(&[FFN, HIDDEN], 1),
        &Arr::random(&[FFN], 2),
    );
    op(&mut g, "Gelu", "/encoder/layer.0/intermediate/Gelu", &["h"], &["a"]);
    linear(
        &mut g,
        down,
        "encoder.layer.0.output.dense",
        "a",
        "y",
        &Arr::random(&[HIDDEN, FFN], 3),
        &Arr::random(&[HIDDEN], 4),
    );
    let mut ffn_dims = x.to_vec();
    *ffn_dims.last_mut().unwrap() = FFN as i64;
    declare(&mut g, "h", &ffn_dims);
    declare(&mut g, "a", &ffn_dims);
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 20)
}

/// Llama's FFN: `down(SiLU(gate(x)) · up(x))`, SiLU written `g · Sigmoid(g)`, no biases.
pub fn llama_ffn() -> Model {
    let mut g = Graph::new("g");
    input(&mut g, "x", &[2, 3, HIDDEN as i64]);
    g.outputs.push(ValueInfo::new("y", None));
    let zero = Arr::new(&[FFN], vec![0.0; FFN]);
    let mlp = "model.layers.0.mlp";
    linear(
        &mut g,
        Form::MatMulNoBias,
        &format!("{mlp}.gate_proj"),
        "x",
        "gate",
        &Arr::random(&[FFN, HIDDEN], 5),
        &zero,
    );
    op(&mut g, "Sigmoid", "/model/layers.0/mlp/act_fn/Sigmoid", &["gate"], &["sig"]);
    op(&mut g, "Mul", "/model/layers.0/mlp/act_fn/Mul", &["gate", "sig"], &["silu"]);
    linear(&mut g, Form::MatMulNoBias, &format!("{mlp}.up_proj"), "x", "up", &Arr::random(&[FFN, HIDDEN], 6), &zero);
    op(&mut g, "Mul", "/model/layers.0/mlp/Mul", &["silu", "up"], &["prod"]);
    let z6 = Arr::new(&[HIDDEN], vec![0.0; HIDDEN]);
    linear(&mut g, Form::MatMulNoBias, &format!("{mlp}.down_proj"), "prod", "y", &Arr::random(&[HIDDEN, FFN], 7), &z6);
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 20)
}

pub const HEADS: usize = 3;
pub const HEAD: usize = 4;

/// One attention block: q/k/v `[6 → 12]` split to 3 heads of 4 by `Reshape([0, 0, 3, 4])`,
/// scaled dot-product attention, merged by `Reshape([0, 0, 12])`, o `[12 → 6]`. `kv_heads`
/// other than 3 makes k and v narrower (grouped-query attention).
pub fn attention(kv_heads: usize) -> Model {
    let mut g = Graph::new("g");
    input(&mut g, "x", &[2, 5, HIDDEN as i64]);
    g.outputs.push(ValueInfo::new("y", None));
    let width = HEADS * HEAD;
    let kv = kv_heads * HEAD;
    let a = "encoder.layer.0.attention";
    g.add_initializer(Tensor::from_i64("split_shape", vec![4], &[0, 0, HEADS as i64, HEAD as i64]).unwrap()).unwrap();
    g.add_initializer(Tensor::from_i64("kv_shape", vec![4], &[0, 0, kv_heads as i64, HEAD as i64]).unwrap()).unwrap();
    g.add_initializer(Tensor::from_i64("merge_shape", vec![3], &[0, 0, width as i64]).unwrap()).unwrap();
    g.add_initializer(Tensor::from_f32("scale", vec![], &[0.5]).unwrap()).unwrap();
    for (i, (name, w)) in [("query", width), ("key", kv), ("value", kv)].into_iter().enumerate() {
        let y = format!("{name}_out");
        linear(
            &mut g,
            Form::MatMulBias,
            &format!("{a}.self.{name}"),
            "x",
            &y,
            &Arr::random(&[w, HIDDEN], 10 + i as u64),
            &Arr::random(&[w], 20 + i as u64),
        );
        let shape = if name == "query" { "split_shape" } else { "kv_shape" };
        op(
            &mut g,
            "Reshape",
            &format!("/{a}/self/{name}/Reshape").replace('.', "/"),
            &[&y, shape],
            &[&format!("{name}_heads")],
        );
        let perm = if name == "key" { vec![0, 2, 3, 1] } else { vec![0, 2, 1, 3] };
        op_with(
            &mut g,
            "Transpose",
            &format!("/{a}/self/{name}/Transpose").replace('.', "/"),
            &[&format!("{name}_heads")],
            &[&format!("{name}_t")],
            vec![Attribute::ints("perm", perm)],
        );
    }
    op(&mut g, "MatMul", "/attn/scores", &["query_t", "key_t"], &["scores"]);
    op(&mut g, "Mul", "/attn/scale", &["scores", "scale"], &["scaled"]);
    op_with(&mut g, "Softmax", "/attn/softmax", &["scaled"], &["probs"], vec![Attribute::int("axis", -1)]);
    op(&mut g, "MatMul", "/attn/context", &["probs", "value_t"], &["ctx"]);
    op_with(
        &mut g,
        "Transpose",
        "/attn/merge_t",
        &["ctx"],
        &["ctx_t"],
        vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
    );
    op(&mut g, "Reshape", "/attn/merge", &["ctx_t", "merge_shape"], &["merged"]);
    linear(
        &mut g,
        Form::MatMulBias,
        &format!("{a}.output.dense"),
        "merged",
        "y",
        &Arr::random(&[HIDDEN, width], 30),
        &Arr::random(&[HIDDEN], 31),
    );
    declare(&mut g, "query_out", &[2, 5, width as i64]);
    declare(&mut g, "query_heads", &[2, 5, HEADS as i64, HEAD as i64]);
    declare(&mut g, "merged", &[2, 5, width as i64]);
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 20)
}
