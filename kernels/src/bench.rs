//! Wall-clock timing of the W4A16 kernels at given shapes on any runtime (see
//! `examples/bench_w4a16.rs`). Inputs are synthetic; each launch is timed as the mean over
//! `iters` launches between two device synchronisations, after a warm-up that compiles the kernel.

use crate::error::{ensure, KernelError, Result};
use crate::tensor::{Elem, GpuTensor};
use crate::w4a16::{repack_turbomind, w4a16_dequantize, w4a16_gemm, w4a16_gemv, W4Weights};
use cubecl::prelude::*;
use half::f16;
use std::time::Instant;

/// One timed kernel.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// "gemv", "gemm" or "dequantize".
    pub kernel: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub group: usize,
    pub mean_us: f64,
    /// 2*M*N*K / time (0 for dequantize).
    pub tflops: f64,
    /// Bytes of packed weights + (s, -z*s) pairs read per launch / time: the roofline of the
    /// memory-bound GEMV.
    pub weight_gbps: f64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<10} M={:<5} N={:<6} K={:<6} g={:<4} {:>10.1} us {:>8.3} TFLOP/s {:>8.1} GB/s (weights)",
            self.kernel, self.m, self.n, self.k, self.group, self.mean_us, self.tflops, self.weight_gbps
        )
    }
}

fn sync<R: Runtime>(client: &ComputeClient<R>) -> Result<()> {
    cubecl::future::block_on(client.sync()).map_err(|e| KernelError(format!("device sync failed: {e:?}")))
}

/// Synthetic int4 weights `[K, N]` (deterministic).
pub fn synthetic_weights<R: Runtime>(client: &ComputeClient<R>, n: usize, k: usize, group: usize) -> Result<W4Weights> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let qweight: Vec<u32> = (0..k * n / 8).map(|_| next() as u32).collect();
    let ng = k.checked_div(group).unwrap_or(0);
    let scales: Vec<f16> = (0..ng * n).map(|_| f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5)).collect();
    let zeros: Vec<f16> = (0..ng * n).map(|_| f16::from_f32((next() % 16) as f32)).collect();
    repack_turbomind(&qweight, &scales, &zeros, k, n, group)?.upload(client)
}

fn time<R: Runtime>(client: &ComputeClient<R>, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    crate::device::watch_device_panics();
    for _ in 0..3 {
        f()?;
    }
    sync(client)?;
    crate::device::check_device_panics()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    sync(client)?;
    Ok(t0.elapsed().as_secs_f64() * 1e6 / iters as f64)
}

/// Times GEMV (for M <= 16), GEMM and the dense dequantization at `[M, K] x [K, N]`.
pub fn bench_w4a16<R: Runtime>(client: &ComputeClient<R>, m: usize, n: usize, k: usize, group: usize, elem: Elem, iters: usize) -> Result<Vec<BenchResult>> {
    ensure!(iters > 0, "bench: iters must be > 0");
    let w = synthetic_weights(client, n, k, group)?;
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) * 1e-3).collect();
    let x = GpuTensor::from_f32(client, &x, &[m, k], elem)?;
    let weight_bytes = (n * k / 2 + n * (k / group) * 8) as f64;
    let flops = 2.0 * (m * n * k) as f64;
    let mut out = Vec::new();
    let mut push = |kernel, us: f64, with_flops: bool| {
        out.push(BenchResult {
            kernel,
            m,
            n,
            k,
            group,
            mean_us: us,
            tflops: if with_flops { flops / us * 1e-6 } else { 0.0 },
            weight_gbps: weight_bytes / us * 1e-3,
        })
    };
    if m <= 16 {
        let us = time(client, iters, || w4a16_gemv(client, &x, &w).map(drop))?;
        push("gemv", us, true);
    }
    let us = time(client, iters, || w4a16_gemm(client, &x, &w).map(drop))?;
    push("gemm", us, true);
    let us = time(client, iters, || w4a16_dequantize(client, &w, elem).map(drop))?;
    push("dequantize", us, false);
    Ok(out)
}
