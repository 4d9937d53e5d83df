//! Rotary position embedding, in place on `x [T, H, D]` (q or k), with a frequency table per
//! sequence (dynamic NTK gives each sequence its own base, awq-reference §8).
//!
//! For token t of sequence s = `seq_ids[t]` at position p = `positions[t]`, pair i < rot/2 is
//! rotated by `angle = p * inv_freq[s][i]`, and cos/sin are multiplied by `mscale` (yarn's
//! attention factor, 1 otherwise). Pairs are `(i, i + rot/2)` in the HF rotate-half layout and
//! `(2i, 2i + 1)` in the interleaved (GGUF / TurboMind) layout; elements `rot..D` are untouched.
//!
//! The inverse frequencies come from the host in f64 (any scaling type: linear, llama3, yarn and
//! dynamic NTK only change them; awqc's `engine::rope::Rope::inv_freq` computes them).
//! [`RopeTable`] stores `c = inv_freq / 2π` (turns per position) split as `c1 + c2 + c3` with c1, c2
//! holding 12 significant bits. With the position split into its high and low 12 bits, every
//! product `p_hi*c1, p_lo*c1, p_hi*c2, p_lo*c2` is exact in f32, so their fractional parts are
//! exact and the angle reduced to [-π, π] is accurate to ~1e-6 rad for any position < 2^24
//! (a plain f32 `p * inv_freq` is off by ~p * 1e-7 rad, 4e-4 at p = 4096), and sin/cos are only
//! ever evaluated inside [-π, π], where every backend is accurate.

use crate::error::{ensure, Result};
use crate::tensor::{cube_linear, grid_1d, Elem, GpuTensor};
use cubecl::prelude::*;

/// Pair layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// HF `rotate_half`: element i pairs with i + rot/2.
    RotateHalf,
    /// Adjacent pairs (2i, 2i + 1) (GGUF llama, TurboMind after `permute_qk`).
    Interleaved,
}

/// `inv_freq[i] = base^(-2i/rot_dim)` for i < rot_dim/2 (unscaled RoPE; pass a per-sequence base
/// for dynamic NTK).
pub fn inv_freq(base: f64, rot_dim: usize) -> Vec<f64> {
    (0..rot_dim / 2).map(|i| base.powf(-(2.0 * i as f64) / rot_dim as f64)).collect()
}

/// Per-sequence frequency table in device memory: f32 `[S, rot/2, 3]` (c1, c2, c3 above).
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub num_seqs: usize,
    pub half: usize,
    pub data: GpuTensor,
}

/// Keeps the top 12 significant bits of a positive finite f64.
fn top12(v: f64) -> f64 {
    f64::from_bits(v.to_bits() & !((1u64 << 41) - 1))
}

/// The f32 triples `(c1, c2, c3)` of the table for one sequence.
pub fn split_turns(inv_freq: &[f64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(inv_freq.len() * 3);
    for &f in inv_freq {
        let c = f / (2.0 * std::f64::consts::PI);
        let c1 = top12(c);
        let c2 = top12(c - c1);
        out.extend_from_slice(&[c1 as f32, c2 as f32, (c - c1 - c2) as f32]);
    }
    out
}

impl RopeTable {
    /// One `inv_freq` vector (all the same length, rot/2) per sequence.
    pub fn new<R: Runtime>(client: &ComputeClient<R>, inv_freqs: &[Vec<f64>]) -> Result<Self> {
        ensure!(!inv_freqs.is_empty(), "rope table: no sequences");
        let half = inv_freqs[0].len();
        ensure!(half > 0, "rope table: empty inv_freq");
        let mut data = Vec::with_capacity(inv_freqs.len() * half * 3);
        for (s, f) in inv_freqs.iter().enumerate() {
            ensure!(f.len() == half, "rope table: sequence {s} has {} frequencies, sequence 0 has {half}", f.len());
            ensure!(
                f.iter().all(|v| v.is_finite() && *v > 0.0),
                "rope table: sequence {s} has a frequency that is not finite and > 0"
            );
            data.extend(split_turns(f));
        }
        let data = GpuTensor::from_f32(client, &data, &[inv_freqs.len(), half * 3], Elem::F32)?;
        Ok(RopeTable { num_seqs: inv_freqs.len(), half, data })
    }
}

const ROPE_UNITS: usize = 256;

/// `v - round(v)`, exact for f32.
#[cube]
fn frac(v: f32) -> f32 {
    v - v.round()
}

#[cube(launch_unchecked)]
fn rope_kernel<F: Float>(
    x: &mut Array<F>,     // [T, H, D]
    positions: &Array<u32>, // [T]
    seq_ids: &Array<u32>,   // [T]
    table: &Array<f32>,     // [S, half, 3]
    total: usize,           // T * H * half
    heads: usize,
    d: usize,
    half: usize,
    num_seqs: u32,
    mscale: f32,
    #[comptime] interleaved: bool,
) {
    let idx = cube_linear() * ROPE_UNITS + UNIT_POS as usize;
    if idx < total {
        let i = idx % half;
        let th = idx / half; // token * heads + head
        let t = th / heads;
        let s = seq_ids[t];
        // An out-of-range sequence id leaves the row unrotated instead of reading out of bounds.
        if s < num_seqs {
            let p = positions[t];
            let p_hi = f32::cast_from(p & 0xFFF000u32);
            let p_lo = f32::cast_from(p & 0xFFFu32);
            let tb = (s as usize * half + i) * 3;
            let c1 = table[tb];
            let c2 = table[tb + 1];
            let c3 = table[tb + 2];
            let turns = frac(p_hi * c1) + frac(p_lo * c1) + frac(p_hi * c2) + frac(p_lo * c2) + f32::cast_from(p) * c3;
            let angle = frac(turns) * 6.283_185_5f32;
            let c = angle.cos() * mscale;
            let sn = angle.sin() * mscale;
            let mut i0 = i;
            let mut i1 = i + half;
            if comptime![interleaved] {
                i0 = 2 * i;
                i1 = 2 * i + 1;
            }
            let base = th * d;
            let a = f32::cast_from(x[base + i0]);
            let b = f32::cast_from(x[base + i1]);
            x[base + i0] = F::cast_from(a * c - b * sn);
            x[base + i1] = F::cast_from(b * c + a * sn);
        }
    }
}

/// Rotates `x [T, H, D]` (f16 or f32) in place. `positions` and `seq_ids` are u32 `[T]`;
/// positions must be < 2^24 and `seq_ids` index `table` (others leave their token unrotated).
/// `rot_dim` (even, <= D) is `2 * table.half`.
pub fn rope_inplace<R: Runtime>(
    client: &ComputeClient<R>,
    x: &GpuTensor,
    positions: &GpuTensor,
    seq_ids: &GpuTensor,
    table: &RopeTable,
    layout: RopeLayout,
    mscale: f32,
) -> Result<()> {
    ensure!(x.shape.len() == 3, "rope: x must be [T, H, D], got {:?}", x.shape);
    let (t, h, d) = (x.shape[0], x.shape[1], x.shape[2]);
    ensure!(matches!(x.elem, Elem::F16 | Elem::F32), "rope: x must be f16 or f32");
    positions.expect("rope positions", &[t], &[Elem::U32])?;
    seq_ids.expect("rope seq_ids", &[t], &[Elem::U32])?;
    x.check_u32_index("rope x")?;
    let half = table.half;
    ensure!(2 * half <= d, "rope: rotary dim {} exceeds head dim {d}", 2 * half);
    ensure!(mscale.is_finite(), "rope: mscale must be finite");
    let total = t * h * half;
    let count = grid_1d(total.div_ceil(ROPE_UNITS))?;
    let interleaved = layout == RopeLayout::Interleaved;
    crate::dispatch_float!(x.elem, F => unsafe {
        rope_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(ROPE_UNITS as u32),
            x.arg(), positions.arg(), seq_ids.arg(), table.data.arg(),
            total, h, d, half, table.num_seqs as u32, mscale, interleaved,
        )
    });
    Ok(())
}
