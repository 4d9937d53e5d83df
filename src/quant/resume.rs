//! Resumable jobs. After each finished decoder layer, `awqc quantize` saves that layer's search
//! result (folded scales per group, clip thresholds per linear, the report) in a state directory
//! next to the output. Rerunning the same command after a kill or Ctrl-C replays the saved layers
//! (reload weights, fold, clip, quantize: cheap and deterministic) and continues from the first
//! unfinished one, so the final files are byte-identical to an uninterrupted run.
//!
//! A job is identified by a fingerprint of everything that determines its output (model config and
//! weight headers, calibration tokens, options, awqc version); a state directory of another job is
//! never reused.

use crate::error::{Error, IoContext, Result};
use crate::formats::safetensors_writer::{SafetensorsWriter, TensorSpec};
use crate::model::arch::{LinearKind, ScaleGroup};
use crate::model::weights::SafetensorsRepo;
use crate::quant::pipeline::LayerReport;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Install the Ctrl-C handler: the job stops at the next layer boundary with a resume hint.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: stop now.
            std::process::exit(130);
        }
        eprintln!("\nawqc: interrupt received, stopping after the current layer (Ctrl-C again to abort now)");
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What a finished layer leaves behind.
#[derive(Debug, Clone)]
pub struct LayerResult {
    pub scales: Vec<(ScaleGroup, Vec<f64>)>,
    /// Per-(row, group) clip threshold of each clipped linear, `[N * K/g]`.
    pub clips: Vec<(LinearKind, Vec<f32>)>,
    pub report: LayerReport,
}

pub struct JobState {
    dir: PathBuf,
}

const GROUPS: [ScaleGroup; 4] = [ScaleGroup::AttnIn, ScaleGroup::AttnOut, ScaleGroup::MlpIn, ScaleGroup::MlpOut];

fn group_by_name(n: &str) -> Option<ScaleGroup> {
    GROUPS.into_iter().find(|g| g.name() == n)
}

fn linear_by_name(n: &str) -> Option<LinearKind> {
    LinearKind::ALL.into_iter().find(|k| k.short() == n)
}

impl JobState {
    /// The state directory of this job.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state directory used for output `out`.
    pub fn dir_for(out: &Path) -> PathBuf {
        let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
        out.with_file_name(format!("{name}.awqc-state"))
    }

    /// Open (or create) the state for a job; returns how many layers are already finished.
    /// A state of a different job is an error unless `discard_other` is set.
    pub fn open(dir: &Path, fingerprint: &str, discard_other: bool) -> Result<(Self, usize)> {
        let job = dir.join("job.json");
        if job.exists() {
            let text = std::fs::read_to_string(&job).at(job.display())?;
            let same = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("fingerprint").and_then(|f| f.as_str()).map(|f| f == fingerprint))
                .unwrap_or(false);
            if !same {
                if !discard_other {
                    return Err(Error::usage(format!(
                        "{}: holds the resume state of a different job (other model, data or flags); \
                         delete it, or pass --force to discard it",
                        dir.display()
                    )));
                }
                std::fs::remove_dir_all(dir).at(dir.display())?;
            }
        }
        std::fs::create_dir_all(dir).at(dir.display())?;
        if !job.exists() {
            let v = serde_json::json!({"fingerprint": fingerprint, "awqc": env!("CARGO_PKG_VERSION")});
            crate::fsutil::write_file_atomic(&job, v.to_string().as_bytes())?;
        }
        let st = JobState { dir: dir.to_path_buf() };
        let mut done = 0;
        while st.layer_path(done).exists() {
            done += 1;
        }
        Ok((st, done))
    }

    fn layer_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("layer-{i:05}.safetensors"))
    }

    /// Save a finished layer (atomically: a partial file is never taken for a finished layer).
    pub fn save_layer(&self, i: usize, r: &LayerResult) -> Result<()> {
        let mut specs = Vec::new();
        for (g, s) in &r.scales {
            specs.push(TensorSpec::new(format!("scales.{}", g.name()), "F64", &[s.len()]));
        }
        for (k, c) in &r.clips {
            specs.push(TensorSpec::new(format!("clip.{}", k.short()), "F32", &[c.len()]));
        }
        let report = serde_json::to_string(&r.report).map_err(|e| Error::internal(e.to_string()))?;
        let path = self.layer_path(i);
        let tmp = path.with_extension("tmp");
        let mut w = SafetensorsWriter::create(&tmp, specs, &[("report", &report)])?;
        for (g, s) in &r.scales {
            let bytes: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write(&format!("scales.{}", g.name()), &bytes)?;
        }
        for (k, c) in &r.clips {
            w.write(&format!("clip.{}", k.short()), bytemuck::cast_slice(c))?;
        }
        w.finish()?;
        std::fs::rename(&tmp, &path).at(path.display())
    }

    pub fn load_layer(&self, i: usize) -> Result<LayerResult> {
        let path = self.layer_path(i);
        let repo = SafetensorsRepo::open_files(std::slice::from_ref(&path))?;
        let bad = |m: &str| Error::input(path.display(), m.to_string());
        let mut scales = Vec::new();
        let mut clips = Vec::new();
        let names: Vec<String> = repo.names().map(|s| s.to_string()).collect();
        for name in &names {
            let (meta, bytes) = repo.raw(name)?;
            if let Some(g) = name.strip_prefix("scales.") {
                let g = group_by_name(g).ok_or_else(|| bad(&format!("unknown group {g:?}")))?;
                if format!("{:?}", meta.dtype) != "F64" {
                    return Err(bad("scales must be F64"));
                }
                scales.push((g, bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()));
            } else if let Some(k) = name.strip_prefix("clip.") {
                let k = linear_by_name(k).ok_or_else(|| bad(&format!("unknown linear {k:?}")))?;
                clips.push((k, repo.get_f32(name)?.data));
            }
        }
        // Apply in the canonical order whatever order the file lists them in.
        scales.sort_by_key(|(g, _)| GROUPS.iter().position(|x| x == g));
        clips.sort_by_key(|(k, _)| *k);
        let f = std::fs::read(&path).at(path.display())?;
        let (_, md) = safetensors::SafeTensors::read_metadata(&f).map_err(|e| bad(&format!("invalid state file: {e}")))?;
        let report = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("report"))
            .and_then(|r| serde_json::from_str(r).ok())
            .ok_or_else(|| bad("missing report"))?;
        Ok(LayerResult { scales, clips, report })
    }

    /// The job finished: remove the state.
    pub fn finish(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).at(self.dir.display())
    }
}

/// Fingerprint of a quantization job: the model (config.json and every safetensors header and
/// size), the calibration tokens, the options, and the awqc version.
pub fn job_fingerprint(model_dir: &Path, blocks: &[Vec<u32>], options: &serde_json::Value) -> Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let cfg = model_dir.join("config.json");
    h.update(std::fs::read(&cfg).at(cfg.display())?);
    for f in crate::model::weights::safetensors_files_in(model_dir)? {
        use std::io::Read;
        let mut file = std::fs::File::open(&f).at(f.display())?;
        let len = file.metadata().at(f.display())?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).at(f.display())?;
        let hl = u64::from_le_bytes(n).min(len.saturating_sub(8)).min(100 << 20);
        let mut header = vec![0u8; hl as usize];
        file.read_exact(&mut header).at(f.display())?;
        h.update(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().as_bytes());
        h.update(len.to_le_bytes());
        h.update(&header);
    }
    for b in blocks {
        h.update((b.len() as u64).to_le_bytes());
        for t in b {
            h.update(t.to_le_bytes());
        }
    }
    h.update(options.to_string().as_bytes());
    Ok(format!("{:x}", h.finalize()))
}
