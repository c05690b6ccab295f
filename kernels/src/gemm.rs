//! Warp-level tile products on swizzled shared-memory tiles, shared by the forward and backward
//! kernels. A warp owns `MT` m16 row tiles; accumulators are mma C fragments (see `arch::mma`).
use attn_common::swizzle::{frag_addr, lane_offset};

use crate::arch::ldmatrix::{ldmatrix_x4, ldmatrix_x4_trans};
use crate::arch::mma::Element;

/// `MT` m16 tiles by `NT` n8 tiles of f32 accumulators.
pub type Acc<const MT: usize, const NT: usize> = [[[f32; 4]; NT]; MT];

/// Lane offsets of the three fragment kinds (`row_bytes` per tile row), for a warp whose A rows
/// start at `row0`:
/// `a`: A operand rows (ldmatrix, non-transposed; rows `row0 + lane % 16`);
/// `bt`: B operand from an n-major tile (ldmatrix, non-transposed; `B = tileᵀ`);
/// `bk`: B operand from a k-major tile (ldmatrix.trans; `B = tile`).
#[derive(Clone, Copy)]
pub struct Lanes {
    pub a: u32,
    pub bt: u32,
    pub bk: u32,
}

#[inline(always)]
pub fn lanes(row_bytes: u32, row0: u32, lane: u32) -> Lanes {
    Lanes {
        a: lane_offset(row_bytes, row0 + lane % 16, lane / 16),
        bt: lane_offset(row_bytes, lane % 8 + (lane / 16) * 8, (lane / 8) % 2),
        bk: lane_offset(row_bytes, lane % 8 + ((lane / 8) % 2) * 8, lane / 16),
    }
}

/// `A Bᵀ` over the full head dim: `A` rows from tile `a` (this warp's `16 * MT` rows), `B` rows
/// (`8 * NT` of them) from tile `b`; both `[rows][D]`. This is S = Q Kᵀ, dP = dO Vᵀ and their
/// transposes.
#[inline(always)]
pub fn a_bt<E: Element, const D: usize, const DK: usize, const MT: usize, const NT: usize>(a: u32, b: u32, l: Lanes) -> Acc<MT, NT> {
    let rb = (D * 2) as u32;
    let mut s: Acc<MT, NT> = unsafe { core::mem::zeroed() };
    for ks in 0..DK as u32 {
        let mut af = [[0u32; 4]; MT];
        for (mt, f) in af.iter_mut().enumerate() {
            *f = unsafe { ldmatrix_x4(frag_addr(a, l.a, rb, mt as u32 * 16, ks * 2)) };
        }
        for np in 0..NT / 2 {
            let bf = unsafe { ldmatrix_x4(frag_addr(b, l.bt, rb, np as u32 * 16, ks * 2)) };
            for mt in 0..MT {
                E::mma(&mut s[mt][2 * np], af[mt], [bf[0], bf[1]]);
                E::mma(&mut s[mt][2 * np + 1], af[mt], [bf[2], bf[3]]);
            }
        }
    }
    s
}

/// `acc += P B`: `P` (`16 * MT` rows by `8 * NT` columns) from registers, rounded to `E`, `B` the
/// `8 * NT` rows of tile `b` (`[rows][D]`). This is O += P V, dQ += dS K, dV += Pᵀ dO and dK += dSᵀ Q. The C fragments of two n8
/// tiles are the A fragment of one k16 tile.
#[inline(always)]
pub fn p_b<E: Element, const D: usize, const DN: usize, const MT: usize, const NT: usize>(acc: &mut Acc<MT, DN>, p: &Acc<MT, NT>, b: u32, l: Lanes) {
    let rb = (D * 2) as u32;
    for kk in 0..NT / 2 {
        let mut pa = [[0u32; 4]; MT];
        for mt in 0..MT {
            let (x, y) = (&p[mt][2 * kk], &p[mt][2 * kk + 1]);
            pa[mt] = [E::pack2(x[0], x[1]), E::pack2(x[2], x[3]), E::pack2(y[0], y[1]), E::pack2(y[2], y[3])];
        }
        for dp in 0..DN / 2 {
            let bf = unsafe { ldmatrix_x4_trans(frag_addr(b, l.bk, rb, kk as u32 * 16, dp as u32 * 2)) };
            for mt in 0..MT {
                E::mma(&mut acc[mt][2 * dp], pa[mt], [bf[0], bf[1]]);
                E::mma(&mut acc[mt][2 * dp + 1], pa[mt], [bf[2], bf[3]]);
            }
        }
    }
}

/// `P` (`16 * MT` rows by `16 * KT` columns) already rounded to `E` and packed as A fragments
/// (one per k16 step), e.g. by [`pack_a`].
pub type Packed<const MT: usize, const KT: usize> = [[[u32; 4]; KT]; MT];

/// Rounds `p` to `E` and packs it as A fragments: half the registers of the f32 values.
#[inline(always)]
pub fn pack_a<E: Element, const MT: usize, const NT: usize, const KT: usize>(p: &Acc<MT, NT>) -> Packed<MT, KT> {
    const { assert!(2 * KT == NT) };
    let mut pa: Packed<MT, KT> = [[[0u32; 4]; KT]; MT];
    for mt in 0..MT {
        for kk in 0..KT {
            let (x, y) = (&p[mt][2 * kk], &p[mt][2 * kk + 1]);
            pa[mt][kk] = [E::pack2(x[0], x[1]), E::pack2(x[2], x[3]), E::pack2(y[0], y[1]), E::pack2(y[2], y[3])];
        }
    }
    pa
}

/// `acc += P B` with `P` packed (see [`p_b`]).
#[inline(always)]
pub fn packed_b<E: Element, const D: usize, const DN: usize, const MT: usize, const KT: usize>(acc: &mut Acc<MT, DN>, pa: &Packed<MT, KT>, b: u32, l: Lanes) {
    let rb = (D * 2) as u32;
    for kk in 0..KT {
        for dp in 0..DN / 2 {
            let bf = unsafe { ldmatrix_x4_trans(frag_addr(b, l.bk, rb, kk as u32 * 16, dp as u32 * 2)) };
            for mt in 0..MT {
                E::mma(&mut acc[mt][2 * dp], pa[mt][kk], [bf[0], bf[1]]);
                E::mma(&mut acc[mt][2 * dp + 1], pa[mt][kk], [bf[2], bf[3]]);
            }
        }
    }
}
