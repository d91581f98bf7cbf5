//! PEFT → adaptc: a LoRA/rsLoRA/DoRA adapter saved by PEFT, inserted into an ONNX base model.
//!
//! Every tensor of `adapter_model.safetensors` must be `<prefix><module>.lora_A.weight`,
//! `.lora_B.weight` or (DoRA) `.lora_magnitude_vector` (also accepted with a trailing
//! `.weight`); anything else (embedding adapters, trained biases, `modules_to_save` copies) is
//! refused by name. Each module is located among the base model's linear layers by module path
//! (see [`crate::pattern`]), and its rank and alpha come from the config as PEFT computes them
//! (`rank_pattern` / `alpha_pattern`, rsLoRA).
//!
//! Module paths and model wrappers: a PEFT adapter names modules relative to the model it was
//! trained on (`model.layers.0.self_attn.q_proj` for `LlamaForCausalLM`), and the ONNX graph
//! relative to the module that was exported (`layers.0.self_attn.q_proj` for `LlamaModel`).
//! Paths are therefore tried as saved, then without a leading `model.`, then with one added
//! ([`PathMapping`]); the first mapping under which *every* module is found is used, for all
//! modules alike. If none fits, the error lists the modules found and not found.
//!
//! Checks, all before the model is changed: the config is a LoRA config adaptc can evaluate;
//! every module is found exactly once and has no adapter yet; its base weight is float32;
//! `lora_A` is `[r, in]` and `lora_B` `[out, r]` with `r` the config's rank for that module and
//! `in`/`out` the layer's; the DoRA magnitude is `[out]` and present exactly when `use_dora`.
//! The insertion itself runs on a copy of the graph, so the model is unchanged on any error.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use adaptc_ir::{DataType, Model};

use super::config::LoraAdapterConfig;
use super::safetensors::SafeTensors;
use super::{PeftError, CONFIG_FILE, DEFAULT_PREFIX, WEIGHTS_FILE};
use crate::adapters::lora::{insert_lora_with, LoraConfig};
use crate::adapters::record::CREATED_BY;
use crate::adapters::{AdapterState, Method};
use crate::pattern::{constant_tensor, find_linear_layers, match_linear, LinearLayer};

/// An adapter folder read from disk.
#[derive(Clone, Debug)]
pub struct LoadedAdapter {
    pub dir: PathBuf,
    pub config: LoraAdapterConfig,
    pub weights: SafeTensors,
}

/// Reads `DIR/adapter_config.json` and `DIR/adapter_model.safetensors`.
pub fn read_adapter(dir: &Path) -> Result<LoadedAdapter, PeftError> {
    if !dir.is_dir() {
        return Err(PeftError::Mismatch(format!("{} is not a folder (expected a PEFT adapter folder)", dir.display())));
    }
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| PeftError::io(&config_path, e))?;
    let config = LoraAdapterConfig::parse(&text)
        .map_err(|reason| PeftError::Config { file: config_path.display().to_string(), reason })?;
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(PeftError::Mismatch(format!(
            "{} holds adapter_model.bin (a pickle), which adaptc does not read; save the adapter with \
             safe_serialization=True (PEFT's default) to get {WEIGHTS_FILE}",
            dir.display()
        )));
    }
    let weights = SafeTensors::read(&weights_path)?;
    Ok(LoadedAdapter { dir: dir.to_path_buf(), config, weights })
}

/// Options of [`import_adapter`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The prefix of tensor names in front of module paths (default `base_model.model.`).
    pub prefix: String,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions { prefix: DEFAULT_PREFIX.to_string() }
    }
}

/// How the adapter's module paths were mapped onto the graph's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMapping {
    /// As saved.
    Exact,
    /// Without the adapter's leading `model.`.
    StripModel,
    /// With a leading `model.` added.
    AddModel,
}

impl PathMapping {
    const ALL: [PathMapping; 3] = [PathMapping::Exact, PathMapping::StripModel, PathMapping::AddModel];

    /// The graph module path for an adapter module path.
    pub fn apply(self, key: &str) -> Option<String> {
        match self {
            PathMapping::Exact => Some(key.to_string()),
            PathMapping::StripModel => key.strip_prefix("model.").map(str::to_string),
            PathMapping::AddModel => Some(format!("model.{key}")),
        }
    }
}

impl fmt::Display for PathMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathMapping::Exact => "module paths as saved",
            PathMapping::StripModel => "module paths without the adapter's leading `model.`",
            PathMapping::AddModel => "module paths with a leading `model.` added",
        })
    }
}

/// One imported module.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedModule {
    /// The module name in the adapter (after the prefix).
    pub adapter_module: String,
    /// The module path in the graph.
    pub module: String,
    pub rank: usize,
    pub alpha: f64,
    pub scale: f64,
}

/// What [`import_adapter`] did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub mapping: PathMapping,
    pub modules: Vec<ImportedModule>,
    /// Parameters added (A, B and magnitudes).
    pub params: u64,
    pub dora: bool,
    pub rslora: bool,
}

/// The tensors of one module.
#[derive(Default)]
struct Parts<'a> {
    a: Option<&'a str>,
    b: Option<&'a str>,
    magnitude: Option<&'a str>,
}

const MAX_LISTED: usize = 12;

fn list(items: &[String]) -> String {
    let mut s = items.iter().take(MAX_LISTED).map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ");
    if items.len() > MAX_LISTED {
        s += &format!(" … and {} more", items.len() - MAX_LISTED);
    }
    if items.is_empty() {
        s = "none".into();
    }
    s
}

/// Inserts the adapter's LoRA/DoRA modules into `model` (see the module docs).
pub fn import_adapter(
    model: &mut Model,
    adapter: &LoadedAdapter,
    opts: &ImportOptions,
) -> Result<ImportReport, PeftError> {
    let cfg = &adapter.config;
    let origin = adapter.weights.origin().to_string();
    let mismatch = |msg: String| PeftError::Mismatch(format!("{origin}: {msg}"));

    // 1. Tensor names → modules.
    let mut modules: BTreeMap<&str, Parts> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut unsupported = Vec::new();
    for name in adapter.weights.names() {
        let Some(rest) = name.strip_prefix(opts.prefix.as_str()) else {
            unsupported.push(format!("{name} (does not start with `{}`)", opts.prefix));
            continue;
        };
        let (module, role) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else if let Some(m) =
            rest.strip_suffix(".lora_magnitude_vector").or_else(|| rest.strip_suffix(".lora_magnitude_vector.weight"))
        {
            (m, 2)
        } else {
            unsupported.push(name.to_string());
            continue;
        };
        let parts = modules.entry(module).or_insert_with(|| {
            order.push(module);
            Parts::default()
        });
        let slot = match role {
            0 => &mut parts.a,
            1 => &mut parts.b,
            _ => &mut parts.magnitude,
        };
        if slot.replace(name).is_some() {
            unsupported.push(format!("{name} (a second tensor for the same role)"));
        }
    }
    if !unsupported.is_empty() {
        return Err(mismatch(format!(
            "tensors adaptc cannot import (only lora_A/lora_B weights and DoRA magnitude vectors of linear layers): {}",
            list(&unsupported)
        )));
    }
    if modules.is_empty() {
        return Err(mismatch("the adapter holds no LoRA tensors".into()));
    }
    let mut incomplete = Vec::new();
    for (m, p) in &modules {
        if p.a.is_none() || p.b.is_none() {
            incomplete.push(format!("{m} (no {})", if p.a.is_none() { "lora_A" } else { "lora_B" }));
        } else if cfg.use_dora && p.magnitude.is_none() {
            incomplete.push(format!("{m} (use_dora is true but there is no lora_magnitude_vector)"));
        } else if !cfg.use_dora && p.magnitude.is_some() {
            incomplete.push(format!("{m} (a lora_magnitude_vector, but use_dora is false)"));
        }
    }
    if !incomplete.is_empty() {
        return Err(mismatch(format!("incomplete or inconsistent modules: {}", list(&incomplete))));
    }

    // 2. Modules → linear layers of the graph.
    let graph = &model.graph;
    let mut layers: HashMap<String, Vec<LinearLayer>> = HashMap::new();
    for l in find_linear_layers(graph) {
        if graph.node(l.node).metadata.get(CREATED_BY).is_some() {
            continue;
        }
        if let Some(p) = l.module_path.clone() {
            layers.entry(p).or_default().push(l);
        }
    }
    let found = |mapping: PathMapping, m: &str| mapping.apply(m).filter(|p| layers.contains_key(p));
    let counts: Vec<usize> =
        PathMapping::ALL.iter().map(|&map| order.iter().filter(|m| found(map, m).is_some()).count()).collect();
    let Some(best) = PathMapping::ALL.iter().zip(&counts).find(|(_, &n)| n == order.len()).map(|(m, _)| *m) else {
        let (i, _) = counts.iter().enumerate().max_by_key(|&(i, n)| (*n, std::cmp::Reverse(i))).unwrap_or((0, &0));
        let map = PathMapping::ALL[i];
        let (hit, miss): (Vec<&str>, Vec<&str>) = order.iter().partition(|m| found(map, m).is_some());
        let mut known: Vec<String> = layers.keys().cloned().collect();
        known.sort();
        return Err(mismatch(format!(
            "{} of {} adapter modules have no linear layer with that module path in the model (best: {map}).\n  \
             not found: {}\n  found: {}\n  the model's linear layers: {}",
            miss.len(),
            order.len(),
            list(&miss.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            list(&hit.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            list(&known)
        )));
    };

    // 3. Per-module checks and values, all before changing anything.
    let state = AdapterState::load(model)?;
    struct Plan {
        layer: LinearLayer,
        cfg: LoraConfig,
        a: Vec<f32>,
        b: Vec<f32>,
        magnitude: Option<Vec<f32>>,
        report: ImportedModule,
    }
    let mut plans = Vec::with_capacity(order.len());
    let mut problems = Vec::new();
    for &m in &order {
        let path = best.apply(m).expect("mapping checked above");
        let candidates = &layers[&path];
        if candidates.len() > 1 {
            problems.push(format!("`{m}`: the module is applied at {} places in the model", candidates.len()));
            continue;
        }
        let layer = candidates[0].clone();
        let node_name = &graph.node(layer.node).name;
        if let Some(a) = state.adapters.iter().find(|a| {
            (matches!(a.method, Method::Lora | Method::Dora) && a.module == path)
                || (!node_name.is_empty() && a.target_node == *node_name)
        }) {
            problems.push(format!("`{m}`: the layer already has a {:?} adapter", a.method));
            continue;
        }
        match constant_tensor(graph, &layer.weight).map(|t| t.dtype()) {
            Some(DataType::Float) => {}
            other => {
                problems.push(format!(
                    "`{m}`: base weight `{}` is {}, only float32 is supported",
                    layer.weight,
                    other.map_or("not a constant".to_string(), |d| d.to_string())
                ));
                continue;
            }
        }
        let (r, alpha) = cfg.rank_alpha(m);
        let (inp, out) = (layer.in_features, layer.out_features);
        let parts = &modules[m];
        let view =
            |name: Option<&str>| adapter.weights.get(name.expect("checked complete")).expect("name from the file");
        let (va, vb) = (view(parts.a), view(parts.b));
        let mut bad = Vec::new();
        if va.shape != [r as u64, inp] {
            bad.push(format!("lora_A is {:?}, expected [r, in] = [{r}, {inp}]", va.shape));
        }
        if vb.shape != [out, r as u64] {
            bad.push(format!("lora_B is {:?}, expected [out, r] = [{out}, {r}]", vb.shape));
        }
        let vm = parts.magnitude.map(|n| view(Some(n)));
        if let Some(vm) = &vm {
            if vm.shape != [out] {
                bad.push(format!("lora_magnitude_vector is {:?}, expected [out] = [{out}]", vm.shape));
            }
        }
        if !bad.is_empty() {
            problems.push(format!("`{m}` (graph layer {inp} → {out}, config r = {r}): {}", bad.join("; ")));
            continue;
        }
        let values = |v: super::safetensors::TensorView| v.to_f32().map_err(mismatch);
        let a = values(va)?;
        let b = values(vb)?;
        let magnitude = vm.map(values).transpose()?;
        let lcfg = LoraConfig {
            rank: r,
            alpha: alpha as f32,
            rslora: cfg.use_rslora,
            dora: cfg.use_dora,
            dropout: cfg.lora_dropout as f32,
        };
        let scale = f64::from(lcfg.scale());
        plans.push(Plan {
            layer,
            cfg: lcfg,
            a,
            b,
            magnitude,
            report: ImportedModule { adapter_module: m.to_string(), module: path, rank: r, alpha, scale },
        });
    }
    if !problems.is_empty() {
        return Err(mismatch(format!(
            "{} of {} modules do not fit the model:\n  {}",
            problems.len(),
            order.len(),
            problems.iter().take(MAX_LISTED * 2).cloned().collect::<Vec<_>>().join("\n  ")
        )));
    }

    // 4. Insert on a copy of the graph (tensor data is shared, not copied).
    let mut graph = model.graph.clone();
    let mut state = state;
    let mut params = 0u64;
    let mut report = Vec::with_capacity(plans.len());
    for plan in plans {
        // Re-match: earlier insertions renamed values around other layers' outputs.
        let layer = match_linear(&graph, plan.layer.node)
            .map_err(|e| mismatch(format!("`{}`: the layer no longer matches: {e}", plan.report.module)))?;
        params += (plan.a.len() + plan.b.len() + plan.magnitude.as_ref().map_or(0, Vec::len)) as u64;
        insert_lora_with(&mut graph, &mut state, &layer, &plan.cfg, plan.a, plan.b, plan.magnitude)?;
        report.push(plan.report);
    }
    model.graph = graph;
    state.store(model);
    Ok(ImportReport { mapping: best, modules: report, params, dora: cfg.use_dora, rslora: cfg.use_rslora })
}
