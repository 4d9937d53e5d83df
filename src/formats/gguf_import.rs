//! `import_gguf`: a llama.cpp GGUF file -> a Hugging Face model directory.
//!
//! ```text
//! GGUF metadata  -> config.json, generation_config.json          (config_from_gguf)
//! tokenizer.ggml -> tokenizer.json, tokenizer_config.json        (tokenizer_json)
//! each tensor    -> dequantize -> [un-permute q/k] -> model.safetensors (f32/f16/bf16)
//! ```
//! Tensors go one at a time (the dequantized model is never held whole), in HF order, each checked
//! against the shape the config implies. Everything is written into a `StagedDir` and renamed
//! into place at the end.

use crate::error::{Error, Result};
use crate::formats::gguf::{unpermute_qk, GgufFile, MetaValue};
use crate::formats::safetensors_writer::{ShardedWriter, TensorSpec};
use crate::formats::tokenizer_json::HfTokenizer;
use crate::fsutil::StagedDir;
use crate::model::arch::{global_names, linear_module, norm_names, LinearKind};
use crate::model::config::{Arch, ModelConfig};
use crate::progress;
use crate::tensor::DType;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Shard size of the written safetensors, as transformers' default `max_shard_size="5GB"`.
const MAX_SHARD_BYTES: usize = 5_000_000_000;

#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Storage dtype of the written weights.
    pub dtype: DType,
    /// Replace `dst` if it exists.
    pub force: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { dtype: DType::F32, force: false }
    }
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    /// GGUF `general.architecture` (`llama`, `qwen2`).
    pub arch: String,
    /// Tensors written.
    pub tensors: usize,
    /// Elements written (the model's parameter count).
    pub parameters: usize,
    pub out: PathBuf,
    pub dtype: DType,
    pub vocab_size: usize,
    /// How many source tensors had each ggml type (e.g. `Q4_1: 210`).
    pub source_types: BTreeMap<String, usize>,
}

/// One output tensor: where it comes from and what it must look like.
struct Planned {
    gguf: String,
    hf: String,
    /// Row-major HF shape, `[out, in]` for linear weights.
    shape: Vec<usize>,
    /// Heads to un-permute over (llama q/k weights and biases).
    unpermute: Option<usize>,
}

/// The GGUF `general.architecture` values awqc imports.
fn arch_of(name: &str) -> Option<Arch> {
    match name {
        "llama" => Some(Arch::Llama),
        "qwen2" => Some(Arch::Qwen2),
        _ => None,
    }
}

/// GGUF tensor base name of a projection in block `i`.
fn gguf_linear(i: usize, k: LinearKind) -> String {
    let n = match k {
        LinearKind::Q => "attn_q",
        LinearKind::K => "attn_k",
        LinearKind::V => "attn_v",
        LinearKind::O => "attn_output",
        LinearKind::Gate => "ffn_gate",
        LinearKind::Up => "ffn_up",
        LinearKind::Down => "ffn_down",
    };
    format!("blk.{i}.{n}")
}

/// The model hyper-parameters from `{arch}.*` and `tokenizer.ggml.*` metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let src = g.src();
    let arch_name = g.req_str("general.architecture")?;
    let arch = arch_of(arch_name).ok_or_else(|| {
        Error::input(&src, format!("unsupported architecture {arch_name:?} (supported: llama, qwen2)"))
    })?;
    let key = |s: &str| format!("{arch_name}.{s}");
    let hidden = g.req_usize(&key("embedding_length"))?;
    let heads = g.req_usize(&key("attention.head_count"))?;
    let kv_heads = g.get_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = match g.get_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(Error::input(
                &src,
                format!(
                    "{} = {hidden} is not divisible by {} = {heads}",
                    key("embedding_length"),
                    key("attention.head_count")
                ),
            ))
        }
    };
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(d) = g.get_usize(&key(k))? {
            if d != head_dim {
                return Err(Error::input(
                    &src,
                    format!("{} = {d} differs from the head size {head_dim}; partial rotary / unequal q-v heads are not supported", key(k)),
                ));
            }
        }
    }
    let vocab = g.req_array("tokenizer.ggml.tokens")?.len();
    // Float hyper-parameters are f32 in GGUF; 1e-5f32 widened is 9.99999974e-6. Go through the
    // shortest decimal that reads back as the same f32, so config.json says 1e-5 like the original.
    let num = |k: &str| -> Result<Option<f64>> {
        let k = key(k);
        Ok(match g.get(&k) {
            Some(MetaValue::F32(x)) => format!("{x}").parse::<f64>().ok(),
            _ => g.get_f64(&k)?,
        })
    };
    let req_num = |k: &str| -> Result<f64> { num(k)?.ok_or_else(|| g.missing(&key(k))) };

    let rope_scaling = match g.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => match num("rope.scale_linear")? {
            Some(f) if f != 1.0 => json!({"rope_type": "linear", "factor": f}),
            _ => Value::Null,
        },
        Some("linear") => json!({"rope_type": "linear", "factor": req_num("rope.scaling.factor")?}),
        Some("yarn") => {
            let mut y = json!({"rope_type": "yarn", "factor": req_num("rope.scaling.factor")?});
            if let Some(n) = g.get_usize(&key("rope.scaling.original_context_length"))? {
                y["original_max_position_embeddings"] = json!(n);
            }
            for (gk, hk) in [("rope.scaling.yarn_beta_fast", "beta_fast"), ("rope.scaling.yarn_beta_slow", "beta_slow")]
            {
                if let Some(v) = num(gk)? {
                    y[hk] = json!(v);
                }
            }
            y
        }
        Some(other) => {
            return Err(Error::input(
                &src,
                format!("unsupported {} {other:?} (supported: none, linear, yarn)", key("rope.scaling.type")),
            ))
        }
    };
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(Error::input(
            &src,
            "tensor \"rope_freqs.weight\" (Llama 3.1-style per-frequency RoPE scaling) is not supported",
        ));
    }

    let attention_bias = arch == Arch::Qwen2 || g.tensor("blk.0.attn_q.bias").is_some();
    let mut v = Map::new();
    v.insert("architectures".into(), json!([arch.hf_class()]));
    v.insert("model_type".into(), json!(arch.model_type()));
    v.insert("hidden_size".into(), json!(hidden));
    v.insert("intermediate_size".into(), json!(g.req_usize(&key("feed_forward_length"))?));
    v.insert("num_hidden_layers".into(), json!(g.req_usize(&key("block_count"))?));
    v.insert("num_attention_heads".into(), json!(heads));
    v.insert("num_key_value_heads".into(), json!(kv_heads));
    v.insert("head_dim".into(), json!(head_dim));
    v.insert("vocab_size".into(), json!(vocab));
    v.insert("rms_norm_eps".into(), json!(req_num("attention.layer_norm_rms_epsilon")?));
    v.insert("rope_theta".into(), json!(num("rope.freq_base")?.unwrap_or(10000.0)));
    v.insert("rope_scaling".into(), rope_scaling);
    v.insert("max_position_embeddings".into(), json!(g.req_usize(&key("context_length"))?));
    v.insert("tie_word_embeddings".into(), json!(g.tensor("output.weight").is_none()));
    if arch != Arch::Qwen2 {
        v.insert("attention_bias".into(), json!(attention_bias));
    }
    for (gk, hk) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Some(id) = g.get_u64(gk)? {
            v.insert(hk.into(), json!(id));
        }
    }
    // The config-level checks (positive sizes, heads divisible, even head_dim, ...) are the same
    // as for a config.json; errors name the GGUF file.
    ModelConfig::from_json(&Value::Object(v), &src)
}

/// Every output tensor in HF order, checked against the GGUF tensor table and the config.
fn plan(g: &GgufFile, c: &ModelConfig) -> Result<Vec<Planned>> {
    let src = g.src();
    let (h, v) = (c.hidden_size, c.vocab_size);
    let (emb, norm, head) = global_names(c.arch);
    let mut out = Vec::new();
    let mut add = |gguf: String, hf: String, shape: Vec<usize>, unpermute: Option<usize>| {
        out.push(Planned { gguf, hf, shape, unpermute });
    };
    add("token_embd.weight".into(), emb.into(), vec![v, h], None);
    let permuted = c.arch == Arch::Llama;
    for i in 0..c.num_hidden_layers {
        let (n1, n2) = norm_names(c.arch, i);
        add(format!("blk.{i}.attn_norm.weight"), n1, vec![h], None);
        for k in LinearKind::ALL {
            if k == LinearKind::Gate {
                add(format!("blk.{i}.ffn_norm.weight"), n2.clone(), vec![h], None);
            }
            let (n, kk) = k.shape(c);
            let heads = match k {
                LinearKind::Q if permuted => Some(c.num_attention_heads),
                LinearKind::K if permuted => Some(c.num_key_value_heads),
                _ => None,
            };
            let (gname, hname) = (gguf_linear(i, k), linear_module(c.arch, i, k));
            add(format!("{gname}.weight"), format!("{hname}.weight"), vec![n, kk], heads);
            if k.has_bias(c) {
                add(format!("{gname}.bias"), format!("{hname}.bias"), vec![n], heads);
            }
        }
    }
    add("output_norm.weight".into(), norm.into(), vec![h], None);
    if !c.tie_word_embeddings {
        add("output.weight".into(), head.into(), vec![v, h], None);
    }

    for p in &out {
        let t = g.tensor(&p.gguf).ok_or_else(|| Error::input(&src, format!("tensor {:?} is missing", p.gguf)))?;
        if t.shape() != p.shape {
            return Err(Error::input(
                &src,
                format!(
                    "tensor {:?} has shape {:?} (GGUF dims {:?}), expected {:?} from the metadata",
                    p.gguf,
                    t.shape(),
                    t.dims,
                    p.shape
                ),
            ));
        }
    }
    // A tensor nobody reads would silently vanish from the model: refuse instead.
    let used: HashSet<&str> = out.iter().map(|p| p.gguf.as_str()).collect();
    if let Some(t) = g.tensors().iter().find(|t| !used.contains(t.name.as_str())) {
        return Err(Error::input(
            &src,
            format!("unexpected tensor {:?} for a {}-layer {} model", t.name, c.num_hidden_layers, c.arch.model_type()),
        ));
    }
    Ok(out)
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<()> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::internal(format!("serializing {name}: {e}")))?;
    b.push(b'\n');
    let p = dir.join(name);
    std::fs::write(&p, b).map_err(|e| Error::io(p.display(), e))
}

/// Convert the GGUF file `src` into an HF model directory `dst`.
pub fn import_gguf(src: &Path, dst: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    // Claim the output first: an existing `dst` or an unwritable parent fails before any work.
    let staged = StagedDir::create(dst, opts.force)?;
    let g = GgufFile::open(src)?;
    let cfg = config_from_gguf(&g)?;
    let arch = g.req_str("general.architecture")?.to_string();
    let tok = HfTokenizer::from_gguf(&g, Some(cfg.max_position_embeddings))?;
    tok.load()?;
    let plan = plan(&g, &cfg)?;

    let dir = staged.path();
    let mut config = cfg.to_hf_json(opts.dtype);
    if let (Some(pad), Value::Object(m)) = (tok.pad_token_id, &mut config) {
        m.insert("pad_token_id".into(), json!(pad));
    }
    write_json(dir, "config.json", &config)?;
    let mut gen = Map::new();
    gen.insert("_from_model_config".into(), json!(true));
    for (k, id) in
        [("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id), ("pad_token_id", tok.pad_token_id)]
    {
        if let Some(id) = id {
            gen.insert(k.into(), json!(id));
        }
    }
    write_json(dir, "generation_config.json", &Value::Object(gen))?;
    tok.write(dir)?;

    let specs = plan.iter().map(|p| TensorSpec::new(p.hf.clone(), opts.dtype.safetensors_name(), &p.shape)).collect();
    let mut w = ShardedWriter::create(dir, "model", specs, MAX_SHARD_BYTES, &[("format", "pt")])?;
    let bar = progress::bar(plan.len() as u64, "import");
    let mut parameters = 0usize;
    let mut source_types = BTreeMap::new();
    for p in &plan {
        let mut t = g.tensor_f32(&p.gguf)?;
        if let Some(heads) = p.unpermute {
            t = unpermute_qk(&t, heads)?;
        }
        w.write(&p.hf, &opts.dtype.encode(&t.data))?;
        parameters += t.numel();
        if let Some(info) = g.tensor(&p.gguf) {
            *source_types.entry(info.ty.name().to_string()).or_insert(0) += 1;
        }
        bar.inc(1);
    }
    w.finish()?;
    bar.finish_and_clear();
    staged.commit()?;
    Ok(ImportReport {
        arch,
        tensors: plan.len(),
        parameters,
        out: dst.to_path_buf(),
        dtype: opts.dtype,
        vocab_size: tok.vocab_size,
        source_types,
    })
}
