//! A chain program's own kernel. The interpreter (`elementwise_chain` in `kernels.cu`) reads
//! each step's op and operands from its arguments and keeps the registers in an indexed
//! per-thread array, which the compiler has to place in local memory: every step costs loads,
//! a store and a jump through the op tables. The kernel generated here for one program names
//! each register as a variable and each op by its constant code, so the values stay in
//! registers, the op tables fold away after inlining and the walk over the dims unrolls; at
//! run time it reads only the launch's shape, strides and addresses.
//!
//! The source is generated from the same [`ChainArgs`] the interpreter would get (its program
//! part: rank, input kinds, steps, outputs), so the two compute the same thing by
//! construction, and the emulator checks that they do (the test below). NVRTC compiles it at
//! the program's first launch ([`Gpu::chain_kernel`](crate::cuda::device::Gpu::chain_kernel))
//! with contraction off: the CPU backend's chain kernel rounds a `Mul` before the `Add` that
//! reads it, and so does this one.

use std::fmt::Write as _;

use super::ChainArgs;

/// How a kernel walks the chain's elements.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Walk {
    /// One element per thread and turn, every operand through its strides: any layout.
    Strided,
    /// Four consecutive elements per thread and turn, read and written with vector loads and
    /// stores (16 bytes of f32, 8 of bf16), the last `n % 4` one by one: the chain has one
    /// merged dim, every output and every input but the scalars (bit k of `scalars`: input k
    /// has stride 0) is contiguous, and every vector operand's address is aligned.
    Vector4 { scalars: u8 },
}

impl Walk {
    /// The walk `a`'s launch allows (its shape, strides and addresses filled in).
    pub fn of(a: &ChainArgs) -> Walk {
        if a.rank != 1 {
            return Walk::Strided;
        }
        let mut scalars = 0u8;
        for k in 0..a.n_in as usize {
            let bytes = if a.in_kind[k] == 1 { 8 } else { 16 };
            match (a.in_kind[k], a.in_st[k][0]) {
                (2, _) => {}
                (_, 0) => scalars |= 1 << k,
                (_, 1) if a.in_ptr[k].is_multiple_of(bytes) => {}
                _ => return Walk::Strided,
            }
        }
        for k in 0..a.n_out as usize {
            let bytes = if a.out_bf16[k] != 0 { 8 } else { 16 };
            if a.out_st[k][0] != 1 || !a.out_ptr[k].is_multiple_of(bytes) {
                return Walk::Strided;
            }
        }
        Walk::Vector4 { scalars }
    }

    /// Threads the launch needs for `n` elements (one per element, or per four).
    pub fn threads(self, n: usize) -> usize {
        match self {
            Walk::Strided => n,
            Walk::Vector4 { .. } => n.div_ceil(4),
        }
    }
}

/// What distinguishes one specialised kernel from another: the program part of [`ChainArgs`]
/// and the walk. Cheap to build per launch, unlike the source.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ProgramKey(Vec<i32>, Walk);

impl ProgramKey {
    pub fn of(a: &ChainArgs, walk: Walk) -> ProgramKey {
        let (n_in, n_steps, n_out) = (a.n_in as usize, a.n_steps as usize, a.n_out as usize);
        let mut k = vec![a.rank, a.n_in, a.n_steps, a.n_out];
        k.extend_from_slice(&a.in_kind[..n_in]);
        k.extend_from_slice(&a.out_bf16[..n_out]);
        k.extend_from_slice(&a.out_reg[..n_out]);
        for s in 0..n_steps {
            k.extend_from_slice(&[a.kind[s], a.code[s], a.a[s], a.b[s]]);
        }
        ProgramKey(k, walk)
    }
}

/// A generated kernel: its entry point and its source (the prelude not included).
pub struct Specialised {
    pub name: String,
    pub body: String,
}

impl Specialised {
    /// What NVRTC compiles: the prelude, then the body.
    pub fn source(&self) -> String {
        format!("{}\n{}", crate::cuda::compile::PRELUDE, self.body)
    }
}

/// The kernel of `a`'s program walking as `walk` says; its name is a hash of its body, so
/// equal programs share it.
pub fn kernel(a: &ChainArgs, walk: Walk) -> Specialised {
    let mut body = String::new();
    // `write!` into a String cannot fail.
    let _ = match walk {
        Walk::Strided => strided(&mut body, a),
        Walk::Vector4 { scalars } => vector4(&mut body, a, scalars),
    };
    let name = format!("chain_{:016x}", fnv1a(body.as_bytes()));
    Specialised { body: body.replace("NAME", &name), name }
}

/// Vector and element names of the four lanes.
const LANES: [&str; 4] = ["x", "y", "z", "w"];

fn strided(w: &mut String, a: &ChainArgs) -> std::fmt::Result {
    let loaded: Vec<usize> = (0..a.n_in as usize).filter(|&k| a.in_kind[k] != 2).collect();
    writeln!(w, "extern \"C\" __global__ void NAME(ChainArgs p, i64 n) {{")?;
    writeln!(w, "    GRID_LOOP(i, n) {{")?;
    // Offsets of every loaded input and every output at element i.
    let offsets: Vec<(String, String)> = loaded
        .iter()
        .map(|&k| (format!("in{k}"), format!("p.in_st[{k}]")))
        .chain((0..a.n_out).map(|k| (format!("out{k}"), format!("p.out_st[{k}]"))))
        .collect();
    if a.rank == 1 {
        for (v, st) in &offsets {
            writeln!(w, "        const i64 {v} = i * {st}[0];")?;
        }
    } else {
        let decl: Vec<String> = offsets.iter().map(|(v, _)| format!("{v} = 0")).collect();
        if !decl.is_empty() {
            writeln!(w, "        i64 {};", decl.join(", "))?;
        }
        // Below 2^31 elements the divisions are 32-bit, as in the interpreter.
        for (guard, int) in [("if (n <= 0x7fffffff) {", "unsigned int"), ("} else {", "i64")] {
            writeln!(w, "        {guard}")?;
            writeln!(w, "            {int} rem = ({int})i, c;")?;
            for d in (0..a.rank).rev() {
                if d == 0 {
                    // What is left is below the outermost size (i < n).
                    writeln!(w, "            c = rem;")?;
                } else {
                    writeln!(w, "            c = rem % ({int})p.shape[{d}]; rem /= ({int})p.shape[{d}];")?;
                }
                for (v, st) in &offsets {
                    writeln!(w, "            {v} += (i64)c * {st}[{d}];")?;
                }
            }
        }
        writeln!(w, "        }}")?;
    }
    element(w, a, "in", "out")?;
    writeln!(w, "    }}")?;
    writeln!(w, "}}")
}

/// One element's loads (input k at offset `{ins}{k}`), steps and stores (output k at
/// `{outs}{k}`), registers `r{k}`.
fn element(w: &mut String, a: &ChainArgs, ins: &str, outs: &str) -> std::fmt::Result {
    for k in 0..a.n_in as usize {
        let load = match a.in_kind[k] {
            0 => format!("((const float*)p.in_ptr[{k}])[{ins}{k}]"),
            1 => format!("bf16_to_f32(((const bf16_t*)p.in_ptr[{k}])[{ins}{k}])"),
            // A SumToShape's dims: never loaded.
            _ => "0.0f".to_string(),
        };
        writeln!(w, "        const float r{k} = {load};")?;
    }
    steps(w, a, "")?;
    for k in 0..a.n_out as usize {
        let r = a.out_reg[k];
        if a.out_bf16[k] != 0 {
            writeln!(w, "        ((bf16_t*)p.out_ptr[{k}])[{outs}{k}] = f32_to_bf16(r{r});")?;
        } else {
            writeln!(w, "        ((float*)p.out_ptr[{k}])[{outs}{k}] = r{r};")?;
        }
    }
    Ok(())
}

/// The program's steps on registers `r{k}{lane}`.
fn steps(w: &mut String, a: &ChainArgs, lane: &str) -> std::fmt::Result {
    let n_in = a.n_in as usize;
    for st in 0..a.n_steps as usize {
        let (x, code) = (a.a[st], a.code[st]);
        let y = if a.b[st] >= 0 { a.b[st] } else { x };
        let value = match a.kind[st] {
            0 => format!("unary_op({code}, r{x}{lane}, 0.0f, 0.0f)"),
            1 => format!("binary_op({code}, r{x}{lane}, r{y}{lane})"),
            2 => format!("bf16_to_f32(f32_to_bf16(r{x}{lane}))"),
            _ => format!("r{x}{lane}"),
        };
        writeln!(w, "        const float r{}{lane} = {value};", n_in + st)?;
    }
    Ok(())
}

fn vector4(w: &mut String, a: &ChainArgs, scalars: u8) -> std::fmt::Result {
    let scalar = |k: usize| scalars & (1 << k) != 0;
    writeln!(w, "extern \"C\" __global__ void NAME(ChainArgs p, i64 n) {{")?;
    writeln!(w, "    const i64 quads = n >> 2;")?;
    writeln!(w, "    GRID_LOOP(q, quads) {{")?;
    for k in 0..a.n_in as usize {
        match a.in_kind[k] {
            2 => {
                for l in LANES {
                    writeln!(w, "        const float r{k}{l} = 0.0f;")?;
                }
            }
            kind if scalar(k) => {
                let load = if kind == 1 {
                    format!("bf16_to_f32(((const bf16_t*)p.in_ptr[{k}])[0])")
                } else {
                    format!("((const float*)p.in_ptr[{k}])[0]")
                };
                writeln!(w, "        const float r{k} = {load};")?;
                for l in LANES {
                    writeln!(w, "        const float r{k}{l} = r{k};")?;
                }
            }
            kind => {
                let (ty, widen) = if kind == 1 { ("bf16x4", "bf16_to_f32") } else { ("f32x4", "") };
                writeln!(w, "        const {ty} v{k} = ((const {ty}*)p.in_ptr[{k}])[q];")?;
                for l in LANES {
                    writeln!(w, "        const float r{k}{l} = {widen}(v{k}.{l});")?;
                }
            }
        }
    }
    for l in LANES {
        steps(w, a, l)?;
    }
    for k in 0..a.n_out as usize {
        let r = a.out_reg[k];
        let (ty, narrow) = if a.out_bf16[k] != 0 { ("bf16x4", "f32_to_bf16") } else { ("f32x4", "") };
        let lanes: Vec<String> = LANES.iter().map(|l| format!("{narrow}(r{r}{l})")).collect();
        writeln!(w, "        (({ty}*)p.out_ptr[{k}])[q] = {ty}{{{}}};", lanes.join(", "))?;
    }
    writeln!(w, "    }}")?;
    // The last n % 4 elements, one per thread.
    writeln!(w, "    for (i64 i = (quads << 2) + (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {{")?;
    for k in 0..a.n_in as usize {
        if a.in_kind[k] != 2 {
            writeln!(w, "        const i64 in{k} = {};", if scalar(k) { "0" } else { "i" })?;
        }
    }
    for k in 0..a.n_out as usize {
        writeln!(w, "        const i64 out{k} = i;")?;
    }
    element(w, a, "in", "out")?;
    writeln!(w, "    }}")?;
    writeln!(w, "}}")
}

/// 64-bit FNV-1a: a stable name for a body (the cache itself is keyed by [`ProgramKey`]).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    //! Each generated kernel against the interpreter, on the CPU: both compiled with g++
    //! through the emulator's CUDA shim (`runtime/tests/cuda_emulated/shim.h`), run on the same
    //! random inputs, their outputs compared byte for byte. The interpreter is checked against
    //! double-precision references by `scripts/emulate-kernels.sh`; this checks that a
    //! program's own kernel wires registers, offsets, loads and stores as the interpreter does.

    use std::fmt::Write as _;
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// A program over `shape` (dims as the launcher passes them, already merged), each input
    /// drawn from its range (bf16 inputs rounded), every operand walked through its strides.
    struct Case {
        name: &'static str,
        args: ChainArgs,
        ranges: Vec<(f32, f32)>,
        walk: Walk,
    }

    /// `{kind, code, a, b}` per step, as in the interpreter's tables (b = -1: none).
    fn case(
        name: &'static str,
        shape: &[i64],
        inputs: &[(i32, &[i64], (f32, f32))],
        steps: &[[i32; 4]],
        outputs: &[(i32, bool, &[i64])],
    ) -> Case {
        let mut a = ChainArgs::blank(shape.len(), inputs.len(), steps.len(), outputs.len());
        a.shape[..shape.len()].copy_from_slice(shape);
        for (k, (kind, st, _)) in inputs.iter().enumerate() {
            a.in_kind[k] = *kind;
            a.in_st[k][..st.len()].copy_from_slice(st);
        }
        for (s, [kind, code, x, y]) in steps.iter().enumerate() {
            (a.kind[s], a.code[s], a.a[s], a.b[s]) = (*kind, *code, *x, *y);
        }
        for (k, (reg, bf16, st)) in outputs.iter().enumerate() {
            a.out_reg[k] = *reg;
            a.out_bf16[k] = i32::from(*bf16);
            a.out_st[k][..st.len()].copy_from_slice(st);
        }
        Case { name, args: a, ranges: inputs.iter().map(|i| i.2).collect(), walk: Walk::Strided }
    }

    fn cases() -> Vec<Case> {
        let wide = (-3.0, 3.0);
        let positive = (0.25, 2.0);
        vec![
            // RMSNorm-like scaling, a bf16 residual, SiLU, a cast to bf16, Pow, Tanh, Sub, Div;
            // an output smaller than the chain; input 5 a SumToShape's dims (never loaded).
            case(
                "rank 3, broadcast inputs, six outputs",
                &[2, 3, 50],
                &[
                    (0, &[150, 50, 1], wide),
                    (0, &[3, 1, 0], positive),
                    (0, &[0, 0, 1], wide),
                    (1, &[150, 50, 1], wide),
                    (0, &[0, 0, 0], (2.0, 2.0)),
                    (2, &[0, 0, 0], (0.0, 0.0)),
                ],
                &[
                    [1, 2, 0, 1],
                    [1, 2, 2, 6],
                    [3, 0, 3, -1],
                    [1, 0, 7, 8],
                    [0, 5, 9, -1],
                    [1, 2, 9, 10],
                    [2, 0, 11, -1],
                    [1, 6, 9, 4],
                    [0, 6, 13, -1],
                    [1, 1, 14, 10],
                    [1, 3, 15, 4],
                    [1, 2, 1, 1],
                    [1, 2, 12, 4],
                    [3, 0, 18, 5],
                ],
                &[
                    (12, true, &[150, 50, 1]),
                    (10, false, &[150, 50, 1]),
                    (16, false, &[150, 50, 1]),
                    (17, false, &[3, 1, 0]),
                    (18, false, &[150, 50, 1]),
                    (19, false, &[150, 50, 1]),
                ],
            ),
            // Every unary and binary code the chains use, and both casts, over two dims with a
            // row operand.
            case(
                "rank 2, every op",
                &[7, 37],
                &[(0, &[37, 1], wide), (1, &[37, 1], wide), (0, &[0, 1], positive)],
                &[
                    [0, 11, 0, -1], // 3 |x|
                    [1, 0, 3, 2],   // 4 |x| + y > 0
                    [0, 2, 4, -1],  // 5 log
                    [0, 3, 4, -1],  // 6 sqrt
                    [0, 4, 4, -1],  // 7 1/
                    [0, 1, 0, -1],  // 8 exp x
                    [0, 0, 0, -1],  // 9 −x
                    [0, 5, 0, -1],  // 10 sigmoid
                    [0, 6, 0, -1],  // 11 tanh
                    [0, 7, 0, -1],  // 12 erf
                    [0, 10, 0, -1], // 13 relu
                    [1, 1, 5, 6],   // 14 −
                    [1, 2, 7, 8],   // 15 ·
                    [1, 3, 9, 10],  // 16 ÷
                    [1, 6, 4, 2],   // 17 pow
                    [2, 0, 11, -1], // 18 to bf16
                    [3, 0, 1, -1],  // 19 widened bf16 input
                    [1, 0, 12, 19], // 20
                    [1, 0, 20, 13], // 21
                ],
                &[
                    (14, false, &[37, 1]),
                    (15, false, &[37, 1]),
                    (16, true, &[37, 1]),
                    (17, false, &[37, 1]),
                    (18, false, &[37, 1]),
                    (21, true, &[37, 1]),
                ],
            ),
            // One merged dim (no division): (x + f32(h)) · 2.
            case(
                "rank 1",
                &[700],
                &[(0, &[1], wide), (1, &[1], wide), (0, &[0], (2.0, 2.0))],
                &[[3, 0, 1, -1], [1, 0, 0, 3], [1, 2, 4, 2]],
                &[(5, false, &[1])],
            ),
            // Four elements per thread, a scalar input, and a tail of three elements.
            Case {
                walk: Walk::Vector4 { scalars: 0b100 },
                ..case(
                    "rank 1, four per thread",
                    &[703],
                    &[(0, &[1], wide), (1, &[1], wide), (0, &[0], (2.0, 2.0))],
                    &[[3, 0, 1, -1], [1, 0, 0, 3], [1, 2, 4, 2]],
                    &[(5, false, &[1]), (3, true, &[1])],
                )
            },
            // The every-op program four elements per thread, its [37] operand now a scalar.
            Case {
                walk: Walk::Vector4 { scalars: 0b100 },
                ..case(
                    "rank 1, four per thread, every op",
                    &[259],
                    &[(0, &[1], wide), (1, &[1], wide), (0, &[0], positive)],
                    &[
                        [0, 11, 0, -1],
                        [1, 0, 3, 2],
                        [0, 2, 4, -1],
                        [0, 3, 4, -1],
                        [0, 4, 4, -1],
                        [0, 1, 0, -1],
                        [0, 0, 0, -1],
                        [0, 5, 0, -1],
                        [0, 6, 0, -1],
                        [0, 7, 0, -1],
                        [0, 10, 0, -1],
                        [1, 1, 5, 6],
                        [1, 2, 7, 8],
                        [1, 3, 9, 10],
                        [1, 6, 4, 2],
                        [2, 0, 11, -1],
                        [3, 0, 1, -1],
                        [1, 0, 12, 19],
                        [1, 0, 20, 13],
                    ],
                    &[
                        (14, false, &[1]),
                        (15, false, &[1]),
                        (16, true, &[1]),
                        (17, false, &[1]),
                        (18, false, &[1]),
                        (21, true, &[1]),
                    ],
                )
            },
            // Four per thread with a SumToShape's dims (input 1, never loaded), a bf16 input
            // scalar, and fewer elements than one quad per thread of the grid.
            Case {
                walk: Walk::Vector4 { scalars: 0b100 },
                ..case(
                    "rank 1, four per thread, dims never loaded",
                    &[1030],
                    &[(0, &[1], wide), (2, &[0], (0.0, 0.0)), (1, &[0], wide)],
                    &[[3, 0, 0, 1], [3, 0, 2, -1], [1, 2, 3, 4], [0, 6, 5, -1]],
                    &[(6, true, &[1]), (3, false, &[1])],
                )
            },
            // A transposed input, and an output of a [3] operand's tanh (stored through the
            // same broadcast strides by every thread that shares them).
            case(
                "rank 4, transposed input",
                &[2, 3, 4, 5],
                &[(0, &[60, 1, 15, 3], wide), (1, &[60, 20, 5, 1], wide), (0, &[0, 1, 0, 0], wide)],
                &[[1, 2, 0, 1], [0, 6, 2, -1]],
                &[(3, false, &[60, 20, 5, 1]), (4, true, &[0, 1, 0, 0])],
            ),
        ]
    }

    /// Elements an operand spans (its largest offset + 1).
    fn span(shape: &[i64], st: &[i64]) -> i64 {
        shape.iter().zip(st).map(|(n, s)| (n - 1) * s).sum::<i64>() + 1
    }

    fn harness(cases: &[Case]) -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut s = String::new();
        for f in ["tests/cuda_emulated/shim.h", "src/cuda/prelude.cuh", "src/cuda/kernels.cu"] {
            let _ = writeln!(s, "#include \"{}\"", dir.join(f).display());
        }
        s.push_str(HARNESS);
        let mut calls = String::new();
        for c in cases {
            let k = kernel(&c.args, c.walk);
            s.push_str(&k.body);
            let a = &c.args;
            let rank = a.rank as usize;
            let shape = &a.shape[..rank];
            let n: i64 = shape.iter().product();
            let _ = writeln!(calls, "    {{\n        ChainArgs p{{}};");
            let _ = writeln!(
                calls,
                "        p.rank = {}; p.n_in = {}; p.n_steps = {}; p.n_out = {};",
                a.rank, a.n_in, a.n_steps, a.n_out
            );
            for d in 0..rank {
                let _ = writeln!(calls, "        p.shape[{d}] = {};", a.shape[d]);
            }
            let mut ins = Vec::new();
            for k in 0..a.n_in as usize {
                let _ = writeln!(calls, "        p.in_kind[{k}] = {};", a.in_kind[k]);
                for d in 0..rank {
                    let _ = writeln!(calls, "        p.in_st[{k}][{d}] = {};", a.in_st[k][d]);
                }
                let (lo, hi) = c.ranges[k];
                ins.push(format!("{{{}, {}, {lo:?}f, {hi:?}f}}", span(shape, &a.in_st[k][..rank]), a.in_kind[k]));
            }
            for s in 0..a.n_steps as usize {
                let _ = writeln!(
                    calls,
                    "        p.kind[{s}] = {}; p.code[{s}] = {}; p.a[{s}] = {}; p.b[{s}] = {};",
                    a.kind[s], a.code[s], a.a[s], a.b[s]
                );
            }
            let mut outs = Vec::new();
            for k in 0..a.n_out as usize {
                let _ =
                    writeln!(calls, "        p.out_reg[{k}] = {}; p.out_bf16[{k}] = {};", a.out_reg[k], a.out_bf16[k]);
                for d in 0..rank {
                    let _ = writeln!(calls, "        p.out_st[{k}][{d}] = {};", a.out_st[k][d]);
                }
                let bytes = if a.out_bf16[k] != 0 { 2 } else { 4 };
                outs.push(format!("{}", span(shape, &a.out_st[k][..rank]) * bytes));
            }
            let _ = writeln!(
                calls,
                "        check(\"{}\", {}, p, {n}LL, {{{}}}, {{{}}});\n    }}",
                c.name,
                k.name,
                ins.join(", "),
                outs.join(", ")
            );
        }
        let _ = write!(s, "\nint main() {{\n{calls}    return failed ? 1 : 0;\n}}\n");
        s
    }

    /// Inputs and a runner: both kernels over the same inputs, outputs compared as bytes.
    const HARNESS: &str = r#"
#include <cstring>
#include <random>
#include <string>
#include <vector>

struct Input { long long len; int kind; float lo, hi; };
static int failed = 0;

static void check(const char* name, void (*own)(ChainArgs, i64), ChainArgs p, i64 n, std::vector<Input> ins,
                  std::vector<long long> out_bytes) {
    std::mt19937 rng(1234);
    std::vector<std::vector<unsigned char>> in(ins.size());
    for (size_t k = 0; k < ins.size(); ++k) {
        const Input& d = ins[k];
        if (d.kind == 2) continue;
        std::uniform_real_distribution<float> u(d.lo, d.hi);
        in[k].resize(d.len * (d.kind == 1 ? 2 : 4));
        for (long long i = 0; i < d.len; ++i) {
            float v = u(rng);
            if (d.kind == 1) {
                bf16_t h = f32_to_bf16(v);
                std::memcpy(in[k].data() + 2 * i, &h, 2);
            } else {
                std::memcpy(in[k].data() + 4 * i, &v, 4);
            }
        }
        p.in_ptr[k] = (u64)(uintptr_t)in[k].data();
    }
    std::vector<std::vector<unsigned char>> want(out_bytes.size()), got(out_bytes.size());
    for (size_t k = 0; k < out_bytes.size(); ++k) {
        want[k].assign(out_bytes[k], 0xA5);
        got[k].assign(out_bytes[k], 0xA5);
    }
    ChainArgs q = p;
    for (size_t k = 0; k < out_bytes.size(); ++k) p.out_ptr[k] = (u64)(uintptr_t)want[k].data();
    for (size_t k = 0; k < out_bytes.size(); ++k) q.out_ptr[k] = (u64)(uintptr_t)got[k].data();
    launch(elementwise_chain, dim3(3), dim3(64), p, n);
    // The program's own kernel reads only shape, strides and addresses: clear the rest.
    std::memset(q.kind, 0x7f, sizeof q.kind);
    std::memset(q.code, 0x7f, sizeof q.code);
    std::memset(q.a, 0x7f, sizeof q.a);
    std::memset(q.b, 0x7f, sizeof q.b);
    std::memset(q.out_reg, 0x7f, sizeof q.out_reg);
    launch(own, dim3(3), dim3(64), q, n);
    for (size_t k = 0; k < out_bytes.size(); ++k) {
        if (want[k] != got[k]) {
            size_t i = 0;
            while (want[k][i] == got[k][i]) ++i;
            std::printf("FAIL %s: output %zu differs at byte %zu\n", name, k, i);
            failed = 1;
            return;
        }
    }
    std::printf("ok %s\n", name);
}

"#;

    #[test]
    fn specialised_kernels_match_the_interpreter_on_the_emulator() {
        let cases = cases();
        let dir = std::env::temp_dir().join(format!("adaptc-chain-emulated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("harness.cpp");
        std::fs::write(&src, harness(&cases)).unwrap();
        let exe = dir.join("harness");
        let built = Command::new("g++")
            .args(["-std=c++20", "-O1", "-pthread", "-w", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("g++ is needed for the emulated kernels (scripts/emulate-kernels.sh uses it too)");
        assert!(built.status.success(), "g++ failed:\n{}", String::from_utf8_lossy(&built.stderr));
        let run = Command::new(&exe).output().unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{out}{}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), cases.len(), "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn equal_programs_share_a_kernel_and_others_do_not() {
        let cases = cases();
        let names: Vec<String> = cases.iter().map(|c| kernel(&c.args, c.walk).name).collect();
        assert_eq!(names[0], kernel(&cases[0].args, cases[0].walk).name);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // Shape and strides are launch parameters: they change neither key nor kernel.
        let mut other = cases[2].args;
        other.shape[0] = 9;
        other.in_st[0][0] = 3;
        assert_eq!(ProgramKey::of(&other, Walk::Strided), ProgramKey::of(&cases[2].args, Walk::Strided));
        assert_eq!(kernel(&other, Walk::Strided).name, names[2]);
        // The walk does.
        let vector = Walk::Vector4 { scalars: 0b100 };
        assert_ne!(ProgramKey::of(&other, vector), ProgramKey::of(&other, Walk::Strided));
        assert_ne!(kernel(&other, vector).name, names[2]);
    }

    #[test]
    fn four_per_thread_only_over_contiguous_aligned_operands() {
        // x + f32(h) · 2 over one dim: inputs x (f32), h (bf16), 2 (scalar f32); one output.
        let base = cases().swap_remove(3).args;
        let mut a = base;
        (a.in_ptr[0], a.in_ptr[1], a.in_ptr[2], a.out_ptr[0], a.out_ptr[1]) = (256, 512, 4, 1024, 2048);
        assert_eq!(Walk::of(&a), Walk::Vector4 { scalars: 0b100 });
        assert_eq!(Walk::of(&a).threads(703), 176);
        // bf16 operands need 8-byte alignment, f32 ones 16.
        let mut b = a;
        b.in_ptr[1] = 520;
        assert_eq!(Walk::of(&b), Walk::Vector4 { scalars: 0b100 });
        b.in_ptr[0] = 264;
        assert_eq!(Walk::of(&b), Walk::Strided);
        let mut b = a;
        b.out_ptr[1] = 2052;
        assert_eq!(Walk::of(&b), Walk::Strided);
        // A strided operand, an output smaller than the chain, or more than one dim.
        let mut b = a;
        b.in_st[0][0] = 2;
        assert_eq!(Walk::of(&b), Walk::Strided);
        let mut b = a;
        b.out_st[0][0] = 0;
        assert_eq!(Walk::of(&b), Walk::Strided);
        let mut b = a;
        b.rank = 2;
        assert_eq!(Walk::of(&b), Walk::Strided);
    }
}
