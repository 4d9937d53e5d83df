//! Model input: config.json, per-architecture tensor names, safetensors weights, and models
//! from the Hugging Face Hub (`hub`).
pub mod arch;
pub mod config;
pub mod hub;
pub mod synth;
pub mod weights;
