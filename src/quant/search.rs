//! AWQ scale search (awq-reference §2): for one input group of a decoder layer, try
//! `s = x_mean^α / (w_mean^(1-α) + 1e-4)` (duo scaling; llm-awq's variant drops the weight term)
//! for α on a grid of `n_grid` points in [0, 1), fake-quantize the consumers as
//! `W' = Q(W·diag(s))·diag(s)⁻¹`, and keep the α whose block output is closest (MSE) to the
//! full-precision output. Every grid point starts from the original weights.

use crate::engine::llama::{download, Attention, LinearB, Mlp, RopeTables};
use crate::model::arch::{Linear, LinearKind, ScaleGroup};
use crate::error::Result;
use crate::quant::calibrate::map_chunks;
use crate::quant::chunks::Chunks;
use crate::quant::fold::normalize_scales;
use crate::quant::hessian::{gram_loss, Hessian};
use crate::quant::int4::{scaled_fake_quantize_row, QuantParams};
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
    let mut data = vec![0f32; w.data.len()];
    // One pass per row, rows in parallel (each row's arithmetic is independent of the thread
    // count): scale the columns, fake-quantize, divide by s again.
    data.par_chunks_mut(k).zip(w.data.par_chunks(k)).for_each(|(out, row)| scaled_fake_quantize_row(out, row, &sf, p));
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
    /// Best α of the grid (grid point index / n_grid), also when `identity` won over it.
    pub alpha: f64,
    /// Plain rounding (s = 1) had a lower loss than every grid point, so the group is not scaled
    /// (awq mode, [`GroupSearch::or_identity`]).
    #[serde(default)]
    pub identity: bool,
    /// Output MSE with plain round-to-nearest (s = 1).
    pub loss_rtn: f64,
    /// Output MSE at the best α.
    pub loss_best: f64,
    /// Output MSE for every grid point; `None` (null in the report) for a point abandoned part-way
    /// because its partial loss already exceeded the best one, so it could not have been chosen.
    pub losses: Vec<Option<f64>>,
    /// Grid-point evaluations actually done, in units of one full evaluation (at most `n_grid`;
    /// less when points were abandoned early).
    #[serde(default)]
    pub grid_work: f64,
    #[serde(skip)]
    #[serde(default)]
    pub scales: Vec<f64>,
    pub seconds: f64,
}

impl GroupSearch {
    /// The identity as one more candidate (no grid point reaches it exactly): when plain rounding
    /// beat every grid point, the group keeps s = 1, so it is never left worse than rounding by
    /// the search's own loss. AutoAWQ keeps the best grid point whatever it costs.
    pub fn or_identity(mut self) -> Self {
        if self.loss_rtn < self.loss_best {
            self.identity = true;
            self.loss_best = self.loss_rtn;
            self.scales = vec![1.0; self.scales.len()];
        }
        self
    }
}

/// Calibration chunks evaluated together (in parallel) between two pruning checks: the chunks
/// read back at a time. Fixed, not the thread count, so that which points are abandoned does not
/// depend on the machine.
const PRUNE_BATCH: usize = crate::quant::chunks::READ_BATCH;

/// One grid point's evaluation: the full loss, or `None` when it was abandoned, and the fraction
/// of the calibration chunks it ran on.
struct Trial {
    loss: Option<f64>,
    work: f64,
}

/// The order grid points are evaluated in: `first` (a guess at the winner, e.g. the previous
/// layer's α) and then the rest in ascending order. A good first point gives a low bound early, so
/// that the others are abandoned sooner; the order never changes which point wins.
pub fn grid_order(n_grid: usize, first: usize) -> Vec<usize> {
    let first = first.min(n_grid.saturating_sub(1));
    std::iter::once(first).chain((0..n_grid).filter(|&i| i != first)).take(n_grid).collect()
}

/// Search the scales of one group. `x` holds the group's cached input in chunks of sequences and
/// `x_mean` its per-channel mean |x|. The loss is the MSE between the block's output with the
/// trial weights and with the full-precision weights.
///
/// Exact branch and bound: the loss is a sum of non-negative per-chunk terms, added in chunk order,
/// so a grid point whose partial sum already exceeds the best complete loss cannot win and is
/// abandoned. Among complete points the smallest loss wins, ties going to the smallest α (AutoAWQ's
/// strict `<` in grid order), so the chosen α, its loss and its scales are exactly what an
/// exhaustive search in grid order gives, whatever `first` is. `first` is the grid index evaluated
/// first (see [`grid_order`]).
#[allow(clippy::too_many_arguments)]
pub fn search_group<B: Backend>(
    group: ScaleGroup,
    consumers: &[(LinearKind, &Linear)],
    block: &Inspect<B>,
    x: &Chunks<B>,
    x_mean: &[f64],
    fixed: Option<&[bool]>,
    p: QuantParams,
    duo: bool,
    n_grid: usize,
    first: usize,
    dev: &B::Device,
) -> Result<GroupSearch> {
    let start = std::time::Instant::now();
    let weights: Vec<&HostTensor> = consumers.iter().map(|(_, l)| &l.w).collect();
    let wm = duo.then(|| w_mean(&weights, p.group));
    let tokens = x.tokens();
    // `eval(s, bound)`: the loss of scales `s`, abandoned once it provably exceeds `bound`.
    let eval: Box<dyn Fn(&[f64], f64) -> Result<Trial>> = match block {
        // The closed form costs N·K² per point against T·N·K for the direct product: it pays
        // when there are at least as many tokens as input channels (SmolLM2's down_proj, K = 1536,
        // from 2 x 512 tokens on); a 13B down_proj (K = 13824) on a few hundred tokens goes direct.
        Inspect::Linear(_) if consumers.len() == 1 && tokens >= consumers[0].1.w.dims2().1 => {
            // Closed form, one cheap product: nothing to abandon.
            let g = Hessian::of_inputs(x)?.to_device::<B>(dev);
            let w = consumers[0].1.w.clone();
            Box::new(move |s: &[f64], _| Ok(Trial { loss: Some(gram_loss(&g, &w, &scaled_fake_quant(&w, s, p), tokens, dev)), work: 1.0 }))
        }
        _ => {
            // The full-precision block output, under the same memory policy as the inputs.
            let mut org = x.like();
            map_chunks(x, |xc| block.forward(xc), |_, o| org.push(o))?;
            let numel = (0..org.len()).map(|i| org.dims(i).iter().product::<usize>()).sum::<usize>() as f64;
            let n = x.len();
            Box::new(move |s: &[f64], bound: f64| {
                let trial: Vec<(LinearKind, LinearB<B>)> = consumers
                    .iter()
                    .map(|(k, l)| {
                        (*k, LinearB::from_host_owned(scaled_fake_quant(&l.w, s, p), l.b.clone(), dev))
                    })
                    .collect();
                let b = block.with(&trial);
                let mut total = 0f64;
                for b0 in (0..n).step_by(PRUNE_BATCH) {
                    let end = (b0 + PRUNE_BATCH).min(n);
                    let (xs, os) = (x.get_range(b0..end)?, org.get_range(b0..end)?);
                    // The chunks of a batch run concurrently (two small matmuls in parallel use the
                    // cores better than one split across them: measured 1.3-1.5x on 2 cores); their
                    // sums are added in chunk order, so nothing depends on scheduling.
                    let parts: Vec<f64> = xs.into_par_iter().zip(os.into_par_iter()).map(|(xc, oc)| sq_err_sum(b.forward(xc), oc)).collect();
                    for v in parts {
                        total += v;
                    }
                    // Dividing by the same positive count keeps the order: full >= partial > bound.
                    if end < n && total / numel > bound {
                        return Ok(Trial { loss: None, work: end as f64 / n as f64 });
                    }
                }
                Ok(Trial { loss: Some(total / numel), work: 1.0 })
            })
        }
    };
    let ones = vec![1.0; x_mean.len()];
    let loss_rtn = eval(&ones, f64::INFINITY)?.loss.unwrap_or(f64::NAN);
    let mut losses = vec![None; n_grid];
    let mut grid_work = 0.0;
    // (loss, grid index, scales) of the best complete point.
    let mut best: (f64, usize, Vec<f64>) = (f64::INFINITY, 0, ones);
    for i in grid_order(n_grid, first) {
        let mut s = raw_scales(x_mean, wm.as_deref(), i as f64 / n_grid as f64);
        normalize_scales(&mut s, fixed);
        let t = eval(&s, best.0)?;
        grid_work += t.work;
        losses[i] = t.loss;
        if let Some(loss) = t.loss {
            // NaN never wins (as with AutoAWQ's `<`); equal losses go to the smaller α.
            if loss < best.0 || (loss == best.0 && i < best.1) {
                best = (loss, i, s);
            }
        }
    }
    Ok(GroupSearch {
        group: group.name().to_string(),
        alpha: best.1 as f64 / n_grid as f64,
        identity: false,
        loss_rtn,
        loss_best: best.0,
        losses,
        grid_work,
        scales: best.2,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::GroupSearch;

    fn found(loss_rtn: f64, loss_best: f64) -> GroupSearch {
        GroupSearch { group: "mlp_in".into(), alpha: 0.35, identity: false, loss_rtn, loss_best, losses: vec![], grid_work: 20.0, scales: vec![0.5, 2.0, 1.5], seconds: 0.0 }
    }

    #[test]
    fn identity_replaces_a_grid_point_only_when_plain_rounding_is_better() {
        let g = found(1.0, 2.0).or_identity();
        assert!(g.identity);
        assert_eq!((g.scales, g.loss_best, g.alpha), (vec![1.0; 3], 1.0, 0.35));
        // Ties and wins keep the grid point (AutoAWQ's choice).
        for (rtn, best) in [(2.0, 2.0), (3.0, 2.0), (f64::NAN, 2.0)] {
            let g = found(rtn, best).or_identity();
            assert!(!g.identity && g.scales == vec![0.5, 2.0, 1.5] && g.loss_best == best);
        }
    }
}
