//! Strided loops: one pass over an output shape that reads N operands through their own
//! strides (0 along broadcast dims, permuted for transposes, offset for slices).
//!
//! Broadcasting, Where, Expand and Transpose all reduce to this. Adjacent dims that are
//! contiguous for every operand are merged first, so the innermost loop is as long as the
//! layouts allow and runs over plain slices (where it vectorises); the output is written once,
//! in parallel chunks, with no per-element index vector.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::util::{broadcast_strides, strides, PAR_THRESHOLD};

/// Outer dims up to which [`Nest::fill`] steps rows with an odometer (more fall back to
/// computing each row's offsets).
const MAX_ODOMETER: usize = 8;

/// A loop nest over an output shape, with each operand's stride along every dim.
#[derive(Clone, Debug)]
pub struct Nest<const N: usize> {
    /// Coalesced dims, outermost first; never empty (a scalar loop is `[1]`).
    dims: Vec<usize>,
    /// `strides[d][k]`: how far operand `k` moves per step along `dims[d]`.
    strides: Vec<[usize; N]>,
    /// Offset of the first element in each operand.
    base: [usize; N],
}

impl<const N: usize> Nest<N> {
    /// `shape` is the output's; `strides[k]` gives operand `k`'s stride per output dim.
    pub fn new(shape: &[usize], strides: [&[usize]; N], base: [usize; N]) -> Nest<N> {
        let mut dims: Vec<usize> = Vec::with_capacity(shape.len());
        let mut st: Vec<[usize; N]> = Vec::with_capacity(shape.len());
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let s: [usize; N] = std::array::from_fn(|k| strides[k][d]);
            // Merge into the previous dim when every operand steps over it contiguously.
            if let (Some(pd), Some(ps)) = (dims.last_mut(), st.last_mut()) {
                if (0..N).all(|k| ps[k] == s[k] * n) {
                    *pd *= n;
                    *ps = s;
                    continue;
                }
            }
            dims.push(n);
            st.push(s);
        }
        if dims.is_empty() {
            dims.push(1);
            st.push([0; N]);
        }
        Nest { dims, strides: st, base }
    }

    /// A nest where operand `k` of shape `shapes[k]` is broadcast to `out`.
    pub fn broadcast(shapes: [&[usize]; N], out: &[usize]) -> Nest<N> {
        let st: [Vec<usize>; N] = std::array::from_fn(|k| broadcast_strides(shapes[k], out));
        Nest::new(out, std::array::from_fn(|k| st[k].as_slice()), [0; N])
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Length and per-operand strides of the innermost loop.
    fn inner(&self) -> (usize, [usize; N]) {
        (self.dims[self.dims.len() - 1], self.strides[self.strides.len() - 1])
    }

    /// Per-operand offsets of the first element of innermost row `row`.
    fn row_offsets(&self, mut row: usize) -> [usize; N] {
        let mut off = self.base;
        for d in (0..self.dims.len() - 1).rev() {
            let (n, s) = (self.dims[d], self.strides[d]);
            let i = row % n;
            row /= n;
            for k in 0..N {
                off[k] += i * s[k];
            }
        }
        off
    }

    /// Fills a new vector of `numel()` outputs. `run(offsets, inner_strides, out)` writes one
    /// contiguous stretch of the output, reading operand `k` from `offsets[k]` onwards with
    /// step `inner_strides[k]`; stretches never cross an innermost row.
    pub fn fill<O: Send>(&self, run: impl Fn([usize; N], [usize; N], &mut [MaybeUninit<O>]) + Sync) -> Vec<O> {
        let n = self.numel();
        let (len, inner) = self.inner();
        let mut out: Vec<O> = Vec::with_capacity(n);
        let outer = self.dims.len() - 1;
        let chunk = |start: usize, dst: &mut [MaybeUninit<O>]| {
            if dst.is_empty() {
                return;
            }
            let end = start + dst.len();
            let (row, mut col) = (start / len, start % len);
            // The outer index of `row` and its offsets, then advanced row by row like an
            // odometer: no divisions per row (rows can be as short as a head dim of 32).
            let mut idx = [0usize; MAX_ODOMETER];
            let mut odometer = outer <= MAX_ODOMETER;
            if odometer {
                let mut r = row;
                for d in (0..outer).rev() {
                    idx[d] = r % self.dims[d];
                    r /= self.dims[d];
                }
            }
            let mut row_off = self.row_offsets(row);
            let mut pos = start;
            let mut next_row = row;
            while pos < end {
                let seg = (len - col).min(end - pos);
                let mut off = row_off;
                for k in 0..N {
                    off[k] += col * inner[k];
                }
                run(off, inner, &mut dst[pos - start..pos - start + seg]);
                pos += seg;
                col = 0;
                next_row += 1;
                if pos >= end {
                    break;
                }
                if !odometer {
                    row_off = self.row_offsets(next_row);
                    continue;
                }
                let mut d = outer;
                loop {
                    if d == 0 {
                        // Past the last row: only reachable at the very end.
                        odometer = false;
                        break;
                    }
                    d -= 1;
                    idx[d] += 1;
                    let s = self.strides[d];
                    for k in 0..N {
                        row_off[k] += s[k];
                    }
                    if idx[d] < self.dims[d] {
                        break;
                    }
                    idx[d] = 0;
                    for k in 0..N {
                        row_off[k] -= self.dims[d] * s[k];
                    }
                }
            }
        };
        let spare = &mut out.spare_capacity_mut()[..n];
        if n >= PAR_THRESHOLD {
            let size = PAR_THRESHOLD / 2;
            spare.par_chunks_mut(size).enumerate().for_each(|(c, dst)| chunk(c * size, dst));
        } else {
            chunk(0, spare);
        }
        // SAFETY: `chunk` covers every position in [0, n) exactly once and `run` writes every
        // element of the stretch it is given (each caller's loop runs over the whole `out`).
        unsafe { out.set_len(n) };
        out
    }
}

/// Elementwise `f(a, b)` over `out_shape`, both operands broadcast to it.
pub fn map2<A: Copy + Sync, B: Copy + Sync, O: Send>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    out_shape: &[usize],
    f: impl Fn(A, B) -> O + Sync,
) -> Vec<O> {
    let nest = Nest::broadcast([ash, bsh], out_shape);
    nest.fill(|[oa, ob], [sa, sb], out| {
        let n = out.len();
        match (sa, sb) {
            (1, 1) => {
                for ((o, &x), &y) in out.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                    o.write(f(x, y));
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (o, &x) in out.iter_mut().zip(&a[oa..oa + n]) {
                    o.write(f(x, y));
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (o, &y) in out.iter_mut().zip(&b[ob..ob + n]) {
                    o.write(f(x, y));
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    o.write(f(a[oa + j * sa], b[ob + j * sb]));
                }
            }
        }
    })
}

/// `f(c, x, y)` over `out_shape`, all three broadcast to it (Where).
pub fn map3<C: Copy + Sync, X: Sync, Y: Sync, O: Send>(
    (c, x, y): (&[C], &[X], &[Y]),
    shapes: [&[usize]; 3],
    out_shape: &[usize],
    f: impl Fn(C, &X, &Y) -> O + Sync,
) -> Vec<O> {
    let nest = Nest::broadcast(shapes, out_shape);
    nest.fill(|[oc, ox, oy], [sc, sx, sy], out| {
        let n = out.len();
        match (sc, sx, sy) {
            // A mask over one operand with a scalar other (masked fill, NaN guards).
            (1, 0, 1) => {
                let x = &x[ox];
                for ((o, &c), y) in out.iter_mut().zip(&c[oc..oc + n]).zip(&y[oy..oy + n]) {
                    o.write(f(c, x, y));
                }
            }
            (1, 1, 0) => {
                let y = &y[oy];
                for ((o, &c), x) in out.iter_mut().zip(&c[oc..oc + n]).zip(&x[ox..ox + n]) {
                    o.write(f(c, x, y));
                }
            }
            (1, 1, 1) => {
                for (((o, &c), x), y) in out.iter_mut().zip(&c[oc..oc + n]).zip(&x[ox..ox + n]).zip(&y[oy..oy + n]) {
                    o.write(f(c, x, y));
                }
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    o.write(f(c[oc + j * sc], &x[ox + j * sx], &y[oy + j * sy]));
                }
            }
        }
    })
}

/// Copies `src` read through `strides` from `base` into a new row-major array of `shape`
/// (Transpose, Expand, strided Slice).
pub fn gather<T: Clone + Send + Sync>(src: &[T], shape: &[usize], st: &[usize], base: usize) -> Vec<T> {
    let nest = Nest::new(shape, [st], [base]);
    nest.fill(|[o], [s], out| {
        let n = out.len();
        if s == 1 {
            for (d, x) in out.iter_mut().zip(&src[o..o + n]) {
                d.write(x.clone());
            }
        } else {
            for (j, d) in out.iter_mut().enumerate() {
                d.write(src[o + j * s].clone());
            }
        }
    })
}

/// `x` permuted by `perm` (already validated), as a new row-major array.
pub fn permute<T: Clone + Send + Sync>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    gather(x, &out_shape, &out_st, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `permute` against index arithmetic done the slow way, on shapes whose parallel chunks
    /// start mid-row (the odometer restarts there) and with more outer dims than the odometer
    /// takes (the per-row fallback).
    #[test]
    fn permute_matches_naive_indexing() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[16, 37, 12, 29], &[0, 2, 1, 3]),
            (&[96, 41, 33], &[0, 2, 1]),
            (&[3, 5, 7], &[2, 0, 1]),
            (&[2, 2, 3, 2, 2, 3, 2, 2, 3, 2, 2], &[10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            let x: Vec<u32> = (0..n as u32).collect();
            let got = permute(&x, shape, perm);
            let st = strides(shape);
            let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let want: Vec<u32> = (0..n)
                .map(|mut i| {
                    let mut src = 0;
                    for d in (0..out_shape.len()).rev() {
                        src += (i % out_shape[d]) * st[perm[d]];
                        i /= out_shape[d];
                    }
                    x[src]
                })
                .collect();
            assert_eq!(got, want, "{shape:?} {perm:?}");
        }
    }
}
