//! `awqc bench-engine`: the CPU engine's serving numbers for one or more models, side by side:
//! resident memory after load against the checkpoint's size, prefill of a 512-token prompt, and
//! decode at batch 1, 8 and 16 (aggregate tokens/s through the batched step). Each figure is set
//! against the machine's own ceilings measured in the same run: memory bandwidth (decode is bound
//! by reading the weights) and an f32 matmul (prefill is bound by arithmetic). `--kernels` adds
//! the W4A8 kernel copies (AVX2, AVX-512-VNNI, AMX) timed alone on the model's own MLP weights.

use crate::cli::bench::{best_of_3_gflops, forward_flops_per_token};
use crate::engine::device::CpuBackend;
use crate::engine::host::{Activations, StepItem};
use clap::ValueEnum;
use crate::engine::kv_cache::{QuantPolicy, SeqState};
use crate::engine::llama::Llama;
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directories (HF, AutoAWQ or TurboMind) or hub ids `org/name[@revision]`, each measured in turn.
    #[arg(long, required = true, num_args = 1..)]
    pub model: Vec<String>,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// Tokens decoded per sequence (after a `--decode-context`-token prompt).
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Prompt length before the decode rows' tokens (the context their attention reads).
    #[arg(long, default_value_t = 128)]
    pub decode_context: usize,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    pub batch: Vec<usize>,
    /// Prompt length of the prefill row.
    #[arg(long, default_value_t = 512)]
    pub prefill_tokens: usize,
    /// Run the dequantized f32 burn model instead of the host model (the old CPU path).
    #[arg(long)]
    pub dequantize: bool,
    /// INT4 models: activations the kernels multiply with.
    #[arg(long, value_enum, default_value = "int8")]
    pub activations: Activations,
    /// KV cache of the decode rows: 0 (f32), 8 (int8) or 4 (int4), lmdeploy's `--quant-policy`.
    #[arg(long, default_value_t = 0)]
    pub quant_policy: u32,
    /// Also time every W4A8 kernel copy this CPU runs (portable excluded) on the model's first
    /// layer's gate/up and down weights at M = 1, 16 and 512 rows (INT4 models with int8
    /// activations; other models get no kernel rows).
    #[arg(long)]
    pub kernels: bool,
    /// Ceilings measured by a parent run (several models are measured one per process).
    #[arg(long, hide = true)]
    pub bandwidth_gbps: Option<f64>,
    #[arg(long, hide = true)]
    pub ceiling_gflops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineRow {
    pub model: String,
    pub step: String,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// GB/s of weights read (decode) or GFLOP/s (prefill).
    pub rate: f64,
    pub unit: &'static str,
    /// `rate` over the machine's measured bandwidth (decode) or f32 matmul ceiling (prefill).
    pub of_ceiling: f64,
}

/// Read bandwidth of this machine in GB/s: best of 3 passes over 1 GiB on all threads (16
/// independent lanes per task so the sum vectorises and the loads, not the adds, limit it).
pub fn memory_bandwidth_gbps() -> f64 {
    let buf: Vec<f32> = (0..(1usize << 28)).into_par_iter().map(|i| (i & 7) as f32).collect();
    best_of_3_gflops((buf.len() * 4) as f64, || {
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for v in c.chunks_exact(16) {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(s);
    })
}

/// f32 matmul ceiling in GFLOP/s (2048³ through the `gemm` crate on all threads, best of 3).
pub fn matmul_ceiling_gflops() -> f64 {
    let n = 2048;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let b = a.clone();
    let c = std::cell::RefCell::new(vec![0f32; n * n]);
    best_of_3_gflops(2.0 * (n as f64).powi(3), || {
        let mut c = c.borrow_mut();
        // SAFETY: three distinct n x n row-major buffers.
        unsafe {
            gemm::gemm(
                n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize, b.as_ptr(), 1, n as isize,
                0.0f32, 1.0f32, false, false, false, gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
    })
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).map(|kb| kb / 1024.0).unwrap_or(f64::NAN)
}

/// Size of a checkpoint's weight files (safetensors, or a TurboMind workspace's weights folder).
fn checkpoint_mib(dir: &Path) -> f64 {
    let tm = dir.join("triton_models").join("weights");
    let (root, all) = if tm.is_dir() { (tm, true) } else { (dir.to_path_buf(), false) };
    let bytes: u64 = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| all || e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1 << 20) as f64
}

/// `n` distinct pseudo-random prompts of `len` tokens.
fn prompts(n: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..n).map(|s| (0..len).map(|i| ((i * 7919 + s * 104_729 + 3) % vocab) as u32).collect()).collect()
}

/// Decode `tokens` greedy steps for `batch` sequences together; returns seconds.
fn decode_batch(m: &Llama<CpuBackend>, batch: usize, context: usize, tokens: usize, policy: QuantPolicy) -> Result<f64> {
    let c = &m.config;
    let ps = prompts(batch, context, c.vocab_size);
    let mut cache = m.new_cache(policy, 0.5, batch * (context + tokens))?;
    let mut seqs: Vec<SeqState> = ps.iter().map(|p| SeqState::new(&m.rope, p.len())).collect();
    let mut last: Vec<u32> = Vec::with_capacity(batch);
    for (s, p) in seqs.iter_mut().zip(&ps) {
        let l = m.step(&mut cache, &mut [StepItem { seq: s, tokens: p }])?.remove(0);
        last.push(argmax(&l));
    }
    let t0 = Instant::now();
    for _ in 0..tokens {
        let toks: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let mut items: Vec<StepItem> = seqs.iter_mut().zip(&toks).map(|(s, t)| StepItem { seq: s, tokens: t }).collect();
        let out = m.step(&mut cache, &mut items)?;
        last = out.iter().map(|l| argmax(l)).collect();
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The greedy choice (the sampler at temperature 0).
fn argmax(l: &[f32]) -> u32 {
    let greedy = crate::engine::generate::SamplerConfig { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 };
    crate::engine::generate::sample(l, &greedy, &mut crate::model::synth::SplitMix(0))
}

/// One model's rows and memory line, measured in this process (load first, so the resident
/// size is the model's own).
fn measure(name: &str, a: &Args, ceiling: f64, bw: f64) -> Result<(Vec<EngineRow>, serde_json::Value)> {
    let dir = a.revision.resolve(name)?;
    let label = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| name.to_string());
    let before = rss_mib();
    let opts = crate::engine::load::LoadOptions { dequantize: a.dequantize, activations: a.activations, ..Default::default() };
    let lm = crate::engine::load::load_model::<CpuBackend>(&dir, &opts, &Default::default())?;
    let m = &lm.model;
    let resident = rss_mib() - before;
    let ckpt = checkpoint_mib(&dir);
    let weight_bytes = match &m.host {
        Some(h) => h.weight_bytes() as f64,
        None => ckpt * (1 << 20) as f64,
    };
    let mem = json!({"model": label, "resident_after_load_mib": resident, "checkpoint_mib": ckpt, "ratio": resident / ckpt, "weight_bytes": weight_bytes});
    let mut rows = Vec::new();
    // Prefill: one fresh prompt in one step (best of 2).
    let c = &m.config;
    let p = prompts(1, a.prefill_tokens, c.vocab_size).remove(0);
    let mut cache = m.new_cache(QuantPolicy::None, 0.5, p.len())?;
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let mut seq = SeqState::new(&m.rope, p.len());
        let t0 = Instant::now();
        m.step(&mut cache, &mut [StepItem { seq: &mut seq, tokens: &p }])?;
        best = best.min(t0.elapsed().as_secs_f64());
        cache.release(&mut seq);
    }
    let gf = a.prefill_tokens as f64 * forward_flops_per_token(c, a.prefill_tokens) / best / 1e9;
    rows.push(EngineRow { model: label.clone(), step: format!("prefill {}", a.prefill_tokens), seconds: best, tokens_per_second: a.prefill_tokens as f64 / best, rate: gf, unit: "GFLOP/s", of_ceiling: gf / ceiling });
    let policy = QuantPolicy::from_flag(a.quant_policy)?;
    for &b in &a.batch {
        let s = decode_batch(m, b, a.decode_context, a.decode_tokens, policy)?;
        let gbps = weight_bytes * a.decode_tokens as f64 / s / 1e9;
        rows.push(EngineRow {
            model: label.clone(),
            step: format!(
                "decode batch {b}, {} tokens{}{}",
                a.decode_tokens,
                if a.decode_context == 128 { String::new() } else { format!(" after {}", a.decode_context) },
                if a.quant_policy == 0 { String::new() } else { format!(", kv int{}", a.quant_policy) }
            ),
            seconds: s,
            tokens_per_second: (b * a.decode_tokens) as f64 / s,
            rate: gbps,
            unit: "GB/s",
            of_ceiling: gbps / bw,
        });
    }
    if a.kernels {
        rows.extend(kernel_rows(m, &label, ceiling)?);
    }
    Ok((rows, mem))
}

/// The W4A8 copies on the first layer's gate/up and down weights (`--kernels`): one row per
/// (weight, copy, M), rate in GFLOP/s (2 per multiply-add) against the f32 matmul ceiling. None
/// for a model without such weights (full precision, or `--activations f32`).
fn kernel_rows(m: &Llama<CpuBackend>, label: &str, ceiling: f64) -> Result<Vec<EngineRow>> {
    use crate::engine::host::HostWeight;
    use crate::engine::w4a8_cpu::{available, quantize_rows, w4a8_matmul_with, Isa};
    let layer = m.host.as_ref().and_then(|h| h.layers.first());
    let weights: Vec<_> = layer
        .map(|l| [&l.gate_up, &l.down].into_iter().filter_map(|lin| if let HostWeight::W4A8(p) = &lin.w { Some(p) } else { None }).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for p in weights {
        for rows_m in [1usize, 16, 512] {
            let x: Vec<f32> = (0..rows_m * p.k).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 1e-3).collect();
            let act = quantize_rows(&x, rows_m, p.k, p.group);
            let mut y = vec![0f32; rows_m * p.n];
            for isa in available().into_iter().filter(|&i| i != Isa::Portable) {
                // Calls for at least ~0.2 s, best of 3 such runs.
                w4a8_matmul_with(isa, &act, p, &mut y);
                let t0 = Instant::now();
                w4a8_matmul_with(isa, &act, p, &mut y);
                let reps = ((0.2 / t0.elapsed().as_secs_f64().max(1e-6)) as usize).clamp(1, 10_000);
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        w4a8_matmul_with(isa, &act, p, &mut y);
                    }
                    best = best.min(t0.elapsed().as_secs_f64() / reps as f64);
                }
                let gf = 2.0 * (rows_m * p.n * p.k) as f64 / best / 1e9;
                let copy = format!("{isa:?}").to_lowercase();
                rows.push(EngineRow {
                    model: label.to_string(),
                    step: format!("w4a8 {copy} {}x{} M={rows_m}", p.n, p.k),
                    seconds: best,
                    tokens_per_second: rows_m as f64 / best,
                    rate: gf,
                    unit: "GFLOP/s",
                    of_ceiling: gf / ceiling,
                });
            }
        }
    }
    Ok(rows)
}

pub fn run(a: Args, json: bool) -> Result<()> {
    if a.batch.contains(&0) || a.decode_tokens == 0 || a.prefill_tokens == 0 || a.decode_context == 0 {
        return Err(Error::usage("--batch, --decode-tokens, --decode-context and --prefill-tokens must be > 0"));
    }
    QuantPolicy::from_flag(a.quant_policy)?;
    let mut rows: Vec<EngineRow> = Vec::new();
    let mut mem: Vec<serde_json::Value> = Vec::new();
    let (bw, ceiling);
    if a.model.len() == 1 {
        // Measure the model first (its resident size must not include the ceiling's buffers).
        let (pre_bw, pre_ceiling) = (a.bandwidth_gbps, a.ceiling_gflops);
        bw = pre_bw.unwrap_or(f64::NAN);
        ceiling = pre_ceiling.unwrap_or(f64::NAN);
        let (r, m) = measure(&a.model[0], &a, ceiling, bw)?;
        rows = r;
        mem.push(m);
        if pre_bw.is_none() || pre_ceiling.is_none() {
            let (b2, c2) = (memory_bandwidth_gbps(), matmul_ceiling_gflops());
            for r in rows.iter_mut() {
                r.of_ceiling = r.rate / if r.unit == "GB/s" { b2 } else { c2 };
            }
            return report(json, b2, c2, &rows, &mem);
        }
    } else {
        // Several models: each in its own process (resident memory is per process), with the
        // ceilings measured once here.
        bw = memory_bandwidth_gbps();
        ceiling = matmul_ceiling_gflops();
        let exe = std::env::current_exe().map_err(|e| Error::internal(format!("cannot find the awqc binary: {e}")))?;
        for name in &a.model {
            if !json {
                eprintln!("  measuring {name} ...");
            }
            let batch: Vec<String> = a.batch.iter().map(|b| b.to_string()).collect();
            let out = std::process::Command::new(&exe)
                .args(["--json", "--quiet", "bench-engine", "--model", name, "--decode-tokens", &a.decode_tokens.to_string()])
                .args(["--batch", &batch.join(","), "--prefill-tokens", &a.prefill_tokens.to_string()])
                .args(["--quant-policy", &a.quant_policy.to_string(), "--decode-context", &a.decode_context.to_string()])
                .args(["--bandwidth-gbps", &bw.to_string(), "--ceiling-gflops", &ceiling.to_string()])
                .args(if a.dequantize { vec!["--dequantize"] } else { vec![] })
                .args(if a.kernels { vec!["--kernels"] } else { vec![] })
                .args(["--activations", a.activations.to_possible_value().unwrap().get_name()])
                .output()
                .map_err(|e| Error::internal(format!("cannot run {}: {e}", exe.display())))?;
            if !out.status.success() {
                return Err(Error::internal(format!("bench-engine on {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| Error::internal(format!("bench-engine child output: {e}")))?;
            rows.extend(serde_json::from_value::<Vec<EngineRowIn>>(v["rows"].clone()).map_err(|e| Error::internal(e.to_string()))?.into_iter().map(EngineRowIn::into_row));
            mem.extend(v["memory"].as_array().cloned().unwrap_or_default());
        }
    }
    report(json, bw, ceiling, &rows, &mem)
}

/// A row as read back from a child's JSON.
#[derive(serde::Deserialize)]
struct EngineRowIn {
    model: String,
    step: String,
    seconds: f64,
    tokens_per_second: f64,
    rate: f64,
    unit: String,
    of_ceiling: f64,
}

impl EngineRowIn {
    fn into_row(self) -> EngineRow {
        let unit = if self.unit == "GB/s" { "GB/s" } else { "GFLOP/s" };
        EngineRow { model: self.model, step: self.step, seconds: self.seconds, tokens_per_second: self.tokens_per_second, rate: self.rate, unit, of_ceiling: self.of_ceiling }
    }
}

fn report(json: bool, bw: f64, ceiling: f64, rows: &[EngineRow], mem: &[serde_json::Value]) -> Result<()> {
    if json {
        crate::cli::print_json(&json!({"memory_bandwidth_gbps": bw, "matmul_ceiling_gflops": ceiling, "memory": mem, "rows": rows}));
        return Ok(());
    }
    println!("machine: read bandwidth {bw:.1} GB/s, f32 matmul ceiling {ceiling:.1} GFLOP/s ({} threads)", rayon::current_num_threads());
    println!("{:<22} {:<30} {:>8} {:>10} {:>16} {:>8}", "model", "step", "wall s", "tokens/s", "rate", "ceiling");
    for r in rows {
        println!("{:<22} {:<30} {:>8.5} {:>10.1} {:>8.1} {:<7} {:>7.0}%", r.model, r.step, r.seconds, r.tokens_per_second, r.rate, r.unit, r.of_ceiling * 100.0);
    }
    println!("{:<22} {:>22} {:>16} {:>8}", "model", "resident after load", "checkpoint", "ratio");
    for v in mem {
        println!(
            "{:<22} {:>18.0} MiB {:>12.0} MiB {:>7.2}x",
            v["model"].as_str().unwrap_or(""),
            v["resident_after_load_mib"].as_f64().unwrap_or(0.0),
            v["checkpoint_mib"].as_f64().unwrap_or(0.0),
            v["ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
