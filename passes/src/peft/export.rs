//! adaptc → PEFT: the LoRA/DoRA adapters recorded in a model, as a PEFT adapter folder.
//!
//! Per adapter the weights are written under `<prefix><module>.lora_A.weight [r, in]`,
//! `.lora_B.weight [out, r]` and, for DoRA, `.lora_magnitude_vector [out]` (PEFT's own names;
//! adaptc stores A and B in PEFT's layout, so values are copied as they are).
//!
//! The configuration is derived so that PEFT rebuilds exactly these adapters:
//! - `r` / `lora_alpha`: the most common rank and alpha; layers that differ get an entry in
//!   `rank_pattern` / `alpha_pattern` under their full module path;
//! - `use_rslora`: the majority choice; an adapter with the other choice keeps its scaling
//!   through an `alpha_pattern` entry (`alpha' = s·r`, or `s·√r`);
//! - `target_modules`: for every adapted module the shortest name suffix (`query`,
//!   `attention.output.dense`) that selects no linear layer of the model that was left alone,
//!   so PEFT adapts the same set; if some module has no such suffix, one regex listing the
//!   full paths;
//! - `use_dora` must be the same for all adapters (PEFT has one switch).
//!
//! Every derived value is checked by evaluating the config the way PEFT does
//! ([`LoraAdapterConfig::rank_alpha`], [`TargetModules::matches`]) before anything is written.
//! Adapters whose base weight was replaced by a residual (`init=pissa|olora`) are refused:
//! the adapter alone does not reproduce the model on the original base weights.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use adaptc_ir::{DataType, Model};

use super::config::{LoraAdapterConfig, Pattern, TargetModules, TASK_TYPES};
use super::safetensors::{pt_metadata, serialize, OwnedTensor};
use super::{PeftError, CONFIG_FILE, DEFAULT_PREFIX, WEIGHTS_FILE};
use crate::adapters::record::CREATED_BY;
use crate::adapters::{AdapterRecord, AdapterState, Method};
use crate::pattern::find_linear_layers;

/// Options of [`adapter_from_model`].
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Put in front of every module path in tensor names (default `base_model.model.`).
    pub prefix: String,
    /// `base_model_name_or_path` (e.g. `sentence-transformers/all-MiniLM-L6-v2`).
    pub base_model_name_or_path: Option<String>,
    /// `task_type` (`CAUSAL_LM`, `SEQ_CLS`, `FEATURE_EXTRACTION`, …; `None`: null).
    pub task_type: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions { prefix: DEFAULT_PREFIX.to_string(), base_model_name_or_path: None, task_type: None }
    }
}

/// A PEFT adapter ready to be written.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    pub config: LoraAdapterConfig,
    pub tensors: Vec<OwnedTensor>,
    /// The adapted module paths, in the model's adapter order.
    pub modules: Vec<String>,
    /// Things the user should know (adapters of other methods that were not exported).
    pub notes: Vec<String>,
}

/// One LoRA/DoRA adapter's exported pieces.
struct Entry<'a> {
    rec: &'a AdapterRecord,
    a: Vec<f32>,
    b: Vec<f32>,
    magnitude: Option<Vec<f32>>,
    inp: u64,
    out: u64,
}

fn mismatch(msg: impl Into<String>) -> PeftError {
    PeftError::Mismatch(msg.into())
}

/// Builds the PEFT adapter for the LoRA/DoRA adapters recorded in `model`.
pub fn adapter_from_model(model: &Model, opts: &ExportOptions) -> Result<PeftAdapter, PeftError> {
    if !(opts.prefix.is_empty() || opts.prefix.ends_with('.')) {
        return Err(mismatch(format!("the prefix `{}` must be empty or end with `.`", opts.prefix)));
    }
    if let Some(t) = &opts.task_type {
        if !TASK_TYPES.contains(&t.as_str()) {
            return Err(mismatch(format!("unknown task type `{t}`; PEFT knows {}", TASK_TYPES.join(", "))));
        }
    }
    let state = AdapterState::load(model)?;
    let loras: Vec<&AdapterRecord> =
        state.adapters.iter().filter(|a| matches!(a.method, Method::Lora | Method::Dora)).collect();
    let mut notes = Vec::new();
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    for a in state.adapters.iter().filter(|a| !matches!(a.method, Method::Lora | Method::Dora)) {
        *others.entry(format!("{:?}", a.method).to_lowercase()).or_default() += 1;
    }
    let others_text = others.iter().map(|(m, n)| format!("{n} {m}")).collect::<Vec<_>>().join(", ");
    if loras.is_empty() {
        let has =
            if others.is_empty() { "no adapters at all".to_string() } else { format!("only {others_text} adapters") };
        return Err(mismatch(format!(
            "the model has no LoRA or DoRA adapters to export ({has}); insert them with `insert-lora` or `import-peft`"
        )));
    }
    if !others.is_empty() {
        notes.push(format!("not exported (PEFT LoRA adapters hold only LoRA/DoRA): {others_text} adapters"));
    }

    let dora = loras[0].method == Method::Dora;
    if loras.iter().any(|a| (a.method == Method::Dora) != dora) {
        let (d, l): (Vec<&AdapterRecord>, Vec<&AdapterRecord>) = loras.iter().partition(|a| a.method == Method::Dora);
        return Err(mismatch(format!(
            "the model mixes DoRA ({} layers, e.g. `{}`) and plain LoRA ({} layers, e.g. `{}`); a PEFT adapter has one \
             `use_dora` switch for all layers",
            d.len(),
            d[0].module,
            l.len(),
            l[0].module
        )));
    }

    let graph = &model.graph;
    let mut entries = Vec::with_capacity(loras.len());
    let mut seen = BTreeSet::new();
    for rec in &loras {
        let m = &rec.module;
        let fail = |why: String| mismatch(format!("adapter on `{m}`: {why}"));
        if m.is_empty() {
            return Err(fail("the adapter has no module path".into()));
        }
        if !seen.insert(m.clone()) {
            return Err(fail("the module has two LoRA adapters; PEFT holds one per module".into()));
        }
        if let Some(init) = rec.extra.get("init").and_then(|v| v.as_str()) {
            if init == "pissa" || init == "olora" {
                return Err(fail(format!(
                    "it was initialised with init={init}, which replaced the base weight by a residual; the adapter \
                     alone would not reproduce this model on the original base weights (export the merged model \
                     with --merged instead)"
                )));
            }
        }
        let r = rec.rank as u64;
        let read = |role: &str| -> Result<(Vec<u64>, Vec<f32>), PeftError> {
            let name = rec.params.get(role).ok_or_else(|| fail(format!("the record has no `{role}` parameter")))?;
            let t = graph.initializer(name).ok_or_else(|| fail(format!("initializer `{name}` ({role}) is missing")))?;
            if !matches!(t.dtype(), DataType::Float | DataType::Float16 | DataType::BFloat16 | DataType::Double) {
                return Err(fail(format!("`{name}` is {}, expected a float tensor", t.dtype())));
            }
            Ok((t.dims().to_vec(), t.to_f32_lossy()?))
        };
        let (a_dims, a) = read("lora_A")?;
        let (b_dims, b) = read("lora_B")?;
        let (inp, out) = match (a_dims.as_slice(), b_dims.as_slice()) {
            ([ra, inp], [out, rb]) if *ra == r && *rb == r => (*inp, *out),
            _ => {
                return Err(fail(format!(
                    "lora_A is {a_dims:?} and lora_B {b_dims:?}, expected [r, in] and [out, r] with r = {r}"
                )))
            }
        };
        let magnitude = if rec.method == Method::Dora {
            let (m_dims, m) = read("magnitude")?;
            if m_dims != [out] {
                return Err(fail(format!("the DoRA magnitude is {m_dims:?}, expected [{out}]")));
            }
            Some(m)
        } else {
            None
        };
        let expected = scaling(rec.rslora, r as usize, f64::from(rec.alpha));
        if (f64::from(rec.scale) - expected).abs() > 1e-6 * expected.abs().max(1.0) {
            return Err(fail(format!(
                "the applied scaling {} is not alpha/{} = {expected}; PEFT derives the scaling from r and alpha",
                rec.scale,
                if rec.rslora { "√r" } else { "r" }
            )));
        }
        entries.push(Entry { rec, a, b, magnitude, inp, out });
    }

    // r, alpha, rsLoRA: the common choice globally, the rest as patterns.
    let use_rslora = entries.iter().filter(|e| e.rec.rslora).count() * 2 > entries.len();
    let alpha_of = |e: &Entry| -> f64 {
        let a = f32_to_f64(e.rec.alpha);
        if e.rec.rslora == use_rslora {
            a
        } else {
            // Keep the scaling: alpha' / r' = s with this config's rule.
            let s = scaling(e.rec.rslora, e.rec.rank, a);
            if use_rslora {
                s * (e.rec.rank as f64).sqrt()
            } else {
                s * e.rec.rank as f64
            }
        }
    };
    let r = mode(entries.iter().map(|e| e.rec.rank));
    let alpha_bits = mode(entries.iter().map(|e| alpha_of(e).to_bits()));
    let alpha = f64::from_bits(alpha_bits);
    let mut rank_pattern = BTreeMap::new();
    let mut alpha_pattern = BTreeMap::new();
    for e in &entries {
        if e.rec.rank != r {
            rank_pattern.insert(e.rec.module.clone(), e.rec.rank as f64);
        }
        let a = alpha_of(e);
        if a.to_bits() != alpha_bits {
            alpha_pattern.insert(e.rec.module.clone(), a);
        }
    }

    let modules: Vec<String> = entries.iter().map(|e| e.rec.module.clone()).collect();
    let adapted: BTreeSet<&str> = modules.iter().map(String::as_str).collect();
    let left_alone: BTreeSet<String> = find_linear_layers(graph)
        .into_iter()
        .filter(|l| graph.node(l.node).metadata.get(CREATED_BY).is_none())
        .filter_map(|l| l.module_path)
        .filter(|p| !adapted.contains(p.as_str()))
        .collect();
    let target_modules = target_modules_for(&modules, &left_alone);

    let dropout =
        entries.iter().filter_map(|e| e.rec.extra.get("dropout").and_then(|v| v.as_f64())).fold(0.0f64, f64::max);
    let config = LoraAdapterConfig {
        r,
        lora_alpha: alpha,
        target_modules: Some(target_modules),
        use_rslora,
        use_dora: dora,
        task_type: opts.task_type.clone(),
        base_model_name_or_path: opts.base_model_name_or_path.clone(),
        lora_dropout: f32_to_f64(dropout as f32),
        rank_pattern: Pattern::new(rank_pattern),
        alpha_pattern: Pattern::new(alpha_pattern),
        ..LoraAdapterConfig::default()
    };

    // Evaluate the config as PEFT will, and compare with what the model holds.
    let targets = config.target_modules.as_ref().expect("set above");
    for e in &entries {
        let m = &e.rec.module;
        let got = config.rank_alpha(m);
        let scale = scaling(config.use_rslora, got.0, got.1);
        if !targets.matches(m)
            || got.0 != e.rec.rank
            || (scale - f64::from(e.rec.scale)).abs() > 1e-6 * scale.abs().max(1.0)
        {
            return Err(mismatch(format!(
                "internal check failed for `{m}`: the derived config gives targeted={}, r={}, scaling={scale}, the \
                 model has r={}, scaling={}",
                targets.matches(m),
                got.0,
                e.rec.rank,
                e.rec.scale
            )));
        }
    }
    if let Some(extra) = left_alone.iter().find(|p| targets.matches(p)) {
        return Err(mismatch(format!("internal check failed: target_modules would also select `{extra}`")));
    }

    let mut tensors = Vec::with_capacity(entries.len() * 3);
    for e in entries {
        let key = format!("{}{}", opts.prefix, e.rec.module);
        let r = e.rec.rank as u64;
        tensors.push(OwnedTensor::f32(format!("{key}.lora_A.weight"), vec![r, e.inp], &e.a));
        tensors.push(OwnedTensor::f32(format!("{key}.lora_B.weight"), vec![e.out, r], &e.b));
        if let Some(m) = &e.magnitude {
            tensors.push(OwnedTensor::f32(format!("{key}.lora_magnitude_vector"), vec![e.out], m));
        }
    }
    Ok(PeftAdapter { config, tensors, modules, notes })
}

fn scaling(rslora: bool, r: usize, alpha: f64) -> f64 {
    if rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// The shortest decimal that reads back as the same f32, as f64 (`0.1f32` → `0.1`, not
/// `0.10000000149011612`), so the JSON shows what the user wrote.
fn f32_to_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// The most common value; ties go to the value seen first.
fn mode<T: Copy + Ord>(values: impl Iterator<Item = T>) -> T {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(c, _)| *c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v).expect("at least one value")
}

/// PEFT `target_modules` selecting exactly `adapted` among `adapted ∪ left_alone`.
fn target_modules_for(adapted: &[String], left_alone: &BTreeSet<String>) -> TargetModules {
    let selects = |suffix: &str, path: &str| path == suffix || path.ends_with(&format!(".{suffix}"));
    let mut names = BTreeSet::new();
    for m in adapted {
        let parts: Vec<&str> = m.split('.').collect();
        // A suffix starting at a ModuleList index (`0.attention.output.dense`) is valid for PEFT
        // but reads badly; the next longer one (`layer.0.…`) is used instead.
        let found = (1..=parts.len())
            .filter(|&k| parts[parts.len() - k].parse::<u64>().is_err())
            .map(|k| parts[parts.len() - k..].join("."))
            .find(|s| !left_alone.iter().any(|p| selects(s, p)));
        match found {
            Some(s) => {
                names.insert(s);
            }
            None => {
                let alternation = adapted.iter().map(|m| regex::escape(m)).collect::<Vec<_>>().join("|");
                return TargetModules::Regex(format!("({alternation})"));
            }
        }
    }
    TargetModules::List(names.into_iter().collect())
}

/// Writes `DIR/adapter_config.json` and `DIR/adapter_model.safetensors`.
///
/// A new folder is written complete under a temporary name beside it and renamed into place.
/// An existing folder keeps its other files: both files are written to a temporary folder
/// inside it first and renamed over the old ones only when both are complete. On error nothing
/// is left behind.
pub fn write_adapter(dir: &Path, adapter: &PeftAdapter) -> Result<(), PeftError> {
    let weights = serialize(&adapter.tensors, Some(&pt_metadata()))?;
    let mut config = adapter.config.to_json();
    config.push('\n');
    let files: [(&str, &[u8]); 2] = [(WEIGHTS_FILE, &weights), (CONFIG_FILE, config.as_bytes())];
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );

    if dir.exists() {
        if !dir.is_dir() {
            return Err(mismatch(format!("{} exists and is not a folder", dir.display())));
        }
        let stage = dir.join(format!(".adaptc-export.tmp-{unique}"));
        let result = (|| {
            std::fs::create_dir(&stage).map_err(|e| PeftError::io(&stage, e))?;
            for (name, bytes) in files {
                write_synced(&stage.join(name), bytes)?;
            }
            for (name, _) in files {
                std::fs::rename(stage.join(name), dir.join(name)).map_err(|e| PeftError::io(&dir.join(name), e))?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&stage);
        return result;
    }

    let name = dir.file_name().ok_or_else(|| mismatch(format!("{} is not a folder name", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| PeftError::io(&parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{unique}", name.to_string_lossy()));
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| PeftError::io(&tmp, e))?;
        for (name, bytes) in files {
            write_synced(&tmp.join(name), bytes)?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| PeftError::io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PeftError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| PeftError::io(path, e))?;
    f.write_all(bytes).map_err(|e| PeftError::io(path, e))?;
    f.sync_all().map_err(|e| PeftError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shortest_safe_suffixes() {
        let adapted: Vec<String> =
            ["l.0.attention.self.query", "l.1.attention.self.query", "l.0.attention.output.dense"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let alone = set(&[
            "l.0.attention.self.key",
            "l.0.output.dense",
            "l.1.attention.output.dense",
            "l.0.intermediate.dense",
        ]);
        match target_modules_for(&adapted, &alone) {
            TargetModules::List(l) => assert_eq!(l, vec!["l.0.attention.output.dense".to_string(), "query".into()]),
            other => panic!("{other:?}"),
        }
        // Every `dense` adapted: the bare name suffices.
        let adapted: Vec<String> = ["a.dense", "b.dense"].iter().map(|s| s.to_string()).collect();
        assert_eq!(target_modules_for(&adapted, &set(&["a.q"])), TargetModules::List(vec!["dense".into()]));
        // A module whose full path is a suffix of a left-alone one: regex of full paths.
        let adapted = vec!["dense".to_string()];
        let t = target_modules_for(&adapted, &set(&["x.dense"]));
        assert_eq!(t, TargetModules::Regex("(dense)".into()));
        assert!(t.matches("dense") && !t.matches("x.dense"));
    }

    #[test]
    fn mode_prefers_the_first_on_ties() {
        assert_eq!(mode([4, 8, 8, 4].into_iter()), 4);
        assert_eq!(mode([4, 8, 8].into_iter()), 8);
    }
}
