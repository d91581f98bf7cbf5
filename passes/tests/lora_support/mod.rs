//! Shared by the LoRA tests (`lora.rs`, `merge.rs`): a small reference evaluator for the ops
//! linear layers and their adapters use, small graph builders for every linear form, and
//! fixture loading. The evaluator computes in `f64` with numpy broadcasting, so a value can be
//! compared with the same formula written out by hand.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, Tensor, ValueInfo};
use adaptc_passes::adapters::AdapterState;
use adaptc_passes::{PassContext, PassError, PassManager, Registry, RunReport};

// ----- arrays --------------------------------------------------------------------------------

/// A dense array, row-major.
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
        let data = t.to_f32_lossy().unwrap().into_iter().map(f64::from).collect();
        Arr::new(&t.dims().iter().map(|&d| d as usize).collect::<Vec<_>>(), data)
    }

    /// Deterministic pseudo-random values in [-1, 1).
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

    pub fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    /// `[.., m, k] · [k, n]` (the right operand 2-D) — enough to write the formulas.
    pub fn matmul(&self, b: &Arr) -> Arr {
        matmul(self, b)
    }

    pub fn t(&self) -> Arr {
        transpose(self, &[1, 0])
    }

    pub fn add(&self, b: &Arr) -> Arr {
        broadcast(self, b, |x, y| x + y)
    }

    pub fn mul(&self, b: &Arr) -> Arr {
        broadcast(self, b, |x, y| x * y)
    }

    pub fn scale(&self, s: f64) -> Arr {
        Arr { dims: self.dims.clone(), data: self.data.iter().map(|v| v * s).collect() }
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn broadcast(a: &Arr, b: &Arr, f: impl Fn(f64, f64) -> f64) -> Arr {
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - d.len()).chain(d.iter().copied()).collect() };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
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
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
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
        data.push(f(a.data[ia], b.data[ib]));
    }
    Arr { dims, data }
}

fn transpose(a: &Arr, perm: &[usize]) -> Arr {
    let dims: Vec<usize> = perm.iter().map(|&p| a.dims[p]).collect();
    let (sa, so) = (strides(&a.dims), strides(&dims));
    let n = a.data.len();
    let mut data = vec![0.0; n];
    for (i, slot) in data.iter_mut().enumerate() {
        let mut src = 0;
        for (k, &p) in perm.iter().enumerate() {
            src += ((i / so[k]) % dims[k]) * sa[p];
        }
        *slot = a.data[src];
    }
    Arr { dims, data }
}

/// numpy `matmul` for a right operand of rank ≤ 2 and a left operand of any rank (1-D
/// operands get a dimension added and removed, as numpy does).
fn matmul(a: &Arr, b: &Arr) -> Arr {
    let a1 = a.dims.len() == 1;
    let b1 = b.dims.len() == 1;
    let a2 = if a1 { Arr { dims: vec![1, a.dims[0]], data: a.data.clone() } } else { a.clone() };
    let b2 = if b1 { Arr { dims: vec![b.dims[0], 1], data: b.data.clone() } } else { b.clone() };
    assert_eq!(b2.dims.len(), 2, "the evaluator's MatMul takes a 2-D right operand");
    let (k, n) = (b2.dims[0], b2.dims[1]);
    assert_eq!(*a2.dims.last().unwrap(), k, "MatMul {:?} · {:?}", a.dims, b.dims);
    let rows = a2.data.len() / k;
    let mut data = vec![0.0; rows * n];
    for r in 0..rows {
        for kk in 0..k {
            let av = a2.data[r * k + kk];
            for c in 0..n {
                data[r * n + c] += av * b2.data[kk * n + c];
            }
        }
    }
    let mut dims = a2.dims[..a2.dims.len() - 1].to_vec();
    dims.push(n);
    if a1 {
        dims.remove(0);
    }
    if b1 {
        dims.pop();
    }
    Arr { dims, data }
}

// ----- the evaluator -------------------------------------------------------------------------

/// Evaluates `value` of `graph` from `feeds`, recursively through producers (initializers and
/// `Constant` nodes are read; graph inputs must be fed). Ops: MatMul, Gemm, Add, Sub, Mul,
/// Div, Sqrt, Relu, Transpose, Identity, Dropout (inference: identity).
pub fn eval(graph: &Graph, feeds: &HashMap<String, Arr>, value: &str) -> Arr {
    let mut memo: HashMap<String, Arr> = feeds.clone();
    eval_into(graph, &mut memo, value)
}

fn eval_into(graph: &Graph, memo: &mut HashMap<String, Arr>, value: &str) -> Arr {
    if let Some(v) = memo.get(value) {
        return v.clone();
    }
    if let Some(t) = graph.initializer(value) {
        return Arr::from_tensor(t);
    }
    let (id, slot) = graph.producer(value).unwrap_or_else(|| panic!("`{value}` is neither fed nor produced"));
    assert_eq!(slot, 0, "only first outputs are evaluated");
    let node = graph.node(id).clone();
    let ins: Vec<Arr> = node.inputs().iter().filter(|i| !i.is_empty()).map(|i| eval_into(graph, memo, i)).collect();
    let op = node.op().op_type.as_str();
    let out = match op {
        "Constant" => Arr::from_tensor(node.attr("value").and_then(|a| a.as_tensor()).unwrap()),
        "MatMul" => matmul(&ins[0], &ins[1]),
        "Gemm" => {
            let a = if node.attr_int("transA", 0) == 1 { ins[0].t() } else { ins[0].clone() };
            let b = if node.attr_int("transB", 0) == 1 { ins[1].t() } else { ins[1].clone() };
            let y = matmul(&a, &b);
            match ins.get(2) {
                Some(c) => y.add(c),
                None => y,
            }
        }
        "Add" => broadcast(&ins[0], &ins[1], |x, y| x + y),
        "Sub" => broadcast(&ins[0], &ins[1], |x, y| x - y),
        "Mul" => broadcast(&ins[0], &ins[1], |x, y| x * y),
        "Div" => broadcast(&ins[0], &ins[1], |x, y| x / y),
        "Sqrt" => Arr { dims: ins[0].dims.clone(), data: ins[0].data.iter().map(|v| v.sqrt()).collect() },
        "Relu" => Arr { dims: ins[0].dims.clone(), data: ins[0].data.iter().map(|v| v.max(0.0)).collect() },
        "Identity" | "Dropout" => ins[0].clone(),
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

/// The linear forms the matcher knows, each as a tiny model `x → layer "fc" → Relu → z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `MatMul(x, W[in,out]) + Add(b)`, x of rank 3.
    MatMulBias,
    /// `MatMul(x, W[in,out])`, x of rank 3, no bias.
    MatMulNoBias,
    /// `Gemm(x, W[out,in], b, transB=1)`.
    GemmTransB,
    /// `Gemm(x, W[in,out])`, no bias.
    GemmNoTrans,
    /// `Gemm(x, W[in,out], b[1,out])`.
    GemmNoTransBias,
    /// `MatMul(x, Transpose(W[out,in])) + Add(b)`, x of rank 3.
    MatMulTransposedBias,
}

pub const FORMS: [Form; 6] = [
    Form::MatMulBias,
    Form::MatMulNoBias,
    Form::GemmTransB,
    Form::GemmNoTrans,
    Form::GemmNoTransBias,
    Form::MatMulTransposedBias,
];

pub const IN: usize = 6;
pub const OUT: usize = 5;

/// The layer's weight `[out, in]` (PyTorch orientation) and bias used by [`form_model`].
pub fn form_weights() -> (Arr, Arr) {
    (Arr::random(&[OUT, IN], 11), Arr::random(&[OUT], 12))
}

impl Form {
    pub fn x_dims(self) -> Vec<usize> {
        match self {
            Form::GemmTransB | Form::GemmNoTrans | Form::GemmNoTransBias => vec![3, IN],
            _ => vec![2, 3, IN],
        }
    }

    pub fn has_bias(self) -> bool {
        !matches!(self, Form::MatMulNoBias | Form::GemmNoTrans)
    }
}

/// `x → fc → Relu → z` in the given form; the weight is `fc.weight`, the bias `fc.bias`.
pub fn form_model(form: Form) -> Model {
    let (w, b) = form_weights();
    let mut g = Graph::new("g");
    let xd: Vec<Dim> = form.x_dims().iter().map(|&d| Dim::Known(d as i64)).collect();
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, xd));
    g.outputs.push(ValueInfo::new("z", None));
    match form {
        Form::MatMulBias | Form::MatMulNoBias => {
            g.add_initializer(tensor("fc.weight", &w.t())).unwrap();
            if form == Form::MatMulBias {
                g.add_initializer(tensor("fc.bias", &b)).unwrap();
                op(&mut g, "MatMul", "/fc/MatMul", &["x", "fc.weight"], &["mm"]);
                op(&mut g, "Add", "/fc/Add", &["mm", "fc.bias"], &["y"]);
            } else {
                op(&mut g, "MatMul", "/fc/MatMul", &["x", "fc.weight"], &["y"]);
            }
        }
        Form::GemmTransB => {
            g.add_initializer(tensor("fc.weight", &w)).unwrap();
            g.add_initializer(tensor("fc.bias", &b)).unwrap();
            op_with(
                &mut g,
                "Gemm",
                "/fc/Gemm",
                &["x", "fc.weight", "fc.bias"],
                &["y"],
                vec![Attribute::int("transB", 1)],
            );
        }
        Form::GemmNoTrans => {
            g.add_initializer(tensor("fc.weight", &w.t())).unwrap();
            op(&mut g, "Gemm", "/fc/Gemm", &["x", "fc.weight"], &["y"]);
        }
        Form::GemmNoTransBias => {
            g.add_initializer(tensor("fc.weight", &w.t())).unwrap();
            g.add_initializer(tensor("fc.bias", &Arr::new(&[1, OUT], b.data.clone()))).unwrap();
            op(&mut g, "Gemm", "/fc/Gemm", &["x", "fc.weight", "fc.bias"], &["y"]);
        }
        Form::MatMulTransposedBias => {
            g.add_initializer(tensor("fc.weight", &w)).unwrap();
            g.add_initializer(tensor("fc.bias", &b)).unwrap();
            op_with(
                &mut g,
                "Transpose",
                "/fc/Transpose",
                &["fc.weight"],
                &["wt"],
                vec![Attribute::ints("perm", vec![1, 0])],
            );
            op(&mut g, "MatMul", "/fc/MatMul", &["x", "wt"], &["mm"]);
            op(&mut g, "Add", "/fc/Add", &["mm", "fc.bias"], &["y"]);
        }
    }
    op(&mut g, "Relu", "relu", &["y"], &["z"]);
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 17)
}

/// `x·Wᵀ + b` for `W [out, in]`.
pub fn linear(x: &Arr, w: &Arr, b: Option<&Arr>) -> Arr {
    let y = x.matmul(&w.t());
    match b {
        Some(b) => y.add(b),
        None => y,
    }
}

// ----- running -------------------------------------------------------------------------------

/// Runs `pipeline` with verify-each; panics on error.
pub fn run(pipeline: &str, model: &mut Model) -> RunReport {
    let manager = PassManager::new(&Registry::builtin(), pipeline).unwrap_or_else(|e| panic!("{pipeline}: {e}"));
    manager.run(model).unwrap_or_else(|e| panic!("{pipeline}: {e}"))
}

/// Runs `pipeline` expecting an error; returns its text.
pub fn run_err(pipeline: &str, model: &mut Model) -> String {
    match PassManager::new(&Registry::builtin(), pipeline) {
        Err(e) => e.to_string(),
        Ok(m) => match m.run(model) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{pipeline} should fail, but ran: {r}"),
        },
    }
}

/// Runs one pass directly, returning its outcome and notes.
pub fn run_pass(pipeline: &str, model: &mut Model) -> Result<(adaptc_passes::PassOutcome, Vec<String>), PassError> {
    let p = adaptc_passes::Pipeline::parse(pipeline)?;
    let pass = Registry::builtin().build(&p.passes[0])?;
    let mut cx = PassContext::new();
    let outcome = pass.run(model, &mut cx)?;
    Ok((outcome, cx.notes))
}

pub fn state(model: &Model) -> AdapterState {
    AdapterState::load(model).unwrap()
}

pub fn init_values(model: &Model, name: &str) -> Arr {
    Arr::from_tensor(model.graph.initializer(name).unwrap_or_else(|| panic!("no initializer `{name}`")))
}

/// The layer's weight as `[out, in]`, whatever its stored layout.
pub fn weight_out_in(model: &Model, name: &str, in_out: bool) -> Arr {
    let w = init_values(model, name);
    if in_out {
        w.t()
    } else {
        w
    }
}

// ----- fixtures ------------------------------------------------------------------------------

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(rel)
}

pub fn load(rel: &str) -> Model {
    let path = fixture(rel);
    adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("adaptc-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
