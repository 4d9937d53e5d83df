//! f64 host references for the kernels, written as plainly as possible and independently of the
//! kernels and of the host-side repacking: what each kernel is checked against, by this crate's
//! tests (on wgpu) and by `awqc kernel-test` (on CUDA, from the release binary). Inputs are the f32
//! values the device sees (already rounded through f16 when they are uploaded as f16: see
//! [`round_f16`]); outputs are f64. Also the deterministic test-data generator and the error
//! metric both use.

use half::f16;
use std::ops::Range;

/// SplitMix64: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi) as f32).collect()
    }
}

/// max |a - b| of a device result against its reference; infinite when the lengths differ (so a
/// wrong-sized result fails any bound without a panic).
pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}

/// Rounds through f16 (what an f16 upload stores).
pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// An int4 layer in natural form: codes q `[K][N]`, f16 scales and integer-valued zeros `[K/g][N]`.
pub struct W4Layer {
    pub k: usize,
    pub n: usize,
    pub g: usize,
    pub q: Vec<u8>,
    pub s: Vec<f16>,
    pub z: Vec<f16>,
}

impl W4Layer {
    /// Random codes and zeros in [0, 16), scales in [0.002, 0.03).
    pub fn random(rng: &mut Rng, k: usize, n: usize, g: usize) -> Self {
        let q = (0..k * n).map(|_| rng.below(16) as u8).collect();
        let s = (0..k / g * n).map(|_| f16::from_f64(rng.uniform(0.002, 0.03))).collect();
        let z = (0..k / g * n).map(|_| f16::from_f64(rng.below(16) as f64)).collect();
        W4Layer { k, n, g, q, s, z }
    }

    /// TurboMind on-disk qweight `[K, N/8]`: nibble i of word j = column 8j + i.
    pub fn turbomind_qweight(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.k * self.n / 8];
        for k in 0..self.k {
            for c in 0..self.n {
                out[k * self.n / 8 + c / 8] |= (self.q[k * self.n + c] as u32) << (4 * (c % 8));
            }
        }
        out
    }

    /// The dequantized weight `(q - z) * s` at input k, output column c.
    pub fn w(&self, k: usize, c: usize) -> f64 {
        let gi = (k / self.g) * self.n + c;
        (self.q[k * self.n + c] as f64 - self.z[gi].to_f64()) * self.s[gi].to_f64()
    }

    /// The dense weight `[K][N]`.
    pub fn dense(&self) -> Vec<f64> {
        (0..self.k * self.n).map(|i| self.w(i / self.n, i % self.n)).collect()
    }

    /// `y = x · W` for `x` `[m][K]`: `[m][N]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * self.n];
        for r in 0..m {
            for k in 0..self.k {
                let xv = x[r * self.k + k] as f64;
                for c in 0..self.n {
                    y[r * self.n + c] += xv * self.w(k, c);
                }
            }
        }
        y
    }
}

/// RMSNorm of rows of `h`: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], h: usize, eps: f64) -> Vec<f64> {
    x.chunks(h)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(&v, &wv)| v as f64 * inv * wv as f64).collect::<Vec<_>>()
        })
        .collect()
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64).collect()
}

/// RoPE of `x` `[T, h, d]` at positions `pos` `[T]`, token t using the frequencies
/// `freqs[seq[t]]`; the first `rot` dims rotate, in pairs (i, i + rot/2) or (2i, 2i + 1) when
/// `interleaved`; cos and sin are scaled by `mscale`.
#[allow(clippy::too_many_arguments)]
pub fn rope(x: &[f32], pos: &[u32], seq: &[u32], freqs: &[Vec<f64>], h: usize, d: usize, rot: usize, interleaved: bool, mscale: f64) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let half = rot / 2;
    for t in 0..pos.len() {
        for hh in 0..h {
            let base = (t * h + hh) * d;
            for (i, &f) in freqs[seq[t] as usize].iter().enumerate().take(half) {
                let a = pos[t] as f64 * f;
                let (c, s) = (a.cos() * mscale, a.sin() * mscale);
                let (i0, i1) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                let (x0, x1) = (x[base + i0] as f64, x[base + i1] as f64);
                out[base + i0] = x0 * c - x1 * s;
                out[base + i1] = x1 * c + x0 * s;
            }
        }
    }
    out
}

/// Softmax attention of query row (t, h) of `q` `[T, hq, d]` over the tokens `keys` of k/v
/// `[T', hkv, d]` (GQA: query head h reads KV head h / (hq / hkv)), scaled by 1/sqrt(d): `[d]`.
#[allow(clippy::too_many_arguments)]
pub fn attend(q: &[f32], k: &[f32], v: &[f32], t: usize, h: usize, hq: usize, hkv: usize, d: usize, keys: Range<usize>) -> Vec<f64> {
    let hk = h / (hq / hkv);
    let scale = 1.0 / (d as f64).sqrt();
    let qrow = &q[(t * hq + h) * d..][..d];
    let scores: Vec<f64> = keys
        .clone()
        .map(|j| qrow.iter().zip(&k[(j * hkv + hk) * d..][..d]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale)
        .collect();
    let mx = scores.iter().copied().fold(f64::MIN, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
    let sum: f64 = w.iter().sum();
    let mut out = vec![0f64; d];
    for (wi, j) in w.iter().zip(keys) {
        for e in 0..d {
            out[e] += wi / sum * v[(j * hkv + hk) * d + e] as f64;
        }
    }
    out
}

/// Causal prefill attention of sequences packed along T (lengths `lens`): `[T, hq, d]`.
pub fn prefill_attention(q: &[f32], k: &[f32], v: &[f32], lens: &[usize], hq: usize, hkv: usize, d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(q.len());
    let mut start = 0;
    for &len in lens {
        for t in start..start + len {
            for h in 0..hq {
                out.extend(attend(q, k, v, t, h, hq, hkv, d, start..t + 1));
            }
        }
        start += len;
    }
    out
}
