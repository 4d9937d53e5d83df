//! The block KV cache (awq-reference §7): the host implementation, or, on the GPU backends, the
//! kernels' cache in device memory ([`crate::engine::gpu::DeviceKv`], same block rule and sizes;
//! int4 packs 8 values per u32 there) behind the same block accounting.
//!
//! - Blocks hold `block_len` (64) tokens for **all layers**. Per layer a block stores V as
//!   `[kv_head][token][head_dim]` and K transposed, `[kv_head][head_dim][token]` (attention reads
//!   16 keys per vector lane), plus, when quantized, one `(scale, zero)` f16 pair per
//!   (kv_head, token) for K and for V. Attention reads int8 / int4 blocks as stored and
//!   dequantizes each block into a per-thread scratch, so a quantized cache moves 4x / 8x fewer
//!   bytes.
//! - `quant_policy`: 0 = the compute dtype (f32 on the CPU), 8 = int8, 4 = int4. Quantization is
//!   online and per (token, KV head) over head_dim, asymmetric with a real-valued zero:
//!   `lo = min, hi = max, scale = f16((hi - lo) / (2^b - 1)), zero = f16(lo)`,
//!   `q = clamp(round_half_even((x - zero) / scale), 0, 2^b - 1)`, `x ≈ q·scale + zero`.
//!   K is quantized after RoPE.
//! - Capacity: `blocks = floor(free_bytes · cache_max_entry_count / block_bytes)`, with free
//!   memory measured after the weights are loaded (TurboMind's rule). Blocks are allocated on
//!   demand up to that capacity, so a CPU run does not commit gigabytes it never uses.

use crate::error::{Error, Result};
use half::f16;

pub const BLOCK_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QuantPolicy {
    /// Cache in the compute dtype.
    None,
    Int8,
    Int4,
}

impl QuantPolicy {
    pub fn from_flag(v: u32) -> Result<Self> {
        match v {
            0 => Ok(QuantPolicy::None),
            8 => Ok(QuantPolicy::Int8),
            4 => Ok(QuantPolicy::Int4),
            other => Err(Error::usage(format!("--quant-policy {other}: expected 0 (no KV quantization), 8 (int8) or 4 (int4)"))),
        }
    }
    pub fn bits(self) -> Option<u32> {
        match self {
            QuantPolicy::None => None,
            QuantPolicy::Int8 => Some(8),
            QuantPolicy::Int4 => Some(4),
        }
    }
}

/// Quantize one head vector: `(codes, scale, zero)`.
pub fn quantize_row(x: &[f32], bits: u32) -> (Vec<u8>, f16, f16) {
    let max_q = ((1u32 << bits) - 1) as f32;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let scale = f16::from_f32((hi - lo) / max_q);
    let zero = f16::from_f32(lo);
    let (s, z) = (scale.to_f32(), zero.to_f32());
    // A constant row has scale 0: every code is 0 and dequantizes to the zero point.
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    let q = x.iter().map(|&v| crate::quant::int4::round_half_even((v - z) * inv).clamp(0.0, max_q) as u8).collect();
    (q, scale, zero)
}

/// `x ≈ q·scale + zero`.
#[inline]
pub fn dequantize_row(q: &[u8], scale: f16, zero: f16, out: &mut [f32]) {
    let (s, z) = (scale.to_f32(), zero.to_f32());
    for (o, &c) in out.iter_mut().zip(q) {
        *o = c as f32 * s + z;
    }
}

/// Quantize-dequantize one head vector in place: what attention reads back from a quantized cache.
pub fn fake_quantize_row(x: &mut [f32], bits: u32) {
    let (q, s, z) = quantize_row(x, bits);
    dequantize_row(&q, s, z, x);
}

/// Layout and size of the cache for one model.
#[derive(Debug, Clone, Copy)]
pub struct CacheLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub policy: QuantPolicy,
}

impl CacheLayout {
    /// Bytes per stored value (int4 packs two per byte).
    fn value_bits(&self) -> usize {
        match self.policy {
            QuantPolicy::None => 32,
            QuantPolicy::Int8 => 8,
            QuantPolicy::Int4 => 4,
        }
    }
    /// Bytes of one block: `layers · kv_heads · 2 · block_len · (head_dim·bits/8 + params)`.
    pub fn block_bytes(&self) -> usize {
        let params = if self.policy == QuantPolicy::None { 0 } else { 4 };
        self.layers * self.kv_heads * 2 * BLOCK_LEN * (self.head_dim * self.value_bits() / 8 + params)
    }
    /// Number of blocks TurboMind would allocate for `free_bytes` of free memory.
    pub fn blocks_for(&self, free_bytes: usize, cache_max_entry_count: f64) -> Result<usize> {
        if !(cache_max_entry_count > 0.0 && cache_max_entry_count < 1.0) {
            return Err(Error::usage(format!(
                "--cache-max-entry-count {cache_max_entry_count}: must be a fraction of free memory in (0, 1)"
            )));
        }
        Ok((free_bytes as f64 * cache_max_entry_count / self.block_bytes() as f64).floor() as usize)
    }
}

/// Free memory of this machine (`MemAvailable`), for sizing the host cache.
pub fn host_free_bytes() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

/// One block: per layer, V values `[kv_head][token][head_dim]`, params `[kv_head][token]`, and K
/// stored transposed, `[kv_head][head_dim][token]`, the layout the CPU attention reads 16 keys
/// per vector from (see [`HeadBlock`]): f32 values (policy 0), one int8 code per byte, or int4
/// codes two per byte (K: tokens i and i + 32 in the low and high nibble of byte i of a head-dim
/// row; V: elements i and i + head_dim/2 of a row, see [`pack4`]).
struct Block {
    /// f32 values (policy 0).
    kf: Vec<f32>,
    vf: Vec<f32>,
    /// Codes: one per byte (int8), or two per byte (int4).
    kq: Vec<u8>,
    vq: Vec<u8>,
    /// Scale and zero per (layer, kv_head, token), each array contiguous over the block's tokens
    /// so attention converts 64 of them at once.
    ks: Vec<f16>,
    kz: Vec<f16>,
    vs: Vec<f16>,
    vz: Vec<f16>,
}

/// One cache block of one (layer, KV head), as stored: what attention reads. Keys `0..64` of
/// the block; positions past the sequence's length hold stale (finite) values.
pub enum HeadBlock<'a> {
    /// K transposed `[head_dim][64]`, V `[64][head_dim]`.
    F32 { kt: &'a [f32], v: &'a [f32] },
    /// Codes of `bits` (8 or 4) in the `Block` layout, and `(scale, zero)` per token.
    Quant { bits: u32, kt: &'a [u8], v: &'a [u8], ks: &'a [f16], kz: &'a [f16], vs: &'a [f16], vz: &'a [f16] },
}

impl<'a> HeadBlock<'a> {
    /// K `[head_dim][64]` and V `[64][head_dim]` of an f32 block, read in place; `None` when quantized.
    pub fn as_f32(&self) -> Option<(&'a [f32], &'a [f32])> {
        match *self {
            HeadBlock::F32 { kt, v } => Some((kt, v)),
            HeadBlock::Quant { .. } => None,
        }
    }

    /// Dequantize keys `0..64` of K into `kt [head_dim][64]` and tokens `0..n` of V into
    /// `v [n][head_dim]`, `x = q·scale + zero` in f32 (the bits of [`dequantize_row`]). Inlined
    /// into the caller's SIMD context (attention's per-ISA copies), where the loops vectorize.
    #[inline(always)]
    pub fn dequantize(&self, d: usize, n: usize, kt_out: &mut [f32], v_out: &mut [f32]) {
        let HeadBlock::Quant { bits, kt, v, ks, kz, vs, vz } = self else {
            unreachable!("dequantize: an f32 block is read in place")
        };
        let mut p = [[0f32; BLOCK_LEN]; 4];
        for (dst, src) in p.iter_mut().zip([ks, kz, vs, vz]) {
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&src[..BLOCK_LEN], dst);
        }
        let [s, z, sv, zv] = &p;
        if *bits == 8 {
            for (o, q) in kt_out.chunks_exact_mut(BLOCK_LEN).zip(kt.chunks_exact(BLOCK_LEN)).take(d) {
                for l in 0..BLOCK_LEN {
                    o[l] = q[l] as f32 * s[l] + z[l];
                }
            }
            for (t, (o, q)) in v_out.chunks_exact_mut(d).zip(v.chunks_exact(d)).take(n).enumerate() {
                let (s, z) = (sv[t], zv[t]);
                for (o, &c) in o.iter_mut().zip(q) {
                    *o = c as f32 * s + z;
                }
            }
        } else {
            const H: usize = BLOCK_LEN / 2;
            for (o, q) in kt_out.chunks_exact_mut(BLOCK_LEN).zip(kt.chunks_exact(H)).take(d) {
                // One output stream per loop: two interleaved ones do not vectorize.
                let (lo, hi) = o.split_at_mut(H);
                for i in 0..H {
                    lo[i] = (q[i] & 15) as f32 * s[i] + z[i];
                }
                for i in 0..H {
                    hi[i] = (q[i] >> 4) as f32 * s[H + i] + z[H + i];
                }
            }
            let h = d / 2;
            for (t, (o, q)) in v_out.chunks_exact_mut(d).zip(v.chunks_exact(h)).take(n).enumerate() {
                let (lo, hi) = o.split_at_mut(h);
                let (s, z) = (sv[t], zv[t]);
                for (o, &b) in lo.iter_mut().zip(q) {
                    *o = (b & 15) as f32 * s + z;
                }
                for (o, &b) in hi.iter_mut().zip(q) {
                    *o = (b >> 4) as f32 * s + z;
                }
            }
        }
    }
}

/// Prefetch, with intent to write, the lines of `buf[first + i·stride]` for `i < n`.
#[inline(always)]
fn prefetch_for_write<T>(buf: &[T], first: usize, stride: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..n {
        // SAFETY: a prefetch never faults and reads nothing architecturally.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(buf.as_ptr().wrapping_add(first + i * stride) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, first, stride, n);
}

/// Store layer `layer`'s K and V rows `[kv_heads·head_dim]` at token `t` of block `b`
/// (`pv` values per layer in the block).
fn write_block(l: CacheLayout, pv: usize, b: &mut Block, layer: usize, t: usize, k: &[f32], v: &[f32]) {
    let d = l.head_dim;
    // Each K value of a token goes to its own cache line (K is stored transposed), and a batch's
    // step has evicted those lines since the token before: ask for all of them first, so the
    // misses overlap instead of draining through the store buffer one by one.
    for h in 0..l.kv_heads {
        let kt = layer * pv + h * BLOCK_LEN * d;
        match l.policy {
            QuantPolicy::None => prefetch_for_write(&b.kf, kt + t, BLOCK_LEN, d),
            QuantPolicy::Int8 => prefetch_for_write(&b.kq, kt + t, BLOCK_LEN, d),
            QuantPolicy::Int4 => prefetch_for_write(&b.kq, kt / 2 + t % (BLOCK_LEN / 2), BLOCK_LEN / 2, d),
        }
    }
    for h in 0..l.kv_heads {
        // V row (and int8/int4 V codes) at [h][t][..]; K column at [h][..][t].
        let off = layer * pv + (h * BLOCK_LEN + t) * d;
        let kt = layer * pv + h * BLOCK_LEN * d;
        let pidx = (layer * l.kv_heads + h) * BLOCK_LEN + t;
        let (kr, vr) = (&k[h * d..(h + 1) * d], &v[h * d..(h + 1) * d]);
        let Some(bits) = l.policy.bits() else {
            for (c, &x) in kr.iter().enumerate() {
                b.kf[kt + t + c * BLOCK_LEN] = x;
            }
            b.vf[off..off + d].copy_from_slice(vr);
            continue;
        };
        let (q, s, z) = quantize_row(kr, bits);
        (b.ks[pidx], b.kz[pidx]) = (s, z);
        if bits == 8 {
            for (c, &x) in q.iter().enumerate() {
                b.kq[kt + t + c * BLOCK_LEN] = x;
            }
        } else {
            let shift = 4 * (t / (BLOCK_LEN / 2));
            for (c, &x) in q.iter().enumerate() {
                let byte = &mut b.kq[(kt + c * BLOCK_LEN) / 2 + t % (BLOCK_LEN / 2)];
                *byte = (*byte & !(15 << shift)) | ((x & 15) << shift);
            }
        }
        let (q, s, z) = quantize_row(vr, bits);
        (b.vs[pidx], b.vz[pidx]) = (s, z);
        if bits == 8 {
            b.vq[off..off + d].copy_from_slice(&q);
        } else {
            pack4(&mut b.vq[off / 2..(off + d) / 2], &q);
        }
    }
}

/// The block pool and block tables of the sequences using it.
pub struct KvCache {
    pub layout: CacheLayout,
    pub capacity: usize,
    /// Host blocks (CPU backend).
    blocks: Vec<Block>,
    /// The device cache (GPU backends); its blocks are handed out in order.
    device: Option<crate::engine::gpu::DeviceKv>,
    /// Blocks given back by finished sequences, handed out again before new ones (LIFO).
    free: Vec<usize>,
}

/// A sequence in the cache: its block table and length, and its RoPE frequencies, fixed at the
/// start of the sequence from the prompt length (dynamic NTK, TurboMind semantics).
#[derive(Debug, Clone, Default)]
pub struct SeqState {
    pub blocks: Vec<usize>,
    pub len: usize,
    /// `inv_freq[d/2]` and the attention (cos/sin) scale for this sequence.
    pub inv_freq: Vec<f64>,
    pub rope_scale: f64,
}

impl SeqState {
    /// A new sequence whose prompt has `prompt_len` tokens.
    pub fn new(rope: &crate::engine::rope::Rope, prompt_len: usize) -> Self {
        let (inv_freq, rope_scale) = rope.inv_freq(prompt_len);
        SeqState { blocks: Vec::new(), len: 0, inv_freq, rope_scale }
    }
}

impl KvCache {
    pub fn new(layout: CacheLayout, capacity: usize) -> Self {
        KvCache { layout, capacity, blocks: Vec::new(), device: None, free: Vec::new() }
    }

    /// A cache in device memory. `capacity` is the budget's block count; only the blocks of
    /// `kv` (allocated up front, at most `capacity`) can be handed out.
    pub fn on_device(layout: CacheLayout, capacity: usize, kv: crate::engine::gpu::DeviceKv) -> Self {
        KvCache { layout, capacity, blocks: Vec::new(), device: Some(kv), free: Vec::new() }
    }

    /// The device cache, when this is one.
    pub fn device_mut(&mut self) -> Option<&mut crate::engine::gpu::DeviceKv> {
        self.device.as_mut()
    }

    pub fn is_device(&self) -> bool {
        self.device.is_some()
    }

    fn per_layer_values(&self) -> usize {
        self.layout.kv_heads * BLOCK_LEN * self.layout.head_dim
    }

    fn new_block(&self) -> Block {
        let l = self.layout;
        let n = l.layers * self.per_layer_values();
        let np = l.layers * l.kv_heads * BLOCK_LEN;
        let codes = match l.policy {
            QuantPolicy::None => {
                return Block { kf: vec![0.0; n], vf: vec![0.0; n], kq: vec![], vq: vec![], ks: vec![], kz: vec![], vs: vec![], vz: vec![] }
            }
            QuantPolicy::Int8 => n,
            QuantPolicy::Int4 => n / 2,
        };
        let p = vec![f16::ZERO; np];
        Block { kf: vec![], vf: vec![], kq: vec![0; codes], vq: vec![0; codes], ks: p.clone(), kz: p.clone(), vs: p.clone(), vz: p }
    }

    /// The most blocks this cache can hand out (the budget, and on the device what was allocated).
    pub fn limit(&self) -> usize {
        match &self.device {
            Some(d) => d.cache.num_blocks.min(self.capacity),
            None => self.capacity,
        }
    }

    /// Blocks that can still be handed out.
    pub fn free_blocks(&self) -> usize {
        self.limit().saturating_sub(self.blocks_in_use())
    }

    /// New blocks `seq` needs to grow by `n` tokens.
    pub fn blocks_needed(seq: &SeqState, n: usize) -> usize {
        (seq.len + n).div_ceil(BLOCK_LEN).saturating_sub(seq.blocks.len())
    }

    /// Make room for one more token of `seq` (allocates a block at block boundaries).
    pub fn reserve(&mut self, seq: &mut SeqState) -> Result<()> {
        if seq.len.is_multiple_of(BLOCK_LEN) && seq.len / BLOCK_LEN == seq.blocks.len() {
            let limit = self.limit();
            if self.blocks_in_use() >= limit {
                return Err(Error::usage(format!(
                    "KV cache full: {limit} blocks of {BLOCK_LEN} tokens ({} tokens); raise --cache-max-entry-count",
                    limit * BLOCK_LEN
                )));
            }
            if let Some(b) = self.free.pop() {
                seq.blocks.push(b);
                return Ok(());
            }
            match &mut self.device {
                Some(d) => {
                    d.used += 1;
                    seq.blocks.push(d.used - 1);
                }
                None => {
                    self.blocks.push(self.new_block());
                    seq.blocks.push(self.blocks.len() - 1);
                }
            }
        }
        Ok(())
    }

    /// Give a finished (or aborted) sequence's blocks back; `seq` is left empty. The blocks'
    /// contents are overwritten before they are read again (a position is written before any
    /// query can see it).
    pub fn release(&mut self, seq: &mut SeqState) {
        self.free.extend(seq.blocks.drain(..).rev());
        seq.len = 0;
    }

    /// Store K (already RoPE'd) and V rows `[kv_heads·head_dim]` of layer `layer` at position
    /// `pos` (< seq.len after `reserve`+advance). Host caches only (the device cache is written by
    /// the `kv_append` kernel).
    pub fn write(&mut self, seq: &SeqState, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let l = self.layout;
        write_block(l, self.per_layer_values(), &mut self.blocks[seq.blocks[pos / BLOCK_LEN]], layer, pos % BLOCK_LEN, k, v);
    }

    /// [`KvCache::write`] for one layer's rows of several sequences, in parallel over the
    /// sequences: sequence `i` gets rows `first[i]..first[i + 1]`, and `row(r)` is row `r`'s
    /// `(position, K, V)`. Host caches only.
    ///
    /// A K row is a column of the transposed block (64 stores a cache line apart per KV head),
    /// so a batch's writes wait on memory; one thread doing all of them was 8% of a batch-16
    /// decode step on a 2-core machine (BENCHMARKS.md).
    pub fn write_rows<'a>(&mut self, layer: usize, seqs: &[&SeqState], first: &[usize], row: impl Fn(usize) -> (usize, &'a [f32], &'a [f32]) + Sync) {
        assert!(first.len() == seqs.len() + 1, "write_rows: {} sequences, {} bounds", seqs.len(), first.len());
        let (l, pv) = (self.layout, self.per_layer_values());
        let n_blocks = self.blocks.len();
        let blocks = crate::engine::team::SendPtr(self.blocks.as_mut_ptr());
        crate::engine::team::par_for(seqs.len(), |i| {
            for r in first[i]..first[i + 1] {
                let (p, k, v) = row(r);
                let bi = seqs[i].blocks[p / BLOCK_LEN];
                assert!(bi < n_blocks, "write_rows: block {bi} of {n_blocks}");
                // SAFETY: `bi` is in bounds (asserted); a block belongs to one sequence's table
                // (`reserve` hands each out once, `release` takes it back), so no other task
                // touches it, and `self` is borrowed mutably for the whole loop.
                write_block(l, pv, unsafe { &mut *blocks.get().add(bi) }, layer, p % BLOCK_LEN, k, v);
            }
        });
    }

    /// K and V of (layer, kv head) for positions `0..n`, one [`HeadBlock`] per block of
    /// [`BLOCK_LEN`] positions, borrowed from the cache as stored. Host caches only.
    pub fn head_blocks(&self, seq: &SeqState, layer: usize, head: usize, n: usize) -> Vec<HeadBlock<'_>> {
        let l = self.layout;
        let span = BLOCK_LEN * l.head_dim;
        let base = layer * self.per_layer_values() + head * span;
        let p = (layer * l.kv_heads + head) * BLOCK_LEN;
        seq.blocks[..n.div_ceil(BLOCK_LEN)]
            .iter()
            .map(|&bi| {
                let b = &self.blocks[bi];
                match l.policy.bits() {
                    None => HeadBlock::F32 { kt: &b.kf[base..base + span], v: &b.vf[base..base + span] },
                    Some(bits) => {
                        let (c0, c1) = (base * bits as usize / 8, (base + span) * bits as usize / 8);
                        let pr = p..p + BLOCK_LEN;
                        HeadBlock::Quant {
                            bits,
                            kt: &b.kq[c0..c1],
                            v: &b.vq[c0..c1],
                            ks: &b.ks[pr.clone()],
                            kz: &b.kz[pr.clone()],
                            vs: &b.vs[pr.clone()],
                            vz: &b.vz[pr],
                        }
                    }
                }
            })
            .collect()
    }

    /// Read back K and V of (layer, kv head) for positions `0..n` into `[n, head_dim]` buffers,
    /// through the blocks attention reads ([`Self::head_blocks`], [`HeadBlock::dequantize`]).
    /// Host caches only.
    pub fn read(&self, seq: &SeqState, layer: usize, head: usize, n: usize, k_out: &mut Vec<f32>, v_out: &mut Vec<f32>) {
        let d = self.layout.head_dim;
        k_out.resize(n * d, 0.0);
        v_out.resize(n * d, 0.0);
        let (mut kbuf, mut vbuf) = (vec![0f32; BLOCK_LEN * d], vec![0f32; BLOCK_LEN * d]);
        for (bi, b) in self.head_blocks(seq, layer, head, n).iter().enumerate() {
            let nt = (n - bi * BLOCK_LEN).min(BLOCK_LEN);
            let (kt, v) = match b.as_f32() {
                Some(kv) => kv,
                None => {
                    b.dequantize(d, nt, &mut kbuf, &mut vbuf);
                    (&kbuf[..], &vbuf[..])
                }
            };
            for t in 0..nt {
                let pos = bi * BLOCK_LEN + t;
                for c in 0..d {
                    k_out[pos * d + c] = kt[c * BLOCK_LEN + t];
                }
                v_out[pos * d..(pos + 1) * d].copy_from_slice(&v[t * d..(t + 1) * d]);
            }
        }
    }

    pub fn blocks_in_use(&self) -> usize {
        let handed_out = match &self.device {
            Some(d) => d.used,
            None => self.blocks.len(),
        };
        handed_out - self.free.len()
    }
}

/// Two 4-bit codes per byte, halves apart: byte i holds element i (low nibble) and element
/// i + n/2 (high nibble), so unpacking is two contiguous streams (vectorizes without shuffles).
fn pack4(dst: &mut [u8], q: &[u8]) {
    let h = dst.len();
    for (i, b) in dst.iter_mut().enumerate() {
        *b = (q[i] & 15) | ((q[h + i] & 15) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_quantization_bounds_and_reference() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 20.0) * 0.173).collect();
        for bits in [8, 4] {
            let (q, s, z) = quantize_row(&x, bits);
            // Independent reference in f64.
            let lo = x.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let maxq = ((1u32 << bits) - 1) as f64;
            assert_eq!(s, f16::from_f32((hi - lo) / maxq as f32));
            assert_eq!(z, f16::from_f32(lo));
            let (sf, zf) = (s.to_f32() as f64, z.to_f32() as f64);
            for (i, &v) in x.iter().enumerate() {
                let r = ((v as f64 - zf) / sf).round().clamp(0.0, maxq);
                assert!((q[i] as f64 - r).abs() <= 1.0, "code {} vs {r}", q[i]);
                let deq = q[i] as f64 * sf + zf;
                assert!((deq - v as f64).abs() <= sf / 2.0 + 1e-3 * sf + (zf - lo as f64).abs(), "bits {bits}: {v} -> {deq}");
            }
        }
    }

    #[test]
    fn cache_round_trip_across_blocks() {
        for policy in [QuantPolicy::None, QuantPolicy::Int8, QuantPolicy::Int4] {
            let layout = CacheLayout { layers: 2, kv_heads: 3, head_dim: 8, policy };
            let mut c = KvCache::new(layout, 4);
            let mut seq = SeqState::default();
            let n = 70; // crosses a block boundary
            let row = |p: usize, s: f32| -> Vec<f32> { (0..24).map(|i| ((p * 31 + i * 7) % 17) as f32 * s - 3.0).collect() };
            for p in 0..n {
                c.reserve(&mut seq).unwrap();
                seq.len += 1;
                for layer in 0..2 {
                    c.write(&seq, layer, p, &row(p, 0.5 + layer as f32), &row(p + 1, 0.25));
                }
            }
            assert_eq!(seq.blocks.len(), 2);
            let (mut k, mut v) = (Vec::new(), Vec::new());
            c.read(&seq, 1, 2, n, &mut k, &mut v);
            for p in 0..n {
                let mut want = row(p, 1.5)[16..24].to_vec();
                if let Some(b) = policy.bits() {
                    fake_quantize_row(&mut want, b);
                }
                assert_eq!(&k[p * 8..(p + 1) * 8], &want[..], "{policy:?} pos {p}");
            }
        }
    }

    #[test]
    fn capacity_follows_turbomind_rule() {
        let l = CacheLayout { layers: 30, kv_heads: 3, head_dim: 64, policy: QuantPolicy::Int8 };
        // 30 layers * 3 heads * 2 (K,V) * 64 tokens * (64 B + 4 B params) = 783,360 B.
        assert_eq!(l.block_bytes(), 783_360);
        assert_eq!(l.blocks_for(1 << 30, 0.8).unwrap(), ((1u64 << 30) as f64 * 0.8 / 783_360.0) as usize);
        assert!(l.blocks_for(1 << 30, 1.5).is_err());
        let f = CacheLayout { policy: QuantPolicy::None, ..l };
        let i4 = CacheLayout { policy: QuantPolicy::Int4, ..l };
        assert!(f.block_bytes() > l.block_bytes() && l.block_bytes() > i4.block_bytes());
        let mut c = KvCache::new(f, 1);
        let mut s = SeqState::default();
        for _ in 0..BLOCK_LEN {
            c.reserve(&mut s).unwrap();
            s.len += 1;
        }
        assert!(c.reserve(&mut s).unwrap_err().msg.contains("KV cache full"));
        // Released blocks are handed out again.
        c.release(&mut s);
        assert_eq!((c.blocks_in_use(), c.free_blocks(), s.blocks.len(), s.len), (0, 1, 0, 0));
        let mut s2 = SeqState::default();
        c.reserve(&mut s2).unwrap();
        assert_eq!((s2.blocks.clone(), c.blocks_in_use()), (vec![0], 1));
        assert_eq!(KvCache::blocks_needed(&s2, 64), 0);
        s2.len = 1;
        assert_eq!(KvCache::blocks_needed(&s2, 64), 1);
    }
}
