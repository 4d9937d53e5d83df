//! The inference engine: the decoder as burn tensors (generic over CPU, CUDA and wgpu backends),
//! RoPE and its scaling variants, perplexity, device selection.
pub mod device;
pub mod llama;
pub mod ppl;
pub mod rope;
