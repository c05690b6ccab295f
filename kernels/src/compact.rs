//! Block-mask compaction: each mask row (mask batch, mask, query block) becomes an ascending list
//! of its set key blocks plus a count; for the backward, each column (key block) a list of its
//! query blocks. One thread per list, so the time and the memory are proportional to the mask,
//! never to the sequence length squared.
use attn_common::CompactParams;

use crate::arch::sync::{block_idx, thread_idx};

pub const THREADS: u32 = 128;

#[inline(always)]
pub unsafe fn compact_block_mask(p: &CompactParams) {
    let row = block_idx() * THREADS + thread_idx();
    if row >= p.rows {
        return;
    }
    let n = p.n_elems as usize;
    let base = (row / p.rows_per_slice) as usize * p.slice_len as usize + (row % p.rows_per_slice) as usize * p.row_step as usize;
    let mask = unsafe { (p.mask as *const u8).add(base) };
    let list = unsafe { (p.lists as *mut i32).add(row as usize * n) };
    let mut count = 0usize;
    let mut bad = false;
    for kb in 0..n {
        let v = unsafe { *mask.add(kb * p.elem_step as usize) };
        if v == 1 {
            unsafe { *list.add(count) = kb as i32 };
            count += 1;
        }
        bad |= v > 1;
    }
    unsafe { *(p.counts as *mut i32).add(row as usize) = count as i32 };
    if bad {
        unsafe { *(p.bad_value as *mut u32) = 1 };
    }
}
