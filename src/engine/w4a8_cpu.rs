//! CPU matmul of packed INT4 weights with int8 activations: the integer path llama.cpp's Q4_0
//! kernels take, on awqc's W4A16 checkpoints (the files do not change; only how the CPU multiplies).
//!
//! # Why
//!
//! The W4A16 kernels (`int4_cpu.rs`) convert every 4-bit code to f32 and spend one FMA lane per
//! weight and activation row: about 8 vector instructions per 32 multiply-adds, so decode is
//! compute-bound on a 2-core machine long before DRAM is, and prefill runs at the f32 FMA rate.
//! With the activations quantized to int8, one `vpdpbusd` (AVX-512-VNNI) multiplies 64 unsigned
//! 4-bit codes by 64 signed int8 activations and adds them in groups of 4 into 16 int32 lanes,
//! exactly: about 4x the f32 rate, and the unpacking is two byte masks per 128 weights.
//!
//! # Arithmetic (the same bits on every copy, the portable one included)
//!
//! Activations, per row, per block of [`QB`] = 32 consecutive k (as llama.cpp's `q8_0`):
//! `d = amax / 127`, `x8 = round_ties_even(x * (127 / amax))` in [-127, 127]; per quantization
//! group of the weights, `cz = Σ_b d_b · Σ_{k in b} x8[k]` (f32 FMAs in block order). Then for
//! each output (weights `q` unsigned 4-bit, zero `z`, scale `s` per group):
//! ```text
//! tot = 0
//! for each group (ascending):
//!     facc = 0
//!     for each 32-block b of the group: D = Σ q·x8 (exact int32);  facc = fma(D, d_b, facc)
//!     facc = fma(-z, cz, facc)            // Σ (q - z)·x̂ without subtracting z per weight
//!     tot  = fma(facc, s, tot)
//! ```
//! `D` is exact (|D| <= 32·15·127 < 2^24, so its conversion to f32 is exact too), the float
//! operations are the same on every copy and in the same order, and nothing depends on M, on the
//! tiling or on the thread count: a row gives the same bits alone (decode) or inside a batch, and
//! the AVX2, AVX-512 and portable copies agree bit for bit. The result equals, to f32 rounding,
//! `x̂ · Wᵀ` with `x̂ = x8 · d`, the activations rounded to int8 (relative error of each element at
//! most `amax / 254` of its block).
//!
//! # Packed layout (`PackedW4A8::data`)
//!
//! Output rows in tiles of 16 and super-tiles of 4 tiles (64 rows, the last padded with zero
//! rows), as in `int4_cpu.rs`; super-tile s is `groups` blocks of `32·g + 192` bytes:
//! ```text
//! codes  : g/8 chunks x 4 tiles x 64 bytes; in chunk c of tile j, byte 4i+b of row i is
//!          q[k0+b] | q[k0+4+b] << 4  (k0 = group start + 8c, b = 0..4)
//! scales : 64 x f16 (tile j's 16 at +32j), zeros: 64 x u8 (tile j's at +16j)
//! ```
//! so one 64-byte load holds 8 k of 16 rows: `& 0xF` gives each 32-bit lane (one row) the codes
//! of k0..k0+4, `>> 4 & 0xF` those of k0+4..k0+8, each multiplied with 4 activation bytes
//! broadcast to all lanes. The 4 tiles of a chunk are 256 consecutive bytes: the M = 1 kernel,
//! which reads them together, sees one sequential stream.

#![allow(clippy::needless_range_loop)]

use crate::engine::int4_cpu::{check_layer, drive, store_row, SyncPtr, NR, SR, ST};
use crate::engine::team::SendPtr;
use crate::error::{Error, Result};
use crate::quant::int4::QuantizedLinear;
use half::f16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The tile loop of an AVX2 copy (`kernel::<MR, T>(w, t, a, m, y)`): 4 tiles at a time while they
/// last, rows in chunks of at most 4. At 4 rows the 16 ymm registers no longer hold every sum
/// (some go to the stack), but each unpacked weight vector serves twice the rows it did at 2 and
/// a batch walks each super-tile half as often: the batch-16 decode step was 8% faster than at 2
/// rows, though the one-layer kernel rows did not show it (BENCHMARKS.md, "Batched decode on AVX2").
macro_rules! avx2_tiles {
    ($kernel:ident, $w:expr, $a:expr, $m0:expr, $m1:expr, $t0:expr, $t1:expr, $y:expr) => {{
        let mut t = $t0;
        while t < $t1 {
            let four = t + 4 <= $t1;
            for (m, mr) in crate::engine::int4_cpu::row_chunks($m0, $m1, 4) {
                match (four, mr) {
                    (true, 4) => (0..4).for_each(|j| $kernel::<4, 1>($w, t + j, $a, m, $y)),
                    (true, 2) => (0..4).for_each(|j| $kernel::<2, 1>($w, t + j, $a, m, $y)),
                    (true, _) => (0..2).for_each(|j| $kernel::<1, 2>($w, t + 2 * j, $a, m, $y)),
                    (false, 4) => $kernel::<4, 1>($w, t, $a, m, $y),
                    (false, 2) => $kernel::<2, 1>($w, t, $a, m, $y),
                    (false, _) => $kernel::<1, 1>($w, t, $a, m, $y),
                }
            }
            t += if four { 4 } else { 1 };
        }
    }};
}
pub(crate) use avx2_tiles;

/// The tile loop of an AVX-512 copy: 4 tiles at a time, rows in chunks of at most 8, MR x T <= 8.
macro_rules! avx512_tiles {
    ($kernel:ident, $w:expr, $a:expr, $m0:expr, $m1:expr, $t0:expr, $t1:expr, $y:expr) => {{
        let mut t = $t0;
        while t < $t1 {
            let four = t + 4 <= $t1;
            for (m, mr) in crate::engine::int4_cpu::row_chunks($m0, $m1, 8) {
                match (four, mr) {
                    (true, 8) => (0..4).for_each(|j| $kernel::<8, 1>($w, t + j, $a, m, $y)),
                    (true, 4) => (0..2).for_each(|j| $kernel::<4, 2>($w, t + 2 * j, $a, m, $y)),
                    (true, 2) => $kernel::<2, 4>($w, t, $a, m, $y),
                    (true, _) => $kernel::<1, 4>($w, t, $a, m, $y),
                    (false, 8) => $kernel::<8, 1>($w, t, $a, m, $y),
                    (false, 4) => $kernel::<4, 1>($w, t, $a, m, $y),
                    (false, 2) => $kernel::<2, 1>($w, t, $a, m, $y),
                    (false, _) => $kernel::<1, 1>($w, t, $a, m, $y),
                }
            }
            t += if four { 4 } else { 1 };
        }
    }};
}
pub(crate) use avx512_tiles;

/// Activation block: k values sharing one int8 scale.
pub const QB: usize = 32;
/// 1.5 · 2^23: `(v + ROUND) - ROUND` is `v` rounded to the nearest integer, ties to even, for
/// |v| < 2^22 (two exact-order float ops: the same bits with or without SIMD).
const ROUND: f32 = 12_582_912.0;

/// Which copy of the W4A8 kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust (any architecture).
    Portable,
    /// x86-64 AVX2 + FMA + F16C: `vpmaddubsw` / `vpmaddwd`, two 8-row halves per tile.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI: `vpdpbusd`, one tile per register.
    Avx512Vnni,
    /// x86-64 AMX-INT8 tiles (`tdpbsud`, 16 rows x 16 outputs x 32 k per instruction) for every
    /// 16 rows, the AVX-512-VNNI copy for the rest: prefill and batches of 16 or more.
    Amx,
}

/// Whether this CPU can run `isa`'s copy (feature detection is cached by std).
pub(crate) fn has(isa: Isa) -> bool {
    match isa {
        Isa::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            has(Isa::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx => has(Isa::Avx512Vnni) && amx::usable(),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The best copy this machine supports (checked once).
pub fn detected() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| *available().last().unwrap())
}

/// Every copy that can run here, worst to best.
pub fn available() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx].into_iter().filter(|&i| has(i)).collect()
}

/// Whether a layer with this group size can use these kernels (else the W4A16 ones serve it).
pub fn supports_group(group: usize) -> bool {
    group > 0 && group.is_multiple_of(QB)
}

/// INT4 weights packed for the W4A8 kernels (module comment: layout).
#[derive(Clone)]
pub struct PackedW4A8 {
    pub n: usize,
    pub k: usize,
    pub group: usize,
    /// 16-row tiles, a multiple of 4.
    tiles: usize,
    groups: usize,
    /// Bytes of one (super-tile, group) block: `32·g` codes + 128 scale + 64 zero bytes.
    gb: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedW4A8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedW4A8[{}x{}, g{}]", self.n, self.k, self.group)
    }
}

impl PackedW4A8 {
    /// Repack a quantized linear layer (bias ignored: the caller adds it).
    pub fn from_quantized(l: &QuantizedLinear) -> Result<Self> {
        let (n, k, g) = (l.n, l.k, l.params.group);
        let what = format!("int4 weight [{n}, {k}]");
        check_layer(l, &what, "W4A8")?;
        if !supports_group(g) || k % g != 0 {
            return Err(Error::usage(format!(
                "{what}: group size {g} must be a positive multiple of {QB} that divides in_features {k} for the W4A8 kernels"
            )));
        }
        let groups = k / g;
        let tiles = n.div_ceil(SR) * ST;
        let gb = 32 * g + 192;
        let mut data = vec![0u8; tiles / ST * groups * gb];
        data.par_chunks_mut(groups * gb).enumerate().for_each(|(st, sup)| {
            for (gi, blk) in sup.chunks_mut(gb).enumerate() {
                for r in 0..SR.min(n.saturating_sub(st * SR)) {
                    let (row, j, i) = (st * SR + r, r / NR, r % NR);
                    let q = &l.q[row * k + gi * g..row * k + (gi + 1) * g];
                    for c in 0..g / 8 {
                        for b in 0..4 {
                            blk[(c * ST + j) * 64 + 4 * i + b] = q[8 * c + b] | (q[8 * c + 4 + b] << 4);
                        }
                    }
                    let s = l.scales[row * groups + gi].to_le_bytes();
                    blk[g * 32 + 2 * r] = s[0];
                    blk[g * 32 + 2 * r + 1] = s[1];
                    blk[g * 32 + 128 + r] = l.zeros[row * groups + gi];
                }
            }
        });
        Ok(PackedW4A8 { n, k, group: g, tiles, groups, gb, data })
    }

    /// Resident bytes of the packed form.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `[N, K]` row-major dequantized weight `(q - zero) * scale` (tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k, g) = (self.n, self.k, self.group);
        let mut out = vec![0f32; n * k];
        for (row, o) in out.chunks_mut(k).enumerate() {
            let (t, i) = (row / NR, row % NR);
            for gi in 0..self.groups {
                let (so, zo) = (self.scales_at(t, gi), self.zeros_at(t, gi));
                let s = f16::from_le_bytes([self.data[so + 2 * i], self.data[so + 2 * i + 1]]).to_f32();
                let z = self.data[zo + i] as f32;
                for c in 0..g / 8 {
                    let p = self.codes_at(t, gi, c) + 4 * i;
                    for b in 0..4 {
                        let byte = self.data[p + b];
                        o[gi * g + 8 * c + b] = ((byte & 15) as f32 - z) * s;
                        o[gi * g + 8 * c + 4 + b] = ((byte >> 4) as f32 - z) * s;
                    }
                }
            }
        }
        out
    }

    /// Byte offset of tile `t`'s 64 code bytes of chunk `c` (8 k) of group `gi`.
    #[inline(always)]
    fn codes_at(&self, t: usize, gi: usize, c: usize) -> usize {
        ((t / ST) * self.groups + gi) * self.gb + (c * ST + t % ST) * 64
    }
    /// Byte offset of tile `t`'s 16 f16 scales of group `gi`.
    #[inline(always)]
    fn scales_at(&self, t: usize, gi: usize) -> usize {
        ((t / ST) * self.groups + gi) * self.gb + self.group * 32 + (t % ST) * 2 * NR
    }
    /// Byte offset of tile `t`'s 16 u8 zero points of group `gi`.
    #[inline(always)]
    fn zeros_at(&self, t: usize, gi: usize) -> usize {
        ((t / ST) * self.groups + gi) * self.gb + self.group * 32 + 2 * SR + (t % ST) * NR
    }
}

/// Activations `[M, K]` quantized to int8 per 32-block, with the per-group zero-point terms of
/// the weights they will meet (module comment: arithmetic).
#[derive(Clone, Debug)]
pub struct Q8Rows {
    pub m: usize,
    pub k: usize,
    /// Weight group size the `cz` terms are summed over.
    pub group: usize,
    /// `[M, K]` int8 codes.
    pub x8: Vec<i8>,
    /// `[M, K/32]` block scales.
    pub dx: Vec<f32>,
    /// `[M, K/group]`: `Σ_b dx_b · Σ x8` over the group's blocks.
    pub cz: Vec<f32>,
    /// `[M, K/32]`: `Σ x8` of each block.
    pub bsum: Vec<i32>,
}

impl Q8Rows {
    /// The activations these codes stand for, `x8 · d` (tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        self.x8.iter().enumerate().map(|(i, &q)| q as f32 * self.dx[i / QB]).collect()
    }
}

/// max |x| of one quantization block on the bit patterns (ordered like the values for non-NaN
/// floats). The portable reduction; LLVM leaves it a scalar chain, hence [`amax_avx2`].
#[inline(always)]
fn amax_bits(xs: &[f32]) -> f32 {
    f32::from_bits(xs.iter().fold(0u32, |a, v| a.max(v.to_bits() & 0x7FFF_FFFF)))
}

/// [`amax_bits`] with 8-lane `vmaxps` on |x| (the same value for non-NaN inputs: max is exact).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn amax_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    let mut ch = xs.chunks_exact(8);
    for c in &mut ch {
        m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), mask));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let a = lanes.into_iter().fold(0f32, |a, b| if b > a { b } else { a });
    a.max(amax_bits(ch.remainder()))
}

/// One 32-block `xs` into its codes `q` given its max |x|; returns `(amax, Σ q)`.
#[inline(always)]
fn quantize_block(xs: &[f32], q: &mut [i8], amax: f32) -> (f32, i32) {
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(xs) {
        // v·id + ROUND is 1.5·2^23 + r exactly, r in [-127, 127]: r sits in the low
        // mantissa bits (an integer subtraction vectorizes; `as i32` saturates per lane).
        let r = ((v * id + ROUND).to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
        *q = r as i8;
        sum += r;
    }
    (amax, sum)
}

/// One row: `x [K]` into `x8`, `dx`, `cz` (module comment: arithmetic); `block` quantizes one
/// 32-block ([`quantize_block`] with [`amax_bits`] or a SIMD copy: the same bits).
#[inline(always)]
fn quantize_row_body(x: &[f32], x8: &mut [i8], dx: &mut [f32], cz: &mut [f32], bsum: &mut [i32], group: usize, block: impl Fn(&[f32], &mut [i8]) -> (f32, i32)) {
    let nb = group / QB;
    for (gi, czg) in cz.iter_mut().enumerate() {
        let mut c = 0f32;
        for b in gi * nb..(gi + 1) * nb {
            let (amax, sum) = block(&x[b * QB..(b + 1) * QB], &mut x8[b * QB..(b + 1) * QB]);
            dx[b] = amax / 127.0;
            bsum[b] = sum;
            c = dx[b].mul_add(sum as f32, c);
        }
        *czg = c;
    }
}

/// The portable row quantizer.
fn quantize_row_portable(x: &[f32], x8: &mut [i8], dx: &mut [f32], cz: &mut [f32], bsum: &mut [i32], group: usize) {
    quantize_row_body(x, x8, dx, cz, bsum, group, |xs, q| quantize_block(xs, q, amax_bits(xs)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], x8: &mut [i8], dx: &mut [f32], cz: &mut [f32], bsum: &mut [i32], group: usize) {
    // SAFETY: this copy runs only where AVX2 was detected.
    quantize_row_body(x, x8, dx, cz, bsum, group, |xs, q| quantize_block(xs, q, unsafe { amax_avx2(xs) }))
}

/// [`quantize_block`] in two zmm registers: `vcvtps2dq` rounds to nearest even exactly as the
/// `ROUND` trick does (|x·id| <= 127.5), so the codes and sums are the same bits; a batched
/// decode step quantizes 16 rows of every linear's input.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn quantize_block_avx512(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    assert!(xs.len() == QB && q.len() == QB && QB == 32, "one 32-block");
    // SAFETY (loads, stores): both slices hold 32 elements (asserted).
    let (v0, v1) = (_mm512_loadu_ps(xs.as_ptr()), _mm512_loadu_ps(xs.as_ptr().add(16)));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let id = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let (q0, q1) = (_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), _mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
    (amax, _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn quantize_row_avx512(x: &[f32], x8: &mut [i8], dx: &mut [f32], cz: &mut [f32], bsum: &mut [i32], group: usize) {
    // SAFETY: this copy runs only where AVX-512 F/BW/VL was detected.
    quantize_row_body(x, x8, dx, cz, bsum, group, |xs, q| unsafe { quantize_block_avx512(xs, q) })
}

/// Quantize `x [M, K]` for weights of group size `group` (a multiple of 32 dividing K).
pub fn quantize_rows(x: &[f32], m: usize, k: usize, group: usize) -> Q8Rows {
    assert!(supports_group(group) && k.is_multiple_of(group) && x.len() == m * k, "quantize_rows: [{m}, {k}] with group {group}, {} values", x.len());
    let (mut x8, mut dx, mut cz, mut bsum) = (vec![0i8; m * k], vec![0f32; m * k / QB], vec![0f32; m * k / group], vec![0i32; m * k / QB]);
    let (simd, zmm) = (has(Isa::Avx2), has(Isa::Avx512Vnni));
    type Row<'a> = ((((&'a [f32], &'a mut [i8]), &'a mut [f32]), &'a mut [f32]), &'a mut [i32]);
    let row = |((((xr, x8r), dxr), czr), bs): Row| {
        #[cfg(target_arch = "x86_64")]
        if zmm {
            // SAFETY: AVX-512 F/BW/VL, AVX2 and FMA were detected; the same bits (see the copy).
            return unsafe { quantize_row_avx512(xr, x8r, dxr, czr, bs, group) };
        }
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2 and FMA were detected; the body is the same code (same bits).
            return unsafe { quantize_row_avx2(xr, x8r, dxr, czr, bs, group) };
        }
        let _ = (simd, zmm);
        quantize_row_portable(xr, x8r, dxr, czr, bs, group)
    };
    if k > 0 {
        if m >= 8 {
            // Rows in parallel: each task writes its row's parts of the four outputs.
            let (nq, ng) = (k / QB, k / group);
            let (dxp, czp, bsp) = (SendPtr(dx.as_mut_ptr()), SendPtr(cz.as_mut_ptr()), SendPtr(bsum.as_mut_ptr()));
            crate::engine::team::par_chunks_mut(&mut x8, k, |r, x8r| {
                // SAFETY: row r of dx / cz / bsum belongs to task r only.
                let (dxr, czr, bs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(dxp.get().add(r * nq), nq),
                        std::slice::from_raw_parts_mut(czp.get().add(r * ng), ng),
                        std::slice::from_raw_parts_mut(bsp.get().add(r * nq), nq),
                    )
                };
                row(((((&x[r * k..(r + 1) * k], x8r), dxr), czr), bs))
            });
        } else {
            x.chunks(k).zip(x8.chunks_mut(k)).zip(dx.chunks_mut(k / QB)).zip(cz.chunks_mut(k / group)).zip(bsum.chunks_mut(k / QB)).for_each(row);
        }
    }
    Q8Rows { m, k, group, x8, dx, cz, bsum }
}

/// `y[M, N] = x̂[M, K] · Wᵀ` (x̂ the int8 activations); overwrites `y`. Uses [`detected`].
pub fn w4a8_matmul(a: &Q8Rows, w: &PackedW4A8, y: &mut [f32]) {
    w4a8_matmul_with(detected(), a, w, y)
}

/// [`w4a8_matmul`] with a chosen copy (panics if `isa` is not in [`available`]).
pub fn w4a8_matmul_with(isa: Isa, a: &Q8Rows, w: &PackedW4A8, y: &mut [f32]) {
    assert!(has(isa), "w4a8_cpu: the {isa:?} kernels cannot run on this CPU (available: {:?})", available());
    assert!(
        a.k == w.k && a.group == w.group && y.len() == a.m * w.n,
        "w4a8_matmul: activations [{}, {}] g{} for weight [{}, {}] g{}, y has {} values",
        a.m,
        a.k,
        a.group,
        w.n,
        w.k,
        w.group,
        y.len()
    );
    let yp = SyncPtr(y.as_mut_ptr());
    drive(a.m, w.tiles, w.groups * w.gb / ST, |m0, m1, t0, t1| match isa {
        Isa::Portable => portable::block(w, a, m0, m1, t0, t1, yp.get()),
        // SAFETY: `has` verified the CPU features; tasks write disjoint outputs.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::block(w, a, m0, m1, t0, t1, yp.get()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { avx512::block(w, a, m0, m1, t0, t1, yp.get()) },
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx => unsafe { amx::block(w, a, m0, m1, t0, t1, yp.get()) },
        #[allow(unreachable_patterns)]
        _ => unreachable!(),
    });
}

// ---------------------------------------------------------------------------------------------
// Portable copy: the same loops in plain Rust (`mul_add` is the FMA of the SIMD copies).

mod portable {
    use super::*;

    pub fn block(w: &PackedW4A8, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        let (k, g, nb) = (w.k, w.group, w.group / QB);
        for t in t0..t1 {
            let valid = NR.min(w.n.saturating_sub(t * NR));
            if valid == 0 {
                continue;
            }
            for m in m0..m1 {
                let x8 = &a.x8[m * k..(m + 1) * k];
                let dx = &a.dx[m * (k / QB)..(m + 1) * (k / QB)];
                let mut tot = [0f32; NR];
                for gi in 0..w.groups {
                    let mut facc = [0f32; NR];
                    for b in 0..nb {
                        let mut d = [0i32; NR];
                        for c in b * QB / 8..(b + 1) * QB / 8 {
                            let (p, k0) = (w.codes_at(t, gi, c), gi * g + 8 * c);
                            for i in 0..NR {
                                for j in 0..4 {
                                    let byte = w.data[p + 4 * i + j];
                                    d[i] += (byte & 15) as i32 * x8[k0 + j] as i32 + (byte >> 4) as i32 * x8[k0 + 4 + j] as i32;
                                }
                            }
                        }
                        for i in 0..NR {
                            facc[i] = (d[i] as f32).mul_add(dx[gi * nb + b], facc[i]);
                        }
                    }
                    let (so, zo, czg) = (w.scales_at(t, gi), w.zeros_at(t, gi), a.cz[m * w.groups + gi]);
                    for i in 0..NR {
                        let s = f16::from_le_bytes([w.data[so + 2 * i], w.data[so + 2 * i + 1]]).to_f32();
                        facc[i] = (-(w.data[zo + i] as f32)).mul_add(czg, facc[i]);
                        tot[i] = facc[i].mul_add(s, tot[i]);
                    }
                }
                // SAFETY: rows m0..m1 x tile t belong to this task only.
                unsafe { store_row(y, w.n, m, t * NR, valid, &tot) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 copy: `vpmaddubsw` (u8 x i8 pairs -> i16) summed in i16 over one 32-block (at most
// 4 chunks x 4 products x 15 x 127 = 30480, no saturation), then `vpmaddwd` by 1 -> int32 per row.

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<const MR: usize, const T: usize>(w: &PackedW4A8, t: usize, a: &Q8Rows, m: usize, y: *mut f32) {
        let (k, g, groups, nb) = (w.k, w.group, w.groups, w.group / QB);
        let base = w.data.as_ptr();
        let x8 = a.x8.as_ptr().add(m * k);
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut tot = [[[_mm256_setzero_ps(); 2]; T]; MR];
        for gi in 0..groups {
            let mut facc = [[[_mm256_setzero_ps(); 2]; T]; MR];
            for b in 0..nb {
                let mut acc = [[[_mm256_setzero_si256(); 2]; T]; MR];
                for c in b * QB / 8..(b + 1) * QB / 8 {
                    let k0 = gi * g + 8 * c;
                    for j in 0..T {
                        let p = base.add(w.codes_at(t + j, gi, c));
                        crate::engine::int4_cpu::prefetch_super_tile(p, t + j);
                        for h in 0..2 {
                            let v = _mm256_loadu_si256(p.add(32 * h) as *const __m256i);
                            let lo = _mm256_and_si256(v, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                            for r in 0..MR {
                                let xp = x8.add(r * k + k0) as *const i32;
                                let s = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xp.read_unaligned())),
                                    _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xp.add(1).read_unaligned())),
                                );
                                acc[r][j][h] = _mm256_add_epi16(acc[r][j][h], s);
                            }
                        }
                    }
                }
                for r in 0..MR {
                    let d = _mm256_set1_ps(a.dx[(m + r) * (k / QB) + gi * nb + b]);
                    for j in 0..T {
                        for h in 0..2 {
                            let di = _mm256_madd_epi16(acc[r][j][h], ones);
                            facc[r][j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(di), d, facc[r][j][h]);
                        }
                    }
                }
            }
            for j in 0..T {
                let (sp, zp) = (base.add(w.scales_at(t + j, gi)), base.add(w.zeros_at(t + j, gi)));
                for h in 0..2 {
                    let s = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(16 * h) as *const __m128i));
                    let z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(zp.add(8 * h) as *const __m128i)));
                    for r in 0..MR {
                        let czg = _mm256_set1_ps(a.cz[(m + r) * groups + gi]);
                        let f = _mm256_fnmadd_ps(z, czg, facc[r][j][h]);
                        tot[r][j][h] = _mm256_fmadd_ps(f, s, tot[r][j][h]);
                    }
                }
            }
        }
        crate::engine::int4_cpu::avx2::store::<MR, T>(&tot, w.n, t, m, y);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block(w: &PackedW4A8, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        avx2_tiles!(kernel, w, a, m0, m1, t0, t1, y)
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512-VNNI copy: one tile = one zmm; per (row, tile) an int32 block sum, an f32 group sum and
// the f32 total: MR x T <= 8 keeps all of them in the 32 registers.

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn kernel<const MR: usize, const T: usize>(w: &PackedW4A8, t: usize, a: &Q8Rows, m: usize, y: *mut f32) {
        let (k, g, groups, nb) = (w.k, w.group, w.groups, w.group / QB);
        let base = w.data.as_ptr();
        let x8 = a.x8.as_ptr().add(m * k);
        let mask = _mm512_set1_epi8(0x0F);
        let mut tot = [[_mm512_setzero_ps(); T]; MR];
        for gi in 0..groups {
            let mut facc = [[_mm512_setzero_ps(); T]; MR];
            for b in 0..nb {
                let mut d = [[_mm512_setzero_si512(); T]; MR];
                for c in b * QB / 8..(b + 1) * QB / 8 {
                    let k0 = gi * g + 8 * c;
                    for j in 0..T {
                        let p = base.add(w.codes_at(t + j, gi, c));
                        crate::engine::int4_cpu::prefetch_super_tile(p, t + j);
                        let v = _mm512_loadu_si512(p as *const __m512i);
                        let lo = _mm512_and_si512(v, mask);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                        for r in 0..MR {
                            let xp = x8.add(r * k + k0) as *const i32;
                            d[r][j] = _mm512_dpbusd_epi32(d[r][j], lo, _mm512_set1_epi32(xp.read_unaligned()));
                            d[r][j] = _mm512_dpbusd_epi32(d[r][j], hi, _mm512_set1_epi32(xp.add(1).read_unaligned()));
                        }
                    }
                }
                for r in 0..MR {
                    let dxb = _mm512_set1_ps(a.dx[(m + r) * (k / QB) + gi * nb + b]);
                    for j in 0..T {
                        facc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r][j]), dxb, facc[r][j]);
                    }
                }
            }
            for j in 0..T {
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(w.scales_at(t + j, gi)) as *const __m256i));
                let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(w.zeros_at(t + j, gi)) as *const __m128i)));
                for r in 0..MR {
                    let czg = _mm512_set1_ps(a.cz[(m + r) * groups + gi]);
                    let f = _mm512_fnmadd_ps(z, czg, facc[r][j]);
                    tot[r][j] = _mm512_fmadd_ps(f, s, tot[r][j]);
                }
            }
        }
        crate::engine::int4_cpu::avx512::store::<MR, T>(&tot, w.n, t, m, y);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn block(w: &PackedW4A8, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        avx512_tiles!(kernel, w, a, m0, m1, t0, t1, y)
    }
}

// ---------------------------------------------------------------------------------------------
// AMX copy: per 16 rows x 16 outputs x 32 k one `tdpbsud` (int8 activations x unsigned codes,
// exact int32 sums: the `D` of the module comment), stored to a 1 KiB buffer and folded into the
// f32 sums with the same FMAs, in the same order, as the other copies (so the same bits). The
// int8 block scale of every 32 activations is what bounds it: each product of 8192 pairs returns
// 256 sums that need their own FMA, and on the machine measured (BENCHMARKS.md) the tile work
// (zero, two loads, product, store) and the folding take about as long as each other and hardly
// overlap: 1.3-1.7x the VNNI copy at 512 rows (`awqc bench-engine --kernels`). One activation
// scale per weight group would fold 2-4x less, but cost +0.8% (SmolLM2 g64) / +0.5% (Qwen g128)
// perplexity in a throw-away build, so the block stays 32.
// The tiles are bytes, so each 16-output tile's codes are first unpacked into a
// `[K/4][16 outputs][4]` byte buffer (exactly the layout `tdpbsud`'s B operand wants: the low
// nibbles of a packed chunk are one row of it, the high nibbles the next).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use super::*;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Whether the CPU has AMX-TILE and AMX-INT8 (CPUID 7.0 EDX bits 24, 25) and Linux lets this
    /// process use the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux
    /// 5.16+; granted once for the whole process).
    pub fn usable() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID leaf 7 exists on every AVX-512 CPU (callers check AVX-512 first).
            let e = __cpuid_count(7, 0);
            if e.edx >> 24 & 1 == 0 || e.edx >> 25 & 1 == 0 {
                return false;
            }
            let ret: i64;
            // SAFETY: the arch_prctl system call (158) only changes this process's permissions.
            unsafe {
                asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64,
                     lateout("rcx") _, lateout("r11") _, options(nostack));
            }
            ret == 0
        })
    }

    /// Palette 1: tmm0 / tmm1 the C tiles (16 rows x 16 int32), tmm4 the activations (16 rows x
    /// 32 int8), tmm5 the codes (8 rows of 4 k x 16 outputs).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    static CONFIG: TileConfig = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let tiles: [(usize, u8, u8); 4] = [(0, 16, 64), (1, 16, 64), (4, 16, 32), (5, 8, 64)];
        let mut i = 0;
        while i < tiles.len() {
            let (t, rows, colsb) = tiles[i];
            c[16 + 2 * t] = colsb;
            c[48 + t] = rows;
            i += 1;
        }
        TileConfig(c)
    };

    #[repr(C, align(64))]
    struct CBuf([[i32; 256]; 2]);

    /// Unpack tile `t`'s codes, all K, into `bb [K/4][16][4]`.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unpack(w: &PackedW4A8, t: usize, bb: *mut u8) {
        let mask = _mm512_set1_epi8(0x0F);
        let base = w.data.as_ptr();
        for gi in 0..w.groups {
            for c in 0..w.group / 8 {
                let v = _mm512_loadu_si512(base.add(w.codes_at(t, gi, c)) as *const __m512i);
                let row = bb.add((gi * w.group / 4 + 2 * c) * 64);
                _mm512_storeu_si512(row as *mut __m512i, _mm512_and_si512(v, mask));
                _mm512_storeu_si512(row.add(64) as *mut __m512i, _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask));
            }
        }
    }

    /// Rows `m..m+16`, tile `t` (codes unpacked in `bb`); the tile configuration is loaded.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn kernel16(w: &PackedW4A8, bb: *const u8, t: usize, a: &Q8Rows, m: usize, y: *mut f32) {
        let (k, groups, nb, nq) = (w.k, w.groups, w.group / QB, w.k / QB);
        let base = w.data.as_ptr();
        let x8 = a.x8.as_ptr().add(m * k);
        let dx = a.dx.as_ptr().add(m * nq);
        let mut cbuf = std::mem::MaybeUninit::<CBuf>::uninit();
        let cb = cbuf.as_mut_ptr() as *mut i32;
        let mut facc = [_mm512_setzero_ps(); 16];
        let mut tot = [[_mm512_setzero_ps(); 1]; 16];
        // Step i: block i's D into C tile i % 2 and on to its buffer, then block i - 1 (stored a
        // step ago) folded while the tile unit works.
        for i in 0..=nq {
            if i < nq {
                let (ap, bp, cp) = (x8.add(i * QB), bb.add(i * 512), cb.add((i % 2) * 256));
                macro_rules! dp {
                    ($c:literal) => {
                        asm!(concat!("tilezero tmm", $c), "tileloadd tmm4, [{a} + {lda}*1]", "tileloadd tmm5, [{b} + {s64}*1]",
                             concat!("tdpbsud tmm", $c, ", tmm4, tmm5"), concat!("tilestored [{c} + {s64}*1], tmm", $c),
                             a = in(reg) ap, lda = in(reg) k, b = in(reg) bp, c = in(reg) cp, s64 = in(reg) 64usize, options(nostack))
                    };
                }
                if i % 2 == 0 {
                    dp!("0")
                } else {
                    dp!("1")
                }
            }
            if i == 0 {
                continue;
            }
            // Fold block j = i - 1: facc = fma(D, d_b, facc) per row.
            let j = i - 1;
            let cp = cb.add((j % 2) * 256);
            for r in 0..16 {
                let d = _mm512_cvtepi32_ps(_mm512_load_si512(cp.add(16 * r) as *const __m512i));
                facc[r] = _mm512_fmadd_ps(d, _mm512_set1_ps(*dx.add(r * nq + j)), facc[r]);
            }
            if (j + 1) % nb == 0 {
                let gi = j / nb;
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(w.scales_at(t, gi)) as *const __m256i));
                let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(w.zeros_at(t, gi)) as *const __m128i)));
                for r in 0..16 {
                    let f = _mm512_fnmadd_ps(z, _mm512_set1_ps(a.cz[(m + r) * groups + gi]), facc[r]);
                    tot[r][0] = _mm512_fmadd_ps(f, s, tot[r][0]);
                    facc[r] = _mm512_setzero_ps();
                }
            }
        }
        crate::engine::int4_cpu::avx512::store::<16, 1>(&tot, w.n, t, m, y);
    }

    /// Rows `m0..m1` x tiles `t0..t1`: every full 16 rows on AMX, the rest on the VNNI copy.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn block(w: &PackedW4A8, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        let m16 = m0 + (m1 - m0) / 16 * 16;
        if m16 > m0 {
            // Every tile's codes unpacked once ([tiles][K/4][16][4] bytes, L2-resident), then each
            // 16-row chunk of activations (L1-resident) meets every tile in turn.
            let tk = w.k * 16;
            let mut bb = vec![0u8; (t1 - t0) * tk];
            for t in t0..t1 {
                if t * NR < w.n {
                    unpack(w, t, bb.as_mut_ptr().add((t - t0) * tk));
                }
            }
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
            for m in (m0..m16).step_by(16) {
                for t in t0..t1 {
                    if t * NR < w.n {
                        kernel16(w, bb.as_ptr().add((t - t0) * tk), t, a, m, y);
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        if m16 < m1 {
            super::avx512::block(w, a, m16, m1, t0, t1, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::int4::QuantParams;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
        }
    }

    fn random_layer(rng: &mut Rng, n: usize, k: usize, g: usize) -> QuantizedLinear {
        let q = (0..n * k).map(|_| (rng.next() % 16) as u8).collect();
        let zeros = (0..n * k / g).map(|_| (rng.next() % 16) as u8).collect();
        let scales = (0..n * k / g).map(|_| f16::from_f32(1e-3 + (rng.next() % 4096) as f32 * 1e-5)).collect();
        QuantizedLinear { n, k, params: QuantParams::new(4, g).unwrap(), q, zeros, scales, bias: None, float_zeros: None }
    }

    /// Activations with outliers (every 31st value x10) and an all-zero block.
    fn random_x(rng: &mut Rng, m: usize, k: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..m * k).map(|i| rng.f() * if i % 31 == 0 { 10.0 } else { 1.0 }).collect();
        if k >= 2 * QB {
            x[QB..2 * QB].fill(0.0);
        }
        x
    }

    /// f64 `y = a · Wᵀ` and `Σ |a·w|` per output, for `a` and `W` given as f32 values.
    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for r in 0..n {
                let (mut s, mut a) = (0f64, 0f64);
                for c in 0..k {
                    let p = x[i * k + c] as f64 * w[r * k + c] as f64;
                    s += p;
                    a += p.abs();
                }
                y[i * n + r] = s;
                mag[i * n + r] = a;
            }
        }
        (y, mag)
    }

    #[test]
    fn activation_codes_follow_the_definition() {
        let mut rng = Rng(11);
        let (m, k, g) = (3, 256, 128);
        let x = random_x(&mut rng, m, k);
        let a = quantize_rows(&x, m, k, g);
        for row in 0..m {
            for b in 0..k / QB {
                let xs = &x[row * k + b * QB..row * k + (b + 1) * QB];
                let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(a.dx[row * k / QB + b], amax / 127.0);
                for (c, &v) in xs.iter().enumerate() {
                    let want = if amax > 0.0 { (v * (127.0 / amax)).round_ties_even() } else { 0.0 };
                    assert_eq!(a.x8[row * k + b * QB + c] as f32, want, "row {row} block {b} [{c}] = {v}");
                    assert!(want.abs() <= 127.0);
                    // Rounding error at most half a step.
                    assert!((a.x8[row * k + b * QB + c] as f32 * amax / 127.0 - v).abs() <= amax / 254.0 * 1.0001);
                }
            }
            for gi in 0..k / g {
                let want: f64 = (gi * g / QB..(gi + 1) * g / QB)
                    .map(|b| a.dx[row * k / QB + b] as f64 * a.x8[row * k + b * QB..row * k + (b + 1) * QB].iter().map(|&q| q as f64).sum::<f64>())
                    .sum();
                assert!((a.cz[row * k / g + gi] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "cz row {row} group {gi}");
            }
        }
        // All-zero block: codes 0, scale 0.
        assert!(a.x8[QB..2 * QB].iter().all(|&q| q == 0) && a.dx[1] == 0.0);
    }

    #[test]
    fn every_activation_quantizer_copy_gives_the_portable_bits() {
        let mut rng = Rng(13);
        let (k, g) = (384, 64);
        let mut x = random_x(&mut rng, 1, k);
        // A zero block, a block with a single value, ties at .5 after scaling, tiny values.
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        x[64..96].iter_mut().enumerate().for_each(|(i, v)| *v = if i == 5 { -3.0 } else { 0.0 });
        x[96..128].iter_mut().enumerate().for_each(|(i, v)| *v = if i == 0 { 127.0 } else { i as f32 - 15.5 });
        x[128..160].iter_mut().for_each(|v| *v *= 1e-30);
        type Copy<'a> = &'a dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [f32], &mut [i32]);
        let run = |f: Copy| {
            let (mut x8, mut dx, mut cz, mut bs) = (vec![0i8; k], vec![0f32; k / QB], vec![0f32; k / g], vec![0i32; k / QB]);
            f(&x, &mut x8, &mut dx, &mut cz, &mut bs);
            (x8, dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), cz.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bs)
        };
        let want = run(&|x, a, b, c, d| quantize_row_portable(x, a, b, c, d, g));
        #[cfg(target_arch = "x86_64")]
        {
            if has(Isa::Avx2) {
                // SAFETY: AVX2 / FMA detected.
                assert_eq!(run(&|x, a, b, c, d| unsafe { quantize_row_avx2(x, a, b, c, d, g) }), want, "AVX2 copy");
            }
            if has(Isa::Avx512Vnni) {
                // SAFETY: AVX-512 F/BW/VL detected.
                assert_eq!(run(&|x, a, b, c, d| unsafe { quantize_row_avx512(x, a, b, c, d, g) }), want, "AVX-512 copy");
            }
        }
        assert!(want.0.iter().any(|&q| q == 127 || q == -127));
    }

    #[test]
    fn dequantize_equals_the_quantized_layer() {
        let mut rng = Rng(12);
        for &(n, k, g) in &[(3, 96, 32), (37, 576, 64), (49, 384, 128), (70, 256, 256)] {
            let l = random_layer(&mut rng, n, k, g);
            let p = PackedW4A8::from_quantized(&l).unwrap();
            assert_eq!(p.dequantize(), l.dequantize().data, "[{n}x{k} g{g}]");
            assert_eq!(p.bytes(), n.div_ceil(64) * 64 * (k / g) * (g / 2 + 3));
        }
    }

    /// Every copy against an f64 product of the int8 activations (as `Q8Rows::dequantize` gives
    /// them) and the dequantized weights: |y - ref| <= 1e-5 · Σ|x̂·w|. And against the
    /// unquantized activations: |y - x·Wᵀ| <= Σ_k |w| · d_b / 2 (+ the same f32 slack), the
    /// bound the int8 rounding allows.
    #[test]
    fn matches_f64_reference_on_every_copy() {
        let mut rng = Rng(13);
        let shapes = [(3, 96, 32), (37, 576, 64), (49, 160, 32), (130, 1536, 64), (16, 384, 128), (67, 896, 128), (200, 640, 128), (20, 512, 256)];
        for (si, &(n, k, g)) in shapes.iter().enumerate() {
            let l = random_layer(&mut rng, n, k, g);
            let p = PackedW4A8::from_quantized(&l).unwrap();
            let wd = l.dequantize().data;
            for &m in &[1usize, 2, 3, 5, 8, 13, 16, 17, 64, 150] {
                if m > 64 && si % 3 != 0 {
                    continue;
                }
                let x = random_x(&mut rng, m, k);
                let a = quantize_rows(&x, m, k, g);
                let (r, mag) = reference(&a.dequantize(), m, &wd, n, k);
                let (rx, _) = reference(&x, m, &wd, n, k);
                for isa in available() {
                    let mut y = vec![f32::NAN; m * n];
                    w4a8_matmul_with(isa, &a, &p, &mut y);
                    for (o, (&v, (&want, &s))) in y.iter().zip(r.iter().zip(&mag)).enumerate() {
                        let err = (v as f64 - want).abs();
                        assert!(err <= 1e-5 * s + 1e-30, "{isa:?} M={m} [{n}x{k} g{g}] output {o}: {v} vs {want} (err {err:e})");
                        let (i, row) = (o / n, o % n);
                        let bound: f64 = (0..k).map(|c| wd[row * k + c].abs() as f64 * a.dx[i * k / QB + c / QB] as f64 / 2.0).sum();
                        assert!((v as f64 - rx[o]).abs() <= bound * 1.0001 + 1e-5 * s, "{isa:?} M={m}: int8 rounding beyond its bound at {o}");
                    }
                }
            }
        }
    }

    #[test]
    fn copies_agree_bit_for_bit_and_rows_do_not_depend_on_the_batch() {
        let mut rng = Rng(14);
        let (n, k, g) = (70, 320, 64);
        let l = random_layer(&mut rng, n, k, g);
        let p = PackedW4A8::from_quantized(&l).unwrap();
        let m = 37;
        let x = random_x(&mut rng, m, k);
        let a = quantize_rows(&x, m, k, g);
        let mut first: Option<Vec<f32>> = None;
        for isa in available() {
            let mut full = vec![0f32; m * n];
            w4a8_matmul_with(isa, &a, &p, &mut full);
            for i in 0..m {
                let one_a = quantize_rows(&x[i * k..(i + 1) * k], 1, k, g);
                assert_eq!(one_a.x8, a.x8[i * k..(i + 1) * k]);
                let mut one = vec![0f32; n];
                w4a8_matmul_with(isa, &one_a, &p, &mut one);
                assert_eq!(one, full[i * n..(i + 1) * n], "{isa:?} row {i} alone vs in a batch of {m}");
            }
            match &first {
                None => first = Some(full),
                Some(f) => assert!(*f == full, "{isa:?} differs from {:?}", available()[0]),
            }
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rng = Rng(15);
        let (n, k, g) = (1000, 576, 64);
        let l = random_layer(&mut rng, n, k, g);
        let p = PackedW4A8::from_quantized(&l).unwrap();
        let pools: Vec<rayon::ThreadPool> = [1, 2, 3].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()).collect();
        for m in [1, 7, 16, 200] {
            let x = random_x(&mut rng, m, k);
            for isa in available() {
                let run = |pool: &rayon::ThreadPool| {
                    pool.install(|| {
                        let a = quantize_rows(&x, m, k, g);
                        let mut y = vec![0f32; m * n];
                        w4a8_matmul_with(isa, &a, &p, &mut y);
                        y
                    })
                };
                let r1 = run(&pools[0]);
                assert!(r1 == run(&pools[1]) && r1 == run(&pools[2]), "{isa:?} M={m}: thread counts differ");
            }
        }
    }

    #[test]
    fn refuses_groups_the_kernels_cannot_take() {
        let mut rng = Rng(16);
        let l = random_layer(&mut rng, 4, 96, 48);
        let e = PackedW4A8::from_quantized(&l).unwrap_err();
        assert!(e.msg.contains("group size 48") && e.msg.contains("multiple of 32"), "{}", e.msg);
        let mut l = random_layer(&mut rng, 4, 128, 64);
        l.zeros[1] = 16;
        assert!(PackedW4A8::from_quantized(&l).unwrap_err().msg.contains("zero point 16"));
        assert!(!supports_group(16) && supports_group(32) && supports_group(128));
    }
}
