//! The fused CPU evaluation of an [`ElementwiseChain`](super) program: the output is cut into
//! chunks small enough that every register of a chunk stays in cache, the inputs of a chunk
//! are loaded (widened from bf16, broadcast), the steps run as plain loops over the chunk, and
//! the value outputs are stored. Chunks run in parallel.
//!
//! Each step computes what its kernel computes, in the same precision: arithmetic in f32 (the
//! binary kernels' f32 path), math functions through f64 rounded back (the unary kernels'),
//! and a cast to bf16 rounds once, so results equal the step-by-step ones bit for bit.

use adaptc_ir::DataType;
use half::bf16;
use rayon::prelude::*;

use super::program::{Op, Program};
use crate::ops::unary::{erf_f, sigmoid_f};
use crate::ops::util::{broadcast_strides, PAR_THRESHOLD};
use crate::tensor::{Storage, Tensor};

/// Elements per chunk: 2 048 f32 registers are 8 KiB each, so a chain of a dozen steps keeps
/// its working set in L2.
const CHUNK: usize = 2048;

/// An input as the evaluator reads it: its elements and its strides over the chain's shape
/// (`None` when it has the chain's shape, so a chunk is a plain slice of it).
struct Source<'a> {
    data: Data<'a>,
    strides: Option<Vec<usize>>,
}

enum Data<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// A `SumToShape` step's dims: never loaded.
    Dims,
}

/// One value output's slice for a chunk.
enum Out<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [bf16]),
}

/// The value outputs of `p` over `inputs`, given every register's shape and type; `None` when
/// a value output is smaller than the chain's shape (it would be written by several chunks),
/// so the caller runs the steps one by one.
pub fn run(p: &Program, inputs: &[&Tensor], shapes: &[Vec<usize>], types: &[DataType]) -> Option<Vec<Tensor>> {
    let full = &shapes[p.values[0]];
    if p.values.iter().any(|&r| &shapes[r] != full) {
        return None;
    }
    let n: usize = full.iter().product();
    let sources: Vec<Source> = inputs
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let data = match t.data() {
                Storage::F32(v) => Data::F32(v),
                Storage::BF16(v) => Data::Bf16(v),
                _ if p.dims_only(k) => Data::Dims,
                _ => return None,
            };
            let strides = (t.shape() != full.as_slice() && !matches!(data, Data::Dims))
                .then(|| broadcast_strides(t.shape(), full));
            Some(Source { data, strides })
        })
        .collect::<Option<_>>()?;
    let mut outs: Vec<Storage> = p
        .values
        .iter()
        .map(|&r| match types[r] {
            DataType::BFloat16 => Storage::BF16(vec![bf16::ZERO; n]),
            _ => Storage::F32(vec![0.0; n]),
        })
        .collect();
    {
        // Chunk k of every output, side by side, so chunks can be handed to threads whole.
        let mut per_output: Vec<Vec<Out>> = outs
            .iter_mut()
            .map(|s| match s {
                Storage::BF16(v) => v.chunks_mut(CHUNK).map(Out::Bf16).collect(),
                Storage::F32(v) => v.chunks_mut(CHUNK).map(Out::F32).collect(),
                _ => Vec::new(),
            })
            .collect();
        let chunks = n.div_ceil(CHUNK);
        let mut work: Vec<(usize, Vec<Out>)> = (0..chunks).map(|k| (k, Vec::with_capacity(p.values.len()))).collect();
        for column in per_output.iter_mut() {
            for (k, out) in column.drain(..).enumerate() {
                work[k].1.push(out);
            }
        }
        let go = |regs: &mut Vec<Vec<f32>>, (k, mut outs): (usize, Vec<Out>)| {
            chunk(p, &sources, full, k * CHUNK, regs, &mut outs);
        };
        if n >= PAR_THRESHOLD {
            work.into_par_iter().for_each_init(Vec::new, go);
        } else {
            let mut regs = Vec::new();
            work.into_iter().for_each(|w| go(&mut regs, w));
        }
    }
    outs.into_iter().map(|s| Tensor::new(full.clone(), s).ok()).collect()
}

/// Evaluates the elements `start..start + outs[0].len()` into `outs`; `regs` is scratch.
fn chunk(p: &Program, sources: &[Source], full: &[usize], start: usize, regs: &mut Vec<Vec<f32>>, outs: &mut [Out]) {
    let len = match outs.first() {
        Some(Out::F32(o)) => o.len(),
        Some(Out::Bf16(o)) => o.len(),
        None => return,
    };
    regs.resize_with(p.registers(), Vec::new);
    for r in regs.iter_mut() {
        r.resize(len, 0.0);
    }
    for (src, reg) in sources.iter().zip(regs.iter_mut()) {
        load(src, full, start, reg);
    }
    for (k, s) in p.steps.iter().enumerate() {
        let (done, rest) = regs.split_at_mut(p.inputs + k);
        let y = &mut rest[0];
        let a = &done[s.a];
        match (s.op, s.b.map(|b| &done[b])) {
            (Op::Add, Some(b)) => zip(y, a, b, |u, v| u + v),
            (Op::Sub, Some(b)) => zip(y, a, b, |u, v| u - v),
            (Op::Mul, Some(b)) => zip(y, a, b, |u, v| u * v),
            (Op::Div, Some(b)) => zip(y, a, b, |u, v| u / v),
            (Op::Pow, Some(b)) => zip(y, a, b, f32::powf),
            (Op::Neg, _) => map(y, a, |x| -x),
            (Op::Abs, _) => map(y, a, f64::abs),
            (Op::Relu, _) => map(y, a, |x| if x > 0.0 { x } else { 0.0 }),
            (Op::Exp, _) => map(y, a, f64::exp),
            (Op::Log, _) => map(y, a, f64::ln),
            (Op::Sqrt, _) => map(y, a, f64::sqrt),
            (Op::Reciprocal, _) => map(y, a, |x| 1.0 / x),
            (Op::Sigmoid, _) => map(y, a, sigmoid_f),
            (Op::Tanh, _) => map(y, a, f64::tanh),
            (Op::Erf, _) => map(y, a, erf_f),
            // A copy: the caller checked that nothing is summed.
            (Op::ToF32 | Op::SumToShape, _) => y.copy_from_slice(a),
            // Cast rounds once, to nearest even (`half`'s `from_f64` does not: `Num` avoids it).
            (Op::ToBf16, _) => y.iter_mut().zip(a).for_each(|(y, &x)| *y = bf16::from_f32(x).to_f32()),
            // Two-operand ops always carry `b` (checked when decoding).
            (_, None) => {}
        }
    }
    for (out, &r) in outs.iter_mut().zip(&p.values) {
        match out {
            Out::F32(o) => o.copy_from_slice(&regs[r]),
            // The register holds a bf16 value exactly (it was loaded or rounded as one).
            Out::Bf16(o) => o.iter_mut().zip(&regs[r]).for_each(|(o, &x)| *o = bf16::from_f32(x)),
        }
    }
}

fn zip(y: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((y, &u), &v) in y.iter_mut().zip(a).zip(b) {
        *y = f(u, v);
    }
}

/// A math function the way the unary kernels apply it: through f64, rounded back to f32.
fn map(y: &mut [f32], a: &[f32], f: impl Fn(f64) -> f64) {
    for (y, &x) in y.iter_mut().zip(a) {
        *y = f(f64::from(x)) as f32;
    }
}

/// Loads the elements `start..start + reg.len()` of the chain's shape from `src` into `reg`.
fn load(src: &Source, full: &[usize], start: usize, reg: &mut [f32]) {
    let get = |i: usize| -> f32 {
        match &src.data {
            Data::F32(v) => v[i],
            Data::Bf16(v) => v[i].to_f32(),
            Data::Dims => 0.0,
        }
    };
    if matches!(src.data, Data::Dims) {
        return;
    }
    let Some(strides) = &src.strides else {
        match &src.data {
            Data::F32(v) => reg.copy_from_slice(&v[start..start + reg.len()]),
            Data::Bf16(v) => reg.iter_mut().zip(&v[start..]).for_each(|(r, x)| *r = x.to_f32()),
            Data::Dims => {}
        }
        return;
    };
    if strides.iter().all(|&s| s == 0) {
        reg.fill(get(0));
        return;
    }
    // Walk the multi-index of `start` forward, one carry at a time.
    let rank = full.len();
    let mut idx = vec![0usize; rank];
    let mut rem = start;
    for d in (0..rank).rev() {
        idx[d] = rem % full[d];
        rem /= full[d];
    }
    let mut off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum();
    for r in reg.iter_mut() {
        *r = get(off);
        for d in (0..rank).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < full[d] {
                break;
            }
            off -= strides[d] * full[d];
            idx[d] = 0;
        }
    }
}
