//! `ElementwiseChain` on the device: one launch runs the whole program per element, so the
//! chain reads its inputs and writes its outputs once. The kernel is the program's own
//! ([`specialise`], compiled at its first launch), or the interpreter `elementwise_chain`
//! (`kernels.cu`) with `ADAPTC_CUDA_CHAIN=interpret`. A program the fused kernels do not cover
//! (a step on bf16 operands, more dims than they walk) runs step by step with the device ops
//! of its nodes.

pub mod specialise;

use specialise::Walk;

use adaptc_ir::{DataType, Node};
use cudarc::driver::DeviceRepr;

use super::{done, dptr, find, host, launch, output, req, DevResult, Gpu};
use crate::cuda::launch::{addr, broadcast, contiguous, elementwise as grid, merge_dims, DevError, MAX_RANK};
use crate::cuda::value::CudaValue;
use crate::error::KernelError;
use crate::fuse::chains::{MAX_INPUTS, MAX_STEPS, MAX_VALUES};
use crate::ops::chain::{Op, Program};
use crate::ops::OpCtx;
use crate::tensor::Tensor;

/// `struct ChainArgs` in `prelude.cuh`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChainArgs {
    pub rank: i32,
    pub n_in: i32,
    pub n_steps: i32,
    pub n_out: i32,
    pub shape: [i64; MAX_RANK],
    pub in_st: [[i64; MAX_RANK]; MAX_INPUTS],
    pub out_st: [[i64; MAX_RANK]; MAX_VALUES],
    pub in_ptr: [u64; MAX_INPUTS],
    pub out_ptr: [u64; MAX_VALUES],
    pub in_kind: [i32; MAX_INPUTS],
    pub out_bf16: [i32; MAX_VALUES],
    pub out_reg: [i32; MAX_VALUES],
    pub kind: [i32; MAX_STEPS],
    pub code: [i32; MAX_STEPS],
    pub a: [i32; MAX_STEPS],
    pub b: [i32; MAX_STEPS],
}

impl ChainArgs {
    /// Counts set, everything else zero (no step has a second operand: `b` = -1).
    pub fn blank(rank: usize, n_in: usize, n_steps: usize, n_out: usize) -> ChainArgs {
        ChainArgs {
            rank: rank as i32,
            n_in: n_in as i32,
            n_steps: n_steps as i32,
            n_out: n_out as i32,
            shape: [1; MAX_RANK],
            in_st: [[0; MAX_RANK]; MAX_INPUTS],
            out_st: [[0; MAX_RANK]; MAX_VALUES],
            in_ptr: [0; MAX_INPUTS],
            out_ptr: [0; MAX_VALUES],
            in_kind: [0; MAX_INPUTS],
            out_bf16: [0; MAX_VALUES],
            out_reg: [0; MAX_VALUES],
            kind: [0; MAX_STEPS],
            code: [0; MAX_STEPS],
            a: [0; MAX_STEPS],
            b: [-1; MAX_STEPS],
        }
    }

    /// The program part of the arguments for `p` (steps, input kinds, outputs) at `rank`
    /// merged dims; shape, strides and addresses are left for the launch to fill.
    /// `in_types`: the inputs' storage types; `out_types`: the registers' (`Program::f32_types`).
    pub fn program(p: &Program, rank: usize, in_types: &[DataType], reg_types: &[DataType]) -> ChainArgs {
        let mut args = ChainArgs::blank(rank, p.inputs, p.steps.len(), p.values.len());
        for (k, t) in in_types.iter().enumerate().take(p.inputs) {
            // 2: a SumToShape's dims (host values), never loaded.
            args.in_kind[k] = if p.dims_only(k) { 2 } else { i32::from(*t == DataType::BFloat16) };
        }
        for (k, s) in p.steps.iter().enumerate() {
            let (kind, code) = kernel_op(s.op);
            args.kind[k] = kind;
            args.code[k] = code;
            args.a[k] = s.a as i32;
            args.b[k] = s.b.map_or(-1, |b| b as i32);
        }
        for (k, &r) in p.values.iter().enumerate() {
            args.out_bf16[k] = i32::from(reg_types[r] == DataType::BFloat16);
            args.out_reg[k] = r as i32;
        }
        args
    }
}

// SAFETY: a plain `#[repr(C)]` struct of integers, laid out as the C struct it mirrors.
unsafe impl DeviceRepr for ChainArgs {}

/// A step's kind and code in the kernel: 0 a `unary_op` code, 1 a `binary_op` code (the codes
/// of `unary_f32` and `binary_f32`), 2 round to bf16, 3 copy.
fn kernel_op(op: Op) -> (i32, i32) {
    match op {
        Op::Add => (1, 0),
        Op::Sub => (1, 1),
        Op::Mul => (1, 2),
        Op::Div => (1, 3),
        Op::Pow => (1, 6),
        Op::Neg => (0, 0),
        Op::Exp => (0, 1),
        Op::Log => (0, 2),
        Op::Sqrt => (0, 3),
        Op::Reciprocal => (0, 4),
        Op::Sigmoid => (0, 5),
        Op::Tanh => (0, 6),
        Op::Erf => (0, 7),
        Op::Relu => (0, 10),
        Op::Abs => (0, 11),
        Op::ToBf16 => (2, 0),
        Op::ToF32 | Op::SumToShape => (3, 0),
    }
}

pub fn elementwise_chain(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let p = Program::from_node(c.node)?;
    let inputs: Vec<&CudaValue> = (0..p.inputs).map(|k| req(i, k)).collect::<DevResult<_>>()?;
    let in_shapes: Vec<&[usize]> = inputs.iter().map(|v| v.shape()).collect();
    // Shapes that do not broadcast: the CPU kernel gives the error, naming the step's node.
    // SumToShape's dims: small host values (device ones are not downloaded for this).
    let dims = |r: usize| {
        let t = inputs.get(r)?.host_if_present()?;
        crate::ops::grad::common::shape_input(t, "shape").ok()
    };
    // Shapes that do not broadcast fail in the step's own device op, naming its node.
    let Ok(shapes) = p.shapes_of(&in_shapes, dims) else { return step_by_step(gpu, c, &p, &inputs) };
    let types: Vec<DataType> = inputs.iter().map(|v| v.dtype()).collect();
    let full = &shapes[p.values[0]];
    let fits = full.len() <= MAX_RANK && p.steps.len() <= MAX_STEPS && p.inputs <= MAX_INPUTS;
    let mut values = match p.f32_types(&types) {
        Some(reg_types) if fits && p.walkable(&shapes) => fused(gpu, &p, &inputs, &shapes, &reg_types)?,
        _ => return step_by_step(gpu, c, &p, &inputs),
    };
    for &r in &p.shapes {
        values.push(dims_value(&shapes[r])?);
    }
    Ok(values)
}

/// One launch of `elementwise_chain`.
fn fused(
    gpu: &Gpu,
    p: &Program,
    inputs: &[&CudaValue],
    shapes: &[Vec<usize>],
    types: &[DataType],
) -> DevResult<Vec<CudaValue>> {
    if p.values.len() > MAX_VALUES {
        return host(format!("{} outputs (the chain kernel writes {MAX_VALUES})", p.values.len()));
    }
    let full = shapes[p.values[0]].clone();
    let n: usize = full.iter().product();
    // Every operand's strides over the chain's shape, inputs then outputs; dims merged where
    // all are contiguous (the usual chain, all of one shape, walks a single dim).
    let mut strides: Vec<Vec<i64>> = inputs
        .iter()
        .enumerate()
        .map(|(k, v)| if p.dims_only(k) { vec![0; full.len()] } else { broadcast(v.shape(), &full) })
        .collect();
    for &r in &p.values {
        // An output smaller than the chain is walked through broadcast strides.
        strides.push(if shapes[r] == full { contiguous(&full) } else { broadcast(&shapes[r], &full) });
    }
    let refs: Vec<&[i64]> = strides.iter().map(Vec::as_slice).collect();
    let dims = merge_dims(&full, &refs);
    if dims.len() > MAX_RANK {
        return host(format!("{} dims after merging (the chain kernel walks {MAX_RANK})", dims.len()));
    }
    let in_types: Vec<DataType> = inputs.iter().map(|v| v.dtype()).collect();
    let mut args = ChainArgs::program(p, dims.len(), &in_types, types);
    for (d, (size, st)) in dims.iter().enumerate() {
        args.shape[d] = *size;
        for (k, &s) in st.iter().enumerate() {
            match k.checked_sub(p.inputs) {
                None => args.in_st[k][d] = s,
                Some(o) => args.out_st[o][d] = s,
            }
        }
    }
    for (k, v) in inputs.iter().enumerate() {
        if !p.dims_only(k) {
            args.in_ptr[k] = if v.numel() == 0 { 0 } else { dptr(gpu, v)? };
        }
    }
    let mut outs = Vec::with_capacity(p.values.len());
    for (k, &r) in p.values.iter().enumerate() {
        let (mem, shape) = output(gpu, shapes[r].clone(), types[r])?;
        args.out_ptr[k] = addr(&mem, &gpu.stream);
        outs.push((mem, shape, types[r]));
    }
    if n > 0 {
        let n = n as i64;
        if interpret() {
            launch!(gpu, "elementwise_chain", grid(n as usize), &args, &n)?;
        } else {
            use cudarc::driver::PushKernelArg as _;
            let walk = Walk::of(&args);
            let f = gpu.chain_kernel(&args, walk).map_err(|e| DevError::Device(e.to_string()))?;
            let mut b = gpu.stream.launch_builder(&f);
            b.arg(&args);
            b.arg(&n);
            // SAFETY: the kernel is generated with exactly these parameters (`ChainArgs p,
            // i64 n`), and every address in `args` belongs to a buffer that outlives the
            // launch (buffers are freed in stream order).
            unsafe { b.launch(grid(walk.threads(n as usize))) }.map_err(DevError::from)?;
        }
    }
    Ok(outs.into_iter().map(|(mem, shape, t)| done(mem, shape, t)).collect())
}

/// The kernel `node`'s program gets with inputs stored as `in_types`, walked over `rank`
/// merged dims (with `vector`, rank 1 and four elements per thread, every operand
/// contiguous): its entry point and whole source (prelude included), as the backend compiles
/// it. Lets the tests compile every chain of a real plan without a device.
pub fn specialised_source(
    node: &Node,
    in_types: &[DataType],
    rank: usize,
    vector: bool,
) -> Result<(String, String), String> {
    let p = Program::from_node(node).map_err(|e| e.to_string())?;
    let regs = p.f32_types(in_types).ok_or("a step on bf16 operands (the chain runs step by step)")?;
    let walk = if vector { Walk::Vector4 { scalars: 0 } } else { Walk::Strided };
    let k = specialise::kernel(&ChainArgs::program(&p, rank, in_types, &regs), walk);
    Ok((k.name.clone(), k.source()))
}

/// `ADAPTC_CUDA_CHAIN=interpret`: chains run through the interpreter instead of their own
/// kernels (to compare the two on a device, or to skip the compilations).
fn interpret() -> bool {
    static INTERPRET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INTERPRET.get_or_init(|| std::env::var("ADAPTC_CUDA_CHAIN").is_ok_and(|v| v == "interpret"))
}

/// The steps one by one with their nodes' device ops (a step a device op sends to the host
/// sends the whole chain there, where the CPU kernel runs it).
fn step_by_step(gpu: &Gpu, c: &OpCtx, p: &Program, inputs: &[&CudaValue]) -> DevResult<Vec<CudaValue>> {
    let mut made: Vec<CudaValue> = Vec::with_capacity(p.steps.len());
    for s in &p.steps {
        let node = s.op.node(vec![String::new(); s.op.arity()], "y".into());
        let Some(f) = find(node.op()) else { return host(format!("no device op for {}", s.op.onnx())) };
        let reg = |r: usize| if r < p.inputs { inputs[r] } else { &made[r - p.inputs] };
        let args: Vec<Option<&CudaValue>> = s.operands().map(|r| Some(reg(r))).collect();
        let ctx = OpCtx { node: &node, opset: c.opset };
        let y = f(gpu, &ctx, &args).map_err(|e| match e {
            DevError::Kernel(k) => DevError::Kernel(KernelError::Invalid(format!("in fused node `{}`: {k}", s.name))),
            other => other,
        })?;
        let Some(y) = y.into_iter().next() else { return host(format!("{} gave no output", s.op.onnx())) };
        made.push(y);
    }
    let reg = |r: usize| if r < p.inputs { inputs[r] } else { &made[r - p.inputs] };
    let mut outs: Vec<CudaValue> =
        p.values.iter().map(|&r| reg(r).reshaped(reg(r).shape().to_vec())).collect::<DevResult<_>>()?;
    for &r in &p.shapes {
        outs.push(dims_value(reg(r).shape())?);
    }
    Ok(outs)
}

/// A `Shape` output: the dims as a host int64 tensor.
fn dims_value(shape: &[usize]) -> DevResult<CudaValue> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::from_vec(vec![dims.len()], dims).map_err(|e| DevError::Device(e.to_string()))?;
    Ok(CudaValue::from_host(t))
}
