//! `awqc bench`: the benchmark table (model, step, wall time, tokens/s, GFLOP/s, share of the
//! machine's own f32 matmul ceiling measured in the same run, peak RSS). Speed is measured here,
//! never in tests.

use crate::data::calib::{default_data_dir, sample_blocks, CalibConfig};
use crate::data::tokenizer::Tokenizer;
use crate::engine::device::CpuBackend;
use crate::engine::llama::download;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::quant::int4::QuantParams;
use crate::quant::pipeline::{quantize, HfSource, LayerSource, Mode, QuantizeOptions};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full-precision model directory, or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// Perplexity windows (512 tokens each) for the eval step.
    #[arg(long, default_value_t = 8)]
    pub windows: usize,
    /// Calibration blocks (512 tokens each) for the quantize step; 0 skips it.
    #[arg(long, default_value_t = 32)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 64)]
    pub w_group_size: usize,
    /// Tokens decoded (greedy, after a 128-token prompt) for the CPU decode rows of the fp and the
    /// AWQ model; 0 skips them.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Size of the square f32 matmul that measures the ceiling.
    #[arg(long, default_value_t = 4096)]
    pub matmul_size: usize,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub model: String,
    pub step: String,
    pub seconds: f64,
    pub tokens_per_second: Option<f64>,
    pub gflops: Option<f64>,
    /// Achieved GFLOP/s over the measured matmul ceiling.
    pub of_ceiling: Option<f64>,
    pub peak_rss_mib: f64,
}

/// The CPU decode row of the model at `dir`: `tokens` greedy tokens after a 128-token prompt
/// (`awqc bench-decode --device cpu`'s loop). GFLOP/s counts the linears and the LM head, 2 flops
/// per weight per token.
fn decode_row(
    rows: &mut Vec<Row>,
    push: &impl Fn(&mut Vec<Row>, &str, f64, Option<f64>, Option<f64>, f64),
    dir: &std::path::Path,
    label: &str,
    tokens: usize,
    ceiling: f64,
) -> Result<()> {
    if tokens == 0 {
        return Ok(());
    }
    use crate::cli::gpu::{decode_on, BenchDecodeArgs};
    use crate::engine::device::DeviceKind;
    let args = BenchDecodeArgs { model: dir.display().to_string(), revision: Default::default(), device: DeviceKind::Cpu, prompt_tokens: 128, tokens, quant_policy: vec![0], cache_max_entry_count: 0.8 };
    let r = decode_on::<CpuBackend>(Default::default(), dir, &args, DeviceKind::Cpu)?.remove(0);
    // FLOPs per token from the shapes (the weights' bytes per token depend on the format).
    let c = ModelConfig::from_file(&dir.join("config.json"))?;
    let gf = forward_flops_per_token(&c, 128 + tokens / 2) * r.decode_tokens_per_second / 1e9;
    push(rows, &format!("decode {label} cpu: {tokens} tokens after 128"), r.decode_seconds, Some(r.decode_tokens_per_second), Some(gf), ceiling);
    Ok(())
}

/// Peak resident set size of this process in MiB (VmHWM), and a reset of it (Linux).
pub fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Best-of-3 GFLOP/s of `run` (after one warm-up call), which does `flops` operations (or GB/s
/// when given bytes).
pub fn best_of_3_gflops(flops: f64, run: impl Fn()) -> f64 {
    run();
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            run();
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0f64, f64::max)
}

/// Best-of-3 GFLOP/s of an `n x n` f32 matmul on backend `B`.
pub fn matmul_gflops<B: Backend>(n: usize) -> f64 {
    let dev = Default::default();
    let a = Tensor::<B, 2>::random([n, n], Distribution::Default, &dev);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Default, &dev);
    best_of_3_gflops(2.0 * (n as f64).powi(3), || {
        let _ = download(a.clone().matmul(b.clone()).slice([0..1, 0..1]));
    })
}

/// Best-of-3 GFLOP/s of two independent `n x n` f32 matmuls run concurrently on backend `B`
/// (`rayon::join`): the way the search and calibration use the cores (one chunk per core), which
/// on some machines beats one large matmul split across them.
pub fn matmul_pair_gflops<B: Backend>(n: usize) -> f64 {
    let dev = Default::default();
    let mk = || Tensor::<B, 2>::random([n, n], Distribution::Default, &dev);
    let (a, b, c, d) = (mk(), mk(), mk(), mk());
    best_of_3_gflops(2.0 * 2.0 * (n as f64).powi(3), || {
        rayon::join(
            || download(a.clone().matmul(b.clone()).slice([0..1, 0..1])),
            || download(c.clone().matmul(d.clone()).slice([0..1, 0..1])),
        );
    })
}

/// Forward FLOPs per token of a window of `t` tokens: every linear and the LM head (2 per
/// multiply-add) plus attention scores and context over the causal half on average.
pub fn forward_flops_per_token(c: &ModelConfig, t: usize) -> f64 {
    let (h, i, q, kv) = (c.hidden_size as f64, c.intermediate_size as f64, c.q_dim() as f64, c.kv_dim() as f64);
    let linears = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
    let attn = 2.0 * 2.0 * q * (t as f64 + 1.0) / 2.0;
    c.num_hidden_layers as f64 * (2.0 * linears + attn) + 2.0 * h * c.vocab_size as f64
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let model = a.revision.resolve(&a.model)?;
    let name = model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut rows: Vec<Row> = Vec::new();
    let push = |rows: &mut Vec<Row>, step: &str, seconds: f64, tps: Option<f64>, gf: Option<f64>, ceil: f64| {
        let r = Row {
            model: name.clone(),
            step: step.into(),
            seconds,
            tokens_per_second: tps,
            gflops: gf,
            of_ceiling: gf.map(|g| g / ceil),
            peak_rss_mib: peak_rss_mib(),
        };
        if !json {
            eprintln!("  done: {} {:.1}s", r.step, r.seconds);
        }
        rows.push(r);
        reset_peak_rss();
    };

    // 1. The ceiling: a large f32 matmul on the CPU backends, in this same process.
    reset_peak_rss();
    let t0 = Instant::now();
    let flex = matmul_gflops::<CpuBackend>(a.matmul_size);
    let nd = matmul_gflops::<burn::backend::NdArray<f32>>(a.matmul_size);
    let pair = matmul_pair_gflops::<CpuBackend>(a.matmul_size / 2);
    let ceiling = flex.max(nd).max(pair);
    push(
        &mut rows,
        &format!("matmul {0}x{0} f32 (flex {flex:.1}, ndarray {nd:.1}, 2x{1} {pair:.1})", a.matmul_size, a.matmul_size / 2),
        t0.elapsed().as_secs_f64(),
        None,
        Some(ceiling),
        ceiling,
    );

    // 2. Perplexity forward pass.
    let tok = Tokenizer::from_model_dir(&model)?;
    let dev = Default::default();
    let t0 = Instant::now();
    let lm = crate::engine::load::load_model::<CpuBackend>(&model, &Default::default(), &dev)?;
    push(&mut rows, "load model (f32)", t0.elapsed().as_secs_f64(), None, None, ceiling);
    let text = crate::cli::eval::eval_text("wikitext2", None, a.data_dir.as_deref())?;
    let t0 = Instant::now();
    let tokens = tok.encode(&text)?;
    push(&mut rows, "tokenize eval text", t0.elapsed().as_secs_f64(), Some(tokens.len() as f64 / t0.elapsed().as_secs_f64()), None, ceiling);
    let w = crate::data::eval_text::windows(&tokens, 512, Some(a.windows));
    let r = crate::engine::ppl::perplexity(&lm.model, &w)?;
    let n_tok = (r.windows * 512) as f64;
    let gf = n_tok * forward_flops_per_token(&lm.model.config, 512) / r.seconds / 1e9;
    push(&mut rows, &format!("eval fp {}x512 (ppl {:.3})", r.windows, r.ppl), r.seconds, Some(r.tokens_per_second), Some(gf), ceiling);
    drop(lm);
    decode_row(&mut rows, &push, &model, "fp", a.decode_tokens, ceiling)?;

    // 3. Quantization, split by step.
    if a.calib_samples > 0 {
        let src = HfSource::open(&model)?;
        let cc = CalibConfig { dataset: "c4".into(), sampling: Default::default(), n_samples: a.calib_samples, seqlen: 512, seed: 0, data_dir: a.data_dir.clone().unwrap_or_else(default_data_dir) };
        let blocks = sample_blocks(&cc, &tok)?;
        let opts = QuantizeOptions {
            mode: Mode::Awq,
            params: QuantParams::new(4, a.w_group_size)?,
            duo_scaling: true,
            clip: true,
            search_scale: false,
            batch_size: 1,
            n_grid: 20,
            // Both refinements, so that each method's own step is timed in one job.
            gptq: Some(0.01),
            zero_search: true,
            quantized_inputs: false,
            spill: Default::default(),
        };
        let out = std::env::temp_dir().join(format!("awqc-bench-{}", std::process::id()));
        let mut sink = Box::new(crate::formats::awq_gemm::AwqWriter::new(&out, true).with_tokenizer_from(&model));
        let pb = crate::progress::bar(src.config().num_hidden_layers as u64, "quantize");
        let t0 = Instant::now();
        let rep = quantize::<CpuBackend>(&src, &blocks, &opts, sink.as_mut(), &dev, None, |_| pb.inc(1))?;
        crate::quant::qmodel::QuantSink::finish(sink)?;
        let total = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let t = &rep.timings;
        let toks = rep.calib_tokens as f64;
        let label = format!("quantize AWQ+zero-search+GPTQ g{} c4 {}x512", a.w_group_size, a.calib_samples);
        let search_gf = rep.search_flops / (t.search + t.clip) / 1e9;
        let calib_gf = toks * forward_flops_per_token(src.config(), 512) / t.calibration.max(1e-9) / 1e9;
        for (step, s, gf) in [
            (format!("{label}: total"), total, None),
            ("  calibration forward".to_string(), t.calibration, Some(calib_gf)),
            ("  scale search".to_string(), t.search, None),
            ("  clip search".to_string(), t.clip, None),
            ("  search + clip".to_string(), t.search + t.clip, Some(search_gf)),
            ("  input Hessians".to_string(), t.hessians, None),
            ("  zero search (--zero-search)".to_string(), t.zero_search, None),
            ("  GPTQ (--gptq)".to_string(), t.gptq, None),
            ("  check against RTN".to_string(), t.check, None),
            ("  pack (quantize)".to_string(), t.pack, None),
            ("  export + load".to_string(), t.export + t.load, None),
        ] {
            let r = Row { model: name.clone(), step, seconds: s, tokens_per_second: if s == total { Some(toks / total) } else { None }, gflops: gf, of_ceiling: gf.map(|g| g / ceiling), peak_rss_mib: peak_rss_mib() };
            rows.push(r);
        }
        reset_peak_rss();
        let decoded = decode_row(&mut rows, &push, &out, &format!("AWQ+zs+GPTQ g{}", a.w_group_size), a.decode_tokens, ceiling);
        let _ = std::fs::remove_dir_all(&out);
        decoded?;
    }

    if json {
        crate::cli::print_json(&json!({"ceiling_gflops": ceiling, "rows": rows}));
    } else {
        println!("{:<14} {:<48} {:>9} {:>10} {:>9} {:>8} {:>9}", "model", "step", "wall s", "tokens/s", "GFLOP/s", "ceiling", "peak RSS");
        for r in &rows {
            let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
            println!(
                "{:<14} {:<48} {:>9.2} {:>10} {:>9} {:>8} {:>7.0}Mi",
                r.model, r.step, r.seconds, f(r.tokens_per_second, 1), f(r.gflops, 1),
                r.of_ceiling.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "-".into()), r.peak_rss_mib
            );
        }
    }
    if rows.is_empty() {
        return Err(Error::internal("no benchmark ran"));
    }
    Ok(())
}
