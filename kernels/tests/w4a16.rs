//! W4A16 GEMV / GEMM / dequantization against the f64 reference (`reference::W4Layer`), which
//! dequantizes `(q - z) * s` from the natural (unpacked) form.
mod common;

use awqc_kernels::reference::W4Layer;
use awqc_kernels::w4a16::{self, repack_turbomind, W4Host};
use awqc_kernels::{Elem, GpuTensor};
use common::*;

/// The kernel form of `l`, through the library's repacking of the on-disk TurboMind form.
fn host(l: &W4Layer) -> W4Host {
    repack_turbomind(&l.turbomind_qweight(), &l.s, &l.z, l.k, l.n, l.g).unwrap()
}

#[test]
fn repack_layout_is_n_major_natural_nibbles() {
    let mut rng = Rng::new(1);
    let l = W4Layer::random(&mut rng, 64, 24, 32);
    let h = host(&l);
    assert_eq!(h.qweight.len(), 24 * 8);
    for c in 0..24 {
        for k in 0..64 {
            let q = (h.qweight[c * 8 + k / 8] >> (4 * (k % 8))) & 0xF;
            assert_eq!(q as u8, l.q[k * 24 + c], "q[{k}][{c}]");
        }
        for g in 0..2 {
            let s = l.s[g * 24 + c].to_f64();
            let z = l.z[g * 24 + c].to_f64();
            assert_eq!(h.sz[(c * 2 + g) * 2], s as f32);
            assert_eq!(h.sz[(c * 2 + g) * 2 + 1], (-z * s) as f32);
        }
    }
    // Shape errors are reported, not panics.
    assert!(repack_turbomind(&h.qweight, &l.s, &l.z, 64, 24, 48).is_err()); // g not a multiple of 32
    assert!(repack_turbomind(&h.qweight, &l.s, &l.z, 64, 20, 32).is_err()); // N % 8 != 0
    assert!(repack_turbomind(&h.qweight[1..], &l.s, &l.z, 64, 24, 32).is_err()); // short qweight
    assert!(repack_turbomind(&h.qweight, &l.s, &l.z, 96, 24, 32).is_err()); // K mismatch
}

/// One test for all GPU cases: the client start-up is paid once.
#[test]
fn w4a16_matches_f64_reference() {
    let client = client();
    let mut rng = Rng::new(42);
    // (K, N, g): N = 8*37 is not a multiple of the 64-wide GEMM tile nor the 8-column GEMV tile... and
    // K = 3 groups is not a multiple of 128.
    let cases = [(96, 296, 32), (192, 296, 64), (384, 296, 128), (256, 40, 128)];
    let ms = [1usize, 2, 3, 5, 17, 33, 70];
    let mut worst = [0f64; 2];
    for &(k, n, g) in &cases {
        let layer = W4Layer::random(&mut rng, k, n, g);
        let w = host(&layer).upload(&client).unwrap();

        // Dense dequantization equals (q - z) * s.
        let dense = w4a16::w4a16_dequantize(&client, &w, Elem::F32).unwrap().to_f32(&client).unwrap();
        assert_kernels_built();
        let dref: Vec<f64> = layer.dense();
        let dmax = max_abs(&dense, &dref);
        assert!(dmax < 1e-6, "dequantize k={k} n={n} g={g}: max abs err {dmax:e}");

        for &m in &ms {
            for elem in [Elem::F32, Elem::F16] {
                let mut x = rng.vec(m * k, -1.0, 1.0);
                if elem == Elem::F16 {
                    x = round_f16(&x); // the reference sees exactly what the kernel sees
                }
                let yref = layer.matmul(&x, m);
                let xt = GpuTensor::from_f32(&client, &x, &[m, k], elem).unwrap();
                let tol = if elem == Elem::F32 { 1e-5 } else { 1e-3 };
                for (path, y) in [
                    ("gemv", w4a16::w4a16_gemv(&client, &xt, &w).unwrap()),
                    ("gemm", w4a16::w4a16_gemm(&client, &xt, &w).unwrap()),
                    ("auto", w4a16::w4a16_matmul(&client, &xt, &w).unwrap()),
                ] {
                    assert_eq!(y.shape, vec![m, n]);
                    assert_eq!(y.elem, elem);
                    let got = y.to_f32(&client).unwrap();
                    assert_kernels_built();
                    let err = rel_l2(&got, &yref);
                    let wi = (elem == Elem::F16) as usize;
                    worst[wi] = worst[wi].max(err);
                    assert!(err < tol, "{path} {elem:?} m={m} k={k} n={n} g={g}: rel L2 err {err:e} >= {tol:e}");
                }
            }
        }
    }
    println!("w4a16 worst rel L2 error: f32 {:e}, f16 {:e}", worst[0], worst[1]);

    // Rank-3 input [B, T, K] and shape errors.
    let layer = W4Layer::random(&mut rng, 64, 16, 32);
    let w = host(&layer).upload(&client).unwrap();
    let x = rng.vec(2 * 3 * 64, -1.0, 1.0);
    let xt = GpuTensor::from_f32(&client, &x, &[2, 3, 64], Elem::F32).unwrap();
    let y = w4a16::w4a16_matmul(&client, &xt, &w).unwrap();
    assert_eq!(y.shape, vec![2, 3, 16]);
    assert!(rel_l2(&y.to_f32(&client).unwrap(), &layer.matmul(&x, 6)) < 1e-5);
    let bad = GpuTensor::from_f32(&client, &x[..6 * 32], &[6, 32], Elem::F32).unwrap();
    assert!(w4a16::w4a16_matmul(&client, &bad, &w).is_err());
    assert_kernels_built();
}
