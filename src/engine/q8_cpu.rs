//! The embedding table / LM head in int8 (llama.cpp's `q8_0`: 32 weights share one f16 scale)
//! for the int8-activation engine: decode reads the LM head once per token, and in f16 it is as
//! many bytes as all INT4 linears of a small model together (SmolLM2: 57 MB of 115 MB).
//!
//! Weights: per row, per block of 32 k, `d = f16(amax / 127)`, `w8 = round(w / d)` in [-127, 127].
//! Activations: [`Q8Rows`] (`w4a8_cpu.rs`). Per output:
//! ```text
//! acc = 0
//! for each 32-block b (ascending): D = Σ w8·x8 (exact int32);  acc = fma(D · dw_b, dx_b, acc)
//! ```
//! (`D · dw_b` rounded to f32 first), the same bits on every copy, independent of M, tiling and
//! thread count. The AVX-512-VNNI copy multiplies `w8 + 128` as unsigned bytes and subtracts
//! `128 · Σ x8`; the AVX2 copy uses `|w8|` and `x8 · sign(w8)` (`vpmaddubsw` pairs stay below
//! 2^15); both give the same `D`.
//!
//! Layout: rows in tiles of 16, super-tiles of 4 tiles; super-tile s is `K/32` blocks of
//! `8 chunks x 4 tiles x 64` code bytes (in chunk c of tile j, bytes 4i..4i+4 are row i's
//! w8[32b + 4c ..+4]) followed by `64 x f16` scales (tile j's at +32j).

#![allow(clippy::needless_range_loop)]

use crate::engine::int4_cpu::{drive, store_row, SyncPtr, NR, SR, ST};
use crate::engine::w4a8_cpu::{available, detected, has, Isa, Q8Rows, QB};
use half::f16;
use rayon::prelude::*;

/// Bytes of one (super-tile, block): 2048 codes + 128 scale bytes.
const BB: usize = SR * QB + 2 * SR;

/// `[N, K]` weights in int8 with f16 block scales (module comment: layout).
pub struct Q8Matrix {
    pub n: usize,
    pub k: usize,
    tiles: usize,
    blocks: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix[{}x{}]", self.n, self.k)
    }
}

impl Q8Matrix {
    /// Whether a table of width `k` can be stored (K a multiple of 32).
    pub fn supports(k: usize) -> bool {
        k > 0 && k.is_multiple_of(QB)
    }

    /// Quantize `w` (`[N, K]` row-major, K a multiple of 32).
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Self {
        assert!(Self::supports(k) && w.len() == n * k, "Q8Matrix::from_f32: {} values for [{n}, {k}] (K must be a multiple of {QB})", w.len());
        let (tiles, blocks) = (n.div_ceil(SR) * ST, k / QB);
        let mut data = vec![0u8; tiles / ST * blocks * BB];
        data.par_chunks_mut(blocks * BB).enumerate().for_each(|(st, sup)| {
            for r in 0..SR.min(n.saturating_sub(st * SR)) {
                let (j, i) = (r / NR, r % NR);
                let row = &w[(st * SR + r) * k..(st * SR + r + 1) * k];
                for (b, blk) in sup.chunks_mut(BB).enumerate() {
                    let xs = &row[b * QB..(b + 1) * QB];
                    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let d = f16::from_f32(amax / 127.0);
                    let id = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
                    for (c, &v) in xs.iter().enumerate() {
                        let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
                        blk[((c / 4) * ST + j) * 64 + 4 * i + c % 4] = q as u8;
                    }
                    let sb = d.to_le_bytes();
                    blk[SR * QB + 2 * r] = sb[0];
                    blk[SR * QB + 2 * r + 1] = sb[1];
                }
            }
        });
        Q8Matrix { n, k, tiles, blocks, data }
    }

    /// Resident bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Row `i` dequantized (`w8 · d`; embedding lookup). `out.len()` must be `k`.
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.n && out.len() == self.k, "Q8Matrix::row_f32: row {i} of {}, out {} for k {}", self.n, out.len(), self.k);
        let (t, r) = (i / NR, i % NR);
        for b in 0..self.blocks {
            let so = self.scales_at(t, b) + 2 * r;
            let d = f16::from_le_bytes([self.data[so], self.data[so + 1]]).to_f32();
            for c in 0..QB {
                out[b * QB + c] = self.data[self.codes_at(t, b, c / 4) + 4 * r + c % 4] as i8 as f32 * d;
            }
        }
    }

    /// Byte offset of tile `t`'s 64 code bytes of chunk `c` (4 k) of block `b`.
    #[inline(always)]
    fn codes_at(&self, t: usize, b: usize, c: usize) -> usize {
        ((t / ST) * self.blocks + b) * BB + (c * ST + t % ST) * 64
    }
    /// Byte offset of tile `t`'s 16 f16 scales of block `b`.
    #[inline(always)]
    fn scales_at(&self, t: usize, b: usize) -> usize {
        ((t / ST) * self.blocks + b) * BB + SR * QB + (t % ST) * 2 * NR
    }
}

/// `y[M, N] = x̂[M, K] · Ŵᵀ`; overwrites `y`. Uses the best copy.
pub fn q8_matmul(a: &Q8Rows, w: &Q8Matrix, y: &mut [f32]) {
    q8_matmul_with(detected(), a, w, y)
}

/// [`q8_matmul`] with a chosen copy (panics if `isa` is not in [`available`]).
pub fn q8_matmul_with(isa: Isa, a: &Q8Rows, w: &Q8Matrix, y: &mut [f32]) {
    assert!(has(isa), "q8_cpu: the {isa:?} kernels cannot run on this CPU (available: {:?})", available());
    assert!(a.k == w.k && y.len() == a.m * w.n, "q8_matmul: activations [{}, {}] for weight [{}, {}], y has {} values", a.m, a.k, w.n, w.k, y.len());
    let yp = SyncPtr(y.as_mut_ptr());
    drive(a.m, w.tiles, w.blocks * BB / ST, |m0, m1, t0, t1| match isa {
        Isa::Portable => portable::block(w, a, m0, m1, t0, t1, yp.get()),
        // SAFETY: the features were checked; tasks write disjoint outputs.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::block(w, a, m0, m1, t0, t1, yp.get()) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => unsafe { avx512::block(w, a, m0, m1, t0, t1, yp.get()) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!(),
    });
}

mod portable {
    use super::*;

    pub fn block(w: &Q8Matrix, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        let (k, nb) = (w.k, w.blocks);
        for t in t0..t1 {
            let valid = NR.min(w.n.saturating_sub(t * NR));
            if valid == 0 {
                continue;
            }
            for m in m0..m1 {
                let mut acc = [0f32; NR];
                for b in 0..nb {
                    let mut d = [0i32; NR];
                    for c in 0..QB / 4 {
                        let p = w.codes_at(t, b, c);
                        for i in 0..NR {
                            for e in 0..4 {
                                d[i] += w.data[p + 4 * i + e] as i8 as i32 * a.x8[m * k + b * QB + 4 * c + e] as i32;
                            }
                        }
                    }
                    let so = w.scales_at(t, b);
                    for i in 0..NR {
                        let dw = f16::from_le_bytes([w.data[so + 2 * i], w.data[so + 2 * i + 1]]).to_f32();
                        acc[i] = (d[i] as f32 * dw).mul_add(a.dx[m * nb + b], acc[i]);
                    }
                }
                // SAFETY: rows m0..m1 x tile t belong to this task only.
                unsafe { store_row(y, w.n, m, t * NR, valid, &acc) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<const MR: usize, const T: usize>(w: &Q8Matrix, t: usize, a: &Q8Rows, m: usize, y: *mut f32) {
        let (k, nb) = (w.k, w.blocks);
        let base = w.data.as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; MR];
        for b in 0..nb {
            let mut d = [[[_mm256_setzero_si256(); 2]; T]; MR];
            for c in 0..QB / 4 {
                for j in 0..T {
                    let p = base.add(w.codes_at(t + j, b, c));
                    crate::engine::int4_cpu::prefetch_super_tile(p, t + j);
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(p.add(32 * h) as *const __m256i);
                        let av = _mm256_abs_epi8(v);
                        for r in 0..MR {
                            let xv = _mm256_set1_epi32((a.x8.as_ptr().add((m + r) * k + b * QB + 4 * c) as *const i32).read_unaligned());
                            let p16 = _mm256_maddubs_epi16(av, _mm256_sign_epi8(xv, v));
                            d[r][j][h] = _mm256_add_epi32(d[r][j][h], _mm256_madd_epi16(p16, ones));
                        }
                    }
                }
            }
            for j in 0..T {
                let sp = base.add(w.scales_at(t + j, b));
                for h in 0..2 {
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(16 * h) as *const __m128i));
                    for r in 0..MR {
                        let f = _mm256_mul_ps(_mm256_cvtepi32_ps(d[r][j][h]), dw);
                        acc[r][j][h] = _mm256_fmadd_ps(f, _mm256_set1_ps(a.dx[(m + r) * nb + b]), acc[r][j][h]);
                    }
                }
            }
        }
        crate::engine::int4_cpu::avx2::store::<MR, T>(&acc, w.n, t, m, y);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block(w: &Q8Matrix, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        crate::engine::w4a8_cpu::avx2_tiles!(kernel, w, a, m0, m1, t0, t1, y)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn kernel<const MR: usize, const T: usize>(w: &Q8Matrix, t: usize, a: &Q8Rows, m: usize, y: *mut f32) {
        let (k, nb) = (w.k, w.blocks);
        let base = w.data.as_ptr();
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); T]; MR];
        for b in 0..nb {
            let mut d = [[_mm512_setzero_si512(); T]; MR];
            for c in 0..QB / 4 {
                for j in 0..T {
                    let p = base.add(w.codes_at(t + j, b, c));
                    crate::engine::int4_cpu::prefetch_super_tile(p, t + j);
                    // w8 + 128 as unsigned bytes.
                    let u = _mm512_xor_si512(_mm512_loadu_si512(p as *const __m512i), flip);
                    for r in 0..MR {
                        let xv = _mm512_set1_epi32((a.x8.as_ptr().add((m + r) * k + b * QB + 4 * c) as *const i32).read_unaligned());
                        d[r][j] = _mm512_dpbusd_epi32(d[r][j], u, xv);
                    }
                }
            }
            for j in 0..T {
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(w.scales_at(t + j, b)) as *const __m256i));
                for r in 0..MR {
                    let corr = _mm512_set1_epi32(128 * a.bsum[(m + r) * nb + b]);
                    let f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(d[r][j], corr)), dw);
                    acc[r][j] = _mm512_fmadd_ps(f, _mm512_set1_ps(a.dx[(m + r) * nb + b]), acc[r][j]);
                }
            }
        }
        crate::engine::int4_cpu::avx512::store::<MR, T>(&acc, w.n, t, m, y);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn block(w: &Q8Matrix, a: &Q8Rows, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        crate::engine::w4a8_cpu::avx512_tiles!(kernel, w, a, m0, m1, t0, t1, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::w4a8_cpu::quantize_rows;

    fn rng_vals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * scale * if i % 29 == 0 { 8.0 } else { 1.0 }
            })
            .collect()
    }

    #[test]
    fn rows_are_the_block_quantized_weights() {
        let (n, k) = (37, 96);
        let w = rng_vals(1, n * k, 0.05);
        let q = Q8Matrix::from_f32(&w, n, k);
        assert_eq!(q.bytes(), n.div_ceil(64) * (k / QB) * (64 * QB + 128));
        let mut row = vec![0f32; k];
        for i in 0..n {
            q.row_f32(i, &mut row);
            for b in 0..k / QB {
                let xs = &w[i * k + b * QB..i * k + (b + 1) * QB];
                let d = f16::from_f32(xs.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0).to_f32();
                for c in 0..QB {
                    assert_eq!(row[b * QB + c], (xs[c] / d).round_ties_even().clamp(-127.0, 127.0) * d, "row {i} k {}", b * QB + c);
                    assert!((row[b * QB + c] - xs[c]).abs() <= d * 0.5001);
                }
            }
        }
    }

    #[test]
    fn matches_f64_reference_and_copies_agree_bit_for_bit() {
        for &(n, k) in &[(3, 32), (37, 576), (130, 96), (200, 256)] {
            let w = rng_vals(n as u64, n * k, 0.05);
            let q = Q8Matrix::from_f32(&w, n, k);
            let mut wq = vec![0f32; n * k];
            for i in 0..n {
                q.row_f32(i, &mut wq[i * k..(i + 1) * k]);
            }
            for &m in &[1usize, 2, 5, 8, 16, 19] {
                let x = rng_vals(7 + m as u64, m * k, 1.0);
                let a = quantize_rows(&x, m, k, k);
                let xq = a.dequantize();
                let mut first: Option<Vec<f32>> = None;
                for isa in available() {
                    let mut y = vec![f32::NAN; m * n];
                    q8_matmul_with(isa, &a, &q, &mut y);
                    for o in 0..m * n {
                        let (i, r) = (o / n, o % n);
                        let (mut want, mut mag) = (0f64, 0f64);
                        for c in 0..k {
                            let p = xq[i * k + c] as f64 * wq[r * k + c] as f64;
                            want += p;
                            mag += p.abs();
                        }
                        assert!((y[o] as f64 - want).abs() <= 1e-5 * mag + 1e-30, "{isa:?} M={m} [{n}x{k}] output {o}: {} vs {want}", y[o]);
                    }
                    // Each row alone gives the same bits as inside the batch.
                    for i in 0..m {
                        let one = quantize_rows(&x[i * k..(i + 1) * k], 1, k, k);
                        let mut yo = vec![0f32; n];
                        q8_matmul_with(isa, &one, &q, &mut yo);
                        assert_eq!(yo, y[i * n..(i + 1) * n], "{isa:?} row {i} alone");
                    }
                    match &first {
                        None => first = Some(y),
                        Some(f) => assert!(*f == y, "{isa:?} differs from the first copy"),
                    }
                }
            }
        }
    }
}
