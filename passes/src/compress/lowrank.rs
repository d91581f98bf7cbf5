//! The numbers of low-rank factorization: a weight `W [in, out]` split by its truncated SVD
//! into `A = U_r·√S_r [in, r]` and `B = √S_r·V_rᵀ [r, out]`, so that `x·W ≈ (x·A)·B` (PELA's
//! split: the singular values shared evenly, so neither factor dwarfs the other).
//!
//! The SVD runs in `f64` through nalgebra (see [`factorize`] for how). By Eckart–Young the
//! truncation is the best rank-`r` approximation in the Frobenius norm, with relative error
//! `sqrt(Σ_{i≥r} s_i² / Σ s_i²)`; [`Factors::rel_err`] measures the error of the factors as
//! stored (rounded to the weight's type), which adds the rounding on top.

use adaptc_ir::DataType;

use nalgebra::{DMatrix, SymmetricEigen};

use super::quant::encode_floats;
use crate::adapters::linalg::Mat;

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
///
/// The singular vectors come from the symmetric eigendecomposition of the Gram matrix of the
/// smaller side (`W·Wᵀ` when `in ≤ out`, else `Wᵀ·W`), and the other side from projecting `W`
/// onto them: `C = Uᵀ·W`, whose row norms are the singular values. This is 10–15× faster than
/// nalgebra's Golub–Kahan SVD on a `[384, 1536]` weight (0.16 s against 2.4 s, release) and as
/// good for this use: `A·B = U_r·U_rᵀ·W` is the orthogonal projection onto the leading
/// subspace whatever the conditioning, so full rank reproduces `W` to rounding, and
/// `Σ s_i² = ‖W‖²` exactly, so `energy` is measured against the true Frobenius norm. Each
/// factor takes `√s_i` of its rank-one term (`A_i = U_i·√s_i`, `B_i = C_i/√s_i`, both of norm
/// `√s_i`), so tiny singular values never blow a factor up.
pub fn factorize(w: &Mat, rule: RankRule, dtype: DataType) -> Result<Factors, String> {
    let (k, n) = (w.rows, w.cols);
    if k == 0 || n == 0 {
        return Err(format!("the weight is empty ({k}×{n})"));
    }
    if w.data.iter().any(|v| !v.is_finite()) {
        return Err("the weight has non-finite values".into());
    }
    let wm = DMatrix::from_row_slice(k, n, &w.data);
    // Eigenvectors on the smaller side: `left` means U (k×k), else V (n×n).
    let left = k <= n;
    let gram = if left { &wm * wm.transpose() } else { wm.transpose() * &wm };
    let eig = SymmetricEigen::try_new(gram, f64::EPSILON, 0)
        .ok_or_else(|| "the eigendecomposition did not converge".to_string())?;
    let basis = eig.eigenvectors;
    let proj = if left { basis.transpose() * &wm } else { &wm * &basis };
    let q = k.min(n);
    let norms: Vec<f64> = (0..q).map(|i| if left { proj.row(i).norm() } else { proj.column(i).norm() }).collect();
    let mut order: Vec<usize> = (0..q).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    let s: Vec<f64> = order.iter().map(|&i| norms[i]).collect();
    let rank = match rule {
        RankRule::Rank(r) => r.clamp(1, q),
        RankRule::Energy(e) => rank_for_energy(&s, e).min(q),
    };

    let mut a = vec![0.0; k * rank];
    let mut b = vec![0.0; rank * n];
    for (j, &i) in order[..rank].iter().enumerate() {
        let root = s[j].sqrt();
        if root == 0.0 {
            continue;
        }
        for row in 0..k {
            a[row * rank + j] = if left { basis[(row, i)] * root } else { proj[(row, i)] / root };
        }
        for col in 0..n {
            b[j * n + col] = if left { proj[(i, col)] / root } else { basis[(col, i)] * root };
        }
    }
    let (a, b) = (rounded(dtype, &a), rounded(dtype, &b));
    let to_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let product = DMatrix::from_row_slice(k, rank, &to_f64(&a)) * DMatrix::from_row_slice(rank, n, &to_f64(&b));
    let (err, norm) = ((product - &wm).norm(), wm.norm());
    let total: f64 = s.iter().map(|v| v * v).sum();
    let kept: f64 = s[..rank].iter().map(|v| v * v).sum();
    Ok(Factors {
        rank,
        a,
        b,
        rel_err: if norm > 0.0 { err / norm } else { 0.0 },
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

    #[test]
    fn rank_deficient_tall_matrices_give_finite_balanced_factors() {
        // Rank one, 5×3 (taller than wide: the eigenvectors are V's).
        let (u, v) = ([1.0, -2.0, 0.5, 3.0, 1e-3], [2.0, 0.0, -1.0]);
        let w = Mat { rows: 5, cols: 3, data: u.iter().flat_map(|a| v.iter().map(move |b| a * b)).collect() };
        let f = factorize(&w, RankRule::Rank(3), DataType::Float16).unwrap();
        assert!(f.a.iter().chain(&f.b).all(|x| x.is_finite() && x.abs() < 10.0), "{:?} {:?}", f.a, f.b);
        assert!(f.rel_err < 2e-3, "{}", f.rel_err);
        let f = factorize(&w, RankRule::Energy(0.999), DataType::Float).unwrap();
        assert_eq!(f.rank, 1);
        assert!(f.rel_err < 1e-6, "{}", f.rel_err);
        assert!(factorize(&Mat::zeros(0, 3), RankRule::Rank(1), DataType::Float).is_err());
    }
}
