//! The decode path over the block KV cache against the prefill path, for every quant policy.

use awqc::engine::device::CpuBackend;
use awqc::engine::kv_cache::QuantPolicy;
use awqc::engine::llama::Llama;
use awqc::engine::ppl::window_nll;
use awqc::model::config::{Arch, RopeScaling};
use awqc::model::synth;

fn model(rope: RopeScaling) -> Llama<CpuBackend> {
    let mut c = synth::config(Arch::Qwen2, 64, 96, 2, 4, 2, 60, false);
    c.rope_scaling = rope;
    c.max_position_embeddings = 48;
    let g = synth::globals(&c, 12);
    let layers: Vec<_> = (0..2).map(|i| synth::layer(&c, 12, i)).collect();
    Llama::from_host(&c, &g, |i| Ok(layers[i].clone()), &Default::default()).unwrap()
}

#[test]
fn decode_path_equals_prefill_path_for_every_policy() {
    // 70 tokens: crosses a 64-token block boundary; with dynamic NTK the base changes (70 > 48).
    let window: Vec<u32> = (0..70).map(|i| ((i * 17 + 5) % 60) as u32).collect();
    for rope in [RopeScaling::None, RopeScaling::Dynamic { factor: 2.0 }] {
        for policy in [QuantPolicy::None, QuantPolicy::Int8, QuantPolicy::Int4] {
            let mut m = model(rope.clone());
            m.set_kv_policy(policy);
            let prefill = window_nll(&m, &window).unwrap();
            let decode = m.decode_window_nll(&window, policy).unwrap();
            let rel = (prefill - decode).abs() / prefill;
            assert!(rel < 1e-4, "{rope:?} {policy:?}: prefill {prefill} vs decode {decode} (rel {rel:e})");
        }
    }
}

#[test]
fn kv_quantization_costs_more_at_fewer_bits() {
    let window: Vec<u32> = (0..40).map(|i| ((i * 7 + 1) % 60) as u32).collect();
    let mut m = model(RopeScaling::None);
    let base = window_nll(&m, &window).unwrap();
    m.set_kv_policy(QuantPolicy::Int8);
    let i8 = window_nll(&m, &window).unwrap();
    m.set_kv_policy(QuantPolicy::Int4);
    let i4 = window_nll(&m, &window).unwrap();
    assert!((i8 - base).abs() < (i4 - base).abs(), "int8 {i8} should be closer to {base} than int4 {i4}");
    assert!(i4 != base);
}
