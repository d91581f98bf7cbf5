//! `ai.adaptc::SoftmaxAttention` and its gradient: the forward against the unfused ops it
//! replaces (MatMul, Add, Softmax, the NaN guard, MatMul) run through the same registry, over
//! several row blocks, broadcast bias and batch dims and fully masked rows; the gradient
//! against central finite differences in f64; the f32 path against f64; bad shapes refused.

use adaptc_ir::{Attribute, Node, OpKey};
use adaptc_runtime::error::KernelError;
use adaptc_runtime::ops::{Inputs, OpCtx};
use adaptc_runtime::registry::{Registry, ADAPTC_DOMAIN};
use adaptc_runtime::Tensor;

fn call(domain: &str, op: &str, attrs: &[Attribute], inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>, KernelError> {
    let names = (0..inputs.len()).map(|k| if inputs[k].is_some() { format!("i{k}") } else { String::new() }).collect();
    let mut node = Node::new(OpKey::new(domain, op), names, vec!["o0".into(), "o1".into(), "o2".into()]);
    for a in attrs {
        node = node.with_attr(a.clone());
    }
    let def = Registry::cpu().get(node.op()).unwrap_or_else(|| panic!("no kernel for {domain}::{op}"));
    (def.kernel)(&OpCtx { node: &node, opset: 21 }, &Inputs(inputs))
}

fn onnx(op: &str, inputs: &[&Tensor]) -> Tensor {
    let ins: Vec<Option<&Tensor>> = inputs.iter().map(|&t| Some(t)).collect();
    call("", op, &[], &ins).unwrap().remove(0)
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|_| self.uniform() * scale).collect::<Vec<f64>>()).unwrap()
    }
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.as_slice::<f64>().unwrap().to_vec()
}

fn fused(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, v: &Tensor, zero: bool) -> Vec<Tensor> {
    let attrs = [Attribute::int("masked_rows_zero", i64::from(zero))];
    call(ADAPTC_DOMAIN, "SoftmaxAttention", &attrs, &[Some(a), Some(b), bias, Some(v)]).unwrap()
}

/// The unfused graph: MatMul → Add → Softmax → (IsNaN → Where 0) → MatMul.
fn unfused(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, v: &Tensor, zero: bool) -> Tensor {
    let mut s = onnx("MatMul", &[a, b]);
    if let Some(bias) = bias {
        s = onnx("Add", &[&s, bias]);
    }
    let mut p = onnx("Softmax", &[&s]);
    if zero {
        let nan = onnx("IsNaN", &[&p]);
        let z = Tensor::from_vec(vec![], vec![0.0f64]).unwrap();
        p = onnx("Where", &[&nan, &z, &p]);
    }
    onnx("MatMul", &[&p, v])
}

fn assert_close(x: &[f64], y: &[f64], tol: f64, what: &str) {
    assert_eq!(x.len(), y.len(), "{what}: lengths");
    for (k, (p, q)) in x.iter().zip(y).enumerate() {
        let same = (p.is_nan() && q.is_nan()) || (p - q).abs() <= tol * (1.0 + q.abs());
        assert!(same, "{what}[{k}]: {p} vs {q}");
    }
}

/// A mask bias: 0 where kept, −∞ on the last `masked` keys of every row, and whole rows of
/// −∞ for query row `dead_row` (if any).
fn mask(shape: &[usize], masked: usize, dead_row: Option<usize>) -> Tensor {
    let (m, n) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let total: usize = shape.iter().product();
    let v: Vec<f64> = (0..total)
        .map(|e| {
            let (i, j) = ((e / n) % m, e % n);
            if j >= n - masked || Some(i) == dead_row {
                f64::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), v).unwrap()
}

#[test]
fn forward_matches_the_unfused_ops() {
    let mut rng = Rng(7);
    // 2×3 heads, 70 query rows (two row blocks), 9 keys, head dims 5 and 4.
    let (a, b, v) = (rng.tensor(&[2, 3, 70, 5], 1.0), rng.tensor(&[2, 3, 5, 9], 1.0), rng.tensor(&[2, 3, 9, 4], 1.0));
    for (bias, zero) in [
        (None, false),
        (Some(rng.tensor(&[2, 1, 70, 9], 2.0)), false),
        (Some(mask(&[2, 1, 1, 9], 3, None)), true),
        (Some(mask(&[2, 1, 70, 9], 2, Some(66))), true),
        (Some(mask(&[2, 1, 70, 9], 2, Some(3))), false),
    ] {
        let out = fused(&a, &b, bias.as_ref(), &v, zero);
        assert_eq!(out[0].shape(), &[2, 3, 70, 4]);
        assert_eq!(out[1].shape(), &[2, 3, 70]);
        let want = unfused(&a, &b, bias.as_ref(), &v, zero);
        assert_close(&f64s(&out[0]), &f64s(&want), 1e-12, "y");
    }
    // Batch dims that broadcast: one b and v shared by every head.
    let (b1, v1) = (rng.tensor(&[1, 5, 9], 1.0), rng.tensor(&[9, 4], 1.0));
    let v1 = onnx("Reshape", &[&v1, &Tensor::from_vec(vec![3], vec![1i64, 9, 4]).unwrap()]);
    let out = fused(&a, &b1, None, &v1, false);
    assert_close(&f64s(&out[0]), &f64s(&unfused(&a, &b1, None, &v1, false)), 1e-12, "broadcast y");
}

/// Σ y ⊙ w for a fixed random `w`: a scalar whose gradient the kernel must produce.
fn objective(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, v: &Tensor, w: &[f64], zero: bool) -> f64 {
    f64s(&fused(a, b, bias, v, zero)[0]).iter().zip(w).map(|(y, w)| y * w).sum()
}

fn check_gradient(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, v: &Tensor, zero: bool, seed: u64) {
    let mut rng = Rng(seed);
    let out = fused(a, b, bias, v, zero);
    let dy = rng.tensor(out[0].shape(), 1.0);
    let w = f64s(&dy);
    let attrs = [Attribute::int("masked_rows_zero", i64::from(zero))];
    let grads = call(
        ADAPTC_DOMAIN,
        "SoftmaxAttentionGrad",
        &attrs,
        &[Some(a), Some(b), bias, Some(v), Some(&out[0]), Some(&out[1]), Some(&dy)],
    )
    .unwrap();
    let eps = 1e-6;
    for (slot, (x, g)) in [a, b, v].into_iter().zip(&grads).enumerate() {
        assert_eq!(g.shape(), x.shape());
        let base = f64s(x);
        let numeric: Vec<f64> = (0..base.len())
            .map(|e| {
                let shifted = |d: f64| {
                    let mut vals = base.clone();
                    vals[e] += d;
                    let t = Tensor::from_vec(x.shape().to_vec(), vals).unwrap();
                    let mut ins = [a.clone(), b.clone(), v.clone()];
                    ins[slot] = t;
                    objective(&ins[0], &ins[1], bias, &ins[2], &w, zero)
                };
                (shifted(eps) - shifted(-eps)) / (2.0 * eps)
            })
            .collect();
        assert_close(&f64s(g), &numeric, 1e-6, ["da", "db", "dv"][slot]);
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let mut rng = Rng(11);
    let (a, b, v) = (rng.tensor(&[2, 67, 3], 1.0), rng.tensor(&[2, 3, 6], 1.0), rng.tensor(&[2, 6, 2], 1.0));
    check_gradient(&a, &b, None, &v, false, 1);
    check_gradient(&a, &b, Some(&mask(&[2, 67, 6], 2, Some(65))), &v, true, 2);
    check_gradient(&a, &b, Some(&rng.tensor(&[1, 6], 3.0)), &v, false, 3);
    // Shared (broadcast) b and v: their gradients sum over the batch.
    let (b1, v1) = (rng.tensor(&[1, 3, 6], 1.0), rng.tensor(&[1, 6, 2], 1.0));
    check_gradient(&a, &b1, None, &v1, false, 4);
}

#[test]
fn f32_follows_f64() {
    let mut rng = Rng(5);
    let (a, b, v) = (rng.tensor(&[3, 80, 8], 1.0), rng.tensor(&[3, 8, 20], 1.0), rng.tensor(&[3, 20, 8], 1.0));
    let bias = mask(&[3, 80, 20], 4, Some(10));
    let f32t = |t: &Tensor| adaptc_runtime::ops::cast::cast_to(t, adaptc_ir::DataType::Float).unwrap();
    let wide = fused(&a, &b, Some(&bias), &v, true);
    let narrow = fused(&f32t(&a), &f32t(&b), Some(&f32t(&bias)), &f32t(&v), true);
    let back: Vec<f64> = narrow[0].as_slice::<f32>().unwrap().iter().map(|&x| f64::from(x)).collect();
    assert_close(&back, &f64s(&wide[0]), 1e-5, "f32 y");
}

#[test]
fn bad_shapes_are_refused() {
    let mut rng = Rng(3);
    let (a, b, v) = (rng.tensor(&[2, 4, 3], 1.0), rng.tensor(&[2, 3, 5], 1.0), rng.tensor(&[2, 6, 2], 1.0));
    let err = call(ADAPTC_DOMAIN, "SoftmaxAttention", &[], &[Some(&a), Some(&b), None, Some(&v)]).unwrap_err();
    assert!(err.to_string().contains("do not chain"), "{err}");
    let v = rng.tensor(&[2, 5, 2], 1.0);
    let bias = rng.tensor(&[3, 4, 5], 1.0);
    let err = call(ADAPTC_DOMAIN, "SoftmaxAttention", &[], &[Some(&a), Some(&b), Some(&bias), Some(&v)]).unwrap_err();
    assert!(err.to_string().contains("does not broadcast"), "{err}");
}

/// `t` with every element rounded to bf16 (through f32, as the kernel rounds).
fn bf16(t: &Tensor) -> Tensor {
    let v: Vec<f64> = f64s(t).iter().map(|&x| f64::from(half::bf16::from_f32(x as f32).to_f32())).collect();
    Tensor::from_vec(t.shape().to_vec(), v).unwrap()
}

fn transpose(t: &Tensor) -> Tensor {
    let r = t.rank();
    let mut perm: Vec<i64> = (0..r as i64).collect();
    perm.swap(r - 2, r - 1);
    let node = Node::new(OpKey::onnx("Transpose"), vec!["i0".into()], vec!["o0".into()])
        .with_attr(Attribute::ints("perm", perm));
    let def = Registry::cpu().get(node.op()).unwrap();
    (def.kernel)(&OpCtx { node: &node, opset: 21 }, &Inputs(&[Some(t)])).unwrap().remove(0)
}

#[test]
fn bf16_products_round_exactly_the_products_operands() {
    let mut rng = Rng(21);
    let (a, b, v) = (rng.tensor(&[2, 40, 6], 1.0), rng.tensor(&[2, 6, 11], 1.0), rng.tensor(&[2, 11, 3], 1.0));
    let bias = mask(&[2, 40, 11], 2, Some(7));
    let attrs = [Attribute::int("masked_rows_zero", 1), Attribute::string("products", "bf16")];
    let ins = [Some(&a), Some(&b), Some(&bias), Some(&v)];
    let out = call(ADAPTC_DOMAIN, "SoftmaxAttention", &attrs, &ins).unwrap();
    // Forward: S = ⌊a⌉·⌊b⌉ + bias, P = softmax(S), y = ⌊P⌉·⌊v⌉ (⌊·⌉: rounded to bf16).
    let s = onnx("Add", &[&onnx("MatMul", &[&bf16(&a), &bf16(&b)]), &bias]);
    let p = onnx("Softmax", &[&s]);
    let nan = onnx("IsNaN", &[&p]);
    let p = onnx("Where", &[&nan, &Tensor::from_vec(vec![], vec![0.0f64]).unwrap(), &p]);
    let y = onnx("MatMul", &[&bf16(&p), &bf16(&v)]);
    assert_close(&f64s(&out[0]), &f64s(&y), 1e-12, "bf16-products y");
    let exact = fused(&a, &b, Some(&bias), &v, true);
    let gap = f64s(&out[0]).iter().zip(f64s(&exact[0])).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(gap > 1e-6 && gap < 5e-2, "bf16 products move y by {gap}");

    // Backward: dP = ⌊dy⌉·⌊v⌉ᵀ, dS = P ⊙ (dP − rowsum(dy ⊙ y)), da = ⌊dS⌉·⌊b⌉ᵀ,
    // db = ⌊a⌉ᵀ·⌊dS⌉, dv = ⌊P⌉ᵀ·⌊dy⌉.
    let dy = rng.tensor(out[0].shape(), 1.0);
    let grads = call(
        ADAPTC_DOMAIN,
        "SoftmaxAttentionGrad",
        &attrs,
        &[Some(&a), Some(&b), Some(&bias), Some(&v), Some(&out[0]), Some(&out[1]), Some(&dy)],
    )
    .unwrap();
    let dp = onnx("MatMul", &[&bf16(&dy), &transpose(&bf16(&v))]);
    let rows: Vec<f64> = f64s(&dy)
        .chunks(3)
        .zip(f64s(&out[0]).chunks(3))
        .map(|(g, y)| g.iter().zip(y).map(|(g, y)| g * y).sum())
        .collect();
    let delta = Tensor::from_vec(vec![2, 40, 1], rows).unwrap();
    let ds = onnx("Mul", &[&p, &onnx("Sub", &[&dp, &delta])]);
    let da = onnx("MatMul", &[&bf16(&ds), &transpose(&bf16(&b))]);
    let db = onnx("MatMul", &[&transpose(&bf16(&a)), &bf16(&ds)]);
    let dv = onnx("MatMul", &[&transpose(&bf16(&p)), &bf16(&dy)]);
    for (slot, want) in [da, db, dv].iter().enumerate() {
        assert_close(&f64s(&grads[slot]), &f64s(want), 1e-12, ["bf16 da", "bf16 db", "bf16 dv"][slot]);
    }
    let e = call(ADAPTC_DOMAIN, "SoftmaxAttention", &[Attribute::string("products", "f16")], &ins).unwrap_err();
    assert!(e.to_string().contains("products"), "{e}");
}

/// `t` converted to `to` (the registry's Cast).
fn cast(t: &Tensor, to: adaptc_ir::DataType) -> Tensor {
    let attrs = [Attribute::int("to", i64::from(to.code()))];
    call("", "Cast", &attrs, &[Some(t)]).unwrap().remove(0)
}

/// Operands of mixed types (bf16 queries, keys, values and output gradient as stored, beside
/// f32 bias, `y` and `lse`: what the plan's stored-value fusion hands the ops) give what the
/// f32 kernels give on the widened operands, and the outputs take the `to` types.
#[test]
fn mixed_operand_types_widen_and_outputs_take_the_to_types() {
    use adaptc_ir::DataType::{BFloat16, Float};
    let mut rng = Rng(5);
    let f32t = |t: &Tensor| cast(t, Float);
    let (a, b, v) = (rng.tensor(&[2, 9, 4], 1.0), rng.tensor(&[2, 4, 7], 1.0), rng.tensor(&[2, 7, 3], 1.0));
    let (a, b, v) = (cast(&a, BFloat16), cast(&b, BFloat16), cast(&v, BFloat16));
    let bias = f32t(&mask(&[2, 9, 7], 2, Some(3)));
    let base = [Attribute::int("masked_rows_zero", 1), Attribute::string("products", "bf16")];
    let with_to = |codes: Vec<i64>| [base[0].clone(), base[1].clone(), Attribute::ints("to", codes)];
    let wide = call(
        ADAPTC_DOMAIN,
        "SoftmaxAttention",
        &base,
        &[Some(&f32t(&a)), Some(&f32t(&b)), Some(&bias), Some(&f32t(&v))],
    )
    .unwrap();
    let mixed =
        call(ADAPTC_DOMAIN, "SoftmaxAttention", &with_to(vec![1]), &[Some(&a), Some(&b), Some(&bias), Some(&v)])
            .unwrap();
    assert_eq!((mixed[0].dtype(), mixed[1].dtype()), (Float, Float));
    assert_eq!(mixed[0], wide[0]);
    assert_eq!(mixed[1], wide[1]);

    let dy = cast(&rng.tensor(&[2, 9, 3], 1.0), BFloat16);
    let (y, lse) = (&wide[0], &wide[1]);
    let grads = |attrs: &[Attribute], a: &Tensor, b: &Tensor, v: &Tensor, dy: &Tensor| {
        let ins = [Some(a), Some(b), Some(&bias), Some(v), Some(y), Some(lse), Some(dy)];
        call(ADAPTC_DOMAIN, "SoftmaxAttentionGrad", attrs, &ins)
    };
    let want = grads(&base, &f32t(&a), &f32t(&b), &f32t(&v), &f32t(&dy)).unwrap();
    let got = grads(&with_to(vec![16, 1, 16]), &a, &b, &v, &dy).unwrap();
    assert_eq!([got[0].dtype(), got[1].dtype(), got[2].dtype()], [BFloat16, Float, BFloat16]);
    assert_eq!(got[0], cast(&want[0], BFloat16));
    assert_eq!(got[1], want[1]);
    assert_eq!(got[2], cast(&want[2], BFloat16));
    // Without `to`, mixed operands give f32 gradients; a `to` of the wrong length or type is
    // refused.
    let plain = grads(&base, &a, &b, &v, &dy).unwrap();
    assert_eq!(plain[0], want[0]);
    assert!(grads(&with_to(vec![16, 16]), &a, &b, &v, &dy).is_err());
    assert!(grads(&with_to(vec![16, 16, 7]), &a, &b, &v, &dy).is_err());
}
