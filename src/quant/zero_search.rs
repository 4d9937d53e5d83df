//! Activation-weighted (scale, zero) search per group (`--zero-search`).
//!
//! Min / max rounding spends the 2^b levels on the group's extremes whatever the inputs; the clip
//! search only shrinks that range symmetrically, on v/o/gate/up/down. Here every (row, group) of
//! all seven linears picks its stored (scale, zero) by what they do to the calibration output,
//! in the spirit of llama.cpp's imatrix-weighted k-quant search (`make_qkx2_quants`):
//!
//! ```text
//! t = the scaled weight group (target), b = the same after clipping (q/k: t), a = diag(H_g)
//! candidates:  (scale, zero) of min / max rounding of b (what plain AWQ stores; codes from b)
//!              and of t; then for the ranges [lo, hi] of b and of t, 21 inverse scales
//!              i = (2^b - 1 + δ) / (hi - lo), δ = -1, -0.9, .., 1:
//!                  L_j = clamp(round(i·(t_j - lo)), 0, 2^b - 1)
//!                  (d, m) = argmin Σ a_j (t_j - d·L_j - m)²        (weighted least squares; m ≤ 0)
//!                  scale = f16(d), zero = clamp(round(-m / scale))  (the stored, integer form)
//!              and each refit once with its codes fixed: scale = f16(Σ a t (q-z) / Σ a (q-z)²)
//! pick:        the lowest diagonal loss Σ a_j e_j² shortlists 4 (plus the min / max one); the
//!              lowest e_gᵀ H_g e_g wins (H_g: the group's block of the input Hessian, i.e. the
//!              squared error of the group's partial dot products over all calibration tokens),
//!              ties to min / max
//! ```
//!
//! With `--zero-point float` the zero is kept as fp16 instead: the min / max candidates are
//! [`group_params_float`]'s, the least-squares `m` is not constrained (`zero = f16(-m / scale)`,
//! which must stay below 1024 in magnitude), the codes are `clamp(round(w / scale + zero))`, and
//! the refit with fixed codes fits scale and zero together (the same weighted least squares).
//!
//! With integer zeros the stored format does not change (integer zeros, f16 scales, contiguous
//! groups), so the AutoAWQ-GEMM and TurboMind outputs load wherever plain AWQ's do. The pipeline keeps the result
//! only where the linear's whole calibration loss (cross-group terms included) is not worse than
//! min / max rounding's. Rows in parallel, every sum in a fixed order: the choice does not depend
//! on the thread count.

use crate::error::{Error, Result};
use crate::quant::hessian::{dot, Hessian};
use crate::quant::int4::{dequantize_value, group_params, group_params_float, quantize_value, quantize_value_float, round_half_even, QuantParams, ZeroPoint};
use crate::tensor::HostTensor;
use half::f16;
use rayon::prelude::*;
use serde::Serialize;

/// Inverse-scale steps per range: δ from -1 to 1 in steps of 0.1 (llama.cpp's rmin, rdelta, nstep).
const STEPS: usize = 20;
/// Candidates scored with the full block `H_g` after the diagonal shortlist.
const SHORTLIST: usize = 4;

/// What the search did to one linear (the report's `zero_search` entries).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ZeroSearchResult {
    pub linear: String,
    /// Calibration loss (mean squared output error per token and output) of min / max rounding.
    pub loss_minmax: f64,
    /// The same with the searched (scale, zero).
    pub loss_search: f64,
    /// Whether the searched parameters were kept (their loss was not higher).
    pub kept: bool,
    /// Fraction of (row, group) whose parameters differ from min / max rounding's.
    pub changed_fraction: f64,
    pub seconds: f64,
}

/// One candidate: its parameters (an integer zero is held exactly in the f16) and whether its
/// codes come from the clipped group (`b`) or the target (`t`).
#[derive(Clone, Copy, PartialEq)]
struct Candidate {
    scale: f16,
    zero: f16,
    from_clipped: bool,
}

/// Integer or float zero points, with the code and dequantization of each.
#[derive(Clone, Copy)]
struct Zeros {
    float: bool,
    max_q: u32,
}

impl Zeros {
    fn minmax(&self, v: &[f32]) -> (f16, f16) {
        if self.float {
            group_params_float(v, self.max_q)
        } else {
            let (s, z) = group_params(v, self.max_q);
            (s, f16::from_f32(z as f32))
        }
    }
    /// The dequantized value of `w` under (scale, zero).
    fn fake(&self, w: f32, scale: f16, zero: f16) -> f32 {
        if self.float {
            let (s, z) = (scale.to_f32(), zero.to_f32());
            (quantize_value_float(w, s, z, self.max_q) as f32 - z) * s
        } else {
            let z = zero.to_f32() as u8;
            dequantize_value(quantize_value(w, scale.to_f32(), z, self.max_q), scale, z)
        }
    }
    /// `code - zero` of `w` under (scale, zero), as the least-squares refit uses it.
    fn centred_code(&self, w: f32, scale: f16, zero: f16) -> f64 {
        let z = zero.to_f32();
        let q = if self.float { quantize_value_float(w, scale.to_f32(), z, self.max_q) } else { quantize_value(w, scale.to_f32(), z as u8, self.max_q) };
        q as f64 - z as f64
    }
    /// The stored zero for a least-squares offset `m` (`t ≈ d·L + m`) and the f16 scale: `None`
    /// when it does not fit (float: |zero| >= 1024, where f16 spacing passes half a code).
    fn zero_of(&self, m: f64, sf: f32) -> Option<f16> {
        let z = -(m as f32) / sf;
        if self.float {
            (z.is_finite() && z.abs() < 1024.0).then(|| f16::from_f32(z))
        } else {
            Some(f16::from_f32((round_half_even(z) + 0.0).clamp(0.0, self.max_q as f32)))
        }
    }
}

/// The searched parameters of a `[N, K]` weight and the values to quantize with them.
pub struct ZeroSearch {
    /// `[N * K/g]` (scale, zero); the zero is an integer unless `--zero-point float`.
    pub params: Vec<(f16, f16)>,
    /// `[N, K]`: each group from the target, or from the clipped weight where min / max rounding
    /// of it won.
    pub source: HostTensor,
    pub changed_fraction: f64,
}

/// Search (scale, zero) for every (row, group) of `target` (`[N, K]`, the scaled weight) given
/// `clipped` (the same after the clip search, or `target` itself) and the Hessian of its inputs.
pub fn search_linear(name: &str, target: &HostTensor, clipped: &HostTensor, h: &Hessian, p: QuantParams) -> Result<ZeroSearch> {
    let (n, k) = target.dims2();
    if clipped.shape != target.shape || h.k != k {
        return Err(Error::internal(format!("{name}: clipped {:?} / Hessian {} for weight {:?}", clipped.shape, h.k, target.shape)));
    }
    p.check_divides(name, k)?;
    let (g, groups) = (p.group, k / p.group);
    let blocks = h.diagonal_blocks(g);
    let zk = Zeros { float: p.zero == ZeroPoint::Float, max_q: p.max_q() };
    let mut params = vec![(f16::ZERO, f16::ZERO); n * groups];
    let mut source = target.clone();
    let changed: usize = params
        .par_chunks_mut(groups)
        .zip(source.data.par_chunks_mut(k))
        .enumerate()
        .map(|(row, (pr, src))| {
            let (tr, br) = (&target.data[row * k..(row + 1) * k], &clipped.data[row * k..(row + 1) * k]);
            let mut changed = 0;
            for gi in 0..groups {
                let cols = gi * g..(gi + 1) * g;
                let c = search_group(&tr[cols.clone()], &br[cols.clone()], &blocks[gi * g * g..(gi + 1) * g * g], zk);
                pr[gi] = (c.scale, c.zero);
                if (c.scale, c.zero) != zk.minmax(&br[cols.clone()]) {
                    changed += 1;
                }
                if c.from_clipped {
                    src[cols].copy_from_slice(&br[gi * g..(gi + 1) * g]);
                }
            }
            changed
        })
        .sum();
    Ok(ZeroSearch { params, source, changed_fraction: changed as f64 / (n * groups).max(1) as f64 })
}

/// Dequantized error `t - (q - z)·s` of a group under one candidate, codes from `src`.
fn errors(t: &[f32], src: &[f32], c: Candidate, zk: Zeros, e: &mut [f64]) {
    for ((e, &tv), &sv) in e.iter_mut().zip(t).zip(src) {
        *e = tv as f64 - zk.fake(sv, c.scale, c.zero) as f64;
    }
}

/// Weighted least squares `t ≈ d·L + m` over a group (weights `a`, codes `L`), with the sums the
/// integer fallback `d = Σ a L t / Σ a L²` needs.
struct LineFit {
    d: f64,
    m: f64,
    slx: f64,
    sll: f64,
}

impl LineFit {
    /// `None` when the codes do not determine a line (all equal, or no weight).
    fn of(a: &[f64], codes: &[f64], t: &[f32]) -> Option<Self> {
        let (mut sw, mut sl, mut sll, mut sx, mut slx) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for j in 0..t.len() {
            let (w, l, x) = (a[j], codes[j], t[j] as f64);
            sw += w;
            sl += w * l;
            sll += w * l * l;
            sx += w * x;
            slx += w * l * x;
        }
        let det = sw * sll - sl * sl;
        (det > 0.0).then(|| LineFit { d: (sw * slx - sl * sx) / det, m: (sll * sx - sl * slx) / det, slx, sll })
    }
}

/// `eᵀ H e` for a `[g, g]` block.
fn quad(hb: &[f64], e: &[f64]) -> f64 {
    let g = e.len();
    (0..g).map(|i| if e[i] == 0.0 { 0.0 } else { e[i] * dot(&hb[i * g..(i + 1) * g], e) }).sum()
}

/// The search of one group (module comment): `t` target, `b` clipped, `hb` the `[g, g]` block.
fn search_group(t: &[f32], b: &[f32], hb: &[f64], zk: Zeros) -> Candidate {
    let (g, max_q) = (t.len(), zk.max_q);
    let a: Vec<f64> = (0..g).map(|j| hb[j * g + j]).collect();
    let (s0, z0) = zk.minmax(b);
    let base = Candidate { scale: s0, zero: z0, from_clipped: true };
    if a.iter().all(|&v| v == 0.0) {
        return base; // no calibration signal reaches this group
    }
    let mut cands = vec![base];
    let push = |c: Candidate, cands: &mut Vec<Candidate>| {
        let s = c.scale.to_f32();
        if s.is_finite() && s > 0.0 && !cands.iter().any(|o| o.scale == c.scale && o.zero == c.zero && !o.from_clipped) {
            cands.push(c);
        }
    };
    let (s1, z1) = zk.minmax(t);
    push(Candidate { scale: s1, zero: z1, from_clipped: false }, &mut cands);
    let mq = max_q as f32;
    let mut codes = vec![0f64; g];
    let same = t == b;
    for range_of in [b, t].into_iter().take(if same { 1 } else { 2 }) {
        let lo = range_of.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = range_of.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !(hi > lo) {
            continue;
        }
        for step in 0..=STEPS {
            let iscale = (mq + (-1.0 + 0.1 * step as f32)) / (hi - lo);
            for (l, &v) in codes.iter_mut().zip(t) {
                *l = round_half_even(iscale * (v - lo)).clamp(0.0, mq) as f64;
            }
            let Some(fit) = LineFit::of(&a, &codes, t) else { continue };
            let (mut d, mut m) = (fit.d, fit.m);
            if m > 0.0 && !zk.float {
                // An integer zero point cannot be negative: fit the scale alone with m = 0.
                m = 0.0;
                d = fit.slx / fit.sll;
            }
            if !(d > 0.0) {
                continue;
            }
            let scale = f16::from_f64(d);
            let sf = scale.to_f32();
            if !(sf.is_finite() && sf > 0.0) {
                continue;
            }
            let Some(zero) = zk.zero_of(m, sf) else { continue };
            let c = Candidate { scale, zero, from_clipped: false };
            push(c, &mut cands);
            if zk.float {
                // Refit scale and zero together with the codes of (scale, zero) fixed.
                let fixed: Vec<f64> = t.iter().map(|&v| quantize_value_float(v, sf, zero.to_f32(), max_q) as f64).collect();
                if let Some(LineFit { d, m, .. }) = LineFit::of(&a, &fixed, t) {
                    let scale = f16::from_f64(d);
                    let sf = scale.to_f32();
                    if d > 0.0 && sf.is_finite() && sf > 0.0 {
                        if let Some(zero) = zk.zero_of(m, sf) {
                            push(Candidate { scale, zero, from_clipped: false }, &mut cands);
                        }
                    }
                }
            } else {
                // Refit the scale with the codes of (scale, zero) fixed.
                let (mut num, mut den) = (0f64, 0f64);
                for j in 0..g {
                    let qz = zk.centred_code(t[j], scale, zero);
                    num += a[j] * t[j] as f64 * qz;
                    den += a[j] * qz * qz;
                }
                if den > 0.0 && num > 0.0 {
                    push(Candidate { scale: f16::from_f64(num / den), zero, from_clipped: false }, &mut cands);
                }
            }
        }
    }
    // Shortlist by the diagonal loss, then the full block decides.
    let mut e = vec![0f64; g];
    let src = |c: &Candidate| if c.from_clipped { b } else { t };
    let mut diag: Vec<(f64, usize)> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            errors(t, src(c), *c, zk, &mut e);
            (e.iter().zip(&a).map(|(e, a)| a * e * e).sum::<f64>(), i)
        })
        .collect();
    diag.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut best = (f64::INFINITY, base);
    for i in std::iter::once(0).chain(diag.iter().map(|d| d.1).filter(|&i| i != 0).take(SHORTLIST)) {
        let c = cands[i];
        errors(t, src(&c), c, zk, &mut e);
        let l = quad(hb, &e);
        if l < best.0 {
            best = (l, c);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::hessian::test_values as rnd;
    use crate::quant::int4::QuantizedLinear;

    /// Inputs whose channels differ in magnitude by up to 30x, with some correlation.
    fn inputs(t: usize, k: usize, seed: u64) -> Vec<f64> {
        let z = rnd(seed, t * k);
        let mut x = vec![0f64; t * k];
        for ti in 0..t {
            for c in 0..k {
                let mag = 1.0 + 29.0 * ((c * 7919) % 13) as f64 / 12.0;
                x[ti * k + c] = mag * (z[ti * k + c] + 0.5 * z[ti * k + (c + 1) % k]);
            }
        }
        x
    }

    /// `Σ_n Δw_n H Δw_nᵀ` in f64, written out (the independent reference loss).
    fn output_error(x: &[f64], k: usize, w: &HostTensor, dq: &HostTensor) -> f64 {
        let n = w.dims2().0;
        let mut tot = 0f64;
        for xt in x.chunks(k) {
            for r in 0..n {
                let o: f64 = (0..k).map(|c| (w.data[r * k + c] as f64 - dq.data[r * k + c] as f64) * xt[c]).sum();
                tot += o * o;
            }
        }
        tot
    }

    #[test]
    fn searched_parameters_lower_the_output_error_and_never_lose_a_group() {
        let (n, k, t) = (16, 128, 400);
        let w = HostTensor { shape: vec![n, k], data: rnd(3, n * k).iter().map(|&v| (0.02 * v * v * v + 0.01 * v) as f32).collect() };
        let x = inputs(t, k, 5);
        let h = Hessian::of_rows(&x, k);
        for (group, zero) in [(32usize, ZeroPoint::Int), (64, ZeroPoint::Int), (64, ZeroPoint::Float)] {
            let p = QuantParams::new(4, group).unwrap().with_zero(zero);
            let zs = search_linear("t", &w, &w, &h, p).unwrap();
            let rtn = QuantizedLinear::quantize("t", &w, None, p).unwrap();
            let got = QuantizedLinear::quantize_with_params("t", &zs.source, None, p, &zs.params).unwrap();
            let (e_rtn, e_zs) = (output_error(&x, k, &w, &rtn.dequantize()), output_error(&x, k, &w, &got.dequantize()));
            assert!(e_zs < 0.85 * e_rtn, "group {group} {zero:?}: search {e_zs} vs min/max {e_rtn}");
            assert!(zs.changed_fraction > 0.3, "{}", zs.changed_fraction);
            // Per group, by the group's own block of H: never worse than min / max.
            let blocks = h.diagonal_blocks(group);
            let (wr, wq, wz) = (&w.data, rtn.dequantize().data, got.dequantize().data);
            for cell in 0..n * k / group {
                let (row, gi) = (cell / (k / group), cell % (k / group));
                let cols = row * k + gi * group..row * k + (gi + 1) * group;
                let e = |dq: &[f32]| -> Vec<f64> { wr[cols.clone()].iter().zip(&dq[cols.clone()]).map(|(a, b)| *a as f64 - *b as f64).collect() };
                let hb = &blocks[gi * group * group..(gi + 1) * group * group];
                assert!(quad(hb, &e(&wz)) <= quad(hb, &e(&wq)) * (1.0 + 1e-12), "cell {cell}");
            }
            // Zero points stay integers in range (or finite fp16 below 1024) and scales finite:
            // the stored format holds.
            assert!(got.zeros.iter().all(|&z| z <= 15) && got.scales.iter().all(|s| s.to_f32() > 0.0 && s.is_finite()));
            assert_eq!(got.float_zeros.is_some(), zero == ZeroPoint::Float);
            if let Some(fz) = &got.float_zeros {
                assert!(fz.iter().all(|z| z.is_finite() && z.to_f32().abs() < 1024.0));
                assert!(fz.iter().any(|z| z.to_f32().fract() != 0.0));
            }
        }
    }

    #[test]
    fn no_signal_keeps_min_max_and_threads_do_not_change_the_choice() {
        let (n, k) = (8, 64);
        let p = QuantParams::new(4, 32).unwrap();
        let w = HostTensor { shape: vec![n, k], data: rnd(9, n * k).iter().map(|&v| v as f32).collect() };
        // Dead inputs: nothing to weigh, the parameters are min / max rounding's.
        let dead = Hessian { k, h: vec![0.0; k * k], tokens: 10 };
        let zs = search_linear("t", &w, &w, &dead, p).unwrap();
        let rtn = QuantizedLinear::quantize("t", &w, None, p).unwrap();
        assert_eq!(zs.params, rtn.scales.iter().copied().zip(rtn.zeros.iter().map(|&z| f16::from_f32(z as f32))).collect::<Vec<_>>());
        assert_eq!(zs.changed_fraction, 0.0);
        // A clipped copy: groups that keep min / max take their codes from it.
        let mut clipped = w.clone();
        clipped.data.iter_mut().for_each(|v| *v = v.clamp(-0.8, 0.8));
        let h = Hessian::of_rows(&inputs(100, k, 1), k);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| search_linear("t", &w, &clipped, &h, p).unwrap())
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.params, b.params);
        assert_eq!(a.source.data, b.source.data);
        for (cell, (&(s, z), src)) in a.params.iter().zip(a.source.data.chunks(32)).enumerate() {
            let from_clipped = src == &clipped.data[cell * 32..(cell + 1) * 32];
            if src != &w.data[cell * 32..(cell + 1) * 32] {
                let (s0, z0) = group_params(src, 15);
                assert!(from_clipped && (s, z) == (s0, f16::from_f32(z0 as f32)), "cell {cell}");
            }
        }
        // A Hessian of the wrong size is an error, not a panic.
        let small = Hessian { k: 32, h: vec![0.0; 32 * 32], tokens: 1 };
        assert!(search_linear("t", &w, &w, &small, p).is_err());
    }
}
