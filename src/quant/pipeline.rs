//! The layer-by-layer quantization job.
//!
//! For each decoder layer, with only that layer's weights and calibration inputs in memory:
//! 1. run the full-precision layer on the calibration stream, capturing every linear's input and
//!    advancing the stream (so every layer sees inputs from the unquantized model, unless step 7
//!    replaces its output);
//! 2. search the scales of every input group on the unmodified layer (`--mode awq`), or compute
//!    lmdeploy's smoothing scales (`--mode lmdeploy`);
//! 3. fold the scales into norms / producer linears and divide the cached inputs by them;
//! 4. search weight clipping on the scaled inputs (awq mode, not q/k);
//! 5. quantize the seven linears (optionally with the (scale, zero) search and GPTQ's feedback,
//!    from the scaled inputs' Hessians);
//! 6. compare the layer's output error with round-to-nearest's (a warning where it is worse);
//! 7. with `--quantized-inputs`, re-run the layer's dequantized weights on its inputs, so the next
//!    layer calibrates on what the quantized model feeds it;
//! 8. hand the layer to the sink (the exporters).
//!
//! Without calibration data (`--calib-samples 0`) the weights are quantized round-to-nearest.

use crate::engine::llama::{upload, Attention, LinearB, Mlp};
use crate::error::{Error, Result};
use crate::model::arch::{self, GlobalWeights, LayerWeights, LinearKind, ScaleGroup};
use crate::model::config::ModelConfig;
use crate::model::weights::SafetensorsRepo;
use crate::quant::calibrate::{stats_of, FpChain, LayerInputs};
use crate::quant::chunks::{Chunks, SpillPolicy};
use crate::quant::clip::{apply_clip, clip_linear, ClipResult};
use crate::quant::resume::{JobState, LayerResult};
use crate::quant::fold::{fold_group, normalize_scales, zero_norm_channels};
use crate::quant::gptq::{GptqResult, LayerFeedback};
use crate::quant::hessian::{LayerHessians, INPUT_READERS};
use crate::quant::int4::{QuantParams, QuantizedLinear};
use crate::quant::qmodel::{QuantSink, QuantizedLayer};
use crate::quant::search::{search_group, GroupSearch, Inspect};
use crate::quant::zero_search::{search_linear, ZeroSearchResult};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Where the full-precision weights come from, one layer at a time.
pub trait LayerSource {
    fn config(&self) -> &ModelConfig;
    fn globals(&self) -> Result<GlobalWeights>;
    fn layer(&self, i: usize) -> Result<LayerWeights>;
}

/// A Hugging Face model directory (safetensors, memory-mapped).
pub struct HfSource {
    pub config: ModelConfig,
    pub repo: SafetensorsRepo,
}

impl HfSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = crate::model::config::ModelConfig::from_file(&dir.join("config.json"))?;
        if config.raw.get("quantization_config").is_some() {
            return Err(Error::input(
                dir.join("config.json").display(),
                "the model is already quantized (config.json has quantization_config); quantize the full-precision model",
            ));
        }
        let repo = SafetensorsRepo::open_dir(dir)?;
        Ok(HfSource { config, repo })
    }
}

impl LayerSource for HfSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn globals(&self) -> Result<GlobalWeights> {
        arch::load_globals(&self.repo, &self.config)
    }
    fn layer(&self, i: usize) -> Result<LayerWeights> {
        arch::load_layer(&self.repo, &self.config, i)
    }
}

/// A model held in memory (tests, synthetic models).
pub struct MemSource {
    pub config: ModelConfig,
    pub globals: GlobalWeights,
    pub layers: Vec<LayerWeights>,
}

impl LayerSource for MemSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn globals(&self) -> Result<GlobalWeights> {
        Ok(self.globals.clone())
    }
    fn layer(&self, i: usize) -> Result<LayerWeights> {
        self.layers.get(i).cloned().ok_or_else(|| Error::internal(format!("no layer {i}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AutoAWQ: per-group α grid search with the block-output loss, then clip search.
    Awq,
    /// lmdeploy `lite auto_awq`: fixed α = 0.5 smoothing from absmax (or `--search-scale`).
    Lmdeploy,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantizeOptions {
    pub mode: Mode,
    #[serde(skip)]
    pub params: QuantParams,
    /// AutoAWQ duo scaling (`x^α / w^(1-α)`); off = llm-awq (`x^α`).
    pub duo_scaling: bool,
    /// Clip search (awq mode).
    pub clip: bool,
    /// lmdeploy mode: search the ratio per chunk of `batch_size` samples and average it.
    pub search_scale: bool,
    /// Calibration sequences per forward chunk (bounds the attention buffers; lmdeploy's
    /// `--batch-size` chunking for `--search-scale`).
    pub batch_size: usize,
    pub n_grid: usize,
    /// GPTQ error feedback after scaling and clipping, with this dampening (`--gptq`).
    pub gptq: Option<f64>,
    /// Search each group's (scale, zero) against its calibration output error (`--zero-search`).
    pub zero_search: bool,
    /// Calibrate each layer on the outputs of the layers before it *as quantized* (GPTQ's order)
    /// instead of the full-precision model's (AutoAWQ's and lmdeploy's): the search then sees the
    /// inputs the layer will get when the checkpoint runs (`--quantized-inputs`). Left out of the
    /// serialized options when off, so the fingerprints of existing jobs stay as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quantized_inputs: bool,
    /// Where the calibration activations live (`--max-memory`); never changes the output.
    #[serde(skip)]
    pub spill: SpillPolicy,
}

/// What happened in one layer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct LayerReport {
    pub layer: usize,
    pub groups: Vec<GroupSearch>,
    pub clips: Vec<ClipResult>,
    /// GPTQ pass per linear (`--gptq`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gptq: Vec<GptqResult>,
    /// (scale, zero) search per linear (`--zero-search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zero_search: Vec<ZeroSearchResult>,
    pub seconds: f64,
    /// Replayed from a resume state rather than computed in this run.
    #[serde(default)]
    pub resumed: bool,
    /// Largest |activation| among the layer's linear inputs and its output (full-precision chain).
    #[serde(default)]
    pub act_absmax: f64,
    /// Mean squared error per hidden value of the layer's output, quantized as written and
    /// round-to-nearest from the original weights, against the full-precision layer on the same
    /// calibration inputs (calibrated runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_mse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtn_output_mse: Option<f64>,
    /// The layer's output error (as `output_mse`, round to nearest) with the searched clipping
    /// and without it: the layer keeps its clipping only if it is the lower (`clip_reverted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_check: Option<[f64; 2]>,
    #[serde(default)]
    pub clip_reverted: bool,
    /// Problems worth a look that do not stop the job (e.g. activations beyond fp16's range).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Wall time per pipeline step (seconds).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Timings {
    pub load: f64,
    pub calibration: f64,
    pub search: f64,
    pub clip: f64,
    /// The linears' input Hessians (`--gptq`, `--zero-search`).
    pub hessians: f64,
    /// GPTQ's factors and rounding (`--gptq`).
    pub gptq: f64,
    /// The (scale, zero) search (`--zero-search`).
    pub zero_search: f64,
    pub pack: f64,
    /// The per-layer output check against round-to-nearest.
    pub check: f64,
    pub export: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct QuantReport {
    pub layers: Vec<LayerReport>,
    pub timings: Timings,
    pub calib_tokens: usize,
    /// Floating-point operations of the search and clip forward passes (for GFLOP/s).
    pub search_flops: f64,
    /// Activation chunks written to disk under `--max-memory` (0: everything stayed in memory).
    pub chunks_spilled: usize,
    /// Layers whose quantized output error exceeds round-to-nearest's (each also a warning).
    pub worse_than_rtn: Vec<usize>,
}

fn check_finite(i: usize, w: &LayerWeights, c: &ModelConfig) -> Result<()> {
    for k in LinearKind::ALL {
        let l = w.linear(k);
        if let Some(p) = l.w.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(
                format!("{}.weight", arch::linear_module(c.arch, i, k)),
                format!("non-finite value {} at flat index {p}", l.w.data[p]),
            ));
        }
        if let Some(b) = &l.b {
            if b.iter().any(|v| !v.is_finite()) {
                return Err(Error::input(format!("{}.bias", arch::linear_module(c.arch, i, k)), "non-finite value"));
            }
        }
    }
    let (n1, n2) = arch::norm_names(c.arch, i);
    for (name, v) in [(n1, &w.attn_norm), (n2, &w.mlp_norm)] {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::input(name, "non-finite value"));
        }
    }
    Ok(())
}

/// Check that the group size divides every linear's input size, naming the first that does not.
pub fn check_group_size(c: &ModelConfig, p: QuantParams) -> Result<()> {
    for k in LinearKind::ALL {
        let (_, kk) = k.shape(c);
        p.check_divides(&arch::linear_module(c.arch, 0, k), kk)?;
    }
    Ok(())
}

/// Quantize every linear of a (scaled, clipped) layer, round to nearest.
pub fn quantize_layer(c: &ModelConfig, i: usize, w: &LayerWeights, p: QuantParams) -> Result<QuantizedLayer> {
    layer_of(w, |k, l| QuantizedLinear::quantize(&arch::linear_module(c.arch, i, k), &l.w, l.b.clone(), p))
}

/// Quantize every linear of a scaled layer with what the calibration inputs allow beyond min /
/// max rounding of the clipped weights `w`: the (scale, zero) search (kept per linear where it
/// lowers the calibration loss) and / or GPTQ's error feedback, both aiming at the unclipped
/// weights `target`. Their reports go to `lr`, their times to `t`.
#[allow(clippy::too_many_arguments)]
fn quantize_layer_refined<B: Backend>(c: &ModelConfig, i: usize, w: &LayerWeights, target: &LayerWeights, p: QuantParams, hs: &LayerHessians<B>, fb: Option<&LayerFeedback>, zero_search: bool, lr: &mut LayerReport, t: &mut Timings) -> Result<QuantizedLayer> {
    layer_of(w, |k, clipped| {
        let name = arch::linear_module(c.arch, i, k);
        let tl = target.linear(k);
        let mut base = QuantizedLinear::quantize(&name, &clipped.w, tl.b.clone(), p)?;
        if zero_search {
            let t0 = Instant::now();
            let zs = search_linear(&name, &tl.w, &clipped.w, hs.of(k), p)?;
            let cand = QuantizedLinear::quantize_with_params(&name, &zs.source, tl.b.clone(), p, &zs.params)?;
            let (loss_minmax, loss_search) = (hs.loss(k, &tl.w, &base.dequantize()), hs.loss(k, &tl.w, &cand.dequantize()));
            let kept = loss_search <= loss_minmax;
            if kept {
                base = cand;
            }
            let seconds = t0.elapsed().as_secs_f64();
            t.zero_search += seconds;
            lr.zero_search.push(ZeroSearchResult { linear: k.short().to_string(), loss_minmax, loss_search, kept, changed_fraction: zs.changed_fraction, seconds });
        }
        match fb {
            Some(fb) => {
                let t0 = Instant::now();
                let (ql, r) = fb.quantize(&name, k, tl, base, hs)?;
                t.gptq += t0.elapsed().as_secs_f64();
                lr.gptq.push(r);
                Ok(ql)
            }
            None => Ok(base),
        }
    })
}

/// A quantized layer from one quantizer applied to each of the seven linears in order.
fn layer_of(w: &LayerWeights, mut q: impl FnMut(LinearKind, &crate::model::arch::Linear) -> Result<QuantizedLinear>) -> Result<QuantizedLayer> {
    let mut q = |k: LinearKind| q(k, w.linear(k));
    Ok(QuantizedLayer {
        attn_norm: w.attn_norm.clone(),
        mlp_norm: w.mlp_norm.clone(),
        q: q(LinearKind::Q)?,
        k: q(LinearKind::K)?,
        v: q(LinearKind::V)?,
        o: q(LinearKind::O)?,
        gate: q(LinearKind::Gate)?,
        up: q(LinearKind::Up)?,
        down: q(LinearKind::Down)?,
    })
}

/// The FP block whose output a group's loss is measured on.
fn inspector<B: Backend>(g: ScaleGroup, w: &LayerWeights, c: &ModelConfig, chain: &FpChain<B>) -> Inspect<B> {
    let dev = &chain.device;
    let lb = |l: &crate::model::arch::Linear| LinearB::from_host(l, dev);
    match g {
        ScaleGroup::AttnIn => Inspect::Attention {
            block: Attention {
                q: lb(&w.q),
                k: lb(&w.k),
                v: lb(&w.v),
                o: lb(&w.o),
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                kv_bits: None,
            },
            rope: chain.rope.clone(),
            mask: chain.mask.clone(),
        },
        ScaleGroup::MlpIn => Inspect::Mlp(Mlp { gate: lb(&w.gate), up: lb(&w.up), down: lb(&w.down) }),
        ScaleGroup::AttnOut => Inspect::Linear(lb(&w.o)),
        ScaleGroup::MlpOut => Inspect::Linear(lb(&w.down)),
    }
}

/// FLOPs of one forward of a group's inspected block over `t` tokens of `s` per sequence.
fn block_flops(g: ScaleGroup, c: &ModelConfig, t: usize, s: usize) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let (q, kv) = (c.q_dim() as f64, c.kv_dim() as f64);
    let t = t as f64;
    match g {
        // q, k, v, o projections + QKᵀ and PV over the causal half (the host kernel skips the
        // masked keys block by block), as the bench's forward count does.
        ScaleGroup::AttnIn => 2.0 * t * (h * (q + 2.0 * kv) + q * h) + 2.0 * t * (s as f64 + 1.0) * q,
        ScaleGroup::AttnOut => 2.0 * t * q * h,
        ScaleGroup::MlpIn => 2.0 * t * 3.0 * h * i,
        ScaleGroup::MlpOut => 2.0 * t * i * h,
    }
}

/// FLOPs of a group's search: the FP forward, the RTN point and the trial forwards; for a
/// single-linear group on at least K tokens, the Gram matrix plus one `[N,K]x[K,K]` product per
/// point.
/// `grid_work` is the number of full grid-point evaluations actually done (abandoned points count
/// for the fraction of the chunks they ran on).
fn search_flops(g: ScaleGroup, c: &ModelConfig, t: usize, s: usize, grid_work: f64) -> f64 {
    let (n, k) = g.consumers()[0].shape(c);
    match g {
        // The closed form is used when there are at least K tokens (search.rs).
        ScaleGroup::AttnOut | ScaleGroup::MlpOut if t >= k => {
            2.0 * t as f64 * (k * k) as f64 + (grid_work + 1.0) * 2.0 * (n * k * k) as f64
        }
        _ => (grid_work + 2.0) * block_flops(g, c, t, s),
    }
}

/// The grid index to evaluate first for group `g`: its α in the previous layer's report (usually
/// close to the winner, so the search can abandon more points), else the middle.
fn first_guess(prev: Option<&LayerReport>, g: ScaleGroup, n_grid: usize) -> usize {
    prev.and_then(|l| l.groups.iter().find(|gs| gs.group == g.name()))
        .map_or(n_grid / 2, |gs| (gs.alpha * n_grid as f64).round() as usize)
}

/// lmdeploy's smoothing scales for one group (awq-reference §2.5): `s = a^α / w_mean^(1-α)`
/// (clamped at 1e-4), with lmdeploy's weight term (zero group max clamped to 1e-4).
fn lmdeploy_scales(act: &[f64], consumers: &[&crate::tensor::HostTensor], group: usize, alpha: f64, fixed: Option<&[bool]>) -> Vec<f64> {
    let k = act.len();
    let mut wm = vec![0f64; k];
    let mut rows = 0usize;
    for w in consumers {
        for row in w.data.chunks(k) {
            for (gi, vals) in row.chunks(group).enumerate() {
                let mut m = vals.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                if m == 0.0 {
                    m = 1e-4;
                }
                for (j, &v) in vals.iter().enumerate() {
                    wm[gi * group + j] += v.abs() as f64 / m;
                }
            }
            rows += 1;
        }
    }
    let mut wp: Vec<f64> = wm.iter().map(|v| (v / rows as f64).powf(1.0 - alpha)).collect();
    if wp.iter().cloned().fold(f64::INFINITY, f64::min) == 0.0 {
        for v in wp.iter_mut() {
            *v = v.max(1e-4);
        }
    }
    let mut s: Vec<f64> = act.iter().zip(&wp).map(|(a, w)| (a.powf(alpha) / w).max(1e-4)).collect();
    normalize_scales(&mut s, fixed);
    s
}

/// Divide cached input chunks by `s` (per channel), as the scaled model will see them.
fn scale_inputs<B: Backend>(chunks: &mut Chunks<B>, s: &[f64], dev: &B::Device) -> Result<()> {
    let k = s.len();
    let inv: Tensor<B, 3> = upload(s.iter().map(|&v| v as f32).collect(), [1, 1, k], dev);
    for i in 0..chunks.len() {
        let c = chunks.get(i)?;
        chunks.set(i, c / inv.clone())?;
    }
    Ok(())
}

/// Run the whole job. `blocks` are the calibration token blocks (empty = RTN).
/// `resume`: a job state and the number of layers it already holds; those layers are replayed
/// from the saved results, and every newly finished layer is saved to it.
pub fn quantize<B: Backend>(
    src: &dyn LayerSource,
    blocks: &[Vec<u32>],
    opts: &QuantizeOptions,
    sink: &mut dyn QuantSink,
    dev: &B::Device,
    resume: Option<(&JobState, usize)>,
    mut on_layer: impl FnMut(&LayerReport),
) -> Result<QuantReport> {
    let c = src.config().clone();
    let p = opts.params;
    check_group_size(&c, p)?;
    if p.zero != crate::quant::int4::ZeroPoint::Int && opts.gptq.is_some() {
        return Err(Error::usage("--zero-point float does not combine with --gptq yet (its feedback rounds with integer zero points)"));
    }
    let mut rep = QuantReport { calib_tokens: blocks.iter().map(|b| b.len()).sum(), ..Default::default() };
    let t0 = Instant::now();
    let globals = src.globals()?;
    rep.timings.load += t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    sink.begin(&c, p, &globals)?;
    rep.timings.export += t0.elapsed().as_secs_f64();
    let mut chain = if blocks.is_empty() {
        None
    } else {
        let t0 = Instant::now();
        let ch = FpChain::<B>::new(&c, &globals, blocks, opts.batch_size, &opts.spill, dev)?;
        rep.timings.calibration += t0.elapsed().as_secs_f64();
        Some(ch)
    };
    drop(globals);
    let tokens = rep.calib_tokens;
    let seqlen = blocks.first().map(|b| b.len()).unwrap_or(0);

    for i in 0..c.num_hidden_layers {
        let layer_start = Instant::now();
        let t0 = Instant::now();
        let mut w = src.layer(i)?;
        rep.timings.load += t0.elapsed().as_secs_f64();
        check_finite(i, &w, &c)?;
        // Round-to-nearest of the original weights, for the layer's check (step 6); quantized now,
        // before scaling changes `w`, rather than read again.
        let t0 = Instant::now();
        let rtn = chain.is_some().then(|| quantize_layer(&c, i, &w, p)).transpose()?;
        rep.timings.check += t0.elapsed().as_secs_f64();
        let mut lr = LayerReport { layer: i, ..Default::default() };
        // The layer's scaled inputs and scaled, unclipped weights, kept for the GPTQ pass and the
        // (scale, zero) search.
        let refine = opts.gptq.is_some() || opts.zero_search;
        let mut refine_inputs: Option<(LayerInputs<B>, LayerWeights)> = None;
        // The scaled inputs' Hessians, when the clip search computed them.
        let mut clip_hessians: Option<LayerHessians<B>> = None;

        let replay = resume.filter(|(_, done)| i < *done).map(|(st, _)| st);
        if let (Some(chain), Some(st)) = (chain.as_mut(), replay) {
            // A layer finished by an earlier run: advance the stream and re-apply its result.
            let t0 = Instant::now();
            let mut ins = if refine {
                Some(chain.step(i, &w)?)
            } else {
                chain.advance(&w)?;
                None
            };
            rep.timings.calibration += t0.elapsed().as_secs_f64();
            let r = st.load_layer(i)?;
            for (g, s) in &r.scales {
                fold_group(&mut w, *g, s);
                if let Some(ins) = ins.as_mut() {
                    scale_inputs(ins.group_mut(*g), s, dev)?;
                }
            }
            refine_inputs = ins.map(|ins| (ins, w.clone()));
            for (k, c) in &r.clips {
                apply_clip(&mut w.linear_mut(*k).w, c, p.group);
            }
            lr = r.report;
            lr.resumed = true;
        } else if let Some(chain) = chain.as_mut() {
            let t0 = Instant::now();
            let mut ins: LayerInputs<B> = chain.step(i, &w)?;
            rep.timings.calibration += t0.elapsed().as_secs_f64();
            // fp16 guard: awqc computes in f32, but the checkpoints are run in fp16 by most
            // engines; a bf16-trained model whose activations pass 65504 turns into inf there.
            if let Some(&(what, m)) = ins.absmax.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                lr.act_absmax = m as f64;
                if m > crate::tensor::F16_MAX {
                    lr.warnings.push(format!(
                        "layer {i}: the {what} reaches |x| = {m:.0}, beyond fp16's {}: engines running this checkpoint in fp16 will overflow (run them in bf16)",
                        crate::tensor::F16_MAX
                    ));
                }
            }

            // 2. scales for every group, all computed on the unmodified layer.
            let t0 = Instant::now();
            let groups = ScaleGroup::for_model(&c);
            let mut scales: Vec<(ScaleGroup, Vec<f64>)> = Vec::new();
            for &g in &groups {
                let consumers: Vec<(LinearKind, &crate::model::arch::Linear)> =
                    g.consumers().iter().map(|&k| (k, w.linear(k))).collect();
                let fixed = zero_norm_channels(&w, g);
                let x = ins.group(g);
                let stats = ins.stats(g);
                if let Some((ch, v)) = stats.first_non_finite() {
                    return Err(Error::input(format!("layer {i}"), format!("non-finite activation statistic {v} in channel {ch} of the {} input", g.name())));
                }
                let s = match opts.mode {
                    Mode::Awq => {
                        let block = inspector(g, &w, &c, chain);
                        let first = first_guess(rep.layers.last(), g, opts.n_grid);
                        let gs = search_group(g, &consumers, &block, x, &stats.absmean(), fixed.as_deref(), p, opts.duo_scaling, opts.n_grid, first, dev)?.or_identity();
                        rep.search_flops += search_flops(g, &c, tokens, seqlen, gs.grid_work);
                        if !gs.loss_best.is_finite() {
                            return Err(Error::input(format!("layer {i}"), format!("scale search for {} found no finite loss (NaN/inf in the block output)", g.name())));
                        }
                        let s = gs.scales.clone();
                        lr.groups.push(gs);
                        s
                    }
                    Mode::Lmdeploy => {
                        let ws: Vec<&crate::tensor::HostTensor> = consumers.iter().map(|(_, l)| &l.w).collect();
                        if opts.search_scale {
                            // Per-chunk ratio search, averaged; final scales from absmean.
                            let block = inspector(g, &w, &c, chain);
                            let mut ratio_sum = 0.0;
                            let mut work = 0.0;
                            let mut n = 0usize;
                            for ci in 0..x.len() {
                                let xs = Chunks::resident(vec![x.get(ci)?], dev);
                                let st = stats_of(&xs)?;
                                let gs = search_group(g, &consumers, &block, &xs, &st.absmean(), fixed.as_deref(), p, true, opts.n_grid, opts.n_grid / 2, dev)?;
                                ratio_sum += gs.alpha;
                                work += gs.grid_work;
                                n += 1;
                            }
                            rep.search_flops += search_flops(g, &c, tokens, seqlen, work / n.max(1) as f64);
                            let alpha = ratio_sum / n.max(1) as f64;
                            let s = lmdeploy_scales(&stats.absmean(), &ws, p.group, alpha, fixed.as_deref());
                            lr.groups.push(GroupSearch { group: g.name().to_string(), alpha, identity: false, loss_rtn: f64::NAN, loss_best: f64::NAN, losses: vec![], grid_work: 0.0, scales: s.clone(), seconds: 0.0 });
                            s
                        } else {
                            let s = lmdeploy_scales(&stats.absmax, &ws, p.group, 0.5, fixed.as_deref());
                            lr.groups.push(GroupSearch { group: g.name().to_string(), alpha: 0.5, identity: false, loss_rtn: f64::NAN, loss_best: f64::NAN, losses: vec![], grid_work: 0.0, scales: s.clone(), seconds: 0.0 });
                            s
                        }
                    }
                };
                if let Some(bad) = s.iter().find(|v| !v.is_finite() || **v <= 0.0) {
                    return Err(Error::input(format!("layer {i}"), format!("invalid scale {bad} for group {}", g.name())));
                }
                scales.push((g, s));
            }
            // 3. fold, and make the cached inputs what the scaled linears will see.
            for (g, s) in &scales {
                fold_group(&mut w, *g, s);
                scale_inputs(ins.group_mut(*g), s, dev)?;
            }
            rep.timings.search += t0.elapsed().as_secs_f64();

            let unclipped = refine.then(|| w.clone());

            // 4. clip search: every linear but q and k.
            let mut clips: Vec<(LinearKind, Vec<f32>)> = Vec::new();
            if opts.mode == Mode::Awq && opts.clip {
                let before_clip = w.clone();
                // The inputs' Gram matrices (kept for step 5 when it needs them too).
                let t0 = Instant::now();
                let hs = LayerHessians::new(&ins, dev)?;
                rep.timings.hessians += t0.elapsed().as_secs_f64();
                rep.search_flops += INPUT_READERS.iter().map(|&k| 2.0 * (hs.of(k).tokens * hs.of(k).k * hs.of(k).k) as f64).sum::<f64>();
                let t0 = Instant::now();
                for k in [LinearKind::V, LinearKind::O, LinearKind::Gate, LinearKind::Up, LinearKind::Down] {
                    let (n, kk) = w.linear(k).w.dims2();
                    // the grid (g² per candidate and (row, group)) and the two whole-row checks
                    rep.search_flops += 2.0 * (crate::quant::clip::MAX_SHRINK * crate::quant::clip::N_GRID as f64) * (n * kk * p.group) as f64 + 4.0 * (n * kk * kk) as f64;
                    let (r, thresholds) = clip_linear::<B>(k.short(), &mut w.linear_mut(k).w, hs.of(k), hs.device_of(k), p, dev);
                    lr.clips.push(r);
                    clips.push((k, thresholds));
                }
                // Each linear's clipping lowers its own calibration loss, but not always the
                // layer's output: on Qwen2.5's layer 2, where the massive activations are made,
                // the clipped up projection's error is amplified by the gate of the few sink tokens.
                let (clipped, unclipped) = (quantize_layer(&c, i, &w, p)?.dequantized(), quantize_layer(&c, i, &before_clip, p)?.dequantized());
                let errs = chain.output_errors(&[&clipped, &unclipped])?;
                lr.clip_check = Some([errs[0], errs[1]]);
                if errs[0] >= errs[1] {
                    w = before_clip;
                    clips.clear();
                    lr.clip_reverted = true;
                }
                rep.timings.clip += t0.elapsed().as_secs_f64();
                clip_hessians = refine.then_some(hs);
            }
            lr.seconds = layer_start.elapsed().as_secs_f64();
            if let Some((st, _)) = resume {
                st.save_layer(i, &LayerResult { scales, clips, report: lr.clone() })?;
            }
            refine_inputs = unclipped.map(|u| (ins, u));
        }

        // 5. quantize (the (scale, zero) search and GPTQ's feedback from the scaled inputs' Hessians)
        //    and export.
        let ql = match refine_inputs.take() {
            Some((ins, unclipped)) => {
                let t0 = Instant::now();
                let hs = match clip_hessians.take() {
                    Some(hs) => hs,
                    None => LayerHessians::new(&ins, dev)?,
                };
                drop(ins);
                rep.timings.hessians += t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                let fb = opts.gptq.map(|damp| LayerFeedback::new(&c, i, &hs, damp)).transpose()?;
                rep.timings.gptq += t0.elapsed().as_secs_f64();
                quantize_layer_refined(&c, i, &w, &unclipped, p, &hs, fb.as_ref(), opts.zero_search, &mut lr, &mut rep.timings)?
            }
            None => {
                let t0 = Instant::now();
                let ql = quantize_layer(&c, i, &w, p)?;
                rep.timings.pack += t0.elapsed().as_secs_f64();
                ql
            }
        };
        drop(w);
        // 6. the layer's output error against round-to-nearest of its original weights (the
        //    peers' silent failure: a "calibrated" layer worse than plain rounding).
        //    The dequantized layer is kept for step 7.
        let mut deq = None;
        if let (Some(chain), Some(rtn)) = (chain.as_ref(), rtn) {
            let t0 = Instant::now();
            let d = deq.insert(ql.dequantized());
            let errs = chain.output_errors(&[d, &rtn.dequantized()])?;
            let (e, e_rtn) = (errs[0], errs[1]);
            (lr.output_mse, lr.rtn_output_mse) = (Some(e), Some(e_rtn));
            if e > e_rtn {
                rep.worse_than_rtn.push(i);
                lr.warnings.push(format!("layer {i}: the quantized layer's output error {e:.3e} exceeds round-to-nearest's {e_rtn:.3e} on the calibration inputs"));
            }
            rep.timings.check += t0.elapsed().as_secs_f64();
        }
        // 7. with --quantized-inputs, the next layer's inputs are this layer's quantized output.
        if let (Some(chain), true, Some(d)) = (chain.as_mut(), opts.quantized_inputs, deq.take()) {
            let t0 = Instant::now();
            chain.rerun_output(&d)?;
            rep.timings.calibration += t0.elapsed().as_secs_f64();
        }
        // 8. hand the layer to the exporters.
        let t0 = Instant::now();
        sink.write_layer(i, &ql)?;
        rep.timings.export += t0.elapsed().as_secs_f64();
        if !lr.resumed {
            lr.seconds = layer_start.elapsed().as_secs_f64();
        }
        on_layer(&lr);
        rep.layers.push(lr);
        if crate::quant::resume::interrupted() {
            return Err(Error::interrupted(format!(
                "interrupted after layer {i} of {}; run the same command again to resume from layer {}",
                c.num_hidden_layers,
                i + 1
            )));
        }
    }
    rep.chunks_spilled = opts.spill.chunks_written();
    Ok(rep)
}
