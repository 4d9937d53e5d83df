//! Second moments of a linear's calibration inputs: the Gram matrix `H = Σ_t x_t x_tᵀ`
//! (`[K, K]`), with which the calibration output error of a weight error `ΔW` (`[N, K]`) is
//! `Σ_n Δw_n H Δw_nᵀ` without running the layer again. GPTQ's feedback (gptq.rs) factors it; the
//! (scale, zero) search (zero_search.rs) scores candidates with its diagonal blocks.

use crate::engine::llama::{download, upload};
use crate::error::{Error, Result};
use crate::model::arch::LinearKind;
use crate::quant::calibrate::LayerInputs;
use crate::quant::chunks::Chunks;
use crate::tensor::HostTensor;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `Σ_t x_t x_tᵀ` (`[K, K]`, row-major, f64) of a linear's calibration inputs.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub k: usize,
    pub h: Vec<f64>,
    /// Calibration tokens summed over.
    pub tokens: usize,
}

impl Hessian {
    /// Accumulate the Gram matrix of a chunked `[b, s, K]` input: each chunk's `XᵀX` in f32 on the
    /// device (one matmul over the chunk's tokens), the chunks summed in f64 in chunk order, so the
    /// rounding does not grow with the number of calibration chunks. The α search (its
    /// single-linear closed form), GPTQ and the (scale, zero) search all use this one.
    pub fn of_inputs<B: Backend>(x: &Chunks<B>) -> Result<Self> {
        let k = x.width();
        let mut h = vec![0f64; k * k];
        for i in 0..x.len() {
            let c = x.get(i)?;
            let [b, s, _] = c.dims();
            let m = c.reshape([b * s, k]);
            let g = download(m.clone().transpose().matmul(m));
            for (a, v) in h.iter_mut().zip(g) {
                *a += v as f64;
            }
        }
        if x.is_empty() {
            return Err(Error::internal("Hessian of an empty calibration input"));
        }
        Ok(Hessian { k, h, tokens: x.tokens() })
    }

    /// The matrix in f32 on the device, for `gram_loss`.
    pub fn to_device<B: Backend>(&self, dev: &B::Device) -> Tensor<B, 2> {
        upload(self.h.iter().map(|&v| v as f32).collect(), [self.k, self.k], dev)
    }

    /// From host rows `[T, K]` (tests).
    pub fn of_rows(x: &[f64], k: usize) -> Self {
        let t = x.len() / k;
        let mut h = vec![0f64; k * k];
        for r in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += r[i] * r[j];
                }
            }
        }
        Hessian { k, h, tokens: t }
    }

    /// The `g` diagonal blocks `[K/g, g, g]` (group `gi`'s block holds `H[gi·g.., gi·g..]`): the
    /// output error of a group's partial dot products is `e_gᵀ H_g e_g`.
    pub fn diagonal_blocks(&self, g: usize) -> Vec<f64> {
        let k = self.k;
        let mut out = Vec::with_capacity(k * g);
        for gi in 0..k / g {
            for r in gi * g..(gi + 1) * g {
                out.extend_from_slice(&self.h[r * k + gi * g..r * k + (gi + 1) * g]);
            }
        }
        out
    }
}

/// `Σ a_i b_i` with four partial sums in a fixed order (vectorizes; same bits at any width).
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The Hessians of one decoder layer's four linear inputs (q/k/v share one, gate/up another),
/// on the host in f64 and on the device in f32 for the calibration losses.
pub struct LayerHessians<B: Backend> {
    /// q/k/v, o, gate/up, down inputs.
    host: Vec<Hessian>,
    device: Vec<Tensor<B, 2>>,
    dev: B::Device,
}

/// One reader of each of the layer's four inputs, in the order of [`input_of`].
pub(crate) const INPUT_READERS: [LinearKind; 4] = [LinearKind::Q, LinearKind::O, LinearKind::Gate, LinearKind::Down];

/// Which of the layer's four inputs (q/k/v, o, gate/up, down) linear `k` reads.
pub(crate) fn input_of(k: LinearKind) -> usize {
    match k {
        LinearKind::Q | LinearKind::K | LinearKind::V => 0,
        LinearKind::O => 1,
        LinearKind::Gate | LinearKind::Up => 2,
        LinearKind::Down => 3,
    }
}

impl<B: Backend> LayerHessians<B> {
    /// From the layer's cached (scaled) inputs.
    pub fn new(ins: &LayerInputs<B>, dev: &B::Device) -> Result<Self> {
        let host = INPUT_READERS
            .into_iter()
            .map(|k| Hessian::of_inputs(ins.of(k)))
            .collect::<Result<Vec<_>>>()?;
        let device = host.iter().map(|h| h.to_device(dev)).collect();
        Ok(LayerHessians { host, device, dev: dev.clone() })
    }

    /// The Hessian of linear `k`'s input.
    pub fn of(&self, k: LinearKind) -> &Hessian {
        &self.host[input_of(k)]
    }

    /// The same on the device (f32).
    pub fn device_of(&self, k: LinearKind) -> &Tensor<B, 2> {
        &self.device[input_of(k)]
    }

    /// Mean squared output error per token and output of the dequantized weight `dq` against
    /// `w` (both `[N, K]`) on linear `k`'s calibration inputs.
    pub fn loss(&self, k: LinearKind, w: &HostTensor, dq: &HostTensor) -> f64 {
        let i = input_of(k);
        gram_loss(&self.device[i], w, dq, self.host[i].tokens, &self.dev)
    }
}

/// The output MSE of a single linear from its inputs' Gram matrix `H` (device, `[K, K]`):
/// `mean((X ΔWᵀ)²) = Σ_n Δw_n H Δw_nᵀ / (T·N)` for `ΔW = w - wq` (`[N, K]`), which costs `N·K²`
/// instead of `T·N·K`.
pub(crate) fn gram_loss<B: Backend>(h: &Tensor<B, 2>, w: &HostTensor, wq: &HostTensor, tokens: usize, dev: &B::Device) -> f64 {
    let (n, k) = w.dims2();
    let dw: Vec<f32> = w.data.iter().zip(&wq.data).map(|(a, b)| a - b).collect();
    row_losses(h, dw, n, k, dev).iter().sum::<f64>() / (tokens * n) as f64
}

/// `Δw_n H Δw_nᵀ` for every row `n` of the weight error `dw` (`[N, K]`, row-major): each row's
/// summed squared output error over the calibration tokens.
pub(crate) fn row_losses<B: Backend>(h: &Tensor<B, 2>, dw: Vec<f32>, n: usize, k: usize, dev: &B::Device) -> Vec<f64> {
    let dw: Tensor<B, 2> = upload(dw, [n, k], dev);
    download((dw.clone().matmul(h.clone()) * dw).sum_dim(1)).iter().map(|&v| v as f64).collect()
}

/// Deterministic pseudo-random numbers in [-1, 1) (an LCG), for the unit tests of the Hessian's users.
#[cfg(test)]
pub(crate) fn test_values(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}
