//! Compute devices. The engine is generic over burn's `Backend`; this module picks the concrete
//! backend for `--device cpu|cuda|wgpu|auto` and checks availability first: burn 0.21's CUDA
//! device panics in a worker thread when no driver is present, so we ask the driver ourselves and
//! turn its absence into a clear error.

use crate::error::{Error, Result};

/// The CPU backend (chosen by measurement, see BENCHMARKS.md: flex's gemm was faster than ndarray's).
pub type CpuBackend = burn::backend::Flex;
pub type CudaBackend = burn::backend::Cuda;
pub type WgpuBackend = burn::backend::Wgpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
    /// CUDA when a driver and a GPU are present, else CPU.
    Auto,
}

/// Probe the CUDA driver without letting burn panic: the library must load, initialise, and report
/// at least one device. Returns the first device's name.
pub fn cuda_available() -> Result<String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only checks whether the driver library can be loaded.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::device("--device cuda: no CUDA driver found on this machine (libcuda could not be loaded); use --device cpu or wgpu"));
    }
    result::init().map_err(|e| Error::device(format!("--device cuda: the CUDA driver failed to initialise: {e:?}")))?;
    let n = result::device::get_count().map_err(|e| Error::device(format!("--device cuda: cannot count devices: {e:?}")))?;
    if n < 1 {
        return Err(Error::device("--device cuda: the CUDA driver reports no GPU"));
    }
    let dev = result::device::get(0).map_err(|e| Error::device(format!("--device cuda: {e:?}")))?;
    Ok(result::device::get_name(dev).unwrap_or_else(|_| "CUDA device 0".into()))
}

/// Resolve `auto` and check availability. Returns the concrete kind.
pub fn resolve(kind: DeviceKind) -> Result<DeviceKind> {
    match kind {
        DeviceKind::Auto => Ok(if cuda_available().is_ok() { DeviceKind::Cuda } else { DeviceKind::Cpu }),
        DeviceKind::Cuda => cuda_available().map(|_| DeviceKind::Cuda),
        k => Ok(k),
    }
}

/// Call a generic function `f::<B>(device, args...)` with the backend of a resolved [`DeviceKind`].
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        use $crate::engine::device::{CpuBackend, CudaBackend, DeviceKind, WgpuBackend};
        match $kind {
            DeviceKind::Cpu | DeviceKind::Auto => $f::<CpuBackend>(Default::default(), $($arg),*),
            DeviceKind::Cuda => $f::<CudaBackend>(Default::default(), $($arg),*),
            DeviceKind::Wgpu => $f::<WgpuBackend>(Default::default(), $($arg),*),
        }
    }};
}
