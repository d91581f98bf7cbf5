//! How much each transformer block changes the residual stream, measured on calibration data:
//! the angular distance `arccos(cos(x_in, x_out)) / π` between a block's input and output
//! hidden state, averaged over every real (unpadded) token — the measure of Gromov et al., "The
//! Unreasonable Ineffectiveness of the Deeper Layers", per block as ShortGPT's Block Influence
//! ranks them. A block with a small distance barely turns the stream: the cheapest to remove.

use std::path::Path;

use adaptc_ir::Model;
use adaptc_runtime::Tensor;

use crate::calibrate::{observe, read_batches};
use crate::pattern::BlockStack;

/// Calibration settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub data: std::path::PathBuf,
    /// Rows read at most.
    pub samples: usize,
    /// Rows per run.
    pub batch: usize,
}

/// The mean angular distance (in [0, 1]) of every block of `stack`, in block order.
pub fn block_distances(model: &Model, stack: &BlockStack, calib: &Calibration) -> Result<Vec<f64>, String> {
    let batches = read_batches(Path::new(&calib.data), &model.graph, calib.samples, calib.batch)?;
    let mut values: Vec<String> = stack.blocks.iter().map(|b| b.input.clone()).collect();
    values.extend(stack.blocks.iter().map(|b| b.output.clone()));
    let seen = observe(model, &values, &batches)?;
    let n = stack.blocks.len();
    let mut sums = vec![0.0f64; n];
    let mut tokens = 0usize;
    for (batch, tensors) in batches.iter().zip(&seen) {
        for (b, block) in stack.blocks.iter().enumerate() {
            let (x, y) = (&tensors[b], &tensors[n + b]);
            sums[b] += batch_distance(x, y, &batch.lengths)
                .map_err(|e| format!("block {}.{}: {e}", stack.name, block.index))?;
        }
        tokens += batch.lengths.iter().sum::<usize>();
    }
    Ok(sums.into_iter().map(|s| s / tokens.max(1) as f64).collect())
}

/// The summed angular distance over the real tokens of one batch (`[rows, seq, hidden]`).
fn batch_distance(x: &Tensor, y: &Tensor, lengths: &[usize]) -> Result<f64, String> {
    let (xs, ys) = match (x.as_slice::<f32>(), y.as_slice::<f32>()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("the hidden states are not float32".into()),
    };
    let shape = x.shape();
    if shape != y.shape() || shape.len() != 3 || shape[0] != lengths.len() {
        return Err(format!(
            "input and output hidden states should both be [rows, seq, hidden]; got {:?} and {:?}",
            shape,
            y.shape()
        ));
    }
    let (seq, hidden) = (shape[1], shape[2]);
    let mut sum = 0.0;
    for (row, &len) in lengths.iter().enumerate() {
        for t in 0..len.min(seq) {
            let at = (row * seq + t) * hidden;
            sum += angular(&xs[at..at + hidden], &ys[at..at + hidden]);
        }
    }
    Ok(sum)
}

/// `arccos(cos(a, b)) / π`, in f64; 0 for a zero vector.
fn angular(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&p, &q) in a.iter().zip(b) {
        let (p, q) = (f64::from(p), f64::from(q));
        dot += p * q;
        na += p * p;
        nb += q * q;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0).acos() / std::f64::consts::PI
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angular_distance_of_known_vectors() {
        assert_eq!(angular(&[1.0, 0.0], &[2.0, 0.0]), 0.0);
        assert!((angular(&[1.0, 0.0], &[0.0, 3.0]) - 0.5).abs() < 1e-12);
        assert!((angular(&[1.0, 0.0], &[-1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((angular(&[1.0, 1.0], &[1.0, 0.0]) - 0.25).abs() < 1e-12);
        assert_eq!(angular(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn padding_is_skipped() {
        // Two rows of seq 2, hidden 2; row 1 has one real token, its padding would add 0.5.
        let x = Tensor::from_vec(vec![2, 2, 2], vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]).unwrap();
        let y = Tensor::from_vec(vec![2, 2, 2], vec![0.0f32, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!((batch_distance(&x, &y, &[2, 1]).unwrap() - 0.5).abs() < 1e-12);
    }
}
