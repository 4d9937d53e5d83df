//! `awqc serve` and `awqc chat`: the engine thread with continuous batching (`scheduler`).
pub mod scheduler;
