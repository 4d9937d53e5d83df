//! KV quantization: device == host reference bit for bit, the reference rounds as specified,
//! round-trip error bounds, packing order.
mod common;

use awqc_kernels::kv_quant::{dequantize_row_ref, kv_dequantize, kv_quantize, pack, quantize_row_ref, unpack, KvBits};
use awqc_kernels::{Elem, GpuTensor};
use common::*;

#[test]
fn packing_order_is_natural_low_bits_first() {
    assert_eq!(pack(&[0, 1, 2, 3, 4, 5, 6, 7], KvBits::Int4), vec![0x7654_3210]);
    assert_eq!(pack(&[1, 2, 3, 4, 0xAB, 0, 0, 0xFF], KvBits::Int8), vec![0x0403_0201, 0xFF00_00AB]);
    let q: Vec<u8> = (0..64).map(|i| (i * 7 % 16) as u8).collect();
    assert_eq!(unpack(&pack(&q, KvBits::Int4), KvBits::Int4), q);
}

/// Rows that exercise the edge cases: constant, exact ties, large offset, tiny range, random.
fn test_rows(rng: &mut Rng, rows: usize, d: usize, bits: KvBits) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * d);
    for r in 0..rows {
        let row: Vec<f32> = match r % 6 {
            0 => vec![1.5; d],
            1 => {
                // lo = 0, hi = qmax * 0.25: scale is exactly 0.25 and (k + 0.5) * 0.25 are ties.
                let qmax = bits.qmax() as f32;
                (0..d).map(|i| match i {
                    0 => 0.0,
                    1 => qmax * 0.25,
                    _ => ((i as f32 * 3.0) % qmax + 0.5).min(qmax - 0.5) * 0.25,
                }).collect()
            }
            2 => (0..d).map(|_| 1000.0 + rng.uniform(0.0, 0.01) as f32).collect(),
            3 => (0..d).map(|_| rng.uniform(-1e-3, 1e-3) as f32).collect(),
            _ => (0..d).map(|_| rng.uniform(-4.0, 4.0) as f32 * if rng.below(20) == 0 { 8.0 } else { 1.0 }).collect(),
        };
        x.extend(row);
    }
    x
}

#[test]
fn kv_quant_device_matches_reference() {
    let client = client();
    let mut rng = Rng::new(99);
    for bits in [KvBits::Int8, KvBits::Int4] {
        for d in [64usize, 128] {
            for elem in [Elem::F32, Elem::F16] {
                let rows = 60;
                let mut x = test_rows(&mut rng, rows, d, bits);
                if elem == Elem::F16 {
                    x = round_f16(&x);
                }
                // Host reference, checked against the specification on its own.
                let refs: Vec<_> = x.chunks(d).map(|r| quantize_row_ref(r, bits)).collect();
                let mut ties = 0;
                for (row, qr) in x.chunks(d).zip(&refs) {
                    let (s, z) = (qr.scale.to_f32() as f64, qr.zero.to_f32() as f64);
                    let lo = row.iter().copied().fold(f32::INFINITY, f32::min) as f64;
                    let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let qmax = bits.qmax() as f64;
                    for (&v, &q) in row.iter().zip(&qr.q) {
                        if s == 0.0 {
                            assert_eq!(q, 0);
                            continue;
                        }
                        // q is the nearest level to xz = f32(x - z) within [0, qmax]; ties go to even.
                        let xz = (v - qr.zero.to_f32()) as f64;
                        let t = xz / s;
                        let best = (0..=bits.qmax()).map(|c| ((t - c as f64).abs(), c)).fold((f64::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
                        let dq = (t - q as f64).abs();
                        assert!(dq <= best.0, "q {q} is not nearest to {t}");
                        if (dq - 0.5).abs() == 0.0 && t > 0.0 && t < qmax {
                            ties += 1;
                            assert_eq!(q % 2, 0, "tie {t} rounded to odd {q}");
                        }
                        // Round trip: s/2 inside the representable range [z, z + qmax*s], plus how far
                        // the f16 rounding of the params moved that range's ends past [lo, hi].
                        let deq = q as f64 * s + z;
                        let overshoot = (z - lo).max(hi - (z + qmax * s)).max(0.0);
                        let bound = s / 2.0 + overshoot + 1e-6 * (v as f64).abs().max(s);
                        assert!(overshoot <= (2f64).powi(-11) * (lo.abs() + qmax * s) + qmax * (2f64).powi(-25), "params overshoot {overshoot:e}");
                        assert!((v as f64 - deq).abs() <= bound, "round trip {v} -> {deq}, bound {bound:e}");
                    }
                }
                assert!(ties > 0, "the tie row produced no ties");

                let xt = GpuTensor::from_f32(&client, &x, &[rows, d], elem).unwrap();
                let qd = kv_quantize(&client, &xt, bits).unwrap();
                let words = qd.data.to_u32(&client).unwrap();
                assert_kernels_built();
                let params = qd.params.to_f16(&client).unwrap();
                assert_kernels_built();
                for (r, qr) in refs.iter().enumerate() {
                    assert_eq!(params[2 * r].to_bits(), qr.scale.to_bits(), "{bits:?} d={d} {elem:?} row {r}: scale");
                    assert_eq!(params[2 * r + 1].to_bits(), qr.zero.to_bits(), "{bits:?} d={d} {elem:?} row {r}: zero");
                    let w = bits.row_words(d);
                    assert_eq!(&words[r * w..(r + 1) * w], &pack(&qr.q, bits)[..], "{bits:?} d={d} {elem:?} row {r}: q");
                }
                // Device dequantization == host dequantization, bit for bit (f32 output).
                let deq = kv_dequantize(&client, &qd, Elem::F32).unwrap().to_f32(&client).unwrap();
                assert_kernels_built();
                let want: Vec<f32> = refs.iter().flat_map(dequantize_row_ref).collect();
                assert!(deq.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{bits:?} d={d}: dequantize differs");
            }
        }
    }
    // Bad head_dim for int4.
    let xt = GpuTensor::from_f32(&client, &[0.0; 12], &[1, 12], Elem::F32).unwrap();
    assert!(kv_quantize(&client, &xt, KvBits::Int4).is_err());
}
