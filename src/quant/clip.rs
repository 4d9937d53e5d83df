//! Weight clipping search (auto_clip, awq-reference §4): for every (output row, group) pick the
//! clipping threshold `m = absmax·(1 - i/n_grid)`, i < max_shrink·n_grid, that minimises the error
//! of the group's partial dot products with the (scaled) calibration inputs after fake
//! quantization. q/k projections are not clipped (the QK product makes the error measure poor).

use crate::engine::llama::{download, upload};
use crate::error::Result;
use crate::quant::chunks::Chunks;
use crate::quant::int4::{fake_quantize_group, QuantParams};
use crate::tensor::HostTensor;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;

pub const N_GRID: usize = 20;
pub const MAX_SHRINK: f64 = 0.5;
pub const N_SAMPLE_TOKENS: usize = 512;
/// Output channels processed per device batch (bounds the `[G, T', N_b]` buffers).
const ROW_BATCH: usize = 1024;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClipResult {
    pub linear: String,
    /// Mean of chosen threshold / group absmax over all (row, group).
    pub mean_ratio: f64,
    /// Fraction of (row, group) that were clipped at all.
    pub clipped_fraction: f64,
    pub seconds: f64,
}

/// Every `step`-th token of a chunked `[T, K]` input (tokens in sequence order across chunks),
/// `step = max(1, T / 512)` (AutoAWQ's subsampling). Returns the `[T', K]` rows and T'. Only one
/// chunk is on the host at a time.
pub fn subsample_tokens<B: Backend>(x: &Chunks<B>) -> Result<(Vec<f32>, usize)> {
    let (t, k) = (x.tokens(), x.width());
    let step = (t / N_SAMPLE_TOKENS).max(1);
    let mut out = Vec::with_capacity(t.div_ceil(step) * k);
    let mut start = 0usize; // first token of the current chunk
    for i in 0..x.len() {
        let [b, s, _] = x.dims(i);
        let n = b * s;
        // The first sampled token at or after `start`.
        let first = start.div_ceil(step) * step;
        if first < start + n {
            let c = download(x.get(i)?);
            for r in (first..start + n).step_by(step) {
                out.extend_from_slice(&c[(r - start) * k..(r - start + 1) * k]);
            }
        }
        start += n;
    }
    let rows = out.len() / k.max(1);
    Ok((out, rows))
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

/// Search and apply clipping to `w` (`[N, K]`, modified in place) given subsampled inputs `xs`
/// (`[T', K]`, row-major). Returns the report and the chosen thresholds `[N * K/g]`.
pub fn clip_linear<B: Backend>(
    name: &'static str,
    w: &mut HostTensor,
    xs: &[f32],
    t: usize,
    p: QuantParams,
    dev: &B::Device,
) -> (ClipResult, Vec<f32>) {
    let start = std::time::Instant::now();
    let (n, k) = w.dims2();
    let g = p.group;
    let groups = k / g;
    // Inputs regrouped to [G, T', g] so that one batched matmul gives all partial dot products.
    let mut xg = vec![0f32; groups * t * g];
    for ti in 0..t {
        for gi in 0..groups {
            xg[(gi * t + ti) * g..(gi * t + ti + 1) * g].copy_from_slice(&xs[ti * k + gi * g..ti * k + (gi + 1) * g]);
        }
    }
    let xg: Tensor<B, 3> = upload(xg, [groups, t, g], dev);
    let absmax: Vec<f32> = w.data.chunks(g).map(|v| v.iter().fold(0f32, |m, x| m.max(x.abs()))).collect(); // [N*G]
    let mut best_max = absmax.clone();
    let steps = (MAX_SHRINK * N_GRID as f64) as usize;
    for r0 in (0..n).step_by(ROW_BATCH) {
        let r1 = (r0 + ROW_BATCH).min(n);
        let nb = r1 - r0;
        let rows = &w.data[r0 * k..r1 * k];
        // W rows [r0, r1) as per-group right operands [G, g, nb], each (row, group) clamped to
        // ±absmax·shrink and fake-quantized on the way (shrink None: the original weights).
        // Groups fill their own [nb, g] slab in parallel (the values do not depend on the split);
        // the [g, nb] operand is a transposed view of it, which the CPU gemm reads as it is.
        let to_groups = |shrink: Option<f32>| -> Tensor<B, 3> {
            let mut buf = vec![0f32; groups * nb * g];
            buf.par_chunks_mut(nb * g).enumerate().for_each(|(gi, slab)| {
                for (ri, (row, vals)) in rows.chunks(k).zip(slab.chunks_mut(g)).enumerate() {
                    vals.copy_from_slice(&row[gi * g..(gi + 1) * g]);
                    if let Some(shrink) = shrink {
                        let m = absmax[(r0 + ri) * groups + gi] * shrink;
                        for v in vals.iter_mut() {
                            *v = v.clamp(-m, m);
                        }
                        fake_quantize_group(vals, p.max_q());
                    }
                }
            });
            upload::<B, 3>(buf, [groups, nb, g], dev).swap_dims(1, 2)
        };
        let org = xg.clone().matmul(to_groups(None)); // [G, T', nb]
        let mut min_err = vec![f64::INFINITY; nb * groups];
        for i in 0..steps {
            let shrink = 1.0 - i as f32 / N_GRID as f32;
            let out = xg.clone().matmul(to_groups(Some(shrink)));
            // err[gi, ri] = mean over tokens of the squared partial-sum error.
            let err = download((out - org.clone()).powi_scalar(2).sum_dim(1)); // [G, 1, nb]
            for gi in 0..groups {
                for ri in 0..nb {
                    let e = err[gi * nb + ri] as f64 / t as f64;
                    let idx = ri * groups + gi;
                    if e < min_err[idx] {
                        min_err[idx] = e;
                        best_max[(r0 + ri) * groups + gi] = absmax[(r0 + ri) * groups + gi] * shrink;
                    }
                }
            }
        }
    }
    // Apply: clamp each (row, group) to its best threshold.
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
        seconds: start.elapsed().as_secs_f64(),
    };
    (r, best_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = crate::engine::device::CpuBackend;

    #[test]
    fn subsampling_across_chunks_picks_every_step_th_token_of_the_whole_input() {
        let dev = Default::default();
        let k = 3;
        // 1100 tokens in uneven chunks: step = 1100 / 512 = 2, so tokens 0, 2, ..., 1098.
        for sizes in [vec![1100], vec![1, 2, 3, 600, 494], vec![7; 157].into_iter().chain([1]).collect::<Vec<_>>()] {
            let t: usize = sizes.iter().sum();
            let all: Vec<f32> = (0..t * k).map(|v| v as f32).collect();
            let mut at = 0;
            let chunks = sizes.iter().map(|&n| {
                let c = upload(all[at * k..(at + n) * k].to_vec(), [1, n, k], &dev);
                at += n;
                c
            });
            let x = Chunks::<B>::resident(chunks.collect(), &dev);
            let (got, rows) = subsample_tokens(&x).unwrap();
            let step = (t / N_SAMPLE_TOKENS).max(1);
            let want: Vec<f32> = (0..t).step_by(step).flat_map(|r| all[r * k..(r + 1) * k].to_vec()).collect();
            assert_eq!(rows, want.len() / k, "chunk sizes {:?}", &sizes[..sizes.len().min(4)]);
            assert_eq!(got, want);
        }
    }
}
