//! What every kernel that walks the key tiles of one query block shares (the forward kernel and
//! the dQ kernel): the per-item context kept in shared memory, the prologue that fills it, K/V
//! tile loads, and the token mask of partial tiles.
//!
//! Shared-memory layout of such a kernel: its tiles (`tiles_bytes`), then the context
//! (`FWD_CTX_BYTES`), then one `RowWindow` per query row.
use core::mem::offset_of;

use attn_common::{BLK, FwdParams, HeadRule, KIND_BLOCK_SPARSE, RowSpan, RowWindow, SeqInfo, Strides, TileWalk, WorkItem, row_window};

use crate::arch::cp_async::{commit, wait_group};
use crate::arch::smem::{ld_shared_u32, ld_shared_u64};
use crate::arch::sync::{bar_sync, block_idx};
use crate::gemm::Acc;
use crate::tiles::load_tile;

/// Query rows per work item: one mask/streaming block.
pub const BM: i32 = BLK;

/// Per-item state shared by the CTA.
#[repr(C)]
pub struct ItemCtx {
    /// Advanced by thread 0 only.
    pub walk: TileWalk,
    pub k_head: u64,
    pub v_head: u64,
    pub k_stride: i64,
    pub v_stride: i64,
    pub sk: i32,
    /// Upcoming tiles: in iteration n, all threads read slot (n + 1) % 2 (the tile to prefetch)
    /// while thread 0 writes tile n + 2 into slot n % 2, whose last reader passed the barrier.
    pub slots: [i32; 2],
}

/// Reads of the context through 32-bit shared addresses (`ctx` is its address).
#[inline(always)]
pub unsafe fn ctx_i32(ctx: u32, off: usize) -> i32 {
    unsafe { ld_shared_u32(ctx + off as u32) as i32 }
}
#[inline(always)]
pub unsafe fn ctx_u64(ctx: u32, off: usize) -> u64 {
    unsafe { ld_shared_u64(ctx + off as u32) }
}

/// Loads the K tile (`v = false`) or V tile of `bn` keys starting at key `j0`.
#[inline(always)]
pub unsafe fn load_kv<const D: usize>(ctx: u32, v: bool, tile: u32, bn: i32, threads: u32, j0: i32, valid_chunks: u32, tid: u32) {
    let (head, stride) = if v {
        (offset_of!(ItemCtx, v_head), offset_of!(ItemCtx, v_stride))
    } else {
        (offset_of!(ItemCtx, k_head), offset_of!(ItemCtx, k_stride))
    };
    unsafe {
        let (base, stride) = (ctx_u64(ctx, head) as i64, ctx_u64(ctx, stride) as i64);
        let sk = ctx_i32(ctx, offset_of!(ItemCtx, sk));
        load_tile::<D>(bn, threads, tile, (base + j0 as i64 * stride) as u64, stride, sk - j0, valid_chunks, tid);
    }
}

#[inline(always)]
pub fn elem_offset(s: &Strides, batch: u32, token: i32, head: u32) -> i64 {
    batch as i64 * s.batch + token as i64 * s.token + head as i64 * s.head
}

/// Index in `p.lse` (f32 elements) of the lse of token `token` (`q_start` included) of query
/// head `head` in batch entry `batch`.
#[inline(always)]
pub fn lse_index(p: &FwdParams, batch: u32, head: u32, token: i32) -> i64 {
    batch as i64 * p.lse_batch + head as i64 * p.lse_head + token as i64
}

/// Work item `idx` of the list `items` and its sequence.
#[inline(always)]
pub fn item_at(p: &FwdParams, items: u64, idx: u32) -> (WorkItem, SeqInfo) {
    let item: WorkItem = unsafe { *(items as *const WorkItem).add(idx as usize) };
    let seq: SeqInfo = unsafe { *(p.seqs as *const SeqInfo).add(item.batch as usize) };
    (item, seq)
}

/// This CTA's work item (from `items`) and its sequence.
#[inline(always)]
pub fn load_item(p: &FwdParams, items: u64) -> (WorkItem, SeqInfo) {
    item_at(p, items, block_idx())
}

/// The pattern of query head `head`.
#[inline(always)]
pub fn head_rule(p: &FwdParams, head: u32) -> HeadRule {
    unsafe { *(p.heads as *const HeadRule).add(head as usize) }
}

/// A `[B, S, H, D]`-style tensor whose 128 rows of this item get copied to a shared tile.
pub struct RowTile<'a> {
    pub tile: u32,
    pub base: u64,
    pub strides: &'a Strides,
}

/// The prologue of a query-block item: issues the copies of its row tiles (Q, and dO for the
/// backward), writes the row windows and the context, and returns the first key tile (-1 if
/// none). Ends with a barrier.
#[inline(always)]
pub unsafe fn setup_query_item<const D: usize>(
    p: &FwdParams,
    bn: i32,
    threads: u32,
    tid: u32,
    rows: &[RowTile<'_>],
    ctx: *mut ItemCtx,
    windows: *mut RowWindow,
) -> i32 {
    let (item, seq) = load_item(p, p.items);
    let rule = head_rule(p, item.head);
    let (sq, sk) = (seq.q_len, seq.k_len);
    let causal = p.causal != 0;
    let i0 = item.q_block as i32 * BM;
    let i1 = (i0 + BM).min(sq) - 1;
    // The row tiles first: their copies overlap the set-up below.
    for t in rows {
        let base = t.base + 2 * elem_offset(t.strides, item.batch, seq.q_start + i0, item.head) as u64;
        unsafe { load_tile::<D>(BM, threads, t.tile, base, 2 * t.strides.token, i1 - i0 + 1, p.head_dim / 8, tid) };
    }
    unsafe { commit() };
    let mut r = tid;
    while r < BM as u32 {
        unsafe { *windows.add(r as usize) = row_window(rule, causal, sq, sk, i0 + r as i32) };
        r += threads;
    }
    if tid == 0 {
        let walk = unsafe { item_walk(p, &item, rule, RowSpan::new(rule, causal, sq, sk, i0, i1), bn) };
        let kv_head = item.head / p.group;
        unsafe {
            ctx.write(ItemCtx {
                walk,
                k_head: p.k + 2 * elem_offset(&p.k_strides, item.batch, seq.k_start, kv_head) as u64,
                v_head: p.v + 2 * elem_offset(&p.v_strides, item.batch, seq.k_start, kv_head) as u64,
                k_stride: 2 * p.k_strides.token,
                v_stride: 2 * p.v_strides.token,
                sk,
                slots: [-1, -1],
            });
            (*ctx).slots[0] = (*ctx).walk.next();
            (*ctx).slots[1] = (*ctx).walk.next();
        }
    }
    bar_sync();
    unsafe { (*ctx).slots[0] }
}

/// The key tiles of `bn` keys that a query-block item visits: from the formula for dense and
/// streaming heads, from the compacted mask row for block-sparse heads.
///
/// # Safety
/// `p`'s mask tables must hold the item's row (the host plan builds them so).
#[inline(always)]
pub unsafe fn item_walk(p: &FwdParams, item: &WorkItem, rule: HeadRule, span: RowSpan, bn: i32) -> TileWalk {
    if rule.kind == KIND_BLOCK_SPARSE {
        let mb = if p.mask_batch == 1 { 0 } else { item.batch };
        let row = ((mb * p.n_masks + rule.a) * p.mask_q_blocks + item.q_block) as usize;
        let list = unsafe { (p.block_lists as *const i32).add(row * p.mask_k_blocks as usize) };
        TileWalk::sparse(span, bn, list, unsafe { *(p.block_counts as *const i32).add(row) })
    } else {
        TileWalk::formula(span, bn)
    }
}

/// The next tile to prefetch in iteration `n` (see [`ItemCtx::slots`]); thread 0 also advances
/// the walk.
#[inline(always)]
pub unsafe fn next_tile(ctx_a: u32, ctx: *mut ItemCtx, n: u32, tid: u32) -> i32 {
    let buf = (n % 2) as usize;
    let next = unsafe { ctx_i32(ctx_a, offset_of!(ItemCtx, slots) + 4 * (1 - buf)) };
    if tid == 0 {
        unsafe { (*ctx).slots[buf] = (*ctx).walk.next() };
    }
    next
}

/// How a key tile must be masked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MaskMode {
    None,
    Hi,
    Lo,
    Both,
}

/// Sets to -inf the scores of row half `h` (of one m16 tile) whose column offset (relative to
/// the thread's first column) fails `sees`.
#[inline(always)]
fn mask_row<const NT: usize>(row: &mut [[f32; 4]; NT], h: usize, sees: impl Fn(i32) -> bool) {
    for (nt, frag) in row.iter_mut().enumerate() {
        for e in 0..2 {
            if !sees((nt * 8 + e) as i32) {
                frag[2 * h + e] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Applies the token mask to the scores of the `bn`-key tile starting at `j0`, for a warp whose
/// rows start at `row0`. Tiles that every row sees in full are left alone, and the bounds that
/// can cut a tile are decided once for the CTA: most partial tiles are cut by one bound only
/// (the causal diagonal or a window's upper edge by `hi`, a window's lower edge by `lo`), and one
/// test per element halves the mask's cost.
#[inline(always)]
pub unsafe fn mask_scores<const MT: usize, const NT: usize>(s: &mut Acc<MT, NT>, ctx_a: u32, windows_a: u32, j0: i32, row0: u32, lane: u32) {
    let j1 = j0 + NT as i32 * 8 - 1;
    let mode = unsafe {
        let span = ctx_a + (offset_of!(ItemCtx, walk) + offset_of!(TileWalk, span)) as u32;
        let first = span + offset_of!(RowSpan, first) as u32;
        let last = span + offset_of!(RowSpan, last) as u32;
        let first_sink = ctx_i32(first, offset_of!(RowWindow, sink_end));
        let first_hi = ctx_i32(first, offset_of!(RowWindow, hi));
        let last_sink = ctx_i32(last, offset_of!(RowWindow, sink_end));
        let last_lo = ctx_i32(last, offset_of!(RowWindow, lo));
        let no_sink = j0 >= last_sink; // no row's sink reaches into the tile
        if j1 < first_sink || (j0 >= last_lo && j1 <= first_hi) {
            MaskMode::None
        } else if no_sink && j0 >= last_lo {
            MaskMode::Hi
        } else if no_sink && j1 <= first_hi {
            MaskMode::Lo
        } else {
            MaskMode::Both
        }
    };
    if mode == MaskMode::None {
        return;
    }
    for (mt, row) in s.iter_mut().enumerate() {
        for h in 0..2 {
            let r = row0 + mt as u32 * 16 + lane / 4 + 8 * h as u32;
            let w_a = windows_a + r * size_of::<RowWindow>() as u32;
            // Bounds relative to this thread's first column: each test is then against an
            // immediate column offset.
            let base = j0 + (lane % 4) as i32 * 2;
            let bound = |off: usize| unsafe { (ld_shared_u32(w_a + off as u32) as i32).saturating_sub(base) };
            match mode {
                MaskMode::Hi => {
                    let hi = bound(offset_of!(RowWindow, hi));
                    mask_row::<NT>(row, h, |c| c <= hi);
                }
                MaskMode::Lo => {
                    let lo = bound(offset_of!(RowWindow, lo));
                    mask_row::<NT>(row, h, |c| lo <= c);
                }
                _ => {
                    let (sink, lo, hi) = (bound(offset_of!(RowWindow, sink_end)), bound(offset_of!(RowWindow, lo)), bound(offset_of!(RowWindow, hi)));
                    mask_row::<NT>(row, h, |c| c < sink || (lo <= c && c <= hi));
                }
            }
        }
    }
}

/// Issues the K and V copies of the key tile at `j0` into buffer `buf` of a double-buffered
/// K/V area at `kv` (K 0, K 1, V 0, V 1; `tile_bytes` each).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn load_kv_pair<const D: usize>(ctx_a: u32, kv: u32, buf: u32, tile_bytes: u32, bn: i32, threads: u32, j0: i32, valid_chunks: u32, tid: u32) {
    unsafe {
        load_kv::<D>(ctx_a, false, kv + buf * tile_bytes, bn, threads, j0, valid_chunks, tid);
        load_kv::<D>(ctx_a, true, kv + (2 + buf) * tile_bytes, bn, threads, j0, valid_chunks, tid);
    }
}

/// The top of iteration `n` of a key-tile loop: waits until this tile's copies have landed for
/// every thread (which also frees the other buffers), then issues the next tile's copies into
/// them. Returns the next tile (-1 when none).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn advance_kv<const D: usize>(ctx_a: u32, ctx: *mut ItemCtx, kv: u32, n: u32, tile_bytes: u32, bn: i32, threads: u32, valid_chunks: u32, tid: u32) -> i32 {
    unsafe {
        wait_group::<0>();
        bar_sync();
        let next = next_tile(ctx_a, ctx, n, tid);
        if next >= 0 {
            load_kv_pair::<D>(ctx_a, kv, 1 - n % 2, tile_bytes, bn, threads, next, valid_chunks, tid);
        }
        commit(); // possibly empty: keeps the group count uniform
        next
    }
}

/// Before the key-tile loop: issues the first tile's K/V copies into buffer 0, or, when there is
/// no tile, waits for the row copies already issued (no copy may outlive the CTA).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn start_kv<const D: usize>(ctx_a: u32, kv: u32, tile_bytes: u32, bn: i32, threads: u32, first: i32, valid_chunks: u32, tid: u32) {
    unsafe {
        if first < 0 {
            wait_group::<0>();
        } else {
            load_kv_pair::<D>(ctx_a, kv, 0, tile_bytes, bn, threads, first, valid_chunks, tid);
            commit();
        }
    }
}
