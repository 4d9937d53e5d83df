//! Online KV-cache quantization (awq-reference §7): asymmetric, per (token, KV head) row of
//! `head_dim` values, b = 8 or 4 bits. This file is the one definition of the formula, on the
//! device ([`quantize_row`], used by the standalone kernel and by the cache append) and on the
//! host ([`quantize_row_ref`]); the two agree bit for bit.
//!
//! For a row x (values as f32):
//! 1. `lo = min x`, `hi = max x`;
//! 2. `scale32 = (hi - lo) * inv_qmax` in f32, `inv_qmax = f32(1 / (2^b - 1))` (a multiply rather
//!    than TurboMind's divide: f32 division is not correctly rounded on every GPU API, a multiply
//!    is, so the result is the same everywhere);
//! 3. stored params `scale = f16(scale32)`, `zero = f16(lo)` (round to nearest even; the zero is a
//!    real-valued offset, not an integer zero point);
//! 4. with `s = f32(scale)`, `z = f32(zero)`, the stored values themselves:
//!    `q = clamp(round_half_even((x - z) / s), 0, 2^b - 1)` where `x - z` is an f32 subtraction and
//!    the division and rounding are exact (the kernel corrects its f32 quotient with the exact
//!    residual `(x - z) - q*s`); `s == 0` (a constant row) gives q = 0;
//! 5. dequantization `x' = q*s + z` in f32.
//!
//! Quantizing with the stored (f16) params keeps dequantization consistent; the round-trip error
//! is `|x - x'| <= s/2` for values inside `[z, z + (2^b-1)s]` and grows by the distance to that
//! range for values outside it, which only the f16 rounding of the params causes:
//! `|lo - z| <= 2^-11|lo|` and `(2^b-1)|scale32 - s| <= (2^b-1) 2^-11 s`, or `(2^b-1) 2^-25` when the
//! scale is an f16 subnormal (rows whose range is below `2^-14 (2^b-1)`, 0.016 for int8).
//!
//! Packing into u32 words, lowest bits first: int8 holds elements `4w..4w+4` in word w (byte i =
//! element 4w + i); int4 holds elements `8w..8w+8` (nibble i = element 8w + i). This natural order
//! is *not* TurboMind's int4 KV order `[0,2,4,6,1,3,5,7]` (a trick for its converter); our cache
//! is private to our engine, so it never has to be bit-compatible.
//!
//! Inputs must be finite and within f16 range (they are f16/f32 activations of an f16 model).

use crate::error::{ensure, Result};
use crate::tensor::{cube_linear, grid_1d, Elem, GpuTensor};
use cubecl::prelude::*;
use half::f16;

/// Bits per cached value for a quantized cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvBits {
    Int8,
    Int4,
}

impl KvBits {
    pub fn bits(self) -> u32 {
        match self {
            KvBits::Int8 => 8,
            KvBits::Int4 => 4,
        }
    }
    /// `2^b - 1`.
    pub fn qmax(self) -> u32 {
        (1 << self.bits()) - 1
    }
    /// Values per u32 word.
    pub fn per_word(self) -> usize {
        32 / self.bits() as usize
    }
    /// f32(1 / (2^b - 1)), the factor of step 2.
    pub fn inv_qmax(self) -> f32 {
        (1.0f64 / self.qmax() as f64) as f32
    }
    /// u32 words per row of `d` values.
    pub fn row_words(self, d: usize) -> usize {
        d / self.per_word()
    }
    pub(crate) fn check_dim(self, d: usize) -> Result<()> {
        ensure!(d > 0 && d.is_multiple_of(self.per_word()), "kv quant: head_dim {d} must be a positive multiple of {}", self.per_word());
        Ok(())
    }
}

// ---------------------------------------------------------------- host reference

/// One quantized row: values `q` (one per element, unpacked) and the stored params.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantRow {
    pub q: Vec<u8>,
    pub scale: f16,
    pub zero: f16,
}

/// Host reference of steps 1-4 (exact rounding via f64, see the module docs).
pub fn quantize_row_ref(x: &[f32], bits: KvBits) -> QuantRow {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = f16::from_f32((hi - lo) * bits.inv_qmax());
    let zero = f16::from_f32(lo);
    let (s, z) = (scale.to_f32(), zero.to_f32());
    let qmax = bits.qmax() as f64;
    let q = x
        .iter()
        .map(|&v| {
            if s == 0.0 {
                return 0;
            }
            let xz = v - z; // f32, as on the device
            // xz and s have 24 and 11 significant bits: their f64 quotient is never so close to a
            // half-integer that rounding the f64 changes round_half_even's answer.
            ((xz as f64) / (s as f64)).round_ties_even().clamp(0.0, qmax) as u8
        })
        .collect();
    QuantRow { q, scale, zero }
}

/// Host reference of step 5.
pub fn dequantize_row_ref(row: &QuantRow) -> Vec<f32> {
    let (s, z) = (row.scale.to_f32(), row.zero.to_f32());
    row.q.iter().map(|&q| q as f32 * s + z).collect()
}

/// Packs values (< 2^b) into words, lowest bits first (module docs). `q.len()` must be a
/// multiple of the values per word.
pub fn pack(q: &[u8], bits: KvBits) -> Vec<u32> {
    let b = bits.bits();
    q.chunks(bits.per_word())
        .map(|c| c.iter().enumerate().fold(0u32, |w, (i, &v)| w | ((v as u32) << (b * i as u32))))
        .collect()
}

/// Inverse of [`pack`].
pub fn unpack(words: &[u32], bits: KvBits) -> Vec<u8> {
    let b = bits.bits();
    let mask = bits.qmax();
    words.iter().flat_map(|&w| (0..bits.per_word() as u32).map(move |i| ((w >> (b * i)) & mask) as u8)).collect()
}

// ---------------------------------------------------------------- device

/// Step 4 for one value: the exactly rounded, clamped `(xz / s)`.
#[cube]
fn quant_value(xz: f32, s: f32, qmax: f32) -> u32 {
    let mut q = 0.0f32;
    if s > 0.0 {
        let q0 = (xz / s).round();
        // The residual is exact: q0*s fits in f32 (<= 13 + 11 bits for the q0 that matter) and
        // xz is within a factor 2 of it (Sterbenz), or q0 == 0.
        let r = xz - q0 * s;
        let h = 0.5f32 * s;
        q = q0;
        if r > h {
            q = q0 + 1.0;
        } else if r < -h {
            q = q0 - 1.0;
        } else if r == h {
            if (i32::cast_from(q0) & 1) != 0 {
                q = q0 + 1.0;
            }
        } else if r == -h && (i32::cast_from(q0) & 1) != 0 {
            q = q0 - 1.0;
        }
        q = f32::min(f32::max(q, 0.0), qmax);
    }
    u32::cast_from(q)
}

/// Quantizes `d` values `x[xoff..]` into `words(d)` words at `data[doff..]` (cast to the data
/// array's type C, which is u32 for a quantized buffer) and `(scale, zero)` at `params[poff..]`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_row<F: Float, C: CubePrimitive>(
    x: &Array<F>,
    xoff: usize,
    d: usize,
    data: &mut Array<C>,
    doff: usize,
    params: &mut Array<f16>,
    poff: usize,
    inv_qmax: f32,
    #[comptime] bits: u32,
) {
    let per = comptime![(32 / bits) as usize];
    let qmax = comptime![((1u32 << bits) - 1) as f32];
    let mut lo = f32::cast_from(x[xoff]);
    let mut hi = lo;
    for i in 1..d {
        let v = f32::cast_from(x[xoff + i]);
        lo = f32::min(lo, v);
        hi = f32::max(hi, v);
    }
    let scale = f16::cast_from((hi - lo) * inv_qmax);
    let zero = f16::cast_from(lo);
    params[poff] = scale;
    params[poff + 1] = zero;
    let s = f32::cast_from(scale);
    let z = f32::cast_from(zero);
    for w in 0..d / per {
        let mut word = 0u32;
        #[unroll]
        for j in 0..per {
            let xz = f32::cast_from(x[xoff + w * per + j]) - z;
            word |= quant_value(xz, s, qmax) << comptime![(j as u32) * bits];
        }
        data[doff + w] = C::cast_from(word);
    }
}

/// Element `i` of a quantized row: `q*s + z`, with the row's words at `data[doff..]`.
#[cube]
pub(crate) fn dequant_value<C: CubePrimitive>(data: &Array<C>, doff: usize, i: usize, s: f32, z: f32, #[comptime] bits: u32) -> f32 {
    let per = comptime![(32 / bits) as usize];
    let mask = comptime![(1u32 << bits) - 1];
    let word = u32::cast_from(data[doff + i / per]);
    let q = (word >> (((i % per) as u32) * bits)) & mask;
    f32::cast_from(q) * s + z
}

const KVQ_UNITS: usize = 64;

#[cube(launch_unchecked)]
fn kv_quantize_kernel<F: Float>(
    x: &Array<F>,           // [rows, d]
    data: &mut Array<u32>,  // [rows, words]
    params: &mut Array<f16>, // [rows, 2]
    rows: usize,
    d: usize,
    inv_qmax: f32,
    #[comptime] bits: u32,
) {
    let row = cube_linear() * KVQ_UNITS + UNIT_POS as usize;
    if row < rows {
        let words = d / comptime![(32 / bits) as usize];
        quantize_row::<F, u32>(x, row * d, d, data, row * words, params, row * 2, inv_qmax, bits);
    }
}

#[cube(launch_unchecked)]
fn kv_dequantize_kernel<F: Float>(
    data: &Array<u32>,  // [rows, words]
    params: &Array<f16>, // [rows, 2]
    out: &mut Array<F>, // [rows, d]
    total: usize,       // rows * d
    d: usize,
    #[comptime] bits: u32,
) {
    let idx = cube_linear() * KVQ_UNITS + UNIT_POS as usize;
    if idx < total {
        let row = idx / d;
        let words = d / comptime![(32 / bits) as usize];
        let s = f32::cast_from(params[row * 2]);
        let z = f32::cast_from(params[row * 2 + 1]);
        out[idx] = F::cast_from(dequant_value::<u32>(data, row * words, idx % d, s, z, bits));
    }
}

/// Rows of quantized values in device memory: `data` u32 `[rows, d*b/32]`, `params` f16
/// `[rows, 2]` = (scale, zero).
#[derive(Clone, Debug)]
pub struct QuantizedRows {
    pub bits: KvBits,
    pub rows: usize,
    pub d: usize,
    pub data: GpuTensor,
    pub params: GpuTensor,
}

/// Quantizes every row of `x [..., d]` (f16 or f32).
pub fn kv_quantize<R: Runtime>(client: &ComputeClient<R>, x: &GpuTensor, bits: KvBits) -> Result<QuantizedRows> {
    ensure!(!x.shape.is_empty(), "kv_quantize: x must have at least one dimension");
    let d = x.shape[x.shape.len() - 1];
    bits.check_dim(d)?;
    x.check_u32_index("kv_quantize x")?;
    let rows = x.numel() / d;
    let data = GpuTensor::empty(client, &[rows, bits.row_words(d)], Elem::U32)?;
    let params = GpuTensor::empty(client, &[rows, 2], Elem::F16)?;
    let count = grid_1d(rows.div_ceil(KVQ_UNITS))?;
    crate::dispatch_float!(x.elem, F => unsafe {
        kv_quantize_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(KVQ_UNITS as u32),
            x.arg(), data.arg(), params.arg(), rows, d, bits.inv_qmax(), bits.bits(),
        )
    });
    Ok(QuantizedRows { bits, rows, d, data, params })
}

/// Dequantizes rows back to `[rows, d]` in `elem` (f16 or f32).
pub fn kv_dequantize<R: Runtime>(client: &ComputeClient<R>, q: &QuantizedRows, elem: Elem) -> Result<GpuTensor> {
    q.bits.check_dim(q.d)?;
    q.data.expect("kv_dequantize data", &[q.rows, q.bits.row_words(q.d)], &[Elem::U32])?;
    q.params.expect("kv_dequantize params", &[q.rows, 2], &[Elem::F16])?;
    ensure!(q.rows * q.d <= u32::MAX as usize, "kv_dequantize: more than 2^32 values");
    let out = GpuTensor::empty(client, &[q.rows, q.d], elem)?;
    let total = q.rows * q.d;
    let count = grid_1d(total.div_ceil(KVQ_UNITS))?;
    crate::dispatch_float!(elem, F => unsafe {
        kv_dequantize_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(KVQ_UNITS as u32),
            q.data.arg(), q.params.arg(), out.arg(), total, q.d, q.bits.bits(),
        )
    });
    Ok(out)
}
