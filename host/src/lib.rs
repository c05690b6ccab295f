//! Block-sparse attention for NVIDIA GPUs, kernels written in Rust and compiled to PTX.
//!
//! Each query head picks its own pattern ([`HeadPattern`]): dense, block-sparse from a 128x128
//! block mask, block streaming (sink + local blocks) or token streaming (sink + window tokens);
//! all heads run in one launch, visiting only the key blocks their pattern keeps. Causal and
//! non-causal, batched and variable-length, GQA/MQA, bf16 and f16; outputs `o` and the
//! log-sum-exp. The contract is the repository's `docs/semantics.md`;
//! [`reference`](mod@reference) is its `f64` reading, and [`cpu::forward`] runs it on machines
//! without a GPU.
//!
//! ```
//! use block_sparse_attn::half::bf16;
//! use block_sparse_attn::{Attention, AttentionSpec, Device, HeadPattern, cpu, gpu_available};
//! # fn main() -> block_sparse_attn::Result<()> {
//! // B = 1, Sq = Sk = 512, 4 query heads sharing 2 key/value heads, head dim 64.
//! let spec = AttentionSpec::batched(1, 512, 512, 4, 2, 64)
//!     .with_causal(true)
//!     .with_pattern_all(HeadPattern::TokenStreaming { sink_tokens: 64, local_tokens: 256 });
//! // q, o: [B, Sq, H, D]; k, v: [B, Sk, Hkv, D]; lse: [B, H, Sq]. Equal keys: every row averages v.
//! let q = vec![bf16::from_f32(0.5); spec.q_len()];
//! let kv = vec![bf16::from_f32(0.25); spec.kv_len()];
//! let o: Vec<bf16> = if gpu_available() {
//!     let dev = Device::new(0)?;
//!     let stream = dev.default_stream();
//!     let (q, k, v) = (stream.clone_htod(&q)?, stream.clone_htod(&kv)?, stream.clone_htod(&kv)?);
//!     let mut o = stream.alloc_zeros::<bf16>(spec.q_len())?;
//!     let mut lse = stream.alloc_zeros::<f32>(spec.lse_len())?;
//!     // The plan: build it once, run it for every layer that shares the shape (and mask).
//!     let attn = Attention::new(&dev, &stream, spec, None)?;
//!     attn.forward(&dev, &stream, &q, &k, &v, &mut o, &mut lse)?;
//!     stream.clone_dtoh(&o)?
//! } else {
//!     cpu::forward(&spec, &q, &kv, &kv, None)?.o // the f64 reference, rounded to bf16
//! };
//! assert!(o.iter().all(|x| (x.to_f32() - 0.25).abs() < 1e-3));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod cpu;
pub mod device;
pub mod error;
pub mod pattern;
pub mod plan;
pub mod reference;
pub mod spec;
mod tensor_map;

pub use attention::{Attention, Element, TensorArg, TensorArgMut};
pub use attn_common::Strides;
pub use device::{Device, KernelPath, gpu_available};
pub use error::{Error, Result};
pub use pattern::HeadPattern;
pub use spec::{AttentionSpec, BLOCK, MaskShape, SeqLayout};

/// Re-exported so users name the same types as the API.
pub use cudarc;
pub use half;
