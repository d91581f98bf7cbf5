//! `cse`: common-subexpression elimination.
//!
//! First merges identical constant initializers: same dtype, shape and bytes, at most
//! `max-bytes` bytes, not a graph input (its value may be overridden) nor a graph output, not
//! lazily computed. Uses of a duplicate move to the first one in file order and the duplicate
//! is removed. Then merges nodes that compute the same thing: same operator and overload,
//! same inputs, the same output slots present, and structurally equal attributes (compared by
//! value, order-insensitive; floats by bit pattern). The graph is swept in topological order
//! until nothing merges, so merges cascade.
//!
//! Never merged: nodes holding subgraphs; nodes outside the default ONNX domain (their
//! semantics are unknown, they may be stateful or random); random operators (`RandomNormal`,
//! `RandomUniform`, their `*Like` forms, `Multinomial`, `Bernoulli`, `Dropout`); nodes with
//! attribute kinds that have no cheap structural comparison (sparse tensors, types, references
//! to function attributes) or tensor attributes over `max-bytes`. Subgraphs are not searched.
//!
//! The survivor is the earlier node, unless only the later one produces a graph output: then
//! the later node survives (the graph is re-sorted). A node producing a graph output is never
//! removed; when both do, neither is.
//!
//! Caution: merging initializers ties weights that happen to be equal (two freshly
//! initialized LayerNorm scales are both all-ones). For a graph that will be trained, or whose
//! parameters are found by name, run `cse{initializers=false}`.
//!
//! Preconditions: the graph verifies. Preserves: graph inputs and outputs and what they
//! compute. Example pipeline: `fold-constants,cse,dce`. Statistics: `cse.nodes_merged`,
//! `cse.initializers_merged`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use adaptc_ir::{is_default_domain, AttrValue, DataType, Graph, IrError, Model, NodeId, OpKey, Tensor, TensorData};

use crate::canonicalize::{drop_value_info, is_constant};
use crate::options::{OptionInfo, OptionKind, Options};
use crate::pass::{Pass, PassContext, PassError, PassOutcome};
use crate::registry::PassInfo;

/// Default size limit for merged initializers and compared tensor attributes.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// Operators whose results differ from call to call.
const NONDETERMINISTIC: &[&str] =
    &["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"];

/// The `cse` pass.
#[derive(Clone, Copy, Debug)]
pub struct Cse {
    /// Merge identical initializers (not only nodes).
    pub initializers: bool,
    /// Largest initializer or tensor attribute compared, in bytes.
    pub max_bytes: u64,
}

impl Default for Cse {
    fn default() -> Cse {
        Cse { initializers: true, max_bytes: DEFAULT_MAX_BYTES }
    }
}

pub(crate) fn info() -> PassInfo {
    PassInfo {
        name: "cse",
        summary: "merge duplicate nodes and identical constant initializers",
        options: vec![
            OptionInfo::new(
                "initializers",
                OptionKind::Bool,
                Some("true"),
                "also merge identical constant initializers (ties equal weights: turn off before training)",
            ),
            OptionInfo::new(
                "max-bytes",
                OptionKind::Int,
                Some("1048576"),
                "largest initializer or tensor attribute compared, in bytes",
            ),
        ],
        example: "fold-constants,cse{initializers=false},dce",
        build: |o: &Options| {
            Ok(Box::new(Cse { initializers: o.bool("initializers")?, max_bytes: o.usize("max-bytes")? as u64 }))
        },
    }
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<PassOutcome, PassError> {
        let graph = &mut model.graph;
        let mut gone = HashSet::new();
        let inits = if self.initializers { merge_initializers(graph, self.max_bytes, &mut gone)? } else { 0 };
        let nodes = merge_nodes(graph, self.max_bytes, &mut gone)?;
        drop_value_info(graph, &gone);
        Ok(PassOutcome::changed(inits + nodes > 0)
            .stat("cse.nodes_merged", nodes)
            .stat("cse.initializers_merged", inits))
    }
}

fn merge_initializers(graph: &mut Graph, max_bytes: u64, gone: &mut HashSet<String>) -> Result<i64, IrError> {
    let candidates: Vec<String> = graph
        .initializers()
        .filter(|t| {
            is_constant(graph, &t.name)
                && !graph.is_graph_output(&t.name)
                && t.byte_len() <= max_bytes
                && !matches!(t.data(), TensorData::Lazy(_))
        })
        .map(|t| t.name.clone())
        .collect();
    let mut groups: HashMap<(DataType, Vec<u64>, u64), Vec<String>> = HashMap::new();
    let mut merged = 0;
    for name in candidates {
        let Some(tensor) = graph.initializer(&name) else {
            continue;
        };
        let Some(hash) = content_hash(tensor) else {
            continue;
        };
        let group = groups.entry((tensor.dtype(), tensor.dims().to_vec(), hash)).or_default();
        let survivor = group.iter().find(|s| graph.initializer(s).is_some_and(|t| t.same_value(tensor))).cloned();
        match survivor {
            Some(survivor) => {
                graph.replace_all_uses_with(&name, &survivor)?;
                graph.remove_initializer(&name)?;
                gone.insert(name);
                merged += 1;
            }
            None => group.push(name),
        }
    }
    Ok(merged)
}

fn content_hash(t: &Tensor) -> Option<u64> {
    let mut h = DefaultHasher::new();
    match t.strings() {
        Some(s) => s.hash(&mut h),
        None => t.bytes().ok()?.hash(&mut h),
    }
    Some(h.finish())
}

/// What makes two nodes interchangeable.
#[derive(Clone, PartialEq, Eq, Hash)]
struct NodeKey {
    op: OpKey,
    overload: String,
    inputs: Vec<String>,
    /// Which output slots are present.
    outputs: Vec<bool>,
    /// Attributes, sorted by name and encoded (see [`encode_attrs`]).
    attrs: Vec<u8>,
}

fn node_key(graph: &Graph, id: NodeId, max_bytes: u64) -> Option<NodeKey> {
    let node = graph.node(id);
    let op = node.op();
    if !is_default_domain(&op.domain) || NONDETERMINISTIC.contains(&op.op_type.as_str()) || node.has_subgraphs() {
        return None;
    }
    if node.outputs().iter().all(String::is_empty) {
        return None;
    }
    Some(NodeKey {
        op: op.clone(),
        overload: node.overload.clone(),
        inputs: node.inputs().to_vec(),
        outputs: node.outputs().iter().map(|o| !o.is_empty()).collect(),
        attrs: encode_attrs(node.attrs(), max_bytes)?,
    })
}

/// An unambiguous byte encoding of a node's attributes (sorted by name), or `None` when one
/// of them cannot be compared structurally.
fn encode_attrs(attrs: &[adaptc_ir::Attribute], max_bytes: u64) -> Option<Vec<u8>> {
    let mut sorted: Vec<_> = attrs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for a in sorted {
        if !a.ref_attr_name.is_empty() {
            return None;
        }
        put_bytes(&mut out, a.name.as_bytes());
        match &a.value {
            AttrValue::Float(f) => {
                out.push(1);
                out.extend(f.to_bits().to_le_bytes());
            }
            AttrValue::Int(i) => {
                out.push(2);
                out.extend(i.to_le_bytes());
            }
            AttrValue::String(s) => {
                out.push(3);
                put_bytes(&mut out, s);
            }
            AttrValue::Tensor(t) => {
                out.push(4);
                put_tensor(&mut out, t, max_bytes)?;
            }
            AttrValue::Floats(v) => {
                out.push(5);
                out.extend((v.len() as u64).to_le_bytes());
                for f in v {
                    out.extend(f.to_bits().to_le_bytes());
                }
            }
            AttrValue::Ints(v) => {
                out.push(6);
                out.extend((v.len() as u64).to_le_bytes());
                for i in v {
                    out.extend(i.to_le_bytes());
                }
            }
            AttrValue::Strings(v) => {
                out.push(7);
                out.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_bytes(&mut out, s);
                }
            }
            AttrValue::Tensors(ts) => {
                out.push(8);
                out.extend((ts.len() as u64).to_le_bytes());
                for t in ts {
                    put_tensor(&mut out, t, max_bytes)?;
                }
            }
            AttrValue::Graph(_)
            | AttrValue::Graphs(_)
            | AttrValue::SparseTensor(_)
            | AttrValue::SparseTensors(_)
            | AttrValue::Type(_)
            | AttrValue::Types(_)
            | AttrValue::Undefined => return None,
        }
    }
    Some(out)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u64).to_le_bytes());
    out.extend(bytes);
}

fn put_tensor(out: &mut Vec<u8>, t: &Tensor, max_bytes: u64) -> Option<()> {
    if t.byte_len() > max_bytes || matches!(t.data(), TensorData::Lazy(_)) {
        return None;
    }
    out.extend(t.dtype().code().to_le_bytes());
    out.extend((t.dims().len() as u64).to_le_bytes());
    for d in t.dims() {
        out.extend(d.to_le_bytes());
    }
    match t.strings() {
        Some(strings) => {
            out.push(1);
            out.extend((strings.len() as u64).to_le_bytes());
            for s in strings {
                put_bytes(out, s);
            }
        }
        None => {
            out.push(0);
            put_bytes(out, &t.bytes().ok()?);
        }
    }
    Some(())
}

fn produces_graph_output(graph: &Graph, id: NodeId) -> bool {
    graph.node(id).outputs().iter().any(|o| !o.is_empty() && graph.is_graph_output(o))
}

fn merge_nodes(graph: &mut Graph, max_bytes: u64, gone: &mut HashSet<String>) -> Result<i64, IrError> {
    let mut merged = 0;
    loop {
        let mut seen: HashMap<NodeKey, NodeId> = HashMap::new();
        let mut progress = false;
        for id in graph.topo_order()? {
            if !graph.contains_node(id) {
                continue;
            }
            let Some(key) = node_key(graph, id, max_bytes) else {
                continue;
            };
            let Some(&first) = seen.get(&key) else {
                seen.insert(key, id);
                continue;
            };
            let (keep, drop) = if !produces_graph_output(graph, id) {
                (first, id)
            } else if !produces_graph_output(graph, first) {
                (id, first)
            } else {
                continue;
            };
            let pairs: Vec<(String, String)> = graph
                .node(drop)
                .outputs()
                .iter()
                .zip(graph.node(keep).outputs())
                .filter(|(d, _)| !d.is_empty())
                .map(|(d, k)| (d.clone(), k.clone()))
                .collect();
            for (d, k) in &pairs {
                graph.replace_all_uses_with(d, k)?;
            }
            graph.remove_node(drop)?;
            gone.extend(pairs.into_iter().map(|(d, _)| d));
            seen.insert(key, keep);
            merged += 1;
            progress = true;
        }
        if !progress {
            break;
        }
    }
    if !graph.is_ordered() {
        graph.sort()?;
    }
    Ok(merged)
}
