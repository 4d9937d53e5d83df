//! RMSNorm, RoPE (two per-sequence bases, both pair layouts) and SiLU*mul against f64 references.
mod common;

use awqc_kernels::act::silu_mul;
use awqc_kernels::norm::rms_norm;
use awqc_kernels::rope::{inv_freq, rope_inplace, RopeLayout, RopeTable};
use awqc_kernels::{Elem, GpuTensor};
use awqc_kernels::reference;
use common::*;

#[test]
fn norm_rope_silu_match_f64_reference() {
    let client = client();
    let mut rng = Rng::new(7);

    // ---- RMSNorm: rows of 576 (SmolLM2 hidden, not a multiple of the 256 units) and 1000.
    for (rows, h) in [(5usize, 576usize), (3, 1000), (1, 64)] {
        for elem in [Elem::F32, Elem::F16] {
            let mut x = rng.vec(rows * h, -3.0, 3.0);
            let mut w = rng.vec(h, 0.5, 1.5);
            if elem == Elem::F16 {
                x = round_f16(&x);
                w = round_f16(&w);
            }
            let xt = GpuTensor::from_f32(&client, &x, &[rows, h], elem).unwrap();
            let wt = GpuTensor::from_f32(&client, &w, &[h], elem).unwrap();
            let y = rms_norm(&client, &xt, &wt, 1e-5).unwrap().to_f32(&client).unwrap();
            assert_kernels_built();
            let yref = reference::rms_norm(&x, &w, h, 1e-5);
            // Max error relative to each value: f32 ~1e-7 per op; f16 output rounding is 2^-11.
            let tol = if elem == Elem::F32 { 2e-6 } else { 1e-3 };
            let worst = y.iter().zip(&yref).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1e-3)).fold(0.0, f64::max);
            println!("rms_norm {elem:?} rows={rows} h={h}: max rel err {worst:e}");
            assert!(worst < tol, "rms_norm {elem:?} rows={rows} h={h}: max rel err {worst:e}");
        }
    }
    // Mixed types: f16 activations with an f32 weight.
    let x = round_f16(&rng.vec(2 * 96, -1.0, 1.0));
    let w = rng.vec(96, 0.5, 1.5);
    let y = rms_norm(
        &client,
        &GpuTensor::from_f32(&client, &x, &[2, 96], Elem::F16).unwrap(),
        &GpuTensor::from_f32(&client, &w, &[96], Elem::F32).unwrap(),
        1e-6,
    )
    .unwrap();
    assert_eq!(y.elem, Elem::F16);
    let err = rel_l2(&y.to_f32(&client).unwrap(), &reference::rms_norm(&x, &w, 96, 1e-6));
    assert!(err < 1e-3, "rms_norm mixed: {err:e}");

    // ---- RoPE: two sequences with different bases (as dynamic NTK produces), GQA-like shapes,
    // positions up to 10^6 to exercise the exact angle reduction.
    let (h, d) = (3usize, 64usize);
    let seq: Vec<u32> = vec![0, 0, 0, 1, 1, 0, 1];
    let pos: Vec<u32> = vec![0, 1, 4095, 4096, 65_537, 1_000_000, 16_000_000];
    let t = pos.len();
    for (rot, layout, mscale) in [(64, RopeLayout::RotateHalf, 1.0), (64, RopeLayout::Interleaved, 1.0), (32, RopeLayout::RotateHalf, 1.1)] {
        let freqs = vec![inv_freq(10_000.0, rot), inv_freq(100_000.0 * 2.7, rot)];
        let table = RopeTable::new(&client, &freqs).unwrap();
        for elem in [Elem::F32, Elem::F16] {
            let mut x = rng.vec(t * h * d, -2.0, 2.0);
            if elem == Elem::F16 {
                x = round_f16(&x);
            }
            let xt = GpuTensor::from_f32(&client, &x, &[t, h, d], elem).unwrap();
            let pt = GpuTensor::from_u32(&client, &pos, &[t]).unwrap();
            let st = GpuTensor::from_u32(&client, &seq, &[t]).unwrap();
            rope_inplace(&client, &xt, &pt, &st, &table, layout, mscale as f32).unwrap();
            let got = xt.to_f32(&client).unwrap();
            assert_kernels_built();
            let want = reference::rope(&x, &pos, &seq, &freqs, h, d, rot, layout == RopeLayout::Interleaved, mscale);
            let err = max_abs(&got, &want);
            // |x| <= 2: f32 tolerance covers ~1e-6 rad of angle error plus sin/cos rounding;
            // f16 is the output rounding (2^-11 * 2.2 * 2).
            let tol = if elem == Elem::F32 { 1e-5 } else { 2.5e-3 };
            println!("rope {layout:?} rot={rot} {elem:?}: max abs err {err:e}");
            assert!(err < tol, "rope {layout:?} rot={rot} {elem:?}: max abs err {err:e}");
            if rot < d {
                // Elements past the rotary dim are untouched.
                for r in 0..t * h {
                    for j in rot..d {
                        assert_eq!(got[r * d + j], x[r * d + j]);
                    }
                }
            }
        }
    }
    // Sequence ids past the table leave the token unchanged; shape errors are errors.
    let table = RopeTable::new(&client, &[inv_freq(10_000.0, 64)]).unwrap();
    let x = rng.vec(2 * 64, -1.0, 1.0);
    let xt = GpuTensor::from_f32(&client, &x, &[2, 1, 64], Elem::F32).unwrap();
    let pt = GpuTensor::from_u32(&client, &[3, 3], &[2]).unwrap();
    let st = GpuTensor::from_u32(&client, &[0, 5], &[2]).unwrap();
    rope_inplace(&client, &xt, &pt, &st, &table, RopeLayout::RotateHalf, 1.0).unwrap();
    let got = xt.to_f32(&client).unwrap();
    assert_kernels_built();
    assert_eq!(&got[64..], &x[64..]);
    assert_ne!(&got[..64], &x[..64]);
    let short = GpuTensor::from_u32(&client, &[0], &[1]).unwrap();
    assert!(rope_inplace(&client, &xt, &short, &st, &table, RopeLayout::RotateHalf, 1.0).is_err());

    // ---- SiLU(gate) * up, including large |gate|.
    for elem in [Elem::F32, Elem::F16] {
        let n = 3 * 1536 + 7;
        let mut g = rng.vec(n, -12.0, 12.0);
        let mut u = rng.vec(n, -2.0, 2.0);
        g[0] = -100.0;
        g[1] = 100.0;
        if elem == Elem::F16 {
            g = round_f16(&g);
            u = round_f16(&u);
        }
        let out = silu_mul(
            &client,
            &GpuTensor::from_f32(&client, &g, &[n], elem).unwrap(),
            &GpuTensor::from_f32(&client, &u, &[n], elem).unwrap(),
        )
        .unwrap()
        .to_f32(&client)
        .unwrap();
        let want = reference::silu_mul(&g, &u);
        let tol = if elem == Elem::F32 { 1e-6 } else { 1e-3 };
        let worst = out.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max);
        println!("silu_mul {elem:?}: max err {worst:e}");
        assert!(worst < tol, "silu_mul {elem:?}: max err {worst:e}");
    }
    assert_kernels_built();
}
