//! `insert-prompt`: soft prompt tuning (Lester et al., *The Power of Scale for
//! Parameter-Efficient Prompt Tuning*), done so that every shape computation of a
//! dynamo-exported graph stays consistent.
//!
//! PEFT runs a prompt-tuned model as `model(inputs_embeds = cat(P, embed(input_ids)),
//! attention_mask = cat(ones, mask), token_type_ids = cat(zeros, token_type_ids))`, with
//! position ids left to the model (`0 … p+T−1`). Exported graphs compute sequence lengths,
//! positions and attention masks from the shapes of their inputs, so the pass lengthens the
//! inputs *inside* the graph and lets all of that follow:
//!
//! 1. it finds the token-embedding lookup: a `Gather` (axis 0) of a 2-D float constant
//!    `[vocab, d]` whose indices are the graph input `input` (possibly through `Cast`);
//! 2. every reader of `input` now reads `Concat(zeros[B,p], input)` (axis 1), every reader of
//!    `mask` (when that graph input exists) reads `Concat(ones[B,p], mask)`, and every reader of
//!    each graph input named in `extend` that exists (token-aligned `[B, T]` inputs such as
//!    `token_type_ids`) reads `Concat(zeros[B,p], ·)`. `B` comes from `Shape(input)`; the pads
//!    are `ConstantOfShape(Concat(B, [p]))` in each input's own type. Graph inputs themselves
//!    are unchanged: callers still feed `[B, T]`;
//! 3. the lookup's result `E [B, p+T, d]` is replaced by
//!    `Concat(Expand(P, [B, p, d]), Slice(E, p:, axis 1))` (axis 1), so positions `0 … p−1`
//!    hold the prompt and positions, token types and the mask cover `p+T` tokens exactly as
//!    in PEFT. (The `p` padding ids are looked up and discarded.)
//! 4. graph outputs named in `slice` (e.g. a causal LM's `logits`) lose their first `p`
//!    positions along axis 1, so they line up with the caller's `T` tokens again.
//!
//! `P` is the trainable initializer `prompt_embeddings [p, d]` (PEFT's saved key for prompt
//! tuning) in the table's type: `init=random` draws U(−0.5, 0.5) (the paper's choice; PEFT's
//! `RANDOM` keeps `nn.Embedding`'s N(0, 1)), `init=vocab` copies rows of the embedding table for
//! token ids drawn (without repetition while possible) from the first min(5000, vocab) ids,
//! seeded by `seed`. Declared shapes downstream of the lengthened inputs are updated: in
//! `value_info` and non-sliced graph outputs, the input's sequence symbol `seq` becomes
//! `seq + p` (inside expressions `(seq + p)`). One [`AdapterRecord`] (method `prompt`, role
//! `prompt_embeddings`, `extra.mergeable` = false; `target_node` empty, the lookup in
//! `extra.embedding_node`).
//!
//! Preconditions: default-domain opset ≥ 13; `input` is a graph input of an integer type with
//! a dynamic sequence axis (rank 2, `[B, T]`); no subgraph reads the lengthened inputs;
//! `p + T` must fit the model's position table at run time (BERT-style absolute positions).
//! A graph that takes explicit position ids as an input is not adjusted (PEFT ignores
//! `position_ids` under prompt tuning too): leave them out of the export. `P` is fed to
//! `Expand` as `[p, d]` (broadcast to `[B, p, d]`), not unsqueezed, so no constant-only node
//! sits between the trainable initializer and the graph.
//! `tokens=0` changes nothing. A model that already has a soft prompt is refused.
//! Preserves: graph inputs; graph outputs (names, and types apart from the sequence axis).
//!
//! Example pipeline: `insert-prompt{tokens=20}` (BERT: also lengthens `attention_mask` and
//! `token_type_ids`), `insert-prompt{tokens=8 init=vocab slice=logits}` (a causal LM).
//! Statistics: `prompt.tokens`, `prompt.params`, `prompt.inputs_extended`,
//! `prompt.outputs_sliced`, `prompt.value_infos_updated`.

use std::collections::{BTreeMap, HashSet};

use adaptc_ir::{Attribute, DataType, Dim, Graph, Model, NodeId, Tensor, TypeInfo};

use super::bottleneck::{site_seed, SplitMix64};
use super::ia3::float_tensor;
use super::record::{AdapterRecord, AdapterState, Method};
use super::rewriter::Rewriter;
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::pattern::constant_tensor;
use crate::pattern::module_path::{node_name_scopes_path, path_from_initializer};
use crate::registry::PassInfo;

/// The pass name.
pub const PASS: &str = "insert-prompt";

/// The name of the prompt initializer (PEFT's saved key) and its role in the record.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// `init=vocab` draws from this many leading token ids (or the whole vocabulary if smaller).
pub const VOCAB_INIT_IDS: u64 = 5000;

/// How the prompt starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptInit {
    /// U(−0.5, 0.5).
    Random,
    /// Rows of the embedding table.
    Vocab,
}

/// The `insert-prompt` pass.
#[derive(Clone, Debug)]
pub struct InsertPrompt {
    pub tokens: usize,
    pub input: String,
    pub mask: String,
    /// Whether `mask` was given explicitly (then it must exist).
    mask_given: bool,
    pub extend: Vec<String>,
    pub init: PromptInit,
    pub seed: u64,
    pub slice: Vec<String>,
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: PASS,
        summary: "prepend p trainable soft-prompt embeddings after the token embedding, lengthening mask and token types in the graph",
        options: vec![
            OptionInfo::new("tokens", OptionKind::Int, Some("20"), "number of virtual tokens p (0: no change)"),
            OptionInfo::new("input", OptionKind::String, Some("input_ids"), "the token-id graph input"),
            OptionInfo::new("mask", OptionKind::String, Some("attention_mask"), "the attention-mask graph input, gets ones prepended (if present)"),
            OptionInfo::new("extend", OptionKind::List, Some("token_type_ids"), "other [B, T] graph inputs that get zeros prepended (those present)"),
            OptionInfo::new("init", OptionKind::Enum(&["random", "vocab"]), Some("random"), "random: U(-0.5, 0.5); vocab: rows of the embedding table"),
            OptionInfo::new("seed", OptionKind::Int, Some("0"), "seed of the initialisation"),
            OptionInfo::new("slice", OptionKind::List, Some(""), "graph outputs whose first p positions (axis 1) are dropped, e.g. logits"),
        ],
        example: "insert-prompt{tokens=20}",
        build,
    }
}

fn build(o: &Options) -> Result<Box<dyn Pass>, PassError> {
    let input = o.string("input")?;
    if input.is_empty() {
        return Err(PassError::bad_option(PASS, "input", "must name the token-id graph input"));
    }
    let mask = o.string("mask")?;
    let extend = o.list("extend")?;
    for e in &extend {
        if *e == input || *e == mask {
            return Err(PassError::bad_option(PASS, "extend", format!("`{e}` is already the `input` or `mask` input")));
        }
    }
    let init = if o.choice("init")? == "vocab" { PromptInit::Vocab } else { PromptInit::Random };
    Ok(Box::new(InsertPrompt {
        tokens: o.usize("tokens")?,
        input,
        mask_given: o.is_set("mask") && !mask.is_empty(),
        mask,
        extend,
        init,
        seed: o.usize("seed")? as u64,
        slice: o.list("slice")?,
    }))
}

/// The embedding lookup the prompt goes after.
struct Lookup {
    node: NodeId,
    /// The Gather's output `E`.
    output: String,
    table: String,
    vocab: u64,
    dim: u64,
    dtype: DataType,
}

/// A graph input to lengthen by `p` positions.
struct Lengthen {
    name: String,
    dtype: DataType,
    /// The pad value (0 or 1).
    fill: i64,
    /// Its readers, (node, slot), collected before the rewrite.
    uses: Vec<(NodeId, usize)>,
}

/// What the rewrite did, for the statistics.
struct Counts {
    params: u64,
    extended: usize,
    sliced: usize,
    infos: usize,
}

/// Everything the rewrite needs, established before anything changes.
struct Plan {
    lookup: Lookup,
    /// Inputs to lengthen.
    extended: Vec<Lengthen>,
    seq_symbol: Option<String>,
    prompt: Vec<f32>,
    init_ids: Option<Vec<u64>>,
}

impl Pass for InsertPrompt {
    fn name(&self) -> &'static str {
        PASS
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        if self.tokens == 0 {
            cx.note("tokens=0: no prompt inserted");
            return Ok(PassOutcome::unchanged().stat("prompt.tokens", 0));
        }
        let mut state = AdapterState::load(model)?;
        if let Some(r) = state.of(Method::Prompt).next() {
            let p = r.params.get(PROMPT_EMBEDDINGS).cloned().unwrap_or_default();
            return Err(PassError::failed(PASS, format!("the model already has a soft prompt (`{p}`)")));
        }
        let opset = model.opset("").unwrap_or(0);
        if opset < 13 {
            return Err(PassError::failed(
                PASS,
                format!(
                    "needs default-domain opset ≥ 13 (Slice/Unsqueeze with tensor inputs); the model imports {opset}"
                ),
            ));
        }
        let plan = self.plan(&model.graph)?;
        let (record, counts) = self.apply(&mut model.graph, plan, opset)?;
        state.trainable.insert(record.params[PROMPT_EMBEDDINGS].clone());
        state.adapters.push(record);
        state.store(model);
        Ok(PassOutcome::changed(true)
            .stat("prompt.tokens", self.tokens as i64)
            .stat("prompt.params", counts.params as i64)
            .stat("prompt.inputs_extended", counts.extended as i64)
            .stat("prompt.outputs_sliced", counts.sliced as i64)
            .stat("prompt.value_infos_updated", counts.infos as i64))
    }
}

fn fail(reason: impl Into<String>) -> PassError {
    PassError::failed(PASS, reason)
}

impl InsertPrompt {
    fn plan(&self, graph: &Graph) -> Result<Plan, PassError> {
        let p = self.tokens;
        let input_info = graph.inputs.iter().find(|v| v.name == self.input).ok_or_else(|| {
            let names: Vec<&str> = graph.inputs.iter().map(|v| v.name.as_str()).collect();
            fail(format!(
                "the graph has no input `{}` (option `input`); its inputs are: {}",
                self.input,
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ))
        })?;
        let input_type = input_info.ty.as_ref();
        let input_dtype = input_type.and_then(TypeInfo::dtype).unwrap_or(DataType::Int64);
        if !matches!(input_dtype, DataType::Int64 | DataType::Int32) {
            return Err(fail(format!("input `{}` is {input_dtype}, expected token ids (int64 or int32)", self.input)));
        }
        let seq_symbol = match input_type.and_then(TypeInfo::dims) {
            None => None,
            Some(dims) if dims.len() != 2 => {
                return Err(fail(format!(
                    "input `{}` has rank {}, expected [batch, sequence]",
                    self.input,
                    dims.len()
                )));
            }
            Some(dims) => match &dims[1] {
                Dim::Known(n) => {
                    return Err(fail(format!(
                        "input `{}` has a fixed sequence length {n}: the graph's shapes are specialised to it, so a \
                         prompt cannot lengthen it (export with a dynamic sequence axis)",
                        self.input
                    )));
                }
                Dim::Symbol(s) => Some(s.clone()),
                Dim::Unknown => None,
            },
        };
        let lookup = find_lookup(graph, &self.input)?;

        let mut extended = vec![Lengthen {
            name: self.input.clone(),
            dtype: input_dtype,
            fill: 0,
            uses: readers(graph, &self.input)?,
        }];
        if !self.mask.is_empty() {
            if graph.is_graph_input(&self.mask) {
                let dtype = token_aligned(graph, &self.mask, "mask")?;
                extended.push(Lengthen { name: self.mask.clone(), dtype, fill: 1, uses: readers(graph, &self.mask)? });
            } else if self.mask_given {
                return Err(fail(format!("the graph has no input `{}` (option `mask`)", self.mask)));
            }
        }
        for name in &self.extend {
            if graph.is_graph_input(name) {
                let dtype = token_aligned(graph, name, "extend")?;
                extended.push(Lengthen { name: name.clone(), dtype, fill: 0, uses: readers(graph, name)? });
            }
        }
        for out in &self.slice {
            if !graph.is_graph_output(out) {
                let names: Vec<&str> = graph.outputs.iter().map(|v| v.name.as_str()).collect();
                return Err(PassError::bad_option(
                    PASS,
                    "slice",
                    format!("`{out}` is not a graph output; the outputs are: {}", names.join(", ")),
                ));
            }
            if graph.producer(out).is_none() {
                return Err(PassError::bad_option(
                    PASS,
                    "slice",
                    format!("graph output `{out}` is not computed by a node"),
                ));
            }
        }

        let d = lookup.dim as usize;
        let (prompt, init_ids) = match self.init {
            PromptInit::Random => {
                let mut rng = SplitMix64::new(site_seed(self.seed, PROMPT_EMBEDDINGS));
                ((0..p * d).map(|_| (rng.uniform() - 0.5) as f32).collect(), None)
            }
            PromptInit::Vocab => {
                let n = lookup.vocab.min(VOCAB_INIT_IDS);
                if n == 0 {
                    return Err(fail(format!("init=vocab: the embedding table `{}` is empty", lookup.table)));
                }
                let mut rng = SplitMix64::new(site_seed(self.seed, PROMPT_EMBEDDINGS));
                let ids = draw_ids(&mut rng, n, p);
                let table =
                    constant_tensor(graph, &lookup.table).ok_or_else(|| fail("the embedding table vanished"))?;
                let rows = table_rows(table, d, &ids).map_err(|e| fail(format!("init=vocab: {e}")))?;
                (rows, Some(ids))
            }
        };
        Ok(Plan { lookup, extended, seq_symbol, prompt, init_ids })
    }

    fn apply(&self, graph: &mut Graph, plan: Plan, opset: i64) -> Result<(AdapterRecord, Counts), PassError> {
        let p = self.tokens as i64;
        let Plan { lookup, extended, seq_symbol, prompt, init_ids } = plan;
        let prompt = float_tensor("", lookup.dtype, vec![p as u64, lookup.dim], &prompt).map_err(fail)?;
        let embedding_module =
            node_name_scopes_path(graph, lookup.node).or_else(|| path_from_initializer(&lookup.table));
        let embedding_node = graph.node(lookup.node).label();

        let mut rw = Rewriter::new(graph, PASS, "prompt");
        let batch = if opset >= 15 {
            rw.node("Shape", &[&self.input], vec![Attribute::int("start", 0), Attribute::int("end", 1)], "batch")?
        } else {
            let shape = rw.node("Shape", &[&self.input], vec![], "input_shape")?;
            let (zero, one) = (rw.ints("batch_start", &[0])?, rw.ints("batch_end", &[1])?);
            rw.node("Slice", &[&shape, &zero, &one], vec![], "batch")?
        };
        let tokens = rw.ints("tokens", &[p])?;
        let pad_shape = rw.node("Concat", &[&batch, &tokens], vec![Attribute::int("axis", 0)], "pad_shape")?;
        let mut lengthened = Vec::new();
        let mut names = Vec::new();
        for Lengthen { name, dtype, fill, uses } in &extended {
            let value = fill_tensor(*dtype, *fill).map_err(|e| fail(format!("input `{name}`: {e}")))?;
            let pad = rw.node(
                "ConstantOfShape",
                &[&pad_shape],
                vec![Attribute::tensor("value", value)],
                &format!("{name}.pad"),
            )?;
            let long = rw.node("Concat", &[&pad, name], vec![Attribute::int("axis", 1)], name)?;
            for &(node, slot) in uses {
                rw.graph.set_input(node, slot, &long)?;
            }
            lengthened.push(long);
            names.push(name.clone());
        }

        let e_base = rw.detach(&lookup.output)?;
        let prompt_name = rw.initializer(PROMPT_EMBEDDINGS, prompt)?;
        let dims = rw.ints("prompt_dims", &[p, lookup.dim as i64])?;
        let shape = rw.node("Concat", &[&batch, &dims], vec![Attribute::int("axis", 0)], "prompt_shape")?;
        let expanded = rw.node("Expand", &[&prompt_name, &shape], vec![], "prompt")?;
        let starts = rw.ints("slice_starts", &[p])?;
        let ends = rw.ints("slice_ends", &[i64::MAX])?;
        let axes = rw.ints("slice_axes", &[1])?;
        let rest = rw.node("Slice", &[&e_base, &starts, &ends, &axes], vec![], "embeddings_rest")?;
        rw.node_into("Concat", &[&expanded, &rest], vec![Attribute::int("axis", 1)], "embeddings", &lookup.output)?;
        for out in &self.slice {
            let base = rw.detach(out)?;
            rw.node_into("Slice", &[&base, &starts, &ends, &axes], vec![], &format!("{out}.sliced"), out)?;
        }
        let nodes = rw.created;

        let infos = match &seq_symbol {
            Some(sym) => update_declared_shapes(graph, &lengthened, &self.slice, sym, p),
            None => 0,
        };

        let mut extra = BTreeMap::from([
            ("tokens".to_string(), serde_json::Value::from(self.tokens)),
            ("input".to_string(), serde_json::Value::from(self.input.clone())),
            ("extended".to_string(), serde_json::Value::from(names.clone())),
            ("sliced".to_string(), serde_json::Value::from(self.slice.clone())),
            (
                "init".to_string(),
                serde_json::Value::from(if self.init == PromptInit::Vocab { "vocab" } else { "random" }),
            ),
            ("seed".to_string(), serde_json::Value::from(self.seed)),
            ("embedding_node".to_string(), serde_json::Value::from(embedding_node)),
            ("embedding_table".to_string(), serde_json::Value::from(lookup.table.clone())),
            ("token_dim".to_string(), serde_json::Value::from(lookup.dim)),
            ("mergeable".to_string(), serde_json::Value::from(false)),
        ]);
        if let Some(m) = embedding_module {
            extra.insert("embedding_module".to_string(), serde_json::Value::from(m));
        }
        if let Some(ids) = init_ids {
            extra.insert("init_token_ids".to_string(), serde_json::Value::from(ids));
        }
        if let Some(sym) = seq_symbol {
            extra.insert("seq_symbol".to_string(), serde_json::Value::from(sym));
        }
        let record = AdapterRecord {
            method: Method::Prompt,
            module: String::new(),
            target_node: String::new(),
            base_weight: String::new(),
            layout: None,
            params: BTreeMap::from([(PROMPT_EMBEDDINGS.to_string(), prompt_name)]),
            nodes,
            output: lookup.output,
            base_output: e_base,
            rank: 0,
            alpha: 0.0,
            scale: 1.0,
            rslora: false,
            extra,
        };
        let counts = Counts { params: p as u64 * lookup.dim, extended: names.len(), sliced: self.slice.len(), infos };
        Ok((record, counts))
    }
}

/// The readers of a graph input, as (node, slot); a subgraph capture is refused.
fn readers(graph: &Graph, value: &str) -> Result<Vec<(NodeId, usize)>, PassError> {
    graph
        .uses(value)
        .iter()
        .map(|u| {
            u.slot.map(|s| (u.node, s)).ok_or_else(|| {
                fail(format!(
                    "input `{value}` is read inside a subgraph of `{}`, which is not supported",
                    graph.node(u.node).label()
                ))
            })
        })
        .collect()
}

/// The element type of a `[B, T]` graph input (int64 when undeclared); refuses other ranks.
fn token_aligned(graph: &Graph, name: &str, option: &str) -> Result<DataType, PassError> {
    let ty = graph.inputs.iter().find(|v| v.name == name).and_then(|v| v.ty.as_ref());
    if let Some(dims) = ty.and_then(TypeInfo::dims) {
        if dims.len() != 2 {
            return Err(PassError::bad_option(
                PASS,
                option,
                format!("input `{name}` has rank {}, expected [batch, sequence] to prepend to", dims.len()),
            ));
        }
    }
    Ok(ty.and_then(TypeInfo::dtype).unwrap_or(DataType::Int64))
}

/// Finds the token-embedding `Gather`.
fn find_lookup(graph: &Graph, input: &str) -> Result<Lookup, PassError> {
    let mut found = Vec::new();
    for (id, node) in graph.nodes() {
        if !node.op().is("Gather") || !matches!(node.attr_int("axis", 0), 0 | -2) {
            continue;
        }
        let (Some(data), Some(indices), Some(out)) = (node.input(0), node.input(1), node.output(0)) else {
            continue;
        };
        let Some(table) = constant_tensor(graph, data) else {
            continue;
        };
        let [vocab, dim] = *table.dims() else {
            continue;
        };
        if !table.dtype().is_float() {
            continue;
        }
        match derives_from(graph, indices, input) {
            Derivation::No => {}
            Derivation::ThroughUnsqueeze => {
                return Err(fail(format!(
                    "the embedding lookup `{}` reads `{input}` through Unsqueeze: the embeddings are not [batch, \
                     sequence, d], which prompt tuning needs",
                    node.label()
                )));
            }
            Derivation::Yes => found.push(Lookup {
                node: id,
                output: out.to_string(),
                table: data.to_string(),
                vocab,
                dim,
                dtype: table.dtype(),
            }),
        }
    }
    match found.len() {
        0 => Err(fail(format!(
            "no token-embedding lookup found: expected a Gather (axis 0) of a 2-D float constant [vocab, d] indexed by \
             `{input}` (directly or through Cast)"
        ))),
        1 => Ok(found.remove(0)),
        _ => {
            let names: Vec<String> = found.iter().map(|l| format!("`{}`", graph.node(l.node).label())).collect();
            Err(fail(format!(
                "several embedding lookups read `{input}` ({}); which one takes the prompt is ambiguous",
                names.join(", ")
            )))
        }
    }
}

enum Derivation {
    No,
    Yes,
    ThroughUnsqueeze,
}

/// Whether `value` is `input`, or computed from it through `Cast` and `Unsqueeze` only.
fn derives_from(graph: &Graph, value: &str, input: &str) -> Derivation {
    let mut v = value.to_string();
    let mut unsqueezed = false;
    for _ in 0..16 {
        if v == input {
            return if unsqueezed { Derivation::ThroughUnsqueeze } else { Derivation::Yes };
        }
        let Some((p, 0)) = graph.producer(&v) else {
            return Derivation::No;
        };
        let node = graph.node(p);
        if node.op().is("Unsqueeze") {
            unsqueezed = true;
        } else if !node.op().is("Cast") {
            return Derivation::No;
        }
        match node.input(0) {
            Some(i) => v = i.to_string(),
            None => return Derivation::No,
        }
    }
    Derivation::No
}

/// `count` ids in `[0, n)`: distinct (a partial Fisher–Yates shuffle) while `count ≤ n`, with
/// repetition beyond.
fn draw_ids(rng: &mut SplitMix64, n: u64, count: usize) -> Vec<u64> {
    if count as u64 > n {
        return (0..count).map(|_| rng.below(n)).collect();
    }
    // Sparse Fisher–Yates: only the swapped positions are stored.
    let mut swapped: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let j = i + rng.below(n - i);
        let vj = *swapped.get(&j).unwrap_or(&j);
        let vi = *swapped.get(&i).unwrap_or(&i);
        swapped.insert(j, vi);
        out.push(vj);
    }
    out
}

/// Rows `ids` of a `[vocab, d]` float table, as f32 (only those rows' bytes are decoded).
fn table_rows(table: &Tensor, d: usize, ids: &[u64]) -> Result<Vec<f32>, String> {
    let bytes = table.bytes().map_err(|e| e.to_string())?;
    let width = match table.dtype() {
        DataType::Float => 4,
        DataType::Float16 | DataType::BFloat16 => 2,
        DataType::Double => 8,
        other => return Err(format!("table `{}` is {other}", table.name)),
    };
    let mut out = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        let start = id as usize * d * width;
        let row =
            bytes.get(start..start + d * width).ok_or_else(|| format!("row {id} is outside table `{}`", table.name))?;
        for c in row.chunks_exact(width) {
            out.push(match table.dtype() {
                DataType::Float => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DataType::Float16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                DataType::BFloat16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                _ => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            });
        }
    }
    Ok(out)
}

/// A one-element tensor of `dtype` holding `value` (0 or 1), for `ConstantOfShape`.
fn fill_tensor(dtype: DataType, value: i64) -> Result<Tensor, String> {
    let bytes = match dtype {
        DataType::Int64 => value.to_le_bytes().to_vec(),
        DataType::Int32 => (value as i32).to_le_bytes().to_vec(),
        DataType::Bool | DataType::Uint8 => vec![value as u8],
        DataType::Int8 => vec![value as u8],
        d if d.is_float() => return float_tensor("", d, vec![1], &[value as f32]),
        other => return Err(format!("a {other} input cannot be padded")),
    };
    Tensor::from_bytes("", dtype, vec![1], bytes).map_err(|e| e.to_string())
}

/// Rewrites the sequence symbol `sym` to `sym + p` in the declared shapes (`value_info`, graph
/// outputs other than `sliced`) of every value computed from `seeds`; returns how many
/// declarations changed.
fn update_declared_shapes(graph: &mut Graph, seeds: &[String], sliced: &[String], sym: &str, p: i64) -> usize {
    let mut reach: HashSet<String> = seeds.iter().cloned().collect();
    let mut stack: Vec<String> = seeds.to_vec();
    while let Some(v) = stack.pop() {
        let users: Vec<NodeId> = graph.uses(&v).iter().map(|u| u.node).collect();
        for n in users {
            for o in graph.node(n).outputs() {
                if !o.is_empty() && reach.insert(o.clone()) {
                    stack.push(o.clone());
                }
            }
        }
    }
    let mut changed = 0;
    let rewrite = |info: &mut adaptc_ir::ValueInfo| -> bool {
        let Some(ty) = &info.ty else { return false };
        let (Some(dtype), Some(dims)) = (ty.dtype(), ty.dims()) else {
            return false;
        };
        let mut any = false;
        let dims: Vec<Dim> = dims
            .into_iter()
            .map(|d| match &d {
                Dim::Symbol(s) => match substitute(s, sym, p) {
                    Some(new) => {
                        any = true;
                        Dim::Symbol(new)
                    }
                    None => d,
                },
                _ => d,
            })
            .collect();
        if any {
            info.ty = Some(TypeInfo::tensor(dtype, Some(dims)));
        }
        any
    };
    for info in graph.value_info.iter_mut().filter(|v| reach.contains(&v.name)) {
        changed += usize::from(rewrite(info));
    }
    for info in graph.outputs.iter_mut().filter(|v| reach.contains(&v.name) && !sliced.contains(&v.name)) {
        changed += usize::from(rewrite(info));
    }
    changed
}

/// `text` with the symbol `sym` (as a whole word) replaced by `sym + p`; `None` when it does
/// not occur. `seq` → `seq + 20`; `Min(128, seq)` → `Min(128, (seq + 20))`.
fn substitute(text: &str, sym: &str, p: i64) -> Option<String> {
    if text == sym {
        return Some(format!("{sym} + {p}"));
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut found = false;
    let mut rest = text;
    let mut prev: Option<char> = None;
    while !rest.is_empty() {
        if rest.starts_with(sym)
            && !prev.is_some_and(is_word)
            && !rest[sym.len()..].chars().next().is_some_and(is_word)
            && !sym.is_empty()
        {
            out += &format!("({sym} + {p})");
            prev = sym.chars().last();
            rest = &rest[sym.len()..];
            found = true;
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_substituted_as_whole_words() {
        assert_eq!(substitute("seq", "seq", 20).as_deref(), Some("seq + 20"));
        assert_eq!(substitute("Min(128, seq)", "seq", 4).as_deref(), Some("Min(128, (seq + 4))"));
        assert_eq!(substitute("seq*seq", "seq", 1).as_deref(), Some("(seq + 1)*(seq + 1)"));
        assert_eq!(substitute("seqlen", "seq", 4), None);
        assert_eq!(substitute("my_seq", "seq", 4), None);
        assert_eq!(substitute("batch", "seq", 4), None);
    }

    #[test]
    fn ids_are_distinct_while_possible() {
        let mut rng = SplitMix64::new(3);
        let ids = draw_ids(&mut rng, 10, 10);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let ids = draw_ids(&mut rng, 3, 7);
        assert_eq!(ids.len(), 7);
        assert!(ids.iter().all(|&i| i < 3));
        assert_eq!(draw_ids(&mut SplitMix64::new(9), 5000, 4), draw_ids(&mut SplitMix64::new(9), 5000, 4));
    }
}
