//! The group-wise asymmetric integer quantizer: the one place that defines q, zero and scale
//! (awq-reference §5). Everything else (fake quantization in the search, packing, export) calls it.
//!
//! For each output row n and each group of `g` consecutive input channels:
//! ```text
//! scale = f16( max(max(w) - min(w), 1e-5) / (2^b - 1) )     rounded to f16 *before* use
//! zero  = clamp( -round(min(w) / scale), 0, 2^b - 1 )
//! q     = clamp( round(w / scale) + zero, 0, 2^b - 1 )
//! ŵ     = (q - zero) * scale
//! ```
//! `round` is round-half-to-even (torch.round). Computing zero and q with the f16 scale makes the
//! stored (q, zero, scale) reproduce exactly what a kernel dequantizes.
//!
//! `--zero-point float` ([`ZeroPoint::Float`], for the outputs that store fp16 zeros) keeps the
//! zero unrounded and unclamped, as llama.cpp's Q4_1 keeps a float minimum:
//! ```text
//! scale = f16( max(max(w) - min(w), 1e-5, max|w| / 64) / (2^b - 1) )
//! zero  = f16( -min(w) / scale )                             |zero| <= 64·(2^b-1) < 1024
//! q     = clamp( round(w / scale + zero), 0, 2^b - 1 )
//! ```
//! The max|w| / 64 floor only matters for a group far from 0 with a tiny range: it keeps the zero
//! below 1024, where f16's spacing (0.5) costs at most a quarter of a code.

use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use half::f16;
use rayon::prelude::*;

/// How zero points are chosen and stored (`--zero-point`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroPoint {
    /// Integers in `0..=2^b-1`: what AutoAWQ-GEMM stores and every peer's kernels read.
    #[default]
    Int,
    /// fp16 zeros, unrounded (the TurboMind workspace stores zeros as fp16; awqc's engine reads
    /// them). AutoAWQ-GEMM cannot hold them.
    Float,
}

/// Bits, group size and zero-point kind of the weight quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    pub bits: u32,
    pub group: usize,
    pub zero: ZeroPoint,
}

impl QuantParams {
    pub fn new(bits: u32, group: usize) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(Error::usage(format!("--w-bits {bits} is not supported (2..=8; packed formats need 4)")));
        }
        if group == 0 || !group.is_multiple_of(8) {
            return Err(Error::usage(format!("--w-group-size {group} must be a positive multiple of 8")));
        }
        Ok(QuantParams { bits, group, zero: ZeroPoint::Int })
    }
    pub fn with_zero(self, zero: ZeroPoint) -> Self {
        QuantParams { zero, ..self }
    }
    pub fn max_q(&self) -> u32 {
        (1 << self.bits) - 1
    }
    /// Check that the group size divides `k` (the in_features of `layer`); the error lists the
    /// group sizes that would work.
    pub fn check_divides(&self, layer: &str, k: usize) -> Result<()> {
        if !k.is_multiple_of(self.group) {
            let ok: Vec<String> =
                [32usize, 64, 128, 256].iter().filter(|g| k.is_multiple_of(**g)).map(|g| g.to_string()).collect();
            return Err(Error::usage(format!(
                "--w-group-size {}: does not divide the input size {} of {}; group sizes that work: {}",
                self.group,
                k,
                layer,
                if ok.is_empty() { "none of 32/64/128/256".to_string() } else { ok.join(", ") }
            )));
        }
        Ok(())
    }
}

/// Round half to even, as torch.round does (f32::round rounds half away from zero).
///
/// Bit-identical to `f32::round_ties_even`, which the portable x86-64 build turns into a call to
/// libm's `rintf` per value (SSE4.1's `roundps` is not in the baseline): that call was 15% of a
/// 13B-shaped quantization's profile. Instead: for |x| < 2^23, `(|x| + 2^23) - 2^23` lands in
/// [2^23, 2^24) where the spacing of f32 is 1, so the addition itself rounds to the nearest
/// integer, ties to even (2^23 is even, so the sum's parity is that of the result); the sign is put
/// back (keeping -0.0 for small negatives). Values with |x| >= 2^23 are already integers, and NaN
/// and infinities fail the comparison, so they pass through. Inlined and branch-free, it vectorizes.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let a = x.abs();
    let r = ((a + TWO_23) - TWO_23).copysign(x);
    if a < TWO_23 { r } else { x }
}

/// (min, max) of `v`, NaNs skipped, in eight independent lanes so that it vectorizes. Exact, like
/// a fold of `f32::min` / `f32::max`: min and max do not round, and `x < lo` skips a NaN as
/// `f32::min` does.
#[inline(always)]
fn min_max(v: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            lo[j] = if c[j] < lo[j] { c[j] } else { lo[j] };
            hi[j] = if c[j] > hi[j] { c[j] } else { hi[j] };
        }
    }
    for &x in chunks.remainder() {
        lo[0] = if x < lo[0] { x } else { lo[0] };
        hi[0] = if x > hi[0] { x } else { hi[0] };
    }
    let lo = lo.iter().fold(f32::INFINITY, |m, &x| if x < m { x } else { m });
    let hi = hi.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    (lo, hi)
}

/// Scale (already rounded to f16) and integer zero point of one group of weights.
#[inline(always)]
pub fn group_params(vals: &[f32], max_q: u32) -> (f16, u8) {
    let (lo, hi) = min_max(vals);
    let scale = f16::from_f32((hi - lo).max(1e-5) / max_q as f32);
    let s = scale.to_f32();
    let zero = (-round_half_even(lo / s)).clamp(0.0, max_q as f32);
    (scale, zero as u8)
}

/// Scale and fp16 zero point of one group for [`ZeroPoint::Float`] (module docs).
#[inline(always)]
pub fn group_params_float(vals: &[f32], max_q: u32) -> (f16, f16) {
    let (lo, hi) = min_max(vals);
    let range = (hi - lo).max(1e-5).max(lo.abs().max(hi.abs()) / 64.0);
    let scale = f16::from_f32(range / max_q as f32);
    (scale, f16::from_f32(-lo / scale.to_f32()))
}

/// The code of one weight for a float zero: `clamp(round(w / scale + zero))`.
#[inline]
pub fn quantize_value_float(w: f32, scale: f32, zero: f32, max_q: u32) -> u8 {
    code_float(w, scale, zero, max_q as f32) as u8
}

#[inline(always)]
fn code_float(w: f32, scale: f32, zero: f32, max_q: f32) -> f32 {
    round_half_even(w / scale + zero).clamp(0.0, max_q)
}

/// The code of one weight as an f32 (an integer in [0, max_q]): `clamp(round(w / scale) + zero)`.
#[inline(always)]
fn code(w: f32, scale: f32, zero: f32, max_q: f32) -> f32 {
    (round_half_even(w / scale) + zero).clamp(0.0, max_q)
}

/// Integer code of one weight given its group's f16 scale and zero point.
#[inline]
pub fn quantize_value(w: f32, scale: f32, zero: u8, max_q: u32) -> u8 {
    code(w, scale, zero as f32, max_q as f32) as u8
}

/// Dequantized value of one code.
#[inline]
pub fn dequantize_value(q: u8, scale: f16, zero: u8) -> f32 {
    (q as f32 - zero as f32) * scale.to_f32()
}

/// A quantized `nn.Linear`: codes, zero points and f16 scales in the natural `[N, K]` orientation
/// (row = output channel). The exporters transpose and pack from here.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    /// out_features
    pub n: usize,
    /// in_features
    pub k: usize,
    pub params: QuantParams,
    /// `[N, K]` codes in `0..=2^b-1`.
    pub q: Vec<u8>,
    /// `[N, K/g]` integer zero points (with `float_zeros`: each rounded and clamped to the code
    /// range, for the integer kernels, which add the difference back).
    pub zeros: Vec<u8>,
    /// `[N, K/g]` fp16 zero points when they are not integers (`--zero-point float`, or a
    /// TurboMind workspace holding such zeros); these are then the true zeros.
    pub float_zeros: Option<Vec<f16>>,
    /// `[N, K/g]` scales.
    pub scales: Vec<f16>,
    /// `[N]`, kept in full precision (written as f16 by the exporters).
    pub bias: Option<Vec<f32>>,
}

impl QuantizedLinear {
    /// Quantize a `[N, K]` weight with each group's own min / max parameters ([`group_params`]).
    /// `name` is used in errors. Rows are independent, so the result does not depend on the thread
    /// count.
    pub fn quantize(name: &str, w: &HostTensor, bias: Option<Vec<f32>>, p: QuantParams) -> Result<Self> {
        let max_q = p.max_q();
        match p.zero {
            ZeroPoint::Int => Self::quantize_with(name, w, bias, p, |_, vals| {
                let (s, z) = group_params(vals, max_q);
                (s, f16::from_f32(z as f32))
            }),
            ZeroPoint::Float => Self::quantize_with(name, w, bias, p, |_, vals| group_params_float(vals, max_q)),
        }
    }

    /// Quantize a `[N, K]` weight with given (scale, zero) per (row, group) (`[N * K/g]`, e.g. from
    /// the (scale, zero) search): the codes are `clamp(round(w / scale) + zero)` (integer zeros,
    /// which must then be integers in the code range) or `clamp(round(w / scale + zero))` (float).
    pub fn quantize_with_params(name: &str, w: &HostTensor, bias: Option<Vec<f32>>, p: QuantParams, params: &[(f16, f16)]) -> Result<Self> {
        let (n, k) = w.dims2();
        if params.len() != n * (k / p.group) {
            return Err(Error::internal(format!("{name}: {} group parameters for a [{n}, {k}] weight in groups of {}", params.len(), p.group)));
        }
        if p.zero == ZeroPoint::Int {
            let max_q = p.max_q() as f32;
            if let Some(i) = params.iter().position(|c| {
                let z = c.1.to_f32();
                z.fract() != 0.0 || !(0.0..=max_q).contains(&z)
            }) {
                return Err(Error::internal(format!("{name}: zero point {} of cell {i} is not an integer in 0..={max_q}", params[i].1)));
            }
        }
        Self::quantize_with(name, w, bias, p, |cell, _| params[cell])
    }

    /// The quantizer with the (scale, zero) of (row, group) cell `row·K/g + group` given by
    /// `params(cell, values)`: an integer zero (held exactly in the f16) for [`ZeroPoint::Int`],
    /// whose codes are `clamp(round(w / scale) + zero)`; for [`ZeroPoint::Float`] the codes are
    /// `clamp(round(w / scale + zero))` and `zeros` holds the fp16 zeros rounded and clamped.
    fn quantize_with(name: &str, w: &HostTensor, bias: Option<Vec<f32>>, p: QuantParams, params: impl Fn(usize, &[f32]) -> (f16, f16) + Sync) -> Result<Self> {
        let (n, k) = w.dims2();
        p.check_divides(name, k)?;
        if let Some(i) = w.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(name, format!("weight has a non-finite value {} at flat index {i}", w.data[i])));
        }
        let g = p.group;
        let groups = k / g;
        let max_q = p.max_q();
        let float = p.zero == ZeroPoint::Float;
        let mut q = vec![0u8; n * k];
        let mut zf = vec![f16::ZERO; n * groups];
        let mut scales = vec![f16::ZERO; n * groups];
        q.par_chunks_mut(k)
            .zip(zf.par_chunks_mut(groups))
            .zip(scales.par_chunks_mut(groups))
            .enumerate()
            .for_each(|(row, ((qr, zr), sr))| {
                let wr = &w.data[row * k..(row + 1) * k];
                for gi in 0..groups {
                    let vals = &wr[gi * g..(gi + 1) * g];
                    let (s, z) = params(row * groups + gi, vals);
                    sr[gi] = s;
                    zr[gi] = z;
                    let (sf, z) = (s.to_f32(), z.to_f32());
                    for (dst, &v) in qr[gi * g..(gi + 1) * g].iter_mut().zip(vals) {
                        *dst = if float { quantize_value_float(v, sf, z, max_q) } else { quantize_value(v, sf, z as u8, max_q) };
                    }
                }
            });
        if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
            return Err(Error::input(
                name,
                format!("group scale overflows f16 at row {}, group {} (weights too large for f16)", i / groups, i % groups),
            ));
        }
        if let Some(i) = zf.iter().position(|z| !z.is_finite()) {
            return Err(Error::input(name, format!("zero point overflows f16 at row {}, group {}", i / groups, i % groups)));
        }
        let zeros = zf.iter().map(|z| round_half_even(z.to_f32()).clamp(0.0, max_q as f32) as u8).collect();
        Ok(QuantizedLinear { n, k, params: p, q, zeros, scales, bias, float_zeros: float.then_some(zf) })
    }

    pub fn groups(&self) -> usize {
        self.k / self.params.group
    }

    /// The zero point of (row, group) cell `row·K/g + group` as the dequantization uses it.
    #[inline]
    pub fn zero_at(&self, cell: usize) -> f32 {
        match &self.float_zeros {
            Some(f) => f[cell].to_f32(),
            None => self.zeros[cell] as f32,
        }
    }

    /// `[N, K/g]` zero points as fp16 (integers exactly, or the float zeros), the form the
    /// TurboMind files and the W4A16 repack take before transposing.
    pub fn zeros_f16(&self) -> Vec<f16> {
        (0..self.zeros.len()).map(|cell| f16::from_f32(self.zero_at(cell))).collect()
    }

    /// `[N, K]` dequantized weight: `(q - zero) * scale`.
    pub fn dequantize(&self) -> HostTensor {
        let (k, g, groups) = (self.k, self.params.group, self.groups());
        let mut out = vec![0f32; self.n * k];
        out.par_chunks_mut(k).enumerate().for_each(|(row, o)| {
            for gi in 0..groups {
                // (q - z)·s in f32, as `dequantize_value` computes it for an integer zero.
                let (s, z) = (self.scales[row * groups + gi].to_f32(), self.zero_at(row * groups + gi));
                for c in gi * g..(gi + 1) * g {
                    o[c] = (self.q[row * k + c] as f32 - z) * s;
                }
            }
        });
        HostTensor { shape: vec![self.n, k], data: out }
    }
}

/// Fake quantization `W -> Q(W)` of a row-major `[rows, k]` buffer in place (quantize, then
/// dequantize), used by the scale and clip searches. Same arithmetic as [`QuantizedLinear`].
pub fn fake_quantize_inplace(w: &mut [f32], k: usize, p: QuantParams) {
    w.par_chunks_mut(k).for_each(|row| fake_quantize_row(row, p));
}

// ---------------------------------------------------------------------------------------------
// Fake quantization, the search's and the clip's inner loop: `group_params` and `code` as the
// packer uses them, with the code kept as an f32 (an integer in [0, max_q], so `(q - zero)·scale`
// is the same value as through the u8 code) so that the loop vectorizes. On x86-64 a copy compiled
// for AVX2 runs when the CPU has it (checked once, then cached by std): 8 lanes instead of the
// baseline's 4. AVX2 has no FMA and Rust never contracts a*b+c, so both copies give the same bits.

#[inline(always)]
fn fq_group(vals: &mut [f32], max_q: u32) {
    let (scale, zero) = group_params(vals, max_q);
    let (s, z, mq) = (scale.to_f32(), zero as f32, max_q as f32);
    for v in vals.iter_mut() {
        *v = (code(*v, s, z, mq) - z) * s;
    }
}

#[inline(always)]
fn fq_group_float(vals: &mut [f32], max_q: u32) {
    let (scale, zero) = group_params_float(vals, max_q);
    let (s, z, mq) = (scale.to_f32(), zero.to_f32(), max_q as f32);
    for v in vals.iter_mut() {
        *v = (code_float(*v, s, z, mq) - z) * s;
    }
}

#[inline(always)]
fn fq_group_of(vals: &mut [f32], max_q: u32, zero: ZeroPoint) {
    match zero {
        ZeroPoint::Int => fq_group(vals, max_q),
        ZeroPoint::Float => fq_group_float(vals, max_q),
    }
}

#[inline(always)]
fn fq_row(row: &mut [f32], p: QuantParams) {
    for vals in row.chunks_mut(p.group) {
        fq_group_of(vals, p.max_q(), p.zero);
    }
}

#[inline(always)]
fn scaled_fq_row(out: &mut [f32], row: &[f32], s: &[f32], p: QuantParams) {
    for ((o, &v), &f) in out.iter_mut().zip(row).zip(s) {
        *o = v * f;
    }
    fq_row(out, p);
    // Dividing (not multiplying by 1/s) is what the reference does; keep it exact.
    for (o, &f) in out.iter_mut().zip(s) {
        *o /= f;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{QuantParams, ZeroPoint};
    #[target_feature(enable = "avx2")]
    pub unsafe fn fq_group(vals: &mut [f32], max_q: u32, zero: ZeroPoint) {
        super::fq_group_of(vals, max_q, zero)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn fq_row(row: &mut [f32], p: QuantParams) {
        super::fq_row(row, p)
    }
    #[target_feature(enable = "avx2")]
    pub unsafe fn scaled_fq_row(out: &mut [f32], row: &[f32], s: &[f32], p: QuantParams) {
        super::scaled_fq_row(out, row, s, p)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Fake quantization of one group in place: `(q - z)·s` with the group's own scale and zero.
pub fn fake_quantize_group(vals: &mut [f32], max_q: u32, zero: ZeroPoint) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::fq_group(vals, max_q, zero) };
    }
    fq_group_of(vals, max_q, zero)
}

/// Fake quantization of one row (a whole number of groups) in place.
pub fn fake_quantize_row(row: &mut [f32], p: QuantParams) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as above.
        return unsafe { avx2::fq_row(row, p) };
    }
    fq_row(row, p)
}

/// `out = fake_quantize(row · s) / s` for one row with per-column scales `s`.
pub fn scaled_fake_quantize_row(out: &mut [f32], row: &[f32], s: &[f32], p: QuantParams) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as above.
        return unsafe { avx2::scaled_fq_row(out, row, s, p) };
    }
    scaled_fq_row(out, row, s, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference quantizer written independently in f64 with explicit half-even rounding.
    fn reference(vals: &[f32], bits: u32) -> (f32, f64, Vec<f64>) {
        let max_q = ((1u32 << bits) - 1) as f64;
        let lo = vals.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        let hi = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        // f32 arithmetic for the raw scale as the spec says, then f16 rounding.
        let raw = ((hi - lo) as f32).max(1e-5) / max_q as f32;
        let s = half::f16::from_f32(raw).to_f32();
        let rne = |x: f64| {
            let f = x.floor();
            let d = x - f;
            if d > 0.5 || (d == 0.5 && (f as i64) % 2 != 0) { f + 1.0 } else { f }
        };
        let z = (-rne((lo as f32 / s) as f64)).clamp(0.0, max_q);
        let q = vals.iter().map(|&v| (rne((v / s) as f64) + z).clamp(0.0, max_q)).collect();
        (s, z, q)
    }

    #[test]
    fn round_half_even_is_bit_identical_to_round_ties_even() {
        // Every 251st bit pattern (17 million values across all exponents, both signs, NaNs and
        // infinities) plus the edges around 2^22, 2^23 and the halves.
        let mut checked = 0u64;
        let edges = [0.5f32, 1.5, 2.5, -0.5, -0.49999997, 0.49999997, 4194303.5, 4194304.5, 8388607.5, 8388607.0, 8388608.0, 8388609.0, 16777217.0, -8388607.5, -0.0, 0.0, f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, f32::NEG_INFINITY];
        let sampled = (0..=u32::MAX / 251).map(|i| f32::from_bits(i.wrapping_mul(251)));
        for x in edges.into_iter().chain(sampled) {
            let (a, b) = (round_half_even(x), x.round_ties_even());
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{x:e} ({:#x}): {a:e} vs {b:e}", x.to_bits());
            checked += 1;
        }
        assert!(checked > 17_000_000);
    }

    #[test]
    fn matches_reference_and_rounds_half_even() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let (n, k) = (7, 256);
        let w = HostTensor::from_fn(&[n, k], |i| rnd() * if i % 97 == 0 { 8.0 } else { 1.0 });
        let p = QuantParams::new(4, 64).unwrap();
        let ql = QuantizedLinear::quantize("t", &w, None, p).unwrap();
        for row in 0..n {
            for gi in 0..k / 64 {
                let vals = &w.data[row * k + gi * 64..row * k + (gi + 1) * 64];
                let (s, z, q) = reference(vals, 4);
                assert_eq!(ql.scales[row * 4 + gi].to_f32(), s);
                assert_eq!(ql.zeros[row * 4 + gi] as f64, z);
                for c in 0..64 {
                    assert_eq!(ql.q[row * k + gi * 64 + c] as f64, q[c]);
                }
            }
        }
        // Fake quantization equals dequantize(quantize(w)).
        let mut fq = w.data.clone();
        fake_quantize_inplace(&mut fq, k, p);
        assert_eq!(fq, ql.dequantize().data);
    }

    /// The spec path, value by value through the u8 code, with the group's min / max from plain
    /// `f32::min` / `f32::max` folds (independent of the lane-wise `min_max`).
    fn spec_fake_quant(vals: &[f32], max_q: u32) -> Vec<f32> {
        let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s = f16::from_f32((hi - lo).max(1e-5) / max_q as f32);
        let z = (-round_half_even(lo / s.to_f32())).clamp(0.0, max_q as f32) as u8;
        assert_eq!(group_params(vals, max_q), (s, z), "group_params of {vals:?}");
        vals.iter().map(|&v| dequantize_value(quantize_value(v, s.to_f32(), z, max_q), s, z)).collect()
    }

    #[test]
    fn fast_fake_quantization_is_bit_identical_to_the_spec_path() {
        let mut seed = 99u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let mut groups: Vec<Vec<f32>> = Vec::new();
        for case in 0..4000 {
            let len = [8usize, 32, 64, 128, 136][case % 5];
            let mag = [1e-6f32, 1e-3, 1.0, 37.0, 6e4][case % 5];
            let mut g: Vec<f32> = (0..len).map(|_| (rnd() as f32 / u32::MAX as f32 * 2.0 - 1.0) * mag).collect();
            match case % 7 {
                0 => g.iter_mut().for_each(|v| *v = v.abs()), // all positive: zero point 0
                1 => g.iter_mut().for_each(|v| *v = -v.abs()), // all negative
                2 => g.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0), // ties after scaling
                3 => g.iter_mut().step_by(3).for_each(|v| *v = if rnd() % 2 == 0 { 0.0 } else { -0.0 }),
                4 => g.iter_mut().for_each(|v| *v = 0.25), // constant: the 1e-5 floor
                _ => {}
            }
            groups.push(g);
        }
        for bits in [2u32, 3, 4, 8] {
            let max_q = (1 << bits) - 1;
            for g in &groups {
                let want = spec_fake_quant(g, max_q);
                let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let mut a = g.clone();
                fake_quantize_group(&mut a, max_q, ZeroPoint::Int);
                assert_eq!(bits_of(&a), bits_of(&want), "dispatched, {bits} bits, {g:?}");
                let mut b = g.clone();
                fq_group(&mut b, max_q);
                assert_eq!(bits_of(&b), bits_of(&want), "portable, {bits} bits, {g:?}");
            }
        }
        // A whole row with per-column scales, against the same steps done one by one.
        let p = QuantParams::new(4, 64).unwrap();
        let row: Vec<f32> = groups[..4].iter().flat_map(|g| g.iter().copied().cycle().take(64)).collect();
        let sc: Vec<f32> = (0..row.len()).map(|i| 0.5 + (i % 13) as f32 * 0.37).collect();
        let mut want: Vec<f32> = row.iter().zip(&sc).map(|(v, f)| v * f).collect();
        for g in want.chunks_mut(64) {
            let fq = spec_fake_quant(g, p.max_q());
            g.copy_from_slice(&fq);
        }
        want.iter_mut().zip(&sc).for_each(|(v, f)| *v /= f);
        let mut out = vec![0f32; row.len()];
        scaled_fake_quantize_row(&mut out, &row, &sc, p);
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    /// `--zero-point float` against the formulas written out in f64: scale, zero, codes, the
    /// dequantized value, fake quantization bit for bit; and on groups away from 0 (where the
    /// integer zero is clamped) a much smaller error than integer zeros.
    #[test]
    fn float_zero_points_follow_the_spec_and_beat_integer_zeros_off_centre() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0
        };
        let (n, k, g) = (24, 256, 64);
        let w = HostTensor::from_fn(&[n, k], |i| {
            let row = i / k;
            let v = rnd() as f32;
            match row % 4 {
                0 => v,                   // straddles 0
                1 => 0.5 + 0.1 * v,       // all positive: integer zero clamps to 0
                2 => -3.0 + 0.02 * v,     // all negative, narrow
                _ => 1.5,                 // constant: the max|w|/64 floor
            }
        });
        let p = QuantParams::new(4, g).unwrap().with_zero(ZeroPoint::Float);
        let ql = QuantizedLinear::quantize("t", &w, None, p).unwrap();
        let fz = ql.float_zeros.as_ref().expect("float zeros");
        let deq = ql.dequantize();
        let (mut err_float, mut err_int) = (0f64, 0f64);
        let qi = QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, g).unwrap()).unwrap().dequantize();
        for row in 0..n {
            for gi in 0..k / g {
                let cell = row * (k / g) + gi;
                let vals = &w.data[row * k + gi * g..row * k + (gi + 1) * g];
                let lo = vals.iter().fold(f64::INFINITY, |m, &v| m.min(v as f64));
                let hi = vals.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let range = ((hi - lo) as f32).max(1e-5).max((lo.abs().max(hi.abs()) as f32) / 64.0);
                let s = f16::from_f32(range / 15.0).to_f32() as f64;
                let z = f16::from_f32((-lo as f32) / s as f32).to_f32() as f64;
                assert_eq!(ql.scales[cell].to_f32() as f64, s, "scale of cell {cell}");
                assert_eq!(fz[cell].to_f32() as f64, z, "zero of cell {cell}");
                assert!(z.abs() < 1024.0);
                assert_eq!(ql.zeros[cell] as f64, z.round().clamp(0.0, 15.0), "rounded zero of cell {cell}");
                for (c, &v) in vals.iter().enumerate() {
                    let q = ql.q[row * k + gi * g + c] as f64;
                    let want = (v / s as f32 + z as f32).round_ties_even().clamp(0.0, 15.0) as f64;
                    assert_eq!(q, want, "code of cell {cell} col {c}");
                    let d = (q - z) * s;
                    assert!((deq.data[row * k + gi * g + c] as f64 - d).abs() <= 1e-6 * d.abs().max(1.0));
                    // Half a step, plus the zero's f16 rounding, plus the top code's clamp (the
                    // f16 scale may fall short of range / 15 by 2^-11 of it).
                    assert!((d - v as f64).abs() <= 0.51 * s + s * z.abs() / 2048.0 + 1e-9, "cell {cell}: {v} -> {d}");
                    err_float += (d - v as f64).powi(2);
                    err_int += (qi.data[row * k + gi * g + c] as f64 - v as f64).powi(2);
                }
            }
        }
        assert!(err_float < 0.05 * err_int, "float zeros {err_float:e} vs integer {err_int:e}");
        // Fake quantization is the same arithmetic, bit for bit.
        let mut fq = w.data.clone();
        fake_quantize_inplace(&mut fq, k, p);
        assert_eq!(fq.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), deq.data.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        let mut one = w.data[..g].to_vec();
        fake_quantize_group(&mut one, 15, ZeroPoint::Float);
        assert_eq!(&one[..], &deq.data[..g]);
    }

    #[test]
    fn group_must_divide() {
        let p = QuantParams::new(4, 128).unwrap();
        let e = p.check_divides("model.layers.0.self_attn.q_proj", 576).unwrap_err();
        assert!(e.msg.contains("576") && e.msg.contains("32, 64"), "{}", e.msg);
    }
}
