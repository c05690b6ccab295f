//! The portable forward kernel (mma.sync, cp.async, ldmatrix; sm_80 and newer).
//!
//! One CTA computes one work item: 128 query rows of one (batch, head). Warp `w` owns `16 * MT`
//! rows as `MT` m16 tiles. The CTA walks the key tiles of the blocks that its rows may see (a
//! formula for dense and streaming heads, the compacted mask row for block-sparse heads),
//! skipping tiles no row sees; only tiles that some row sees in part apply a token mask.
//!
//! Per tile: S = Q Kᵀ (Q and K from shared memory), mask, online softmax in the exp2 domain with
//! the scale folded in, O += P V with P straight from the S registers. K and V are double
//! buffered: the next tile's copies are issued right after the one barrier of each iteration and
//! land while this tile computes.
//!
//! Registers are the budget that decides speed here (O and S alone take 192 of 255 at D = 128),
//! so everything uniform that the loop needs only now and then (the tile walk, the K/V
//! pointers, the per-row key windows) lives in shared memory, written once per work item and
//! re-read after barriers.
use attn_common::swizzle::{frag_addr, lane_offset};
use attn_common::{
    BLK, FWD_CTX_BYTES, FwdParams, HeadRule, KIND_BLOCK_SPARSE, RowSpan, RowWindow, SeqInfo, Strides, TileWalk,
    WorkItem, row_window,
};

use crate::arch::cp_async::{commit, wait_group};
use crate::arch::ldmatrix::{ldmatrix_x4, ldmatrix_x4_trans};
use crate::arch::math::{exp2, fma, log2};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, ld_shared_u32, ld_shared_u64, smem_u32};
use core::mem::offset_of;
use crate::arch::sync::{bar_sync, block_idx, opaque, shfl_xor, thread_idx, vote_any};
use crate::tiles::load_tile;

/// Query rows per CTA: one mask/streaming block.
pub const BM: i32 = BLK;

const LN2: f32 = core::f32::consts::LN_2;
/// How far (log2 units) a row's max may outgrow the max its sums are kept against before O and
/// l are rescaled: probabilities stay below 2^8, far from any f32 or bf16 limit.
const RESCALE_SLACK: f32 = 8.0;

/// Per-item state shared by the CTA.
#[repr(C)]
struct ItemCtx {
    /// Advanced by thread 0 only.
    walk: TileWalk,
    k_head: u64,
    v_head: u64,
    k_stride: i64,
    v_stride: i64,
    sk: i32,
    /// Upcoming tiles: in iteration n, all threads read slot (n + 1) % 2 (the tile to prefetch)
    /// while thread 0 writes tile n + 2 into slot n % 2, whose last reader passed the barrier.
    slots: [i32; 2],
}

/// Reads of the context through 32-bit shared addresses (`ctx` is its address).
#[inline(always)]
unsafe fn ctx_i32(ctx: u32, off: usize) -> i32 {
    unsafe { ld_shared_u32(ctx + off as u32) as i32 }
}
#[inline(always)]
unsafe fn ctx_u64(ctx: u32, off: usize) -> u64 {
    unsafe { ld_shared_u64(ctx + off as u32) }
}

/// `load_tile` of the K or V tile starting at key `j0` (`head`/`stride` are context offsets).
#[inline(always)]
unsafe fn load_kv<const D: usize>(ctx: u32, head: usize, stride: usize, tile: u32, bn: i32, threads: u32, j0: i32, valid_chunks: u32, tid: u32) {
    unsafe {
        let (base, stride) = (ctx_u64(ctx, head) as i64, ctx_u64(ctx, stride) as i64);
        let sk = ctx_i32(ctx, offset_of!(ItemCtx, sk));
        load_tile::<D>(bn, threads, tile, (base + j0 as i64 * stride) as u64, stride, sk - j0, valid_chunks, tid);
    }
}

#[inline(always)]
fn elem_offset(s: &Strides, batch: u32, token: i32, head: u32) -> i64 {
    batch as i64 * s.batch + token as i64 * s.token + head as i64 * s.head
}

#[inline(always)]
fn load_item(p: &FwdParams) -> (WorkItem, SeqInfo) {
    let item: WorkItem = unsafe { *(p.items as *const WorkItem).add(block_idx() as usize) };
    let seq: SeqInfo = unsafe { *(p.seqs as *const SeqInfo).add(item.batch as usize) };
    (item, seq)
}

#[inline(always)]
pub unsafe fn attn_fwd<
    E: Element,
    const D: usize,
    const DN: usize,
    const DK: usize,
    const NW: usize,
    const MT: usize,
    const NT: usize,
>(
    p: &FwdParams,
) {
    const { assert!(NW * MT * 16 == BM as usize && DN * 8 == D && DK * 16 == D && NT % 2 == 0) };
    const { assert!(size_of::<ItemCtx>() <= FWD_CTX_BYTES) };
    let bn = NT as i32 * 8;
    let threads = NW as u32 * 32;
    let rb = (D * 2) as u32;
    let tid = thread_idx();
    let valid_chunks = p.head_dim / 8;

    let smem = dynamic_smem();
    let s_q = smem_u32(smem);
    let tile_bytes = (bn as u32) * rb;
    let s_k = s_q + (BM as u32) * rb; // K buffers 0, 1, then V buffers 0, 1
    let tiles_bytes = (BM as usize + 4 * bn as usize) * D * 2;
    let ctx = unsafe { smem.add(tiles_bytes) } as *mut ItemCtx;
    let windows = unsafe { smem.add(tiles_bytes + FWD_CTX_BYTES) } as *mut RowWindow;

    // Prologue: the item's geometry, the row windows and the context.
    let (cur, q_tile, q_rows) = {
        let (item, seq) = load_item(p);
        let rule: HeadRule = unsafe { *(p.heads as *const HeadRule).add(item.head as usize) };
        let (sq, sk) = (seq.q_len, seq.k_len);
        let causal = p.causal != 0;
        let i0 = item.q_block as i32 * BM;
        let i1 = (i0 + BM).min(sq) - 1;
        let mut r = tid;
        while r < BM as u32 {
            unsafe { *windows.add(r as usize) = row_window(rule, causal, sq, sk, i0 + r as i32) };
            r += threads;
        }
        if tid == 0 {
            let span = RowSpan::new(rule, causal, sq, sk, i0, i1);
            let walk = if rule.kind == KIND_BLOCK_SPARSE {
                let mb = if p.mask_batch == 1 { 0 } else { item.batch };
                let row = ((mb * p.n_masks + rule.a) * p.mask_q_blocks + item.q_block) as usize;
                let list = unsafe { (p.block_lists as *const i32).add(row * p.mask_k_blocks as usize) };
                TileWalk::sparse(span, bn, list, unsafe { *(p.block_counts as *const i32).add(row) })
            } else {
                TileWalk::formula(span, bn)
            };
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
        let q_tile = p.q + 2 * elem_offset(&p.q_strides, item.batch, seq.q_start + i0, item.head) as u64;
        bar_sync();
        (unsafe { (*ctx).slots[0] }, q_tile, i1 - i0 + 1)
    };

    let mut o: [[[f32; 4]; DN]; MT] = unsafe { core::mem::zeroed() };
    let mut m = [[f32::NEG_INFINITY; 2]; MT];
    let mut l = [[0.0f32; 2]; MT];

    let ctx_end = s_q + tiles_bytes as u32;
    let (k_head, k_stride) = (offset_of!(ItemCtx, k_head), offset_of!(ItemCtx, k_stride));
    let (v_head, v_stride) = (offset_of!(ItemCtx, v_head), offset_of!(ItemCtx, v_stride));
    let mut cur = cur;
    if cur >= 0 {
        unsafe {
            load_tile::<D>(BM, threads, s_q, q_tile, 2 * p.q_strides.token, q_rows, valid_chunks, tid);
            load_kv::<D>(ctx_end, k_head, k_stride, s_k, bn, threads, cur, valid_chunks, tid);
            load_kv::<D>(ctx_end, v_head, v_stride, s_k + 2 * tile_bytes, bn, threads, cur, valid_chunks, tid);
            commit();
        }
    }
    let mut n = 0u32;
    while cur >= 0 {
        // Re-derived each iteration so that the compiler recomputes the cheap per-fragment
        // addresses (one LOP3 each) instead of hoisting dozens of them into registers.
        let tid = opaque(tid);
        let s_q = opaque(s_q);
        let ctx_a = s_q + tiles_bytes as u32;
        let windows_a = ctx_a + FWD_CTX_BYTES as u32;
        let valid_chunks = opaque(valid_chunks);
        let (lane, warp) = (tid % 32, tid / 32);
        let buf = n % 2;
        let s_kb = s_q + (BM as u32) * rb + buf * tile_bytes;
        let s_vb = s_kb + 2 * tile_bytes;
        let q_lane = lane_offset(rb, warp * (MT as u32 * 16) + lane % 16, lane / 16);
        let k_lane = lane_offset(rb, lane % 8 + (lane / 16) * 8, (lane / 8) % 2);
        let v_lane = lane_offset(rb, lane % 8 + ((lane / 8) % 2) * 8, lane / 16);

        unsafe { wait_group::<0>() }; // this tile's K and V (and Q) have landed, for this thread
        bar_sync(); // ... for all threads, and all are done with the other buffers
        let next = unsafe { ctx_i32(ctx_a, offset_of!(ItemCtx, slots) + 4 * (1 - buf as usize)) };
        unsafe {
            if tid == 0 {
                let ctx = dynamic_smem().add(tiles_bytes) as *mut ItemCtx;
                (*ctx).slots[buf as usize] = (*ctx).walk.next();
            }
            if next >= 0 {
                let (kb, vb) = (s_q + (BM as u32) * rb + (1 - buf) * tile_bytes, s_q + (BM as u32) * rb + (3 - buf) * tile_bytes);
                load_kv::<D>(ctx_a, k_head, k_stride, kb, bn, threads, next, valid_chunks, tid);
                load_kv::<D>(ctx_a, v_head, v_stride, vb, bn, threads, next, valid_chunks, tid);
            }
            commit(); // possibly empty: keeps the group count uniform
        }

        // S = Q Kᵀ
        let mut s: [[[f32; 4]; NT]; MT] = unsafe { core::mem::zeroed() };
        for ks in 0..DK as u32 {
            let mut a = [[0u32; 4]; MT];
            for (mt, a) in a.iter_mut().enumerate() {
                *a = unsafe { ldmatrix_x4(frag_addr(s_q, q_lane, rb, mt as u32 * 16, ks * 2)) };
            }
            for np in 0..NT / 2 {
                let b = unsafe { ldmatrix_x4(frag_addr(s_kb, k_lane, rb, np as u32 * 16, ks * 2)) };
                for mt in 0..MT {
                    E::mma(&mut s[mt][2 * np], a[mt], [b[0], b[1]]);
                    E::mma(&mut s[mt][2 * np + 1], a[mt], [b[2], b[3]]);
                }
            }
        }
        // Token mask, only on tiles that some row sees in part.
        let full = unsafe {
            let span = ctx_a + (offset_of!(ItemCtx, walk) + offset_of!(TileWalk, span)) as u32;
            let first_sink = ctx_i32(span, offset_of!(RowSpan, first) + offset_of!(RowWindow, sink_end));
            let first_hi = ctx_i32(span, offset_of!(RowSpan, first) + offset_of!(RowWindow, hi));
            let last_lo = ctx_i32(span, offset_of!(RowSpan, last) + offset_of!(RowWindow, lo));
            let (j0, j1) = (cur, cur + bn - 1);
            j1 < first_sink || (j0 >= last_lo && j1 <= first_hi)
        };
        if !full {
            for mt in 0..MT {
                for h in 0..2 {
                    let r = warp * (MT as u32 * 16) + mt as u32 * 16 + lane / 4 + 8 * h as u32;
                    let w_a = windows_a + r * 12;
                    let w = unsafe {
                        RowWindow { sink_end: ld_shared_u32(w_a) as i32, lo: ld_shared_u32(w_a + 4) as i32, hi: ld_shared_u32(w_a + 8) as i32 }
                    };
                    // Bounds relative to this thread's first column: each test is then against
                    // an immediate column offset.
                    let base = cur + (lane % 4) as i32 * 2;
                    let (sink, lo, hi) = (w.sink_end.saturating_sub(base), w.lo.saturating_sub(base), w.hi.saturating_sub(base));
                    for nt in 0..NT {
                        for e in 0..2 {
                            let c = (nt * 8 + e) as i32;
                            if !(c < sink || (lo <= c && c <= hi)) {
                                s[mt][nt][2 * h + e] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
            }
        }

        // Online softmax; P overwrites S. The running max is lazy: while no row of the warp
        // grows by more than RESCALE_SLACK (log2 units), every row keeps its old max, so O and
        // l need no rescaling (128 multiplies per thread at D = 128). The result is exact: O,
        // l and lse all use the same max, and probabilities stay below 2^RESCALE_SLACK.
        let scale = p.scale_log2;
        let mut rowmax = [[f32::NEG_INFINITY; 2]; MT];
        let mut grow = false;
        for mt in 0..MT {
            for h in 0..2 {
                let mut mx = f32::NEG_INFINITY;
                for nt in 0..NT {
                    mx = mx.max(s[mt][nt][2 * h]).max(s[mt][nt][2 * h + 1]);
                }
                mx = mx.max(shfl_xor(mx, 1));
                mx = mx.max(shfl_xor(mx, 2));
                rowmax[mt][h] = mx * scale;
                grow |= rowmax[mt][h] > m[mt][h] + RESCALE_SLACK;
            }
        }
        if vote_any(grow) {
            for mt in 0..MT {
                for h in 0..2 {
                    let m_new = m[mt][h].max(rowmax[mt][h]);
                    // A row that has seen nothing yet keeps m = -inf; exponents then use 0 so
                    // that exp2(-inf - m) is 0, never NaN.
                    let m_use = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
                    let alpha = exp2(m[mt][h] - m_use);
                    m[mt][h] = m_new;
                    l[mt][h] *= alpha;
                    for dn in 0..DN {
                        o[mt][dn][2 * h] *= alpha;
                        o[mt][dn][2 * h + 1] *= alpha;
                    }
                }
            }
        }
        for mt in 0..MT {
            for h in 0..2 {
                let m_use = if m[mt][h] == f32::NEG_INFINITY { 0.0 } else { m[mt][h] };
                let mut sum = 0.0f32;
                for nt in 0..NT {
                    for e in 0..2 {
                        let pv = exp2(fma(s[mt][nt][2 * h + e], scale, -m_use));
                        s[mt][nt][2 * h + e] = pv;
                        sum += pv;
                    }
                }
                l[mt][h] += sum;
            }
        }

        // O += P V
        for kk in 0..NT / 2 {
            let mut pa = [[0u32; 4]; MT];
            for mt in 0..MT {
                let (x, y) = (&s[mt][2 * kk], &s[mt][2 * kk + 1]);
                pa[mt] = [E::pack2(x[0], x[1]), E::pack2(x[2], x[3]), E::pack2(y[0], y[1]), E::pack2(y[2], y[3])];
            }
            for dp in 0..DN / 2 {
                let b = unsafe { ldmatrix_x4_trans(frag_addr(s_vb, v_lane, rb, kk as u32 * 16, dp as u32 * 2)) };
                for mt in 0..MT {
                    E::mma(&mut o[mt][2 * dp], pa[mt], [b[0], b[1]]);
                    E::mma(&mut o[mt][2 * dp + 1], pa[mt], [b[2], b[3]]);
                }
            }
        }
        cur = next;
        n += 1;
    }

    // Epilogue: normalise, write o and lse. Rows that saw no key get o = 0, lse = -inf.
    let (item, seq) = load_item(p);
    let (lane, warp) = (tid % 32, tid / 32);
    let i0 = item.q_block as i32 * BM;
    for mt in 0..MT {
        for h in 0..2 {
            let mut sum = l[mt][h];
            sum += shfl_xor(sum, 1);
            sum += shfl_xor(sum, 2);
            let r = (warp * (MT as u32 * 16) + mt as u32 * 16 + lane / 4 + 8 * h as u32) as i32;
            let i = i0 + r;
            if i >= seq.q_len {
                continue;
            }
            let (inv, lse) = if sum > 0.0 { (1.0 / sum, (m[mt][h] + log2(sum)) * LN2) } else { (0.0, f32::NEG_INFINITY) };
            let o_row = p.o + 2 * elem_offset(&p.o_strides, item.batch, seq.q_start + i, item.head) as u64;
            for dn in 0..DN {
                if (dn as u32) < valid_chunks {
                    let v = E::pack2(o[mt][dn][2 * h] * inv, o[mt][dn][2 * h + 1] * inv);
                    let addr = o_row + 2 * (dn as u64 * 8 + (lane % 4) as u64 * 2);
                    unsafe { *(addr as *mut u32) = v };
                }
            }
            if lane % 4 == 0 {
                let at = item.batch as i64 * p.lse_batch + item.head as i64 * p.lse_head + (seq.q_start + i) as i64;
                unsafe { *(p.lse as *mut f32).add(at as usize) = lse };
            }
        }
    }
}
