//! Random-weight models with a real architecture, for tests and benchmarks (`awqc synth`).
//! Deterministic: weights are a pure function of (seed, tensor name).

use crate::model::arch::{GlobalWeights, LayerWeights, Linear, LinearKind};
use crate::model::config::{Arch, ModelConfig};
use crate::tensor::HostTensor;
use serde_json::json;

/// SplitMix64: tiny, fast, good enough for test weights, identical on every platform.
#[derive(Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn from_name(seed: u64, name: &str) -> Self {
        // FNV-1a of the name mixed with the seed: each tensor gets its own stream.
        let mut h = 0xcbf29ce484222325u64 ^ seed;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        SplitMix(h)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Approximately standard normal (sum of 4 uniforms, variance-corrected).
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        s * (3.0f32 / 4.0).sqrt()
    }
}

/// A config for a random model of the given shape.
pub fn config(
    arch: Arch,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    tied: bool,
) -> ModelConfig {
    let v = json!({
        "architectures": [arch.hf_class()], "model_type": arch.model_type(),
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
    });
    ModelConfig::from_json(&v, "synth").expect("synthetic config is valid")
}

fn tensor(seed: u64, name: &str, shape: &[usize], std: f32) -> HostTensor {
    let mut r = SplitMix::from_name(seed, name);
    // A few channels get large magnitudes, like the activation outliers of real models.
    HostTensor::from_fn(shape, |_| r.normal() * std)
}

/// Random norm weights around 1, with a few large channels that create activation outliers.
fn norm(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let mut r = SplitMix::from_name(seed, name);
    (0..n).map(|i| 1.0 + 0.2 * r.uniform() + if i % 37 == 5 { 6.0 } else { 0.0 }).collect()
}

/// Decoder layer `i` of a random model (std 1/sqrt(in_features) so activations stay O(1)).
pub fn layer(c: &ModelConfig, seed: u64, i: usize) -> LayerWeights {
    let lin = |k: LinearKind| {
        let (n, kk) = k.shape(c);
        let name = format!("layers.{i}.{}", k.short());
        let w = tensor(seed, &name, &[n, kk], 1.0 / (kk as f32).sqrt());
        let b = k.has_bias(c).then(|| tensor(seed, &format!("{name}.bias"), &[n], 0.1).data);
        Linear { w, b }
    };
    LayerWeights {
        attn_norm: norm(seed, &format!("layers.{i}.attn_norm"), c.hidden_size),
        q: lin(LinearKind::Q),
        k: lin(LinearKind::K),
        v: lin(LinearKind::V),
        o: lin(LinearKind::O),
        mlp_norm: norm(seed, &format!("layers.{i}.mlp_norm"), c.hidden_size),
        gate: lin(LinearKind::Gate),
        up: lin(LinearKind::Up),
        down: lin(LinearKind::Down),
    }
}

pub fn globals(c: &ModelConfig, seed: u64) -> GlobalWeights {
    let (v, h) = (c.vocab_size, c.hidden_size);
    GlobalWeights {
        embed: tensor(seed, "embed", &[v, h], 1.0),
        norm: norm(seed, "norm", h),
        lm_head: (!c.tie_word_embeddings).then(|| tensor(seed, "lm_head", &[v, h], 1.0 / (h as f32).sqrt())),
    }
}
