//! Weight clipping search (auto_clip, awq-reference §4): for every (output row, group) pick the
//! clipping threshold `m = absmax·(1 - i/n_grid)`, i < max_shrink·n_grid, that minimises the error
//! of the group's partial dot products with the (scaled) calibration inputs after fake
//! quantization. q/k projections are not clipped (the QK product makes the error measure poor).

use crate::engine::llama::{download, upload};
use crate::quant::hessian::{row_losses, Hessian};
use crate::quant::int4::{fake_quantize_group, QuantParams};
use crate::tensor::HostTensor;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;

pub const N_GRID: usize = 20;
pub const MAX_SHRINK: f64 = 0.5;
/// Output channels processed per device batch (bounds the `[G, N_b, g]` buffers).
const ROW_BATCH: usize = 1024;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClipResult {
    pub linear: String,
    /// Mean of chosen threshold / group absmax over all (row, group).
    pub mean_ratio: f64,
    /// Fraction of (row, group) that were clipped at all.
    pub clipped_fraction: f64,
    /// Fraction of rows whose searched thresholds were dropped because, with the cross-group terms
    /// counted, they raised the row's calibration output error above plain rounding's.
    #[serde(default)]
    pub rows_reverted: f64,
    /// Calibration output MSE (per token and output) of the fake-quantized linear without and
    /// with the chosen clipping, from the inputs' Gram matrix.
    #[serde(default)]
    pub loss_rtn: f64,
    #[serde(default)]
    pub loss_clip: f64,
    pub seconds: f64,
}

/// Clamp each (row, group) of `w` (`[N, K]`) to `[-m, m]` with its threshold `m` from `max_val`
/// (`[N * K/g]`).
pub fn apply_clip(w: &mut HostTensor, max_val: &[f32], group: usize) {
    for (vals, &m) in w.data.chunks_mut(group).zip(max_val) {
        for v in vals {
            *v = v.clamp(-m, m);
        }
    }
}

/// Search and apply clipping to `w` (`[N, K]`, modified in place) given its (scaled) inputs' Gram
/// matrix (`h` on the host in f64, `h_dev` the same on the device). Returns the report and the
/// chosen thresholds `[N * K/g]`.
///
/// 1. Per (row, group), AutoAWQ's loss for a threshold `m` is the mean over tokens of the squared
///    error of the group's partial dot product, `Σ_t (x_t,g · e)² / T = eᵀ H_g e / T` with
///    `e = w_g - fq(clamp(w_g, ±m))` and `H_g` the group's diagonal block of `H`. AutoAWQ
///    evaluates it on a subsample of about 512 tokens; the Gram block counts every calibration
///    token at `g²` per candidate instead of `512·g`. A sample misses the few tokens with massive
///    activations (Qwen2.5's attention sinks, |x| ~ 1000 from layer 2 on) that dominate the loss.
/// 2. The per-group losses leave out the cross-group terms `e_gᵀ H_gh e_h`. Rounding errors of
///    different groups are nearly independent and those terms cancel; clipping shrinks the large
///    weights of every group the same way, and on a token whose activations are large in many
///    channels the errors add up. So each row keeps its thresholds only if they lower its whole
///    error `eᵀ H e` below rounding without clipping; otherwise the row is not clipped at all.
pub fn clip_linear<B: Backend>(
    name: &'static str,
    w: &mut HostTensor,
    h: &Hessian,
    h_dev: &Tensor<B, 2>,
    p: QuantParams,
    dev: &B::Device,
) -> (ClipResult, Vec<f32>) {
    let start = std::time::Instant::now();
    let (n, k) = w.dims2();
    let g = p.group;
    let groups = k / g;
    let tokens = h.tokens.max(1);
    let blocks: Tensor<B, 3> = upload(h.diagonal_blocks(g).iter().map(|&v| v as f32).collect(), [groups, g, g], dev);
    let absmax: Vec<f32> = w.data.chunks(g).map(|v| v.iter().fold(0f32, |m, x| m.max(x.abs()))).collect(); // [N*G]
    let mut best_max = absmax.clone();
    let steps = (MAX_SHRINK * N_GRID as f64) as usize;
    for r0 in (0..n).step_by(ROW_BATCH) {
        let r1 = (r0 + ROW_BATCH).min(n);
        let nb = r1 - r0;
        let rows = &w.data[r0 * k..r1 * k];
        // The weight error of rows [r0, r1) per group, [G, nb, g]: each (row, group) clamped to
        // ±absmax·shrink and fake-quantized, minus the original. Groups fill their own [nb, g]
        // slab in parallel (the values do not depend on the split).
        let errors = |shrink: f32| -> Tensor<B, 3> {
            let mut buf = vec![0f32; groups * nb * g];
            buf.par_chunks_mut(nb * g).enumerate().for_each(|(gi, slab)| {
                for (ri, (row, vals)) in rows.chunks(k).zip(slab.chunks_mut(g)).enumerate() {
                    let orig = &row[gi * g..(gi + 1) * g];
                    vals.copy_from_slice(orig);
                    let m = absmax[(r0 + ri) * groups + gi] * shrink;
                    for v in vals.iter_mut() {
                        *v = v.clamp(-m, m);
                    }
                    fake_quantize_group(vals, p.max_q(), p.zero);
                    for (v, o) in vals.iter_mut().zip(orig) {
                        *v -= o;
                    }
                }
            });
            upload::<B, 3>(buf, [groups, nb, g], dev)
        };
        let mut min_err = vec![f64::INFINITY; nb * groups];
        for i in 0..steps {
            let shrink = 1.0 - i as f32 / N_GRID as f32;
            let e = errors(shrink);
            // err[gi, ri] = e H_gi eᵀ for row ri's group gi.
            let err = download((e.clone().matmul(blocks.clone()) * e).sum_dim(2)); // [G, nb, 1]
            for gi in 0..groups {
                for ri in 0..nb {
                    let e = err[gi * nb + ri] as f64;
                    let idx = ri * groups + gi;
                    if e < min_err[idx] {
                        min_err[idx] = e;
                        best_max[(r0 + ri) * groups + gi] = absmax[(r0 + ri) * groups + gi] * shrink;
                    }
                }
            }
        }
    }
    // Whole-row errors with the chosen thresholds and without clipping.
    let row_errors = |max_val: &[f32]| -> Vec<f64> {
        let mut e = w.clone();
        apply_clip(&mut e, max_val, g);
        e.data.par_chunks_mut(g).for_each(|vals| fake_quantize_group(vals, p.max_q(), p.zero));
        for (q, o) in e.data.iter_mut().zip(&w.data) {
            *q -= o;
        }
        row_losses(h_dev, e.data, n, k, dev)
    };
    let (loss_clip, loss_rtn) = (row_errors(&best_max), row_errors(&absmax));
    let mut reverted = 0usize;
    let mut kept = 0f64;
    for (r, (&lc, &lr)) in loss_clip.iter().zip(&loss_rtn).enumerate() {
        if lc < lr {
            kept += lc;
        } else {
            best_max[r * groups..(r + 1) * groups].copy_from_slice(&absmax[r * groups..(r + 1) * groups]);
            reverted += 1;
            kept += lr;
        }
    }
    apply_clip(w, &best_max, g);
    let mut ratio_sum = 0f64;
    let mut clipped = 0usize;
    for (&m, &a) in best_max.iter().zip(&absmax) {
        ratio_sum += if a > 0.0 { (m / a) as f64 } else { 1.0 };
        if m < a {
            clipped += 1;
        }
    }
    let cells = (n * groups).max(1);
    let r = ClipResult {
        linear: name.to_string(),
        mean_ratio: ratio_sum / cells as f64,
        clipped_fraction: clipped as f64 / cells as f64,
        rows_reverted: reverted as f64 / n.max(1) as f64,
        loss_rtn: loss_rtn.iter().sum::<f64>() / (tokens * n.max(1)) as f64,
        loss_clip: kept / (tokens * n.max(1)) as f64,
        seconds: start.elapsed().as_secs_f64(),
    };
    (r, best_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::hessian::test_values;
    type B = crate::engine::device::CpuBackend;

    /// Σ_t (x_t · e)² over the token rows `x` (`[T, K]`) for an error `e` on columns `cols`, in f64.
    fn token_loss(x: &[f64], k: usize, cols: std::ops::Range<usize>, e: &[f64]) -> f64 {
        x.chunks(k).map(|r| r[cols.clone()].iter().zip(e).map(|(a, b)| a * b).sum::<f64>().powi(2)).sum()
    }

    /// Weight error of one group clamped to ±m and fake-quantized, in f64.
    fn group_error(w: &[f32], m: f32, max_q: u32) -> Vec<f64> {
        let mut q: Vec<f32> = w.iter().map(|v| v.clamp(-m, m)).collect();
        fake_quantize_group(&mut q, max_q, crate::quant::int4::ZeroPoint::Int);
        q.iter().zip(w).map(|(a, b)| (*a - *b) as f64).collect()
    }

    #[test]
    fn thresholds_minimise_the_token_loss_and_never_raise_a_rows_error() {
        let dev = Default::default();
        let (t, k, n, g) = (96, 64, 24, 16);
        let p = QuantParams::new(4, g).unwrap();
        // Inputs with a sink-like token: massive activations in every channel of token 0.
        let mut x = test_values(7, t * k);
        for v in &mut x[..k] {
            *v *= 300.0;
        }
        let h = Hessian::of_rows(&x, k);
        let h_dev: Tensor<B, 2> = upload(h.h.iter().map(|&v| v as f32).collect(), [k, k], &dev);
        let w0 = HostTensor::new(vec![n, k], test_values(11, n * k).iter().map(|&v| (v * v * v) as f32).collect()).unwrap();
        let mut w = w0.clone();
        let (r, thr) = clip_linear::<B>("test", &mut w, &h, &h_dev, p, &dev);
        let groups = k / g;
        let (mut agree, mut searched) = (0, 0);
        for row in 0..n {
            let wr = &w0.data[row * k..(row + 1) * k];
            let absmax: Vec<f32> = wr.chunks(g).map(|v| v.iter().fold(0f32, |m, x| m.max(x.abs()))).collect();
            let row_loss = |ms: &[f32]| -> f64 {
                let e: Vec<f64> = wr.chunks(g).zip(ms).flat_map(|(v, &m)| group_error(v, m, p.max_q())).collect();
                token_loss(&x, k, 0..k, &e)
            };
            let got = &thr[row * groups..(row + 1) * groups];
            // The clipped weights are the original clamped to the thresholds.
            for (gi, &m) in got.iter().enumerate() {
                assert!(m <= absmax[gi] && m >= absmax[gi] * (1.0 - MAX_SHRINK as f32) - 1e-6);
                for c in gi * g..(gi + 1) * g {
                    assert_eq!(w.data[row * k + c], w0.data[row * k + c].clamp(-m, m));
                }
            }
            // The row's whole error on every token (f64) is never above rounding's (f32 device
            // arithmetic: 1e-4 relative).
            let (lc, lr) = (row_loss(got), row_loss(&absmax));
            assert!(lc <= lr * (1.0 + 1e-4), "row {row}: clipped {lc} > unclipped {lr}");
            if got == absmax.as_slice() {
                continue;
            }
            // Rows that kept their thresholds: each group's is the grid point with the lowest
            // token loss of its partial dot products, computed here token by token in f64.
            for gi in 0..groups {
                let losses: Vec<f64> = (0..(MAX_SHRINK * N_GRID as f64) as usize)
                    .map(|i| {
                        let m = absmax[gi] * (1.0 - i as f32 / N_GRID as f32);
                        token_loss(&x, k, gi * g..(gi + 1) * g, &group_error(&wr[gi * g..(gi + 1) * g], m, p.max_q()))
                    })
                    .collect();
                let best = losses.iter().cloned().fold(f64::INFINITY, f64::min);
                let i_got = ((1.0 - got[gi] / absmax[gi]) * N_GRID as f32).round() as usize;
                searched += 1;
                // Ties within f32 rounding of the device's Gram arithmetic count as agreement.
                if losses[i_got] <= best * (1.0 + 1e-4) {
                    agree += 1;
                }
            }
        }
        assert!(searched > 0, "every row reverted");
        assert_eq!(agree, searched, "{agree} of {searched} groups at the f64 optimum");
        assert!(r.loss_clip <= r.loss_rtn && r.clipped_fraction > 0.0, "{r:?}");
    }
}
