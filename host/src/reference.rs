//! The CPU reference: `semantics.md` computed in `f64`, written for clarity, not speed.
//! It is the oracle of every test and the backend on machines without a GPU. It deliberately
//! shares no code with the kernels' visibility rules (`attn_common::rules`), so that tests of
//! those rules compare two independent readings of the contract.
use crate::pattern::HeadPattern;
use crate::spec::{AttentionSpec, BLOCK};

/// Outputs in `f64`, in the contiguous layouts of the spec (`o` like `q`; `lse` `[B, H, Sq]` or
/// `[H, total_q]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
}

/// Whether query `i` of sequence `b` under head `h` sees key `j`: the table of `semantics.md`.
pub fn visible(spec: &AttentionSpec, mask: Option<&[u8]>, b: usize, h: usize, i: usize, j: usize) -> bool {
    let s = spec.seq(b);
    let (sq, sk) = (s.q_len as i64, s.k_len as i64);
    let (i, j) = (i as i64, j as i64);
    if j >= sk {
        return false;
    }
    let blk = BLOCK as i64;
    let p = i + sk - sq;
    let d = p.div_euclid(blk);
    let by_pattern = match spec.patterns[h] {
        HeadPattern::Dense => true,
        HeadPattern::BlockSparse { mask: m } => {
            let shape = spec.mask.expect("validated: block-sparse heads have a mask");
            let mb = if shape.batch == 1 { 0 } else { b };
            let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
            let idx = ((mb * shape.n_masks + m as usize) * nq + (i / blk) as usize) * nk + (j / blk) as usize;
            mask.expect("validated: a mask buffer is given")[idx] != 0
        }
        HeadPattern::BlockStreaming { sink_blocks, local_blocks } => {
            let jb = j / blk;
            jb < sink_blocks as i64 || (d - (local_blocks as i64) < jb && jb <= d)
        }
        HeadPattern::TokenStreaming { sink_tokens, local_tokens } => {
            j < sink_tokens as i64 || (p - (local_tokens as i64) < j && j <= p)
        }
    };
    by_pattern && (!spec.causal || j <= p)
}

/// How intermediate values are rounded: `f64` exactly, or to the inputs' 16-bit type.
pub type Rounding = fn(f64) -> f64;

pub fn exact(x: f64) -> f64 {
    x
}
pub fn round_bf16(x: f64) -> f64 {
    half::bf16::from_f64(x).to_f64()
}
pub fn round_f16(x: f64) -> f64 {
    half::f16::from_f64(x).to_f64()
}

/// The forward pass in `f64` on contiguous inputs (`q` `[.., H, D]`, `k`/`v` `[.., Hkv, D]`).
pub fn forward(spec: &AttentionSpec, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[u8]>) -> Output {
    forward_rounded(spec, q, k, v, mask, exact)
}

/// The same computation with the scores, the probabilities and the output rounded by `round`:
/// what a straightforward implementation in the input precision computes. Its distance to
/// [`forward`] is the yardstick of the kernels' pass rule (at most twice that error).
pub fn forward_rounded(spec: &AttentionSpec, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[u8]>, round: Rounding) -> Output {
    let (hq, hkv, dim) = (spec.heads_q, spec.heads_kv, spec.head_dim);
    let (qs, ks) = (spec.q_strides(), spec.kv_strides());
    let scale = spec.scale() as f64;
    let mut o = vec![0.0; spec.q_len()];
    let mut lse = vec![f64::NEG_INFINITY; spec.lse_len()];
    let mut scores = Vec::new();
    for b in 0..spec.batch() {
        let s = spec.seq(b);
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..s.q_len as usize {
                let q_at = (b as i64 * qs.batch + (s.q_start as i64 + i as i64) * qs.token + h as i64 * qs.head) as usize;
                let qrow = &q[q_at..q_at + dim];
                scores.clear();
                for j in 0..s.k_len as usize {
                    if !visible(spec, mask, b, h, i, j) {
                        continue;
                    }
                    let k_at = (b as i64 * ks.batch + (s.k_start as i64 + j as i64) * ks.token + kh as i64 * ks.head) as usize;
                    let dot: f64 = qrow.iter().zip(&k[k_at..k_at + dim]).map(|(a, c)| a * c).sum();
                    scores.push((k_at, round(dot) * scale));
                }
                let orow = &mut o[q_at..q_at + dim];
                let li = spec.lse_index(b, h, i);
                if scores.is_empty() {
                    continue; // o stays 0, lse stays -inf
                }
                let m = scores.iter().map(|&(_, x)| x).fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = scores.iter().map(|&(_, x)| (x - m).exp()).sum();
                for &(k_at, x) in &scores {
                    let pr = round((x - m).exp() / l);
                    for (od, vd) in orow.iter_mut().zip(&v[k_at..k_at + dim]) {
                        *od += pr * vd;
                    }
                }
                for od in orow.iter_mut() {
                    *od = round(*od);
                }
                lse[li] = m + l.ln();
            }
        }
    }
    Output { o, lse }
}
