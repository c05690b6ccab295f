//! The Hopper forward kernel (sm_90a): TMA, mbarriers, wgmma, warp specialisation and a
//! persistent grid.
//!
//! A CTA of three warpgroups loops over work items: first item `blockIdx.x`, then the next
//! untaken one from a global counter (the plan orders them heaviest first within groups of heads
//! that share L2, so the short items fill the tail). Warpgroup 0 is the producer: one thread
//! claims the items and walks each item's key tiles (128 keys, one mask block), bringing the K/V
//! tiles in with TMA, into rings of `HOPPER_K_STAGES` K and `HOPPER_V_STAGES` V stages guarded by
//! mbarriers (K and V apart, so a K stage refills while its V is still in use); another thread
//! brings each claimed item's Q (two slots: the next item's Q loads while this one runs) as soon
//! as its slot is free. The warpgroup keeps 40 registers. Its warp 1 is the storer:
//! the consumers stage a finished item's O in the item's Q slot and the storer writes it out (TMA
//! for whole blocks), so no consumer waits on global stores. Warpgroups 1 and 2 are the
//! consumers, 64 query rows each, with 232 registers: S = Q Kᵀ by wgmma from shared memory, the
//! token mask on partial tiles only, the online softmax in registers, then O += P V by wgmma with
//! P straight from the S registers. The two consumers are not synchronised with each other, so the softmax of one
//! overlaps the tensor-core work of the other.
//!
//! The producer tells the consumers which item comes next (a shared word published with the Q
//! tile, `NO_ITEM` when the work is done) and which tile each stage holds (a small ring in
//! shared memory: the tile's first key, `LAST` on an item's last tile, `EMPTY` for an item with
//! no tile at all, whose rows get o = 0, lse = -inf).
use attn_common::{
    BLK, HOPPER_KEYS, HOPPER_Q_TILES, HOPPER_ROWS, HOPPER_K_STAGES, HOPPER_V_STAGES, HeadRule, HopperFwdParams,
    KIND_TOKEN_STREAMING, RowSpan, RowWindow, SeqInfo, TENSOR_MAP_BYTES, WorkItem, row_window,
};

use crate::arch::global::{red_add_f32, st_global_v4};
use crate::arch::math::{exp2, fma, log2, rcp};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, fence_proxy_async_shared, ld_shared_u32, ld_shared_v4, smem_u32, st_shared_u32, st_shared_v4, stmatrix_x4};
use crate::arch::sync::{bar_any, bar_sync, block_idx, next_work_item, opaque, quad_transpose, shfl_idx, shfl_xor, thread_idx, vote_any, warp_uniform};
use crate::arch::tma::{fence_mbar_init, mbar_arrive, mbar_arrive_expect_tx, mbar_init, mbar_wait, prefetch_tensormap, setmaxnreg_dec, setmaxnreg_inc, tma_load_4d, tma_store_4d, bulk_wait_read};
use crate::arch::wgmma::{self, Keep, WgElement, desc, keep};
use crate::item::{self, elem_offset, head_rule, item_walk, lse_index};

const LN2: f32 = core::f32::consts::LN_2;
/// As in the portable kernel: O and l are rescaled only when a row's max grows by more than this
/// (log2 units) past the max they are kept against.
const RESCALE_SLACK: f32 = 8.0;
const NS: u32 = HOPPER_K_STAGES as u32;
const NV: u32 = HOPPER_V_STAGES as u32;
const NQ: u32 = HOPPER_Q_TILES as u32;
pub(crate) const BK: i32 = HOPPER_KEYS as i32;
/// Bytes of one 64-column block of a 128-row tile (rows of 128 bytes).
pub(crate) const HALF: u32 = (HOPPER_ROWS * 128) as u32;
/// Tile ring entries: the tile's first key (a multiple of 128), with `LAST` set on the item's
/// last tile and `FULL` on a tile every row of the item sees whole (no mask; the forward's
/// consumers run [`softmax_fast`] on those).
pub(crate) const LAST: i32 = 1 << 30;
pub(crate) const FULL: i32 = 1;

/// The first key of a ring entry's tile.
#[inline(always)]
pub(crate) fn tile_j0(e: i32) -> i32 {
    e & !(LAST | FULL)
}
pub(crate) const EMPTY: i32 = -1;
/// The producer claims the next item once this many of the current item's mask blocks are left
/// to load (see [`producer`]).
const CLAIM_BLOCKS_LEFT: i32 = 2;
/// The item slot's value once every item has been taken.
pub(crate) const NO_ITEM: u32 = u32::MAX;

/// A timeline probe of the profiling build (feature `trace`, see `crate::trace`); nothing
/// otherwise.
macro_rules! tmark {
    ($tr:ident, $code:expr) => {
        #[cfg(feature = "trace")]
        $tr.mark($code);
    };
}
/// Arrivals that free a K or V stage: lane 0 of each of the 8 consumer warps.
const CONSUMER_WARPS: u32 = 8;
/// Arrivals that free a dQ kernel's Q slot, and that mark a forward item's O staged (`o_full`):
/// every consumer thread, each after its own accesses to the slot (with lane 0 arriving for its
/// warp after a `syncwarp`, ordered too in the PTX memory model, racecheck reported the
/// producer's next write of the slot as a race: perf notes, session 8, V6).
pub(crate) const CONSUMER_THREADS: u32 = 256;
/// The forward's O writer: warp 1 of the producer warpgroup ([`storer`]). It, not the consumers,
/// hands a forward Q slot back.
const STORER_THREADS: u32 = 32;

/// The O accumulator of one consumer thread for a head dim (`[f32; D / 2]`).
pub trait OAcc: Keep + Copy {
    const D: usize;
    fn zero() -> Self;
    fn v(&mut self) -> &mut [f32];
    /// O += A B for one 16-key step (`B` = V, MN-major).
    unsafe fn mma<E: WgElement>(&mut self, a: [u32; 4], b: u64);
}

macro_rules! o_acc {
    ($n:literal, $d:literal, $mma:ident) => {
        impl OAcc for [f32; $n] {
            const D: usize = $d;
            fn zero() -> Self {
                [0.0; $n]
            }
            fn v(&mut self) -> &mut [f32] {
                self
            }
            #[inline(always)]
            unsafe fn mma<E: WgElement>(&mut self, a: [u32; 4], b: u64) {
                unsafe { E::$mma(self, a, b) }
            }
        }
    };
}
o_acc!(32, 64, mma_rs_n64);
o_acc!(64, 128, mma_rs_n128);

/// Shared-memory layout (32-bit `.shared` addresses): `NQ` slots of query-side tiles (`QT` per
/// item: Q, or Q and dO for the backward's dQ kernel), `NS` K stages, `NV` V stages, then the
/// barriers, the tile ring (one entry per K stage) and the item slots.
#[derive(Clone, Copy)]
pub(crate) struct Smem<const NS: u32, const NV: u32, const QT: u32, const NQ: u32> {
    q: u32,
    pub(crate) k: u32,
    pub(crate) v: u32,
    pub(crate) tile_bytes: u32,
    bars: u32,
}

impl<const NS: u32, const NV: u32, const QT: u32, const NQ: u32> Smem<NS, NV, QT, NQ> {
    #[inline(always)]
    pub(crate) fn new(base: u32, d: usize) -> Self {
        // Q tiles and K/V tiles share one size and one column-block stride (`HALF`).
        const { assert!(HOPPER_ROWS == HOPPER_KEYS) };
        // Barriers, item slots, tile ring, `o_full`, `claimed`, `taken` and the claim boxes fit
        // the 1 KiB block the smem sizes reserve.
        const { assert!(16 * (NQ + NS + NV) + 64 * NQ + 4 * NS + 8 + 8 * NQ + 16 * NQ + 4 * NQ <= 1024) };
        let tile_bytes = (HOPPER_KEYS * d * 2) as u32;
        let q = base;
        let k = q + NQ * QT * tile_bytes;
        let v = k + NS * tile_bytes;
        Smem { q, k, v, tile_bytes, bars: v + NV * tile_bytes }
    }
    /// Query-side tile `t` (0: Q, 1: dO) of slot `b`.
    pub(crate) fn q(&self, b: u32, t: u32) -> u32 {
        self.q + (b * QT + t) * self.tile_bytes
    }
    pub(crate) fn q_full(&self, b: u32) -> u32 {
        self.bars + 8 * b
    }
    pub(crate) fn q_empty(&self, b: u32) -> u32 {
        self.bars + 8 * (NQ + b)
    }
    pub(crate) fn k_full(&self, s: u32) -> u32 {
        self.bars + 16 * NQ + 8 * s
    }
    pub(crate) fn k_empty(&self, s: u32) -> u32 {
        self.bars + 16 * NQ + 8 * (NS + s)
    }
    pub(crate) fn v_full(&self, s: u32) -> u32 {
        self.bars + 16 * (NQ + NS) + 8 * s
    }
    pub(crate) fn v_empty(&self, s: u32) -> u32 {
        self.bars + 16 * (NQ + NS) + 8 * (NV + s)
    }
    /// The item Q tile `b` belongs to: its index (`NO_ITEM` at the end), then its `WorkItem`,
    /// `SeqInfo` and `HeadRule` (13 words; 16-byte aligned).
    pub(crate) fn item(&self, b: u32) -> u32 {
        self.bars + 16 * (NQ + NS + NV) + 64 * b
    }
    pub(crate) fn ring(&self, s: u32) -> u32 {
        self.bars + 16 * (NQ + NS + NV) + 64 * NQ + 4 * s
    }
    /// The forward's lse of row `r` of the item in Q slot `b`, staged for the storer (past the
    /// 1 KiB block: `hopper_fwd_smem_bytes` reserves it; the dQ kernel has none).
    fn lse_row(&self, b: u32, r: u32) -> u32 {
        self.bars + 1024 + 4 * (HOPPER_ROWS as u32 * b + r)
    }
    /// The forward's "O of the item in slot `b` is staged there" barrier (every consumer thread
    /// arrives; the storer waits).
    fn o_full(&self, b: u32) -> u32 {
        ((self.ring(NS) + 7) & !7) + 8 * b
    }
    /// "The item of Q slot `b` is claimed" (the [`producer`] arrives once it has written the item's
    /// index to [`Smem::claim_box`]; the [`q_loader`] waits).
    fn claimed(&self, b: u32) -> u32 {
        self.o_full(NQ) + 8 * b
    }
    /// "Claim box `b` is read" (the [`q_loader`] arrives; the [`producer`] waits before it
    /// writes the box again).
    fn taken(&self, b: u32) -> u32 {
        self.claimed(NQ) + 8 * b
    }
    /// The index of the item whose Q goes to slot `b` (`>= n_items`: none is left).
    fn claim_box(&self, b: u32) -> u32 {
        self.taken(NQ) + 4 * b
    }
    /// Initialises the barriers (one thread, before the CTA barrier that publishes them); a Q
    /// slot goes back to the producer after `q_release` arrivals.
    #[inline(always)]
    pub(crate) unsafe fn init_barriers(&self, q_release: u32) {
        unsafe {
            for b in 0..NQ {
                mbar_init(self.q_full(b), 1);
                mbar_init(self.q_empty(b), q_release);
                mbar_init(self.o_full(b), CONSUMER_THREADS);
                mbar_init(self.claimed(b), 1);
                mbar_init(self.taken(b), 1);
            }
            for s in 0..NS {
                mbar_init(self.k_full(s), 1);
                mbar_init(self.k_empty(s), CONSUMER_WARPS);
            }
            for s in 0..NV {
                mbar_init(self.v_full(s), 1);
                mbar_init(self.v_empty(s), CONSUMER_WARPS);
            }
            fence_mbar_init();
        }
    }
}

/// The item's description as the producer publishes it with the Q tile: the consumers would
/// otherwise start every item with three dependent global loads.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ItemInfo {
    pub idx: u32,
    pub item: WorkItem,
    pub seq: SeqInfo,
    pub rule: HeadRule,
}

const INFO_WORDS: usize = size_of::<ItemInfo>() / 4;

/// Item `idx` of the work list with its sequence and head rule (`idx < n_items`).
#[inline(always)]
fn item_at(p: &HopperFwdParams, idx: u32) -> (WorkItem, SeqInfo, HeadRule) {
    let (item, seq) = item::item_at(&p.f, p.f.items, idx);
    (item, seq, head_rule(&p.f, item.head))
}

/// The warp-specialised CTA of the persistent Hopper kernels that share this producer: thread 0
/// initialises the barriers of `sm` (a Q slot freed by `q_release` arrivals); warpgroup 0 keeps
/// 40 registers, its threads 0 and 64 run `producers` with `$w` (the thread) bound ([`producer`],
/// [`q_loader`]) and its warp 1 `storer` with `$s` (the lane) bound, where given; warpgroups 1
/// and 2 take 232 (40 × 128 + 232 × 256 is what the launch allocated, 168 × 384:
/// `setmaxnreg.inc` waits for registers given back) and run `consumer` with `c` (the consumer's
/// index) and `t` (the thread's index in it) bound. A macro, not a function taking closures:
/// closures' captures ended up in local memory.
macro_rules! specialise {
    ($sm:expr, $q_release:expr, |$w:ident| $producers:expr, |$c:ident, $t:ident| $consumer:expr) => {
        specialise!($sm, $q_release, |$w| $producers, |_s| (), |$c, $t| $consumer)
    };
    ($sm:expr, $q_release:expr, |$w:ident| $producers:expr, |$s:ident| $storer:expr, |$c:ident, $t:ident| $consumer:expr) => {{
        let tid = thread_idx();
        if tid == 0 {
            unsafe { $sm.init_barriers($q_release) };
        }
        bar_sync();
        if tid < 128 {
            unsafe { setmaxnreg_dec::<40>() };
            if tid == 0 || tid == 64 {
                let $w = tid;
                unsafe { $producers };
            } else if tid / 32 == 1 {
                let $s = tid - 32;
                $storer;
            }
        } else {
            unsafe { setmaxnreg_inc::<232>() };
            let ($c, $t) = (tid / 128 - 1, tid % 128);
            unsafe { $consumer };
        }
    }};
}
pub(crate) use specialise;

#[inline(always)]
pub unsafe fn attn_fwd_hopper<E: Element + WgElement, O: OAcc>(p: &HopperFwdParams) {
    let sm = Smem::<NS, NV, 1, NQ>::new(smem_u32(dynamic_smem()), O::D);
    specialise!(sm, STORER_THREADS, |w| producers::<O, NS, NV, 1, NQ>(p, sm, w), |s| unsafe { storer::<O>(p, sm, s) }, |c, t| consumer::<E, O>(p, sm, c, t));
}

/// Thread 0 runs the [`producer`], thread 64 the [`q_loader`].
#[inline(always)]
pub(crate) unsafe fn producers<O: OAcc, const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(p: &HopperFwdParams, sm: Smem<NS, NV, QT, NQ>, w: u32) {
    if w == 0 {
        unsafe { producer::<O, NS, NV, QT, NQ>(p, sm) }
    } else {
        unsafe { q_loader::<O, NS, NV, QT, NQ>(p, sm) }
    }
}

/// One thread: claims the items (the first `blockIdx.x`, then from the global counter), hands
/// each to the [`q_loader`] as soon as it is claimed, and brings every key tile of its walk
/// through the ring.
#[inline(always)]
pub(crate) unsafe fn producer<O: OAcc, const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(p: &HopperFwdParams, sm: Smem<NS, NV, QT, NQ>) {
    let maps = p.tensor_maps;
    let (map_k, map_v) = (maps + TENSOR_MAP_BYTES as u64, maps + 2 * TENSOR_MAP_BYTES as u64);
    unsafe {
        prefetch_tensormap(map_k);
        prefetch_tensormap(map_v);
    }
    let halves = (O::D / 64) as i32;
    let tile_bytes = sm.tile_bytes;
    let mut tile = 0u32;
    let mut n_item = 0u32;
    // Every item goes to the Q loader as it is claimed.
    let mut idx = block_idx();
    unsafe { hand_over(sm, 0, idx) };
    // The next item once claimed during this one (`NO_ITEM`: not yet).
    let mut ahead = NO_ITEM;
    // Probes in the forward only: the host reserves their lists for it alone.
    #[cfg(feature = "trace")]
    let mut tr = crate::trace::Trace::new(p.counter, block_idx(), 0, QT == 1);
    loop {
        if idx >= p.n_items {
            break;
        }
        let (item, seq, rule) = item_at(p, idx);
        tmark!(tr, 10);
        let f = &p.f;
        let i0 = item.q_block as i32 * BLK;
        let i1 = (i0 + BLK).min(seq.q_len) - 1;
        let span = RowSpan::new(rule, f.causal != 0, seq.q_len, seq.k_len, i0, i1);
        // Token streaming's items are a few tiles long: holding a K stage through the softmax
        // (what a max-free tile needs) costs them more than the max (perf notes F11; session 9,
        // W16). Block streaming's whole middle tiles gain from it since the storer took the
        // epilogue's stores (W16). An empty range marks no tile full.
        let (full_from, full_to) = if rule.kind == KIND_TOKEN_STREAMING { (1, 0) } else { (span.last.lo, span.first.hi) };
        let mut walk = unsafe { item_walk(f, &item, rule, span, BK) };
        let batch = if p.packed != 0 { 0 } else { item.batch as i32 };
        let kv_head = (item.head / f.group) as i32;
        let mut j0 = unsafe { walk.next() };
        if j0 < 0 {
            let (s, vs) = (tile % NS, tile % NV);
            unsafe {
                mbar_wait(sm.k_empty(s), ((tile / NS) & 1) ^ 1);
                *(shared_ptr(sm.ring(s))) = EMPTY as u32;
                mbar_arrive(sm.k_full(s));
                mbar_wait(sm.v_empty(vs), ((tile / NV) & 1) ^ 1);
                mbar_arrive(sm.v_full(vs));
            }
            tile += 1;
        }
        while j0 >= 0 {
            let next = unsafe { walk.next() };
            let (s, vs) = (tile % NS, tile % NV);
            unsafe {
                mbar_wait(sm.k_empty(s), ((tile / NS) & 1) ^ 1);
                tmark!(tr, 12);
                // Every row sees the whole tile (a tile in the sink only counts as partial).
                let full = if j0 >= full_from && j0 + BK - 1 <= full_to { FULL } else { 0 };
                *(shared_ptr(sm.ring(s))) = (j0 | full | if next < 0 { LAST } else { 0 }) as u32;
                let row = seq.k_start + j0;
                mbar_arrive_expect_tx(sm.k_full(s), tile_bytes);
                for h in 0..halves {
                    tma_load_4d(sm.k + s * tile_bytes + h as u32 * HALF, map_k, sm.k_full(s), [h * 64, row, kv_head, batch]);
                }
                mbar_wait(sm.v_empty(vs), ((tile / NV) & 1) ^ 1);
                tmark!(tr, 13);
                mbar_arrive_expect_tx(sm.v_full(vs), tile_bytes);
                for h in 0..halves {
                    tma_load_4d(sm.v + vs * tile_bytes + h as u32 * HALF, map_v, sm.v_full(vs), [h * 64, row, kv_head, batch]);
                }
            }
            tile += 1;
            j0 = next;
            // The next item is claimed with `CLAIM_BLOCKS_LEFT` of this one's tiles still to
            // load: the atomic's latency (~900 cycles under load) then passes while the producer
            // would wait for a stage anyway, not between the items (a 4-tile streaming item's
            // successor's Q went out late), and a long item's successor is not held back for
            // long (claimed at an item's start, it unbalanced the longest-first schedule: perf
            // notes, session 9, W3). Its Q goes out while this item's last tiles load.
            if ahead == NO_ITEM && walk.blocks_left() <= CLAIM_BLOCKS_LEFT {
                ahead = unsafe { next_work_item(p.counter) };
                unsafe { hand_over(sm, n_item + 1, ahead) };
            }
        }
        n_item += 1;
        if ahead == NO_ITEM {
            // An item with no tile claims its successor here.
            ahead = unsafe { next_work_item(p.counter) };
            unsafe { hand_over(sm, n_item, ahead) };
        }
        (idx, ahead) = (ahead, NO_ITEM);
        tmark!(tr, 14);
    }
}

/// The producer's `n_item`-th item (index `idx`, `>= n_items` for none) goes to the [`q_loader`],
/// once the loader has read what the box held before. (Items of one tile or none let the
/// producer run two items ahead of the loader.)
#[inline(always)]
unsafe fn hand_over<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, n_item: u32, idx: u32) {
    let b = n_item % NQ;
    unsafe {
        mbar_wait(sm.taken(b), ((n_item / NQ) & 1) ^ 1);
        st_shared_u32(sm.claim_box(b), idx);
        mbar_arrive(sm.claimed(b));
    }
}

/// One thread: for each item the [`producer`] hands over, once its Q slot is free, publishes the
/// item's description there and brings its Q (and dO, `QT` = 2: tensor map 3); `NO_ITEM` once
/// none is left. Apart from the producer, so that an item's Q goes out as soon as the item is
/// claimed, not after the K / V tiles of the item before (each waits for a free stage): a token
/// streaming item's Q landed after the consumers were ready for it (perf notes, session 11).
#[inline(always)]
pub(crate) unsafe fn q_loader<O: OAcc, const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(p: &HopperFwdParams, sm: Smem<NS, NV, QT, NQ>) {
    let maps = p.tensor_maps;
    unsafe { prefetch_tensormap(maps) };
    let halves = (O::D / 64) as i32;
    let mut n_item = 0u32;
    #[cfg(feature = "trace")]
    let mut tr = crate::trace::Trace::new(p.counter, block_idx(), 3, QT == 1);
    loop {
        let b = n_item % NQ;
        let phase = (n_item / NQ) & 1;
        let idx = unsafe {
            mbar_wait(sm.claimed(b), phase);
            let idx = ld_shared_u32(sm.claim_box(b));
            mbar_arrive(sm.taken(b));
            idx
        };
        unsafe { mbar_wait(sm.q_empty(b), phase ^ 1) };
        if idx >= p.n_items {
            // Tell the consumers, once they are done with the slot.
            unsafe {
                st_shared_u32(sm.item(b), NO_ITEM);
                mbar_arrive(sm.q_full(b));
            }
            break;
        }
        // The item's tables are read here and again by the producer for its walk: the producer
        // claims an item while the one before still holds its 40 registers, too few to carry the
        // description over to the loader too.
        let (item, seq, rule) = item_at(p, idx);
        let batch = if p.packed != 0 { 0 } else { item.batch as i32 };
        let i0 = item.q_block as i32 * BLK;
        tmark!(tr, 11);
        unsafe {
            write_item(sm.item(b), ItemInfo { idx, item, seq, rule });
            mbar_arrive_expect_tx(sm.q_full(b), QT * (HOPPER_ROWS * O::D * 2) as u32);
            for t in 0..QT {
                let map = if t == 0 { maps } else { maps + 3 * TENSOR_MAP_BYTES as u64 };
                for h in 0..halves {
                    tma_load_4d(sm.q(b, t) + h as u32 * HALF, map, sm.q_full(b), [h * 64, seq.q_start + i0, item.head as i32, batch]);
                }
            }
        }
        n_item += 1;
    }
}

/// A generic pointer to a shared-memory word given its 32-bit `.shared` address.
#[inline(always)]
pub(crate) fn shared_ptr(addr: u32) -> *mut u32 {
    let r: u64;
    unsafe {
        core::arch::asm!("{{ .reg .u64 t; cvt.u64.u32 t, {a}; cvta.shared.u64 {r}, t; }}", a = in(reg32) addr, r = out(reg64) r,
                         options(pure, nomem, nostack));
    }
    r as *mut u32
}

/// A shared word the producer published, read by lane 0 and broadcast to the warp: lane 0 is the
/// one that later arrives to free the word, so its release orders the read before the producer's
/// next write (a read by every lane would not be ordered by lane 0's arrival).
#[inline(always)]
pub(crate) unsafe fn lane0_read(addr: u32, lane: u32) -> u32 {
    let v = if lane == 0 { unsafe { ld_shared_u32(addr) } } else { 0 };
    shfl_idx(v, 0)
}

/// Waits for the query-side tiles of the consumers' `n_item`-th item and reads its description
/// (published by the producer with them); `None` once the work is done.
#[inline(always)]
pub(crate) unsafe fn next_item<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, n_item: u32, lane: u32) -> Option<ItemInfo> {
    unsafe { item_ready(sm, n_item, lane).then(|| read_item(sm, n_item % NQ)) }
}

/// Waits for the query-side tiles of the consumers' `n_item`-th item; false if the producer said
/// there is no item.
#[inline(always)]
unsafe fn item_ready<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, n_item: u32, lane: u32) -> bool {
    let qb = n_item % NQ;
    unsafe {
        mbar_wait(sm.q_full(qb), (n_item / NQ) & 1);
        lane0_read(sm.item(qb), lane) != NO_ITEM
    }
}

/// Publishes an item's description at `addr` (its slot): vector stores through a 32-bit address
/// (a generic pointer cost the 40-register producer a spill).
#[inline(always)]
unsafe fn write_item(addr: u32, info: ItemInfo) {
    // SAFETY: ItemInfo is INFO_WORDS plain 32-bit words.
    let w = unsafe { core::mem::transmute::<ItemInfo, [u32; INFO_WORDS]>(info) };
    for i in 0..INFO_WORDS / 4 {
        unsafe { st_shared_v4(addr + 16 * i as u32, [w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]) };
    }
    for i in INFO_WORDS / 4 * 4..INFO_WORDS {
        unsafe { st_shared_u32(addr + 4 * i as u32, w[i]) };
    }
}

/// The description of the item in Q slot `qb` (published, and the slot not yet handed back),
/// read by every lane with vector loads. Every lane's later arrival hands the slot back to the
/// producer ([`CONSUMER_THREADS`]), so no lane waits for the others' reads.
#[inline(always)]
unsafe fn read_item<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, qb: u32) -> ItemInfo {
    let addr = sm.item(qb);
    let mut w = [0u32; INFO_WORDS];
    for i in 0..INFO_WORDS / 4 {
        let v = unsafe { ld_shared_v4(addr + 16 * i as u32) };
        w[4 * i..4 * i + 4].copy_from_slice(&v);
    }
    for i in INFO_WORDS / 4 * 4..INFO_WORDS {
        w[i] = unsafe { ld_shared_u32(addr + 4 * i as u32) };
    }
    // SAFETY: ItemInfo is INFO_WORDS plain 32-bit words.
    unsafe { core::mem::transmute::<[u32; INFO_WORDS], ItemInfo>(w) }
}

/// The windows of a consumer thread's two rows, `i` and `i + 8`.
#[inline(always)]
pub(crate) fn row_windows(rule: HeadRule, causal: bool, seq: &SeqInfo, i: i32) -> [RowWindow; 2] {
    [row_window(rule, causal, seq.q_len, seq.k_len, i), row_window(rule, causal, seq.q_len, seq.k_len, i + 8)]
}

/// The ring entry of an item with no key tile (ring tile `n`, no copies behind its stages): both
/// stages go back to the producer, the V stage once the producer has marked it full. Handed back
/// before that, the V stage's barrier could complete a phase ahead of the producer's wait for
/// it, which would then wait for the wrong phase.
#[inline(always)]
pub(crate) unsafe fn release_empty_tile<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, n: u32, lane: u32) {
    let vs = n % NV;
    unsafe { mbar_wait(sm.v_full(vs), (n / NV) & 1) };
    if lane == 0 {
        unsafe {
            mbar_arrive(sm.k_empty(n % NS));
            mbar_arrive(sm.v_empty(vs));
        }
    }
}

/// Whether the row sees every key of the `width` keys from `j0`.
#[inline(always)]
fn sees_all(w: &RowWindow, j0: i32, width: i32) -> bool {
    let j1 = j0 + width - 1;
    j1 < w.sink_end || (j0 >= w.lo && j1 <= w.hi)
}

/// Per-thread state of one consumer for one work item: its two rows' windows, running max and
/// sum.
struct Rows {
    win: [RowWindow; 2],
    m: [f32; 2],
    l: [f32; 2],
}

impl Rows {
    /// Rows `row` and `row + 8` of the item in Q slot `qb`, before any key.
    #[inline(always)]
    unsafe fn new(sm: Smem<NS, NV, 1, NQ>, qb: u32, causal: bool, row: i32) -> Self {
        Rows::of(unsafe { read_item(sm, qb) }, causal, row)
    }

    #[inline(always)]
    fn of(info: ItemInfo, causal: bool, row: i32) -> Self {
        let ItemInfo { item, seq, rule, .. } = info;
        let i = item.q_block as i32 * BLK + row;
        Rows { win: row_windows(rule, causal, &seq, i), m: [f32::NEG_INFINITY; 2], l: [0.0; 2] }
    }

    /// [`Rows::new`] for the item the consumers chain to, and whether warpgroup `c`'s 64 rows
    /// see nothing of the right half (keys `j0 + 64..j0 + 128`) of its first tile, at `j0` (for
    /// [`softmax_first`]). One read of the item's description for both: kept in registers
    /// through the item's tiles, the warpgroup's span cost the loop as much as it saved.
    #[inline(always)]
    unsafe fn chained(sm: Smem<NS, NV, 1, NQ>, qb: u32, causal: bool, c: u32, row: i32, j0: i32) -> (Self, bool) {
        let info = unsafe { read_item(sm, qb) };
        let ItemInfo { item, seq, rule, .. } = info;
        let i0 = item.q_block as i32 * BLK + 64 * c as i32;
        // A warpgroup past the sequence's end keeps its first row (its rows are not written).
        let i1 = (i0 + 63).min(seq.q_len - 1).max(i0);
        let span = RowSpan::new(rule, causal, seq.q_len, seq.k_len, i0, i1);
        (Rows::of(info, causal, row), !span.tile_any(j0 + 64, j0 + BK - 1))
    }
}

/// The first `H` elements of `x`, as an array.
#[inline(always)]
fn head<T, const N: usize, const H: usize>(x: &mut [T; N]) -> &mut [T; H] {
    const { assert!(H <= N) };
    // SAFETY: the first H of N elements, same alignment.
    unsafe { &mut *(x.as_mut_ptr() as *mut [T; H]) }
}

/// Issues S = Q Kᵀ for the K tile of stage `s` (one commit group; not waited for).
#[inline(always)]
pub(crate) unsafe fn issue_s<E: WgElement, O: OAcc>(sc: &mut [f32; 64], dq: u64, dk: u64) {
    let k_step = |kk: usize| ((kk / 4) as u32 * HALF + (kk % 4) as u32 * 32) as u64 >> 4;
    unsafe {
        keep(sc);
        wgmma::fence();
        for kk in 0..O::D / 16 {
            E::mma_ss_n128(sc, dq + k_step(kk), dk + k_step(kk), kk > 0);
        }
        wgmma::commit();
    }
}

/// [`softmax`] of the tile at `j0`, on its left 64 keys only when the warpgroup sees nothing of
/// the right ones (`left`; their probabilities are then zero): half the exponentials and, on
/// token streaming's 64-key sink, no mask.
///
/// Used for an item's first tile where the consumers chain items (a streaming item's sink tile),
/// nothing in flight. Not in the loop's steady state, where a P V is in flight: there a second
/// softmax shape left ptxas short of registers for the wgmma pipeline (every wgmma serialised,
/// C7511 / C7518), or, for the left half only, cost dense 7% (perf notes, session 7). Nor for a
/// right half, nor at a pass's first item: each copy adds ~1,000 instructions, and those made
/// streaming slower than they saved (perf notes, session 7, U2).
#[inline(always)]
fn softmax_first(sc: &mut [f32; 64], r: &mut Rows, j0: i32, lane: u32, scale: f32, left: bool) -> Option<[f32; 2]> {
    if !left {
        return softmax(sc, r, j0, lane, scale);
    }
    let alpha = softmax::<32>(head(sc), r, j0, lane, scale);
    sc[32..].fill(0.0);
    alpha
}

/// Issues O += P V for the V tile at descriptor `dv` (one commit group; not waited for).
#[inline(always)]
pub(crate) unsafe fn issue_pv<E: WgElement, O: OAcc>(o: &mut O, pf: &mut [u32; 32], dv: u64) {
    unsafe {
        keep(o);
        keep(pf);
        wgmma::fence();
        mma_rs_steps::<E, O, 32>(o, pf, dv);
        wgmma::commit();
    }
}

/// Sets to -inf the scores of row `h` whose column (relative to the thread's first) fails `sees`.
#[inline(always)]
fn mask_row<const N: usize>(sc: &mut [f32; N], h: usize, sees: impl Fn(i32) -> bool) {
    for n in 0..N / 4 {
        for e in 0..2 {
            if !sees((n * 8 + e) as i32) {
                sc[4 * n + 2 * h + e] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Sets to -inf the scores of the 2 `N` keys from `j0` (a tile, or a half) that the thread's
/// two rows (windows `win`) do not see; rows that see all of them are left alone.
#[inline(always)]
pub(crate) fn mask_tile<const N: usize>(sc: &mut [f32; N], win: &[RowWindow; 2], j0: i32, lane: u32) {
    let width = 2 * N as i32;
    let base = j0 + (lane % 4) as i32 * 2;
    for h in 0..2 {
        let w = &win[h];
        if !sees_all(w, j0, width) {
            // Bounds relative to the thread's first column: each test is against an immediate.
            // Most partial tiles are cut by one bound only (the causal diagonal or a window's
            // upper edge, or a window's lower edge): one test per element then.
            let (sink, lo, hi) = (w.sink_end.saturating_sub(base), w.lo.saturating_sub(base), w.hi.saturating_sub(base));
            let no_sink = j0 >= w.sink_end;
            if no_sink && j0 >= w.lo {
                mask_row(sc, h, |c| c <= hi);
            } else if no_sink && j0 + width - 1 <= w.hi {
                mask_row(sc, h, |c| lo <= c);
            } else {
                mask_row(sc, h, |c| c < sink || (lo <= c && c <= hi));
            }
        }
    }
}

/// Masks the scores of the 2 `N` keys from `j0` (rows that see all of them are left alone),
/// updates the running max and sum, and turns the scores into probabilities in place. Returns
/// the factors that O must be scaled by when the max moved (lazily: only by more than
/// `RESCALE_SLACK`).
#[inline(always)]
fn softmax<const N: usize>(sc: &mut [f32; N], r: &mut Rows, j0: i32, lane: u32, scale: f32) -> Option<[f32; 2]> {
    mask_tile(sc, &r.win, j0, lane);
    let mut rowmax = [f32::NEG_INFINITY; 2];
    let mut grow = false;
    for h in 0..2 {
        let mut mx = f32::NEG_INFINITY;
        for n in 0..N / 4 {
            mx = mx.max(sc[4 * n + 2 * h]).max(sc[4 * n + 2 * h + 1]);
        }
        mx = mx.max(shfl_xor(mx, 1));
        mx = mx.max(shfl_xor(mx, 2));
        rowmax[h] = mx * scale;
        grow |= rowmax[h] > r.m[h] + RESCALE_SLACK;
    }
    let mut alpha = None;
    if vote_any(grow) {
        let mut a = [1.0f32; 2];
        for h in 0..2 {
            let m_new = r.m[h].max(rowmax[h]);
            // A row that has seen nothing keeps m = -inf; exponents then use 0 so that
            // exp2(-inf - m) is 0, never NaN.
            let m_use = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
            a[h] = exp2(r.m[h] - m_use);
            r.m[h] = m_new;
            r.l[h] *= a[h];
        }
        alpha = Some(a);
    }
    for h in 0..2 {
        let m_use = if r.m[h] == f32::NEG_INFINITY { 0.0 } else { r.m[h] };
        let mut sum = 0.0f32;
        for n in 0..N / 4 {
            for e in 0..2 {
                let x = exp2(fma(sc[4 * n + 2 * h + e], scale, -m_use));
                sc[4 * n + 2 * h + e] = x;
                sum += x;
            }
        }
        r.l[h] += sum;
    }
    alpha
}

/// A thread's share of a row's tile sum above which [`softmax_fast`] gives up: no probability
/// exceeded 2^15, so none overflowed when rounded to `E` for P V (f16's largest is 65504; 2^16
/// let a probability in (65504, 65536] through as inf: gpu_suite's "f16 probability near 2^16"),
/// and the rows' max has moved far past the slack [`softmax`] allows.
const FAST_SUM_LIMIT: f32 = 32768.0;

/// The softmax of a tile without its row max: probabilities against the running max `r.m`
/// (the max is an instruction per score, a sixth of a dense tile's time). Valid as long as no
/// row's scores rose far past it: if any row of the warpgroup (`c`, named barrier `1 + c`) sums
/// to more than `FAST_SUM_LIMIT` (or to inf / NaN), returns false with `r` untouched and the
/// scores lost — the caller recomputes S and runs [`softmax`].
#[inline(always)]
fn softmax_fast(sc: &mut [f32; 64], r: &mut Rows, j0: i32, lane: u32, scale: f32, c: u32) -> bool {
    mask_tile(sc, &r.win, j0, lane);
    let mut sums = [0.0f32; 2];
    for h in 0..2 {
        let m_use = if r.m[h] == f32::NEG_INFINITY { 0.0 } else { r.m[h] };
        let mut sum = 0.0f32;
        for n in 0..16 {
            for e in 0..2 {
                let x = exp2(fma(sc[4 * n + 2 * h + e], scale, -m_use));
                sc[4 * n + 2 * h + e] = x;
                sum += x;
            }
        }
        sums[h] = sum;
    }
    // `<=` is false for NaN: a NaN or an inf sum sends the warpgroup to the exact path, and so
    // does a row with no max yet (its scores might all underflow against 0: rows past the
    // sequence or that see nothing yet, at most a sequence's first and last items).
    let ok = sums[0] <= FAST_SUM_LIMIT && sums[1] <= FAST_SUM_LIMIT && r.m[0] != f32::NEG_INFINITY && r.m[1] != f32::NEG_INFINITY;
    if bar_any(1 + c, 128, !ok) {
        return false;
    }
    r.l[0] += sums[0];
    r.l[1] += sums[1];
    true
}

/// K stage `s` goes back to the producer (lane 0), and Q slot `qb` after the item's last tile
/// (every lane).
#[inline(always)]
pub(crate) unsafe fn release_k_q<const NS: u32, const NV: u32, const QT: u32, const NQ: u32>(sm: Smem<NS, NV, QT, NQ>, s: u32, qb: u32, e: i32, lane: u32) {
    if lane == 0 {
        unsafe { mbar_arrive(sm.k_empty(s)) };
    }
    if e & LAST != 0 {
        unsafe { mbar_arrive(sm.q_empty(qb)) };
    }
}

/// Scales both rows of O.
#[inline(always)]
fn rescale<O: OAcc>(o: &mut O, alpha: [f32; 2]) {
    let ov = o.v();
    for n in 0..O::D / 8 {
        for h in 0..2 {
            ov[4 * n + 2 * h] *= alpha[h];
            ov[4 * n + 2 * h + 1] *= alpha[h];
        }
    }
}

/// A 64-row accumulator (`N` / 2 columns) rounded into the A fragments of a product over its
/// columns (P of P V, dS of dS K, Pᵀ and dSᵀ of the backward): the 16-column step `kk` takes
/// `a0`/`a1` from 8-column block `2kk` (rows g, g + 8) and `a2`/`a3` from block `2kk + 1`.
#[inline(always)]
pub(crate) fn pack_a<E: Element, const N: usize, const M: usize>(x: &[f32; N]) -> [u32; M] {
    const { assert!(N == 2 * M && M % 4 == 0) };
    let mut a = [0u32; M];
    for n in 0..N / 4 {
        for h in 0..2 {
            a[4 * (n / 2) + 2 * (n % 2) + h] = E::pack2(x[4 * n + 2 * h], x[4 * n + 2 * h + 1]);
        }
    }
    a
}

/// Issues acc += A B over the `M` / 4 16-column steps of the A fragments `a` (from [`pack_a`]),
/// B MN-major at descriptor `b` (rows of 128 bytes along K). No fence or commit.
#[inline(always)]
pub(crate) unsafe fn mma_rs_steps<E: WgElement, O: OAcc, const M: usize>(acc: &mut O, a: &[u32; M], b: u64) {
    for kk in 0..M / 4 {
        unsafe { acc.mma::<E>([a[4 * kk], a[4 * kk + 1], a[4 * kk + 2], a[4 * kk + 3]], b + ((kk as u32 * 16 * 128) as u64 >> 4)) };
    }
}

/// Writes row `h` (0: the thread's row g, 1: row g + 8) of a consumer's accumulator times
/// `scale`, rounded to `E`, to the global row at address `row` if `valid`: the first
/// `valid_chunks` 8-column chunks (the real head dim). Each lane holds two columns of every
/// chunk; a transpose among the quad's four lanes gives each lane whole chunks, stored 16 bytes
/// at a time (four times fewer stores, whole 32-byte sectors). The shuffles run on every lane
/// whatever `valid`: call it from converged code.
#[inline(always)]
pub(crate) unsafe fn store_acc_row<E: Element, O: OAcc>(acc: &mut O, h: usize, scale: f32, row: u64, valid: bool, lane: u32, valid_chunks: u32) {
    let v = acc.v();
    let t = lane % 4;
    for m in 0..O::D / 32 {
        let mut a = [0u32; 4];
        for (j, w) in a.iter_mut().enumerate() {
            let n = 4 * m + j;
            *w = E::pack2(v[4 * n + 2 * h] * scale, v[4 * n + 2 * h + 1] * scale);
        }
        let chunk = quad_transpose(a, t);
        let n = (4 * m) as u32 + t;
        if valid && n < valid_chunks {
            unsafe { st_global_v4(row + 16 * n as u64, chunk) };
        }
    }
}

/// As [`store_acc_row`] for an `f32` row at address `row`: the values (times `scale`) added
/// with `red.global.add.f32` (`add`) or stored.
#[inline(always)]
pub(crate) unsafe fn f32_acc_row<O: OAcc>(acc: &mut O, h: usize, scale: f32, row: u64, lane: u32, valid_chunks: u32, add: bool) {
    let v = acc.v();
    for n in 0..O::D / 8 {
        if (n as u32) < valid_chunks {
            let at = row + 4 * (n as u64 * 8 + (lane % 4) as u64 * 2);
            let (lo, hi) = (v[4 * n + 2 * h] * scale, v[4 * n + 2 * h + 1] * scale);
            unsafe {
                if add {
                    red_add_f32(at, lo);
                    red_add_f32(at + 4, hi);
                } else {
                    *(at as *mut [f32; 2]) = [lo, hi];
                }
            }
        }
    }
}

/// One consumer warpgroup (`c` = 0 or 1: query rows 64c..64c + 64 of each item); `t` is the
/// thread's index in it.
///
/// Software-pipelined over the key tiles (FlashAttention-3's intra-warpgroup overlap): while
/// the softmax of tile j runs on the CUDA cores, the tensor cores compute P(j-1) V(j-1), issued
/// together with S(j) = Q K(j)ᵀ. A K stage goes back to the producer as soon as S is done, a V
/// stage once its P V is done. The pipeline runs on across items: the next item's first S (its
/// Q is in the other slot) is issued right behind this item's last P V, and this item's output
/// is written while it runs. Streaming heads' items are ~4 tiles long; a pipeline filled and
/// drained per item cost them a third of their time (perf notes T1).
///
/// The two consumers are not made to take turns ("ping-pong" on named barriers, as in
/// FlashAttention-3): measured on the H200 with split K/V rings it cost 5-20% (docs/perf-notes.md).
#[inline(always)]
unsafe fn consumer<E: Element + WgElement, O: OAcc>(p: &HopperFwdParams, sm: Smem<NS, NV, 1, NQ>, c: u32, t: u32) {
    let (warp, lane) = (t / 32, t % 32);
    let row = (c * 64 + warp * 16 + lane / 4) as i32; // and row + 8
    let tile_bytes = sm.tile_bytes;
    // Descriptors of this warpgroup's Q rows in slot `b` (at address `q_rows(b)`) and of K and V
    // stage `s`. Their arguments come through `warp_uniform` (`q_rows` does it): ptxas then
    // builds the descriptor steps in uniform registers and the products issue back to back.
    let q_rows = |b: u32| warp_uniform(sm.q(b, 0) + c * (64 * 128));
    let dq = |q: u32| desc(q, 16, 1024);
    let dk = |s: u32| desc(sm.k, 16, 1024) + ((s * tile_bytes) as u64 >> 4);
    let dv = |s: u32| desc(sm.v, HALF, 1024) + ((s * tile_bytes) as u64 >> 4);
    let scale = p.f.scale_log2;
    let causal = p.f.causal != 0;
    // Ring tiles taken: tile `n` is in K stage n % NS and V stage n % NV.
    let mut tile = 0u32;
    let mut n_item = 0u32;
    #[cfg(feature = "trace")]
    let mut tr = crate::trace::Trace::new(p.counter, block_idx(), 1 + c, t == 0);
    #[cfg(feature = "trace")]
    tr.mark_global(30);
    // Each pass starts an item with nothing in flight: the first, and any after an item whose
    // successor could not be chained (none, or one with no tile).
    loop {
        let mut qb = n_item % NQ;
        if !unsafe { item_ready(sm, n_item, lane) } {
            break;
        }
        tmark!(tr, 1);
        let mut r = unsafe { Rows::new(sm, qb, causal, row) };
        let mut o = O::zero();
        let s = tile % NS;
        unsafe { mbar_wait(sm.k_full(s), (tile / NS) & 1) };
        tmark!(tr, 2);
        let mut e = unsafe { lane0_read(sm.ring(s), lane) } as i32;
        if e == EMPTY {
            unsafe { release_empty_tile(sm, tile, lane) };
            tile += 1;
        } else {
            let mut sc = [0.0f32; 64];
            unsafe {
                issue_s::<E, O>(&mut sc, dq(q_rows(qb)), dk(warp_uniform(s)));
                wgmma::wait::<0>();
                keep(&mut sc);
            }
            tmark!(tr, 3);
            unsafe { release_k(sm, s, lane) };
            softmax(&mut sc, &mut r, tile_j0(e), lane, scale); // O is still zero: no rescale
            tmark!(tr, 4);
            let mut pf = pack_a::<E, 64, 32>(&sc);
            // The tile whose probabilities are in `pf` (entry `e`).
            let mut cur = tile;
            tile += 1;
            loop {
                let (vs, vph) = (cur % NV, (cur / NV) & 1);
                let (s, ph) = (tile % NS, (tile / NS) & 1);
                if e & LAST != 0 {
                    // The item's last P V goes out before the wait for the next item (its Q and
                    // first K tile), which it then overlaps; the next item's first S follows it,
                    // if that item has a tile.
                    let nqb = (n_item + 1) % NQ;
                    unsafe {
                        mbar_wait(sm.v_full(vs), vph);
                        tmark!(tr, 6);
                        issue_pv::<E, O>(&mut o, &mut pf, dv(warp_uniform(vs)));
                    }
                    // Voted: a branch ptxas cannot prove warp-uniform, with a product in
                    // flight, would serialise every wgmma of the kernel.
                    let ready = vote_any(unsafe { item_ready(sm, n_item + 1, lane) });
                    let mut ne = EMPTY;
                    if ready {
                        tmark!(tr, 9);
                        unsafe { mbar_wait(sm.k_full(s), ph) };
                        ne = unsafe { lane0_read(sm.ring(s), lane) } as i32;
                    }
                    let chain = vote_any(ne != EMPTY);
                    unsafe {
                        wgmma::wait::<0>();
                        keep(&mut o);
                        keep(&mut pf);
                    }
                    tmark!(tr, 7);
                    if !chain {
                        // No next item, or one with no tile.
                        break;
                    }
                    // The item's output is written while the next item's S runs (neither O nor
                    // P is live through that item's first softmax: the other order spilled).
                    tmark!(tr, 1);
                    unsafe { issue_s::<E, O>(&mut sc, dq(q_rows(nqb)), dk(warp_uniform(s))) };
                    if lane == 0 {
                        unsafe { mbar_arrive(sm.v_empty(vs)) };
                    }
                    unsafe { finish_item::<E, O>(sm, qb, &mut o, &r, row, lane) };
                    tmark!(tr, 8);
                    unsafe {
                        wgmma::wait::<0>();
                        keep(&mut sc);
                    }
                    tmark!(tr, 3);
                    unsafe { release_k(sm, s, lane) };
                    let left;
                    ((r, left), e, qb) = (unsafe { Rows::chained(sm, nqb, causal, c, row, tile_j0(ne)) }, ne, nqb);
                    softmax_first(&mut sc, &mut r, tile_j0(e), lane, scale, left); // O starts again at zero
                    tmark!(tr, 4);
                    o = O::zero();
                    n_item += 1;
                } else {
                    // The indices' shuffles go out before the waits, whose time they take.
                    let (q_u, s_u, vs_u) = (q_rows(qb), warp_uniform(s), warp_uniform(vs));
                    unsafe { mbar_wait(sm.k_full(s), ph) };
                    tmark!(tr, 2);
                    unsafe {
                        issue_s::<E, O>(&mut sc, dq(q_u), dk(s_u));
                        // The tile's entry is read behind its S: only the softmax needs it (a
                        // tile of the same item, never `EMPTY`; the stage is held until then).
                        e = lane0_read(sm.ring(s), lane) as i32;
                        mbar_wait(sm.v_full(vs), vph);
                        tmark!(tr, 6);
                        issue_pv::<E, O>(&mut o, &mut pf, dv(vs_u));
                        wgmma::wait::<1>(); // S(j) is done (groups complete in order)
                        keep(&mut sc);
                    }
                    tmark!(tr, 3);
                    // Partial tiles: K (and Q) go back at once, exact softmax. Full tiles skip
                    // the row max and keep K and Q until that has held (S is recomputed if it
                    // did not).
                    let alpha = if e & FULL == 0 {
                        unsafe { release_k(sm, s, lane) };
                        softmax(&mut sc, &mut r, tile_j0(e), lane, scale)
                    } else {
                        let alpha = if softmax_fast(&mut sc, &mut r, tile_j0(e), lane, scale, c) {
                            None
                        } else {
                            // A row's scores jumped: S again, then the exact path.
                            unsafe {
                                issue_s::<E, O>(&mut sc, dq(q_rows(qb)), dk(warp_uniform(s)));
                                wgmma::wait::<0>();
                                keep(&mut sc);
                            }
                            softmax(&mut sc, &mut r, tile_j0(e), lane, scale)
                        };
                        unsafe { release_k(sm, s, lane) };
                        alpha
                    };
                    tmark!(tr, 4);
                    unsafe {
                        wgmma::wait::<0>(); // P(j-1) V(j-1) is done
                        keep(&mut o);
                        keep(&mut pf);
                    }
                    tmark!(tr, 5);
                    if lane == 0 {
                        unsafe { mbar_arrive(sm.v_empty(vs)) };
                    }
                    if let Some(a) = alpha {
                        rescale(&mut o, a);
                    }
                }
                pf = pack_a::<E, 64, 32>(&sc);
                cur = tile;
                tile += 1;
            }
            let vs = cur % NV;
            if lane == 0 {
                unsafe { mbar_arrive(sm.v_empty(vs)) };
            }
        }
        // Rows of an item with no tile: o = 0 (O is zero), lse = -inf (l is zero).
        unsafe { finish_item::<E, O>(sm, qb, &mut o, &r, row, lane) };
        tmark!(tr, 8);
        n_item += 1;
    }
    // The storer waits on the slot that said "no item" too.
    unsafe { mbar_arrive(sm.o_full(n_item % NQ)) };
    #[cfg(feature = "trace")]
    tr.mark_global(31);
}

/// Lane 0: K stage `s` goes back to the producer.
#[inline(always)]
unsafe fn release_k(sm: Smem<NS, NV, 1, NQ>, s: u32, lane: u32) {
    if lane == 0 {
        unsafe { mbar_arrive(sm.k_empty(s)) };
    }
}

/// Epilogue of the item in Q slot `qb`: normalises the thread's two rows of O and stages them
/// and their lse in the slot for the [`storer`] (rows that saw no key get o = 0, lse = -inf). O
/// goes into the warpgroup's own Q rows (no product reads them any more): `stmatrix` puts each
/// warp's 16 rows there whole. The global stores are the storer's: here they stalled the
/// consumer's chain behind the memory system's queues (perf notes, session 9).
#[inline(always)]
unsafe fn finish_item<E: Element, O: OAcc>(sm: Smem<NS, NV, 1, NQ>, qb: u32, o: &mut O, r: &Rows, row: i32, lane: u32) {
    let mut sums = [0.0f32; 2];
    let mut inv = [0.0f32; 2];
    for h in 0..2 {
        let mut sum = r.l[h];
        sum += shfl_xor(sum, 1);
        sum += shfl_xor(sum, 2);
        sums[h] = sum;
        inv[h] = if sum > 0.0 { rcp(sum) } else { 0.0 };
    }
    // The lane's shared addresses are recomputed here (`opaque`): hoisted out of the item loop,
    // they spilled.
    let lane = opaque(lane);
    let first = (row as u32) & !15; // the warp's first row in the item
    let v = o.v();
    let (mi, mr) = (lane / 8, lane % 8);
    for j in 0..O::D / 16 {
        let mut m = [0u32; 4];
        for (i, w) in m.iter_mut().enumerate() {
            let (n, h) = (2 * j + i / 2, i % 2);
            *w = E::pack2(v[4 * n + 2 * h] * inv[h], v[4 * n + 2 * h + 1] * inv[h]);
        }
        unsafe { stmatrix_x4(o_chunk(sm.q(qb, 0), first + (mi % 2) * 8 + mr, 2 * j as u32 + mi / 2), m) };
    }
    if lane % 4 == 0 {
        for h in 0..2 {
            let lse = if sums[h] > 0.0 { (r.m[h] + log2(sums[h])) * LN2 } else { f32::NEG_INFINITY };
            unsafe { st_shared_u32(sm.lse_row(qb, row as u32 + 8 * h as u32), lse.to_bits()) };
        }
    }
    // The storer's TMA reads the rows: the async proxy must see this thread's writes.
    unsafe {
        fence_proxy_async_shared();
        mbar_arrive(sm.o_full(qb));
    }
}

/// The shared address of 16-byte chunk `k` of row `q` (0..128) of the O tile staged in the Q
/// slot at `slot`, where Q's TMA load put Q's: 64-column halves `HALF` apart, rows of 128 bytes,
/// chunk k of a row at chunk k ^ (q % 8) of its half (the 128-byte swizzle) — the eight rows of
/// an `stmatrix` matrix, and eight chunks of a row, fall in distinct banks.
#[inline(always)]
fn o_chunk(slot: u32, q: u32, k: u32) -> u32 {
    slot + (k / 8) * HALF + q * 128 + (((k % 8) ^ (q % 8)) << 4)
}

/// Warp 1 of the producer warpgroup (`s`: the lane), for each item in the consumers' order: once
/// its O and lse are staged (`o_full`), writes the item's rows to global memory and hands the
/// slot back to the producer, whose TMA writes there next. A whole 128-row block goes out by
/// TMA (lane 0; the tensor map clips the head dim); the rows of a sequence's last, partial block
/// are stored by the lanes in 16-byte chunks (TMA would write the packed rows past the
/// sequence's end). Ends at the slot that says `NO_ITEM` (the consumers arrive on it as they
/// leave).
#[inline(always)]
unsafe fn storer<O: OAcc>(p: &HopperFwdParams, sm: Smem<NS, NV, 1, NQ>, s: u32) {
    let f = &p.f;
    let map_o = p.tensor_maps + 3 * TENSOR_MAP_BYTES as u64;
    let per_row = O::D as u32 / 8;
    let mut n_item = 0u32;
    loop {
        let qb = n_item % NQ;
        unsafe { mbar_wait(sm.o_full(qb), (n_item / NQ) & 1) };
        let ItemInfo { idx, item, seq, .. } = unsafe { read_item(sm, qb) };
        if idx == NO_ITEM {
            break;
        }
        let i0 = item.q_block as i32 * BLK;
        let rows = (seq.q_len - i0).min(BLK) as u32;
        let slot = sm.q(qb, 0);
        let lse = f.lse + 4 * lse_index(f, item.batch, item.head, seq.q_start + i0) as u64;
        let mut q = s;
        while q < rows {
            unsafe { *((lse + 4 * q as u64) as *mut u32) = ld_shared_u32(sm.lse_row(qb, q)) };
            q += STORER_THREADS;
        }
        if rows == BLK as u32 {
            if s == 0 {
                let batch = if p.packed != 0 { 0 } else { item.batch as i32 };
                unsafe {
                    for h in 0..O::D as u32 / 64 {
                        tma_store_4d(slot + h * HALF, map_o, [64 * h as i32, seq.q_start + i0, item.head as i32, batch]);
                    }
                    bulk_wait_read();
                }
            }
        } else {
            let o_head = f.o + 2 * elem_offset(&f.o_strides, item.batch, seq.q_start + i0, item.head) as u64;
            let token_bytes = 2 * f.o_strides.token as u64;
            let valid_chunks = f.head_dim / 8;
            let mut n = s;
            while n < rows * per_row {
                let (q, k) = (n / per_row, n % per_row);
                if k < valid_chunks {
                    unsafe { st_global_v4(o_head + q as u64 * token_bytes + 16 * k as u64, ld_shared_v4(o_chunk(slot, q, k))) };
                }
                n += STORER_THREADS;
            }
        }
        unsafe {
            fence_proxy_async_shared();
            mbar_arrive(sm.q_empty(qb));
        }
        n_item += 1;
    }
}
