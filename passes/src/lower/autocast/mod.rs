//! `autocast{dtype=bf16}`: mixed precision as a rewrite, the way `torch.autocast` runs a
//! model, but written into the graph so every backend (and the exported training graph) sees
//! the same arithmetic.
//!
//! Every `MatMul` and `Gemm` whose operands are all f32 runs in bf16: each operand is
//! converted by a `Cast(to=bf16)` (shared by all products that read the value), the product's
//! output becomes bf16 (backends accumulate in f32 and round once, as cuBLAS does with an f32
//! compute type), and a `Cast(to=f32)` gives the original output name back, so everything
//! else — norms, softmax, residual adds, the loss — stays f32. Frozen weights read only by
//! such products are stored in bf16 (half the memory, no per-step cast); trainable weights
//! (adapters, heads) stay f32 masters and are cast on the way in, so the optimizer and its
//! state stay f32. A product that reads another product's output reads its bf16 value
//! directly (bf16 → f32 → bf16 is exact), and an f32 cast nobody reads is removed.
//!
//! A fused attention core (`ai.adaptc::SoftmaxAttention`, from `fuse-attention`) with f32
//! operands gets `products="bf16"`: its products may round their operands to bf16 (cuBLAS's
//! bf16 tensor cores on the device, the same rounding in the CPU kernel), while the softmax,
//! its statistics and the outputs stay f32 — how `torch.autocast` runs attention. Its
//! gradient op inherits the attribute.
//!
//! With `activations=bf16` the activations are also stored in bf16 between ops, as in a model
//! loaded in bf16 ([`activations`]); by default they stay f32, as `torch.autocast` keeps them
//! on an f32 model.
//!
//! Run it before `build-training-graph`: autodiff then differentiates through the casts
//! (a cast's gradient is cast back to its input's type), so gradients of bf16 products are
//! bf16 and those of the f32 masters are f32. A product whose operand types are not known
//! to be f32 (not declared and not inferable) is left alone with a note.
//!
//! Preconditions: default-domain opset ≥ 13 (bf16 `Cast`). Preserves: graph inputs, outputs
//! and their types; the outputs' values up to bf16 rounding of the products. Example:
//! `insert-lora{rank=16 targets=all-linear},autocast{dtype=bf16}`. Statistics:
//! `autocast.products`, `autocast.weights` (initializers stored in bf16), `autocast.casts`
//! (casts inserted), `autocast.skipped`, `autocast.attention` (fused attention cores marked),
//! `autocast.activations` (activations rounded where written), `autocast.layout` (layout ops
//! moved onto bf16 values).

mod activations;

use std::collections::{HashMap, HashSet};

use adaptc_ir::{Attribute, DataType, Graph, Model, NodeId, Tensor, TypeInfo};

use super::elem_types::elem_types;
use super::Builder;
use crate::canonicalize::is_constant;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

const NAME: &str = "autocast";

/// The low-precision types `dtype=` accepts. f16 would also need loss scaling (its range is
/// too small for gradients), which the trainer does not do, so it is not offered.
const DTYPES: &[&str] = &["bf16"];

/// The `autocast` pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autocast {
    pub dtype: DataType,
    /// Whether activations are also stored in `dtype` between ops ([`activations`]).
    pub low_activations: bool,
}

impl Default for Autocast {
    fn default() -> Autocast {
        Autocast { dtype: DataType::BFloat16, low_activations: false }
    }
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: NAME,
        summary: "run every f32 MatMul/Gemm in bf16 (frozen weights stored in bf16, trainable ones cast)",
        options: vec![
            OptionInfo::new("dtype", OptionKind::Enum(DTYPES), Some("bf16"), "the products' element type"),
            OptionInfo::new(
                "activations",
                OptionKind::Enum(&["f32", "bf16"]),
                Some("f32"),
                "how activations are stored between ops: f32 (as torch.autocast on an f32 model), or rounded to \
                 dtype (as a bf16 model; statistics and masks stay f32)",
            ),
        ],
        example: "insert-lora{rank=16 targets=all-linear},autocast{dtype=bf16 activations=bf16}",
        build: |o: &Options| {
            let dtype = match o.choice("dtype")?.as_str() {
                "bf16" => DataType::BFloat16,
                other => return Err(PassError::bad_option(NAME, "dtype", format!("unsupported `{other}`"))),
            };
            let low_activations = o.choice("activations")? != "f32";
            Ok(Box::new(Autocast { dtype, low_activations }))
        },
    }
}

impl Pass for Autocast {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let opset = model.opset("").unwrap_or(0);
        if opset < 13 {
            return Err(PassError::failed(
                NAME,
                format!("the model imports opset {opset}; bf16 casts need opset 13 or later"),
            ));
        }
        let graph = &mut model.graph;
        let mut types = elem_types(graph)?;
        let mut order = graph.topo_order()?;
        let mut sites = Vec::new();
        for &id in &order {
            let node = graph.node(id);
            if !(node.op().is("MatMul") || node.op().is("Gemm")) || node.outputs().len() != 1 {
                continue;
            }
            let odd = node.inputs().iter().filter(|v| !v.is_empty()).find(|v| types.get(*v) != Some(&DataType::Float));
            match odd {
                None => sites.push(id),
                Some(v) => cx.note(format!(
                    "{NAME}: left `{}` ({}) in its own precision: operand `{v}` is {}",
                    node.label(),
                    node.op(),
                    types.get(v).map_or("of unknown type".to_string(), |d| d.to_string())
                )),
            }
        }
        let attention: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&id| {
                let node = graph.node(id);
                node.op().domain == "ai.adaptc"
                    && node.op().op_type == "SoftmaxAttention"
                    && [0, 1, 3].iter().all(|&i| node.input(i).is_some_and(|v| types.get(v) == Some(&DataType::Float)))
            })
            .collect();
        if self.dtype == DataType::BFloat16 {
            for &id in &attention {
                graph.set_attr(id, Attribute::string("products", "bf16"));
            }
        }
        let skipped =
            order.iter().filter(|&&id| graph.node(id).op().is("MatMul") || graph.node(id).op().is("Gemm")).count()
                - sites.len();
        let stored = match self.low_activations {
            true => {
                let stored = activations::store_low(graph, self.dtype, &sites.iter().copied().collect(), &types)?;
                types = elem_types(graph)?;
                order = graph.topo_order()?;
                stored
            }
            false => activations::Stored { rounded: 0, layout: 0 },
        };
        let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut cast = Caster {
            dtype: self.dtype,
            sites: sites.iter().copied().collect(),
            types,
            low: HashMap::new(),
            weights: 0,
            casts: 0,
        };
        let mut widened = Vec::new();
        for &id in &sites {
            let inputs = graph.node(id).inputs().to_vec();
            for (slot, v) in inputs.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                let twin = cast.lowered(graph, v, id)?;
                graph.set_input(id, slot, &twin)?;
            }
            widened.push(widen_output(graph, id, self.dtype, &position, &mut cast.low)?);
        }
        // An f32 view of a product that only other products read (through its bf16 value) is
        // dead; graph outputs keep theirs.
        let mut removed = HashSet::new();
        for out in widened {
            if graph.uses(&out).is_empty() && !graph.is_graph_output(&out) {
                if let Some((id, _)) = graph.producer(&out) {
                    graph.remove_node(id)?;
                    removed.insert(out);
                }
            }
        }
        crate::canonicalize::drop_value_info(graph, &removed);
        let casts = cast.casts + sites.len() - removed.len();
        Ok(PassOutcome::changed(!sites.is_empty() || !attention.is_empty() || stored.rounded > 0)
            .stat("autocast.products", sites.len() as i64)
            .stat("autocast.weights", cast.weights as i64)
            .stat("autocast.casts", casts as i64)
            .stat("autocast.skipped", skipped as i64)
            .stat("autocast.attention", attention.len() as i64)
            .stat("autocast.activations", stored.rounded as i64)
            .stat("autocast.layout", stored.layout as i64))
    }
}

/// Gives f32 values their low-precision twins, each made once.
struct Caster {
    dtype: DataType,
    sites: HashSet<NodeId>,
    types: HashMap<String, DataType>,
    /// f32 value → its low-precision twin.
    low: HashMap<String, String>,
    weights: usize,
    casts: usize,
}

impl Caster {
    /// The low-precision twin of f32 `value`, read by product `site`: the value itself when it
    /// is a frozen weight that only products read (converted in place), the source of an f32
    /// cast of a low-precision value, or a new `Cast` placed before `site`.
    fn lowered(&mut self, graph: &mut Graph, value: &str, site: NodeId) -> Result<String, PassError> {
        if let Some(t) = self.low.get(value) {
            return Ok(t.clone());
        }
        let only_products = graph.uses(value).iter().all(|u| u.slot.is_some() && self.sites.contains(&u.node));
        let twin = if is_constant(graph, value) && only_products && !graph.is_graph_output(value) {
            convert_initializer(graph, value, self.dtype)?;
            self.weights += 1;
            value.to_string()
        } else if let Some(source) = self.widened_source(graph, value) {
            source
        } else {
            let out = graph.unique_name(&format!("{value}/{}", short(self.dtype)));
            Builder::new(graph, NAME, value).node_into(
                "Cast",
                &[value],
                vec![Attribute::int("to", self.dtype.code() as i64)],
                short(self.dtype),
                &out,
            )?;
            if let Some((id, _)) = graph.producer(&out) {
                graph.move_before(&[id], site);
            }
            self.casts += 1;
            out
        };
        self.low.insert(value.to_string(), twin.clone());
        Ok(twin)
    }

    /// `x` when `value = Cast(x, to=f32)` and `x` already has the low-precision type.
    fn widened_source(&self, graph: &Graph, value: &str) -> Option<String> {
        let (id, _) = graph.producer(value)?;
        let node = graph.node(id);
        let to_f32 = node.attr("to").and_then(|a| a.as_int()) == Some(DataType::Float.code() as i64);
        let x = node.input(0)?;
        (node.op().is("Cast") && to_f32 && self.types.get(x) == Some(&self.dtype)).then(|| x.to_string())
    }
}

/// Makes product `id` write its low-precision result under a fresh name and a `Cast(to=f32)`
/// write the original output name (placed before its first reader); returns that name.
fn widen_output(
    graph: &mut Graph,
    id: NodeId,
    dtype: DataType,
    position: &HashMap<NodeId, usize>,
    low: &mut HashMap<String, String>,
) -> Result<String, PassError> {
    let out = graph.node(id).output(0).unwrap_or_default().to_string();
    let label = graph.node(id).label();
    let fresh = graph.unique_name(&format!("{out}/{}", short(dtype)));
    graph.rename_output(id, 0, &fresh)?;
    Builder::new(graph, NAME, &label).node_into(
        "Cast",
        &[fresh.as_str()],
        vec![Attribute::int("to", DataType::Float.code() as i64)],
        "f32",
        &out,
    )?;
    let first_reader = graph.uses(&out).iter().map(|u| u.node).min_by_key(|n| position.get(n).copied());
    if let (Some((cast, _)), Some(reader)) = (graph.producer(&out), first_reader) {
        graph.move_before(&[cast], reader);
    }
    low.insert(out.clone(), fresh);
    Ok(out)
}

/// Stores f32 initializer `name` as `dtype` (round to nearest even), keeping its name,
/// documentation and metadata; a declared type of the same name follows.
fn convert_initializer(graph: &mut Graph, name: &str, dtype: DataType) -> Result<(), PassError> {
    let Some(old) = graph.initializer(name) else {
        return Err(PassError::failed(NAME, format!("no initializer `{name}`")));
    };
    let bytes: Vec<u8> = match dtype {
        DataType::BFloat16 => old.to_f32()?.into_iter().flat_map(|v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        other => return Err(PassError::failed(NAME, format!("cannot store weights as {other}"))),
    };
    let mut new = Tensor::from_bytes(name, dtype, old.dims().to_vec(), bytes)?;
    new.doc_string = old.doc_string.clone();
    new.metadata = old.metadata.clone();
    graph.replace_initializer(new)?;
    for v in graph.value_info.iter_mut().filter(|v| v.name == name) {
        v.ty = Some(TypeInfo::tensor(dtype, v.ty.as_ref().and_then(TypeInfo::dims)));
    }
    Ok(())
}

/// The name suffix of a precision.
fn short(dtype: DataType) -> &'static str {
    match dtype {
        DataType::BFloat16 => "bf16",
        DataType::Float16 => "f16",
        _ => "f32",
    }
}
