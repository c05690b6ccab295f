//! DuoAttention-style heads: "retrieval heads" attend densely to the whole context, "streaming
//! heads" see only 64 sink tokens and the 256 most recent ones. With GQA the split is per
//! key/value head (all query heads of a group share its choice), which is what lets a KV cache
//! drop the old tokens of the streaming heads. Half of the key/value heads are each kind.
//!
//!     cargo run --release --example duo_attention -p block-sparse-attn
#[path = "common/mod.rs"]
mod common;

use block_sparse_attn::{AttentionSpec, HeadPattern};
use common::{Backend, Inputs};

const STREAMING: HeadPattern = HeadPattern::TokenStreaming { sink_tokens: 64, local_tokens: 256 };

fn duo_spec(s: usize, heads: usize, heads_kv: usize, head_dim: usize) -> AttentionSpec {
    let group = heads / heads_kv;
    let patterns = (0..heads).map(|h| if h / group < heads_kv / 2 { HeadPattern::Dense } else { STREAMING }).collect();
    AttentionSpec::batched(1, s, s, heads, heads_kv, head_dim).with_causal(true).with_patterns(patterns)
}

const ABOUT: &str = "DuoAttention-style heads: half dense (retrieval), half token streaming (64 sink + 256 recent tokens), split per key/value head.";

fn run() -> common::Result<()> {
    let backend = Backend::from_args(ABOUT);

    let spec = duo_spec(1536, 8, 4, 64);
    common::run_checked(&backend, "DuoAttention (half retrieval, half streaming heads)", &spec, &Inputs::random(&spec, 1), None)?;

    if backend.is_gpu() {
        let spec = duo_spec(16384, 32, 8, 128);
        let x = Inputs::random(&spec, 2);
        let duo = common::run_timed(&backend, "DuoAttention at 16k tokens", &spec, &x, None)?;
        let dense = spec.clone().with_pattern_all(HeadPattern::Dense);
        let full = common::run_timed(&backend, "all heads dense, same inputs", &dense, &x, None)?;
        println!("per call: {:.3} ms DuoAttention vs {:.3} ms dense ({:.2}x)", duo.ms, full.ms, full.ms / duo.ms);
    } else {
        println!("(the timing run at 16k tokens needs a GPU: skipped)");
    }
    Ok(())
}

fn main() {
    common::exit_on_error(run());
}
