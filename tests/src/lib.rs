//! CPU integration tests of `block-sparse-attn` live in `tests/`; this library is empty.
//!
//! - `planner.rs`: the tile walk, full-tile split, row windows and work list against a
//!   brute-force reading of `semantics.md` (`reference::visible`).
//! - `reference.rs`: the `f64` reference on hand-checkable cases.
//! - `bad_input.rs`: every misuse returns its `Error` variant, and garbage never panics.
//! - `cpu_backend.rs`: the 16-bit CPU backend against the `f64` reference.
