//! Shared test helpers: one wgpu client per test binary, rel_l2; the PRNG, f16 rounding and
//! max_abs come from `awqc_kernels::reference`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

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

pub use awqc_kernels::reference::{max_abs, round_f16, Rng};

/// ||a - b||_2 / ||b||_2 in f64.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

