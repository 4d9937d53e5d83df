//! Quantization: the INT4 quantizer, activation statistics, the calibration chain, AWQ scale
//! search, folding, clipping, and the layer-by-layer pipeline.
pub mod calibrate;
pub mod clip;
pub mod fold;
pub mod int4;
pub mod pipeline;
pub mod qmodel;
pub mod search;
pub mod stats;
