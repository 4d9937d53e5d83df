//! CPU matmul kernels that read packed INT4 weights (W4A16: f32 activations, 4-bit weights with
//! group-wise f16 scale and integer zero point) and f16 weights directly, without a dequantized f32
//! copy resident in memory. The exact path (`--activations f32`, `awqc eval`'s default); the
//! int8-activation kernels that generation and serving use by default are in `w4a8_cpu.rs`.
//!
//! # Why this shape of kernel
//!
//! Decode (M = 1..16 rows of activations) is memory-bound: every weight is read once per token and
//! used M times, so the packed weights must stream at close to DRAM bandwidth and be unpacked
//! once per M rows. Prefill (M in the hundreds or thousands) is compute-bound. One kernel serves
//! both: an outer-product ("GEMM microkernel") loop that unpacks, for one k, the codes of 16
//! consecutive output rows into one 16-lane f32 vector (two 8-lane vectors on AVX2) and FMAs it
//! with the broadcast activation `x[m][k]` of MR activation rows (MR = 1..16). No horizontal sums:
//! the 16 lanes are 16 outputs `y[m][n0..n0+16]`. Small MR processes several 16-row tiles at once
//! so that enough independent FMA chains are in flight; MR = 16 reuses each unpacked vector 16
//! times, which makes the unpacking (about 6 vector ops per 32 weights against 32 FMAs) cheap
//! enough for prefill.
//!
//! # Packed INT4 layout (`PackedInt4::data`)
//!
//! Output rows are cut into tiles of 16 and super-tiles of 4 tiles = 64 rows (the last one padded
//! with rows whose codes, scale and zero are 0). Super-tile s is stored as `groups` consecutive
//! blocks, one per quantization group, each `4 * (g * 8 + 48)` bytes (r = row in the super-tile):
//! ```text
//! codes  : g/2 k-pairs x 64 bytes, byte[p][r] = q[64s+r][k0+2p] | q[64s+r][k0+2p+1] << 4
//! scales : 64 x f16 (little endian), scale[64s+r][group]
//! zeros  : 64 x u8,                  zero[64s+r][group]
//! ```
//! so one 16-byte load + zero-extension to 16 dwords gives both k values of a pair for one tile
//! (low nibble `& 0xF`, high nibble `>> 4`), and the weights are one sequential stream (codes and
//! group parameters interleaved: 4 + 24/g bits per weight, as the unpacked format's f16 scale +
//! u8 zero). The M = 1 kernel reads the 4 tiles of a super-tile together, i.e. one cache line
//! per k-pair, with a software prefetch 2 KiB ahead (9.4 GB/s from DRAM on one core against
//! 6.8 GB/s without it, 11 GB/s for a plain sum). `q - zero` is made exact in f32 with the "magic number" trick: the bit pattern
//! `0x4B00_0000 | q` is the float 2^23 + q, and subtracting the float 2^23 + zero gives q - zero
//! exactly.
//!
//! # Arithmetic (the same on every copy, so AVX2 and AVX-512 give the same bits)
//!
//! For each output `y[m][n]`: `tot = 0; for each group (ascending): acc = 0; for k in the group
//! (ascending): acc = fma(x[m][k], q - z, acc); tot = fma(acc, scale, tot)`. Products are
//! therefore `x * (q - z)` exactly as the reference dequantization `(q - z) * s` is applied, with
//! the scale factored out of each group's sum. The order does not depend on M, on the tiling or on
//! the thread count: a row's result is the same whether it is computed alone (decode) or in a
//! batch (prefill), and parallel runs are bit-identical to serial ones. The portable copy uses
//! separate multiply and add (no FMA unit assumed), so its bits differ from the SIMD copies' in
//! the last place. f16 weights use the same scheme with `acc` reset every 64 k (accuracy) and no
//! scale.
//!
//! Parallelism: rayon over disjoint blocks of output tiles (and, for large M, blocks of rows);
//! each output element is written by exactly one task.

// Kernels index several small fixed-size arrays with the same loop variable.
#![allow(clippy::needless_range_loop)]

use crate::error::{Error, Result};
use crate::quant::int4::QuantizedLinear;
use half::f16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows per tile (lanes of one AVX-512 vector).
pub(crate) const NR: usize = 16;
/// Tiles per super-tile: 4 tiles are interleaved in memory so that the small-M kernels, which
/// read 4 tiles at once, see one sequential stream (the hardware prefetcher follows it; 4 streams
/// 4.6 KB apart did not: 3.6 GB/s instead of 9).
pub(crate) const ST: usize = 4;
/// Rows per super-tile.
pub(crate) const SR: usize = NR * ST;
/// Software prefetch distance (bytes ahead in the weight stream) of the x86 kernels.
pub(crate) const PREFETCH: usize = 2048;

/// Prefetch for the W4A8 / q8 kernels (AVX-512 and AVX2), `p` being tile `tile`'s 64 bytes of one chunk.
/// Their batch kernels walk one tile at a time, 256 bytes a step (the 4 tiles of a super-tile are
/// interleaved per chunk), so a prefetch of its own line alone leaves the other three tiles'
/// lines to demand misses when their passes come. The pass over a super-tile's first tile fetches
/// the chunk's lines of all four, `2 · PREFETCH` ahead (BENCHMARKS.md, "Batched decode:
/// prefetching the super-tile", and "Batched decode on AVX2").
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn prefetch_super_tile(p: *const u8, tile: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    if tile.is_multiple_of(ST) {
        for l in 0..ST {
            // SAFETY: prefetches never fault, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(2 * PREFETCH + 64 * l) as *const i8);
        }
    }
}
/// M above which rows are also split across tasks (prefill).
const SMALL_M: usize = 16;
/// Rows per task for large M.
const MB: usize = 64;
/// f16 accumulation chunk along k.
const F16_KC: usize = 64;

/// Which SIMD copy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust (any architecture).
    Portable,
    /// x86-64 AVX2 + FMA + F16C, 8-lane vectors.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ FMA, F16C), 16-lane vectors.
    Avx512,
}

fn has(isa: Isa) -> bool {
    match isa {
        Isa::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            has(Isa::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
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
    [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| has(i)).collect()
}

fn check_isa(isa: Isa) {
    assert!(has(isa), "int4_cpu: the {isa:?} kernels cannot run on this CPU (available: {:?})", available());
}

/// The checks every packing of a quantized layer makes: 4 bits, consistent sizes, 4-bit codes and
/// zeros (`kernels` names the kernels in the message; the group size is the packer's own check).
pub(crate) fn check_layer(l: &QuantizedLinear, what: &str, kernels: &str) -> Result<()> {
    let (n, k) = (l.n, l.k);
    if l.params.bits != 4 {
        return Err(Error::usage(format!("{what}: the {kernels} kernels need 4-bit weights, this layer has {} bits", l.params.bits)));
    }
    let groups = if l.params.group > 0 { k / l.params.group } else { 0 };
    if l.q.len() != n * k || l.zeros.len() != n * groups || l.scales.len() != n * groups {
        return Err(Error::input(
            what,
            format!(
                "inconsistent sizes: {} codes, {} zeros, {} scales (expected {}, {}, {})",
                l.q.len(),
                l.zeros.len(),
                l.scales.len(),
                n * k,
                n * groups,
                n * groups
            ),
        ));
    }
    if let Some(i) = l.q.iter().position(|&c| c > 15) {
        return Err(Error::input(what, format!("code {} at flat index {i} is not a 4-bit value", l.q[i])));
    }
    if let Some(i) = l.zeros.iter().position(|&z| z > 15) {
        return Err(Error::input(what, format!("zero point {} at flat index {i} is not a 4-bit value", l.zeros[i])));
    }
    Ok(())
}

/// INT4 weights packed for the kernels (see the module comment for the layout).
#[derive(Clone)]
pub struct PackedInt4 {
    pub n: usize,
    pub k: usize,
    pub group: usize,
    /// 16-row tiles, a multiple of 4 (rows padded to a multiple of 64).
    tiles: usize,
    groups: usize,
    /// Bytes of one (super-tile, group) block: 4 x (g * 8 codes + 32 scale + 16 zero bytes).
    gb: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedInt4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedInt4[{}x{}, g{}]", self.n, self.k, self.group)
    }
}

impl PackedInt4 {
    /// Repack a quantized linear layer (bias ignored: the caller adds it).
    pub fn from_quantized(l: &QuantizedLinear) -> Result<Self> {
        let (n, k, g) = (l.n, l.k, l.params.group);
        let what = format!("int4 weight [{n}, {k}]");
        check_layer(l, &what, "CPU INT4")?;
        if g == 0 || g % 8 != 0 || k % g != 0 {
            return Err(Error::usage(format!(
                "{what}: group size {g} must be a positive multiple of 8 that divides in_features {k}"
            )));
        }
        let groups = k / g;
        let tiles = n.div_ceil(SR) * ST;
        let gb = ST * (g * 8 + 48);
        let mut data = vec![0u8; tiles / ST * groups * gb];
        data.par_chunks_mut(groups * gb).enumerate().for_each(|(st, sup)| {
            for (gi, blk) in sup.chunks_mut(gb).enumerate() {
                for r in 0..SR.min(n.saturating_sub(st * SR)) {
                    let row = st * SR + r;
                    let q = &l.q[row * k + gi * g..row * k + (gi + 1) * g];
                    for p in 0..g / 2 {
                        blk[p * SR + r] = q[2 * p] | (q[2 * p + 1] << 4);
                    }
                    let s = l.scales[row * groups + gi].to_le_bytes();
                    blk[g * 32 + 2 * r] = s[0];
                    blk[g * 32 + 2 * r + 1] = s[1];
                    blk[g * 32 + 128 + r] = l.zeros[row * groups + gi];
                }
            }
        });
        Ok(PackedInt4 { n, k, group: g, tiles, groups, gb, data })
    }

    /// Resident bytes of the packed form.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `[N, K]` row-major dequantized weight, `(q - zero) * scale` in f32 as
    /// `quant::int4::dequantize_value` computes it (tests and cross-checks).
    pub fn dequantize(&self) -> Vec<f32> {
        let (n, k, g) = (self.n, self.k, self.group);
        let mut out = vec![0f32; n * k];
        for (row, o) in out.chunks_mut(k).enumerate() {
            let (t, i) = (row / NR, row % NR);
            for gi in 0..self.groups {
                let (c, so, zo) = (self.codes_at(t, gi), self.scales_at(t, gi), self.zeros_at(t, gi));
                let s = f16::from_le_bytes([self.data[so + 2 * i], self.data[so + 2 * i + 1]]).to_f32();
                let z = self.data[zo + i] as f32;
                for p in 0..g / 2 {
                    let b = self.data[c + p * SR + i];
                    o[gi * g + 2 * p] = ((b & 15) as f32 - z) * s;
                    o[gi * g + 2 * p + 1] = ((b >> 4) as f32 - z) * s;
                }
            }
        }
        out
    }

    /// Byte offset of tile `t`'s codes of group `gi` (k-pair p at `+ p * SR`).
    #[inline(always)]
    fn codes_at(&self, t: usize, gi: usize) -> usize {
        ((t / ST) * self.groups + gi) * self.gb + (t % ST) * NR
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

/// f16 weights `[N, K]` (embedding table, LM head, fp16 linears), stored in super-tiles of 64
/// rows, k-major inside (`data[s][k][r] = w[64 s + r][k]`), so that one 32-byte load converts to
/// the 16 rows of one tile at one k, and 4 tiles read together are one sequential stream.
/// Accumulation is in f32.
pub struct F16Matrix {
    pub n: usize,
    pub k: usize,
    data: Vec<f16>,
}

impl std::fmt::Debug for F16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "F16Matrix[{}x{}]", self.n, self.k)
    }
}

impl F16Matrix {
    /// Round `w` (`[N, K]` row-major) to the nearest f16.
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "F16Matrix::from_f32: {} values for [{n}, {k}]", w.len());
        let mut data = vec![f16::ZERO; n.div_ceil(SR) * SR * k];
        if k > 0 {
            data.par_chunks_mut(SR * k).enumerate().for_each(|(st, sup)| {
                for r in 0..SR.min(n - st * SR) {
                    let row = &w[(st * SR + r) * k..(st * SR + r + 1) * k];
                    for (c, &v) in row.iter().enumerate() {
                        sup[c * SR + r] = f16::from_f32(v);
                    }
                }
            });
        }
        F16Matrix { n, k, data }
    }

    /// Row `i` as f32 (embedding lookup). `out.len()` must be `k`.
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.n && out.len() == self.k, "F16Matrix::row_f32: row {i} of {}, out {} for k {}", self.n, out.len(), self.k);
        let (st, r) = (i / SR, i % SR);
        let sup = &self.data[st * SR * self.k..(st + 1) * SR * self.k];
        for (c, o) in out.iter_mut().enumerate() {
            *o = sup[c * SR + r].to_f32();
        }
    }

    /// Resident bytes.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }

    fn tiles(&self) -> usize {
        self.n.div_ceil(SR) * ST
    }

    /// Element offset of tile `t`'s 16 weights at k = 0 (k = c at `+ c * SR`).
    #[inline(always)]
    fn tile_at(&self, t: usize) -> usize {
        (t / ST) * SR * self.k + (t % ST) * NR
    }
}

// ---------------------------------------------------------------------------------------------
// Driver: split the output into disjoint (row block, tile block) tasks.

#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// A method, so that closures capture the whole (Sync) wrapper, not the raw pointer field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Calls `f(m0, m1, t0, t1)` over a partition of `[0, m) x [0, tiles)` in parallel. The partition
/// changes which task computes an output, never how it is computed.
pub(crate) fn drive(m: usize, tiles: usize, tile_bytes: usize, f: impl Fn(usize, usize, usize, usize) + Sync) {
    if m == 0 || tiles == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let m_blocks = if m <= SMALL_M { 1 } else { m.div_ceil(MB) };
    // Tile blocks: a multiple of 4 tiles (the small-M kernels take 4 at a time), at most ~1 MiB of
    // weights (stays in L2 while all row chunks consume it), and enough tasks to balance, but no
    // task smaller than ~10 us of work (waking a worker costs microseconds).
    let work = (tiles * tile_bytes) as f64 * (1.0 + m as f64 / 4.0);
    let max_tasks = ((work / (128 << 10) as f64) as usize).max(1);
    let want = (threads * 8).min(max_tasks).div_ceil(m_blocks).max(1);
    let mut tb = tiles.div_ceil(want).next_multiple_of(4);
    let cap = ((1 << 20) / tile_bytes.max(1)).max(4) / 4 * 4;
    tb = tb.min(cap).max(4);
    let t_blocks = tiles.div_ceil(tb);
    let total = m_blocks * t_blocks;
    let run = |i: usize| {
        let (mb, tbi) = (i / t_blocks, i % t_blocks);
        let (m0, m1) = if m <= SMALL_M { (0, m) } else { (mb * MB, ((mb + 1) * MB).min(m)) };
        f(m0, m1, tbi * tb, ((tbi + 1) * tb).min(tiles));
    };
    if total == 1 || threads == 1 {
        (0..total).for_each(run);
    } else {
        crate::engine::team::par_for(total, run);
    }
}

/// Row chunks of at most `max` rows, sizes from {16, 8, 4, 2, 1} (largest first).
pub(crate) fn row_chunks(m0: usize, m1: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = m0;
    std::iter::from_fn(move || {
        if at >= m1 {
            return None;
        }
        let left = m1 - at;
        let mut mr = max;
        while mr > left {
            mr /= 2;
        }
        let r = (at, mr);
        at += mr;
        Some(r)
    })
}

fn check_shapes(kind: &str, x: &[f32], m: usize, n: usize, k: usize, y: &[f32]) {
    assert!(
        x.len() == m * k && y.len() == m * n,
        "{kind}: x has {} values (want {m} x {k}), y has {} (want {m} x {n})",
        x.len(),
        y.len()
    );
}

/// `y[M, N] = x[M, K] · Wᵀ` (W is `[N, K]`); overwrites `y`. Uses [`detected`].
pub fn int4_matmul(x: &[f32], m: usize, w: &PackedInt4, y: &mut [f32]) {
    int4_matmul_with(detected(), x, m, w, y)
}

/// [`int4_matmul`] with a chosen copy (panics if `isa` is not in [`available`]).
pub fn int4_matmul_with(isa: Isa, x: &[f32], m: usize, w: &PackedInt4, y: &mut [f32]) {
    check_isa(isa);
    check_shapes("int4_matmul", x, m, w.n, w.k, y);
    let yp = SyncPtr(y.as_mut_ptr());
    drive(m, w.tiles, w.groups * w.gb / ST, |m0, m1, t0, t1| {
        match isa {
            Isa::Portable => portable::int4_block(w, x, m0, m1, t0, t1, yp.get()),
            // SAFETY: `check_isa` verified the CPU features; tasks write disjoint outputs.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::int4_block(w, x.as_ptr(), m0, m1, t0, t1, yp.get()) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::int4_block(w, x.as_ptr(), m0, m1, t0, t1, yp.get()) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!(),
        }
    });
}

/// `y[M, N] = x[M, K] · Wᵀ` for f16 weights, f32 accumulation. Uses [`detected`].
pub fn f16_matmul(x: &[f32], m: usize, w: &F16Matrix, y: &mut [f32]) {
    f16_matmul_with(detected(), x, m, w, y)
}

/// [`f16_matmul`] with a chosen copy (panics if `isa` is not in [`available`]).
pub fn f16_matmul_with(isa: Isa, x: &[f32], m: usize, w: &F16Matrix, y: &mut [f32]) {
    check_isa(isa);
    check_shapes("f16_matmul", x, m, w.n, w.k, y);
    if w.k == 0 {
        y.fill(0.0);
        return;
    }
    let yp = SyncPtr(y.as_mut_ptr());
    drive(m, w.tiles(), NR * w.k * 2, |m0, m1, t0, t1| {
        match isa {
            Isa::Portable => portable::f16_block(w, x, m0, m1, t0, t1, yp.get()),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::f16_block(w, x.as_ptr(), m0, m1, t0, t1, yp.get()) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::f16_block(w, x.as_ptr(), m0, m1, t0, t1, yp.get()) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!(),
        }
    });
}

/// Store the `valid` first of 16 lanes of row `m` of a tile.
#[inline(always)]
pub(crate) unsafe fn store_row(y: *mut f32, ldy: usize, m: usize, n0: usize, valid: usize, v: &[f32; NR]) {
    std::ptr::copy_nonoverlapping(v.as_ptr(), y.add(m * ldy + n0), valid);
}

// ---------------------------------------------------------------------------------------------
// Portable copy: the same loops over the same layout in plain Rust (the compiler vectorizes the
// 16-lane inner loops with whatever the baseline target offers).

mod portable {
    use super::*;

    pub fn int4_block(w: &PackedInt4, x: &[f32], m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        let (k, g) = (w.k, w.group);
        for t in t0..t1 {
            let valid = NR.min(w.n.saturating_sub(t * NR));
            if valid == 0 {
                continue;
            }
            for m in m0..m1 {
                let xr = &x[m * k..(m + 1) * k];
                let mut tot = [0f32; NR];
                for gi in 0..w.groups {
                    let (c0, so, zo) = (w.codes_at(t, gi), w.scales_at(t, gi), w.zeros_at(t, gi));
                    let mut s = [0f32; NR];
                    let mut z = [0f32; NR];
                    for i in 0..NR {
                        s[i] = f16::from_le_bytes([w.data[so + 2 * i], w.data[so + 2 * i + 1]]).to_f32();
                        z[i] = w.data[zo + i] as f32;
                    }
                    let mut acc = [0f32; NR];
                    for p in 0..g / 2 {
                        let (x0, x1) = (xr[gi * g + 2 * p], xr[gi * g + 2 * p + 1]);
                        let codes = &w.data[c0 + p * SR..c0 + p * SR + NR];
                        for i in 0..NR {
                            acc[i] += x0 * ((codes[i] & 15) as f32 - z[i]);
                            acc[i] += x1 * ((codes[i] >> 4) as f32 - z[i]);
                        }
                    }
                    for i in 0..NR {
                        tot[i] += acc[i] * s[i];
                    }
                }
                // SAFETY: rows m0..m1 x tile t belong to this task only.
                unsafe { store_row(y, w.n, m, t * NR, valid, &tot) };
            }
        }
    }

    pub fn f16_block(w: &F16Matrix, x: &[f32], m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
        let k = w.k;
        for t in t0..t1 {
            let valid = NR.min(w.n.saturating_sub(t * NR));
            if valid == 0 {
                continue;
            }
            let tile = &w.data[w.tile_at(t)..];
            for m in m0..m1 {
                let xr = &x[m * k..(m + 1) * k];
                let mut tot = [0f32; NR];
                for c0 in (0..k).step_by(F16_KC) {
                    let mut acc = [0f32; NR];
                    for c in c0..(c0 + F16_KC).min(k) {
                        let xv = xr[c];
                        let wr = &tile[c * SR..c * SR + NR];
                        for i in 0..NR {
                            acc[i] += xv * wr[i].to_f32();
                        }
                    }
                    for i in 0..NR {
                        tot[i] += acc[i];
                    }
                }
                // SAFETY: as above.
                unsafe { store_row(y, w.n, m, t * NR, valid, &tot) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 copy: a 16-row tile is two 8-lane halves. 16 ymm registers: MR x T x 2 accumulators <= 8.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    const MAGIC: i32 = 0x4B00_0000; // float bits of 2^23

    /// One pass of `MR` rows over `T` consecutive tiles starting at `t`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int4_kernel<const MR: usize, const T: usize>(
        w: &PackedInt4,
        t: usize,
        x: *const f32,
        m: usize,
        y: *mut f32,
    ) {
        let (k, g, groups) = (w.k, w.group, w.groups);
        let base = w.data.as_ptr();
        let mask = _mm256_set1_epi32(15);
        let magic = _mm256_set1_epi32(MAGIC);
        let mut tot = [[[_mm256_setzero_ps(); 2]; T]; MR];
        for gi in 0..groups {
            let mut cp = [base; T];
            let mut sp = [base; T];
            let mut zm = [[_mm256_setzero_ps(); 2]; T];
            for j in 0..T {
                cp[j] = base.add(w.codes_at(t + j, gi));
                sp[j] = base.add(w.scales_at(t + j, gi));
                let zp = base.add(w.zeros_at(t + j, gi));
                for h in 0..2 {
                    let z = _mm256_cvtepu8_epi32(_mm_loadl_epi64(zp.add(8 * h) as *const __m128i));
                    zm[j][h] = _mm256_castsi256_ps(_mm256_or_si256(z, magic));
                }
            }
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; MR];
            let xg = x.add(gi * g);
            for p in 0..g / 2 {
                _mm_prefetch::<_MM_HINT_T0>(cp[0].add(p * SR + PREFETCH) as *const i8);
                for j in 0..T {
                    for h in 0..2 {
                        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(cp[j].add(p * SR + 8 * h) as *const __m128i));
                        let lo = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(v, mask), magic)), zm[j][h]);
                        let hi = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_srli_epi32(v, 4), magic)), zm[j][h]);
                        for r in 0..MR {
                            let xr = xg.add(r * k + 2 * p);
                            acc[r][j][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xr), lo, acc[r][j][h]);
                            acc[r][j][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xr.add(1)), hi, acc[r][j][h]);
                        }
                    }
                }
            }
            for j in 0..T {
                for h in 0..2 {
                    let s = _mm256_cvtph_ps(_mm_loadu_si128(sp[j].add(16 * h) as *const __m128i));
                    for r in 0..MR {
                        tot[r][j][h] = _mm256_fmadd_ps(acc[r][j][h], s, tot[r][j][h]);
                    }
                }
            }
        }
        store::<MR, T>(&tot, w.n, t, m, y);
    }

    /// Store the `MR x T` tiles of outputs (also used by the int8-activation kernels).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn store<const MR: usize, const T: usize>(tot: &[[[__m256; 2]; T]; MR], n: usize, t: usize, m: usize, y: *mut f32) {
        for j in 0..T {
            let n0 = (t + j) * NR;
            let valid = NR.min(n.saturating_sub(n0));
            if valid == 0 {
                continue;
            }
            for r in 0..MR {
                let dst = y.add((m + r) * n + n0);
                if valid == NR {
                    _mm256_storeu_ps(dst, tot[r][j][0]);
                    _mm256_storeu_ps(dst.add(8), tot[r][j][1]);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), tot[r][j][0]);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), tot[r][j][1]);
                    store_row(y, n, m + r, n0, valid, &tmp);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_kernel<const MR: usize, const T: usize>(w: &F16Matrix, t: usize, x: *const f32, m: usize, y: *mut f32) {
        let k = w.k;
        let base = w.data.as_ptr() as *const u8;
        let mut tot = [[[_mm256_setzero_ps(); 2]; T]; MR];
        let mut c0 = 0;
        while c0 < k {
            let c1 = (c0 + F16_KC).min(k);
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; MR];
            for c in c0..c1 {
                for j in 0..T {
                    let p = base.add((w.tile_at(t + j) + c * SR) * 2);
                    for h in 0..2 {
                        let wv = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h) as *const __m128i));
                        for r in 0..MR {
                            acc[r][j][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*x.add(r * k + c)), wv, acc[r][j][h]);
                        }
                    }
                }
            }
            for r in 0..MR {
                for j in 0..T {
                    for h in 0..2 {
                        tot[r][j][h] = _mm256_add_ps(tot[r][j][h], acc[r][j][h]);
                    }
                }
            }
            c0 = c1;
        }
        store::<MR, T>(&tot, w.n, t, m, y);
    }

    macro_rules! block {
        ($name:ident, $kernel:ident, $W:ty) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(w: &$W, x: *const f32, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
                let k = w.k;
                let mut t = t0;
                while t < t1 {
                    let four = t + 4 <= t1;
                    for (m, mr) in row_chunks(m0, m1, 4) {
                        let xm = x.add(m * k);
                        if four {
                            match mr {
                                4 => { for j in 0..2 { $kernel::<4, 2>(w, t + 2 * j, xm, m, y) } }
                                2 => { for j in 0..2 { $kernel::<2, 2>(w, t + 2 * j, xm, m, y) } }
                                _ => $kernel::<1, 4>(w, t, xm, m, y),
                            }
                        } else {
                            match mr {
                                4 => $kernel::<4, 1>(w, t, xm, m, y),
                                2 => $kernel::<2, 1>(w, t, xm, m, y),
                                _ => $kernel::<1, 1>(w, t, xm, m, y),
                            }
                        }
                    }
                    t += if four { 4 } else { 1 };
                }
            }
        };
    }
    block!(int4_block, int4_kernel, PackedInt4);
    block!(f16_block, f16_kernel, F16Matrix);
}

// ---------------------------------------------------------------------------------------------
// AVX-512 copy: one tile = one zmm. 32 zmm registers: up to 16 rows x 1 tile of accumulators.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    const MAGIC: i32 = 0x4B00_0000;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn int4_kernel<const MR: usize, const T: usize>(
        w: &PackedInt4,
        t: usize,
        x: *const f32,
        m: usize,
        y: *mut f32,
    ) {
        let (k, g, groups) = (w.k, w.group, w.groups);
        let base = w.data.as_ptr();
        let mask = _mm512_set1_epi32(15);
        let magic = _mm512_set1_epi32(MAGIC);
        let mut tot = [[_mm512_setzero_ps(); T]; MR];
        for gi in 0..groups {
            let mut cp = [base; T];
            let mut sp = [base; T];
            let mut zm = [_mm512_setzero_ps(); T];
            for j in 0..T {
                cp[j] = base.add(w.codes_at(t + j, gi));
                sp[j] = base.add(w.scales_at(t + j, gi));
                let z = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(w.zeros_at(t + j, gi)) as *const __m128i));
                zm[j] = _mm512_castsi512_ps(_mm512_or_si512(z, magic));
            }
            let mut acc = [[_mm512_setzero_ps(); T]; MR];
            let xg = x.add(gi * g);
            for p in 0..g / 2 {
                _mm_prefetch::<_MM_HINT_T0>(cp[0].add(p * SR + PREFETCH) as *const i8);
                for j in 0..T {
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp[j].add(p * SR) as *const __m128i));
                    // (v & 15) | magic in one ternary-logic op.
                    let lo = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(v, mask, magic)), zm[j]);
                    let hi = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32::<4>(v), magic)), zm[j]);
                    for r in 0..MR {
                        let xr = xg.add(r * k + 2 * p);
                        acc[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(*xr), lo, acc[r][j]);
                        acc[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(1)), hi, acc[r][j]);
                    }
                }
            }
            for j in 0..T {
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(sp[j] as *const __m256i));
                for r in 0..MR {
                    tot[r][j] = _mm512_fmadd_ps(acc[r][j], s, tot[r][j]);
                }
            }
        }
        store::<MR, T>(&tot, w.n, t, m, y);
    }

    /// Store the `MR x T` tiles of outputs (also used by the int8-activation kernels).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(crate) unsafe fn store<const MR: usize, const T: usize>(tot: &[[__m512; T]; MR], n: usize, t: usize, m: usize, y: *mut f32) {
        for j in 0..T {
            let n0 = (t + j) * NR;
            let valid = NR.min(n.saturating_sub(n0));
            if valid == 0 {
                continue;
            }
            let km: __mmask16 = if valid == NR { 0xFFFF } else { (1u16 << valid) - 1 };
            for r in 0..MR {
                _mm512_mask_storeu_ps(y.add((m + r) * n + n0), km, tot[r][j]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn f16_kernel<const MR: usize, const T: usize>(w: &F16Matrix, t: usize, x: *const f32, m: usize, y: *mut f32) {
        let k = w.k;
        let base = w.data.as_ptr() as *const u8;
        let mut tot = [[_mm512_setzero_ps(); T]; MR];
        let mut c0 = 0;
        while c0 < k {
            let c1 = (c0 + F16_KC).min(k);
            let mut acc = [[_mm512_setzero_ps(); T]; MR];
            for c in c0..c1 {
                for j in 0..T {
                    let wv = _mm512_cvtph_ps(_mm256_loadu_si256(base.add((w.tile_at(t + j) + c * SR) * 2) as *const __m256i));
                    for r in 0..MR {
                        acc[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(r * k + c)), wv, acc[r][j]);
                    }
                }
            }
            for r in 0..MR {
                for j in 0..T {
                    tot[r][j] = _mm512_add_ps(tot[r][j], acc[r][j]);
                }
            }
            c0 = c1;
        }
        store::<MR, T>(&tot, w.n, t, m, y);
    }

    macro_rules! block {
        ($name:ident, $kernel:ident, $W:ty) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            pub unsafe fn $name(w: &$W, x: *const f32, m0: usize, m1: usize, t0: usize, t1: usize, y: *mut f32) {
                let k = w.k;
                let mut t = t0;
                while t < t1 {
                    let four = t + 4 <= t1;
                    for (m, mr) in row_chunks(m0, m1, 16) {
                        let xm = x.add(m * k);
                        if four {
                            match mr {
                                16 => { for j in 0..4 { $kernel::<16, 1>(w, t + j, xm, m, y) } }
                                8 => { for j in 0..4 { $kernel::<8, 1>(w, t + j, xm, m, y) } }
                                4 => { for j in 0..2 { $kernel::<4, 2>(w, t + 2 * j, xm, m, y) } }
                                2 => $kernel::<2, 4>(w, t, xm, m, y),
                                _ => $kernel::<1, 4>(w, t, xm, m, y),
                            }
                        } else {
                            match mr {
                                16 => $kernel::<16, 1>(w, t, xm, m, y),
                                8 => $kernel::<8, 1>(w, t, xm, m, y),
                                4 => $kernel::<4, 1>(w, t, xm, m, y),
                                2 => $kernel::<2, 1>(w, t, xm, m, y),
                                _ => $kernel::<1, 1>(w, t, xm, m, y),
                            }
                        }
                    }
                    t += if four { 4 } else { 1 };
                }
            }
        };
    }
    block!(int4_block, int4_kernel, PackedInt4);
    block!(f16_block, f16_kernel, F16Matrix);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::int4::QuantParams;
    use crate::tensor::HostTensor;

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

    /// A layer with random codes, zero points and scales (all 16 codes and zeros occur).
    fn random_layer(rng: &mut Rng, n: usize, k: usize, g: usize) -> QuantizedLinear {
        let q = (0..n * k).map(|_| (rng.next() % 16) as u8).collect();
        let zeros = (0..n * k / g).map(|_| (rng.next() % 16) as u8).collect();
        let scales = (0..n * k / g).map(|_| f16::from_f32(1e-3 + (rng.next() % 4096) as f32 * 1e-5)).collect();
        QuantizedLinear { n, k, params: QuantParams::new(4, g).unwrap(), q, zeros, scales, bias: None, float_zeros: None }
    }

    /// Reference dequantization straight from the `QuantizedLinear` fields, as
    /// `quant::int4::dequantize_value` defines it: `(q - zero) * scale` in f32.
    fn ref_weight(l: &QuantizedLinear, row: usize, c: usize) -> f32 {
        let gi = row * l.groups() + c / l.params.group;
        (l.q[row * l.k + c] as f32 - l.zeros[gi] as f32) * l.scales[gi].to_f32()
    }

    /// f64 reference `y = x · Wᵀ` and the error scale `sum |x·w|` per output.
    fn reference(x: &[f32], m: usize, n: usize, k: usize, w: impl Fn(usize, usize) -> f32) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for row in 0..n {
            let wr: Vec<f64> = (0..k).map(|c| w(row, c) as f64).collect();
            for i in 0..m {
                let (mut s, mut a) = (0f64, 0f64);
                for c in 0..k {
                    let p = x[i * k + c] as f64 * wr[c];
                    s += p;
                    a += p.abs();
                }
                y[i * n + row] = s;
                mag[i * n + row] = a;
            }
        }
        (y, mag)
    }

    /// Tolerance: |y - ref| <= TOL * sum_k |x·w| (f32 accumulation over at most a few thousand
    /// terms, split in groups, stays well inside it), plus a tiny absolute floor.
    const TOL: f64 = 1e-5;

    fn assert_close(what: &str, y: &[f32], r: &[f64], mag: &[f64]) {
        for (i, ((&a, &b), &s)) in y.iter().zip(r).zip(mag).enumerate() {
            let err = (a as f64 - b).abs();
            assert!(err <= TOL * s + 1e-30, "{what}: output {i}: {a} vs reference {b} (err {err:e}, sum|xw| {s:e})");
        }
    }

    fn random_x(rng: &mut Rng, m: usize, k: usize) -> Vec<f32> {
        (0..m * k).map(|i| rng.f() * if i % 31 == 0 { 10.0 } else { 1.0 }).collect()
    }

    #[test]
    fn dequantize_equals_reference_exactly() {
        let mut rng = Rng(1);
        for &(n, k, g) in &[(3, 96, 32), (37, 576, 64), (16, 128, 128), (49, 384, 128), (17, 160, 32)] {
            let l = random_layer(&mut rng, n, k, g);
            let p = PackedInt4::from_quantized(&l).unwrap();
            let d = p.dequantize();
            assert_eq!(d.len(), n * k);
            for row in 0..n {
                for c in 0..k {
                    assert_eq!(d[row * k + c].to_bits(), ref_weight(&l, row, c).to_bits(), "[{n}x{k} g{g}] ({row}, {c})");
                }
            }
            assert_eq!(d, l.dequantize().data, "agrees with QuantizedLinear::dequantize");
            assert_eq!(p.bytes(), n.div_ceil(64) * 64 * (k / g) * (g / 2 + 3));
        }
    }

    #[test]
    fn int4_matmul_matches_f64_reference_on_every_copy() {
        let mut rng = Rng(2);
        // K = group x odd, N not a multiple of 16, M from decode to the prefill path (> 16 rows
        // split into 64-row blocks, the last one partial).
        let shapes = [(3, 96, 32), (37, 576, 64), (49, 160, 32), (130, 1536, 64), (16, 384, 128), (67, 896, 128), (200, 640, 128)];
        for (si, &(n, k, g)) in shapes.iter().enumerate() {
            let l = random_layer(&mut rng, n, k, g);
            let p = PackedInt4::from_quantized(&l).unwrap();
            for &m in &[1usize, 2, 3, 5, 8, 13, 16, 17, 64, 150] {
                if m > 64 && si % 3 != 0 {
                    continue;
                }
                let x = random_x(&mut rng, m, k);
                let (r, mag) = reference(&x, m, n, k, |row, c| ref_weight(&l, row, c));
                for isa in available() {
                    let mut y = vec![f32::NAN; m * n];
                    int4_matmul_with(isa, &x, m, &p, &mut y);
                    assert_close(&format!("{isa:?} M={m} [{n}x{k} g{g}]"), &y, &r, &mag);
                }
                let mut y = vec![0f32; m * n];
                int4_matmul(&x, m, &p, &mut y);
            }
        }
    }

    #[test]
    fn int4_from_real_quantizer() {
        // Through QuantizedLinear::quantize on a random weight (real scale / zero statistics).
        let mut rng = Rng(3);
        let (n, k) = (45, 576);
        let w = HostTensor::from_fn(&[n, k], |_| rng.f() * 0.05);
        let l = QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, 64).unwrap()).unwrap();
        let p = PackedInt4::from_quantized(&l).unwrap();
        let deq = l.dequantize();
        for m in [1, 4, 33] {
            let x = random_x(&mut rng, m, k);
            let (r, mag) = reference(&x, m, n, k, |row, c| deq.data[row * k + c]);
            for isa in available() {
                let mut y = vec![0f32; m * n];
                int4_matmul_with(isa, &x, m, &p, &mut y);
                assert_close(&format!("{isa:?} M={m}"), &y, &r, &mag);
            }
        }
    }

    #[test]
    fn simd_copies_agree_bit_for_bit_and_rows_do_not_depend_on_the_batch() {
        // Same operation order on every SIMD copy (FMA, exact q - z), and a row's result does
        // not depend on M (decode of one row == that row inside a prefill batch).
        let mut rng = Rng(4);
        let (n, k, g) = (70, 320, 64);
        let l = random_layer(&mut rng, n, k, g);
        let p = PackedInt4::from_quantized(&l).unwrap();
        let f = F16Matrix::from_f32(&(0..n * k).map(|_| rng.f()).collect::<Vec<_>>(), n, k);
        let m = 37;
        let x = random_x(&mut rng, m, k);
        let simd: Vec<Isa> = available().into_iter().filter(|&i| i != Isa::Portable).collect();
        for isa in available() {
            let mut full = vec![0f32; m * n];
            int4_matmul_with(isa, &x, m, &p, &mut full);
            let mut fullh = vec![0f32; m * n];
            f16_matmul_with(isa, &x, m, &f, &mut fullh);
            for i in 0..m {
                let mut one = vec![0f32; n];
                int4_matmul_with(isa, &x[i * k..(i + 1) * k], 1, &p, &mut one);
                assert_eq!(one, full[i * n..(i + 1) * n], "{isa:?} int4 row {i}");
                f16_matmul_with(isa, &x[i * k..(i + 1) * k], 1, &f, &mut one);
                assert_eq!(one, fullh[i * n..(i + 1) * n], "{isa:?} f16 row {i}");
            }
            if let Some(&first) = simd.first() {
                if isa != Isa::Portable {
                    let mut y0 = vec![0f32; m * n];
                    int4_matmul_with(first, &x, m, &p, &mut y0);
                    assert_eq!(y0, full, "int4 {isa:?} vs {first:?}");
                    f16_matmul_with(first, &x, m, &f, &mut y0);
                    assert_eq!(y0, fullh, "f16 {isa:?} vs {first:?}");
                }
            }
        }
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let mut rng = Rng(5);
        let (n, k, g) = (1000, 576, 64);
        let l = random_layer(&mut rng, n, k, g);
        let p = PackedInt4::from_quantized(&l).unwrap();
        let f = F16Matrix::from_f32(&(0..n * k).map(|_| rng.f()).collect::<Vec<_>>(), n, k);
        let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let pool3 = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for m in [1, 7, 16, 200] {
            let x = random_x(&mut rng, m, k);
            for isa in available() {
                let run = |pool: &rayon::ThreadPool| {
                    let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
                    pool.install(|| {
                        int4_matmul_with(isa, &x, m, &p, &mut a);
                        f16_matmul_with(isa, &x, m, &f, &mut b);
                    });
                    (a, b)
                };
                let r1 = run(&pool1);
                assert!(r1 == run(&pool2), "{isa:?} M={m}: 1 vs 2 threads");
                assert!(r1 == run(&pool3), "{isa:?} M={m}: 1 vs 3 threads");
            }
        }
    }

    #[test]
    fn f16_matrix_matches_f64_reference_on_every_copy() {
        let mut rng = Rng(6);
        for &(n, k) in &[(3, 5), (37, 576), (49, 130), (100, 896), (16, 64), (33, 1)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.f() * 0.1).collect();
            let f = F16Matrix::from_f32(&w, n, k);
            assert_eq!(f.bytes(), n.div_ceil(64) * 64 * k * 2);
            let mut row = vec![0f32; k];
            for i in 0..n {
                f.row_f32(i, &mut row);
                for c in 0..k {
                    assert_eq!(row[c], f16::from_f32(w[i * k + c]).to_f32(), "row_f32({i})[{c}]");
                }
            }
            for &m in &[1usize, 3, 8, 16, 64, 100] {
                let x = random_x(&mut rng, m, k);
                let (r, mag) = reference(&x, m, n, k, |row, c| f16::from_f32(w[row * k + c]).to_f32());
                for isa in available() {
                    let mut y = vec![f32::NAN; m * n];
                    f16_matmul_with(isa, &x, m, &f, &mut y);
                    assert_close(&format!("f16 {isa:?} M={m} [{n}x{k}]"), &y, &r, &mag);
                }
                let mut y = vec![0f32; m * n];
                f16_matmul(&x, m, &f, &mut y);
            }
        }
    }

    #[test]
    fn from_quantized_refuses_bad_layers() {
        let mut rng = Rng(7);
        let mut l = random_layer(&mut rng, 4, 128, 64);
        l.params.bits = 8;
        let e = PackedInt4::from_quantized(&l).unwrap_err();
        assert!(e.msg.contains("8 bits") && e.msg.contains("4-bit"), "{}", e.msg);
        let mut l = random_layer(&mut rng, 4, 128, 64);
        l.params.group = 48; // does not divide 128
        let e = PackedInt4::from_quantized(&l).unwrap_err();
        assert!(e.msg.contains("group size 48") && e.msg.contains("divides in_features 128"), "{}", e.msg);
        let mut l = random_layer(&mut rng, 4, 128, 64);
        l.q[5] = 16;
        let e = PackedInt4::from_quantized(&l).unwrap_err();
        assert!(e.msg.contains("not a 4-bit value"), "{}", e.msg);
        let mut l = random_layer(&mut rng, 4, 128, 64);
        l.scales.pop();
        let e = PackedInt4::from_quantized(&l).unwrap_err();
        assert!(e.msg.contains("inconsistent sizes"), "{}", e.msg);
    }

    #[test]
    fn empty_shapes() {
        let mut rng = Rng(8);
        let p = PackedInt4::from_quantized(&random_layer(&mut rng, 5, 64, 32)).unwrap();
        int4_matmul(&[], 0, &p, &mut []);
        let f = F16Matrix::from_f32(&[], 0, 8);
        f16_matmul(&[0.0; 16], 2, &f, &mut []);
        let f = F16Matrix::from_f32(&[], 3, 0);
        let mut y = vec![1f32; 6];
        f16_matmul(&[], 2, &f, &mut y);
        assert_eq!(y, vec![0f32; 6]);
    }

    #[test]
    fn detection_is_consistent() {
        let a = available();
        assert_eq!(a[0], Isa::Portable);
        assert_eq!(detected(), *a.last().unwrap());
    }
}
