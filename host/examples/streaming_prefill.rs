//! StreamingLLM-style prefill: every head sees a few "attention sink" tokens at the start of the
//! sequence plus a sliding window of recent tokens (token streaming), so the cost grows linearly
//! with the sequence length instead of quadratically. The heads use sinks of 4 to 64 tokens and
//! windows of 256 to 1024 tokens.
//!
//!     cargo run --release --example streaming_prefill -p block-sparse-attn
#[path = "common/mod.rs"]
mod common;

use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::{Backend, Inputs};

/// (sink tokens, window tokens) of the head groups.
const CONFIGS: [(u32, u32); 4] = [(4, 256), (16, 512), (64, 1024), (4, 1024)];

fn streaming_spec(s: usize, heads: usize, heads_kv: usize, head_dim: usize) -> AttentionSpec {
    let patterns = (0..heads)
        .map(|h| {
            let (sink_tokens, local_tokens) = CONFIGS[h * CONFIGS.len() / heads];
            HeadPattern::TokenStreaming { sink_tokens, local_tokens }
        })
        .collect();
    AttentionSpec::batched(1, s, s, heads, heads_kv, head_dim).with_causal(true).with_patterns(patterns)
}

const ABOUT: &str = "StreamingLLM-style prefill: every head sees 4-64 sink tokens plus a 256-1024 token window.";

fn run() -> common::Result<()> {
    let backend = Backend::from_args(ABOUT);

    let spec = streaming_spec(2048, 8, 2, 64);
    common::run_checked(&backend, "streaming prefill", &spec, &Inputs::random(&spec, 1), None)?;

    if backend.is_gpu() {
        let spec = streaming_spec(32768, 32, 8, 128);
        let x = Inputs::random(&spec, 2);
        let stream = common::run_timed(&backend, "streaming prefill at 32k tokens", &spec, &x, None)?;
        let dense = spec.clone().with_pattern_all(HeadPattern::Dense);
        let full = common::run_timed(&backend, "dense causal prefill, same inputs", &dense, &x, None)?;
        println!("streaming is {:.1}x faster than dense at 32k tokens", full.ms / stream.ms);
    } else {
        println!("(the timing run at 32k tokens needs a GPU: skipped)");
    }
    Ok(())
}

fn main() {
    common::exit_on_error(run());
}
