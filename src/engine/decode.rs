//! Token-by-token decoding over the block KV cache (the serving path), and perplexity measured
//! through it. Projections run on the model's backend; the attention over the cache runs on the
//! host (the cache is host memory in this implementation).

use crate::engine::kv_cache::{host_free_bytes, CacheLayout, KvCache, QuantPolicy, SeqState};
use crate::engine::llama::{download, rms_norm, upload, Llama};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;

/// Rotate-half RoPE of one head vector at position `p` with a sequence's frequencies.
fn rope_at(x: &mut [f32], p: usize, inv_freq: &[f64], scale: f64) {
    let half = x.len() / 2;
    for j in 0..half {
        let a = p as f64 * inv_freq[j];
        let (c, s) = ((a.cos() * scale) as f32, (a.sin() * scale) as f32);
        let (x0, x1) = (x[j], x[j + half]);
        x[j] = x0 * c - x1 * s;
        x[j + half] = x1 * c + x0 * s;
    }
}

impl<B: Backend> Llama<B> {
    /// Make the prefill path read K/V as a cache with this policy would return them.
    pub fn set_kv_policy(&mut self, p: QuantPolicy) {
        for l in &mut self.layers {
            l.attn.kv_bits = p.bits();
        }
    }

    /// A KV cache for this model sized by TurboMind's rule from the host's free memory.
    pub fn new_cache(&self, policy: QuantPolicy, cache_max_entry_count: f64) -> Result<KvCache> {
        let c = &self.config;
        let layout = CacheLayout { layers: c.num_hidden_layers, kv_heads: c.num_key_value_heads, head_dim: c.head_dim, policy };
        let blocks = layout.blocks_for(host_free_bytes(), cache_max_entry_count)?;
        if blocks == 0 {
            return Err(Error::usage(format!(
                "--cache-max-entry-count {cache_max_entry_count}: leaves no room for a single KV block of {} bytes",
                layout.block_bytes()
            )));
        }
        Ok(KvCache::new(layout, blocks))
    }

    /// Run one token through the model, appending its K/V to the cache; returns logits `[V]`.
    pub fn decode_step(&self, cache: &mut KvCache, seq: &mut SeqState, token: u32) -> Result<Vec<f32>> {
        let c = &self.config;
        if token as usize >= c.vocab_size {
            return Err(Error::input("tokens", format!("token id {token} is outside the vocabulary ({})", c.vocab_size)));
        }
        cache.reserve(seq)?;
        let pos = seq.len;
        seq.len += 1;
        let (hq, hkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let g = hq / hkv;
        let scale = 1.0 / (d as f32).sqrt();
        let mut x = self.embed(&[token], 1, 1);
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        for (li, l) in self.layers.iter().enumerate() {
            let n1 = rms_norm(x.clone(), &l.attn_norm, l.eps);
            let mut q = download(l.attn.q.forward(n1.clone()));
            let mut k = download(l.attn.k.forward(n1.clone()));
            let v = download(l.attn.v.forward(n1));
            for h in 0..hq {
                rope_at(&mut q[h * d..(h + 1) * d], pos, &seq.inv_freq, seq.rope_scale);
            }
            for h in 0..hkv {
                rope_at(&mut k[h * d..(h + 1) * d], pos, &seq.inv_freq, seq.rope_scale);
            }
            cache.write(seq, li, pos, &k, &v);
            let mut ctx = vec![0f32; hq * d];
            let n = pos + 1;
            let mut scores = vec![0f32; n];
            for kv in 0..hkv {
                cache.read(seq, li, kv, n, &mut kbuf, &mut vbuf);
                for h in kv * g..(kv + 1) * g {
                    let qh = &q[h * d..(h + 1) * d];
                    let mut m = f32::NEG_INFINITY;
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = qh.iter().zip(&kbuf[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum::<f32>() * scale;
                        m = m.max(*s);
                    }
                    let mut z = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - m).exp();
                        z += *s;
                    }
                    let out = &mut ctx[h * d..(h + 1) * d];
                    for (j, &p) in scores.iter().enumerate() {
                        let w = p / z;
                        for (o, &vv) in out.iter_mut().zip(&vbuf[j * d..(j + 1) * d]) {
                            *o += w * vv;
                        }
                    }
                }
            }
            let ctx = upload(ctx, [1, 1, hq * d], &self.device);
            let h = x + l.attn.o.forward(ctx);
            x = h.clone() + l.mlp.forward(rms_norm(h, &l.mlp_norm, l.eps));
        }
        let x = rms_norm(x, &self.norm, c.rms_norm_eps).reshape([1, c.hidden_size]);
        Ok(download(x.matmul(self.lm_head.clone())))
    }

    /// Sum of `-log p` over a window's `T-1` targets, computed token by token through the cache.
    /// The whole window is the sequence's prompt (it fixes the RoPE base, as prefill does).
    pub fn decode_window_nll(&self, window: &[u32], policy: QuantPolicy) -> Result<f64> {
        let layout = CacheLayout {
            layers: self.config.num_hidden_layers,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            policy,
        };
        let mut cache = KvCache::new(layout, window.len().div_ceil(crate::engine::kv_cache::BLOCK_LEN));
        let mut seq = SeqState::new(&self.rope, window.len());
        let mut nll = 0f64;
        for (i, &t) in window.iter().enumerate() {
            let logits = self.decode_step(&mut cache, &mut seq, t)?;
            if let Some(&next) = window.get(i + 1) {
                let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
                nll -= logits[next as usize] as f64 - m - z.ln();
            }
        }
        Ok(nll)
    }
}
