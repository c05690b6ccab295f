//! A variable-length batch: sequences of different lengths packed back to back (`q`
//! `[total_q, H, D]`, `k`, `v` `[total_k, Hkv, D]`, split by `cu_seqlens`), with GQA (4 query
//! heads per key/value head). The batch holds a zero-length sequence, a chunk of queries over a
//! longer KV cache (`Sq < Sk`: the queries sit at the end), and a sequence with `Sq > Sk`, whose
//! first queries see no key under `causal` and so get `o = 0` and `lse = -inf`.
//!
//!     cargo run --release --example varlen_batch -p block-sparse-attn
#[path = "common/mod.rs"]
mod common;

use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::{Backend, Inputs};

/// Prefix sums of the lengths: `[0, l0, l0 + l1, ...]`.
fn cu_seqlens(lens: impl Iterator<Item = usize>) -> Vec<i32> {
    std::iter::once(0).chain(lens.scan(0, |end, l| { *end += l as i32; Some(*end) })).collect()
}

/// Causal attention over sequences of `(Sq, Sk)` tokens; head groups: dense, token streaming,
/// block streaming, block-sparse (one mask slice for all of them, a mask per sequence).
fn varlen_spec(lens: &[(usize, usize)], heads: usize, heads_kv: usize, head_dim: usize) -> AttentionSpec {
    let patterns = (0..heads)
        .map(|h| match 4 * h / heads {
            0 => HeadPattern::Dense,
            1 => HeadPattern::TokenStreaming { sink_tokens: 16, local_tokens: 128 },
            2 => HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 2 },
            _ => HeadPattern::BlockSparse { mask: 0 },
        })
        .collect();
    let (cu_q, cu_k) = (cu_seqlens(lens.iter().map(|l| l.0)), cu_seqlens(lens.iter().map(|l| l.1)));
    AttentionSpec::varlen(cu_q, cu_k, heads, heads_kv, head_dim)
        .with_causal(true)
        .with_patterns(patterns)
        .with_block_mask(lens.len(), 1)
}

const ABOUT: &str = "A variable-length batch with GQA, a zero-length sequence, a KV-cache chunk and an Sq > Sk sequence.";

fn run() -> common::Result<()> {
    let backend = Backend::from_args(ABOUT);

    let lens = [(300, 300), (0, 200), (777, 777), (64, 1000), (200, 100), (129, 129)];
    let spec = varlen_spec(&lens, 8, 2, 64);
    let mask = common::random_mask(&spec, 0.6, 7);
    let run = common::run_checked(&backend, "variable-length batch", &spec, &Inputs::random(&spec, 1), Some(&mask))?;
    let empty = run.lse.iter().filter(|x| **x == f32::NEG_INFINITY).count();
    println!("  {empty} of {} (query, head) rows see no key: o = 0, lse = -inf", run.lse.len());

    if backend.is_gpu() {
        let lens: Vec<_> = [4096, 0, 1000, 8192, 513, 2048, 6000, 128, 3000, 7777].iter().map(|&l| (l, l)).collect();
        let spec = varlen_spec(&lens, 32, 8, 128);
        let mask = common::random_mask(&spec, 0.5, 8);
        common::run_timed(&backend, "variable-length batch of 33k tokens", &spec, &Inputs::random(&spec, 2), Some(&mask))?;
    } else {
        println!("(the timing run of 33k tokens needs a GPU: skipped)");
    }
    Ok(())
}

fn main() {
    common::exit_on_error(run());
}
