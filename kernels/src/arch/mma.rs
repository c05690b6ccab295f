//! Warp-level tensor-core products `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}`.
//!
//! Fragments (lane t, g = t/4, c = 2(t%4)); each u32 packs two 16-bit values, low half first:
//! - A (16x16, row-major): a0 = A[g][c..c+2], a1 = A[g+8][c..c+2], a2 = A[g][c+8..c+10],
//!   a3 = A[g+8][c+8..c+10];
//! - B (16x8, "col" = stored n-major): b0 = B[c..c+2][g], b1 = B[c+8..c+10][g];
//! - C/D (16x8, f32): d0, d1 = D[g][c], D[g][c+1]; d2, d3 = D[g+8][c], D[g+8][c+1].
//! The C layout of a 16x8 tile pair equals the A layout of a 16x16 tile, which is how the
//! softmax probabilities feed the second product without touching shared memory.
use core::arch::asm;

/// The 16-bit input type of the attention kernels.
pub trait Element {
    /// D += A * B for one m16n8k16 tile.
    fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]);
    /// Two f32 rounded to nearest and packed, `lo` in bits 0..16.
    fn pack2(lo: f32, hi: f32) -> u32;
    /// The two values packed in `x` (bits 0..16 first), widened to f32.
    fn unpack2(x: u32) -> (f32, f32);
}

pub struct Bf16;
pub struct F16;

/// `mma.sync.aligned.m16n8k16.row.col.f32.$t.$t.f32` and `cvt.rn.$t x2.f32` for one 16-bit type.
macro_rules! mma_and_pack {
    ($t:literal) => {
        #[inline(always)]
        fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
            unsafe {
                asm!(concat!("mma.sync.aligned.m16n8k16.row.col.f32.", $t, ".", $t, ".f32 {{{0},{1},{2},{3}}}, {{{4},{5},{6},{7}}}, {{{8},{9}}}, {{{0},{1},{2},{3}}};"),
                     inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
                     in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
                     in(reg32) b[0], in(reg32) b[1], options(nomem, nostack));
            }
        }
        /// `cvt.rn.<t>x2.f32 d, hi, lo` (PTX puts its first source in the high half).
        #[inline(always)]
        fn pack2(lo: f32, hi: f32) -> u32 {
            let r: u32;
            unsafe {
                asm!(concat!("cvt.rn.", $t, "x2.f32 {0}, {1}, {2};"), out(reg32) r, in(reg32) hi, in(reg32) lo,
                     options(pure, nomem, nostack));
            }
            r
        }
    };
}

impl Element for Bf16 {
    mma_and_pack!("bf16");
    /// bf16 is the top half of an f32: widening is a shift.
    #[inline(always)]
    fn unpack2(x: u32) -> (f32, f32) {
        (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000))
    }
}

impl Element for F16 {
    mma_and_pack!("f16");
    /// `mov.b32 {lo, hi}` then `cvt.f32.f16` on each half.
    #[inline(always)]
    fn unpack2(x: u32) -> (f32, f32) {
        let (a, b): (f32, f32);
        unsafe {
            asm!("{{ .reg .b16 l, h; mov.b32 {{l, h}}, {2}; cvt.f32.f16 {0}, l; cvt.f32.f16 {1}, h; }}",
                 out(reg32) a, out(reg32) b, in(reg32) x, options(pure, nomem, nostack));
        }
        (a, b)
    }
}
