//! ONNX's backend node tests (onnx 1.22): every `node/<test>/model.onnx` runs on each of its
//! `test_data_set_*`, and the outputs are compared with the expected ones like onnx's own
//! runner does (|a − b| ≤ 1e-7 + 1e-3·|b|, NaN equals NaN, integers, bools and strings exact).
//!
//! `node_suite_passing.txt` lists the tests that pass; the test fails when one of them stops
//! passing, or when anything panics (a panic is always a bug: bad input must be an error).
//! Regenerate the list with `ADAPTC_UPDATE_NODE_SUITE=1 cargo test -p adaptc-runtime --test
//! node_suite`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use adaptc_runtime::{RuntimeError, Session, SessionOptions, Storage, Tensor};

#[derive(Debug)]
enum Outcome {
    Pass,
    Unsupported(String),
    Wrong(String),
    Error(String),
    Panic(String),
}

impl Outcome {
    fn reason(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Unsupported(r) | Outcome::Wrong(r) | Outcome::Error(r) | Outcome::Panic(r) => r,
        }
    }
}

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/onnx/backend/test/data/node")
}

fn read_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ir = adaptc_ir::onnx::decode_tensor(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Tensor::from_ir(&ir).map_err(|e| format!("{}: {e}", path.display()))
}

/// `prefix_N.pb` files of a data set, in N order.
fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(prefix)?.strip_suffix(".pb")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn floats(s: &Storage) -> Option<Vec<f64>> {
    Some(match s {
        Storage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::F64(v) => v.clone(),
        Storage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        Storage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        _ => return None,
    })
}

fn compare(name: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("output `{name}`: type {} but expected {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("output `{name}`: shape {:?} but expected {:?}", got.shape(), want.shape()));
    }
    match (floats(got.data()), floats(want.data())) {
        (Some(g), Some(w)) => {
            for (k, (a, b)) in g.iter().zip(&w).enumerate() {
                let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-7 + 1e-3 * b.abs();
                if !ok {
                    return Err(format!("output `{name}`: element {k} is {a}, expected {b}"));
                }
            }
            Ok(())
        }
        _ if got.data() == want.data() => Ok(()),
        _ => Err(format!("output `{name}`: values differ")),
    }
}

fn run_test(dir: &Path) -> Outcome {
    let model = match adaptc_ir::onnx::load(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::Error(format!("load: {e}")),
    };
    let session = match Session::new(&model, SessionOptions::default()) {
        Ok(s) => s,
        Err(e @ RuntimeError::Unsupported { .. }) => return Outcome::Unsupported(e.to_string()),
        Err(e) => return Outcome::Error(format!("lowering: {e}")),
    };
    let names: Vec<String> = session.input_names().iter().map(|s| s.to_string()).collect();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Error("no test data sets".into());
    }
    for set in sets {
        let mut inputs = HashMap::new();
        for (k, p) in numbered(&set, "input_").iter().enumerate() {
            let t = match read_pb(p) {
                Ok(t) => t,
                Err(e) => return Outcome::Unsupported(format!("input: {e}")),
            };
            let Some(name) = names.get(k) else { return Outcome::Error(format!("input {k} has no graph input")) };
            inputs.insert(name.clone(), t);
        }
        let outputs = match session.run(inputs) {
            Ok(o) => o,
            Err(e @ RuntimeError::Unsupported { .. }) => return Outcome::Unsupported(e.to_string()),
            Err(e) => return Outcome::Error(e.to_string()),
        };
        for (k, p) in numbered(&set, "output_").iter().enumerate() {
            let want = match read_pb(p) {
                Ok(t) => t,
                Err(e) => return Outcome::Unsupported(format!("expected output: {e}")),
            };
            let Some((name, got)) = outputs.get(k) else { return Outcome::Error(format!("output {k} missing")) };
            if let Err(e) = compare(name, got, &want) {
                return Outcome::Wrong(e);
            }
        }
    }
    Outcome::Pass
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

#[test]
fn onnx_node_suite() {
    let dir = suite_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: the ONNX node test data is not at {} (tests/data links to the shared data)", dir.display());
        return;
    };
    let mut tests: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.join("model.onnx").exists()).collect();
    tests.sort();
    let filter = std::env::var("ADAPTC_NODE_FILTER").ok();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    for t in &tests {
        let name = t.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let outcome =
            catch_unwind(AssertUnwindSafe(|| run_test(t))).unwrap_or_else(|p| Outcome::Panic(panic_message(p)));
        outcomes.insert(name, outcome);
    }

    let passing: BTreeSet<&str> =
        outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Pass)).map(|(n, _)| n.as_str()).collect();
    let count = |f: fn(&Outcome) -> bool| outcomes.values().filter(|o| f(o)).count();
    let (unsupported, wrong, error, panics) = (
        count(|o| matches!(o, Outcome::Unsupported(_))),
        count(|o| matches!(o, Outcome::Wrong(_))),
        count(|o| matches!(o, Outcome::Error(_))),
        count(|o| matches!(o, Outcome::Panic(_))),
    );
    let verbose = std::env::var("ADAPTC_NODE_VERBOSE").is_ok();
    // The ops most often missing, so the summary says where the next gains are.
    let mut missing: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.values() {
        if let Outcome::Unsupported(_) = o {
            let op = o.reason().split(" (").nth(1).and_then(|s| s.split(')').next()).unwrap_or("?");
            *missing.entry(op.to_string()).or_default() += 1;
        }
    }
    let mut missing: Vec<(String, usize)> = missing.into_iter().collect();
    missing.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<String> = missing.iter().take(15).map(|(op, n)| format!("{op} {n}")).collect();
    eprintln!("unsupported, by op: {}", top.join(", "));
    for (name, o) in &outcomes {
        match o {
            Outcome::Pass => {}
            Outcome::Panic(m) => eprintln!("PANIC {name}: {m}"),
            other if verbose => eprintln!("{name}: {other:?}"),
            _ => {}
        }
    }
    eprintln!(
        "node suite: {} tests, {} passed, {unsupported} unsupported, {wrong} wrong results, {error} errors, {panics} panics",
        outcomes.len(),
        passing.len()
    );

    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node_suite_passing.txt");
    if std::env::var("ADAPTC_UPDATE_NODE_SUITE").is_ok_and(|v| v == "1") {
        let text: String = passing.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(&list, text).expect("write node_suite_passing.txt");
        eprintln!("wrote {} passing tests to {}", passing.len(), list.display());
    } else if filter.is_none() {
        let expected = std::fs::read_to_string(&list).unwrap_or_default();
        let lost: Vec<&str> =
            expected.lines().map(str::trim).filter(|l| !l.is_empty() && !passing.contains(l)).collect();
        for l in &lost {
            eprintln!("REGRESSION {l}: {:?}", outcomes.get(*l));
        }
        assert!(lost.is_empty(), "{} listed tests no longer pass", lost.len());
    }
    assert_eq!(panics, 0, "kernels panicked (see PANIC lines)");
}
