//! The CUDA backend suite (`cargo test --features cuda --test cuda`; its own runner, so a case
//! that cannot run here is reported as *skipped*, never as passed).
//!
//! Everywhere:
//! - NVRTC compiles every kernel for sm_80 and sm_90 (needs only `libnvrtc.so.13`, no GPU),
//!   and the own kernel of every elementwise chain in the Llama and BERT LoRA training plans;
//! - without a GPU, opening the CUDA backend is an error that says so;
//! - the flash-attention case's graph runs on the CPU backend, its fully masked row gives
//!   zeros and lse −∞ (so the GPU case compares what it means to).
//!
//! On a GPU (the backend-parity suite: the CPU backend is the reference):
//! - every ONNX backend node test that the CPU passes runs on CUDA with the same inputs, and
//!   the outputs agree (f32: |cuda − cpu| ≤ 1e-5 · max(|cpu|, 1% of the output's largest
//!   magnitude; f16/bf16 widened, within one unit in their last place); integers, bools exact;
//!   NaN where the CPU has NaN);
//! - the training graphs (loss and every gradient) of a BERT encoder with LoRA and a classifier
//!   head, and of a Llama decoder with LoRA on all linear layers, agree within 1e-4 of each
//!   output's largest magnitude;
//! - the BERT graph with `fuse-attention` (SoftmaxAttention and its gradient) agrees within the
//!   same 1e-4, with both fused ops on the device, in blocks of 5 query rows (16 rows: three
//!   full blocks and a partial one; `ADAPTC_CUDA_ATTENTION_ROWS`);
//! - the same Llama graph under `autocast{dtype=bf16}` (bf16 products, casts, bf16 gradient
//!   sums) agrees within 3e-2 of each output's largest magnitude (the backends may round a
//!   product's f32 sum to bf16 one unit apart, and that spreads), and none of its bf16 work
//!   fell back to the host but data-movement gradients the CPU kernel keeps in f32; and with
//!   fused attention and `activations=bf16` (bf16 values through chains and layout ops) within
//!   the same 3e-2, with no bf16 work on the host at all;
//! - a graph of `ClipGradNorm` over two gradients (with `max_norm` below their norm) and
//!   `AdamW` on one parameter runs both ops on the device, and the norm, the clip scale and the
//!   new parameter and moments agree within 1e-6 relative (AdamW is the CPU's f32 arithmetic in
//!   its order; only the f64 norm's summation order differs);
//! - Llama's attention-mask GatherND (a Cast mask [b, s] gathered with [b, 1, s, s, 2] index
//!   pairs, then And with a causal mask), a float GatherND with a trailing slice and negative
//!   indices, and one with `batch_dims` 1 all run on the device and equal the CPU exactly;
//! - `SoftmaxAttention` and its gradient with `products="bf16"` (the flash kernels, head sizes
//!   32 and 64, 150 queries × 150 keys: three tiles with a partial one, a causal and padding
//!   mask, a fully masked row) agree with the CPU within 1e-2 of each output's largest
//!   magnitude, and so does the blocked path (`ADAPTC_CUDA_FLASH=0`), whose outputs must differ
//!   from the flash path's (else the flash kernels did not run);
//! - ten optimizer steps of the Llama LoRA graph (fused attention, bf16 activations) with
//!   `cuda_graphs` replay as the run report says (two warm-up steps, a capture, replays; a state
//!   reload and a new batch shape start over) and agree with the same steps run instruction by
//!   instruction on the device within 1e-5 relative (losses, gradient norms, final weights);
//! - every op the device implements ran on the device in at least one of those cases.
//!
//! Environment: `ADAPTC_NODE_DIR` overrides where the node tests are read from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use adaptc_ir::onnx;

#[path = "support/training_plans.rs"]
mod training_plans;
use adaptc_passes::{PassManager, Registry};
use adaptc_runtime::{Device, Placement, Session, SessionOptions, Storage, Tensor};
use training_plans::TRAINING_PLANS;

type CaseResult = Result<Option<String>, String>;
type GpuCase = (&'static str, fn(&mut Coverage) -> CaseResult);
type Outputs = Vec<(String, Tensor)>;

#[derive(Default)]
struct Report {
    passed: usize,
    failed: Vec<String>,
    skipped: usize,
}

impl Report {
    fn case(&mut self, name: &str, f: impl FnOnce() -> CaseResult) {
        match f() {
            Ok(None) => {
                println!("test {name} ... ok");
                self.passed += 1;
            }
            Ok(Some(why)) => {
                println!("test {name} ... skipped: {why}");
                self.skipped += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                self.failed.push(name.to_string());
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.case(name, || Ok(Some(why.to_string())));
    }
}

/// The repository: `ADAPTC_REPO` on a machine the binary was copied to (scripts/gpu-check.sh),
/// the source folder otherwise.
fn root() -> PathBuf {
    std::env::var_os("ADAPTC_REPO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn main() {
    // For scripts/gpu-bundle.sh: which ops the device implements.
    if std::env::var_os("ADAPTC_LIST_DEVICE_OPS").is_some() {
        for op in adaptc_runtime::cuda::covered_ops() {
            println!("{op}");
        }
        return;
    }
    // Every op the device implements goes to the device, however small its inputs.
    std::env::set_var("ADAPTC_CUDA_HOST_ELEMENTS", "0");
    // Fused attention in blocks of 5 query rows, so the small fixtures run several blocks and a
    // partial last one (the bound on the scratch alone would take every row at once).
    std::env::set_var("ADAPTC_CUDA_ATTENTION_ROWS", "5");
    let mut r = Report::default();
    r.case("nvrtc_compiles_every_kernel", nvrtc_compiles);
    r.case("nvrtc_compiles_the_chain_kernels_of_the_training_plans", nvrtc_compiles_chains);
    r.case("flash_attention_case_runs_on_the_cpu", flash_graph_on_cpu);
    let gpu_cases: [GpuCase; 10] = [
        ("node_suite_matches_cpu", node_suite),
        ("clip_grad_norm_and_adamw_match_cpu", optimizer_step),
        ("gather_nd_attention_mask_matches_cpu", gather_nd_mask),
        ("flash_attention_matches_cpu", flash_attention),
        ("bert_lora_training_graph_matches_cpu", bert_training_graph),
        ("bert_lora_fused_attention_training_graph_matches_cpu", bert_fused_attention_training_graph),
        ("llama_lora_training_graph_matches_cpu", llama_training_graph),
        ("llama_lora_bf16_training_graph_matches_cpu", llama_bf16_training_graph),
        ("llama_lora_bf16_activations_training_graph_matches_cpu", llama_bf16_activations_training_graph),
        ("cuda_graph_replays_match_eager_steps", cuda_graph_steps),
    ];
    match adaptc_runtime::cuda::probe() {
        Err(e) => {
            r.case("no_device_is_a_clear_error", || no_device(&e.to_string()));
            for (name, _) in gpu_cases {
                r.skip(name, "no CUDA device");
            }
            r.skip("every_device_op_is_exercised", "no CUDA device");
        }
        Ok(n) => {
            println!("{n} CUDA device(s)");
            r.skip("no_device_is_a_clear_error", "a CUDA device is present");
            let mut cov = Coverage::default();
            for (name, f) in gpu_cases {
                r.case(name, || f(&mut cov));
            }
            r.case("every_device_op_is_exercised", || cov.check());
        }
    }
    println!("\ncuda suite: {} passed; {} failed; {} skipped", r.passed, r.failed.len(), r.skipped);
    if !r.failed.is_empty() {
        println!("failed: {}", r.failed.join(", "));
        std::process::exit(1);
    }
}

fn nvrtc_compiles() -> CaseResult {
    if !adaptc_runtime::cuda::nvrtc_available() {
        return Ok(Some(
            "libnvrtc.so.13 not found (pip install nvidia-cuda-nvrtc, add its lib to LD_LIBRARY_PATH)".into(),
        ));
    }
    for arch in ["sm_80", "sm_90"] {
        let image = adaptc_runtime::cuda::compile_kernels(arch)?;
        // The image's symbol table names every entry point the backend loads.
        let missing: Vec<&str> = adaptc_runtime::cuda::ENTRY_POINTS
            .iter()
            .copied()
            .filter(|name| {
                !image.windows(name.len() + 1).any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
            })
            .collect();
        if !missing.is_empty() {
            return Err(format!("{arch}: the compiled image lacks {}", missing.join(", ")));
        }
    }
    Ok(None)
}

/// Every elementwise chain of the Llama (bf16 activations, fused attention) and BERT LoRA
/// training plans gets its own kernel at its first launch: each must compile, over one merged
/// dim (element by element, and four elements per thread) and over three. Inputs a cast widens are taken as bf16, a
/// `SumToShape`'s dims as int64, the rest f32 (autocast's types).
fn nvrtc_compiles_chains() -> CaseResult {
    use adaptc_ir::DataType;
    if !adaptc_runtime::cuda::nvrtc_available() {
        return Ok(Some("libnvrtc.so.13 not found".into()));
    }
    let mut sources = BTreeMap::new();
    for (fixture, pipeline) in TRAINING_PLANS {
        let path = format!("tests/fixtures/models/{fixture}");
        let model = adapted(&path, pipeline)?;
        let plan = adaptc_runtime::plan::lower(&model, adaptc_runtime::registry::Registry::cpu(), true)
            .map_err(|e| e.to_string())?;
        for ins in plan.instructions.iter().filter(|i| i.node.op().op_type == "ElementwiseChain") {
            let program = adaptc_runtime::ops::chain::Program::from_node(&ins.node).map_err(|e| e.to_string())?;
            let types: Vec<DataType> = (0..program.inputs)
                .map(|k| {
                    let widened =
                        program.steps.iter().any(|s| s.a == k && s.op == adaptc_runtime::ops::chain::Op::ToF32);
                    if program.dims_only(k) {
                        DataType::Int64
                    } else if widened {
                        DataType::BFloat16
                    } else {
                        DataType::Float
                    }
                })
                .collect();
            for (rank, vector) in [(1, false), (1, true), (3, false)] {
                let (name, source) = adaptc_runtime::cuda::specialised_source(&ins.node, &types, rank, vector)
                    .map_err(|e| format!("{}: {e}", ins.node.label()))?;
                sources.insert(name, source);
            }
        }
    }
    if sources.len() < 20 {
        return Err(format!("only {} distinct chain kernels in two training plans", sources.len()));
    }
    let start = std::time::Instant::now();
    for (name, source) in &sources {
        let image = adaptc_runtime::cuda::compile(source, name, "sm_90", adaptc_runtime::cuda::Contraction::Off)?;
        if !image.windows(name.len() + 1).any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0) {
            return Err(format!("{name}: the compiled image lacks its entry point"));
        }
    }
    println!("  {} chain kernels compiled for sm_90 in {:.2} s", sources.len(), start.elapsed().as_secs_f64());
    Ok(None)
}

fn no_device(probe_error: &str) -> CaseResult {
    let model = onnx::load(&root().join("examples/models/tiny_bert.onnx")).map_err(|e| e.to_string())?;
    let err = match Session::new(&model, SessionOptions { device: Device::Cuda, ..Default::default() }) {
        Ok(_) => return Err("a CUDA session opened although the probe found no device".into()),
        Err(e) => e.to_string(),
    };
    let clear = err.contains("cuda") && (err.contains("no NVIDIA driver") || err.contains("no CUDA device"));
    if !clear || err != probe_error {
        return Err(format!("unclear error: {err} (probe: {probe_error})"));
    }
    Ok(None)
}

/// The ops each case ran on the device.
#[derive(Default)]
struct Coverage {
    on_device: BTreeSet<String>,
    on_host: BTreeMap<String, String>,
}

impl Coverage {
    fn add(&mut self, p: &Placement) {
        self.on_device.extend(p.device.keys().cloned());
        for (op, (_, why)) in &p.host {
            self.on_host.entry(op.clone()).or_insert_with(|| why.clone());
        }
    }

    fn check(&self) -> CaseResult {
        let missing: Vec<String> =
            adaptc_runtime::cuda::covered_ops().into_iter().filter(|op| !self.on_device.contains(op)).collect();
        println!("  on the host somewhere: {:?}", self.on_host);
        if missing.is_empty() {
            Ok(None)
        } else {
            Err(format!("device ops never exercised on the device: {}", missing.join(", ")))
        }
    }
}

/// Runs `model` on both backends with `inputs`; the CUDA placement and both outputs.
fn both(model: &adaptc_ir::Model, inputs: &HashMap<String, Tensor>) -> Result<(Outputs, Outputs, Placement), String> {
    let cpu = Session::new(model, SessionOptions::default()).map_err(|e| format!("cpu: {e}"))?;
    let expected = cpu.run(inputs.clone()).map_err(|e| format!("cpu: {e}"))?;
    let gpu = Session::new(model, SessionOptions { device: Device::Cuda, ..Default::default() })
        .map_err(|e| format!("cuda: {e}"))?;
    let (got, stats) = gpu.run_with_stats(inputs.clone()).map_err(|e| format!("cuda: {e}"))?;
    Ok((expected, got, stats.placement.unwrap_or_default()))
}

/// Compares one output; `floor` is the fraction of the output's largest magnitude below which
/// differences count as absolute.
fn compare(name: &str, want: &Tensor, got: &Tensor, rel: f64, floor: f64) -> Result<f64, String> {
    if want.shape() != got.shape() || want.dtype() != got.dtype() {
        return Err(format!(
            "{name}: cpu {:?} {} vs cuda {:?} {}",
            want.shape(),
            want.dtype(),
            got.shape(),
            got.dtype()
        ));
    }
    let rel = rel.max(last_place(want.dtype()));
    match (as_f64(want), as_f64(got)) {
        (Some(w), Some(g)) => {
            let scale = w.iter().filter(|x| x.is_finite()).fold(0.0f64, |m, x| m.max(x.abs()));
            let mut worst = 0.0f64;
            for (k, (&a, &b)) in w.iter().zip(&g).enumerate() {
                if a.is_nan() && b.is_nan() || a == b {
                    continue;
                }
                if !a.is_finite() || !b.is_finite() {
                    return Err(format!("{name}[{k}]: cpu {a} vs cuda {b}"));
                }
                let tol = rel * a.abs().max(floor * scale);
                let d = (a - b).abs();
                // NaN in one backend only fails too (the comparison is false).
                if d.is_nan() || d > tol {
                    return Err(format!("{name}[{k}]: cpu {a} vs cuda {b} (|diff| {d:.3e} > {tol:.3e})"));
                }
                worst = worst.max(d / a.abs().max(floor * scale).max(f64::MIN_POSITIVE));
            }
            Ok(worst)
        }
        _ if want == got => Ok(0.0),
        _ => Err(format!("{name}: non-float outputs differ")),
    }
}

/// One unit in the last place of a half type, relative (at most): the least tolerance its
/// values are compared with, since the CPU and cuBLAS may sum a product in another order
/// before rounding it once. 0 for the other types.
fn last_place(dtype: adaptc_ir::DataType) -> f64 {
    match dtype {
        adaptc_ir::DataType::BFloat16 => 2f64.powi(-7),
        adaptc_ir::DataType::Float16 => 2f64.powi(-10),
        _ => 0.0,
    }
}

/// The elements of a float tensor as f64 (`None` for other types).
fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    match t.data() {
        Storage::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
        Storage::F64(v) => Some(v.clone()),
        Storage::F16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        Storage::BF16(v) => Some(v.iter().map(|x| x.to_f64()).collect()),
        _ => None,
    }
}

fn node_dir() -> PathBuf {
    std::env::var_os("ADAPTC_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/data/onnx/backend/test/data/node"))
}

fn read_inputs(dir: &Path, model: &adaptc_ir::Model) -> Result<HashMap<String, Tensor>, String> {
    let set = dir.join("test_data_set_0");
    let names: Vec<String> = model
        .graph
        .inputs
        .iter()
        .filter(|v| model.graph.initializer(&v.name).is_none())
        .map(|v| v.name.clone())
        .collect();
    let mut inputs = HashMap::new();
    for (k, name) in names.iter().enumerate() {
        let path = set.join(format!("input_{k}.pb"));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let ir = onnx::decode_tensor(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        inputs.insert(name.clone(), Tensor::from_ir(&ir).map_err(|e| e.to_string())?);
    }
    Ok(inputs)
}

fn node_suite(cov: &mut Coverage) -> CaseResult {
    let dir = node_dir();
    if !dir.is_dir() {
        return Err(format!("{} is missing (scripts/fetch-test-data.sh)", dir.display()));
    }
    let list = include_str!("../runtime/tests/node_suite_passing.txt");
    let names: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    // A bundle for a GPU machine (ADAPTC_NODE_DIR) holds the tests that exercise device ops.
    let subset = std::env::var_os("ADAPTC_NODE_DIR").is_some();
    let names: Vec<&str> = names.into_iter().filter(|n| !subset || dir.join(n).is_dir()).collect();
    println!(
        "  node tests: {} of the CPU-passing list{}",
        names.len(),
        if subset { " (those in ADAPTC_NODE_DIR)" } else { "" }
    );
    let (mut ran, mut all_device, mut failures) = (0usize, 0usize, Vec::new());
    for name in names {
        let tdir = dir.join(name);
        let Ok(model) = onnx::load(&tdir.join("model.onnx")) else {
            failures.push(format!("{name}: cannot load"));
            continue;
        };
        let inputs = match read_inputs(&tdir, &model) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match both(&model, &inputs) {
            Ok((want, got, placement)) => {
                ran += 1;
                if placement.host.is_empty() {
                    all_device += 1;
                }
                cov.add(&placement);
                for ((n, w), (_, g)) in want.iter().zip(&got) {
                    if let Err(e) = compare(&format!("{name}/{n}"), w, g, 1e-5, 1e-2) {
                        failures.push(e);
                    }
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!("  node tests: {ran} ran on both backends, {all_device} entirely on the device");
    if failures.is_empty() {
        Ok(None)
    } else {
        Err(format!("{} node tests differ:\n  {}", failures.len(), failures.join("\n  ")))
    }
}

/// Applies `pipeline` to the model at `path` (relative to the repo).
fn adapted(path: &str, pipeline: &str) -> Result<adaptc_ir::Model, String> {
    let mut model = onnx::load(&root().join(path)).map_err(|e| format!("{path}: {e}"))?;
    let manager = PassManager::new(&Registry::builtin(), pipeline).map_err(|e| e.to_string())?;
    manager.run(&mut model).map_err(|e| e.to_string())?;
    Ok(model)
}

/// Deterministic token ids in `[0, vocab)`.
fn ids(batch: usize, seq: usize, vocab: i64, seed: u64) -> Tensor {
    let mut s = seed;
    let v: Vec<i64> = (0..batch * seq)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as i64).rem_euclid(vocab)
        })
        .collect();
    Tensor::from_vec(vec![batch, seq], v).unwrap_or_else(|_| Tensor::scalar(0i64))
}

/// Runs a training graph on both backends; every output within `rel` of its largest magnitude.
fn training_graph_parity(
    model: &adaptc_ir::Model,
    inputs: HashMap<String, Tensor>,
    rel: f64,
    cov: &mut Coverage,
) -> Result<Placement, String> {
    let (want, got, placement) = both(model, &inputs)?;
    cov.add(&placement);
    println!("  {placement}");
    let mut worst = 0.0f64;
    for ((n, w), (_, g)) in want.iter().zip(&got) {
        worst = worst.max(compare(n, w, g, rel, 1.0)?);
    }
    println!("  {} outputs, largest difference {worst:.2e} of each output's scale", want.len());
    Ok(placement)
}

fn bert_training_graph(cov: &mut Coverage) -> CaseResult {
    let model = adapted(
        "tests/fixtures/models/bert6.onnx",
        "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},build-training-graph{loss=cross-entropy}",
    )?;
    training_graph_parity(&model, bert_inputs(&model)?, 1e-4, cov).map(|_| None)
}

/// The BERT training graph with fused attention: parity with the CPU, and the fused ops (six
/// of each, one per layer) all on the device.
fn bert_fused_attention_training_graph(cov: &mut Coverage) -> CaseResult {
    let model = adapted(
        "tests/fixtures/models/bert6.onnx",
        "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},fuse-attention,build-training-graph{loss=cross-entropy}",
    )?;
    let placement = training_graph_parity(&model, bert_inputs(&model)?, 1e-4, cov)?;
    let mut problems = Vec::new();
    for op in ["ai.adaptc::SoftmaxAttention", "ai.adaptc::SoftmaxAttentionGrad"] {
        if let Some((n, why)) = placement.host.get(op) {
            problems.push(format!("{op} ran on the host ×{n}: {why}"));
        }
        match placement.device.get(op) {
            Some(6) => {}
            n => problems.push(format!("{op} ran on the device {} times, not 6", n.copied().unwrap_or(0))),
        }
    }
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(problems.join("; "))
    }
}

/// A batch of 4 sequences of 16 tokens, rows padded by 0, 3, 6 and 9 (masked keys), labels for
/// 3 classes: the inputs of `model` among them.
fn bert_inputs(model: &adaptc_ir::Model) -> Result<HashMap<String, Tensor>, String> {
    let (b, s) = (4, 16);
    let mask: Vec<i64> = (0..b * s).map(|k| i64::from(k % s < s - (k / s) * 3)).collect();
    let inputs = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 100, 1)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], mask).map_err(|e| e.to_string())?),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).map_err(|e| e.to_string())?),
        ("labels".to_string(), Tensor::from_vec(vec![b], vec![0i64, 2, 1, 2]).map_err(|e| e.to_string())?),
    ]);
    let names: Vec<String> = model.graph.inputs.iter().map(|v| v.name.clone()).collect();
    Ok(inputs.into_iter().filter(|(k, _)| names.contains(k)).collect())
}

fn llama_training_graph(cov: &mut Coverage) -> CaseResult {
    let model = adapted(
        "tests/fixtures/models/llama4/model.onnx",
        "insert-lora{rank=8 alpha=16 targets=all-linear},build-training-graph{loss=causal-lm}",
    )?;
    training_graph_parity(&model, llama_inputs(&model)?, 1e-4, cov).map(|_| None)
}

/// The Llama LoRA training graph in mixed precision: frozen weights in bf16, bf16 products
/// and their gradients, f32 everywhere else.
fn llama_bf16_training_graph(cov: &mut Coverage) -> CaseResult {
    // Data-movement gradients other than the reshapes scatter in f32 only (the CPU kernel's
    // rule too); any other bf16 fallback is a gap in the device path.
    llama_mixed_precision(
        "insert-lora{rank=8 alpha=16 targets=all-linear},autocast{dtype=bf16},build-training-graph{loss=causal-lm}",
        &["ai.adaptc::IndexMapGrad"],
        cov,
    )
}

/// The same with fused attention and activations stored in bf16 (`adaptc train --autocast
/// bf16-activations`): layout ops and chains move bf16 values, and none of it may fall back.
fn llama_bf16_activations_training_graph(cov: &mut Coverage) -> CaseResult {
    llama_mixed_precision(
        "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16 activations=bf16},\
         build-training-graph{loss=causal-lm}",
        &[],
        cov,
    )
}

/// Parity of the Llama training graph `pipeline` makes, within bf16 tolerance, with no bf16
/// work on the host but in the `allowed` ops.
fn llama_mixed_precision(pipeline: &str, allowed: &[&str], cov: &mut Coverage) -> CaseResult {
    if Registry::builtin().get("autocast").is_none() {
        return Ok(Some("this build has no autocast pass".into()));
    }
    let model = adapted("tests/fixtures/models/llama4/model.onnx", pipeline)?;
    let placement = training_graph_parity(&model, llama_inputs(&model)?, 3e-2, cov)?;
    let bf16_on_host: Vec<String> = placement
        .host
        .iter()
        .filter(|(op, (_, why))| why.contains("bf16") && !allowed.contains(&op.as_str()))
        .map(|(op, (n, why))| format!("{op} ×{n}: {why}"))
        .collect();
    if bf16_on_host.is_empty() {
        Ok(None)
    } else {
        Err(format!("bf16 work on the host: {}", bf16_on_host.join("; ")))
    }
}

fn llama_inputs(model: &adaptc_ir::Model) -> Result<HashMap<String, Tensor>, String> {
    llama_batch(model, 2, 24, 7)
}

/// A Llama batch of `b` × `s` tokens (ids from `seed`), with the inputs `model` has.
fn llama_batch(model: &adaptc_ir::Model, b: usize, s: usize, seed: u64) -> Result<HashMap<String, Tensor>, String> {
    let names: Vec<String> = model.graph.inputs.iter().map(|v| v.name.clone()).collect();
    let mut inputs = HashMap::from([("input_ids".to_string(), ids(b, s, 200, seed))]);
    if names.iter().any(|n| n == "attention_mask") {
        inputs.insert(
            "attention_mask".into(),
            Tensor::from_vec(vec![b, s], vec![1i64; b * s]).map_err(|e| e.to_string())?,
        );
    }
    if names.iter().any(|n| n == "position_ids") {
        let pos: Vec<i64> = (0..b * s).map(|k| (k % s) as i64).collect();
        inputs.insert("position_ids".into(), Tensor::from_vec(vec![b, s], pos).map_err(|e| e.to_string())?);
    }
    Ok(inputs)
}

/// Each step's (loss, gradient norm, what the CUDA graph did) and the final weights.
type Steps = (Vec<(f64, f32, Option<String>)>, Vec<(String, Tensor)>);

/// Ten optimizer steps of the Llama LoRA graph as `adaptc train --autocast bf16-activations`
/// builds it, with and without CUDA graphs. Step 5 reloads the state (the capture must be
/// dropped: it reads the state's old buffers) and steps 6.. have shorter rows (another key).
fn cuda_graph_steps(_: &mut Coverage) -> CaseResult {
    use adaptc_train::step::Stepper;
    use adaptc_train::{AdamW, AdamWConfig};
    let model = adapted(
        "tests/fixtures/models/llama4/model.onnx",
        "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16 activations=bf16},\
         build-training-graph{loss=causal-lm}",
    )?;
    let trainable = adaptc_passes::adapters::record::AdapterState::load(&model).map_err(|e| e.to_string())?.trainable;
    let mut params = Vec::new();
    for name in &trainable {
        let t = model.graph.initializer(name).ok_or(format!("no initializer `{name}`"))?;
        let t = Tensor::from_ir(t).map_err(|e| e.to_string())?;
        // LoRA's B starts at zero; give every factor values so that both move.
        let v: Vec<f32> = (0..t.numel()).map(|k| ((k * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        params.push((name.clone(), Tensor::from_vec(t.shape().to_vec(), v).map_err(|e| e.to_string())?));
    }
    let run = |graphs: bool| -> Result<Steps, String> {
        let e = |e: adaptc_train::TrainError| format!("cuda_graphs={graphs}: {e}");
        let mut params = params.clone();
        let mut opt =
            AdamW::new(AdamWConfig::default(), params.iter().map(|(n, t)| (n.as_str(), t.numel()))).map_err(e)?;
        let options = SessionOptions { device: Device::Cuda, cuda_graphs: graphs, ..Default::default() };
        let stepper = Stepper::new(model.clone(), options, &params, 1, Some(1.0)).map_err(e)?;
        stepper.load(&params, &opt).map_err(e)?;
        let mut trace = Vec::new();
        for step in 0..10u64 {
            if step == 5 {
                stepper.sync(&mut params, &mut opt).map_err(e)?;
                stepper.load(&params, &opt).map_err(e)?;
            }
            let seq = if step < 6 { 24 } else { 16 };
            let batch = llama_batch(&model, 2, seq, 100 + step)?;
            let out = stepper.step(vec![batch], 1e-3, &mut opt, step + 1).map_err(e)?;
            trace.push((out.loss, out.grad_norm, out.placement.and_then(|p| p.graph)));
        }
        stepper.sync(&mut params, &mut opt).map_err(e)?;
        Ok((trace, params))
    };
    let (eager, eager_params) = run(false)?;
    let (graphed, graphed_params) = run(true)?;
    let mut problems = Vec::new();
    let expect = [
        "warming", "warming", "captured", "replayed", "replayed", "warming", "warming", "warming", "captured",
        "replayed",
    ];
    for (step, ((want, got), note)) in eager.iter().zip(&graphed).zip(expect).enumerate() {
        let said = got.2.clone().unwrap_or_default();
        println!(
            "  step {step}: loss {:.6} / {:.6}, grad norm {:.6} / {:.6}; graph: {said}",
            want.0, got.0, want.1, got.1
        );
        if !said.starts_with(note) {
            problems.push(format!("step {step}: the graph was `{said}`, expected `{note}…`"));
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-6);
        if !close(want.0, got.0) || !close(f64::from(want.1), f64::from(got.1)) {
            problems.push(format!("step {step}: loss/norm {:?} vs {:?}", (want.0, want.1), (got.0, got.1)));
        }
    }
    for ((n, w), (_, g)) in eager_params.iter().zip(&graphed_params) {
        if let Err(e) = compare(n, w, g, 1e-5, 1e-3) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(problems.join("; "))
    }
}

/// `ClipGradNorm(g1, g2)` with `max_norm` a third of the gradients' norm, then `AdamW(p, g1, m,
/// v, scale, k)`: inputs of 37×29 and 300 elements (several blocks, partial last ones). Both
/// ops must run on the device, and every output match the CPU within 1e-6 relative.
fn optimizer_step(cov: &mut Coverage) -> CaseResult {
    let (model, inputs) = optimizer_graph()?;
    let (want, got, placement) = both(&model, &inputs)?;
    cov.add(&placement);
    println!("  {placement}");
    let mut problems = Vec::new();
    for op in ["ai.adaptc::ClipGradNorm", "ai.adaptc::AdamW"] {
        if let Some((n, why)) = placement.host.get(op) {
            problems.push(format!("{op} ran on the host ×{n}: {why}"));
        }
        if placement.device.get(op).copied().unwrap_or(0) != 1 {
            problems.push(format!("{op} did not run on the device"));
        }
    }
    // The clip must have clipped (scale < 1), or the case would not test the scale's use.
    let scale = want.iter().find(|(n, _)| n == "scale").and_then(|(_, t)| t.as_slice::<f32>().map(|s| s[0]));
    if !scale.is_some_and(|s| s < 1.0) {
        problems.push(format!("the CPU's clip scale is {scale:?}, not below 1"));
    }
    let mut worst = 0.0f64;
    for ((n, w), (_, g)) in want.iter().zip(&got) {
        match compare(n, w, g, 1e-6, 1e-3) {
            Ok(d) => worst = worst.max(d),
            Err(e) => problems.push(e),
        }
    }
    println!("  {} outputs, largest relative difference {worst:.2e}", want.len());
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(problems.join("; "))
    }
}

/// The graph and inputs of [`optimizer_step`]: the step's scalars `k` as the trainer computes
/// them (lr 2e-3, weight decay 0.01, β (0.9, 0.999), ε 1e-8, step 5).
fn optimizer_graph() -> Result<(adaptc_ir::Model, HashMap<String, Tensor>), String> {
    use adaptc_ir::{Attribute, DataType, Dim, Graph, Node, OpKey, ValueInfo};
    let (rows, cols, n2) = (37usize, 29usize, 300usize);
    let mut rng = 0x5eed_u64;
    let mut rand = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((rng >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    };
    let (p, g1, m, v, g2) = (
        rand(rows * cols, -1.0, 1.0),
        rand(rows * cols, -0.5, 0.5),
        rand(rows * cols, -0.1, 0.1),
        rand(rows * cols, 0.0, 0.01),
        rand(n2, -2.0, 2.0),
    );
    let norm: f64 = g1.iter().chain(&g2).map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let (lr, wd, b1, b2, eps, t) = (2e-3f64, 0.01f64, 0.9f64, 0.999f64, 1e-8f32, 5);
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let k: Vec<f32> = [1.0 - lr * wd, 1.0 - b1, b2, 1.0 - b2, lr / bc1, bc2.sqrt(), f64::from(eps)]
        .iter()
        .map(|&x| x as f32)
        .collect();

    let known = |d: &[usize]| d.iter().map(|&n| Dim::Known(n as i64)).collect::<Vec<_>>();
    let mut g = Graph::new("optimizer_step");
    let (param, grad2, coef) = (vec![rows, cols], vec![n2], vec![k.len()]);
    for (name, shape) in [("p", &param), ("g1", &param), ("m", &param), ("v", &param), ("g2", &grad2), ("k", &coef)] {
        g.inputs.push(ValueInfo::tensor(name, DataType::Float, known(shape)));
    }
    for (name, shape) in [("norm", &vec![]), ("scale", &vec![]), ("p2", &param), ("m2", &param), ("v2", &param)] {
        g.outputs.push(ValueInfo::tensor(name, DataType::Float, known(shape)));
    }
    let clip = Node::new(
        OpKey::new("ai.adaptc", "ClipGradNorm"),
        vec!["g1".into(), "g2".into()],
        vec!["norm".into(), "scale".into()],
    )
    .with_attr(Attribute::float("max_norm", (norm / 3.0) as f32));
    g.add_node(clip.named("clip")).map_err(|e| e.to_string())?;
    let adamw = Node::new(
        OpKey::new("ai.adaptc", "AdamW"),
        ["p", "g1", "m", "v", "scale", "k"].iter().map(|s| s.to_string()).collect(),
        vec!["p2".into(), "m2".into(), "v2".into()],
    );
    g.add_node(adamw.named("adamw")).map_err(|e| e.to_string())?;
    let model = adaptc_ir::Model::new(g, 21);

    let tensor = |shape: Vec<usize>, v: Vec<f32>| Tensor::from_vec(shape, v).map_err(|e| e.to_string());
    let inputs = HashMap::from([
        ("p".to_string(), tensor(vec![rows, cols], p)?),
        ("g1".to_string(), tensor(vec![rows, cols], g1)?),
        ("m".to_string(), tensor(vec![rows, cols], m)?),
        ("v".to_string(), tensor(vec![rows, cols], v)?),
        ("g2".to_string(), tensor(vec![n2], g2)?),
        ("k".to_string(), tensor(vec![k.len()], k)?),
    ]);
    Ok((model, inputs))
}

/// Llama's attention mask as transformers exports it: `Cast(attention_mask → bool)` [b, s]
/// gathered with index pairs [b, 1, s, s, 2] (the pair at [i, 0, q, j] is (i, j)) into
/// [b, 1, s, s], then `And` with a causal mask; beside it a float GatherND with a trailing slice
/// and negative indices, and one with `batch_dims` 1. All three GatherND must run on the device,
/// and every output equal the CPU's.
fn gather_nd_mask(cov: &mut Coverage) -> CaseResult {
    let (model, inputs) = gather_nd_graph()?;
    let (want, got, placement) = both(&model, &inputs)?;
    cov.add(&placement);
    println!("  {placement}");
    let mut problems = Vec::new();
    if let Some((n, why)) = placement.host.get("GatherND") {
        problems.push(format!("GatherND ran on the host ×{n}: {why}"));
    }
    match placement.device.get("GatherND") {
        Some(3) => {}
        n => problems.push(format!("GatherND ran on the device {} times, not 3", n.copied().unwrap_or(0))),
    }
    for ((n, w), (_, g)) in want.iter().zip(&got) {
        if w != g {
            problems.push(format!("{n}: cpu {:?} vs cuda {:?}", w, g));
        }
    }
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(problems.join("; "))
    }
}

/// The graph and inputs of [`gather_nd_mask`]: 3 sequences of 7 tokens padded by 0, 2 and 4.
fn gather_nd_graph() -> Result<(adaptc_ir::Model, HashMap<String, Tensor>), String> {
    use adaptc_ir::{Attribute, DataType, Dim, Graph, Node, OpKey, ValueInfo};
    let (b, s) = (3usize, 7usize);
    let known = |d: &[usize]| d.iter().map(|&n| Dim::Known(n as i64)).collect::<Vec<_>>();
    let mut g = Graph::new("gather_nd_mask");
    for (name, dtype, shape) in [
        ("attention_mask", DataType::Int64, vec![b, s]),
        ("pairs", DataType::Int64, vec![b, 1, s, s, 2]),
        ("causal", DataType::Bool, vec![s, s]),
        ("x", DataType::Float, vec![3, 4, 6]),
        ("x_idx", DataType::Int64, vec![5, 2]),
        ("z", DataType::Float, vec![2, 3, 20]),
        ("z_idx", DataType::Int64, vec![2, 5, 1]),
    ] {
        g.inputs.push(ValueInfo::tensor(name, dtype, known(&shape)));
    }
    for (name, dtype, shape) in [
        ("mask4", DataType::Bool, vec![b, 1, s, s]),
        ("mask", DataType::Bool, vec![b, 1, s, s]),
        ("slices", DataType::Float, vec![5, 6]),
        ("rows", DataType::Float, vec![2, 5, 20]),
    ] {
        g.outputs.push(ValueInfo::tensor(name, dtype, known(&shape)));
    }
    let node = |op: &str, ins: &[&str], out: &str| {
        Node::new(OpKey::new("", op), ins.iter().map(|s| s.to_string()).collect(), vec![out.to_string()])
    };
    let cast =
        node("Cast", &["attention_mask"], "mask_b").with_attr(Attribute::int("to", DataType::Bool.code().into()));
    let nodes = [
        cast.named("cast"),
        node("GatherND", &["mask_b", "pairs"], "mask4").named("gather_mask"),
        node("And", &["mask4", "causal"], "mask").named("and"),
        node("GatherND", &["x", "x_idx"], "slices").named("gather_slices"),
        node("GatherND", &["z", "z_idx"], "rows").with_attr(Attribute::int("batch_dims", 1)).named("gather_rows"),
    ];
    for n in nodes {
        g.add_node(n).map_err(|e| e.to_string())?;
    }
    let model = adaptc_ir::Model::new(g, 17);

    let err = |e: adaptc_runtime::RuntimeError| e.to_string();
    let mask: Vec<i64> = (0..b * s).map(|k| i64::from(k % s < s - (k / s) * 2)).collect();
    let mut pairs = Vec::with_capacity(b * s * s * 2);
    for i in 0..b {
        for _q in 0..s {
            for j in 0..s {
                pairs.extend([i as i64, j as i64]);
            }
        }
    }
    let causal: Vec<bool> = (0..s * s).map(|k| k % s <= k / s).collect();
    let x: Vec<f32> = (0..3 * 4 * 6).map(|k| k as f32 * 0.5 - 3.0).collect();
    let x_idx = vec![0i64, 0, 2, 3, -1, -4, 1, 2, -3, -1];
    let z: Vec<f32> = (0..2 * 3 * 20).map(|k| (k as f32).sin()).collect();
    let z_idx = vec![2i64, 0, -1, 1, 1, 0, -3, 2, 2, 1];
    let inputs = HashMap::from([
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], mask).map_err(err)?),
        ("pairs".to_string(), Tensor::from_vec(vec![b, 1, s, s, 2], pairs).map_err(err)?),
        ("causal".to_string(), Tensor::from_vec(vec![s, s], causal).map_err(err)?),
        ("x".to_string(), Tensor::from_vec(vec![3, 4, 6], x).map_err(err)?),
        ("x_idx".to_string(), Tensor::from_vec(vec![5, 2], x_idx).map_err(err)?),
        ("z".to_string(), Tensor::from_vec(vec![2, 3, 20], z).map_err(err)?),
        ("z_idx".to_string(), Tensor::from_vec(vec![2, 5, 1], z_idx).map_err(err)?),
    ]);
    Ok((model, inputs))
}

/// `SoftmaxAttention` + `SoftmaxAttentionGrad` with `products="bf16"`: the flash kernels for
/// head sizes 32 and 64 against the CPU, then the blocked path (`ADAPTC_CUDA_FLASH=0`) too.
fn flash_attention(cov: &mut Coverage) -> CaseResult {
    let mut problems = Vec::new();
    for d in [32usize, 64] {
        let (model, inputs) = flash_graph(d)?;
        let (want, flash, placement) = both(&model, &inputs)?;
        cov.add(&placement);
        std::env::set_var("ADAPTC_CUDA_FLASH", "0");
        let blocked = both(&model, &inputs);
        std::env::remove_var("ADAPTC_CUDA_FLASH");
        let (_, blocked, _) = blocked?;
        for op in ["ai.adaptc::SoftmaxAttention", "ai.adaptc::SoftmaxAttentionGrad"] {
            if let Some((n, why)) = placement.host.get(op) {
                problems.push(format!("d {d}: {op} ran on the host ×{n}: {why}"));
            }
        }
        let mut worst = (0.0f64, 0.0f64);
        for (((n, w), (_, f)), (_, b)) in want.iter().zip(&flash).zip(&blocked) {
            match compare(&format!("d {d} flash {n}"), w, f, 1e-2, 1e-2) {
                Ok(x) => worst.0 = worst.0.max(x),
                Err(e) => problems.push(e),
            }
            match compare(&format!("d {d} blocked {n}"), w, b, 1e-2, 1e-2) {
                Ok(x) => worst.1 = worst.1.max(x),
                Err(e) => problems.push(e),
            }
        }
        if flash.iter().zip(&blocked).all(|((_, f), (_, b))| f == b) {
            problems.push(format!("d {d}: the flash and blocked outputs are identical: the flash kernels did not run"));
        }
        println!("  d {d}: largest relative difference from the CPU: flash {:.2e}, blocked {:.2e}", worst.0, worst.1);
    }
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(problems.join("; "))
    }
}

/// The flash case's graph on the CPU alone: valid, and its fully masked row (batch 0, head 1,
/// query 77) gives zeros and lse −∞ while the rows around it do not.
fn flash_graph_on_cpu() -> CaseResult {
    for d in [32usize, 64] {
        let (model, inputs) = flash_graph(d)?;
        let cpu = Session::new(&model, SessionOptions::default()).map_err(|e| format!("cpu: {e}"))?;
        let out = cpu.run(inputs).map_err(|e| format!("cpu: {e}"))?;
        let get = |name: &str| {
            out.iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, t)| t.as_slice::<f32>().map(|s| s.to_vec()))
                .ok_or_else(|| format!("no f32 output {name}"))
        };
        let (y, lse) = (get("y")?, get("lse")?);
        let s = 150;
        let row = |q: usize| &y[(s + q) * d..(s + q + 1) * d];
        if !row(77).iter().all(|&x| x == 0.0) || lse[s + 77] != f32::NEG_INFINITY {
            return Err(format!("d {d}: the fully masked row is not zeros with lse −∞"));
        }
        if row(76).iter().all(|&x| x == 0.0) || !lse[s + 76].is_finite() {
            return Err(format!("d {d}: row 76 looks masked too"));
        }
    }
    Ok(None)
}

/// The graph and inputs of [`flash_attention`]: 2 × 3 heads of 150 queries and keys, head size
/// `d`; the bias [2, 1, 150, 150] is causal, masks batch entry 1's last 30 keys, and masks
/// every key of one row (0 out, `masked_rows_zero=1`).
fn flash_graph(d: usize) -> Result<(adaptc_ir::Model, HashMap<String, Tensor>), String> {
    use adaptc_ir::{Attribute, DataType, Dim, Graph, Node, OpKey, ValueInfo};
    let (b, h, s) = (2usize, 3usize, 150usize);
    let known = |x: &[usize]| x.iter().map(|&n| Dim::Known(n as i64)).collect::<Vec<_>>();
    let shapes = [
        ("a", vec![b, h, s, d]),
        ("b", vec![b, h, d, s]),
        ("bias", vec![b, 1, s, s]),
        ("v", vec![b, h, s, d]),
        ("dy", vec![b, h, s, d]),
    ];
    let mut g = Graph::new("flash_attention");
    for (name, shape) in &shapes {
        g.inputs.push(ValueInfo::tensor(*name, DataType::Float, known(shape)));
    }
    for (name, shape) in [
        ("y", vec![b, h, s, d]),
        ("lse", vec![b, h, s]),
        ("da", vec![b, h, s, d]),
        ("db", vec![b, h, d, s]),
        ("dv", vec![b, h, s, d]),
    ] {
        g.outputs.push(ValueInfo::tensor(name, DataType::Float, known(&shape)));
    }
    let strs = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let attrs =
        |n: Node| n.with_attr(Attribute::string("products", "bf16")).with_attr(Attribute::int("masked_rows_zero", 1));
    let fwd =
        Node::new(OpKey::new("ai.adaptc", "SoftmaxAttention"), strs(&["a", "b", "bias", "v"]), strs(&["y", "lse"]));
    let grad = Node::new(
        OpKey::new("ai.adaptc", "SoftmaxAttentionGrad"),
        strs(&["a", "b", "bias", "v", "y", "lse", "dy"]),
        strs(&["da", "db", "dv"]),
    );
    g.add_node(attrs(fwd).named("attention")).map_err(|e| e.to_string())?;
    g.add_node(attrs(grad).named("attention_grad")).map_err(|e| e.to_string())?;
    let model = adaptc_ir::Model::new(g, 17);
    let mut rng = 0x0f1a_5eed_u64 + d as u64;
    let mut next = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut inputs = HashMap::new();
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if *name == "bias" {
            (0..n)
                .map(|k| {
                    let (i, q, j) = (k / (s * s), k / s % s, k % s);
                    let masked = j > q || (i == 1 && j >= s - 30) || (i == 0 && q == 77);
                    if masked {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect()
        } else {
            (0..n).map(|_| next() * 1.5).collect()
        };
        inputs.insert(name.to_string(), Tensor::from_vec(shape.clone(), data).map_err(|e| e.to_string())?);
    }
    Ok((model, inputs))
}
