//! GPTQ-style error feedback after AWQ (`--gptq`, awq-reference §4 for the clipping it follows).
//!
//! AWQ picks per-channel scales and per-group clipping, then rounds every weight to its nearest
//! code. GPTQ (Frantar et al. 2022) rounds the input columns of a linear one at a time and pushes
//! each column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian
//! `H = Σ_t x_t x_tᵀ` of the layer's calibration inputs, so that the *output* error `‖X ΔWᵀ‖²`
//! shrinks, not the weight error. Here it runs after scaling and clipping, on the scaled inputs
//! the scaled weights will see:
//!
//! ```text
//! params  (scale, zero) of every (row, group) from the clipped weights, fixed up front ("static
//!         groups"): the groups stay contiguous, no g_idx, so AutoAWQ-GEMM loads unchanged
//! H      += λ·mean(diag H)·I                  (damping, λ = --gptq-damp; dead channels get 1)
//! π       input columns by descending diag H  ("act order", GPTQ's desc_act)
//! U       upper Cholesky factor of (H_ππ)⁻¹   (H permuted by π; H_ππ⁻¹ = UᵀU)
//! for i in 0..K:                              (each output row independently; w in π order)
//!     q_i = code(w_i) with the params of column π(i)'s group
//!     e = (w_i - deq(q_i)) / U[i,i];   w_j -= e · U[i,j]  for j > i
//! ```
//!
//! Act order rounds the channels with the most input energy first, while the rest can still
//! absorb their error; with static groups it needs no `g_idx` (the codes go back to their own
//! columns). Measured on SmolLM2 g64 (BENCHMARKS.md): it lowers perplexity against the input order.
//!
//! Everything is f64 on the host (the factorizations blocked, their bulk as f64 GEMMs). Rows are independent and every sum has a fixed order, so the
//! codes do not depend on the thread count. The same Hessian serves q/k/v and gate/up (one shared
//! input). Per linear the calibration loss `Σ_n Δw_n H Δw_nᵀ` of the GPTQ codes is compared with
//! that of plain rounding under the same parameters, and the better codes are kept: the pass can
//! only lower the loss it is judged by.

use crate::error::{Error, Result};
use crate::model::arch::{self, Linear, LinearKind};
use crate::model::config::ModelConfig;
use crate::quant::hessian::{dot, input_of, Hessian, LayerHessians, INPUT_READERS};
use crate::quant::int4::{quantize_value, QuantizedLinear};
use crate::tensor::HostTensor;
use burn::tensor::backend::Backend;
use half::f16;
use rayon::prelude::*;
use serde::Serialize;

/// Default dampening, as a fraction of the mean diagonal of `H` (GPTQ's `percdamp`).
pub const DEFAULT_DAMP: f64 = 0.01;

/// Output rows rounded together: they share every row of `U` while it is in L1.
const ROW_TILE: usize = 16;

/// Block size of the factorizations below: the diagonal blocks are factored row by row, the rest
/// is matrix products (f64 GEMM), which keep the cores busy where the row-by-row form (one pass
/// over the whole remaining matrix per column) was bound by memory. For a 4864-wide Hessian
/// (Qwen2.5-0.5B's down_proj input) on 2 cores: 28.7 s row by row, 3.5 s in blocks of 256 (4.9 s
/// with 128, 4.2 s with 512).
const NB: usize = 256;

/// `C[m×n] = β·C + α·A·B` in f64 with explicit row / column strides (matrixmultiply's GEMM: each
/// output's sum runs over k in a fixed order, whatever the threads it splits the output across).
///
/// # Safety
/// The pointers must be valid for the strided extents, and `C` must not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(m: usize, k: usize, n: usize, alpha: f64, a: *const f64, rsa: usize, csa: usize, b: *const f64, rsb: usize, csb: usize, beta: f64, c: *mut f64, rsc: usize, csc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    matrixmultiply::dgemm(m, k, n, alpha, a, rsa as isize, csa as isize, b, rsb as isize, csb as isize, beta, c, rsc as isize, csc as isize);
}

/// In place lower Cholesky factor of a symmetric positive-definite `[n, n]` row-major matrix,
/// blocked (right-looking, blocks of `nb`): factor the diagonal block, solve the panel below it,
/// subtract the panel's outer product from the rows below (GEMM). Only the lower triangle is read;
/// the strict upper triangle is left holding partial sums and means nothing.
fn cholesky_lower(a: &mut [f64], n: usize, nb: usize) -> std::result::Result<(), usize> {
    let diag: Vec<f64> = (0..n).map(|j| a[j * n + j]).collect();
    for kb in (0..n).step_by(nb) {
        let e = (kb + nb).min(n);
        // 1. the diagonal block, row by row (its rows already carry every earlier block's update).
        for j in kb..e {
            let (head, tail) = a.split_at_mut((j + 1) * n);
            let rj = &mut head[j * n..(j + 1) * n];
            // A pivot that cancels to (almost) nothing of its diagonal: numerically not positive
            // definite (e.g. fewer tokens than channels and no damping).
            let d = rj[j] - dot(&rj[kb..j], &rj[kb..j]);
            if !(d > 1e-12 * diag[j].abs()) || !d.is_finite() {
                return Err(j);
            }
            let ljj = d.sqrt();
            rj[j] = ljj;
            let rj: &[f64] = rj;
            for ri in tail.chunks_mut(n).take(e - j - 1) {
                ri[j] = (ri[j] - dot(&ri[kb..j], &rj[kb..j])) / ljj;
            }
        }
        if e == n {
            break;
        }
        // 2. the panel below: L21 = A21 · L11⁻ᵀ, rows independent.
        let (head, tail) = a.split_at_mut(e * n);
        let l11: &[f64] = head;
        tail.par_chunks_mut(n).for_each(|ri| {
            for j in kb..e {
                let rj = &l11[j * n..(j + 1) * n];
                ri[j] = (ri[j] - dot(&ri[kb..j], &rj[kb..j])) / rj[j];
            }
        });
        // 3. the rows below: A22 -= L21 · L21ᵀ, lower part, one GEMM per block of rows.
        let base = a.as_mut_ptr();
        for r0 in (e..n).step_by(nb) {
            let r1 = (r0 + nb).min(n);
            // SAFETY: A = rows r0..r1, columns kb..e; B = L21ᵀ (rows e..r1, columns kb..e, read
            // transposed); C = rows r0..r1, columns e..r1: C's columns are all >= e, A's and B's
            // all < e, so no element is both read and written; everything lies inside `a`.
            unsafe {
                gemm(r1 - r0, e - kb, r1 - e, -1.0, base.add(r0 * n + kb), n, 1, base.add(e * n + kb), 1, n, 1.0, base.add(r0 * n + e), n, 1);
            }
        }
    }
    Ok(())
}

/// The inverse of a lower-triangular `[n, n]` row-major `m` with a positive diagonal (lower,
/// row-major), block row by block row: `X_IJ = M_II⁻¹ (δ_IJ - Σ_{J<=K<I} M_IK X_KJ)`, the sums as
/// GEMMs, `M_II⁻¹` applied by forward substitution along whole rows.
fn lower_inverse(m: &[f64], n: usize, nb: usize) -> Vec<f64> {
    let mut x = vec![0f64; n * n];
    for i0 in (0..n).step_by(nb) {
        let i1 = (i0 + nb).min(n);
        let (done, rows) = x.split_at_mut(i0 * n);
        let rows = &mut rows[..(i1 - i0) * n];
        for j0 in (0..i0).step_by(nb) {
            let j1 = (j0 + nb).min(i0);
            // SAFETY: A = m rows i0..i1, columns j0..i0; B = x rows j0..i0 (finished), columns
            // j0..j1; C = x rows i0..i1 (a separate slice), columns j0..j1.
            unsafe {
                gemm(i1 - i0, i0 - j0, j1 - j0, -1.0, m.as_ptr().add(i0 * n + j0), n, 1, done.as_ptr().add(j0 * n + j0), n, 1, 0.0, rows.as_mut_ptr().add(j0), n, 1);
            }
        }
        for r in i0..i1 {
            rows[(r - i0) * n + r] = 1.0;
        }
        for r in i0..i1 {
            let (prev, cur) = rows.split_at_mut((r - i0) * n);
            let cur = &mut cur[..i1];
            for p in i0..r {
                let mv = m[r * n + p];
                for (c, &v) in cur.iter_mut().zip(&prev[(p - i0) * n..(p - i0) * n + i1]) {
                    *c -= mv * v;
                }
            }
            let d = m[r * n + r];
            for c in cur.iter_mut() {
                *c /= d;
            }
        }
    }
    x
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), `[n, n]` row-major, without forming
/// `H⁻¹`: with `J` the reversal permutation and `JHJ = MMᵀ` (lower `M`), `H = RRᵀ` for the upper
/// `R = JMJ`, so `H⁻¹ = R⁻ᵀR⁻¹` and `U = R⁻¹ = J M⁻¹ J`. One Cholesky and one triangular inverse.
/// `Err(i)`: `H` is not positive definite (pivot `i` of the reversed matrix).
pub fn inverse_cholesky_upper(h: &[f64], n: usize) -> std::result::Result<Vec<f64>, usize> {
    inverse_cholesky_upper_blocked(h, n, NB)
}

fn inverse_cholesky_upper_blocked(h: &[f64], n: usize, nb: usize) -> std::result::Result<Vec<f64>, usize> {
    let mut m: Vec<f64> = (0..n * n).map(|idx| h[(n - 1 - idx / n) * n + (n - 1 - idx % n)]).collect();
    cholesky_lower(&mut m, n, nb)?;
    let x = lower_inverse(&m, n, nb);
    // U[i][j] = M⁻¹[n-1-i][n-1-j].
    Ok((0..n * n).map(|idx| {
        let (i, j) = (idx / n, idx % n);
        if j < i { 0.0 } else { x[(n - 1 - i) * n + (n - 1 - j)] }
    }).collect())
}

/// The damped Hessian's `U` (module comment), shared by the linears that read the same input.
pub struct Feedback {
    pub k: usize,
    /// `[K, K]` upper triangular.
    u: Vec<f64>,
    /// Channels that never saw a non-zero input (their `H` diagonal was 0).
    pub dead: usize,
    /// Rounding order: position `i` rounds input column `perm[i]` (`u` is of `H` permuted so).
    perm: Vec<usize>,
}

impl Feedback {
    /// `what` names the input in errors.
    pub fn new(what: &str, h: &Hessian, damp: f64) -> Result<Self> {
        let k = h.k;
        let mut a = h.h.clone();
        let mut dead = 0;
        for i in 0..k {
            if a[i * k + i] == 0.0 {
                a[i * k + i] = 1.0;
                dead += 1;
            }
        }
        let mean = (0..k).map(|i| a[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            a[i * k + i] += damp * mean;
        }
        let perm = act_order(&a, k);
        let a: Vec<f64> = (0..k * k).map(|idx| a[perm[idx / k] * k + perm[idx % k]]).collect();
        let u = inverse_cholesky_upper(&a, k).map_err(|i| {
            Error::input(what, format!("the damped Hessian of its calibration inputs is not positive definite (pivot {i}); raise --gptq-damp ({damp})"))
        })?;
        Ok(Feedback { k, u, dead, perm })
    }
}

/// GPTQ's "act order" (`desc_act`): the input columns by descending `H` diagonal (ties by index),
/// so the channels with the most input energy are rounded first, while every other column is
/// still free to absorb their error. The groups stay static (their parameters were fixed from the
/// contiguous columns), so the order changes only the codes, never the format.
fn act_order(h: &[f64], k: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|&x, &y| h[y * k + y].total_cmp(&h[x * k + x]).then(x.cmp(&y)));
    perm
}

/// What the pass did to one linear (the report's `gptq` entries).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GptqResult {
    pub linear: String,
    /// `Σ_n Δw_n H Δw_nᵀ / (tokens · N)` of plain rounding under the same (scale, zero): the mean
    /// squared output error on the calibration tokens.
    pub loss_rtn: f64,
    /// The same for the GPTQ codes.
    pub loss_gptq: f64,
    /// Whether the GPTQ codes were kept (they were not when plain rounding had the lower loss).
    pub kept: bool,
    pub seconds: f64,
}

/// Quantize a `[N, K]` weight `w` with error feedback. `base` is `w` quantized without it (from
/// the clipped weights, or with the searched (scale, zero)): its scales and zero points are kept,
/// only the codes change, and they aim at `w`, so the feedback also makes up for the clipping.
/// `loss` maps a dequantized weight to its calibration loss against `w` (the [`GptqResult`]
/// losses).
pub fn quantize_with_feedback(name: &str, w: &HostTensor, base: QuantizedLinear, fb: &Feedback, loss: &dyn Fn(&HostTensor) -> f64) -> Result<(QuantizedLinear, GptqResult)> {
    let start = std::time::Instant::now();
    if [base.n, base.k] != [w.dims2().0, w.dims2().1] {
        return Err(Error::internal(format!("{name}: quantized base [{}, {}] for weight {:?}", base.n, base.k, w.shape)));
    }
    let (p, rtn) = (base.params, base);
    let (n, k) = w.dims2();
    if k != fb.k {
        return Err(Error::internal(format!("{name}: weight has {k} inputs, its Hessian {}", fb.k)));
    }
    let (g, groups, max_q) = (p.group, k / p.group, p.max_q());
    let mut q = vec![0u8; n * k];
    q.par_chunks_mut(ROW_TILE * k).enumerate().for_each(|(tile, qt)| {
        let r0 = tile * ROW_TILE;
        let rows = qt.len() / k;
        let wr = &w.data[r0 * k..(r0 + rows) * k];
        // The tile's rows in f64, columns in rounding order, updated as columns are rounded.
        let mut wt: Vec<f64> = (0..rows * k).map(|idx| wr[idx / k * k + fb.perm[idx % k]] as f64).collect();
        let mut err = [0f64; ROW_TILE];
        for i in 0..k {
            let ui = &fb.u[i * k..(i + 1) * k];
            let col = fb.perm[i];
            for r in 0..rows {
                let gi = col / g;
                let (s, z) = (rtn.scales[(r0 + r) * groups + gi], rtn.zeros[(r0 + r) * groups + gi]);
                let x = wt[r * k + i];
                let c = quantize_value(x as f32, s.to_f32(), z, max_q);
                qt[r * k + col] = c;
                err[r] = (x - deq(c, s, z)) / ui[i];
            }
            for r in 0..rows {
                let e = err[r];
                for (wv, &uv) in wt[r * k + i + 1..(r + 1) * k].iter_mut().zip(&ui[i + 1..]) {
                    *wv -= e * uv;
                }
            }
        }
    });
    let gq = QuantizedLinear { q, ..rtn.clone() };
    let (loss_rtn, loss_gptq) = (loss(&rtn.dequantize()), loss(&gq.dequantize()));
    let kept = loss_gptq <= loss_rtn;
    let r = GptqResult { linear: name.rsplit('.').next().unwrap_or(name).to_string(), loss_rtn, loss_gptq, kept, seconds: start.elapsed().as_secs_f64() };
    Ok((if kept { gq } else { rtn }, r))
}

/// The feedback factors of one decoder layer's four linear inputs.
pub struct LayerFeedback {
    /// q/k/v, o, gate/up, down inputs.
    inputs: Vec<Feedback>,
}

impl LayerFeedback {
    /// From the layer's input Hessians; `c` and `layer` name an input in errors.
    pub fn new<B: Backend>(c: &ModelConfig, layer: usize, hs: &LayerHessians<B>, damp: f64) -> Result<Self> {
        let inputs = INPUT_READERS
            .into_iter()
            .map(|k| Feedback::new(&format!("{} input", arch::linear_module(c.arch, layer, k)), hs.of(k), damp))
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerFeedback { inputs })
    }

    /// Quantize linear `k` of a layer with error feedback: `target` its scaled weight (and bias),
    /// `base` the same quantized without feedback (whose scales and zeros are kept).
    pub fn quantize<B: Backend>(&self, name: &str, k: LinearKind, target: &Linear, base: QuantizedLinear, hs: &LayerHessians<B>) -> Result<(QuantizedLinear, GptqResult)> {
        let f = &self.inputs[input_of(k)];
        quantize_with_feedback(name, &target.w, base, f, &|dq: &HostTensor| hs.loss(k, &target.w, dq))
    }
}

#[inline]
fn deq(c: u8, s: f16, z: u8) -> f64 {
    // The stored value is (q - z)·s in f32 (what every kernel dequantizes).
    ((c as f32 - z as f32) * s.to_f32()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::int4::{group_params, QuantParams};
    use crate::quant::hessian::test_values as rnd;

    impl Hessian {
        /// `Σ_n Δw_n H Δw_nᵀ` for weight errors `dw` (`[N, K]`): the squared output error summed over
        /// the calibration tokens and outputs. Rows in parallel, summed in row order.
        pub fn loss(&self, dw: &[f64]) -> f64 {
            let k = self.k;
            let per_row: Vec<f64> = dw
                .par_chunks(k)
                .map(|d| {
                    let mut tot = 0f64;
                    for (i, &di) in d.iter().enumerate() {
                        if di != 0.0 {
                            tot += di * dot(&self.h[i * k..(i + 1) * k], d);
                        }
                    }
                    tot
                })
                .collect();
            per_row.iter().sum()
        }
    }

    /// The mean calibration loss of a dequantized weight against `w`.
    fn mean_loss<'a>(h: &'a Hessian, w: &'a HostTensor) -> impl Fn(&HostTensor) -> f64 + 'a {
        move |dq: &HostTensor| {
            let dw: Vec<f64> = w.data.iter().zip(&dq.data).map(|(&a, &b)| a as f64 - b as f64).collect();
            h.loss(&dw) / (h.tokens * w.dims2().0) as f64
        }
    }

    /// Group parameters a weight is stored with, `[N * K/g]`.
    fn static_params(w: &HostTensor, p: QuantParams) -> Vec<(f16, u8)> {
        w.data.chunks(p.group).map(|v| group_params(v, p.max_q())).collect()
    }

    /// Inputs with correlated channels (a random mixing of fewer sources) and a few outliers.
    fn inputs(t: usize, k: usize, seed: u64) -> Vec<f64> {
        let src = k / 2;
        let mix = rnd(seed, src * k);
        let z = rnd(seed + 1, t * src);
        let mut x = vec![0f64; t * k];
        for ti in 0..t {
            for c in 0..k {
                let v: f64 = (0..src).map(|j| z[ti * src + j] * mix[j * k + c]).sum();
                x[ti * k + c] = v * if c % 7 == 0 { 4.0 } else { 1.0 };
            }
        }
        x
    }

    #[test]
    fn inverse_cholesky_upper_factors_the_inverse() {
        let k = 37;
        let x = inputs(200, k, 3);
        let mut h = Hessian::of_rows(&x, k).h;
        for i in 0..k {
            h[i * k + i] += 0.1;
        }
        // One block (the production size), and blocks of 8 (ragged last block): the GEMM paths.
        for nb in [super::NB, 8] {
        let u = super::inverse_cholesky_upper_blocked(&h, k, nb).unwrap();
        // U is upper triangular with a positive diagonal, and (UᵀU)·H = I.
        for i in 0..k {
            assert!(u[i * k + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|m| (0..k).map(|l| u[l * k + i] * u[l * k + m]).sum::<f64>() * h[m * k + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "nb {nb}: (UᵀU H)[{i},{j}] = {v}");
            }
        }
        // Not positive definite: named by its pivot (in the reversed order), no panic; the
        // blocked factor stops at the same pivot as a single block.
        let mut bad = h.clone();
        bad[5 * k + 5] = -1.0;
        assert_eq!(super::inverse_cholesky_upper_blocked(&bad, k, nb).unwrap_err(), k - 1 - 5);
        }
    }

    /// The textbook form (GPTQ paper, eq. 2-3): round column i, spread its error over the columns
    /// not yet rounded with the inverse Hessian restricted to them, then remove column i from that
    /// inverse (Gaussian elimination). Explicit inverse, one row, no Cholesky, columns in the
    /// order given (`params[i]`: column i's (scale, zero)).
    fn reference_row(w: &[f64], h: &[f64], k: usize, params: &[(f16, u8)]) -> Vec<u8> {
        // Invert H by Gauss-Jordan.
        let mut a = h.to_vec();
        let mut inv: Vec<f64> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
        for c in 0..k {
            let p = a[c * k + c];
            for j in 0..k {
                a[c * k + j] /= p;
                inv[c * k + j] /= p;
            }
            for r in 0..k {
                if r != c {
                    let f = a[r * k + c];
                    for j in 0..k {
                        a[r * k + j] -= f * a[c * k + j];
                        inv[r * k + j] -= f * inv[c * k + j];
                    }
                }
            }
        }
        let mut w = w.to_vec();
        let mut out = vec![0u8; k];
        for i in 0..k {
            let (s, z) = params[i];
            let c = quantize_value(w[i] as f32, s.to_f32(), z, 15);
            out[i] = c;
            let e = (w[i] - deq(c, s, z)) / inv[i * k + i];
            for j in i + 1..k {
                w[j] -= e * inv[j * k + i];
            }
            // inv <- inv - inv[:, i] inv[i, :] / inv[i, i]
            let d = inv[i * k + i];
            let col: Vec<f64> = (0..k).map(|r| inv[r * k + i]).collect();
            let row: Vec<f64> = inv[i * k..(i + 1) * k].to_vec();
            for r in 0..k {
                for j in 0..k {
                    inv[r * k + j] -= col[r] * row[j] / d;
                }
            }
        }
        out
    }

    fn problem(n: usize, k: usize, t: usize) -> (HostTensor, Hessian) {
        let w: Vec<f32> = rnd(11, n * k).iter().map(|&v| (v * 0.05) as f32).collect();
        let x = inputs(t, k, 5);
        (HostTensor { shape: vec![n, k], data: w }, Hessian::of_rows(&x, k))
    }

    #[test]
    fn codes_match_the_textbook_algorithm_and_lower_the_output_error() {
        let (n, k, g) = (24, 64, 16);
        let p = QuantParams::new(4, g).unwrap();
        let (w, h) = problem(n, k, 300);
        let fb = Feedback::new("test", &h, DEFAULT_DAMP).unwrap();
        let (ql, r) = quantize_with_feedback("m.test", &w, QuantizedLinear::quantize("m.test", &w, None, p).unwrap(), &fb, &mean_loss(&h, &w)).unwrap();
        // Reference on the same damped Hessian.
        let mut hd = h.h.clone();
        let mean = (0..k).map(|i| hd[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            hd[i * k + i] += DEFAULT_DAMP * mean;
        }
        // The textbook algorithm on the problem permuted into act order, codes put back.
        let perm = act_order(&hd, k);
        assert!(perm != (0..k).collect::<Vec<_>>(), "the test's inputs (outlier channels) must reorder");
        let hp: Vec<f64> = (0..k * k).map(|idx| hd[perm[idx / k] * k + perm[idx % k]]).collect();
        let params = static_params(&w, p);
        let groups = k / g;
        let (mut differ, mut differ_input_order) = (0, 0);
        for row in 0..n {
            let wr: Vec<f64> = w.data[row * k..(row + 1) * k].iter().map(|&v| v as f64).collect();
            let col_params = |c: usize| params[row * groups + c / g];
            let got = &ql.q[row * k..(row + 1) * k];
            let wp: Vec<f64> = perm.iter().map(|&c| wr[c]).collect();
            let pp: Vec<(f16, u8)> = perm.iter().map(|&c| col_params(c)).collect();
            let mut want = vec![0u8; k];
            for (i, c) in reference_row(&wp, &hp, k, &pp).into_iter().enumerate() {
                want[perm[i]] = c;
            }
            differ += want.iter().zip(got).filter(|(a, b)| a != b).count();
            let input_order = reference_row(&wr, &hd, k, &(0..k).map(col_params).collect::<Vec<_>>());
            differ_input_order += input_order.iter().zip(got).filter(|(a, b)| a != b).count();
        }
        // Both are f64; a code may differ only where a value sits on a rounding boundary. The
        // order matters: GPTQ in the input order gives other codes.
        assert!(differ <= 1, "{differ} codes differ from the textbook GPTQ in act order");
        assert!(differ_input_order > n, "only {differ_input_order} codes differ from the input order");
        // Static groups: the stored parameters are plain rounding's.
        let rtn = QuantizedLinear::quantize("m.test", &w, None, p).unwrap();
        assert_eq!((&ql.scales, &ql.zeros), (&rtn.scales, &rtn.zeros));
        assert!(r.kept && r.loss_gptq < 0.8 * r.loss_rtn, "GPTQ {} vs RTN {}", r.loss_gptq, r.loss_rtn);
    }

    #[test]
    fn uncorrelated_inputs_give_plain_rounding_and_threads_do_not_change_codes() {
        // H diagonal: U is diagonal, no error is passed on, the codes are RTN's.
        let (n, k) = (8, 32);
        let p = QuantParams::new(4, 16).unwrap();
        let (w, _) = problem(n, k, 10);
        let mut h = Hessian { k, h: vec![0.0; k * k], tokens: 10 };
        for i in 0..k {
            h.h[i * k + i] = 1.0 + i as f64;
        }
        let fb = Feedback::new("t", &h, DEFAULT_DAMP).unwrap();
        let (ql, _) = quantize_with_feedback("t", &w, QuantizedLinear::quantize("t", &w, None, p).unwrap(), &fb, &mean_loss(&h, &w)).unwrap();
        assert_eq!(ql.q, QuantizedLinear::quantize("t", &w, None, p).unwrap().q);

        let (w, h) = problem(40, 96, 200);
        let fb = Feedback::new("t", &h, DEFAULT_DAMP).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let fb = Feedback::new("t", &h, DEFAULT_DAMP).unwrap();
                (quantize_with_feedback("t", &w, QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, 32).unwrap()).unwrap(), &fb, &mean_loss(&h, &w)).unwrap().0, fb.u)
            })
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.0, b.0);
        assert!(a.1.iter().zip(&b.1).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(fb.u.iter().zip(&a.1).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn dead_channels_and_singular_inputs_are_handled() {
        // Channel 3 never sees input: its diagonal becomes 1, the rest still factors.
        let k = 16;
        let mut x = inputs(50, k, 9);
        for r in x.chunks_mut(k) {
            r[3] = 0.0;
        }
        let h = Hessian::of_rows(&x, k);
        let fb = Feedback::new("t", &h, DEFAULT_DAMP).unwrap();
        assert_eq!(fb.dead, 1);
        // Rank-deficient (2 tokens, 16 channels) still factors once damped.
        let h = Hessian::of_rows(&inputs(2, k, 1), k);
        assert!(Feedback::new("t", &h, DEFAULT_DAMP).is_ok());
        // Undamped and rank-deficient: a clear error naming the input.
        let e = Feedback::new("model.layers.0 down_proj input", &h, 0.0).err().unwrap().to_string();
        assert!(e.contains("down_proj input") && e.contains("--gptq-damp"), "{e}");
    }
}

