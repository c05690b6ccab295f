//! Timeline probes for the Hopper forward (feature `trace`, a profiling build only): one
//! thread per role writes `(code << 56) | clock64` words to its own list, after the work
//! counter (the host's `ATTN_TRACE` build reserves the space and dumps it after each launch;
//! `benches/trace_report.py` summarises a dump).
use attn_common::{TRACE_EVENTS as EVENTS, TRACE_ROLES as ROLES};
use core::arch::asm;

/// `mov.u64 %clock64`: the SM's cycle counter.
#[inline(always)]
pub fn clock64() -> u64 {
    let r: u64;
    unsafe { asm!("mov.u64 {r}, %clock64;", r = out(reg64) r, options(nomem, nostack)) };
    r
}

/// `mov.u64 %globaltimer`: nanoseconds, the same clock on every SM.
#[inline(always)]
pub fn globaltimer() -> u64 {
    let r: u64;
    unsafe { asm!("mov.u64 {r}, %globaltimer;", r = out(reg64) r, options(nomem, nostack)) };
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

    /// Event `code` at the SM's cycle count (dropped once the list is full but for its last word).
    #[inline(always)]
    pub fn mark(&mut self, code: u64) {
        if self.n < EVENTS - 1 {
            self.put(self.n, code, clock64());
            self.n += 1;
        }
    }

    /// Event `code` at the global nanosecond clock (to line CTAs up); always kept (the last
    /// word of a full list).
    #[inline(always)]
    pub fn mark_global(&mut self, code: u64) {
        self.put(self.n.min(EVENTS - 1), code, globaltimer());
        self.n += 1;
    }

    #[inline(always)]
    fn put(&self, at: u32, code: u64, t: u64) {
        if self.on {
            unsafe { *((self.base + 8 * at as u64) as *mut u64) = (code << 56) | (t & ((1 << 56) - 1)) };
        }
    }
}
