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
    /// Laid out like `q`.
    pub o: Vec<f64>,
    /// `[B, H, Sq]`, or `[H, total_q]`.
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

/// No rounding: the `f64` computation.
pub fn exact(x: f64) -> f64 {
    x
}
/// `x` rounded to bf16.
pub fn round_bf16(x: f64) -> f64 {
    half::bf16::from_f64(x).to_f64()
}
/// `x` rounded to f16.
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

/// Gradients in `f64`, in the contiguous layouts of the spec: `dq` like `q`, `dk` and `dv` like
/// `k` and `v`.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    /// Laid out like `q`.
    pub dq: Vec<f64>,
    /// Laid out like `k`.
    pub dk: Vec<f64>,
    /// Laid out like `v`.
    pub dv: Vec<f64>,
}

/// The backward pass in `f64` on contiguous inputs: the gradients of `Σ o ∘ d_o` with respect to
/// `q`, `k` and `v`. `o` and `lse` are the forward's outputs on the same inputs (layouts as
/// [`forward`]'s; `d_o` like `o`). Straight from the math, for one query row `i` and the keys `j`
/// it sees (`P_ij = 0` for the others):
///
/// ```text
/// P_ij  = exp(scale * q_i·k_j - lse_i)
/// dV_j  = Σ_i P_ij dO_i
/// dP_ij = dO_i·v_j
/// D_i   = dO_i·o_i                     (= Σ_j P_ij dP_ij)
/// dS_ij = P_ij (dP_ij - D_i)
/// dQ_i  = scale Σ_j dS_ij k_j
/// dK_j  = scale Σ_i dS_ij q_i
/// ```
///
/// With GQA, `dk` and `dv` of a key/value head sum over its group of query heads. Rows with
/// `lse = -inf` contribute nothing (their `dq` is 0), and keys no query sees get zero gradients.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    spec: &AttentionSpec,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    lse: &[f64],
    d_o: &[f64],
    mask: Option<&[u8]>,
) -> Grads {
    backward_rounded(spec, q, k, v, o, lse, d_o, mask, exact)
}

/// The same computation with the intermediates rounded by `round`: the scores (as in
/// [`forward_rounded`]), `P` and `dP` before they enter a product, `dS`, and the three outputs.
/// `D_i` and the accumulations stay in `f64`. This is what a straightforward implementation in
/// the input precision computes; its distance to [`backward`] (given `o` and `lse` of
/// [`forward_rounded`]) is the yardstick of the kernels' pass rule. `round = exact` gives
/// [`backward`] bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn backward_rounded(
    spec: &AttentionSpec,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    lse: &[f64],
    d_o: &[f64],
    mask: Option<&[u8]>,
    round: Rounding,
) -> Grads {
    let (hq, hkv, dim) = (spec.heads_q, spec.heads_kv, spec.head_dim);
    let (qs, ks) = (spec.q_strides(), spec.kv_strides());
    let scale = spec.scale() as f64;
    let dot = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let mut dq = vec![0.0; spec.q_len()];
    let mut dk = vec![0.0; spec.kv_len()];
    let mut dv = vec![0.0; spec.kv_len()];
    for b in 0..spec.batch() {
        let s = spec.seq(b);
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..s.q_len as usize {
                let lse_i = lse[spec.lse_index(b, h, i)];
                if lse_i == f64::NEG_INFINITY {
                    continue; // the row saw no key: no probability, no gradient
                }
                let q_at = (b as i64 * qs.batch + (s.q_start as i64 + i as i64) * qs.token + h as i64 * qs.head) as usize;
                let q_i = &q[q_at..q_at + dim];
                let do_i = &d_o[q_at..q_at + dim];
                let big_d = dot(do_i, &o[q_at..q_at + dim]);
                for j in 0..s.k_len as usize {
                    if !visible(spec, mask, b, h, i, j) {
                        continue;
                    }
                    let k_at = (b as i64 * ks.batch + (s.k_start as i64 + j as i64) * ks.token + kh as i64 * ks.head) as usize;
                    let (k_j, v_j) = (&k[k_at..k_at + dim], &v[k_at..k_at + dim]);
                    let p = round((round(dot(q_i, k_j)) * scale - lse_i).exp());
                    let dp = round(dot(do_i, v_j));
                    let ds = round(p * (dp - big_d));
                    for d in 0..dim {
                        dv[k_at + d] += p * do_i[d];
                        dq[q_at + d] += scale * ds * k_j[d];
                        dk[k_at + d] += scale * ds * q_i[d];
                    }
                }
            }
        }
    }
    for x in dq.iter_mut().chain(dk.iter_mut()).chain(dv.iter_mut()) {
        *x = round(*x);
    }
    Grads { dq, dk, dv }
}
