//! Lowering: a model's graph → an [`ExecPlan`], a topologically ordered list of instructions
//! over numbered buffers.
//!
//! Constants (initializers and `Constant` nodes) become preloaded buffers; every other node
//! must have a kernel in the registry, or lowering fails naming the node and op. Nothing here
//! depends on a backend, so the same plan runs on any [`crate::Backend`].

use std::collections::HashMap;

use adaptc_ir::{Model, Node, ValueInfo};

use crate::error::{Result, RuntimeError};
use crate::memory::MemoryPlan;
use crate::ops::{KernelFn, OpCtx};
use crate::registry::Registry;
use crate::tensor::Tensor;

/// Index of a buffer in a plan.
pub type BufId = usize;

/// One kernel call.
pub struct Instruction {
    pub node: Node,
    pub kernel: KernelFn,
    /// The imported opset version of the node's domain.
    pub opset: i64,
    pub inputs: Vec<Option<BufId>>,
    pub outputs: Vec<Option<BufId>>,
}

impl Instruction {
    /// The node label and op for messages.
    pub fn describe(&self) -> (String, String) {
        (self.node.label(), self.node.op().to_string())
    }
}

/// A graph input the caller feeds (or that falls back to its initializer).
pub struct PlanInput {
    pub info: ValueInfo,
    pub buf: BufId,
    /// The initializer that serves as the default when the caller gives no value.
    pub default: Option<Tensor>,
}

/// A lowered graph.
pub struct ExecPlan {
    pub instructions: Vec<Instruction>,
    pub num_buffers: usize,
    /// Buffers loaded once, before any instruction (initializers, Constant nodes).
    pub constants: Vec<(BufId, Tensor)>,
    pub inputs: Vec<PlanInput>,
    pub outputs: Vec<(String, BufId)>,
    pub memory: MemoryPlan,
}

/// Lowers `model`'s main graph with the kernels of `registry`, with the plan-time fusions of
/// [`crate::fuse`] when `fuse` is set.
pub fn lower(model: &Model, registry: &Registry, fuse: bool) -> Result<ExecPlan> {
    let graph = &model.graph;
    let mut bufs: HashMap<String, BufId> = HashMap::new();
    let mut next = 0usize;
    let mut new_buf = |name: &str, bufs: &mut HashMap<String, BufId>| -> BufId {
        let id = next;
        next += 1;
        bufs.insert(name.to_string(), id);
        id
    };
    let mut inputs = Vec::new();
    for v in &graph.inputs {
        if !v.ty.as_ref().is_some_and(|t| t.is_tensor()) {
            return Err(RuntimeError::Unsupported {
                node: format!("graph input `{}`", v.name),
                op: "input".into(),
                reason: "only tensor inputs are supported (not sequences, maps or optionals)".into(),
            });
        }
        let buf = new_buf(&v.name, &mut bufs);
        let default = graph.initializer(&v.name).map(Tensor::from_ir).transpose()?;
        inputs.push(PlanInput { info: v.clone(), buf, default });
    }
    let mut constants = Vec::new();
    for t in graph.initializers() {
        if bufs.contains_key(&t.name) {
            continue;
        }
        let buf = new_buf(&t.name, &mut bufs);
        constants.push((buf, Tensor::from_ir(t)?));
    }
    let fusions = crate::fuse::find(graph, fuse);
    let mut instructions = Vec::new();
    for id in graph.topo_order()? {
        if fusions.absorbed.contains(&id) {
            continue;
        }
        let (node, fused_kernel) = match fusions.replace.get(&id) {
            Some((n, k)) => (n, Some(*k)),
            None => (graph.node(id), None),
        };
        // A fused node keeps the opset of the node it stands in for (AddSoftmax: Softmax's).
        let domain = &graph.node(id).op().domain;
        let opset = model.opset(domain).unwrap_or(if adaptc_ir::is_default_domain(domain) { 21 } else { 1 });
        let unsupported = |reason: &str| RuntimeError::Unsupported {
            node: node.label(),
            op: node.op().to_string(),
            reason: reason.to_string(),
        };
        if node.has_subgraphs() {
            return Err(unsupported("control flow (subgraphs) is not supported yet"));
        }
        if node.op().is("Constant") {
            let ctx = OpCtx { node, opset };
            let value = crate::ops::misc::constant_value(&ctx).map_err(|e| e.at(&node.label(), "Constant"))?;
            let Some(out) = node.output(0) else { continue };
            let buf = new_buf(out, &mut bufs);
            constants.push((buf, value));
            continue;
        }
        let kernel = match (fused_kernel, registry.get(node.op())) {
            (Some(k), _) => k,
            (None, Some(def)) => def.kernel,
            (None, None) => return Err(unsupported("")),
        };
        let mut ins = Vec::with_capacity(node.inputs().len());
        for name in node.inputs() {
            if name.is_empty() {
                ins.push(None);
                continue;
            }
            match bufs.get(name) {
                Some(&b) => ins.push(Some(b)),
                None => {
                    return Err(RuntimeError::Lowering(format!(
                        "node `{}` ({}) reads `{name}`, which no input, initializer or node defines",
                        node.label(),
                        node.op()
                    )))
                }
            }
        }
        let outs = node
            .outputs()
            .iter()
            .map(|name| if name.is_empty() { None } else { Some(new_buf(name, &mut bufs)) })
            .collect();
        instructions.push(Instruction { node: node.clone(), kernel, opset, inputs: ins, outputs: outs });
    }
    let mut outputs = Vec::new();
    for o in &graph.outputs {
        match bufs.get(&o.name) {
            Some(&b) => outputs.push((o.name.clone(), b)),
            None => return Err(RuntimeError::Lowering(format!("graph output `{}` is not defined", o.name))),
        }
    }
    let pinned: Vec<BufId> = constants.iter().map(|(b, _)| *b).chain(outputs.iter().map(|(_, b)| *b)).collect();
    let instructions = hoist_shape_reads(instructions);
    let memory = MemoryPlan::new(&instructions, next, &pinned);
    Ok(ExecPlan { instructions, num_buffers: next, constants, inputs, outputs, memory })
}

/// Whether an instruction reads only its input's dims, never its data (`Shape`, `Size`).
fn reads_only_dims(ins: &Instruction) -> bool {
    let op = ins.node.op();
    adaptc_ir::is_default_domain(&op.domain) && matches!(op.op_type.as_str(), "Shape" | "Size")
}

/// Moves every `Shape`/`Size` instruction to right after the instruction that produces its
/// input (to the front for graph inputs and constants). Why: the backward of a training graph
/// reads the forward's activations through `Shape` to size its gradients, and a buffer lives
/// until its last reader, so those reads alone would keep every such activation alive from
/// the forward to the end of the backward (in a Llama LoRA step, the products' outputs: a
/// third of the peak). Read right away, only the small dims tensor lives on. The instruction
/// reads nothing else, so the order stays a topological one.
fn hoist_shape_reads(instructions: Vec<Instruction>) -> Vec<Instruction> {
    let mut producer: HashMap<BufId, usize> = HashMap::new();
    for (i, ins) in instructions.iter().enumerate() {
        for b in ins.outputs.iter().flatten() {
            producer.insert(*b, i);
        }
    }
    // For each instruction, the hoisted ones that follow it; `front` for the rest.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); instructions.len()];
    let mut front = Vec::new();
    let mut hoisted = vec![false; instructions.len()];
    for (i, ins) in instructions.iter().enumerate() {
        if !reads_only_dims(ins) {
            continue;
        }
        hoisted[i] = true;
        match ins.inputs.first().copied().flatten().and_then(|b| producer.get(&b)) {
            Some(&p) => after[p].push(i),
            None => front.push(i),
        }
    }
    fn emit(i: usize, after: &[Vec<usize>], order: &mut Vec<usize>) {
        order.push(i);
        for &h in &after[i] {
            emit(h, after, order);
        }
    }
    let mut order = Vec::with_capacity(instructions.len());
    for &h in &front {
        emit(h, &after, &mut order);
    }
    for (i, &h) in hoisted.iter().enumerate() {
        if !h {
            emit(i, &after, &mut order);
        }
    }
    let mut slots: Vec<Option<Instruction>> = instructions.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}
