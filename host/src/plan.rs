//! Planning on the host: the work items of a call, heaviest first, and the CPU mirror of the
//! mask compaction. Costs come from the same rules the kernels walk, in O(1) per work item
//! (O(1) per mask row for block-sparse heads), never from the score matrix.
use attn_common::{KeySpan, QueryTileWalk, RowSpan, TileWalk, WorkItem};

use crate::error::{Error, Result};
use crate::pattern::HeadPattern;
use crate::spec::{AttentionSpec, BLOCK};

/// Compacted block mask: per mask row `(mask batch, mask, q block)`, the set key blocks in
/// ascending order (`lists[row * k_blocks ..][..counts[row]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactMask {
    /// `k_blocks` slots per mask row.
    pub lists: Vec<i32>,
    /// Set blocks per mask row.
    pub counts: Vec<i32>,
    /// Slots per row: `ceil(max Sk / 128)`.
    pub k_blocks: usize,
}

impl CompactMask {
    /// The set key blocks of mask row `row`.
    pub fn row(&self, row: usize) -> &[i32] {
        &self.lists[row * self.k_blocks..][..self.counts[row] as usize]
    }
}

/// What the GPU kernel `compact_block_mask` computes, on the CPU.
pub fn compact_mask(spec: &AttentionSpec, mask: &[u8]) -> Result<CompactMask> {
    check_mask_len(spec, mask.len())?;
    let nk = spec.mask_k_blocks();
    let rows = spec.mask.map_or(0, |m| m.batch * m.n_masks * spec.mask_q_blocks()); // every row, even with 0 key blocks
    let mut lists = vec![0; mask.len()];
    let mut counts = vec![0; rows];
    for r in 0..rows {
        let mut c = 0;
        for (kb, &v) in mask[r * nk..(r + 1) * nk].iter().enumerate() {
            match v {
                0 => {}
                1 => {
                    lists[r * nk + c] = kb as i32;
                    c += 1;
                }
                _ => return Err(Error::MaskValue),
            }
        }
        counts[r] = c as i32;
    }
    Ok(CompactMask { lists, counts, k_blocks: nk })
}

/// Transposed compacted block mask, for the backward pass: per mask column
/// `(mask batch, mask, k block)`, the query blocks whose bit is set, in ascending order
/// (`lists[col * q_blocks ..][..counts[col]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransposedMask {
    /// `q_blocks` slots per mask column.
    pub lists: Vec<i32>,
    /// Set blocks per mask column.
    pub counts: Vec<i32>,
    /// Slots per column: `ceil(max Sq / 128)`.
    pub q_blocks: usize,
}

impl TransposedMask {
    /// The set query blocks of mask column `col`.
    pub fn col(&self, col: usize) -> &[i32] {
        &self.lists[col * self.q_blocks..][..self.counts[col] as usize]
    }
}

/// The mask compaction transposed: for every key block of every mask slice, the query blocks
/// that see it. Every column is listed, even with 0 query blocks.
pub fn compact_mask_transposed(spec: &AttentionSpec, mask: &[u8]) -> Result<TransposedMask> {
    check_mask_len(spec, mask.len())?;
    let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
    let slices = spec.mask.map_or(0, |m| m.batch * m.n_masks);
    let mut lists = vec![0; mask.len()];
    let mut counts = vec![0; slices * nk];
    for sl in 0..slices {
        let slice = &mask[sl * nq * nk..(sl + 1) * nq * nk];
        for kb in 0..nk {
            let col = sl * nk + kb;
            let mut c = 0;
            for qb in 0..nq {
                match slice[qb * nk + kb] {
                    0 => {}
                    1 => {
                        lists[col * nq + c] = qb as i32;
                        c += 1;
                    }
                    _ => return Err(Error::MaskValue),
                }
            }
            counts[col] = c as i32;
        }
    }
    Ok(TransposedMask { lists, counts, q_blocks: nq })
}

/// Checks that a block mask of `got` elements has the spec's mask shape.
pub fn check_mask_len(spec: &AttentionSpec, got: usize) -> Result<()> {
    let m = spec.mask.expect("check_mask_len needs a mask shape");
    let expected = spec.mask_len();
    if got != expected {
        return Err(Error::MaskLen {
            got,
            expected,
            batch: m.batch,
            n_masks: m.n_masks,
            q_blocks: spec.mask_q_blocks(),
            k_blocks: spec.mask_k_blocks(),
        });
    }
    Ok(())
}

/// Index of the mask row that work item `(b, head, q_block)` reads.
pub fn mask_row(spec: &AttentionSpec, b: usize, mask: u32, q_block: usize) -> usize {
    let shape = spec.mask.expect("block-sparse heads have a mask");
    let mb = if shape.batch == 1 { 0 } else { b };
    (mb * shape.n_masks + mask as usize) * spec.mask_q_blocks() + q_block
}

/// Rows `[i0, i1]` of query block `q_block` of a sequence of `sq` queries.
pub fn block_rows(q_block: usize, sq: usize) -> (i32, i32) {
    let i0 = q_block * BLOCK;
    (i0 as i32, ((i0 + BLOCK).min(sq) - 1) as i32)
}

/// The row span of one work item.
pub fn span(spec: &AttentionSpec, b: usize, h: usize, q_block: usize) -> RowSpan {
    let s = spec.seq(b);
    let (i0, i1) = block_rows(q_block, s.q_len as usize);
    RowSpan::new(spec.patterns[h].rule(), spec.causal, s.q_len, s.k_len, i0, i1)
}

/// The key tiles of `bn` keys that the kernels visit for one work item (first key of each).
pub fn visited_tiles(spec: &AttentionSpec, compact: Option<&CompactMask>, b: usize, h: usize, q_block: usize, bn: i32) -> Vec<i32> {
    let sp = span(spec, b, h, q_block);
    let mut walk = match spec.patterns[h] {
        HeadPattern::BlockSparse { mask } => {
            let c = compact.expect("block-sparse heads need the compacted mask");
            let row = c.row(mask_row(spec, b, mask, q_block));
            TileWalk::sparse(sp, bn, row.as_ptr(), row.len() as i32)
        }
        _ => TileWalk::formula(sp, bn),
    };
    let mut out = Vec::new();
    loop {
        // SAFETY: the list pointer and count come from a live slice.
        let j0 = unsafe { walk.next() };
        if j0 < 0 {
            return out;
        }
        out.push(j0);
    }
}

/// Index of the transposed mask column that key block `k_block` of `(b, mask)` reads.
pub fn mask_col(spec: &AttentionSpec, b: usize, mask: u32, k_block: usize) -> usize {
    let shape = spec.mask.expect("block-sparse heads have a mask");
    let mb = if shape.batch == 1 { 0 } else { b };
    (mb * shape.n_masks + mask as usize) * spec.mask_k_blocks() + k_block
}

/// The query rows of sequence `b` under head `h` that see the key tile `[j0, j1]` (dense rule
/// for block-sparse heads).
pub fn key_span(spec: &AttentionSpec, b: usize, h: usize, j0: i32, j1: i32) -> KeySpan {
    let s = spec.seq(b);
    KeySpan::new(spec.patterns[h].rule(), spec.causal, s.q_len, s.k_len, j0, j1)
}

/// The query tiles of `bm` rows that the backward kernels visit for the key tile of `bn` keys
/// starting at `j0` (`bn` dividing [`BLOCK`], so the tile lies in one key block), first row of
/// each.
pub fn visited_query_tiles(
    spec: &AttentionSpec,
    transposed: Option<&TransposedMask>,
    b: usize,
    h: usize,
    j0: i32,
    bn: i32,
    bm: i32,
) -> Vec<i32> {
    let sp = key_span(spec, b, h, j0, j0 + bn - 1);
    let mut walk = match spec.patterns[h] {
        HeadPattern::BlockSparse { mask } => {
            let t = transposed.expect("block-sparse heads need the transposed mask");
            let col = t.col(mask_col(spec, b, mask, j0 as usize / BLOCK));
            QueryTileWalk::sparse(sp, bm, col.as_ptr(), col.len() as i32)
        }
        _ => QueryTileWalk::formula(sp, bm),
    };
    let mut out = Vec::new();
    loop {
        // SAFETY: the list pointer and count come from a live slice.
        let i0 = unsafe { walk.next() };
        if i0 < 0 {
            return out;
        }
        out.push(i0);
    }
}

/// Estimated cost of a work item, in key blocks (a block-sparse row counts its set blocks up to
/// the last one its rows may see).
fn item_cost(spec: &AttentionSpec, counts: Option<&[i32]>, b: usize, h: usize, q_block: usize) -> u32 {
    let sp = span(spec, b, h, q_block);
    match spec.patterns[h] {
        HeadPattern::BlockSparse { mask } => {
            let c = counts.map_or(0, |c| c[mask_row(spec, b, mask, q_block)]);
            let reachable = if sp.last.hi >= 0 { sp.last.hi / BLOCK as i32 + 1 } else { 0 };
            c.min(reachable).max(0) as u32
        }
        _ => sp.block_ranges().len() as u32,
    }
}

/// Bytes of K and V that the work items of one group may share through L2 (H100: 50 MB).
const L2_GROUP_BYTES: usize = 16 << 20;

/// Every (batch, head, query block) of the call. Query heads are taken in groups whose keys and
/// values fit in L2 together (a head's K and V count once per GQA group), groups in order;
/// inside a group, heaviest first (ties in natural order). Kernels that hand out items
/// dynamically then keep the heads they read from L2 few, and the long rows of every group start
/// first, the short ones filling the tail.
pub fn work_items(spec: &AttentionSpec, counts: Option<&[i32]>) -> Vec<WorkItem> {
    let mut items = Vec::new();
    let (mut group, mut group_bytes) = (0usize, 0usize);
    for b in 0..spec.batch() {
        let seq = spec.seq(b);
        let q_blocks = (seq.q_len as usize).div_ceil(BLOCK);
        let head_bytes = (seq.k_len as usize * spec.head_dim * 4).div_ceil(spec.group());
        for h in 0..spec.heads_q {
            if group_bytes > 0 && group_bytes + head_bytes > L2_GROUP_BYTES {
                (group, group_bytes) = (group + 1, 0);
            }
            group_bytes += head_bytes;
            for qb in 0..q_blocks {
                let cost = item_cost(spec, counts, b, h, qb);
                items.push(((group, std::cmp::Reverse(cost)), WorkItem { batch: b as u32, head: h as u32, q_block: qb as u32, group_part: 0 }));
            }
        }
    }
    items.sort_by_key(|&(key, _)| key);
    items.into_iter().map(|(_, it)| it).collect()
}
