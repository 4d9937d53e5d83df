//! `awqc calibrate`: run the calibration set through the full-precision model and save, for the
//! input of every linear, per-channel max / min / absmax / mean / absmean (f32) in a safetensors
//! file keyed `{module}.{stat}` (lmdeploy's `inputs_stats.pth`). Linears that share an input
//! (q/k/v, gate/up) share one record, keyed by the first; `__metadata__` lists the sharing.

use crate::data::tokenizer::Tokenizer;
use crate::engine::device::{self, DeviceKind};
use crate::error::{Error, IoContext, Result};
use crate::formats::safetensors_writer::{SafetensorsWriter, TensorSpec};
use crate::quant::calibrate::{collect_stats, InputStats};
use crate::quant::pipeline::{HfSource, LayerSource};
use burn::tensor::backend::Backend;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Full-precision model directory, or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// Output file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub calib: crate::cli::CalibArgs,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long)]
    pub force: bool,
}

fn run_on<B: Backend>(dev: B::Device, src: &HfSource, blocks: &[Vec<u32>], bs: usize) -> Result<Vec<InputStats>> {
    let pb = crate::progress::bar(src.config().num_hidden_layers as u64, "calibrate");
    let r = collect_stats::<B>(src, blocks, bs, &dev, |_| pb.inc(1));
    pb.finish_and_clear();
    r
}

pub fn run(a: Args, json: bool) -> Result<()> {
    if a.calib.calib_samples == 0 {
        return Err(Error::usage("--calib-samples must be at least 1 for calibration"));
    }
    a.calib.check()?;
    crate::fsutil::check_output_path(&a.out, a.force)?;
    let kind = device::resolve(a.device)?;
    let model = a.revision.resolve(&a.model)?;
    let src = HfSource::open(&model)?;
    let tok = Tokenizer::from_model_dir(&model)?;
    let blocks = a.calib.sample(&tok)?;
    let t0 = std::time::Instant::now();
    let stats = crate::with_backend!(kind, run_on(&src, &blocks, a.calib.batch_size))?;
    let secs = t0.elapsed().as_secs_f64();

    let names = ["max", "min", "absmax", "mean", "absmean"];
    let mut specs = Vec::new();
    let mut sharing = serde_json::Map::new();
    for s in &stats {
        let key = &s.modules[0];
        for n in names {
            specs.push(TensorSpec::new(format!("{key}.{n}"), "F32", &[s.stats.channels()]));
        }
        sharing.insert(key.clone(), json!(s.modules));
    }
    let meta_sharing = serde_json::to_string(&sharing).unwrap_or_default();
    let meta_tokens = (blocks.len() * a.calib.calib_seqlen).to_string();
    let tmp = a.out.with_extension("awqc-tmp");
    let written = (|| -> Result<()> {
        let mut w = SafetensorsWriter::create(
            &tmp,
            specs,
            &[("format", "pt"), ("shared_inputs", &meta_sharing), ("tokens", &meta_tokens), ("dataset", &a.calib.calib_dataset)],
        )?;
        for s in &stats {
            let st = &s.stats;
            let vals: [Vec<f64>; 5] = [st.max.clone(), st.min.clone(), st.absmax.clone(), st.mean(), st.absmean()];
            for (n, v) in names.iter().zip(vals) {
                let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                w.write(&format!("{}.{n}", s.modules[0]), bytemuck::cast_slice(&f))?;
            }
        }
        w.finish()
    })();
    // A failed write leaves nothing behind: neither a partial output nor the temporary file.
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &a.out).at(a.out.display())) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if json {
        crate::cli::print_json(&json!({"out": a.out.display().to_string(), "records": stats.len(), "tokens": blocks.len() * a.calib.calib_seqlen, "seconds": secs}));
    } else {
        println!("wrote {} ({} input records, {} tokens, {:.1}s)", a.out.display(), stats.len(), blocks.len() * a.calib.calib_seqlen, secs);
    }
    Ok(())
}
