//! The shape of one attention call: sequences, heads, patterns, mask shape. Validated once;
//! everything else (plans, launches, the CPU reference) reads its geometry from here.
use attn_common::{SeqInfo, Strides};

use crate::error::{Error, Result};
use crate::pattern::HeadPattern;

/// Tokens per mask / streaming block.
pub const BLOCK: usize = 128;
/// Longest sequence accepted (keeps the kernels' i32 arithmetic exact).
pub const MAX_SEQLEN: usize = 1 << 30;
/// Largest head dim a kernel serves.
pub const MAX_HEAD_DIM: usize = 128;

/// How the sequences of a batch are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqLayout {
    /// `q`: `[batch, seqlen_q, H, D]`; `k`, `v`: `[batch, seqlen_k, Hkv, D]`.
    Batched {
        /// Sequences.
        batch: usize,
        /// Queries per sequence.
        seqlen_q: usize,
        /// Keys per sequence.
        seqlen_k: usize,
    },
    /// `q`: `[total_q, H, D]`; `k`, `v`: `[total_k, Hkv, D]`; sequence `b` owns rows
    /// `cu[b]..cu[b + 1]`.
    VarLen {
        /// Query row offsets, `batch + 1` entries from 0, non-decreasing.
        cu_seqlens_q: Vec<i32>,
        /// Key row offsets, `batch + 1` entries from 0, non-decreasing.
        cu_seqlens_k: Vec<i32>,
    },
}

/// Shape of the block mask `[batch (1 or B), n_masks, ceil(max Sq / 128), ceil(max Sk / 128)]`, `u8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskShape {
    /// 1 (one mask for every sequence) or the batch size.
    pub batch: usize,
    /// Mask slices, which `HeadPattern::BlockSparse { mask }` indexes.
    pub n_masks: usize,
}

/// One attention call's shape and options.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSpec {
    /// Batched or variable-length sequences.
    pub layout: SeqLayout,
    /// Query heads `H`.
    pub heads_q: usize,
    /// Key/value heads `Hkv`; must divide `heads_q` (GQA/MQA when smaller).
    pub heads_kv: usize,
    /// Head dimension `D`: a multiple of 8, at most 128.
    pub head_dim: usize,
    /// Remove every key after the query's bottom-right aligned position, for every pattern.
    pub causal: bool,
    /// Defaults to `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f32>,
    /// One per query head.
    pub patterns: Vec<HeadPattern>,
    /// Shape of the block mask; needed when any head is block-sparse.
    pub mask: Option<MaskShape>,
}

impl AttentionSpec {
    /// Dense, non-causal attention over a batch of equal-length sequences.
    pub fn batched(batch: usize, seqlen_q: usize, seqlen_k: usize, heads_q: usize, heads_kv: usize, head_dim: usize) -> Self {
        Self {
            layout: SeqLayout::Batched { batch, seqlen_q, seqlen_k },
            heads_q,
            heads_kv,
            head_dim,
            causal: false,
            softmax_scale: None,
            patterns: vec![HeadPattern::Dense; heads_q],
            mask: None,
        }
    }

    /// Dense, non-causal attention over variable-length sequences.
    pub fn varlen(cu_seqlens_q: Vec<i32>, cu_seqlens_k: Vec<i32>, heads_q: usize, heads_kv: usize, head_dim: usize) -> Self {
        Self {
            layout: SeqLayout::VarLen { cu_seqlens_q, cu_seqlens_k },
            heads_q,
            heads_kv,
            head_dim,
            causal: false,
            softmax_scale: None,
            patterns: vec![HeadPattern::Dense; heads_q],
            mask: None,
        }
    }

    /// Sets `causal`.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    /// One pattern per query head.
    pub fn with_patterns(mut self, patterns: Vec<HeadPattern>) -> Self {
        self.patterns = patterns;
        self
    }
    /// The same pattern for every query head.
    pub fn with_pattern_all(mut self, pattern: HeadPattern) -> Self {
        self.patterns = vec![pattern; self.heads_q];
        self
    }
    /// Scale of the scores before the softmax (default `1 / sqrt(head_dim)`).
    pub fn with_softmax_scale(mut self, scale: f32) -> Self {
        self.softmax_scale = Some(scale);
        self
    }
    /// Declares a block mask of shape `[batch (1 or B), n_masks, ceil(Sq / 128), ceil(Sk / 128)]`.
    pub fn with_block_mask(mut self, batch: usize, n_masks: usize) -> Self {
        self.mask = Some(MaskShape { batch, n_masks });
        self
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        match &self.layout {
            SeqLayout::Batched { batch, .. } => *batch,
            SeqLayout::VarLen { cu_seqlens_q, .. } => cu_seqlens_q.len().saturating_sub(1),
        }
    }

    /// Whether the layout is variable-length.
    pub fn is_varlen(&self) -> bool {
        matches!(self.layout, SeqLayout::VarLen { .. })
    }

    /// Start rows and lengths of sequence `b` (starts are 0 in the batched layout).
    pub fn seq(&self, b: usize) -> SeqInfo {
        match &self.layout {
            SeqLayout::Batched { seqlen_q, seqlen_k, .. } => {
                SeqInfo { q_start: 0, q_len: *seqlen_q as i32, k_start: 0, k_len: *seqlen_k as i32 }
            }
            SeqLayout::VarLen { cu_seqlens_q: q, cu_seqlens_k: k } => {
                SeqInfo { q_start: q[b], q_len: q[b + 1] - q[b], k_start: k[b], k_len: k[b + 1] - k[b] }
            }
        }
    }

    /// Longest query sequence.
    pub fn max_seqlen_q(&self) -> usize {
        (0..self.batch()).map(|b| self.seq(b).q_len as usize).max().unwrap_or(0)
    }
    /// Longest key sequence.
    pub fn max_seqlen_k(&self) -> usize {
        (0..self.batch()).map(|b| self.seq(b).k_len as usize).max().unwrap_or(0)
    }
    /// Rows of the token dimension of `q` (`batch * seqlen_q`, or `total_q`).
    pub fn total_q(&self) -> usize {
        match &self.layout {
            SeqLayout::Batched { batch, seqlen_q, .. } => batch * seqlen_q,
            SeqLayout::VarLen { cu_seqlens_q, .. } => *cu_seqlens_q.last().unwrap_or(&0) as usize,
        }
    }
    /// Rows of the token dimension of `k`/`v` (`batch * seqlen_k`, or `total_k`).
    pub fn total_k(&self) -> usize {
        match &self.layout {
            SeqLayout::Batched { batch, seqlen_k, .. } => batch * seqlen_k,
            SeqLayout::VarLen { cu_seqlens_k, .. } => *cu_seqlens_k.last().unwrap_or(&0) as usize,
        }
    }
    /// Query blocks of the block mask, `ceil(max Sq / 128)`.
    pub fn mask_q_blocks(&self) -> usize {
        self.max_seqlen_q().div_ceil(BLOCK)
    }
    /// Key blocks of the block mask, `ceil(max Sk / 128)`.
    pub fn mask_k_blocks(&self) -> usize {
        self.max_seqlen_k().div_ceil(BLOCK)
    }
    /// Elements of the block mask.
    pub fn mask_len(&self) -> usize {
        self.mask.map_or(0, |m| m.batch * m.n_masks * self.mask_q_blocks() * self.mask_k_blocks())
    }
    /// The softmax scale in use.
    pub fn scale(&self) -> f32 {
        self.softmax_scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads_q / self.heads_kv
    }

    /// Elements of contiguous `q`/`o`.
    pub fn q_len(&self) -> usize {
        self.total_q() * self.heads_q * self.head_dim
    }
    /// Elements of contiguous `k`/`v`.
    pub fn kv_len(&self) -> usize {
        self.total_k() * self.heads_kv * self.head_dim
    }
    /// Elements of `lse`.
    pub fn lse_len(&self) -> usize {
        self.total_q() * self.heads_q
    }
    /// Strides of contiguous `q`/`o` (`[B, Sq, H, D]` or `[total_q, H, D]`).
    pub fn q_strides(&self) -> Strides {
        self.contiguous(self.heads_q, |s| s.q_len)
    }
    /// Strides of contiguous `k`/`v`.
    pub fn kv_strides(&self) -> Strides {
        self.contiguous(self.heads_kv, |s| s.k_len)
    }
    fn contiguous(&self, heads: usize, len: impl Fn(&SeqInfo) -> i32) -> Strides {
        let token = (heads * self.head_dim) as i64;
        let batch = if self.is_varlen() || self.batch() == 0 { 0 } else { len(&self.seq(0)) as i64 * token };
        Strides { batch, token, head: self.head_dim as i64 }
    }
    /// (batch, head) strides of `lse`: `[B, H, Sq]`, or `[H, total_q]` for variable length.
    pub fn lse_strides(&self) -> (i64, i64) {
        match &self.layout {
            SeqLayout::Batched { seqlen_q, .. } => ((self.heads_q * seqlen_q) as i64, *seqlen_q as i64),
            SeqLayout::VarLen { .. } => (0, self.total_q() as i64),
        }
    }
    /// Index of `lse[b, h, i]` in its buffer.
    pub fn lse_index(&self, b: usize, h: usize, i: usize) -> usize {
        let (sb, sh) = self.lse_strides();
        (b as i64 * sb + h as i64 * sh) as usize + self.seq(b).q_start as usize + i
    }

    /// Checks everything that does not depend on buffers.
    pub fn validate(&self) -> Result<()> {
        if self.heads_q == 0 || self.heads_kv == 0 || self.heads_q % self.heads_kv != 0 {
            return Err(Error::Heads { heads_q: self.heads_q, heads_kv: self.heads_kv });
        }
        if self.head_dim == 0 || self.head_dim % 8 != 0 || self.head_dim > MAX_HEAD_DIM {
            return Err(Error::HeadDim(self.head_dim));
        }
        match &self.layout {
            SeqLayout::Batched { batch, seqlen_q, seqlen_k } => {
                if *batch == 0 {
                    return Err(Error::EmptyBatch);
                }
                for len in [*seqlen_q, *seqlen_k] {
                    if len > MAX_SEQLEN || batch.saturating_mul(len) > i32::MAX as usize {
                        return Err(Error::SeqTooLong { len, max: MAX_SEQLEN });
                    }
                }
            }
            SeqLayout::VarLen { cu_seqlens_q, cu_seqlens_k } => {
                if cu_seqlens_q.len() != cu_seqlens_k.len() || cu_seqlens_q.len() < 2 {
                    if cu_seqlens_q.len() <= 1 && cu_seqlens_k.len() <= 1 {
                        return Err(Error::EmptyBatch);
                    }
                    return Err(Error::CuSeqlensLen { q: cu_seqlens_q.len(), k: cu_seqlens_k.len() });
                }
                check_cu("q", cu_seqlens_q)?;
                check_cu("k", cu_seqlens_k)?;
            }
        }
        if let Some(s) = self.softmax_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::SoftmaxScale(s));
            }
        }
        if self.patterns.len() != self.heads_q {
            return Err(Error::PatternCount { heads_q: self.heads_q, got: self.patterns.len() });
        }
        if let Some(m) = self.mask {
            if m.batch != 1 && m.batch != self.batch() {
                return Err(Error::MaskBatch { got: m.batch, batch: self.batch() });
            }
        }
        for (head, p) in self.patterns.iter().enumerate() {
            if let HeadPattern::BlockSparse { mask } = *p {
                match self.mask {
                    None => return Err(Error::MissingMask { head }),
                    Some(m) if mask as usize >= m.n_masks => {
                        return Err(Error::MaskIndex { head, mask, n_masks: m.n_masks });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Whether any head reads the block mask.
    pub fn uses_mask(&self) -> bool {
        self.first_block_sparse_head().is_some()
    }

    /// The first head that reads the block mask, if any.
    pub fn first_block_sparse_head(&self) -> Option<usize> {
        self.patterns.iter().position(|p| matches!(p, HeadPattern::BlockSparse { .. }))
    }

    /// Checks that an `lse` buffer of `len` elements holds every row.
    pub fn check_lse(&self, len: usize) -> Result<()> {
        if len < self.lse_len() {
            return Err(Error::Tensor { name: "lse", why: format!("holds {len} elements, needs {}", self.lse_len()) });
        }
        Ok(())
    }

    /// Checks that a `[.., token, head, dim]` tensor with these strides and `len` elements holds
    /// every element the call touches, and that every row starts 16-byte aligned (strides in
    /// multiples of 8 elements; device buffers themselves are 256-byte aligned).
    pub fn check_tensor(&self, name: &'static str, strides: &Strides, len: usize, heads: usize, is_q: bool) -> Result<()> {
        let err = |why: String| Err(Error::Tensor { name, why });
        if strides.token < 0 || strides.head < 0 || strides.batch < 0 {
            return err(format!("negative stride in {strides:?}"));
        }
        for (what, s) in [("batch", strides.batch), ("token", strides.token), ("head", strides.head)] {
            if s % 8 != 0 {
                return err(format!("the {what} stride {s} is not a multiple of 8 elements (16 bytes)"));
            }
        }
        if self.is_varlen() && strides.batch != 0 {
            return err("variable-length tensors have no batch stride (it must be 0)".into());
        }
        let rows = if is_q { self.total_q() } else { self.total_k() };
        let per_seq = |b: usize| {
            let s = self.seq(b);
            if is_q { (s.q_start as i64, s.q_len as i64) } else { (s.k_start as i64, s.k_len as i64) }
        };
        // i128: hostile strides must not wrap around into an in-bounds offset.
        let mut need: i128 = 0;
        for b in 0..self.batch() {
            let (start, n) = per_seq(b);
            if n == 0 {
                continue;
            }
            let last = b as i128 * strides.batch as i128
                + (start + n - 1) as i128 * strides.token as i128
                + (heads as i128 - 1) * strides.head as i128
                + self.head_dim as i128;
            need = need.max(last);
        }
        if rows > 0 && need > len as i128 {
            return err(format!("holds {len} elements but the strides {strides:?} reach element {need}"));
        }
        Ok(())
    }
}

fn check_cu(which: &'static str, cu: &[i32]) -> Result<()> {
    if cu[0] != 0 {
        return Err(Error::CuSeqlens { which, why: format!("starts at {}, not 0", cu[0]) });
    }
    for (b, w) in cu.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(Error::CuSeqlens { which, why: format!("decreases from {} to {} at sequence {b}", w[0], w[1]) });
        }
        if (w[1] - w[0]) as usize > MAX_SEQLEN {
            return Err(Error::SeqTooLong { len: (w[1] - w[0]) as usize, max: MAX_SEQLEN });
        }
    }
    Ok(())
}
