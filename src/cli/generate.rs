//! `awqc generate`: stream a completion (or a chat answer) from any model awqc can load.

use crate::data::tokenizer::Tokenizer;
use crate::engine::device::{self, DeviceKind};
use crate::engine::generate::{apply_chat_template, generate, GenStats, SamplerConfig};
use crate::engine::host::Activations;
use crate::engine::kv_cache::QuantPolicy;
use crate::engine::load::{load_model, LoadOptions};
use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use serde_json::json;
use std::io::Write;
use std::path::Path;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Model directory (HF, AutoAWQ or TurboMind), or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (one user turn + generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat (else the template's default).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV cache: 0 = compute dtype, 8 = int8, 4 = int4.
    #[arg(long, default_value_t = 0)]
    pub quant_policy: u32,
    /// Fraction of free memory after loading the weights that the KV cache may use.
    #[arg(long, default_value_t = 0.8)]
    pub cache_max_entry_count: f64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// CPU: run the dequantized f32 model instead of the packed INT4 kernels (a cross-check).
    #[arg(long)]
    pub dequantize: bool,
    /// CPU, INT4 models: activations the kernels multiply with (int8: integer dot products,
    /// several times faster; f32: the W4A16 arithmetic of the GPU kernels).
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: Activations,
}

fn run_on<B: Backend>(dev: B::Device, model: &Path, tok: &Tokenizer, ids: &[u32], a: &Args, json: bool) -> Result<(String, GenStats)> {
    let lm = load_model::<B>(model, &LoadOptions { dequantize: a.dequantize, activations: a.activations, ..Default::default() }, &dev)?;
    let policy = QuantPolicy::from_flag(a.quant_policy)?;
    let sampler = SamplerConfig { temperature: a.temperature, top_p: a.top_p, top_k: 0, seed: a.seed };
    let eos: Vec<u32> = tok.eos_id().into_iter().chain(lm.model.config.eos_token_id).collect();
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let (out, stats) = generate(&lm.model, ids, a.max_new_tokens, &eos, &sampler, policy, a.cache_max_entry_count, |t| {
        generated.push(t);
        if json {
            return;
        }
        // Stream the text decoded so far, holding back incomplete UTF-8 sequences.
        if let Ok(text) = tok.decode(&generated) {
            if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed) {
                let _ = write!(stdout, "{}", &text[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
        }
    })?;
    let text = tok.decode(&out)?;
    if !json && text.len() > printed && text.is_char_boundary(printed) {
        print!("{}", &text[printed..]);
    }
    Ok((text, stats))
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let kind = device::resolve(a.device)?;
    let model = a.revision.resolve(&a.model)?;
    let tok = Tokenizer::from_model_dir(&model)?;
    let prompt = if a.chat {
        let tpl = tok.chat_template().ok_or_else(|| Error::input(model.display(), "--chat: the tokenizer has no chat_template"))?;
        let name = |id: Option<u32>| id.and_then(|i| tok.decode(&[i]).ok()).unwrap_or_default();
        apply_chat_template(tpl, a.system.as_deref(), &a.prompt, &name(tok.bos_id()), &name(tok.eos_id()))?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&prompt)?;
    let (text, stats) = crate::with_backend!(kind, run_on(&model, &tok, &ids, &a, json))?;
    if json {
        crate::cli::print_json(&json!({"prompt": prompt, "text": text, "stats": stats, "device": kind}));
    } else {
        println!();
        crate::progress::status(&format!(
            "[{} prompt tokens in {:.2}s; {} new tokens at {:.1} tokens/s; {}; KV blocks {}/{}]",
            stats.prompt_tokens,
            stats.prefill_seconds,
            stats.generated_tokens,
            stats.decode_tokens_per_second,
            if stats.stopped_at_eos { "stopped at EOS" } else { "hit --max-new-tokens" },
            stats.kv_blocks_used,
            stats.kv_blocks_capacity
        ));
    }
    Ok(())
}
