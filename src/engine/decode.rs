//! Token-by-token decoding over the block KV cache (the serving path), prefill of a prompt into
//! it, and perplexity measured through it.
//!
//! - CPU: projections run on burn, the attention over the cache on the host (host cache).
//! - wgpu / CUDA: the cache is the kernels' block cache in device memory; every step is
//!   RMSNorm, projections (W4A16 for INT4 weights), RoPE, `kv_append`, attention (decode kernel
//!   over the cache, or the causal prefill kernel for a whole prompt), SiLU·mul, all on device;
//!   only the logits come back.

use crate::engine::gpu::{self, DeviceKv, RopeArgs};
use crate::engine::host::{rope_at, StepItem};
use crate::engine::kv_cache::{host_free_bytes, CacheLayout, KvCache, QuantPolicy, SeqState, BLOCK_LEN};
use crate::engine::llama::{download, rms_norm, upload, Llama};
use crate::error::{Error, Result};
use awqc_kernels::kv_cache::BlockTables;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

impl<B: Backend> Llama<B> {
    /// Make the prefill path read K/V as a cache with this policy would return them.
    pub fn set_kv_policy(&mut self, p: QuantPolicy) {
        self.host_kv_bits = p.bits();
        for l in &mut self.layers {
            l.attn.kv_bits = p.bits();
        }
    }

    fn cache_layout(&self, policy: QuantPolicy) -> CacheLayout {
        let c = &self.config;
        CacheLayout { layers: c.num_hidden_layers, kv_heads: c.num_key_value_heads, head_dim: c.head_dim, policy }
    }

    /// A KV cache for this model with a capacity from TurboMind's rule (a fraction of the free
    /// memory after the weights: the host's on the CPU, the device's on the GPU backends, see
    /// `gpu::device_free_bytes`). Blocks are allocated as needed on the host; on the device the
    /// cache is allocated up front, for at most `max_tokens` positions within that capacity.
    pub fn new_cache(&self, policy: QuantPolicy, cache_max_entry_count: f64, max_tokens: usize) -> Result<KvCache> {
        let layout = self.cache_layout(policy);
        let free = if gpu::is_kernel_backend::<B>() { gpu::device_free_bytes::<B>(&self.device)?.0 } else { host_free_bytes() };
        let blocks = layout.blocks_for(free, cache_max_entry_count)?;
        if blocks == 0 {
            return Err(Error::usage(format!(
                "--cache-max-entry-count {cache_max_entry_count}: leaves no room for a single KV block of {} bytes",
                layout.block_bytes()
            )));
        }
        if gpu::is_kernel_backend::<B>() {
            let alloc = blocks.min(max_tokens.div_ceil(BLOCK_LEN).max(1));
            return Ok(KvCache::on_device(layout, blocks, gpu::device_kv::<B>(&self.device, layout, alloc)?));
        }
        Ok(KvCache::new(layout, blocks))
    }

    /// A cache of exactly `blocks` blocks (tests, perplexity through the cache).
    pub fn cache_with_blocks(&self, policy: QuantPolicy, blocks: usize) -> Result<KvCache> {
        let layout = self.cache_layout(policy);
        if gpu::is_kernel_backend::<B>() {
            return Ok(KvCache::on_device(layout, blocks, gpu::device_kv::<B>(&self.device, layout, blocks)?));
        }
        Ok(KvCache::new(layout, blocks))
    }

    fn check_token(&self, token: u32) -> Result<()> {
        let v = self.config.vocab_size;
        if token as usize >= v {
            return Err(Error::input("tokens", format!("token id {token} is outside the vocabulary ({v})")));
        }
        Ok(())
    }

    /// Run one token through the model, appending its K/V to the cache; returns logits `[V]`.
    pub fn decode_step(&self, cache: &mut KvCache, seq: &mut SeqState, token: u32) -> Result<Vec<f32>> {
        self.check_token(token)?;
        if cache.is_device() {
            return self.decode_step_device(cache, seq, token);
        }
        if let Some(host) = &self.host {
            return Ok(host.step(cache, &mut [StepItem { seq, tokens: &[token] }])?.remove(0));
        }
        let c = &self.config;
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
        let logits = download(x.matmul(self.lm_head.clone()));
        gpu::check()?;
        Ok(logits)
    }

    /// Run a prompt through the model into the cache; returns the logits `[V]` after its last
    /// token. On the GPU backends a fresh sequence is processed in one pass (causal prefill
    /// attention, K/V appended for every token); otherwise token by token.
    pub fn prefill(&self, cache: &mut KvCache, seq: &mut SeqState, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::usage("the prompt is empty after tokenization"));
        }
        if let (Some(host), false) = (&self.host, cache.is_device()) {
            return Ok(host.step(cache, &mut [StepItem { seq, tokens }])?.remove(0));
        }
        if !cache.is_device() || seq.len != 0 || tokens.len() == 1 {
            let mut logits = Vec::new();
            for &t in tokens {
                logits = self.decode_step(cache, seq, t)?;
            }
            return Ok(logits);
        }
        for &t in tokens {
            self.check_token(t)?;
        }
        let n = tokens.len();
        let mut slots = Vec::with_capacity(n);
        for pos in 0..n {
            cache.reserve(seq)?;
            seq.len += 1;
            slots.push(slot_of(seq, pos)?);
        }
        let positions: Vec<u32> = (0..n as u32).collect();
        let rope = gpu::rope_args::<B>(&self.device, &seq.inv_freq, seq.rope_scale, &positions)?;
        let bits = cache.layout.policy.bits();
        let kv = device_of(cache)?;
        let x = self.layers_on_device(self.embed(tokens, 1, n), kv, &rope, &slots, Attend::Prefill(bits))?;
        let h = self.config.hidden_size;
        self.logits_of_last(x.slice([0..1, n - 1..n, 0..h]))
    }

    /// The batched step (continuous batching): every item's new tokens (a decode token or a
    /// prompt chunk) appended to its sequence; returns the logits `[V]` after each item's last
    /// token. On the CPU this is one pass over the weights for all items (`HostLlama::step`);
    /// the GPU backends still run the items one after another (prefill / decode per sequence).
    pub fn step(&self, cache: &mut KvCache, items: &mut [StepItem]) -> Result<Vec<Vec<f32>>> {
        if let (Some(host), false) = (&self.host, cache.is_device()) {
            return host.step(cache, items);
        }
        // `prefill` takes a fresh prompt in one pass and continues a sequence token by token.
        items.iter_mut().map(|it| self.prefill(cache, it.seq, it.tokens)).collect()
    }

    /// [`Llama::decode_step`] on a device cache.
    fn decode_step_device(&self, cache: &mut KvCache, seq: &mut SeqState, token: u32) -> Result<Vec<f32>> {
        cache.reserve(seq)?;
        let pos = seq.len;
        seq.len += 1;
        let slot = slot_of(seq, pos)?;
        let rope = gpu::rope_args::<B>(&self.device, &seq.inv_freq, seq.rope_scale, &[pos as u32])?;
        let kv = device_of(cache)?;
        let tables = gpu::block_tables::<B>(&self.device, kv, &seq.blocks, seq.len)?;
        let x = self.layers_on_device(self.embed(&[token], 1, 1), kv, &rope, &[slot], Attend::Decode(&tables))?;
        self.logits_of_last(x)
    }

    /// The decoder layers on `T` new tokens of one sequence `x [1, T, H]` at cache `slots`, with
    /// every kernel on the device.
    fn layers_on_device(&self, mut x: Tensor<B, 3>, kv: &mut DeviceKv, rope: &RopeArgs, slots: &[u32], attend: Attend) -> Result<Tensor<B, 3>> {
        let c = &self.config;
        let (hq, hkv, d, t) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, slots.len());
        for (li, l) in self.layers.iter().enumerate() {
            let n1 = rms_norm(x.clone(), &l.attn_norm, l.eps);
            // [1, T, heads*D] -> [T, heads, D]: the kernels' token-major layout, no copy.
            let q = l.attn.q.forward(n1.clone()).reshape([t, hq, d]);
            let k = l.attn.k.forward(n1.clone()).reshape([t, hkv, d]);
            let v = l.attn.v.forward(n1).reshape([t, hkv, d]);
            let q = gpu::rope(q, rope)?;
            let k = gpu::rope(k, rope)?;
            gpu::kv_append(kv, li, k.clone(), v.clone(), slots)?;
            let ctx = match attend {
                // One token: attention over the cache, which now holds it.
                Attend::Decode(tables) => gpu::attention_decode(q, kv, li, tables)?,
                // A fresh prompt: causal attention among its tokens, with K/V as the cache
                // returns them (the same quantizer as kv_append, so the same values).
                Attend::Prefill(bits) => {
                    let (k, v) = match bits {
                        Some(b) => (gpu::kv_fake_quant(k, b)?, gpu::kv_fake_quant(v, b)?),
                        None => (k, v),
                    };
                    gpu::attention_prefill(q, k, v, &[t])?
                }
            };
            let h = x + l.attn.o.forward(ctx.reshape([1, t, hq * d]));
            x = h.clone() + l.mlp.forward(rms_norm(h, &l.mlp_norm, l.eps));
        }
        gpu::check()?;
        Ok(x)
    }

    /// Logits `[V]` of a hidden state `[1, 1, H]` (before the final norm).
    fn logits_of_last(&self, x: Tensor<B, 3>) -> Result<Vec<f32>> {
        let c = &self.config;
        let x = rms_norm(x, &self.norm, c.rms_norm_eps).reshape([1, c.hidden_size]);
        let logits = download(x.matmul(self.lm_head.clone()));
        gpu::check()?;
        Ok(logits)
    }

    /// Sum of `-log p` over a window's `T-1` targets, computed token by token through the cache.
    /// The whole window is the sequence's prompt (it fixes the RoPE base, as prefill does).
    pub fn decode_window_nll(&self, window: &[u32], policy: QuantPolicy) -> Result<f64> {
        let mut cache = self.cache_with_blocks(policy, window.len().div_ceil(BLOCK_LEN))?;
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

/// How the device layers attend.
#[derive(Clone, Copy)]
enum Attend<'a> {
    /// One new token over the cache with these block tables.
    Decode(&'a BlockTables),
    /// The first tokens of a sequence among themselves; KV-cache bits for the round trip.
    Prefill(Option<u32>),
}

/// Cache slot of position `pos` of `seq`: `block * 64 + pos % 64`.
fn slot_of(seq: &SeqState, pos: usize) -> Result<u32> {
    let block = seq.blocks.get(pos / BLOCK_LEN).ok_or_else(|| Error::internal(format!("position {pos} has no KV block")))?;
    u32::try_from(block * BLOCK_LEN + pos % BLOCK_LEN).map_err(|_| Error::usage("KV cache slot beyond 2^32"))
}

fn device_of(cache: &mut KvCache) -> Result<&mut DeviceKv> {
    cache.device_mut().ok_or_else(|| Error::internal("expected a device KV cache"))
}
