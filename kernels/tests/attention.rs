//! Prefill attention vs an f64 reference; decode over the paged cache vs prefill's last row
//! (float caches) and vs f64 references on quantized and original K/V (int8 / int4 caches);
//! the documented cache layout and block budgeting.
mod common;

use awqc_kernels::attention::{attention_decode, attention_prefill};
use awqc_kernels::kv_cache::{kv_append, BlockTables, KvCache, KvCacheKind, KvCacheLayout, BLOCK_LEN};
use awqc_kernels::kv_quant::{dequantize_row_ref, quantize_row_ref};
use awqc_kernels::{Elem, GpuTensor};
use awqc_kernels::reference;
use common::*;

#[test]
fn block_budget_and_layout_arithmetic() {
    // SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64.
    let f16 = KvCacheLayout::new(30, 3, 64, KvCacheKind::F16).unwrap();
    let i8 = KvCacheLayout::new(30, 3, 64, KvCacheKind::Int8).unwrap();
    let i4 = KvCacheLayout::new(30, 3, 64, KvCacheKind::Int4).unwrap();
    assert_eq!(f16.block_bytes(), 30 * 3 * 2 * 64 * 128);
    assert_eq!(i8.block_bytes(), 30 * 3 * 2 * 64 * (64 + 4));
    assert_eq!(i4.block_bytes(), 30 * 3 * 2 * 64 * (32 + 4));
    assert_eq!(f16.blocks_for_budget(10 * f16.block_bytes() as u64 + 5), 10);
    assert_eq!(i4.blocks_for_free_memory(1 << 30, 0.5).unwrap(), (1usize << 29) / i4.block_bytes());
    assert_eq!(i4.blocks_for_free_memory(1 << 30, 300.0).unwrap(), 300);
    assert!(i4.blocks_for_free_memory(1 << 30, 0.0).is_err());
    assert_eq!(KvCacheLayout::blocks_for_tokens(64), 1);
    assert_eq!(KvCacheLayout::blocks_for_tokens(65), 2);
    assert_eq!(i8.row_index(2, 1, 2, 1, 5), (((2 * 30 + 1) * 3 + 2) * 2 + 1) * 64 + 5);
    assert_eq!(KvCacheKind::from_quant_policy(8, Elem::F16).unwrap(), KvCacheKind::Int8);
    assert_eq!(KvCacheKind::from_quant_policy(0, Elem::F32).unwrap(), KvCacheKind::F32);
    assert!(KvCacheKind::from_quant_policy(42, Elem::F16).is_err());
    assert!(KvCacheLayout::new(1, 1, 60, KvCacheKind::Int4).is_err()); // 60 % 8 != 0
}

#[test]
fn attention_prefill_and_decode() {
    let client = client();
    let mut rng = Rng::new(2024);

    // ---------------- prefill: 3 sequences (one longer than a 64-key chunk), GQA 6/2, D 64;
    // and D = 40 (not a power of two) without GQA.
    let mut worst = [0f64; 2];
    for (hq, hkv, d) in [(6usize, 2usize, 64usize), (3, 3, 40)] {
        let lens = [5usize, 17, 70];
        let t: usize = lens.iter().sum();
        for elem in [Elem::F32, Elem::F16] {
            let mut q = rng.vec(t * hq * d, -1.0, 1.0);
            let mut k = rng.vec(t * hkv * d, -1.0, 1.0);
            let mut v = rng.vec(t * hkv * d, -1.0, 1.0);
            if elem == Elem::F16 {
                q = round_f16(&q);
                k = round_f16(&k);
                v = round_f16(&v);
            }
            let up = |x: &[f32], h| GpuTensor::from_f32(&client, x, &[t, h, d], elem).unwrap();
            let out = attention_prefill(&client, &up(&q, hq), &up(&k, hkv), &up(&v, hkv), &lens, None).unwrap();
            let got = out.to_f32(&client).unwrap();
            assert_kernels_built();
            let want = reference::prefill_attention(&q, &k, &v, &lens, hq, hkv, d);
            let err = max_abs(&got, &want);
            let tol = if elem == Elem::F32 { 2e-6 } else { 1e-3 };
            println!("prefill hq={hq} hkv={hkv} d={d} {elem:?}: max abs err {err:e}");
            worst[(elem == Elem::F16) as usize] = worst[(elem == Elem::F16) as usize].max(err);
            assert!(err < tol, "prefill hq={hq} hkv={hkv} d={d} {elem:?}: max abs err {err:e} >= {tol:e}");
        }
    }
    let bad = GpuTensor::from_f32(&client, &[0.0; 2 * 4 * 8], &[2, 4, 8], Elem::F32).unwrap();
    let kv3 = GpuTensor::from_f32(&client, &[0.0; 2 * 3 * 8], &[2, 3, 8], Elem::F32).unwrap();
    assert!(attention_prefill(&client, &bad, &kv3, &kv3, &[2], None).is_err()); // 4 % 3 != 0
    assert!(attention_prefill(&client, &bad, &bad, &bad, &[1], None).is_err()); // lens sum != T

    // ---------------- decode over the paged cache.
    // Two sequences of 70 and 130 tokens with scattered blocks; K/V of layer 1 are the tested
    // ones, layer 0 holds different data that must not leak in.
    let (layers, hq, hkv, d) = (2usize, 6usize, 2usize, 64usize);
    let lens = [70usize, 130];
    let tables = vec![vec![7u32, 2], vec![5, 0, 9]];
    let t: usize = lens.iter().sum();
    let mut q = round_f16(&rng.vec(t * hq * d, -1.0, 1.0));
    let k = round_f16(&rng.vec(t * hkv * d, -1.0, 1.0));
    let v = round_f16(&rng.vec(t * hkv * d, -1.0, 1.0));
    // A few large keys so that quantization errors are not all alike.
    for x in q.iter_mut().step_by(97) {
        *x *= 4.0;
    }
    let other = rng.vec(t * hkv * d, -5.0, 5.0);
    let starts = [0usize, lens[0]];
    // The last token of each sequence is the decode query.
    let q_last: Vec<f32> = starts.iter().zip(&lens).flat_map(|(&s, &l)| q[(s + l - 1) * hq * d..][..hq * d].to_vec()).collect();

    for kind in [KvCacheKind::F32, KvCacheKind::F16, KvCacheKind::Int8, KvCacheKind::Int4] {
        let layout = KvCacheLayout::new(layers, hkv, d, kind).unwrap();
        let mut cache = KvCache::new(&client, layout, 10).unwrap();
        let bt = BlockTables::new(&client, &cache, &tables, &lens).unwrap();
        let elem = Elem::F32;
        // Append in two calls per layer (prompt, then the rest), as prefill and decode steps would.
        for (layer, kdata, vdata) in [(0usize, &other, &other), (1, &k, &v)] {
            for part in [0..40usize, 40..t] {
                let mut slots = Vec::new();
                let (mut kp, mut vp) = (Vec::new(), Vec::new());
                for tok in part {
                    let sq = (tok >= lens[0]) as usize;
                    slots.push(cache.slot(&tables[sq], tok - starts[sq]).unwrap());
                    kp.extend_from_slice(&kdata[tok * hkv * d..][..hkv * d]);
                    vp.extend_from_slice(&vdata[tok * hkv * d..][..hkv * d]);
                }
                let n = slots.len();
                let kt = GpuTensor::from_f32(&client, &kp, &[n, hkv, d], elem).unwrap();
                let vt = GpuTensor::from_f32(&client, &vp, &[n, hkv, d], elem).unwrap();
                kv_append(&client, &mut cache, layer, &kt, &vt, &slots).unwrap();
            }
        }
        let qt = GpuTensor::from_f32(&client, &q_last, &[2, hq, d], elem).unwrap();
        let got = attention_decode(&client, &qt, &cache, 1, &bt, None).unwrap().to_f32(&client).unwrap();
        assert_kernels_built();

        // References: attention of the last token over its whole sequence, on the original K/V
        // and on the K/V as the cache stores them (host quantization reference).
        let stored = |x: &[f32]| -> Vec<f32> {
            match kind.quant_bits() {
                None => x.to_vec(),
                Some(b) => x.chunks(d).flat_map(|r| dequantize_row_ref(&quantize_row_ref(r, b))).collect(),
            }
        };
        let (ks, vs) = (stored(&k), stored(&v));
        let mut want_orig = Vec::new();
        let mut want_stored = Vec::new();
        for (sq, (&s, &l)) in starts.iter().zip(&lens).enumerate() {
            for h in 0..hq {
                let qrow = &q_last[(sq * hq) * d..][..hq * d];
                // Re-index: the query row lives in q_last; keys in k/v at s..s+l.
                let mut qfull = vec![0f32; (s + l) * hq * d];
                qfull[(s + l - 1) * hq * d..].copy_from_slice(qrow);
                want_orig.extend(reference::attend(&qfull, &k, &v, s + l - 1, h, hq, hkv, d, s..s + l));
                want_stored.extend(reference::attend(&qfull, &ks, &vs, s + l - 1, h, hq, hkv, d, s..s + l));
            }
        }
        let err_stored = max_abs(&got, &want_stored);
        let err_orig = max_abs(&got, &want_orig);
        println!("decode {kind:?}: max abs err vs stored K/V {err_stored:e}, vs original K/V {err_orig:e}");
        assert!(err_stored < 2e-6, "decode {kind:?}: {err_stored:e} vs the K/V the cache holds");
        let tol_orig = match kind {
            KvCacheKind::F32 | KvCacheKind::F16 => 2e-6, // inputs are f16-exact: nothing is lost
            KvCacheKind::Int8 => 5e-3,
            KvCacheKind::Int4 => 8e-2,
        };
        assert!(err_orig < tol_orig, "decode {kind:?}: {err_orig:e} vs the original K/V (tolerance {tol_orig:e})");

        if matches!(kind, KvCacheKind::F32 | KvCacheKind::F16) {
            // Float caches: decode == prefill's last row.
            let up = |x: &[f32], h| GpuTensor::from_f32(&client, x, &[t, h, d], elem).unwrap();
            let pre = attention_prefill(&client, &up(&q, hq), &up(&k, hkv), &up(&v, hkv), &lens, None).unwrap().to_f32(&client).unwrap();
            assert_kernels_built();
            let last: Vec<f64> = starts.iter().zip(&lens).flat_map(|(&s, &l)| pre[(s + l - 1) * hq * d..][..hq * d].iter().map(|&x| x as f64).collect::<Vec<_>>()).collect();
            let e = max_abs(&got, &last);
            println!("decode {kind:?} vs prefill last row: max abs diff {e:e}");
            assert!(e < 1e-6, "decode {kind:?} differs from prefill's last row by {e:e}");
        }
        if kind == KvCacheKind::F32 {
            // The documented layout: row_index(block, layer, head, kv, slot) holds that vector.
            let data = cache.data.to_f32(&client).unwrap();
            assert_kernels_built();
            let (sq, pos, head) = (1usize, 100usize, 1usize);
            let tok = starts[sq] + pos;
            let block = tables[sq][pos / BLOCK_LEN] as usize;
            for (kv, src) in [(0usize, &k), (1, &v)] {
                let row = layout.row_index(block, 1, head, kv, pos % BLOCK_LEN);
                assert_eq!(&data[row * d..][..d], &src[(tok * hkv + head) * d..][..d]);
            }
        }
    }
    // Invalid tables and slots are errors.
    let layout = KvCacheLayout::new(1, 1, 64, KvCacheKind::Int8).unwrap();
    let mut cache = KvCache::new(&client, layout, 2).unwrap();
    assert!(BlockTables::new(&client, &cache, &[vec![0, 2]], &[100]).is_err()); // block 2 >= 2
    assert!(BlockTables::new(&client, &cache, &[vec![0]], &[65]).is_err()); // needs 2 blocks
    let x = GpuTensor::from_f32(&client, &[0.5; 2 * 64], &[2, 1, 64], Elem::F32).unwrap();
    assert!(kv_append(&client, &mut cache, 0, &x, &x, &[3, 3]).is_err()); // duplicate slot
    assert!(kv_append(&client, &mut cache, 0, &x, &x, &[3, 128]).is_err()); // outside
    assert!(kv_append(&client, &mut cache, 1, &x, &x, &[3, 4]).is_err()); // layer
}
