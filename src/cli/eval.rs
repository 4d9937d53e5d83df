//! `awqc eval`: perplexity of a model (full precision, AWQ checkpoint or TurboMind workspace)
//! with the pinned protocol, optionally checked against a golden value.

use crate::data::tokenizer::Tokenizer;
use crate::engine::device::{self, DeviceKind};
use crate::engine::golden::{GoldenFile, Protocol};
use crate::engine::host::Activations;
use crate::engine::load::{load_model, LoadOptions};
use crate::engine::ppl::{perplexity, PplResult};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model directory (HF, AutoAWQ checkpoint or TurboMind workspace), or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// Evaluation text: a bundled dataset name (wikitext2, c4, ...) or a .parquet/.jsonl/.txt file;
    /// documents are joined with "\n\n".
    #[arg(long, default_value = "wikitext2")]
    pub dataset: String,
    /// Use this file's text exactly as it is instead of --dataset (no cleaning).
    #[arg(long)]
    pub raw_text: Option<PathBuf>,
    /// Preset: `ci` = 32 windows of 512 tokens, `full` = every 2048-token window.
    #[arg(long, default_value = "ci")]
    pub protocol: String,
    /// Tokens per window (overrides the preset).
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Number of windows from the start (overrides the preset; 0 = all).
    #[arg(long)]
    pub windows: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Directory of the bundled calibration/eval datasets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A goldens file to check the result against (needs --golden).
    #[arg(long)]
    pub check: Option<PathBuf>,
    /// The entry of the goldens file to compare with.
    #[arg(long)]
    pub golden: Option<String>,
    /// Read K/V through a quantized KV cache: 0 = none, 8 = int8, 4 = int4 (TurboMind quant_policy).
    #[arg(long, default_value_t = 0)]
    pub quant_policy: u32,
    /// Override the model's max_position_embeddings (long-context experiments).
    #[arg(long)]
    pub max_position_embeddings: Option<usize>,
    /// Override rope_scaling: `none`, `linear:F`, `dynamic:F` (NTK), `yarn:F`.
    #[arg(long)]
    pub rope_scaling: Option<String>,
    /// CPU: run the dequantized f32 model instead of the packed INT4 kernels (a cross-check).
    #[arg(long)]
    pub dequantize: bool,
    /// CPU, INT4 models: activations the kernels multiply with. f32 (default here): perplexity
    /// of the checkpoint as GPUs run it (W4A16); int8: what `generate`, `chat` and `serve` run.
    #[arg(long, value_enum, default_value = "f32")]
    pub activations: Activations,
}

/// Parse `--rope-scaling`.
pub fn parse_rope_flag(s: &str) -> Result<crate::model::config::RopeScaling> {
    use crate::model::config::RopeScaling;
    let bad = || Error::usage(format!("--rope-scaling {s:?}: expected none, linear:F, dynamic:F or yarn:F"));
    if s == "none" {
        return Ok(RopeScaling::None);
    }
    let (ty, f) = s.split_once(':').ok_or_else(bad)?;
    let factor: f64 = f.parse().map_err(|_| bad())?;
    if !(factor.is_finite() && factor > 0.0) {
        return Err(bad());
    }
    Ok(match ty {
        "linear" => RopeScaling::Linear { factor },
        "dynamic" => RopeScaling::Dynamic { factor },
        "yarn" => RopeScaling::Yarn { factor, beta_fast: 32.0, beta_slow: 1.0, attention_factor: None, original_max_position_embeddings: None },
        _ => return Err(bad()),
    })
}

/// The (seqlen, windows) of a protocol preset, with explicit overrides.
pub fn protocol_of(a: &Args) -> Result<(usize, Option<usize>)> {
    let (s, w) = match a.protocol.as_str() {
        "ci" => (512, Some(32)),
        "full" => (2048, None),
        other => return Err(Error::usage(format!("--protocol {other:?}: expected ci or full"))),
    };
    let s = a.seqlen.unwrap_or(s);
    let w = match a.windows {
        Some(0) => None,
        Some(n) => Some(n),
        None => w,
    };
    if s < 2 {
        return Err(Error::usage(format!("--seqlen {s}: needs at least 2 tokens")));
    }
    Ok((s, w))
}

/// The evaluation text of the pinned protocol.
pub fn eval_text(dataset: &str, raw: Option<&Path>, data_dir: Option<&Path>) -> Result<String> {
    if let Some(p) = raw {
        return crate::data::eval_text::raw_text(p);
    }
    let dir = data_dir.map(Path::to_path_buf).unwrap_or_else(crate::data::calib::default_data_dir);
    let path = crate::data::calib::resolve_dataset(dataset, &dir)?;
    let docs = crate::data::textfile::load_documents(&path)?;
    Ok(docs.join("\n\n"))
}

pub struct EvalOutcome {
    pub result: PplResult,
    pub format: crate::engine::load::ModelFormat,
}

/// Engine-side settings of an evaluation.
#[derive(Debug, Clone, Default)]
pub struct EvalSettings {
    pub load: LoadOptions,
    pub kv_policy: Option<crate::engine::kv_cache::QuantPolicy>,
}

fn eval_on<B: Backend>(dev: B::Device, model: &Path, tokens: &[u32], seqlen: usize, windows: Option<usize>, set: &EvalSettings) -> Result<EvalOutcome> {
    let mut lm = load_model::<B>(model, &set.load, &dev)?;
    if let Some(p) = set.kv_policy {
        lm.model.set_kv_policy(p);
    }
    let w = crate::data::eval_text::windows(tokens, seqlen, windows);
    let result = perplexity(&lm.model, &w)?;
    Ok(EvalOutcome { result, format: lm.format })
}

/// Evaluate a model with the pinned protocol (used by `eval` and `quantize --eval`). `source`
/// names the text (its file or dataset) in errors.
pub fn evaluate(model: &Path, tok: &Tokenizer, text: &str, source: &str, seqlen: usize, windows: Option<usize>, kind: DeviceKind) -> Result<EvalOutcome> {
    evaluate_with(model, tok, text, source, seqlen, windows, kind, &EvalSettings::default())
}

#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    model: &Path,
    tok: &Tokenizer,
    text: &str,
    source: &str,
    seqlen: usize,
    windows: Option<usize>,
    kind: DeviceKind,
    set: &EvalSettings,
) -> Result<EvalOutcome> {
    let tokens = tok.encode(text)?;
    if tokens.len() < seqlen {
        return Err(Error::input(
            source,
            format!("the evaluation text has only {} tokens, fewer than one window of --seqlen {seqlen}", tokens.len()),
        ));
    }
    crate::with_backend!(kind, eval_on(model, &tokens, seqlen, windows, set))
}

pub fn run(a: Args, json: bool) -> Result<()> {
    if a.check.is_some() != a.golden.is_some() {
        return Err(Error::usage("--check and --golden go together"));
    }
    let (seqlen, windows) = protocol_of(&a)?;
    let model = a.revision.resolve(&a.model)?;
    let kind = device::resolve(a.device)?;
    let format = crate::engine::load::detect_format(&model)?;
    let tok = Tokenizer::from_model_dir(&model)?;
    let text = eval_text(&a.dataset, a.raw_text.as_deref(), a.data_dir.as_deref())?;
    let source = a.raw_text.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| a.dataset.clone());
    let set = EvalSettings {
        load: LoadOptions {
            max_position_embeddings: a.max_position_embeddings,
            rope_scaling: a.rope_scaling.as_deref().map(parse_rope_flag).transpose()?,
            dequantize: a.dequantize,
            activations: a.activations,
        },
        kv_policy: Some(crate::engine::kv_cache::QuantPolicy::from_flag(a.quant_policy)?),
    };
    let out = evaluate_with(&model, &tok, &text, &source, seqlen, windows, kind, &set)?;
    let r = &out.result;
    let dataset = match &a.raw_text {
        Some(p) => format!("raw:{}", p.display()),
        None => a.dataset.clone(),
    };
    let protocol = Protocol { dataset: dataset.clone(), seqlen, windows: r.windows };
    let engine = json!({"quant_policy": a.quant_policy, "max_position_embeddings": a.max_position_embeddings, "rope_scaling": a.rope_scaling});
    let check = match (&a.check, &a.golden) {
        (Some(f), Some(name)) => Some(GoldenFile::load(f)?.check(f, name, &protocol, r.ppl)?),
        _ => None,
    };
    if json {
        crate::cli::print_json(&json!({
            "model": model.display().to_string(), "format": format, "device": kind,
            "protocol": protocol, "ppl": r.ppl, "nll": r.nll, "tokens_scored": r.tokens_scored,
            "seconds": r.seconds, "tokens_per_second": r.tokens_per_second, "check": check, "engine": engine,
        }));
    } else {
        println!("model      {} ({:?})", model.display(), format);
        println!("protocol   {dataset}, {} windows x {seqlen} tokens, non-overlapping, from the start", r.windows);
        if a.quant_policy != 0 || a.max_position_embeddings.is_some() || a.rope_scaling.is_some() {
            println!("engine     {engine}");
        }
        println!("PPL        {:.4}", r.ppl);
        println!("scored     {} tokens", r.tokens_scored);
        println!("speed      {:.1} tokens/s ({:.1} s, {:?})", r.tokens_per_second, r.seconds, kind);
        if let Some(c) = &check {
            println!(
                "golden     {}: expected {:.4}, measured {:.4}, diff {:.3}% (tolerance {:.3}%) -> {}",
                c.golden, c.expected, c.measured, c.rel_diff * 100.0, c.rel_tol * 100.0, if c.pass { "PASS" } else { "FAIL" }
            );
        }
    }
    if let Some(c) = check {
        if !c.pass {
            return Err(Error::check(format!(
                "perplexity {:.4} differs from golden {} ({:.4}) by {:.3}%, beyond the {:.3}% tolerance",
                c.measured, c.golden, c.expected, c.rel_diff * 100.0, c.rel_tol * 100.0
            )));
        }
    }
    Ok(())
}
