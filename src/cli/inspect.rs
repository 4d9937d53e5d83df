//! `awqc inspect`: what a model file or directory holds.

use crate::engine::load::{detect_format, ModelFormat};
use crate::error::Result;
use crate::model::config::ModelConfig;
use crate::model::weights::SafetensorsRepo;
use serde_json::json;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory (HF, AutoAWQ, TurboMind workspace), a .gguf file, or a hub id `org/name[@revision]` (downloaded into the HF cache when missing).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub revision: crate::cli::Revision,
    /// List every tensor.
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let path = a.revision.resolve(&a.model)?;
    if path.is_file() && path.extension().map(|e| e == "gguf").unwrap_or(false) {
        return crate::cli::convert::inspect_gguf(&path, a.tensors, json);
    }
    let format = detect_format(&path)?;
    if format == ModelFormat::Turbomind {
        let m = crate::formats::turbomind::read_turbomind(&path)?;
        return print_summary(&path, format, &m.config, None, Some((m.params.bits, m.params.group)), json);
    }
    let cfg = ModelConfig::from_file(&path.join("config.json"))?;
    let repo = SafetensorsRepo::open_dir(&path)?;
    let mut rows = Vec::new();
    let mut stored = 0usize;
    for name in repo.names() {
        if let Some(m) = repo.meta(name) {
            stored += m.shape.iter().product::<usize>();
            rows.push(json!({"name": name, "dtype": format!("{:?}", m.dtype), "shape": m.shape}));
        }
    }
    let quant = cfg.raw.get("quantization_config").map(|q| {
        (q.get("bits").and_then(|b| b.as_u64()).unwrap_or(4) as u32, q.get("group_size").and_then(|g| g.as_u64()).unwrap_or(128) as usize)
    });
    if json {
        crate::cli::print_json(&json!({
            "path": path.display().to_string(), "format": format, "arch": cfg.arch.hf_class(),
            "config": summary(&cfg), "parameters": cfg.num_parameters(), "stored_elements": stored,
            "main_dtype": repo.main_dtype().map(|d| format!("{d:?}")),
            "quantization": quant.map(|(b, g)| json!({"bits": b, "group_size": g})),
            "tensors": if a.tensors { json!(rows) } else { json!(rows.len()) },
        }));
        return Ok(());
    }
    print_summary(&path, format, &cfg, repo.main_dtype().map(|d| format!("{d:?}")), quant, false)?;
    println!("tensors       {}", rows.len());
    if a.tensors {
        for r in rows {
            println!("  {:<60} {:>5} {}", r["name"].as_str().unwrap_or(""), r["dtype"].as_str().unwrap_or(""), r["shape"]);
        }
    }
    Ok(())
}

fn summary(c: &ModelConfig) -> serde_json::Value {
    json!({
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
        "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling.type_name(),
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias, "rms_norm_eps": c.rms_norm_eps,
    })
}

fn print_summary(path: &Path, format: ModelFormat, c: &ModelConfig, dtype: Option<String>, quant: Option<(u32, usize)>, json: bool) -> Result<()> {
    if json {
        crate::cli::print_json(&json!({"path": path.display().to_string(), "format": format, "arch": c.arch.hf_class(),
            "config": summary(c), "parameters": c.num_parameters(),
            "quantization": quant.map(|(b, g)| json!({"bits": b, "group_size": g}))}));
        return Ok(());
    }
    println!("model         {} ({:?})", path.display(), format);
    println!("architecture  {}", c.arch.hf_class());
    println!("layers        {}", c.num_hidden_layers);
    println!("hidden        {} (intermediate {})", c.hidden_size, c.intermediate_size);
    println!(
        "attention     {} heads, {} KV heads, head_dim {}{}",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        if c.attention_bias { ", q/k/v bias" } else { "" }
    );
    println!("rope          theta {}, scaling {}, max positions {}", c.rope_theta, c.rope_scaling.type_name(), c.max_position_embeddings);
    println!("vocab         {}{}", c.vocab_size, if c.tie_word_embeddings { " (tied embeddings)" } else { "" });
    println!("parameters    {} ({:.1}M)", c.num_parameters(), c.num_parameters() as f64 / 1e6);
    if let Some(d) = dtype {
        println!("dtype         {d}");
    }
    if let Some((b, g)) = quant {
        println!("quantization  INT{b}, group {g}, asymmetric");
    }
    Ok(())
}
