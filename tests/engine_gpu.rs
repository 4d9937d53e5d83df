//! The engine on wgpu (the CubeCL kernels; lavapipe where there is no GPU) against the CPU path:
//! W4A16 linears vs dequantized f32 weights, decode over the device KV cache vs prefill on the
//! CPU for every quant policy, greedy generation, loading a quantized checkpoint.
//!
//! These tests FAIL when no Vulkan device exists (install `mesa-vulkan-drivers`); they are never
//! skipped.

use awqc::engine::device::{CpuBackend, WgpuBackend};
use awqc::engine::generate::{generate, SamplerConfig};
use awqc::engine::kv_cache::QuantPolicy;
use awqc::engine::llama::{download, Llama, LinearWeight};
use awqc::engine::ppl::window_nll;
use awqc::model::arch::LinearKind;
use awqc::model::config::{Arch, RopeScaling};
use awqc::model::synth;
use awqc::quant::int4::{QuantParams, QuantizedLinear, ZeroPoint};
use awqc::quant::qmodel::{QuantizedLayer, QuantizedModel};

/// Fails the test (with the fix) when wgpu has no adapter.
fn require_vulkan() {
    if let Err(e) = awqc_kernels::device::wgpu_client() {
        panic!("{e}: these tests need a Vulkan device (apt-get install mesa-vulkan-drivers)");
    }
}

/// A small Qwen2-shaped model (q/k/v biases, GQA 4/2, head_dim 32), RTN-quantized in memory
/// with group 32. Every linear's shape suits the W4A16 kernels (N % 8 == 0, K % 32 == 0).
fn quantized_model(rope: RopeScaling, max_pos: usize) -> QuantizedModel {
    quantized_model_with(rope, max_pos, ZeroPoint::Int)
}

fn quantized_model_with(rope: RopeScaling, max_pos: usize, zero: ZeroPoint) -> QuantizedModel {
    let mut c = synth::config(Arch::Qwen2, 128, 192, 2, 4, 2, 72, false);
    c.rope_scaling = rope;
    c.max_position_embeddings = max_pos;
    let p = QuantParams::new(4, 32).unwrap().with_zero(zero);
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let w = synth::layer(&c, 7, i);
            let q = |k: LinearKind| {
                let l = w.linear(k);
                QuantizedLinear::quantize(&format!("layer {i} {}", k.short()), &l.w, l.b.clone(), p).unwrap()
            };
            QuantizedLayer {
                attn_norm: w.attn_norm.clone(),
                mlp_norm: w.mlp_norm.clone(),
                q: q(LinearKind::Q),
                k: q(LinearKind::K),
                v: q(LinearKind::V),
                o: q(LinearKind::O),
                gate: q(LinearKind::Gate),
                up: q(LinearKind::Up),
                down: q(LinearKind::Down),
            }
        })
        .collect();
    QuantizedModel { config: c.clone(), params: p, globals: synth::globals(&c, 7), layers }
}

fn cpu_model(qm: &QuantizedModel) -> Llama<CpuBackend> {
    Llama::from_quantized(&qm.config, &qm.globals, |i| Ok(qm.layers[i].clone()), &Default::default()).unwrap()
}

fn gpu_model(qm: &QuantizedModel) -> Llama<WgpuBackend> {
    require_vulkan();
    let m = Llama::<WgpuBackend>::from_quantized(&qm.config, &qm.globals, |i| Ok(qm.layers[i].clone()), &Default::default()).unwrap();
    // The point of these tests: every projection runs the W4A16 kernels, none fell back to dense.
    for l in &m.layers {
        for lin in [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.o, &l.mlp.gate, &l.mlp.up, &l.mlp.down] {
            assert!(matches!(lin.w, LinearWeight::Int4(_)), "a projection was not packed for the W4A16 kernels");
        }
    }
    m
}

fn tokens(n: usize, mul: usize, add: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * mul + add) % vocab) as u32).collect()
}

/// max |a - b| / max |b|, in f64.
fn rel_max(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max);
    let den = b.iter().map(|&y| (y as f64).abs()).fold(0.0, f64::max);
    num / den
}

#[test]
fn w4a16_forward_on_wgpu_equals_cpu_dequantized() {
    // Integer zero points, and fp16 ones (`--zero-point float`: the repack fuses (s, -z·s) from
    // the float zero itself).
    for zero in [ZeroPoint::Int, ZeroPoint::Float] {
        w4a16_forward_equals_cpu(quantized_model_with(RopeScaling::None, 4096, zero));
    }
}

fn w4a16_forward_equals_cpu(qm: QuantizedModel) {
    assert_eq!(qm.layers[0].q.float_zeros.is_some(), qm.params.zero == ZeroPoint::Float);
    let (cpu, gpu) = (cpu_model(&qm), gpu_model(&qm));
    // Two sequences in one batch (the kernels pack them along T with their own positions).
    let (b, t) = (2, 24);
    let ids = [tokens(t, 5, 3, 72), tokens(t, 11, 1, 72)].concat();
    let want = download(cpu.forward(&ids, b, t));
    let got = download(gpu.forward(&ids, b, t));
    awqc::engine::gpu::check().unwrap();
    let rel = rel_max(&got, &want);
    // f32 everywhere; the kernels only sum in another order: observed ~1e-6.
    assert!(rel < 1e-4, "logits: max rel diff {rel:e}");

    for window in [tokens(40, 7, 2, 72), tokens(17, 13, 5, 72)] {
        let (c, g) = (window_nll(&cpu, &window).unwrap(), window_nll(&gpu, &window).unwrap());
        let rel = (c - g).abs() / c;
        assert!(rel < 1e-4, "window NLL: cpu {c} vs wgpu {g} (rel {rel:e})");
    }
}

#[test]
fn decode_on_wgpu_equals_prefill_on_cpu_for_every_policy() {
    // 70 tokens cross a 64-token block; dynamic NTK (70 > 48) gives the sequence its own base.
    let window = tokens(70, 17, 5, 72);
    for rope in [RopeScaling::None, RopeScaling::Dynamic { factor: 2.0 }] {
        let qm = quantized_model(rope.clone(), 48);
        let (mut cpu, mut gpu) = (cpu_model(&qm), gpu_model(&qm));
        let mut fp = 0.0;
        for policy in [QuantPolicy::None, QuantPolicy::Int8, QuantPolicy::Int4] {
            cpu.set_kv_policy(policy);
            gpu.set_kv_policy(policy);
            let prefill_cpu = window_nll(&cpu, &window).unwrap();
            let prefill_gpu = window_nll(&gpu, &window).unwrap();
            let decode_gpu = gpu.decode_window_nll(&window, policy).unwrap();
            // Same device, same quantizer (kv_append and the prefill round trip share it).
            let rel = (prefill_gpu - decode_gpu).abs() / prefill_gpu;
            assert!(rel < 1e-4, "{rope:?} {policy:?}: wgpu prefill {prefill_gpu} vs wgpu decode {decode_gpu} (rel {rel:e})");
            // Against the CPU: 1e-3 for an f32 cache; an int cache may round a code differently
            // (host and kernel compute the scale as (hi-lo)/qmax vs (hi-lo)*(1/qmax)), a looser bound.
            let bound = match policy {
                QuantPolicy::None => 1e-3,
                QuantPolicy::Int8 => 2e-3,
                QuantPolicy::Int4 => 1e-2,
            };
            let rel = (prefill_cpu - decode_gpu).abs() / prefill_cpu;
            assert!(rel < bound, "{rope:?} {policy:?}: cpu prefill {prefill_cpu} vs wgpu decode {decode_gpu} (rel {rel:e} >= {bound})");
            match policy {
                QuantPolicy::None => fp = decode_gpu,
                // The policy really reached the device cache: int4 moves the NLL off the fp value.
                QuantPolicy::Int4 => assert!((decode_gpu - fp).abs() > 1e-4 * fp, "{rope:?}: int4 KV NLL {decode_gpu} equals fp {fp}"),
                QuantPolicy::Int8 => {}
            }
        }
    }
}

#[test]
fn greedy_generation_matches_cpu() {
    let qm = quantized_model(RopeScaling::None, 4096);
    let (cpu, gpu) = (cpu_model(&qm), gpu_model(&qm));
    let prompt = tokens(9, 7, 4, 72);
    let greedy = SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
    for policy in [QuantPolicy::None, QuantPolicy::Int8] {
        let (want, _) = generate(&cpu, &prompt, 12, &[], &greedy, policy, 0.5, |_| {}).unwrap();
        let mut streamed = Vec::new();
        let (got, stats) = generate(&gpu, &prompt, 12, &[], &greedy, policy, 0.5, |t| streamed.push(t)).unwrap();
        assert_eq!(got, want, "{policy:?}: wgpu and CPU greedy tokens differ");
        assert_eq!(streamed, got);
        // The device cache holds the prompt and the generated tokens (21 positions: one block).
        assert_eq!(stats.kv_blocks_used, 1);
        assert!(stats.kv_blocks_capacity >= 1);
    }
}

#[test]
fn awq_checkpoint_loads_packed_on_wgpu() {
    use awqc::engine::load::{load_model, LoadOptions};
    use awqc::quant::qmodel::QuantSink;
    require_vulkan();
    let qm = quantized_model(RopeScaling::None, 4096);
    let dir = std::env::temp_dir().join(format!("awqc-engine-gpu-{}", std::process::id()));
    let out = dir.join("awq");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let w: Box<dyn QuantSink> = Box::new(awqc::formats::awq_gemm::AwqWriter::new(&out, true));
    qm.write_to(w).unwrap();
    let cpu = load_model::<CpuBackend>(&out, &LoadOptions::default(), &Default::default()).unwrap().model;
    let gpu = load_model::<WgpuBackend>(&out, &LoadOptions::default(), &Default::default()).unwrap().model;
    assert!(gpu.layers.iter().all(|l| matches!(l.mlp.down.w, LinearWeight::Int4(_))));
    assert!(cpu.layers.iter().all(|l| matches!(l.mlp.down.w, LinearWeight::Dense(_))));
    let ids = tokens(20, 3, 1, 72);
    let rel = rel_max(&download(gpu.forward(&ids, 1, 20)), &download(cpu.forward(&ids, 1, 20)));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(rel < 1e-4, "loaded checkpoint: max rel diff {rel:e}");
}
