//! `insert-adapter`: bottleneck adapters (Houlsby et al., *Parameter-Efficient Transfer
//! Learning for NLP*; Pfeiffer et al., *AdapterFusion*; the parallel form of He et al.,
//! *Towards a Unified View of Parameter-Efficient Transfer Learning*).
//!
//! On every linear layer `y = x·Wᵀ + b` chosen by `targets` (typically the sublayer outputs
//! before residual + LayerNorm: BERT's `attention.output.dense` and `output.dense` for
//! Houlsby, `output.dense` alone for Pfeiffer — the PEFT-style suffix `output.dense` matches
//! both — or Llama's `o_proj`, `down_proj`), with `m = bottleneck` and `s = scale`:
//!
//! ```text
//! sequential:  y ← y + s·(act(y·W_downᵀ + b_d)·W_upᵀ + b_u)      W_down [m, out]
//! parallel:    y ← y + s·(act(x·W_downᵀ + b_d)·W_upᵀ + b_u)      W_down [m, in]
//! ```
//!
//! `W_up` is `[out, m]`; `act` is `Relu` or `Gelu` (the exact, erf form: the `Gelu` op from
//! opset 20, its `Erf` decomposition below). The adapter attaches after the layer's final value
//! (after the bias): the layer's producer now writes `<y>/base` and every reader of `y` —
//! the residual `Add` included — reads the adapted value under the old name.
//!
//! Parameters, new initializers in the base weight's float type and PyTorch's `Linear` layout
//! (read through `Transpose` nodes, as `insert-lora` does), all trainable:
//! `<module>.adapter.down.weight [m, d]` ~ N(0, 0.01²) truncated at ±2σ,
//! `<module>.adapter.down.bias [m]` = 0, `<module>.adapter.up.weight [out, m]` = 0,
//! `<module>.adapter.up.bias [out]` = 0 — so the adapter adds exact zeros at insertion.
//! Randomness: a SplitMix64 stream per layer seeded from `seed` and the module path (values do
//! not depend on which other layers were selected), normals by Box–Muller, out-of-range draws
//! redrawn. One [`AdapterRecord`] per layer (method `bottleneck`, roles `down`, `down_bias`,
//! `up`, `up_bias`, `rank` = m, `scale` = s, `extra.placement`, `extra.activation`,
//! `extra.mergeable` = false: a non-linear branch cannot be folded into W).
//!
//! Preconditions: float weights; a module applied at several places is refused; a layer that
//! already has a bottleneck adapter is skipped with a note. Preserves: graph inputs and
//! outputs, existing value names, and the outputs exactly at insertion (`W_up = 0`, `b_u = 0`).
//!
//! Example pipeline: `insert-adapter{bottleneck=64 targets=output.dense}` (Houlsby placement on
//! BERT), `insert-adapter{bottleneck=16 targets=down_proj placement=parallel scale=4}` (a
//! scaled parallel FFN adapter). Statistics: `adapter.inserted`, `adapter.params`,
//! `adapter.skipped`.

use std::collections::BTreeMap;

use adaptc_ir::{Attribute, DataType, Graph, Model};

use super::ia3::float_tensor;
use super::record::{AdapterRecord, AdapterState, Layout, Method};
use super::rewriter::Rewriter;
use super::sites::{checked_sites, Site};
use super::targets::Selection;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::LinearLayer;
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "insert-adapter";

/// Standard deviation of `W_down`'s initial values (truncated at ±2σ).
pub const INIT_STD: f64 = 1e-2;

const TARGETS_HINT: &str = "name the sublayer outputs to adapt, e.g. `targets=output.dense` (BERT: \
                            attention.output.dense and output.dense, as Houlsby) or \
                            `targets=o_proj,down_proj` (Llama)";

/// Where the adapter reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// After the layer, on its output (Houlsby, Pfeiffer).
    Sequential,
    /// Beside the layer, on its input; the results are added.
    Parallel,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Sequential => "sequential",
            Placement::Parallel => "parallel",
        }
    }
}

/// The adapter's non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU, PyTorch's `nn.GELU()`.
    Gelu,
}

impl Activation {
    fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
        }
    }
}

/// The `insert-adapter` pass.
#[derive(Clone, Debug)]
pub struct InsertAdapter {
    /// `None` when `targets` was not given (an error when the pass runs).
    selection: Option<Selection>,
    described: String,
    pub bottleneck: usize,
    pub placement: Placement,
    pub activation: Activation,
    pub scale: f32,
    pub seed: u64,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "insert bottleneck adapters (Houlsby/Pfeiffer sequential or parallel; up-projection zero) on the selected layers",
        options: vec![
            OptionInfo::new("bottleneck", OptionKind::Int, Some("64"), "bottleneck width m"),
            OptionInfo::new(
                "targets",
                OptionKind::List,
                None,
                "layers whose outputs get an adapter, PEFT-style (`output.dense`, `re:<regex>`, `all-linear`)",
            ),
            OptionInfo::new("exclude", OptionKind::List, Some(""), "modules to leave alone, matched like targets"),
            OptionInfo::new("layers", OptionKind::List, Some(""), "only blocks with these indices (default: all)"),
            OptionInfo::new(
                "placement",
                OptionKind::Enum(&["sequential", "parallel"]),
                Some("sequential"),
                "sequential: adapt the layer's output; parallel: a branch from the layer's input added to its output",
            ),
            OptionInfo::new("activation", OptionKind::Enum(&["relu", "gelu"]), Some("relu"), "non-linearity in the bottleneck"),
            OptionInfo::new("scale", OptionKind::Float, Some("1.0"), "factor s on the adapter's output"),
            OptionInfo::new("seed", OptionKind::Int, Some("0"), "seed of W_down's initialisation (per layer, with the module path)"),
        ],
        example: "insert-adapter{bottleneck=64 targets=output.dense}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let bottleneck = o.usize("bottleneck")?;
    if bottleneck == 0 {
        return Err(PassError::bad_option(PASS, "bottleneck", "must be at least 1"));
    }
    let scale = o.f64("scale")? as f32;
    if !scale.is_finite() {
        return Err(PassError::bad_option(PASS, "scale", "does not fit in a float32"));
    }
    let placement = if o.choice("placement")? == "parallel" { Placement::Parallel } else { Placement::Sequential };
    let activation = if o.choice("activation")? == "gelu" { Activation::Gelu } else { Activation::Relu };
    let seed = o.usize("seed")? as u64;
    let (exclude, layers) = (o.list("exclude")?, o.list("layers")?);
    let (selection, described) = if o.is_set("targets") {
        let targets = o.list("targets")?;
        if targets.is_empty() {
            return Err(PassError::bad_option(PASS, "targets", format!("no targets given: {TARGETS_HINT}")));
        }
        (Some(Selection::parse(PASS, &targets, &exclude, &layers)?), Selection::describe(&targets, &exclude, &layers))
    } else {
        Selection::parse(PASS, &["all-linear".to_string()], &exclude, &layers)?;
        (None, String::new())
    };
    Ok(Box::new(InsertAdapter { selection, described, bottleneck, placement, activation, scale, seed }))
}

/// One layer's planned adapter.
struct Plan {
    layer: LinearLayer,
    module: String,
    dtype: DataType,
    /// `W_down [m, d]`, row-major.
    down: Vec<f32>,
}

impl Pass for InsertAdapter {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let Some(selection) = &self.selection else {
            return Err(PassError::bad_option(PASS, "targets", format!("is required: {TARGETS_HINT}")));
        };
        let opset = model.opset("").unwrap_or(0);
        if opset < 7 {
            return Err(PassError::failed(
                PASS,
                format!("needs default-domain opset ≥ 7 (broadcasting Add); the model imports {opset}"),
            ));
        }
        let mut state = AdapterState::load(model)?;
        let graph = &model.graph;
        let selected = selection.select(graph);
        if selected.is_empty() {
            return Err(selection.no_match(PASS, graph, &self.described));
        }

        let (sites, skipped) = checked_sites(
            PASS,
            graph,
            selected,
            "adapting",
            |layer| {
                let module = layer.module_path.as_deref().unwrap_or_default();
                state.of(Method::Bottleneck).any(|a| a.module == module).then(|| "a bottleneck adapter".to_string())
            },
            cx,
        )?;
        let mut plans = Vec::new();
        for Site { layer, module, dtype } in sites {
            let d = self.input_width(&layer) as usize;
            let mut rng = SplitMix64::new(site_seed(self.seed, &module));
            let down = (0..self.bottleneck * d).map(|_| rng.truncated_normal(2.0) as f32 * INIT_STD as f32).collect();
            plans.push(Plan { layer, module, dtype, down });
        }

        let mut params = 0i64;
        for plan in &plans {
            params += self.insert(&mut model.graph, &mut state, plan, opset)? as i64;
        }
        if !plans.is_empty() {
            state.store(model);
        }
        let mut outcome = PassOutcome::changed(!plans.is_empty())
            .stat("adapter.inserted", plans.len() as i64)
            .stat("adapter.params", params);
        if skipped > 0 {
            outcome = outcome.stat("adapter.skipped", skipped);
        }
        Ok(outcome)
    }
}

fn fail(module: &str, reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, format!("`{module}`: {reason}"))
}

impl InsertAdapter {
    /// Width of what the adapter reads: the layer's output (sequential) or input (parallel).
    fn input_width(&self, layer: &LinearLayer) -> u64 {
        match self.placement {
            Placement::Sequential => layer.out_features,
            Placement::Parallel => layer.in_features,
        }
    }

    /// Builds one adapter (all checks done); returns its parameter count.
    fn insert(&self, graph: &mut Graph, state: &mut AdapterState, plan: &Plan, opset: i64) -> Result<usize, PassError> {
        let layer = &plan.layer;
        let module = &plan.module;
        let (m, d, out) = (self.bottleneck, self.input_width(layer) as usize, layer.out_features as usize);
        let t = |name: &str, dims: Vec<u64>, values: &[f32]| float_tensor(name, plan.dtype, dims, values);
        let down = t("", vec![m as u64, d as u64], &plan.down).map_err(|e| fail(module, e))?;
        let down_b = t("", vec![m as u64], &vec![0.0; m]).map_err(|e| fail(module, e))?;
        let up = t("", vec![out as u64, m as u64], &vec![0.0; out * m]).map_err(|e| fail(module, e))?;
        let up_b = t("", vec![out as u64], &vec![0.0; out]).map_err(|e| fail(module, e))?;
        let target_node = graph.node(layer.node).name.clone();

        let mut rw = Rewriter::new(graph, PASS, module);
        let wd = rw.initializer(&format!("{module}.adapter.down.weight"), down)?;
        let bd = rw.initializer(&format!("{module}.adapter.down.bias"), down_b)?;
        let wu = rw.initializer(&format!("{module}.adapter.up.weight"), up)?;
        let bu = rw.initializer(&format!("{module}.adapter.up.bias"), up_b)?;
        let base = rw.detach(&layer.output)?;
        let src = match self.placement {
            Placement::Sequential => base.clone(),
            Placement::Parallel => layer.input.clone(),
        };
        let perm = || vec![Attribute::ints("perm", vec![1, 0])];
        let wd_t = rw.node("Transpose", &[&wd], perm(), "adapter.down_t")?;
        let h = rw.node("MatMul", &[&src, &wd_t], vec![], "adapter.down")?;
        let h = rw.node("Add", &[&h, &bd], vec![], "adapter.down_bias")?;
        let a = match self.activation {
            Activation::Relu => rw.node("Relu", &[&h], vec![], "adapter.act")?,
            Activation::Gelu if opset >= 20 => rw.node("Gelu", &[&h], vec![], "adapter.act")?,
            Activation::Gelu => {
                // 0.5·h·(1 + erf(h/√2)), the exact GELU before the op existed.
                let c = |rw: &mut Rewriter, what: &str, v: f32| -> Result<String, PassError> {
                    let tensor = t("", vec![], &[v]).map_err(|e| fail(module, e))?;
                    Ok(rw.initializer(&format!("{module}/adapter.const.{what}"), tensor)?)
                };
                let sqrt2 = c(&mut rw, "sqrt2", std::f32::consts::SQRT_2)?;
                let one = c(&mut rw, "one", 1.0)?;
                let half = c(&mut rw, "half", 0.5)?;
                let z = rw.node("Div", &[&h, &sqrt2], vec![], "adapter.act_div")?;
                let z = rw.node("Erf", &[&z], vec![], "adapter.act_erf")?;
                let z = rw.node("Add", &[&z, &one], vec![], "adapter.act_add")?;
                let z = rw.node("Mul", &[&h, &z], vec![], "adapter.act_mul")?;
                rw.node("Mul", &[&z, &half], vec![], "adapter.act")?
            }
        };
        let wu_t = rw.node("Transpose", &[&wu], perm(), "adapter.up_t")?;
        let u = rw.node("MatMul", &[&a, &wu_t], vec![], "adapter.up")?;
        let mut u = rw.node("Add", &[&u, &bu], vec![], "adapter.up_bias")?;
        if self.scale != 1.0 {
            let tensor = t("", vec![], &[self.scale]).map_err(|e| fail(module, e))?;
            let s = rw.initializer(&format!("{module}/adapter.const.scale"), tensor)?;
            u = rw.node("Mul", &[&u, &s], vec![], "adapter.scale")?;
        }
        rw.node_into("Add", &[&base, &u], vec![], "adapter", &layer.output)?;

        for p in [&wd, &bd, &wu, &bu] {
            state.trainable.insert(p.clone());
        }
        let extra = BTreeMap::from([
            ("placement".to_string(), serde_json::Value::from(self.placement.name())),
            ("activation".to_string(), serde_json::Value::from(self.activation.name())),
            ("bottleneck".to_string(), serde_json::Value::from(m)),
            ("seed".to_string(), serde_json::Value::from(self.seed)),
            ("weight_layout".to_string(), serde_json::Value::from("out-in")),
            ("mergeable".to_string(), serde_json::Value::from(false)),
        ]);
        state.adapters.push(AdapterRecord {
            method: Method::Bottleneck,
            module: module.clone(),
            target_node,
            base_weight: layer.weight.clone(),
            layout: Some(Layout::from(layer.layout)),
            params: BTreeMap::from([
                ("down".to_string(), wd),
                ("down_bias".to_string(), bd),
                ("up".to_string(), wu),
                ("up_bias".to_string(), bu),
            ]),
            nodes: rw.created,
            output: layer.output.clone(),
            base_output: base,
            rank: m,
            alpha: 0.0,
            scale: self.scale,
            rslora: false,
            extra,
        });
        Ok(m * d + m + out * m + out)
    }
}

// ----- randomness (shared by the adapter passes of this family) ------------------------------

/// SplitMix64 (Steele, Lea, Flood 2014): a small, fast, well-mixed 64-bit generator; enough for
/// reproducible initial values. Uniforms use the top 53 bits, normals Box–Muller.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, n)` (`n > 0`), by multiply-high (bias below 2⁻⁶⁴·n).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal, Box–Muller (one of the pair).
    pub(crate) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Standard normal conditioned on `|z| ≤ bound` (redraws outside).
    pub(crate) fn truncated_normal(&mut self, bound: f64) -> f64 {
        loop {
            let z = self.normal();
            if z.abs() <= bound {
                return z;
            }
        }
    }
}

/// The seed of one site: `seed` mixed with the FNV-1a hash of `site` (a module path), so a
/// site's values do not depend on which other sites were chosen.
pub(crate) fn site_seed(seed: u64, site: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in site.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    SplitMix64::new(seed ^ h).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_well_spread() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = SplitMix64::new(1);
        let n = 20_000;
        let zs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = zs.iter().sum::<f64>() / n as f64;
        let var = zs.iter().map(|z| (z - mean) * (z - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        let t: Vec<f64> = (0..n).map(|_| r.truncated_normal(2.0)).collect();
        assert!(t.iter().all(|z| z.abs() <= 2.0));
        let u: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
        assert!(u.iter().all(|x| (0.0..1.0).contains(x)));
        assert!((0..1000).all(|_| r.below(5) < 5));
        assert_ne!(site_seed(0, "a.b"), site_seed(0, "a.c"));
        assert_ne!(site_seed(0, "a.b"), site_seed(1, "a.b"));
    }
}
