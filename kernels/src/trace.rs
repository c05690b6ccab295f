//! Timeline probes for the Hopper forward (feature `trace`, a profiling build only): one
//! thread per role writes `(code << 56) | clock64` words to its own list, after the work
//! counter (the host's `ATTN_TRACE` build reserves the space and dumps it after each launch).
use core::arch::asm;

/// Words per (CTA, role) list; later events are dropped.
pub const EVENTS: u32 = 4096;
/// Producer, consumer 0, consumer 1.
pub const ROLES: u32 = 3;

/// `mov.u64 %clock64`: the SM's cycle counter.
#[inline(always)]
pub fn clock64() -> u64 {
    let r: u64;
    unsafe { asm!("mov.u64 {r}, %clock64;", r = out(reg64) r, options(nomem, nostack)) };
    r
}

/// One role's event list.
pub struct Trace {
    base: u64,
    n: u32,
    on: bool,
}

impl Trace {
    /// The list of `role` in CTA `cta`; only a tracer with `on` writes.
    pub fn new(counter: u64, cta: u32, role: u32, on: bool) -> Self {
        Trace { base: counter + 16 + 8 * ((cta * ROLES + role) * EVENTS) as u64, n: 0, on }
    }

    #[inline(always)]
    pub fn mark(&mut self, code: u64) {
        if self.on && self.n < EVENTS {
            unsafe { *((self.base + 8 * self.n as u64) as *mut u64) = (code << 56) | (clock64() & ((1 << 56) - 1)) };
            self.n += 1;
        }
    }
}
