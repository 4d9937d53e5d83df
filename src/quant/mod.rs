//! Quantization: the INT4 quantizer, activation statistics, the calibration chain, AWQ scale
//! search, folding, clipping, GPTQ feedback, the (scale, zero) search, and the layer-by-layer
//! pipeline.
#[cfg(feature = "engine")]
pub mod calibrate;
#[cfg(feature = "engine")]
pub mod chunks;
#[cfg(feature = "engine")]
pub mod clip;
pub mod fold;
#[cfg(feature = "engine")]
pub mod gptq;
#[cfg(feature = "engine")]
pub mod hessian;
pub mod int4;
#[cfg(feature = "engine")]
pub mod pipeline;
pub mod qmodel;
#[cfg(feature = "engine")]
pub mod resume;
#[cfg(feature = "engine")]
pub mod search;
pub mod stats;
#[cfg(feature = "engine")]
pub mod zero_search;
