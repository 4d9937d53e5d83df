//! Model input: config.json, per-architecture tensor names, safetensors weights.
pub mod arch;
pub mod config;
pub mod synth;
pub mod weights;
