//! Load any model awqc can read into the engine: a full-precision Hugging Face directory, an
//! AutoAWQ-GEMM checkpoint, or a TurboMind workspace. Quantized weights stay packed INT4 on the
//! GPU backends (W4A16 kernels) and on the CPU (the host model's INT4 kernels, with f32 or int8
//! activations: `--activations`; `--dequantize` gives the old f32 burn model). AutoAWQ checkpoints
//! are read one layer at a time.

use crate::engine::host::{Activations, HostLlama};
use crate::engine::llama::Llama;
use crate::error::{Error, Result};
use crate::model::arch;
use crate::model::config::{ModelConfig, RopeScaling};
use crate::model::weights::SafetensorsRepo;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// Full-precision Hugging Face directory (config.json + safetensors).
    Hf,
    /// AutoAWQ "GEMM" checkpoint (config.json with `quantization_config`).
    Awq,
    /// TurboMind workspace (`triton_models/weights/config.yaml`).
    Turbomind,
}

/// Decide what kind of model `path` holds.
pub fn detect_format(path: &Path) -> Result<ModelFormat> {
    if path.join("triton_models").join("weights").join("config.yaml").exists() {
        return Ok(ModelFormat::Turbomind);
    }
    let cfg = path.join("config.json");
    if !path.is_dir() {
        return Err(Error::input(path.display(), "not a model directory (expected config.json + safetensors, or a TurboMind workspace)"));
    }
    if !cfg.exists() {
        return Err(Error::input(path.display(), "no config.json (and not a TurboMind workspace)"));
    }
    let bytes = std::fs::read(&cfg).map_err(|e| Error::io(cfg.display(), e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::input(cfg.display(), format!("not valid JSON: {e}")))?;
    Ok(if v.get("quantization_config").is_some() { ModelFormat::Awq } else { ModelFormat::Hf })
}

/// Engine-side overrides of the model's config (long-context experiments).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub max_position_embeddings: Option<usize>,
    pub rope_scaling: Option<RopeScaling>,
    /// CPU: build the burn model with f32 (dequantized) weights instead of the host model with
    /// packed INT4 weights (`--dequantize`, the cross-check of the INT4 kernels).
    pub dequantize: bool,
    /// CPU host model: activations the INT4 kernels multiply with (`--activations`).
    pub activations: Activations,
}

pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub format: ModelFormat,
    /// Directory holding tokenizer.json.
    pub tokenizer_dir: PathBuf,
}

fn apply_overrides(mut c: ModelConfig, o: &LoadOptions) -> ModelConfig {
    if let Some(m) = o.max_position_embeddings {
        c.max_position_embeddings = m;
    }
    if let Some(r) = &o.rope_scaling {
        c.rope_scaling = r.clone();
    }
    c
}

pub fn load_model<B: Backend>(path: &Path, opts: &LoadOptions, dev: &B::Device) -> Result<LoadedModel<B>> {
    let format = detect_format(path)?;
    // The CPU runs inference on the host model unless asked for the dequantized burn model.
    let host = crate::engine::llama::is_host_backend::<B>() && !opts.dequantize;
    let model = match format {
        ModelFormat::Hf => {
            let c = ModelConfig::from_file(&path.join("config.json"))?;
            let repo = SafetensorsRepo::open_dir(path)?;
            let g = arch::load_globals(&repo, &c)?;
            let c2 = apply_overrides(c.clone(), opts);
            let pb = crate::progress::bar(c.num_hidden_layers as u64, "load");
            let layer = |i| {
                pb.inc(1);
                arch::load_layer(&repo, &c, i)
            };
            let m = if host { Llama::from_host_model(HostLlama::from_dense(&c2, &g, layer)?, dev) } else { Llama::from_host(&c2, &g, layer, dev)? };
            pb.finish_and_clear();
            m
        }
        ModelFormat::Awq => {
            let r = crate::formats::awq_gemm::AwqReader::open(path)?;
            let c2 = apply_overrides(r.config().clone(), opts);
            let pb = crate::progress::bar(c2.num_hidden_layers as u64, "load");
            let layer = |i| {
                pb.inc(1);
                r.layer(i)
            };
            let g = r.globals()?;
            let m = if host { Llama::from_host_model(HostLlama::from_quantized(&c2, &g, opts.activations, layer)?, dev) } else { Llama::from_quantized(&c2, &g, layer, dev)? };
            pb.finish_and_clear();
            m
        }
        ModelFormat::Turbomind => {
            let qm = crate::formats::turbomind::read_turbomind(path)?;
            let c2 = apply_overrides(qm.config.clone(), opts);
            let layer = |i: usize| qm.layers.get(i).cloned().ok_or_else(|| Error::input(path.display(), format!("layer {i} is missing")));
            if host {
                Llama::from_host_model(HostLlama::from_quantized(&c2, &qm.globals, opts.activations, layer)?, dev)
            } else {
                Llama::from_quantized(&c2, &qm.globals, layer, dev)?
            }
        }
    };
    Ok(LoadedModel { model, format, tokenizer_dir: path.to_path_buf() })
}
