//! Global-memory stores and reductions with an explicit state space (a generic `st` makes the
//! hardware resolve the space on every access).
use core::arch::asm;

/// `st.global.v4.b32 [addr], {w0, w1, w2, w3}`: 16 bytes; `addr` 16-byte aligned.
#[inline(always)]
pub unsafe fn st_global_v4(addr: u64, w: [u32; 4]) {
    unsafe {
        asm!("st.global.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};",
             in(reg64) addr, in(reg32) w[0], in(reg32) w[1], in(reg32) w[2], in(reg32) w[3], options(nostack));
    }
}

/// `red.global.add.f32 [addr], v`: an atomic add with no result (the order of concurrent adds,
/// so the rounding, is not fixed).
#[inline(always)]
pub unsafe fn red_add_f32(addr: u64, v: f32) {
    unsafe { asm!("red.global.add.f32 [{0}], {1};", in(reg64) addr, in(reg32) v, options(nostack)) };
}
