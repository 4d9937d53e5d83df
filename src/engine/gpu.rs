//! The engine on burn's GPU backends (wgpu, CUDA) through the CubeCL kernels of `awqc-kernels`.
//!
//! burn 0.21's `Wgpu` and `Cuda` backends are `CubeBackend<WgpuRuntime | CudaRuntime, f32, ..>`
//! without a fusion layer: a float tensor's primitive is a `CubeTensor<R>` holding the cubecl
//! client, buffer handle, shape and strides. The engine stays generic over `B: Backend`; this
//! module recognises the two CubeCL backends at run time (by the `TypeId` of their float
//! primitive, as `llama::is_host_backend` does for the CPU), hands the tensors' buffers to the
//! kernels without copies and wraps the kernels' outputs as burn tensors again. Kernels run on
//! the tensor's own client, so they are ordered with burn's own work.
//!
//! What runs here: W4A16 linears (packed int4 weights, [`W4Weights`]), RMSNorm, RoPE with a
//! per-sequence frequency table, `silu(gate)*up`, causal prefill attention, and decode attention
//! over the kernels' block KV cache (quant_policy 0 / 8 / 4; the cache is [`DeviceKv`]).
//! Activations are f32 (the backends' float type); a policy-0 cache stores f32.
//!
//! Errors. The layer functions of `llama.rs` return tensors, not `Result`s (the quantization
//! search composes them). Every kernel argument is checked when the model is built, so a kernel
//! wrapper cannot fail in practice; if one does anyway (a bug), the error is recorded here, the
//! op yields a fallback value, and the fallible entry points (`window_nll`, `decode_step`,
//! `prefill`, `generate`) report it through [`check`]. [`check`] also reports kernels that
//! failed to compile: cubecl panics in its device thread and leaves the outputs undefined.

use crate::engine::kv_cache::{CacheLayout, QuantPolicy};
use crate::error::{Error, Result};
use crate::quant::int4::QuantizedLinear;
use awqc_kernels::attention;
use awqc_kernels::cubecl::cuda::{CudaDevice, CudaRuntime};
use awqc_kernels::cubecl::prelude::ComputeClient;
use awqc_kernels::cubecl::wgpu::WgpuRuntime;
use awqc_kernels::kv_cache::{self as kvc, BlockTables, KvCacheKind, KvCacheLayout};
use awqc_kernels::kv_quant::{self, KvBits};
use awqc_kernels::rope::{RopeLayout, RopeTable};
use awqc_kernels::w4a16::{self, W4Host, W4Weights};
use awqc_kernels::{Elem, GpuTensor, KernelError};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use std::any::{Any, TypeId};
use std::sync::Mutex;

/// The CubeCL runtime under a burn backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelRuntime {
    Wgpu,
    Cuda,
}

/// Which kernel runtime backs `B` (`None`: a host backend, the kernels do not apply).
pub fn kernel_runtime<B: Backend>() -> Option<KernelRuntime> {
    let t = TypeId::of::<B::FloatTensorPrimitive>();
    if t == TypeId::of::<CubeTensor<WgpuRuntime>>() {
        Some(KernelRuntime::Wgpu)
    } else if t == TypeId::of::<CubeTensor<CudaRuntime>>() {
        Some(KernelRuntime::Cuda)
    } else {
        None
    }
}

/// Whether `B` runs the CubeCL kernels (burn's `Wgpu` and `Cuda` backends).
pub fn is_kernel_backend<B: Backend>() -> bool {
    kernel_runtime::<B>().is_some()
}

/// Calls `f::<B, R>(args..)` with the CubeCL runtime `R` of backend `B`.
macro_rules! on_runtime {
    ($B:ty, $f:ident ( $($arg:expr),* $(,)? )) => {
        match kernel_runtime::<$B>() {
            Some(KernelRuntime::Wgpu) => $f::<$B, WgpuRuntime>($($arg),*),
            Some(KernelRuntime::Cuda) => $f::<$B, CudaRuntime>($($arg),*),
            None => Err(Error::internal("GPU kernels called on a host backend")),
        }
    };
}

// ------------------------------------------------------------------------------------ errors

static DEFERRED: Mutex<Option<String>> = Mutex::new(None);

fn kerr(e: KernelError) -> Error {
    Error::internal(format!("GPU kernel: {e}"))
}

/// The value of `r`, or `fallback()` after recording the error for [`check`] (module docs).
pub(crate) fn or_record<T>(r: Result<T>, fallback: impl FnOnce() -> T) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            if let Ok(mut slot) = DEFERRED.lock() {
                slot.get_or_insert(e.msg);
            }
            fallback()
        }
    }
}

/// `Err` if a kernel call failed since the last check, or a kernel failed to compile (module docs).
pub fn check() -> Result<()> {
    if let Ok(mut slot) = DEFERRED.lock() {
        if let Some(msg) = slot.take() {
            return Err(Error::internal(msg));
        }
    }
    awqc_kernels::device::check_device_panics().map_err(kerr)
}

// ------------------------------------------------------------------------- burn <-> kernels

fn downcast<T: 'static>(v: impl Any) -> Result<T> {
    let b: Box<dyn Any> = Box::new(v);
    b.downcast::<T>().map(|b| *b).map_err(|_| Error::internal("GPU kernels: backend type mismatch"))
}

/// A burn float tensor as a kernel argument: its client, device and buffer (shared, no copy).
struct Kt<R: CubeRuntime> {
    client: ComputeClient<R>,
    device: R::Device,
    t: GpuTensor,
}

fn to_kernel<B: Backend, R: CubeRuntime, const D: usize>(t: Tensor<B, D>) -> Result<Kt<R>> {
    awqc_kernels::device::watch_device_panics();
    let mut p: CubeTensor<R> = downcast(t.into_primitive().tensor())?;
    if !p.is_contiguous() {
        p = burn_cubecl::kernel::into_contiguous(p);
    }
    if p.dtype != DType::F32 {
        return Err(Error::internal(format!("GPU kernels: expected an f32 tensor, got {:?}", p.dtype)));
    }
    let t = GpuTensor::from_parts(p.handle.clone(), p.meta.shape().to_vec(), Elem::F32).map_err(kerr)?;
    Ok(Kt { client: p.client, device: p.device, t })
}

/// Like [`to_kernel`], for a tensor the kernel will write in place: a buffer shared with another
/// live tensor is copied first.
fn to_kernel_mut<B: Backend, R: CubeRuntime, const D: usize>(t: Tensor<B, D>) -> Result<Kt<R>> {
    let p: CubeTensor<R> = downcast(t.into_primitive().tensor())?;
    let unique = p.can_mut() && p.is_contiguous();
    let t: Tensor<B, D> = Tensor::from_primitive(TensorPrimitive::Float(downcast(p)?));
    // `x + 0` on a shared buffer writes a new one.
    to_kernel(if unique { t } else { t.add_scalar(0.0) })
}

fn from_kernel<B: Backend, R: CubeRuntime, const D: usize>(client: ComputeClient<R>, device: R::Device, g: GpuTensor) -> Result<Tensor<B, D>> {
    if g.elem != Elem::F32 || g.shape.len() != D {
        return Err(Error::internal(format!("GPU kernels: output {:?} {} is not an f32 rank-{D} tensor", g.shape, g.elem.name())));
    }
    let p = CubeTensor::new_contiguous(client, device, Shape::from(g.shape), g.handle, DType::F32);
    Ok(Tensor::from_primitive(TensorPrimitive::Float(downcast(p)?)))
}

/// The cubecl client of a burn device (the one burn itself uses for it).
fn client_of<B: Backend, R: CubeRuntime>(dev: &B::Device) -> Result<ComputeClient<R>> {
    awqc_kernels::device::watch_device_panics();
    let d: &dyn Any = dev;
    let d = d.downcast_ref::<R::Device>().ok_or_else(|| Error::internal("GPU kernels: device type mismatch"))?;
    Ok(R::client(d))
}

fn with_shape(mut g: GpuTensor, shape: &[usize]) -> GpuTensor {
    g.shape = shape.to_vec();
    g
}

// ------------------------------------------------------------------------------------ W4A16

/// The kernel form of a quantized linear, or `None` when the W4A16 kernels cannot take it
/// (not 4-bit, `N % 8 != 0`, group not a multiple of 32): such a linear stays dense.
///
/// Goes through TurboMind's natural on-disk layout (qweight `[K, N/8]`, nibble i of word j =
/// column 8j+i; f16 scales and zeros `[K/g, N]`) so that `w4a16::repack_turbomind` stays the one
/// definition of the kernel layout.
pub fn pack_w4(l: &QuantizedLinear) -> Result<Option<W4Host>> {
    let (n, k, g) = (l.n, l.k, l.params.group);
    if l.params.bits != 4 || n % 8 != 0 || g % 32 != 0 || k % g != 0 {
        return Ok(None);
    }
    use crate::formats::awq_gemm::{pack_nibbles, transpose};
    let groups = k / g;
    let qweight: Vec<u32> = pack_nibbles(&transpose(&l.q, n, k), k, n, &[0, 1, 2, 3, 4, 5, 6, 7]).into_iter().map(|w| w as u32).collect();
    let scales = transpose(&l.scales, n, groups);
    // The kernel fuses (s, -z·s) per group, so float zeros go in as they are.
    let zeros = transpose(&l.zeros_f16(), n, groups);
    w4a16::repack_turbomind(&qweight, &scales, &zeros, k, n, g).map(Some).map_err(kerr)
}

fn upload_w4_on<B: Backend, R: CubeRuntime>(h: &W4Host, dev: &B::Device) -> Result<W4Weights> {
    h.upload(&client_of::<B, R>(dev)?).map_err(kerr)
}

/// Upload packed weights to `B`'s device.
pub fn upload_w4<B: Backend>(h: &W4Host, dev: &B::Device) -> Result<W4Weights> {
    on_runtime!(B, upload_w4_on(h, dev))
}

fn w4a16_on<B: Backend, R: CubeRuntime>(x: Tensor<B, 2>, w: &W4Weights) -> Result<Tensor<B, 2>> {
    let x = to_kernel::<B, R, 2>(x)?;
    let y = w4a16::w4a16_matmul(&x.client, &x.t, w).map_err(kerr)?;
    from_kernel(x.client, x.device, y)
}

/// `x [M, K] · W [K, N]` with packed int4 W (GEMV for M <= 4, tiled GEMM otherwise).
pub fn w4a16<B: Backend>(x: Tensor<B, 2>, w: &W4Weights) -> Result<Tensor<B, 2>> {
    on_runtime!(B, w4a16_on(x, w))
}

// ------------------------------------------------------------------------ norm, activation

fn rms_norm_on<B: Backend, R: CubeRuntime>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Result<Tensor<B, 3>> {
    let x = to_kernel::<B, R, 3>(x)?;
    let w = to_kernel::<B, R, 1>(w.clone())?;
    let y = awqc_kernels::norm::rms_norm(&x.client, &x.t, &w.t, eps as f32).map_err(kerr)?;
    from_kernel(x.client, x.device, y)
}

/// RMSNorm over the last dim (f32 accumulation, one rounding).
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Result<Tensor<B, 3>> {
    on_runtime!(B, rms_norm_on(x, w, eps))
}

fn silu_mul_on<B: Backend, R: CubeRuntime>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
    let g = to_kernel::<B, R, 3>(gate)?;
    let u = to_kernel::<B, R, 3>(up)?;
    let y = awqc_kernels::act::silu_mul(&g.client, &g.t, &u.t).map_err(kerr)?;
    from_kernel(g.client, g.device, y)
}

/// `silu(gate) * up`.
pub fn silu_mul<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
    on_runtime!(B, silu_mul_on(gate, up))
}

// ------------------------------------------------------------------------------------- RoPE

/// RoPE arguments for one call, in device memory: the frequency table of one sequence and the
/// position of each token (all tokens belong to that sequence).
pub struct RopeArgs {
    table: RopeTable,
    positions: GpuTensor,
    seq_ids: GpuTensor,
    mscale: f32,
}

fn rope_args_on<B: Backend, R: CubeRuntime>(dev: &B::Device, inv_freq: &[f64], mscale: f64, positions: &[u32]) -> Result<RopeArgs> {
    let c = client_of::<B, R>(dev)?;
    if let Some(&p) = positions.iter().find(|&&p| p >= 1 << 24) {
        return Err(Error::usage(format!("position {p} is beyond the GPU RoPE kernel's range (2^24)")));
    }
    let t = positions.len();
    Ok(RopeArgs {
        table: RopeTable::new(&c, &[inv_freq.to_vec()]).map_err(kerr)?,
        positions: GpuTensor::from_u32(&c, positions, &[t]).map_err(kerr)?,
        seq_ids: GpuTensor::from_u32(&c, &vec![0; t], &[t]).map_err(kerr)?,
        mscale: mscale as f32,
    })
}

/// Upload the RoPE arguments for tokens at `positions` of a sequence with these frequencies.
pub fn rope_args<B: Backend>(dev: &B::Device, inv_freq: &[f64], mscale: f64, positions: &[u32]) -> Result<RopeArgs> {
    on_runtime!(B, rope_args_on(dev, inv_freq, mscale, positions))
}

fn rope_on<B: Backend, R: CubeRuntime>(x: Tensor<B, 3>, a: &RopeArgs) -> Result<Tensor<B, 3>> {
    let x = to_kernel_mut::<B, R, 3>(x)?;
    awqc_kernels::rope::rope_inplace(&x.client, &x.t, &a.positions, &a.seq_ids, &a.table, RopeLayout::RotateHalf, a.mscale)
        .map_err(kerr)?;
    from_kernel(x.client, x.device, x.t)
}

/// Rotate-half RoPE of `x [T, heads, D]` (token t at `positions[t]`).
pub fn rope<B: Backend>(x: Tensor<B, 3>, a: &RopeArgs) -> Result<Tensor<B, 3>> {
    on_runtime!(B, rope_on(x, a))
}

// -------------------------------------------------------------------------------- attention

fn kv_bits(bits: u32) -> Result<KvBits> {
    match bits {
        8 => Ok(KvBits::Int8),
        4 => Ok(KvBits::Int4),
        b => Err(Error::internal(format!("KV cache bits {b}"))),
    }
}

fn kv_fake_quant_on<B: Backend, R: CubeRuntime>(x: Tensor<B, 3>, bits: u32) -> Result<Tensor<B, 3>> {
    let x = to_kernel::<B, R, 3>(x)?;
    let q = kv_quant::kv_quantize(&x.client, &x.t, kv_bits(bits)?).map_err(kerr)?;
    let y = kv_quant::kv_dequantize(&x.client, &q, Elem::F32).map_err(kerr)?;
    let shape = x.t.shape.clone();
    from_kernel(x.client, x.device, with_shape(y, &shape))
}

/// Round-trip every `[.., D]` row of `x` through the KV-cache quantizer (what the cache returns).
pub fn kv_fake_quant<B: Backend>(x: Tensor<B, 3>, bits: u32) -> Result<Tensor<B, 3>> {
    on_runtime!(B, kv_fake_quant_on(x, bits))
}

fn attention_prefill_on<B: Backend, R: CubeRuntime>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, seq_lens: &[usize]) -> Result<Tensor<B, 3>> {
    let q = to_kernel::<B, R, 3>(q)?;
    let k = to_kernel::<B, R, 3>(k)?;
    let v = to_kernel::<B, R, 3>(v)?;
    let y = attention::attention_prefill(&q.client, &q.t, &k.t, &v.t, seq_lens, None).map_err(kerr)?;
    from_kernel(q.client, q.device, y)
}

/// Causal attention `q [T, Hq, D]`, `k, v [T, Hkv, D]` over sequences packed along T.
pub fn attention_prefill<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, seq_lens: &[usize]) -> Result<Tensor<B, 3>> {
    on_runtime!(B, attention_prefill_on(q, k, v, seq_lens))
}

// --------------------------------------------------------------------------------- KV cache

/// The block KV cache in device memory (the kernels' layout, `awqc_kernels::kv_cache`), and how
/// many of its blocks are handed out. Blocks are given to sequences in order.
#[derive(Debug)]
pub struct DeviceKv {
    pub cache: kvc::KvCache,
    pub used: usize,
}

fn device_kv_on<B: Backend, R: CubeRuntime>(dev: &B::Device, layout: CacheLayout, blocks: usize) -> Result<DeviceKv> {
    let c = client_of::<B, R>(dev)?;
    let kind = match layout.policy {
        QuantPolicy::None => KvCacheKind::F32,
        QuantPolicy::Int8 => KvCacheKind::Int8,
        QuantPolicy::Int4 => KvCacheKind::Int4,
    };
    let lay = KvCacheLayout::new(layout.layers, layout.kv_heads, layout.head_dim, kind).map_err(|e| Error::usage(format!("--quant-policy: {e}")))?;
    Ok(DeviceKv { cache: kvc::KvCache::new(&c, lay, blocks).map_err(|e| Error::device(e.to_string()))?, used: 0 })
}

/// Allocate a device cache of `blocks` blocks.
pub fn device_kv<B: Backend>(dev: &B::Device, layout: CacheLayout, blocks: usize) -> Result<DeviceKv> {
    on_runtime!(B, device_kv_on(dev, layout, blocks))
}

fn block_tables_on<B: Backend, R: CubeRuntime>(dev: &B::Device, kv: &DeviceKv, table: &[usize], len: usize) -> Result<BlockTables> {
    let c = client_of::<B, R>(dev)?;
    let t: Vec<u32> = table.iter().map(|&b| b as u32).collect();
    BlockTables::new(&c, &kv.cache, &[t], &[len]).map_err(kerr)
}

/// The block table of one sequence of `len` cached positions, in device memory.
pub fn block_tables<B: Backend>(dev: &B::Device, kv: &DeviceKv, table: &[usize], len: usize) -> Result<BlockTables> {
    on_runtime!(B, block_tables_on(dev, kv, table, len))
}

fn kv_append_on<B: Backend, R: CubeRuntime>(kv: &mut DeviceKv, layer: usize, k: Tensor<B, 3>, v: Tensor<B, 3>, slots: &[u32]) -> Result<()> {
    let k = to_kernel::<B, R, 3>(k)?;
    let v = to_kernel::<B, R, 3>(v)?;
    kvc::kv_append(&k.client, &mut kv.cache, layer, &k.t, &v.t, slots).map_err(kerr)
}

/// Write K (after RoPE) and V `[T, Hkv, D]` of `layer` at the given cache slots.
pub fn kv_append<B: Backend>(kv: &mut DeviceKv, layer: usize, k: Tensor<B, 3>, v: Tensor<B, 3>, slots: &[u32]) -> Result<()> {
    on_runtime!(B, kv_append_on(kv, layer, k, v, slots))
}

fn attention_decode_on<B: Backend, R: CubeRuntime>(q: Tensor<B, 3>, kv: &DeviceKv, layer: usize, tables: &BlockTables) -> Result<Tensor<B, 3>> {
    let q = to_kernel::<B, R, 3>(q)?;
    let y = attention::attention_decode(&q.client, &q.t, &kv.cache, layer, tables, None).map_err(kerr)?;
    from_kernel(q.client, q.device, y)
}

/// Attention of one query token per sequence, `q [B, Hq, D]`, over `layer` of the cache.
pub fn attention_decode<B: Backend>(q: Tensor<B, 3>, kv: &DeviceKv, layer: usize, tables: &BlockTables) -> Result<Tensor<B, 3>> {
    on_runtime!(B, attention_decode_on(q, kv, layer, tables))
}

// ------------------------------------------------------------------------------ free memory

/// Device memory assumed free on wgpu, which has no query for it: the largest buffer the device
/// binds (one cache is one buffer), at most the host's available memory (integrated GPUs and
/// lavapipe allocate from it), and at most 4 GiB (the kernels' 32-bit indexing on wgpu).
fn wgpu_free_bytes<B: Backend>(dev: &B::Device) -> Result<usize> {
    let c = client_of::<B, WgpuRuntime>(dev)?;
    let binding = c.properties().memory.max_page_size;
    let host = crate::engine::kv_cache::host_free_bytes() as u64;
    Ok(binding.min(host).min(4 << 30) as usize)
}

/// Free memory of the CUDA device (`cuMemGetInfo` in the primary context cubecl uses).
fn cuda_free_bytes<B: Backend>(dev: &B::Device) -> Result<usize> {
    use cudarc::driver::result;
    let d: &dyn Any = dev;
    let index = d.downcast_ref::<CudaDevice>().map(|d| d.index).unwrap_or(0);
    // Allocations queued by burn (the weights) must have happened before free memory is read.
    B::sync(dev).map_err(|e| Error::device(format!("CUDA sync failed: {e:?}")))?;
    let derr = |what: &str, e: cudarc::driver::DriverError| Error::device(format!("CUDA {what}: {e:?}"));
    result::init().map_err(|e| derr("init", e))?;
    let cu = result::device::get(index as i32).map_err(|e| derr("device", e))?;
    // SAFETY: `cu` is a valid device; retaining its primary context (the one cubecl uses) and
    // making it current lets cuMemGetInfo run on this thread; the retain is released after.
    unsafe {
        let ctx = result::primary_ctx::retain(cu).map_err(|e| derr("context", e))?;
        let r = result::ctx::set_current(ctx).and_then(|_| result::mem_get_info());
        let _ = result::primary_ctx::release(cu);
        r.map(|(free, _)| free).map_err(|e| derr("mem_get_info", e))
    }
}

/// Free memory of `B`'s device for sizing the KV cache, and how it was obtained.
pub fn device_free_bytes<B: Backend>(dev: &B::Device) -> Result<(usize, &'static str)> {
    match kernel_runtime::<B>() {
        Some(KernelRuntime::Cuda) => Ok((cuda_free_bytes::<B>(dev)?, "cuMemGetInfo")),
        Some(KernelRuntime::Wgpu) => Ok((wgpu_free_bytes::<B>(dev)?, "wgpu fallback: min(max binding, host MemAvailable, 4 GiB)")),
        None => Ok((crate::engine::kv_cache::host_free_bytes(), "host MemAvailable")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::int4::QuantParams;
    use crate::tensor::HostTensor;

    #[test]
    fn pack_w4_gives_the_kernel_layout() {
        let (n, k, g) = (16, 128, 32);
        let w = HostTensor::from_fn(&[n, k], |i| ((i * 7919 % 101) as f32 - 50.0) * 0.013);
        let l = QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, g).unwrap()).unwrap();
        let h = pack_w4(&l).unwrap().unwrap();
        assert_eq!((h.n, h.k, h.group), (n, k, g));
        // Kernel form (kernels/src/w4a16.rs): qweight [N, K/8], nibble i of word j = q[n][8j + i];
        // sz [N, K/g, 2] = (s, -z*s).
        for row in 0..n {
            for c in 0..k {
                let word = h.qweight[row * k / 8 + c / 8];
                assert_eq!((word >> (4 * (c % 8))) & 15, l.q[row * k + c] as u32, "row {row} col {c}");
            }
            for gi in 0..k / g {
                let (s, z) = (l.scales[row * (k / g) + gi].to_f64(), l.zeros[row * (k / g) + gi] as f64);
                assert_eq!(h.sz[(row * (k / g) + gi) * 2], s as f32);
                assert_eq!(h.sz[(row * (k / g) + gi) * 2 + 1], (-z * s) as f32);
            }
        }
        // Shapes the kernels cannot take stay dense.
        let l16 = QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, 16).unwrap()).unwrap();
        assert!(pack_w4(&l16).unwrap().is_none(), "group 16 is not a multiple of 32");
        let w12 = HostTensor::from_fn(&[12, k], |i| (i % 9) as f32);
        let l12 = QuantizedLinear::quantize("t", &w12, None, QuantParams::new(4, g).unwrap()).unwrap();
        assert!(pack_w4(&l12).unwrap().is_none(), "N = 12 is not a multiple of 8");
    }
}
