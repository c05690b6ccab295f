//! Hopper warpgroup tensor-core products (`wgmma.mma_async`, sm_90a) and their shared-memory
//! matrix descriptors.
//!
//! A warpgroup (4 warps, 128 threads) computes D (64 x N, f32) += A (64 x 16) * B (16 x N).
//! Fragments, for warp `w` of the warpgroup, lane `t`, `g = t / 4`, `c = 2 (t % 4)`:
//! - D (`[f32; N / 2]`): `d[4n + e]` = D[16w + g][8n + c + e], `d[4n + 2 + e]` = D[16w + g + 8][8n + c + e]
//!   for `n < N / 8`, `e < 2`: the mma.sync m16n8 C layout repeated along N.
//! - A from registers (`[u32; 4]`, two 16-bit values each, low half first): the mma.sync
//!   m16n8k16 A layout of rows 16w..16w + 16, so the D of a product over 16-column blocks
//!   packs into the A of the next product with no data movement.
//! - A and B from shared memory: a 64-bit descriptor ([`desc`]) of a tile written with the
//!   128-byte swizzle (what TMA's `SWIZZLE_128B` writes): rows of 128 bytes, the 16-byte chunk
//!   `c` of row `r` stored at chunk `c ^ (r % 8)`, in atoms of 8 rows (1 KiB, 1 KiB aligned).
//!
//! Ordering: the products run asynchronously. Registers they read or write must not be touched
//! between `fence` and `wait`; [`keep`] ties the accumulators to those points so the compiler
//! cannot move their reads or writes across them.
use core::arch::asm;

/// Swizzle mode field of a descriptor (bits 62..64): 1 = 128-byte swizzle.
const SWIZZLE_128B: u64 = 1 << 62;

/// Shared-memory matrix descriptor: start address, leading- and stride-dimension byte offsets
/// (all in 16-byte units, 14 bits each), 128-byte swizzle, base offset 0 (atoms 1 KiB aligned).
///
/// - K-major operands (rows along M or N, 128-byte rows along K): `lbo` is unused, `sbo` = 1024
///   (the next 8 rows). A step of 16 elements along K adds 32 bytes to the start address.
/// - MN-major operands (rows along K, 64 elements of M or N per 128-byte row): `lbo` = the
///   distance between 64-element column blocks, `sbo` = 1024 (the next 8 rows of K).
#[inline(always)]
pub const fn desc(addr: u32, lbo: u32, sbo: u32) -> u64 {
    ((addr as u64 >> 4) & 0x3fff) | (((lbo as u64 >> 4) & 0x3fff) << 16) | (((sbo as u64 >> 4) & 0x3fff) << 32) | SWIZZLE_128B
}

/// `wgmma.fence.sync.aligned`: orders earlier register writes (accumulators, A fragments)
/// before the products issued after it.
#[inline(always)]
pub unsafe fn fence() {
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) }
}

/// `wgmma.commit_group.sync.aligned`: closes the group of products issued since the last one.
#[inline(always)]
pub unsafe fn commit() {
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) }
}

/// `wgmma.wait_group.sync.aligned N`: waits until at most `N` groups are pending.
#[inline(always)]
pub unsafe fn wait<const N: u32>() {
    unsafe { asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack)) }
}

/// An empty instruction that reads and writes every register of `x`: the compiler must finish
/// all writes of `x` before it and start all reads after it.
pub trait Keep {
    fn keep(&mut self);
}

#[inline(always)]
pub fn keep<T: Keep>(x: &mut T) {
    x.keep()
}

macro_rules! keep_impl {
    ($ty:ty, $($i:literal)*) => {
        impl Keep for $ty {
            #[inline(always)]
            fn keep(&mut self) {
                unsafe { asm!(concat!("// keep", $(" {", $i, "}",)*), $(inout(reg32) self[$i],)* options(nomem, nostack, preserves_flags)) }
            }
        }
    };
}
keep_impl!([f32; 32], 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
keep_impl!([f32; 64], 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
keep_impl!([u32; 16], 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
keep_impl!([u32; 32], 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

/// The 16-bit input types of the warpgroup products.
pub trait WgElement {
    /// `wgmma.mma_async.sync.aligned.m64n128k16.f32.T.T d, a-desc, b-desc, p, 1, 1, 0, 0`:
    /// D (64 x 128) = A B (+ D when `acc`), A and B K-major in shared memory.
    unsafe fn mma_ss_n128(d: &mut [f32; 64], a: u64, b: u64, acc: bool);
    /// As `mma_ss_n128` with N = 64.
    unsafe fn mma_ss_n64(d: &mut [f32; 32], a: u64, b: u64, acc: bool);
    /// `wgmma.mma_async.sync.aligned.m64n128k16.f32.T.T d, {a}, b-desc, p, 1, 1, 1` (p true):
    /// D (64 x 128) += A B, A from registers, B MN-major in shared memory.
    unsafe fn mma_rs_n128(d: &mut [f32; 64], a: [u32; 4], b: u64);
    /// As `mma_rs_n128` with N = 64.
    unsafe fn mma_rs_n64(d: &mut [f32; 32], a: [u32; 4], b: u64);
}

/// Writes the wrappers for one type; `$first $i*` are the accumulator's indices (PTX wants the
/// register list without a trailing comma).
macro_rules! mma_ss {
    ($name:ident, $ty:literal, $n:literal, $first:literal $($i:literal)*) => {
        #[inline(always)]
        unsafe fn $name(d: &mut [f32; $n / 2], a: u64, b: u64, acc: bool) {
            unsafe {
                asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {sd}, 0; wgmma.mma_async.sync.aligned.m64n", $n, "k16.f32.", $ty, ".", $ty,
                             " {{{", $first, "}", $(", {", $i, "}",)* "}}, {a}, {b}, p, 1, 1, 0, 0; }}"),
                     inout(reg32) d[$first], $(inout(reg32) d[$i],)*
                     a = in(reg64) a, b = in(reg64) b, sd = in(reg32) acc as u32, options(nostack));
            }
        }
    };
}
macro_rules! mma_rs {
    ($name:ident, $ty:literal, $n:literal, $first:literal $($i:literal)*) => {
        #[inline(always)]
        unsafe fn $name(d: &mut [f32; $n / 2], a: [u32; 4], b: u64) {
            unsafe {
                asm!(concat!("{{ .reg .pred p; setp.eq.u32 p, 0, 0; wgmma.mma_async.sync.aligned.m64n", $n, "k16.f32.", $ty, ".", $ty,
                             " {{{", $first, "}", $(", {", $i, "}",)* "}}, {{{a0}, {a1}, {a2}, {a3}}}, {b}, p, 1, 1, 1; }}"),
                     inout(reg32) d[$first], $(inout(reg32) d[$i],)*
                     a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3], b = in(reg64) b,
                     options(nostack));
            }
        }
    };
}
macro_rules! wg_element {
    ($t:ty, $ty:literal) => {
        impl WgElement for $t {
            mma_ss!(mma_ss_n128, $ty, 128, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
                32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
            mma_ss!(mma_ss_n64, $ty, 64, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
            mma_rs!(mma_rs_n128, $ty, 128, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
                32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
            mma_rs!(mma_rs_n64, $ty, 64, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
        }
    };
}
wg_element!(super::mma::Bf16, "bf16");
wg_element!(super::mma::F16, "f16");
