//! The JSON report (`report=path.json`): per block, the channels and heads before and after
//! and the parameters removed, then the totals.

use std::path::Path;

use serde::Serialize;

use crate::pass::PassError;

use super::PASS;

/// One pruned FFN.
#[derive(Clone, Debug, Serialize)]
pub struct FfnReport {
    /// The consumer's module path.
    pub module: String,
    pub producers: Vec<String>,
    pub channels_before: usize,
    pub channels_after: usize,
    /// Indices (in the original numbering) of the removed channels.
    pub removed: Vec<usize>,
    pub params_removed: u64,
}

/// One pruned attention block.
#[derive(Clone, Debug, Serialize)]
pub struct HeadReport {
    /// The output projection's module path.
    pub module: String,
    pub head_size: usize,
    pub heads_before: usize,
    pub heads_after: usize,
    pub removed: Vec<usize>,
    pub params_removed: u64,
}

/// Everything pruned in one transformer block.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BlockReport {
    /// `None` for layers outside numbered blocks.
    pub block: Option<usize>,
    pub ffn: Vec<FfnReport>,
    pub attention: Vec<HeadReport>,
    pub params_removed: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pass: &'static str,
    pub blocks: Vec<BlockReport>,
    pub ffn_groups: usize,
    pub channels_removed: usize,
    pub attention_groups: usize,
    pub heads_removed: usize,
    /// Initializer elements of the whole model.
    pub params_before: u64,
    pub params_after: u64,
}

impl Report {
    /// Gathers the entries by block, in block order.
    pub fn new(
        ffn: Vec<(Option<usize>, FfnReport)>,
        heads: Vec<(Option<usize>, HeadReport)>,
        params_before: u64,
    ) -> Report {
        let mut blocks: Vec<BlockReport> = Vec::new();
        fn entry(blocks: &mut Vec<BlockReport>, block: Option<usize>) -> &mut BlockReport {
            let i = blocks.iter().position(|b| b.block == block).unwrap_or_else(|| {
                blocks.push(BlockReport { block, ..BlockReport::default() });
                blocks.len() - 1
            });
            &mut blocks[i]
        }
        let (mut channels, mut removed_heads, mut params) = (0, 0, 0);
        let (n_ffn, n_heads) = (ffn.len(), heads.len());
        for (block, f) in ffn {
            channels += f.removed.len();
            params += f.params_removed;
            let b = entry(&mut blocks, block);
            b.params_removed += f.params_removed;
            b.ffn.push(f);
        }
        for (block, h) in heads {
            removed_heads += h.removed.len();
            params += h.params_removed;
            let b = entry(&mut blocks, block);
            b.params_removed += h.params_removed;
            b.attention.push(h);
        }
        blocks.sort_by_key(|b| b.block.map_or(usize::MAX, |b| b));
        Report {
            pass: PASS,
            blocks,
            ffn_groups: n_ffn,
            channels_removed: channels,
            attention_groups: n_heads,
            heads_removed: removed_heads,
            params_before,
            params_after: params_before.saturating_sub(params),
        }
    }

    /// Writes the report next to its final name and renames it into place.
    pub fn write(&self, path: &Path) -> Result<(), PassError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| PassError::failed(PASS, format!("cannot serialize the report: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| PassError::failed(PASS, format!("cannot write the report {}: {e}", path.display())))
    }
}
