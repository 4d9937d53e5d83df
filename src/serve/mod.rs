//! `awqc serve` and `awqc chat`: the engine thread with continuous batching (`scheduler`) and chat
//! templates rendered as transformers does (`template`).
pub mod scheduler;
pub mod template;
