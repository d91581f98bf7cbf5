//! The `ai.adaptc` gradient kernels: small hand-checked cases, each analytic gradient against
//! central finite differences (f64) of the forward op it belongs to, run through the same
//! registry, the f32 training path against f64, and bad inputs refused with an error.

use std::collections::HashMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Node, OpKey, ValueInfo};
use adaptc_runtime::error::KernelError;
use adaptc_runtime::ops::{Inputs, OpCtx};
use adaptc_runtime::registry::{Registry, ADAPTC_DOMAIN};
use adaptc_runtime::{Session, SessionOptions, Tensor};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs the registry's kernel for `(domain, op)` on a synthetic node carrying `attrs`.
fn call(
    domain: &str,
    op: &str,
    attrs: &[Attribute],
    opset: i64,
    inputs: &[Option<&Tensor>],
) -> Result<Vec<Tensor>, KernelError> {
    let names = (0..inputs.len()).map(|k| if inputs[k].is_some() { format!("i{k}") } else { String::new() }).collect();
    let mut node = Node::new(OpKey::new(domain, op), names, vec!["o0".into(), "o1".into(), "o2".into()]);
    for a in attrs {
        node = node.with_attr(a.clone());
    }
    let def = Registry::cpu().get(node.op()).unwrap_or_else(|| panic!("no kernel for {domain}::{op}"));
    (def.kernel)(&OpCtx { node: &node, opset }, &Inputs(inputs))
}

/// A gradient op of the `ai.adaptc` domain.
fn grad(op: &str, attrs: &[Attribute], inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, KernelError> {
    call(ADAPTC_DOMAIN, op, attrs, 1, inputs)
}

/// A forward op of the default domain at opset 21.
fn fwd(op: &str, attrs: &[Attribute], inputs: &[&Tensor]) -> Vec<Tensor> {
    let ins: Vec<Option<&Tensor>> = inputs.iter().map(|&t| Some(t)).collect();
    call("", op, attrs, 21, &ins).unwrap_or_else(|e| panic!("{op}: {e}"))
}

fn some(ts: &[&Tensor]) -> Vec<Option<Tensor>> {
    ts.iter().map(|&t| Some(t.clone())).collect()
}

fn refs(ts: &[Option<Tensor>]) -> Vec<Option<&Tensor>> {
    ts.iter().map(Option::as_ref).collect()
}

fn int(name: &str, v: i64) -> Attribute {
    Attribute::int(name, v)
}

fn ints(name: &str, v: &[i64]) -> Attribute {
    Attribute::ints(name, v.to_vec())
}

fn string(name: &str, v: &str) -> Attribute {
    Attribute::string(name, v)
}

fn float(name: &str, v: f32) -> Attribute {
    Attribute::float(name, v)
}

/// SplitMix64: a tiny seeded generator for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [−1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.unit()).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn t64(shape: &[usize], v: Vec<f64>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn rand64(rng: &mut Rng, shape: &[usize]) -> Tensor {
    t64(shape, rng.vec(numel(shape)))
}

fn i64t(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

fn shape_t(shape: &[usize]) -> Tensor {
    i64t(&[shape.len()], shape.iter().map(|&d| d as i64).collect())
}

fn f64s(t: &Tensor) -> Vec<f64> {
    match (t.as_slice::<f64>(), t.as_slice::<f32>()) {
        (Some(v), _) => v.to_vec(),
        (None, Some(v)) => v.iter().map(|&x| f64::from(x)).collect(),
        _ => panic!("not a float tensor: {}", t.dtype()),
    }
}

fn to_f32(t: &Tensor) -> Tensor {
    Tensor::from_vec(t.shape().to_vec(), t.as_slice::<f64>().unwrap().iter().map(|&x| x as f32).collect()).unwrap()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ∂/∂x of `Σ w · f(x)` by central differences, one element of `x` at a time.
fn numeric_grad(x: &Tensor, w: &[f64], f: impl Fn(&Tensor) -> Vec<f64>) -> Vec<f64> {
    let h = 1e-5;
    let base = x.as_slice::<f64>().unwrap().to_vec();
    (0..base.len())
        .map(|k| {
            let mut p = base.clone();
            p[k] += h;
            let lp = dot(w, &f(&t64(x.shape(), p.clone())));
            p[k] -= 2.0 * h;
            let lm = dot(w, &f(&t64(x.shape(), p)));
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0f64;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        assert!(err <= tol, "{what}: element {k}: got {g}, want {w} (error {err:e} > {tol:e})");
        worst = worst.max(err);
    }
    eprintln!("{what}: worst error {worst:.2e}");
}

// ---------------------------------------------------------------------------------------------
// Registry and sessions

#[test]
fn all_gradient_ops_are_registered_under_ai_adaptc() {
    let ops = Registry::cpu().ops();
    for op in [
        "SumToShape",
        "MatMulTrans",
        "SoftmaxGrad",
        "LayerNormalizationGrad",
        "GeluGrad",
        "ReduceGrad",
        "IndexMapGrad",
        "SoftmaxCrossEntropyLossGrad",
    ] {
        assert!(ops.contains(&OpKey::new("ai.adaptc", op)), "{op} is not registered");
        assert!(Registry::cpu().get(&OpKey::onnx(op)).is_none(), "{op} leaked into the default domain");
    }
}

#[test]
fn a_session_runs_a_gradient_node() {
    let mut g = Graph::new("g");
    g.inputs.push(ValueInfo::tensor("dy", DataType::Float, vec![Dim::Known(2), Dim::Known(3)]));
    g.outputs.push(ValueInfo::tensor("db", DataType::Float, vec![Dim::Known(3)]));
    g.add_initializer(
        adaptc_ir::Tensor::from_bytes("s", DataType::Int64, vec![1], 3i64.to_le_bytes().to_vec()).unwrap(),
    )
    .unwrap();
    let node = Node::new(OpKey::new(ADAPTC_DOMAIN, "SumToShape"), vec!["dy".into(), "s".into()], vec!["db".into()]);
    g.add_node(node.named("bias_grad")).unwrap();
    let s = Session::new(&Model::new(g, 21), SessionOptions::default()).unwrap();
    let dy = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0]).unwrap();
    let out = s.run(HashMap::from([("dy".to_string(), dy)])).unwrap();
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[11.0, 22.0, 33.0]);
}

// ---------------------------------------------------------------------------------------------
// SumToShape

fn sum_to_shape(dy: &Tensor, shape: &[usize]) -> Result<Tensor, KernelError> {
    grad("SumToShape", &[], &[Some(dy), Some(&shape_t(shape))]).map(|mut v| v.remove(0))
}

#[test]
fn sum_to_shape_by_hand() {
    let dy = t64(&[2, 3], vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0]);
    let r = sum_to_shape(&dy, &[3]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[3usize][..], vec![11.0, 22.0, 33.0]));
    let r = sum_to_shape(&dy, &[2, 1]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[2usize, 1][..], vec![6.0, 60.0]));
    let r = sum_to_shape(&dy, &[1, 3]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[1usize, 3][..], vec![11.0, 22.0, 33.0]));
    let r = sum_to_shape(&dy, &[1]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[1usize][..], vec![66.0]));
    let r = sum_to_shape(&dy, &[]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[][..], vec![66.0]));
    // Unchanged shape: a copy.
    assert_eq!(sum_to_shape(&dy, &[2, 3]).unwrap(), dy);
    // [2, 3, 2] → [3, 1]
    let dy = t64(&[2, 3, 2], (0..12).map(f64::from).collect());
    let r = sum_to_shape(&dy, &[3, 1]).unwrap();
    assert_eq!(f64s(&r), vec![0.0 + 1.0 + 6.0 + 7.0, 2.0 + 3.0 + 8.0 + 9.0, 4.0 + 5.0 + 10.0 + 11.0]);
    // f32 keeps its type.
    let r = sum_to_shape(&to_f32(&dy), &[2]).unwrap();
    assert_eq!(r.as_slice::<f32>().unwrap(), &[30.0, 36.0]);
}

#[test]
fn sum_to_shape_matches_expand_finite_differences() {
    let mut rng = Rng(1);
    for (xs, ys) in
        [(&[3usize, 1][..], &[2usize, 3, 4][..]), (&[1, 4], &[3, 4]), (&[2, 1, 3], &[2, 5, 3]), (&[4], &[2, 3, 4])]
    {
        let x = rand64(&mut rng, xs);
        let w = rng.vec(numel(ys));
        let want = numeric_grad(&x, &w, |x| f64s(&fwd("Expand", &[], &[x, &shape_t(ys)])[0]));
        let got = sum_to_shape(&t64(ys, w), xs).unwrap();
        assert_eq!(got.shape(), xs);
        assert_close(&f64s(&got), &want, 1e-8, &format!("SumToShape {ys:?}→{xs:?}"));
    }
}

#[test]
fn sum_to_shape_large_f32_matches_f64() {
    let mut rng = Rng(2);
    for (from, to) in [(&[300usize, 7, 64][..], &[7usize, 1][..]), (&[300, 7, 64], &[64]), (&[3, 7000, 5], &[3, 1, 5])]
    {
        let dy = rand64(&mut rng, from);
        let want = sum_to_shape(&dy, to).unwrap();
        let got = sum_to_shape(&to_f32(&dy), to).unwrap();
        assert_eq!(got.shape(), to);
        assert_close(&f64s(&got), &f64s(&want), 1e-5, &format!("SumToShape f32 {from:?}→{to:?}"));
    }
}

#[test]
fn sum_to_shape_refuses_bad_input() {
    let dy = t64(&[2, 3], vec![0.0; 6]);
    assert!(sum_to_shape(&dy, &[4]).is_err());
    assert!(sum_to_shape(&dy, &[2]).is_err());
    assert!(sum_to_shape(&dy, &[3, 2, 3]).is_err());
    let two_d = i64t(&[1, 1], vec![3]);
    assert!(grad("SumToShape", &[], &[Some(&dy), Some(&two_d)]).is_err());
    let neg = i64t(&[1], vec![-3]);
    assert!(grad("SumToShape", &[], &[Some(&dy), Some(&neg)]).is_err());
    let ints_dy = i64t(&[3], vec![1, 2, 3]);
    assert!(sum_to_shape(&ints_dy, &[3]).is_err());
    assert!(grad("SumToShape", &[], &[Some(&dy)]).is_err());
}

// ---------------------------------------------------------------------------------------------
// MatMulTrans

fn matmul_trans(a: &Tensor, b: &Tensor, ta: i64, tb: i64, fold: i64) -> Result<Tensor, KernelError> {
    let attrs = [int("transA", ta), int("transB", tb), int("fold", fold)];
    grad("MatMulTrans", &attrs, &[Some(a), Some(b)]).map(|mut v| v.remove(0))
}

/// Numpy matmul with the last two dims of `a`/`b` transposed when asked, by plain loops.
fn naive_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> (Vec<usize>, Vec<f64>) {
    let (av, bv) = (f64s(a), f64s(b));
    let (ash, bsh) = (a.shape(), b.shape());
    let (ar, ac) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (br, bc) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    let (abat, bbat) = (&ash[..ash.len() - 2], &bsh[..bsh.len() - 2]);
    let rank = abat.len().max(bbat.len());
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
    let (pa, pb) = (pad(abat), pad(bbat));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let mut out = Vec::new();
    for p in 0..numel(&batch) {
        // Batch index → offsets into a and b (broadcast dims read index 0).
        let (mut rem, mut oa, mut ob, mut sa, mut sb) = (p, 0, 0, 1, 1);
        for d in (0..rank).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            oa += if pa[d] == 1 { 0 } else { i * sa };
            ob += if pb[d] == 1 { 0 } else { i * sb };
            sa *= pa[d];
            sb *= pb[d];
        }
        for r in 0..m {
            for c in 0..n {
                let mut s = 0.0;
                for j in 0..k {
                    let x = if ta { av[oa * ar * ac + j * ac + r] } else { av[oa * ar * ac + r * ac + j] };
                    let y = if tb { bv[ob * br * bc + c * bc + j] } else { bv[ob * br * bc + j * bc + c] };
                    s += x * y;
                }
                out.push(s);
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

#[test]
fn matmul_trans_by_hand() {
    // aᵀ·b with a = [[1, 2], [3, 4]], b = I.
    let a = t64(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let eye = t64(&[2, 2], vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(f64s(&matmul_trans(&a, &eye, 1, 0, 0).unwrap()), vec![1.0, 3.0, 2.0, 4.0]);
    assert_eq!(f64s(&matmul_trans(&eye, &a, 0, 1, 0).unwrap()), vec![1.0, 3.0, 2.0, 4.0]);
    assert_eq!(f64s(&matmul_trans(&a, &a, 0, 0, 0).unwrap()), vec![7.0, 10.0, 15.0, 22.0]);
    // fold: Σ over rows of aᵀb = aᵀb for 2-D.
    assert_eq!(f64s(&matmul_trans(&a, &eye, 1, 0, 1).unwrap()), vec![1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn matmul_trans_all_flags_and_broadcasting_match_loops() {
    let mut rng = Rng(3);
    let (m, k, n) = (3, 4, 5);
    let cases: &[(&[usize], &[usize])] = &[(&[], &[]), (&[2], &[2]), (&[2, 1], &[3]), (&[1], &[4]), (&[], &[2, 3])];
    for &(abat, bbat) in cases {
        for ta in [0, 1] {
            for tb in [0, 1] {
                let mut ash = abat.to_vec();
                ash.extend(if ta == 1 { [k, m] } else { [m, k] });
                let mut bsh = bbat.to_vec();
                bsh.extend(if tb == 1 { [n, k] } else { [k, n] });
                let (a, b) = (rand64(&mut rng, &ash), rand64(&mut rng, &bsh));
                let (want_shape, want) = naive_matmul(&a, &b, ta == 1, tb == 1);
                let what = format!("MatMulTrans {ash:?}×{bsh:?} transA={ta} transB={tb}");
                let got = matmul_trans(&a, &b, ta, tb, 0).unwrap();
                assert_eq!(got.shape(), want_shape.as_slice(), "{what}");
                assert_close(&f64s(&got), &want, 1e-12, &what);
                let got = matmul_trans(&to_f32(&a), &to_f32(&b), ta, tb, 0).unwrap();
                assert_eq!(got.dtype(), DataType::Float);
                assert_close(&f64s(&got), &want, 1e-5, &format!("{what} f32"));
            }
        }
    }
}

#[test]
fn matmul_trans_large_batches_match_loops() {
    let mut rng = Rng(4);
    // Many small products (one per thread) and a few large ones (threads inside the GEMM).
    for (bat, m, k, n) in [(16usize, 8usize, 8usize, 8usize), (2, 70, 65, 66)] {
        for (ta, tb) in [(0, 1), (1, 0)] {
            let ash = if ta == 1 { [bat, k, m] } else { [bat, m, k] };
            let bsh = if tb == 1 { [bat, n, k] } else { [bat, k, n] };
            let (a, b) = (rand64(&mut rng, &ash), rand64(&mut rng, &bsh));
            let (_, want) = naive_matmul(&a, &b, ta == 1, tb == 1);
            let got = matmul_trans(&to_f32(&a), &to_f32(&b), ta, tb, 0).unwrap();
            assert_close(&f64s(&got), &want, 1e-4, &format!("MatMulTrans f32 {ash:?}×{bsh:?}"));
        }
    }
}

#[test]
fn matmul_trans_fold_sums_over_leading_dims() {
    let mut rng = Rng(5);
    for lead in [&[][..], &[2][..], &[2, 3][..]] {
        let (m, k, n) = (4, 3, 5);
        let mut ash = lead.to_vec();
        ash.extend([m, k]);
        let mut bsh = lead.to_vec();
        bsh.extend([m, n]);
        let (a, b) = (rand64(&mut rng, &ash), rand64(&mut rng, &bsh));
        // Σ over the leading dims of the batched aᵀb.
        let (_, batched) = naive_matmul(&a, &b, true, false);
        let mut want = vec![0.0; k * n];
        for chunk in batched.chunks(k * n) {
            want.iter_mut().zip(chunk).for_each(|(w, &c)| *w += c);
        }
        let got = matmul_trans(&a, &b, 1, 0, 1).unwrap();
        assert_eq!(got.shape(), &[k, n]);
        assert_close(&f64s(&got), &want, 1e-12, &format!("fold {ash:?}"));
        let got = matmul_trans(&to_f32(&a), &to_f32(&b), 1, 0, 1).unwrap();
        assert_close(&f64s(&got), &want, 1e-5, &format!("fold f32 {ash:?}"));
    }
    // A weight gradient big enough for the GEMM's threads: x [4, 64, 96], dy [4, 64, 80].
    let (x, dy) = (rand64(&mut rng, &[4, 64, 96]), rand64(&mut rng, &[4, 64, 80]));
    let (_, batched) = naive_matmul(&x, &dy, true, false);
    let mut want = vec![0.0; 96 * 80];
    for chunk in batched.chunks(96 * 80) {
        want.iter_mut().zip(chunk).for_each(|(w, &c)| *w += c);
    }
    let got = matmul_trans(&to_f32(&x), &to_f32(&dy), 1, 0, 1).unwrap();
    assert_close(&f64s(&got), &want, 1e-4, "fold f32 [4, 64, 96]");
}

#[test]
fn matmul_trans_matches_matmul_finite_differences() {
    // dA = dY·Bᵀ and dB = Aᵀ·dY (batched, B broadcast) against MatMul's finite differences.
    let mut rng = Rng(6);
    let (a, b) = (rand64(&mut rng, &[2, 3, 4]), rand64(&mut rng, &[4, 5]));
    let w = rng.vec(2 * 3 * 5);
    let dy = t64(&[2, 3, 5], w.clone());
    let da = numeric_grad(&a, &w, |a| f64s(&fwd("MatMul", &[], &[a, &b])[0]));
    assert_close(&f64s(&matmul_trans(&dy, &b, 0, 1, 0).unwrap()), &da, 1e-8, "dA");
    let db = numeric_grad(&b, &w, |b| f64s(&fwd("MatMul", &[], &[&a, b])[0]));
    assert_close(&f64s(&matmul_trans(&a, &dy, 1, 0, 1).unwrap()), &db, 1e-8, "dB (fold)");
}

#[test]
fn matmul_trans_refuses_bad_input() {
    let a = t64(&[2, 3], vec![0.0; 6]);
    let v = t64(&[3], vec![0.0; 3]);
    assert!(matmul_trans(&a, &v, 0, 0, 0).is_err(), "rank 1");
    assert!(matmul_trans(&a, &a, 0, 0, 0).is_err(), "inner dims");
    assert!(matmul_trans(&a, &a, 0, 1, 0).is_ok());
    assert!(matmul_trans(&a, &a, 2, 0, 0).is_err(), "flag 2");
    assert!(matmul_trans(&a, &a, 0, 1, 1).is_err(), "fold needs transA=1, transB=0");
    let b = t64(&[3, 2, 3], vec![0.0; 18]);
    assert!(matmul_trans(&b, &t64(&[2, 2], vec![0.0; 4]), 1, 0, 1).is_err(), "fold leading dims");
    assert!(matmul_trans(&a, &to_f32(&a), 0, 1, 0).is_err(), "types differ");
    let i = i64t(&[2, 2], vec![1, 2, 3, 4]);
    assert!(matmul_trans(&i, &i, 0, 0, 0).is_err(), "integers");
    let bad_batch = t64(&[3, 2, 3], vec![0.0; 18]);
    assert!(matmul_trans(&t64(&[2, 2, 3], vec![0.0; 12]), &bad_batch, 0, 1, 0).is_err(), "batch dims");
}

// ---------------------------------------------------------------------------------------------
// SoftmaxGrad

#[test]
fn softmax_grad_by_hand() {
    let y = t64(&[2], vec![0.5, 0.5]);
    let dy = t64(&[2], vec![1.0, 0.0]);
    let r = grad("SoftmaxGrad", &[], &[Some(&dy), Some(&y)]).unwrap();
    assert_eq!(f64s(&r[0]), vec![0.25, -0.25]);
}

#[test]
fn softmax_grad_matches_softmax_finite_differences() {
    let mut rng = Rng(7);
    for (shape, ax) in [(&[3usize, 5][..], -1i64), (&[3, 5], 0), (&[2, 3, 4], 1), (&[2, 3, 4], -1), (&[4], 0)] {
        let x = t64(shape, rng.vec(numel(shape)).iter().map(|v| 3.0 * v).collect());
        let w = rng.vec(numel(shape));
        let attrs = [int("axis", ax)];
        let want = numeric_grad(&x, &w, |x| f64s(&fwd("Softmax", &attrs, &[x])[0]));
        let y = fwd("Softmax", &attrs, &[&x]).remove(0);
        let got = grad("SoftmaxGrad", &attrs, &[Some(&t64(shape, w)), Some(&y)]).unwrap().remove(0);
        assert_close(&f64s(&got), &want, 1e-8, &format!("SoftmaxGrad {shape:?} axis {ax}"));
    }
}

#[test]
fn softmax_grad_large_f32_matches_f64() {
    let mut rng = Rng(8);
    for (shape, ax) in [(&[64usize, 1031][..], -1i64), (&[8, 100, 90], 1)] {
        let x = rand64(&mut rng, shape);
        let y = fwd("Softmax", &[int("axis", ax)], &[&x]).remove(0);
        let dy = rand64(&mut rng, shape);
        let want = grad("SoftmaxGrad", &[int("axis", ax)], &[Some(&dy), Some(&y)]).unwrap().remove(0);
        let got = grad("SoftmaxGrad", &[int("axis", ax)], &[Some(&to_f32(&dy)), Some(&to_f32(&y))]).unwrap().remove(0);
        assert_close(&f64s(&got), &f64s(&want), 1e-6, &format!("SoftmaxGrad f32 {shape:?}"));
    }
}

#[test]
fn softmax_grad_refuses_bad_input() {
    let a = t64(&[2, 3], vec![0.0; 6]);
    let b = t64(&[3, 2], vec![0.0; 6]);
    assert!(grad("SoftmaxGrad", &[], &[Some(&a), Some(&b)]).is_err());
    assert!(grad("SoftmaxGrad", &[], &[Some(&a), Some(&to_f32(&a))]).is_err());
    assert!(grad("SoftmaxGrad", &[int("axis", 2)], &[Some(&a), Some(&a)]).is_err());
    assert!(grad("SoftmaxGrad", &[], &[Some(&a)]).is_err());
}

// ---------------------------------------------------------------------------------------------
// LayerNormalizationGrad

#[test]
fn layer_norm_grad_matches_layer_normalization_finite_differences() {
    let mut rng = Rng(9);
    // (x shape, axis, scale/bias shape)
    let cases: &[(&[usize], i64, &[usize])] = &[
        (&[3, 6], -1, &[6]),
        (&[2, 3, 4], 1, &[3, 4]),
        (&[2, 3, 4], -2, &[1, 4]),
        (&[2, 3, 4], 1, &[4]),
        (&[5], 0, &[5]),
    ];
    for &(xs, ax, ss) in cases {
        let x = t64(xs, rng.vec(numel(xs)).iter().map(|v| 2.0 * v + 0.3).collect());
        let scale = t64(ss, rng.vec(numel(ss)).iter().map(|v| v + 1.5).collect());
        let bias = rand64(&mut rng, ss);
        let w = rng.vec(numel(xs));
        let attrs = [int("axis", ax), float("epsilon", 1e-3)];
        let y = |x: &Tensor, s: &Tensor, b: &Tensor| f64s(&fwd("LayerNormalization", &attrs, &[x, s, b])[0]);
        let dx = numeric_grad(&x, &w, |x| y(x, &scale, &bias));
        let ds = numeric_grad(&scale, &w, |s| y(&x, s, &bias));
        let db = numeric_grad(&bias, &w, |b| y(&x, &scale, b));
        let got = grad("LayerNormalizationGrad", &attrs, &[Some(&t64(xs, w)), Some(&x), Some(&scale)]).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[1].shape(), got[2].shape()), (ss, ss));
        let what = format!("LayerNormalizationGrad {xs:?} axis {ax} scale {ss:?}");
        assert_close(&f64s(&got[0]), &dx, 1e-8, &format!("{what} dx"));
        assert_close(&f64s(&got[1]), &ds, 1e-8, &format!("{what} dscale"));
        assert_close(&f64s(&got[2]), &db, 1e-8, &format!("{what} dbias"));
    }
}

#[test]
fn layer_norm_grad_large_f32_matches_f64() {
    let mut rng = Rng(10);
    let (rows, h) = (300, 768);
    let x = rand64(&mut rng, &[rows, h]);
    let scale = t64(&[h], rng.vec(h).iter().map(|v| v + 1.0).collect());
    let dy = rand64(&mut rng, &[rows, h]);
    let want = grad("LayerNormalizationGrad", &[], &[Some(&dy), Some(&x), Some(&scale)]).unwrap();
    let got =
        grad("LayerNormalizationGrad", &[], &[Some(&to_f32(&dy)), Some(&to_f32(&x)), Some(&to_f32(&scale))]).unwrap();
    for (k, name) in ["dx", "dscale", "dbias"].iter().enumerate() {
        assert_eq!(got[k].dtype(), DataType::Float);
        assert_close(&f64s(&got[k]), &f64s(&want[k]), 1e-4, &format!("LayerNormalizationGrad f32 {name}"));
    }
}

#[test]
fn layer_norm_grad_refuses_bad_input() {
    let x = t64(&[2, 3], vec![0.0; 6]);
    let s3 = t64(&[3], vec![1.0; 3]);
    let s2 = t64(&[2], vec![1.0; 2]);
    let g = |attrs: &[Attribute], ins: &[Option<&Tensor>]| grad("LayerNormalizationGrad", attrs, ins);
    assert!(g(&[], &[Some(&x), Some(&x), Some(&s3)]).is_ok());
    assert!(g(&[], &[Some(&x), Some(&x), Some(&s2)]).is_err(), "scale shape");
    assert!(g(&[], &[Some(&t64(&[3, 2], vec![0.0; 6])), Some(&x), Some(&s3)]).is_err(), "dy shape");
    assert!(g(&[], &[Some(&x), Some(&x), Some(&to_f32(&s3))]).is_err(), "scale type");
    assert!(g(&[int("axis", 2)], &[Some(&x), Some(&x), Some(&s3)]).is_err(), "axis");
    assert!(g(&[], &[Some(&x), Some(&x)]).is_err(), "scale missing");
}

// ---------------------------------------------------------------------------------------------
// GeluGrad

#[test]
fn gelu_grad_matches_gelu_finite_differences() {
    let mut rng = Rng(11);
    let x = t64(&[200], rng.vec(200).iter().map(|v| 5.0 * v).collect());
    let xv = f64s(&x);
    let ones = t64(&[200], vec![1.0; 200]);
    for mode in ["none", "tanh"] {
        let attrs = [string("approximate", mode)];
        // Elementwise: all elements perturbed at once.
        let h = 1e-5;
        let at = |d: f64| f64s(&fwd("Gelu", &attrs, &[&t64(&[200], xv.iter().map(|v| v + d).collect())])[0]);
        let (p, m) = (at(h), at(-h));
        let want: Vec<f64> = p.iter().zip(&m).map(|(a, b)| (a - b) / (2.0 * h)).collect();
        let got = grad("GeluGrad", &attrs, &[Some(&ones), Some(&x)]).unwrap().remove(0);
        assert_close(&f64s(&got), &want, 1e-9, &format!("GeluGrad {mode}"));
        // dy scales the derivative.
        let dy = rand64(&mut rng, &[200]);
        let scaled = grad("GeluGrad", &attrs, &[Some(&dy), Some(&x)]).unwrap().remove(0);
        let want: Vec<f64> = f64s(&got).iter().zip(f64s(&dy)).map(|(d, g)| d * g).collect();
        assert_close(&f64s(&scaled), &want, 1e-15, &format!("GeluGrad {mode} × dy"));
    }
    // Known values: Gelu'(0) = ½ in both forms.
    let zero = t64(&[1], vec![0.0]);
    let one = t64(&[1], vec![1.0]);
    assert_eq!(f64s(&grad("GeluGrad", &[], &[Some(&one), Some(&zero)]).unwrap()[0]), vec![0.5]);
}

#[test]
fn gelu_grad_large_f32_matches_f64() {
    let mut rng = Rng(12);
    let n = 100_000;
    let x = t64(&[n], rng.vec(n).iter().map(|v| 8.0 * v).collect());
    let dy = rand64(&mut rng, &[n]);
    for mode in ["none", "tanh"] {
        let attrs = [string("approximate", mode)];
        let want = grad("GeluGrad", &attrs, &[Some(&dy), Some(&x)]).unwrap().remove(0);
        let got = grad("GeluGrad", &attrs, &[Some(&to_f32(&dy)), Some(&to_f32(&x))]).unwrap().remove(0);
        assert_close(&f64s(&got), &f64s(&want), 1e-6, &format!("GeluGrad f32 {mode}"));
    }
}

#[test]
fn gelu_grad_refuses_bad_input() {
    let x = t64(&[3], vec![0.0; 3]);
    assert!(grad("GeluGrad", &[string("approximate", "cubic")], &[Some(&x), Some(&x)]).is_err());
    assert!(grad("GeluGrad", &[], &[Some(&t64(&[2], vec![0.0; 2])), Some(&x)]).is_err());
    assert!(grad("GeluGrad", &[], &[Some(&to_f32(&x)), Some(&x)]).is_err());
    let i = i64t(&[3], vec![0; 3]);
    assert!(grad("GeluGrad", &[], &[Some(&i), Some(&i)]).is_err());
}

// ---------------------------------------------------------------------------------------------
// ReduceGrad

fn reduce_grad(dy: &Tensor, x_shape: &[usize], attrs: &[Attribute]) -> Result<Tensor, KernelError> {
    grad("ReduceGrad", attrs, &[Some(dy), Some(&shape_t(x_shape))]).map(|mut v| v.remove(0))
}

#[test]
fn reduce_grad_by_hand() {
    // ReduceSum over axis 1 of [2, 3], keepdims=0: dy [2].
    let dy = t64(&[2], vec![1.0, 2.0]);
    let r = reduce_grad(&dy, &[2, 3], &[ints("axes", &[1]), int("keepdims", 0)]).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[2usize, 3][..], vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]));
    // ReduceMean over axis -2 with keepdims: dy [1, 3].
    let dy = t64(&[1, 3], vec![2.0, 4.0, 6.0]);
    let r = reduce_grad(&dy, &[2, 3], &[ints("axes", &[-2]), int("mean", 1)]).unwrap();
    assert_eq!(f64s(&r), vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    // All axes (absent or empty), mean: dy [] with keepdims=0.
    let dy = t64(&[], vec![6.0]);
    let r = reduce_grad(&dy, &[2, 3], &[int("keepdims", 0), int("mean", 1)]).unwrap();
    assert_eq!(f64s(&r), vec![1.0; 6]);
    let dy = t64(&[1, 1], vec![6.0]);
    let r = reduce_grad(&dy, &[2, 3], &[ints("axes", &[])]).unwrap();
    assert_eq!(f64s(&r), vec![6.0; 6]);
    // noop_with_empty_axes: the identity.
    let dy = t64(&[2, 3], (0..6).map(f64::from).collect());
    let r = reduce_grad(&dy, &[2, 3], &[int("noop_with_empty_axes", 1), int("mean", 1)]).unwrap();
    assert_eq!(r, dy);
}

#[test]
fn reduce_grad_matches_reduce_sum_and_mean_finite_differences() {
    let mut rng = Rng(13);
    let cases: &[(&[usize], &[i64], i64)] = &[
        (&[2, 3, 4], &[1], 1),
        (&[2, 3, 4], &[0, 2], 0),
        (&[2, 3, 4], &[-1], 0),
        (&[2, 3, 4], &[], 1),
        (&[2, 3, 4], &[], 0),
        (&[5, 1, 3], &[0, 1], 1),
    ];
    for &(xs, axes, keep) in cases {
        for (op, mean) in [("ReduceSum", 0), ("ReduceMean", 1)] {
            let x = rand64(&mut rng, xs);
            let axes_t = i64t(&[axes.len()], axes.to_vec());
            let fattrs = [int("keepdims", keep)];
            let y = fwd(op, &fattrs, &[&x, &axes_t]).remove(0);
            let w = rng.vec(y.numel());
            let want = numeric_grad(&x, &w, |x| f64s(&fwd(op, &fattrs, &[x, &axes_t])[0]));
            let attrs = [ints("axes", axes), int("keepdims", keep), int("mean", mean)];
            let got = reduce_grad(&t64(y.shape(), w), xs, &attrs).unwrap();
            assert_eq!(got.shape(), xs);
            assert_close(&f64s(&got), &want, 1e-8, &format!("ReduceGrad {op} {xs:?} axes {axes:?} keepdims {keep}"));
        }
    }
}

#[test]
fn reduce_grad_large_f32_matches_f64() {
    let mut rng = Rng(14);
    let dy = rand64(&mut rng, &[64, 1, 512]);
    let attrs = [ints("axes", &[1]), int("mean", 1)];
    let want = reduce_grad(&dy, &[64, 100, 512], &attrs).unwrap();
    let got = reduce_grad(&to_f32(&dy), &[64, 100, 512], &attrs).unwrap();
    assert_close(&f64s(&got), &f64s(&want), 1e-7, "ReduceGrad f32");
}

#[test]
fn reduce_grad_refuses_bad_input() {
    let dy = t64(&[2], vec![0.0; 2]);
    assert!(reduce_grad(&dy, &[2, 3], &[ints("axes", &[1])]).is_err(), "keepdims=1 needs [2, 1]");
    assert!(reduce_grad(&dy, &[2, 3], &[ints("axes", &[0]), int("keepdims", 0)]).is_err(), "wrong axis");
    assert!(reduce_grad(&dy, &[2, 3], &[ints("axes", &[2]), int("keepdims", 0)]).is_err(), "axis range");
    assert!(reduce_grad(&dy, &[2, 3], &[ints("axes", &[1, -1]), int("keepdims", 0)]).is_err(), "repeated");
    assert!(reduce_grad(&dy, &[2, 3], &[ints("axes", &[1]), int("keepdims", 3)]).is_err(), "flag");
    let bad_shape = i64t(&[1, 2], vec![2, 3]);
    assert!(grad("ReduceGrad", &[], &[Some(&dy), Some(&bad_shape)]).is_err(), "x_shape 2-D");
    let float_shape = t64(&[2], vec![2.0, 3.0]);
    assert!(grad("ReduceGrad", &[], &[Some(&dy), Some(&float_shape)]).is_err(), "x_shape float");
}

// ---------------------------------------------------------------------------------------------
// IndexMapGrad

/// The gradient of forward `op` with respect to input `input` by IndexMapGrad.
fn index_map_grad(
    op: &str,
    fwd_attrs: &[Attribute],
    fwd_inputs: &[Option<Tensor>],
    input: usize,
    output: usize,
    dy: &Tensor,
) -> Result<Tensor, KernelError> {
    let x_shape = shape_t(fwd_inputs[input].as_ref().unwrap().shape());
    let mut attrs =
        vec![string("op", op), int("input", input as i64), int("output", output as i64), int("fwd_opset", 21)];
    attrs.extend(fwd_attrs.iter().cloned());
    let mut ins: Vec<Option<&Tensor>> = vec![Some(dy), Some(&x_shape)];
    ins.extend(fwd_inputs.iter().enumerate().map(|(k, t)| if k == input { None } else { t.as_ref() }));
    grad("IndexMapGrad", &attrs, &ins).map(|mut v| v.remove(0))
}

/// IndexMapGrad against finite differences of the forward op, for each listed input and
/// output.
fn check_index_map(
    op: &str,
    attrs: &[Attribute],
    inputs: &[Option<Tensor>],
    wrt: &[usize],
    outputs: &[usize],
    rng: &mut Rng,
) {
    for &input in wrt {
        for &output in outputs {
            let run = |x: &Tensor| {
                let mut ins = inputs.to_vec();
                ins[input] = Some(x.clone());
                let outs = call("", op, attrs, 21, &refs(&ins)).unwrap_or_else(|e| panic!("{op}: {e}"));
                f64s(&outs[output])
            };
            let x = inputs[input].clone().unwrap();
            let y_len = run(&x).len();
            let y_shape = call("", op, attrs, 21, &refs(inputs)).unwrap()[output].shape().to_vec();
            let w = rng.vec(y_len);
            let want = numeric_grad(&x, &w, run);
            let got = index_map_grad(op, attrs, inputs, input, output, &t64(&y_shape, w)).unwrap();
            assert_eq!(got.shape(), x.shape());
            assert_close(&f64s(&got), &want, 1e-8, &format!("IndexMapGrad {op} input {input} output {output}"));
        }
    }
}

#[test]
fn index_map_grad_by_hand() {
    // Gather with repeated indices accumulates.
    let x = t64(&[3], vec![0.0; 3]);
    let idx = i64t(&[4], vec![2, 0, 2, -1]);
    let dy = t64(&[4], vec![1.0, 10.0, 100.0, 1000.0]);
    let r = index_map_grad("Gather", &[], &some(&[&x, &idx]), 0, 0, &dy).unwrap();
    assert_eq!(f64s(&r), vec![10.0, 0.0, 1101.0]);
    // Slice with a negative step: reversed back.
    let x = t64(&[4], vec![0.0; 4]);
    let (st, en, ax, sp) = (i64t(&[1], vec![-1]), i64t(&[1], vec![-5]), i64t(&[1], vec![0]), i64t(&[1], vec![-2]));
    let dy = t64(&[2], vec![1.0, 2.0]);
    let r = index_map_grad("Slice", &[], &some(&[&x, &st, &en, &ax, &sp]), 0, 0, &dy).unwrap();
    assert_eq!(f64s(&r), vec![0.0, 2.0, 0.0, 1.0]);
    // Pad without a constant: the padding takes no gradient (and does not land on element 0).
    let x = t64(&[2], vec![0.0; 2]);
    let pads = i64t(&[2], vec![1, 2]);
    let dy = t64(&[5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let r = index_map_grad("Pad", &[], &some(&[&x, &pads]), 0, 0, &dy).unwrap();
    assert_eq!(f64s(&r), vec![2.0, 3.0]);
    // Reshape: the same elements.
    let x = t64(&[2, 3], vec![0.0; 6]);
    let dy = t64(&[3, 2], (0..6).map(f64::from).collect());
    let r = index_map_grad("Reshape", &[], &some(&[&x, &i64t(&[2], vec![3, 2])]), 0, 0, &dy).unwrap();
    assert_eq!((r.shape(), f64s(&r)), (&[2usize, 3][..], (0..6).map(f64::from).collect()));
}

/// Float forward inputs given by their shape (`fwd_shapes`, as autodiff emits them: the other
/// operands of a Concat, Pad's constant) give the gradient their values give.
#[test]
fn index_map_grad_takes_float_inputs_by_shape() {
    let mut rng = Rng(16);
    let (a, b, c) = (rand64(&mut rng, &[2, 3]), rand64(&mut rng, &[2, 1]), rand64(&mut rng, &[2, 4]));
    let dy = rand64(&mut rng, &[2, 8]);
    let by_value = index_map_grad("Concat", &[int("axis", 1)], &some(&[&a, &b, &c]), 1, 0, &dy).unwrap();
    let (sa, sc) = (shape_t(a.shape()), shape_t(c.shape()));
    let shapes = [int("axis", 1), ints("fwd_shapes", &[0, 2])];
    let by_shape = index_map_grad("Concat", &shapes, &some(&[&sa, &b, &sc]), 1, 0, &dy).unwrap();
    assert_eq!(f64s(&by_shape), f64s(&by_value));
    assert_eq!(f64s(&by_value), (0..2).map(|r| f64s(&dy)[r * 8 + 3]).collect::<Vec<_>>());
    // Pad's constant (a scalar: shape []) only marks padding.
    let m = rand64(&mut rng, &[3, 4]);
    let (pads, value) = (i64t(&[4], vec![1, 2, 2, 1]), t64(&[], vec![0.7]));
    let dy = rand64(&mut rng, &[6, 7]);
    let by_value = index_map_grad("Pad", &[], &some(&[&m, &pads, &value]), 0, 0, &dy).unwrap();
    let scalar = shape_t(&[]);
    let by_shape = index_map_grad("Pad", &[ints("fwd_shapes", &[2])], &some(&[&m, &pads, &scalar]), 0, 0, &dy).unwrap();
    assert_eq!(f64s(&by_shape), f64s(&by_value));
    // A value where a shape is announced is an error, not a guess.
    let bad = index_map_grad("Concat", &shapes, &some(&[&a, &b, &c]), 1, 0, &rand64(&mut rng, &[2, 8]));
    assert!(bad.is_err());
}

#[test]
fn index_map_grad_matches_data_movement_finite_differences() {
    let mut rng = Rng(15);
    let x = rand64(&mut rng, &[3, 4, 5]);
    let i1 = |v: i64| i64t(&[1], vec![v]);
    // Slice with negative steps on two axes.
    let (st, en, ax, sp) =
        (i64t(&[2], vec![-1, 4]), i64t(&[2], vec![-10, 0]), i64t(&[2], vec![0, 2]), i64t(&[2], vec![-2, -1]));
    check_index_map("Slice", &[], &some(&[&x, &st, &en, &ax, &sp]), &[0], &[0], &mut rng);
    check_index_map("Slice", &[], &some(&[&x, &i1(1), &i1(3), &i1(1)]), &[0], &[0], &mut rng);
    // Gather with repeated and negative indices, axes 0 and 1.
    let idx = i64t(&[2, 3], vec![0, 2, 0, -1, 2, 2]);
    check_index_map("Gather", &[], &some(&[&x, &idx]), &[0], &[0], &mut rng);
    check_index_map("Gather", &[int("axis", 1)], &some(&[&x, &idx]), &[0], &[0], &mut rng);
    let idx_e = i64t(&[3, 2, 5], (0..30).map(|k| (k * 7 % 4) as i64).collect());
    check_index_map("GatherElements", &[int("axis", 1)], &some(&[&x, &idx_e]), &[0], &[0], &mut rng);
    let idx_nd = i64t(&[2, 2], vec![0, 1, 2, 1]);
    check_index_map("GatherND", &[], &some(&[&x, &idx_nd]), &[0], &[0], &mut rng);
    check_index_map("Transpose", &[ints("perm", &[2, 0, 1])], &some(&[&x]), &[0], &[0], &mut rng);
    // Concat: each input.
    let (a, b, c) = (rand64(&mut rng, &[2, 3]), rand64(&mut rng, &[2, 1]), rand64(&mut rng, &[2, 4]));
    check_index_map("Concat", &[int("axis", 1)], &some(&[&a, &b, &c]), &[0, 1, 2], &[0], &mut rng);
    let small = rand64(&mut rng, &[3, 1]);
    check_index_map("Expand", &[], &some(&[&small, &shape_t(&[2, 3, 4])]), &[0], &[0], &mut rng);
    check_index_map("Tile", &[], &some(&[&small, &i64t(&[2], vec![2, 3])]), &[0], &[0], &mut rng);
    // Pad: constant with a value, reflect, edge.
    let m = rand64(&mut rng, &[3, 4]);
    let pads = i64t(&[4], vec![1, 2, 2, 1]);
    let value = t64(&[], vec![0.7]);
    check_index_map("Pad", &[], &some(&[&m, &pads, &value]), &[0], &[0], &mut rng);
    check_index_map("Pad", &[string("mode", "reflect")], &some(&[&m, &pads]), &[0], &[0], &mut rng);
    check_index_map("Pad", &[string("mode", "edge")], &some(&[&m, &pads]), &[0], &[0], &mut rng);
    // Split: each output, sizes as input and equal parts.
    let sizes = i64t(&[3], vec![1, 3, 1]);
    check_index_map("Split", &[int("axis", 2)], &some(&[&x, &sizes]), &[0], &[0, 1, 2], &mut rng);
    check_index_map("Split", &[int("axis", 1), int("num_outputs", 2)], &some(&[&x]), &[0], &[0, 1], &mut rng);
    check_index_map("Squeeze", &[], &some(&[&small, &i64t(&[1], vec![1])]), &[0], &[0], &mut rng);
    check_index_map("Unsqueeze", &[], &some(&[&m, &i64t(&[1], vec![0])]), &[0], &[0], &mut rng);
    check_index_map("Flatten", &[int("axis", 2)], &some(&[&x]), &[0], &[0], &mut rng);
    check_index_map(
        "DepthToSpace",
        &[int("blocksize", 2)],
        &some(&[&rand64(&mut rng, &[1, 4, 2, 3])]),
        &[0],
        &[0],
        &mut rng,
    );
    // Where with respect to each branch (the other branch is "no source").
    let cond = Tensor::from_vec(vec![3, 4], (0..12).map(|k| k % 3 == 0).collect::<Vec<bool>>()).unwrap();
    let (p, q) = (rand64(&mut rng, &[3, 4]), rand64(&mut rng, &[4]));
    check_index_map("Where", &[], &[Some(cond), Some(p), Some(q)], &[1, 2], &[0], &mut rng);
}

#[test]
fn index_map_grad_split_without_sizes_infers_the_output_count() {
    // Split before opset 18 without sizes splits into as many parts as the node has outputs.
    let x = t64(&[6], vec![0.0; 6]);
    let dy = t64(&[2], vec![1.0, 2.0]);
    let x_shape = shape_t(&[6]);
    let attrs = [string("op", "Split"), int("input", 0), int("output", 1), int("fwd_opset", 13)];
    let r = grad("IndexMapGrad", &attrs, &[Some(&dy), Some(&x_shape), None]).unwrap().remove(0);
    assert_eq!(f64s(&r), vec![0.0, 0.0, 1.0, 2.0, 0.0, 0.0]);
    let mut explicit = attrs.to_vec();
    explicit.push(int("fwd_outputs", 3));
    let r2 = grad("IndexMapGrad", &explicit, &[Some(&dy), Some(&x_shape), None]).unwrap().remove(0);
    assert_eq!(r, r2);
    let _ = x;
}

#[test]
fn index_map_grad_f32_keeps_its_type() {
    let x = Tensor::from_vec(vec![2, 3], vec![0.0f32; 6]).unwrap();
    let dy = Tensor::from_vec(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let r = index_map_grad("Transpose", &[], &some(&[&x]), 0, 0, &dy).unwrap();
    assert_eq!(r.as_slice::<f32>().unwrap(), &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    // The general path (Concat: the other operand takes the rest).
    let other = Tensor::from_vec(vec![1, 3], vec![0.0f32; 3]).unwrap();
    let dy = Tensor::from_vec(vec![3, 3], (1..=9).map(|v| v as f32).collect::<Vec<f32>>()).unwrap();
    let r = index_map_grad("Concat", &[int("axis", 0)], &some(&[&x, &other]), 0, 0, &dy).unwrap();
    assert_eq!(r.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r = index_map_grad("Concat", &[int("axis", 0)], &some(&[&x, &other]), 1, 0, &dy).unwrap();
    assert_eq!(r.as_slice::<f32>().unwrap(), &[7.0, 8.0, 9.0]);
}

#[test]
fn index_map_grad_refuses_bad_input() {
    let x = t64(&[2, 3], vec![0.0; 6]);
    let dy = t64(&[3, 2], vec![0.0; 6]);
    // dy of the wrong shape for the forward output.
    assert!(index_map_grad("Transpose", &[], &some(&[&x]), 0, 0, &t64(&[2, 3], vec![0.0; 6])).is_err());
    // Not a data-movement op: Cast to float gives no int64 index map; Softmax refuses int64.
    let e = index_map_grad("Cast", &[int("to", 1)], &some(&[&x]), 0, 0, &t64(&[2, 3], vec![0.0; 6])).unwrap_err();
    assert!(e.to_string().contains("Cast"), "{e}");
    let e = index_map_grad("Softmax", &[], &some(&[&x]), 0, 0, &t64(&[2, 3], vec![0.0; 6])).unwrap_err();
    assert!(e.to_string().contains("Softmax"), "{e}");
    let e = index_map_grad("NoSuchOp", &[], &some(&[&x]), 0, 0, &dy).unwrap_err();
    assert!(e.to_string().contains("NoSuchOp"), "{e}");
    // Missing attributes.
    let x_shape = shape_t(&[2, 3]);
    assert!(grad("IndexMapGrad", &[int("input", 0), int("fwd_opset", 21)], &[Some(&dy), Some(&x_shape), None]).is_err());
    assert!(grad("IndexMapGrad", &[string("op", "Transpose"), int("input", 0)], &[Some(&dy), Some(&x_shape), None])
        .is_err());
    assert!(grad(
        "IndexMapGrad",
        &[string("op", "Transpose"), int("fwd_opset", 21)],
        &[Some(&dy), Some(&x_shape), None]
    )
    .is_err());
    // Gather: out-of-range indices, missing indices, wrong dy.
    let idx = i64t(&[1], vec![5]);
    assert!(index_map_grad("Gather", &[], &some(&[&x, &idx]), 0, 0, &t64(&[1, 3], vec![0.0; 3])).is_err());
    let attrs = [string("op", "Gather"), int("input", 0), int("fwd_opset", 21)];
    assert!(grad("IndexMapGrad", &attrs, &[Some(&dy), Some(&x_shape), None]).is_err());
    let idx = i64t(&[1], vec![1]);
    assert!(index_map_grad("Gather", &[], &some(&[&x, &idx]), 0, 0, &dy).is_err());
    // Reshape to a different element count; output index past the forward's outputs.
    assert!(index_map_grad("Reshape", &[], &some(&[&x, &i64t(&[1], vec![6])]), 0, 0, &t64(&[5], vec![0.0; 5])).is_err());
    assert!(index_map_grad("Transpose", &[], &some(&[&x]), 0, 3, &dy).is_err());
    // Integer dy.
    assert!(index_map_grad("Transpose", &[], &some(&[&x]), 0, 0, &i64t(&[3, 2], vec![0; 6])).is_err());
}

// ---------------------------------------------------------------------------------------------
// SoftmaxCrossEntropyLossGrad

/// The loss output of SoftmaxCrossEntropyLoss (opset 21).
fn sce_loss(attrs: &[Attribute], scores: &Tensor, labels: &Tensor, weights: Option<&Tensor>) -> Vec<f64> {
    let mut ins = vec![scores, labels];
    ins.extend(weights);
    f64s(&fwd("SoftmaxCrossEntropyLoss", attrs, &ins)[0])
}

#[test]
fn softmax_cross_entropy_loss_grad_by_hand() {
    // Two classes with equal scores: softmax ½, label 0 → (−½, ½), mean over 1 target.
    let scores = t64(&[1, 2], vec![0.0, 0.0]);
    let labels = i64t(&[1], vec![0]);
    let one = t64(&[], vec![1.0]);
    let r = grad("SoftmaxCrossEntropyLossGrad", &[], &[Some(&one), Some(&scores), Some(&labels)]).unwrap();
    assert_eq!(f64s(&r[0]), vec![-0.5, 0.5]);
    // Every target ignored: mean's divisor is 0, the gradient 0.
    let labels = i64t(&[1], vec![-100]);
    let r =
        grad("SoftmaxCrossEntropyLossGrad", &[int("ignore_index", -100)], &[Some(&one), Some(&scores), Some(&labels)])
            .unwrap();
    assert_eq!(f64s(&r[0]), vec![0.0, 0.0]);
}

#[test]
fn softmax_cross_entropy_loss_grad_matches_finite_differences() {
    let mut rng = Rng(16);
    for scores_shape in [&[4usize, 5][..], &[3, 4, 2][..]] {
        let (n, ch) = (scores_shape[0], scores_shape[1]);
        let tshape: Vec<usize> = std::iter::once(n).chain(scores_shape[2..].iter().copied()).collect();
        let scores = t64(scores_shape, rng.vec(numel(scores_shape)).iter().map(|v| 3.0 * v).collect());
        let labels_v: Vec<i64> = (0..numel(&tshape)).map(|_| rng.below(ch as u64) as i64).collect();
        // Some targets ignored (label 1 and the ignore index alike).
        let mut ignored = labels_v.clone();
        ignored[0] = -1;
        if ignored.len() > 3 {
            ignored[3] = -1;
        }
        let weights = t64(&[ch], rng.vec(ch).iter().map(|v| v + 1.5).collect());
        for reduction in ["mean", "sum", "none"] {
            for (ignore, labels_v) in [(None, &labels_v), (Some(-1i64), &ignored)] {
                for w in [None, Some(&weights)] {
                    for int32 in [false, true] {
                        let labels = if int32 {
                            Tensor::from_vec(tshape.clone(), labels_v.iter().map(|&l| l as i32).collect::<Vec<_>>())
                                .unwrap()
                        } else {
                            i64t(&tshape, labels_v.clone())
                        };
                        let mut attrs = vec![string("reduction", reduction)];
                        attrs.extend(ignore.map(|v| int("ignore_index", v)));
                        let dloss = if reduction == "none" {
                            rand64(&mut rng, &tshape)
                        } else {
                            t64(&[], vec![rng.unit() + 2.0])
                        };
                        let want = numeric_grad(&scores, &f64s(&dloss), |s| sce_loss(&attrs, s, &labels, w));
                        let mut ins = vec![Some(&dloss), Some(&scores), Some(&labels)];
                        ins.extend(w.map(Some));
                        let got = grad("SoftmaxCrossEntropyLossGrad", &attrs, &ins).unwrap().remove(0);
                        assert_eq!(got.shape(), scores_shape);
                        let what = format!(
                            "SCE grad {scores_shape:?} {reduction} ignore {ignore:?} weights {} int32 {int32}",
                            w.is_some()
                        );
                        assert_close(&f64s(&got), &want, 1e-8, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_cross_entropy_loss_grad_large_f32_matches_f64() {
    let mut rng = Rng(17);
    let (n, ch) = (16, 32000);
    let scores = t64(&[n, ch], rng.vec(n * ch).iter().map(|v| 10.0 * v).collect());
    let mut labels: Vec<i64> = (0..n).map(|_| rng.below(ch as u64) as i64).collect();
    labels[3] = -100;
    let labels = i64t(&[n], labels);
    let dloss = t64(&[], vec![1.0]);
    let attrs = [int("ignore_index", -100)];
    let want = grad("SoftmaxCrossEntropyLossGrad", &attrs, &[Some(&dloss), Some(&scores), Some(&labels)]).unwrap();
    let (d32, s32) = (to_f32(&dloss), to_f32(&scores));
    let start = std::time::Instant::now();
    let got = grad("SoftmaxCrossEntropyLossGrad", &attrs, &[Some(&d32), Some(&s32), Some(&labels)]).unwrap();
    eprintln!("SCE grad f32 [{n}, {ch}]: {:?}", start.elapsed());
    assert_eq!(got[0].dtype(), DataType::Float);
    assert_close(&f64s(&got[0]), &f64s(&want[0]), 1e-7, "SCE grad f32");
}

#[test]
fn softmax_cross_entropy_loss_grad_refuses_bad_input() {
    let scores = t64(&[2, 3], vec![0.0; 6]);
    let labels = i64t(&[2], vec![0, 2]);
    let one = t64(&[], vec![1.0]);
    let g = |attrs: &[Attribute], ins: &[Option<&Tensor>]| grad("SoftmaxCrossEntropyLossGrad", attrs, ins);
    assert!(g(&[], &[Some(&one), Some(&scores), Some(&labels)]).is_ok());
    assert!(g(&[], &[Some(&one), Some(&scores), Some(&i64t(&[2], vec![0, 3]))]).is_err(), "label range");
    assert!(g(&[], &[Some(&one), Some(&scores), Some(&i64t(&[3], vec![0, 1, 2]))]).is_err(), "labels shape");
    assert!(g(&[], &[Some(&one), Some(&t64(&[6], vec![0.0; 6])), Some(&labels)]).is_err(), "scores rank");
    assert!(g(&[], &[Some(&t64(&[2], vec![1.0; 2])), Some(&scores), Some(&labels)]).is_err(), "dloss for mean");
    assert!(g(&[string("reduction", "none")], &[Some(&one), Some(&scores), Some(&labels)]).is_err(), "dloss for none");
    assert!(g(&[string("reduction", "max")], &[Some(&one), Some(&scores), Some(&labels)]).is_err(), "reduction");
    assert!(g(&[], &[Some(&one), Some(&scores), Some(&labels), Some(&t64(&[2], vec![1.0; 2]))]).is_err(), "weights");
    assert!(g(&[int("to", 7)], &[Some(&one), Some(&scores), Some(&labels)]).is_err(), "`to` an integer type");
    // Mixed types compute in f32 (the plan's loss fusion feeds bf16 scores beside an f32
    // dloss); `to` picks the gradient's type.
    let mixed = g(&[int("to", 16)], &[Some(&to_f32(&one)), Some(&scores), Some(&labels)]).unwrap();
    assert_eq!(mixed[0].dtype(), DataType::BFloat16);
    let float_labels = t64(&[2], vec![0.0, 1.0]);
    assert!(g(&[], &[Some(&one), Some(&scores), Some(&float_labels)]).is_err(), "float labels");
}

#[test]
fn empty_tensors_do_not_panic() {
    let e = t64(&[0, 3], vec![]);
    assert_eq!(sum_to_shape(&e, &[3]).unwrap(), t64(&[3], vec![0.0; 3]));
    assert_eq!(matmul_trans(&e, &t64(&[3, 2], vec![0.0; 6]), 0, 0, 0).unwrap().shape(), &[0, 2]);
    assert_eq!(
        matmul_trans(&t64(&[0, 3], vec![]), &t64(&[0, 2], vec![]), 1, 0, 1).unwrap(),
        t64(&[3, 2], vec![0.0; 6])
    );
    assert_eq!(grad("SoftmaxGrad", &[], &[Some(&e), Some(&e)]).unwrap()[0].shape(), &[0, 3]);
    let s = t64(&[3], vec![1.0; 3]);
    let r = grad("LayerNormalizationGrad", &[], &[Some(&e), Some(&e), Some(&s)]).unwrap();
    assert_eq!((r[0].shape(), f64s(&r[1])), (&[0usize, 3][..], vec![0.0; 3]));
    assert_eq!(grad("GeluGrad", &[], &[Some(&e), Some(&e)]).unwrap()[0].shape(), &[0, 3]);
    assert_eq!(reduce_grad(&t64(&[1, 3], vec![1.0; 3]), &[0, 3], &[ints("axes", &[0])]).unwrap().shape(), &[0, 3]);
    let labels = i64t(&[0], vec![]);
    let r = grad("SoftmaxCrossEntropyLossGrad", &[], &[Some(&t64(&[], vec![1.0])), Some(&e), Some(&labels)]).unwrap();
    assert_eq!(r[0].shape(), &[0, 3]);
    let r = index_map_grad("Transpose", &[], &some(&[&e]), 0, 0, &t64(&[3, 0], vec![])).unwrap();
    assert_eq!(r.shape(), &[0, 3]);
}

/// Timings of the f32 training paths at training sizes (`--ignored --nocapture`).
#[test]
#[ignore]
fn bench_f32_paths() {
    let mut rng = Rng(99);
    let f32t = |rng: &mut Rng, shape: &[usize]| {
        Tensor::from_vec(shape.to_vec(), (0..numel(shape)).map(|_| rng.unit() as f32).collect::<Vec<f32>>()).unwrap()
    };
    let time = |what: &str, f: &dyn Fn()| {
        f();
        let start = std::time::Instant::now();
        for _ in 0..5 {
            f();
        }
        eprintln!("{what}: {:?}", start.elapsed() / 5);
    };
    let (rows, vocab) = (512, 32000);
    let scores = f32t(&mut rng, &[rows, vocab]);
    let labels = i64t(&[rows], (0..rows).map(|_| rng.below(vocab as u64) as i64).collect());
    let one = Tensor::scalar(1.0f32);
    time("Softmax [512, 32000] (forward, for scale)", &|| {
        fwd("Softmax", &[], &[&scores]);
    });
    time("SoftmaxCrossEntropyLossGrad [512, 32000]", &|| {
        grad("SoftmaxCrossEntropyLossGrad", &[], &[Some(&one), Some(&scores), Some(&labels)]).unwrap();
    });
    let y = fwd("Softmax", &[], &[&scores]).remove(0);
    time("SoftmaxGrad [512, 32000]", &|| {
        grad("SoftmaxGrad", &[], &[Some(&scores), Some(&y)]).unwrap();
    });
    let x = f32t(&mut rng, &[4096, 768]);
    let s = f32t(&mut rng, &[768]);
    time("LayerNormalizationGrad [4096, 768]", &|| {
        grad("LayerNormalizationGrad", &[], &[Some(&x), Some(&x), Some(&s)]).unwrap();
    });
    time("SumToShape [4096, 768] → [768]", &|| {
        grad("SumToShape", &[], &[Some(&x), Some(&shape_t(&[768]))]).unwrap();
    });
    let h = f32t(&mut rng, &[1024, 3072]);
    time("GeluGrad [1024, 3072] none", &|| {
        grad("GeluGrad", &[], &[Some(&h), Some(&h)]).unwrap();
    });
    time("GeluGrad [1024, 3072] tanh", &|| {
        grad("GeluGrad", &[string("approximate", "tanh")], &[Some(&h), Some(&h)]).unwrap();
    });
    let (a, b) = (f32t(&mut rng, &[8, 512, 768]), f32t(&mut rng, &[8, 512, 768]));
    time("MatMulTrans fold [8, 512, 768]ᵀ·[8, 512, 768]", &|| {
        grad("MatMulTrans", &[int("transA", 1), int("fold", 1)], &[Some(&a), Some(&b)]).unwrap();
    });
    time("MatMul [4096, 768]·[768, 768] (forward, for scale)", &|| {
        fwd("MatMul", &[], &[&a, &f32t(&mut Rng(1), &[768, 768])]);
    });
    let t = f32t(&mut rng, &[8, 128, 12, 64]);
    let dy = f32t(&mut rng, &[8, 12, 128, 64]);
    time("IndexMapGrad Transpose [8, 128, 12, 64]", &|| {
        index_map_grad("Transpose", &[ints("perm", &[0, 2, 1, 3])], &some(&[&t]), 0, 0, &dy).unwrap();
    });
}
