//! The full-precision calibration chain: calibration token blocks are embedded and pushed through
//! the decoder one layer at a time; for each layer we capture the input of every linear (one
//! record per shared input: q/k/v share one, gate/up share one). Only the current layer's inputs
//! and the residual stream are held, each as a [`Chunks`] list (in memory, or partly on disk under
//! `--max-memory`).

use crate::engine::llama::{causal_mask, download, upload, DecoderLayer, RopeTables};
use crate::engine::rope::Rope;
use crate::error::{Error, Result};
use crate::model::arch::{GlobalWeights, LayerWeights, LinearKind, ScaleGroup};
use crate::model::config::ModelConfig;
use crate::quant::chunks::{Chunks, SpillPolicy, READ_BATCH};
use crate::quant::stats::ChannelStats;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

/// The captured inputs of one layer, each as chunks of `[chunk_seqs, seqlen, K]`.
pub struct LayerInputs<B: Backend> {
    /// q/k/v input (after the attention norm).
    pub attn_in: Chunks<B>,
    /// o_proj input.
    pub o_in: Chunks<B>,
    /// gate/up input (after the MLP norm).
    pub mlp_in: Chunks<B>,
    /// down_proj input.
    pub down_in: Chunks<B>,
    /// Per-channel statistics of the four inputs above (in that order), gathered while each
    /// chunk was in memory (so a spilled input is not read back just for them).
    pub stats: [ChannelStats; 4],
    /// Largest |activation| of each input above and of the layer output, named: what an fp16
    /// inference engine would have to represent (the f32 chain here cannot overflow).
    pub absmax: Vec<(&'static str, f32)>,
}

impl<B: Backend> LayerInputs<B> {
    /// The cached input of a scale group's consumers.
    pub fn group(&self, g: ScaleGroup) -> &Chunks<B> {
        match g {
            ScaleGroup::AttnIn => &self.attn_in,
            ScaleGroup::AttnOut => &self.o_in,
            ScaleGroup::MlpIn => &self.mlp_in,
            ScaleGroup::MlpOut => &self.down_in,
        }
    }
    pub fn group_mut(&mut self, g: ScaleGroup) -> &mut Chunks<B> {
        match g {
            ScaleGroup::AttnIn => &mut self.attn_in,
            ScaleGroup::AttnOut => &mut self.o_in,
            ScaleGroup::MlpIn => &mut self.mlp_in,
            ScaleGroup::MlpOut => &mut self.down_in,
        }
    }
    /// Statistics of a scale group's input (before any scaling).
    pub fn stats(&self, g: ScaleGroup) -> &ChannelStats {
        match g {
            ScaleGroup::AttnIn => &self.stats[0],
            ScaleGroup::AttnOut => &self.stats[1],
            ScaleGroup::MlpIn => &self.stats[2],
            ScaleGroup::MlpOut => &self.stats[3],
        }
    }
    /// The cached input a given linear reads.
    pub fn of(&self, k: LinearKind) -> &Chunks<B> {
        match k {
            LinearKind::Q | LinearKind::K | LinearKind::V => &self.attn_in,
            LinearKind::O => &self.o_in,
            LinearKind::Gate | LinearKind::Up => &self.mlp_in,
            LinearKind::Down => &self.down_in,
        }
    }
}

/// Per-channel statistics of a chunked input.
pub fn stats_of<B: Backend>(chunks: &Chunks<B>) -> Result<ChannelStats> {
    let mut s = ChannelStats::new(chunks.width());
    for i in 0..chunks.len() {
        s.update(&download(chunks.get(i)?));
    }
    Ok(s)
}

/// Apply `f` to every chunk of `x`, [`READ_BATCH`] chunks at a time (run concurrently: chunks are
/// independent sequences, and each forward is itself parallel), handing the results to `sink` in
/// chunk order. At most one batch of chunks is read back from disk at once, whatever the machine.
pub fn map_chunks<B: Backend, T: Send>(
    x: &Chunks<B>,
    f: impl Fn(Tensor<B, 3>) -> T + Sync,
    mut sink: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let batch = READ_BATCH;
    for b0 in (0..x.len()).step_by(batch) {
        let xs = x.get_range(b0..(b0 + batch).min(x.len()))?;
        let outs: Vec<T> = xs.into_par_iter().map(&f).collect();
        for (j, o) in outs.into_iter().enumerate() {
            sink(b0 + j, o)?;
        }
    }
    Ok(())
}

/// The residual stream of the calibration set moving through the full-precision model (or, with
/// `--quantized-inputs`, through the layers already quantized: [`FpChain::rerun_output`]).
pub struct FpChain<B: Backend> {
    /// Hidden states entering the next layer, chunks of `[chunk_seqs, seqlen, H]`.
    pub x: Chunks<B>,
    /// Hidden states that entered the layer last stepped (its output is `x`), kept until the next
    /// step for the layer's output check.
    pub prev: Option<Chunks<B>>,
    pub rope: RopeTables<B>,
    pub mask: Tensor<B, 2>,
    pub seqlen: usize,
    pub config: ModelConfig,
    pub device: B::Device,
}

impl<B: Backend> FpChain<B> {
    /// Embed `blocks` (each exactly `seqlen` tokens) in chunks of `chunk_seqs` sequences; every
    /// activation list of the job is placed by `spill`.
    pub fn new(c: &ModelConfig, g: &GlobalWeights, blocks: &[Vec<u32>], chunk_seqs: usize, spill: &SpillPolicy, dev: &B::Device) -> Result<Self> {
        let seqlen = blocks.first().map(|b| b.len()).ok_or_else(|| Error::usage("calibration set is empty"))?;
        if blocks.iter().any(|b| b.len() != seqlen) {
            return Err(Error::internal("calibration blocks have different lengths"));
        }
        if let Some(bad) = blocks.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::input("calibration data", format!("token id {bad} is outside the vocabulary ({})", c.vocab_size)));
        }
        let h = c.hidden_size;
        let embed: Tensor<B, 2> = upload(g.embed.data.clone(), [c.vocab_size, h], dev);
        let mut x = Chunks::new(spill, dev);
        for chunk in blocks.chunks(chunk_seqs.max(1)) {
            let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
            let n = chunk.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n * seqlen]), dev);
            x.push(embed.clone().select(0, idx).reshape([n, seqlen, h]))?;
        }
        let rope = RopeTables::new(&Rope::from_config(c), seqlen, 0, seqlen, dev);
        let mask = causal_mask::<B>(c.num_attention_heads / c.num_key_value_heads, seqlen, dev);
        Ok(FpChain { x, prev: None, rope, mask, seqlen, config: c.clone(), device: dev.clone() })
    }

    /// Mean squared difference, per hidden value, between the full-precision output of the layer
    /// last stepped and the output of each layer in `layers` (full-precision weights, e.g.
    /// dequantized) on the same inputs.
    pub fn output_errors(&self, layers: &[&LayerWeights]) -> Result<Vec<f64>> {
        let prev = self.prev.as_ref().ok_or_else(|| Error::internal("output check before any layer was stepped"))?;
        let blocks: Vec<DecoderLayer<B>> = layers.iter().map(|w| DecoderLayer::from_host(w, &self.config, &self.device)).collect();
        let mut sums = vec![0f64; layers.len()];
        for ci in 0..prev.len() {
            let (x, fp) = (prev.get(ci)?, self.x.get(ci)?);
            for (s, b) in sums.iter_mut().zip(&blocks) {
                let d = b.forward(x.clone(), &self.rope, &self.mask) - fp.clone();
                *s += download(d.powi_scalar(2).sum()).first().copied().unwrap_or(f32::NAN) as f64;
            }
        }
        let n = (prev.tokens() * self.config.hidden_size).max(1) as f64;
        Ok(sums.into_iter().map(|s| s / n).collect())
    }

    /// Advance the stream through full-precision layer `w` without keeping any inputs (replaying a
    /// layer that an earlier run already finished).
    pub fn advance(&mut self, w: &LayerWeights) -> Result<()> {
        self.prev = None;
        let next = self.forward(&self.x, w)?;
        self.prev = Some(std::mem::replace(&mut self.x, next));
        Ok(())
    }

    /// Layer `w`'s output on the hidden states `input` (chunk by chunk).
    fn forward(&self, input: &Chunks<B>, w: &LayerWeights) -> Result<Chunks<B>> {
        let layer = DecoderLayer::from_host(w, &self.config, &self.device);
        let (rope, mask) = (&self.rope, &self.mask);
        let mut next = self.x.like();
        map_chunks(input, |x| layer.forward(x, rope, mask), |_, o| next.push(o))?;
        Ok(next)
    }

    /// Replace the output of the layer last stepped by the output of `w` (e.g. its quantized
    /// weights, dequantized) on the same inputs: the following layers then calibrate on what the
    /// quantized model feeds them (`--quantized-inputs`). Call after the layer's output checks,
    /// which compare against the full-precision output.
    pub fn rerun_output(&mut self, w: &LayerWeights) -> Result<()> {
        let prev = self.prev.as_ref().ok_or_else(|| Error::internal("rerun_output before any layer was stepped"))?;
        self.x = self.forward(prev, w)?;
        Ok(())
    }

    /// Run full-precision layer `w` (index `i`, for messages) on the stream: capture every linear's
    /// input, and advance the stream to the layer's output.
    pub fn step(&mut self, i: usize, w: &LayerWeights) -> Result<LayerInputs<B>> {
        self.prev = None;
        let layer = DecoderLayer::from_host(w, &self.config, &self.device);
        let mut ins = LayerInputs {
            attn_in: self.x.like(),
            o_in: self.x.like(),
            mlp_in: self.x.like(),
            down_in: self.x.like(),
            stats: [self.config.hidden_size, self.config.q_dim(), self.config.hidden_size, self.config.intermediate_size].map(ChannelStats::new),
            absmax: vec![],
        };
        let mut next = self.x.like();
        let mut out_absmax = 0f32;
        let (rope, mask) = (&self.rope, &self.mask);
        map_chunks(&self.x, |x| layer.forward_trace(x, rope, mask), |ci, t| {
            // Numerical guard: a non-finite activation would silently poison every later layer.
            // NaN and inf propagate through the sum.
            let total = download(t.out.clone().abs().sum());
            if !total.first().map(|v| v.is_finite()).unwrap_or(false) {
                return Err(Error::input(
                    format!("layer {i}"),
                    format!("non-finite activation in the layer output (calibration chunk {ci}); the weights or inputs overflow"),
                ));
            }
            for (st, x) in ins.stats.iter_mut().zip([&t.attn_in, &t.o_in, &t.mlp_in, &t.down_in]) {
                st.update(&download(x.clone()));
            }
            out_absmax = out_absmax.max(download(t.out.clone().abs().max()).first().copied().unwrap_or(0.0));
            ins.attn_in.push(t.attn_in)?;
            ins.o_in.push(t.o_in)?;
            ins.mlp_in.push(t.mlp_in)?;
            ins.down_in.push(t.down_in)?;
            next.push(t.out)
        })?;
        let input_absmax = |st: &ChannelStats| st.absmax.iter().fold(0f64, |a, &b| a.max(b)) as f32;
        ins.absmax = vec![
            ("attention input", input_absmax(&ins.stats[0])),
            ("o_proj input", input_absmax(&ins.stats[1])),
            ("MLP input", input_absmax(&ins.stats[2])),
            ("down_proj input", input_absmax(&ins.stats[3])),
            ("layer output", out_absmax),
        ];
        self.prev = Some(std::mem::replace(&mut self.x, next));
        Ok(ins)
    }
}

/// Statistics of one shared input: the HF module names of the linears that read it, and the stats.
pub struct InputStats {
    pub modules: Vec<String>,
    pub stats: ChannelStats,
}

/// Run the calibration chain over every layer and collect per-channel input statistics, one
/// record per shared input (lmdeploy's `inputs_stats`).
pub fn collect_stats<B: Backend>(
    src: &dyn crate::quant::pipeline::LayerSource,
    blocks: &[Vec<u32>],
    chunk_seqs: usize,
    dev: &B::Device,
    mut on_layer: impl FnMut(usize),
) -> Result<Vec<InputStats>> {
    let c = src.config().clone();
    let g = src.globals()?;
    let mut chain = FpChain::<B>::new(&c, &g, blocks, chunk_seqs, &SpillPolicy::in_memory(), dev)?;
    drop(g);
    let mut out = Vec::new();
    for i in 0..c.num_hidden_layers {
        let w = src.layer(i)?;
        let ins = chain.step(i, &w)?;
        for grp in [ScaleGroup::AttnIn, ScaleGroup::AttnOut, ScaleGroup::MlpIn, ScaleGroup::MlpOut] {
            let modules = grp.consumers().iter().map(|&k| crate::model::arch::linear_module(c.arch, i, k)).collect::<Vec<_>>();
            let mut modules = modules;
            modules.dedup();
            out.push(InputStats { modules, stats: ins.stats(grp).clone() });
        }
        on_layer(i);
    }
    Ok(out)
}
