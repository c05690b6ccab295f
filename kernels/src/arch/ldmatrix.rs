//! `ldmatrix`: warp-wide loads of 8x8 b16 matrices from shared memory into mma fragments.
use core::arch::asm;

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: four 8x8 matrices. Lanes 8m..8m+7 give the row
/// addresses (16 bytes each) of matrix m; register m of lane t then holds row t/4, columns
/// 2(t%4) and 2(t%4)+1 of matrix m (low half = lower column).
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
             options(nostack, readonly));
    }
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: as [`ldmatrix_x4`] but each matrix is
/// transposed: register m of lane t holds rows 2(t%4) and 2(t%4)+1 of column t/4 of matrix m.
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
             out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr,
             options(nostack, readonly));
    }
    [a, b, c, d]
}
