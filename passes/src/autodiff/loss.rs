//! The losses a training graph ends in. Each is built from standard ONNX ops over the model's
//! output and new graph inputs, so the forward half of a training graph runs anywhere:
//!
//! - `cross-entropy`: `SoftmaxCrossEntropyLoss(logits [batch, classes], labels [batch])`, mean;
//! - `causal-lm`: next-token cross-entropy, `logits[:, :-1]` against `input_ids[:, 1:]`, with
//!   positions whose `attention_mask` is 0 ignored (label −100), mean over the rest — Hugging
//!   Face's `labels = input_ids` convention (built as every position's logits against the
//!   labels shifted left, the last one ignored: the same terms, without copying the logits);
//! - `mse`: `mean((output − targets)²)` over all elements.

use adaptc_ir::{Attribute, DataType, Dim, Graph, ValueInfo};

use super::emit::Emitter;
use super::PASS;
use crate::pass::PassError;

/// The label value that causal-LM padding gets (PyTorch's and Hugging Face's default).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    CrossEntropy,
    CausalLm,
    Mse,
}

impl LossKind {
    pub const NAMES: &'static [&'static str] = &["cross-entropy", "causal-lm", "mse"];

    pub fn parse(text: &str) -> Option<LossKind> {
        Some(match text {
            "cross-entropy" => LossKind::CrossEntropy,
            "causal-lm" => LossKind::CausalLm,
            "mse" => LossKind::Mse,
            _ => return None,
        })
    }
}

/// Appends the loss over `output` to the graph; returns the scalar loss value's name. New graph
/// inputs: `labels` (cross-entropy) or `targets` (mse).
pub fn append(em: &mut Emitter, kind: LossKind, output: &str) -> Result<String, PassError> {
    match kind {
        LossKind::CrossEntropy => {
            let labels = new_input(em.graph, "labels", DataType::Int64, vec![Dim::Symbol("batch".into())])?;
            em.op("SoftmaxCrossEntropyLoss", &[output, &labels], vec![Attribute::string("reduction", "mean")], "loss")
        }
        LossKind::CausalLm => causal_lm(em, output),
        LossKind::Mse => {
            let (dtype, dims) = declared(em.graph, output)?;
            let targets = new_input(em.graph, "targets", dtype, dims)?;
            let d = em.op("Sub", &[output, &targets], vec![], "diff")?;
            let sq = em.op("Mul", &[&d, &d], vec![], "squared")?;
            em.op("ReduceMean", &[&sq], vec![Attribute::int("keepdims", 0)], "loss")
        }
    }
}

fn causal_lm(em: &mut Emitter, logits: &str) -> Result<String, PassError> {
    let ids = "input_ids";
    if !em.graph.is_graph_input(ids) {
        return Err(PassError::bad_option(PASS, "loss", "causal-lm needs a graph input named `input_ids`"));
    }
    let (zero, one, minus_one, end) =
        (em.ints(&[0], "zero")?, em.ints(&[1], "one")?, em.ints(&[-1], "minus_one")?, em.ints(&[i64::MAX], "end")?);
    let seq_axis = em.ints(&[1], "seq_axis")?;
    let ignore = em.ints(&[IGNORE_INDEX], "ignore")?;
    // The prediction at position t scores token t + 1. The labels move, not the logits: position
    // t's label is input_ids[t + 1] and the last position's is ignored, so the loss reads the
    // logits where the model wrote them (a [B·S, V] view) and its gradient is already the
    // logits' (no slice of the largest activation forward, no scatter back in the backward).
    let mut labels = em.op("Slice", &[ids, &one, &end, &seq_axis], vec![], "next_tokens")?;
    if em.dtype(ids) != Some(DataType::Int64) {
        labels = em.op("Cast", &[&labels], vec![Attribute::int("to", DataType::Int64.code() as i64)], "next_tokens")?;
    }
    if em.graph.is_graph_input("attention_mask") {
        let mask = em.op("Slice", &["attention_mask", &one, &end, &seq_axis], vec![], "next_mask")?;
        let keep = em.op("Cast", &[&mask], vec![Attribute::int("to", DataType::Bool.code() as i64)], "keep")?;
        labels = em.op("Where", &[&keep, &labels, &ignore], vec![], "labels")?;
    }
    // The last position: −100 in a [B, 1] column.
    let first = em.op("Slice", &[ids, &zero, &one, &seq_axis], vec![], "first_tokens")?;
    let column = em.op("Shape", &[&first], vec![], "last_shape")?;
    let last = em.op("Expand", &[&ignore, &column], vec![], "last_labels")?;
    let labels = em.op("Concat", &[&labels, &last], vec![Attribute::int("axis", 1)], "shifted_labels")?;
    let labels = em.op("Reshape", &[&labels, &minus_one], vec![], "flat_labels")?;
    let scores = em.op("Flatten", &[logits], vec![Attribute::int("axis", 2)], "flat_logits")?;
    em.op(
        "SoftmaxCrossEntropyLoss",
        &[&scores, &labels],
        vec![Attribute::string("reduction", "mean"), Attribute::int("ignore_index", IGNORE_INDEX)],
        "loss",
    )
}

fn declared(graph: &Graph, value: &str) -> Result<(DataType, Vec<Dim>), PassError> {
    let ty = graph.value_type(value);
    let dtype = ty.as_ref().and_then(|t| t.dtype()).unwrap_or(DataType::Float);
    let dims = ty.and_then(|t| t.dims()).ok_or_else(|| {
        PassError::failed(PASS, format!("the shape of `{value}` is not declared, so mse cannot type its targets"))
    })?;
    Ok((dtype, dims))
}

/// Adds a graph input (refusing a name the graph already uses).
fn new_input(graph: &mut Graph, name: &str, dtype: DataType, dims: Vec<Dim>) -> Result<String, PassError> {
    if graph.name_taken(name) {
        return Err(PassError::failed(PASS, format!("the graph already has a value named `{name}`")));
    }
    graph.inputs.push(ValueInfo::tensor(name, dtype, dims));
    Ok(name.to_string())
}
