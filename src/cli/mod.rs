//! The command line: one file per subcommand. Each parses its flags into the library's config
//! types and calls the library; output is a human table or, with `--json`, one JSON document on
//! stdout.

use crate::error::Result;
use clap::{Parser, Subcommand};

pub mod bench;
pub mod bench_engine;
pub mod calibrate;
pub mod chat;
pub mod convert;
pub mod data;
pub mod eval;
pub mod generate;
pub mod gpu;
pub mod inspect;
pub mod quantize;
pub mod serve;
pub mod synth;

#[derive(Parser, Debug)]
#[command(name = "awqc", version, about = "Offline AWQ quantization and model-conversion compiler")]
pub struct Cli {
    /// Print one machine-readable JSON report on stdout (and no progress bars).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars or status lines.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a GGUF file to a Hugging Face model directory, or an AutoAWQ checkpoint to a TurboMind workspace.
    Convert(convert::Args),
    /// Print a model's architecture, tensors, dtypes and parameter count.
    Inspect(inspect::Args),
    /// Measure perplexity (the pinned protocol; see README).
    Eval(eval::Args),
    /// Generate text (streamed) from a model, optionally through its chat template.
    Generate(generate::Args),
    /// Run the calibration set through the model and save per-channel input statistics.
    Calibrate(calibrate::Args),
    /// Quantize a model to group-wise INT4 with AWQ (or lmdeploy's smoothing) and export it.
    Quantize(quantize::Args),
    /// Build the bundled calibration datasets (calib_data/build/*.parquet).
    Data(data::Args),
    /// Benchmark table: matmul ceiling, eval and quantize throughput, peak RSS.
    Bench(bench::Args),
    /// Write a random-weight model of any Llama shape (HF directory, or AutoAWQ with --quantized).
    Synth(synth::Args),
    /// Check every GPU kernel against host references on this machine's device (exit 4 on failure).
    KernelTest(gpu::KernelTestArgs),
    /// Benchmark the W4A16 kernels against a dense matmul and the device copy bandwidth.
    BenchGpu(gpu::BenchGpuArgs),
    /// Decode speed of a model (tokens/s), e.g. one written by `awqc synth --quantized`.
    BenchDecode(gpu::BenchDecodeArgs),
    /// CPU engine table: resident memory, prefill and batched decode speed against the machine's ceilings.
    BenchEngine(bench_engine::Args),
    /// OpenAI-compatible HTTP server with continuous batching, Swagger UI and a web chat page.
    Serve(serve::Args),
    /// Chat with a model in the terminal (one line of stdin per turn; `exit` quits).
    Chat(chat::Args),
}

pub fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.cmd {
        Command::Convert(a) => convert::run(a, json),
        Command::Inspect(a) => inspect::run(a, json),
        Command::Eval(a) => eval::run(a, json),
        Command::Generate(a) => generate::run(a, json),
        Command::Calibrate(a) => calibrate::run(a, json),
        Command::Quantize(a) => quantize::run(a, json),
        Command::Data(a) => data::run(a, json),
        Command::Bench(a) => bench::run(a, json),
        Command::Synth(a) => synth::run(a, json),
        Command::KernelTest(a) => gpu::kernel_test(a, json),
        Command::BenchGpu(a) => gpu::bench_gpu(a, json),
        Command::BenchDecode(a) => gpu::bench_decode(a, json),
        Command::BenchEngine(a) => bench_engine::run(a, json),
        Command::Serve(a) => serve::run(a, json),
        Command::Chat(a) => chat::run(a, json),
    }
}

/// The calibration-set flags shared by `quantize` and `calibrate` (lmdeploy's names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct CalibArgs {
    /// Calibration dataset: c4, wikitext2 (bundled), or a .parquet/.jsonl/.txt file.
    #[arg(long, default_value = "c4")]
    pub calib_dataset: String,
    /// How blocks are drawn: lmdeploy (random windows, seeded), autoawq (AutoAWQ's
    /// get_calib_dataset: documents in order, each <= --calib-seqlen tokens, --calib-samples of
    /// them concatenated and cut), contiguous (the first --calib-samples blocks of the joined text).
    #[arg(long, value_enum, default_value = "lmdeploy")]
    pub calib_sampling: crate::data::calib::CalibSampling,
    /// Number of calibration blocks (`quantize`: 0 = no calibration, round-to-nearest;
    /// `--calib-sampling autoawq`: documents).
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    /// Tokens per calibration block.
    #[arg(long, default_value_t = 2048)]
    pub calib_seqlen: usize,
    /// Calibration sequences per forward chunk (and per ratio-search chunk with --search-scale).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Seed of the calibration sampler (lmdeploy uses 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the bundled calibration/eval datasets.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

impl CalibArgs {
    /// Refuse flag values that are wrong whatever the model (called before any work).
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(crate::error::Error::usage("--batch-size must be at least 1"));
        }
        Ok(())
    }

    /// Sample the calibration blocks (none for `--calib-samples 0`).
    pub fn sample(&self, tok: &crate::data::tokenizer::Tokenizer) -> Result<Vec<Vec<u32>>> {
        use crate::data::calib::{default_data_dir, sample_blocks, CalibConfig};
        if self.calib_samples == 0 {
            return Ok(Vec::new());
        }
        let cc = CalibConfig {
            dataset: self.calib_dataset.clone(),
            sampling: self.calib_sampling,
            n_samples: self.calib_samples,
            seqlen: self.calib_seqlen,
            seed: self.seed,
            data_dir: self.data_dir.clone().unwrap_or_else(default_data_dir),
        };
        sample_blocks(&cc, tok)
    }
}

/// `--revision`, beside every `--model` that may be a hub id.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Revision {
    /// Hub revision (branch, tag or commit) of a hub-id --model; the same as `org/name@REV` [default: main].
    #[arg(long)]
    pub revision: Option<String>,
}

impl Revision {
    /// `--model` as a path: the local path, or the hub id's snapshot (downloaded when missing).
    pub fn resolve(&self, model: &str) -> Result<std::path::PathBuf> {
        crate::model::weights::resolve_model_path(model, self.revision.as_deref())
    }
}

/// Print a JSON value on stdout (pretty, one document).
pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into()));
}
