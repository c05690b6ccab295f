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

/// One unit of work: for the forward and dQ kernels one 128-row query block of one (batch,
/// query head); for the dK/dV kernels one key tile of one (batch, kv head), `q_block` being the
/// key tile.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WorkItem {
    pub batch: u32,
    pub head: u32,
    pub q_block: u32,
    /// Key-side items: the query heads of the GQA group this item sums, `first | end << 16`
    /// (indices within the group); 0 (and always, for query-side items): the whole group.
    pub group_part: u32,
}

impl WorkItem {
    /// The query heads `first..end` (within a group of `group`) a key-side item sums.
    #[inline(always)]
    pub fn group_heads(&self, group: u32) -> (u32, u32) {
        if self.group_part == 0 { (0, group) } else { (self.group_part & 0xffff, self.group_part >> 16) }
    }

    /// `group_part` for the query heads `first..end` of a group.
    pub fn pack_group_part(first: u32, end: u32) -> u32 {
        first | end << 16
    }
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

/// Parameters of the backward kernels, passed by value. `f` holds the forward's inputs and
/// outputs (`o`, `lse`) and its tables; for `bwd_dq` and `bwd_dsum`, `f.items` are the forward's
/// query-block work items, for `bwd_dkdv` the items are `kv_items`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct BwdParams {
    pub f: FwdParams,
    /// Gradient of the output, laid out like `o`.
    pub d_o: u64,
    pub do_strides: Strides,
    pub dq: u64,
    pub dq_strides: Strides,
    pub dk: u64,
    pub dk_strides: Strides,
    pub dv: u64,
    pub dv_strides: Strides,
    /// `f32`, laid out like `lse`: rowsum(dO ∘ O), written by `bwd_dsum`.
    pub dsum: u64,
    /// `*const WorkItem`: `(batch, kv head, key tile of BWD_KEYS keys)`, heaviest first.
    pub kv_items: u64,
    /// `softmax_scale` itself (dQ and dK are scaled by it).
    pub scale: f32,
    /// How key-side items write dK and dV: one of `DKDV_*`.
    pub dkdv_mode: u32,
    /// `DKDV_PARTS`: the number of parts each GQA group is split into.
    pub parts: u32,
    pub _pad: u32,
    /// `DKDV_PARTS`: elements of one part's buffer (`dk`, `dv` hold `parts` of them).
    pub part_len: u64,
}

/// Items own their dK/dV rows and store them in the input type.
pub const DKDV_STORE: u32 = 0;
/// The fast mode with a split group: `dk`, `dv` are zeroed `f32` buffers laid out like `k`, `v`,
/// to which each item adds its part of the group's sum with `red.global.add.f32` (the order of
/// the additions, so the last bits, vary run to run).
pub const DKDV_ADD: u32 = 1;
/// The deterministic mode with a split group: part `p` of a group stores its `f32` sums in
/// buffer `p` (element offset `p * part_len`, laid out like `k`, `v`); `attn_reduce_parts_*`
/// then adds the parts in order.
pub const DKDV_PARTS: u32 = 2;

/// The part index of a split group's item whose heads start at `first` (parts `p` start at
/// `p * group / parts`, rounded down).
#[inline(always)]
pub fn part_of(first: u32, group: u32, parts: u32) -> u32 {
    (first * parts).div_ceil(group)
}

/// Threads per CTA of `attn_reduce_parts_*` (each writes two values per step).
pub const REDUCE_THREADS: usize = 256;

/// Parameters of `attn_reduce_parts_{bf16,f16}`: element `i < n` of `dst` is the sum over
/// `p < parts`, in order, of the `f32` at `src[p * n + i]`, rounded to the input type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReduceParams {
    pub src: u64,
    pub dst: u64,
    pub n: u64,
    pub parts: u32,
    pub _pad: u32,
}

/// Keys per `bwd_dkdv` CTA (and query rows per query tile it walks).
pub const BWD_KEYS: usize = 64;
/// Query rows per `bwd_dq` CTA.
pub const BWD_DQ_ROWS: usize = 128;

/// Dynamic shared memory of `bwd_dkdv` at head dim `d`: K and V, two Q and two dO tiles, and
/// per query tile (double buffered) lse, dsum and the row windows.
pub const fn bwd_dkdv_smem_bytes(d: usize) -> usize {
    6 * BWD_KEYS * d * 2 + FWD_CTX_BYTES + 2 * BWD_KEYS * (8 + FWD_WINDOW_BYTES)
}

/// Dynamic shared memory of `bwd_dq` at head dim `d`: Q and dO (128 rows), two K and two V
/// tiles of 64 keys, the context and the row windows.
pub const fn bwd_dq_smem_bytes(d: usize) -> usize {
    (2 * BWD_DQ_ROWS + 4 * BWD_KEYS) * d * 2 + FWD_CTX_BYTES + BWD_DQ_ROWS * FWD_WINDOW_BYTES
}

/// Parameters of the block-mask compaction kernel. Row `r` of the compaction reads the mask
/// elements `base(r) + e * elem_step` for `e < n_elems`, where `base(r) = (r / rows_per_slice) *
/// slice_len + (r % rows_per_slice) * row_step`: rows of the mask (`rows_per_slice = q_blocks`,
/// `row_step = k_blocks`, `elem_step = 1`) or, transposed for the backward, its columns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompactParams {
    /// `*const u8`, `[slices, q_blocks, k_blocks]`.
    pub mask: u64,
    /// `*mut i32`, `[rows, n_elems]`.
    pub lists: u64,
    /// `*mut i32`, `[rows]`.
    pub counts: u64,
    /// `*mut u32`: set to 1 when a mask value is neither 0 nor 1.
    pub bad_value: u64,
    pub rows: u32,
    pub n_elems: u32,
    pub rows_per_slice: u32,
    pub slice_len: u32,
    pub row_step: u32,
    pub elem_step: u32,
}

/// Query rows per Hopper forward CTA: two consumer warpgroups of 64 rows.
pub const HOPPER_ROWS: usize = 128;
/// Keys per Hopper forward tile: one mask block.
pub const HOPPER_KEYS: usize = 128;
/// K stages of the Hopper forward's shared-memory ring.
pub const HOPPER_K_STAGES: usize = 2;
/// V stages of the Hopper forward's ring. A V stage is held a softmax longer than a K stage (from
/// its load to its P V, issued with the next S), so V gets the third stage: 2 K + 3 V beat
/// 3 K + 2 V and 2 + 2 beside the second Q slot (perf notes, session 6).
pub const HOPPER_V_STAGES: usize = 3;
/// Q slots of the Hopper forward: the next item's Q loads while this one runs, and the
/// consumers start its first product beside this item's last.
pub const HOPPER_Q_TILES: usize = 2;
/// Threads per Hopper forward CTA: one producer warpgroup (TMA) and two consumer warpgroups.
pub const HOPPER_THREADS: u32 = 384;

/// The profiling build's probe lists (kernels' `trace`, host `ATTN_TRACE`): words per (CTA,
/// role) list, and the roles (producer, consumer 0, consumer 1, Q loader). They follow the work
/// counter's 16 bytes.
pub const TRACE_EVENTS: u32 = 16384;
pub const TRACE_ROLES: u32 = 4;
/// Bytes of one `CUtensorMap`.
pub const TENSOR_MAP_BYTES: usize = 128;

/// Parameters of the Hopper forward kernels, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct HopperFwdParams {
    pub f: FwdParams,
    /// Global address of three `CUtensorMap`s (Q, K, V; 64-byte aligned, 128 bytes each) over
    /// `[batch, token, head, dim]` as the dims `(dim, token, head, batch)`, boxes of
    /// `(64, 128, 1, 1)` with the 128-byte swizzle. Packed (variable-length) tensors have one
    /// batch entry and address sequences by their token offset.
    pub tensor_maps: u64,
    /// `*mut u32`, zero at launch: items `gridDim.x + counter++` are handed out in turn once
    /// every CTA has taken item `blockIdx.x` (persistent grid, dynamic scheduling).
    pub counter: u64,
    /// Work items in `f.items`.
    pub n_items: u32,
    /// 1 when the tensors are packed (variable-length): the batch coordinate is always 0.
    pub packed: u32,
}

/// Dynamic shared memory of the Hopper forward kernel at head dim `d`: Q, the K and V rings,
/// then the barriers, the tile ring and the item slots (one 1 KiB block, keeping the tiles 1 KiB
/// aligned), then each Q slot's 128 row lse staged for the storer warp.
pub const fn hopper_fwd_smem_bytes(d: usize) -> usize {
    (HOPPER_Q_TILES * HOPPER_ROWS + (HOPPER_K_STAGES + HOPPER_V_STAGES) * HOPPER_KEYS) * d * 2 + 1024 + HOPPER_Q_TILES * HOPPER_ROWS * 4
}

/// Keys per Hopper `dK`/`dV` CTA (two consumer warpgroups of 64 keys): one mask block.
pub const HOPPER_BWD_KEYS: usize = 128;
/// Query rows per tile the Hopper `dK`/`dV` kernel walks.
pub const HOPPER_BWD_QUERIES: usize = 64;
/// Query tile stages (Q, dO and their row data) of the Hopper `dK`/`dV` kernel's ring.
pub const HOPPER_BWD_STAGES: usize = 3;
/// Bytes of one stage's row data: lse (exp2 domain), D and the window per row, then the tile's
/// words.
pub const HOPPER_BWD_SIDE_BYTES: usize = HOPPER_BWD_QUERIES * (8 + FWD_WINDOW_BYTES) + 16;

/// Parameters of the Hopper backward kernels, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct HopperBwdParams {
    pub b: BwdParams,
    /// Global address of four `CUtensorMap`s as in [`HopperFwdParams::tensor_maps`]: Q and dO
    /// in boxes of `(64, HOPPER_BWD_QUERIES, 1, 1)`, K and V in boxes of `(64, HOPPER_BWD_KEYS, 1, 1)`.
    pub tensor_maps: u64,
    /// `*mut u32`, zero at launch: key tiles `gridDim.x + counter++` are handed out in turn once
    /// every CTA has taken tile `blockIdx.x` (persistent grid, as the forward's).
    pub counter: u64,
    /// Key tiles in `b.kv_items`.
    pub n_items: u32,
    /// 1 when the tensors are packed (variable-length): the batch coordinate is always 0.
    pub packed: u32,
}

/// Dynamic shared memory of the Hopper `dK`/`dV` kernel at head dim `d`: K, V, the Q and dO
/// stages, the stages' row data, then the barriers.
pub const fn hopper_dkdv_smem_bytes(d: usize) -> usize {
    (2 * HOPPER_BWD_KEYS + 2 * HOPPER_BWD_STAGES * HOPPER_BWD_QUERIES) * d * 2 + HOPPER_BWD_STAGES * HOPPER_BWD_SIDE_BYTES + 8 * (2 + 3 * HOPPER_BWD_STAGES)
}

/// K/V stages of the Hopper dQ kernel's ring (two: Q and dO take the room of the third).
pub const HOPPER_DQ_STAGES: usize = 2;
/// Q/dO slots of the Hopper dQ kernel.
pub const HOPPER_DQ_Q_TILES: usize = 1;

/// Parameters of the Hopper dQ kernel, passed by value: the forward's (its tensor maps are Q, K,
/// V and dO, all in 128-row boxes; its items are the forward's query blocks) and the gradient's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct HopperDqParams {
    pub h: HopperFwdParams,
    /// `f32`, laid out like `lse`: rowsum(dO ∘ O).
    pub dsum: u64,
    pub dq: u64,
    pub dq_strides: Strides,
    /// `softmax_scale` itself (dQ is scaled by it).
    pub scale: f32,
    pub _pad: u32,
}

/// Dynamic shared memory of the Hopper dQ kernel at head dim `d`: Q, dO, the K and V rings, then
/// the barriers, the tile ring and the item slot (as [`hopper_fwd_smem_bytes`]).
pub const fn hopper_dq_smem_bytes(d: usize) -> usize {
    (2 * HOPPER_DQ_Q_TILES * HOPPER_ROWS + 2 * HOPPER_DQ_STAGES * HOPPER_KEYS) * d * 2 + 1024
}

/// Dynamic shared memory a block may opt in to on Hopper (sm_90): 227 KiB. The host checks the
/// device's own limit at load time; this keeps the stage counts honest at build time.
pub const HOPPER_MAX_SMEM: usize = 227 * 1024;
const _: () = assert!(
    hopper_fwd_smem_bytes(128) <= HOPPER_MAX_SMEM && hopper_dq_smem_bytes(128) <= HOPPER_MAX_SMEM && hopper_dkdv_smem_bytes(128) <= HOPPER_MAX_SMEM
);
