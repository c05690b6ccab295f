//! Hopper bulk tensor copies (TMA) and the transaction barriers they complete (sm_90).
//!
//! An mbarrier (8 bytes of shared memory) completes a phase when its expected arrivals have
//! arrived and the bytes announced with `expect_tx` have landed; waiters name the phase by its
//! parity. A fresh barrier is in phase 0, so waiting on parity 1 returns at once (how a producer
//! finds every ring slot free the first time round).
use core::arch::asm;

/// `mbarrier.init.shared::cta.b64 [bar], count`.
#[inline(always)]
pub unsafe fn mbar_init(bar: u32, count: u32) {
    unsafe { asm!("mbarrier.init.shared::cta.b64 [{0}], {1};", in(reg32) bar, in(reg32) count, options(nostack)) }
}

/// `fence.mbarrier_init.release.cluster`: makes initialised barriers visible to the async proxy
/// (TMA) before they are used. Follow it with a CTA barrier.
#[inline(always)]
pub unsafe fn fence_mbar_init() {
    unsafe { asm!("fence.mbarrier_init.release.cluster;", options(nostack)) }
}

/// `mbarrier.arrive.shared::cta.b64 _, [bar]` (release: earlier writes are seen by waiters).
#[inline(always)]
pub unsafe fn mbar_arrive(bar: u32) {
    unsafe { asm!("mbarrier.arrive.shared::cta.b64 _, [{0}];", in(reg32) bar, options(nostack)) }
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes`: arrives and announces `bytes`
/// of copies that will complete on `bar`.
#[inline(always)]
pub unsafe fn mbar_arrive_expect_tx(bar: u32, bytes: u32) {
    unsafe { asm!("mbarrier.arrive.expect_tx.shared::cta.b64 _, [{0}], {1};", in(reg32) bar, in(reg32) bytes, options(nostack)) }
}

/// `mbarrier.try_wait.parity.shared::cta.b64` until the phase of parity `parity` has completed
/// (acquire: the writes released by the arrivals and the copies are visible after it).
#[inline(always)]
pub unsafe fn mbar_wait(bar: u32, parity: u32) {
    loop {
        let done: u32;
        unsafe {
            asm!("{{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [{1}], {2}; selp.u32 {0}, 1, 0, p; }}",
                 out(reg32) done, in(reg32) bar, in(reg32) parity, options(nostack));
        }
        if done != 0 {
            break;
        }
    }
}

/// `cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes`: copies the
/// box at coordinates `c` (innermost first) of the tensor map at global address `map` to shared
/// address `dst` (1 KiB aligned for the 128-byte swizzle), completing `bytes` on `bar`.
/// Coordinates past the tensor's extent read as zeros.
#[inline(always)]
pub unsafe fn tma_load_4d(dst: u32, map: u64, bar: u32, c: [i32; 4]) {
    unsafe {
        asm!("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{0}], [{1}, {{{2}, {3}, {4}, {5}}}], [{6}];",
             in(reg32) dst, in(reg64) map, in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3], in(reg32) bar,
             options(nostack));
    }
}

/// `cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group`: copies shared memory at `src`
/// (1 KiB aligned, laid out as [`tma_load_4d`] writes it) to the box at coordinates `c` of the
/// tensor map at `map`; elements past the tensor's extent are not written. Shared writes of the
/// generic proxy must be fenced (`fence.proxy.async`) before it.
#[inline(always)]
pub unsafe fn tma_store_4d(src: u32, map: u64, c: [i32; 4]) {
    unsafe {
        asm!("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [{0}, {{{1}, {2}, {3}, {4}}}], [{5}];",
             in(reg64) map, in(reg32) c[0], in(reg32) c[1], in(reg32) c[2], in(reg32) c[3], in(reg32) src,
             options(nostack));
    }
}

/// `cp.async.bulk.commit_group` then `cp.async.bulk.wait_group.read 0`: waits until every bulk
/// copy this thread issued has read its shared source (the writes to global memory may still
/// be in flight; the kernel's end waits for them).
#[inline(always)]
pub unsafe fn bulk_wait_read() {
    unsafe { asm!("cp.async.bulk.commit_group;", "cp.async.bulk.wait_group.read 0;", options(nostack)) }
}

/// `prefetch.tensormap [map]`: brings a tensor map (global address) into the cache.
#[inline(always)]
pub unsafe fn prefetch_tensormap(map: u64) {
    unsafe { asm!("prefetch.tensormap [{0}];", in(reg64) map, options(nostack)) }
}

/// `setmaxnreg.dec.sync.aligned.u32 N`: this warpgroup gives registers back (producers).
#[inline(always)]
pub unsafe fn setmaxnreg_dec<const N: u32>() {
    unsafe { asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `setmaxnreg.inc.sync.aligned.u32 N`: this warpgroup takes registers (consumers).
#[inline(always)]
pub unsafe fn setmaxnreg_inc<const N: u32>() {
    unsafe { asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}
