//! W4A16 GEMV / GEMM / dequantization against an f64 reference that dequantizes `(q - z) * s`
//! from the natural (unpacked) form.
mod common;

use awqc_kernels::w4a16::{self, repack_turbomind, W4Host};
use awqc_kernels::{Elem, GpuTensor};
use common::*;
use half::f16;

/// A random int4 layer in natural form: q `[K][N]`, scales and integer zeros `[K/g][N]` (f16).
struct Layer {
    k: usize,
    n: usize,
    g: usize,
    q: Vec<u8>,
    s: Vec<f16>,
    z: Vec<f16>,
}

impl Layer {
    fn random(rng: &mut Rng, k: usize, n: usize, g: usize) -> Self {
        let q = (0..k * n).map(|_| rng.below(16) as u8).collect();
        let s = (0..k / g * n).map(|_| f16::from_f64(rng.uniform(0.002, 0.03))).collect();
        let z = (0..k / g * n).map(|_| f16::from_f64(rng.below(16) as f64)).collect();
        Layer { k, n, g, q, s, z }
    }

    /// TurboMind on-disk qweight `[K, N/8]`: nibble i of word j = column 8j + i (written here
    /// independently of the library).
    fn turbomind_qweight(&self) -> Vec<u32> {
        let mut out = vec![0u32; self.k * self.n / 8];
        for k in 0..self.k {
            for c in 0..self.n {
                out[k * self.n / 8 + c / 8] |= (self.q[k * self.n + c] as u32) << (4 * (c % 8));
            }
        }
        out
    }

    fn w(&self, k: usize, c: usize) -> f64 {
        let gi = (k / self.g) * self.n + c;
        (self.q[k * self.n + c] as f64 - self.z[gi].to_f64()) * self.s[gi].to_f64()
    }

    fn host(&self) -> W4Host {
        repack_turbomind(&self.turbomind_qweight(), &self.s, &self.z, self.k, self.n, self.g).unwrap()
    }

    fn reference(&self, x: &[f32], m: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * self.n];
        for r in 0..m {
            for k in 0..self.k {
                let xv = x[r * self.k + k] as f64;
                for c in 0..self.n {
                    y[r * self.n + c] += xv * self.w(k, c);
                }
            }
        }
        y
    }
}

#[test]
fn repack_layout_is_n_major_natural_nibbles() {
    let mut rng = Rng::new(1);
    let l = Layer::random(&mut rng, 64, 24, 32);
    let h = l.host();
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
        let layer = Layer::random(&mut rng, k, n, g);
        let w = layer.host().upload(&client).unwrap();

        // Dense dequantization equals (q - z) * s.
        let dense = w4a16::w4a16_dequantize(&client, &w, Elem::F32).unwrap().to_f32(&client).unwrap();
        assert_kernels_built();
        let dref: Vec<f64> = (0..k * n).map(|i| layer.w(i / n, i % n)).collect();
        let dmax = max_abs(&dense, &dref);
        assert!(dmax < 1e-6, "dequantize k={k} n={n} g={g}: max abs err {dmax:e}");

        for &m in &ms {
            for elem in [Elem::F32, Elem::F16] {
                let mut x = rng.vec(m * k, -1.0, 1.0);
                if elem == Elem::F16 {
                    x = round_f16(&x); // the reference sees exactly what the kernel sees
                }
                let yref = layer.reference(&x, m);
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
    let layer = Layer::random(&mut rng, 64, 16, 32);
    let w = layer.host().upload(&client).unwrap();
    let x = rng.vec(2 * 3 * 64, -1.0, 1.0);
    let xt = GpuTensor::from_f32(&client, &x, &[2, 3, 64], Elem::F32).unwrap();
    let y = w4a16::w4a16_matmul(&client, &xt, &w).unwrap();
    assert_eq!(y.shape, vec![2, 3, 16]);
    assert!(rel_l2(&y.to_f32(&client).unwrap(), &layer.reference(&x, 6)) < 1e-5);
    let bad = GpuTensor::from_f32(&client, &x[..6 * 32], &[6, 32], Elem::F32).unwrap();
    assert!(w4a16::w4a16_matmul(&client, &bad, &w).is_err());
    assert_kernels_built();
}
