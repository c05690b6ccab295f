//! The library in one call: causal attention whose heads mix all four patterns (dense, token
//! streaming, block streaming, block-sparse with a random mask), on the GPU when there is one,
//! else on the CPU reference backend. Prints the kept fraction of each pattern, the time and the
//! error against the `f64` reference; on a GPU it also times a realistic size (S = 16k).
//!
//!     cargo run --release --example demo -p block-sparse-attn
#[path = "common/mod.rs"]
mod common;

use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::{Backend, Inputs};

/// Causal attention over one sequence of `s` tokens; the heads are split into four equal groups:
/// dense, token streaming (64 sink + 256 local tokens), block streaming (1 sink + 3 local
/// blocks) and block-sparse (each head its own mask slice).
fn mixed_spec(s: usize, heads: usize, heads_kv: usize, head_dim: usize) -> AttentionSpec {
    let patterns = (0..heads)
        .map(|h| match 4 * h / heads {
            0 => HeadPattern::Dense,
            1 => HeadPattern::TokenStreaming { sink_tokens: 64, local_tokens: 256 },
            2 => HeadPattern::BlockStreaming { sink_blocks: 1, local_blocks: 3 },
            _ => HeadPattern::BlockSparse { mask: h as u32 },
        })
        .collect();
    AttentionSpec::batched(1, s, s, heads, heads_kv, head_dim)
        .with_causal(true)
        .with_patterns(patterns)
        .with_block_mask(1, heads)
}

const ABOUT: &str = "Causal attention whose heads mix dense, token streaming, block streaming and block-sparse patterns: kept fractions, time and error vs the f64 reference.";

fn run() -> common::Result<()> {
    let backend = Backend::from_args(ABOUT);

    let spec = mixed_spec(1000, 8, 2, 64);
    let mask = common::random_mask(&spec, 0.5, 7);
    common::run_checked(&backend, "mixed-pattern attention", &spec, &Inputs::random(&spec, 1), Some(&mask))?;

    if backend.is_gpu() {
        let spec = mixed_spec(16384, 32, 8, 128);
        let mask = common::random_mask(&spec, 0.5, 8);
        common::run_timed(&backend, "the same mix at a realistic size", &spec, &Inputs::random(&spec, 2), Some(&mask))?;
    } else {
        println!("(the timing run at S = 16k needs a GPU: skipped)");
    }
    Ok(())
}

fn main() {
    common::exit_on_error(run());
}
