//! AWQ scale search (awq-reference §2): for one input group of a decoder layer, try
//! `s = x_mean^α / (w_mean^(1-α) + 1e-4)` (duo scaling; llm-awq's variant drops the weight term)
//! for α on a grid of `n_grid` points in [0, 1), fake-quantize the consumers as
//! `W' = Q(W·diag(s))·diag(s)⁻¹`, and keep the α whose block output is closest (MSE) to the
//! full-precision output. Every grid point starts from the original weights.

use crate::engine::llama::{download, Attention, LinearB, Mlp, RopeTables};
use crate::model::arch::{Linear, LinearKind, ScaleGroup};
use crate::quant::fold::{normalize_scales, scale_columns};
use crate::quant::int4::{fake_quantize_inplace, QuantParams};
use crate::tensor::HostTensor;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;

/// AWQ's weight saliency term: concatenate the consumers along the output dim, divide every
/// |w| by the max |w| of its (row, group), average over rows. Returns `[K]`.
pub fn w_mean(weights: &[&HostTensor], group: usize) -> Vec<f64> {
    let k = weights[0].dims2().1;
    let mut acc = vec![0f64; k];
    let mut rows = 0usize;
    for w in weights {
        for row in w.data.chunks(k) {
            for (gi, vals) in row.chunks(group).enumerate() {
                let m = vals.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 + 1e-6;
                for (j, &v) in vals.iter().enumerate() {
                    acc[gi * group + j] += v.abs() as f64 / m;
                }
            }
            rows += 1;
        }
    }
    acc.iter().map(|a| a / rows as f64).collect()
}

/// Candidate scales for one α (before normalization): AutoAWQ's formula with its clamps.
pub fn raw_scales(x_mean: &[f64], w_mean: Option<&[f64]>, alpha: f64) -> Vec<f64> {
    x_mean
        .iter()
        .enumerate()
        .map(|(c, &x)| {
            let s = match w_mean {
                Some(w) => x.powf(alpha) / (w[c].powf(1.0 - alpha) + 1e-4),
                None => x.powf(alpha),
            };
            s.max(1e-4)
        })
        .collect()
}

/// `Q(W·diag(s))·diag(s)⁻¹` for a `[N, K]` weight.
pub fn scaled_fake_quant(w: &HostTensor, s: &[f64], p: QuantParams) -> HostTensor {
    let k = w.dims2().1;
    let sf: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    let mut data = w.data.clone();
    scale_columns(&mut data, k, &sf);
    fake_quantize_inplace(&mut data, k, p);
    // Dividing by s (not multiplying by 1/s) is what the reference does; keep it exact.
    for row in data.chunks_mut(k) {
        for (v, &f) in row.iter_mut().zip(&sf) {
            *v /= f;
        }
    }
    HostTensor { shape: w.shape.clone(), data }
}

/// The block whose output the loss is measured on (`module2inspect`), with the full-precision
/// weights of every linear that is not being searched.
#[derive(Clone)]
pub enum Inspect<B: Backend> {
    Attention { block: Attention<B>, rope: RopeTables<B>, mask: Tensor<B, 2> },
    Mlp(Mlp<B>),
    Linear(LinearB<B>),
}

impl<B: Backend> Inspect<B> {
    /// The same block with some linears replaced.
    pub fn with(&self, trial: &[(LinearKind, LinearB<B>)]) -> Self {
        let mut b = self.clone();
        for (k, l) in trial {
            match &mut b {
                Inspect::Attention { block, .. } => match k {
                    LinearKind::Q => block.q = l.clone(),
                    LinearKind::K => block.k = l.clone(),
                    LinearKind::V => block.v = l.clone(),
                    LinearKind::O => block.o = l.clone(),
                    _ => {}
                },
                Inspect::Mlp(m) => match k {
                    LinearKind::Gate => m.gate = l.clone(),
                    LinearKind::Up => m.up = l.clone(),
                    LinearKind::Down => m.down = l.clone(),
                    _ => {}
                },
                Inspect::Linear(x) => *x = l.clone(),
            }
        }
        b
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Inspect::Attention { block, rope, mask } => block.forward(x, rope, mask),
            Inspect::Mlp(m) => m.forward(x),
            Inspect::Linear(l) => l.forward(x),
        }
    }
}

/// Sum of squared differences, reduced per row on the device and summed on the host in f64 in a
/// fixed order (deterministic whatever the thread count).
pub fn sq_err_sum<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f64 {
    let rows = download((a - b).powi_scalar(2).sum_dim(2));
    rows.iter().map(|&v| v as f64).sum()
}

/// Outcome of the search for one group.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GroupSearch {
    pub group: String,
    /// Best α (grid point index / n_grid).
    pub alpha: f64,
    /// Output MSE with plain round-to-nearest (s = 1).
    pub loss_rtn: f64,
    /// Output MSE at the best α.
    pub loss_best: f64,
    /// Output MSE for every grid point.
    pub losses: Vec<f64>,
    #[serde(skip)]
    #[serde(default)]
    pub scales: Vec<f64>,
    pub seconds: f64,
}

/// `Σ_chunks XᵀX` (`[K, K]`) of a chunked input: with it, the output MSE of a single linear is a
/// quadratic form in the weight error, `mean((X ΔWᵀ)²) = Σ_n Δw_n (XᵀX) Δw_nᵀ / (T·N)`, which
/// costs `N·K²` per grid point instead of `T·N·K`.
pub fn gram<B: Backend>(x: &[Tensor<B, 3>]) -> Tensor<B, 2> {
    let mut g: Option<Tensor<B, 2>> = None;
    for xc in x {
        let [b, t, k] = xc.dims();
        let m = xc.clone().reshape([b * t, k]);
        let p = m.clone().transpose().matmul(m);
        g = Some(match g {
            Some(acc) => acc + p,
            None => p,
        });
    }
    g.expect("at least one chunk")
}

/// Loss of a single-linear block from the Gram matrix: `Σ_n Δw_n G Δw_nᵀ / (T·N)`.
fn gram_loss<B: Backend>(g: &Tensor<B, 2>, w: &HostTensor, wq: &HostTensor, tokens: usize, dev: &B::Device) -> f64 {
    let (n, k) = w.dims2();
    let dw: Vec<f32> = w.data.iter().zip(&wq.data).map(|(a, b)| a - b).collect();
    let dw: Tensor<B, 2> = crate::engine::llama::upload(dw, [n, k], dev);
    let rows = download((dw.clone().matmul(g.clone()) * dw).sum_dim(1));
    rows.iter().map(|&v| v as f64).sum::<f64>() / (tokens * n) as f64
}

/// Search the scales of one group. `x` holds the group's cached input in chunks of sequences and
/// `x_mean` its per-channel mean |x|. The loss is the MSE between the block's output with the
/// trial weights and with the full-precision weights.
#[allow(clippy::too_many_arguments)]
pub fn search_group<B: Backend>(
    group: ScaleGroup,
    consumers: &[(LinearKind, &Linear)],
    block: &Inspect<B>,
    x: &[Tensor<B, 3>],
    x_mean: &[f64],
    fixed: Option<&[bool]>,
    p: QuantParams,
    duo: bool,
    n_grid: usize,
    dev: &B::Device,
) -> GroupSearch {
    let start = std::time::Instant::now();
    let weights: Vec<&HostTensor> = consumers.iter().map(|(_, l)| &l.w).collect();
    let wm = duo.then(|| w_mean(&weights, p.group));
    let tokens: usize = x.iter().map(|c| c.dims()[0] * c.dims()[1]).sum();
    let loss_of: Box<dyn Fn(&[f64]) -> f64> = match block {
        Inspect::Linear(_) if consumers.len() == 1 => {
            let g = gram(x);
            let w = consumers[0].1.w.clone();
            Box::new(move |s: &[f64]| gram_loss(&g, &w, &scaled_fake_quant(&w, s, p), tokens, dev))
        }
        _ => {
            let org: Vec<Tensor<B, 3>> = x.par_iter().map(|xc| block.forward(xc.clone())).collect();
            let numel: usize = org.iter().map(|o| o.shape().num_elements()).sum();
            Box::new(move |s: &[f64]| {
                let trial: Vec<(LinearKind, LinearB<B>)> = consumers
                    .iter()
                    .map(|(k, l)| {
                        let w = scaled_fake_quant(&l.w, s, p);
                        (*k, LinearB::from_host(&Linear { w, b: l.b.clone() }, dev))
                    })
                    .collect();
                let b = block.with(&trial);
                // Chunks run concurrently (two small matmuls in parallel use the cores better than
                // one split across them: measured 1.3-1.5x on 2 cores); the per-chunk sums are added
                // in chunk order, so the result does not depend on scheduling.
                let parts: Vec<f64> = x.par_iter().zip(org.par_iter()).map(|(xc, oc)| sq_err_sum(b.forward(xc.clone()), oc.clone())).collect();
                let total: f64 = parts.iter().sum();
                total / numel as f64
            })
        }
    };
    let ones = vec![1.0; x_mean.len()];
    let loss_rtn = loss_of(&ones);
    let mut losses = Vec::with_capacity(n_grid);
    let mut best = (f64::INFINITY, 0.0, ones.clone());
    for i in 0..n_grid {
        let alpha = i as f64 / n_grid as f64;
        let mut s = raw_scales(x_mean, wm.as_deref(), alpha);
        normalize_scales(&mut s, fixed);
        let loss = loss_of(&s);
        losses.push(loss);
        // Strictly smaller wins, so ties keep the smallest α (as AutoAWQ does).
        if loss < best.0 {
            best = (loss, alpha, s);
        }
    }
    GroupSearch {
        group: group.name().to_string(),
        alpha: best.1,
        loss_rtn,
        loss_best: best.0,
        losses,
        scales: best.2,
        seconds: start.elapsed().as_secs_f64(),
    }
}
