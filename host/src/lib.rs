//! Block-sparse attention for NVIDIA GPUs, kernels written in Rust and compiled to PTX.
//!
//! Each query head picks its own pattern ([`HeadPattern`]): dense, block-sparse from a 128x128
//! block mask, block streaming (sink + local blocks) or token streaming (sink + window tokens);
//! all heads run in one launch, visiting only the key blocks their pattern keeps. Causal and
//! non-causal, batched and variable-length, GQA/MQA, bf16 and f16; outputs `o` and the
//! log-sum-exp. The contract is `shared/docs/semantics.md`; [`reference`] is its `f64` reading.
//!
//! ```no_run
//! use block_sparse_attn::{Attention, AttentionSpec, Device, HeadPattern};
//! # fn main() -> block_sparse_attn::Result<()> {
//! let dev = Device::new(0)?;
//! let stream = dev.default_stream();
//! let spec = AttentionSpec::batched(1, 4096, 4096, 32, 8, 128)
//!     .with_causal(true)
//!     .with_pattern_all(HeadPattern::TokenStreaming { sink_tokens: 64, local_tokens: 256 });
//! let n = spec.q_len();
//! let q = stream.alloc_zeros::<half::bf16>(n)?;
//! let k = stream.alloc_zeros::<half::bf16>(spec.kv_len())?;
//! let v = stream.alloc_zeros::<half::bf16>(spec.kv_len())?;
//! let mut o = stream.alloc_zeros::<half::bf16>(n)?;
//! let mut lse = stream.alloc_zeros::<f32>(spec.lse_len())?;
//! let attn = Attention::new(&dev, &stream, spec, None)?;
//! attn.forward(&dev, &stream, &q, &k, &v, &mut o, &mut lse)?;
//! # Ok(()) }
//! ```

pub mod attention;
pub mod cpu;
pub mod device;
pub mod error;
pub mod pattern;
pub mod plan;
pub mod reference;
pub mod spec;

pub use attention::{Attention, Element, TensorArg, TensorArgMut};
pub use attn_common::Strides;
pub use device::{Device, KernelPath, gpu_available};
pub use error::{Error, Result};
pub use pattern::HeadPattern;
pub use spec::{AttentionSpec, BLOCK, MaskShape, SeqLayout};

/// Re-exported so users name the same types as the API.
pub use cudarc;
pub use half;
