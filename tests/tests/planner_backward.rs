//! The transposed plan of the backward pass against a brute-force token mask.
//!
//! For one key tile of one (sequence, head), the backward kernels walk the query rows that see
//! it: `attn_common::rules::{query_rows_seeing, rows_full}` (binary searches over the row
//! windows) for every pattern, intersected with the transposed compacted mask
//! (`plan::compact_mask_transposed`) for block-sparse heads. For random calls covering every
//! pattern, both layouts, `Sq != Sk` both ways, zero-length sequences and random masks, and
//! every key tile of 64 and 128 keys, the rows must be exactly those that `reference::visible`
//! lets see a key of the tile, the rows called full must see all of it, and the visited query
//! tiles must be exactly the tiles holding such a row.
mod common;

use attn_common::{BLK, query_rows_seeing, rows_full};
use block_sparse_attn::plan::{self, TransposedMask};
use block_sparse_attn::{AttentionSpec, BLOCK, HeadPattern};
use common::{Case, arb_case, boundary_patterns, check_checkerboard_geometries, mask_bit, visibility};
use proptest::prelude::*;

const KEY_TILES: [i32; 2] = [64, 128];
/// Query rows per tile of the backward's dK/dV walk.
const QUERY_TILE: i32 = 64;

/// The transposed compaction lists, per mask column, exactly the set query blocks, ascending.
fn check_transposed(spec: &AttentionSpec, mask: &[u8], t: &TransposedMask) -> Result<(), TestCaseError> {
    let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
    prop_assert_eq!(t.q_blocks, nq);
    let shape = spec.mask.unwrap();
    prop_assert_eq!(t.counts.len(), shape.batch * shape.n_masks * nk, "one count per column");
    for mb in 0..shape.batch {
        for m in 0..shape.n_masks as u32 {
            for kb in 0..nk {
                let want: Vec<i32> = (0..nq).filter(|&qb| mask_bit(spec, mask, mb, m, qb, kb)).map(|qb| qb as i32).collect();
                prop_assert_eq!(t.col(plan::mask_col(spec, mb, m, kb)), &want[..], "column (mb={}, m={}, kb={})", mb, m, kb);
            }
        }
    }
    Ok(())
}

/// `rows` as a half-open range, `(0, 0)` when empty, or `None` when not contiguous.
fn as_range(rows: &[usize]) -> Option<(i32, i32)> {
    match (rows.first(), rows.last()) {
        (Some(&a), Some(&z)) if z - a + 1 == rows.len() => Some((a as i32, z as i32 + 1)),
        (Some(_), _) => None,
        _ => Some((0, 0)),
    }
}

/// Every key tile of one (sequence, head), for one tile size.
fn check_key_tiles(case: &Case, t: Option<&TransposedMask>, b: usize, h: usize, bn: i32, vis: &[bool]) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    let s = spec.seq(b);
    let (sq, sk) = (s.q_len as usize, s.k_len as usize);
    let rule = spec.patterns[h].rule();
    let sparse = matches!(spec.patterns[h], HeadPattern::BlockSparse { .. });
    // Interval patterns: also the tile just past the last key (seen by no row).
    let n_tiles = sk.div_ceil(bn as usize) as i32 + if sparse { 0 } else { 1 };
    for tile in 0..n_tiles {
        let (j0, j1) = (tile * bn, tile * bn + bn - 1);
        let keys = j0 as usize..(j1 as usize + 1).min(sk);
        let ctx = format!("b={b} h={h} ({:?}) causal={} Sq={sq} Sk={sk} key tile [{j0}, {j1}]", spec.patterns[h], spec.causal);
        let seeing: Vec<usize> = (0..sq).filter(|&i| keys.clone().any(|j| vis[i * sk + j])).collect();
        let any = query_rows_seeing(rule, spec.causal, s.q_len, s.k_len, j0, j1);
        let full = rows_full(rule, spec.causal, s.q_len, s.k_len, j0, j1);
        prop_assert!(any.0 <= any.1 && full.0 <= full.1, "malformed ranges any={any:?} full={full:?}: {ctx}");
        prop_assert!(full.0 >= full.1 || (any.0 <= full.0 && full.1 <= any.1), "full {full:?} not inside any {any:?}: {ctx}");

        // The rows the kernel visits: the range, intersected with the mask for block-sparse heads.
        let kept = |i: usize| match spec.patterns[h] {
            HeadPattern::BlockSparse { mask } => {
                let col = t.unwrap().col(plan::mask_col(spec, b, mask, j0 as usize / BLOCK));
                col.contains(&((i / BLOCK) as i32))
            }
            _ => true,
        };
        let planned: Vec<usize> = (any.0.max(0) as usize..any.1.max(0) as usize).filter(|&i| kept(i)).collect();
        prop_assert_eq!(&planned, &seeing, "planned rows != rows seeing the tile: any={:?} {}", any, ctx);
        if !sparse {
            prop_assert_eq!(as_range(&seeing), Some(any), "rows seeing the tile are not one range: {}", ctx);
        }

        // Full rows (that the mask keeps, for block-sparse heads) see every key of the tile, and
        // the tile lies within the keys.
        for i in (full.0..full.1).map(|i| i as usize).filter(|&i| kept(i)) {
            prop_assert!(
                i < sq && (j1 as usize) < sk && (j0..=j1).all(|j| vis[i * sk + j as usize]),
                "row {i} is called full but does not see the whole tile: full={full:?} {ctx}"
            );
        }

        // The walk over query tiles: exactly the tiles holding a row that sees the tile.
        let tiles = plan::visited_query_tiles(spec, t, b, h, j0, bn, QUERY_TILE);
        let want: Vec<i32> = (0..sq.div_ceil(QUERY_TILE as usize) as i32)
            .filter(|&qt| seeing.iter().any(|&i| i as i32 / QUERY_TILE == qt))
            .map(|qt| qt * QUERY_TILE)
            .collect();
        prop_assert_eq!(&tiles, &want, "visited query tiles: {}", ctx);
        let span = plan::key_span(spec, b, h, j0, j1);
        for &i0 in &tiles {
            let i1 = i0 + QUERY_TILE - 1;
            if span.tile_full(i0, i1) {
                prop_assert!(
                    (i0..=i1).all(|i| full.0 <= i && i < full.1) && (i1 as usize) < sq,
                    "query tile {i0} is called full but has rows outside {full:?}: {ctx}"
                );
            }
            prop_assert!(span.tile_any(i0, i1), "visited query tile {i0} is not tile_any: {ctx}");
        }
    }
    Ok(())
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    prop_assert!(spec.validate().is_ok(), "generated spec is invalid: {:?}", spec.validate());
    let transposed = match case.mask() {
        Some(m) => {
            let t = plan::compact_mask_transposed(spec, m).expect("a 0/1 mask of the right length");
            check_transposed(spec, m, &t)?;
            Some(t)
        }
        None => None,
    };
    for b in 0..spec.batch() {
        for h in 0..spec.heads_q {
            let vis = visibility(spec, case.mask(), b, h);
            for bn in KEY_TILES {
                check_key_tiles(case, transposed.as_ref(), b, h, bn, &vis)?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Lengths up to ~700 (up to 6 blocks, partial last blocks), up to 6 query heads.
    #[test]
    fn query_rows_match_brute_force(case in arb_case(700, 3, 2, &[64])) {
        check_case(&case)?;
    }

    /// Short sequences (at most three blocks) with more heads and GQA groups.
    #[test]
    fn query_rows_match_brute_force_short(case in arb_case(300, 2, 4, &[64])) {
        check_case(&case)?;
    }
}

/// The awkward geometries of `planner.rs`, every pattern, a checkerboard mask.
#[test]
fn query_rows_fixed_geometries() {
    let patterns = boundary_patterns();
    let geometries = [(1, 300), (1, 1), (1, 129), (300, 100), (200, 457), (129, 129), (0, 5), (5, 0), (520, 520)];
    check_checkerboard_geometries(&patterns, &geometries, check_case);
}

/// With every query sequence empty the mask has zero query blocks but still
/// `batch * n_masks * k_blocks` columns, all empty; values other than 0/1 are rejected.
#[test]
fn transposed_mask_edges() {
    let spec = AttentionSpec::batched(2, 0, 300, 1, 1, 64).with_pattern_all(HeadPattern::BlockSparse { mask: 1 }).with_block_mask(2, 2);
    assert_eq!((spec.mask_q_blocks(), spec.mask_k_blocks(), spec.mask_len()), (0, 3, 0));
    let t = plan::compact_mask_transposed(&spec, &[]).unwrap();
    assert_eq!(t.counts, vec![0; 2 * 2 * 3]);
    assert!(plan::visited_query_tiles(&spec, Some(&t), 1, 0, 128, 64, 64).is_empty());

    let spec = AttentionSpec::batched(1, 200, 200, 1, 1, 64).with_pattern_all(HeadPattern::BlockSparse { mask: 0 }).with_block_mask(1, 1);
    assert!(matches!(plan::compact_mask_transposed(&spec, &[1, 0, 2, 1]), Err(block_sparse_attn::Error::MaskValue)));
    assert!(plan::compact_mask_transposed(&spec, &[1, 0, 1]).is_err());
    let t = plan::compact_mask_transposed(&spec, &[1, 0, 1, 1]).unwrap();
    assert_eq!((t.col(0), t.col(1)), (&[0, 1][..], &[1][..]));
    assert_eq!(BLK as usize, BLOCK);
}
