//! What the host and the kernels must agree on, in one `no_std` crate compiled into both:
//! the `#[repr(C)]` launch parameters (so they cannot drift) and the visibility rules of
//! `semantics.md` expressed per query row as two key intervals, from which the block lists,
//! the full/partial split and the token mask all follow.
#![no_std]

pub mod abi;
pub mod rules;
pub mod swizzle;

pub use abi::*;
pub use rules::*;
