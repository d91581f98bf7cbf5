//! Shared pieces of the gradient kernels: reading shape inputs, and the two broadcasting moves
//! that backward passes are made of — summing a tensor down to a broadcast operand's shape,
//! and broadcasting a reduced tensor back up.
//!
//! Both work on a *plan*: the dims of the large tensor with size-1 dims dropped and adjacent
//! dims of the same kind merged, each marked kept (present in the small tensor) or not. A
//! `[B, S, H]` → `[H]` sum is the plan `[(B·S, summed), (H, kept)]`, which runs as row
//! additions over contiguous memory.

use rayon::prelude::*;

use super::real::Real;
use crate::error::{kbail, KResult};
use crate::ops::util::{checked_numel, ints, to_shape, PAR_THRESHOLD};
use crate::tensor::Tensor;

/// A shape given as a 1-D integer tensor (the output of a `Shape` op).
pub fn shape_input(t: &Tensor, what: &str) -> KResult<Vec<usize>> {
    if t.rank() != 1 {
        kbail!("{what} must be a 1-D integer tensor, got shape {:?}", t.shape());
    }
    let dims = match ints(t) {
        Ok(d) => d,
        Err(_) => kbail!("{what} must be an integer tensor, got {}", t.dtype()),
    };
    let shape = to_shape(&dims)?;
    checked_numel(&shape)?;
    Ok(shape)
}

/// One dim of a plan: its size, and whether the small tensor has it (else it is summed over
/// or broadcast along).
pub type PlanDim = (usize, bool);

/// The plan for `big` against per-dim "kept" flags: size-1 dims dropped, runs merged.
pub fn plan(big: &[usize], kept: &[bool]) -> Vec<PlanDim> {
    let mut out: Vec<PlanDim> = Vec::with_capacity(big.len());
    for (&d, &k) in big.iter().zip(kept) {
        if d == 1 {
            continue;
        }
        match out.last_mut() {
            Some((n, lk)) if *lk == k => *n *= d,
            _ => out.push((d, k)),
        }
    }
    out
}

/// The plan that sums `from` down to `to` under numpy broadcasting (leading extra dims and
/// dims where `to` is 1 are summed), or an error when `to` does not broadcast to `from`.
pub fn sum_plan(from: &[usize], to: &[usize]) -> KResult<Vec<PlanDim>> {
    let rank = from.len().max(to.len());
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
    let (f, t) = (pad(from), pad(to));
    let mut kept = Vec::with_capacity(rank);
    for d in 0..rank {
        if t[d] == f[d] {
            kept.push(true);
        } else if t[d] == 1 {
            kept.push(false);
        } else {
            kbail!("shape {to:?} does not broadcast to {from:?}");
        }
    }
    Ok(plan(&f, &kept))
}

/// Adds `src` (laid out as `dims`) into `out` (the kept dims), sequentially.
fn sum_into<T: Real>(src: &[T], dims: &[PlanDim], out: &mut [T]) {
    match dims {
        [] => out[0] += src[0],
        [(_, true)] => out.iter_mut().zip(src).for_each(|(o, &s)| *o += s),
        [(_, false)] => out[0] += super::real::sum(src),
        [(n, kept), rest @ ..] => {
            let sstride = src.len() / n;
            if *kept {
                let ostride = out.len() / n;
                for (s, o) in src.chunks_exact(sstride).zip(out.chunks_exact_mut(ostride)) {
                    sum_into(s, rest, o);
                }
            } else {
                for s in src.chunks_exact(sstride) {
                    sum_into(s, rest, out);
                }
            }
        }
    }
}

/// `src` (laid out as `dims`) summed over its non-kept dims: `out_len` values. Large inputs are
/// split across threads: by output rows when the first dim is kept, else by input rows into
/// per-thread partial sums (at most as many partial values as there are inputs).
pub fn sum_to<T: Real>(src: &[T], dims: &[PlanDim], out_len: usize) -> Vec<T> {
    let mut out = vec![T::zero(); out_len];
    if src.is_empty() || out_len == 0 {
        return out;
    }
    let Some(&(n, kept)) = dims.first() else {
        out[0] = src[0];
        return out;
    };
    if src.len() < PAR_THRESHOLD || n < 2 {
        sum_into(src, dims, &mut out);
        return out;
    }
    let sstride = src.len() / n;
    let rest = &dims[1..];
    if kept {
        let ostride = out_len / n;
        out.par_chunks_mut(ostride).zip(src.par_chunks(sstride)).for_each(|(o, s)| sum_into(s, rest, o));
        return out;
    }
    let parts = (rayon::current_num_threads() * 2).min(n).min((src.len() / out_len).max(1));
    let per = n.div_ceil(parts);
    let partials: Vec<Vec<T>> = src
        .par_chunks(per * sstride)
        .map(|rows| {
            let mut acc = vec![T::zero(); out_len];
            for s in rows.chunks_exact(sstride) {
                sum_into(s, rest, &mut acc);
            }
            acc
        })
        .collect();
    for p in partials {
        out.iter_mut().zip(&p).for_each(|(o, &v)| *o += v);
    }
    out
}

/// Writes `src` (the kept dims) broadcast over `dims` into `out`, sequentially.
fn fill<T: Copy>(src: &[T], dims: &[PlanDim], out: &mut [T]) {
    match dims {
        [] => out[0] = src[0],
        [(_, true)] => out.copy_from_slice(src),
        [(_, false)] => out.fill(src[0]),
        [(n, kept), rest @ ..] => {
            let ostride = out.len() / n;
            let sstride = if *kept { src.len() / n } else { src.len() };
            for (i, o) in out.chunks_exact_mut(ostride).enumerate() {
                let s = if *kept { &src[i * sstride..(i + 1) * sstride] } else { src };
                fill(s, rest, o);
            }
        }
    }
}

/// `src` (the kept dims of `dims`) broadcast to all of `dims`: `out_len` values.
pub fn broadcast_to<T: Copy + Default + Send + Sync>(src: &[T], dims: &[PlanDim], out_len: usize) -> Vec<T> {
    let mut out = vec![T::default(); out_len];
    if out_len == 0 {
        return out;
    }
    let Some(&(n, kept)) = dims.first() else {
        out[0] = src[0];
        return out;
    };
    if out_len < PAR_THRESHOLD || n < 2 {
        fill(src, dims, &mut out);
        return out;
    }
    let ostride = out_len / n;
    let sstride = if kept { src.len() / n } else { src.len() };
    let rest = &dims[1..];
    out.par_chunks_mut(ostride).enumerate().for_each(|(i, o)| {
        let s = if kept { &src[i * sstride..(i + 1) * sstride] } else { src };
        fill(s, rest, o);
    });
    out
}

/// Row chunks for kernels that split `rows` rows of work across threads: `(rows per chunk,
/// chunk count)`, one chunk when the work (`rows · row_len` elements) is small.
pub fn row_chunks(rows: usize, row_len: usize) -> (usize, usize) {
    if rows == 0 {
        return (1, 0);
    }
    let parts =
        if rows.saturating_mul(row_len) < PAR_THRESHOLD { 1 } else { (rayon::current_num_threads() * 4).min(rows) };
    let per = rows.div_ceil(parts);
    (per, rows.div_ceil(per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_merge_runs_and_drop_ones() {
        assert_eq!(sum_plan(&[2, 3, 4], &[4]).unwrap(), vec![(6, false), (4, true)]);
        assert_eq!(sum_plan(&[2, 3, 4], &[2, 1, 4]).unwrap(), vec![(2, true), (3, false), (4, true)]);
        assert_eq!(sum_plan(&[2, 1, 4], &[1, 1, 4]).unwrap(), vec![(2, false), (4, true)]);
        assert!(sum_plan(&[2, 3], &[3, 3]).is_err());
        assert!(sum_plan(&[3], &[2, 3]).is_err());
    }

    #[test]
    fn sums_and_broadcasts_agree_with_loops() {
        // [2, 3, 4] summed over dim 1 (parallel path too, with a large leading dim).
        for &lead in &[2usize, 9000] {
            let src: Vec<f64> = (0..lead * 12).map(|k| (k % 17) as f64).collect();
            let dims = sum_plan(&[lead, 3, 4], &[lead, 1, 4]).unwrap();
            let got = sum_to(&src, &dims, lead * 4);
            for a in 0..lead {
                for c in 0..4 {
                    let want: f64 = (0..3).map(|b| src[a * 12 + b * 4 + c]).sum();
                    assert_eq!(got[a * 4 + c], want);
                }
            }
            let back = broadcast_to(&got, &dims, lead * 12);
            for a in 0..lead {
                for b in 0..3 {
                    for c in 0..4 {
                        assert_eq!(back[a * 12 + b * 4 + c], got[a * 4 + c]);
                    }
                }
            }
            // Leading dims summed (partial sums across threads).
            let dims = sum_plan(&[lead, 3, 4], &[4]).unwrap();
            let got = sum_to(&src, &dims, 4);
            for c in 0..4 {
                let want: f64 = (0..lead * 3).map(|r| src[r * 4 + c]).sum();
                assert_eq!(got[c], want);
            }
        }
    }
}
