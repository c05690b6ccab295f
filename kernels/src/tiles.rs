//! Shared-memory tiles: row-major `[rows][D]` 16-bit elements in the swizzled layout of
//! `attn_common::swizzle`, filled by 16-byte `cp.async` copies.
use attn_common::swizzle::{lane_offset, swizzle};

use crate::arch::cp_async::cp_async_16_zfill;

/// Issues the copies, spread over `threads` threads, of a `rows x D` tile whose row `r` starts at
/// byte address `base + r * stride`. Rows `>= valid_rows` and chunks `>= valid_chunks` are
/// zero-filled without reading (sequence ends, padded head dims).
#[inline(always)]
pub unsafe fn load_tile<const D: usize>(
    rows: i32,
    threads: u32,
    tile: u32,
    base: u64,
    stride: i64,
    valid_rows: i32,
    valid_chunks: u32,
    tid: u32,
) {
    let rb = (D * 2) as u32;
    let chunks_per_row = (D / 8) as u32;
    let rows_per_pass = threads / chunks_per_row;
    let (row0, chunk) = (tid / chunks_per_row, tid % chunks_per_row);
    // Pass u adds rows_per_pass * u rows: bits above the lane's, so the swizzle splits (see
    // `attn_common::swizzle::frag_addr`) and the destination is the lane's plus a constant.
    let lane = lane_offset(rb, row0, chunk);
    for u in 0..rows as u32 / rows_per_pass {
        let row = row0 + u * rows_per_pass;
        let ok = (row as i32) < valid_rows && chunk < valid_chunks;
        let src = if ok { (base as i64 + row as i64 * stride) as u64 + chunk as u64 * 16 } else { base };
        let dst = tile + (lane ^ swizzle(u * rows_per_pass * rb, rb));
        unsafe { cp_async_16_zfill(dst, src as *const u8, if ok { 16 } else { 0 }) };
    }
}
