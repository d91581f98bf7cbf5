//! `decompose`: rewrites ops into simpler, equivalent ONNX, for runtimes that lack them.
//!
//! - `Gelu` (opset 20), by its ONNX definition:
//!   `approximate="none"`: `0.5 · x · (1 + erf(x / √2))` (`Mul → Erf → Add → Mul → Mul`);
//!   `approximate="tanh"`: `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` (`x³` as two
//!   `Mul`s, then `Mul → Add → Mul → Tanh → Add → Mul → Mul`). The constants take `x`'s element
//!   type when its declared type gives it (f32, f64, f16, bf16); otherwise they are f32 and a
//!   `CastLike` to `x` follows each (so the rewrite is valid whatever the float type).
//! - `GatherND` whose indices are a constant (int64/int32), exactly:
//!   `Gather(Reshape(data, [N, inner…]), flat, axis=0)` where `N` is the product of the first
//!   `batch_dims + k` dimensions of `data` (`k` = the indices' last dimension) and `flat` holds
//!   the precomputed row-major positions (batch offset included; negative indices wrapped).
//!   `flat` has the indices' shape without the last dimension, so the result has GatherND's
//!   shape. It needs those first `batch_dims + k` dimensions of `data` known (from a constant
//!   or a declared type: run `specialize-shapes` first); the inner dimensions come from the
//!   declared type, or from `Shape(data, start=batch_dims+k)` (opset 15+) when not known.
//!
//! A node that cannot be rewritten is left alone with a note naming it and the reason (indices
//! not constant, dimensions unknown, an index out of range, an unknown `approximate`). The
//! replacement's last node writes the original output name, so consumers and graph outputs
//! are untouched; new nodes are named `<node>/<step>/<Op>` and tagged `adaptc.pass=decompose`.
//!
//! Preconditions: the graph verifies and imports the default ONNX domain. Preserves: what every
//! graph output computes (Gelu up to float rounding of the formula, GatherND exactly), value
//! names of the graph's interface. Example pipeline:
//! `specialize-shapes{dims=batch:2,seq:16},fold-constants,decompose{ops=Gelu,GatherND},fold-constants,dce`.
//! Statistics: `decompose.gelu`, `decompose.gather_nd`, `decompose.skipped`.

use adaptc_ir::{AttrValue, Attribute, DataType, Dim, Graph, Model, NodeId, Tensor};

use super::Builder;
use crate::canonicalize::is_constant;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

const NAME: &str = "decompose";

/// The ops `decompose` knows how to rewrite, as written in `ops=`.
pub const SUPPORTED: &[&str] = &["Gelu", "GatherND"];

/// The `decompose` pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decompose {
    pub gelu: bool,
    pub gather_nd: bool,
}

impl Default for Decompose {
    fn default() -> Decompose {
        Decompose { gelu: true, gather_nd: true }
    }
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: NAME,
        summary: "rewrite Gelu and constant-index GatherND into simpler equivalent ONNX ops",
        options: vec![OptionInfo::new(
            "ops",
            OptionKind::List,
            Some("Gelu,GatherND"),
            "ops to rewrite: Gelu, GatherND",
        )],
        example: "decompose{ops=Gelu,GatherND},fold-constants,dce",
        build: |o: &Options| {
            let mut pass = Decompose { gelu: false, gather_nd: false };
            for op in o.list("ops")? {
                match op.as_str() {
                    "Gelu" => pass.gelu = true,
                    "GatherND" => pass.gather_nd = true,
                    other => {
                        let hint = crate::registry::did_you_mean(other, SUPPORTED.iter().copied())
                            .map_or(String::new(), |s| format!("did you mean `{s}`? "));
                        return Err(PassError::bad_option(
                            NAME,
                            "ops",
                            format!("cannot decompose `{other}`; {hint}supported: {}", SUPPORTED.join(", ")),
                        ));
                    }
                }
            }
            Ok(Box::new(pass))
        },
    }
}

impl Pass for Decompose {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let opset = model.opset("").unwrap_or(0);
        let graph = &mut model.graph;
        let (mut gelu, mut gather_nd, mut skipped) = (0, 0, 0);
        for id in graph.topo_order()? {
            let node = graph.node(id);
            let result = if self.gelu && node.op().is("Gelu") {
                decompose_gelu(graph, id).map(|()| gelu += 1)
            } else if self.gather_nd && node.op().is("GatherND") {
                decompose_gather_nd(graph, id, opset).map(|()| gather_nd += 1)
            } else {
                continue;
            };
            match result {
                Ok(()) => {}
                Err(Skip::Ir(e)) => return Err(e.into()),
                Err(Skip::Because(reason)) => {
                    let node = graph.node(id);
                    cx.note(format!("{NAME}: left `{}` ({}) alone: {reason}", node.label(), node.op()));
                    skipped += 1;
                }
            }
        }
        Ok(PassOutcome::changed(gelu + gather_nd > 0)
            .stat("decompose.gelu", gelu)
            .stat("decompose.gather_nd", gather_nd)
            .stat("decompose.skipped", skipped))
    }
}

/// Why a node was not rewritten: a reason for a note (nothing changed), or an IR error (a bug:
/// the graph may be half-edited, so the pass fails).
enum Skip {
    Because(String),
    Ir(adaptc_ir::IrError),
}

impl From<adaptc_ir::IrError> for Skip {
    fn from(e: adaptc_ir::IrError) -> Skip {
        Skip::Ir(e)
    }
}

fn because(reason: impl Into<String>) -> Skip {
    Skip::Because(reason.into())
}

/// The declared dims of a value: a constant's dims, or its declared type's.
fn declared_dims(graph: &Graph, value: &str) -> Option<Vec<Dim>> {
    graph.value_type(value)?.dims()
}

/// Moves node `id`'s only output to a fresh name, so that the replacement can produce the
/// original one; returns the original output name.
fn detach(graph: &mut Graph, id: NodeId) -> Result<String, Skip> {
    let out = graph.node(id).output(0).unwrap_or_default().to_string();
    let fresh = graph.unique_name(&format!("{out}/replaced"));
    graph.rename_output(id, 0, &fresh)?;
    Ok(out)
}

/// The node's label as a prefix for new names.
fn prefix(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    if node.name.is_empty() {
        node.output(0).unwrap_or("decompose").to_string()
    } else {
        node.name.clone()
    }
}

/// A scalar of `dtype` holding `v` (the float types only).
fn scalar(dtype: DataType, v: f64) -> Option<Tensor> {
    let bytes = match dtype {
        DataType::Float => (v as f32).to_le_bytes().to_vec(),
        DataType::Double => v.to_le_bytes().to_vec(),
        DataType::Float16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        DataType::BFloat16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        _ => return None,
    };
    Tensor::from_bytes("", dtype, vec![], bytes).ok()
}

fn decompose_gelu(graph: &mut Graph, id: NodeId) -> Result<(), Skip> {
    let node = graph.node(id);
    let approximate = match node.attr("approximate").map(|a| &a.value) {
        None => "none".to_string(),
        Some(AttrValue::String(s)) => String::from_utf8_lossy(s).into_owned(),
        Some(_) => return Err(because("attribute `approximate` is not a string")),
    };
    if approximate != "none" && approximate != "tanh" {
        return Err(because(format!("unknown approximate=\"{approximate}\"")));
    }
    let (Some(x), 1) = (node.input(0).filter(|x| !x.is_empty()), node.inputs().len()) else {
        return Err(because("expected exactly one input"));
    };
    if node.outputs().len() != 1 || node.output(0).is_none_or(str::is_empty) {
        return Err(because("expected exactly one output"));
    }
    let x = x.to_string();
    let out = node.output(0).unwrap_or_default().to_string();
    let dtype = graph.value_type(&x).or_else(|| graph.value_type(&out)).and_then(|t| t.dtype());
    let typed = dtype.filter(|d| scalar(*d, 0.0).is_some());
    if let Some(d) = dtype.filter(|_| typed.is_none()) {
        return Err(because(format!("element type {d} is not a float type")));
    }
    let prefix = prefix(graph, id);
    let out = detach(graph, id)?;
    let mut b = Builder::new(graph, NAME, &prefix);
    // A constant of x's type: typed directly when known, else f32 + CastLike(x).
    let constant = |b: &mut Builder<'_>, what: &str, v: f64| -> Result<String, Skip> {
        match typed {
            Some(d) => Ok(b.constant(what, scalar(d, v).ok_or_else(|| because("no constant"))?)?),
            None => {
                let c = b.constant(
                    &format!("{what}_f32"),
                    scalar(DataType::Float, v).ok_or_else(|| because("no constant"))?,
                )?;
                Ok(b.node("CastLike", &[&c, &x], vec![], what)?)
            }
        }
    };
    let half = constant(&mut b, "half", 0.5)?;
    let one = constant(&mut b, "one", 1.0)?;
    let inner = if approximate == "none" {
        let rsqrt2 = constant(&mut b, "rsqrt2", std::f64::consts::FRAC_1_SQRT_2)?;
        let scaled = b.node("Mul", &[&x, &rsqrt2], vec![], "scaled")?;
        b.node("Erf", &[&scaled], vec![], "erf")?
    } else {
        let coeff = constant(&mut b, "coeff", 0.044715)?;
        let k = constant(&mut b, "sqrt_2_over_pi", (2.0 / std::f64::consts::PI).sqrt())?;
        let x2 = b.node("Mul", &[&x, &x], vec![], "x2")?;
        let x3 = b.node("Mul", &[&x2, &x], vec![], "x3")?;
        let cx3 = b.node("Mul", &[&x3, &coeff], vec![], "cx3")?;
        let sum = b.node("Add", &[&x, &cx3], vec![], "sum")?;
        let scaled = b.node("Mul", &[&sum, &k], vec![], "scaled")?;
        b.node("Tanh", &[&scaled], vec![], "tanh")?
    };
    let plus1 = b.node("Add", &[&inner, &one], vec![], "plus1")?;
    let xp = b.node("Mul", &[&x, &plus1], vec![], "x_times")?;
    b.node_into("Mul", &[&xp, &half], vec![], "half_of", &out)?;
    graph.remove_node(id)?;
    Ok(())
}

fn decompose_gather_nd(graph: &mut Graph, id: NodeId, opset: i64) -> Result<(), Skip> {
    let node = graph.node(id);
    let (Some(data), Some(indices_name), 2) = (node.input(0), node.input(1), node.inputs().len()) else {
        return Err(because("expected two inputs"));
    };
    if node.outputs().len() != 1 || node.output(0).is_none_or(str::is_empty) {
        return Err(because("expected exactly one output"));
    }
    let (data, indices_name) = (data.to_string(), indices_name.to_string());
    let b = usize::try_from(node.attr_int("batch_dims", 0)).map_err(|_| because("batch_dims is negative"))?;
    if !is_constant(graph, &indices_name) {
        return Err(because("the indices are not a constant"));
    }
    let indices = graph.initializer(&indices_name).ok_or_else(|| because("the indices are not a constant"))?;
    let idx_dims: Vec<usize> = indices.dims().iter().map(|&d| d as usize).collect();
    let values = match indices.dtype() {
        DataType::Int64 => indices.to_i64().map_err(|e| because(e.to_string()))?,
        DataType::Int32 => {
            let bytes = indices.bytes().map_err(|e| because(e.to_string()))?;
            bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        d => return Err(because(format!("the indices are {d}, not int64 or int32"))),
    };
    let q = idx_dims.len();
    let data_dims = declared_dims(graph, &data).ok_or_else(|| because(format!("the rank of `{data}` is unknown")))?;
    let r = data_dims.len();
    if q == 0 || b >= q || b >= r {
        return Err(because("batch_dims must be smaller than the ranks of data and indices"));
    }
    let k = idx_dims[q - 1];
    if k == 0 || b + k > r {
        return Err(because(format!("indices with last dimension {k} do not fit data of rank {r}")));
    }
    // The first b + k dims of data must be known to compute flat positions.
    let mut outer = Vec::with_capacity(b + k);
    for (i, d) in data_dims[..b + k].iter().enumerate() {
        match d {
            Dim::Known(n) if *n >= 0 => outer.push(*n as usize),
            other => {
                return Err(because(format!(
                    "dimension {i} of `{data}` is {other}, not a number (run specialize-shapes first)"
                )))
            }
        }
    }
    if outer[..b] != idx_dims[..b] {
        return Err(because(format!(
            "the batch dimensions of data {:?} and indices {:?} differ",
            &outer[..b],
            &idx_dims[..b]
        )));
    }
    let inner: Option<Vec<i64>> =
        data_dims[b + k..].iter().map(|d| if let Dim::Known(n) = d { Some(*n) } else { None }).collect();
    if inner.is_none() && opset < 15 {
        return Err(because("the inner dimensions of data are unknown and Shape(start) needs opset 15"));
    }
    // Flat positions over the first b + k dims, row-major.
    let per_batch: usize = outer[b..].iter().product();
    let tuples_per_batch: usize = idx_dims[b..q - 1].iter().product();
    let batch: usize = outer[..b].iter().product();
    let mut flat = Vec::with_capacity(batch * tuples_per_batch);
    for bi in 0..batch {
        for t in 0..tuples_per_batch {
            let start = (bi * tuples_per_batch + t) * k;
            let tuple = values.get(start..start + k).ok_or_else(|| because("the indices are truncated"))?;
            let mut pos = 0usize;
            for (j, &ix) in tuple.iter().enumerate() {
                let dim = outer[b + j] as i64;
                let n = if ix < 0 { ix + dim } else { ix };
                if !(0..dim).contains(&n) {
                    return Err(because(format!("index {ix} is out of range for a dimension of {dim}")));
                }
                pos = pos * outer[b + j] + n as usize;
            }
            flat.push((bi * per_batch + pos) as i64);
        }
    }
    let rows: usize = outer.iter().product();
    let flat_dims: Vec<u64> = idx_dims[..q - 1].iter().map(|&d| d as u64).collect();
    let flat_tensor = Tensor::from_i64("", flat_dims, &flat)?;

    let prefix = prefix(graph, id);
    let out = detach(graph, id)?;
    let mut bld = Builder::new(graph, NAME, &prefix);
    let flat_name = bld.constant("flat_indices", flat_tensor)?;
    let shape = match inner {
        Some(inner) => {
            let mut shape = vec![rows as i64];
            shape.extend(inner);
            bld.constant("shape", Tensor::from_i64("", vec![shape.len() as u64], &shape)?)?
        }
        None => {
            let rows = bld.constant("row_count", Tensor::from_i64("", vec![1], &[rows as i64])?)?;
            let start = Attribute::int("start", (b + k) as i64);
            let inner = bld.node("Shape", &[&data], vec![start], "inner_dims")?;
            bld.node("Concat", &[&rows, &inner], vec![Attribute::int("axis", 0)], "shape")?
        }
    };
    let rows_view = bld.node("Reshape", &[&data, &shape], vec![], "rows")?;
    bld.node_into("Gather", &[&rows_view, &flat_name], vec![Attribute::int("axis", 0)], "gather", &out)?;
    graph.remove_node(id)?;
    Ok(())
}
