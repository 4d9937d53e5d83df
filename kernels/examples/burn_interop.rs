//! Calling awqc-kernels on burn 0.21 tensors, without copies: a burn `CubeBackend` float tensor
//! is a `CubeTensor { client, handle, meta, device, dtype }`; its handle and client are exactly what
//! the kernels take, and a kernel's output handle becomes a burn tensor again with
//! `CubeTensor::new_contiguous`. Shown on `burn::backend::Wgpu`; for `burn::backend::Cuda` replace
//! `WgpuRuntime`/`WgpuDevice` by `burn::backend::cuda::{CudaRuntime, CudaDevice}` (burn 0.21's
//! `Wgpu`/`Cuda` have no fusion layer with awqc's features, so `into_primitive().tensor()` is the
//! `CubeTensor` itself).
//!
//! Run: `cargo run --release -p awqc-kernels --example burn_interop` (needs a Vulkan device).
use awqc_kernels::norm::rms_norm;
use awqc_kernels::w4a16::{repack_turbomind, w4a16_matmul};
use awqc_kernels::{Elem, GpuTensor};
use burn::backend::wgpu::{CubeTensor, WgpuDevice, WgpuRuntime};
use burn::backend::Wgpu;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive};
use cubecl::prelude::ComputeClient;
use half::f16;

type B = Wgpu;

/// A burn float tensor as a kernel input (shares the buffer). The tensor must be contiguous
/// (burn ops that produce new tensors are; make a permuted view contiguous in burn first).
fn to_kernel<const D: usize>(t: Tensor<B, D>) -> (ComputeClient<WgpuRuntime>, GpuTensor) {
    let prim: CubeTensor<WgpuRuntime> = t.into_primitive().tensor();
    assert!(prim.is_contiguous(), "make the tensor contiguous first");
    let elem = match prim.dtype {
        DType::F32 => Elem::F32,
        DType::F16 => Elem::F16,
        other => panic!("unsupported dtype {other:?}"),
    };
    let g = GpuTensor::from_parts(prim.handle.clone(), prim.meta.shape().to_vec(), elem).expect("buffer too small");
    (prim.client, g)
}

/// A kernel output as a burn tensor (takes over the buffer).
fn to_burn<const D: usize>(client: ComputeClient<WgpuRuntime>, device: &WgpuDevice, g: GpuTensor) -> Tensor<B, D> {
    let dtype = match g.elem {
        Elem::F32 => DType::F32,
        Elem::F16 => DType::F16,
        Elem::U32 => DType::U32,
    };
    let prim = CubeTensor::new_contiguous(client, device.clone(), Shape::from(g.shape), g.handle, dtype);
    Tensor::from_primitive(TensorPrimitive::Float(prim))
}

fn main() {
    let device = WgpuDevice::default();
    let (m, k, n, g) = (5usize, 256usize, 96usize, 64usize);

    // A random int4 layer in TurboMind's on-disk form, and its dense f32 matrix for burn.
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    let q: Vec<u32> = (0..k * n).map(|_| rnd() % 16).collect();
    let scales: Vec<f16> = (0..k / g * n).map(|_| f16::from_f32(0.01 + (rnd() % 100) as f32 * 1e-4)).collect();
    let zeros: Vec<f16> = (0..k / g * n).map(|_| f16::from_f32((rnd() % 16) as f32)).collect();
    let mut qweight = vec![0u32; k * n / 8];
    for kk in 0..k {
        for c in 0..n {
            qweight[kk * n / 8 + c / 8] |= q[kk * n + c] << (4 * (c % 8));
        }
    }
    let dense: Vec<f32> = (0..k * n)
        .map(|i| {
            let gi = (i / n / g) * n + i % n;
            (q[i] as f32 - zeros[gi].to_f32()) * scales[gi].to_f32()
        })
        .collect();

    let x: Vec<f32> = (0..m * k).map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0).collect();
    let xb = Tensor::<B, 2>::from_data(TensorData::new(x, [m, k]), &device);
    let wb = Tensor::<B, 2>::from_data(TensorData::new(dense, [k, n]), &device);
    let norm_w = Tensor::<B, 1>::ones([k], &device);

    // burn -> kernels: RMSNorm then the W4A16 matmul, on burn's own client and buffers.
    let (client, xg) = to_kernel(xb.clone());
    let (_, nw) = to_kernel(norm_w);
    let w = repack_turbomind(&qweight, &scales, &zeros, k, n, g).unwrap().upload(&client).unwrap();
    let xn = rms_norm(&client, &xg, &nw, 1e-5).unwrap();
    let y = w4a16_matmul(&client, &xn, &w).unwrap();

    // kernels -> burn, and the same computation in burn for comparison.
    let yb: Tensor<B, 2> = to_burn(client, &device, y);
    let xn_burn = xb.clone() / (xb.clone().powf_scalar(2.0).mean_dim(1) + 1e-5).sqrt();
    let want = xn_burn.matmul(wb);
    let diff: f32 = (yb.clone() - want.clone()).abs().max().into_scalar();
    let scale: f32 = want.abs().max().into_scalar();
    println!("burn interop: y {:?}, max |kernel - burn| = {diff:e} (max |y| = {scale:.3})", yb.dims());
    assert!(diff <= 1e-4 * scale, "kernel and burn disagree");
}
