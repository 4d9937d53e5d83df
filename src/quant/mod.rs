//! Quantization: the INT4 quantizer, activation statistics, AWQ scale search, folding, clipping,
//! and the layer-by-layer pipeline.
pub mod int4;
pub mod qmodel;
