//! The pass manager: building up front, verify-each, reports, stop-after, print-after-change,
//! and the canonical pipeline on a real exported model.

mod common;

use std::path::PathBuf;

use adaptc_ir::{IrError, Model};
use adaptc_passes::{
    ManagerOptions, Options, Pass, PassContext, PassError, PassInfo, PassManager, PassOutcome, Registry,
};
use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

/// `x -> Neg -> Abs -> y` plus a dead `Sqrt`.
fn small_model() -> Model {
    model(17, |g| {
        g.inputs.push(f32_input("x", &[2]));
        g.add_node(node("Neg", &["x"], &["n"])).unwrap();
        g.add_node(node("Sqrt", &["x"], &["dead"])).unwrap();
        g.add_node(node("Abs", &["n"], &["y"])).unwrap();
        g.outputs.push(output("y"));
    })
}

/// Test passes: one that breaks the graph, one that fails with an IR error, one that notes.
struct Breaker;

impl Pass for Breaker {
    fn name(&self) -> &'static str {
        "break-graph"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let g = &mut model.graph;
        if let Some(id) = g.node_ids().first().copied() {
            g.set_input(id, 0, "nothing_defines_this")?;
        }
        Ok(PassOutcome::changed(true))
    }
}

struct IrFailure;

impl Pass for IrFailure {
    fn name(&self) -> &'static str {
        "ir-failure"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let first = model.graph.node_ids()[0];
        model.graph.remove_node(first)?; // still used: the graph refuses
        Ok(PassOutcome::changed(true))
    }
}

struct Noter;

impl Pass for Noter {
    fn name(&self) -> &'static str {
        "note"
    }

    fn run(&self, _model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        cx.note("hello");
        Ok(PassOutcome::unchanged().stat("note.count", 1))
    }
}

fn registry_with_test_passes() -> Registry {
    let mut r = Registry::builtin();
    let info = |name: &'static str, build: fn(&Options) -> Result<Box<dyn Pass>, PassError>| PassInfo {
        name,
        summary: "test pass",
        options: Vec::new(),
        example: name,
        build,
    };
    r.register(info("break-graph", |_| Ok(Box::new(Breaker))));
    r.register(info("ir-failure", |_| Ok(Box::new(IrFailure))));
    r.register(info("note", |_| Ok(Box::new(Noter))));
    r
}

#[test]
fn options_and_names_are_checked_before_any_work() {
    let r = Registry::builtin();
    let err = PassManager::new(&r, "dce,cse{max-bytes=lots}").unwrap_err();
    assert_eq!(err.to_string(), "pass `cse`: option `max-bytes`: expected a non-negative integer, got `lots`");
    let err = PassManager::new(&r, "dce,fold-constant").unwrap_err();
    assert!(matches!(&err, PassError::UnknownPass { suggestion: Some(s), .. } if s == "fold-constants"), "{err}");
    let err = PassManager::new(&r, "dce,{").unwrap_err();
    assert!(matches!(err, PassError::Parse { column: 5, .. }), "{err}");
    let m = PassManager::new(&r, " dce , cse{initializers=false} ").unwrap();
    assert_eq!(m.pipeline().to_string(), "dce,cse{initializers=false}");
    assert_eq!(m.len(), 2);
    assert!(PassManager::new(&r, "").unwrap().is_empty());
}

#[test]
fn report_records_each_pass() {
    let r = registry_with_test_passes();
    let mut model = small_model();
    let report = PassManager::new(&r, "dce,note,dce").unwrap().run(&mut model).unwrap();
    let names: Vec<&str> = report.runs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["dce", "note", "dce"]);
    assert!(report.runs[0].changed && !report.runs[1].changed && !report.runs[2].changed);
    assert_eq!(report.runs[1].notes, vec!["hello".to_string()]);
    assert_eq!(report.stat("dce.nodes_removed"), Some(1));
    assert_eq!(report.stat("note.count"), Some(1));
    assert_eq!(report.stat("nope"), None);
    assert!(report.runs.iter().all(|p| p.dump_after.is_none()));

    // The table: header, one line per pass, total. Times vary, so compare the other columns.
    let text = report.to_string();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0], vec!["pass", "changed", "time", "ms", "stats"]);
    assert_eq!(lines[1][..2], ["dce", "yes"]);
    assert_eq!(lines[1][3..], ["dce.nodes_removed=1", "dce.initializers_removed=0"]);
    assert_eq!(lines[2][..2], ["note", "no"]);
    assert_eq!(lines[2][3..], ["note.count=1"]);
    assert_eq!(lines[4][0], "total");
    assert!(lines[1][2].parse::<f64>().is_ok(), "{text}");
}

#[test]
fn verify_each_blames_the_pass_that_broke_the_graph() {
    let r = registry_with_test_passes();
    let mut model = small_model();
    let err = PassManager::new(&r, "dce,break-graph,cse").unwrap().run(&mut model).unwrap_err();
    match &err {
        PassError::Verify { pass, source: IrError::Verify(issues) } => {
            assert_eq!(pass, "break-graph");
            assert!(issues[0].contains("nothing_defines_this"), "{issues:?}");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().starts_with("the graph does not verify after pass `break-graph`: "), "{err}");

    // With verification off, the broken graph goes through.
    let mut model = small_model();
    let manager = PassManager::new(&r, "break-graph")
        .unwrap()
        .with_options(ManagerOptions { verify_each: false, ..ManagerOptions::default() });
    assert!(manager.run(&mut model).is_ok());
    // And a model that is already broken is reported as such, not blamed on a pass.
    let err = PassManager::new(&r, "dce").unwrap().run(&mut model).unwrap_err();
    assert!(matches!(err, PassError::InvalidInput(_)), "{err}");
}

#[test]
fn ir_errors_inside_a_pass_name_the_pass() {
    let r = registry_with_test_passes();
    let mut model = small_model();
    let err = PassManager::new(&r, "ir-failure").unwrap().run(&mut model).unwrap_err();
    assert!(matches!(&err, PassError::InPass { pass, .. } if pass == "ir-failure"), "{err}");
    assert!(err.to_string().starts_with("pass `ir-failure`: node "), "{err}");
}

#[test]
fn stop_after_and_print_after_change() {
    let r = Registry::builtin();
    let mut model = small_model();
    let options = ManagerOptions { verify_each: true, print_after_change: true, stop_after: Some(1) };
    let report = PassManager::new(&r, "cse,dce").unwrap().with_options(options).run(&mut model).unwrap();
    assert_eq!(report.runs.len(), 1);
    assert_eq!(report.skipped, 1);
    assert!(report.to_string().contains("(1 pass(es) not run: stop-after)"));
    assert!(!report.runs[0].changed);
    assert!(report.runs[0].dump_after.is_none());
    assert_eq!(model.graph.num_nodes(), 3);

    let mut manager = PassManager::new(&r, "cse,dce").unwrap();
    manager.options_mut().print_after_change = true;
    let report = manager.run(&mut model).unwrap();
    assert_eq!(report.skipped, 0);
    assert!(report.runs[0].dump_after.is_none());
    assert_eq!(report.runs[1].dump_after.as_deref(), Some(adaptc_ir::dump(&model).as_str()));
}

#[test]
fn canonical_pipeline_on_bert6_keeps_the_graph_valid() {
    let path = fixture("bert6.onnx");
    let mut model = adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    adaptc_ir::verify(&model.graph).unwrap();
    let nodes_before = model.graph.num_nodes();
    let outputs_before: Vec<String> = model.graph.outputs.iter().map(|o| o.name.clone()).collect();
    let inputs_before: Vec<String> = model.graph.inputs.iter().map(|o| o.name.clone()).collect();

    let manager = PassManager::new(&Registry::builtin(), "dce,cse{initializers=false},fold-constants,cse,dce").unwrap();
    let report = manager.run(&mut model).unwrap();
    println!("{report}");
    adaptc_ir::verify(&model.graph).unwrap();
    assert!(model.graph.num_nodes() <= nodes_before);
    assert_eq!(model.graph.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), outputs_before);
    assert_eq!(model.graph.inputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), inputs_before);

    // The plain canonical pipeline too, and it reaches a fixpoint.
    let mut model = adaptc_ir::onnx::load(&path).unwrap();
    run("dce,cse,fold-constants", &mut model);
    adaptc_ir::verify(&model.graph).unwrap();
    let second = run("dce,cse,fold-constants,dce", &mut model);
    adaptc_ir::verify(&model.graph).unwrap();
    let third = run("dce,cse,fold-constants,dce", &mut model);
    assert!(!third.changed(), "{second}\n{third}");

    // The result still encodes and decodes.
    let bytes = adaptc_ir::onnx::encode(&model).unwrap();
    let back = adaptc_ir::onnx::decode(&bytes).unwrap();
    adaptc_ir::verify(&back.graph).unwrap();
    assert_eq!(back.graph.num_nodes(), model.graph.num_nodes());
}

/// Exporter output is already canonical, so on the fixtures as they are the passes find little.
/// Freezing the model's inputs to concrete values (as a deployment with fixed inputs would)
/// makes the shape computations, masks and embedding lookups constant: real exporter patterns
/// for the folder (Shape with start/end, Gather, Range, Concat, Unsqueeze, Where, Cast...).
#[test]
fn canonical_pipeline_on_models_with_frozen_inputs() {
    for name in ["bert6.onnx", "llama4/model.onnx"] {
        let path = fixture(name);
        let mut model = adaptc_ir::onnx::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let inputs: Vec<String> = model.graph.inputs.iter().map(|i| i.name.clone()).collect();
        model.graph.inputs.clear();
        for input in inputs {
            model.graph.add_initializer(i64s(&input, &[2, 16], &[1; 32])).unwrap();
        }
        adaptc_ir::verify(&model.graph).unwrap();
        let nodes_before = model.graph.num_nodes();
        let outputs_before: Vec<String> = model.graph.outputs.iter().map(|o| o.name.clone()).collect();

        let report = run("dce,cse,fold-constants,cse,dce", &mut model);
        println!("{name}: {nodes_before} -> {} nodes\n{report}", model.graph.num_nodes());
        adaptc_ir::verify(&model.graph).unwrap();
        assert!(report.stat("fold.nodes_folded").unwrap_or(0) >= 15, "{name}\n{report}");
        assert!(report.stat("dce.initializers_removed").unwrap_or(0) > 0, "{name}\n{report}");
        assert_eq!(model.graph.num_nodes() as i64, nodes_before as i64 - report.stat("fold.nodes_folded").unwrap());
        assert_eq!(model.graph.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), outputs_before);
        let notes: Vec<&String> = report.runs.iter().flat_map(|r| &r.notes).collect();
        assert!(notes.is_empty(), "{notes:?}");

        assert!(!run("dce,cse,fold-constants,cse,dce", &mut model).changed(), "{name}: not a fixpoint");
        let back = adaptc_ir::onnx::decode(&adaptc_ir::onnx::encode(&model).unwrap()).unwrap();
        adaptc_ir::verify(&back.graph).unwrap();
    }
}
