//! Magnitude scores and the choice of what to remove: a channel (or head) scores the norms of
//! the weights that read or write it, and the lowest scores go.

use adaptc_ir::Tensor;

/// Squared L2 norms of the slices of `t` along `axis`: for a `[rows, cols]` weight, `axis = 1`
/// gives one value per column, `axis = 0` one per row. Any float storage type is read.
pub fn sq_norms(t: &Tensor, axis: usize) -> Result<Vec<f64>, String> {
    let dims = t.dims();
    if axis >= dims.len() {
        return Err(format!("`{}` {dims:?} has no axis {axis}", t.name));
    }
    let values = t.to_f32_lossy().map_err(|e| e.to_string())?;
    let len = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    let mut out = vec![0.0; len];
    for (i, v) in values.iter().enumerate() {
        let v = f64::from(*v);
        if !v.is_finite() {
            return Err(format!("`{}` has a non-finite value at element {i}", t.name));
        }
        out[(i / inner) % len] += v * v;
    }
    Ok(out)
}

/// One score per channel: the product over weights of each channel's L2 norm (FFN: producers'
/// output channels and the consumer's input channels).
pub fn channel_scores(sq: &[Vec<f64>]) -> Vec<f64> {
    let width = sq.first().map_or(0, Vec::len);
    (0..width).map(|j| sq.iter().map(|n| n[j].sqrt()).product()).collect()
}

/// One score per block of `block` channels: the sum over weights of each block's L2 norm
/// (attention heads: the head's q/k/v output channels and o input channels).
pub fn block_scores(sq: &[Vec<f64>], block: usize) -> Vec<f64> {
    let width = sq.first().map_or(0, Vec::len);
    let blocks = width.checked_div(block).unwrap_or(0);
    (0..blocks).map(|h| sq.iter().map(|n| n[h * block..(h + 1) * block].iter().sum::<f64>().sqrt()).sum()).collect()
}

/// Splits `0..scores.len()` into the kept indices (ascending) and the `remove` lowest-scoring
/// ones (ascending; ties remove the lower index first).
pub fn choose(scores: &[f64], remove: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut removed = order[..remove.min(order.len())].to_vec();
    removed.sort_unstable();
    let kept = (0..scores.len()).filter(|i| removed.binary_search(i).is_err()).collect();
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_along_either_axis() {
        let t = Tensor::from_f32("w", vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(sq_norms(&t, 1).unwrap(), vec![17.0, 29.0, 45.0]);
        assert_eq!(sq_norms(&t, 0).unwrap(), vec![14.0, 77.0]);
        assert!(sq_norms(&t, 2).is_err());
    }

    #[test]
    fn lowest_scores_go() {
        let (kept, removed) = choose(&[3.0, 1.0, 2.0, 1.0], 2);
        assert_eq!((kept, removed), (vec![0, 2], vec![1, 3]));
        assert_eq!(channel_scores(&[vec![4.0, 1.0], vec![9.0, 4.0]]), vec![6.0, 2.0]);
        assert_eq!(block_scores(&[vec![1.0, 3.0, 4.0, 5.0]], 2), vec![2.0, 3.0]);
    }
}
