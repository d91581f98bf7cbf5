//! Typed access to a pass's options, checked against the schema the pass declares.
//!
//! [`Options::new`] refuses option names the pass does not declare (listing the valid ones)
//! and values that do not fit the declared [`OptionKind`], so a typo is reported before any
//! pass runs. Getters return the given value or the schema's default; an option with neither
//! is required, and asking for it is an error.

use std::fmt;

use crate::pass::PassError;
use crate::pipeline::{OptionValue, PassSpec};
use crate::registry::did_you_mean;

/// The type of an option, as shown by `adaptc passes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// A non-negative integer.
    Int,
    /// A finite number.
    Float,
    /// `true`/`false` (also `1`/`0`).
    Bool,
    /// Any single item.
    String,
    /// Comma-separated items (`a,b`); a single item is a one-item list, `""` the empty list.
    List,
    /// One of the given choices.
    Enum(&'static [&'static str]),
}

/// Honours width and alignment (`{:<14}`), for tables.
impl fmt::Display for OptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionKind::Int => f.pad("int"),
            OptionKind::Float => f.pad("float"),
            OptionKind::Bool => f.pad("bool"),
            OptionKind::String => f.pad("string"),
            OptionKind::List => f.pad("list"),
            OptionKind::Enum(choices) => f.pad(&format!("enum: {}", choices.join("|"))),
        }
    }
}

/// Serialized as its display text (`"int"`, `"enum: a|b"`), for `adaptc passes --json`.
impl serde::Serialize for OptionKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One option a pass accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionInfo {
    pub name: &'static str,
    pub kind: OptionKind,
    /// The default as pipeline text; `None` makes the option required.
    pub default: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

impl OptionInfo {
    pub const fn new(
        name: &'static str,
        kind: OptionKind,
        default: Option<&'static str>,
        help: &'static str,
    ) -> OptionInfo {
        OptionInfo { name, kind, default, help }
    }
}

/// The options of one pass instance: the values given in the pipeline, checked against the
/// pass's schema, with the schema's defaults behind them.
#[derive(Clone, Debug)]
pub struct Options {
    pass: String,
    schema: Vec<OptionInfo>,
    given: Vec<(String, OptionValue)>,
}

impl Options {
    /// Checks `spec`'s options against `schema`: every name must be declared and every value
    /// must fit its kind.
    pub fn new(spec: &PassSpec, schema: &[OptionInfo]) -> Result<Options, PassError> {
        let options = Options { pass: spec.name.clone(), schema: schema.to_vec(), given: spec.options.clone() };
        for (key, value) in &spec.options {
            let Some(info) = schema.iter().find(|o| o.name == key) else {
                let names: Vec<&str> = schema.iter().map(|o| o.name).collect();
                let reason = if names.is_empty() {
                    format!("unknown option; `{}` takes no options", spec.name)
                } else {
                    let hint = did_you_mean(key, names.iter().copied())
                        .map_or(String::new(), |s| format!("did you mean `{s}`? "));
                    format!("unknown option; {hint}valid options: {}", names.join(", "))
                };
                return Err(PassError::bad_option(&spec.name, key, reason));
            };
            options.check(info, value)?;
        }
        Ok(options)
    }

    /// Options of a pass that was given none (all defaults).
    pub fn defaults(pass: &str, schema: &[OptionInfo]) -> Options {
        Options { pass: pass.to_string(), schema: schema.to_vec(), given: Vec::new() }
    }

    /// The pass these options belong to.
    pub fn pass(&self) -> &str {
        &self.pass
    }

    /// Whether the pipeline set `name` explicitly.
    pub fn is_set(&self, name: &str) -> bool {
        self.given.iter().any(|(k, _)| k == name)
    }

    fn bad(&self, option: &str, reason: impl Into<String>) -> PassError {
        PassError::bad_option(&self.pass, option, reason)
    }

    /// The value of `name`: given, or the schema default parsed as pipeline text.
    fn value(&self, name: &str) -> Result<(OptionKind, OptionValue), PassError> {
        let info = self
            .schema
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| self.bad(name, "is not declared in the pass's option schema"))?;
        if let Some((_, v)) = self.given.iter().find(|(k, _)| k == name) {
            return Ok((info.kind, v.clone()));
        }
        let default = info.default.ok_or_else(|| self.bad(name, "is required"))?;
        Ok((info.kind, parse_default(default)))
    }

    fn scalar<'a>(&self, name: &str, value: &'a OptionValue) -> Result<&'a str, PassError> {
        value.as_scalar().ok_or_else(|| self.bad(name, format!("expected a single value, got the list `{value}`")))
    }

    fn check(&self, info: &OptionInfo, value: &OptionValue) -> Result<(), PassError> {
        if info.kind == OptionKind::List {
            return Ok(());
        }
        let s = self.scalar(info.name, value)?;
        match info.kind {
            OptionKind::Int => parse_usize(s).map(drop),
            OptionKind::Float => parse_f64(s).map(drop),
            OptionKind::Bool => parse_bool(s).map(drop),
            OptionKind::String | OptionKind::List => Ok(()),
            OptionKind::Enum(choices) => parse_choice(s, choices).map(drop),
        }
        .map_err(|reason| self.bad(info.name, reason))
    }

    /// An `int` option.
    pub fn usize(&self, name: &str) -> Result<usize, PassError> {
        let (_, v) = self.value(name)?;
        parse_usize(self.scalar(name, &v)?).map_err(|r| self.bad(name, r))
    }

    /// A `float` option.
    pub fn f64(&self, name: &str) -> Result<f64, PassError> {
        let (_, v) = self.value(name)?;
        parse_f64(self.scalar(name, &v)?).map_err(|r| self.bad(name, r))
    }

    /// A `bool` option.
    pub fn bool(&self, name: &str) -> Result<bool, PassError> {
        let (_, v) = self.value(name)?;
        parse_bool(self.scalar(name, &v)?).map_err(|r| self.bad(name, r))
    }

    /// A `string` option.
    pub fn string(&self, name: &str) -> Result<String, PassError> {
        let (_, v) = self.value(name)?;
        self.scalar(name, &v).map(str::to_string)
    }

    /// A `list` option.
    pub fn list(&self, name: &str) -> Result<Vec<String>, PassError> {
        let (_, v) = self.value(name)?;
        Ok(v.items().into_iter().map(str::to_string).collect())
    }

    /// An `enum` option: one of the choices its kind declares.
    pub fn choice(&self, name: &str) -> Result<String, PassError> {
        let (kind, v) = self.value(name)?;
        let OptionKind::Enum(choices) = kind else {
            return Err(self.bad(name, format!("is declared as {kind}, not as an enum")));
        };
        let s = self.scalar(name, &v)?;
        parse_choice(s, choices).map(str::to_string).map_err(|r| self.bad(name, r))
    }
}

/// Defaults are written as pipeline values: `a,b` is a list.
fn parse_default(text: &str) -> OptionValue {
    let items: Vec<String> = text.split(',').map(str::to_string).collect();
    if items.len() > 1 {
        OptionValue::List(items)
    } else {
        OptionValue::Scalar(text.to_string())
    }
}

fn parse_usize(s: &str) -> Result<usize, String> {
    s.parse::<usize>().map_err(|_| format!("expected a non-negative integer, got `{s}`"))
}

fn parse_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("expected a finite number, got `{s}`")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got `{s}`")),
    }
}

fn parse_choice<'a>(s: &str, choices: &[&'a str]) -> Result<&'a str, String> {
    choices
        .iter()
        .find(|c| **c == s)
        .copied()
        .ok_or_else(|| format!("expected one of {}, got `{s}`", choices.join("|")))
}

/// Checks that a schema's defaults fit their kinds (used by the registry's tests).
pub fn check_schema(pass: &str, schema: &[OptionInfo]) -> Result<(), PassError> {
    let options = Options::defaults(pass, schema);
    for (i, info) in schema.iter().enumerate() {
        if schema[..i].iter().any(|o| o.name == info.name) {
            return Err(PassError::bad_option(pass, info.name, "is declared twice"));
        }
        if let Some(d) = info.default {
            options.check(info, &parse_default(d))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[OptionInfo] = &[
        OptionInfo::new("rank", OptionKind::Int, Some("8"), "rank"),
        OptionInfo::new("alpha", OptionKind::Float, Some("16"), "scale"),
        OptionInfo::new("dropout", OptionKind::Bool, Some("false"), "dropout"),
        OptionInfo::new("name", OptionKind::String, Some("lora"), "prefix"),
        OptionInfo::new("targets", OptionKind::List, Some("query,value"), "modules"),
        OptionInfo::new("init", OptionKind::Enum(&["gaussian", "zeros"]), Some("gaussian"), "init"),
        OptionInfo::new("path", OptionKind::String, None, "required"),
    ];

    fn opts(text: &str) -> Result<Options, PassError> {
        let p = crate::Pipeline::parse(text)?;
        Options::new(&p.passes[0], SCHEMA)
    }

    #[test]
    fn defaults_and_given_values() {
        let o = opts("p{rank=4 targets=q path=x.onnx}").unwrap();
        assert_eq!(o.usize("rank").unwrap(), 4);
        assert_eq!(o.f64("alpha").unwrap(), 16.0);
        assert!(!o.bool("dropout").unwrap());
        assert_eq!(o.string("name").unwrap(), "lora");
        assert_eq!(o.list("targets").unwrap(), vec!["q"]);
        assert_eq!(o.choice("init").unwrap(), "gaussian");
        assert_eq!(o.string("path").unwrap(), "x.onnx");
        assert!(o.is_set("rank") && !o.is_set("alpha"));
        let o = opts("p").unwrap();
        assert_eq!(o.list("targets").unwrap(), vec!["query", "value"]);
        assert_eq!(opts("p{targets=\"\"}").unwrap().list("targets").unwrap(), Vec::<String>::new());
        check_schema("p", SCHEMA).unwrap();
    }

    #[test]
    fn kinds_print_and_serialize_as_text() {
        assert_eq!(OptionKind::Enum(&["a", "b"]).to_string(), "enum: a|b");
        assert_eq!(format!("{:<6}|", OptionKind::Int), "int   |");
        assert_eq!(serde_json::to_string(&OptionKind::Int).unwrap(), "\"int\"");
        assert_eq!(serde_json::to_string(&OptionKind::Enum(&["a", "b"])).unwrap(), "\"enum: a|b\"");
    }

    #[test]
    fn errors_name_pass_option_and_value() {
        let e = opts("p{rank=-1}").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `rank`: expected a non-negative integer, got `-1`");
        let e = opts("p{alpha=nan}").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `alpha`: expected a finite number, got `nan`");
        let e = opts("p{dropout=maybe}").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `dropout`: expected true or false, got `maybe`");
        let e = opts("p{init=ones}").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `init`: expected one of gaussian|zeros, got `ones`");
        let e = opts("p{rank=1,2}").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `rank`: expected a single value, got the list `1,2`");
        let e = opts("p{rnak=1}").unwrap_err().to_string();
        assert_eq!(
            e,
            "pass `p`: option `rnak`: unknown option; did you mean `rank`? valid options: rank, alpha, dropout, name, targets, init, path"
        );
        let e = opts("p").unwrap().string("path").unwrap_err().to_string();
        assert_eq!(e, "pass `p`: option `path`: is required");
        let e = opts("p").unwrap().usize("nope").unwrap_err().to_string();
        assert!(e.contains("not declared"), "{e}");
        let e = Options::new(&PassSpec::new("dce").with("x", "1"), &[]).unwrap_err().to_string();
        assert_eq!(e, "pass `dce`: option `x`: unknown option; `dce` takes no options");
    }

    #[test]
    fn schema_check_catches_bad_defaults() {
        let bad = [OptionInfo::new("n", OptionKind::Int, Some("x"), "")];
        assert!(check_schema("p", &bad).is_err());
        let dup = [OptionInfo::new("n", OptionKind::Int, None, ""), OptionInfo::new("n", OptionKind::Int, None, "")];
        assert!(check_schema("p", &dup).is_err());
    }
}
