//! A block mask from a cheap importance estimate (as in MInference or FlexPrefill): mean-pool
//! `q` and `k` over each 128-token block, score every (query block, key block) pair with the
//! pooled vectors, and keep the `TOP_K` best key blocks of each query block, plus the first
//! block (the attention sink) and the diagonal block. Each head gets its own mask slice.
//!
//! The inputs have block structure, as real ones do: each key block carries a random "topic"
//! direction, and the queries of each block point at the topics of two earlier blocks. The
//! example reports the error against the exact block-sparse result (the kernel's error) and
//! against dense attention (the approximation's error), next to a random mask of the same size.
//!
//!     cargo run --release --example importance_mask -p block-sparse-attn
#[path = "common/mod.rs"]
mod common;

use block_sparse_attn::half::bf16;
use block_sparse_attn::{AttentionSpec, BLOCK, HeadPattern, reference};
use common::{Backend, Inputs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Key blocks kept per query block, besides the first and the diagonal one.
const TOP_K: usize = 3;
/// Strength of the block topics in the inputs (a unit-variance normal carries them).
const TOPIC: f64 = 0.5;

/// Causal block-sparse attention over one sequence of `s` tokens, one mask slice per head.
fn sparse_spec(s: usize, heads: usize, heads_kv: usize, head_dim: usize) -> AttentionSpec {
    let patterns = (0..heads as u32).map(|h| HeadPattern::BlockSparse { mask: h }).collect();
    AttentionSpec::batched(1, s, s, heads, heads_kv, head_dim)
        .with_causal(true)
        .with_patterns(patterns)
        .with_block_mask(1, heads)
}

/// Random inputs plus the block topics described at the top.
fn structured_inputs(spec: &AttentionSpec, seed: u64) -> Inputs<bf16> {
    let mut x = Inputs::random(spec, seed);
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let (s, hq, hkv, d) = (spec.total_q(), spec.heads_q, spec.heads_kv, spec.head_dim);
    let blocks = s.div_ceil(BLOCK);
    let topics: Vec<f64> = (0..blocks * hkv * d).map(|_| TOPIC * common::gauss(&mut rng)).collect();
    let topic = |blk: usize, kh: usize| &topics[(blk * hkv + kh) * d..][..d];
    let add = |row: &mut [bf16], t: &[f64]| row.iter_mut().zip(t).for_each(|(a, b)| *a = bf16::from_f64(a.to_f64() + b));
    for t in 0..s {
        for kh in 0..hkv {
            add(&mut x.k[(t * hkv + kh) * d..][..d], topic(t / BLOCK, kh));
        }
    }
    for qb in 0..blocks {
        for h in 0..hq {
            let (a, b) = (rng.random_range(0..=qb), rng.random_range(0..=qb));
            let target: Vec<f64> = topic(a, h / spec.group()).iter().zip(topic(b, h / spec.group())).map(|(x, y)| x + y).collect();
            for t in qb * BLOCK..((qb + 1) * BLOCK).min(s) {
                add(&mut x.q[(t * hq + h) * d..][..d], &target);
            }
        }
    }
    x
}

/// Mean of each 128-token block of head `h` of a `[S, heads, D]` tensor: `[blocks][D]`.
fn pool(x: &[bf16], heads: usize, h: usize, d: usize) -> Vec<Vec<f64>> {
    let tokens = x.len() / (heads * d);
    (0..tokens.div_ceil(BLOCK))
        .map(|blk| {
            let rows = blk * BLOCK..((blk + 1) * BLOCK).min(tokens);
            let n = rows.len() as f64;
            let mut mean = vec![0.0; d];
            for t in rows {
                mean.iter_mut().zip(&x[(t * heads + h) * d..][..d]).for_each(|(m, v)| *m += v.to_f64() / n);
            }
            mean
        })
        .collect()
}

/// The mask `[1, H, nQ, nK]` keeping, for each head and query block, the first block, the
/// diagonal block and the `TOP_K` causally visible key blocks with the highest `score(h, qb, kb)`.
fn top_k_mask(spec: &AttentionSpec, mut score: impl FnMut(usize, usize, usize) -> f64) -> Vec<u8> {
    let (nq, nk) = (spec.mask_q_blocks(), spec.mask_k_blocks());
    let mut mask = vec![0u8; spec.mask_len()];
    for h in 0..spec.heads_q {
        for qb in 0..nq {
            let row = &mut mask[(h * nq + qb) * nk..][..nk];
            let mut ranked: Vec<(f64, usize)> = (0..=qb).map(|kb| (score(h, qb, kb), kb)).collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            for &(_, kb) in ranked.iter().take(TOP_K).chain(&[(0.0, 0), (0.0, qb)]) {
                row[kb] = 1;
            }
        }
    }
    mask
}

/// The importance estimate: pooled query block . pooled key block.
fn importance_mask(spec: &AttentionSpec, x: &Inputs<bf16>) -> Vec<u8> {
    let d = spec.head_dim;
    let q: Vec<_> = (0..spec.heads_q).map(|h| pool(&x.q, spec.heads_q, h, d)).collect();
    let k: Vec<_> = (0..spec.heads_kv).map(|h| pool(&x.k, spec.heads_kv, h, d)).collect();
    top_k_mask(spec, |h, qb, kb| q[h][qb].iter().zip(&k[h / spec.group()][kb]).map(|(a, b)| a * b).sum())
}

/// Max and mean abs difference of `o` from the dense `f64` result.
fn vs_dense(o: &[bf16], dense: &[f64]) -> (f64, f64) {
    let diffs: Vec<f64> = o.iter().zip(dense).map(|(a, b)| (a.to_f64() - b).abs()).collect();
    (diffs.iter().copied().fold(0.0, f64::max), diffs.iter().sum::<f64>() / diffs.len() as f64)
}

const ABOUT: &str = "Block-sparse attention with a mask from mean-pooled q/k block scores (top-k key blocks per query block), compared with dense attention.";

fn run() -> common::Result<()> {
    let backend = Backend::from_args(ABOUT);

    let spec = sparse_spec(2048, 4, 2, 64);
    let x = structured_inputs(&spec, 1);
    let dense_spec = spec.clone().with_pattern_all(HeadPattern::Dense);
    let (q, k, v) = (common::to_f64(&x.q), common::to_f64(&x.k), common::to_f64(&x.v));
    let dense = reference::forward(&dense_spec, &q, &k, &v, None);

    let mut rng = StdRng::seed_from_u64(3);
    let masks = [("importance top-k", importance_mask(&spec, &x)), ("random, same budget", top_k_mask(&spec, |_, _, _| rng.random()))];
    for (name, mask) in &masks {
        let run = common::run_checked(&backend, &format!("block-sparse attention, {name} mask"), &spec, &x, Some(mask))?;
        let (max, mean) = vs_dense(&run.o, &dense.o);
        println!("  approximation error vs dense attention: max {max:.3}, mean {mean:.4}");
    }

    if backend.is_gpu() {
        let spec = sparse_spec(16384, 32, 8, 128);
        let x = structured_inputs(&spec, 2);
        let mask = importance_mask(&spec, &x);
        common::run_timed(&backend, "importance top-k mask at 16k tokens", &spec, &x, Some(&mask))?;
    } else {
        println!("(the timing run at 16k tokens needs a GPU: skipped)");
    }
    Ok(())
}

fn main() {
    common::exit_on_error(run());
}
