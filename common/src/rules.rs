//! The visibility rules of `semantics.md`, per query row, as two key intervals.
//!
//! For every pattern, the keys that query row `i` sees (after `causal` and `j < Sk`) are
//! `[0, sink_end) ∪ [lo, hi]`. All three bounds are non-decreasing in `i`, which is what lets a
//! block of rows be summarised by its first and last row: the union of the rows' key sets, the
//! key tiles that every row sees in full, and the key blocks worth visiting all follow in O(1).
//! The kernels and the host planner both use these functions; the host tests check them against
//! a brute-force token mask written independently from `semantics.md`.

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

    /// First key of the next tile, or -1 when done.
    ///
    /// # Safety
    /// For sparse walks, `list` must be valid for `count` reads.
    #[inline(always)]
    pub unsafe fn next(&mut self) -> i32 {
        let blocks = if self.sparse { self.count } else { self.ranges.len() };
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
