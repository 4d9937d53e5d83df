//! Text generation: prompt through the KV cache, then sampling (greedy, or temperature + top-p
//! with a seed), stopping at EOS or after `max_new_tokens`; tokens are streamed to a callback.

use crate::engine::kv_cache::{QuantPolicy, SeqState};
use crate::engine::llama::Llama;
use crate::error::{Error, Result};
use crate::model::synth::SplitMix;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens before top-p (0 = no limit).
    pub top_k: usize,
    pub seed: u64,
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::usage(format!("--temperature {}: must be >= 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::usage(format!("--top-p {}: must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// Pick the next token. Greedy takes the first maximum; sampling draws from the smallest set of
/// most likely tokens (at most `top_k` of them when set) whose probability reaches `top_p`,
/// renormalised (ties broken by id).
pub fn sample(logits: &[f32], cfg: &SamplerConfig, rng: &mut SplitMix) -> u32 {
    if cfg.temperature == 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = cfg.temperature as f64;
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - m) / t).exp())).collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if cfg.top_k > 0 {
        p.truncate(cfg.top_k);
    }
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, w) in &p {
        kept += 1;
        mass += w / z;
        if mass >= cfg.top_p as f64 {
            break;
        }
    }
    let p = &p[..kept];
    let total: f64 = p.iter().map(|x| x.1).sum();
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (id, w) in p {
        acc += w;
        if u < acc {
            return *id;
        }
    }
    p[kept - 1].0
}

#[derive(Debug, Clone, Serialize)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub decode_tokens_per_second: f64,
    pub stopped_at_eos: bool,
    pub kv_blocks_used: usize,
    pub kv_blocks_capacity: usize,
}

/// Generate after `prompt`. `on_token` receives every new token id.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    sampler: &SamplerConfig,
    policy: QuantPolicy,
    cache_max_entry_count: f64,
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, GenStats)> {
    sampler.validate()?;
    if prompt.is_empty() {
        return Err(Error::usage("the prompt is empty after tokenization"));
    }
    let mut cache = model.new_cache(policy, cache_max_entry_count, prompt.len() + max_new_tokens)?;
    let mut seq = SeqState::new(&model.rope, prompt.len());
    let t0 = Instant::now();
    let mut logits = model.prefill(&mut cache, &mut seq, prompt)?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let mut rng = SplitMix(sampler.seed);
    let mut out = Vec::new();
    let mut stopped_at_eos = false;
    let t1 = Instant::now();
    while out.len() < max_new_tokens {
        let next = sample(&logits, sampler, &mut rng);
        if eos.contains(&next) {
            stopped_at_eos = true;
            break;
        }
        out.push(next);
        on_token(next);
        if out.len() == max_new_tokens {
            break;
        }
        logits = model.decode_step(&mut cache, &mut seq, next)?;
    }
    let decode_seconds = t1.elapsed().as_secs_f64();
    let stats = GenStats {
        prompt_tokens: prompt.len(),
        generated_tokens: out.len(),
        prefill_seconds,
        decode_seconds,
        decode_tokens_per_second: out.len() as f64 / decode_seconds.max(1e-9),
        stopped_at_eos,
        kv_blocks_used: cache.blocks_in_use(),
        kv_blocks_capacity: cache.capacity,
    };
    Ok((out, stats))
}

/// Render a Hugging Face chat template (Jinja) for one user turn, with the generation prompt.
pub fn apply_chat_template(template: &str, system: Option<&str>, user: &str, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| Error::input("chat_template", format!("cannot parse: {e}")))?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    let ctx = serde_json::json!({"messages": messages, "add_generation_prompt": true, "bos_token": bos, "eos_token": eos});
    env.get_template("chat")
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::input("chat_template", format!("cannot render: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 3.0];
        let g = SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
        assert_eq!(sample(&logits, &g, &mut SplitMix(1)), 1);
        // top_p tiny: only the most likely token (lowest id among ties) can be drawn.
        let s = SamplerConfig { temperature: 1.0, top_p: 1e-6, top_k: 0, seed: 0 };
        for seed in 0..20 {
            assert_eq!(sample(&logits, &s, &mut SplitMix(seed)), 1);
        }
        // Same seed, same draws.
        let s = SamplerConfig { temperature: 1.0, top_p: 0.9, top_k: 0, seed: 0 };
        let a: Vec<u32> = { let mut r = SplitMix(7); (0..50).map(|_| sample(&logits, &s, &mut r)).collect() };
        let b: Vec<u32> = { let mut r = SplitMix(7); (0..50).map(|_| sample(&logits, &s, &mut r)).collect() };
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t != 0), "token 0 is outside the 0.9 nucleus");
        // top_k 1 is greedy whatever the temperature (ties: lowest id).
        let k1 = SamplerConfig { temperature: 5.0, top_p: 1.0, top_k: 1, seed: 0 };
        for seed in 0..20 {
            assert_eq!(sample(&logits, &k1, &mut SplitMix(seed)), 1);
        }
        // top_k 2 never draws outside the two best tokens (1 and 3).
        let k2 = SamplerConfig { temperature: 5.0, top_p: 1.0, top_k: 2, seed: 0 };
        let mut r = SplitMix(3);
        let draws: Vec<u32> = (0..200).map(|_| sample(&logits, &k2, &mut r)).collect();
        assert!(draws.iter().all(|&t| t == 1 || t == 3) && draws.contains(&1) && draws.contains(&3));
    }

    #[test]
    fn chat_template_renders() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let s = apply_chat_template(t, None, "Hi", "", "").unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}
