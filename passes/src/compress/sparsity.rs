//! The numbers of magnitude pruning: which weights of a matrix become zero.
//!
//! Both patterns rank weights by `|w|` and break ties by position (the earlier element counts
//! as larger, so it is kept), so the result depends only on the values. A matrix is given as
//! its stored values plus its layout, because `N:M` groups run along the input-feature
//! (reduction) axis, which is the stored rows of `[in,out]` and the stored columns of
//! `[out,in]`.

use std::fmt;

/// How a layer's weights are thinned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// The `sparsity` fraction of the whole matrix with the smallest `|w|`.
    Unstructured { sparsity: f64 },
    /// In every group of `m` consecutive input features of one output channel, keep the `n`
    /// largest `|w|` (NVIDIA's 2:4 structured sparsity is `n=2, m=4`).
    NOfM { n: usize, m: usize },
}

impl Pattern {
    /// Parses `N:M` (`1 ≤ N < M`); `None` for text that is not of that shape, an error for
    /// numbers that do not make a pattern.
    pub fn parse_n_of_m(text: &str) -> Option<Result<Pattern, String>> {
        let (n, m) = text.split_once(':')?;
        let (Ok(n), Ok(m)) = (n.trim().parse::<usize>(), m.trim().parse::<usize>()) else {
            return Some(Err(format!("`{text}` is not N:M with two non-negative integers (e.g. 2:4)")));
        };
        if n == 0 || n >= m {
            return Some(Err(format!("`{text}` needs 1 ≤ N < M (keep N of every M weights), e.g. 2:4 or 4:8")));
        }
        Some(Ok(Pattern::NOfM { n, m }))
    }

    /// The fraction of zeros the pattern makes.
    pub fn sparsity(self) -> f64 {
        match self {
            Pattern::Unstructured { sparsity } => sparsity,
            Pattern::NOfM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured { .. } => f.write_str("unstructured"),
            Pattern::NOfM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// `floor(sparsity · numel)`, robust to the decimal rounding of `sparsity` (`0.29 · 100` is
/// 28.999… in binary and must give 29).
pub fn unstructured_count(sparsity: f64, numel: usize) -> usize {
    let exact = sparsity * numel as f64;
    let count = (exact * (1.0 + 1e-12)).floor();
    (count.max(0.0) as usize).min(numel)
}

/// Zeroes the `count` weights of smallest `|w|`. Ties go by position in PyTorch's `[out, in]`
/// orientation, earlier first, whatever the stored layout (`in_out`: stored `[in, out]` with
/// `in_features` rows), so the choice does not depend on how the exporter stored the weight.
/// Returns how many values changed (weights already zero do not count).
pub fn prune_unstructured(values: &mut [f32], count: usize, in_features: usize, in_out: bool) -> usize {
    let count = count.min(values.len());
    if count == 0 {
        return 0;
    }
    let out_features = values.len() / in_features.max(1);
    // Position of stored element `i` in the `[out, in]` orientation.
    let position = |i: usize| if in_out { (i % out_features) * in_features + i / out_features } else { i };
    let weaker =
        |a: &usize, b: &usize| values[*a].abs().total_cmp(&values[*b].abs()).then(position(*a).cmp(&position(*b)));
    let mut order: Vec<usize> = (0..values.len()).collect();
    if count < order.len() {
        order.select_nth_unstable_by(count - 1, weaker);
    }
    let mut changed = 0;
    for &i in &order[..count] {
        changed += usize::from(values[i] != 0.0);
        values[i] = 0.0;
    }
    changed
}

/// Keeps the `n` largest `|w|` of every group of `m` consecutive input features of each output
/// channel and zeroes the rest. `values` is the stored `[in_features, out_features]` matrix
/// when `in_out`, else `[out_features, in_features]`. Returns how many values changed (none
/// when `in_features` is not a multiple of `m`: the caller refuses such layers first).
pub fn prune_n_of_m(values: &mut [f32], in_features: usize, in_out: bool, n: usize, m: usize) -> usize {
    // `checked_rem` rather than `is_multiple_of`, which is newer than the workspace's rust-version.
    if in_features == 0 || in_features.checked_rem(m) != Some(0) {
        return 0;
    }
    let out_features = values.len() / in_features;
    let index = |channel: usize, feature: usize| {
        if in_out {
            feature * out_features + channel
        } else {
            channel * in_features + feature
        }
    };
    let mut group: Vec<usize> = Vec::with_capacity(m);
    let mut changed = 0;
    for channel in 0..out_features {
        for start in (0..in_features).step_by(m) {
            group.clear();
            group.extend((start..start + m).map(|f| index(channel, f)));
            // Strongest first; among equals, the earlier feature.
            group.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
            for &i in &group[n.min(m)..] {
                changed += usize::from(values[i] != 0.0);
                values[i] = 0.0;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_decimal_rounding() {
        assert_eq!(unstructured_count(0.29, 100), 29);
        assert_eq!(unstructured_count(0.5, 7), 3);
        assert_eq!(unstructured_count(0.0, 7), 0);
        assert_eq!(unstructured_count(0.999, 10), 9);
    }

    #[test]
    fn unstructured_zeroes_the_smallest_with_ties_by_position() {
        // [out=1, in=6]: |−0.1| = |0.1|, the earlier one (index 1) goes first.
        let mut v = vec![0.5, -0.1, 0.3, 0.1, -0.2, 0.9];
        assert_eq!(prune_unstructured(&mut v, 1, 6, false), 1);
        assert_eq!(v, vec![0.5, 0.0, 0.3, 0.1, -0.2, 0.9]);
        assert_eq!(prune_unstructured(&mut v, 3, 6, false), 2);
        assert_eq!(v, vec![0.5, 0.0, 0.3, 0.0, 0.0, 0.9]);
        // The same weight as [out=2, in=2] stored [in, out] = [[0.1, 0.1], [0.1, 0.1]]: position
        // (out 0, in 0) is stored 0, (out 0, in 1) is stored 2.
        let mut t = vec![0.1, 0.1, 0.1, 0.1];
        prune_unstructured(&mut t, 2, 2, true);
        assert_eq!(t, vec![0.0, 0.1, 0.0, 0.1]);
    }

    #[test]
    fn n_of_m_groups_run_along_the_input_features() {
        // [in=4, out=2] stored as in_out: channel 0 is column 0.
        let mut v = vec![1.0, -8.0, 4.0, 7.0, -3.0, 6.0, 2.0, 5.0];
        prune_n_of_m(&mut v, 4, true, 2, 4);
        assert_eq!(v, vec![0.0, -8.0, 4.0, 7.0, -3.0, 0.0, 0.0, 0.0]);
        // The same matrix stored [out=2, in=4].
        let mut t = vec![1.0, 4.0, -3.0, 2.0, -8.0, 7.0, 6.0, 5.0];
        prune_n_of_m(&mut t, 4, false, 2, 4);
        assert_eq!(t, vec![0.0, 4.0, -3.0, 0.0, -8.0, 7.0, 0.0, 0.0]);
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(Pattern::parse_n_of_m("2:4"), Some(Ok(Pattern::NOfM { n: 2, m: 4 })));
        assert!(Pattern::parse_n_of_m("unstructured").is_none());
        assert!(Pattern::parse_n_of_m("3:2").unwrap().unwrap_err().contains("1 ≤ N < M"));
        assert!(Pattern::parse_n_of_m("a:4").unwrap().unwrap_err().contains("not N:M"));
        assert_eq!(Pattern::NOfM { n: 2, m: 4 }.sparsity(), 0.5);
    }
}
