//! # awqc-kernels: CubeCL kernels for the awqc engine
//!
//! GPU kernels for running an AWQ (W4A16) Llama model, written once in CubeCL 0.10 (the version
//! burn 0.21 uses) and compiled at run time for CUDA or wgpu (Vulkan / Metal / DX12). Tests run on
//! wgpu over Mesa's software Vulkan (lavapipe) on machines without a GPU.
//!
//! | module | what |
//! |---|---|
//! | [`w4a16`] | `y = x · W` with group-wise asymmetric INT4 W: GEMV (decode), tiled GEMM, dense dequantization; `repack_turbomind` from the on-disk form |
//! | [`norm`] | RMSNorm |
//! | [`rope`] | rotary embedding in place, per-sequence frequency tables (dynamic NTK), rotate-half or interleaved pairs |
//! | [`act`] | `silu(gate) * up` |
//! | [`kv_quant`] | per-(token, head) int8/int4 KV quantization: the formula on device and host, packing |
//! | [`kv_cache`] | paged KV cache (64-token blocks for all layers), block budgeting, block tables, append |
//! | [`attention`] | causal prefill attention and decode attention over the paged cache (GQA) |
//! | [`reference`] | f64 host references of every kernel and the deterministic test-data generator (the tests and `awqc kernel-test` check against them) |
//! | [`bench`] | timing of the W4A16 kernels at given shapes (`examples/bench_w4a16.rs`) |
//! | [`device`] | clients without burn (`wgpu_client`, `cuda_client`) |
//!
//! ## Conventions
//! - Every tensor is a [`GpuTensor`]: a cubecl buffer [`Handle`](cubecl::server::Handle), a
//!   row-major contiguous shape and an [`Elem`] (f16, f32 or u32). Activations may be f16 or f32;
//!   kernels accumulate in f32 and round once to the output type.
//! - Host wrappers check shapes, types and indices and return [`KernelError`] (one line) before
//!   anything is launched; the kernels are launched unchecked, which the checks make safe. Data
//!   read by a kernel that the host cannot check (RoPE sequence ids) is guarded in the kernel.
//! - No atomics, fixed reduction trees: results are the same run to run on a given device.
//! - A CubeCL kernel that fails to *compile* panics in the runtime's worker thread and the launch
//!   leaves its output undefined. Every kernel, element type and comptime variant used here is
//!   exercised by the tests on wgpu; on CUDA run `examples/bench_w4a16.rs` (or the tests) once.
//!
//! ## Layouts (details in each module)
//! - W4A16 kernel form: qweight u32 `[N, K/8]` (nibble i of word j = k 8j+i of that column),
//!   `(s, -z*s)` f32 pairs `[N, K/g, 2]`; on-disk TurboMind form `[K, N/8]` + f16 `[K/g, N]` x2.
//! - KV cache: row `(((block*L + layer)*Hkv + head)*2 + kv)*64 + slot` of `head_dim` values
//!   (f16/f32) or `head_dim*b/32` u32 words (int8/int4, lowest bits = lowest element), params f16
//!   `(scale, zero)` per row.
//!
//! ## From burn 0.21
//! With awqc's burn features, `burn::backend::{Wgpu, Cuda}` are `CubeBackend<WgpuRuntime | CudaRuntime, f32, i32, u32>`
//! (no fusion layer), whose float primitive is `CubeTensor { client, handle, meta, device, dtype, .. }`
//! (`burn::backend::wgpu::CubeTensor`, re-exported from burn-cubecl; likewise for cuda):
//! ```text
//! let prim: CubeTensor<WgpuRuntime> = tensor.into_primitive().tensor();   // no copy
//! // (contiguous required: prim.is_contiguous(); burn_cubecl::kernel::into_contiguous otherwise)
//! let x = GpuTensor::from_parts(prim.handle.clone(), prim.meta.shape().to_vec(), Elem::F32)?;
//! let y = awqc_kernels::w4a16::w4a16_matmul(&prim.client, &x, &weights)?;
//! let out = CubeTensor::new_contiguous(prim.client.clone(), prim.device.clone(),
//!                                      Shape::from(y.shape), y.handle, DType::F32);
//! let y: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(out));
//! ```
//! `examples/burn_interop.rs` runs this (RMSNorm + W4A16 on burn tensors, checked against burn's
//! own matmul). Kernels run on the tensor's own client, so they are ordered with burn's work.

pub mod act;
pub mod attention;
pub mod bench;
pub mod device;
pub mod error;
pub mod kv_cache;
pub mod kv_quant;
pub mod norm;
pub mod reference;
pub mod rope;
pub mod tensor;
pub mod w4a16;

/// The cubecl this crate is built on (the one burn 0.21 uses), for callers' client types.
pub use cubecl;
pub use error::{KernelError, Result};
pub use tensor::{Elem, GpuTensor};

/// Runs `$body` with the type alias `$F` bound to the cubecl float type of `$elem`
/// (f16 or f32); any other element type returns an error from the enclosing function.
macro_rules! dispatch_float {
    ($elem:expr, $F:ident => $body:expr) => {
        match $elem {
            $crate::tensor::Elem::F16 => {
                #[allow(dead_code)]
                type $F = ::half::f16;
                $body
            }
            $crate::tensor::Elem::F32 => {
                #[allow(dead_code)]
                type $F = f32;
                $body
            }
            other => {
                return Err($crate::error::KernelError(format!("expected an f16 or f32 tensor, got {}", other.name())));
            }
        }
    };
}
pub(crate) use dispatch_float;
