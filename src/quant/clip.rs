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

/// A stratified sample of the tokens of a chunked `[T, K]` input (tokens in sequence order across
/// chunks): with `step = max(1, T / 512)` (AutoAWQ's subsampling rate), stratum `i` is tokens
/// `[i·step, (i+1)·step)` and gives token `i·step + u_i`, `u_i = splitmix64(i) mod step`.
///
/// AutoAWQ keeps every `step`-th token instead (`u_i = 0`). Calibration blocks start at multiples
/// of the block length, and a block length that `step` divides puts every block's first token,
/// the attention sink whose activations are outliers, into the sample: 1 kept token in
/// `512 / step` per block instead of 1 in 512, so 1/4 of the sample at 128 x 512 tokens. Here
/// every token is kept with the same probability `1/step`, whatever the block length, and the
/// sample is still deterministic. Returns the `[T', K]` rows and `T' = T / step` (floor); only one
/// chunk is on the host at a time.
pub fn subsample_tokens<B: Backend>(x: &Chunks<B>) -> Result<(Vec<f32>, usize)> {
    let (t, k) = (x.tokens(), x.width());
    let picks = sample_positions(t);
    let mut out = Vec::with_capacity(picks.len() * k);
    let (mut start, mut next) = (0usize, 0usize); // first token of the current chunk; next pick
    for i in 0..x.len() {
        let [b, s, _] = x.dims(i);
        let n = b * s;
        if next < picks.len() && picks[next] < start + n {
            let c = download(x.get(i)?);
            while next < picks.len() && picks[next] < start + n {
                let r = picks[next] - start;
                out.extend_from_slice(&c[r * k..(r + 1) * k]);
                next += 1;
            }
        }
        start += n;
    }
    Ok((out, picks.len()))
}

/// The ascending token positions [`subsample_tokens`] keeps out of `t`.
pub fn sample_positions(t: usize) -> Vec<usize> {
    let step = (t / N_SAMPLE_TOKENS).max(1);
    (0..t / step).map(|i| i * step + (splitmix64(i as u64) % step as u64) as usize).collect()
}

/// The splitmix64 output function: a fixed, well-mixed hash of `i`.
fn splitmix64(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
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
    fn subsampling_across_chunks_takes_one_token_per_stratum_of_the_whole_input() {
        let dev = Default::default();
        let k = 3;
        // 1100 tokens in uneven chunks: step = 1100 / 512 = 2, 550 strata of 2 tokens.
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
            let picks = sample_positions(t);
            assert_eq!(picks.len(), 550);
            assert!(picks.iter().enumerate().all(|(i, &r)| r / 2 == i), "one pick per stratum");
            let want: Vec<f32> = picks.iter().flat_map(|&r| all[r * k..(r + 1) * k].to_vec()).collect();
            assert_eq!(rows, picks.len(), "chunk sizes {:?}", &sizes[..sizes.len().min(4)]);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn block_starts_are_kept_at_their_share_of_the_tokens() {
        // 128 blocks of 512 tokens: step 128, 512 picks. Every-step-th sampling kept each block's
        // first token (128 of 512 picks); a uniform sample keeps about 512/512 = 1 of them.
        let (t, seqlen) = (128 * 512, 512);
        let picks = sample_positions(t);
        assert_eq!(picks.len(), 512);
        let starts = picks.iter().filter(|&&r| r % seqlen == 0).count();
        assert!(starts <= 5, "{starts} block starts among {} picks", picks.len());
        // Offsets within the stratum cover all residues, not a few.
        let offsets: std::collections::BTreeSet<usize> = picks.iter().map(|&r| r % 128).collect();
        assert!(offsets.len() > 100, "only {} distinct offsets of 128", offsets.len());
        // Small inputs keep every token.
        assert_eq!(sample_positions(700), (0..700).collect::<Vec<_>>());
    }
}
