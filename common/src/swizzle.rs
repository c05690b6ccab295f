//! The shared-memory tile layout of the kernels: rows of 16-bit elements, 16-byte chunks, and a
//! 128-byte XOR swizzle. Kept here, with the host's tests, because the kernels' fragment
//! addressing depends on one algebraic property of it (see [`frag_addr`]).
//!
//! The swizzle XORs the chunk index inside each 128-byte line with three bits of the row index,
//! so the 8 rows that one ldmatrix phase reads at the same column land in 8 different bank
//! groups: the line index for rows of up to 128 bytes, the row index for 256-byte rows.

/// Physical byte offset of logical byte offset `off` in a tile of `row_bytes`-byte rows that
/// starts 1024-byte aligned.
#[inline(always)]
pub const fn swizzle(off: u32, row_bytes: u32) -> u32 {
    let shift = if row_bytes >= 256 { 8 } else { 7 };
    off ^ (((off >> shift) & 7) << 4)
}

/// The lane-dependent part of a fragment address: the swizzled offset of the lane's own row and
/// chunk (`row_bytes` per row).
#[inline(always)]
pub const fn lane_offset(row_bytes: u32, row: u32, chunk: u32) -> u32 {
    swizzle(row * row_bytes + chunk * 16, row_bytes)
}

/// Address of chunk `lane_chunk + chunk` of row `lane_row + row` of a tile, given the lane part
/// from [`lane_offset`].
///
/// The swizzle is linear over GF(2) and a sum of offsets with disjoint bits is their XOR, so the
/// address splits into a per-lane part (one register) XOR a part that is a compile-time constant
/// after unrolling: one LOP3 per fragment instead of a full recomputation. It requires that the
/// bits of the lane's offset and of `(row, chunk)` do not overlap: `chunk` even when the lane adds
/// 0 or 1, `row` a multiple of a power of two above the lane's rows.
#[inline(always)]
pub const fn frag_addr(tile: u32, lane_off: u32, row_bytes: u32, row: u32, chunk: u32) -> u32 {
    tile + (lane_off ^ swizzle(row * row_bytes + chunk * 16, row_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decomposition the kernels use, for every head dim, lane layout and constant offset.
    #[test]
    fn frag_addr_equals_swizzled_sum() {
        for d in [32u32, 64, 128] {
            let rb = d * 2;
            let chunks = d / 8;
            for lane_row in 0..128u32 {
                for lane_chunk in 0..2u32 {
                    let l = lane_offset(rb, lane_row, lane_chunk);
                    // Constant rows: multiples of 16 above the lane's rows (lane rows < 16 plus
                    // warp offsets that are multiples of 16 and never collide with them).
                    for row in (0..256u32).step_by(16) {
                        if (row & lane_row) != 0 {
                            continue;
                        }
                        for chunk in (0..chunks).step_by(2) {
                            let full = 1024 + swizzle((lane_row + row) * rb + (lane_chunk + chunk) * 16, rb);
                            assert_eq!(frag_addr(1024, l, rb, row, chunk), full, "d {d} lane ({lane_row}, {lane_chunk}) + ({row}, {chunk})");
                        }
                    }
                }
            }
        }
    }

    /// Eight consecutive rows at one chunk hit eight distinct 16-byte bank groups.
    #[test]
    fn ldmatrix_phases_are_conflict_free() {
        for d in [32u32, 64, 128] {
            for row0 in (0..64u32).step_by(8) {
                for chunk in 0..d / 8 {
                    let mut groups: [u32; 8] = core::array::from_fn(|r| (swizzle((row0 + r as u32) * d * 2 + chunk * 16, d * 2) % 128) / 16);
                    groups.sort();
                    assert_eq!(groups, [0, 1, 2, 3, 4, 5, 6, 7], "d {d} rows {row0}.. chunk {chunk}");
                }
            }
        }
    }
}
