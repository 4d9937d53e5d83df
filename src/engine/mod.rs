//! The inference engine: the decoder as burn tensors (generic over CPU, CUDA and wgpu backends;
//! the GPU backends run the CubeCL kernels, `gpu.rs`), RoPE and its scaling variants, the block
//! KV cache, decoding and generation, perplexity, device selection. On the CPU, inference runs
//! on the host model (`host.rs`: packed INT4 weights, the batched step) with the INT4 kernels for
//! f32 activations (`int4_cpu.rs`, W4A16) or int8 activations (`w4a8_cpu.rs`, and `q8_cpu.rs`
//! for the embedding / LM head), each step's parallel loops run by a spinning team (`team.rs`).
pub mod attention_cpu;
pub mod decode;
pub mod device;
pub mod generate;
pub mod golden;
pub mod gpu;
pub mod gpu_check;
pub mod host;
pub mod int4_cpu;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod ppl;
pub mod rope;
pub mod team;
pub mod q8_cpu;
pub mod w4a8_cpu;
