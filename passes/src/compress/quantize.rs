//! `quantize-weights`: round-to-nearest weight-only quantization of linear layers, written either
//! as standard ONNX (`DequantizeLinear` in front of the unchanged MatMul/Gemm) or as
//! onnxruntime's `com.microsoft::MatMulNBits`.
//!
//! For every linear layer chosen by `targets` (PEFT-style module paths, default `all-linear`:
//! every linear layer but an output head; `exclude` and `layers` narrow the choice, see
//! [`crate::adapters::targets`]), the weight `W` is cut into groups along its reduction
//! (input-feature) axis — one group per output channel (`block=0`, the default) or blocks of
//! `block` elements — and each group is quantized to `bits` (8 or 4) with the `scheme`'s grid
//! ([`super::quant`] gives the formulas: `sym` narrow symmetric, `asym` with a zero point,
//! `sym-full` onnxruntime's full-range symmetric). A `block` that does not divide the number of
//! input features leaves a shorter last block (QDQ: `ceil(K / block)` scales per channel, as
//! ONNX's blocked quantization defines; MatMulNBits: the last block is zero-padded, as
//! onnxruntime's quantizer pads it).
//!
//! `format=qdq` replaces the weight initializer `W` by
//! `W = DequantizeLinear(W_quantized, W_scale[, W_zero_point], axis, block_size?)`: the quantized
//! tensor has `W`'s shape and stored layout (`int8`/`int4` for the symmetric schemes,
//! `uint8`/`uint4` with a zero point for `asym`; 4-bit values packed two per byte, low nibble
//! first), scales (and zero points) are `[N]` per channel or the blocked shape (`[⌈K/B⌉, N]`
//! for a `[K, N]` weight, `[N, ⌈K/B⌉]` for `[N, K]`) in the weight's float type. The value keeps
//! its name, so every reader of `W` — other layers sharing it, a tied embedding's `Gather` —
//! reads the dequantized weight (they are listed in the notes). `DequantizeLinear` needs opset
//! 13 for `axis`, 19 for `float16`/`bfloat16` scales and 21 for 4-bit data or `block_size`:
//! an older default-domain opset is raised after [`super::opset::raise_problems`] found no
//! operator whose meaning would change (otherwise the pass refuses, naming them); the IR version
//! follows (opset 21 needs IR 10).
//!
//! `format=matmulnbits` replaces `MatMul(x, W[K,N])`, `MatMul(x, Transpose(W[N,K]))` and
//! `Gemm(x, W, C?)` (`transB` 0 or 1) by `MatMulNBits(x, B, scales[, zero_points])` with
//! attributes `K`, `N`, `bits`, `block_size` (no `accuracy_level`), in onnxruntime's documented
//! layout: `B` `[N, ⌈K/block⌉, block·bits/8]` uint8, `scales` `[N·⌈K/block⌉]`, `zero_points`
//! (`asym`) `[N·⌈⌈K/block⌉·bits/8⌉]` uint8; the symmetric schemes store codes offset by
//! `2^(bits−1)`, the operator's implicit zero point. A bias `Add` stays; a Gemm's `C` becomes an
//! `Add`. The node keeps the MatMul's name and metadata. `block=0` needs `K` a power of two of
//! at least 16 (MatMulNBits' rule). Imports `com.microsoft` version 1. With `scheme=asym` (and
//! `sym-full`) the bytes equal onnxruntime's `MatMulNBitsQuantizer` (RTN/default algorithm) for
//! the same weights, `K` even (`scripts/crosscheck/quantize_ort.py` checks it).
//!
//! Refused, changing nothing: a weight that is not `float32`/`float16`/`bfloat16` or not
//! finite; a trainable weight (`adaptc.trainable=true` or listed in the adapter state); a weight
//! read as `[in,out]` by one layer and `[out,in]` by another; for `matmulnbits`, a weight with
//! any reader besides its layer; an opset raise that would change an operator's meaning.
//!
//! Reports: statistics `quant.layers` (linear layers), `quant.weights` (weight elements), `quant.bytes_before`,
//! `quant.bytes_after` (quantized data + scales + zero points), `quant.max_abs_err_e9` (the
//! largest absolute error of a dequantized weight, in units of 1e-9), `quant.shared`; with
//! `report=path.json`, a JSON file with, for every quantized weight, its module, nodes, shape,
//! bytes before/after and the max/mean absolute error of the dequantized weight, and the totals.
//!
//! Running QDQ models in onnxruntime: with its graph optimizations on (the default), onnxruntime
//! rewrites `DequantizeLinear` + `MatMul` into kernels that quantize the activations too, which
//! costs a little accuracy on top of the weights' (all-MiniLM-L6-v2, int8 per channel: cosine
//! 0.99956 with optimizations disabled, 0.99934 enabled; `bench/results/quantize.md`). Disable
//! them (`ORT_DISABLE_ALL`) to measure weight-only quantization, or use `format=matmulnbits`,
//! which onnxruntime runs as a weight-only kernel either way.
//!
//! After `quantize-weights{format=qdq}` a layer reads `DequantizeLinear`'s output, so the linear
//! matcher (and adapter or merge passes) no longer sees it as a linear layer with a constant
//! weight: run `dequantize-weights` first to merge adapters into a quantized base.
//!
//! Preconditions: none beyond a verified graph. Preserves: graph inputs and outputs, value names
//! (the weight's name in QDQ, the layer's output in both), every unselected weight.
//!
//! Example pipelines: `quantize-weights` (int8 per channel, QDQ),
//! `quantize-weights{bits=4 block=32 scheme=asym format=matmulnbits}`.

use std::path::PathBuf;

use adaptc_ir::{Attribute, DataType, Graph, Model, Node, NodeId, OpKey, Tensor};
use serde::Serialize;

use super::opset::{raise_problems, set_default_opset};
use super::quant::{encode_floats, Grid, QuantizedMatrix, Scheme};
use crate::adapters::record::{AdapterState, CREATED_BY, TRAINABLE};
use crate::adapters::targets::Selection;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::{LinearForm, LinearLayer, WeightLayout};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "quantize-weights";

/// The contrib domain of `MatMulNBits`.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Where the quantized weights go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `DequantizeLinear` + the original MatMul/Gemm.
    Qdq,
    /// `com.microsoft::MatMulNBits`.
    MatMulNBits,
}

/// The `quantize-weights` pass.
#[derive(Clone, Debug)]
pub struct QuantizeWeights {
    grid: Grid,
    /// 0: one group per output channel.
    block: usize,
    format: Format,
    selection: Selection,
    described: String,
    report: Option<PathBuf>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "quantize linear-layer weights to int8/int4 (round to nearest), as DequantizeLinear or MatMulNBits",
        options: vec![
            OptionInfo::new("bits", OptionKind::Int, Some("8"), "bits per weight: 8 or 4"),
            OptionInfo::new(
                "block",
                OptionKind::Int,
                Some("0"),
                "weights per scale along the input features: 0 = one scale per output channel, or a power of two ≥ 16 (32, 64, 128)",
            ),
            OptionInfo::new(
                "scheme",
                OptionKind::Enum(Scheme::NAMES),
                Some("sym"),
                "sym: zero point 0, scale max|w|/(2^(b-1)-1); asym: min/max with a zero point; sym-full: onnxruntime's symmetric",
            ),
            OptionInfo::new(
                "format",
                OptionKind::Enum(&["qdq", "matmulnbits"]),
                Some("qdq"),
                "qdq: DequantizeLinear before the MatMul (standard ONNX); matmulnbits: com.microsoft MatMulNBits",
            ),
            OptionInfo::new(
                "targets",
                OptionKind::List,
                Some("all-linear"),
                "modules to quantize, PEFT-style (`query`, `re:<regex>`, `all-linear` = every linear layer but the head)",
            ),
            OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave in float, matched like targets"),
            OptionInfo::new("layers", OptionKind::List, Some(""), "only blocks with these indices (default: all)"),
            OptionInfo::new("report", OptionKind::String, Some(""), "write a per-layer JSON report to this file"),
        ],
        example: "quantize-weights{bits=4 block=32 scheme=asym format=matmulnbits}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let bits = o.usize("bits")?;
    if bits != 8 && bits != 4 {
        return Err(PassError::bad_option(
            PASS,
            "bits",
            format!("{bits} bits are not supported: use 8 (int8/uint8) or 4 (int4/uint4)"),
        ));
    }
    let block = o.usize("block")?;
    if block != 0 && (block < 16 || !block.is_power_of_two()) {
        return Err(PassError::bad_option(
            PASS,
            "block",
            format!(
                "{block} is neither 0 (one scale per output channel) nor a power of two of at least 16 \
                 (e.g. 32, 64 or 128; MatMulNBits' rule, kept for both formats)"
            ),
        ));
    }
    let scheme = Scheme::parse(&o.choice("scheme")?).unwrap_or(Scheme::Sym);
    let format = if o.choice("format")? == "matmulnbits" { Format::MatMulNBits } else { Format::Qdq };
    let (targets, exclude, layers) = (o.list("targets")?, o.list("exclude")?, o.list("layers")?);
    let selection = Selection::parse(PASS, &targets, &exclude, &layers)?;
    let described = Selection::describe(&targets, &exclude, &layers);
    let report = o.string("report")?;
    let report = (!report.is_empty()).then(|| PathBuf::from(report));
    Ok(Box::new(QuantizeWeights { grid: Grid::new(bits as u32, scheme), block, format, selection, described, report }))
}

impl QuantizeWeights {
    /// The pass with default selection (`all-linear`), for library use.
    pub fn new(bits: u32, block: usize, scheme: Scheme, format: Format) -> QuantizeWeights {
        let all = ["all-linear".to_string()];
        QuantizeWeights {
            grid: Grid::new(bits, scheme),
            block,
            format,
            selection: Selection::parse(PASS, &all, &[], &[]).expect("all-linear parses"),
            described: Selection::describe(&all, &[], &[]),
            report: None,
        }
    }
}

/// One layer in the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub module: String,
    /// The MatMul/Gemm nodes reading the weight (more than one when layers share it).
    pub nodes: Vec<String>,
    pub weight: String,
    pub dtype: String,
    /// The weight's stored shape.
    pub shape: [u64; 2],
    pub layout: &'static str,
    pub in_features: u64,
    pub out_features: u64,
    /// Group length along the input features (`in_features` per channel).
    pub block: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub max_abs_err: f64,
    pub mean_abs_err: f64,
    /// The largest error in units of its group's step `|scale|` (≤ 0.5 for `sym` and `asym`).
    pub max_err_steps: f64,
    /// Other nodes reading the weight (QDQ: they read the dequantized weight).
    pub shared_with: Vec<String>,
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pass: &'static str,
    pub bits: u32,
    pub block: usize,
    pub scheme: &'static str,
    pub format: Format,
    /// `[old, new]` default-domain opset when it was raised.
    pub opset_raised: Option<[i64; 2]>,
    /// One entry per quantized weight tensor.
    pub layers: Vec<LayerReport>,
    /// Linear layers quantized (a weight shared by two layers counts twice).
    pub total_layers: usize,
    pub total_weights: u64,
    pub total_bytes_before: u64,
    pub total_bytes_after: u64,
    pub ratio: f64,
    pub max_abs_err: f64,
    pub mean_abs_err: f64,
}

/// One weight, checked.
struct Checked {
    weight: String,
    constant_node: Option<NodeId>,
    layers: Vec<LinearLayer>,
    module: String,
    dtype: DataType,
    dims: [u64; 2],
    in_out: bool,
    k: usize,
    n: usize,
    /// Group length (0: per channel).
    block: usize,
    shared_with: Vec<String>,
    bytes_before: u64,
}

/// One weight's quantization, computed before anything changes.
struct Plan {
    weight: String,
    /// The `Constant` node holding the weight, when it is not an initializer.
    constant_node: Option<NodeId>,
    layers: Vec<LinearLayer>,
    module: String,
    dtype: DataType,
    dims: [u64; 2],
    in_out: bool,
    quant: QuantizedMatrix,
    report: LayerReport,
}

/// What makes a `DequantizeLinear` need opset `need`.
fn qdq_feature(need: i64) -> &'static str {
    match need {
        21.. => "with 4-bit data or block_size",
        19 | 20 => "with float16/bfloat16 scales",
        _ => "with a per-channel axis",
    }
}

fn fail(module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, format!("`{module}`: {reason}"))
}

fn layout_name(layout: WeightLayout) -> &'static str {
    match layout {
        WeightLayout::InOut => "in_out",
        WeightLayout::OutIn => "out_in",
    }
}

impl Pass for QuantizeWeights {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let state = AdapterState::load(model)?;
        let graph = &model.graph;
        let selected = self.selection.select(graph);
        if selected.is_empty() {
            return Err(self.selection.no_match(PASS, graph, &self.described));
        }

        // Group the layers by weight, in graph order.
        let mut by_weight: Vec<(String, Vec<LinearLayer>)> = Vec::new();
        for layer in selected {
            match by_weight.iter_mut().find(|(w, _)| *w == layer.weight) {
                Some((_, ls)) => ls.push(layer),
                None => by_weight.push((layer.weight.clone(), vec![layer])),
            }
        }
        let mut checked = Vec::with_capacity(by_weight.len());
        for (weight, layers) in by_weight {
            checked.push(self.check(graph, &state, weight, layers)?);
        }

        // The opset DequantizeLinear needs, and whether raising to it is safe.
        let mut opset_raised = None;
        if self.format == Format::Qdq {
            let need = checked.iter().map(|c| self.qdq_opset(c.dtype)).max().unwrap_or(13);
            let have = model.opset("");
            if have.is_some_and(|h| h < need) {
                let have = have.unwrap_or(need);
                let problems = raise_problems(model, have, need);
                if !problems.is_empty() {
                    return Err(PassError::failed(
                        PASS,
                        format!(
                            "DequantizeLinear {} needs opset {need}, but the model imports opset {have} and raising it \
                             would change: {} (re-export the model at opset {need}, or use format=matmulnbits)",
                            qdq_feature(need),
                            problems.join("; ")
                        ),
                    ));
                }
                opset_raised = Some([have, need]);
            } else if have.is_none() {
                opset_raised = Some([0, need]);
            }
        }

        let plans = self.quantize_all(graph, checked)?;
        let report = self.report(&plans, opset_raised);
        if let Some(path) = &self.report {
            write_report(path, &report)?;
        }

        // Apply.
        let mut shared = 0i64;
        for plan in &plans {
            if !plan.report.shared_with.is_empty() {
                shared += 1;
                cx.note(format!(
                    "`{}`: the weight `{}` is also read by {}; they now read the dequantized weight",
                    plan.module,
                    plan.weight,
                    plan.report.shared_with.join(", ")
                ));
            }
            match self.format {
                Format::Qdq => apply_qdq(&mut model.graph, plan, self.grid, self.block)?,
                Format::MatMulNBits => apply_matmulnbits(&mut model.graph, plan, self.grid)?,
            }
        }
        if let Some([_, new]) = opset_raised {
            set_default_opset(model, new);
            cx.note(format!("raised the default-domain opset to {new} for DequantizeLinear {}", qdq_feature(new)));
        }
        if self.format == Format::MatMulNBits && model.opset(MS_DOMAIN).is_none() {
            model.opset_imports.push(adaptc_ir::OpsetImport::new(MS_DOMAIN, 1));
        }

        Ok(PassOutcome::changed(true)
            .stat("quant.layers", report.total_layers as i64)
            .stat("quant.weights", report.total_weights as i64)
            .stat("quant.bytes_before", report.total_bytes_before as i64)
            .stat("quant.bytes_after", report.total_bytes_after as i64)
            .stat("quant.max_abs_err_e9", (report.max_abs_err * 1e9).round() as i64)
            .stat("quant.shared", shared))
    }
}

impl QuantizeWeights {
    /// The default-domain opset a `DequantizeLinear` of these weights needs.
    fn qdq_opset(&self, dtype: DataType) -> i64 {
        if self.grid.bits == 4 || self.block != 0 {
            21
        } else if dtype != DataType::Float {
            19
        } else {
            13
        }
    }

    /// Checks one weight (everything but its values).
    fn check(
        &self,
        graph: &Graph,
        state: &AdapterState,
        weight: String,
        layers: Vec<LinearLayer>,
    ) -> Result<Checked, PassError> {
        let first = &layers[0];
        let module = first.module_path.clone().unwrap_or_else(|| weight.clone());
        let tensor = first
            .weight_tensor(graph)
            .ok_or_else(|| fail(&module, format!("the weight `{weight}` is not a constant")))?;
        let dtype = tensor.dtype();
        if !matches!(dtype, DataType::Float | DataType::Float16 | DataType::BFloat16) {
            return Err(fail(
                &module,
                format!("the weight `{weight}` is {dtype}; only float32, float16 and bfloat16 weights are quantized"),
            ));
        }
        if tensor.metadata.get(TRAINABLE) == Some("true") || state.trainable.contains(&weight) {
            return Err(fail(
                &module,
                format!(
                    "the weight `{weight}` is trainable (adaptc.trainable=true): quantizing it would freeze it; \
                     exclude it, or quantize before marking it trainable"
                ),
            ));
        }
        if let Some(other) = layers.iter().find(|l| l.layout != first.layout) {
            return Err(fail(
                &module,
                format!(
                    "the weight `{weight}` is read as {} by `{}` and as {} by `{}`: its reduction axis is ambiguous",
                    layout_name(first.layout),
                    graph.node(first.node).label(),
                    layout_name(other.layout),
                    graph.node(other.node).label()
                ),
            ));
        }
        let dims = [tensor.dims()[0], tensor.dims()[1]];
        let (k, n) = (first.in_features as usize, first.out_features as usize);
        let in_out = first.layout == WeightLayout::InOut;
        if tensor.numel() != (k * n) as u64 {
            return Err(fail(&module, format!("the weight `{weight}` {dims:?} does not hold {k}×{n} values")));
        }
        let constant_node =
            if graph.initializer(&weight).is_some() { None } else { graph.producer(&weight).map(|(id, _)| id) };

        // Readers of the weight besides the chosen layers.
        let own: Vec<NodeId> = layers.iter().flat_map(|l| std::iter::once(l.node).chain(l.transpose_node)).collect();
        let mut shared_with: Vec<String> =
            graph.uses(&weight).iter().filter(|u| !own.contains(&u.node)).map(|u| graph.node(u.node).label()).collect();
        for l in &layers {
            if let Some(t) = l.transpose_node {
                let t_out = graph.node(t).output(0).unwrap_or_default();
                shared_with
                    .extend(graph.uses(t_out).iter().filter(|u| u.node != l.node).map(|u| graph.node(u.node).label()));
            }
        }
        if graph.is_graph_output(&weight) {
            shared_with.push(format!("graph output `{weight}`"));
        }
        shared_with.sort();
        shared_with.dedup();

        let block = match self.format {
            Format::MatMulNBits => {
                if layers.len() > 1 || !shared_with.is_empty() {
                    let mut readers: Vec<String> = layers.iter().map(|l| graph.node(l.node).label()).collect();
                    readers.extend(shared_with.iter().cloned());
                    return Err(fail(
                        &module,
                        format!(
                            "the weight `{weight}` is shared ({}); MatMulNBits owns its weight, so it cannot serve the \
                             other readers: exclude the layer or use format=qdq",
                            readers.join(", ")
                        ),
                    ));
                }
                if let Some(t) = first.transpose_node {
                    if graph.is_graph_output(graph.node(t).output(0).unwrap_or_default()) {
                        return Err(fail(&module, "the transposed weight is a graph output"));
                    }
                }
                if self.block == 0 {
                    if k < 16 || !k.is_power_of_two() {
                        return Err(fail(
                            &module,
                            format!(
                                "MatMulNBits needs block_size a power of two ≥ 16, so one scale per channel \
                                 (block=0) works only when the input features are one; this layer has K={k}: give \
                                 block=32, 64 or 128"
                            ),
                        ));
                    }
                    k
                } else {
                    self.block
                }
            }
            Format::Qdq => self.block,
        };

        let bytes_before = tensor.byte_len();
        Ok(Checked {
            weight,
            constant_node,
            layers,
            module,
            dtype,
            dims,
            in_out,
            k,
            n,
            block,
            shared_with,
            bytes_before,
        })
    }

    /// Quantizes the checked weights, several at a time (one thread per core).
    fn quantize_all(&self, graph: &Graph, checked: Vec<Checked>) -> Result<Vec<Plan>, PassError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(checked.len()).max(1);
        if threads == 1 {
            return checked.into_iter().map(|c| self.quantize_one(graph, c)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<Checked>>> =
            checked.into_iter().map(|c| std::sync::Mutex::new(Some(c))).collect();
        let mut done: Vec<(usize, Result<Plan, PassError>)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(slot) = slots.get(i) else { break };
                            let c = slot.lock().ok().and_then(|mut g| g.take());
                            if let Some(c) = c {
                                out.push((i, self.quantize_one(graph, c)));
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, p)| p).collect()
    }

    /// Reads one checked weight and quantizes it.
    fn quantize_one(&self, graph: &Graph, c: Checked) -> Result<Plan, PassError> {
        let Checked {
            weight,
            constant_node,
            layers,
            module,
            dtype,
            dims,
            in_out,
            k,
            n,
            block,
            shared_with,
            bytes_before,
        } = c;
        let first = &layers[0];
        let tensor = first
            .weight_tensor(graph)
            .ok_or_else(|| fail(&module, format!("the weight `{weight}` is not a constant")))?;
        let values = tensor.to_f32_lossy().map_err(|e| fail(&module, e))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(fail(&module, format!("the weight `{weight}` has a non-finite value at element {i}")));
        }
        let (quant, errors) = QuantizedMatrix::quantize_with_errors(&values, k, n, in_out, block, self.grid, dtype);
        drop(values);
        let groups = (n * quant.n_blocks) as u64;
        let float_bytes = dtype.storage_bytes(groups).unwrap_or(0);
        let bytes_after = match self.format {
            Format::Qdq => {
                let q = self.grid.qdq_type();
                q.storage_bytes((k * n) as u64).unwrap_or(0)
                    + float_bytes
                    + if self.grid.has_zero_point() { q.storage_bytes(groups).unwrap_or(0) } else { 0 }
            }
            Format::MatMulNBits => {
                (n * quant.n_blocks * quant.blob_size()) as u64
                    + float_bytes
                    + if self.grid.has_zero_point() { (n * quant.zero_point_row_bytes()) as u64 } else { 0 }
            }
        };
        let report = LayerReport {
            module: module.clone(),
            nodes: layers.iter().map(|l| graph.node(l.node).label()).collect(),
            weight: weight.clone(),
            dtype: dtype.to_string(),
            shape: dims,
            layout: layout_name(first.layout),
            in_features: first.in_features,
            out_features: first.out_features,
            block: quant.block,
            bytes_before,
            bytes_after,
            max_abs_err: errors.max_abs,
            mean_abs_err: errors.mean_abs(),
            max_err_steps: errors.max_steps,
            shared_with,
        };
        Ok(Plan { weight, constant_node, layers, module, dtype, dims, in_out, quant, report })
    }

    fn report(&self, plans: &[Plan], opset_raised: Option<[i64; 2]>) -> Report {
        let layers: Vec<LayerReport> = plans.iter().map(|p| p.report.clone()).collect();
        let total_weights: u64 = plans.iter().map(|p| p.dims[0] * p.dims[1]).sum();
        let before: u64 = layers.iter().map(|l| l.bytes_before).sum();
        let after: u64 = layers.iter().map(|l| l.bytes_after).sum();
        let weighted: f64 = plans.iter().map(|p| p.report.mean_abs_err * (p.dims[0] * p.dims[1]) as f64).sum();
        Report {
            pass: PASS,
            bits: self.grid.bits,
            block: self.block,
            scheme: self.grid.scheme.name(),
            format: self.format,
            opset_raised,
            total_layers: plans.iter().map(|p| p.layers.len()).sum(),
            total_weights,
            total_bytes_before: before,
            total_bytes_after: after,
            ratio: if before == 0 { 0.0 } else { after as f64 / before as f64 },
            max_abs_err: layers.iter().map(|l| l.max_abs_err).fold(0.0, f64::max),
            mean_abs_err: if total_weights == 0 { 0.0 } else { weighted / total_weights as f64 },
            layers,
        }
    }
}

/// Writes the report next to its final name and renames it into place.
fn write_report(path: &std::path::Path, report: &Report) -> Result<(), PassError> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| PassError::failed(PASS, format!("cannot serialize the report: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| PassError::failed(PASS, format!("cannot write the report {}: {e}", path.display())))
}

/// A new node tagged with this pass.
fn tagged(op: OpKey, inputs: Vec<String>, output: String, name: String, attrs: Vec<Attribute>) -> Node {
    let mut node = attrs.into_iter().fold(Node::new(op, inputs, vec![output]).named(name), Node::with_attr);
    node.metadata.set(CREATED_BY, PASS);
    node
}

fn add_initializer(
    graph: &mut Graph,
    name: &str,
    dtype: DataType,
    dims: Vec<u64>,
    bytes: Vec<u8>,
) -> Result<String, PassError> {
    let name = graph.unique_name(name);
    graph.add_initializer(Tensor::from_bytes(name.clone(), dtype, dims, bytes)?)?;
    Ok(name)
}

/// Removes the weight's initializer (or `Constant` node) once nothing reads it.
fn remove_weight_if_unused(graph: &mut Graph, plan: &Plan) -> Result<(), PassError> {
    if !graph.uses(&plan.weight).is_empty() || graph.is_graph_output(&plan.weight) {
        return Ok(());
    }
    match plan.constant_node {
        Some(id) => {
            graph.remove_node(id)?;
        }
        None => {
            graph.remove_initializer(&plan.weight)?;
        }
    }
    graph.value_info.retain(|v| v.name != plan.weight);
    Ok(())
}

/// `W` becomes `DequantizeLinear(W_quantized, W_scale[, W_zero_point])`, keeping its name.
fn apply_qdq(graph: &mut Graph, plan: &Plan, grid: Grid, block: usize) -> Result<(), PassError> {
    let q = &plan.quant;
    let w = &plan.weight;
    let per_channel = block == 0;
    let param_dims = q.qdq_param_dims(per_channel, plan.in_out);
    let q_name = add_initializer(
        graph,
        &format!("{w}_quantized"),
        grid.qdq_type(),
        plan.dims.to_vec(),
        q.qdq_data(plan.in_out),
    )?;
    let s_name = add_initializer(
        graph,
        &format!("{w}_scale"),
        plan.dtype,
        param_dims.clone(),
        encode_floats(plan.dtype, &q.qdq_scales(plan.in_out)),
    )?;
    let mut inputs = vec![q_name, s_name];
    if grid.has_zero_point() {
        inputs.push(add_initializer(
            graph,
            &format!("{w}_zero_point"),
            grid.qdq_type(),
            param_dims,
            q.qdq_zero_points(plan.in_out),
        )?);
    }
    // Per channel: the output-feature axis; blocked: the input-feature axis.
    let out_axis = if plan.in_out { 1 } else { 0 };
    let mut attrs = vec![Attribute::int("axis", if per_channel { out_axis } else { 1 - out_axis })];
    if !per_channel {
        attrs.push(Attribute::int("block_size", block as i64));
    }
    let node_name = graph.unique_name(&format!("{}/DequantizeLinear", plan.module));

    // Free the name `w` (its readers wait under a temporary name), then produce it again.
    let tmp = graph.unique_name(&format!("{w}/float"));
    match plan.constant_node {
        Some(id) => {
            graph.rename_output(id, 0, &tmp)?;
            let dq = tagged(OpKey::onnx("DequantizeLinear"), inputs, w.clone(), node_name, attrs);
            graph.add_node(dq)?;
            graph.remove_node(id)?;
        }
        None => {
            graph.replace_all_uses_with(w, &tmp)?;
            graph.remove_initializer(w)?;
            let dq = tagged(OpKey::onnx("DequantizeLinear"), inputs, w.clone(), node_name, attrs);
            graph.add_node(dq)?;
            graph.replace_all_uses_with(&tmp, w)?;
        }
    }
    Ok(())
}

/// The layer's MatMul/Gemm becomes `MatMulNBits` (+ `Add(C)` for a Gemm bias).
fn apply_matmulnbits(graph: &mut Graph, plan: &Plan, grid: Grid) -> Result<(), PassError> {
    let q = &plan.quant;
    let layer = &plan.layers[0];
    let w = &plan.weight;
    let (k, n, nb) = (q.k as u64, q.n as u64, q.n_blocks as u64);
    let b_name = add_initializer(
        graph,
        &format!("{w}_quantized"),
        DataType::Uint8,
        vec![n, nb, q.blob_size() as u64],
        q.matmulnbits_b(),
    )?;
    let s_name = add_initializer(
        graph,
        &format!("{w}_scale"),
        plan.dtype,
        vec![n * nb],
        encode_floats(plan.dtype, &q.scales()),
    )?;
    let mut inputs = vec![layer.input.clone(), b_name, s_name];
    if grid.has_zero_point() {
        let zp = q.matmulnbits_zero_points();
        let len = zp.len() as u64;
        inputs.push(add_initializer(graph, &format!("{w}_zero_point"), DataType::Uint8, vec![len], zp)?);
    }
    let attrs = vec![
        Attribute::int("K", k as i64),
        Attribute::int("N", n as i64),
        Attribute::int("bits", i64::from(grid.bits)),
        Attribute::int("block_size", q.block as i64),
    ];

    let old = graph.node(layer.node).clone();
    let out = old.output(0).unwrap_or_default().to_string();
    let tmp = graph.unique_name(&format!("{out}/float"));
    graph.rename_output(layer.node, 0, &tmp)?;
    let gemm_bias = if layer.form == LinearForm::Gemm { layer.bias.clone() } else { None };
    let mm_out = if gemm_bias.is_some() { graph.unique_name(&format!("{out}/matmulnbits")) } else { out.clone() };
    let mut node = tagged(OpKey::new(MS_DOMAIN, "MatMulNBits"), inputs, mm_out.clone(), old.name.clone(), attrs);
    for (key, value) in old.metadata.iter() {
        if key != CREATED_BY {
            node.metadata.set(key, value);
        }
    }
    node.doc_string = old.doc_string.clone();
    graph.add_node(node)?;
    if let Some(c) = gemm_bias {
        let name = graph.unique_name(&format!("{}/bias/Add", plan.module));
        graph.add_node(tagged(OpKey::onnx("Add"), vec![mm_out, c], out, name, vec![]))?;
    }
    graph.remove_node(layer.node)?;
    if let Some(t) = layer.transpose_node {
        let t_out = graph.node(t).output(0).unwrap_or_default().to_string();
        if graph.uses(&t_out).is_empty() && !graph.is_graph_output(&t_out) {
            graph.remove_node(t)?;
            graph.value_info.retain(|v| v.name != t_out);
        }
    }
    remove_weight_if_unused(graph, plan)
}
