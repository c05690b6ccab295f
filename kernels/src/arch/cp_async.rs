//! Ampere asynchronous copies global -> shared (`cp.async`, sm_80+).
use core::arch::asm;

/// `cp.async.cg.shared.global [dst], [src], 16, src_size`: copies `src_size` (0 or 16) bytes and
/// zero-fills the rest of the 16, bypassing L1. With `src_size = 0` nothing is read, which is
/// how rows past a sequence's end and columns past the head dim become zeros.
#[inline(always)]
pub unsafe fn cp_async_16_zfill(dst: u32, src: *const u8, src_size: u32) {
    unsafe {
        asm!("{{ .reg .u64 g; cvta.to.global.u64 g, {1}; cp.async.cg.shared.global [{0}], [g], 16, {2}; }}",
             in(reg32) dst, in(reg64) src, in(reg32) src_size, options(nostack));
    }
}

/// `cp.async.commit_group`: closes the group of copies issued since the last commit.
#[inline(always)]
pub unsafe fn commit() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)); }
}

/// `cp.async.wait_group N`: waits until at most `N` of this thread's groups are pending.
/// Other threads' copies need a barrier after it.
#[inline(always)]
pub unsafe fn wait_group<const N: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)); }
}
