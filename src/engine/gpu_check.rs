//! `awqc kernel-test`: every GPU kernel of `awqc-kernels` against its f64 (or bit-exact) host
//! reference (`awqc_kernels::reference`, `kv_quant::quantize_row_ref`), on any CubeCL runtime.
//! The kernels crate's own tests run on wgpu only (lavapipe in CI); this runs the same kinds of
//! checks from the release binary on a CUDA machine, which has no Rust toolchain. Small shapes; every element type and comptime variant the engine
//! uses (f32 and f16 activations, float and int8/int4 caches, both RoPE layouts) is compiled and
//! checked, and a kernel that failed to compile is reported (cubecl's device-thread panics).

use awqc_kernels::attention::{attention_decode, attention_prefill};
use awqc_kernels::cubecl::prelude::{ComputeClient, Runtime};
use awqc_kernels::kv_cache::{kv_append, BlockTables, KvCache, KvCacheKind, KvCacheLayout};
use awqc_kernels::kv_quant::{dequantize_row_ref, kv_dequantize, kv_quantize, quantize_row_ref, unpack, KvBits};
use awqc_kernels::rope::{inv_freq, rope_inplace, RopeLayout, RopeTable};
use awqc_kernels::reference::{self, max_abs, round_f16, Rng, W4Layer};
use awqc_kernels::w4a16::{repack_turbomind, w4a16_dequantize, w4a16_gemm, w4a16_gemv};
use awqc_kernels::{Elem, GpuTensor, KernelError};
use serde::Serialize;

/// One check: the worst error against the reference and the bound it must stay under.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub max_err: f64,
    pub tolerance: f64,
    pub pass: bool,
}

type R<T> = std::result::Result<T, KernelError>;

/// `n` uniform values in [lo, hi) as an upload of `elem` stores them.
fn values(rng: &mut Rng, n: usize, lo: f64, hi: f64, elem: Elem) -> Vec<f32> {
    let v = rng.vec(n, lo, hi);
    if elem == Elem::F16 {
        round_f16(&v)
    } else {
        v
    }
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    max_abs(a, b) / b.iter().map(|v| v.abs()).fold(1e-30, f64::max)
}

struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: String, max_err: f64, tolerance: f64) {
        self.0.push(Check { name, max_err, tolerance, pass: max_err < tolerance });
    }
}

fn elem_name(e: Elem) -> &'static str {
    e.name()
}

fn w4a16_checks<Rt: Runtime>(c: &ComputeClient<Rt>, out: &mut Checks) -> R<()> {
    let mut rng = Rng::new(11);
    let (k, n, g) = (256usize, 96usize, 64usize);
    let l = W4Layer::random(&mut rng, k, n, g);
    let weights = repack_turbomind(&l.turbomind_qweight(), &l.s, &l.z, k, n, g)?.upload(c)?;
    for elem in [Elem::F32, Elem::F16] {
        for m in [1usize, 3, 37] {
            let x = values(&mut rng, m * k, -1.0, 1.0, elem);
            let want = l.matmul(&x, m);
            let xt = GpuTensor::from_f32(c, &x, &[m, k], elem)?;
            let tol = if elem == Elem::F32 { 1e-5 } else { 2e-3 };
            if m <= 4 {
                let got = w4a16_gemv(c, &xt, &weights)?.to_f32(c)?;
                out.push(format!("w4a16 gemv {} M={m} K={k} N={n} g={g} (rel)", elem_name(elem)), rel(&got, &want), tol);
            }
            let got = w4a16_gemm(c, &xt, &weights)?.to_f32(c)?;
            out.push(format!("w4a16 gemm {} M={m} K={k} N={n} g={g} (rel)", elem_name(elem)), rel(&got, &want), tol);
        }
        let dense = w4a16_dequantize(c, &weights, elem)?.to_f32(c)?;
        let want = l.dense();
        let tol = if elem == Elem::F32 { 1e-6 } else { 1e-3 };
        out.push(format!("w4a16 dequantize {} (rel)", elem_name(elem)), rel(&dense, &want), tol);
    }
    Ok(())
}

fn norm_act_checks<Rt: Runtime>(c: &ComputeClient<Rt>, out: &mut Checks) -> R<()> {
    let mut rng = Rng::new(12);
    for elem in [Elem::F32, Elem::F16] {
        let (rows, h) = (5usize, 576usize);
        let x = values(&mut rng, rows * h, -3.0, 3.0, elem);
        let wv = values(&mut rng, h, 0.5, 1.5, elem);
        let eps = 1e-5;
        let want = reference::rms_norm(&x, &wv, h, eps);
        let got = awqc_kernels::norm::rms_norm(c, &GpuTensor::from_f32(c, &x, &[rows, h], elem)?, &GpuTensor::from_f32(c, &wv, &[h], elem)?, eps as f32)?
            .to_f32(c)?;
        out.push(format!("rms_norm {} [{rows}, {h}] (rel)", elem_name(elem)), rel(&got, &want), if elem == Elem::F32 { 2e-6 } else { 1e-3 });

        let n = 1000usize;
        let gt = values(&mut rng, n, -8.0, 8.0, elem);
        let up = values(&mut rng, n, -2.0, 2.0, elem);
        let want = reference::silu_mul(&gt, &up);
        let got = awqc_kernels::act::silu_mul(c, &GpuTensor::from_f32(c, &gt, &[n], elem)?, &GpuTensor::from_f32(c, &up, &[n], elem)?)?.to_f32(c)?;
        out.push(format!("silu_mul {} (rel)", elem_name(elem)), rel(&got, &want), if elem == Elem::F32 { 1e-6 } else { 1e-3 });
    }
    Ok(())
}

fn rope_checks<Rt: Runtime>(c: &ComputeClient<Rt>, out: &mut Checks) -> R<()> {
    let mut rng = Rng::new(13);
    let (t, h, d) = (6usize, 3usize, 64usize);
    // Two sequences with different bases (dynamic NTK gives each its own), positions up to 70000.
    let freqs = [inv_freq(10000.0, d), inv_freq(310822.3667, d)];
    let table = RopeTable::new(c, &freqs)?;
    let positions: Vec<u32> = vec![0, 1, 63, 4097, 70000, 12345];
    let seq_ids: Vec<u32> = vec![0, 0, 1, 1, 0, 1];
    for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
        for elem in [Elem::F32, Elem::F16] {
            let x = values(&mut rng, t * h * d, -2.0, 2.0, elem);
            let mscale = 1.1f32;
            let want = reference::rope(&x, &positions, &seq_ids, &freqs, h, d, d, layout == RopeLayout::Interleaved, mscale as f64);
            let xt = GpuTensor::from_f32(c, &x, &[t, h, d], elem)?;
            let pt = GpuTensor::from_u32(c, &positions, &[t])?;
            let st = GpuTensor::from_u32(c, &seq_ids, &[t])?;
            rope_inplace(c, &xt, &pt, &st, &table, layout, mscale)?;
            let got = xt.to_f32(c)?;
            let tol = if elem == Elem::F32 { 2e-5 } else { 4e-3 };
            out.push(format!("rope {layout:?} {} (abs)", elem_name(elem)), max_abs(&got, &want), tol);
        }
    }
    Ok(())
}

fn kv_quant_checks<Rt: Runtime>(c: &ComputeClient<Rt>, out: &mut Checks) -> R<()> {
    let mut rng = Rng::new(14);
    let (rows, d) = (40usize, 64usize);
    for bits in [KvBits::Int8, KvBits::Int4] {
        let mut x = values(&mut rng, rows * d, -4.0, 4.0, Elem::F32);
        x[..d].iter_mut().for_each(|v| *v = 0.25); // a constant row: scale 0
        let q = kv_quantize(c, &GpuTensor::from_f32(c, &x, &[rows, d], Elem::F32)?, bits)?;
        let codes = unpack(&q.data.to_u32(c)?, bits);
        let params = q.params.to_f16(c)?;
        let mut mismatches = 0usize;
        let mut want_deq = Vec::with_capacity(rows * d);
        for r in 0..rows {
            let want = quantize_row_ref(&x[r * d..][..d], bits);
            mismatches += (want.q[..] != codes[r * d..][..d]) as usize;
            mismatches += (want.scale.to_bits() != params[2 * r].to_bits() || want.zero.to_bits() != params[2 * r + 1].to_bits()) as usize;
            want_deq.extend(dequantize_row_ref(&want).into_iter().map(|v| v as f64));
        }
        out.push(format!("kv_quantize int{} bit-exact (mismatched rows)", bits.bits()), mismatches as f64, 0.5);
        let got = kv_dequantize(c, &q, Elem::F32)?.to_f32(c)?;
        out.push(format!("kv_dequantize int{} (abs)", bits.bits()), max_abs(&got, &want_deq), 1e-6);
    }
    Ok(())
}

fn attention_checks<Rt: Runtime>(c: &ComputeClient<Rt>, out: &mut Checks) -> R<()> {
    let mut rng = Rng::new(15);
    let (hq, hkv, d) = (6usize, 2usize, 64usize);
    // Prefill: two sequences packed along T, one longer than a 64-key chunk.
    let lens = [9usize, 70];
    let t: usize = lens.iter().sum();
    for elem in [Elem::F32, Elem::F16] {
        let q = values(&mut rng, t * hq * d, -1.0, 1.0, elem);
        let k = values(&mut rng, t * hkv * d, -1.0, 1.0, elem);
        let v = values(&mut rng, t * hkv * d, -1.0, 1.0, elem);
        let want = reference::prefill_attention(&q, &k, &v, &lens, hq, hkv, d);
        let up = |x: &[f32], h| GpuTensor::from_f32(c, x, &[t, h, d], elem);
        let got = attention_prefill(c, &up(&q, hq)?, &up(&k, hkv)?, &up(&v, hkv)?, &lens, None)?.to_f32(c)?;
        out.push(format!("attention_prefill {} GQA {hq}/{hkv} (abs)", elem_name(elem)), max_abs(&got, &want), if elem == Elem::F32 { 2e-6 } else { 1e-3 });
    }

    // Decode over the paged cache: 2 layers, sequences of 70 and 130 tokens in scattered blocks.
    let layers = 2usize;
    let dl = [70usize, 130];
    let tables = vec![vec![7u32, 2], vec![5, 0, 9]];
    let tt: usize = dl.iter().sum();
    let k = values(&mut rng, tt * hkv * d, -1.0, 1.0, Elem::F16);
    let v = values(&mut rng, tt * hkv * d, -1.0, 1.0, Elem::F16);
    let other = values(&mut rng, tt * hkv * d, -5.0, 5.0, Elem::F32);
    let qd = values(&mut rng, 2 * hq * d, -2.0, 2.0, Elem::F16);
    let starts = [0usize, dl[0]];
    for kind in [KvCacheKind::F32, KvCacheKind::F16, KvCacheKind::Int8, KvCacheKind::Int4] {
        let layout = KvCacheLayout::new(layers, hkv, d, kind)?;
        let mut cache = KvCache::new(c, layout, 10)?;
        let bt = BlockTables::new(c, &cache, &tables, &dl)?;
        for (layer, kd, vd) in [(0usize, &other, &other), (1, &k, &v)] {
            for part in [0..40usize, 40..tt] {
                let (mut slots, mut kp, mut vp) = (Vec::new(), Vec::new(), Vec::new());
                for tok in part {
                    let sq = (tok >= dl[0]) as usize;
                    slots.push(cache.slot(&tables[sq], tok - starts[sq])?);
                    kp.extend_from_slice(&kd[tok * hkv * d..][..hkv * d]);
                    vp.extend_from_slice(&vd[tok * hkv * d..][..hkv * d]);
                }
                let n = slots.len();
                let kt = GpuTensor::from_f32(c, &kp, &[n, hkv, d], Elem::F32)?;
                let vt = GpuTensor::from_f32(c, &vp, &[n, hkv, d], Elem::F32)?;
                kv_append(c, &mut cache, layer, &kt, &vt, &slots)?;
            }
        }
        let got = attention_decode(c, &GpuTensor::from_f32(c, &qd, &[2, hq, d], Elem::F32)?, &cache, 1, &bt, None)?.to_f32(c)?;
        let stored = |x: &[f32]| -> Vec<f32> {
            match kind.quant_bits() {
                None => x.to_vec(),
                Some(b) => x.chunks(d).flat_map(|r| dequantize_row_ref(&quantize_row_ref(r, b))).collect(),
            }
        };
        let (ks, vs) = (stored(&k), stored(&v));
        let mut want = Vec::new();
        for (sq, (&s, &l)) in starts.iter().zip(&dl).enumerate() {
            for h in 0..hq {
                want.extend(reference::attend(&qd, &ks, &vs, sq, h, hq, hkv, d, s..s + l));
            }
        }
        out.push(format!("kv_append + attention_decode {kind:?} vs stored K/V (abs)"), max_abs(&got, &want), 2e-6);
    }
    Ok(())
}

/// Run every check on `client`. A kernel argument error (a bug) is returned as `Err`.
pub fn run_checks<Rt: Runtime>(client: &ComputeClient<Rt>) -> std::result::Result<Vec<Check>, KernelError> {
    awqc_kernels::device::watch_device_panics();
    let mut out = Checks(Vec::new());
    w4a16_checks(client, &mut out)?;
    norm_act_checks(client, &mut out)?;
    rope_checks(client, &mut out)?;
    kv_quant_checks(client, &mut out)?;
    attention_checks(client, &mut out)?;
    let panics = awqc_kernels::device::device_panics();
    out.push("kernels that failed to compile (device-thread panics)".into(), panics as f64, 0.5);
    Ok(out.0)
}
