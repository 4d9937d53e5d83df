//! File formats: GGUF import, HF directory output, AutoAWQ GEMM and TurboMind checkpoints.
pub mod awq_gemm;
pub mod gguf;
pub mod gguf_import;
pub mod safetensors_writer;
pub mod tokenizer_json;
pub mod turbomind;
