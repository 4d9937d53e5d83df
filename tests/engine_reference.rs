//! The burn forward pass against an independent f64 reference written here with plain loops.
//! Tolerance: max |logit - ref| / max |ref| < 1e-4.

use awqc::engine::device::CpuBackend;
use awqc::engine::llama::Llama;
use awqc::model::arch::LayerWeights;
use awqc::model::config::{Arch, ModelConfig};
use awqc::model::synth;

#[path = "support/reference.rs"]
mod reference;
use reference::reference_logits;

fn check(c: ModelConfig, seed: u64) {
    let g = synth::globals(&c, seed);
    let layers: Vec<LayerWeights> = (0..c.num_hidden_layers).map(|i| synth::layer(&c, seed, i)).collect();
    let dev = Default::default();
    let model = Llama::<CpuBackend>::from_host(&c, &g, |i| Ok(layers[i].clone()), &dev).unwrap();
    let ids: Vec<u32> = (0..11).map(|i| ((i * 7 + 3) % c.vocab_size) as u32).collect();
    let got = awqc::engine::llama::download(model.forward(&ids, 1, ids.len()));
    let want = reference_logits(&c, &g, &layers, &ids);
    let max_ref = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let max_err = want
        .iter()
        .flatten()
        .zip(&got)
        .fold(0f64, |m, (w, &g)| m.max((w - g as f64).abs()));
    let rel = max_err / max_ref;
    assert!(rel < 1e-4, "{:?}: relative logit error {rel:e} (max err {max_err:e}, max |ref| {max_ref:e})", c.arch);
}

#[test]
fn llama_gqa_tied_matches_f64_reference() {
    // 4 query heads over 2 KV heads, tied embeddings.
    check(synth::config(Arch::Llama, 64, 96, 2, 4, 2, 50, true), 1);
}

#[test]
fn qwen2_biases_untied_matches_f64_reference() {
    let c = synth::config(Arch::Qwen2, 64, 80, 2, 4, 1, 40, false);
    assert!(c.attention_bias);
    check(c, 2);
}

#[test]
fn batched_windows_equal_single_windows() {
    // Two sequences in one batch give the same logits as each alone (no cross-talk in attention).
    let c = synth::config(Arch::Llama, 64, 96, 1, 4, 2, 50, true);
    let g = synth::globals(&c, 3);
    let l = synth::layer(&c, 3, 0);
    let m = Llama::<CpuBackend>::from_host(&c, &g, |_| Ok(l.clone()), &Default::default()).unwrap();
    let a: Vec<u32> = (0..8).map(|i| (i * 5 % 50) as u32).collect();
    let b: Vec<u32> = (0..8).map(|i| (i * 11 % 50 + 1) as u32).collect();
    let both: Vec<u32> = a.iter().chain(&b).cloned().collect();
    let lb = awqc::engine::llama::download(m.forward(&both, 2, 8));
    let la = awqc::engine::llama::download(m.forward(&a, 1, 8));
    let lbb = awqc::engine::llama::download(m.forward(&b, 1, 8));
    let joined: Vec<f32> = la.into_iter().chain(lbb).collect();
    let err = lb.iter().zip(&joined).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err < 1e-4, "batch cross-talk: {err}");
}

#[test]
fn host_attention_equals_generic_attention() {
    use awqc::engine::llama::{causal_mask, RopeTables};
    use awqc::engine::rope::Rope;
    let c = synth::config(Arch::Qwen2, 64, 96, 1, 8, 2, 50, false);
    let l = synth::layer(&c, 4, 0);
    let dev = Default::default();
    let layer = awqc::engine::llama::DecoderLayer::<CpuBackend>::from_host(&l, &c, &dev);
    let (b, t) = (2, 13);
    let mut r = synth::SplitMix(8);
    let x = awqc::engine::llama::upload::<CpuBackend, 3>((0..b * t * 64).map(|_| r.normal()).collect(), [b, t, 64], &dev);
    let rope = RopeTables::new(&Rope::from_config(&c), t, 0, t, &dev);
    let mask = causal_mask::<CpuBackend>(4, t, &dev);
    let (a, ca) = layer.attn.forward_with_o_input(x.clone(), &rope, &mask);
    let (g, cg) = layer.attn.forward_generic(x, &rope, &mask);
    for (p, q) in [(a, g), (ca, cg)] {
        let (p, q) = (awqc::engine::llama::download(p), awqc::engine::llama::download(q));
        let err = p.iter().zip(&q).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err < 1e-5, "host vs generic attention differ by {err}");
    }
}

#[test]
fn host_mlp_equals_generic_mlp() {
    let c = synth::config(Arch::Llama, 64, 96, 1, 4, 2, 50, true);
    let l = synth::layer(&c, 5, 0);
    let dev = Default::default();
    let layer = awqc::engine::llama::DecoderLayer::<CpuBackend>::from_host(&l, &c, &dev);
    let mut r = synth::SplitMix(9);
    let x = awqc::engine::llama::upload::<CpuBackend, 3>((0..2 * 7 * 64).map(|_| r.normal() * 3.0).collect(), [2, 7, 64], &dev);
    let host = awqc::engine::llama::download(layer.mlp.forward(x.clone()));
    let m = &layer.mlp;
    let generic = awqc::engine::llama::download(m.down.forward(burn::tensor::activation::silu(m.gate.forward(x.clone())) * m.up.forward(x)));
    let err = host.iter().zip(&generic).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
    assert!(err < 1e-5, "host vs generic MLP differ by {err}");
}
