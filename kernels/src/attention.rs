//! Attention with GQA (query head h reads KV head `h / (Hq / Hkv)`), softmax scale 1/sqrt(D) by
//! default, f32 scores and accumulation:
//! - [`attention_prefill`]: causal attention among the new tokens of one or more sequences packed
//!   along T (`q [T, Hq, D]`, `k, v [T, Hkv, D]`); token t attends to the tokens of its own
//!   sequence up to itself;
//! - [`attention_decode`]: one query token per sequence (`q [B, Hq, D]`) over the paged cache
//!   ([`crate::kv_cache`]), float or int8/int4; append the current token's K/V first.
//!
//! Both kernels run one cube per (query token, query head) with `NT` units, the next power of two
//! not below max(D, 32). Keys are processed in chunks of NT: unit j scores key j of the chunk, the cube
//! updates a running max and sum (online softmax, as flash attention), and unit e < D accumulates
//! output element e over the chunk's values. Decode over very long contexts would gain from
//! splitting the keys over several cubes (flash-decoding); not done here.

use crate::error::{ensure, Result};
use crate::kv_cache::{BlockTables, KvCache, KvCacheKind, BLOCK_LEN};
use crate::kv_quant::dequant_value;
use crate::tensor::{block_max, block_sum, grid_dim, Elem, GpuTensor};
use cubecl::prelude::*;
use half::f16;

/// Score of a masked key; finite so that `exp(NEG - m)` is 0 without inf arithmetic.
const NEG: f32 = -3.0e38;

fn units_for(d: usize) -> usize {
    d.next_power_of_two().max(32)
}

/// Online-softmax bookkeeping for one chunk. Every unit passes its score `s` (NEG when masked);
/// returns `(m_new, alpha)` with alpha = exp(m_old - m_new) and leaves `p = exp(s - m_new)` in
/// `ps[tid]`; `l` becomes `l * alpha + sum(p)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn softmax_chunk(
    s: f32,
    m_old: f32,
    l: &mut f32,
    ps: &mut SharedMemory<f32>,
    red: &mut SharedMemory<f32>,
    tid: usize,
    #[comptime] nt: usize,
) -> (f32, f32) {
    red[tid] = s;
    let cmax = block_max(red, tid, nt);
    let m_new = f32::max(m_old, cmax);
    let alpha = (m_old - m_new).exp();
    let p = (s - m_new).exp();
    ps[tid] = p;
    red[tid] = p;
    let csum = block_sum(red, tid, nt);
    *l = *l * alpha + csum;
    (m_new, alpha)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn prefill_kernel<F: Float>(
    q: &Array<F>,          // [T, Hq, D]
    k: &Array<F>,          // [T, Hkv, D]
    v: &Array<F>,          // [T, Hkv, D]
    seq_start: &Array<u32>, // [T]: first token of t's sequence
    out: &mut Array<F>,    // [T, Hq, D]
    hq: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    #[comptime] nt: usize,
) {
    let h = CUBE_POS_X as usize;
    let t = CUBE_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let hk = h / (hq / hkv);
    let mut qs = SharedMemory::<f32>::new(nt);
    let mut ps = SharedMemory::<f32>::new(nt);
    let mut red = SharedMemory::<f32>::new(nt);
    let qoff = (t * hq + h) * d;
    let mut qv = 0.0f32;
    if tid < d {
        qv = f32::cast_from(q[qoff + tid]) * scale;
    }
    qs[tid] = qv;
    sync_cube();

    let start = seq_start[t] as usize;
    let end = t + 1;
    let mut m = NEG.runtime();
    let mut l = 0.0f32;
    let mut acc = 0.0f32;
    for c0 in range_stepped(start, end, nt) {
        let j = c0 + tid;
        let mut s = NEG.runtime();
        if j < end {
            let koff = (j * hkv + hk) * d;
            let mut dot = 0.0f32;
            for e in 0..d {
                dot += qs[e] * f32::cast_from(k[koff + e]);
            }
            s = dot;
        }
        let (m_new, alpha) = softmax_chunk(s, m, &mut l, &mut ps, &mut red, tid, nt);
        m = m_new;
        if tid < d {
            let mut cnt = end - c0;
            if cnt > nt {
                cnt = nt;
            }
            let mut a = acc * alpha;
            for jj in 0..cnt {
                a += ps[jj] * f32::cast_from(v[((c0 + jj) * hkv + hk) * d + tid]);
            }
            acc = a;
        }
        sync_cube();
    }
    if tid < d {
        out[qoff + tid] = F::cast_from(acc / l);
    }
}

#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn decode_kernel<F: Float, C: CubePrimitive>(
    q: &Array<F>,        // [B, Hq, D]
    data: &Array<C>,     // cache rows
    params: &Array<f16>, // [rows, 2] (quantized caches)
    tables: &Array<u32>, // [B, max_blocks]
    seq_lens: &Array<u32>, // [B]
    out: &mut Array<F>,  // [B, Hq, D]
    hq: usize,
    hkv: usize,
    d: usize,
    layers: usize,
    layer: usize,
    row_elems: usize,
    max_blocks: usize,
    scale: f32,
    #[comptime] bits: u32,
    #[comptime] nt: usize,
) {
    let h = CUBE_POS_X as usize;
    let b = CUBE_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let hk = h / (hq / hkv);
    let mut qs = SharedMemory::<f32>::new(nt);
    let mut ps = SharedMemory::<f32>::new(nt);
    let mut red = SharedMemory::<f32>::new(nt);
    let mut vrows = SharedMemory::<u32>::new(nt); // V row of each key of the chunk
    let mut vsc = SharedMemory::<f32>::new(nt); // its (scale, zero) for quantized caches
    let mut vze = SharedMemory::<f32>::new(nt);
    let qoff = (b * hq + h) * d;
    let mut qv = 0.0f32;
    if tid < d {
        qv = f32::cast_from(q[qoff + tid]) * scale;
    }
    qs[tid] = qv;
    sync_cube();
    // Σ q for the zero term of quantized keys: q·(qk*s + z) = s (q·qk) + z Σq.
    let mut qsum = 0.0f32;
    for e in 0..d {
        qsum += qs[e];
    }

    let len = seq_lens[b] as usize;
    let mut m = NEG.runtime();
    let mut l = 0.0f32;
    let mut acc = 0.0f32;
    for c0 in range_stepped(0usize, len, nt) {
        let j = c0 + tid;
        let mut s = NEG.runtime();
        if j < len {
            let block = tables[b * max_blocks + j / 64] as usize;
            // K row; the V row of the same (block, layer, head, slot) is 64 rows further.
            let krow = (((block * layers + layer) * hkv + hk) * 2) * 64 + j % 64;
            let kbase = krow * row_elems;
            let mut dot = 0.0f32;
            if comptime![bits == 0] {
                for e in 0..d {
                    dot += qs[e] * f32::cast_from(data[kbase + e]);
                }
            } else {
                let per = comptime![(32 / bits) as usize];
                let mask = comptime![(1u32 << bits) - 1];
                let mut dq = 0.0f32;
                for w in 0..row_elems {
                    let word = u32::cast_from(data[kbase + w]);
                    #[unroll]
                    for i in 0..per {
                        dq += qs[w * per + i] * f32::cast_from((word >> comptime![(i as u32) * bits]) & mask);
                    }
                }
                dot = f32::cast_from(params[krow * 2]) * dq + f32::cast_from(params[krow * 2 + 1]) * qsum;
                vsc[tid] = f32::cast_from(params[(krow + 64) * 2]);
                vze[tid] = f32::cast_from(params[(krow + 64) * 2 + 1]);
            }
            vrows[tid] = (krow + 64) as u32;
            s = dot;
        }
        let (m_new, alpha) = softmax_chunk(s, m, &mut l, &mut ps, &mut red, tid, nt);
        m = m_new;
        if tid < d {
            let mut cnt = len - c0;
            if cnt > nt {
                cnt = nt;
            }
            let mut a = acc * alpha;
            for jj in 0..cnt {
                let vbase = vrows[jj] as usize * row_elems;
                let val = if comptime![bits == 0] {
                    f32::cast_from(data[vbase + tid])
                } else {
                    dequant_value::<C>(data, vbase, tid, vsc[jj], vze[jj], bits)
                };
                a += ps[jj] * val;
            }
            acc = a;
        }
        sync_cube();
    }
    if tid < d {
        out[qoff + tid] = F::cast_from(acc / l);
    }
}

fn check_heads(hq: usize, hkv: usize) -> Result<()> {
    ensure!(hq > 0 && hkv > 0 && hq.is_multiple_of(hkv), "attention: query heads {hq} must be a multiple of KV heads {hkv}");
    Ok(())
}

fn softmax_scale(scale: Option<f32>, d: usize) -> Result<f32> {
    let s = scale.unwrap_or(1.0 / (d as f32).sqrt());
    ensure!(s.is_finite() && s > 0.0, "attention: scale {s} must be finite and > 0");
    Ok(s)
}

/// Causal attention over the new tokens of `seq_lens.len()` sequences packed along T
/// (`sum(seq_lens) == T`). Returns `[T, Hq, D]` in q's element type. `scale` defaults to 1/sqrt(D).
pub fn attention_prefill<R: Runtime>(
    client: &ComputeClient<R>,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    seq_lens: &[usize],
    scale: Option<f32>,
) -> Result<GpuTensor> {
    ensure!(q.shape.len() == 3, "attention_prefill: q must be [T, Hq, D], got {:?}", q.shape);
    let (t, hq, d) = (q.shape[0], q.shape[1], q.shape[2]);
    ensure!(matches!(q.elem, Elem::F16 | Elem::F32), "attention_prefill: q must be f16 or f32");
    ensure!(k.shape.len() == 3, "attention_prefill: k must be [T, Hkv, D], got {:?}", k.shape);
    let hkv = k.shape[1];
    k.expect("attention_prefill k", &[t, hkv, d], &[q.elem])?;
    v.expect("attention_prefill v", &[t, hkv, d], &[q.elem])?;
    check_heads(hq, hkv)?;
    q.check_u32_index("attention_prefill q")?;
    k.check_u32_index("attention_prefill k")?;
    ensure!(d <= 256, "attention_prefill: head_dim {d} > 256");
    ensure!(seq_lens.iter().sum::<usize>() == t && seq_lens.iter().all(|&l| l > 0), "attention_prefill: seq_lens {seq_lens:?} must be > 0 and sum to T = {t}");
    let mut starts = Vec::with_capacity(t);
    let mut s0 = 0u32;
    for &l in seq_lens {
        starts.extend(std::iter::repeat_n(s0, l));
        s0 += l as u32;
    }
    let starts = GpuTensor::from_u32(client, &starts, &[t])?;
    let out = GpuTensor::empty(client, &q.shape, q.elem)?;
    let nt = units_for(d);
    let count = CubeCount::Static(grid_dim("attention_prefill: Hq", hq)?, grid_dim("attention_prefill: T", t)?, 1);
    let scale = softmax_scale(scale, d)?;
    crate::dispatch_float!(q.elem, F => unsafe {
        prefill_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(nt as u32),
            q.arg(), k.arg(), v.arg(), starts.arg(), out.arg(),
            hq, hkv, d, scale, nt,
        )
    });
    Ok(out)
}

/// Decode attention of one query token per sequence, `q [B, Hq, D]`, over `layer` of the cache,
/// reading `tables.seq_lens[b]` positions of sequence b. Returns `[B, Hq, D]` in q's type.
pub fn attention_decode<R: Runtime>(
    client: &ComputeClient<R>,
    q: &GpuTensor,
    cache: &KvCache,
    layer: usize,
    tables: &BlockTables,
    scale: Option<f32>,
) -> Result<GpuTensor> {
    let lay = cache.layout;
    ensure!(q.shape.len() == 3, "attention_decode: q must be [B, Hq, D], got {:?}", q.shape);
    let (b, hq, d) = (q.shape[0], q.shape[1], q.shape[2]);
    ensure!(matches!(q.elem, Elem::F16 | Elem::F32), "attention_decode: q must be f16 or f32");
    ensure!(d == lay.head_dim, "attention_decode: q head_dim {d} != cache head_dim {}", lay.head_dim);
    ensure!(b == tables.batch, "attention_decode: q has {b} sequences, block tables {}", tables.batch);
    ensure!(layer < lay.layers, "attention_decode: layer {layer} >= {}", lay.layers);
    check_heads(hq, lay.kv_heads)?;
    tables.tables.expect("attention_decode tables", &[b, tables.max_blocks], &[Elem::U32])?;
    tables.seq_lens.expect("attention_decode seq_lens", &[b], &[Elem::U32])?;
    for (i, &len) in tables.host_seq_lens.iter().enumerate() {
        ensure!(len > 0 && len.div_ceil(BLOCK_LEN) <= tables.max_blocks, "attention_decode: sequence {i} length {len} exceeds its table");
    }
    let out = GpuTensor::empty(client, &q.shape, q.elem)?;
    let nt = units_for(d);
    let count = CubeCount::Static(grid_dim("attention_decode: Hq", hq)?, grid_dim("attention_decode: B", b)?, 1);
    let scale = softmax_scale(scale, d)?;
    let bits = lay.kind.kernel_bits();
    let at = cache.address_type();
    macro_rules! launch {
        ($C:ty) => {
            crate::dispatch_float!(q.elem, F => unsafe {
                decode_kernel::launch_unchecked::<F, $C, R>(
                    client, count, CubeDim::new_1d(nt as u32), at,
                    q.arg(), cache.data.arg(), cache.params.arg(), tables.tables.arg(), tables.seq_lens.arg(), out.arg(),
                    hq, lay.kv_heads, d, lay.layers, layer, lay.row_elems(), tables.max_blocks, scale, bits, nt,
                )
            })
        };
    }
    match lay.kind {
        KvCacheKind::F16 => launch!(f16),
        KvCacheKind::F32 => launch!(f32),
        KvCacheKind::Int8 | KvCacheKind::Int4 => launch!(u32),
    }
    Ok(out)
}
