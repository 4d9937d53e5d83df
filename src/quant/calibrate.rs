//! The full-precision calibration chain: calibration token blocks are embedded and pushed through
//! the decoder one layer at a time; for each layer we capture the input of every linear (one
//! record per shared input: q/k/v share one, gate/up share one). Only the current layer's inputs
//! and the residual stream are held in memory.

use crate::engine::llama::{causal_mask, download, upload, DecoderLayer, RopeTables};
use crate::engine::rope::Rope;
use crate::error::{Error, Result};
use crate::model::arch::{GlobalWeights, LayerWeights, LinearKind, ScaleGroup};
use crate::model::config::ModelConfig;
use crate::quant::stats::ChannelStats;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// The captured inputs of one layer, each as chunks of `[chunk_seqs, seqlen, K]`.
pub struct LayerInputs<B: Backend> {
    /// q/k/v input (after the attention norm).
    pub attn_in: Vec<Tensor<B, 3>>,
    /// o_proj input.
    pub o_in: Vec<Tensor<B, 3>>,
    /// gate/up input (after the MLP norm).
    pub mlp_in: Vec<Tensor<B, 3>>,
    /// down_proj input.
    pub down_in: Vec<Tensor<B, 3>>,
    /// Largest |activation| of each input above and of the layer output, named: what an fp16
    /// inference engine would have to represent (the f32 chain here cannot overflow).
    pub absmax: Vec<(&'static str, f32)>,
}

impl<B: Backend> LayerInputs<B> {
    /// The cached input of a scale group's consumers.
    pub fn group(&self, g: ScaleGroup) -> &Vec<Tensor<B, 3>> {
        match g {
            ScaleGroup::AttnIn => &self.attn_in,
            ScaleGroup::AttnOut => &self.o_in,
            ScaleGroup::MlpIn => &self.mlp_in,
            ScaleGroup::MlpOut => &self.down_in,
        }
    }
    pub fn group_mut(&mut self, g: ScaleGroup) -> &mut Vec<Tensor<B, 3>> {
        match g {
            ScaleGroup::AttnIn => &mut self.attn_in,
            ScaleGroup::AttnOut => &mut self.o_in,
            ScaleGroup::MlpIn => &mut self.mlp_in,
            ScaleGroup::MlpOut => &mut self.down_in,
        }
    }
    /// The cached input a given linear reads.
    pub fn of(&self, k: LinearKind) -> &Vec<Tensor<B, 3>> {
        match k {
            LinearKind::Q | LinearKind::K | LinearKind::V => &self.attn_in,
            LinearKind::O => &self.o_in,
            LinearKind::Gate | LinearKind::Up => &self.mlp_in,
            LinearKind::Down => &self.down_in,
        }
    }
}

/// All chunks of an input flattened to a host `[T, K]` buffer (T in sequence order).
pub fn to_host<B: Backend>(chunks: &[Tensor<B, 3>]) -> Vec<f32>
{
    let mut out = Vec::new();
    for c in chunks {
        out.extend(download(c.clone()));
    }
    out
}

/// Per-channel statistics of a chunked input.
pub fn stats_of<B: Backend>(chunks: &[Tensor<B, 3>]) -> ChannelStats {
    let k = chunks.first().map(|c| c.dims()[2]).unwrap_or(0);
    let mut s = ChannelStats::new(k);
    for c in chunks {
        s.update(&download(c.clone()));
    }
    s
}

/// The residual stream of the calibration set moving through the full-precision model.
pub struct FpChain<B: Backend> {
    /// Hidden states entering the next layer, chunks of `[chunk_seqs, seqlen, H]`.
    pub x: Vec<Tensor<B, 3>>,
    pub rope: RopeTables<B>,
    pub mask: Tensor<B, 2>,
    pub seqlen: usize,
    pub config: ModelConfig,
    pub device: B::Device,
}

impl<B: Backend> FpChain<B> {
    /// Embed `blocks` (each exactly `seqlen` tokens) in chunks of `chunk_seqs` sequences.
    pub fn new(c: &ModelConfig, g: &GlobalWeights, blocks: &[Vec<u32>], chunk_seqs: usize, dev: &B::Device) -> Result<Self> {
        let seqlen = blocks.first().map(|b| b.len()).ok_or_else(|| Error::usage("calibration set is empty"))?;
        if blocks.iter().any(|b| b.len() != seqlen) {
            return Err(Error::internal("calibration blocks have different lengths"));
        }
        if let Some(bad) = blocks.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::input("calibration data", format!("token id {bad} is outside the vocabulary ({})", c.vocab_size)));
        }
        let h = c.hidden_size;
        let embed: Tensor<B, 2> = upload(g.embed.data.clone(), [c.vocab_size, h], dev);
        let mut x = Vec::new();
        for chunk in blocks.chunks(chunk_seqs.max(1)) {
            let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
            let n = chunk.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n * seqlen]), dev);
            x.push(embed.clone().select(0, idx).reshape([n, seqlen, h]));
        }
        let rope = RopeTables::new(&Rope::from_config(c), seqlen, 0, seqlen, dev);
        let mask = causal_mask::<B>(c.num_attention_heads / c.num_key_value_heads, seqlen, dev);
        Ok(FpChain { x, rope, mask, seqlen, config: c.clone(), device: dev.clone() })
    }

    /// Advance the stream through full-precision layer `w` without keeping any inputs (replaying a
    /// layer that an earlier run already finished).
    pub fn advance(&mut self, w: &LayerWeights) -> Result<()> {
        use rayon::prelude::*;
        let layer = DecoderLayer::from_host(w, &self.config, &self.device);
        let (rope, mask) = (&self.rope, &self.mask);
        self.x = self.x.par_drain(..).map(|x| layer.forward(x, rope, mask)).collect();
        Ok(())
    }

    /// Run full-precision layer `w` (index `i`, for messages) on the stream: capture every linear's
    /// input, and advance the stream to the layer's output.
    pub fn step(&mut self, i: usize, w: &LayerWeights) -> Result<LayerInputs<B>> {
        let layer = DecoderLayer::from_host(w, &self.config, &self.device);
        let mut ins = LayerInputs { attn_in: vec![], o_in: vec![], mlp_in: vec![], down_in: vec![], absmax: vec![] };
        let mut next = Vec::with_capacity(self.x.len());
        // Chunks are independent sequences: trace them concurrently, keep them in order.
        let traces: Vec<_> = {
            use rayon::prelude::*;
            let (rope, mask) = (&self.rope, &self.mask);
            self.x.par_drain(..).map(|x| layer.forward_trace(x, rope, mask)).collect()
        };
        for t in traces {
            ins.attn_in.push(t.attn_in);
            ins.o_in.push(t.o_in);
            ins.mlp_in.push(t.mlp_in);
            ins.down_in.push(t.down_in);
            next.push(t.out);
        }
        // Numerical guard: a non-finite activation would silently poison every later layer.
        for (ci, o) in next.iter().enumerate() {
            // NaN and inf propagate through the sum.
            let total = download(o.clone().abs().sum());
            if !total.first().map(|v| v.is_finite()).unwrap_or(false) {
                return Err(Error::input(
                    format!("layer {i}"),
                    format!("non-finite activation in the layer output (calibration chunk {ci}); the weights or inputs overflow"),
                ));
            }
        }
        let absmax = |ts: &[Tensor<B, 3>]| {
            ts.iter().map(|t| download(t.clone().abs().max()).first().copied().unwrap_or(0.0)).fold(0f32, f32::max)
        };
        ins.absmax = vec![
            ("attention input", absmax(&ins.attn_in)),
            ("o_proj input", absmax(&ins.o_in)),
            ("MLP input", absmax(&ins.mlp_in)),
            ("down_proj input", absmax(&ins.down_in)),
            ("layer output", absmax(&next)),
        ];
        self.x = next;
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
    let mut chain = FpChain::<B>::new(&c, &g, blocks, chunk_seqs, dev)?;
    drop(g);
    let mut out = Vec::new();
    for i in 0..c.num_hidden_layers {
        let w = src.layer(i)?;
        let ins = chain.step(i, &w)?;
        for grp in [ScaleGroup::AttnIn, ScaleGroup::AttnOut, ScaleGroup::MlpIn, ScaleGroup::MlpOut] {
            let modules = grp.consumers().iter().map(|&k| crate::model::arch::linear_module(c.arch, i, k)).collect::<Vec<_>>();
            let mut modules = modules;
            modules.dedup();
            out.push(InputStats { modules, stats: stats_of(ins.group(grp)) });
        }
        on_layer(i);
    }
    Ok(out)
}
