//! The planner and the shared visibility rules against a brute-force token mask.
//!
//! `attn_common::rules` (row windows, tile walks, the full/partial split) is what the kernels
//! execute; `reference::visible` is an independent, literal reading of the table in
//! `semantics.md`. For random calls covering every pattern, both layouts, `Sq != Sk` both ways,
//! zero-length sequences and random masks, every work item's visited tiles must be exactly the
//! tiles holding a visible key, tiles marked full must be fully visible, and every row's window
//! must agree with the brute force.
mod common;

use std::collections::BTreeMap;

use attn_common::row_window;
use block_sparse_attn::plan::{self, CompactMask};
use block_sparse_attn::{AttentionSpec, BLOCK, HeadPattern};
use common::{Case, arb_case, boundary_patterns, check_checkerboard_geometries, mask_bit, visibility};
use proptest::prelude::*;

const TILE_SIZES: [i32; 2] = [32, 64];

/// Checks the row windows of every real row of sequence `b` under head `h` against `vis`:
/// exact for interval patterns; for block-sparse heads the window is the dense rule, so it must
/// agree inside the key blocks the mask keeps (and the reference must see nothing outside them).
/// Also checks that the three bounds never decrease with the row, which the O(1) block-of-rows
/// summaries (`RowSpan`) rely on.
fn check_row_windows(case: &Case, b: usize, h: usize, vis: &[bool]) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    let s = spec.seq(b);
    let (sq, sk) = (s.q_len, s.k_len);
    let rule = spec.patterns[h].rule();
    let mut prev = None;
    for i in 0..sq {
        let w = row_window(rule, spec.causal, sq, sk, i);
        if let Some((p_sink, p_lo, p_hi)) = prev {
            prop_assert!(
                w.sink_end >= p_sink && w.lo >= p_lo && w.hi >= p_hi,
                "row window bounds decrease at b={b} h={h} i={i}: {w:?} after {:?}",
                (p_sink, p_lo, p_hi)
            );
        }
        prev = Some((w.sink_end, w.lo, w.hi));
        for j in 0..sk {
            let v = vis[(i * sk + j) as usize];
            let kept = match spec.patterns[h] {
                HeadPattern::BlockSparse { mask } => {
                    mask_bit(spec, case.mask().unwrap(), b, mask, i as usize / BLOCK, j as usize / BLOCK)
                }
                _ => true,
            };
            if kept {
                prop_assert_eq!(w.sees(j), v, "row_window {:?} disagrees with visible() at b={} h={} i={} j={}", w, b, h, i, j);
            } else {
                prop_assert!(!v, "visible() sees j={j} in a block the mask drops (b={b} h={h} i={i})");
            }
        }
        // Keys past the end of the sequence are never seen.
        for j in sk..sk + 130 {
            prop_assert!(!w.sees(j), "row_window {w:?} sees key {j} >= Sk={sk} (b={b} h={h} i={i})");
        }
    }
    Ok(())
}

/// Checks the tile walk of one work item against the brute force, for one tile size.
fn check_work_item(
    case: &Case,
    compact: Option<&CompactMask>,
    (b, h, qb): (usize, usize, usize),
    bn: i32,
    vis: &[bool],
) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    let s = spec.seq(b);
    let (sq, sk) = (s.q_len as usize, s.k_len as usize);
    let bn_u = bn as usize;
    let (i0, i1) = plan::block_rows(qb, sq);
    prop_assert_eq!((i0 as usize, i1 as usize), (qb * BLOCK, ((qb + 1) * BLOCK).min(sq) - 1), "block_rows({}, {})", qb, sq);
    let rows = i0 as usize..=i1 as usize;
    let tiles = plan::visited_tiles(spec, compact, b, h, qb, bn);
    let ctx = format!("b={b} h={h} ({:?}) q_block={qb} bn={bn} Sq={sq} Sk={sk} tiles={tiles:?}", spec.patterns[h]);

    // (c) ascending, distinct, aligned, non-negative.
    for w in tiles.windows(2) {
        prop_assert!(w[0] < w[1], "tiles not strictly ascending: {ctx}");
    }
    for &j0 in &tiles {
        prop_assert!(j0 >= 0 && j0 % bn == 0, "tile start {j0} not a non-negative multiple of bn: {ctx}");
    }

    // Tiles holding at least one key that at least one real row of the block sees.
    let n_tiles = sk.div_ceil(bn_u);
    let needed: Vec<i32> = (0..n_tiles)
        .filter(|&t| rows.clone().any(|i| (t * bn_u..((t + 1) * bn_u).min(sk)).any(|j| vis[i * sk + j])))
        .map(|t| (t * bn_u) as i32)
        .collect();
    // (a) coverage: every tile with a visible key is visited.
    for &t in &needed {
        prop_assert!(tiles.contains(&t), "tile {t} holds a visible key but is not visited: {ctx}");
    }
    // (b) exactness: every visited tile holds a visible key.
    for &t in &tiles {
        prop_assert!(needed.contains(&t), "tile {t} is visited but holds no visible key: {ctx}");
    }

    // (d) a tile the span calls full needs no token mask: every real row sees every key.
    let span = plan::span(spec, b, h, qb);
    let fully_visible = |j0: usize| rows.clone().all(|i| (j0..j0 + bn_u).all(|j| j < sk && vis[i * sk + j]));
    let candidates: Vec<i32> = match spec.patterns[h] {
        // The span of a block-sparse head is the dense rule: meaningful inside visited tiles.
        HeadPattern::BlockSparse { .. } => tiles.clone(),
        // Interval patterns: every tile, including ones past the end of the keys.
        _ => (0..=n_tiles as i32).map(|t| t * bn).collect(),
    };
    for j0 in candidates {
        if span.tile_full(j0, j0 + bn - 1) {
            prop_assert!(fully_visible(j0 as usize), "tile {j0} is marked full but some (row, key) is not visible: {ctx}");
        }
    }
    Ok(())
}

/// The compacted mask lists, per mask row, exactly the set key blocks in ascending order.
fn check_compaction(spec: &AttentionSpec, mask: &[u8], compact: &CompactMask) -> Result<(), TestCaseError> {
    let nk = spec.mask_k_blocks();
    prop_assert_eq!(compact.k_blocks, nk);
    if nk == 0 {
        return Ok(());
    }
    for (r, row) in mask.chunks(nk).enumerate() {
        let want: Vec<i32> = (0..nk).filter(|&kb| row[kb] != 0).map(|kb| kb as i32).collect();
        prop_assert_eq!(compact.row(r), &want[..], "compacted mask row {}", r);
    }
    Ok(())
}

/// `work_items` lists every (b, h, q_block) with `q_block < ceil(Sq_b / 128)` exactly once.
fn check_work_items(spec: &AttentionSpec, compact: Option<&CompactMask>) -> Result<(), TestCaseError> {
    let items = plan::work_items(spec, compact.map(|c| &c.counts[..]));
    let mut seen: BTreeMap<(u32, u32, u32), usize> = BTreeMap::new();
    for it in &items {
        *seen.entry((it.batch, it.head, it.q_block)).or_default() += 1;
    }
    let mut expected = 0;
    for b in 0..spec.batch() {
        let q_blocks = (spec.seq(b).q_len as usize).div_ceil(BLOCK);
        for h in 0..spec.heads_q {
            for qb in 0..q_blocks {
                expected += 1;
                let n = seen.get(&(b as u32, h as u32, qb as u32)).copied().unwrap_or(0);
                prop_assert_eq!(n, 1, "work item (b={}, h={}, q_block={}) listed {} times", b, h, qb, n);
            }
        }
    }
    prop_assert_eq!(items.len(), expected, "work_items has items outside the call: {:?}", items);
    Ok(())
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let spec = &case.spec;
    prop_assert!(spec.validate().is_ok(), "generated spec is invalid: {:?}", spec.validate());
    let compact = match case.mask() {
        Some(m) => {
            let c = plan::compact_mask(spec, m).expect("a 0/1 mask of the right length");
            check_compaction(spec, m, &c)?;
            Some(c)
        }
        None => None,
    };
    check_work_items(spec, compact.as_ref())?;
    for b in 0..spec.batch() {
        let sq = spec.seq(b).q_len as usize;
        for h in 0..spec.heads_q {
            let vis = visibility(spec, case.mask(), b, h);
            check_row_windows(case, b, h, &vis)?;
            for qb in 0..sq.div_ceil(BLOCK) {
                for bn in TILE_SIZES {
                    check_work_item(case, compact.as_ref(), (b, h, qb), bn, &vis)?;
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Lengths up to ~700 (up to 6 blocks, partial last blocks), up to 6 query heads.
    #[test]
    fn visited_tiles_match_brute_force(case in arb_case(700, 3, 2, &[64])) {
        check_case(&case)?;
    }

    /// Short sequences (at most two blocks) with more heads and GQA groups: many patterns per call.
    #[test]
    fn visited_tiles_match_brute_force_short(case in arb_case(260, 2, 4, &[64])) {
        check_case(&case)?;
    }
}

/// A fixed case per pattern at the awkward geometries the seed gets wrong (`semantics.md`
/// **differs**): decoding with `Sq = 1` and `Sk` not a block multiple, `Sq > Sk` with negative
/// diagonal blocks, a partial last query block with `Sk > Sq`.
#[test]
fn visited_tiles_fixed_geometries() {
    let patterns = boundary_patterns();
    let geometries = [(1, 300), (1, 1), (1, 128), (1, 129), (300, 100), (200, 457), (129, 129), (0, 5), (5, 0), (700, 700)];
    check_checkerboard_geometries(&patterns, &geometries, check_case);
}

/// With every key sequence empty the mask has zero key blocks, but it still has
/// `batch * n_masks * q_blocks` rows: the compaction must list them all (empty), or every
/// lookup of a mask row (`work_items`, `visited_tiles`, the kernel's `block_counts[row]`) reads
/// past the end.
#[test]
fn compact_mask_with_no_key_blocks_keeps_every_row() {
    let spec = AttentionSpec::batched(2, 200, 0, 2, 1, 64)
        .with_patterns(vec![HeadPattern::BlockSparse { mask: 1 }, HeadPattern::Dense])
        .with_block_mask(2, 2);
    assert_eq!((spec.mask_q_blocks(), spec.mask_k_blocks(), spec.mask_len()), (2, 0, 0));
    let compact = plan::compact_mask(&spec, &[]).unwrap();
    assert_eq!(compact.counts, vec![0; 2 * 2 * 2]);
    assert_eq!(plan::work_items(&spec, Some(&compact.counts)).len(), 2 * 2 * 2);
    for b in 0..2 {
        for qb in 0..2 {
            assert!(plan::visited_tiles(&spec, Some(&compact), b, 0, qb, 64).is_empty());
        }
    }
}
