//! `awqc convert`: GGUF -> Hugging Face directory (default), or AutoAWQ-GEMM checkpoint ->
//! TurboMind workspace (`--to turbomind`, what `lmdeploy convert` did).

use crate::error::{Error, Result};
use crate::tensor::DType;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A Hugging Face model directory (from a .gguf file).
    Hf,
    /// A TurboMind workspace (from an AutoAWQ-GEMM checkpoint directory).
    Turbomind,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The input: a .gguf file (--to hf) or an AutoAWQ checkpoint directory (--to turbomind).
    pub src: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "hf")]
    pub to: Target,
    /// Floating-point dtype of the written weights (--to hf).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args, json: bool) -> Result<()> {
    match a.to {
        Target::Hf => {
            let dtype = DType::parse(&a.dtype).ok_or_else(|| Error::usage(format!("--dtype {:?}: expected f32, f16 or bf16", a.dtype)))?;
            if a.src.is_dir() {
                return Err(Error::usage(format!("{}: --to hf converts a .gguf file; this is a directory", a.src.display())));
            }
            let t0 = std::time::Instant::now();
            let r = crate::formats::gguf_import::import_gguf(&a.src, &a.out, &crate::formats::gguf_import::ImportOptions { dtype, force: a.force })?;
            let secs = t0.elapsed().as_secs_f64();
            if json {
                crate::cli::print_json(&json!({"out": a.out.display().to_string(), "arch": r.arch, "tensors": r.tensors, "parameters": r.parameters, "seconds": secs}));
            } else {
                println!("wrote {} ({}, {} tensors, {} parameters, {:.1}s)", a.out.display(), r.arch, r.tensors, r.parameters, secs);
            }
        }
        Target::Turbomind => {
            let t0 = std::time::Instant::now();
            crate::formats::turbomind::awq_to_turbomind(&a.src, &a.out, a.force)?;
            let secs = t0.elapsed().as_secs_f64();
            if json {
                crate::cli::print_json(&json!({"out": a.out.display().to_string(), "seconds": secs}));
            } else {
                println!("wrote TurboMind workspace {} ({:.1}s)", a.out.display(), secs);
            }
        }
    }
    Ok(())
}

/// `awqc inspect` on a .gguf file.
pub fn inspect_gguf(path: &Path, tensors: bool, json: bool) -> Result<()> {
    let g = crate::formats::gguf::GgufFile::open(path)?;
    let cfg = crate::formats::gguf_import::config_from_gguf(&g)?;
    let list: Vec<serde_json::Value> = g
        .tensors()
        .iter()
        .map(|t| json!({"name": t.name, "type": format!("{:?}", t.ty), "dims": t.dims}))
        .collect();
    if json {
        crate::cli::print_json(&json!({"path": path.display().to_string(), "format": "gguf", "arch": cfg.arch.hf_class(),
            "parameters": cfg.num_parameters(), "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "tensors": if tensors { json!(list) } else { json!(list.len()) }}));
        return Ok(());
    }
    println!("model         {} (GGUF)", path.display());
    println!("architecture  {}", cfg.arch.hf_class());
    println!("layers        {}, hidden {}, intermediate {}", cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size);
    println!("attention     {} heads, {} KV heads, head_dim {}", cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    println!("vocab         {}{}", cfg.vocab_size, if cfg.tie_word_embeddings { " (tied)" } else { "" });
    println!("parameters    {} ({:.1}M)", cfg.num_parameters(), cfg.num_parameters() as f64 / 1e6);
    println!("tensors       {}", list.len());
    if tensors {
        for t in list {
            println!("  {:<40} {:>6} {}", t["name"].as_str().unwrap_or(""), t["type"].as_str().unwrap_or(""), t["dims"]);
        }
    }
    Ok(())
}
