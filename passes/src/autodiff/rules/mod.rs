//! Vector-Jacobian product rules, one family per file.
//!
//! A rule receives the gradients of a forward node's outputs (`None` where an output gets no
//! gradient) and emits nodes computing the gradients of the inputs the sweep asks for. Rules
//! use standard ONNX ops where they are as fast, and `ai.adaptc` gradient ops (the runtime's
//! `ops/grad/`) where fusing matters or ONNX has no op: broadcasting sums, softmax, layer norm,
//! GELU, data-movement scatters and softmax-cross-entropy.

mod attention;
mod elementwise;
mod layout;
mod linear;
mod loss;
mod norm;

use adaptc_ir::{Node, OpKey};

use super::emit::Emitter;
use crate::pass::PassError;

/// What a rule sees.
pub struct RuleCx<'a, 'g> {
    pub em: &'a mut Emitter<'g>,
    pub node: &'a Node,
    /// The opset version of the node's domain.
    pub opset: i64,
    /// Per input slot: whether its gradient is wanted.
    pub wanted: Vec<bool>,
}

impl RuleCx<'_, '_> {
    /// The input in `slot` (it exists whenever its gradient is wanted).
    pub fn input(&self, slot: usize) -> Result<String, PassError> {
        self.node.input(slot).map(str::to_string).ok_or_else(|| self.fail(&format!("input {slot} is missing")))
    }

    pub fn output(&self, slot: usize) -> Result<String, PassError> {
        self.node.output(slot).map(str::to_string).ok_or_else(|| self.fail(&format!("output {slot} is missing")))
    }

    pub fn wants(&self, slot: usize) -> bool {
        self.wanted.get(slot).copied().unwrap_or(false)
    }

    /// A name hint for nodes emitted for input `slot`.
    pub fn hint(&self, slot: usize) -> String {
        self.node.input(slot).unwrap_or("x").to_string()
    }

    /// The forward node's attributes of these names (those it has).
    pub fn attrs(&self, names: &[&str]) -> Vec<adaptc_ir::Attribute> {
        names.iter().filter_map(|n| self.node.attr(n).cloned()).collect()
    }

    pub fn fail(&self, reason: &str) -> PassError {
        PassError::failed(
            super::PASS,
            format!("cannot differentiate node `{}` ({}): {reason}", self.node.label(), self.node.op()),
        )
    }
}

/// Gradients of a node's inputs, by slot.
pub type Grads = Vec<Option<String>>;

/// A VJP rule: `dys` holds one entry per forward output.
pub type RuleFn = fn(&mut RuleCx, &[Option<String>]) -> Result<Grads, PassError>;

/// Which inputs of an op can carry a gradient.
#[derive(Clone, Copy, Debug)]
pub enum Slots {
    /// These input slots.
    Some(&'static [usize]),
    /// Every input (variadic ops such as Concat).
    All,
}

impl Slots {
    pub fn contains(self, slot: usize) -> bool {
        match self {
            Slots::Some(s) => s.contains(&slot),
            Slots::All => true,
        }
    }
}

/// A rule and the slots it differentiates.
#[derive(Clone, Copy)]
pub struct Rule {
    pub slots: Slots,
    pub vjp: RuleFn,
}

/// Ops whose outputs never carry a gradient (integer/boolean results, or piecewise constant).
pub const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "Range",
    "ConstantOfShape",
    "EyeLike",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "OneHot",
    "RandomNormalLike",
    "RandomUniformLike",
    "Bernoulli",
];

/// The rule of an op: default-domain ops, and the `ai.adaptc` forward ops that passes write
/// before autodiff runs (fused attention).
pub fn rule_of(op: &OpKey) -> Option<Rule> {
    if adaptc_ir::is_default_domain(&op.domain) {
        rule(&op.op_type)
    } else if op.domain == super::ADAPTC_DOMAIN {
        attention::rule(&op.op_type)
    } else {
        None
    }
}

/// The rule of a default-domain op.
pub fn rule(op: &str) -> Option<Rule> {
    elementwise::rule(op)
        .or_else(|| linear::rule(op))
        .or_else(|| layout::rule(op))
        .or_else(|| norm::rule(op))
        .or_else(|| loss::rule(op))
}

/// Every op with a rule (for docs and tests).
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = elementwise::OPS
        .iter()
        .chain(linear::OPS)
        .chain(layout::OPS)
        .chain(norm::OPS)
        .chain(loss::OPS)
        .chain(attention::OPS)
        .copied()
        .collect();
    v.sort_unstable();
    v
}

/// Shorthand for rule tables.
const fn r(slots: &'static [usize], vjp: RuleFn) -> Rule {
    Rule { slots: Slots::Some(slots), vjp }
}
