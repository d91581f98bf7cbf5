//! The numbers of low-rank factorization: a weight `W [in, out]` split by its truncated SVD
//! into `A = U_r·√S_r [in, r]` and `B = √S_r·V_rᵀ [r, out]`, so that `x·W ≈ (x·A)·B` (PELA's
//! split: the singular values shared evenly, so neither factor dwarfs the other).
//!
//! The SVD runs in `f64` ([`crate::adapters::linalg::svd`]). By Eckart–Young the truncation
//! is the best rank-`r` approximation in the Frobenius norm, with relative error
//! `sqrt(Σ_{i≥r} s_i² / Σ s_i²)`; [`Factors::rel_err`] measures the error of the factors as
//! stored (rounded to the weight's type), which adds the rounding on top.

use adaptc_ir::DataType;

use super::quant::encode_floats;
use crate::adapters::linalg::{svd, Mat};

/// How the rank of a layer is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    /// This rank (at most `min(in, out)`: a larger one is full rank).
    Rank(usize),
    /// The smallest rank keeping this fraction of `Σ s_i²` (the squared Frobenius norm).
    Energy(f64),
}

/// The smallest `r ≥ 1` whose leading singular values hold `energy` of `Σ s_i²` (`s`
/// descending). A relative slack of 1e-12 absorbs rounding at exact boundaries.
pub fn rank_for_energy(s: &[f64], energy: f64) -> usize {
    let total: f64 = s.iter().map(|v| v * v).sum();
    let goal = energy * total * (1.0 - 1e-12);
    let mut kept = 0.0;
    for (i, v) in s.iter().enumerate() {
        kept += v * v;
        if kept >= goal {
            return i + 1;
        }
    }
    s.len().max(1)
}

/// A weight's factors, ready to store.
#[derive(Clone, Debug)]
pub struct Factors {
    pub rank: usize,
    /// `A [in, rank]`, row-major, rounded to the weight's type (held as `f32`).
    pub a: Vec<f32>,
    /// `B [rank, out]`, row-major, rounded likewise.
    pub b: Vec<f32>,
    /// `‖W − A·B‖_F / ‖W‖_F` with the stored factors (0 for a zero `W`).
    pub rel_err: f64,
    /// The fraction of `Σ s_i²` the kept singular values hold.
    pub energy: f64,
}

/// Rounds `v` to `dtype` (float32, float16 or bfloat16), as it will be stored.
fn rounded(dtype: DataType, v: &[f64]) -> Vec<f32> {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    match dtype {
        DataType::Float16 | DataType::BFloat16 => {
            let bytes = encode_floats(dtype, &f);
            bytes
                .chunks_exact(2)
                .map(|c| {
                    if dtype == DataType::Float16 {
                        half::f16::from_le_bytes([c[0], c[1]]).to_f32()
                    } else {
                        half::bf16::from_le_bytes([c[0], c[1]]).to_f32()
                    }
                })
                .collect()
        }
        _ => f,
    }
}

/// Factorizes `w` (`[in, out]`) at the rank `rule` gives, with factors stored as `dtype`.
pub fn factorize(w: &Mat, rule: RankRule, dtype: DataType) -> Result<Factors, String> {
    let d = svd(w)?;
    let full = d.s.len();
    let rank = match rule {
        RankRule::Rank(r) => r.clamp(1, full.max(1)),
        RankRule::Energy(e) => rank_for_energy(&d.s, e),
    }
    .min(full);
    let (k, n) = (w.rows, w.cols);
    let mut a = vec![0.0; k * rank];
    let mut b = vec![0.0; rank * n];
    for j in 0..rank {
        let root = d.s[j].max(0.0).sqrt();
        for i in 0..k {
            a[i * rank + j] = d.u.at(i, j) * root;
        }
        for c in 0..n {
            b[j * n + c] = root * d.vt.at(j, c);
        }
    }
    let (a, b) = (rounded(dtype, &a), rounded(dtype, &b));
    let total: f64 = d.s.iter().map(|v| v * v).sum();
    let kept: f64 = d.s[..rank].iter().map(|v| v * v).sum();
    let product = Mat::from_f32(k, rank, &a).matmul(&Mat::from_f32(rank, n, &b));
    let err: f64 = product.data.iter().zip(&w.data).map(|(p, x)| (p - x) * (p - x)).sum();
    let norm: f64 = w.data.iter().map(|x| x * x).sum();
    Ok(Factors {
        rank,
        a,
        b,
        rel_err: if norm > 0.0 { (err / norm).sqrt() } else { 0.0 },
        energy: if total > 0.0 { kept / total } else { 1.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_picks_the_smallest_rank() {
        let s = [4.0, 3.0, 2.0, 1.0]; // energies 16, 9, 4, 1 of 30
        assert_eq!(rank_for_energy(&s, 16.0 / 30.0), 1);
        assert_eq!(rank_for_energy(&s, 0.54), 2);
        assert_eq!(rank_for_energy(&s, 25.0 / 30.0), 2);
        assert_eq!(rank_for_energy(&s, 0.9), 3);
        assert_eq!(rank_for_energy(&s, 1.0), 4);
        assert_eq!(rank_for_energy(&[0.0, 0.0], 0.5), 1);
    }

    #[test]
    fn full_rank_reconstructs_and_truncation_leaves_the_tail() {
        // diag(3, 2, 1) embedded in a 3×4 matrix.
        let mut w = Mat::zeros(3, 4);
        for (i, s) in [3.0, 2.0, 1.0].into_iter().enumerate() {
            w.data[i * 4 + i] = s;
        }
        let f = factorize(&w, RankRule::Rank(9), DataType::Float).unwrap();
        assert_eq!(f.rank, 3);
        assert!(f.rel_err < 1e-7, "{}", f.rel_err);
        let f = factorize(&w, RankRule::Rank(2), DataType::Float).unwrap();
        assert!((f.rel_err - (1.0f64 / 14.0).sqrt()).abs() < 1e-7, "{}", f.rel_err);
        assert_eq!((f.a.len(), f.b.len()), (6, 8));
    }
}
