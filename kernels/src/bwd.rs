//! Backward kernels (portable mma.sync path). No atomics, except in the fast mode's dK/dV sums of
//! a GQA group split over several items.
//!
//! - `bwd_dsum`: D_i = dO_i · O_i per query row (f32, laid out like lse).
//! - `bwd_dq`: one CTA per forward work item (128 query rows of one head) walks the same key
//!   tiles as the forward: S = Q Kᵀ, P = exp2(S·scale·log2e − lse·log2e), dP = dO Vᵀ,
//!   dS = P ∘ (dP − D), dQ += dS K.
//! - `bwd_dkdv`: one CTA per (batch, kv head, 64-key tile) walks, for every query head of the
//!   GQA group in order, the 64-row query tiles that see the key tile (the transposed plan):
//!   Sᵀ = K Qᵀ, Pᵀ, dV += Pᵀ dO, dPᵀ = V dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − D), dK += dSᵀ Q. Summing the group
//!   in a fixed order inside one CTA makes the GQA reduction deterministic. Where the plan splits
//!   a group over several items (`WorkItem::group_part`), each adds its dK, dV to `f32` sums with
//!   atomics (fast mode) or stores its part's `f32` partial sums (deterministic mode; see
//!   `BwdParams::dkdv_mode`).
//! - `reduce_parts`: those sums (the parts added in order) rounded to the input type.
//!
//! Rows with lse = -inf (they saw no key) get P = 0 and contribute nothing.
use core::mem::offset_of;

use attn_common::{
    BLK, BWD_KEYS, BwdParams, DKDV_ADD, DKDV_PARTS, DKDV_STORE, FWD_CTX_BYTES, KIND_BLOCK_SPARSE, REDUCE_THREADS, ReduceParams,
    RowSpan, RowWindow, SeqInfo, WorkItem, row_window,
};

use crate::arch::cp_async::{commit, wait_group};
use crate::arch::global::red_add_f32;
use crate::arch::math::{exp2, fma};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, ld_shared_u32, smem_u32};
use crate::arch::sync::{bar_sync, block_idx, grid_dim, opaque, shfl_xor, thread_idx};
use crate::gemm::{Acc, a_bt, lanes, p_b, pack_a, packed_b};
use crate::item::{BM, ItemCtx, RowTile, advance_kv, ctx_i32, elem_offset, head_rule, load_item, lse_index, mask_scores, setup_query_item, start_kv};
use crate::tiles::load_tile;

const LOG2E: f32 = core::f32::consts::LOG2_E;

/// lse in the exp2 domain; rows that saw nothing get +inf so that their P = exp2(s - lse2) is 0.
#[inline(always)]
pub(crate) fn lse2(lse: f32) -> f32 {
    if lse == f32::NEG_INFINITY { f32::INFINITY } else { lse * LOG2E }
}

/// Writes the `16 * MT` rows of `acc` of this warp (rows `row0..`, row `r` at global element
/// offset `row_elem(r)`, only rows `< valid_rows`, only chunks `< valid_chunks`) times `scale`,
/// as `mode` (`DKDV_*`) says: rounded to `E` (`DKDV_STORE`, also dQ's), added to `f32` rows
/// with `red.global.add.f32` (`DKDV_ADD`) or stored as `f32` (`DKDV_PARTS`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store_rows<E: Element, const MT: usize, const DN: usize>(
    acc: &Acc<MT, DN>,
    scale: f32,
    mode: u32,
    base: u64,
    row_elem: impl Fn(i32) -> i64,
    row0: u32,
    lane: u32,
    valid_rows: i32,
    valid_chunks: u32,
) {
    let bytes = if mode == DKDV_ADD || mode == DKDV_PARTS { 4 } else { 2 };
    for (mt, tile) in acc.iter().enumerate() {
        for h in 0..2 {
            let r = (row0 + mt as u32 * 16 + lane / 4 + 8 * h as u32) as i32;
            if r >= valid_rows {
                continue;
            }
            let row = base + bytes * row_elem(r) as u64;
            for (chunk, frag) in tile.iter().enumerate() {
                if (chunk as u32) < valid_chunks {
                    let at = row + bytes * (chunk as u64 * 8 + (lane % 4) as u64 * 2);
                    let (lo, hi) = (frag[2 * h] * scale, frag[2 * h + 1] * scale);
                    unsafe {
                        if mode == DKDV_ADD {
                            red_add_f32(at, lo);
                            red_add_f32(at + 4, hi);
                        } else if mode == DKDV_PARTS {
                            *(at as *mut [f32; 2]) = [lo, hi];
                        } else {
                            *(at as *mut u32) = E::pack2(lo, hi);
                        }
                    }
                }
            }
        }
    }
}

/// The sum over `p.parts` `f32` buffers of `p.n` values, in order, rounded to `E`: two values
/// per thread and step of a grid-stride loop (a split GQA group's dK/dV parts, or with one part
/// the fast mode's atomic sums, to the caller's type).
#[inline(always)]
pub unsafe fn reduce_parts<E: Element>(p: &ReduceParams) {
    let threads = REDUCE_THREADS as u64;
    let step = 2 * grid_dim() as u64 * threads;
    let mut i = 2 * (block_idx() as u64 * threads + thread_idx() as u64);
    let src = p.src as *const f32;
    while i < p.n {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for part in 0..p.parts as u64 {
            let at = (part * p.n + i) as usize;
            unsafe {
                lo += *src.add(at);
                if i + 1 < p.n {
                    hi += *src.add(at + 1);
                }
            }
        }
        unsafe {
            if i + 1 < p.n {
                *((p.dst + 2 * i) as *mut u32) = E::pack2(lo, hi);
            } else {
                *((p.dst + 2 * i) as *mut u16) = E::pack2(lo, 0.0) as u16;
            }
        }
        i += step;
    }
}

/// D_i = dO_i · O_i for the 128 rows of one forward work item. Sixteen lanes share a row, one
/// 16-byte chunk of 8 elements each, so a warp reads two whole rows of O and of dO at a time
/// (a thread per row read 16 bytes of each 32-byte sector at a time: 4× slower).
#[inline(always)]
pub unsafe fn bwd_dsum<E: Element>(bp: &BwdParams) {
    let p = &bp.f;
    let tid = thread_idx();
    let (item, seq) = load_item(p, p.items);
    let chunk = tid % 16;
    let chunks = p.head_dim / 8;
    for pass in 0..(BM as u32 / 8) {
        let r = pass * 8 + tid / 16;
        let i = item.q_block as i32 * BM + r as i32;
        let mut acc = 0.0f32;
        if i < seq.q_len && chunk < chunks {
            let o = p.o + 2 * elem_offset(&p.o_strides, item.batch, seq.q_start + i, item.head) as u64;
            let d_o = bp.d_o + 2 * elem_offset(&bp.do_strides, item.batch, seq.q_start + i, item.head) as u64;
            let c = chunk as u64;
            let (x, y) = unsafe { (*((o + 16 * c) as *const [u32; 4]), *((d_o + 16 * c) as *const [u32; 4])) };
            for k in 0..4 {
                let ((x0, x1), (y0, y1)) = (E::unpack2(x[k]), E::unpack2(y[k]));
                acc = fma(x0, y0, fma(x1, y1, acc));
            }
        }
        let mut m = 1;
        while m < 16 {
            acc += shfl_xor(acc, m);
            m *= 2;
        }
        if i < seq.q_len && chunk == 0 {
            let at = lse_index(p, item.batch, item.head, seq.q_start + i);
            unsafe { *(bp.dsum as *mut f32).add(at as usize) = acc };
        }
    }
}

/// dQ for the 128 query rows of one forward work item: 8 warps of 16 rows, 64-key tiles.
#[inline(always)]
pub unsafe fn bwd_dq<E: Element, const D: usize, const DN: usize, const DK: usize>(bp: &BwdParams) {
    const NW: usize = 8;
    const MT: usize = 1;
    const NT: usize = BWD_KEYS / 8;
    const { assert!(NW * MT * 16 == BM as usize && DN * 8 == D && DK * 16 == D) };
    let p = &bp.f;
    let bn = NT as i32 * 8;
    let threads = NW as u32 * 32;
    let rb = (D * 2) as u32;
    let tid = thread_idx();
    let valid_chunks = p.head_dim / 8;

    let smem = dynamic_smem();
    let s_q = smem_u32(smem);
    let s_do = s_q + (BM as u32) * rb;
    let tile_bytes = (bn as u32) * rb;
    let tiles_bytes = (2 * BM as usize + 4 * bn as usize) * D * 2;
    let ctx = unsafe { smem.add(tiles_bytes) } as *mut ItemCtx;
    let windows = unsafe { smem.add(tiles_bytes + FWD_CTX_BYTES) } as *mut RowWindow;
    let rows = [RowTile { tile: s_q, base: p.q, strides: &p.q_strides }, RowTile { tile: s_do, base: bp.d_o, strides: &bp.do_strides }];
    let mut cur = unsafe { setup_query_item::<D>(p, bn, threads, tid, &rows, ctx, windows) };

    // This thread's two rows: their lse (exp2 domain) and D.
    let (lane, warp) = (tid % 32, tid / 32);
    let mut row_lse = [f32::INFINITY; 2];
    let mut row_d = [0.0f32; 2];
    {
        let (item, seq) = load_item(p, p.items);
        for h in 0..2 {
            let i = item.q_block as i32 * BM + (warp * 16 + lane / 4 + 8 * h) as i32;
            if i < seq.q_len {
                let at = lse_index(p, item.batch, item.head, seq.q_start + i);
                row_lse[h as usize] = lse2(unsafe { *(p.lse as *const f32).add(at as usize) });
                row_d[h as usize] = unsafe { *(bp.dsum as *const f32).add(at as usize) };
            }
        }
    }

    let mut dq: Acc<MT, DN> = unsafe { core::mem::zeroed() };
    let s_kv = s_q + 2 * (BM as u32) * rb; // K buffers 0, 1, then V buffers 0, 1
    let ctx_end = s_q + tiles_bytes as u32;
    unsafe { start_kv::<D>(ctx_end, s_kv, tile_bytes, bn, threads, cur, valid_chunks, tid) };
    let mut n = 0u32;
    while cur >= 0 {
        let tid = opaque(tid);
        let s_q = opaque(s_q);
        let ctx_a = s_q + tiles_bytes as u32;
        let windows_a = ctx_a + FWD_CTX_BYTES as u32;
        let valid_chunks = opaque(valid_chunks);
        let (lane, warp) = (tid % 32, tid / 32);
        let row0 = warp * 16;
        let buf = n % 2;
        let s_kb = s_q + 2 * (BM as u32) * rb + buf * tile_bytes;
        let s_vb = s_kb + 2 * tile_bytes;
        let ln = lanes(rb, row0, lane);

        let next = unsafe { advance_kv::<D>(ctx_a, ctx, s_q + 2 * (BM as u32) * rb, n, tile_bytes, bn, threads, valid_chunks, tid) };

        let mut s = a_bt::<E, D, DK, MT, NT>(s_q, s_kb, ln);
        unsafe { mask_scores::<MT, NT>(&mut s, ctx_a, windows_a, cur, row0, lane) };
        let dp = a_bt::<E, D, DK, MT, NT>(s_q + (BM as u32) * rb, s_vb, ln);
        for h in 0..2 {
            for nt in 0..NT {
                for e in 0..2 {
                    let pr = exp2(fma(s[0][nt][2 * h + e], p.scale_log2, -row_lse[h]));
                    s[0][nt][2 * h + e] = pr * (dp[0][nt][2 * h + e] - row_d[h]);
                }
            }
        }
        p_b::<E, D, DN, MT, NT>(&mut dq, &s, s_kb, ln);
        cur = next;
        n += 1;
    }

    let (item, seq) = load_item(p, p.items);
    let i0 = item.q_block as i32 * BM;
    let row_elem = |r: i32| elem_offset(&bp.dq_strides, item.batch, seq.q_start + i0 + r, item.head);
    store_rows::<E, MT, DN>(&dq, bp.scale, DKDV_STORE, bp.dq, row_elem, warp * 16, lane, seq.q_len - i0, valid_chunks);
}

/// The query tiles one `bwd_dkdv` CTA visits, for every head of its group in turn. Thread 0
/// advances it; the others read its results from `KvCtx::slots`.
#[repr(C)]
struct KvWalk {
    /// Index of the current head within the group (`group` when done).
    h: u32,
    /// End of the heads this item sums (the group size, or the end of its part of the group).
    group: u32,
    first_head: u32,
    batch: u32,
    /// Next query tile to look at (formula heads) or next list entry (block-sparse heads).
    qt: i32,
    /// Query rows per tile.
    bq: i32,
    qt_start: i32,
    nqt: i32,
    j0: i32,
    sq: i32,
    sk: i32,
    causal: u32,
}

impl KvWalk {
    /// The next (head in group, query tile * 2 + full) whose rows see some key of the tile, or
    /// `(-1, 0)`.
    #[inline(always)]
    unsafe fn next(&mut self, bp: &BwdParams) -> (i32, i32) {
        let p = &bp.f;
        let (j0, j1) = (self.j0, self.j0 + BWD_KEYS as i32 - 1);
        let causal = self.causal != 0;
        while self.h < self.group {
            let rule = head_rule(p, self.first_head + self.h);
            let sparse = rule.kind == KIND_BLOCK_SPARSE;
            // Block-sparse heads walk the compacted column of the mask (query blocks that keep
            // this key block), two 64-row tiles per block; the others scan query tiles.
            let (qt, end) = if sparse {
                let mb = if p.mask_batch == 1 { 0 } else { self.batch };
                let col = ((mb * p.n_masks + rule.a) * p.mask_k_blocks) as usize + (j0 / BLK) as usize;
                let count = unsafe { *(bp.f.block_counts as *const i32).add(col) };
                let per = BLK / self.bq; // query tiles per mask block
                if self.qt >= per * count {
                    (-1, true)
                } else {
                    let qb = unsafe { *(bp.f.block_lists as *const i32).add(col * p.mask_q_blocks as usize + (self.qt / per) as usize) };
                    (per * qb + self.qt % per, false)
                }
            } else {
                (self.qt, self.qt >= self.nqt)
            };
            if end {
                self.h += 1;
                self.qt = if sparse_next_head(p, self) { 0 } else { self.qt_start };
                continue;
            }
            self.qt += 1;
            let i0 = qt * self.bq;
            if i0 >= self.sq {
                continue;
            }
            let i1 = (i0 + self.bq).min(self.sq) - 1;
            let span = RowSpan::new(rule, causal, self.sq, self.sk, i0, i1);
            if span.tile_any(j0, j1) {
                return (self.h as i32, 2 * qt + span.tile_full(j0, j1) as i32);
            }
            // Windows only move right: once a formula head's rows have left the tile behind
            // (past any sink), no later row comes back to it.
            if !sparse && span.first.lo > j1 && j0 >= row_window(rule, false, self.sq, self.sk, self.sq - 1).sink_end {
                self.qt = self.nqt;
            }
        }
        (-1, 0)
    }
}

/// Whether the walk's current head (after advancing) is block-sparse: list walks start at 0.
#[inline(always)]
fn sparse_next_head(p: &attn_common::FwdParams, w: &KvWalk) -> bool {
    w.h < w.group && head_rule(p, w.first_head + w.h).kind == KIND_BLOCK_SPARSE
}

/// Shared state of a `bwd_dkdv` CTA: the walk and two slots of upcoming query tiles (as in
/// `ItemCtx::slots`: iteration n reads slot (n + 1) % 2 while thread 0 refills slot n % 2).
#[repr(C)]
struct KvCtx {
    walk: KvWalk,
    slots: [[i32; 2]; 2],
}

/// Per query tile side data in shared memory, double buffered: lse (exp2 domain), D, windows;
/// room for 64 rows.
const SIDE_BYTES: u32 = (BWD_KEYS * (8 + size_of::<RowWindow>())) as u32;

/// Issues the copies of query tile `qt` (of `BQ` rows) of head `head` (Q and dO rows) into
/// buffer `buf` and writes its side data (threads `< BQ`, one row each).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn load_query_tile<E: Element, const D: usize, const BQ: usize>(bp: &BwdParams, s_base: u32, side_base: *mut u8, buf: u32, head: u32, qt: i32, seq: SeqInfo, batch: u32, tid: u32) {
    let p = &bp.f;
    let rb = (D * 2) as u32;
    let tile_bytes = BWD_KEYS as u32 * rb;
    let (s_qb, s_dob) = (s_base + (2 + buf) * tile_bytes, s_base + (4 + buf) * tile_bytes);
    let i0 = qt * BQ as i32;
    let rows = (seq.q_len - i0).min(BQ as i32);
    let q = p.q + 2 * elem_offset(&p.q_strides, batch, seq.q_start + i0, head) as u64;
    let d_o = bp.d_o + 2 * elem_offset(&bp.do_strides, batch, seq.q_start + i0, head) as u64;
    unsafe {
        load_tile::<D>(BQ as i32, 128, s_qb, q, 2 * p.q_strides.token, rows, p.head_dim / 8, tid);
        load_tile::<D>(BQ as i32, 128, s_dob, d_o, 2 * bp.do_strides.token, rows, p.head_dim / 8, tid);
    }
    if tid < BQ as u32 {
        let side = unsafe { side_base.add((buf * SIDE_BYTES) as usize) };
        let r = tid as i32;
        let (mut l, mut d) = (f32::INFINITY, 0.0f32);
        let rule = head_rule(p, head);
        if r < rows {
            let at = lse_index(p, batch, head, seq.q_start + i0 + r);
            l = lse2(unsafe { *(p.lse as *const f32).add(at as usize) });
            d = unsafe { *(bp.dsum as *const f32).add(at as usize) };
        }
        unsafe {
            *(side as *mut f32).add(tid as usize) = l;
            *(side.add(4 * BWD_KEYS) as *mut f32).add(tid as usize) = d;
            *(side.add(8 * BWD_KEYS) as *mut RowWindow).add(tid as usize) = row_window(rule, p.causal != 0, seq.q_len, seq.k_len, i0 + r);
        }
    }
}

/// dK and dV for one 64-key tile of one kv head: 4 warps of 16 keys, query tiles of `8 * NT`
/// rows (32 at D = 128, where dK, dV, Sᵀ and dPᵀ of 64-row tiles would not fit in registers).
#[inline(always)]
pub unsafe fn bwd_dkdv<E: Element, const D: usize, const DN: usize, const DK: usize, const NT: usize, const BQ: usize, const KT: usize>(
    bp: &BwdParams,
) {
    const MT: usize = 1;
    const { assert!(DN * 8 == D && DK * 16 == D && 4 * 16 == BWD_KEYS && NT * 8 == BQ && BQ <= BWD_KEYS && 2 * KT == NT) };
    let bq = NT as i32 * 8;
    const { assert!(size_of::<KvCtx>() <= FWD_CTX_BYTES) };
    let p = &bp.f;
    let threads = 128u32;
    let rb = (D * 2) as u32;
    let tid = thread_idx();
    let valid_chunks = p.head_dim / 8;
    let item: WorkItem = unsafe { *(bp.kv_items as *const WorkItem).add(block_idx() as usize) };
    let seq: SeqInfo = unsafe { *(p.seqs as *const SeqInfo).add(item.batch as usize) };
    let j0 = item.q_block as i32 * BWD_KEYS as i32;

    let smem = dynamic_smem();
    let s_k = smem_u32(smem);
    let tile_bytes = BWD_KEYS as u32 * rb;
    let s_v = s_k + tile_bytes; // then Q buffers 0, 1 and dO buffers 0, 1
    let tiles_bytes = 6 * tile_bytes as usize;
    let ctx = unsafe { smem.add(tiles_bytes) } as *mut KvCtx;
    let side = unsafe { smem.add(tiles_bytes + FWD_CTX_BYTES) };

    unsafe {
        let k = p.k + 2 * elem_offset(&p.k_strides, item.batch, seq.k_start + j0, item.head) as u64;
        let v = p.v + 2 * elem_offset(&p.v_strides, item.batch, seq.k_start + j0, item.head) as u64;
        load_tile::<D>(BWD_KEYS as i32, threads, s_k, k, 2 * p.k_strides.token, seq.k_len - j0, valid_chunks, tid);
        load_tile::<D>(BWD_KEYS as i32, threads, s_v, v, 2 * p.v_strides.token, seq.k_len - j0, valid_chunks, tid);
    }
    if tid == 0 {
        let causal = p.causal != 0;
        // Under causal, row i sees no key past i + Sk - Sq: skip the query tiles above.
        let qt_start = if causal { (j0 - seq.k_len + seq.q_len).max(0) / bq } else { 0 };
        let (g0, g1) = item.group_heads(p.group);
        let mut walk = KvWalk {
            h: g0,
            group: g1,
            first_head: item.head * p.group,
            batch: item.batch,
            qt: qt_start,
            bq,
            qt_start,
            nqt: (seq.q_len + bq - 1) / bq,
            j0,
            sq: seq.q_len,
            sk: seq.k_len,
            causal: p.causal,
        };
        if sparse_next_head(p, &walk) {
            walk.qt = 0;
        }
        unsafe {
            ctx.write(KvCtx { walk, slots: [[-1, 0], [-1, 0]] });
            let (h, t) = (*ctx).walk.next(bp);
            (*ctx).slots[0] = [h, t];
            let (h, t) = (*ctx).walk.next(bp);
            (*ctx).slots[1] = [h, t];
        }
    }
    bar_sync();
    let first = unsafe { (*ctx).slots[0] };
    let mut cur = first;
    if cur[0] >= 0 {
        unsafe { load_query_tile::<E, D, BQ>(bp, s_k, side, 0, item.head * p.group + cur[0] as u32, cur[1] / 2, seq, item.batch, tid) };
    }
    unsafe { commit() };

    let mut dk: Acc<MT, DN> = unsafe { core::mem::zeroed() };
    let mut dv: Acc<MT, DN> = unsafe { core::mem::zeroed() };
    let mut n = 0u32;
    while cur[0] >= 0 {
        let tid = opaque(tid);
        let s_k = opaque(s_k);
        let ctx_a = s_k + tiles_bytes as u32;
        let (lane, warp) = (tid % 32, tid / 32);
        let row0 = warp * 16;
        let buf = n % 2;
        let (s_qb, s_dob) = (s_k + (2 + buf) * tile_bytes, s_k + (4 + buf) * tile_bytes);
        let side_a = ctx_a + FWD_CTX_BYTES as u32 + buf * SIDE_BYTES;
        let ln = lanes(rb, row0, lane);

        unsafe { wait_group::<0>() };
        bar_sync(); // this query tile (and its side data) is in; the other buffers are free
        let slot = offset_of!(KvCtx, slots) + 8 * (1 - buf as usize);
        let next = unsafe { [ctx_i32(ctx_a, slot), ctx_i32(ctx_a, slot + 4)] };
        if tid == 0 {
            unsafe {
                let (h, t) = (*ctx).walk.next(bp);
                (*ctx).slots[buf as usize] = [h, t];
            }
        }
        if next[0] >= 0 {
            // The item's geometry is re-read from shared memory rather than kept in registers
            // across the loop.
            let side = unsafe { dynamic_smem().add(tiles_bytes + FWD_CTX_BYTES) };
            let w = offset_of!(KvCtx, walk);
            let (batch, head0) = unsafe { (ctx_i32(ctx_a, w + offset_of!(KvWalk, batch)) as u32, ctx_i32(ctx_a, w + offset_of!(KvWalk, first_head)) as u32) };
            let seq = unsafe { *(p.seqs as *const SeqInfo).add(batch as usize) };
            unsafe { load_query_tile::<E, D, BQ>(bp, s_k, side, 1 - buf, head0 + next[0] as u32, next[1] / 2, seq, batch, tid) };
        }
        unsafe { commit() };

        let j0 = unsafe { ctx_i32(ctx_a, offset_of!(KvCtx, walk) + offset_of!(KvWalk, j0)) };
        // Sᵀ = K Qᵀ (rows: this warp's 16 keys; columns: the tile's 64 query rows).
        let mut st = a_bt::<E, D, DK, MT, NT>(s_k, s_qb, ln);
        let full = cur[1] % 2 == 1;
        let lse_a = side_a;
        let d_a = side_a + 4 * BWD_KEYS as u32;
        let win_a = side_a + 8 * BWD_KEYS as u32;
        if !full {
            // Scores of pairs the query row does not see: -inf, so P = 0 below.
            for nt in 0..NT {
                for e in 0..2 {
                    let c = (nt * 8 + e) as u32 + (lane % 4) * 2;
                    let wa = win_a + c * size_of::<RowWindow>() as u32;
                    let w = unsafe { RowWindow { sink_end: ld_shared_u32(wa) as i32, lo: ld_shared_u32(wa + 4) as i32, hi: ld_shared_u32(wa + 8) as i32 } };
                    for h in 0..2usize {
                        let j = j0 + (row0 + lane / 4 + 8 * h as u32) as i32;
                        if !w.sees(j) {
                            st[0][nt][2 * h + e] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        for nt in 0..NT {
            for e in 0..2 {
                let c = (nt * 8 + e) as u32 + (lane % 4) * 2;
                let l = unsafe { f32::from_bits(ld_shared_u32(lse_a + 4 * c)) };
                for h in 0..2usize {
                    let x = &mut st[0][nt][2 * h + e];
                    *x = exp2(fma(*x, p.scale_log2, -l));
                }
            }
        }
        // Pᵀ rounded and packed once: it feeds dV and, unpacked, dS (the f32 copy would not
        // fit beside dK, dV and dPᵀ).
        let pt = pack_a::<E, MT, NT, KT>(&st);
        // dV += Pᵀ dO
        packed_b::<E, D, DN, MT, KT>(&mut dv, &pt, s_dob, ln);
        // dPᵀ = V dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ − D)
        let mut ds = a_bt::<E, D, DK, MT, NT>(s_v, s_dob, ln);
        for kk in 0..KT {
            for half in 0..2 {
                let nt = 2 * kk + half;
                let (x01, x23) = (E::unpack2(pt[0][kk][2 * half]), E::unpack2(pt[0][kk][2 * half + 1]));
                let pr = [x01.0, x01.1, x23.0, x23.1];
                for e in 0..2 {
                    let c = (nt * 8 + e) as u32 + (lane % 4) * 2;
                    let d = unsafe { f32::from_bits(ld_shared_u32(d_a + 4 * c)) };
                    for h in 0..2 {
                        ds[0][nt][2 * h + e] = pr[2 * h + e] * (ds[0][nt][2 * h + e] - d);
                    }
                }
            }
        }
        // dK += dSᵀ Q
        p_b::<E, D, DN, MT, NT>(&mut dk, &ds, s_qb, ln);
        cur = next;
        n += 1;
    }
    if first[0] < 0 {
        unsafe { wait_group::<0>() };
    }

    // Keys no query sees get zero gradients: every key tile is written.
    let item: WorkItem = unsafe { *(bp.kv_items as *const WorkItem).add(block_idx() as usize) };
    let seq: SeqInfo = unsafe { *(p.seqs as *const SeqInfo).add(item.batch as usize) };
    let j0 = item.q_block as i32 * BWD_KEYS as i32;
    let (lane, warp) = (tid % 32, tid / 32);
    let rows = seq.k_len - j0;
    let dk_row = |r: i32| elem_offset(&bp.dk_strides, item.batch, seq.k_start + j0 + r, item.head);
    let dv_row = |r: i32| elem_offset(&bp.dv_strides, item.batch, seq.k_start + j0 + r, item.head);
    let part_off = dkdv_part_offset(bp, &item);
    store_rows::<E, MT, DN>(&dk, bp.scale, bp.dkdv_mode, bp.dk + part_off, dk_row, warp * 16, lane, rows, valid_chunks);
    store_rows::<E, MT, DN>(&dv, 1.0, bp.dkdv_mode, bp.dv + part_off, dv_row, warp * 16, lane, rows, valid_chunks);
}

/// Byte offset of a key-side item's part buffer in `dk`, `dv` (`DKDV_PARTS`; 0 otherwise).
#[inline(always)]
pub(crate) fn dkdv_part_offset(bp: &BwdParams, item: &WorkItem) -> u64 {
    if bp.dkdv_mode != DKDV_PARTS {
        return 0;
    }
    let p = attn_common::part_of(item.group_heads(bp.f.group).0, bp.f.group, bp.parts);
    4 * p as u64 * bp.part_len
}
