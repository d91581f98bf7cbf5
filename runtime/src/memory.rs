//! Liveness-based memory planning: each activation buffer is released right after the last
//! instruction that reads it, so peak memory is what is live at once rather than the sum of
//! all intermediate values.
//!
//! Invariant: constants and graph outputs are never released by the plan.

use std::collections::HashMap;

use crate::plan::{BufId, Instruction};

/// When buffers die.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// `frees[i]`: buffers to release after instruction `i`.
    pub frees: Vec<Vec<BufId>>,
}

impl MemoryPlan {
    /// Plans releases for `instructions` over `num_buffers` buffers; `pinned` ones live on.
    pub fn new(instructions: &[Instruction], num_buffers: usize, pinned: &[BufId]) -> MemoryPlan {
        let mut last: Vec<Option<usize>> = vec![None; num_buffers];
        for (i, ins) in instructions.iter().enumerate() {
            for &b in ins.inputs.iter().flatten().chain(ins.outputs.iter().flatten()) {
                last[b] = Some(i);
            }
        }
        let mut frees = vec![Vec::new(); instructions.len()];
        for (b, l) in last.iter().enumerate() {
            if let Some(i) = l {
                if !pinned.contains(&b) {
                    frees[*i].push(b);
                }
            }
        }
        MemoryPlan { frees }
    }
}

/// Tracks live bytes while a plan runs, for the peak report. Buffers that share storage (a
/// Reshape's output and its input) are counted once, by their storage key.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub live: usize,
    pub peak: usize,
    /// Live buffers per storage key.
    holders: HashMap<usize, usize>,
}

impl Usage {
    pub fn alloc(&mut self, key: usize, bytes: usize) {
        let n = self.holders.entry(key).or_default();
        *n += 1;
        if *n == 1 {
            self.live += bytes;
            self.peak = self.peak.max(self.live);
        }
    }

    pub fn free(&mut self, key: usize, bytes: usize) {
        if let Some(n) = self.holders.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.holders.remove(&key);
                self.live = self.live.saturating_sub(bytes);
            }
        }
    }
}
