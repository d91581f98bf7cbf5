//! GEMM benchmark: the `gemm` crate (what `ops::matmul::gemm_into` calls) against
//! `matrixmultiply`, on the products one MiniLM LoRA training step runs (batch 16 × 128 tokens
//! = 2048 rows, hidden 384, FFN 1536, rank 8, 12 heads of 32), at 1 and 2 threads.
//!
//!   cargo bench -p adaptc-runtime --bench gemm            # prints a markdown table
//!
//! Each product is run until 0.5 s have passed; the best time over those runs is reported as
//! GFLOP/s (2·m·n·k per product). Run it on a quiet machine.

use std::time::{Duration, Instant};

use adaptc_runtime::ops::matmul::{gemm_with, Mat, View};

/// One product: name, m, n, k, how many independent copies (attention heads), and whether B is
/// read transposed (the gradient products).
struct Case {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    bt: bool,
}

const CASES: &[Case] = &[
    Case { name: "attention proj x·W (2048×384·384×384)", m: 2048, n: 384, k: 384, batch: 1, bt: false },
    Case { name: "FFN up (2048×384·384×1536)", m: 2048, n: 1536, k: 384, batch: 1, bt: false },
    Case { name: "FFN down (2048×1536·1536×384)", m: 2048, n: 384, k: 1536, batch: 1, bt: false },
    Case { name: "dX of FFN up (2048×1536·(384×1536)ᵀ)", m: 2048, n: 384, k: 1536, batch: 1, bt: true },
    Case { name: "LoRA A (2048×384·384×8)", m: 2048, n: 8, k: 384, batch: 1, bt: false },
    Case { name: "LoRA B (2048×8·8×384)", m: 2048, n: 384, k: 8, batch: 1, bt: false },
    Case { name: "scores Q·Kᵀ (192 × 128×32·32×128)", m: 128, n: 128, k: 32, batch: 192, bt: true },
    Case { name: "context P·V (192 × 128×128·128×32)", m: 128, n: 32, k: 128, batch: 192, bt: false },
    Case { name: "dP = dC·Vᵀ (192 × 128×32·(128×32)ᵀ)", m: 128, n: 128, k: 32, batch: 192, bt: true },
];

fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Best seconds per call of `f` over 0.5 s of calls.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut best) = (Instant::now(), f64::INFINITY);
    while start.elapsed() < Duration::from_millis(500) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn run_gemm_crate(c: &Case, a: &[f32], b: &[f32], out: &mut [f32]) {
    use rayon::prelude::*;
    let (m, n, k) = (c.m, c.n, c.k);
    let bv = if c.bt { View { off: 0, rs: 1, cs: k } } else { View { off: 0, rs: n, cs: 1 } };
    let one = |p: usize, o: &mut [f32], threaded: bool| {
        // SAFETY: MaybeUninit<f32> has f32's layout; gemm_with writes only initialised values.
        let o = unsafe { &mut *(o as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
        let am = Mat { data: a, view: View { off: p * m * k, rs: k, cs: 1 } };
        let bm = Mat { data: b, view: View { off: p * k * n, ..bv } };
        gemm_with([m, n, k], am, bm, o, threaded);
    };
    if c.batch > 1 {
        out.par_chunks_mut(m * n).enumerate().for_each(|(p, o)| one(p, o, false));
    } else {
        one(0, out, true);
    }
}

fn run_matrixmultiply(c: &Case, a: &[f32], b: &[f32], out: &mut [f32]) {
    use rayon::prelude::*;
    let (m, n, k) = (c.m, c.n, c.k);
    let (rsb, csb) = if c.bt { (1, k as isize) } else { (n as isize, 1) };
    let one = |p: usize, o: &mut [f32]| {
        // SAFETY: the pointers and strides describe the m×k, k×n and m×n blocks of copy `p`,
        // which lie inside `a`, `b` and `o`.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr().add(p * m * k),
                k as isize,
                1,
                b.as_ptr().add(p * k * n),
                rsb,
                csb,
                0.0,
                o.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    };
    if c.batch > 1 {
        out.par_chunks_mut(m * n).enumerate().for_each(|(p, o)| one(p, o));
    } else {
        one(0, out);
    }
}

/// Runs the table rows for one thread count (matrixmultiply reads its thread count from
/// `MATMUL_NUM_THREADS` once per process, so each count gets its own process).
fn rows(threads: usize) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    pool.install(|| {
        for c in CASES {
            let a = fill(c.batch * c.m * c.k, 1);
            let b = fill(c.batch * c.k * c.n, 2);
            let mut out = vec![0f32; c.batch * c.m * c.n];
            let flops = 2.0 * (c.m * c.n * c.k * c.batch) as f64;
            let g = best(|| run_gemm_crate(c, &a, &b, &mut out));
            let reference = out.clone();
            let mm = best(|| run_matrixmultiply(c, &a, &b, &mut out));
            let diff = reference.iter().zip(&out).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-2, "{}: the two libraries disagree by {diff}", c.name);
            println!("| {} | {threads} | {:.1} | {:.1} | {:.2} |", c.name, flops / g / 1e9, flops / mm / 1e9, mm / g);
        }
    });
}

fn main() {
    if let Ok(t) = std::env::var("GEMM_BENCH_THREADS") {
        rows(t.parse().expect("GEMM_BENCH_THREADS is a number"));
        return;
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("# GEMM: gemm crate vs matrixmultiply (f32)\n");
    println!("- machine: {machine}, {} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "- command: `cargo bench -p adaptc-runtime --bench gemm`; best of ≥0.5 s of calls; GFLOP/s = 2mnk·batch / s\n"
    );
    println!("| product | threads | gemm GFLOP/s | matrixmultiply GFLOP/s | gemm / matrixmultiply |");
    println!("|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("own path");
    for threads in [1usize, 2] {
        let status = std::process::Command::new(&exe)
            .env("GEMM_BENCH_THREADS", threads.to_string())
            .env("MATMUL_NUM_THREADS", threads.to_string())
            .status()
            .expect("run the benchmark for one thread count");
        assert!(status.success(), "the {threads}-thread run failed");
    }
}
