//! Barriers, warp shuffles and special registers.
use core::arch::asm;

/// `bar.sync 0`: all threads of the CTA.
#[inline(always)]
pub fn bar_sync() {
    unsafe { asm!("bar.sync 0;", options(nostack)); }
}

/// `shfl.sync.bfly.b32` over the full warp: the value of lane `lane ^ mask`.
#[inline(always)]
pub fn shfl_xor(v: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), mask))
}

/// `shfl.sync.bfly.b32` over the full warp, on a word.
#[inline(always)]
pub fn shfl_xor_u32(v: u32, mask: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
             out(reg32) r, in(reg32) v, in(reg32) mask, options(nomem, nostack));
    }
    r
}

/// Transposes the 4×4 words each quad of lanes holds (lane `4q + t` holds row `t` in `a`):
/// returns column `t`, i.e. `out[s]` is lane `4q + s`'s `a[t]`. Two butterfly stages (partner
/// `lane ^ 1`, then `lane ^ 2`), each exchanging the two words whose index bit differs from the
/// lane's: 4 shuffles. Every lane of the warp must take part (converged code).
#[inline(always)]
pub fn quad_transpose(mut a: [u32; 4], t: u32) -> [u32; 4] {
    butterfly_stage(&mut a, t, 1);
    butterfly_stage(&mut a, t, 2);
    a
}

#[inline(always)]
fn butterfly_stage(a: &mut [u32; 4], t: u32, k: usize) {
    let upper = t & k as u32 != 0;
    for lo in 0..4 {
        if lo & k == 0 {
            let hi = lo | k;
            let got = shfl_xor_u32(if upper { a[lo] } else { a[hi] }, k as u32);
            if upper {
                a[lo] = got;
            } else {
                a[hi] = got;
            }
        }
    }
}

#[inline(always)]
pub fn thread_idx() -> u32 {
    unsafe { core::arch::nvptx::_thread_idx_x() as u32 }
}

#[inline(always)]
pub fn block_idx() -> u32 {
    unsafe { core::arch::nvptx::_block_idx_x() as u32 }
}

#[inline(always)]
pub fn grid_dim() -> u32 {
    unsafe { core::arch::nvptx::_grid_dim_x() as u32 }
}

/// `mov.u32` that the compiler cannot see through or move: values derived from it are
/// recomputed where they are used instead of being hoisted out of the loop and held in
/// registers for its whole length (cheap address arithmetic is not worth a register).
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    let r: u32;
    unsafe { asm!("mov.u32 {0}, {1};", out(reg32) r, in(reg32) x, options(nomem, nostack)); }
    r
}

/// `vote.sync.any.pred` over the full warp: whether `pred` holds in any lane.
#[inline(always)]
pub fn vote_any(pred: bool) -> bool {
    let r: u32;
    unsafe {
        asm!("{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.any.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
             out(reg32) r, in(reg32) pred as u32, options(nomem, nostack));
    }
    r != 0
}

/// `bar.red.or.pred` on named barrier `id` with `n` threads (a multiple of 32, counting this
/// warp): waits for them and returns whether `pred` held in any of them.
#[inline(always)]
pub fn bar_any(id: u32, n: u32, pred: bool) -> bool {
    let r: u32;
    unsafe {
        asm!("{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; bar.red.or.pred q, {2}, {3}, p; selp.u32 {0}, 1, 0, q; }}",
             out(reg32) r, in(reg32) pred as u32, in(reg32) id, in(reg32) n, options(nostack));
    }
    r != 0
}

/// `shfl.sync.idx.b32` over the full warp: lane `src`'s value of `v`.
#[inline(always)]
pub fn shfl_idx(v: u32, src: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("shfl.sync.idx.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;",
             out(reg32) r, in(reg32) v, in(reg32) src, options(nomem, nostack));
    }
    r
}

/// `shfl.sync.idx.b32` from lane 0 of a value every lane already holds: ptxas then knows it to
/// be warp-uniform and keeps what is derived from it in uniform registers. Wgmma descriptors
/// built from a stage or slot index it could not prove uniform (loop-carried through branches
/// on shared-memory words) went through regular registers and two `R2UR` before every product,
/// which then issued one at a time; built from this, the descriptor steps are `UIADD3`s and the
/// products issue back to back. Call it from converged code.
#[inline(always)]
pub fn warp_uniform(v: u32) -> u32 {
    shfl_idx(v, 0)
}

/// `bar.warp.sync 0xffffffff`: the warp's lanes meet; their memory accesses before it are
/// ordered before any lane's after it (so one lane's release can cover the others' reads).
#[inline(always)]
pub fn syncwarp() {
    unsafe { asm!("bar.warp.sync 0xffffffff;", options(nostack)) };
}

/// The next work item of a persistent grid: `gridDim.x + counter++` (`atom.global.add.u32` on a
/// counter zeroed at launch), the first `gridDim.x` items being the CTAs' `blockIdx.x`. Lane 0
/// only: for a single-thread caller, the lane predicate keeps ptxas from turning the atomic into a
/// warp-aggregated one, whose result shuffle waits for the atomic at once.
#[inline(always)]
pub unsafe fn next_work_item(counter: u64) -> u32 {
    let idx: u32;
    // `%nctaid.x` read here rather than through `grid_dim`: hoisted out of the producer's loop,
    // it held a register the 40-register producer had to spill.
    unsafe {
        asm!("{{ .reg .pred q; .reg .u32 l, g; mov.u32 l, %laneid; setp.eq.u32 q, l, 0; mov.u32 {0}, 0; \
              @q atom.global.add.u32 {0}, [{1}], 1; mov.u32 g, %nctaid.x; add.u32 {0}, {0}, g; }}",
             out(reg32) idx, in(reg64) counter, options(nostack))
    };
    idx
}
