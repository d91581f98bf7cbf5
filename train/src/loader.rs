//! Which rows make each training batch: a deterministic shuffle per epoch, and a
//! [`Position`] that a checkpoint saves so that a resumed run sees exactly the batches the
//! uninterrupted run would have seen.
//!
//! Epoch `e`'s order is a Fisher–Yates shuffle of `0..rows` driven by a SplitMix64 stream
//! seeded from `(seed, e)` (the generator of `adaptc_passes::adapters::init`), so it depends
//! on nothing but the seed, the epoch and the number of rows. Batches take `batch_size`
//! consecutive rows of that order; the last batch of an epoch is smaller unless `drop_last`.

use adaptc_passes::adapters::init::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, Dataset};
use crate::error::{Result, TrainError};

/// Where the next batch starts: an epoch and an index into that epoch's shuffled order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub next_row: usize,
}

/// The shuffled order of epoch `epoch` over `rows` rows.
pub fn epoch_order(rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(SplitMix64::new(seed).next_u64().wrapping_add(epoch));
    let mut order: Vec<usize> = (0..rows).collect();
    for i in (1..rows).rev() {
        // Uniform in 0..=i without modulo bias worth speaking of (Lemire's multiply-shift).
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// Hands out shuffled batches of a dataset, epoch after epoch.
#[derive(Debug)]
pub struct Loader<'d> {
    data: &'d Dataset,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
    pos: Position,
    order: Vec<usize>,
}

impl<'d> Loader<'d> {
    /// A loader at epoch 0, row 0.
    pub fn new(data: &'d Dataset, batch_size: usize, seed: u64, drop_last: bool) -> Result<Loader<'d>> {
        if batch_size == 0 {
            return Err(TrainError::Config("batch size must be at least 1".into()));
        }
        if drop_last && batch_size > data.len() {
            return Err(TrainError::Config(format!(
                "batch size {batch_size} with drop_last leaves no batch: {} has {} rows",
                data.file().display(),
                data.len()
            )));
        }
        let order = epoch_order(data.len(), seed, 0);
        Ok(Loader { data, batch_size, seed, drop_last, pos: Position::default(), order })
    }

    /// Where the next batch will start (save this in a checkpoint after a step).
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Continues from a saved position.
    pub fn seek(&mut self, pos: Position) -> Result<()> {
        if pos.next_row > self.data.len() {
            return Err(TrainError::Config(format!(
                "data position row {} is past the end of {} ({} rows): is this the data the checkpoint was trained on?",
                pos.next_row,
                self.data.file().display(),
                self.data.len()
            )));
        }
        if pos.epoch != self.pos.epoch {
            self.order = epoch_order(self.data.len(), self.seed, pos.epoch);
        }
        self.pos = pos;
        Ok(())
    }

    /// Full batches per epoch (plus one partial batch unless `drop_last`).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.data.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The next batch, moving on to the next epoch (and its order) when this one is used up.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let n = self.data.len();
        let left = n.saturating_sub(self.pos.next_row);
        if left == 0 || (self.drop_last && left < self.batch_size) {
            self.seek(Position { epoch: self.pos.epoch + 1, next_row: 0 })?;
        }
        let start = self.pos.next_row;
        let end = (start + self.batch_size).min(n);
        let batch = self.data.batch(&self.order[start..end])?;
        self.pos.next_row = end;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataOptions, Task};
    use adaptc_ir::DataType;

    fn dataset(rows: usize) -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.jsonl");
        let text: String = (0..rows).map(|i| format!("{{\"input_ids\": [{i}], \"label\": {}}}\n", i % 2)).collect();
        std::fs::write(&f, text).unwrap();
        let inputs = vec![("input_ids".to_string(), DataType::Int64)];
        let opts = DataOptions { task: Task::Classification { labels: 2 }, max_len: None };
        let d = Dataset::load(&f, &inputs, &opts, None).unwrap();
        (dir, d)
    }

    #[test]
    fn orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(100, 7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0));
        assert_ne!(a, epoch_order(100, 7, 1));
        assert_ne!(a, epoch_order(100, 8, 0));
        assert!(epoch_order(0, 1, 0).is_empty());
        assert_eq!(epoch_order(1, 1, 5), vec![0]);
    }

    #[test]
    fn epochs_cover_every_row_once() {
        let (_dir, d) = dataset(10);
        let mut l = Loader::new(&d, 4, 3, false).unwrap();
        assert_eq!(l.batches_per_epoch(), 3);
        let sizes: Vec<usize> = (0..6).map(|_| l.next_batch().unwrap().rows.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2, 4, 4, 2]);
        assert_eq!(l.position(), Position { epoch: 1, next_row: 10 });
        let mut dl = Loader::new(&d, 4, 3, true).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.extend(dl.next_batch().unwrap().rows);
        }
        assert_eq!(seen, epoch_order(10, 3, 0)[..8]);
        assert_eq!(dl.next_batch().unwrap().rows, epoch_order(10, 3, 1)[..4]);
        assert!(Loader::new(&d, 0, 3, false).is_err());
        assert!(Loader::new(&d, 11, 3, true).unwrap_err().to_string().contains("leaves no batch"));
    }

    #[test]
    fn a_resumed_loader_sees_the_same_batches() {
        let (_dir, d) = dataset(7);
        let mut straight = Loader::new(&d, 3, 11, false).unwrap();
        let mut saved = Position::default();
        let mut want = Vec::new();
        for step in 0..10 {
            let b = straight.next_batch().unwrap();
            if step == 4 {
                saved = straight.position();
            } else if step > 4 {
                want.push(b);
            }
        }
        let json = serde_json::to_string(&saved).unwrap();
        let restored: Position = serde_json::from_str(&json).unwrap();
        let mut resumed = Loader::new(&d, 3, 11, false).unwrap();
        resumed.seek(restored).unwrap();
        let got: Vec<Batch> = (0..5).map(|_| resumed.next_batch().unwrap()).collect();
        assert_eq!(got, want);
        let e = resumed.seek(Position { epoch: 0, next_row: 8 }).unwrap_err().to_string();
        assert!(e.contains("row 8 is past the end"), "{e}");
    }
}
