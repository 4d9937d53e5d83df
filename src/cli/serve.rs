//! `awqc serve`: the OpenAI-compatible HTTP server (see `awqc::serve`), with lmdeploy
//! `serve api_server`'s flag names. [`EngineArgs`] are shared with `awqc chat`.

use crate::engine::device::DeviceKind;
use crate::engine::host::Activations;
use crate::error::Result;
use crate::serve::model::{default_model_name, EngineOptions};
use crate::serve::{ServeOptions, http::DEFAULT_BODY_LIMIT};
use std::path::PathBuf;

/// The engine flags of `serve` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Model directory (HF, AutoAWQ-GEMM or TurboMind workspace), or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// KV cache: 0 = compute dtype, 8 = int8, 4 = int4.
    #[arg(long, default_value_t = 0)]
    pub quant_policy: u32,
    /// Fraction of free memory after loading the weights that the KV cache may use.
    #[arg(long, default_value_t = 0.8)]
    pub cache_max_entry_count: f64,
    /// Most sequences decoded together in one batched step.
    #[arg(long, default_value_t = 16)]
    pub max_batch_size: usize,
    /// Most requests running + waiting; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// Most tokens (prompt + answer) of one request [default: the model's max_position_embeddings, at most 4096].
    #[arg(long)]
    pub session_len: Option<usize>,
    /// Most prompt tokens prefilled per engine step (long prompts are prefilled in chunks so
    /// running answers keep streaming).
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// A Jinja chat template file to use instead of the model's (ChatML when the model has none).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// CPU, INT4 models: activations the kernels multiply with (int8: integer dot products,
    /// several times faster; f32: the W4A16 arithmetic of the GPU kernels).
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: Activations,
}

impl EngineArgs {
    pub fn options(&self) -> Result<EngineOptions> {
        let model = self.revision.resolve(&self.model)?;
        Ok(EngineOptions {
            model,
            device: self.device,
            quant_policy: self.quant_policy,
            cache_max_entry_count: self.cache_max_entry_count,
            max_batch_size: self.max_batch_size,
            max_concurrent_requests: self.max_concurrent_requests,
            session_len: self.session_len,
            prefill_chunk: self.prefill_chunk,
            chat_template: self.chat_template.clone(),
            activations: self.activations,
        })
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub server_name: String,
    /// Port to listen on (0 = any free port; the listening line says which).
    #[arg(long, default_value_t = 23333)]
    pub server_port: u16,
    /// Accept only requests to /v1 with `Authorization: Bearer KEY` for one of these keys.
    #[arg(long, num_args = 1..)]
    pub api_keys: Vec<String>,
    /// Name of the model in the API [default: the model directory's name].
    #[arg(long)]
    pub model_name: Option<String>,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    pub max_body_bytes: usize,
    /// Tool-call syntax: auto (read from the chat template; a template without one gets a generic
    /// <tool_call> JSON format in the system prompt), hermes (Qwen2.5, Hermes), llama3, internlm2.
    #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(crate::serve::toolcall::PARSER_FLAG_VALUES))]
    pub tool_call_parser: String,
    /// Wait this many milliseconds before loading the model (tests of the 503-while-loading path).
    #[arg(long, default_value_t = 0, hide = true)]
    pub load_delay_ms: u64,
}

pub fn run(a: Args, _json: bool) -> Result<()> {
    let engine = a.engine.options()?;
    let model_name = a.model_name.clone().unwrap_or_else(|| default_model_name(&a.engine.model, &engine.model));
    crate::serve::run(ServeOptions {
        engine,
        host: a.server_name,
        port: a.server_port,
        api_keys: a.api_keys,
        model_name,
        body_limit: a.max_body_bytes,
        load_delay: std::time::Duration::from_millis(a.load_delay_ms),
        tool_call_parser: a.tool_call_parser,
    })
}
