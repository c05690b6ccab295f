//! Shared memory: the dynamic allocation and 32-bit `.shared` addresses.
use core::arch::asm;

/// Base of the dynamic shared memory (`extern .shared` sized at launch), 1024-byte aligned so
/// that the 128-byte swizzle lines up with the banks.
#[repr(C, align(1024))]
pub struct SmemBase(u8);

#[inline(always)]
pub fn dynamic_smem() -> *mut u8 {
    core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<SmemBase>() as *mut u8
}

/// `cvta.to.shared.u64` + `cvt.u32.u64`: the 32-bit `.shared` address that ldmatrix, cp.async and
/// ld/st.shared take. ptxas folds it into the base computation.
#[inline(always)]
pub fn smem_u32<T>(p: *const T) -> u32 {
    let r: u32;
    unsafe {
        asm!("{{ .reg .u64 t; cvta.to.shared.u64 t, {p}; cvt.u32.u64 {r}, t; }}",
             p = in(reg64) p, r = out(reg32) r, options(pure, nomem, nostack));
    }
    r
}

/// `ld.shared.u32 v, [addr]` (a 32-bit address: no 64-bit pointer kept live for it).
#[inline(always)]
pub unsafe fn ld_shared_u32(addr: u32) -> u32 {
    let v: u32;
    unsafe { asm!("ld.shared.u32 {0}, [{1}];", out(reg32) v, in(reg32) addr, options(nostack, readonly)); }
    v
}

/// `ld.shared.v4.u32 {a, b, c, d}, [addr]` (`addr` 16-byte aligned).
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ld.shared.v4.u32 {{{0}, {1}, {2}, {3}}}, [{4}];", out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d,
             in(reg32) addr, options(nostack, readonly));
    }
    [a, b, c, d]
}

/// `st.shared.u32 [addr], v`.
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    unsafe { asm!("st.shared.u32 [{0}], {1};", in(reg32) addr, in(reg32) v, options(nostack)) };
}

/// `st.shared.v4.u32 [addr], {a, b, c, d}` (`addr` 16-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_v4(addr: u32, v: [u32; 4]) {
    unsafe {
        asm!("st.shared.v4.u32 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg32) addr, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3],
             options(nostack));
    }
}

/// `ld.shared.u64 v, [addr]`.
#[inline(always)]
pub unsafe fn ld_shared_u64(addr: u32) -> u64 {
    let v: u64;
    unsafe { asm!("ld.shared.u64 {0}, [{1}];", out(reg64) v, in(reg32) addr, options(nostack, readonly)); }
    v
}

/// `stmatrix.sync.aligned.m8n8.x4.shared.b16 [addr], {m0, m1, m2, m3}`: four 8×8 matrices of
/// 16-bit elements. Fragment: register `mi` of lane `4r + t` holds row `r`, columns `2t` and
/// `2t + 1` of matrix `i` (an mma accumulator's layout, two elements packed per word); lane
/// `8i + r` gives the 16-byte-aligned address of row `r` of matrix `i`. Warp-wide (converged).
#[inline(always)]
pub unsafe fn stmatrix_x4(addr: u32, m: [u32; 4]) {
    unsafe {
        asm!("stmatrix.sync.aligned.m8n8.x4.shared.b16 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg32) addr,
             in(reg32) m[0], in(reg32) m[1], in(reg32) m[2], in(reg32) m[3], options(nostack));
    }
}

/// `fence.proxy.async.shared::cta`: orders this thread's earlier shared-memory accesses
/// (generic proxy) before later async-proxy ones (TMA) that a barrier makes follow them.
#[inline(always)]
pub unsafe fn fence_proxy_async_shared() {
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}
