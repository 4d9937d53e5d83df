//! The fuzz targets: one function per parser awqc runs on user files.
//!
//! Each takes the raw fuzz input and returns `true` when the input was accepted all the way
//! through (the seeds in `fuzz/seeds/` must be), `false` when it was refused with an error. What
//! counts as a finding: a panic, an abort, a hang or an unbounded allocation; and an error that is
//! not a bad-input error ([`ErrorKind::Input`], exit code 3) or does not say where it comes from.
//!
//! The same functions run in two places: the cargo-fuzz binaries (`fuzz/fuzz_targets/*.rs`, one
//! line each) and `tests/bad_inputs.rs`, which replays every seed and regression file through
//! them in the ordinary test suite (this file is included there with `#[path]`).
//!
//! Readers that take a directory get the input as a small container (see [`unpack`]) that is
//! written out into a scratch directory first.

use awqc::data::textfile::{load_documents, split_documents};
use awqc::data::tokenizer::Tokenizer;
use awqc::formats::awq_gemm::read_awq_model;
use awqc::formats::gguf::GgufFile;
use awqc::formats::gguf_import::{config_from_gguf, import_gguf, ImportOptions};
use awqc::formats::safetensors_writer::{ShardedWriter, TensorSpec};
use awqc::formats::tokenizer_json::HfTokenizer;
use awqc::formats::turbomind::{parse_yaml, read_turbomind, to_yaml, Yaml, WEIGHTS_SUBDIR};
use awqc::model::config::ModelConfig;
use awqc::model::weights::SafetensorsRepo;
use awqc::serve::openai::{chat_from_body, completion_from_body, ApiError, GenParams, PromptInput, MAX_STOP_STRINGS, ROLES};
use awqc::tensor::DType;
use awqc::{Error, ErrorKind};
use safetensors::tensor::Dtype as StDtype;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every target by name (the directory names under `fuzz/seeds/` and `fuzz/regressions/`).
pub const TARGETS: &[(&str, fn(&[u8]) -> bool)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("safetensors_roundtrip", safetensors_roundtrip),
    ("config_json", config_json),
    ("tokenizer_json", tokenizer_json),
    ("textfile", textfile),
    ("awq_gemm", awq_gemm),
    ("turbomind_yaml", turbomind_yaml),
    ("turbomind", turbomind),
    ("openai_request", openai_request),
];

pub fn target(name: &str) -> Option<fn(&[u8]) -> bool> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

// ---------------------------------------------------------------------------------------------
// Plumbing

/// A fresh directory, removed on drop. Under `/dev/shm` when there is one (no disk traffic at
/// thousands of executions per second); unique per process and per call, so replays may run on
/// several threads.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = base.join(format!("awqc-fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("creating a scratch directory");
        Scratch(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("creating a scratch subdirectory");
        }
        std::fs::write(&p, bytes).expect("writing a scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The container for directory inputs: records `[name index: u8][length: u32 LE][bytes]` until
/// the input ends (a short last record takes what is left). The file name is
/// `names[index % names.len()]`; a later record for a name replaces an earlier one.
pub fn unpack<'a>(data: &'a [u8], names: &[&'static str]) -> Vec<(&'static str, &'a [u8])> {
    let mut out: Vec<(&'static str, &'a [u8])> = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 {
        let name = names[rest[0] as usize % names.len()];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = &rest[5..];
        let (file, tail) = body.split_at(len.min(body.len()));
        out.retain(|(n, _)| *n != name);
        out.push((name, file));
        rest = tail;
    }
    out
}

/// Inverse of [`unpack`] (seeds and tests): `files` are `(name, bytes)` with names from `names`.
pub fn pack(files: &[(&str, Vec<u8>)], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        let i = names.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name} is not a container name"));
        out.push(i as u8);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// An error from hostile input must be a bad-input error (exit code 3, never "internal") whose
/// one-line message names where the problem is: `want` is a file or directory name it must contain.
fn refused(e: Error, want: &str) -> bool {
    assert_eq!(e.kind, ErrorKind::Input, "hostile input gave a {:?} error, not Input: {}", e.kind, e.msg);
    let line = e.to_string();
    assert!(!line.contains('\n'), "multi-line error: {line:?}");
    assert!(line.contains(want), "error does not name {want:?}: {line}");
    false
}

fn ok_or_refused<T>(r: awqc::Result<T>, want: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            refused(e, want);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// A GGUF file: header, metadata and tensor table; every tensor dequantized; the model config and
/// the HF tokenizer rebuilt from the metadata; and, when all that works, the full import into an
/// HF directory (plan, q/k un-permutation, safetensors writer).
pub fn gguf(data: &[u8]) -> bool {
    const NAME: &str = "fuzz.gguf";
    let Some(g) = ok_or_refused(GgufFile::from_bytes(data, NAME), NAME) else { return false };
    for t in g.tensors() {
        let Some(x) = ok_or_refused(g.tensor_f32(&t.name), NAME) else { return false };
        assert_eq!(x.numel(), t.numel(), "tensor {:?}", t.name);
        assert_eq!(x.shape, t.shape(), "tensor {:?}", t.name);
    }
    let Some(cfg) = ok_or_refused(config_from_gguf(&g), NAME) else { return false };
    let Some(tok) = ok_or_refused(HfTokenizer::from_gguf(&g, Some(cfg.max_position_embeddings)), NAME) else {
        return false;
    };
    // The importer refuses a tokenizer that would not load as an internal error: a GGUF must not
    // be able to reach that.
    if let Err(e) = tok.load() {
        panic!("tokenizer built from a GGUF that passed the checks does not load: {}", e.msg);
    }
    let dir = Scratch::new("gguf");
    let src = dir.write("m.gguf", data);
    let out = dir.path().join("out");
    let src_name = src.display().to_string();
    match import_gguf(&src, &out, &ImportOptions { dtype: DType::F16, force: false }) {
        Ok(r) => {
            let repo = SafetensorsRepo::open_dir(&out).expect("reading back the imported model");
            assert_eq!(repo.names().count(), r.tensors);
            true
        }
        Err(e) => {
            let left: Vec<String> = std::fs::read_dir(dir.path())
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
                .unwrap_or_default();
            assert_eq!(left, ["m.gguf"], "a failed import left files behind");
            refused(e, &src_name)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// One safetensors file through `SafetensorsRepo`: the header, then every tensor read as what its
/// dtype allows (floats to f32, I32 as codes).
pub fn safetensors(data: &[u8]) -> bool {
    let dir = Scratch::new("st");
    let path = dir.write("model.safetensors", data);
    let name = path.display().to_string();
    let Some(repo) = ok_or_refused(SafetensorsRepo::open_files(std::slice::from_ref(&path)), &name) else {
        return false;
    };
    let names: Vec<String> = repo.names().map(str::to_string).collect();
    for n in &names {
        let Some(meta) = repo.meta(n).cloned() else { panic!("listed tensor {n:?} has no metadata") };
        let Some((_, raw)) = ok_or_refused(repo.raw(n), &name) else { return false };
        let numel: usize = meta.shape.iter().product();
        match meta.dtype {
            StDtype::F32 | StDtype::F16 | StDtype::BF16 => {
                let Some(t) = ok_or_refused(repo.get_f32(n), &name) else { return false };
                assert_eq!(t.numel(), numel);
                assert_eq!(raw.len(), numel * meta.dtype.bitsize() / 8);
            }
            StDtype::I32 => {
                let Some(v) = ok_or_refused(repo.get_i32(n, &meta.shape), &name) else { return false };
                assert_eq!(v.len(), numel);
            }
            _ => {
                // Other dtypes are refused by name, never misread.
                let e = repo.get_f32(n).expect_err("a non-float tensor read as f32");
                refused(e, &name);
            }
        }
    }
    let _ = repo.main_dtype();
    true
}

/// The writer: tensor specs and bytes derived from the input are written (single file or shards)
/// and must read back exactly.
pub fn safetensors_roundtrip(data: &[u8]) -> bool {
    const DTYPES: [(&str, usize); 5] = [("F32", 4), ("F16", 2), ("BF16", 2), ("I32", 4), ("U8", 1)];
    let mut it = data.iter().copied();
    let mut next = || it.next().unwrap_or(0);
    let count = next() % 9;
    let max_shard = 1 + next() as usize * 8;
    let mut specs: Vec<TensorSpec> = Vec::new();
    for i in 0..count {
        let name_len = next() % 12;
        let name: String = (0..name_len).map(|_| (b' ' + next() % 95) as char).collect();
        let name = if name.is_empty() || name == "__metadata__" || specs.iter().any(|s| s.name == name) {
            format!("t{i}")
        } else {
            name
        };
        let (dtype, _) = DTYPES[next() as usize % DTYPES.len()];
        let ndim = next() % 4;
        let shape: Vec<usize> = (0..ndim).map(|_| (next() % 7) as usize).collect();
        if specs.iter().any(|s| s.name == name) {
            continue;
        }
        specs.push(TensorSpec::new(name, dtype, &shape));
    }
    let payload: Vec<u8> = data.iter().rev().copied().collect();
    let bytes_of = |s: &TensorSpec, salt: usize| -> Vec<u8> {
        (0..s.nbytes()).map(|j| payload.get((j + salt) % payload.len().max(1)).copied().unwrap_or(j as u8)).collect()
    };
    let dir = Scratch::new("strt");
    let mut w = ShardedWriter::create(dir.path(), "model", specs.clone(), max_shard, &[("format", "pt")])
        .expect("creating the writer");
    for (i, s) in specs.iter().enumerate() {
        w.write(&s.name, &bytes_of(s, i)).expect("writing a tensor");
    }
    w.finish().expect("finishing the writer");
    let repo = SafetensorsRepo::open_dir(dir.path()).expect("reading back what the writer wrote");
    assert_eq!(repo.names().count(), specs.len());
    for (i, s) in specs.iter().enumerate() {
        let (m, raw) = repo.raw(&s.name).expect("a written tensor");
        assert_eq!(m.shape, s.shape, "{:?}", s.name);
        assert_eq!(format!("{:?}", m.dtype), s.dtype, "{:?}", s.name);
        assert_eq!(raw, &bytes_of(s, i)[..], "{:?}", s.name);
    }
    !specs.is_empty()
}

// ---------------------------------------------------------------------------------------------
// config.json

/// `ModelConfig::from_json`, then a round trip through `to_hf_json` that must give the same config.
pub fn config_json(data: &[u8]) -> bool {
    const NAME: &str = "config.json";
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return false };
    let Some(c) = ok_or_refused(ModelConfig::from_json(&v, NAME), NAME) else { return false };
    let _ = c.num_parameters();
    let back = ModelConfig::from_json(&c.to_hf_json(DType::F16), NAME).expect("to_hf_json output must parse");
    let key = |c: &ModelConfig| {
        (
            c.arch,
            [c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads],
            [c.num_key_value_heads, c.head_dim, c.vocab_size, c.max_position_embeddings],
            (c.rms_norm_eps.to_bits(), c.rope_theta.to_bits(), format!("{:?}", c.rope_scaling)),
            (c.tie_word_embeddings, c.attention_bias, c.bos_token_id, c.eos_token_id),
        )
    };
    assert_eq!(key(&back), key(&c), "config changed in a to_hf_json round trip");
    true
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

pub const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// A tokenizer directory (tokenizer.json plus the optional side files) loaded as awqc loads it,
/// then a few texts encoded and decoded.
pub fn tokenizer_json(data: &[u8]) -> bool {
    let dir = Scratch::new("tok");
    for (name, bytes) in unpack(data, &TOKENIZER_FILES) {
        dir.write(name, bytes);
    }
    let want = dir.path().display().to_string();
    let Some(tok) = ok_or_refused(Tokenizer::from_model_dir(dir.path()), &want) else { return false };
    for text in ["", "Hello world", "a\n\nb  c\t1234 <|im_start|>", "é ü 日本語 🙂"] {
        let Some(ids) = ok_or_refused(tok.encode(text), &want) else { return false };
        let Some(_) = ok_or_refused(tok.decode(&ids), &want) else { return false };
    }
    let _ = (tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.chunk_rule());
    true
}

// ---------------------------------------------------------------------------------------------
// Documents

const TEXT_EXTS: [&str; 4] = ["parquet", "arrow", "jsonl", "txt"];

/// A dataset file: the first byte picks the format (parquet, arrow, jsonl, text), the rest is the
/// file; loaded with `load_documents` as `--calib-dataset` / `eval --dataset` do.
pub fn textfile(data: &[u8]) -> bool {
    let Some((&sel, body)) = data.split_first() else { return false };
    let ext = TEXT_EXTS[sel as usize % TEXT_EXTS.len()];
    if ext == "txt" {
        if let Ok(text) = std::str::from_utf8(body) {
            let _ = split_documents("fuzz.txt", text).map_err(|e| refused(e, "fuzz.txt"));
        }
    }
    let dir = Scratch::new("text");
    let path = dir.write(&format!("d.{ext}"), body);
    let Some(docs) = ok_or_refused(load_documents(&path), &path.display().to_string()) else { return false };
    assert!(docs.iter().any(|d| !d.is_empty()), "load_documents returned no text");
    true
}

// ---------------------------------------------------------------------------------------------
// AutoAWQ GEMM checkpoints

pub const AWQ_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "quant_config.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// An AutoAWQ-GEMM checkpoint directory read with `read_awq_model` (config, quantization_config,
/// every tensor checked against the config), then every layer dequantized.
pub fn awq_gemm(data: &[u8]) -> bool {
    let dir = Scratch::new("awq");
    for (name, bytes) in unpack(data, &AWQ_FILES) {
        dir.write(name, bytes);
    }
    let want = dir.path().display().to_string();
    let Some(m) = ok_or_refused(read_awq_model(dir.path()), &want) else { return false };
    for i in 0..m.layers.len() {
        let l = m.dequantized_layer(i);
        assert_eq!(l.q.w.shape, vec![m.config.q_dim(), m.config.hidden_size]);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// TurboMind workspaces

/// config.yaml alone: the YAML subset parser, and the emitter on whatever it parsed.
pub fn turbomind_yaml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let Some(y) = ok_or_refused(parse_yaml(text, "config.yaml"), "config.yaml") else { return false };
    if let Yaml::Map(entries) = &y {
        let _ = to_yaml(entries);
    }
    true
}

/// Files of a one-layer workspace: `config.json` at the root, the rest under triton_models/weights.
pub const TURBOMIND_FILES: [&str; 25] = [
    "config.json",
    "config.yaml",
    "tok_embeddings.0.weight",
    "norm.weight",
    "output.0.weight",
    "layers.0.attention_norm.weight",
    "layers.0.ffn_norm.weight",
    "layers.0.attention.w_qkv.0.qweight",
    "layers.0.attention.w_qkv.0.scales",
    "layers.0.attention.w_qkv.0.zeros",
    "layers.0.attention.w_qkv.0.bias",
    "layers.0.attention.wo.0.qweight",
    "layers.0.attention.wo.0.scales",
    "layers.0.attention.wo.0.zeros",
    "layers.0.attention.wo.0.bias",
    "layers.0.feed_forward.w1.0.qweight",
    "layers.0.feed_forward.w1.0.scales",
    "layers.0.feed_forward.w1.0.zeros",
    "layers.0.feed_forward.w3.0.qweight",
    "layers.0.feed_forward.w3.0.scales",
    "layers.0.feed_forward.w3.0.zeros",
    "layers.0.feed_forward.w2.0.qweight",
    "layers.0.feed_forward.w2.0.scales",
    "layers.0.feed_forward.w2.0.zeros",
    "tokenizer.json",
];

/// Where a container file goes inside a workspace.
pub fn turbomind_path(name: &str) -> String {
    match name {
        "config.json" | "tokenizer.json" => name.to_string(),
        _ => format!("{WEIGHTS_SUBDIR}/{name}"),
    }
}

/// A workspace read with `read_turbomind` (config.yaml, the optional config.json, every raw
/// tensor file checked by size, padding and permutations undone), then every layer dequantized.
pub fn turbomind(data: &[u8]) -> bool {
    let dir = Scratch::new("tm");
    for (name, bytes) in unpack(data, &TURBOMIND_FILES) {
        dir.write(&turbomind_path(name), bytes);
    }
    let want = dir.path().display().to_string();
    let Some(m) = ok_or_refused(read_turbomind(dir.path()), &want) else { return false };
    for i in 0..m.layers.len() {
        let l = m.dequantized_layer(i);
        assert_eq!(l.down.w.shape, vec![m.config.hidden_size, m.config.intermediate_size]);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// awqc serve: OpenAI request bodies

/// A refused request must be a client error (4xx) with a one-line message, a type and a code, and
/// its `{"error": ...}` body must serialize.
fn api_refused(e: &ApiError, endpoint: &str) {
    assert!((400..500).contains(&e.status), "{endpoint}: status {} for a bad request: {e}", e.status);
    assert!(!e.message.trim().is_empty(), "{endpoint}: empty error message: {e:?}");
    assert!(!e.message.contains('\n'), "{endpoint}: multi-line error message: {:?}", e.message);
    assert!(!e.kind.is_empty() && !e.code.is_empty(), "{endpoint}: error without a type or code: {e:?}");
    if let Some(p) = &e.param {
        assert!(!p.is_empty(), "{endpoint}: empty param: {e:?}");
    }
    serde_json::to_vec(&e.body()).expect("error bodies serialize");
}

/// What validation promises the handlers about the sampling fields.
fn valid_params(p: &GenParams) {
    assert!(p.max_tokens.is_none_or(|m| m >= 1), "max_tokens {:?}", p.max_tokens);
    assert!(p.temperature.is_finite() && p.temperature >= 0.0, "temperature {}", p.temperature);
    assert!(p.top_p > 0.0 && p.top_p <= 1.0, "top_p {}", p.top_p);
    assert!(p.stop.len() <= MAX_STOP_STRINGS && p.stop.iter().all(|s| !s.is_empty()), "stop {:?}", p.stop);
}

/// The body of a `POST /v1/chat/completions` and of a `POST /v1/completions` request (the same
/// bytes to both): parsed and validated as the server does, before the model is involved. Each is
/// accepted or refused with an OpenAI-style 4xx error; an accepted one satisfies what the handlers
/// rely on. True when either endpoint accepts the body.
pub fn openai_request(data: &[u8]) -> bool {
    let chat = match chat_from_body(data) {
        Ok(r) => {
            assert!(!r.messages.is_empty());
            for m in &r.messages {
                let role = m.get("role").and_then(|r| r.as_str()).expect("an accepted message has a string role");
                assert!(ROLES.contains(&role) && role != "developer", "role {role:?} got through");
            }
            valid_params(&r.params);
            true
        }
        Err(e) => {
            api_refused(&e, "chat");
            false
        }
    };
    let completion = match completion_from_body(data) {
        Ok(r) => {
            match &r.prompt {
                PromptInput::Text(_) => {}
                PromptInput::Ids(ids) => assert!(!ids.is_empty(), "empty token id prompt"),
            }
            valid_params(&r.params);
            true
        }
        Err(e) => {
            api_refused(&e, "completion");
            false
        }
    };
    chat || completion
}
