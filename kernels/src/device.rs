//! Getting a cubecl client without burn. With burn, take the client from a tensor instead
//! (`CubeTensor::client`, see the crate docs).

use crate::error::{KernelError, Result};
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

/// The default wgpu device's client (Vulkan on Linux; lavapipe where there is no GPU).
/// cubecl panics when no adapter exists (its worker thread prints why); that panic is turned
/// into an error here.
pub fn wgpu_client() -> Result<ComputeClient<WgpuRuntime>> {
    let r = std::panic::catch_unwind(|| WgpuRuntime::client(&WgpuDevice::DefaultDevice));
    r.map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        KernelError(format!("wgpu: no usable Vulkan/GPU adapter: {why}"))
    })
}

/// The client of CUDA device `index`. cubecl panics (in a worker thread) when no driver is
/// present: check the driver first (awqc's `engine::device::cuda_available`).
pub fn cuda_client(index: usize) -> ComputeClient<cubecl::cuda::CudaRuntime> {
    cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice { index })
}

static DEVICE_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static WATCH: std::sync::Once = std::sync::Once::new();

/// cubecl 0.10 builds and compiles kernels in its device threads (named `DSU-*` / `DSD-*`). A
/// kernel that fails to compile panics there, and the launch silently leaves its outputs
/// undefined: no error reaches the caller, not even from `client.sync()`. This installs (once) a
/// panic hook, chained to the current one, that counts the panics of those threads; check
/// [`device_panics`] after the first launches of each kernel (the tests do after every case).
pub fn watch_device_panics() {
    WATCH.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name.starts_with("DSU-") || name.starts_with("DSD-") {
                DEVICE_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

/// Panics seen in cubecl's device threads since [`watch_device_panics`] was called.
pub fn device_panics() -> usize {
    DEVICE_PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// `Err` if any device thread panicked (see [`watch_device_panics`]).
pub fn check_device_panics() -> Result<()> {
    match device_panics() {
        0 => Ok(()),
        n => Err(KernelError(format!("{n} panic(s) in cubecl's device thread: a kernel failed to build or compile, its outputs are undefined"))),
    }
}
