//! What `serve` and `chat` share: the engine flags, loading a model into the engine thread on any
//! backend, and turning requests into prompt ids (tokenizer + chat template + stop tokens).

use crate::data::tokenizer::Tokenizer;
use crate::engine::device::{self, DeviceKind};
use crate::engine::host::Activations;
use crate::engine::kv_cache::QuantPolicy;
use crate::engine::load::{load_model, LoadOptions};
use crate::error::{Error, Result};
use crate::serve::scheduler::{self, EngineHandle, SchedulerConfig};
use crate::serve::template::{normalize_messages, ChatTemplate};
use burn::tensor::backend::Backend;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Default `--session-len`: the model's `max_position_embeddings`, capped at this (a longer
/// session reserves more KV cache per request and most chats are far shorter).
pub const DEFAULT_SESSION_CAP: usize = 4096;

/// The chat template used when the model has none and no `--chat-template` is given: ChatML
/// (what SmolLM2, Qwen2 and many others use).
pub const FALLBACK_CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Tokens that end an assistant turn in common chat formats; whichever the vocabulary has are
/// stop tokens in addition to the EOS ids.
const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>"];

/// The engine flags of `serve` and `chat` (lmdeploy's names), resolved.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model: PathBuf,
    pub device: DeviceKind,
    pub quant_policy: u32,
    pub cache_max_entry_count: f64,
    pub max_batch_size: usize,
    pub max_concurrent_requests: usize,
    /// None: min(max_position_embeddings, [`DEFAULT_SESSION_CAP`]).
    pub session_len: Option<usize>,
    pub prefill_chunk: usize,
    pub chat_template: Option<PathBuf>,
    /// CPU host model: int8 or f32 activations for the INT4 kernels.
    pub activations: Activations,
}

impl EngineOptions {
    /// Refuse flag values that are wrong whatever the model (before anything is loaded).
    pub fn check(&self) -> Result<()> {
        QuantPolicy::from_flag(self.quant_policy)?;
        if !(self.cache_max_entry_count > 0.0 && self.cache_max_entry_count <= 1.0) {
            return Err(Error::usage(format!("--cache-max-entry-count {}: must be in (0, 1]", self.cache_max_entry_count)));
        }
        let probe = SchedulerConfig {
            max_batch_size: self.max_batch_size,
            max_concurrent_requests: self.max_concurrent_requests,
            session_len: self.session_len.unwrap_or(DEFAULT_SESSION_CAP),
            prefill_chunk: self.prefill_chunk,
            quant_policy: QuantPolicy::from_flag(self.quant_policy)?,
            cache_max_entry_count: self.cache_max_entry_count,
        };
        probe.check()
    }
}

/// A model running in the engine thread.
pub struct LoadedEngine {
    pub handle: EngineHandle,
    pub session_len: usize,
    /// The model config's EOS id (TurboMind workspaces have it only there).
    pub eos: Option<u32>,
    pub device: DeviceKind,
}

fn load_on<B: Backend>(dev: B::Device, o: &EngineOptions) -> Result<(EngineHandle, Option<u32>)> {
    let lm = load_model::<B>(&o.model, &LoadOptions { activations: o.activations, ..Default::default() }, &dev)?;
    let max_pos = lm.model.config.max_position_embeddings;
    let session_len = o.session_len.unwrap_or(max_pos.min(DEFAULT_SESSION_CAP)).max(2);
    if session_len > max_pos {
        crate::progress::status(&format!(
            "awqc: --session-len {session_len} is longer than the model's max_position_embeddings {max_pos}; quality past it depends on the model's RoPE scaling"
        ));
    }
    let eos = lm.model.config.eos_token_id;
    let cfg = SchedulerConfig {
        max_batch_size: o.max_batch_size,
        max_concurrent_requests: o.max_concurrent_requests,
        session_len,
        prefill_chunk: o.prefill_chunk,
        quant_policy: QuantPolicy::from_flag(o.quant_policy)?,
        cache_max_entry_count: o.cache_max_entry_count,
    };
    Ok((scheduler::spawn(lm.model, cfg)?, eos))
}

/// Load the weights on the requested device and start the engine thread.
pub fn load_engine(o: &EngineOptions) -> Result<LoadedEngine> {
    let kind = device::resolve(o.device)?;
    let (handle, eos) = crate::with_backend!(kind, load_on(o))?;
    Ok(LoadedEngine { session_len: handle.session_len(), handle, eos, device: kind })
}

/// Tokenizer, chat template and stop tokens of the served model.
pub struct Prompter {
    pub tok: Tokenizer,
    template: ChatTemplate,
    /// Where the template came from, for messages.
    pub template_source: String,
    /// The template's text (the tool-call syntax is read from it).
    pub template_text: String,
    stop_ids: Vec<u32>,
    /// Function calling (`awqc serve` sets it up; `chat` has none).
    pub tools: Option<crate::serve::toolcall::ToolSetup>,
}

/// EOS ids declared in a JSON config file (`eos_token_id`: an id or a list of ids).
fn config_eos(path: &Path) -> Vec<u32> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else { return Vec::new() };
    match v.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().and_then(|u| u32::try_from(u).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|u| u32::try_from(u).ok())).collect(),
        _ => Vec::new(),
    }
}

impl Prompter {
    /// Read the tokenizer (and its chat template, or `chat_template_file`) of `model_dir`.
    pub fn load(model_dir: &Path, chat_template_file: Option<&Path>) -> Result<Self> {
        let tok = Tokenizer::from_model_dir(model_dir)?;
        let (source, template_source) = match chat_template_file {
            Some(p) => (crate::data::textfile::read_utf8(p)?, p.display().to_string()),
            None => match tok.chat_template() {
                Some(t) => (t.to_string(), "the model's chat_template".to_string()),
                None => (FALLBACK_CHAT_TEMPLATE.to_string(), "ChatML (the model has no chat_template)".to_string()),
            },
        };
        let name = |id: Option<u32>| id.and_then(|i| tok.decode(&[i]).ok()).unwrap_or_default();
        let template = ChatTemplate::new(&source, &name(tok.bos_id()), &name(tok.eos_id()))
            .map_err(|e| e.context(format!("chat template ({template_source})")))?;
        let mut stop_ids: Vec<u32> = tok.eos_id().into_iter().collect();
        stop_ids.extend(config_eos(&model_dir.join("config.json")));
        stop_ids.extend(config_eos(&model_dir.join("generation_config.json")));
        stop_ids.extend(END_OF_TURN_TOKENS.iter().filter_map(|t| tok.token_to_id(t)));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Prompter { tok, template, template_source, template_text: source, stop_ids, tools: None })
    }

    /// Add the loaded model's EOS (from its config) to the stop tokens.
    pub fn add_stop_id(&mut self, id: Option<u32>) {
        if let Some(id) = id {
            if !self.stop_ids.contains(&id) {
                self.stop_ids.push(id);
            }
        }
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The prompt text of a conversation, ending with the assistant's generation prompt.
    pub fn render_chat(&self, messages: &[Value]) -> Result<String> {
        self.render_chat_tools(messages, None)
    }

    /// [`Prompter::render_chat`] with the request's `tools` (OpenAI form) passed to the template.
    pub fn render_chat_tools(&self, messages: &[Value], tools: Option<&[Value]>) -> Result<String> {
        let messages = normalize_messages(messages)?;
        self.template.render(&messages, tools, true)
    }

    /// Whether the chat template uses `tools`.
    pub fn template_supports_tools(&self) -> bool {
        self.template.supports_tools()
    }

    /// Ids of a rendered chat prompt. The template already wrote the BOS token when the model
    /// wants one, so a second BOS added by the tokenizer's post-processor is dropped (as
    /// transformers' `apply_chat_template(tokenize=True)` encodes without special tokens).
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tok.encode(text)?;
        if let Some(bos) = self.tok.bos_id() {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// Ids of a plain completion prompt (the tokenizer's default special tokens, as HF
    /// `tokenizer(text)`).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.tok.encode(text)
    }
}

/// The name a model is served under by default: the directory's name (or the hub id as given).
pub fn default_model_name(arg: &str, resolved: &Path) -> String {
    if Path::new(arg).exists() {
        let canon = std::fs::canonicalize(resolved).unwrap_or_else(|_| resolved.to_path_buf());
        if let Some(n) = canon.file_name().and_then(|n| n.to_str()) {
            return n.to_string();
        }
    }
    arg.trim_end_matches('/').to_string()
}

/// A fresh seed for requests that give none.
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut x = t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ (std::process::id() as u64) << 32;
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
