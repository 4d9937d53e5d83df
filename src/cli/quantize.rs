//! `awqc quantize`: the main job. Flags follow `lmdeploy lite auto_awq`.

use crate::data::tokenizer::Tokenizer;
use crate::engine::device::{self, DeviceKind};
use crate::error::{Error, Result};
use crate::quant::int4::{QuantParams, ZeroPoint};
use crate::quant::pipeline::{quantize, HfSource, LayerSource, Mode, QuantReport, QuantizeOptions};
use crate::quant::qmodel::{QuantSink, TeeSink};
use crate::quant::resume::JobState;
use burn::tensor::backend::Backend;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Full-precision model directory, or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// Output directory (lmdeploy calls it --work-dir): the AutoAWQ-GEMM checkpoint, or with
    /// `--out-format turbomind` a TurboMind workspace.
    #[arg(long, alias = "work-dir")]
    pub out: PathBuf,
    /// What `--out` holds.
    #[arg(long, value_enum, default_value = "autoawq")]
    pub out_format: OutFormat,
    #[command(flatten)]
    pub calib: crate::cli::CalibArgs,
    /// Also write a TurboMind workspace (lmdeploy 0.9.2 layout) here; needs --w-group-size 128.
    #[arg(long)]
    pub turbomind_out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "awq")]
    pub mode: Mode,
    #[arg(long, default_value_t = 4)]
    pub w_bits: u32,
    #[arg(long, default_value_t = 128)]
    pub w_group_size: usize,
    /// Zero points: `int` (4-bit integers, every format and peer) or `float` (fp16 `-min/scale`,
    /// unrounded, as llama.cpp's Q4_1 keeps a float minimum; only formats with fp16 zeros hold
    /// them: `--out-format turbomind`, read by awqc's engine).
    #[arg(long, value_enum, default_value = "int")]
    pub zero_point: ZeroPoint,
    /// lmdeploy mode: search the smoothing ratio per chunk instead of the fixed 0.5.
    #[arg(long)]
    pub search_scale: bool,
    /// llm-awq's scale formula (x^α) instead of AutoAWQ's duo scaling (x^α / w^(1-α)).
    #[arg(long)]
    pub no_duo_scaling: bool,
    /// Skip the clip search.
    #[arg(long)]
    pub no_clip: bool,
    /// After scaling and clipping, round each linear column by column with GPTQ's error feedback
    /// (inverse Hessian of its calibration inputs); same scales and zero points, so the outputs
    /// load everywhere plain AWQ checkpoints do.
    #[arg(long)]
    pub gptq: bool,
    /// GPTQ dampening: this fraction of the Hessian's mean diagonal is added to its diagonal
    /// (default 0.01).
    #[arg(long)]
    pub gptq_damp: Option<f64>,
    /// Pick each group's stored (scale, zero) by its calibration output error (weighted least
    /// squares around min / max, scored with the input Hessian), on all seven linears; same
    /// format, kept per linear only where it lowers the calibration loss.
    #[arg(long)]
    pub zero_search: bool,
    /// Calibrate each layer on the outputs of the layers before it as quantized (GPTQ's order)
    /// instead of the full-precision model's (AutoAWQ's and lmdeploy's default).
    #[arg(long)]
    pub quantized_inputs: bool,
    /// Replace existing outputs (and discard a resume state that belongs to another job).
    #[arg(long)]
    pub force: bool,
    /// Start from layer 0 even if a resume state of this job exists.
    #[arg(long)]
    pub no_resume: bool,
    /// After quantizing, print the fp / RTN / AWQ perplexity table (ci protocol).
    #[arg(long)]
    pub eval: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Cap on the calibration activations held in memory (e.g. 4G, 512M; binary units): chunks
    /// beyond it are written to the job's state directory and read back when used. The output is
    /// the same; only the time changes. Default: no cap.
    #[arg(long, value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

/// The format of `--out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutFormat {
    /// AutoAWQ GEMM safetensors (vLLM, AutoAWQ, transformers, lmdeploy load it).
    Autoawq,
    /// TurboMind workspace (lmdeploy 0.9.2 layout; group size 128).
    Turbomind,
}

/// A byte count: a number with an optional K, M, G or T suffix (powers of 1024; "KiB", "GB" and
/// the like are read the same way).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 4G, 512M, 1073741824)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches('B').trim_end_matches('I') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

fn options(a: &Args) -> Result<QuantizeOptions> {
    a.calib.check()?;
    if a.search_scale && a.mode != Mode::Lmdeploy {
        return Err(Error::usage("--search-scale belongs to --mode lmdeploy (awq mode always searches)"));
    }
    if a.zero_point == ZeroPoint::Float {
        if a.out_format != OutFormat::Turbomind {
            return Err(Error::usage(
                "--zero-point float: the AutoAWQ GEMM checkpoint (--out-format autoawq, the default) stores 4-bit integer zero points; use --out-format turbomind (fp16 zeros, group size 128)",
            ));
        }
        if a.gptq {
            return Err(Error::usage("--zero-point float does not combine with --gptq yet (its feedback rounds with integer zero points)"));
        }
    }
    if a.out_format == OutFormat::Turbomind && a.turbomind_out.is_some() {
        return Err(Error::usage("--turbomind-out: --out is already a TurboMind workspace (--out-format turbomind)"));
    }
    Ok(QuantizeOptions {
        mode: a.mode,
        params: QuantParams::new(a.w_bits, a.w_group_size)?.with_zero(a.zero_point),
        duo_scaling: !a.no_duo_scaling,
        clip: !a.no_clip,
        search_scale: a.search_scale,
        batch_size: a.calib.batch_size,
        n_grid: 20,
        gptq: gptq_damp(a)?,
        zero_search: needs_calibration(a, a.zero_search, "--zero-search")?,
        quantized_inputs: needs_calibration(a, a.quantized_inputs, "--quantized-inputs")?,
        spill: Default::default(),
    })
}

/// `--gptq` with its dampening checked (`None` without `--gptq`).
fn gptq_damp(a: &Args) -> Result<Option<f64>> {
    match (a.gptq, a.gptq_damp) {
        (false, Some(_)) => Err(Error::usage("--gptq-damp needs --gptq")),
        (false, None) => Ok(None),
        (true, d) => {
            let d = d.unwrap_or(crate::quant::gptq::DEFAULT_DAMP);
            if !(d > 0.0 && d <= 1.0) {
                return Err(Error::usage(format!("--gptq-damp {d}: must be in (0, 1] (a fraction of the Hessian's mean diagonal; GPTQ uses 0.01)")));
            }
            needs_calibration(a, true, "--gptq")?;
            Ok(Some(d))
        }
    }
}

/// A flag that works on calibration inputs (`flag` names it): refused with `--calib-samples 0`.
fn needs_calibration(a: &Args, on: bool, flag: &str) -> Result<bool> {
    if on && a.calib.calib_samples == 0 {
        return Err(Error::usage(format!("{flag} needs calibration data (--calib-samples is 0)")));
    }
    Ok(on)
}

fn run_on<B: Backend>(
    dev: B::Device,
    src: &HfSource,
    blocks: &[Vec<u32>],
    opts: &QuantizeOptions,
    sink: &mut dyn QuantSink,
    resume: Option<(&JobState, usize)>,
) -> Result<QuantReport> {
    let n = src.config().num_hidden_layers;
    let pb = crate::progress::bar(n as u64, "quantize");
    let r = quantize::<B>(src, blocks, opts, sink, &dev, resume, |l| {
        let a: Vec<String> = l.groups.iter().map(|g| format!("{}={:.2}", g.group, g.alpha)).collect();
        pb.set_message(format!("layer {} ({:.1}s) alpha {}", l.layer, l.seconds, a.join(" ")));
        pb.inc(1);
    });
    pb.finish_and_clear();
    if let Ok(rep) = &r {
        for w in rep.layers.iter().flat_map(|l| &l.warnings) {
            crate::progress::status(&format!("warning: {w}"));
        }
    }
    r
}

/// The report file written next to the output (kept out of the checkpoint so the checkpoint's
/// bytes do not depend on timings).
pub fn report_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!("{name}.report.json"))
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let mut opts = options(&a)?;
    let kind = device::resolve(a.device)?;
    let model = a.revision.resolve(&a.model)?;
    let src = HfSource::open(&model)?;
    crate::quant::pipeline::check_group_size(&src.config, opts.params)?;
    let tm_flag = if a.out_format == OutFormat::Turbomind { Some("--out-format turbomind") } else { a.turbomind_out.as_ref().map(|_| "--turbomind-out") };
    if let Some(flag) = tm_flag {
        if opts.params.group != 128 || opts.params.bits != 4 {
            return Err(Error::usage(format!(
                "{flag}: TurboMind loads only 4-bit group-128 weights (got --w-bits {} --w-group-size {})",
                opts.params.bits, opts.params.group
            )));
        }
    }
    if opts.params.bits != 4 {
        return Err(Error::usage(format!(
            "--w-bits {}: the outputs (AutoAWQ GEMM, TurboMind) hold 4-bit weights only",
            opts.params.bits
        )));
    }
    // Refuse an existing or unwritable output now, not after the calibration and search.
    for o in std::iter::once(&a.out).chain(a.turbomind_out.as_ref()) {
        crate::fsutil::check_output_path(o, a.force)?;
    }
    let tok = Tokenizer::from_model_dir(&model)?;
    let t0 = std::time::Instant::now();
    let blocks = a.calib.sample(&tok)?;
    let sampling_s = t0.elapsed().as_secs_f64();
    let c = &src.config;
    // The large buffers of one layer, per calibration token (f32): the residual stream, the q/k/v,
    // o_proj, gate/up and down_proj inputs, and the search's full-precision block output.
    let per_token = (4 * c.hidden_size + c.q_dim() + c.intermediate_size) * 4;
    let act_bytes = blocks.len() * a.calib.calib_seqlen * per_token;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    crate::progress::status(&format!(
        "awqc: {} layers, {} calibration blocks x {} tokens; per-layer activations {:.1} MiB",
        c.num_hidden_layers,
        blocks.len(),
        a.calib.calib_seqlen,
        mib(act_bytes)
    ));
    // --max-memory: how many chunks of each activation list may stay in memory. Two more chunks
    // per list are read back at a time while it is used.
    let chunk_bytes = a.calib.batch_size.min(blocks.len().max(1)) * a.calib.calib_seqlen * per_token;
    let keep = match a.max_memory {
        Some(cap) if !blocks.is_empty() && (cap as usize) < act_bytes => {
            let fit = cap as usize / chunk_bytes;
            if fit < crate::quant::chunks::READ_BATCH {
                return Err(Error::usage(format!(
                    "--max-memory {cap} bytes ({:.1} MiB): below two calibration chunks' activations ({:.1} MiB each at --batch-size {} x --calib-seqlen {}); raise it, or lower --batch-size or --calib-seqlen",
                    mib(cap as usize), mib(chunk_bytes), a.calib.batch_size, a.calib.calib_seqlen
                )));
            }
            let n_chunks = blocks.len().div_ceil(a.calib.batch_size);
            let keep = fit - crate::quant::chunks::READ_BATCH;
            crate::progress::status(&format!(
                "awqc: --max-memory {:.1} MiB: {keep} of {n_chunks} chunks per activation list in memory, the rest on disk",
                mib(cap as usize)
            ));
            Some(keep)
        }
        _ => None,
    };

    let mut sinks: Vec<Box<dyn QuantSink>> = match a.out_format {
        OutFormat::Autoawq => vec![Box::new(crate::formats::awq_gemm::AwqWriter::new(&a.out, a.force).with_tokenizer_from(&model))],
        OutFormat::Turbomind => vec![Box::new(crate::formats::turbomind::TurbomindWriter::new(&a.out, a.force).with_tokenizer_from(&model))],
    };
    if let Some(tm) = &a.turbomind_out {
        sinks.push(Box::new(crate::formats::turbomind::TurbomindWriter::new(tm, a.force).with_tokenizer_from(&model)));
    }
    let mut tee = Box::new(TeeSink(sinks));
    // Resume state: only calibrated jobs have anything worth saving.
    let state = if blocks.is_empty() {
        None
    } else {
        let opts_json = json!({"options": opts, "bits": opts.params.bits, "group": opts.params.group, "device": kind,
            "turbomind": a.turbomind_out.is_some(), "zero_point": opts.params.zero, "out_format": a.out_format});
        let fp = crate::quant::resume::job_fingerprint(&model, &blocks, &opts_json)?;
        let dir = JobState::dir_for(&a.out);
        if a.no_resume && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        }
        let (st, done) = JobState::open(&dir, &fp, a.force)?;
        if let Some(keep) = keep {
            // Spill files of a killed run are of no use: start the directory afresh.
            let spill = st.dir().join("spill");
            if spill.exists() {
                std::fs::remove_dir_all(&spill).map_err(|e| Error::io(spill.display(), e))?;
            }
            opts.spill = crate::quant::chunks::SpillPolicy::spill_to(spill, keep)?;
        }
        if done > 0 {
            crate::progress::status(&format!("awqc: resuming from layer {done} ({} finished layers in {})", done, dir.display()));
        }
        Some((st, done))
    };
    crate::quant::resume::install_interrupt_handler();
    let resume = state.as_ref().map(|(st, d)| (st, *d));
    let mut rep = crate::with_backend!(kind, run_on(&src, &blocks, &opts, tee.as_mut(), resume))?;
    let t0 = std::time::Instant::now();
    tee.finish()?;
    rep.timings.export += t0.elapsed().as_secs_f64();
    if let Some((st, _)) = state {
        st.finish()?;
    }

    let report = json!({
        "model": model.display().to_string(), "out": a.out.display().to_string(),
        "turbomind_out": a.turbomind_out.as_ref().map(|p| p.display().to_string()),
        "options": opts, "w_bits": opts.params.bits, "w_group_size": opts.params.group, "zero_point": opts.params.zero, "out_format": a.out_format,
        "calib": {"dataset": a.calib.calib_dataset, "sampling": a.calib.calib_sampling, "samples": blocks.len(), "seqlen": a.calib.calib_seqlen, "seed": a.calib.seed, "sampling_seconds": sampling_s,
            "activation_bytes": act_bytes, "max_memory": a.max_memory, "chunks_in_memory": keep},
        "device": kind, "report": rep,
    });
    let rp = report_path(&a.out);
    crate::fsutil::write_file_atomic(&rp, serde_json::to_string_pretty(&report).unwrap_or_default().as_bytes())?;

    let mut table = None;
    if a.eval {
        table = Some(eval_table(&a, &src, &model, &tok, kind)?);
    }
    if json {
        let mut r = report;
        r["report_file"] = json!(rp.display().to_string());
        if let Some(t) = &table {
            r["eval"] = t.json();
        }
        crate::cli::print_json(&r);
    } else {
        let t = &rep.timings;
        println!("wrote       {}{}", a.out.display(), a.turbomind_out.as_ref().map(|p| format!(" and {}", p.display())).unwrap_or_default());
        println!("report      {}", rp.display());
        println!(
            "time        load {:.1}s  calibration {:.1}s  search {:.1}s  clip {:.1}s{}{}{}  pack {:.1}s  check {:.1}s  export {:.1}s",
            t.load, t.calibration, t.search, t.clip,
            if a.gptq || a.zero_search { format!("  hessians {:.1}s", t.hessians) } else { String::new() },
            if a.zero_search { format!("  zero-search {:.1}s", t.zero_search) } else { String::new() },
            if a.gptq { format!("  gptq {:.1}s", t.gptq) } else { String::new() },
            t.pack, t.check, t.export
        );
        if let Some(t) = &table {
            println!("\nperplexity ({} windows x {} tokens of {}):", EVAL_WINDOWS, EVAL_SEQLEN, EVAL_DATASET);
            println!("  {:<8} {:>10} {:>10}", "model", "PPL", "gap");
            for (name, ppl, gap) in t.rows() {
                println!("  {:<8} {:>10.4} {:>10}", name, ppl, gap.map(|g| format!("{g:+.4}")).unwrap_or_default());
            }
        }
    }
    // A calibrated model worse than plain rounding is a failed job (the output stays for a look).
    if let Some(t) = &table {
        if t.label != "rtn" && !(t.quantized <= t.rtn) {
            return Err(Error::check(format!(
                "the quantized model's perplexity {:.4} is worse than round-to-nearest's {:.4} ({EVAL_DATASET}, ci protocol); {} of its layers had a larger output error than round-to-nearest (see {})",
                t.quantized,
                t.rtn,
                rep.worse_than_rtn.len(),
                rp.display()
            )));
        }
    }
    Ok(())
}

/// The `--eval` protocol ("ci"): windows of the evaluation text.
const EVAL_DATASET: &str = "wikitext2";
const EVAL_SEQLEN: usize = 512;
const EVAL_WINDOWS: usize = 32;

/// fp / RTN / quantized perplexity (`--eval`).
struct EvalTable {
    fp: f64,
    rtn: f64,
    quantized: f64,
    /// The quantized model's row: awq, lmdeploy, or rtn when nothing was calibrated.
    label: &'static str,
}

impl EvalTable {
    /// (name, PPL, gap to fp) per row.
    fn rows(&self) -> [(&'static str, f64, Option<f64>); 3] {
        [("fp", self.fp, None), ("rtn", self.rtn, Some(self.rtn - self.fp)), (self.label, self.quantized, Some(self.quantized - self.fp))]
    }

    fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self.rows().iter().map(|(name, ppl, gap)| json!({"name": name, "ppl": ppl, "gap": gap})).collect();
        json!({"dataset": EVAL_DATASET, "seqlen": EVAL_SEQLEN, "windows": EVAL_WINDOWS, "rows": rows})
    }
}

/// fp / RTN / quantized perplexity on the ci protocol. RTN is computed in memory.
fn eval_table(a: &Args, src: &HfSource, model: &Path, tok: &Tokenizer, kind: DeviceKind) -> Result<EvalTable> {
    let (seqlen, windows) = (EVAL_SEQLEN, Some(EVAL_WINDOWS));
    let text = crate::cli::eval::eval_text(EVAL_DATASET, None, a.calib.data_dir.as_deref())?;
    let fp = crate::cli::eval::evaluate(model, tok, &text, EVAL_DATASET, seqlen, windows, kind)?.result.ppl;
    let quantized = crate::cli::eval::evaluate(&a.out, tok, &text, EVAL_DATASET, seqlen, windows, kind)?.result.ppl;
    let tokens = tok.encode(&text)?;
    let rtn = crate::with_backend!(kind, rtn_ppl(src, a.w_bits, a.w_group_size, &tokens, seqlen, windows))?;
    let label = match a.mode {
        Mode::Awq if a.calib.calib_samples > 0 => "awq",
        Mode::Lmdeploy if a.calib.calib_samples > 0 => "lmdeploy",
        _ => "rtn",
    };
    Ok(EvalTable { fp, rtn, quantized, label })
}

fn rtn_ppl<B: Backend>(dev: B::Device, src: &HfSource, bits: u32, group: usize, tokens: &[u32], seqlen: usize, windows: Option<usize>) -> Result<f64> {
    let opts = QuantizeOptions {
        mode: Mode::Awq,
        params: QuantParams::new(bits, group)?,
        duo_scaling: true,
        clip: false,
        search_scale: false,
        batch_size: 1,
        n_grid: 20,
        gptq: None,
        zero_search: false,
        quantized_inputs: false,
        spill: Default::default(),
    };
    let mut sink = crate::quant::qmodel::CollectSink::default();
    quantize::<B>(src, &[], &opts, &mut sink, &dev, None, |_| {})?;
    let qm = sink.model.ok_or_else(|| Error::internal("RTN produced no model"))?;
    let m = crate::engine::llama::Llama::<B>::from_host(&qm.config, &qm.globals, |i| Ok(qm.dequantized_layer(i)), &dev)?;
    let w = crate::data::eval_text::windows(tokens, seqlen, windows);
    Ok(crate::engine::ppl::perplexity(&m, &w)?.ppl)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units_and_bad_ones_are_refused() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4gb"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size(" 2T "), Ok(2 << 40));
        for bad in ["", "G", "10X", "-1G", "0", "1e3", "1.2.3M", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
