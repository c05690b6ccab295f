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
//! pointers, the per-row key windows) lives in shared memory (`item`), written once per work
//! item and re-read after barriers.
use attn_common::{FWD_CTX_BYTES, FwdParams, RowWindow};

use crate::arch::math::{exp2, fma, log2};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, smem_u32};
use crate::arch::sync::{opaque, shfl_xor, thread_idx, vote_any};
use crate::gemm::{Acc, a_bt, lanes, p_b};
use crate::item::{BM, ItemCtx, RowTile, advance_kv, elem_offset, load_item, lse_index, mask_scores, setup_query_item, start_kv};

const LN2: f32 = core::f32::consts::LN_2;
/// How far (log2 units) a row's max may outgrow the max its sums are kept against before O and
/// l are rescaled: probabilities stay below 2^8, far from any f32 or bf16 limit.
const RESCALE_SLACK: f32 = 8.0;

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

    let q_rows = [RowTile { tile: s_q, base: p.q, strides: &p.q_strides }];
    let mut cur = unsafe { setup_query_item::<D>(p, bn, threads, tid, &q_rows, ctx, windows) };

    let mut o: Acc<MT, DN> = unsafe { core::mem::zeroed() };
    let mut m = [[f32::NEG_INFINITY; 2]; MT];
    let mut l = [[0.0f32; 2]; MT];

    let ctx_end = s_q + tiles_bytes as u32;
    unsafe { start_kv::<D>(ctx_end, s_k, tile_bytes, bn, threads, cur, valid_chunks, tid) };
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
        let row0 = warp * (MT as u32 * 16);
        let buf = n % 2;
        let s_kb = s_q + (BM as u32) * rb + buf * tile_bytes;
        let s_vb = s_kb + 2 * tile_bytes;
        let ln = lanes(rb, row0, lane);

        let next = unsafe { advance_kv::<D>(ctx_a, ctx, s_q + (BM as u32) * rb, n, tile_bytes, bn, threads, valid_chunks, tid) };

        let mut s = a_bt::<E, D, DK, MT, NT>(s_q, s_kb, ln);
        unsafe { mask_scores::<MT, NT>(&mut s, ctx_a, windows_a, cur, row0, lane) };

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

        p_b::<E, D, DN, MT, NT>(&mut o, &s, s_vb, ln);
        cur = next;
        n += 1;
    }

    // Epilogue: normalise, write o and lse. Rows that saw no key get o = 0, lse = -inf.
    let (item, seq) = load_item(p, p.items);
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
                let at = lse_index(p, item.batch, item.head, seq.q_start + i);
                unsafe { *(p.lse as *mut f32).add(at as usize) = lse };
            }
        }
    }
}
