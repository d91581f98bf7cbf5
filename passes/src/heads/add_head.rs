//! `add-head`: put a trainable classification head on an encoder that ends in hidden states
//! `[batch, seq, hidden]`, making `logits [batch, labels]` the model's first output.
//!
//! ```text
//! pooling=mean, with an `attention_mask` graph input:
//!   m = Unsqueeze(Cast(attention_mask), -1)              [batch, seq, 1]
//!   pooled = ReduceSum(h · m, seq) / Max(ReduceSum(m, seq), 1e-9)
//! pooling=mean, no `attention_mask`:  pooled = ReduceMean(h, seq)
//! pooling=cls:                        pooled = Gather(h, 0, axis=seq)   (h[:, 0, :])
//! logits = pooled · W + b            W [hidden, labels], b [labels]
//! ```
//!
//! The mean is sentence-transformers' masked mean (the clamp only matters for an all-padding
//! row). `W` and `b` are new initializers `classifier.weight` and `classifier.bias`, so a PEFT
//! `modules_to_save=["classifier"]` export maps them to `base_model.model.classifier.weight`
//! / `.bias`; `W` is stored `[hidden, labels]` (`y = x·W`, record layout `in-out`), the
//! transpose of PyTorch's `nn.Linear` weight `[labels, hidden]`, which an exporter writes
//! transposed (`extra.peft_weight_shape`). `W ~ N(0, 0.02²)` from a SplitMix64 stream seeded by
//! `seed` and the module path `classifier` (the `transformers` initializer range; values differ
//! from PyTorch's generator), `b = 0`, both in the hidden states' float type, both trainable
//! (in [`AdapterState::trainable`], tagged `adaptc.trainable=true`). One [`AdapterRecord`]
//! (method `head`, module `classifier`, roles `weight`/`bias`, `output` = `logits`,
//! `base_output` = the pooled value, `extra`: `kind`, `labels`, `pooling`, `input`,
//! `peft_weight_shape`). Inserted nodes are named under `classifier/` and tagged
//! `adaptc.pass=add-head`.
//!
//! `input` defaults to the first graph output of rank 3. The hidden size comes from its static
//! type or, if that is unknown, from the weight that produces it (a norm's scale, a
//! MatMul/Gemm weight or a bias, looking back through elementwise ops). The `logits` output's
//! batch dimension is the hidden states' (a symbol, `batch` if unknown).
//!
//! Refused, changing nothing: `kind` other than `classification`, `labels < 2`, a model that
//! already has a `logits` value or `classifier.*` initializers, an `input` that is not rank 3
//! or not float, a hidden size that cannot be found.
//!
//! Preconditions: none beyond the above. Preserves: every existing output (after `logits`),
//! input and value. Example pipeline: `add-head{labels=2 pooling=mean}`,
//! `insert-lora{rank=8 alpha=16 targets=query,value},add-head{labels=3 pooling=cls}`.
//! Statistics: `head.labels`, `head.hidden`, `head.params`.

use std::collections::BTreeMap;

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, Tensor, ValueInfo};

use crate::adapters::ia3::float_tensor;
use crate::adapters::init::{layer_seed, SplitMix64};
use crate::adapters::record::{AdapterRecord, AdapterState, Layout, Method};
use crate::adapters::rewriter::Rewriter;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "add-head";
/// The head's module path (PEFT `modules_to_save=["classifier"]`).
pub const MODULE: &str = "classifier";
pub const WEIGHT: &str = "classifier.weight";
pub const BIAS: &str = "classifier.bias";
/// The new first graph output.
pub const OUTPUT: &str = "logits";
/// The standard deviation of `W`'s initial values (`transformers`' `initializer_range`).
pub const INIT_STD: f64 = 0.02;

const KINDS: &[&str] = &["classification"];
const POOLINGS: &[&str] = &["mean", "cls"];

/// How the sequence is reduced to one vector per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (all tokens without a mask).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
}

impl Pooling {
    fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// The `add-head` pass.
#[derive(Clone, Debug)]
pub struct AddHead {
    /// `None` when `labels` was not given (an error when the pass runs).
    pub labels: Option<usize>,
    pub pooling: Pooling,
    /// The hidden states (`None`: the first rank-3 graph output).
    pub input: Option<String>,
    pub seed: u64,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "add a trainable classification head (mean or CLS pooling, then a linear layer) producing `logits`",
        options: vec![
            OptionInfo::new("kind", OptionKind::Enum(KINDS), Some("classification"), "the head's task"),
            OptionInfo::new("labels", OptionKind::Int, None, "number of classes (at least 2)"),
            OptionInfo::new(
                "pooling",
                OptionKind::Enum(POOLINGS),
                Some("mean"),
                "mean (over attention_mask's tokens) or cls (the first token)",
            ),
            OptionInfo::new(
                "input",
                OptionKind::String,
                Some(""),
                "the hidden states [batch, seq, hidden] (default: the first rank-3 graph output)",
            ),
            OptionInfo::new("seed", OptionKind::Int, Some("0"), "seed of the weight's initial values"),
        ],
        example: "add-head{labels=2 pooling=mean}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let kind = o.choice("kind")?;
    if kind != "classification" {
        return Err(PassError::bad_option(
            PASS,
            "kind",
            format!("`{kind}` heads are not supported; use classification"),
        ));
    }
    let labels = if o.is_set("labels") { Some(o.usize("labels")?) } else { None };
    if let Some(n) = labels {
        if n < 2 {
            return Err(PassError::bad_option(
                PASS,
                "labels",
                format!("a classifier needs at least 2 labels, got {n}"),
            ));
        }
    }
    let pooling = if o.choice("pooling")? == "cls" { Pooling::Cls } else { Pooling::Mean };
    let input = Some(o.string("input")?).filter(|s| !s.is_empty());
    Ok(Box::new(AddHead { labels, pooling, input, seed: o.usize("seed")? as u64 }))
}

/// What the head is built on, found before anything changes.
struct Plan {
    input: String,
    dtype: DataType,
    hidden: u64,
    batch: Dim,
    mask: Option<String>,
    opset: i64,
}

impl Pass for AddHead {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let Some(labels) = self.labels else {
            return Err(PassError::bad_option(PASS, "labels", "is required: the number of classes, e.g. `labels=2`"));
        };
        let mut state = AdapterState::load(model)?;
        let plan = self.plan(model)?;
        let mut rng = SplitMix64::new(layer_seed(self.seed, MODULE));
        let n = plan.hidden as usize * labels;
        let w: Vec<f32> = (0..n).map(|_| (rng.normal() * INIT_STD) as f32).collect();
        let wt = float_tensor(WEIGHT, plan.dtype, vec![plan.hidden, labels as u64], &w).map_err(fail)?;
        let bt = float_tensor(BIAS, plan.dtype, vec![labels as u64], &vec![0.0; labels]).map_err(fail)?;

        let graph = &mut model.graph;
        let mut rw = Rewriter::new(graph, PASS, MODULE);
        let pooled = pool(&mut rw, &plan, self.pooling)?;
        let weight = rw.initializer(WEIGHT, wt)?;
        let bias = rw.initializer(BIAS, bt)?;
        let mm = rw.node("MatMul", &[&pooled, &weight], vec![], "matmul")?;
        rw.node_into("Add", &[&mm, &bias], vec![], "bias", OUTPUT)?;
        let nodes = std::mem::take(&mut rw.created);
        let out = ValueInfo::tensor(OUTPUT, plan.dtype, vec![plan.batch.clone(), Dim::Known(labels as i64)]);
        graph.outputs.insert(0, out);

        state.trainable.insert(weight.clone());
        state.trainable.insert(bias.clone());
        let extra = BTreeMap::from([
            ("kind".to_string(), serde_json::Value::from("classification")),
            ("labels".to_string(), serde_json::Value::from(labels)),
            ("pooling".to_string(), serde_json::Value::from(self.pooling.name())),
            ("input".to_string(), serde_json::Value::from(plan.input.clone())),
            ("peft_weight_shape".to_string(), serde_json::Value::from(vec![labels as u64, plan.hidden])),
        ]);
        state.adapters.push(AdapterRecord {
            method: Method::Head,
            module: MODULE.to_string(),
            target_node: String::new(),
            base_weight: String::new(),
            layout: Some(Layout::InOut),
            params: BTreeMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]),
            nodes,
            output: OUTPUT.to_string(),
            base_output: pooled,
            rank: 0,
            alpha: 0.0,
            scale: 1.0,
            rslora: false,
            extra,
        });
        state.store(model);
        Ok(PassOutcome::changed(true)
            .stat("head.labels", labels as i64)
            .stat("head.hidden", plan.hidden as i64)
            .stat("head.params", (n + labels) as i64))
    }
}

impl AddHead {
    fn plan(&self, model: &Model) -> Result<Plan, PassError> {
        let graph = &model.graph;
        if graph.is_graph_output(OUTPUT) || graph.name_taken(OUTPUT) {
            return Err(fail(format!(
                "the model already has a `{OUTPUT}` value{}; it has a head already",
                if graph.is_graph_output(OUTPUT) { " (a graph output)" } else { "" }
            )));
        }
        for name in [WEIGHT, BIAS] {
            if graph.name_taken(name) {
                return Err(fail(format!("the model already has `{name}`; it has a classifier already")));
            }
        }
        let input = match &self.input {
            Some(v) => {
                if graph.producer(v).is_none() && !graph.is_graph_input(v) {
                    return Err(PassError::bad_option(
                        PASS,
                        "input",
                        format!("no value `{v}` in the graph (outputs: {})", describe_outputs(graph)),
                    ));
                }
                v.clone()
            }
            None => graph
                .outputs
                .iter()
                .find(|o| graph.value_type(&o.name).and_then(|t| t.dims()).is_some_and(|d| d.len() == 3))
                .map(|o| o.name.clone())
                .ok_or_else(|| {
                    fail(format!(
                        "no graph output of rank 3 (hidden states [batch, seq, hidden]) to put a head on; outputs: {}; \
                         name the hidden states with `input=`",
                        describe_outputs(graph)
                    ))
                })?,
        };
        let ty = graph.value_type(&input);
        let dims = ty.as_ref().and_then(|t| t.dims());
        if let Some(d) = &dims {
            if d.len() != 3 {
                return Err(fail(format!(
                    "`{input}` has rank {} ({}), but a head needs hidden states [batch, seq, hidden]",
                    d.len(),
                    ty.as_ref().map(ToString::to_string).unwrap_or_default()
                )));
            }
        }
        let dtype = ty.as_ref().and_then(|t| t.dtype()).unwrap_or(DataType::Float);
        if !dtype.is_float() {
            return Err(fail(format!("`{input}` is {dtype}; hidden states must be a float type")));
        }
        let hidden = match dims.as_ref().map(|d| &d[2]) {
            Some(Dim::Known(h)) if *h > 0 => *h as u64,
            _ => hidden_from_weights(graph, &input).ok_or_else(|| {
                fail(format!(
                    "cannot tell the hidden size of `{input}`: its type gives none and no weight that produces it \
                     (norm scale, MatMul/Gemm weight, bias) was found"
                ))
            })?,
        };
        let batch = match dims.as_ref().map(|d| &d[0]) {
            Some(d @ (Dim::Symbol(_) | Dim::Known(_))) => d.clone(),
            _ => Dim::Symbol("batch".to_string()),
        };
        let mask = (self.pooling == Pooling::Mean && graph.is_graph_input("attention_mask"))
            .then(|| "attention_mask".to_string());
        let opset = model.opset("").unwrap_or(1);
        if opset < 11 {
            return Err(fail(format!("the model imports opset {opset}; add-head writes opset 11 or later ops")));
        }
        Ok(Plan { input, dtype, hidden, batch, mask, opset })
    }
}

/// The pooled `[batch, hidden]` value.
fn pool(rw: &mut Rewriter<'_>, plan: &Plan, pooling: Pooling) -> Result<String, PassError> {
    let h = plan.input.as_str();
    // From opset 13 (Unsqueeze, ReduceSum) and 18 (ReduceMean) axes are an input.
    let axes_input =
        |rw: &mut Rewriter<'_>, since: i64, what: &str, axes: &[i64]| -> Result<Option<String>, PassError> {
            Ok(if plan.opset >= since { Some(rw.ints(what, axes)?) } else { None })
        };
    let reduce = |rw: &mut Rewriter<'_>, op: &str, since: i64, x: &str, what: &str| -> Result<String, PassError> {
        let keep = Attribute::int("keepdims", 0);
        Ok(match axes_input(rw, since, &format!("{what}_axes"), &[1])? {
            Some(axes) => rw.node(op, &[x, &axes], vec![keep], what)?,
            None => rw.node(op, &[x], vec![Attribute::ints("axes", vec![1]), keep], what)?,
        })
    };
    Ok(match (pooling, &plan.mask) {
        (Pooling::Cls, _) => {
            let idx = rw.initializer(&format!("{MODULE}/first"), Tensor::from_i64("", vec![], &[0])?)?;
            rw.node("Gather", &[h, &idx], vec![Attribute::int("axis", 1)], "cls")?
        }
        (Pooling::Mean, None) => reduce(rw, "ReduceMean", 18, h, "mean")?,
        (Pooling::Mean, Some(mask)) => {
            let cast = rw.node("Cast", &[mask], vec![Attribute::int("to", i64::from(plan.dtype.code()))], "mask")?;
            let m = match axes_input(rw, 13, "mask_axes", &[-1])? {
                Some(axes) => rw.node("Unsqueeze", &[&cast, &axes], vec![], "mask3")?,
                None => rw.node("Unsqueeze", &[&cast], vec![Attribute::ints("axes", vec![-1])], "mask3")?,
            };
            let masked = rw.node("Mul", &[h, &m], vec![], "masked")?;
            let sum = reduce(rw, "ReduceSum", 13, &masked, "sum")?;
            let count = reduce(rw, "ReduceSum", 13, &m, "count")?;
            let eps = float_tensor("", plan.dtype, vec![], &[1e-9]).map_err(fail)?;
            let eps = rw.initializer(&format!("{MODULE}/eps"), eps)?;
            let count = rw.node("Max", &[&count, &eps], vec![], "count_min")?;
            rw.node("Div", &[&sum, &count], vec![], "mean")?
        }
    })
}

/// The hidden size from the weight that makes `value`: a norm's scale, a MatMul/Gemm weight's
/// output dimension or a 1-D bias, looking back through elementwise ops (at most 16 nodes).
fn hidden_from_weights(graph: &Graph, value: &str) -> Option<u64> {
    let mut v = value.to_string();
    for _ in 0..16 {
        let (id, _) = graph.producer(&v)?;
        let node = graph.node(id);
        let init = |slot: usize| node.input(slot).and_then(|n| graph.initializer(n)).map(|t| t.dims().to_vec());
        let op = node.op();
        if op.is("LayerNormalization") || op.is("RMSNormalization") || op.is("SimplifiedLayerNormalization") {
            return init(1).filter(|d| d.len() == 1).map(|d| d[0]);
        }
        if op.is("MatMul") {
            return init(1).filter(|d| d.len() == 2).map(|d| d[1]);
        }
        if op.is("Gemm") {
            let d = init(1).filter(|d| d.len() == 2)?;
            return Some(if node.attr_int("transB", 0) != 0 { d[0] } else { d[1] });
        }
        if ["Add", "Mul", "Sub", "Div"].iter().any(|o| op.is(o)) {
            if let Some(d) = (0..2).filter_map(init).find(|d| d.len() == 1 && d[0] > 1) {
                return Some(d[0]);
            }
        } else if !["Relu", "Gelu", "Tanh", "Erf", "Sigmoid", "Dropout", "Identity", "Cast"].iter().any(|o| op.is(o)) {
            return None;
        }
        v = node.input(0)?.to_string();
    }
    None
}

fn describe_outputs(graph: &Graph) -> String {
    let list: Vec<String> = graph
        .outputs
        .iter()
        .map(|o| match graph.value_type(&o.name) {
            Some(t) => format!("`{}` {t}", o.name),
            None => format!("`{}`", o.name),
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn fail(reason: impl std::fmt::Display) -> PassError {
    PassError::failed(PASS, reason.to_string())
}
