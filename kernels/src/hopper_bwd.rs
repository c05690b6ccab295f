//! The Hopper dK/dV kernel (sm_90a): TMA, mbarriers, wgmma, warp specialisation, persistent grid.
//!
//! A CTA of 384 threads loops over key tiles (batch, kv head, 128 keys): first `blockIdx.x`,
//! then the next untaken one from a global counter (the list is heaviest first). Warp 0 lane 0
//! is the walker: per key tile it loads K and V (once the consumers are done with the previous
//! ones), then walks, for every query head of the GQA group in order, the 64-row query tiles
//! that see the key tile (the transposed plan, [`QueryTileWalk`]) and brings each tile's Q and
//! dO in with TMA into a ring of `HOPPER_BWD_STAGES` stages on mbarriers; warp 1 writes each
//! tile's row data (lse, D, windows) beside them. So the next key tile's K/V copies and walk
//! overlap the consumers' last products and their dK/dV stores. Warpgroups 1 and 2 are the
//! consumers, 64 keys each, with 224 registers; per query tile:
//! - Sᵀ = K Qᵀ and dPᵀ = V dOᵀ by wgmma from shared memory (keys are the rows, so the results
//!   are already the A operands of the next two products);
//! - Pᵀ = exp2(Sᵀ·scale − lse) (token mask first on partial tiles), dV += Pᵀ dO with Pᵀ from
//!   registers and dO read MN-major;
//! - dSᵀ = Pᵀ ∘ (dPᵀ − D), dK += dSᵀ Q likewise.
//! Summing the group inside one CTA in a fixed order keeps the GQA reduction deterministic: no
//! atomics. Where the plan splits a group over several items (`WorkItem::group_part`, so that few
//! kv heads still fill the GPU), each adds its dK, dV to `f32` sums with atomics (fast mode) or
//! stores its part's `f32` partial sums (deterministic mode). Rows past the sequence get
//! lse = +inf, so their P and dS are 0.
use attn_common::{
    BLK, DKDV_ADD, DKDV_STORE, HOPPER_BWD_KEYS, HOPPER_BWD_QUERIES, HOPPER_BWD_SIDE_BYTES, HOPPER_BWD_STAGES, HopperBwdParams, KIND_BLOCK_SPARSE, KeySpan,
    QueryTileWalk, RowWindow, SeqInfo, TENSOR_MAP_BYTES, WorkItem, row_window,
};

use crate::arch::math::{exp2, fma};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, ld_shared_u32, smem_u32};
use crate::arch::sync::{bar_sync, block_idx, next_work_item, thread_idx, warp_uniform};
use crate::arch::tma::{fence_mbar_init, mbar_arrive, mbar_arrive_expect_tx, mbar_init, mbar_wait, prefetch_tensormap, setmaxnreg_dec, setmaxnreg_inc, tma_load_4d};
use crate::arch::wgmma::{self, WgElement, desc, keep};
use crate::bwd::{dkdv_part_offset, lse2};
use crate::hopper::{OAcc, f32_acc_row, mma_rs_steps, pack_a, shared_ptr, store_acc_row};
use crate::item::{elem_offset, head_rule, lse_index};

const NS: u32 = HOPPER_BWD_STAGES as u32;
const BK: i32 = HOPPER_BWD_KEYS as i32;
const BQ: i32 = HOPPER_BWD_QUERIES as i32;
/// Bytes of one 64-column block of the K/V tile and of a Q/dO tile (rows of 128 bytes).
const HALF_KV: u32 = (HOPPER_BWD_KEYS * 128) as u32;
const HALF_Q: u32 = (HOPPER_BWD_QUERIES * 128) as u32;
const SIDE: u32 = HOPPER_BWD_SIDE_BYTES as u32;
/// Row data offsets within a stage's side block: lse, D, the row windows, then the tile's words
/// (flags, query head, first row, item index).
const SIDE_D: u32 = 4 * BQ as u32;
const SIDE_WIN: u32 = 8 * BQ as u32;
const SIDE_WORD: u32 = SIDE_WIN + (BQ as usize * size_of::<RowWindow>()) as u32;
/// The stage's flags word: `PARTIAL` when the tile needs the token mask; `END` marks a stage
/// that closes an item (no tile), `FINISH` one after the last item.
const PARTIAL: u32 = 1;
const END: u32 = u32::MAX;
const FINISH: u32 = u32::MAX - 1;
/// Registers per thread after `setmaxnreg`. The CTA starts with 168 per thread (384 threads,
/// one CTA per SM); `setmaxnreg.inc` waits for registers the producers gave back, so the two
/// budgets must fit in what the launch allocated, or the consumers wait forever.
const PRODUCER_REGS: u32 = 48;
const CONSUMER_REGS: u32 = 224;
const _: () = assert!(128 * PRODUCER_REGS + 256 * CONSUMER_REGS <= 384 * 168);
/// Arrivals on a full barrier: the walker's and the row-data warp's; on an empty one, every
/// consumer thread (each frees its own reads of the row data).
const ROW_DATA_LANES: u32 = 32;
const CONSUMER_THREADS: u32 = 256;

/// Shared-memory layout (32-bit `.shared` addresses).
#[derive(Clone, Copy)]
struct Smem {
    k: u32,
    v: u32,
    q: u32,
    d_o: u32,
    side: u32,
    bars: u32,
    q_bytes: u32,
}

impl Smem {
    #[inline(always)]
    fn new(base: u32, d: usize) -> Self {
        let kv_bytes = (HOPPER_BWD_KEYS * d * 2) as u32;
        let q_bytes = (HOPPER_BWD_QUERIES * d * 2) as u32;
        let k = base;
        let v = k + kv_bytes;
        let q = v + kv_bytes;
        let d_o = q + NS * q_bytes;
        let side = d_o + NS * q_bytes;
        Smem { k, v, q, d_o, side, bars: side + NS * SIDE, q_bytes }
    }
    fn q(&self, s: u32) -> u32 {
        self.q + s * self.q_bytes
    }
    fn d_o(&self, s: u32) -> u32 {
        self.d_o + s * self.q_bytes
    }
    fn side(&self, s: u32) -> u32 {
        self.side + s * SIDE
    }
    fn kv_full(&self) -> u32 {
        self.bars
    }
    /// The consumers are done with the item's K and V.
    fn kv_empty(&self) -> u32 {
        self.bars + 8 * (1 + 3 * NS)
    }
    fn full(&self, s: u32) -> u32 {
        self.bars + 8 * (1 + s)
    }
    fn empty(&self, s: u32) -> u32 {
        self.bars + 8 * (1 + NS + s)
    }
    /// The walker has written stage `s`'s words.
    fn words(&self, s: u32) -> u32 {
        self.bars + 8 * (1 + 2 * NS + s)
    }
}

#[inline(always)]
pub unsafe fn bwd_dkdv_hopper<E: Element + WgElement, O: OAcc>(p: &HopperBwdParams) {
    let tid = thread_idx();
    let sm = Smem::new(smem_u32(dynamic_smem()), O::D);
    if tid == 0 {
        unsafe {
            mbar_init(sm.kv_full(), 1);
            mbar_init(sm.kv_empty(), CONSUMER_THREADS);
            for s in 0..NS {
                mbar_init(sm.words(s), 1);
                mbar_init(sm.full(s), 1 + ROW_DATA_LANES);
                mbar_init(sm.empty(s), CONSUMER_THREADS);
            }
            fence_mbar_init();
        }
    }
    bar_sync();
    if tid < 128 {
        unsafe { setmaxnreg_dec::<PRODUCER_REGS>() };
        if tid == 0 {
            unsafe { walker::<O>(p, sm) };
        } else if tid / 32 == 1 {
            unsafe { row_data(p, sm, tid % 32) };
        }
    } else {
        unsafe { setmaxnreg_inc::<CONSUMER_REGS>() };
        unsafe { consumer::<E, O>(p, sm, tid / 128 - 1, tid % 128) };
    }
}

/// Key tile `idx` of the work list and its sequence.
#[inline(always)]
fn kv_item(p: &HopperBwdParams, idx: u32) -> (WorkItem, SeqInfo) {
    crate::item::item_at(&p.b.f, p.b.kv_items, idx)
}

/// Writes a stage's words (flags, query head, first row, item index).
#[inline(always)]
unsafe fn put_words(side: u32, w: [u32; 4]) {
    unsafe {
        *shared_ptr(side + SIDE_WORD) = w[0];
        *shared_ptr(side + SIDE_WORD + 4) = w[1];
        *shared_ptr(side + SIDE_WORD + 8) = w[2];
        *shared_ptr(side + SIDE_WORD + 12) = w[3];
    }
}

/// Warp 0, lane 0: for each key tile it takes (first `blockIdx.x`, then `gridDim.x +` a global
/// counter: a persistent grid), K and V once the consumers are done with the previous ones, then
/// every query tile of the walk through the ring: it writes the tile's words, wakes the row-data
/// warp ([`row_data`]) and issues the Q and dO copies; then a stage marked `END`. After the last
/// item, a stage marked `FINISH`.
#[inline(always)]
unsafe fn walker<O: OAcc>(p: &HopperBwdParams, sm: Smem) {
    let f = &p.b.f;
    let map = |i: u64| p.tensor_maps + i * TENSOR_MAP_BYTES as u64;
    let halves = (O::D / 64) as u32;
    unsafe {
        for i in 0..4 {
            prefetch_tensormap(map(i));
        }
    }
    let causal = f.causal != 0;
    let mut tile = 0u32;
    let mut n_item = 0u32;
    let mut idx = block_idx();
    while idx < p.n_items {
        let (item, seq) = kv_item(p, idx);
        let j0 = item.q_block as i32 * BK;
        let batch = if p.packed != 0 { 0 } else { item.batch as i32 };
        unsafe {
            mbar_wait(sm.kv_empty(), (n_item & 1) ^ 1);
            mbar_arrive_expect_tx(sm.kv_full(), 2 * (HOPPER_BWD_KEYS * O::D * 2) as u32);
            for h in 0..halves {
                let c = [h as i32 * 64, seq.k_start + j0, item.head as i32, batch];
                tma_load_4d(sm.k + h * HALF_KV, map(2), sm.kv_full(), c);
                tma_load_4d(sm.v + h * HALF_KV, map(3), sm.kv_full(), c);
            }
        }
        let (g0, g1) = item.group_heads(f.group);
        for g in g0..g1 {
            let head = item.head * f.group + g;
            let rule = head_rule(f, head);
            let span = KeySpan::new(rule, causal, seq.q_len, seq.k_len, j0, j0 + BK - 1);
            let mut walk = if rule.kind == KIND_BLOCK_SPARSE {
                // The transposed compacted mask: the query blocks that keep this key block.
                let mb = if f.mask_batch == 1 { 0 } else { item.batch };
                let col = ((mb * f.n_masks + rule.a) * f.mask_k_blocks) as usize + (j0 / BLK) as usize;
                let list = unsafe { (f.block_lists as *const i32).add(col * f.mask_q_blocks as usize) };
                QueryTileWalk::sparse(span, BQ, list, unsafe { *(f.block_counts as *const i32).add(col) })
            } else {
                QueryTileWalk::formula(span, BQ)
            };
            loop {
                let i0 = unsafe { walk.next() };
                if i0 < 0 {
                    break;
                }
                let s = tile % NS;
                let side = sm.side(s);
                unsafe {
                    mbar_wait(sm.empty(s), ((tile / NS) & 1) ^ 1);
                    put_words(side, [if span.tile_full(i0, i0 + BQ - 1) { 0 } else { PARTIAL }, head, i0 as u32, idx]);
                    mbar_arrive(sm.words(s));
                    mbar_arrive_expect_tx(sm.full(s), 2 * sm.q_bytes);
                    for h in 0..halves {
                        let c = [h as i32 * 64, seq.q_start + i0, head as i32, batch];
                        tma_load_4d(sm.q(s) + h * HALF_Q, map(0), sm.full(s), c);
                        tma_load_4d(sm.d_o(s) + h * HALF_Q, map(1), sm.full(s), c);
                    }
                }
                tile += 1;
            }
        }
        unsafe { mark(sm, tile, [END, 0, 0, idx]) };
        tile += 1;
        n_item += 1;
        idx = unsafe { next_work_item(p.counter) };
    }
    unsafe { mark(sm, tile, [FINISH, 0, 0, 0]) };
}

/// A stage with no tile (`END` or `FINISH`), through the same barriers.
#[inline(always)]
unsafe fn mark(sm: Smem, tile: u32, words: [u32; 4]) {
    let s = tile % NS;
    unsafe {
        mbar_wait(sm.empty(s), ((tile / NS) & 1) ^ 1);
        put_words(sm.side(s), words);
        mbar_arrive(sm.words(s));
        mbar_arrive(sm.full(s));
    }
}

/// Warp 1: for each tile the walker announced, its rows' lse (exp2 domain), D and windows
/// (two rows per lane), beside the Q and dO copies. A warp of its own: with the walk in the same
/// registers the producer warpgroup's 48 would not do.
#[inline(always)]
unsafe fn row_data(p: &HopperBwdParams, sm: Smem, lane: u32) {
    let f = &p.b.f;
    let causal = f.causal != 0;
    let mut tile = 0u32;
    loop {
        let s = tile % NS;
        let side = sm.side(s);
        unsafe { mbar_wait(sm.words(s), (tile / NS) & 1) };
        let word = unsafe { ld_shared_u32(side + SIDE_WORD) };
        if word != END && word != FINISH {
            let (head, i0) = unsafe { (ld_shared_u32(side + SIDE_WORD + 4), ld_shared_u32(side + SIDE_WORD + 8) as i32) };
            let (item, seq) = kv_item(p, unsafe { ld_shared_u32(side + SIDE_WORD + 12) });
            let rule = head_rule(f, head);
            for k in 0..2 {
                let r = lane + 32 * k;
                let i = i0 + r as i32;
                let (mut l, mut d) = (f32::INFINITY, 0.0f32);
                if i < seq.q_len {
                    let at = lse_index(f, item.batch, head, seq.q_start + i);
                    unsafe {
                        l = lse2(*(f.lse as *const f32).add(at as usize));
                        d = *(p.b.dsum as *const f32).add(at as usize);
                    }
                }
                let w = row_window(rule, causal, seq.q_len, seq.k_len, i);
                let wa = side + SIDE_WIN + r * size_of::<RowWindow>() as u32;
                unsafe {
                    *(shared_ptr(side + 4 * r) as *mut f32) = l;
                    *(shared_ptr(side + SIDE_D + 4 * r) as *mut f32) = d;
                    *(shared_ptr(wa) as *mut i32) = w.sink_end;
                    *(shared_ptr(wa + 4) as *mut i32) = w.lo;
                    *(shared_ptr(wa + 8) as *mut i32) = w.hi;
                }
            }
        }
        unsafe { mbar_arrive(sm.full(s)) };
        if word == FINISH {
            break;
        }
        tile += 1;
    }
}

/// Issues acc = A Bᵀ over the head dim for a 64 x 64 result: A 64 rows of the K or V tile
/// (`HALF_KV` bytes per 64 columns), B a Q or dO stage (`HALF_Q` per 64 columns), both K-major in
/// shared memory.
#[inline(always)]
unsafe fn issue_ss<E: WgElement, O: OAcc>(acc: &mut [f32; 32], a: u64, b: u64) {
    let step = |kk: usize, half: u32| ((kk / 4) as u32 * half + (kk % 4) as u32 * 32) as u64 >> 4;
    for kk in 0..O::D / 16 {
        unsafe { E::mma_ss_n64(acc, a + step(kk, HALF_KV), b + step(kk, HALF_Q), kk > 0) };
    }
}

/// One consumer warpgroup (`c` = 0 or 1: keys 64c..64c + 64 of the tile); `t` is the thread's
/// index in it.
#[inline(always)]
unsafe fn consumer<E: Element + WgElement, O: OAcc>(p: &HopperBwdParams, sm: Smem, c: u32, t: u32) {
    let (warp, lane) = (t / 32, t % 32);
    let scale = p.b.f.scale_log2;
    let mut tile = 0u32;
    let mut n_item = 0u32;
    loop {
        // The item's first stage: a tile, its END mark (no query tile sees the keys), or FINISH.
        let (s, side, mut word) = unsafe { stage_word(sm, tile) };
        if word == FINISH {
            break;
        }
        let idx = unsafe { ld_shared_u32(side + SIDE_WORD + 12) };
        let (item, seq) = kv_item(p, idx);
        let key = item.q_block as i32 * BK + (c * 64 + warp * 16 + lane / 4) as i32; // and key + 8
        let mut dk = O::zero();
        let mut dv = O::zero();
        unsafe { mbar_wait(sm.kv_full(), n_item & 1) };
        let mut s = s;
        let mut side = side;
        while word != END {
            unsafe { tile_products::<E, O>(sm, s, side, word, key, scale, c, lane, &mut dk, &mut dv) };
            tile += 1;
            (s, side, word) = unsafe { stage_word(sm, tile) };
        }
        // The END stage and, the products being done, K and V go back to the walker.
        unsafe {
            mbar_arrive(sm.empty(s));
            mbar_arrive(sm.kv_empty());
        }
        tile += 1;
        n_item += 1;
        unsafe { store_dkdv::<E, O>(p, &item, &seq, key, lane, &mut dk, &mut dv) };
    }
}

/// Waits for stage `tile` of the ring: its index, side block and flags word.
#[inline(always)]
unsafe fn stage_word(sm: Smem, tile: u32) -> (u32, u32, u32) {
    let s = tile % NS;
    unsafe { mbar_wait(sm.full(s), (tile / NS) & 1) };
    let side = sm.side(s);
    (s, side, unsafe { ld_shared_u32(side + SIDE_WORD) })
}

/// The four products of one query tile (stage `s`, flags `word`) for this warpgroup's keys (the
/// thread's first key `key`), accumulated into dK and dV; frees the stage.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_products<E: Element + WgElement, O: OAcc>(sm: Smem, s: u32, side: u32, word: u32, key: i32, scale: f32, c: u32, lane: u32, dk: &mut O, dv: &mut O) {
    {
        // Uniform for ptxas (`warp_uniform`): the products then issue back to back.
        let (q_s, do_s) = (warp_uniform(sm.q(s)), warp_uniform(sm.d_o(s)));
        // Built in the loop from an opaque value (`warp_uniform` is one): hoisted, the 16
        // descriptors of the K and V steps would be held (and spilled) across it.
        let c_off = warp_uniform(c) * 64 * 128;
        let (da_k, da_v) = (desc(sm.k + c_off, 16, 1024), desc(sm.v + c_off, 16, 1024));
        let mut st = [0.0f32; 32];
        let mut dp = [0.0f32; 32];
        unsafe {
            keep(&mut st);
            wgmma::fence();
            issue_ss::<E, O>(&mut st, da_k, desc(q_s, 16, 1024));
            wgmma::commit();
            wgmma::wait::<0>();
            keep(&mut st);
        }
        // This thread's columns (query rows of the tile): 8n + col0 + e.
        let col0 = 2 * (lane % 4);
        if word & PARTIAL != 0 {
            // Scores of pairs the query row does not see: -inf, so P = 0 below.
            for n in 0..8 {
                for e in 0..2 {
                    let wa = side + SIDE_WIN + ((8 * n + e) as u32 + col0) * size_of::<RowWindow>() as u32;
                    let w = unsafe { RowWindow { sink_end: ld_shared_u32(wa) as i32, lo: ld_shared_u32(wa + 4) as i32, hi: ld_shared_u32(wa + 8) as i32 } };
                    for h in 0..2 {
                        if !w.sees(key + 8 * h as i32) {
                            st[4 * n + 2 * h + e] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        for n in 0..8 {
            for e in 0..2 {
                let l = unsafe { f32::from_bits(ld_shared_u32(side + 4 * ((8 * n + e) as u32 + col0))) };
                for h in 0..2 {
                    let x = &mut st[4 * n + 2 * h + e];
                    *x = exp2(fma(*x, scale, -l));
                }
            }
        }
        // Pᵀ rounded once: it feeds dV and, unpacked, dS (as the portable kernel).
        let mut pa = pack_a::<E, 32, 16>(&st);
        // dPᵀ is issued only now: during the mask and exponentials above its 32 accumulators
        // would not fit beside dK, dV and Sᵀ at D = 128.
        unsafe {
            keep(&mut dp);
            keep(dv);
            keep(&mut pa);
            wgmma::fence();
            issue_ss::<E, O>(&mut dp, da_v, desc(do_s, 16, 1024));
            wgmma::commit();
            mma_rs_steps::<E, O, 16>(dv, &pa, desc(do_s, HALF_Q, 1024));
            wgmma::commit();
            wgmma::wait::<1>(); // dPᵀ is done (groups complete in order)
            keep(&mut dp);
        }
        for n in 0..8 {
            for h in 0..2 {
                let (p0, p1) = E::unpack2(pa[4 * (n / 2) + 2 * (n % 2) + h]);
                for e in 0..2 {
                    let pr = if e == 0 { p0 } else { p1 };
                    let d = unsafe { f32::from_bits(ld_shared_u32(side + SIDE_D + 4 * ((8 * n + e) as u32 + col0))) };
                    dp[4 * n + 2 * h + e] = pr * (dp[4 * n + 2 * h + e] - d);
                }
            }
        }
        let mut dsa = pack_a::<E, 32, 16>(&dp);
        unsafe {
            keep(dk);
            keep(&mut dsa);
            wgmma::fence();
            mma_rs_steps::<E, O, 16>(dk, &dsa, desc(q_s, HALF_Q, 1024));
            wgmma::commit();
            wgmma::wait::<0>();
            keep(dk);
            keep(dv);
            keep(&mut pa);
            keep(&mut dsa);
            mbar_arrive(sm.empty(s));
        }
    }
}

/// Writes the item's dK (times the softmax scale) and dV rows of this thread's two keys in the
/// input type, or, for a split group, adds them to the `f32` sums (`DKDV_ADD`) or stores its
/// part's `f32` sums (`DKDV_PARTS`). Keys no query sees get zero gradients:
/// every key of the tile is written.
#[inline(always)]
unsafe fn store_dkdv<E: Element, O: OAcc>(p: &HopperBwdParams, item: &WorkItem, seq: &SeqInfo, key: i32, lane: u32, dk: &mut O, dv: &mut O) {
    let bp = &p.b;
    let valid_chunks = bp.f.head_dim / 8;
    let f32_sums = bp.dkdv_mode != DKDV_STORE;
    let bytes = if f32_sums { 4 } else { 2 };
    let part_off = dkdv_part_offset(bp, item);
    for h in 0..2 {
        let j = key + 8 * h as i32;
        let valid = j < seq.k_len;
        let dk_row = bp.dk + part_off + bytes * elem_offset(&bp.dk_strides, item.batch, seq.k_start + j, item.head) as u64;
        let dv_row = bp.dv + part_off + bytes * elem_offset(&bp.dv_strides, item.batch, seq.k_start + j, item.head) as u64;
        unsafe {
            if f32_sums {
                if valid {
                    let add = bp.dkdv_mode == DKDV_ADD;
                    f32_acc_row::<O>(dk, h, bp.scale, dk_row, lane, valid_chunks, add);
                    f32_acc_row::<O>(dv, h, 1.0, dv_row, lane, valid_chunks, add);
                }
            } else {
                store_acc_row::<E, O>(dk, h, bp.scale, dk_row, valid, lane, valid_chunks);
                store_acc_row::<E, O>(dv, h, 1.0, dv_row, valid, lane, valid_chunks);
            }
        }
    }
}
