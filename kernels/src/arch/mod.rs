//! One thin wrapper per PTX instruction. Each says which instruction it emits and, for the
//! warp-wide matrix instructions, which lane holds which element.
//!
//! Collectives (`mma.sync`, `ldmatrix`, `shfl.sync`, `bar.sync`) are never `pure`: rustc does not
//! mark inline asm convergent, and `pure` would let LLVM move or merge them across branches.

pub mod cp_async;
pub mod global;
pub mod ldmatrix;
pub mod mma;
pub mod sync;
pub mod math;
pub mod smem;
#[cfg(target_feature = "sm_90a")]
pub mod tma;
#[cfg(target_feature = "sm_90a")]
pub mod wgmma;
