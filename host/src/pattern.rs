//! Per-head attention patterns.
use attn_common::{HeadRule, KIND_BLOCK_SPARSE, KIND_BLOCK_STREAMING, KIND_DENSE, KIND_TOKEN_STREAMING};

/// Which keys one query head sees (before `causal`); see `semantics.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadPattern {
    /// Every key.
    Dense,
    /// The key blocks set in slice `mask` of the block mask.
    BlockSparse {
        /// The mask slice (second dimension of the block mask) this head reads.
        mask: u32,
    },
    /// The first `sink_blocks` key blocks and the `local_blocks` blocks ending at the query's
    /// diagonal block.
    BlockStreaming {
        /// Leading key blocks every query sees.
        sink_blocks: u32,
        /// Key blocks ending at (and including) the query's diagonal block.
        local_blocks: u32,
    },
    /// The first `sink_tokens` keys and the `local_tokens` keys ending at the query's own position.
    TokenStreaming {
        /// Leading keys every query sees.
        sink_tokens: u32,
        /// Keys ending at (and including) the query's own position.
        local_tokens: u32,
    },
}

impl HeadPattern {
    /// The kernels' encoding.
    pub fn rule(&self) -> HeadRule {
        let (kind, a, b) = match *self {
            HeadPattern::Dense => (KIND_DENSE, 0, 0),
            HeadPattern::BlockSparse { mask } => (KIND_BLOCK_SPARSE, mask, 0),
            HeadPattern::BlockStreaming { sink_blocks, local_blocks } => (KIND_BLOCK_STREAMING, sink_blocks, local_blocks),
            HeadPattern::TokenStreaming { sink_tokens, local_tokens } => (KIND_TOKEN_STREAMING, sink_tokens, local_tokens),
        };
        HeadRule { kind, a, b, _pad: 0 }
    }

    /// The seed library's convention: heads tagged 1 are block-sparse and take mask slices in
    /// order, heads tagged 0 are dense, heads tagged -1 stream with `streaming`.
    pub fn from_seed_tags(tags: &[i32], streaming: HeadPattern) -> Vec<HeadPattern> {
        let mut next = 0;
        tags.iter()
            .map(|&t| match t {
                1 => {
                    next += 1;
                    HeadPattern::BlockSparse { mask: next - 1 }
                }
                -1 => streaming,
                _ => HeadPattern::Dense,
            })
            .collect()
    }
}
