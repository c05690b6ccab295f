//! Launch ABI. Every struct here is `#[repr(C)]`, built by the host and read by the kernels.
//! Pointers travel as `u64` so the layout is the same on both sides.

/// Tokens per mask / streaming block.
pub const BLK: i32 = 128;

/// Pattern kind codes stored in [`HeadRule::kind`].
pub const KIND_DENSE: u32 = 0;
/// `a` = mask slice index.
pub const KIND_BLOCK_SPARSE: u32 = 1;
/// `a` = sink blocks, `b` = local blocks.
pub const KIND_BLOCK_STREAMING: u32 = 2;
/// `a` = sink tokens, `b` = local tokens.
pub const KIND_TOKEN_STREAMING: u32 = 3;

/// One query head's pattern, as the kernels see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HeadRule {
    pub kind: u32,
    pub a: u32,
    pub b: u32,
    pub _pad: u32,
}

/// Geometry of one sequence of the batch: its first row in the token dimension and its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqInfo {
    pub q_start: i32,
    pub q_len: i32,
    pub k_start: i32,
    pub k_len: i32,
}

/// One unit of forward work: one 128-row query block of one (batch, query head).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkItem {
    pub batch: u32,
    pub head: u32,
    pub q_block: u32,
    pub _pad: u32,
}

/// Strides in elements of a `[batch, token, head, dim]` tensor (the dim stride is 1).
/// Variable-length tensors use `batch = 0` and address rows through [`SeqInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Strides {
    pub batch: i64,
    pub token: i64,
    pub head: i64,
}

/// Parameters of the forward kernels, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct FwdParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    /// `f32`; element (b, h, i) at `b * lse_batch + h * lse_head + q_start + i`.
    pub lse: u64,
    pub q_strides: Strides,
    pub k_strides: Strides,
    pub v_strides: Strides,
    pub o_strides: Strides,
    pub lse_batch: i64,
    pub lse_head: i64,
    /// `*const SeqInfo`, one per batch entry.
    pub seqs: u64,
    /// `*const HeadRule`, one per query head.
    pub heads: u64,
    /// `*const WorkItem`, `n_items` of them, heaviest first.
    pub items: u64,
    /// `*const i32`: for each mask row `(mask_batch, mask, q_block)`, `mask_k_blocks` slots whose
    /// first `block_counts[row]` hold the set key blocks in ascending order.
    pub block_lists: u64,
    /// `*const i32`, one count per mask row.
    pub block_counts: u64,
    pub n_items: u32,
    /// Query heads per key/value head (GQA group size).
    pub group: u32,
    /// The real head dimension (a multiple of 8, at most the kernel's).
    pub head_dim: u32,
    pub causal: u32,
    /// 1 or the batch size; 0 when no head is block-sparse.
    pub mask_batch: u32,
    pub n_masks: u32,
    pub mask_q_blocks: u32,
    pub mask_k_blocks: u32,
    /// `softmax_scale * log2(e)`: scores go straight to the exp2 domain.
    pub scale_log2: f32,
    pub _pad: u32,
}

/// Bytes the forward kernels reserve after their tiles for the per-item context (tile walk,
/// pointers) that they keep in shared memory rather than in registers.
pub const FWD_CTX_BYTES: usize = 256;
/// Bytes per query row of the per-row key windows kept in shared memory.
pub const FWD_WINDOW_BYTES: usize = 12;
/// Query rows per forward CTA.
pub const FWD_ROWS: usize = 128;

/// Dynamic shared memory of a forward kernel with head dim `d` and `key_tile` keys per tile:
/// Q, two K and two V tiles (double buffered), the context and the row windows.
pub const fn fwd_smem_bytes(d: usize, key_tile: usize) -> usize {
    (FWD_ROWS + 4 * key_tile) * d * 2 + FWD_CTX_BYTES + FWD_ROWS * FWD_WINDOW_BYTES
}

/// Parameters of the block-mask compaction kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompactParams {
    /// `*const u8`, contiguous `[rows, k_blocks]`.
    pub mask: u64,
    /// `*mut i32`, `[rows, k_blocks]`.
    pub lists: u64,
    /// `*mut i32`, `[rows]`.
    pub counts: u64,
    /// `*mut u32`: set to 1 when a mask value is neither 0 nor 1.
    pub bad_value: u64,
    pub rows: u32,
    pub k_blocks: u32,
}
