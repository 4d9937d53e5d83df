//! Fuzzing harness for awqc's parsers (a cargo-fuzz crate, outside the root workspace).
//!
//! - [`targets`]: the body of each fuzz target; `fuzz_targets/*.rs` are one-line wrappers.
//! - [`seeds`]: valid starting inputs, written to `fuzz/seeds/<target>/`.
//!
//! `tests/bad_inputs.rs` includes both files with `#[path]`, so every seed and every crash input
//! kept in `fuzz/regressions/<target>/` is replayed by the ordinary `cargo test`, without nightly.

#[path = "../../tests/common/gguf_writer.rs"]
pub mod gguf_writer;
pub mod seeds;
pub mod targets;
