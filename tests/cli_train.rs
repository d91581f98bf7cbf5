//! `adaptc train` end to end on all-MiniLM-L6-v2 (tests/data, made by scripts/make-test-data.sh):
//! the run folder's contents, loss going down, exact resume after `kill -9`, the NaN stop and
//! the refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn minilm() -> String {
    data().join("minilm/model.onnx").display().to_string()
}

fn sentiment(file: &str) -> String {
    data().join("train/sentiment").join(file).display().to_string()
}

fn adaptc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adaptc")).args(args).output().unwrap()
}

/// The common arguments of a short MiniLM LoRA run into `out`.
fn train_args(out: &Path, steps: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        &minilm(),
        "--data",
        &sentiment("train.jsonl"),
        "--task",
        "classification",
        "--labels",
        "2",
        "-p",
        "insert-lora{rank=8 alpha=16 targets=query,value}",
        "--steps",
        steps,
        "--batch-size",
        "8",
        "--lr",
        "2e-3",
        "--seed",
        "3",
        "--checkpoint-every",
        "2",
        "--keep-checkpoints",
        "10",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.display().to_string());
    v
}

fn run(args: &[String]) -> Output {
    adaptc(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn steps_of(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn writes_the_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = train_args(&out, "12");
    args.extend(["--eval".into(), sentiment("eval.jsonl"), "--eval-every".into(), "6".into()]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "metrics.jsonl",
        "adapted.onnx",
        "merged.onnx",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "loss.png",
    ] {
        assert!(out.join(f).is_file(), "{f} is missing; stderr: {}", stderr(&o));
    }
    assert!(out.join("checkpoints/step-12").is_dir());
    let steps = steps_of(&out.join("metrics.jsonl"));
    assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let first: f64 = steps[..3].iter().map(|s| s.1).sum::<f64>() / 3.0;
    let last: f64 = steps[9..].iter().map(|s| s.1).sum::<f64>() / 3.0;
    assert!(last < first, "the loss did not go down: first steps {first:.4}, last steps {last:.4}");
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(text.matches("eval_loss").count(), 2, "evaluations at steps 6 and 12");
    // merged.onnx keeps the base inputs and puts the logits first.
    let merged = adaptc_ir::onnx::load(&out.join("merged.onnx")).unwrap();
    let inputs: Vec<&str> = merged.graph.inputs.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    assert_eq!(merged.graph.outputs[0].name, "logits");
    assert!(!merged.graph.nodes().any(|(_, n)| n.name.contains("lora")), "merged.onnx still has LoRA nodes");
    // Running it again into the same folder without --resume is refused.
    let o = run(&train_args(&out, "12"));
    assert!(!o.status.success() && stderr(&o).contains("--resume"), "{}", stderr(&o));
}

/// Kill -9 in the middle, resume, and end with exactly the weights of an uninterrupted run.
#[test]
fn resume_after_kill_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let o = run(&train_args(&whole, "10"));
    assert!(o.status.success(), "{}", stderr(&o));

    let cut = tmp.path().join("cut");
    let args = train_args(&cut, "10");
    let mut child = Command::new(env!("CARGO_BIN_EXE_adaptc"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !cut.join("checkpoints/step-4").is_dir() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = steps_of(&cut.join("metrics.jsonl")).len();
    let mut resume = args.clone();
    resume.push("--resume".into());
    let o = run(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    if done < 10 {
        assert!(stderr(&o).contains("resumed from step"), "{}", stderr(&o));
    }
    let a = std::fs::read(whole.join("checkpoints/step-10/params.safetensors")).unwrap();
    let b = std::fs::read(cut.join("checkpoints/step-10/params.safetensors")).unwrap();
    assert!(a == b, "the resumed run's final weights differ from the uninterrupted run's");
    let steps: Vec<u64> = steps_of(&cut.join("metrics.jsonl")).iter().map(|s| s.0).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "metrics.jsonl after resume");
}

#[test]
fn a_diverging_run_stops_without_writing_non_finite_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = train_args(&out, "8");
    let lr = args.iter().position(|a| a == "--lr").unwrap();
    args[lr + 1] = "1e30".into();
    args.extend(["--max-grad-norm".into(), "0".into()]);
    let o = run(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("training stopped at step"), "{}", stderr(&o));
    assert!(!out.join("merged.onnx").exists());
}

#[test]
fn refusals_name_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run").display().to_string();
    let o = adaptc(&[
        "train",
        &minilm(),
        "--data",
        &sentiment("train.jsonl"),
        "--task",
        "classification",
        "--steps",
        "1",
        "--out",
        &out,
    ]);
    assert!(!o.status.success() && stderr(&o).contains("--labels"), "{}", stderr(&o));
    let o = adaptc(&[
        "train",
        &minilm(),
        "--data",
        "/nonexistent.jsonl",
        "--task",
        "classification",
        "--labels",
        "2",
        "--steps",
        "1",
        "-p",
        "insert-lora{rank=4 targets=query}",
        "--out",
        &out,
    ]);
    assert!(!o.status.success() && stderr(&o).contains("nonexistent.jsonl"), "{}", stderr(&o));
    let o = adaptc(&[
        "train",
        &minilm(),
        "--data",
        &sentiment("train.jsonl"),
        "--task",
        "classification",
        "--labels",
        "2",
        "--steps",
        "1",
        "-p",
        "insert-lora{rank=4 targets=nope}",
        "--out",
        &out,
    ]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(!Path::new(&out).join("metrics.jsonl").exists());
    // CUDA graphs replay steps on a GPU: on the CPU the flag is a mistake, not a no-op.
    let mut args = train_args(Path::new(&out), "1");
    args.push("--cuda-graphs".into());
    let o = run(&args);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--cuda-graphs") && stderr(&o).contains("--device cuda"), "{}", stderr(&o));
    assert!(!Path::new(&out).join("metrics.jsonl").exists());
}

/// `--checkpoint-activations`: the same losses step for step, with a lower activation peak.
#[test]
fn checkpointed_activations_train_the_same_in_less_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let peak = |o: &Output| -> f64 {
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(o);
        let at = text.find("peak activation memory ").expect("a peak memory line") + "peak activation memory ".len();
        text[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (plain, ckpt) = (tmp.path().join("plain"), tmp.path().join("ckpt"));
    let a = run(&train_args(&plain, "3"));
    assert!(a.status.success(), "{}", stderr(&a));
    let mut args = train_args(&ckpt, "3");
    args.push("--checkpoint-activations".into());
    let b = run(&args);
    assert!(b.status.success(), "{}", stderr(&b));
    let (la, lb) = (steps_of(&plain.join("metrics.jsonl")), steps_of(&ckpt.join("metrics.jsonl")));
    assert_eq!(la.len(), 3);
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "step {s}: loss {x} vs {y} with checkpointing");
    }
    assert!(peak(&b) < 0.75 * peak(&a), "peak {} MiB with checkpointing vs {} without", peak(&b), peak(&a));
}

/// `--autocast bf16` and `bf16-activations`: the loss curve follows the f32 run's within bf16
/// tolerance (and is not the same numbers), storing activations in bf16 does not raise the
/// peak (MiniLM's peak is its GELU inputs, which the standalone `GeluGrad` reads in f32; the
/// Llama graph's drop is measured in `passes/tests/autocast.rs`), and what the run exports
/// stays f32 (the adapters are f32 masters).
#[test]
fn autocast_bf16_follows_the_f32_loss_curve_and_exports_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("f32");
    let a = run(&train_args(&full, "6"));
    assert!(a.status.success(), "{}", stderr(&a));
    let la = steps_of(&full.join("metrics.jsonl"));
    let mut peaks = Vec::new();
    for mode in ["bf16", "bf16-activations"] {
        let low = tmp.path().join(mode);
        let mut args = train_args(&low, "6");
        args.extend(["--autocast".into(), mode.into()]);
        let b = run(&args);
        assert!(b.status.success(), "{}", stderr(&b));
        let lb = steps_of(&low.join("metrics.jsonl"));
        assert_eq!(lb.len(), 6);
        for ((s, x), (_, y)) in la.iter().zip(&lb) {
            assert!((x - y).abs() <= 2e-2 * x.abs(), "step {s}: loss {x} in f32 vs {y} with --autocast {mode}");
        }
        assert!(la.iter().zip(&lb).any(|(x, y)| x.1 != y.1), "{mode} gave exactly the f32 losses");
        for f in ["adapted.onnx", "merged.onnx"] {
            let m = adaptc_ir::onnx::load(&low.join(f)).unwrap();
            assert!(
                m.graph.initializers().all(|t| t.dtype() != adaptc_ir::DataType::BFloat16),
                "{f} holds bf16 weights ({mode})"
            );
        }
        let adapter = std::fs::read(low.join("adapter/adapter_model.safetensors")).unwrap();
        assert!(!String::from_utf8_lossy(&adapter[..256.min(adapter.len())]).contains("BF16"));
        let text = String::from_utf8_lossy(&b.stdout).into_owned() + &stderr(&b);
        let at = text.find("peak activation memory ").expect("a peak memory line") + "peak activation memory ".len();
        peaks.push(text[at..].split_whitespace().next().unwrap().parse::<f64>().unwrap());
    }
    assert!(peaks[1] <= peaks[0], "peak {} MiB with bf16 activations vs {} MiB", peaks[1], peaks[0]);
}

#[test]
fn accumulating_two_half_batches_follows_the_full_batch() {
    // The loader's order does not depend on the batch size, so micro-batches of 4 + 4 rows are
    // the rows of the batch of 8; the step's mean loss and mean gradient are the same up to
    // float rounding (and padding, which the mask hides), so the loss curves coincide.
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let o = run(&train_args(&full, "4"));
    assert!(o.status.success(), "{}", stderr(&o));
    let half = tmp.path().join("half");
    let mut args = train_args(&half, "4");
    let at = args.iter().position(|a| a == "--batch-size").unwrap();
    args[at + 1] = "4".into();
    args.extend(["--grad-accum".to_string(), "2".to_string()]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (steps_of(&full.join("metrics.jsonl")), steps_of(&half.join("metrics.jsonl")));
    assert_eq!(a.len(), 4);
    assert_eq!(a.len(), b.len());
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-3 * x.abs(), "step {s}: batch 8 loss {x}, 2 × 4 accumulated {y}");
    }
    assert!(a.windows(2).any(|w| w[0].1 != w[1].1), "the loss must move: {a:?}");
}
