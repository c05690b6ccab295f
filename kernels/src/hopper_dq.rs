//! The Hopper dQ kernel (sm_90a): the forward's producer and persistent grid, with dO beside Q.
//!
//! The producer warpgroup is the forward's ([`producer`]): per work item (128 query rows of one
//! head) it brings Q and dO, then every key tile the forward visits, K and V in rings of
//! `HOPPER_DQ_STAGES`. Each consumer warpgroup (64 rows) computes per key tile:
//! - S = Q Kᵀ and dP = dO Vᵀ by wgmma from shared memory (V read K-major);
//! - P = exp2(S·scale − lse) (token mask first on partial tiles), dS = P ∘ (dP − D);
//! - dQ += dS K with dS from registers and K read MN-major.
//! No atomics: each item owns its rows of dQ.
use attn_common::{BLK, HOPPER_DQ_Q_TILES, HOPPER_DQ_STAGES, HopperDqParams};

use crate::arch::math::{exp2, fma};
use crate::arch::mma::Element;
use crate::arch::smem::{dynamic_smem, smem_u32};
use crate::arch::sync::{bar_sync, thread_idx, warp_uniform};
use crate::arch::tma::{mbar_arrive, mbar_wait, setmaxnreg_dec, setmaxnreg_inc};
use crate::arch::wgmma::{self, WgElement, desc, keep};
use crate::bwd::lse2;
use crate::hopper::{CONSUMER_THREADS, EMPTY, HALF, ItemInfo, LAST, OAcc, Smem, issue_pv, issue_s, lane0_read, mask_tile, next_item, pack_a, producers, release_empty_tile, release_k_q, row_windows, specialise, store_acc_row, tile_j0};
use crate::item::{elem_offset, lse_index};

const NS: u32 = HOPPER_DQ_STAGES as u32;
/// One Q/dO slot: two would not fit beside the K and V rings.
const NQ: u32 = HOPPER_DQ_Q_TILES as u32;

#[inline(always)]
pub unsafe fn bwd_dq_hopper<E: Element + WgElement, O: OAcc>(p: &HopperDqParams) {
    let sm = Smem::<NS, NS, 2, NQ>::new(smem_u32(dynamic_smem()), O::D);
    specialise!(sm, CONSUMER_THREADS, |w| producers::<O, NS, NS, 2, NQ>(&p.h, sm, w), |c, t| consumer::<E, O>(p, sm, c, t));
}

/// One consumer warpgroup (`c` = 0 or 1: query rows 64c..64c + 64 of each item).
#[inline(always)]
unsafe fn consumer<E: Element + WgElement, O: OAcc>(p: &HopperDqParams, sm: Smem<NS, NS, 2, NQ>, c: u32, t: u32) {
    let (warp, lane) = (t / 32, t % 32);
    let row = (c * 64 + warp * 16 + lane / 4) as i32; // and row + 8
    let f = &p.h.f;
    let tile_bytes = sm.tile_bytes;
    // K and V read K-major (as B of S and dP) and K read MN-major (as B of dQ), per stage.
    // Uniform for ptxas (`warp_uniform`): the products then issue back to back.
    let dk = |s: u32| desc(sm.k, 16, 1024) + ((warp_uniform(s) * tile_bytes) as u64 >> 4);
    let dv = |s: u32| desc(sm.v, 16, 1024) + ((warp_uniform(s) * tile_bytes) as u64 >> 4);
    let dk_mn = |s: u32| desc(sm.k, HALF, 1024) + ((warp_uniform(s) * tile_bytes) as u64 >> 4);
    let scale = f.scale_log2;
    let causal = f.causal != 0;
    let mut tile = 0u32;
    let mut n_item = 0u32;
    loop {
        let qb = n_item % NQ;
        let Some(ItemInfo { item, seq, rule, .. }) = (unsafe { next_item(sm, n_item, lane) }) else { break };
        let i0 = item.q_block as i32 * BLK;
        let win = row_windows(rule, causal, &seq, i0 + row);
        // The two rows' lse (exp2 domain; +inf past the sequence, so P = 0) and D.
        let mut lse = [f32::INFINITY; 2];
        let mut dsum = [0.0f32; 2];
        for h in 0..2 {
            let i = i0 + row + 8 * h as i32;
            if i < seq.q_len {
                let at = lse_index(f, item.batch, item.head, seq.q_start + i);
                unsafe {
                    lse[h] = lse2(*(f.lse as *const f32).add(at as usize));
                    dsum[h] = *(p.dsum as *const f32).add(at as usize);
                }
            }
        }
        let mut dq = O::zero();
        loop {
            let (s, ph) = (tile % NS, (tile / NS) & 1);
            unsafe { mbar_wait(sm.k_full(s), ph) };
            let e = unsafe { lane0_read(sm.ring(s), lane) } as i32;
            if e == EMPTY {
                // No key tile: the rows' dQ stays 0.
                unsafe {
                    release_empty_tile(sm, tile, lane);
                    mbar_arrive(sm.q_empty(qb));
                }
                tile += 1;
                break;
            }
            tile += 1;
            // Built per tile from an opaque value (`warp_uniform` is one): hoisted out of the
            // loop, the descriptors of every step would be held (and spilled) across it.
            let (q0, q1) = (warp_uniform(sm.q(qb, 0) + c * (64 * 128)), warp_uniform(sm.q(qb, 1) + c * (64 * 128)));
            let (da_q, da_do) = (desc(q0, 16, 1024), desc(q1, 16, 1024));
            let mut sc = [0.0f32; 64];
            let mut dp = [0.0f32; 64];
            unsafe {
                issue_s::<E, O>(&mut sc, da_q, dk(s));
                mbar_wait(sm.v_full(s), ph);
                issue_s::<E, O>(&mut dp, da_do, dv(s));
                wgmma::wait::<1>(); // S is done
                keep(&mut sc);
            }
            mask_tile(&mut sc, &win, tile_j0(e), lane);
            for n in 0..16 {
                for h in 0..2 {
                    for x in 0..2 {
                        let v = &mut sc[4 * n + 2 * h + x];
                        *v = exp2(fma(*v, scale, -lse[h]));
                    }
                }
            }
            unsafe {
                wgmma::wait::<0>(); // dP is done
                keep(&mut dp);
            }
            if lane == 0 {
                unsafe { mbar_arrive(sm.v_empty(s)) };
            }
            for n in 0..16 {
                for h in 0..2 {
                    for x in 0..2 {
                        let i = 4 * n + 2 * h + x;
                        dp[i] = sc[i] * (dp[i] - dsum[h]);
                    }
                }
            }
            let mut ds = pack_a::<E, 64, 32>(&dp);
            unsafe {
                issue_pv::<E, O>(&mut dq, &mut ds, dk_mn(s));
                wgmma::wait::<0>();
                keep(&mut dq);
                keep(&mut ds);
            }
            unsafe { release_k_q(sm, s, qb, e, lane) };
            if e & LAST != 0 {
                break;
            }
        }

        // Every row of the item is written (rows that see no key get dQ = 0).
        let valid_chunks = f.head_dim / 8;
        for h in 0..2 {
            let i = i0 + row + 8 * h as i32;
            let dq_row = p.dq + 2 * elem_offset(&p.dq_strides, item.batch, seq.q_start + i, item.head) as u64;
            unsafe { store_acc_row::<E, O>(&mut dq, h, p.scale, dq_row, i < seq.q_len, lane, valid_chunks) };
        }
        n_item += 1;
    }
}
