//! `specialize-shapes`: gives symbolic dimensions concrete values.
//!
//! Exported models have symbolic dimensions (`input_ids: i64[batch, seq]`); the shape
//! arithmetic the exporter left in the graph (`Shape → Gather → Range/Concat → Reshape`) can
//! only be folded once they are numbers. This pass rewrites declared types:
//!
//! - `dims=batch:2,seq:16` binds symbols to values (`symbol:value`; a quoted `"batch=2"` item
//!   works too, since `=` is not allowed in a bare pipeline value);
//! - `inputs=input_ids:2x16,mask:2x16` sets whole input shapes (`name:d0xd1x…`, `name:` for a
//!   scalar); a symbol in the declared shape is bound to the value given at its place, and a
//!   known dimension must match.
//!
//! Every bound symbol is replaced wherever it appears in the main graph's declared types:
//! graph inputs, graph outputs and `value_info` (a dimension name means the same size across a
//! graph, as the dynamo exporter writes them), so `fold-constants` can then fold `Shape` of
//! intermediate values too. Composite expressions (`Min(128, seq)`) and unnamed dimensions are
//! left as they are; so are subgraph bodies. A symbol given but not found is reported in a
//! note; symbols still free in graph inputs afterwards are noted too.
//!
//! Errors (nothing changed): an `inputs` entry naming no graph input, a rank or known dimension
//! that differs from the declared one, a symbol bound to two different values.
//!
//! Preconditions: none. Preserves: nodes, initializers and names; a rewritten type keeps its
//! element type (dimension denotations of a rewritten type are dropped). Example pipeline:
//! `specialize-shapes{dims=batch:2,seq:16},fold-constants,dce`. Statistics:
//! `specialize.dims_set` (dimensions made concrete), `specialize.values_retyped`.

use std::collections::{BTreeMap, BTreeSet};

use adaptc_ir::{Dim, Model, TypeInfo, ValueInfo};

use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

const NAME: &str = "specialize-shapes";

/// The `specialize-shapes` pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecializeShapes {
    /// Symbol → value.
    pub dims: BTreeMap<String, i64>,
    /// Input name → its whole shape.
    pub inputs: Vec<(String, Vec<i64>)>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: NAME,
        summary: "replace symbolic dimensions of declared types by concrete values so shape arithmetic folds",
        options: vec![
            OptionInfo::new("dims", OptionKind::List, Some(""), "symbol:value bindings, e.g. batch:2,seq:16"),
            OptionInfo::new("inputs", OptionKind::List, Some(""), "whole input shapes, e.g. input_ids:2x16"),
        ],
        example: "specialize-shapes{dims=batch:2,seq:16},fold-constants,dce",
        build: |o: &Options| {
            let dims = parse_dims(&o.list("dims")?).map_err(|r| PassError::bad_option(NAME, "dims", r))?;
            let inputs = parse_inputs(&o.list("inputs")?).map_err(|r| PassError::bad_option(NAME, "inputs", r))?;
            Ok(Box::new(SpecializeShapes { dims, inputs }))
        },
    }
}

fn parse_value(text: &str, item: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| format!("`{item}`: `{text}` is not a non-negative integer"))
}

/// `batch:2` or `batch=2` items.
pub fn parse_dims(items: &[String]) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, value) = item
            .split_once(':')
            .or_else(|| item.split_once('='))
            .ok_or_else(|| format!("`{item}` is not `symbol:value`"))?;
        if name.is_empty() {
            return Err(format!("`{item}` has no symbol name"));
        }
        let value = parse_value(value, item)?;
        if out.insert(name.to_string(), value).is_some_and(|old| old != value) {
            return Err(format!("symbol `{name}` is given twice with different values"));
        }
    }
    Ok(out)
}

/// `name:2x16` items (`name:` is a scalar).
pub fn parse_inputs(items: &[String]) -> Result<Vec<(String, Vec<i64>)>, String> {
    let mut out: Vec<(String, Vec<i64>)> = Vec::new();
    for item in items {
        let (name, shape) = item.rsplit_once(':').ok_or_else(|| format!("`{item}` is not `name:d0xd1x…`"))?;
        if name.is_empty() {
            return Err(format!("`{item}` has no input name"));
        }
        let dims = if shape.is_empty() {
            Vec::new()
        } else {
            shape.split('x').map(|d| parse_value(d, item)).collect::<Result<_, _>>()?
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("input `{name}` is given twice"));
        }
        out.push((name.to_string(), dims));
    }
    Ok(out)
}

impl Pass for SpecializeShapes {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let graph = &mut model.graph;
        let fail = |reason: String| PassError::failed(NAME, reason);
        let mut bindings = self.dims.clone();
        let mut used = BTreeSet::new();
        // Whole input shapes: check them against the declared types and bind their symbols.
        let mut whole: Vec<(usize, TypeInfo)> = Vec::new();
        for (name, shape) in &self.inputs {
            let Some(pos) = graph.inputs.iter().position(|v| &v.name == name) else {
                let names: Vec<&str> = graph.inputs.iter().map(|v| v.name.as_str()).collect();
                return Err(fail(format!(
                    "`inputs` names `{name}`, which is not a graph input ({})",
                    names.join(", ")
                )));
            };
            let ty = graph.inputs[pos].ty.as_ref();
            let dtype = ty
                .filter(|t| t.is_tensor())
                .and_then(TypeInfo::dtype)
                .ok_or_else(|| fail(format!("input `{name}` has no tensor type to specialise")))?;
            if let Some(declared) = ty.and_then(TypeInfo::dims) {
                if declared.len() != shape.len() {
                    return Err(fail(format!(
                        "input `{name}` has rank {} ({}), but `inputs` gives {} dimensions",
                        declared.len(),
                        show(&declared),
                        shape.len()
                    )));
                }
                for (i, (d, &v)) in declared.iter().zip(shape).enumerate() {
                    match d {
                        Dim::Known(n) if *n != v => {
                            return Err(fail(format!(
                                "input `{name}` has {n} in dimension {i}, but `inputs` gives {v}"
                            )))
                        }
                        Dim::Symbol(s) => {
                            bind(&mut bindings, s, v).map_err(fail)?;
                            used.insert(s.clone());
                        }
                        _ => {}
                    }
                }
            }
            let dims = shape.iter().map(|&v| Dim::Known(v)).collect();
            whole.push((pos, TypeInfo::tensor(dtype, Some(dims))));
        }

        let (mut dims_set, mut retyped) = (0, 0);
        for (pos, ty) in whole {
            let v = &mut graph.inputs[pos];
            if v.ty.as_ref() != Some(&ty) {
                dims_set += count_unknown(v.ty.as_ref(), &ty);
                v.ty = Some(ty);
                retyped += 1;
            }
        }
        for v in graph.inputs.iter_mut().chain(graph.outputs.iter_mut()).chain(graph.value_info.iter_mut()) {
            if let Some(n) = substitute(v, &bindings, &mut used) {
                dims_set += n;
                retyped += 1;
            }
        }
        for symbol in self.dims.keys().filter(|s| !used.contains(*s)) {
            cx.note(format!("{NAME}: symbol `{symbol}` does not appear in the graph's declared types"));
        }
        for v in &graph.inputs {
            let free: Vec<String> =
                v.ty.as_ref()
                    .and_then(TypeInfo::dims)
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| !matches!(d, Dim::Known(_)))
                    .map(ToString::to_string)
                    .collect();
            if !free.is_empty() {
                cx.note(format!("{NAME}: input `{}` still has free dimensions: {}", v.name, free.join(", ")));
            }
        }
        Ok(PassOutcome::changed(retyped > 0)
            .stat("specialize.dims_set", dims_set)
            .stat("specialize.values_retyped", retyped))
    }
}

fn bind(bindings: &mut BTreeMap<String, i64>, symbol: &str, value: i64) -> Result<(), String> {
    match bindings.get(symbol) {
        Some(&old) if old != value => Err(format!("symbol `{symbol}` would be both {old} and {value}")),
        _ => {
            bindings.insert(symbol.to_string(), value);
            Ok(())
        }
    }
}

fn show(dims: &[Dim]) -> String {
    format!("[{}]", dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
}

/// How many dimensions of `new` are concrete where `old` was not.
fn count_unknown(old: Option<&TypeInfo>, new: &TypeInfo) -> i64 {
    match old.and_then(TypeInfo::dims) {
        Some(old) => old.iter().filter(|d| !matches!(d, Dim::Known(_))).count() as i64,
        None => new.dims().map_or(0, |d| d.len() as i64),
    }
}

/// Replaces bound symbols in `v`'s type; the number of dimensions replaced, if any.
fn substitute(v: &mut ValueInfo, bindings: &BTreeMap<String, i64>, used: &mut BTreeSet<String>) -> Option<i64> {
    let ty = v.ty.as_ref()?;
    let dtype = ty.dtype()?;
    let mut dims = ty.dims()?;
    let mut n = 0;
    for d in &mut dims {
        if let Dim::Symbol(s) = d {
            if let Some(&value) = bindings.get(s.as_str()) {
                used.insert(s.clone());
                *d = Dim::Known(value);
                n += 1;
            }
        }
    }
    if n == 0 {
        return None;
    }
    v.ty = Some(TypeInfo::tensor(dtype, Some(dims)));
    Some(n)
}
