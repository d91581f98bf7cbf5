//! The program an `ElementwiseChain` node carries: steps over numbered registers, encoded in
//! the node's attributes so that the node alone says what it computes.
//!
//! Registers `0..inputs` hold the node's inputs; register `inputs + k` holds step `k`'s result.
//! Attributes:
//! - `codes`: one [`Op`] code per step;
//! - `args`: two registers per step (the second −1 for a one-operand step), each lower than
//!   the step's own register;
//! - `values`: the registers of the value outputs (the first is the chain's last step, whose
//!   shape is the whole chain's);
//! - `shapes`: registers whose shapes are the trailing int64 outputs (the `Shape` reads of
//!   values the plan no longer writes);
//! - `names`: each step's original node, for messages.

use adaptc_ir::{AttrValue, Attribute, DataType, Node};

use crate::error::{kbail, KResult};
use crate::ops::util::broadcast_shapes;

/// An elementwise op a chain can hold: f32 arithmetic and math, and casts between f32 and bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Neg,
    Abs,
    Relu,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Sigmoid,
    Tanh,
    Erf,
    /// `Cast` to f32.
    ToF32,
    /// `Cast` to bf16.
    ToBf16,
    /// `ai.adaptc::SumToShape(dy, dims)`, which the backward puts after every broadcasting op
    /// and which is a plain copy when nothing was broadcast: a chain carries it so that the
    /// gradient chains are not cut, and runs fused only when every such step is a copy.
    SumToShape,
}

impl Op {
    /// Every op, in code order (an op's code is its index here).
    pub const ALL: [Op; 18] = [
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Pow,
        Op::Neg,
        Op::Abs,
        Op::Relu,
        Op::Exp,
        Op::Log,
        Op::Sqrt,
        Op::Reciprocal,
        Op::Sigmoid,
        Op::Tanh,
        Op::Erf,
        Op::ToF32,
        Op::ToBf16,
        Op::SumToShape,
    ];

    /// The op of a node with one output, when a chain can hold it.
    pub fn of(node: &Node) -> Option<Op> {
        let key = node.op();
        if node.outputs().len() != 1 || node.output(0)?.is_empty() {
            return None;
        }
        let sum = key.domain == crate::registry::ADAPTC_DOMAIN && key.op_type == "SumToShape";
        if !adaptc_ir::is_default_domain(&key.domain) && !sum {
            return None;
        }
        let op = match key.op_type.as_str() {
            "SumToShape" if sum => Op::SumToShape,
            "Add" => Op::Add,
            "Sub" => Op::Sub,
            "Mul" => Op::Mul,
            "Div" => Op::Div,
            "Pow" => Op::Pow,
            "Neg" => Op::Neg,
            "Abs" => Op::Abs,
            "Relu" => Op::Relu,
            "Exp" => Op::Exp,
            "Log" => Op::Log,
            "Sqrt" => Op::Sqrt,
            "Reciprocal" => Op::Reciprocal,
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            "Erf" => Op::Erf,
            "Cast" => match i32::try_from(node.attr_int("to", 0)).ok().and_then(DataType::from_code)? {
                DataType::Float => Op::ToF32,
                DataType::BFloat16 => Op::ToBf16,
                _ => return None,
            },
            _ => return None,
        };
        let complete = node.inputs().len() == op.arity() && node.inputs().iter().all(|i| !i.is_empty());
        complete.then_some(op)
    }

    pub fn arity(self) -> usize {
        match self {
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Pow | Op::SumToShape => 2,
            _ => 1,
        }
    }

    pub fn code(self) -> i64 {
        Op::ALL.iter().position(|&o| o == self).unwrap_or(0) as i64
    }

    pub fn from_code(code: i64) -> Option<Op> {
        usize::try_from(code).ok().and_then(|c| Op::ALL.get(c).copied())
    }

    /// The ONNX op this step stands for (for messages).
    pub fn onnx(self) -> &'static str {
        match self {
            Op::ToF32 | Op::ToBf16 => "Cast",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::Pow => "Pow",
            Op::Neg => "Neg",
            Op::Abs => "Abs",
            Op::Relu => "Relu",
            Op::Exp => "Exp",
            Op::Log => "Log",
            Op::Sqrt => "Sqrt",
            Op::Reciprocal => "Reciprocal",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Erf => "Erf",
            Op::SumToShape => "SumToShape",
        }
    }

    /// The op's node, with the attributes its kernel reads (Cast's `to`).
    pub fn node(self, inputs: Vec<String>, output: String) -> Node {
        let domain = if self == Op::SumToShape { crate::registry::ADAPTC_DOMAIN } else { "" };
        let node = Node::new(adaptc_ir::OpKey::new(domain, self.onnx()), inputs, vec![output]);
        match self {
            Op::ToF32 => node.with_attr(Attribute::int("to", DataType::Float.code() as i64)),
            Op::ToBf16 => node.with_attr(Attribute::int("to", DataType::BFloat16.code() as i64)),
            _ => node,
        }
    }
}

/// One step: `op` over registers `a` (and `b` for two-operand ops).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub op: Op,
    pub a: usize,
    pub b: Option<usize>,
    /// The node the step was (for messages).
    pub name: String,
}

impl Step {
    pub fn operands(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.a).chain(self.b)
    }
}

/// A decoded `ElementwiseChain` program.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub inputs: usize,
    pub steps: Vec<Step>,
    /// Registers of the value outputs; the first is the last step.
    pub values: Vec<usize>,
    /// Registers whose shapes are the trailing outputs.
    pub shapes: Vec<usize>,
}

impl Program {
    pub fn registers(&self) -> usize {
        self.inputs + self.steps.len()
    }

    /// The attributes that encode the program.
    pub fn to_attrs(&self) -> Vec<Attribute> {
        let regs = |v: &[usize]| v.iter().map(|&r| r as i64).collect::<Vec<_>>();
        let args = self.steps.iter().flat_map(|s| [s.a as i64, s.b.map_or(-1, |b| b as i64)]).collect();
        vec![
            Attribute::ints("codes", self.steps.iter().map(|s| s.op.code()).collect()),
            Attribute::ints("args", args),
            Attribute::ints("values", regs(&self.values)),
            Attribute::ints("shapes", regs(&self.shapes)),
            Attribute::new(
                "names",
                AttrValue::Strings(self.steps.iter().map(|s| s.name.clone().into_bytes()).collect()),
            ),
        ]
    }

    /// Decodes and checks the program of `node`: every register a step reads is an input or an
    /// earlier step, and the outputs match the node's.
    pub fn from_node(node: &Node) -> KResult<Program> {
        let ints = |name: &str| node.attr(name).and_then(|a| a.as_ints()).map(<[i64]>::to_vec).unwrap_or_default();
        let (codes, args, values, shapes) = (ints("codes"), ints("args"), ints("values"), ints("shapes"));
        let names: Vec<String> = match node.attr("names").map(|a| &a.value) {
            Some(AttrValue::Strings(v)) => v.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect(),
            _ => Vec::new(),
        };
        let inputs = node.inputs().len();
        if args.len() != 2 * codes.len() {
            kbail!("the program has {} steps but {} step operands (two per step)", codes.len(), args.len());
        }
        let mut steps = Vec::with_capacity(codes.len());
        for (k, &code) in codes.iter().enumerate() {
            let Some(op) = Op::from_code(code) else { kbail!("step {k} has an unknown op code {code}") };
            let own = inputs + k;
            let reg = |r: i64| -> KResult<usize> {
                match usize::try_from(r) {
                    Ok(r) if r < own => Ok(r),
                    _ => {
                        kbail!("step {k} ({}) reads register {r}, which is not an input or an earlier step", op.onnx())
                    }
                }
            };
            let a = reg(args[2 * k])?;
            let b = if op.arity() == 2 { Some(reg(args[2 * k + 1])?) } else { None };
            let name = names.get(k).cloned().unwrap_or_else(|| format!("step {k}"));
            steps.push(Step { op, a, b, name });
        }
        let total = inputs + steps.len();
        let regs = |v: &[i64], what: &str| -> KResult<Vec<usize>> {
            v.iter()
                .map(|&r| match usize::try_from(r) {
                    Ok(r) if r < total => Ok(r),
                    _ => kbail!("{what} output register {r} is out of range ({total} registers)"),
                })
                .collect()
        };
        let program = Program { inputs, values: regs(&values, "value")?, shapes: regs(&shapes, "shape")?, steps };
        if program.values.first() != Some(&(total.max(1) - 1)) || program.steps.is_empty() {
            kbail!("the first value output must be the last step's");
        }
        if node.outputs().len() != program.values.len() + program.shapes.len() {
            kbail!(
                "the node has {} outputs but its program makes {} values and {} shapes",
                node.outputs().len(),
                program.values.len(),
                program.shapes.len()
            );
        }
        Ok(program)
    }

    /// Every register's shape, from the inputs' shapes by broadcasting; a `SumToShape` step's
    /// is the value of its dims input, which `dims` gives (`None`: not a list of dims).
    pub fn shapes_of(
        &self,
        inputs: &[&[usize]],
        dims: impl Fn(usize) -> Option<Vec<usize>>,
    ) -> KResult<Vec<Vec<usize>>> {
        let mut shapes: Vec<Vec<usize>> = inputs.iter().map(|s| s.to_vec()).collect();
        for s in &self.steps {
            let shape = match (s.op, s.b) {
                (Op::SumToShape, Some(b)) => match dims(b) {
                    Some(d) => d,
                    None => kbail!("`{}` (SumToShape): its shape input is not a list of dims", s.name),
                },
                (_, None) => shapes[s.a].clone(),
                (_, Some(b)) => broadcast_shapes(&[&shapes[s.a], &shapes[b]])?,
            };
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Whether the fused evaluators can walk this program over the chain's shape: every
    /// `SumToShape` step is a copy (its target is its operand's shape), and every input read as
    /// elements broadcasts to the chain's shape (a hand-written node may have an input no step
    /// reads).
    pub fn walkable(&self, shapes: &[Vec<usize>]) -> bool {
        let full = &shapes[self.values[0]];
        let sums_copy = self
            .steps
            .iter()
            .enumerate()
            .all(|(k, s)| s.op != Op::SumToShape || shapes[self.inputs + k] == shapes[s.a]);
        let inputs_fit = (0..self.inputs)
            .all(|k| self.dims_only(k) || broadcast_shapes(&[&shapes[k], full]).is_ok_and(|b| &b == full));
        sums_copy && inputs_fit
    }

    /// Every register's element type when the whole program computes on f32 values (bf16 only
    /// loaded, cast to or stored; int64 only as `SumToShape`'s dims): the case the fused
    /// evaluators cover. `None` otherwise (a step on bf16 or integer operands), and then the
    /// steps run one by one.
    pub fn f32_types(&self, inputs: &[DataType]) -> Option<Vec<DataType>> {
        let mut types: Vec<DataType> = inputs.to_vec();
        let float = |t: DataType| matches!(t, DataType::Float | DataType::BFloat16);
        for s in &self.steps {
            let t = match (s.op, s.b) {
                (Op::ToF32, _) if float(types[s.a]) => DataType::Float,
                (Op::ToBf16, _) if float(types[s.a]) => DataType::BFloat16,
                (Op::SumToShape, Some(b)) if types[s.a] == DataType::Float && types[b] == DataType::Int64 => {
                    DataType::Float
                }
                (Op::ToF32 | Op::ToBf16 | Op::SumToShape, _) => return None,
                _ if s.operands().all(|r| types[r] == DataType::Float) => DataType::Float,
                _ => return None,
            };
            types.push(t);
        }
        Some(types)
    }

    /// Whether register `r` is only ever read as a `SumToShape` step's dims (so its values are
    /// never loaded as elements).
    pub fn dims_only(&self, r: usize) -> bool {
        self.steps.iter().all(|s| s.a != r && (s.b != Some(r) || s.op == Op::SumToShape)) && !self.values.contains(&r)
    }
}
