//! Hostile input, end to end: malformed files through the real `awqc` binary.
//!
//! Every refused case asserts
//! - the exit code class (2 usage, 3 bad input, 6 I/O; never 1 "internal", never 101 = a panic),
//! - that stderr is exactly one line, `awqc: error: ...`, naming the file (and tensor or field)
//!   and the problem (fragments checked per case), and that stdout is empty,
//! - that nothing was left next to the output: the watched directory lists the same before and
//!   after (no output, no staging directory, no report).
//!
//! Small hand-made bad files live in `tests/bad/` (config.json, text, config.yaml); the rest are
//! generated here by corrupting valid tiny models built with the library (`model::synth`,
//! `quant::qmodel::random_quantized_model`, the safetensors / AWQ / TurboMind writers). Each
//! command first runs on the unmodified model (a positive control), so every refusal below is
//! caused by its corruption.
//!
//! The last tests replay the fuzz seeds and the crash inputs kept as regressions
//! (`fuzz/seeds/`, `fuzz/regressions/`) through the fuzz target functions, so the fuzz harness is
//! checked by the ordinary test suite, without nightly.

#[path = "common/gguf_writer.rs"]
mod gguf_writer;
#[path = "../fuzz/src/seeds.rs"]
mod seeds;
#[path = "../fuzz/src/targets.rs"]
mod targets;

use awqc::data::build::documents_to_parquet;
use awqc::formats::awq_gemm::AwqWriter;
use awqc::formats::safetensors_writer::{SafetensorsWriter, TensorSpec};
use awqc::formats::turbomind::awq_to_turbomind;
use awqc::model::arch::{global_names, linear_module, norm_names, LinearKind};
use awqc::model::config::{Arch, ModelConfig};
use awqc::model::synth;
use awqc::quant::int4::QuantParams;
use awqc::quant::qmodel::random_quantized_model;
use awqc::tensor::DType;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Running the binary

/// Exit codes (src/error.rs).
const USAGE: i32 = 2;
const INPUT: i32 = 3;
const IO: i32 = 6;

fn awqc(args: &[OsString]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_awqc"))
        .args(args)
        .env_remove("AWQC_CALIB_DIR")
        .output()
        .expect("running the awqc binary")
}

fn args(a: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--quiet".into()];
    v.extend(a.iter().map(|x| x.as_ref().to_os_string()));
    v
}

/// Sorted names in `dir` (empty when it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Collects the failures of many cases, so one run reports all of them.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    cases: usize,
}

impl Report {
    /// Run a command that must succeed (a positive control).
    fn ok(&mut self, label: &str, a: Vec<OsString>) {
        let out = awqc(&a);
        if !out.status.success() {
            self.failures.push(format!(
                "{label}: the control run failed ({:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }

    /// Run a command that must be refused with exit `code` and a one-line message containing every
    /// fragment of `want`, leaving `watch` as it was.
    fn refused(&mut self, label: &str, a: Vec<OsString>, code: i32, want: &[&str], watch: &Path) {
        self.cases += 1;
        let before = listing(watch);
        let out = awqc(&a);
        let after = listing(watch);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let mut bad = Vec::new();
        if out.status.code() != Some(code) {
            bad.push(format!("exit {:?}, expected {code}", out.status.code()));
        }
        let lines: Vec<&str> = stderr.lines().collect();
        if lines.len() != 1 || !lines[0].starts_with("awqc: error: ") {
            bad.push(format!("stderr is not one `awqc: error:` line: {stderr:?}"));
        }
        for w in want {
            if !stderr.contains(w) {
                bad.push(format!("message lacks {w:?}"));
            }
        }
        if !stdout.is_empty() {
            bad.push(format!("stdout not empty: {stdout:?}"));
        }
        if before != after {
            bad.push(format!("{} changed: {before:?} -> {after:?}", watch.display()));
        }
        if !bad.is_empty() {
            self.failures.push(format!("{label}: {} | stderr: {}", bad.join("; "), stderr.trim()));
        }
    }

    fn finish(self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} {what} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: valid tiny models to corrupt

fn fixtures() -> PathBuf {
    match std::env::var_os("AWQC_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")),
    }
}

fn bad_file(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad")).join(rel)
}

/// Tensors of a full-precision model, in writing order: `(name, shape, values)`.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

struct Base {
    root: PathBuf,
    /// A valid HF model: llama, hidden 64, 1 layer, 4 heads / 2 KV heads, the SmolLM2 vocabulary.
    hf: PathBuf,
    hf_config: Value,
    hf_tensors: Tensors,
    /// A valid AutoAWQ-GEMM checkpoint (hidden 128, group 128) with the tokenizer.
    awq: PathBuf,
    /// The TurboMind workspace converted from `awq`.
    tm: PathBuf,
    /// A valid GGUF file (the fuzz seed model).
    gguf: PathBuf,
    /// Plain English text (a few KB of the tiny-stories fixture).
    text: PathBuf,
}

const VOCAB: usize = 49152;

fn hf_tensors(c: &ModelConfig) -> Tensors {
    let g = synth::globals(c, 7);
    let (emb, norm, _) = global_names(c.arch);
    let mut t = vec![(emb.to_string(), g.embed.shape.clone(), g.embed.data.clone())];
    t.push((norm.to_string(), vec![c.hidden_size], g.norm.clone()));
    for i in 0..c.num_hidden_layers {
        let l = synth::layer(c, 7, i);
        let (n1, n2) = norm_names(c.arch, i);
        t.push((n1, vec![c.hidden_size], l.attn_norm.clone()));
        t.push((n2, vec![c.hidden_size], l.mlp_norm.clone()));
        for k in LinearKind::ALL {
            let lin = l.linear(k);
            t.push((format!("{}.weight", linear_module(c.arch, i, k)), lin.w.shape.clone(), lin.w.data.clone()));
        }
    }
    t
}

/// Write tensors as one F16 safetensors file (`dtype` per tensor overridable by the caller).
fn write_safetensors(path: &Path, tensors: &[(String, &'static str, Vec<usize>, Vec<u8>)]) {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(n, d, s, _)| TensorSpec::new(n.clone(), d, s)).collect();
    let mut w = SafetensorsWriter::create(path, specs, &[("format", "pt")]).unwrap();
    for (n, _, _, b) in tensors {
        w.write(n, b).unwrap();
    }
    w.finish().unwrap();
}

fn f16_tensors(t: &Tensors) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    t.iter().map(|(n, s, v)| (n.clone(), "F16", s.clone(), DType::F16.encode(v))).collect()
}

fn copy_tokenizer(dst: &Path) {
    let src = fixtures().join("smollm2-hf");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let p = src.join(f);
        assert!(p.is_file(), "{} is missing: run `make fixtures`", p.display());
        std::fs::copy(&p, dst.join(f)).unwrap();
    }
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        awqc::progress::set_quiet(true);
        // Earlier runs' directories (their process is gone) are removed; this run's stays for
        // inspection until the next run.
        for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("awqc-bad-inputs-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = std::env::temp_dir().join(format!("awqc-bad-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();

        let hf = root.join("base-hf");
        std::fs::create_dir_all(&hf).unwrap();
        let hf_config = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
            "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2});
        let c = ModelConfig::from_json(&hf_config, "base").unwrap();
        let hf_tensors = hf_tensors(&c);
        std::fs::write(hf.join("config.json"), serde_json::to_vec_pretty(&hf_config).unwrap()).unwrap();
        write_safetensors(&hf.join("model.safetensors"), &f16_tensors(&hf_tensors));
        copy_tokenizer(&hf);

        let tok = root.join("base-tok");
        std::fs::create_dir_all(&tok).unwrap();
        copy_tokenizer(&tok);
        let ac = synth::config(Arch::Llama, 128, 256, 1, 4, 2, VOCAB, true);
        let m = random_quantized_model(&ac, QuantParams::new(4, 128).unwrap(), 11).unwrap();
        let awq = root.join("base-awq");
        m.write_to(Box::new(AwqWriter::new(&awq, false).with_tokenizer_from(&tok))).unwrap();
        let tm = root.join("base-tm");
        awq_to_turbomind(&awq, &tm, false).unwrap();

        let gguf = root.join("base.gguf");
        seeds::gguf_llama().write(&gguf);

        let text = root.join("base.txt");
        let tiny = std::fs::read_to_string(fixtures().join("text/tiny.utf8"))
            .unwrap_or_else(|e| panic!("fixtures/text/tiny.utf8: {e}: run `make fixtures`"));
        let cut = tiny.char_indices().map(|(i, _)| i).find(|&i| i >= 4000).unwrap_or(tiny.len());
        std::fs::write(&text, &tiny[..cut]).unwrap();
        Base { root, hf, hf_config, hf_tensors, awq, tm, gguf, text }
    })
}

/// A fresh, empty directory for one test (the base models live in `base-*`).
fn case_root(name: &str) -> PathBuf {
    let d = base().root.join(format!("case-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of `src` under `dst` made of symlinks (the big files are shared); corrupt it with
/// [`replace`], which swaps one link for a real file.
fn link_copy(src: &Path, dst: &Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            link_copy(&p, &to);
        } else {
            std::os::unix::fs::symlink(&p, &to).unwrap();
        }
    }
    dst.to_path_buf()
}

fn replace(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).unwrap();
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// The header of a safetensors file and the data after it.
fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    [(h.len() as u64).to_le_bytes().to_vec(), h, data.to_vec()].concat()
}

// ---------------------------------------------------------------------------------------------
// awqc convert <gguf>

#[test]
fn convert_refuses_malformed_gguf() {
    let b = base();
    let dir = case_root("gguf");
    let mut r = Report::default();
    let good = read(&b.gguf);
    let out = dir.join("out");
    r.ok("convert good.gguf", args(&[&"convert", &b.gguf, &"--out", &out]));
    let _ = std::fs::remove_dir_all(&out);

    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = {
        let mut v = Vec::new();
        v.push(("truncated-header", good[..10].to_vec(), vec!["truncated GGUF file: 10 bytes"]));
        v.push(("truncated-metadata", good[..600].to_vec(), vec!["truncated"]));
        let mut m = good.clone();
        m[..4].copy_from_slice(b"GGML");
        v.push(("bad-magic", m, vec!["not a GGUF file (magic \"GGML\""]));
        let mut m = good.clone();
        m[4..8].copy_from_slice(&7u32.to_le_bytes());
        v.push(("version-7", m, vec!["unsupported GGUF version 7 (only versions 2 and 3)"]));
        v.push((
            "data-past-eof",
            good[..good.len() - 1].to_vec(),
            vec!["tensor \"output.weight\"", "extends past the end of the file"],
        ));
        let mut m = good.clone();
        m[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
        v.push(("absurd-tensor-count", m, vec!["tensor count = 4611686018427387904 is impossible"]));
        let mut g = seeds::gguf_llama();
        let mut arr = gguf_writer::vt::STRING.to_le_bytes().to_vec();
        arr.extend((1u64 << 40).to_le_bytes());
        g.kv_raw("tokenizer.ggml.merges", gguf_writer::vt::ARRAY, arr);
        v.push((
            "absurd-array-length",
            g.build(),
            vec!["array length of metadata key \"tokenizer.ggml.merges\" = 1099511627776 is impossible"],
        ));
        let mut g = seeds::gguf_llama();
        g.tensor_dims("blk.0.attn_q.weight", vec![1 << 32, 1 << 32, 1 << 32], gguf_writer::gt::F32, vec![]);
        v.push(("absurd-dims", g.build(), vec!["tensor \"blk.0.attn_q.weight\": element count", "overflows"]));
        let mut g = seeds::gguf_llama();
        g.tensor_dims("blk.0.attn_q.weight", vec![256, 32], gguf_writer::gt::Q2_K, vec![0; 84 * 32]);
        v.push(("ggml-type-q2k", g.build(), vec!["tensor \"blk.0.attn_q.weight\" has unsupported ggml type Q2_K"]));
        let mut g = seeds::gguf_llama();
        g.str("general.architecture", "gpt2");
        v.push(("arch-gpt2", g.build(), vec!["unsupported architecture \"gpt2\" (supported: llama, qwen2)"]));
        let mut g = seeds::gguf_llama();
        g.str("tokenizer.ggml.model", "llama");
        v.push(("sentencepiece", g.build(), vec!["SentencePiece tokenizers"]));
        v
    };
    for (name, bytes, want) in cases {
        let src = dir.join(format!("{name}.gguf"));
        std::fs::write(&src, bytes).unwrap();
        let src_s = src.display().to_string();
        let mut w = want.clone();
        w.push(&src_s);
        r.refused(&format!("convert {name}"), args(&[&"convert", &src, &"--out", &out]), INPUT, &w, &dir);
    }
    r.finish("convert");
}

// ---------------------------------------------------------------------------------------------
// HF model directories through inspect, eval, quantize and calibrate

/// The four commands that read a full-precision model directory, with settings that fail fast.
fn hf_commands(model: &Path, out_dir: &Path, text: &Path) -> Vec<(&'static str, Vec<OsString>)> {
    vec![
        ("inspect", args(&[&"inspect", &"--model", &model])),
        ("eval", args(&[&"eval", &"--model", &model, &"--raw-text", &text, &"--seqlen", &"8", &"--windows", &"1"])),
        (
            "quantize",
            args(&[
                &"quantize",
                &"--model",
                &model,
                &"--out",
                &out_dir.join("q"),
                &"--calib-samples",
                &"0",
                &"--w-group-size",
                &"64",
            ]),
        ),
        (
            "calibrate",
            args(&[
                &"calibrate",
                &"--model",
                &model,
                &"--out",
                &out_dir.join("stats.safetensors"),
                &"--calib-dataset",
                &text,
                &"--calib-samples",
                &"1",
                &"--calib-seqlen",
                &"8",
            ]),
        ),
    ]
}

#[test]
fn hf_model_dirs_are_refused_by_every_command() {
    let b = base();
    let dir = case_root("hf");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut r = Report::default();
    for (cmd, a) in hf_commands(&b.hf, &out, &b.text) {
        r.ok(&format!("{cmd} on the valid model"), a);
    }
    for e in listing(&out) {
        let p = out.join(e);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let st = read(&b.hf.join("model.safetensors"));
    let (header, data) = split_safetensors(&st);
    let k = "model.layers.0.self_attn.k_proj.weight";
    let q = "model.layers.0.self_attn.q_proj.weight";

    // (name, edit, commands it applies to, fragments)
    type Edit = Box<dyn Fn(&Path)>;
    let all = &["inspect", "eval", "quantize", "calibrate"][..];
    let loaders = &["eval", "quantize", "calibrate"][..];
    let mut cases: Vec<(&str, Edit, &[&str], Vec<String>)> = Vec::new();
    {
        let mut h = header.clone();
        h[k]["shape"] = json!([16, 64]);
        let bytes = join_safetensors(&h, &data);
        cases.push((
            "st-shape-lies-about-size",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            all,
            vec![format!("tensor \"{k}\": shape [16, 64] of F16 does not fill data_offsets")],
        ));
    }
    {
        let bytes = st[..st.len() - 100].to_vec();
        cases.push((
            "st-data-truncated",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            all,
            vec!["invalid safetensors file: tensor".into(), "run past the".into()],
        ));
    }
    {
        let mut h = header.clone();
        let end = h[q]["data_offsets"][1].as_u64().unwrap();
        h[q]["data_offsets"] = json!([end + 64, end + 64 + 64 * 64 * 2]);
        let bytes = join_safetensors(&h, &data);
        cases.push((
            "st-offsets-out-of-place",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            all,
            vec!["invalid safetensors file: tensor".into()],
        ));
    }
    {
        let mut bytes = st.clone();
        bytes[..8].copy_from_slice(&(st.len() as u64 + 1000).to_le_bytes());
        let want = format!("header length {} runs past the end of the file ({} bytes)", st.len() + 1000, st.len());
        cases.push(("st-header-length-past-eof", Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)), all, vec![want]));
    }
    {
        let mut bytes = st.clone();
        bytes[8..20].copy_from_slice(b"{not json!!!");
        cases.push((
            "st-header-not-json",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            all,
            vec!["invalid safetensors file: the header is not valid JSON".into()],
        ));
    }
    for (file, want) in [
        ("missing-field.json", "field \"hidden_size\" is missing"),
        ("wrong-type.json", "field \"num_attention_heads\" must be a non-negative integer, got \"four\""),
        ("not-json.json", "not valid JSON"),
        ("gpt2.json", "unsupported architecture \"GPT2LMHeadModel\" (model_type \"gpt2\")"),
    ] {
        let bytes = read(&bad_file(&format!("config/{file}")));
        cases.push((
            file,
            Box::new(move |d: &Path| replace(d, "config.json", &bytes)),
            all,
            vec!["config.json: ".into(), want.into()],
        ));
    }
    let rewrite = |edit: &dyn Fn(&mut Tensors)| -> Vec<u8> {
        let mut t = b.hf_tensors.clone();
        edit(&mut t);
        let p = dir.join("tmp.safetensors");
        write_safetensors(&p, &f16_tensors(&t));
        let bytes = read(&p);
        std::fs::remove_file(&p).unwrap();
        bytes
    };
    {
        let bytes = rewrite(&|t: &mut Tensors| {
            let e = t.iter_mut().find(|e| e.0 == k).unwrap();
            e.1 = vec![64, 32];
        });
        cases.push((
            "tensor-wrong-shape",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            loaders,
            vec![format!("tensor \"{k}\" has shape [64, 32], expected [32, 64]")],
        ));
    }
    {
        let gone = "model.layers.0.mlp.up_proj.weight";
        let bytes = rewrite(&|t: &mut Tensors| t.retain(|e| e.0 != gone));
        cases.push((
            "tensor-missing",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            loaders,
            vec![format!("tensor \"{gone}\" not found")],
        ));
    }
    for (name, v) in [("weight-nan", f32::NAN), ("weight-inf", f32::INFINITY)] {
        let bytes = rewrite(&|t: &mut Tensors| t.iter_mut().find(|e| e.0 == q).unwrap().2[77] = v);
        cases.push((
            name,
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            loaders,
            vec![format!("tensor \"{q}\" has a non-finite value {v} at flat index 77")],
        ));
    }
    {
        let mut wm = serde_json::Map::new();
        for (n, _, _) in &b.hf_tensors {
            wm.insert(n.clone(), json!("model-00001-of-00001.safetensors"));
        }
        let idx = serde_json::to_vec(&json!({"metadata": {}, "weight_map": wm})).unwrap();
        cases.push((
            "index-names-missing-shard",
            Box::new(move |d: &Path| replace(d, "model.safetensors.index.json", &idx)),
            all,
            vec!["model.safetensors.index.json: weight_map names shard \"model-00001-of-00001.safetensors\", which is not in".into()],
        ));
    }
    cases.push((
        "config-json-absent",
        Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()),
        all,
        vec!["config.json".into()],
    ));
    {
        let mut c = b.hf_config.clone();
        c["rope_scaling"] = json!({"rope_type": "su", "factor": 2.0});
        let bytes = serde_json::to_vec(&c).unwrap();
        cases.push((
            "config-rope-scaling-unsupported",
            Box::new(move |d: &Path| replace(d, "config.json", &bytes)),
            all,
            vec!["config.json: unsupported rope_scaling type \"su\"".into()],
        ));
    }

    for (name, edit, cmds, want) in &cases {
        let model = link_copy(&b.hf, &dir.join(name));
        edit(&model);
        for (cmd, a) in hf_commands(&model, &out, &b.text) {
            if !cmds.contains(&cmd) {
                continue;
            }
            let mut w: Vec<&str> = want.iter().map(String::as_str).collect();
            let model_s = model.display().to_string();
            w.push(&model_s);
            r.refused(&format!("{cmd} {name}"), a, INPUT, &w, &out);
        }
    }
    r.finish("HF model");
}

// ---------------------------------------------------------------------------------------------
// Texts and datasets

#[test]
fn text_and_dataset_files_are_refused() {
    let b = base();
    let dir = case_root("text");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut r = Report::default();
    let empty_parquet = dir.join("empty.parquet");
    std::fs::write(&empty_parquet, documents_to_parquet(&[]).unwrap()).unwrap();
    let no_text = dir.join("no-text-column.parquet");
    {
        use arrow::array::StringArray;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![Field::new("content", DataType::Utf8, true)]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["a document", "another one"]))],
        )
        .unwrap();
        let f = std::fs::File::create(&no_text).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let (empty, latin1, jsonl, short) =
        (bad_file("text/empty.txt"), bad_file("text/latin1.txt"), bad_file("text/bad-lines.jsonl"), bad_file("text/short.txt"));
    let s = |p: &Path| p.display().to_string();
    let eval = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut a = args(&[&"eval", &"--model", &b.hf, &"--windows", &"1"]);
        if !extra.iter().any(|x| x.as_ref() == "--seqlen") {
            a.extend(["--seqlen".into(), "8".into()]);
        }
        a.extend(extra.iter().map(|x| x.as_ref().to_os_string()));
        a
    };
    let quantize = |data: &Path, seqlen: &str| {
        args(&[
            &"quantize",
            &"--model",
            &b.hf,
            &"--out",
            &out.join("q"),
            &"--w-group-size",
            &"64",
            &"--calib-dataset",
            &data,
            &"--calib-samples",
            &"1",
            &"--calib-seqlen",
            &seqlen,
        ])
    };
    let calibrate = |data: &Path| {
        args(&[
            &"calibrate",
            &"--model",
            &b.hf,
            &"--out",
            &out.join("stats.safetensors"),
            &"--calib-dataset",
            &data,
            &"--calib-samples",
            &"1",
            &"--calib-seqlen",
            &"8",
        ])
    };
    r.ok("eval --raw-text good.txt", eval(&[&"--raw-text", &b.text]));

    let cases: Vec<(&str, Vec<OsString>, i32, Vec<String>)> = vec![
        ("eval --raw-text empty.txt", eval(&[&"--raw-text", &empty]), INPUT, vec![s(&empty), "has only 0 tokens".into()]),
        (
            "eval --raw-text latin1.txt",
            eval(&[&"--raw-text", &latin1]),
            INPUT,
            vec![s(&latin1), "not valid UTF-8 at byte offset 7 (line 1)".into()],
        ),
        (
            "eval --raw-text short.txt --seqlen 512",
            eval(&[&"--raw-text", &short, &"--seqlen", &"512"]),
            INPUT,
            vec![s(&short), "fewer than one window of --seqlen 512".into()],
        ),
        ("eval --dataset empty.txt", eval(&[&"--dataset", &empty]), INPUT, vec![s(&empty), "no documents".into()]),
        (
            "eval --dataset empty.parquet",
            eval(&[&"--dataset", &empty_parquet]),
            INPUT,
            vec![s(&empty_parquet), "no documents".into()],
        ),
        (
            "eval --dataset no-text-column.parquet",
            eval(&[&"--dataset", &no_text]),
            INPUT,
            vec![s(&no_text), "no \"text\" column (columns: content (Utf8))".into()],
        ),
        (
            "eval --dataset bad-lines.jsonl",
            eval(&[&"--dataset", &jsonl]),
            INPUT,
            vec![s(&jsonl), "line 2: not valid JSON".into()],
        ),
        (
            "eval --dataset no-such-dataset",
            eval(&[&"--dataset", &"no-such-dataset"]),
            USAGE,
            vec!["no-such-dataset: no such dataset or file".into()],
        ),
        (
            "quantize --calib-dataset latin1.txt",
            quantize(&latin1, "8"),
            INPUT,
            vec![s(&latin1), "not valid UTF-8".into()],
        ),
        ("quantize --calib-dataset empty.txt", quantize(&empty, "8"), INPUT, vec![s(&empty), "no documents".into()]),
        (
            "quantize --calib-dataset empty.parquet",
            quantize(&empty_parquet, "8"),
            INPUT,
            vec![s(&empty_parquet), "no documents".into()],
        ),
        (
            "quantize --calib-dataset no-text-column.parquet",
            quantize(&no_text, "8"),
            INPUT,
            vec![s(&no_text), "no \"text\" column".into()],
        ),
        (
            "quantize --calib-dataset bad-lines.jsonl",
            quantize(&jsonl, "8"),
            INPUT,
            vec![s(&jsonl), "line 2: not valid JSON".into()],
        ),
        (
            "quantize --calib-dataset short.txt --calib-seqlen 512",
            quantize(&short, "512"),
            INPUT,
            vec![s(&short), "tokens, fewer than one block of seqlen 512".into()],
        ),
        ("calibrate --calib-dataset latin1.txt", calibrate(&latin1), INPUT, vec![s(&latin1), "not valid UTF-8".into()]),
        (
            "calibrate --calib-dataset bad-lines.jsonl",
            calibrate(&jsonl),
            INPUT,
            vec![s(&jsonl), "line 2: not valid JSON".into()],
        ),
    ];
    let mut cases = cases;
    // Crash inputs the fuzzer found in arrow-ipc (the first byte is the fuzz target's format
    // selector): a buffer offset past the data (a panic inside the crate) and a footer block of
    // 3e18 bytes (allocated before reading).
    let arrow_cases = [
        ("arrow-ipc-buffer-offset-panic", "malformed data: the decoder failed (the offset of the new Buffer"),
        ("arrow-ipc-file-block-size-unbounded", "lies outside the file"),
    ];
    let mut arrow_files = Vec::new();
    for (name, want) in arrow_cases {
        let bytes = read(&fuzz_dir().join("regressions/textfile").join(name));
        let p = dir.join(format!("{name}.arrow"));
        std::fs::write(&p, &bytes[1..]).unwrap();
        arrow_files.push((name, p, want));
    }
    for (name, p, want) in &arrow_files {
        cases.push((name, eval(&[&"--dataset", p]), INPUT, vec![s(p), want.to_string()]));
    }
    for (label, a, code, want) in cases {
        let w: Vec<&str> = want.iter().map(String::as_str).collect();
        r.refused(label, a, code, &w, &out);
    }
    r.finish("text");
}

// ---------------------------------------------------------------------------------------------
// Quantize flags and output paths

#[test]
fn quantize_flags_and_outputs_are_checked_before_any_work() {
    let b = base();
    let dir = case_root("flags");
    let mut r = Report::default();
    let q = |out: &Path, extra: &[&str]| {
        let mut a = args(&[&"quantize", &"--model", &b.hf, &"--out", &out, &"--calib-samples", &"0"]);
        a.extend(extra.iter().map(OsString::from));
        a
    };
    let out = dir.join("out");
    r.ok("quantize RTN group 64", q(&out, &["--w-group-size", "64"]));
    assert!(out.join("config.json").is_file() && out.with_file_name("out.report.json").is_file());
    let before = read(&out.join("config.json"));

    r.refused(
        "group 128 on hidden 64",
        q(&dir.join("g128"), &["--w-group-size", "128"]),
        USAGE,
        &["--w-group-size 128: does not divide the input size 64 of model.layers.0", "group sizes that work: 32, 64"],
        &dir,
    );
    r.refused(
        "group 24",
        q(&dir.join("g24"), &["--w-group-size", "24"]),
        USAGE,
        &["--w-group-size 24: does not divide the input size 64", "group sizes that work: 32, 64"],
        &dir,
    );
    r.refused(
        "--w-bits 3",
        q(&dir.join("w3"), &["--w-bits", "3", "--w-group-size", "64"]),
        USAGE,
        &["--w-bits 3", "4-bit"],
        &dir,
    );
    let out_s = out.display().to_string();
    r.refused(
        "existing output without --force",
        q(&out, &["--w-group-size", "64"]),
        USAGE,
        &[&out_s, "output path exists (pass --force to replace it)"],
        &dir,
    );
    assert_eq!(read(&out.join("config.json")), before, "the existing output was modified");

    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("out");
    r.refused(
        "output under a regular file",
        q(&under_file, &["--w-group-size", "64"]),
        IO,
        &[&under_file.display().to_string(), &format!("{} is not a directory", file.display())],
        &dir,
    );
    // A directory nobody may create entries in: mode 0555, or /sys when running as root (root
    // ignores the mode bits; sysfs refuses new entries to everyone).
    let ro = dir.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let ro = if std::fs::create_dir(ro.join("probe")).is_ok() { PathBuf::from("/sys") } else { ro };
    let under_ro = ro.join("awqc-out");
    r.refused(
        "output in a read-only directory",
        q(&under_ro, &["--w-group-size", "64"]),
        IO,
        &[&format!("{}: cannot be created in {}", under_ro.display(), ro.display())],
        &ro,
    );
    r.refused(
        "--turbomind-out with group 64",
        q(&dir.join("awq64"), &["--w-group-size", "64", "--turbomind-out", &dir.join("tm64").display().to_string()]),
        USAGE,
        &["--turbomind-out: TurboMind loads only 4-bit group-128 weights", "--w-group-size 64"],
        &dir,
    );
    r.refused(
        "calibrate to an existing file",
        args(&[&"calibrate", &"--model", &b.hf, &"--out", &out.with_file_name("out.report.json"), &"--calib-samples", &"1"]),
        USAGE,
        &["out.report.json: output path exists"],
        &dir,
    );
    r.refused("quantize --batch-size 0", q(&dir.join("bs0"), &["--batch-size", "0"]), USAGE, &["--batch-size must be at least 1"], &dir);
    r.refused("--zero-search without calibration", q(&dir.join("zs0"), &["--w-group-size", "64", "--zero-search"]), USAGE, &["--zero-search needs calibration data (--calib-samples is 0)"], &dir);
    r.refused(
        "--zero-point float into AutoAWQ",
        q(&dir.join("zf"), &["--w-group-size", "64", "--zero-point", "float"]),
        USAGE,
        &["--zero-point float", "4-bit integer zero points", "--out-format turbomind"],
        &dir,
    );
    r.refused(
        "--zero-point float with --gptq",
        q(&dir.join("zfg"), &["--zero-point", "float", "--out-format", "turbomind", "--gptq"]),
        USAGE,
        &["--zero-point float does not combine with --gptq"],
        &dir,
    );
    r.refused(
        "--out-format turbomind with group 64",
        q(&dir.join("tmo64"), &["--w-group-size", "64", "--out-format", "turbomind"]),
        USAGE,
        &["--out-format turbomind: TurboMind loads only 4-bit group-128 weights", "--w-group-size 64"],
        &dir,
    );
    r.refused("--calib-sampling unknown", q(&dir.join("cs"), &["--calib-sampling", "shuffled"]), USAGE, &["--calib-sampling", "shuffled"], &dir);
    r.refused(
        "calibrate --batch-size 0",
        args(&[&"calibrate", &"--model", &b.hf, &"--out", &dir.join("bs0.safetensors"), &"--calib-samples", &"1", &"--batch-size", &"0"]),
        USAGE,
        &["--batch-size must be at least 1"],
        &dir,
    );
    // --max-memory: a size clap can parse, and at least two calibration chunks' worth.
    let mm = |out: &Path, cap: &str| {
        args(&[&"quantize", &"--model", &b.hf, &"--out", &out, &"--calib-samples", &"4", &"--calib-seqlen", &"64", &"--w-group-size", &"64", &"--max-memory", &cap])
    };
    r.refused("--max-memory with an unknown unit", mm(&dir.join("mm1"), "10X"), USAGE, &["--max-memory", "unknown unit \"X\""], &dir);
    r.refused(
        "--max-memory below two chunks",
        mm(&dir.join("mm2"), "1K"),
        USAGE,
        &["--max-memory 1024 bytes", "below two calibration chunks' activations", "--batch-size 1 x --calib-seqlen 64"],
        &dir,
    );
    r.finish("quantize flag");
}

// ---------------------------------------------------------------------------------------------
// AutoAWQ checkpoints and TurboMind workspaces

#[test]
fn quantized_checkpoints_are_refused_by_eval_and_convert() {
    let b = base();
    let dir = case_root("quantized");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut r = Report::default();
    let eval = |m: &Path| args(&[&"eval", &"--model", &m, &"--raw-text", &b.text, &"--seqlen", &"8", &"--windows", &"1"]);
    let convert = |m: &Path| args(&[&"convert", &m, &"--to", &"turbomind", &"--out", &out.join("tm")]);
    r.ok("eval AWQ", eval(&b.awq));
    r.ok("eval TurboMind", eval(&b.tm));
    r.ok("inspect TurboMind", args(&[&"inspect", &"--model", &b.tm]));
    r.ok("convert AWQ -> TurboMind", convert(&b.awq));
    let _ = std::fs::remove_dir_all(out.join("tm"));

    let awq_cfg: Value = serde_json::from_slice(&read(&b.awq.join("config.json"))).unwrap();
    let awq_st = read(&b.awq.join("model.safetensors"));
    let (header, data) = split_safetensors(&awq_st);
    let qw = "model.layers.0.self_attn.q_proj.qweight";
    let sc = "model.layers.0.mlp.down_proj.scales";

    type Edit = Box<dyn Fn(&Path)>;
    // (name, edit, also through convert --to turbomind, exit code, fragments)
    let mut awq: Vec<(&str, Edit, bool, i32, Vec<String>)> = Vec::new();
    for (name, key, v, want) in [
        ("quant-version-gemv", "version", json!("gemv"), "quantization_config.version is \"gemv\"; only \"gemm\""),
        ("quant-bits-8", "bits", json!(8), "quantization_config.bits is Some(8); AWQ GEMM needs 4"),
        ("quant-method-gptq", "quant_method", json!("gptq"), "quantization_config.quant_method is \"gptq\""),
        ("quant-group-0", "group_size", json!(0), "quantization_config.group_size 0 is not a positive multiple of 8"),
    ] {
        let mut c = awq_cfg.clone();
        c["quantization_config"][key] = v;
        let bytes = serde_json::to_vec(&c).unwrap();
        awq.push((name, Box::new(move |d: &Path| replace(d, "config.json", &bytes)), true, INPUT, vec![format!("config.json: {want}")]));
    }
    {
        let mut c = awq_cfg.clone();
        c["quantization_config"]["group_size"] = json!(64);
        let bytes = serde_json::to_vec(&c).unwrap();
        awq.push((
            "quant-group-64",
            Box::new(move |d: &Path| replace(d, "config.json", &bytes)),
            false,
            INPUT,
            vec!["tensor \"model.layers.0.self_attn.q_proj.qzeros\" has shape [1, 16], expected [2, 16]".into()],
        ));
    }
    {
        // Same bytes, a different shape: [128, 16] -> [256, 8].
        let mut h = header.clone();
        h[qw]["shape"] = json!([256, 8]);
        let bytes = join_safetensors(&h, &data);
        awq.push((
            "qweight-wrong-shape",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            true,
            INPUT,
            vec![format!("tensor \"{qw}\" has shape [256, 8], expected [128, 16]")],
        ));
    }
    {
        let mut h = header.clone();
        h[qw]["dtype"] = json!("F32");
        let bytes = join_safetensors(&h, &data);
        awq.push((
            "qweight-wrong-dtype",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            true,
            INPUT,
            vec![format!("tensor \"{qw}\" has dtype F32; expected I32")],
        ));
    }
    {
        let mut d2 = data.clone();
        let at = header[sc]["data_offsets"][0].as_u64().unwrap() as usize + 2 * 5;
        d2[at..at + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        let bytes = join_safetensors(&header, &d2);
        awq.push((
            "scales-inf",
            Box::new(move |d: &Path| replace(d, "model.safetensors", &bytes)),
            true,
            INPUT,
            vec![format!("tensor \"{sc}\" has a non-finite value at index 5")],
        ));
    }
    for (name, edit, also_convert, code, want) in &awq {
        let model = link_copy(&b.awq, &dir.join(name));
        edit(&model);
        let model_s = model.display().to_string();
        let mut w: Vec<&str> = want.iter().map(String::as_str).collect();
        w.push(&model_s);
        r.refused(&format!("eval AWQ {name}"), eval(&model), *code, &w, &out);
        if *also_convert {
            r.refused(&format!("convert AWQ {name}"), convert(&model), *code, &w, &out);
        }
    }
    // A group-64 checkpoint cannot become a TurboMind workspace: refused before anything is written.
    {
        let model = link_copy(&b.awq, &dir.join("convert-group-64"));
        let mut c = awq_cfg.clone();
        c["quantization_config"]["group_size"] = json!(64);
        replace(&model, "config.json", &serde_json::to_vec(&c).unwrap());
        r.refused(
            "convert AWQ group 64",
            convert(&model),
            INPUT,
            &[&format!("{}: quantization_config.group_size is 64; TurboMind workspaces need group size 128", model.join("config.json").display())],
            &out,
        );
    }

    let w = "triton_models/weights";
    let yaml = String::from_utf8(read(&b.tm.join(w).join("config.yaml"))).unwrap();
    let qkv = format!("{w}/layers.0.attention.w_qkv.0.qweight");
    let zeros = format!("{w}/layers.0.feed_forward.w2.0.zeros");
    let norm = format!("{w}/layers.0.ffn_norm.weight");
    let mut tm: Vec<(&str, String, Vec<u8>, Vec<String>)> = Vec::new();
    {
        let full = read(&b.tm.join(&qkv));
        let want = format!("expected {} bytes (int32 [128, 32]), the file has {}", full.len(), full.len() - 4);
        tm.push(("truncated-tensor-file", qkv.clone(), full[..full.len() - 4].to_vec(), vec![want]));
    }
    tm.push((
        "yaml-garbage",
        format!("{w}/config.yaml"),
        read(&bad_file("yaml/garbage.yaml")),
        vec!["config.yaml: line 3: expected \"key: value\"".into()],
    ));
    tm.push((
        "yaml-missing-key",
        format!("{w}/config.yaml"),
        yaml.lines().filter(|l| !l.contains("weight_type")).collect::<Vec<_>>().join("\n").into_bytes(),
        vec!["config.yaml: key \"model_config.weight_type\" is missing".into()],
    ));
    tm.push((
        "yaml-layers-mismatch",
        format!("{w}/config.yaml"),
        yaml.replace("num_layer: 1", "num_layer: 2").replace("inter_size:\n  - 256", "inter_size:\n  - 256\n  - 256").into_bytes(),
        vec!["num_layer / num_hidden_layers: 2 in config.yaml but 1 in".into()],
    ));
    {
        let mut z = read(&b.tm.join(&zeros));
        // A fractional zero is a float zero (`--zero-point float`) and loads; an infinite one not.
        z[..2].copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
        tm.push(("zero-point-infinite", zeros.clone(), z, vec!["non-finite value -inf at index 0".into()]));
    }
    {
        let mut n = read(&b.tm.join(&norm));
        n[6..8].copy_from_slice(&half::f16::NAN.to_le_bytes());
        tm.push(("norm-nan", norm.clone(), n, vec!["ffn_norm.weight: non-finite value NaN at index 3".into()]));
    }
    tm.push((
        "tensor-file-absent",
        format!("{w}/layers.0.feed_forward.w3.0.scales"),
        Vec::new(),
        vec!["w3.0.scales: missing from the workspace (f16 [1, 256])".into()],
    ));
    for (name, rel, bytes, want) in &tm {
        let model = link_copy(&b.tm, &dir.join(name));
        if *name == "tensor-file-absent" {
            std::fs::remove_file(model.join(rel)).unwrap();
        } else {
            replace(&model, rel, bytes);
        }
        let model_s = model.display().to_string();
        let mut w: Vec<&str> = want.iter().map(String::as_str).collect();
        w.push(&model_s);
        r.refused(&format!("eval TurboMind {name}"), eval(&model), INPUT, &w, &out);
        r.refused(&format!("inspect TurboMind {name}"), args(&[&"inspect", &"--model", &model]), INPUT, &w, &out);
    }
    r.finish("quantized checkpoint");
}

// ---------------------------------------------------------------------------------------------
// The fuzz corpus, replayed through the fuzz targets

fn fuzz_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
}

/// The seeds under fuzz/seeds/ are what `fuzz/src/seeds.rs` builds (run with
/// `AWQC_WRITE_FUZZ_SEEDS=1` to rewrite them), and every one is accepted by its target as
/// declared: the harness really reaches the deep code.
#[test]
fn fuzz_seeds_are_current_and_accepted() {
    awqc::progress::set_quiet(true);
    let write = std::env::var_os("AWQC_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    let mut bad = Vec::new();
    let all = seeds::seeds();
    for s in &all {
        let p = fuzz_dir().join("seeds").join(s.target).join(&s.name);
        if write {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &s.bytes).unwrap();
        } else if std::fs::read(&p).ok().as_deref() != Some(&s.bytes[..]) {
            bad.push(format!("{} is missing or stale (AWQC_WRITE_FUZZ_SEEDS=1 rewrites it)", p.display()));
        }
        let f = targets::target(s.target).unwrap_or_else(|| panic!("no target {}", s.target));
        if f(&s.bytes) != s.accepted {
            bad.push(format!("{}/{}: accepted should be {}", s.target, s.name, s.accepted));
        }
    }
    for (t, _) in targets::TARGETS {
        if !all.iter().any(|s| s.target == *t) {
            bad.push(format!("target {t} has no seed"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Every file under fuzz/seeds/<target>/ and fuzz/regressions/<target>/ (crash inputs found by
/// fuzzing, kept after the fix) runs through its target without a panic.
#[test]
fn fuzz_corpus_replays_without_crash() {
    awqc::progress::set_quiet(true);
    let mut crashed = Vec::new();
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        for (t, f) in targets::TARGETS {
            let d = fuzz_dir().join(kind).join(t);
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&d).map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
            files.sort();
            for p in files {
                let bytes = read(&p);
                n += 1;
                if std::panic::catch_unwind(|| f(&bytes)).is_err() {
                    crashed.push(p.display().to_string());
                }
            }
        }
    }
    assert!(n >= targets::TARGETS.len(), "only {n} corpus files found under {}", fuzz_dir().display());
    assert!(crashed.is_empty(), "inputs that crash their fuzz target:\n{}", crashed.join("\n"));
}

/// The hand-made bad files through the fuzz targets as well: refused cleanly, never a crash.
#[test]
fn hand_made_bad_files_are_refused_by_the_parsers() {
    awqc::progress::set_quiet(true);
    for f in ["missing-field.json", "wrong-type.json", "not-json.json", "gpt2.json"] {
        assert!(!targets::config_json(&read(&bad_file(&format!("config/{f}")))), "{f} was accepted");
    }
    assert!(!targets::turbomind_yaml(&read(&bad_file("yaml/garbage.yaml"))));
    // The text target takes a format byte first: 3 = plain text, 2 = jsonl.
    for (sel, f) in [(3u8, "empty.txt"), (3, "latin1.txt"), (2, "bad-lines.jsonl")] {
        let input = [vec![sel], read(&bad_file(&format!("text/{f}")))].concat();
        assert!(!targets::textfile(&input), "{f} was accepted");
    }
    assert!(targets::textfile(&[vec![3u8], read(&bad_file("text/short.txt"))].concat()), "short.txt is valid text");
}

/// Malformed `awqc serve` request bodies through the `openai_request` target: each is refused by
/// both endpoints with a one-line 4xx OpenAI error (the target asserts that), never a panic.
#[test]
fn malformed_openai_requests_are_refused_by_the_parser() {
    let deep = "[".repeat(10_000);
    let bodies: [&[u8]; 15] = [
        b"",
        b" \n\t ",
        b"{\"messages\": [",
        b"\xff\xfe{}",
        deep.as_bytes(),
        b"[1, 2]",
        b"null",
        b"{}",
        b"{\"messages\": [{\"role\": \"wizard\"}], \"prompt\": [[]]}",
        b"{\"messages\": [], \"prompt\": []}",
        b"{\"messages\": [{\"role\": \"user\"}], \"prompt\": \"x\", \"top_p\": 0}",
        b"{\"messages\": [{\"role\": \"user\"}], \"prompt\": [4294967296], \"max_tokens\": 0}",
        b"{\"messages\": [{\"role\": \"user\"}], \"prompt\": \"x\", \"temperature\": 1e999}",
        // Found by fuzzing: finite as f64, infinite as the sampler's f32 (fuzz/regressions/openai_request/).
        b"{\"messages\": [{\"role\": \"user\"}], \"prompt\": \"x\", \"temperature\": 1e40}",
        b"{\"messages\": [{\"role\": \"user\"}], \"prompt\": \"x\", \"stop\": [\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
    ];
    for b in bodies {
        assert!(!targets::openai_request(b), "{:?} was accepted", String::from_utf8_lossy(&b[..b.len().min(80)]));
    }
    // A body both endpoints accept.
    assert!(targets::openai_request(br#"{"messages": [{"role": "user", "content": "x"}], "prompt": "x"}"#));
}
