//! Shared test helpers: one wgpu client per test binary, a deterministic PRNG, error metrics.
#![allow(dead_code)]

use cubecl::prelude::*;
use cubecl::wgpu::WgpuRuntime;
use std::sync::OnceLock;

pub type R = WgpuRuntime;

/// The wgpu client (lavapipe on CI). Panics, failing the test, when no Vulkan device exists:
/// these tests must not be skipped (install `mesa-vulkan-drivers`).
pub fn client() -> ComputeClient<R> {
    static CLIENT: OnceLock<ComputeClient<R>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            awqc_kernels::device::watch_device_panics();
            awqc_kernels::device::wgpu_client()
                .unwrap_or_else(|e| panic!("{e} (install mesa-vulkan-drivers for lavapipe)"))
        })
        .clone()
}

/// Fails the test if a kernel failed to build/compile in cubecl's device thread (its outputs
/// would be garbage, or worse, a recycled buffer holding a previous, correct-looking result).
/// Call after reading back results.
pub fn assert_kernels_built() {
    if let Err(e) = awqc_kernels::device::check_device_panics() {
        panic!("{e}");
    }
}

/// SplitMix64: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi) as f32).collect()
    }
}

/// ||a - b||_2 / ||b||_2 in f64.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// max |a - b|.
pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}

/// Rounds through f16 (what an f16 upload stores).
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}
