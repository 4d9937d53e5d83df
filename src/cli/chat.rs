//! `awqc chat`: a terminal chat with a model (lmdeploy chat): one line of stdin per user turn,
//! answers streamed to stdout, `exit` or end of input quits. See `awqc::serve::chat`.

use crate::cli::serve::EngineArgs;
use crate::error::Result;
use crate::serve::chat::ChatOptions;
use crate::serve::scheduler::SamplingParams;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// System message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per answer [default: what is left of the session].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the first answer (the n-th answer uses seed + n).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args, _json: bool) -> Result<()> {
    crate::serve::chat::run(ChatOptions {
        engine: a.engine.options()?,
        system: a.system,
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, seed: a.seed },
    })
}
