//! The visibility rules of `semantics.md`, per query row, as two key intervals.
//!
//! For every pattern, the keys that query row `i` sees (after `causal` and `j < Sk`) are
//! `[0, sink_end) ∪ [lo, hi]`. All three bounds are non-decreasing in `i`, which is what lets a
//! block of rows be summarised by its first and last row: the union of the rows' key sets, the
//! key tiles that every row sees in full, and the key blocks worth visiting all follow in O(1).
//! The kernels and the host planner both use these functions; the host tests check them against
//! a brute-force token mask written independently from `semantics.md`.
//!
//! The backward pass also needs the transposed view: for one key tile, the query rows that see
//! it ([`KeySpan`], [`QueryTileWalk`]). Monotone bounds make those rows a single range found by
//! binary search over the rows, using two more facts about [`row_window`] (both checked by the
//! host tests): a window is empty (`lo > hi`) only on a prefix of the rows, and
//! `sink_end = min(S, cap + 1)` with `hi <= cap`, where `S` is the sink length and `cap` the last
//! key that `causal` and `Sk` allow.

use crate::abi::{BLK, HeadRule, KIND_BLOCK_STREAMING, KIND_TOKEN_STREAMING};

/// Largest meaningful block count / token count; larger values mean the same as these and are
/// clamped so the i32 arithmetic below cannot overflow (lengths are below 2^30).
const MAX_BLOCKS: u32 = 1 << 22;
const MAX_TOKENS: u32 = 1 << 30;

/// Keys visible to one query row: `[0, sink_end) ∪ [lo, hi]` (either part may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowWindow {
    pub sink_end: i32,
    pub lo: i32,
    pub hi: i32,
}

impl RowWindow {
    #[inline(always)]
    pub fn sees(&self, j: i32) -> bool {
        j < self.sink_end || (self.lo <= j && j <= self.hi)
    }
}

/// Floor division by the block size (an arithmetic shift floors negatives too).
#[inline(always)]
pub fn block_of(token: i32) -> i32 {
    token >> 7
}

/// The window of query row `i` of a sequence with `sq` queries and `sk` keys.
#[inline(always)]
pub fn row_window(rule: HeadRule, causal: bool, sq: i32, sk: i32, i: i32) -> RowWindow {
    let p = i + sk - sq; // bottom-right aligned position, <= sk - 1 for every real row
    let cap = if causal { p } else { sk - 1 };
    match rule.kind {
        KIND_TOKEN_STREAMING => {
            let sink = rule.a.min(MAX_TOKENS) as i32;
            let local = rule.b.min(MAX_TOKENS) as i32;
            RowWindow {
                sink_end: sink.min(cap + 1),
                lo: if local == 0 { i32::MAX } else { p - local + 1 },
                hi: p.min(cap),
            }
        }
        KIND_BLOCK_STREAMING => {
            let sink = rule.a.min(MAX_BLOCKS) as i32;
            let local = rule.b.min(MAX_BLOCKS) as i32;
            let d = block_of(p);
            RowWindow {
                sink_end: (sink * BLK).min(cap + 1),
                lo: if local == 0 { i32::MAX } else { (d - local + 1) * BLK },
                hi: ((d + 1) * BLK - 1).min(cap),
            }
        }
        // Dense, and block-sparse inside the blocks its mask keeps.
        _ => RowWindow { sink_end: 0, lo: 0, hi: cap },
    }
}

/// The windows of the first and last real rows of a block of query rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSpan {
    pub first: RowWindow,
    pub last: RowWindow,
}

/// Half-open ranges of key blocks, ascending and disjoint; either may be empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRanges {
    pub a: (i32, i32),
    pub b: (i32, i32),
}

impl BlockRanges {
    #[inline(always)]
    pub fn len(&self) -> i32 {
        (self.a.1 - self.a.0) + (self.b.1 - self.b.0)
    }
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `n`-th block, `n < len()`.
    #[inline(always)]
    pub fn nth(&self, n: i32) -> i32 {
        let na = self.a.1 - self.a.0;
        if n < na { self.a.0 + n } else { self.b.0 + (n - na) }
    }
}

impl RowSpan {
    /// Rows `[i0, i1]` (`i1 >= i0`, both real rows) of a sequence.
    #[inline(always)]
    pub fn new(rule: HeadRule, causal: bool, sq: i32, sk: i32, i0: i32, i1: i32) -> Self {
        RowSpan {
            first: row_window(rule, causal, sq, sk, i0),
            last: row_window(rule, causal, sq, sk, i1),
        }
    }

    /// Whether some row may see some key of `[j0, j1]`. Exact for every pattern.
    #[inline(always)]
    pub fn tile_any(&self, j0: i32, j1: i32) -> bool {
        let lo = self.first.lo.max(0).max(j0);
        let hi = self.last.hi.min(j1);
        j0 < self.last.sink_end || lo <= hi
    }

    /// Whether every row sees every key of `[j0, j1]`: such tiles need no token mask.
    /// (Conservative: a tile straddling a sink and a window counts as partial.)
    #[inline(always)]
    pub fn tile_full(&self, j0: i32, j1: i32) -> bool {
        j1 < self.first.sink_end || (j0 >= self.last.lo && j1 <= self.first.hi)
    }

    /// Key blocks that some row sees, for the interval patterns (dense and streaming).
    /// Block-sparse heads intersect their mask row with [`RowSpan::tile_any`] instead.
    #[inline(always)]
    pub fn block_ranges(&self) -> BlockRanges {
        let sink_end = self.last.sink_end;
        let sink = if sink_end > 0 { (0, block_of(sink_end - 1) + 1) } else { (0, 0) };
        let lo = self.first.lo.max(0);
        let hi = self.last.hi;
        let win = if hi >= lo { (block_of(lo), block_of(hi) + 1) } else { (0, 0) };
        if win.0 == win.1 {
            BlockRanges { a: sink, b: (0, 0) }
        } else if sink.1 >= win.0 {
            BlockRanges { a: (0, sink.1.max(win.1)), b: (0, 0) }
        } else {
            BlockRanges { a: sink, b: win }
        }
    }
}

/// The key tiles (of `bn` keys, `bn` dividing [`BLK`]) that one work item visits, in ascending
/// order: the blocks of [`RowSpan::block_ranges`] or of a compacted mask row, split into tiles,
/// keeping only the tiles that some row sees. The kernels walk exactly this sequence.
#[derive(Clone, Copy, Debug)]
pub struct TileWalk {
    pub bn: i32,
    pub span: RowSpan,
    sparse: bool,
    list: *const i32,
    count: i32,
    ranges: BlockRanges,
    n: i32,
    half: i32,
}

impl TileWalk {
    /// Dense and streaming heads.
    #[inline(always)]
    pub fn formula(span: RowSpan, bn: i32) -> Self {
        TileWalk { bn, span, sparse: false, list: core::ptr::null(), count: 0, ranges: span.block_ranges(), n: 0, half: 0 }
    }

    /// Block-sparse heads: `list[..count]` are the set key blocks of the mask row, ascending.
    #[inline(always)]
    pub fn sparse(span: RowSpan, bn: i32, list: *const i32, count: i32) -> Self {
        let none = BlockRanges { a: (0, 0), b: (0, 0) };
        TileWalk { bn, span, sparse: true, list, count, ranges: none, n: 0, half: 0 }
    }

    /// The mask blocks the walk goes through.
    #[inline(always)]
    fn blocks(&self) -> i32 {
        if self.sparse { self.count } else { self.ranges.len() }
    }

    /// The mask blocks the walk has not gone through yet (an upper bound on its tiles left, when
    /// `bn` is [`BLK`]).
    #[inline(always)]
    pub fn blocks_left(&self) -> i32 {
        self.blocks() - self.n
    }

    /// First key of the next tile, or -1 when done.
    ///
    /// # Safety
    /// For sparse walks, `list` must be valid for `count` reads.
    #[inline(always)]
    pub unsafe fn next(&mut self) -> i32 {
        let blocks = self.blocks();
        while self.n < blocks {
            let kb = if self.sparse { unsafe { *self.list.add(self.n as usize) } } else { self.ranges.nth(self.n) };
            let j0 = kb * BLK + self.half * self.bn;
            self.half += 1;
            if self.half * self.bn == BLK {
                self.n += 1;
                self.half = 0;
            }
            if self.span.tile_any(j0, j0 + self.bn - 1) {
                return j0;
            }
        }
        -1
    }
}

/// First row of `[0, sq)` where `pred` holds, for a predicate that is false on a prefix of the
/// rows and true on the rest; `sq` when it never holds. O(log sq) evaluations.
#[inline(always)]
fn first_row(sq: i32, pred: impl Fn(i32) -> bool) -> i32 {
    let (mut lo, mut hi) = (0, sq.max(0));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Half-open row range `[a, b)`, with every empty range written `(0, 0)`.
#[inline(always)]
fn range(a: i32, b: i32) -> (i32, i32) {
    if a < b { (a, b) } else { (0, 0) }
}

/// The union of two half-open ranges known to form one range (either may be empty).
#[inline(always)]
fn hull(x: (i32, i32), y: (i32, i32)) -> (i32, i32) {
    if x.0 >= x.1 {
        y
    } else if y.0 >= y.1 {
        x
    } else {
        (x.0.min(y.0), x.1.max(y.1))
    }
}

/// The query rows (half-open, `(0, 0)` when empty) of a sequence with `sq` queries and `sk` keys
/// that see at least one key of `[j0, j1]` (`0 <= j0`; keys past `sk` are never seen). Exact for
/// dense and streaming heads; for block-sparse heads this is the dense rule, to intersect with
/// the query blocks that the mask keeps for the tile's key block. O(log sq).
///
/// Row `i` sees a key of the tile when (A) `j0 < sink_end(i)`, or (B) `[lo(i), hi(i)]` meets
/// `[j0, j1]`: `lo(i) <= j1`, `hi(i) >= j0` and `lo(i) <= hi(i)`.
/// - A is a suffix of the rows (`sink_end` never decreases).
/// - B is a range: `lo <= j1` holds on a prefix, `hi >= j0` on a suffix, and `lo <= hi` on a
///   suffix (a window is empty only on a prefix of the rows).
/// - A ∪ B is one range: if A is not empty then `S > j0`, and a row of B has
///   `cap(i) >= hi(i) >= j0`, so `sink_end(i) = min(S, cap(i) + 1) > j0`: B lies inside A. The
///   union is A when A is not empty, B otherwise.
#[inline(always)]
pub fn query_rows_seeing(rule: HeadRule, causal: bool, sq: i32, sk: i32, j0: i32, j1: i32) -> (i32, i32) {
    if j0 > j1 || sq <= 0 {
        return (0, 0);
    }
    let w = |i: i32| row_window(rule, causal, sq, sk, i);
    let sink = (first_row(sq, |i| j0 < w(i).sink_end), sq);
    let b0 = first_row(sq, |i| {
        let r = w(i);
        r.lo <= r.hi && r.hi >= j0
    });
    let b1 = first_row(sq, |i| w(i).lo > j1);
    hull(range(sink.0, sink.1), range(b0, b1))
}

/// The query rows (half-open, `(0, 0)` when empty) that see every key of `[j0, j1]`: those whose
/// sink holds the whole tile (`j1 < sink_end`) or whose window does (`lo <= j0`, `j1 <= hi`), a
/// sub-range of [`query_rows_seeing`]. Like [`RowSpan::tile_full`] it is conservative: a row
/// that covers the tile only with its sink and its window together counts as partial. A tile
/// reaching past the last key is never full. O(log sq).
///
/// One range, for the reason given at [`query_rows_seeing`]: the sink rows form a suffix, the
/// window rows a range (`lo <= j0` on a prefix, `hi >= j1` on a suffix), and if any row's sink
/// holds the tile then `S > j1`, so every window row (`cap >= hi >= j1`) has `sink_end > j1` too.
#[inline(always)]
pub fn rows_full(rule: HeadRule, causal: bool, sq: i32, sk: i32, j0: i32, j1: i32) -> (i32, i32) {
    if j0 > j1 || sq <= 0 {
        return (0, 0);
    }
    let w = |i: i32| row_window(rule, causal, sq, sk, i);
    let sink = (first_row(sq, |i| j1 < w(i).sink_end), sq);
    let c0 = first_row(sq, |i| w(i).hi >= j1);
    let c1 = first_row(sq, |i| w(i).lo > j0);
    hull(range(sink.0, sink.1), range(c0, c1))
}

/// The query rows of one (sequence, head) that see one key tile `[j0, j1]`: the transposed
/// [`RowSpan`], for kernels that hold a key tile and walk query tiles (dK, dV).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// [`query_rows_seeing`].
    pub any: (i32, i32),
    /// [`rows_full`], inside `any`.
    pub full: (i32, i32),
}

impl KeySpan {
    #[inline(always)]
    pub fn new(rule: HeadRule, causal: bool, sq: i32, sk: i32, j0: i32, j1: i32) -> Self {
        KeySpan { any: query_rows_seeing(rule, causal, sq, sk, j0, j1), full: rows_full(rule, causal, sq, sk, j0, j1) }
    }

    /// Whether some row of `[i0, i1]` sees some key of the tile. Exact for every pattern (for
    /// block-sparse heads, inside the query blocks the mask keeps).
    #[inline(always)]
    pub fn tile_any(&self, i0: i32, i1: i32) -> bool {
        i0.max(self.any.0) < i1.saturating_add(1).min(self.any.1)
    }

    /// Whether every row of `[i0, i1]` sees every key of the tile: such query tiles need no
    /// token mask. Rows past the last query are in no range, so a partial last tile, named by
    /// its nominal rows, counts as partial.
    #[inline(always)]
    pub fn tile_full(&self, i0: i32, i1: i32) -> bool {
        i0 <= i1 && i0 >= self.full.0 && i1 < self.full.1
    }

    /// The query tiles of `bm` rows (tile `t` holds rows `[t * bm, (t + 1) * bm)`) holding a row
    /// that sees some key of the tile, half-open; for the interval patterns.
    #[inline(always)]
    pub fn tiles(&self, bm: i32) -> (i32, i32) {
        if self.any.0 >= self.any.1 { (0, 0) } else { (self.any.0 / bm, (self.any.1 - 1) / bm + 1) }
    }
}

/// The query tiles (of `bm` rows, `bm` dividing [`BLK`]) that one key tile visits, in ascending
/// order: the tiles of [`KeySpan::tiles`], or for block-sparse heads the query blocks of the
/// tile's key block in the transposed compacted mask, split into tiles, keeping only the tiles
/// that some row sees. The transposed [`TileWalk`].
#[derive(Clone, Copy, Debug)]
pub struct QueryTileWalk {
    pub bm: i32,
    pub span: KeySpan,
    sparse: bool,
    list: *const i32,
    count: i32,
    n: i32,
    part: i32,
}

impl QueryTileWalk {
    /// Dense and streaming heads.
    #[inline(always)]
    pub fn formula(span: KeySpan, bm: i32) -> Self {
        let (t0, t1) = span.tiles(bm);
        QueryTileWalk { bm, span, sparse: false, list: core::ptr::null(), count: t1, n: t0, part: 0 }
    }

    /// Block-sparse heads: `list[..count]` are the query blocks whose mask bit is set for the
    /// tile's key block, ascending.
    #[inline(always)]
    pub fn sparse(span: KeySpan, bm: i32, list: *const i32, count: i32) -> Self {
        QueryTileWalk { bm, span, sparse: true, list, count, n: 0, part: 0 }
    }

    /// First row of the next query tile, or -1 when done.
    ///
    /// # Safety
    /// For sparse walks, `list` must be valid for `count` reads.
    #[inline(always)]
    pub unsafe fn next(&mut self) -> i32 {
        if !self.sparse {
            if self.n < self.count {
                self.n += 1;
                return (self.n - 1) * self.bm;
            }
            return -1;
        }
        while self.n < self.count {
            let qb = unsafe { *self.list.add(self.n as usize) };
            let i0 = qb * BLK + self.part * self.bm;
            self.part += 1;
            if self.part * self.bm == BLK {
                self.n += 1;
                self.part = 0;
            }
            if self.span.tile_any(i0, i0 + self.bm - 1) {
                return i0;
            }
        }
        -1
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::abi::{KIND_BLOCK_SPARSE, KIND_DENSE};

    const RULES: [(u32, u32, u32); 12] = [
        (KIND_DENSE, 0, 0),
        (KIND_BLOCK_SPARSE, 0, 0),
        (KIND_BLOCK_STREAMING, 1, 1),
        (KIND_BLOCK_STREAMING, 0, 2),
        (KIND_BLOCK_STREAMING, 2, 0),
        (KIND_BLOCK_STREAMING, 0, 0),
        (KIND_TOKEN_STREAMING, 4, 1),
        (KIND_TOKEN_STREAMING, 0, 0),
        (KIND_TOKEN_STREAMING, 100, 50),
        (KIND_TOKEN_STREAMING, 129, 130),
        (KIND_TOKEN_STREAMING, 0, 70),
        (KIND_TOKEN_STREAMING, u32::MAX, u32::MAX),
    ];
    const LENS: [i32; 9] = [0, 1, 2, 63, 128, 129, 200, 257, 300];

    /// The rows `i` (as a half-open range, `(0, 0)` when empty) where `pred(i)` holds, asserting
    /// that they form one range.
    fn as_range(sq: i32, pred: impl Fn(i32) -> bool, what: &dyn Fn() -> (i32, i32, i32, i32)) -> (i32, i32) {
        let rows = (0..sq).filter(|&i| pred(i));
        let (mut first, mut last, mut n) = (0, -1, 0);
        for i in rows {
            if n == 0 {
                first = i;
            }
            last = i;
            n += 1;
        }
        assert!(n == 0 || last - first + 1 == n, "rows not one range: {:?}", what());
        if n == 0 { (0, 0) } else { (first, last + 1) }
    }

    /// Every rule, geometry and key tile (aligned tiles of 64 and 128 keys, and narrow tiles at
    /// many offsets): the binary searches equal a row-by-row scan of `row_window`, and the facts
    /// the searches rely on hold.
    #[test]
    fn key_span_equals_row_scan() {
        for (kind, a, b) in RULES {
            let rule = HeadRule { kind, a, b, _pad: 0 };
            for causal in [false, true] {
                for sq in LENS {
                    for sk in LENS {
                        let w = |i| row_window(rule, causal, sq, sk, i);
                        // An empty window only on a prefix of the rows.
                        let mut seen_nonempty = false;
                        for i in 0..sq {
                            let r = w(i);
                            assert!(!(seen_nonempty && r.lo > r.hi), "empty window after a non-empty one: {rule:?} {causal} {sq} {sk} {i}");
                            seen_nonempty |= r.lo <= r.hi;
                        }
                        let mut tiles: Vec<(i32, i32)> = Vec::new();
                        for bn in [64, 128] {
                            for t in 0..=sk / bn + 1 {
                                tiles.push((t * bn, t * bn + bn - 1));
                            }
                        }
                        for j0 in (0..sk + 3).step_by(5) {
                            tiles.push((j0, j0));
                            tiles.push((j0, j0 + 6));
                        }
                        tiles.push((5, 4)); // empty
                        for &(j0, j1) in &tiles {
                            let ctx = || (kind as i32, sq, sk, j0 * 10000 + j1);
                            let any = as_range(sq, |i| (j0..=j1).any(|j| w(i).sees(j)), &ctx);
                            assert_eq!(query_rows_seeing(rule, causal, sq, sk, j0, j1), any, "{rule:?} causal={causal} sq={sq} sk={sk} [{j0}, {j1}]");
                            if j0 > j1 {
                                assert_eq!(rows_full(rule, causal, sq, sk, j0, j1), (0, 0));
                                continue;
                            }
                            let full = as_range(sq, |i| RowSpan::new(rule, causal, sq, sk, i, i).tile_full(j0, j1), &ctx);
                            assert_eq!(rows_full(rule, causal, sq, sk, j0, j1), full, "{rule:?} causal={causal} sq={sq} sk={sk} [{j0}, {j1}]");
                            for i in full.0..full.1 {
                                assert!((j0..=j1).all(|j| w(i).sees(j)));
                            }
                        }
                    }
                }
            }
        }
    }
}
