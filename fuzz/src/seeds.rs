//! Valid starting inputs for every fuzz target, built with awqc's own writers (so they follow the
//! formats as awqc writes them) and tiny, so the fuzzer mutates real structure quickly.
//!
//! `tests/bad_inputs.rs` checks that the files under `fuzz/seeds/` are exactly what [`seeds`]
//! builds and that each is accepted by its target; `AWQC_WRITE_FUZZ_SEEDS=1` rewrites them.
//! Needs `crate::gguf_writer` (tests/common/gguf_writer.rs) at the crate root.

use crate::gguf_writer::{gt, GgufBuilder};
use crate::targets::{pack, turbomind_path, Scratch, AWQ_FILES, TOKENIZER_FILES, TURBOMIND_FILES};
use awqc::formats::awq_gemm::AwqWriter;
use awqc::formats::gguf::GgufFile;
use awqc::formats::safetensors_writer::{SafetensorsWriter, TensorSpec};
use awqc::formats::tokenizer_json::HfTokenizer;
use awqc::formats::turbomind::TurbomindWriter;
use awqc::model::config::Arch;
use awqc::model::synth;
use awqc::quant::int4::QuantParams;
use awqc::quant::qmodel::random_quantized_model;
use half::{bf16, f16};
use std::path::Path;

/// One seed: target, file name, contents, and whether the target accepts it all the way through
/// (a few seeds are deliberately partial, e.g. a GGUF of K-quant tensors without a model).
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub accepted: bool,
}

fn seed(target: &'static str, name: &str, bytes: Vec<u8>, accepted: bool) -> Seed {
    Seed { target, name: name.to_string(), bytes, accepted }
}

pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let model = gguf_llama().build();
    out.push(seed("gguf", "llama-tiny.gguf", model.clone(), true));
    out.push(seed("gguf", "kquants-no-model.gguf", gguf_kquants().build(), false));
    out.extend(tokenizer_seeds(&model));
    out.push(seed("safetensors", "mixed-dtypes.safetensors", safetensors_file(), true));
    for (i, b) in [&[3u8, 40, 4, b'a', b'b', b'c', b'd', 0, 2, 3, 4][..], &[8, 2, 0, 1, 1, 5, 3, 2, 1, 1]]
        .iter()
        .enumerate()
    {
        out.push(seed("safetensors_roundtrip", &format!("specs-{i}"), b.to_vec(), true));
    }
    for (name, json) in configs() {
        out.push(seed("config_json", name, json.into_bytes(), true));
    }
    out.extend(text_seeds());
    out.extend(awq_seeds());
    out.extend(turbomind_seeds());
    out.extend(openai_request_seeds());
    out
}

// ---------------------------------------------------------------------------------------------
// GGUF

const TOKENS: [&str; 11] =
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "<tool>"];

/// Deterministic bytes (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `rows` rows of `cols` elements of a block type: random codes, small finite scales.
fn blocks(ty: u32, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let (elems, bytes, scales): (usize, usize, &[usize]) = match ty {
        gt::Q4_0 => (32, 18, &[0]),
        gt::Q4_1 => (32, 20, &[0, 2]),
        gt::Q5_0 => (32, 22, &[0]),
        gt::Q5_1 => (32, 24, &[0, 2]),
        gt::Q8_0 => (32, 34, &[0]),
        gt::Q4_K => (256, 144, &[0, 2]),
        gt::Q5_K => (256, 176, &[0, 2]),
        gt::Q6_K => (256, 210, &[208]),
        _ => panic!("not a block type: {ty}"),
    };
    let n = rows * cols / elems;
    let mut out = noise(n * bytes, seed);
    for b in out.chunks_exact_mut(bytes) {
        for &at in scales {
            b[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
        }
    }
    out
}

fn floats(ty: u32, n: usize, seed: u64) -> Vec<u8> {
    let vals: Vec<f32> = noise(n, seed).iter().map(|&b| (b as f32 - 128.0) / 256.0).collect();
    match ty {
        gt::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        gt::F16 => vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        gt::BF16 => vals.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        _ => panic!("not a float type: {ty}"),
    }
}

/// A one-layer llama (hidden 32, 2 heads, 1 KV head, untied) with a byte-level BPE tokenizer,
/// using every non-K ggml type.
pub fn gguf_llama() -> GgufBuilder {
    let (h, inter, v) = (32usize, 64usize, TOKENS.len());
    let mut b = GgufBuilder::new();
    b.str("general.architecture", "llama")
        .str("general.name", "fuzz-seed")
        .u32("llama.block_count", 1)
        .u32("llama.context_length", 256)
        .u32("llama.embedding_length", h as u32)
        .u32("llama.feed_forward_length", inter as u32)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .u32("llama.rope.dimension_count", 16)
        .f32("llama.rope.freq_base", 10000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .str_array("tokenizer.ggml.tokens", &TOKENS)
        .i32_array("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4])
        .str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .bool("tokenizer.ggml.add_bos_token", false)
        .str("tokenizer.chat_template", "{{ messages }}");
    let mut s = 1u64;
    let mut t = |b: &mut GgufBuilder, name: &str, shape: &[usize], ty: u32| {
        s += 1;
        let n = shape.iter().product();
        let data = match ty {
            gt::F32 | gt::F16 | gt::BF16 => floats(ty, n, s),
            _ => blocks(ty, n / shape[shape.len() - 1], shape[shape.len() - 1], s),
        };
        b.tensor(name, shape, ty, data);
    };
    t(&mut b, "token_embd.weight", &[v, h], gt::Q8_0);
    t(&mut b, "blk.0.attn_norm.weight", &[h], gt::F32);
    t(&mut b, "blk.0.attn_q.weight", &[h, h], gt::F32);
    t(&mut b, "blk.0.attn_k.weight", &[16, h], gt::F16);
    t(&mut b, "blk.0.attn_v.weight", &[16, h], gt::Q4_0);
    t(&mut b, "blk.0.attn_output.weight", &[h, h], gt::Q4_1);
    t(&mut b, "blk.0.ffn_norm.weight", &[h], gt::F32);
    t(&mut b, "blk.0.ffn_gate.weight", &[inter, h], gt::Q5_0);
    t(&mut b, "blk.0.ffn_up.weight", &[inter, h], gt::Q5_1);
    t(&mut b, "blk.0.ffn_down.weight", &[h, inter], gt::BF16);
    t(&mut b, "output_norm.weight", &[h], gt::F32);
    t(&mut b, "output.weight", &[v, h], gt::F16);
    b
}

/// K-quant tensors and metadata of every value type, no model (config_from_gguf refuses it).
fn gguf_kquants() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.str("general.architecture", "llama").u64("general.alignment", 64).f32("x.f32", 0.5).bool("x.bool", true);
    let mut nested = crate::gguf_writer::vt::ARRAY.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    for v in [[1i32, 2], [3, 4]] {
        nested.extend(crate::gguf_writer::vt::I32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        for x in v {
            nested.extend(x.to_le_bytes());
        }
    }
    b.kv_raw("x.nested", crate::gguf_writer::vt::ARRAY, nested);
    b.alignment = 64;
    for (i, (name, ty)) in [("q4k", gt::Q4_K), ("q5k", gt::Q5_K), ("q6k", gt::Q6_K)].into_iter().enumerate() {
        b.tensor(name, &[2, 256], ty, blocks(ty, 2, 256, 100 + i as u64));
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Tokenizers

fn tokenizer_seeds(gguf: &[u8]) -> Vec<Seed> {
    let g = GgufFile::from_bytes(gguf, "seed.gguf").expect("the seed GGUF parses");
    let tok = HfTokenizer::from_gguf(&g, Some(256)).expect("the seed GGUF has a tokenizer");
    let tj = tok.tokenizer_json_bytes().expect("tokenizer.json");
    let cfg = serde_json::to_vec_pretty(&tok.tokenizer_config).expect("tokenizer_config.json");
    let names = &TOKENIZER_FILES;
    // transformers' Llama classes rebuild the bos/eos template from tokenizer_config.json.
    let llama_cfg = br#"{"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": true, "add_eos_token": true,
        "bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>",
        "chat_template": [{"name": "default", "template": "{{ x }}"}]}"#
        .to_vec();
    vec![
        seed("tokenizer_json", "bpe-from-gguf", pack(&[("tokenizer.json", tj.clone()), ("tokenizer_config.json", cfg)], names), true),
        seed(
            "tokenizer_json",
            "bpe-llama-template",
            pack(
                &[
                    ("tokenizer.json", tj),
                    ("tokenizer_config.json", llama_cfg),
                    ("special_tokens_map.json", br#"{"bos_token": "<|im_start|>"}"#.to_vec()),
                    ("chat_template.jinja", b"{{ messages }}".to_vec()),
                ],
                names,
            ),
            true,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// safetensors, config.json, documents

fn safetensors_file() -> Vec<u8> {
    let dir = Scratch::new("seed-st");
    let p = dir.path().join("m.safetensors");
    let specs = vec![
        TensorSpec::new("a.f32", "F32", &[2, 3]),
        TensorSpec::new("b.f16", "F16", &[4]),
        TensorSpec::new("c.bf16", "BF16", &[2, 2]),
        TensorSpec::new("d.i32", "I32", &[3]),
        TensorSpec::new("e.u8", "U8", &[5]),
        TensorSpec::new("f.scalar", "F32", &[]),
        TensorSpec::new("g.empty", "F32", &[0, 3]),
    ];
    let bytes: Vec<Vec<u8>> = specs.iter().enumerate().map(|(i, s)| noise(s.nbytes(), 7 + i as u64)).collect();
    let mut w = SafetensorsWriter::create(&p, specs.clone(), &[("format", "pt")]).expect("writer");
    for (s, b) in specs.iter().zip(&bytes) {
        w.write(&s.name, b).expect("write");
    }
    w.finish().expect("finish");
    std::fs::read(&p).expect("read back")
}

fn configs() -> Vec<(&'static str, String)> {
    vec![
        (
            "smollm2.json",
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
  "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
  "vocab_size": 49152, "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "max_position_embeddings": 8192,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
  "rope_scaling": null, "attention_bias": false}"#
                .into(),
        ),
        (
            "qwen2-yarn.json",
            r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
  "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
  "rope_theta": 1000000.0, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
  "tie_word_embeddings": true, "eos_token_id": [151645, 151643]}"#
                .into(),
        ),
        (
            "internlm2-dynamic.json",
            r#"{"architectures": ["InternLM2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 92544, "bias": false,
  "rope_scaling": {"type": "dynamic", "factor": 2.0}}"#
                .into(),
        ),
        (
            "mistral-llama3-rope.json",
            r#"{"model_type": "mistral", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
  "num_attention_heads": 4, "head_dim": 32, "vocab_size": 1000,
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 8192}}"#
                .into(),
        ),
    ]
}

fn text_seeds() -> Vec<Seed> {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    // The first byte picks the format: 0 parquet, 1 arrow, 2 jsonl, 3 text (targets::textfile).
    let with = |sel: u8, body: Vec<u8>| [vec![sel], body].concat();
    let docs: Vec<String> = ["First document.", "", "Second one,\nwith two lines.", "é 日本語"].map(String::from).to_vec();
    let parquet = awqc::data::build::documents_to_parquet(&docs).expect("parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true), Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![Some("one"), None, Some("three")])),
            Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])),
        ],
    )
    .expect("batch");
    let mut stream = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut stream, &schema).expect("stream writer");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
    }
    let mut file = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut file, &schema).expect("file writer");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
    }
    vec![
        seed("textfile", "docs.parquet", with(0, parquet), true),
        seed("textfile", "stream.arrow", with(1, stream), true),
        seed("textfile", "file.arrow", with(1, file), true),
        seed("textfile", "docs.jsonl", with(2, b"{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"two\\nlines\"}\n{\"text\": null}\n".to_vec()), true),
        seed(
            "textfile",
            "wiki.txt",
            with(3, b"<doc id=\"1\" title=\"A\">\nA\n\nBody a.\n</doc>\n<doc id=\"2\" title=\"B\">\r\nB\r\n</doc>\n".to_vec()),
            true,
        ),
        seed("textfile", "lines.txt", with(3, b"line one\n\n  line two\r\nthird".to_vec()), true),
    ]
}

// ---------------------------------------------------------------------------------------------
// Quantized checkpoints

/// Every file of a directory tree as `(path relative to root, bytes)`, sorted.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("inside root").to_string_lossy().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn awq_dir(arch: Arch, hidden: usize, inter: usize, heads: usize, kv: usize, tied: bool, shard: Option<usize>) -> Vec<(String, Vec<u8>)> {
    let c = synth::config(arch, hidden, inter, 1, heads, kv, 16, tied);
    let m = random_quantized_model(&c, QuantParams::new(4, 8).expect("params"), 3).expect("model");
    let dir = Scratch::new("seed-awq");
    let out = dir.path().join("awq");
    let mut w = AwqWriter::new(&out, false);
    if let Some(s) = shard {
        w = w.with_max_shard_bytes(s);
    }
    m.write_to(Box::new(w)).expect("AWQ writer");
    tree(&out)
}

fn awq_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let container = |files: &[(String, Vec<u8>)]| -> Vec<u8> {
        let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        pack(&named, &AWQ_FILES)
    };
    for (name, arch, heads, kv, tied) in [
        ("llama", Arch::Llama, 2, 1, true),
        ("qwen2-bias", Arch::Qwen2, 2, 2, false),
        ("internlm2-wqkv", Arch::InternLM2, 2, 1, false),
    ] {
        out.push(seed("awq_gemm", name, container(&awq_dir(arch, 16, 32, heads, kv, tied, None)), true));
    }
    // Two shards and an index: the largest shard size that still splits the model in two.
    let one = awq_dir(Arch::Llama, 16, 32, 2, 1, true, None);
    let total: usize = one.iter().filter(|(n, _)| n.ends_with(".safetensors")).map(|(_, b)| b.len()).sum();
    for s in [total / 2, total * 3 / 5, total * 2 / 3, total * 3 / 4] {
        let files = awq_dir(Arch::Llama, 16, 32, 2, 1, true, Some(s));
        if files.iter().filter(|(n, _)| n.ends_with(".safetensors")).count() == 2 {
            out.push(seed("awq_gemm", "llama-sharded", container(&files), true));
            break;
        }
    }
    out
}

fn turbomind_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for (name, arch, tied) in [("llama", Arch::Llama, true), ("qwen2-bias", Arch::Qwen2, false)] {
        let c = synth::config(arch, 128, 128, 1, 2, 1, 8, tied);
        let m = random_quantized_model(&c, QuantParams::new(4, 128).expect("params"), 5).expect("model");
        let dir = Scratch::new("seed-tm");
        let ws = dir.path().join("ws");
        m.write_to(Box::new(TurbomindWriter::new(&ws, false))).expect("TurboMind writer");
        let files = tree(&ws);
        let named: Vec<(&str, Vec<u8>)> = files
            .iter()
            .map(|(rel, b)| {
                let n = TURBOMIND_FILES
                    .iter()
                    .find(|n| turbomind_path(n) == *rel)
                    .unwrap_or_else(|| panic!("workspace file {rel} is not a container name"));
                (*n, b.clone())
            })
            .collect();
        out.push(seed("turbomind", name, pack(&named, &TURBOMIND_FILES), true));
        let yaml = files.iter().find(|(n, _)| n.ends_with("config.yaml")).expect("config.yaml").1.clone();
        out.push(seed("turbomind_yaml", &format!("{name}.yaml"), yaml, true));
    }
    // Without config.json the model is rebuilt from config.yaml alone.
    if let Some(s) = out.first() {
        let without: Vec<u8> = {
            let files = crate::targets::unpack(&s.bytes, &TURBOMIND_FILES);
            let named: Vec<(&str, Vec<u8>)> =
                files.into_iter().filter(|(n, _)| *n != "config.json").map(|(n, b)| (n, b.to_vec())).collect();
            pack(&named, &TURBOMIND_FILES)
        };
        out.push(seed("turbomind", "llama-yaml-only", without, true));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// awqc serve request bodies

/// Valid chat and completion bodies using every field the parser reads (and one it ignores).
fn openai_request_seeds() -> Vec<Seed> {
    [
        ("chat-minimal.json", r#"{"messages": [{"role": "user", "content": "hi"}]}"#),
        (
            "chat-full.json",
            r#"{"model": "m", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}]}, {"role": "tool", "tool_call_id": "call_0", "content": "42"}, {"role": "system", "content": "x"}],
  "tools": [{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "int"}}, "required": ["a"]}}}],
  "tool_choice": "auto", "parallel_tool_calls": true, "response_format": {"type": "text"},
  "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "seed": -3,
  "stop": ["END", ""], "n": 1, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": false, "user": "ignored"}"#,
        ),
        (
            "chat-tools-named.json",
            r#"{"messages": [{"role": "user", "content": "add"}], "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
  "tool_choice": {"type": "function", "function": {"name": "add"}}, "parallel_tool_calls": false}"#,
        ),
        (
            "chat-json-schema.json",
            r#"{"messages": [{"role": "user", "content": "json"}], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"n": {"type": "number"}}}}}}"#,
        ),
        ("completion-text.json", r#"{"model": "m", "prompt": "Once upon", "echo": true, "max_tokens": 3, "stop": "\n", "seed": 18446744073709551615}"#),
        ("completion-ids.json", r#"{"prompt": [[1, 2, 3]], "temperature": 0, "top_k": 40, "stream": false, "stream_options": null}"#),
        ("completion-list.json", r#"{"prompt": ["a"], "n": null, "ignore_eos": true}"#),
    ]
    .into_iter()
    .map(|(name, body)| seed("openai_request", name, body.as_bytes().to_vec(), true))
    // A tool result that answers no call is refused (OpenAI does the same).
    .chain(std::iter::once(seed(
        "openai_request",
        "chat-orphan-tool-result.json",
        br#"{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "42"}]}"#.to_vec(),
        false,
    )))
    .collect()
}
