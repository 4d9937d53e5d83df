//! `awqc synth`: write a random-weight model of any Llama shape to disk, as a Hugging Face
//! directory (f16 safetensors by default) or, with `--quantized`, directly as an AutoAWQ-GEMM
//! checkpoint (round-to-nearest INT4 of the same random weights), so that a GPU machine can
//! benchmark a 7B-shaped model without downloading or quantizing one.
//!
//! Weights are `model::synth`'s (a pure function of seed and tensor name) and are generated and
//! written one decoder layer at a time: the largest thing held in memory is one layer (about
//! 1.3 GB in f32 for the 13B shape) plus the embedding and lm head.

use crate::error::{Error, IoContext, Result};
use crate::fsutil::StagedDir;
use crate::model::arch::{self, LinearKind};
use crate::model::config::{Arch, ModelConfig};
use crate::model::synth;
use crate::quant::int4::QuantParams;
use crate::quant::qmodel::QuantSink;
use crate::tensor::DType;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Llama-2-7B: hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000.
    #[value(name = "7b")]
    L7b,
    /// Llama-2-13B: hidden 5120, intermediate 13824, 40 layers, 40 heads, vocab 32000.
    #[value(name = "13b")]
    L13b,
    /// SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, 9 heads (3 KV), vocab 49152.
    Smol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthArch {
    Llama,
    Mistral,
    /// With q/k/v biases.
    Qwen2,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Preset shape; the explicit flags below override its fields.
    #[arg(long, value_enum)]
    pub shape: Option<Shape>,
    #[arg(long)]
    pub hidden: Option<usize>,
    #[arg(long)]
    pub intermediate: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub kv_heads: Option<usize>,
    #[arg(long)]
    pub vocab: Option<usize>,
    #[arg(long, value_enum, default_value = "llama")]
    pub arch: SynthArch,
    /// Share the embedding with the lm head.
    #[arg(long)]
    pub tied: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Floating-point dtype of a full-precision output (f16, bf16, f32).
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Write an AutoAWQ-GEMM checkpoint instead (RTN INT4 of the random weights).
    #[arg(long)]
    pub quantized: bool,
    /// Group size of --quantized.
    #[arg(long, default_value_t = 128)]
    pub w_group_size: usize,
    /// A tokenizer.json (or a model directory's tokenizer files) to copy; default: a byte-level
    /// tokenizer with `<unk>`, `<s>`, `</s>` and the 256 bytes (needs --vocab >= 259).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub force: bool,
}

/// The model config for the flags (checked before `synth::config`, which expects a valid shape).
pub fn config_of(a: &Args) -> Result<ModelConfig> {
    // (hidden, intermediate, layers, heads, kv_heads, vocab)
    let preset = match a.shape {
        Some(Shape::L7b) => Some((4096, 11008, 32, 32, 32, 32000)),
        Some(Shape::L13b) => Some((5120, 13824, 40, 40, 40, 32000)),
        Some(Shape::Smol) => Some((576, 1536, 30, 9, 3, 49152)),
        None => None,
    };
    let pick = |flag: Option<usize>, field: Option<usize>, name: &str| -> Result<usize> {
        let v = flag.or(field).ok_or_else(|| Error::usage(format!("--{name} is required without --shape")))?;
        if v == 0 || v > 1 << 20 {
            return Err(Error::usage(format!("--{name} {v}: must be in 1..=2^20")));
        }
        Ok(v)
    };
    let p = preset.map(|(h, i, l, n, k, v)| [h, i, l, n, k, v]);
    let f = |i: usize| p.map(|p| p[i]);
    let hidden = pick(a.hidden, f(0), "hidden")?;
    let inter = pick(a.intermediate, f(1), "intermediate")?;
    let layers = pick(a.layers, f(2), "layers")?;
    let heads = pick(a.heads, f(3), "heads")?;
    // A preset's KV heads follow an overridden --heads when they were equal (MHA stays MHA).
    let kv_default = match (p, a.heads) {
        (Some(p), Some(h)) if p[3] == p[4] => Some(h),
        _ => f(4),
    };
    let kv = pick(a.kv_heads, kv_default, "kv-heads")?;
    let vocab = pick(a.vocab, f(5), "vocab")?;
    if hidden % heads != 0 || (hidden / heads) % 2 != 0 {
        return Err(Error::usage(format!("--hidden {hidden} / --heads {heads}: the head dim must be a whole even number")));
    }
    if heads % kv != 0 {
        return Err(Error::usage(format!("--heads {heads} is not a multiple of --kv-heads {kv}")));
    }
    let arch = match a.arch {
        SynthArch::Llama => Arch::Llama,
        SynthArch::Mistral => Arch::Mistral,
        SynthArch::Qwen2 => Arch::Qwen2,
    };
    Ok(synth::config(arch, hidden, inter, layers, heads, kv, vocab, a.tied))
}

// ------------------------------------------------------------------------------- tokenizer

/// GPT-2's byte-to-character map (`bytes_to_unicode`): printable bytes map to themselves, the
/// others to U+0100 onwards, so every byte is one visible character in the vocabulary.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap_or('?')
        })
        .collect()
}

/// `tokenizer.json` and `tokenizer_config.json` of the default tokenizer: byte-level BPE with
/// no merges, ids 0..3 = `<unk>`, `<s>` (bos), `</s>` (eos), then the 256 bytes.
pub fn byte_level_tokenizer(model_max_length: usize) -> (Value, Value) {
    let specials = ["<unk>", "<s>", "</s>"];
    let mut vocab = Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for (i, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(i + specials.len()));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []},
    });
    let cfg = json!({
        "add_bos_token": false, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "clean_up_tokenization_spaces": false, "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    (tok, cfg)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::internal(format!("serializing {}: {e}", path.display())))?;
    b.push(b'\n');
    std::fs::write(path, b).at(path.display())
}

/// Put the tokenizer files into `dir`: copied from `--tokenizer`, or the default one.
fn write_tokenizer(dir: &Path, src: Option<&Path>, c: &ModelConfig) -> Result<()> {
    match src {
        Some(p) if p.is_dir() => {
            let copied = crate::formats::awq_gemm::copy_tokenizer_files(p, dir)?;
            if !copied.iter().any(|n| n == "tokenizer.json") {
                return Err(Error::input(p.display(), "no tokenizer.json to copy"));
            }
        }
        Some(p) => {
            std::fs::copy(p, dir.join("tokenizer.json")).at(p.display())?;
        }
        None => {
            if c.vocab_size < 259 {
                return Err(Error::usage(format!(
                    "--vocab {}: the built-in byte-level tokenizer needs at least 259 tokens (or pass --tokenizer)",
                    c.vocab_size
                )));
            }
            let (tok, cfg) = byte_level_tokenizer(c.max_position_embeddings);
            write_json(&dir.join("tokenizer.json"), &tok)?;
            write_json(&dir.join("tokenizer_config.json"), &cfg)?;
        }
    }
    // The copied or built tokenizer must load (and fit the model's vocabulary).
    let t = crate::data::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    if t.vocab_size() > c.vocab_size {
        return Err(Error::usage(format!("the tokenizer has {} tokens, more than --vocab {}", t.vocab_size(), c.vocab_size)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- writers

/// Calls `f(i, layer i)` in layer order. Layers are generated a few at a time in parallel (each is
/// a pure function of seed and index, so the output does not depend on the thread count).
fn for_each_layer(c: &ModelConfig, seed: u64, mut f: impl FnMut(usize, crate::model::arch::LayerWeights) -> Result<()>) -> Result<()> {
    use rayon::prelude::*;
    let chunk = rayon::current_num_threads().clamp(1, 4);
    let pb = crate::progress::bar(c.num_hidden_layers as u64, "synth");
    for start in (0..c.num_hidden_layers).step_by(chunk) {
        let end = (start + chunk).min(c.num_hidden_layers);
        let layers: Vec<_> = (start..end).into_par_iter().map(|i| synth::layer(c, seed, i)).collect();
        for (j, l) in layers.into_iter().enumerate() {
            f(start + j, l)?;
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(())
}

/// Names and shapes of a full-precision checkpoint, in the order [`write_hf`] writes them.
fn hf_specs(c: &ModelConfig, dtype: DType) -> Vec<crate::formats::safetensors_writer::TensorSpec> {
    use crate::formats::safetensors_writer::TensorSpec;
    let (h, v) = (c.hidden_size, c.vocab_size);
    let (emb, norm, head) = arch::global_names(c.arch);
    let st = dtype.safetensors_name();
    let mut s = vec![TensorSpec::new(emb, st, &[v, h])];
    for i in 0..c.num_hidden_layers {
        let (n1, n2) = arch::norm_names(c.arch, i);
        s.push(TensorSpec::new(n1, st, &[h]));
        s.push(TensorSpec::new(n2, st, &[h]));
        for k in LinearKind::ALL {
            let (n, kk) = k.shape(c);
            let name = arch::linear_module(c.arch, i, k);
            s.push(TensorSpec::new(format!("{name}.weight"), st, &[n, kk]));
            if k.has_bias(c) {
                s.push(TensorSpec::new(format!("{name}.bias"), st, &[n]));
            }
        }
    }
    s.push(TensorSpec::new(norm, st, &[h]));
    if !c.tie_word_embeddings {
        s.push(TensorSpec::new(head, st, &[v, h]));
    }
    s
}

/// A full-precision HF directory.
fn write_hf(a: &Args, c: &ModelConfig, dtype: DType) -> Result<()> {
    use crate::formats::safetensors_writer::ShardedWriter;
    let staged = StagedDir::create(&a.out, a.force)?;
    let dir = staged.path();
    write_json(&dir.join("config.json"), &c.to_hf_json(dtype))?;
    write_json(&dir.join("generation_config.json"), &json!({"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id}))?;
    write_tokenizer(dir, a.tokenizer.as_deref(), c)?;
    let mut w = ShardedWriter::create(dir, "model", hf_specs(c, dtype), 5_000_000_000, &[("format", "pt")])?;
    let g = synth::globals(c, a.seed);
    let (emb, norm, head) = arch::global_names(c.arch);
    w.write(emb, &dtype.encode(&g.embed.data))?;
    for_each_layer(c, a.seed, |i, l| {
        let (n1, n2) = arch::norm_names(c.arch, i);
        w.write(&n1, &dtype.encode(&l.attn_norm))?;
        w.write(&n2, &dtype.encode(&l.mlp_norm))?;
        for k in LinearKind::ALL {
            let name = arch::linear_module(c.arch, i, k);
            let lin = l.linear(k);
            w.write(&format!("{name}.weight"), &dtype.encode(&lin.w.data))?;
            if let Some(b) = &lin.b {
                w.write(&format!("{name}.bias"), &dtype.encode(b))?;
            }
        }
        Ok(())
    })?;
    w.write(norm, &dtype.encode(&g.norm))?;
    if let Some(t) = &g.lm_head {
        w.write(head, &dtype.encode(&t.data))?;
    }
    w.finish()?;
    staged.commit()
}

/// An AutoAWQ-GEMM checkpoint of the RTN-quantized random weights (through the exporter).
fn write_awq(a: &Args, c: &ModelConfig) -> Result<()> {
    let p = QuantParams::new(4, a.w_group_size)?;
    crate::quant::pipeline::check_group_size(c, p)?;
    // The tokenizer is staged next to the output and copied in by the writer.
    let tok_dir = StagedDir::create(&a.out.with_extension("tokenizer"), true)?;
    write_tokenizer(tok_dir.path(), a.tokenizer.as_deref(), c)?;
    let mut sink = Box::new(crate::formats::awq_gemm::AwqWriter::new(&a.out, a.force).with_tokenizer_from(tok_dir.path()));
    sink.begin(c, p, &synth::globals(c, a.seed))?;
    for_each_layer(c, a.seed, |i, l| sink.write_layer(i, &crate::quant::pipeline::quantize_layer(c, i, &l, p)?))?;
    sink.finish()
}

pub fn run(a: Args, json: bool) -> Result<()> {
    let c = config_of(&a)?;
    let dtype = DType::parse(&a.dtype).ok_or_else(|| Error::usage(format!("--dtype {:?}: expected f16, bf16 or f32", a.dtype)))?;
    let t0 = std::time::Instant::now();
    if a.quantized {
        write_awq(&a, &c)?;
    } else {
        write_hf(&a, &c, dtype)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let format = if a.quantized { "awq" } else { "hf" };
    if json {
        crate::cli::print_json(&json!({
            "out": a.out.display().to_string(), "format": format, "parameters": c.num_parameters(),
            "hidden": c.hidden_size, "intermediate": c.intermediate_size, "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size, "seconds": secs,
        }));
    } else {
        println!(
            "wrote {} ({format}, {} parameters: hidden {}, intermediate {}, {} layers, {}/{} heads, vocab {}; {secs:.1}s)",
            a.out.display(),
            c.num_parameters(),
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokenizer_round_trips() {
        let (tok, _) = byte_level_tokenizer(64);
        let t: tokenizers::Tokenizer = tok.to_string().parse().unwrap();
        assert_eq!(t.get_vocab_size(true), 259);
        let text = "héllo, world\n\u{1F600}";
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        // One token per UTF-8 byte, each its byte value + 3.
        assert_eq!(ids, text.bytes().map(|b| b as u32 + 3).collect::<Vec<_>>());
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        assert_eq!(t.token_to_id("</s>"), Some(2));
    }

    #[test]
    fn shapes_and_overrides() {
        let parse = |args: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct W {
                #[command(flatten)]
                a: Args,
            }
            config_of(&W::try_parse_from(["synth", "--out", "x"].iter().chain(args)).unwrap().a)
        };
        let c = parse(&["--shape", "7b"]).unwrap();
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.head_dim, c.vocab_size), (4096, 11008, 32, 128, 32000));
        assert!((c.num_parameters() as f64 - 6.74e9).abs() < 0.01e9, "{}", c.num_parameters());
        let c = parse(&["--shape", "7b", "--layers", "2", "--heads", "16"]).unwrap();
        assert_eq!((c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (2, 16, 16));
        assert_eq!(parse(&["--shape", "smol"]).unwrap().num_key_value_heads, 3);
        assert!(parse(&["--hidden", "64"]).unwrap_err().msg.contains("--intermediate"));
        let e = parse(&["--hidden", "100", "--intermediate", "64", "--layers", "1", "--heads", "3", "--kv-heads", "1", "--vocab", "300"]).unwrap_err();
        assert!(e.msg.contains("head dim"), "{}", e.msg);
    }
}
