//! The lowering passes: `specialize-shapes`, `fold-constants` on declared shapes, and
//! `decompose` (golden dumps, numbers before/after, the nodes and options they refuse).

mod common;

use std::collections::HashMap;
use std::path::Path;

use adaptc_ir::{onnx, Attribute, DataType, Dim, Graph, Model, Tensor, TypeInfo, ValueInfo};
use adaptc_passes::{PassManager, Registry};
use common::*;

fn sym_input(name: &str, dtype: DataType, dims: &[&str]) -> ValueInfo {
    let dims = dims
        .iter()
        .map(|d| match d.parse::<i64>() {
            Ok(n) => Dim::Known(n),
            Err(_) if *d == "?" => Dim::Unknown,
            Err(_) => Dim::Symbol(d.to_string()),
        })
        .collect();
    ValueInfo::tensor(name, dtype, dims)
}

fn dims_of(v: &ValueInfo) -> Vec<Dim> {
    v.ty.as_ref().and_then(TypeInfo::dims).unwrap()
}

/// Runs a pipeline that must fail; returns the error text.
fn run_err(pipeline: &str, model: &mut Model) -> String {
    let before = adaptc_ir::dump(model);
    let manager = PassManager::new(&Registry::builtin(), pipeline).unwrap();
    let e = manager.run(model).err().unwrap_or_else(|| panic!("{pipeline} succeeded"));
    assert_eq!(adaptc_ir::dump(model), before, "a failed pass changed the model");
    e.to_string()
}

fn build_err(pipeline: &str) -> String {
    match PassManager::new(&Registry::builtin(), pipeline) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{pipeline} built"),
    }
}

// ----- specialize-shapes and Shape folding ------------------------------------------------------

/// `x: f32[batch, seq]`, `h = Relu(x)` with a declared `f32[batch, seq, 1]`-like value_info,
/// then the exporter's pattern: `Shape(x) → Gather → Unsqueeze → Concat → Reshape`.
fn exporter_like() -> Model {
    model(17, |g| {
        g.inputs.push(sym_input("x", DataType::Float, &["batch", "seq"]));
        g.inputs.push(sym_input("mask", DataType::Int64, &["batch", "seq"]));
        g.add_initializer(i64s("one", &[], &[1])).unwrap();
        g.add_initializer(i64s("axes", &[1], &[0])).unwrap();
        g.add_initializer(i64s("minus1", &[1], &[-1])).unwrap();
        g.add_node(node("Relu", &["x"], &["h"]).named("relu")).unwrap();
        g.value_info.push(sym_input("h", DataType::Float, &["batch", "seq"]));
        g.add_node(node("Shape", &["h"], &["s"]).named("shape")).unwrap();
        g.add_node(node_with("Gather", &["s", "one"], &["seq_len"], vec![Attribute::int("axis", 0)])).unwrap();
        g.add_node(node("Unsqueeze", &["seq_len", "axes"], &["seq_1"])).unwrap();
        g.add_node(node_with("Concat", &["minus1", "seq_1"], &["shape2"], vec![Attribute::int("axis", 0)])).unwrap();
        g.add_node(node("Reshape", &["h", "shape2"], &["y"]).named("reshape")).unwrap();
        g.outputs.push(sym_input("y", DataType::Float, &["batch", "seq"]));
    })
}

#[test]
fn specialize_shapes_then_fold_turns_the_shape_chain_into_constants() {
    let mut m = exporter_like();
    // Without concrete shapes nothing folds.
    assert!(!run("fold-constants", &mut m).changed());

    let report = run("specialize-shapes{dims=batch:2,seq:3}", &mut m);
    assert!(report.changed());
    assert_eq!(stat(&report, "specialize.dims_set"), 8);
    assert_eq!(stat(&report, "specialize.values_retyped"), 4);
    assert!(report.runs[0].notes.is_empty(), "{:?}", report.runs[0].notes);
    assert_eq!(dims_of(&m.graph.value_info[0]), vec![Dim::Known(2), Dim::Known(3)]);

    let report = run("fold-constants,dce", &mut m);
    assert_eq!(stat(&report, "fold.nodes_folded"), 4);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %x: f32[2, 3]
  input %mask: i64[2, 3]
  init %shape2: i64[2]
  %h = Relu(%x)  # relu
  %y = Reshape(%h, %shape2)  # reshape
  output %y: f32[2, 3]
}
",
    );
    assert_eq!(m.graph.initializer("shape2").unwrap().to_i64().unwrap(), vec![-1, 3]);
    // Idempotent.
    assert!(!run("specialize-shapes{dims=batch:2,seq:3}", &mut m).changed());
}

#[test]
fn specialize_shapes_takes_whole_input_shapes_and_binds_their_symbols() {
    let mut m = exporter_like();
    // `input=x:2x5` binds batch=2 and seq=5 everywhere; a quoted `sym=value` works too.
    let report = run("specialize-shapes{inputs=x:2x5 dims=\"batch=2\",unused:7}", &mut m);
    assert_eq!(dims_of(&m.graph.inputs[1]), vec![Dim::Known(2), Dim::Known(5)]);
    assert_eq!(dims_of(&m.graph.outputs[0]), vec![Dim::Known(2), Dim::Known(5)]);
    let notes = &report.runs[0].notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("symbol `unused` does not appear"), "{notes:?}");

    // An unnamed dimension becomes concrete only through `inputs`; free ones are noted.
    let mut m = model(17, |g| {
        g.inputs.push(sym_input("a", DataType::Float, &["?", "4"]));
        g.add_node(node("Shape", &["a"], &["s"])).unwrap();
        g.add_node(node("Identity", &["s"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    let report = run("specialize-shapes{dims=batch:2}", &mut m);
    assert!(!report.changed());
    assert!(report.runs[0].notes.iter().any(|n| n.contains("input `a` still has free dimensions: ?")));
    run("specialize-shapes{inputs=a:3x4},fold-constants", &mut m);
    assert_eq!(m.graph.initializer("s").unwrap().to_i64().unwrap(), vec![3, 4]);
}

#[test]
fn specialize_shapes_refuses_contradictions_and_changes_nothing() {
    let e = run_err("specialize-shapes{inputs=nope:2x3}", &mut exporter_like());
    assert_eq!(e, "pass `specialize-shapes` failed: `inputs` names `nope`, which is not a graph input (x, mask)");
    let e = run_err("specialize-shapes{inputs=x:2x3x4}", &mut exporter_like());
    assert!(e.contains("input `x` has rank 2 ([batch, seq]), but `inputs` gives 3 dimensions"), "{e}");
    let e = run_err("specialize-shapes{inputs=x:2x3 dims=batch:4}", &mut exporter_like());
    assert!(e.contains("symbol `batch` would be both 4 and 2"), "{e}");
    let mut m = model(17, |g| {
        g.inputs.push(sym_input("a", DataType::Float, &["2", "n"]));
        g.add_node(node("Relu", &["a"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    let e = run_err("specialize-shapes{inputs=a:3x4}", &mut m);
    assert!(e.contains("input `a` has 2 in dimension 0, but `inputs` gives 3"), "{e}");

    // Malformed option text fails before anything runs.
    let e = build_err("specialize-shapes{dims=batch}");
    assert_eq!(e, "pass `specialize-shapes`: option `dims`: `batch` is not `symbol:value`");
    let e = build_err("specialize-shapes{dims=batch:-1}");
    assert!(e.contains("`-1` is not a non-negative integer"), "{e}");
    let e = build_err("specialize-shapes{inputs=x:2xq}");
    assert!(e.contains("option `inputs`: `x:2xq`: `q` is not a non-negative integer"), "{e}");
    let e = build_err("specialize-shapes{dims=a:1,a:2}");
    assert!(e.contains("symbol `a` is given twice"), "{e}");
}

#[test]
fn shape_folds_from_declared_types_only_when_every_dimension_is_known() {
    let shape_model = |dims: &[&str], attrs: Vec<Attribute>, opset: i64| {
        model(opset, |g| {
            g.inputs.push(sym_input("x", DataType::Float, dims));
            g.add_node(node_with("Shape", &["x"], &["s"], attrs).named("shape")).unwrap();
            g.add_node(node("Identity", &["s"], &["y"])).unwrap();
            g.outputs.push(output("y"));
        })
    };
    let mut m = shape_model(&["2", "3", "4"], vec![], 17);
    assert_eq!(stat(&run("fold-constants", &mut m), "fold.nodes_folded"), 1);
    assert_eq!(m.graph.initializer("s").unwrap().to_i64().unwrap(), vec![2, 3, 4]);
    // start/end (opset 15).
    let mut m = shape_model(&["2", "3", "4"], vec![Attribute::int("start", 1), Attribute::int("end", -1)], 17);
    run("fold-constants", &mut m);
    assert_eq!(m.graph.initializer("s").unwrap().to_i64().unwrap(), vec![3]);
    // A scalar's shape is empty.
    let mut m = shape_model(&[], vec![], 17);
    run("fold-constants", &mut m);
    assert_eq!(m.graph.initializer("s").unwrap().dims(), &[0]);
    // Symbolic or unnamed dimensions, or no declared shape: left alone.
    for dims in [&["2", "n"][..], &["?", "3"][..]] {
        let mut m = shape_model(dims, vec![], 17);
        assert!(!run("fold-constants", &mut m).changed(), "{dims:?}");
    }
    let mut m = model(17, |g| {
        g.inputs.push(ValueInfo::new("x", Some(TypeInfo::tensor(DataType::Float, None))));
        g.add_node(node("Shape", &["x"], &["s"])).unwrap();
        g.add_node(node("Identity", &["s"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    });
    assert!(!run("fold-constants", &mut m).changed());
    // A Shape producing a graph output stays a node.
    let mut m = model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_node(node("Shape", &["x"], &["s"])).unwrap();
        g.outputs.push(output("s"));
    });
    assert!(!run("fold-constants", &mut m).changed());
}

// ----- decompose: Gelu --------------------------------------------------------------------------

fn gelu_model(approximate: Option<&str>, typed: bool) -> Model {
    model(20, |g| {
        g.inputs.push(if typed { f32_input("x", &[7]) } else { ValueInfo::new("x", None) });
        let attrs = approximate.map(|a| vec![Attribute::string("approximate", a)]).unwrap_or_default();
        g.add_node(node_with("Gelu", &["x"], &["g"], attrs).named("gelu")).unwrap();
        g.add_node(node("Neg", &["g"], &["y"]).named("neg")).unwrap();
        g.outputs.push(output("y"));
    })
}

#[test]
fn gelu_becomes_its_erf_formula() {
    let mut m = gelu_model(Some("none"), true);
    let report = run("decompose", &mut m);
    assert_eq!(stat(&report, "decompose.gelu"), 1);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=20]
graph g {
  input %x: f32[7]
  init %gelu/half: f32[]
  init %gelu/one: f32[]
  init %gelu/rsqrt2: f32[]
  %gelu/scaled = Mul(%x, %gelu/rsqrt2)  # gelu/scaled/Mul
  %gelu/erf = Erf(%gelu/scaled)  # gelu/erf/Erf
  %gelu/plus1 = Add(%gelu/erf, %gelu/one)  # gelu/plus1/Add
  %gelu/x_times = Mul(%x, %gelu/plus1)  # gelu/x_times/Mul
  %g = Mul(%gelu/x_times, %gelu/half)  # gelu/half_of/Mul
  %y = Neg(%g)  # neg
  output %y: ?
}
",
    );
    let tagged = m.graph.nodes().filter(|(_, n)| n.metadata.get("adaptc.pass") == Some("decompose")).count();
    assert_eq!(tagged, 5);
    assert!(!run("decompose", &mut m).changed());
}

#[test]
fn gelu_decomposition_computes_gelu() {
    let xs = [-3.0f32, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0];
    // Φ at 0.5, 1, 2 (standard normal CDF), to check the test's own erf.
    let known = [(0.5, 0.6914624612740131), (1.0, 0.8413447460685429), (2.0, 0.9772498680518208)];
    for (x, phi) in known {
        assert!((0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2)) - phi).abs() < 1e-12);
    }
    for typed in [true, false] {
        let mut m = gelu_model(None, typed);
        run("decompose", &mut m);
        let got = eval(&m.graph, "g", &xs);
        for (&x, g) in xs.iter().zip(got) {
            let x = f64::from(x);
            let want = 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2));
            assert!((g - want).abs() < 1e-6, "gelu({x}) = {g}, want {want} (typed {typed})");
        }
        let mut m = gelu_model(Some("tanh"), typed);
        run("decompose", &mut m);
        let got = eval(&m.graph, "g", &xs);
        let k = (2.0 / std::f64::consts::PI).sqrt();
        for (&x, g) in xs.iter().zip(got) {
            let x = f64::from(x);
            let want = 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh());
            assert!((g - want).abs() < 1e-6, "gelu_tanh({x}) = {g}, want {want} (typed {typed})");
        }
    }
}

#[test]
fn gelu_of_unknown_type_casts_its_constants_like_x() {
    let mut m = gelu_model(Some("tanh"), false);
    run("decompose", &mut m);
    let dump = adaptc_ir::dump(&m);
    assert!(dump.contains("%gelu/half = CastLike(%gelu/half_f32, %x)  # gelu/half/CastLike"), "{dump}");
    assert!(dump.contains("%gelu/tanh = Tanh(%gelu/scaled)"), "{dump}");
    assert_eq!(m.graph.nodes().filter(|(_, n)| n.op().is("CastLike")).count(), 4);
}

#[test]
fn decompose_leaves_what_it_cannot_rewrite_and_says_why() {
    let mut m = gelu_model(Some("erf"), true);
    let before = adaptc_ir::dump(&m);
    let report = run("decompose", &mut m);
    assert!(!report.changed());
    assert_eq!(adaptc_ir::dump(&m), before);
    assert_eq!(stat(&report, "decompose.skipped"), 1);
    assert_eq!(report.runs[0].notes, vec!["decompose: left `gelu` (Gelu) alone: unknown approximate=\"erf\""]);
    // Only the ops asked for.
    let mut m = gelu_model(None, true);
    assert!(!run("decompose{ops=GatherND}", &mut m).changed());

    let e = build_err("decompose{ops=Gelu,Softmax}");
    assert_eq!(e, "pass `decompose`: option `ops`: cannot decompose `Softmax`; supported: Gelu, GatherND");
    let e = build_err("decompose{ops=gelu}");
    assert!(e.contains("did you mean `Gelu`?"), "{e}");
}

// ----- decompose: GatherND ----------------------------------------------------------------------

/// `y = GatherND(data, idx)` feeding an Identity (so `y` can fold); data is a constant or an
/// input of the given dims.
fn gather_nd_model(data: Tensor, constant_data: bool, indices: Tensor, batch_dims: i64) -> Model {
    model(17, |g| {
        if constant_data {
            g.add_initializer(data).unwrap();
        } else {
            let dims = data.dims().iter().map(|&d| Dim::Known(d as i64)).collect();
            g.inputs.push(ValueInfo::tensor("data", data.dtype(), dims));
        }
        g.add_initializer(indices).unwrap();
        let attrs = if batch_dims == 0 { vec![] } else { vec![Attribute::int("batch_dims", batch_dims)] };
        g.add_node(node_with("GatherND", &["data", "idx"], &["y"], attrs).named("gnd")).unwrap();
        g.add_node(node("Identity", &["y"], &["out"])).unwrap();
        g.outputs.push(output("out"));
    })
}

/// GatherND folded directly, and decomposed then folded: the same tensor.
fn same_as_folded(data: Tensor, indices: Tensor, batch_dims: i64) {
    let mut direct = gather_nd_model(data.clone(), true, indices.clone(), batch_dims);
    assert_eq!(stat(&run("fold-constants", &mut direct), "fold.nodes_folded"), 1);
    let want = direct.graph.initializer("y").unwrap().clone();

    let mut lowered = gather_nd_model(data, true, indices, batch_dims);
    let report = run("decompose,fold-constants,dce", &mut lowered);
    assert_eq!(stat(&report, "decompose.gather_nd"), 1, "{:?}", report.runs[0].notes);
    assert_eq!(stat(&report, "fold.nodes_folded"), 2);
    let got = lowered.graph.initializer("y").unwrap();
    assert_eq!((got.dtype(), got.dims()), (want.dtype(), want.dims()));
    assert_eq!(got.bytes().unwrap(), want.bytes().unwrap());
}

#[test]
fn gather_nd_decomposition_equals_gather_nd() {
    let iota = |n: usize| (0..n as i64).collect::<Vec<_>>();
    let iota_f = |n: usize| (0..n).map(|i| i as f32 * 0.5 - 3.0).collect::<Vec<_>>();
    // Full tuples (elements), short tuples (slices), negative indices, int32 indices.
    same_as_folded(i64s("data", &[2, 3], &iota(6)), i64s("idx", &[2, 2], &[0, 2, 1, -1]), 0);
    same_as_folded(f32s("data", &[2, 3, 4], &iota_f(24)), i64s("idx", &[3, 1], &[1, 0, -1]), 0);
    same_as_folded(f32s("data", &[2, 3, 4], &iota_f(24)), i64s("idx", &[2, 2, 2], &[0, 1, 1, 2, 1, 0, 0, -3]), 0);
    same_as_folded(f32s("data", &[4, 2], &iota_f(8)), i32s("idx", &[3, 1], &[3, -4, 2]), 0);
    // batch_dims = 1 and 2.
    same_as_folded(i64s("data", &[2, 2, 3], &iota(12)), i64s("idx", &[2, 2, 2], &[0, 2, 1, -1, 1, 0, 0, 1]), 1);
    same_as_folded(f32s("data", &[2, 3, 4], &iota_f(24)), i64s("idx", &[2, 1], &[2, 0]), 1);
    same_as_folded(f32s("data", &[2, 3, 4, 2], &iota_f(48)), i64s("idx", &[2, 3, 1], &[3, 0, 1, 2, 2, 0]), 2);
    // The exporter's mask pattern: a bool mask indexed per batch row.
    let mask: Vec<bool> = (0..2 * 5).map(|i| i % 3 != 0).collect();
    same_as_folded(bools("data", &[2, 1, 5], &mask), i64s("idx", &[2, 1], &[0, 1]), 0);
}

#[test]
fn gather_nd_on_a_runtime_value_becomes_reshape_and_gather() {
    let mut m = gather_nd_model(f32s("data", &[2, 3, 4], &[0.0; 24]), false, i64s("idx", &[2, 2], &[0, 1, 1, -1]), 0);
    let report = run("decompose", &mut m);
    assert_eq!(stat(&report, "decompose.gather_nd"), 1);
    assert_dump(
        &m,
        "
model ir_version=10 opsets=[ai.onnx=17]
graph g {
  input %data: f32[2, 3, 4]
  init %idx: i64[2, 2]
  init %gnd/flat_indices: i64[2]
  init %gnd/shape: i64[2]
  %gnd/rows = Reshape(%data, %gnd/shape)  # gnd/rows/Reshape
  %y = Gather(%gnd/rows, %gnd/flat_indices) {axis=0}  # gnd/gather/Gather
  %out = Identity(%y)
  output %out: ?
}
",
    );
    assert_eq!(m.graph.initializer("gnd/flat_indices").unwrap().to_i64().unwrap(), vec![1, 5]);
    assert_eq!(m.graph.initializer("gnd/shape").unwrap().to_i64().unwrap(), vec![6, 4]);

    // Inner dimensions not known: they come from Shape(data, start=k) at run time.
    let mut m = model(17, |g| {
        g.inputs.push(sym_input("data", DataType::Float, &["2", "3", "n"]));
        g.add_initializer(i64s("idx", &[1, 2], &[1, 2])).unwrap();
        g.add_node(node("GatherND", &["data", "idx"], &["y"]).named("gnd")).unwrap();
        g.outputs.push(output("y"));
    });
    run("decompose", &mut m);
    let dump = adaptc_ir::dump(&m);
    assert!(dump.contains("%gnd/inner_dims = Shape(%data) {start=2}"), "{dump}");
    assert!(dump.contains("%gnd/shape = Concat(%gnd/row_count, %gnd/inner_dims) {axis=0}"), "{dump}");
    assert!(dump.contains("%y = Gather(%gnd/rows, %gnd/flat_indices) {axis=0}"), "{dump}");
}

#[test]
fn gather_nd_that_cannot_be_decomposed_is_left_alone_with_a_reason() {
    let notes_of = |mut m: Model| {
        let before = adaptc_ir::dump(&m);
        let report = run("decompose", &mut m);
        assert!(!report.changed());
        assert_eq!(adaptc_ir::dump(&m), before);
        report.runs[0].notes.clone()
    };
    // Indices computed at run time.
    let m = model(17, |g| {
        g.inputs.push(f32_input("data", &[2, 3]));
        g.inputs.push(ValueInfo::tensor("idx", DataType::Int64, vec![Dim::Known(1), Dim::Known(1)]));
        g.add_node(node("GatherND", &["data", "idx"], &["y"]).named("gnd")).unwrap();
        g.outputs.push(output("y"));
    });
    assert_eq!(notes_of(m), vec!["decompose: left `gnd` (GatherND) alone: the indices are not a constant"]);
    // Outer dimension symbolic.
    let m = model(17, |g| {
        g.inputs.push(sym_input("data", DataType::Float, &["batch", "3"]));
        g.add_initializer(i64s("idx", &[1, 1], &[0])).unwrap();
        g.add_node(node("GatherND", &["data", "idx"], &["y"]).named("gnd")).unwrap();
        g.outputs.push(output("y"));
    });
    let notes = notes_of(m);
    assert!(
        notes[0].contains("dimension 0 of `data` is batch, not a number (run specialize-shapes first)"),
        "{notes:?}"
    );
    // Out of range.
    let m = gather_nd_model(f32s("data", &[2, 3], &[0.0; 6]), false, i64s("idx", &[1, 2], &[0, 3]), 0);
    assert!(notes_of(m)[0].contains("index 3 is out of range for a dimension of 3"));
    // Tuple longer than the rank.
    let m = gather_nd_model(f32s("data", &[2], &[0.0; 2]), false, i64s("idx", &[1, 2], &[0, 0]), 0);
    assert!(notes_of(m)[0].contains("do not fit data of rank 1"));
}

// ----- a real exported model ----------------------------------------------------------------

#[test]
fn the_exported_bert_lowers_to_plain_ops() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/bert6.onnx");
    let mut m = onnx::load(&path).unwrap();
    let count = |m: &Model, op: &str| m.graph.nodes().filter(|(_, n)| n.op().is(op)).count();
    assert_eq!((count(&m, "Shape"), count(&m, "Gelu"), count(&m, "GatherND")), (9, 6, 1));
    let report = run(
        "specialize-shapes{dims=batch:2,seq:16},fold-constants,decompose{ops=Gelu,GatherND},fold-constants,dce",
        &mut m,
    );
    assert_eq!(stat(&report, "decompose.gelu"), 6);
    assert_eq!(stat(&report, "decompose.gather_nd"), 1);
    assert_eq!(stat(&report, "decompose.skipped"), 0);
    assert_eq!((count(&m, "Shape"), count(&m, "Gelu"), count(&m, "GatherND"), count(&m, "Range")), (0, 0, 0, 0));
    assert_eq!(count(&m, "Erf"), 6);
    adaptc_ir::verify(&m.graph).unwrap();
}

// ----- a tiny evaluator for the decomposed Gelu -----------------------------------------------

/// erf by its Taylor series (plenty for |x| ≤ 3 in f64).
fn erf(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Evaluates `graph` in f64 for `x` (elementwise ops and scalar constants only) and returns
/// `value`.
fn eval(graph: &Graph, value: &str, x: &[f32]) -> Vec<f64> {
    let mut env: HashMap<String, Vec<f64>> = HashMap::new();
    env.insert("x".into(), x.iter().map(|&v| f64::from(v)).collect());
    for t in graph.initializers() {
        env.insert(t.name.clone(), t.to_f32().unwrap().iter().map(|&v| f64::from(v)).collect());
    }
    for id in graph.topo_order().unwrap() {
        let n = graph.node(id);
        let arg = |i: usize| env[n.input(i).unwrap()].clone();
        let zip = |a: Vec<f64>, b: Vec<f64>, f: fn(f64, f64) -> f64| -> Vec<f64> {
            let len = a.len().max(b.len());
            (0..len).map(|i| f(a[i % a.len()], b[i % b.len()])).collect()
        };
        let out = match n.op().op_type.as_str() {
            "Mul" => zip(arg(0), arg(1), |p, q| p * q),
            "Add" => zip(arg(0), arg(1), |p, q| p + q),
            "Erf" => arg(0).into_iter().map(erf).collect(),
            "Tanh" => arg(0).into_iter().map(f64::tanh).collect(),
            "CastLike" => arg(0),
            "Neg" => arg(0).into_iter().map(|v| -v).collect(),
            other => panic!("eval: {other}"),
        };
        env.insert(n.output(0).unwrap().to_string(), out);
    }
    env.remove(value).unwrap()
}
