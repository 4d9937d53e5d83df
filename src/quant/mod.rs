//! Quantization: the INT4 quantizer, activation statistics, the calibration chain, AWQ scale
//! search, folding, clipping, and the layer-by-layer pipeline.
#[cfg(feature = "engine")]
pub mod calibrate;
#[cfg(feature = "engine")]
pub mod chunks;
#[cfg(feature = "engine")]
pub mod clip;
pub mod fold;
#[cfg(feature = "engine")]
pub mod gptq;
pub mod int4;
#[cfg(feature = "engine")]
pub mod pipeline;
pub mod qmodel;
#[cfg(feature = "engine")]
pub mod resume;
#[cfg(feature = "engine")]
pub mod search;
pub mod stats;
