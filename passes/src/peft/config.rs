//! `adapter_config.json` for LoRA, as PEFT writes and reads it.
//!
//! Reading accepts what PEFT writes (every version since LoRA got `use_rslora`/`use_dora`):
//! unknown keys are ignored, `target_modules` may be a list of names or a regex string,
//! `lora_alpha` and the pattern values may be integers or floats. Settings that change the
//! forward computation in ways adaptc does not reproduce (`lora_bias`, aLoRA invocation
//! tokens, layer replication, QALoRA, trainable tokens, `bias` other than `"none"`, …) are
//! refused with the key named, rather than silently giving different numbers.
//!
//! `rank_pattern` / `alpha_pattern` follow PEFT's `get_pattern_key`: the first key, in file
//! order, for which `^(.*\.)?(KEY)$` matches the module name decides; otherwise `r` /
//! `lora_alpha`.
//!
//! Writing produces the keys PEFT has written since 0.10 (older loaders refuse keys they do not
//! know, so the exotic newer ones are left out), sorted, indented by 2, as `save_pretrained`.

use std::fmt;

use regex::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The task types PEFT knows (`PeftConfig.task_type`).
pub const TASK_TYPES: [&str; 6] =
    ["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"];

/// `target_modules` / `exclude_modules`: a list of names (a name matches a module called that
/// or ending in `.name`) or one regex that must match the whole module name.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl TargetModules {
    /// Whether PEFT would select module `key` (a name relative to the base model).
    pub fn matches(&self, key: &str) -> bool {
        match self {
            TargetModules::List(names) => names.iter().any(|t| key == t || key.ends_with(&format!(".{t}"))),
            TargetModules::Regex(re) => Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(key)),
        }
    }
}

/// `rank_pattern` / `alpha_pattern`: key → value, in file order, with the compiled regexes.
#[derive(Clone, Debug, Default)]
pub struct Pattern {
    entries: Vec<(String, f64, Option<Regex>)>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
    }
}

impl Pattern {
    /// A pattern from `(key, value)` pairs, in the order PEFT will try them.
    pub fn new(entries: impl IntoIterator<Item = (String, f64)>) -> Pattern {
        Pattern {
            entries: entries
                .into_iter()
                .map(|(k, v)| {
                    let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).ok();
                    (k, v, re)
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(key, value)` pairs in order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(k, v, _)| (k.as_str(), *v))
    }

    /// PEFT's `get_pattern_key` then `.get(key, default)`: the value of the first key whose
    /// regex matches `module`, else an exact key equal to `module`, else `None`.
    pub fn lookup(&self, module: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|(_, _, re)| re.as_ref().is_some_and(|r| r.is_match(module)))
            .or_else(|| self.entries.iter().find(|(k, _, _)| k == module))
            .map(|(_, v, _)| *v)
    }

    fn to_json(&self) -> Value {
        Value::Object(self.entries.iter().map(|(k, v, _)| (k.clone(), number(*v))).collect())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pattern;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of module pattern → number, or null")
            }
            fn visit_unit<E>(self) -> Result<Pattern, E> {
                Ok(Pattern::default())
            }
            fn visit_none<E>(self) -> Result<Pattern, E> {
                Ok(Pattern::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pattern, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, f64>()? {
                    entries.push((k, v));
                }
                Ok(Pattern::new(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON number, written as an integer when it is one (PEFT's `lora_alpha: 16`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// A PEFT LoRA adapter configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Option<TargetModules>,
    pub exclude_modules: Option<TargetModules>,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub fan_in_fan_out: bool,
    /// `"none"` (the only value adaptc reads or writes).
    pub bias: String,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub lora_dropout: f64,
    /// `true`, `false` or a method name (`"gaussian"`, `"pissa"`, …); recorded, not used.
    pub init_lora_weights: Value,
    pub modules_to_save: Option<Vec<String>>,
    pub rank_pattern: Pattern,
    pub alpha_pattern: Pattern,
    pub inference_mode: bool,
}

impl Default for LoraAdapterConfig {
    /// PEFT's `LoraConfig()` defaults.
    fn default() -> LoraAdapterConfig {
        LoraAdapterConfig {
            r: 8,
            lora_alpha: 8.0,
            target_modules: None,
            exclude_modules: None,
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
            bias: "none".into(),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            lora_dropout: 0.0,
            init_lora_weights: Value::Bool(true),
            modules_to_save: None,
            rank_pattern: Pattern::default(),
            alpha_pattern: Pattern::default(),
            inference_mode: true,
        }
    }
}

/// The keys read from the file; unknown keys are ignored by serde.
#[derive(Deserialize)]
struct Raw {
    peft_type: Option<String>,
    r: Option<u64>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    target_modules: Option<StrOrList>,
    #[serde(default)]
    exclude_modules: Option<StrOrList>,
    #[serde(default)]
    use_rslora: Option<bool>,
    #[serde(default)]
    use_dora: Option<bool>,
    #[serde(default)]
    fan_in_fan_out: Option<bool>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    lora_dropout: Option<f64>,
    #[serde(default)]
    init_lora_weights: Option<Value>,
    #[serde(default)]
    modules_to_save: Option<StrOrList>,
    #[serde(default)]
    rank_pattern: Pattern,
    #[serde(default)]
    alpha_pattern: Pattern,
    #[serde(default)]
    inference_mode: Option<bool>,
    // Settings that change the math; refused when set.
    #[serde(default)]
    lora_bias: Option<bool>,
    #[serde(default)]
    use_qalora: Option<bool>,
    #[serde(default)]
    alora_invocation_tokens: Option<Value>,
    #[serde(default)]
    layer_replication: Option<Value>,
    #[serde(default)]
    trainable_token_indices: Option<Value>,
    #[serde(default)]
    target_parameters: Option<Value>,
    #[serde(default)]
    arrow_config: Option<Value>,
    #[serde(default)]
    use_bdlora: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

fn is_set(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

impl LoraAdapterConfig {
    /// Parses `adapter_config.json` text. Errors say which key is wrong.
    pub fn parse(text: &str) -> Result<LoraAdapterConfig, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("not a valid adapter config: {e}"))?;
        match raw.peft_type.as_deref() {
            Some("LORA") => {}
            Some(other) => {
                return Err(format!("peft_type is `{other}`; only LORA adapters (LoRA, rsLoRA, DoRA) can be imported"))
            }
            None => return Err("no `peft_type` key: not a PEFT adapter config".into()),
        }
        let r = raw.r.ok_or("no `r` key")?;
        if r == 0 {
            return Err("`r` must be at least 1".into());
        }
        let unsupported: [(&str, bool); 8] = [
            ("lora_bias", raw.lora_bias == Some(true)),
            ("use_qalora", raw.use_qalora == Some(true)),
            ("alora_invocation_tokens", is_set(&raw.alora_invocation_tokens)),
            ("layer_replication", is_set(&raw.layer_replication)),
            ("trainable_token_indices", is_set(&raw.trainable_token_indices)),
            ("target_parameters", is_set(&raw.target_parameters)),
            ("arrow_config", is_set(&raw.arrow_config)),
            ("use_bdlora", is_set(&raw.use_bdlora)),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(format!("`{key}` is set; adaptc does not support this LoRA variant"));
        }
        let bias = raw.bias.unwrap_or_else(|| "none".into());
        if bias != "none" {
            return Err(format!(
                "`bias` is `{bias}`: the adapter trains base-model biases, which adaptc cannot import (only \"none\")"
            ));
        }
        for (name, p) in [("rank_pattern", &raw.rank_pattern), ("alpha_pattern", &raw.alpha_pattern)] {
            for (k, v, re) in &p.entries {
                if re.is_none() {
                    return Err(format!("{name} key `{k}` is not a regex adaptc can evaluate"));
                }
                if name == "rank_pattern" && (v.fract() != 0.0 || *v < 1.0) {
                    return Err(format!("{name}[`{k}`] = {v} is not a positive integer rank"));
                }
            }
        }
        let modules = |v: Option<StrOrList>| {
            v.map(|v| match v {
                StrOrList::Str(s) => TargetModules::Regex(s),
                StrOrList::List(l) => TargetModules::List(l),
            })
        };
        let target_modules = modules(raw.target_modules);
        if let Some(TargetModules::Regex(re)) = &target_modules {
            Regex::new(re).map_err(|e| format!("target_modules regex `{re}` does not compile: {e}"))?;
        }
        Ok(LoraAdapterConfig {
            r: r as usize,
            lora_alpha: raw.lora_alpha.unwrap_or(8.0),
            target_modules,
            exclude_modules: modules(raw.exclude_modules),
            use_rslora: raw.use_rslora.unwrap_or(false),
            use_dora: raw.use_dora.unwrap_or(false),
            fan_in_fan_out: raw.fan_in_fan_out.unwrap_or(false),
            bias,
            task_type: raw.task_type,
            base_model_name_or_path: raw.base_model_name_or_path,
            revision: raw.revision,
            lora_dropout: raw.lora_dropout.unwrap_or(0.0),
            init_lora_weights: raw.init_lora_weights.unwrap_or(Value::Bool(true)),
            modules_to_save: raw.modules_to_save.map(|m| match m {
                StrOrList::Str(s) => vec![s],
                StrOrList::List(l) => l,
            }),
            rank_pattern: raw.rank_pattern,
            alpha_pattern: raw.alpha_pattern,
            inference_mode: raw.inference_mode.unwrap_or(true),
        })
    }

    /// The rank and alpha PEFT gives module `key` (a name relative to the base model).
    pub fn rank_alpha(&self, key: &str) -> (usize, f64) {
        let r = self.rank_pattern.lookup(key).map_or(self.r, |v| v as usize);
        let alpha = self.alpha_pattern.lookup(key).unwrap_or(self.lora_alpha);
        (r, alpha)
    }

    /// The scaling PEFT applies to module `key`: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scaling(&self, key: &str) -> f64 {
        let (r, alpha) = self.rank_alpha(key);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The JSON `save_pretrained` writes: sorted keys, indent 2.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        let modules = |t: &Option<TargetModules>| match t {
            None => Value::Null,
            Some(TargetModules::List(l)) => json!(l),
            Some(TargetModules::Regex(s)) => json!(s),
        };
        m.insert("alpha_pattern".into(), self.alpha_pattern.to_json());
        m.insert("auto_mapping".into(), Value::Null);
        m.insert("base_model_name_or_path".into(), json!(self.base_model_name_or_path));
        m.insert("bias".into(), json!(self.bias));
        m.insert("exclude_modules".into(), modules(&self.exclude_modules));
        m.insert("fan_in_fan_out".into(), json!(self.fan_in_fan_out));
        m.insert("inference_mode".into(), json!(self.inference_mode));
        m.insert("init_lora_weights".into(), self.init_lora_weights.clone());
        m.insert("layers_pattern".into(), Value::Null);
        m.insert("layers_to_transform".into(), Value::Null);
        m.insert("loftq_config".into(), json!({}));
        m.insert("lora_alpha".into(), number(self.lora_alpha));
        m.insert("lora_dropout".into(), json!(self.lora_dropout));
        m.insert("megatron_config".into(), Value::Null);
        m.insert("megatron_core".into(), json!("megatron.core"));
        m.insert("modules_to_save".into(), json!(self.modules_to_save));
        m.insert("peft_type".into(), json!("LORA"));
        m.insert("r".into(), json!(self.r));
        m.insert("rank_pattern".into(), self.rank_pattern.to_json());
        m.insert("revision".into(), json!(self.revision));
        m.insert("target_modules".into(), modules(&self.target_modules));
        m.insert("task_type".into(), json!(self.task_type));
        m.insert("use_dora".into(), json!(self.use_dora));
        m.insert("use_rslora".into(), json!(self.use_rslora));
        if self.exclude_modules.is_none() {
            // Absent rather than null: PEFT before 0.14 does not know the key.
            m.remove("exclude_modules");
        }
        serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lookup_follows_get_pattern_key() {
        let p = Pattern::new([("key".to_string(), 3.0), ("encoder.layer.1.attention.self.query".to_string(), 2.0)]);
        assert_eq!(p.lookup("encoder.layer.0.attention.self.key"), Some(3.0));
        assert_eq!(p.lookup("encoder.layer.1.attention.self.query"), Some(2.0));
        assert_eq!(p.lookup("encoder.layer.0.attention.self.query"), None);
        // A suffix must start at a component boundary.
        assert_eq!(p.lookup("encoder.layer.0.attention.self.monkey"), None);
        // First match in file order wins.
        let p = Pattern::new([("query".to_string(), 4.0), (r"layer\.1\..*query".to_string(), 2.0)]);
        assert_eq!(p.lookup("encoder.layer.1.attention.self.query"), Some(4.0));
    }

    #[test]
    fn refuses_other_peft_types_and_variants() {
        let e = LoraAdapterConfig::parse(r#"{"peft_type": "IA3", "r": 8}"#).unwrap_err();
        assert!(e.contains("`IA3`"), "{e}");
        let e = LoraAdapterConfig::parse(r#"{"peft_type": "LORA", "r": 8, "lora_bias": true}"#).unwrap_err();
        assert!(e.contains("lora_bias"), "{e}");
        let e = LoraAdapterConfig::parse(r#"{"peft_type": "LORA", "r": 8, "bias": "all"}"#).unwrap_err();
        assert!(e.contains("`bias` is `all`"), "{e}");
        let e = LoraAdapterConfig::parse(r#"{"peft_type": "LORA", "r": 0}"#).unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = LoraAdapterConfig::parse(r#"{"peft_type": "LORA", "r": 4, "rank_pattern": {"q": 1.5}}"#).unwrap_err();
        assert!(e.contains("positive integer"), "{e}");
        assert!(LoraAdapterConfig::parse("[1]").unwrap_err().contains("not a valid adapter config"));
    }

    #[test]
    fn target_modules_as_regex_string() {
        let c = LoraAdapterConfig::parse(
            r#"{"peft_type": "LORA", "r": 4, "target_modules": ".*\\.(q|v)_proj", "unknown_key": [1]}"#,
        )
        .unwrap();
        let t = c.target_modules.unwrap();
        assert!(t.matches("model.layers.0.self_attn.q_proj"));
        assert!(!t.matches("model.layers.0.self_attn.k_proj"));
    }

    #[test]
    fn written_json_reads_back() {
        let c = LoraAdapterConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: Some(TargetModules::List(vec!["query".into(), "value".into()])),
            rank_pattern: Pattern::new([("encoder.layer.0.attention.self.query".to_string(), 4.0)]),
            alpha_pattern: Pattern::new([("encoder.layer.0.attention.self.query".to_string(), 2.5)]),
            ..LoraAdapterConfig::default()
        };
        let text = c.to_json();
        assert!(text.contains("\"lora_alpha\": 16,"), "{text}");
        assert!(text.contains("\"encoder.layer.0.attention.self.query\": 2.5"), "{text}");
        assert_eq!(LoraAdapterConfig::parse(&text).unwrap(), c);
        assert_eq!(c.rank_alpha("encoder.layer.0.attention.self.query"), (4, 2.5));
        assert_eq!(c.rank_alpha("encoder.layer.1.attention.self.query"), (8, 16.0));
    }
}
