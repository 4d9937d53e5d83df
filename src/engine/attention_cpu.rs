//! CPU kernels for the host backend: fused causal grouped-query attention with rotate-half RoPE,
//! and SiLU(gate)·up. burn's generic versions materialise and re-read their intermediates several
//! times (mask add, softmax passes, sigmoid, products), which on the CPU costs several times the
//! arithmetic. Every output element is computed by one task in a fixed order, so the results do
//! not depend on the thread count.

use rayon::prelude::*;

/// `exp(x)` for `x <= 0` (softmax after max subtraction), branch-free so loops vectorise.
/// Range reduction `x = n·ln2 + r`, |r| <= ln2/2, degree-6 Taylor polynomial for e^r (relative
/// error < 2e-7 on the reduced range), and 2^n assembled in the exponent bits.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest (ties to even) with 1.5·2^23: plain float adds, so the function
    // vectorizes (`round()` is a libm call without SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n as an integer, read off t's low mantissa bits (t = 1.5·2^23 + n exactly, n in [-126, 0]):
    // `n as i32` is the same value, but its saturating conversion kept LLVM from vectorizing.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let bits = ((ni + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Apply rotate-half RoPE to one head vector at position `p` (tables `[T, D/2]`).
#[inline]
fn rope_into(dst: &mut [f32], src: &[f32], cos: &[f32], sin: &[f32], p: usize) {
    let half = src.len() / 2;
    let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
    for j in 0..half {
        let (a, b) = (src[j], src[j + half]);
        dst[j] = a * c[j] - b * s[j];
        dst[j + half] = b * c[j] + a * s[j];
    }
}

/// `c[m, n] = a[m, k] · b[k, n]` (row-major, single-threaded: the caller parallelises).
fn matmul(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, b_transposed: bool) {
    // SAFETY: the slices have exactly the extents described by the strides below
    // (checked by the debug assertions), and `c` does not alias `a` or `b`.
    debug_assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (rs_b, cs_b) = if b_transposed { (1isize, k as isize) } else { (n as isize, 1isize) };
    unsafe {
        gemm::gemm(
            m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), cs_b, rs_b,
            0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None,
        );
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Query rows per task: a block of consecutive positions of one query head.
const ROW_BLOCK: usize = 64;

/// `q [B, T, Hq*D]`, `k`/`v [B, T, Hkv*D]` (projections before RoPE) -> context `[B, T, Hq*D]`.
/// Query at position i attends to keys 0..=i of its own sequence; query head h uses KV head
/// `h / (Hq/Hkv)`. Per task: scores of a block of query rows against the keys it can see (one
/// GEMM, so the causal upper triangle beyond the block is skipped), softmax, then one GEMM with V.
/// `kv_bits`: read K and V through a quantized KV cache (int8 / int4 per token and head, K after
/// RoPE), exactly as decoding from such a cache would.
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], cos: &[f32], sin: &[f32], s: AttnShape, kv_bits: Option<u32>) -> Vec<f32> {
    let AttnShape { batch, seq: t, heads: hq, kv_heads: hkv, head_dim: d } = s;
    let g = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    // RoPE'd keys and plain values per (batch, kv head), contiguous [T, D].
    let kv: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * hkv)
        .into_par_iter()
        .map(|bh| {
            let (bi, h) = (bh / hkv, bh % hkv);
            let mut kr = vec![0f32; t * d];
            let mut vr = vec![0f32; t * d];
            for p in 0..t {
                let off = (bi * t + p) * hkv * d + h * d;
                rope_into(&mut kr[p * d..(p + 1) * d], &k[off..off + d], cos, sin, p);
                vr[p * d..(p + 1) * d].copy_from_slice(&v[off..off + d]);
                if let Some(bits) = kv_bits {
                    crate::engine::kv_cache::fake_quantize_row(&mut kr[p * d..(p + 1) * d], bits);
                    crate::engine::kv_cache::fake_quantize_row(&mut vr[p * d..(p + 1) * d], bits);
                }
            }
            (kr, vr)
        })
        .collect();
    let blocks = t.div_ceil(ROW_BLOCK);
    // Each task: (batch, query head, row block) -> its context rows [rows, D].
    let parts: Vec<Vec<f32>> = (0..batch * hq * blocks)
        .into_par_iter()
        .map(|task| {
            let (bi, rest) = (task / (hq * blocks), task % (hq * blocks));
            let (h, blk) = (rest / blocks, rest % blocks);
            let (r0, r1) = (blk * ROW_BLOCK, ((blk + 1) * ROW_BLOCK).min(t));
            let rows = r1 - r0;
            let (kr, vr) = &kv[bi * hkv + h / g];
            let mut qb = vec![0f32; rows * d];
            for i in r0..r1 {
                let off = (bi * t + i) * hq * d + h * d;
                rope_into(&mut qb[(i - r0) * d..(i - r0 + 1) * d], &q[off..off + d], cos, sin, i);
            }
            // Keys 0..r1 are the only ones any row of the block can see.
            let nk = r1;
            let mut sc = vec![0f32; rows * nk];
            matmul(&mut sc, &qb, kr, rows, d, nk, true);
            for (ri, row) in sc.chunks_mut(nk).enumerate() {
                let i = r0 + ri;
                let vis = &mut row[..=i];
                let mut m = f32::NEG_INFINITY;
                for x in vis.iter_mut() {
                    *x *= scale;
                    m = m.max(*x);
                }
                let mut z = 0f32;
                for x in vis.iter_mut() {
                    *x = exp_neg(*x - m);
                    z += *x;
                }
                let inv = 1.0 / z;
                for x in vis.iter_mut() {
                    *x *= inv;
                }
                row[i + 1..].fill(0.0);
            }
            let mut ob = vec![0f32; rows * d];
            matmul(&mut ob, &sc, vr, rows, nk, d, false);
            ob
        })
        .collect();
    let mut out = vec![0f32; batch * t * hq * d];
    for (task, ob) in parts.into_iter().enumerate() {
        let (bi, rest) = (task / (hq * blocks), task % (hq * blocks));
        let (h, blk) = (rest / blocks, rest % blocks);
        for (ri, row) in ob.chunks(d).enumerate() {
            let i = blk * ROW_BLOCK + ri;
            let off = (bi * t + i) * hq * d + h * d;
            out[off..off + d].copy_from_slice(row);
        }
    }
    out
}

/// `silu(g) · u` of one element, `silu(x) = x / (1 + e^-x)`.
#[inline(always)]
fn silu_times(g: f32, u: f32) -> f32 {
    // e^-|g| is in (0, 1]; fold the sign so exp only ever sees non-positive arguments.
    let e = exp_neg(-g.abs());
    let sig = if g >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    g * sig * u
}

/// `o = silu(g) * u` elementwise: the scalar loop, compiled once per instruction set below.
#[inline(always)]
fn silu_mul_body(g: &[f32], u: &[f32], o: &mut [f32]) {
    for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
        *o = silu_times(g, u);
    }
}

/// [`silu_mul_body`] in the widest vectors this CPU has. Rust never contracts `a * b + c` into
/// an FMA, so every copy computes the same bits; only the lane count differs (the portable
/// build gets SSE2, where the exp polynomial ran 4 lanes at a time, when it vectorized at all:
/// a batch-16 decode step spent 6% of its time here on an AVX-512 machine, BENCHMARKS.md).
fn silu_mul_into(g: &[f32], u: &[f32], o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return unsafe { silu_mul_avx512(g, u, o) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            return unsafe { silu_mul_avx2(g, u, o) };
        }
    }
    silu_mul_body(g, u, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], o: &mut [f32]) {
    silu_mul_body(g, u, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_mul_avx2(g: &[f32], u: &[f32], o: &mut [f32]) {
    silu_mul_body(g, u, o)
}

/// `silu(g) * u` elementwise (SwiGLU).
pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.len()];
    // One chunk (a decode step's few rows) runs on the calling thread.
    if g.len() <= 1 << 14 {
        silu_mul_into(g, u, &mut out);
    } else {
        crate::engine::team::par_chunks_mut(&mut out, 1 << 14, |i, o| silu_mul_into(&g[i << 14..], &u[i << 14..], o));
    }
    out
}

/// SwiGLU of stacked rows `gu [M, 2I]` (gate then up in each row) -> `[M, I]`, without
/// splitting them first.
pub fn silu_mul_rows(gu: &[f32], i: usize) -> Vec<f32> {
    let mut out = vec![0f32; gu.len() / 2];
    let row = |r: usize, o: &mut [f32]| {
        let (g, u) = gu[r * 2 * i..(r + 1) * 2 * i].split_at(i);
        silu_mul_into(g, u, o)
    };
    if out.len() <= 1 << 14 {
        out.chunks_mut(i).enumerate().for_each(|(r, o)| row(r, o));
    } else {
        crate::engine::team::par_chunks_mut(&mut out, i, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer read off `t`'s bits is `n as i32` (what the function computed before): the
    /// same bits on every input of the domain and at the clamp.
    #[test]
    fn exp_neg_gives_the_bits_of_the_saturating_cast() {
        let old = |x: f32| {
            let x = x.max(-87.0);
            let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
            let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let mut x = -100.0f32;
        while x <= 0.0 {
            assert_eq!(exp_neg(x).to_bits(), old(x).to_bits(), "x = {x}");
            x += 0.000_731;
        }
        for x in [0.0, -0.0, -87.0, -86.999_99, f32::MIN, -f32::MIN_POSITIVE] {
            assert_eq!(exp_neg(x).to_bits(), old(x).to_bits(), "x = {x}");
        }
    }

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    #[test]
    fn silu_mul_rows_equals_silu_mul_of_the_split_rows() {
        let (m, i) = (37, 300);
        let gu: Vec<f32> = (0..m * 2 * i).map(|j| ((j * 7919) % 1000) as f32 * 0.011 - 5.5).collect();
        let (g, u): (Vec<f32>, Vec<f32>) = (
            gu.chunks(2 * i).flat_map(|r| r[..i].to_vec()).collect(),
            gu.chunks(2 * i).flat_map(|r| r[i..].to_vec()).collect(),
        );
        assert_eq!(silu_mul_rows(&gu, i), silu_mul(&g, &u));
    }

    /// The SIMD copies run the portable loop's operations in the same order: the same bits on
    /// every input, the exp clamp (-87), both signs, zeros and a ragged tail included.
    #[test]
    fn every_silu_copy_gives_the_portable_bits() {
        let g: Vec<f32> = (0..4099).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * if i % 7 == 0 { 300.0 } else { 24.0 }).chain([0.0, -0.0, 88.0, -88.0, 1e-30]).collect();
        let u: Vec<f32> = (0..g.len()).map(|i| ((i as f32 * 0.414_213_5).fract() - 0.5) * 6.0).collect();
        let mut want = vec![0f32; g.len()];
        silu_mul_body(&g, &u, &mut want);
        let mut got = vec![0f32; g.len()];
        silu_mul_into(&g, &u, &mut got);
        assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected.
            unsafe { silu_mul_avx2(&g, &u, &mut got) };
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn silu_mul_matches_f64() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let u: Vec<f32> = (0..1000).map(|i| (i % 13) as f32 * 0.3 - 1.5).collect();
        let out = silu_mul(&g, &u);
        for i in 0..1000 {
            let (gg, uu) = (g[i] as f64, u[i] as f64);
            let want = gg / (1.0 + (-gg).exp()) * uu;
            assert!((out[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "{i}: {} vs {want}", out[i]);
        }
    }
}
