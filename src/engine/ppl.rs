//! Perplexity, with the protocol pinned (README "Perplexity protocol"):
//! the text is tokenized once; windows of `seqlen` tokens are taken from the start without overlap
//! (the tail is dropped); each window is an independent sequence (positions from 0, no carried
//! context) and scores its `seqlen - 1` shifted targets with an f32 log-softmax; the negative
//! log-likelihoods are summed in f64 and `PPL = exp(total NLL / scored tokens)`.

use crate::engine::llama::Llama;
use crate::error::{Error, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    pub nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
    pub seqlen: usize,
    pub seconds: f64,
    /// Tokens processed per second (all window tokens, not only scored ones).
    pub tokens_per_second: f64,
}

/// Sum of `-log p(t+1 | ..t)` over the `T-1` targets of one window.
pub fn window_nll<B: Backend>(model: &Llama<B>, window: &[u32]) -> Result<f64> {
    let t = window.len();
    if t < 2 {
        return Err(Error::internal("a perplexity window needs at least 2 tokens"));
    }
    let v = model.config.vocab_size;
    if let Some(&bad) = window.iter().find(|&&id| id as usize >= v) {
        return Err(Error::input("tokens", format!("token id {bad} is outside the model vocabulary ({v})")));
    }
    let logits = model.forward(window, 1, t).reshape([t, v]);
    let logits = logits.slice([0..t - 1, 0..v]);
    let logp = log_softmax(logits, 1);
    let targets: Vec<i64> = window[1..].iter().map(|&x| x as i64).collect();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [t - 1, 1]), &model.device);
    let picked = logp.gather(1, idx);
    let vals = crate::engine::llama::download(picked);
    crate::engine::gpu::check()?;
    if let Some(p) = vals.iter().position(|x| !x.is_finite()) {
        return Err(Error::check(format!("non-finite log-probability at position {} of a window", p + 1)));
    }
    Ok(-vals.iter().map(|&x| x as f64).sum::<f64>())
}

/// Perplexity over the given windows (each scored independently).
pub fn perplexity<B: Backend>(model: &Llama<B>, windows: &[&[u32]]) -> Result<PplResult> {
    if windows.is_empty() {
        return Err(Error::usage("perplexity needs at least one window (is the text shorter than --seqlen?)"));
    }
    let seqlen = windows[0].len();
    let pb = crate::progress::bar(windows.len() as u64, "eval");
    let start = std::time::Instant::now();
    let mut nll = 0f64;
    let mut scored = 0usize;
    let mut seen = 0usize;
    for w in windows {
        nll += window_nll(model, w)?;
        scored += w.len() - 1;
        seen += w.len();
        pb.inc(1);
        pb.set_message(format!("ppl {:.3}", (nll / scored as f64).exp()));
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    Ok(PplResult {
        ppl: (nll / scored as f64).exp(),
        nll,
        tokens_scored: scored,
        windows: windows.len(),
        seqlen,
        seconds,
        tokens_per_second: seen as f64 / seconds.max(1e-9),
    })
}
