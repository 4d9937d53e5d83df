//! GPU checks that run from the release binary alone (a GPU machine has no Rust toolchain):
//! - `awqc kernel-test`: every kernel against host references (`engine::gpu_check`);
//! - `awqc bench-gpu`: W4A16 GEMV/GEMM at Llama-7B projection shapes against a dense matmul of
//!   the same shape and against the measured device copy bandwidth;
//! - `awqc bench-decode`: decode tokens/s of a model (e.g. `awqc synth --shape 7b --quantized`).
//!
//! `scripts/gpu-check.sh` runs all three plus a CUDA-vs-CPU perplexity comparison.

use crate::engine::device::{self, DeviceKind};
use crate::engine::gpu;
use crate::engine::kv_cache::{QuantPolicy, SeqState};
use crate::engine::llama::{Llama, LinearB, LinearWeight};
use crate::error::{Error, Result};
use awqc_kernels::bench::bench_w4a16;
use awqc_kernels::cubecl::prelude::{ComputeClient, Runtime};
use awqc_kernels::Elem;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// A GPU device flag (no CPU: these commands are about the kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuDevice {
    Cuda,
    Wgpu,
}

impl GpuDevice {
    fn kind(self) -> Result<DeviceKind> {
        device::resolve(match self {
            GpuDevice::Cuda => DeviceKind::Cuda,
            GpuDevice::Wgpu => DeviceKind::Wgpu,
        })
    }
}

fn wgpu_client() -> Result<ComputeClient<awqc_kernels::cubecl::wgpu::WgpuRuntime>> {
    awqc_kernels::device::wgpu_client().map_err(|e| Error::device(format!("--device wgpu: {e}")))
}

// ----------------------------------------------------------------------------- kernel-test

#[derive(clap::Args, Debug, Clone)]
pub struct KernelTestArgs {
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: GpuDevice,
}

pub fn kernel_test(a: KernelTestArgs, json: bool) -> Result<()> {
    a.device.kind()?;
    let t0 = Instant::now();
    let checks = match a.device {
        GpuDevice::Cuda => crate::engine::gpu_check::run_checks(&awqc_kernels::device::cuda_client(0)),
        GpuDevice::Wgpu => crate::engine::gpu_check::run_checks(&wgpu_client()?),
    }
    .map_err(|e| Error::internal(format!("kernel-test: {e}")))?;
    let failed = checks.iter().filter(|c| !c.pass).count();
    if json {
        crate::cli::print_json(&json!({"device": a.device, "checks": checks, "failed": failed, "seconds": t0.elapsed().as_secs_f64()}));
    } else {
        println!("{:<64} {:>12} {:>10}  result", "kernel check", "max error", "bound");
        for c in &checks {
            println!("{:<64} {:>12.3e} {:>10.1e}  {}", c.name, c.max_err, c.tolerance, if c.pass { "ok" } else { "FAIL" });
        }
        println!("{} checks, {failed} failed ({:.1}s)", checks.len(), t0.elapsed().as_secs_f64());
    }
    if failed > 0 {
        return Err(Error::check(format!("kernel-test: {failed} of {} checks failed on {:?}", checks.len(), a.device)));
    }
    Ok(())
}

// ------------------------------------------------------------------------------- bench-gpu

#[derive(clap::Args, Debug, Clone)]
pub struct BenchGpuArgs {
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: GpuDevice,
    /// Projection shapes as KxN (in_features x out_features).
    #[arg(long, value_delimiter = ',', default_value = "4096x4096,4096x11008,11008x4096")]
    pub shapes: Vec<String>,
    /// Batch sizes (rows of x).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub group: usize,
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Size of the device copy that measures the bandwidth ceiling.
    #[arg(long, default_value_t = 1024)]
    pub copy_mib: usize,
    /// Dtype of the dense comparison matmul (burn): f16, or f32 where the device lacks f16.
    #[arg(long, default_value = "f16")]
    pub matmul_dtype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub kernel: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub microseconds: f64,
    pub tflops: f64,
    /// Weight bytes read per call / time.
    pub weight_gbps: f64,
    /// weight_gbps over the measured copy bandwidth.
    pub of_copy_bandwidth: f64,
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::usage(format!("--shapes {s:?}: expected KxN, e.g. 4096x11008"));
    let (k, n) = s.split_once('x').ok_or_else(bad)?;
    Ok((k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?))
}

fn sync<B: Backend>(dev: &B::Device) -> Result<()> {
    B::sync(dev).map_err(|e| Error::device(format!("device sync failed: {e:?}")))
}

/// Mean seconds of `f` over `iters` calls after 3 warm-up calls, between device syncs.
fn time<B: Backend>(dev: &B::Device, iters: usize, mut f: impl FnMut()) -> Result<f64> {
    for _ in 0..3 {
        f();
    }
    sync::<B>(dev)?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync::<B>(dev)?;
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}

/// Copy bandwidth (GB/s, bytes read + written) of `y = x + 0` on a `mib` MiB f32 buffer: burn's
/// elementwise kernel, vectorised; `x` stays alive so the output is a new buffer.
fn copy_gbps<B: Backend>(dev: &B::Device, mib: usize, iters: usize) -> Result<f64> {
    let n = mib.max(1) << 18; // f32 elements
    let x = Tensor::<B, 1>::random([n], Distribution::Default, dev);
    let secs = time::<B>(dev, iters, || {
        let _ = x.clone().add_scalar(0.0);
    })?;
    Ok(2.0 * (n * 4) as f64 / secs / 1e9)
}

/// Dense `[M, K] x [K, N]` matmul through burn in `dtype`: (seconds, weight bytes).
fn dense_matmul<B: Backend>(dev: &B::Device, m: usize, k: usize, n: usize, dtype: DType, iters: usize) -> Result<(f64, f64)> {
    let x = Tensor::<B, 2>::random([m, k], Distribution::Default, dev).cast(dtype);
    let w = Tensor::<B, 2>::random([k, n], Distribution::Default, dev).cast(dtype);
    let secs = time::<B>(dev, iters, || {
        let _ = x.clone().matmul(w.clone());
    })?;
    Ok((secs, (k * n * dtype.size()) as f64))
}

fn bench_backend<B: Backend, Rt: Runtime>(dev: B::Device, client: &ComputeClient<Rt>, a: &BenchGpuArgs) -> Result<Vec<BenchRow>> {
    let dtype = match a.matmul_dtype.as_str() {
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => return Err(Error::usage(format!("--matmul-dtype {other:?}: f16 or f32"))),
    };
    let shapes = a.shapes.iter().map(|s| parse_shape(s)).collect::<Result<Vec<_>>>()?;
    let copy = copy_gbps::<B>(&dev, a.copy_mib, a.iters.min(20))?;
    let mut rows = vec![BenchRow {
        kernel: format!("device copy ({} MiB f32, read+write)", a.copy_mib),
        m: 0,
        k: 0,
        n: 0,
        microseconds: (a.copy_mib << 21) as f64 / copy / 1e3,
        tflops: 0.0,
        weight_gbps: copy,
        of_copy_bandwidth: 1.0,
    }];
    let pb = crate::progress::bar((shapes.len() * a.batch.len()) as u64, "bench");
    for &(k, n) in &shapes {
        for &m in &a.batch {
            for elem in [Elem::F32, Elem::F16] {
                let results = bench_w4a16(client, m, n, k, a.group, elem, a.iters).map_err(|e| Error::internal(e.to_string()))?;
                for r in results {
                    // The dequantize kernel is the same for every M: report it once per shape.
                    if r.kernel == "dequantize" && (m != a.batch[0] || elem != Elem::F16) {
                        continue;
                    }
                    rows.push(BenchRow {
                        kernel: format!("w4a16 {} x {} g{}", r.kernel, elem.name(), a.group),
                        m,
                        k,
                        n,
                        microseconds: r.mean_us,
                        tflops: r.tflops,
                        weight_gbps: r.weight_gbps,
                        of_copy_bandwidth: r.weight_gbps / copy,
                    });
                }
            }
            let (secs, bytes) = dense_matmul::<B>(&dev, m, k, n, dtype, a.iters)?;
            rows.push(BenchRow {
                kernel: format!("dense matmul {dtype:?} (burn)"),
                m,
                k,
                n,
                microseconds: secs * 1e6,
                tflops: 2.0 * (m * n * k) as f64 / secs / 1e12,
                weight_gbps: bytes / secs / 1e9,
                of_copy_bandwidth: bytes / secs / 1e9 / copy,
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    gpu::check()?;
    Ok(rows)
}

pub fn bench_gpu(a: BenchGpuArgs, json: bool) -> Result<()> {
    a.device.kind()?;
    let rows = match a.device {
        GpuDevice::Cuda => bench_backend::<device::CudaBackend, _>(Default::default(), &awqc_kernels::device::cuda_client(0), &a)?,
        GpuDevice::Wgpu => bench_backend::<device::WgpuBackend, _>(Default::default(), &wgpu_client()?, &a)?,
    };
    if json {
        crate::cli::print_json(&json!({"device": a.device, "rows": rows}));
    } else {
        println!("| kernel | M | K | N | us | TFLOP/s | weight GB/s | % of copy BW |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.3} | {:.1} | {:.1} |",
                r.kernel, r.m, r.k, r.n, r.microseconds, r.tflops, r.weight_gbps, 100.0 * r.of_copy_bandwidth
            );
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------- bench-decode

#[derive(clap::Args, Debug, Clone)]
pub struct BenchDecodeArgs {
    /// Model directory (HF, AutoAWQ or TurboMind), or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    #[arg(long, value_enum, default_value = "cuda")]
    pub device: DeviceKind,
    /// Prompt length (deterministic token ids).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens decoded (greedy, EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// KV cache policies to measure, each with a fresh cache (0, 8, 4; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub quant_policy: Vec<u32>,
    #[arg(long, default_value_t = 0.8)]
    pub cache_max_entry_count: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeBench {
    pub device: DeviceKind,
    pub quant_policy: u32,
    pub load_seconds: f64,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens: usize,
    pub decode_seconds: f64,
    pub decode_tokens_per_second: f64,
    /// Weight bytes read per decoded token (packed INT4 + scale pairs, dense weights, lm head).
    pub weight_bytes_per_token: f64,
    pub weight_gbps: f64,
    pub int4_linears: usize,
    pub dense_linears: usize,
    pub kv_blocks_capacity: usize,
}

fn linear_bytes(l: &LinearB<impl Backend>) -> (f64, bool) {
    match &l.w {
        LinearWeight::Int4(w) => ((w.n * w.k / 2 + w.n * (w.k / w.group) * 8) as f64, true),
        LinearWeight::Dense(t) => {
            let [k, n] = t.dims();
            ((k * n * 4) as f64, false)
        }
    }
}

pub(crate) fn decode_on<B: Backend>(dev: B::Device, model: &Path, a: &BenchDecodeArgs, kind: DeviceKind) -> Result<Vec<DecodeBench>> {
    if a.prompt_tokens == 0 || a.tokens == 0 {
        return Err(Error::usage("--prompt-tokens and --tokens must be > 0"));
    }
    let policies = a.quant_policy.iter().map(|&p| QuantPolicy::from_flag(p).map(|q| (p, q))).collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let lm = crate::engine::load::load_model::<B>(model, &Default::default(), &dev)?;
    let m: &Llama<B> = &lm.model;
    sync::<B>(&dev)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let c = &m.config;
    let (mut bytes, mut int4, mut dense) = ((c.hidden_size * c.vocab_size * 4) as f64, 0, 0);
    if let Some(h) = &m.host {
        // The host model (CPU): its resident weight bytes, all read once per decoded token.
        bytes = h.weight_bytes() as f64;
        let (q, d) = h.layers.iter().flat_map(|l| l.linears()).fold((0, 0), |(q, d), lin| match lin.w {
            crate::engine::host::HostWeight::Int4(_) | crate::engine::host::HostWeight::W4A8(_) => (q + 1, d),
            crate::engine::host::HostWeight::F32(_) => (q, d + 1),
        });
        (int4, dense) = (q, d);
    }
    for l in &m.layers {
        for lin in [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o, &l.mlp.gate, &l.mlp.up, &l.mlp.down] {
            let (b, packed) = linear_bytes(lin);
            bytes += b;
            if packed {
                int4 += 1;
            } else {
                dense += 1;
            }
        }
    }
    let v = c.vocab_size as u64;
    let prompt: Vec<u32> = (0..a.prompt_tokens as u64).map(|i| ((i * 7919 + 3) % v) as u32).collect();
    let greedy = crate::engine::generate::SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
    let mut out = Vec::new();
    for (flag, policy) in policies {
        let mut cache = m.new_cache(policy, a.cache_max_entry_count, a.prompt_tokens + a.tokens)?;
        let mut seq = SeqState::new(&m.rope, prompt.len());
        let t1 = Instant::now();
        let mut logits = m.prefill(&mut cache, &mut seq, &prompt)?;
        let prefill_seconds = t1.elapsed().as_secs_f64();
        let mut rng = crate::model::synth::SplitMix(0);
        let t2 = Instant::now();
        for _ in 0..a.tokens {
            let next = crate::engine::generate::sample(&logits, &greedy, &mut rng);
            logits = m.decode_step(&mut cache, &mut seq, next)?;
        }
        let decode_seconds = t2.elapsed().as_secs_f64();
        let tps = a.tokens as f64 / decode_seconds.max(1e-9);
        out.push(DecodeBench {
            device: kind,
            quant_policy: flag,
            load_seconds,
            prompt_tokens: a.prompt_tokens,
            prefill_seconds,
            decode_tokens: a.tokens,
            decode_seconds,
            decode_tokens_per_second: tps,
            weight_bytes_per_token: bytes,
            weight_gbps: bytes * tps / 1e9,
            int4_linears: int4,
            dense_linears: dense,
            kv_blocks_capacity: cache.capacity,
        });
    }
    Ok(out)
}

pub fn bench_decode(a: BenchDecodeArgs, json: bool) -> Result<()> {
    let kind = device::resolve(a.device)?;
    let model = a.revision.resolve(&a.model)?;
    let runs = crate::with_backend!(kind, decode_on(&model, &a, kind))?;
    if json {
        crate::cli::print_json(&json!(runs));
        return Ok(());
    }
    if let Some(r) = runs.first() {
        println!(
            "{kind:?}: load {:.1}s; {} INT4 + {} dense linears; {:.2} GB of weights read per token",
            r.load_seconds,
            r.int4_linears,
            r.dense_linears,
            r.weight_bytes_per_token / 1e9
        );
    }
    for r in &runs {
        println!(
            "  quant_policy {}: prefill {} tokens in {:.3}s; decode {} tokens at {:.1} tokens/s ({:.2} ms/token, {:.1} GB/s of weights); KV capacity {} blocks",
            r.quant_policy,
            r.prompt_tokens,
            r.prefill_seconds,
            r.decode_tokens,
            r.decode_tokens_per_second,
            1e3 / r.decode_tokens_per_second,
            r.weight_gbps,
            r.kv_blocks_capacity
        );
    }
    Ok(())
}
