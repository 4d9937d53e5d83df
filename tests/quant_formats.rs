//! Quantized checkpoint formats: AutoAWQ GEMM safetensors and the lmdeploy 0.9.2 TurboMind
//! workspace, on random in-memory models (no fixtures needed).
//!
//! Layout checks decode the written bytes with code written here from the format definitions
//! (awq-reference §6.a, §6.b, §6.d), independent of the library's packers.

use awqc::formats::awq_gemm::{self, read_awq_model, AwqReader, AwqWriter};
use awqc::formats::safetensors_writer::{SafetensorsWriter, TensorSpec};
use awqc::formats::turbomind::{self, awq_to_turbomind, read_turbomind, TurbomindWriter};
use awqc::model::config::ModelConfig;
use awqc::model::weights::SafetensorsRepo;
use awqc::quant::int4::QuantParams;
use awqc::quant::qmodel::{random_quantized_model, QuantSink, QuantizedModel};
use half::{bf16, f16};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The config.yaml lmdeploy 0.9.2 writes for the 2-layer model of awq-reference §6.d, verbatim.
const LMDEPLOY_092_SAMPLE: &str = r#"attention_config:
  cache_block_seq_len: 64
  max_position_embeddings: 2048
  rope_param:
    attention_factor: 1.0
    base: 100000.0
    beta_fast: 32
    beta_slow: 1
    dim: 64
    factor: 1.0
    high_freq_factor: null
    low_freq_factor: null
    max_position_embeddings: null
    mrope_section: null
    original_max_position_embeddings: null
    type: default
  softmax_scale: 0.0
  use_logn_attn: 0
lora_config:
  lora_max_wo_r: 0
  lora_policy: ''
  lora_r: 0
  lora_rank_pattern: ''
  lora_scale: 0.0
  lora_scale_pattern: ''
model_config:
  attn_bias: 0
  attn_tp_size: 1
  chat_template: base
  embedding_size: 1000
  expert_inter_size: 0
  expert_num: []
  experts_per_token: 0
  group_size: 128
  head_num: 4
  hidden_units: 256
  inter_size:
  - 512
  - 512
  kv_head_num: 2
  kv_lora_rank: 0
  mlp_tp_size: 1
  model_arch: LlamaForCausalLM
  model_format: awq
  model_name: llama
  moe_group_num: 1
  moe_shared_gate: false
  norm_eps: 1.0e-05
  norm_topk_prob: false
  num_layer: 2
  q_lora_rank: 0
  qk_norm: false
  qk_rope_dim: 0
  routed_scale: 1.0
  session_len: 2048
  size_per_head: 64
  tokenizer_size: 1000
  topk_group: 1
  topk_method: greedy
  tune_layer_num: 1
  v_head_dim: 0
  vocab_size: 1000
  weight_type: int4
"#;

fn config(v: Value) -> ModelConfig {
    ModelConfig::from_json(&v, "test config.json").unwrap()
}

fn llama(hidden: usize, inter: usize, heads: usize, kv: usize, head_dim: usize, tied: bool) -> ModelConfig {
    config(json!({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "vocab_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2}))
}

fn qwen2(hidden: usize, inter: usize, heads: usize, kv: usize, tied: bool) -> ModelConfig {
    config(json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": 80,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
        "tie_word_embeddings": tied}))
}

fn internlm2(hidden: usize, inter: usize) -> ModelConfig {
    config(json!({"architectures": ["InternLM2ForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 2048,
        "rope_scaling": {"type": "dynamic", "factor": 2.0}, "tie_word_embeddings": false}))
}

fn qp(group: usize) -> QuantParams {
    QuantParams::new(4, group).unwrap()
}

/// A fresh empty directory per test.
fn scratch(name: &str) -> PathBuf {
    awqc::progress::set_quiet(true);
    let d = std::env::temp_dir().join(format!("awqc-qformats-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake model directory with tokenizer files, plus files that must not be copied.
fn tokenizer_dir(base: &Path) -> PathBuf {
    let d = base.join("hf-model");
    std::fs::create_dir_all(&d).unwrap();
    for (name, body) in [
        // A real (two-word) tokenizer: the TurboMind writer reads its length for tokenizer_size.
        (
            "tokenizer.json",
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
                "pre_tokenizer":null,"post_processor":null,"decoder":null,
                "model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#,
        ),
        ("tokenizer_config.json", "{\"add_bos_token\": true}"),
        ("generation_config.json", "{\"do_sample\": true}"),
        ("special_tokens_map.json", "{}"),
        ("tokenizer.model", "sentencepiece bytes"),
        ("config.json", "{\"not\": \"copied\"}"),
        ("README.md", "not copied"),
    ] {
        std::fs::write(d.join(name), body).unwrap();
    }
    d
}

fn write_awq(m: &QuantizedModel, out: &Path, tok: Option<&Path>, shard: Option<usize>) {
    let mut w = AwqWriter::new(out, false);
    if let Some(t) = tok {
        w = w.with_tokenizer_from(t);
    }
    if let Some(s) = shard {
        w = w.with_max_shard_bytes(s);
    }
    m.write_to(Box::new(w)).unwrap();
}

fn write_tm(m: &QuantizedModel, out: &Path, tok: Option<&Path>) {
    let mut w = TurbomindWriter::new(out, false);
    if let Some(t) = tok {
        w = w.with_tokenizer_from(t);
    }
    m.write_to(Box::new(w)).unwrap();
}

/// Every file under `dir` (relative path -> bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_trees_equal(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "file sets differ");
    for (name, bytes) in &ta {
        assert!(bytes == &tb[name], "{name} differs");
    }
}

/// Layers, norms, embedding and lm head equal exactly (the random models hold f16-exact values).
fn assert_models_equal(a: &QuantizedModel, b: &QuantizedModel) {
    assert_eq!(a.params, b.params);
    assert_eq!(a.layers.len(), b.layers.len());
    for (i, (la, lb)) in a.layers.iter().zip(&b.layers).enumerate() {
        assert!(la == lb, "layer {i} differs");
    }
    assert_eq!(a.globals.embed, b.globals.embed);
    assert_eq!(a.globals.norm, b.globals.norm);
    assert_eq!(a.globals.lm_head, b.globals.lm_head);
    let hf = |c: &ModelConfig| {
        let mut v = c.to_hf_json(awqc::tensor::DType::F16);
        v.as_object_mut().unwrap().remove("quantization_config");
        v
    };
    assert_eq!(hf(&a.config), hf(&b.config));
}

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn f16s(bytes: &[u8]) -> Vec<f16> {
    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
}

/// Nibble `nib` of a word.
fn nibble(w: i32, nib: usize) -> u8 {
    ((w as u32 >> (4 * nib)) & 0xF) as u8
}

// ---------------------------------------------------------------------------------------------
// AutoAWQ GEMM

#[test]
fn awq_layout_matches_the_format_definition() {
    let base = scratch("awq-layout");
    // GQA, tied, N of gate/up = 8*37*8 = 2368 (not a multiple of 256), group 64.
    let c = llama(128, 2368, 4, 2, 32, true);
    let m = random_quantized_model(&c, qp(64), 1).unwrap();
    let out = base.join("awq");
    write_awq(&m, &out, None, None);

    let cfg: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"],
        json!({"quant_method": "awq", "zero_point": true, "group_size": 64, "bits": 4, "version": "gemm",
               "modules_to_not_convert": null})
    );
    assert_eq!(cfg["torch_dtype"], "float16");
    let repo = SafetensorsRepo::open_dir(&out).unwrap();
    assert!(!repo.contains("lm_head.weight"), "tied model must not write an lm head");
    let up = &m.layers[1].up;
    let (n, k, g) = (2368, 128, 64);
    let name = "model.layers.1.mlp.up_proj";
    let qw = repo.get_i32(&format!("{name}.qweight"), &[k, n / 8]).unwrap();
    let qz = repo.get_i32(&format!("{name}.qzeros"), &[k / g, n / 8]).unwrap();
    let (meta, sbytes) = repo.raw(&format!("{name}.scales")).unwrap();
    assert_eq!(meta.shape, vec![k / g, n]);
    let scales = f16s(sbytes);
    // qweight[kk, j] nibble i = q[n = 8j + ORDER[i], kk]; ORDER = [0, 2, 4, 6, 1, 3, 5, 7].
    const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
    for kk in 0..k {
        for j in 0..n / 8 {
            for i in 0..8 {
                let col = 8 * j + ORDER[i];
                assert_eq!(nibble(qw[kk * (n / 8) + j], i), up.q[col * k + kk], "qweight [{kk}, {j}] nibble {i}");
            }
        }
    }
    for gi in 0..k / g {
        for col in 0..n {
            let i = ORDER.iter().position(|&o| o == col % 8).unwrap();
            assert_eq!(nibble(qz[gi * (n / 8) + col / 8], i), up.zeros[col * (k / g) + gi]);
            assert_eq!(scales[gi * n + col], up.scales[col * (k / g) + gi]);
        }
    }
    // Embedding and norms are f16.
    assert_eq!(repo.meta("model.embed_tokens.weight").unwrap().shape, vec![96, 128]);
    assert_eq!(repo.get_f32("model.layers.0.input_layernorm.weight").unwrap().data, m.layers[0].attn_norm);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_write_read_round_trips_llama_qwen2_internlm2() {
    let base = scratch("awq-roundtrip");
    let cases = [
        ("llama-gqa-tied", llama(128, 2368, 4, 2, 32, true), 64, None),
        // 8*37 = 296: N of gate/up not a multiple of 16 or 256; group 8 divides it.
        ("llama-n296", llama(64, 296, 4, 4, 16, false), 8, None),
        ("qwen2-bias-sharded", qwen2(128, 384, 4, 2, false), 128, Some(40_000)),
        ("internlm2", internlm2(128, 256), 32, None),
    ];
    for (name, c, g, shard) in cases {
        let m = random_quantized_model(&c, qp(g), 7).unwrap();
        let out = base.join(name);
        write_awq(&m, &out, None, shard);
        assert_eq!(out.join("model.safetensors.index.json").exists(), shard.is_some(), "{name}");
        let back = read_awq_model(&out).unwrap();
        assert_models_equal(&m, &back);
        if c.attention_bias {
            assert_eq!(back.layers[1].k.bias, m.layers[1].k.bias, "{name}: biases");
        }
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_internlm2_wqkv_is_fused_per_kv_group() {
    let base = scratch("awq-internlm2");
    let c = internlm2(128, 256);
    let m = random_quantized_model(&c, qp(32), 3).unwrap();
    let out = base.join("awq");
    write_awq(&m, &out, None, None);
    let repo = SafetensorsRepo::open_dir(&out).unwrap();
    let (d, gq) = (c.head_dim, 4); // 8 heads / 2 KV heads
    let n = c.q_dim() + 2 * c.kv_dim();
    let qw = repo.get_i32("model.layers.0.attention.wqkv.qweight", &[128, n / 8]).unwrap();
    let code = |col: usize, kk: usize| {
        let i = [0, 4, 1, 5, 2, 6, 3, 7][col % 8];
        nibble(qw[kk * (n / 8) + col / 8], i)
    };
    let l = &m.layers[0];
    // KV group 1 starts at fused column (gq + 2) * d: q heads 4..8, then k head 1, then v head 1.
    let g1 = (gq + 2) * d;
    for kk in [0, 17, 127] {
        assert_eq!(code(g1 + 3, kk), l.q.q[(gq * d + 3) * 128 + kk]);
        assert_eq!(code(g1 + gq * d + 5, kk), l.k.q[(d + 5) * 128 + kk]);
        assert_eq!(code(g1 + (gq + 1) * d + 2, kk), l.v.q[(d + 2) * 128 + kk]);
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_unpackable_shapes_are_refused_before_writing() {
    let base = scratch("awq-n8");
    // kv_dim = 1 * 4 = 4 columns: k_proj cannot be packed 8 per int32.
    let c = llama(64, 128, 8, 1, 4, true);
    let m = random_quantized_model(&c, qp(32), 1).unwrap();
    let out = base.join("awq");
    let e = m.write_to(Box::new(AwqWriter::new(&out, false))).unwrap_err();
    assert!(e.msg.contains("model.layers.*.self_attn.k_proj") && e.msg.contains("multiple of 8"), "{}", e.msg);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "staging directory left behind");
    std::fs::remove_dir_all(&base).unwrap();
}

/// Rewrite `dir`'s single model.safetensors with `f` applied to each (name, dtype, shape, bytes).
fn rewrite_safetensors(dir: &Path, f: impl Fn(&str, &'static str, Vec<u8>) -> (&'static str, Vec<u8>)) {
    let path = dir.join("model.safetensors");
    let tensors: Vec<(String, &'static str, Vec<usize>, Vec<u8>)> = {
        let repo = SafetensorsRepo::open_dir(dir).unwrap();
        let names: Vec<String> = repo.names().map(String::from).collect();
        names
            .into_iter()
            .map(|n| {
                let (m, b) = repo.raw(&n).unwrap();
                let dt = match format!("{:?}", m.dtype).as_str() {
                    "F16" => "F16",
                    "I32" => "I32",
                    "BF16" => "BF16",
                    "F32" => "F32",
                    other => panic!("{other}"),
                };
                let (dt, bytes) = f(&n, dt, b.to_vec());
                (n, dt, m.shape.clone(), bytes)
            })
            .collect()
    };
    let specs = tensors.iter().map(|(n, d, s, _)| TensorSpec::new(n.clone(), d, s)).collect();
    let mut w = SafetensorsWriter::create(&path, specs, &[("format", "pt")]).unwrap();
    for (n, _, _, b) in &tensors {
        w.write(n, b).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn awq_bf16_scales_are_accepted_when_exact_and_refused_otherwise() {
    let base = scratch("awq-bf16");
    let c = llama(64, 128, 2, 2, 32, true);
    let m = random_quantized_model(&c, qp(32), 5).unwrap();
    let out = base.join("awq");
    write_awq(&m, &out, None, None);
    // All scales as BF16 (rounded): every bf16 value in this range is exactly an f16.
    let to_bf16 =
        |b: Vec<u8>| -> Vec<u8> { f16s(&b).iter().flat_map(|s| bf16::from_f32(s.to_f32()).to_le_bytes()).collect() };
    rewrite_safetensors(&out, |n, dt, b| if n.ends_with(".scales") { ("BF16", to_bf16(b)) } else { (dt, b) });
    let back = read_awq_model(&out).unwrap();
    let want: Vec<f16> =
        m.layers[0].o.scales.iter().map(|s| f16::from_f32(bf16::from_f32(s.to_f32()).to_f32())).collect();
    assert_eq!(back.layers[0].o.scales, want);
    assert_eq!(back.layers[0].o.q, m.layers[0].o.q);
    // A bf16 scale outside f16's range cannot be converted exactly.
    rewrite_safetensors(&out, |n, dt, mut b| {
        if n == "model.layers.1.mlp.down_proj.scales" {
            b[2..4].copy_from_slice(&bf16::from_f32(1e30).to_le_bytes());
        }
        (dt, b)
    });
    let e = read_awq_model(&out).unwrap_err();
    assert!(e.msg.contains("model.layers.1.mlp.down_proj.scales") && e.msg.contains("f16"), "{}", e.msg);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_reader_checks_quantization_config_and_shapes() {
    let base = scratch("awq-qc");
    let c = llama(64, 128, 2, 2, 32, true);
    let m = random_quantized_model(&c, qp(32), 9).unwrap();
    let out = base.join("awq");
    write_awq(&m, &out, None, None);
    let cfg_path = out.join("config.json");
    let orig: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let cases: [(&str, Value, &str); 5] = [
        ("version", json!("gemv"), "only \"gemm\""),
        ("bits", json!(8), "bits"),
        ("zero_point", json!(false), "zero_point"),
        ("quant_method", json!("gptq"), "only \"awq\""),
        ("group_size", json!(128), "group 128"),
    ];
    for (key, val, want) in cases {
        let mut v = orig.clone();
        v["quantization_config"][key] = val;
        std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = read_awq_model(&out).unwrap_err();
        assert!(e.msg.contains(want), "{key}: {}", e.msg);
        assert!(e.msg.contains("config.json") || e.msg.contains("model.safetensors"), "{key}: {}", e.msg);
    }
    let mut v = orig.clone();
    v.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(read_awq_model(&out).unwrap_err().msg.contains("not a quantized checkpoint"));
    // Upper-case "GEMM" (older AutoAWQ) is accepted.
    let mut v = orig.clone();
    v["quantization_config"]["version"] = json!("GEMM");
    std::fs::write(&cfg_path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(AwqReader::open(&out).unwrap().params(), qp(32));
    std::fs::remove_dir_all(&base).unwrap();
}

// ---------------------------------------------------------------------------------------------
// TurboMind

#[test]
fn config_yaml_equals_lmdeploy_092_sample() {
    let c = config(json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 2048}));
    let got = turbomind::config_yaml(&c, qp(128), "llama", "base", c.vocab_size);
    if got != LMDEPLOY_092_SAMPLE {
        for (i, (a, b)) in got.lines().zip(LMDEPLOY_092_SAMPLE.lines()).enumerate() {
            assert_eq!(a, b, "line {}", i + 1);
        }
        panic!("line counts differ: {} vs {}", got.lines().count(), LMDEPLOY_092_SAMPLE.lines().count());
    }
    // The writer's defaults give the same names.
    let base = scratch("tm-sample");
    let m = random_quantized_model(&c, qp(128), 2).unwrap();
    write_tm(&m, &base.join("ws"), None);
    assert_eq!(
        std::fs::read_to_string(base.join("ws/triton_models/weights/config.yaml")).unwrap(),
        LMDEPLOY_092_SAMPLE
    );
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn config_yaml_rope_and_bias_fields() {
    let qc = qwen2(128, 384, 4, 2, false);
    let y = turbomind::config_yaml(&qc, qp(128), "qwen2", "qwen2d5", qc.vocab_size);
    for line in [
        "  attn_bias: 1\n",
        "  model_arch: Qwen2ForCausalLM\n",
        "    type: yarn\n",
        "    factor: 4.0\n",                         // 4096 / 1024
        "    max_position_embeddings: 1024\n",       // the original length
        "    attention_factor: 1.138629436111989\n", // 0.1 * ln(4) + 1
        "    beta_fast: 32.0\n",
        "    base: 1000000.0\n",
        "  norm_eps: 1.0e-06\n",
        "  session_len: 4096\n",
        "  chat_template: qwen2d5\n",
    ] {
        assert!(y.contains(line), "missing {line:?} in\n{y}");
    }
    let ic = internlm2(128, 256);
    let y = turbomind::config_yaml(&ic, qp(128), "internlm2", "base", ic.vocab_size);
    for line in [
        "    type: dynamic\n",
        "    factor: 2.0\n",
        "    max_position_embeddings: 2048\n",
        "  model_arch: InternLM2ForCausalLM\n",
    ] {
        assert!(y.contains(line), "missing {line:?} in\n{y}");
    }
}

/// Decode a TurboMind int4 linear from its files with the format definition: qweight int32
/// [K, N/8], nibble i of word j = column 8j+i; scales, zeros f16 [K/g, N]. Returns
/// (codes [K][N], scales [K/g][N], zeros [K/g][N]).
type Decoded = (Vec<Vec<u8>>, Vec<Vec<f32>>, Vec<Vec<f32>>);

fn decode_tm(dir: &Path, prefix: &str, k: usize, n: usize, g: usize) -> Decoded {
    let qw = i32s(&std::fs::read(dir.join(format!("{prefix}.qweight"))).unwrap());
    assert_eq!(qw.len(), k * n / 8, "{prefix}.qweight size");
    let codes = (0..k).map(|kk| (0..n).map(|col| nibble(qw[kk * (n / 8) + col / 8], col % 8)).collect()).collect();
    let mat = |name: &str| -> Vec<Vec<f32>> {
        let v = f16s(&std::fs::read(dir.join(format!("{prefix}.{name}"))).unwrap());
        assert_eq!(v.len(), (k / g) * n, "{prefix}.{name} size");
        v.chunks(n).map(|r| r.iter().map(|x| x.to_f32()).collect()).collect()
    };
    (codes, mat("scales"), mat("zeros"))
}

#[test]
fn turbomind_layout_and_rope_permutation_are_as_specified() {
    let base = scratch("tm-layout");
    // Qwen2 with q/k/v biases, GQA (kv_dim 64: not a multiple of 128), untied, inter 384 (3 groups,
    // not a multiple of 256).
    let c = qwen2(256, 384, 8, 2, false);
    let m = random_quantized_model(&c, qp(128), 11).unwrap();
    let ws = base.join("ws");
    let tok = tokenizer_dir(&base);
    write_tm(&m, &ws, Some(&tok));
    let w = ws.join("triton_models/weights");
    let (h, hd, qd, kd) = (256, c.head_dim, c.q_dim(), c.kv_dim());
    let l = &m.layers[1];
    let (codes, scales, zeros) = decode_tm(&w, "layers.1.attention.w_qkv.0", h, qd + 2 * kd, 128);
    // Merged column -> (source linear, source row), with q and k interleaved per head.
    let src = |col: usize| -> (&awqc::quant::int4::QuantizedLinear, usize) {
        let rope = |c: usize| (c / hd) * hd + if c.is_multiple_of(2) { (c % hd) / 2 } else { (c % hd) / 2 + hd / 2 };
        if col < qd {
            (&l.q, rope(col))
        } else if col < qd + kd {
            (&l.k, rope(col - qd))
        } else {
            (&l.v, col - qd - kd)
        }
    };
    for col in 0..qd + 2 * kd {
        let (lin, row) = src(col);
        for kk in 0..h {
            assert_eq!(codes[kk][col], lin.q[row * h + kk], "w_qkv code [{kk}, {col}]");
        }
        for gi in 0..h / 128 {
            assert_eq!(scales[gi][col], lin.scales[row * 2 + gi].to_f32());
            assert_eq!(zeros[gi][col], lin.zeros[row * 2 + gi] as f32);
        }
    }
    let bias: Vec<f32> =
        f16s(&std::fs::read(w.join("layers.1.attention.w_qkv.0.bias")).unwrap()).iter().map(|x| x.to_f32()).collect();
    for col in 0..qd + 2 * kd {
        let (lin, row) = src(col);
        assert_eq!(bias[col], lin.bias.as_ref().unwrap()[row], "bias {col}");
    }
    let wo_bias = std::fs::read(w.join("layers.1.attention.wo.0.bias")).unwrap();
    assert_eq!(wo_bias, vec![0u8; 2 * h], "wo bias is zero-filled [hidden] f16");
    // w2 (down): K = inter = 384, N = hidden, natural order, no padding needed here.
    let (codes, _, zeros) = decode_tm(&w, "layers.1.feed_forward.w2.0", 384, h, 128);
    assert_eq!(codes[300][17], l.down.q[17 * 384 + 300]);
    assert_eq!(zeros[2][255], l.down.zeros[255 * 3 + 2] as f32);
    // Globals: tok_embeddings [vocab, hidden], output [hidden, vocab].
    let emb = f16s(&std::fs::read(w.join("tok_embeddings.0.weight")).unwrap());
    let out = f16s(&std::fs::read(w.join("output.0.weight")).unwrap());
    let head = m.globals.lm_head.as_ref().unwrap();
    assert_eq!(emb[5 * h + 9].to_f32(), m.globals.embed.data[5 * h + 9]);
    assert_eq!(out[9 * 80 + 5].to_f32(), head.data[5 * h + 9]);
    // config.yaml, config.json and tokenizer files at the workspace root.
    let yaml = std::fs::read_to_string(w.join("config.yaml")).unwrap();
    assert!(yaml.contains("  inter_size:\n  - 384\n  - 384\n") && yaml.contains("  attn_bias: 1\n"), "{yaml}");
    // tokenizer_size = min(len(tokenizer), vocab_size), as lmdeploy writes it: the test tokenizer
    // has two words, the vocabulary 80 rows.
    assert!(yaml.contains("  tokenizer_size: 2\n") && yaml.contains("  vocab_size: 80\n"), "{yaml}");
    let names: Vec<String> =
        std::fs::read_dir(&ws).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "triton_models"
        ]
    );
    let cj: Value = serde_json::from_slice(&std::fs::read(ws.join("config.json")).unwrap()).unwrap();
    assert_eq!(cj["quantization_config"]["group_size"], 128);
    assert_eq!(cj["intermediate_size"], 384);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn turbomind_write_read_round_trips() {
    let base = scratch("tm-roundtrip");
    let cases = [
        ("llama-gqa-tied", llama(256, 384, 4, 1, 64, true)),
        ("llama-mha-untied", llama(128, 256, 2, 2, 64, false)),
        ("qwen2-bias", qwen2(256, 384, 8, 2, false)),
        ("internlm2", internlm2(256, 512)),
    ];
    for (name, c) in cases {
        let m = random_quantized_model(&c, qp(128), 13).unwrap();
        let ws = base.join(name);
        write_tm(&m, &ws, None);
        let back = read_turbomind(&ws).unwrap();
        assert_models_equal(&m, &back);
        // Also readable from the weights directory itself.
        let back = read_turbomind(&ws.join("triton_models/weights")).unwrap();
        assert_models_equal(&m, &back);
        // Without config.json the config is rebuilt from config.yaml; tying is detected.
        std::fs::remove_file(ws.join("config.json")).unwrap();
        let back = read_turbomind(&ws).unwrap();
        assert_eq!(back.config.tie_word_embeddings, c.tie_word_embeddings, "{name}");
        assert_eq!(back.config.intermediate_size, c.intermediate_size, "{name}");
        assert_eq!(back.config.rope_scaling.type_name(), c.rope_scaling.type_name(), "{name}");
        for (i, (a, b)) in m.layers.iter().zip(&back.layers).enumerate() {
            assert!(a == b, "{name}: layer {i} differs");
        }
    }
    std::fs::remove_dir_all(&base).unwrap();
}

/// `--zero-point float`: the TurboMind workspace keeps the fp16 zeros exactly (the reader hands
/// them back as float zeros); AutoAWQ GEMM refuses them, from the quantizer's parameters and from
/// a model read back from such a workspace, without leaving an output.
#[test]
fn float_zero_points_round_trip_through_turbomind_and_autoawq_refuses_them() {
    use awqc::model::arch::LinearKind;
    use awqc::quant::int4::ZeroPoint;
    let base = scratch("tm-float-zeros");
    for (name, c) in [("llama", llama(256, 384, 4, 1, 64, true)), ("qwen2-bias", qwen2(256, 384, 8, 2, false))] {
        let m = random_quantized_model(&c, qp(128).with_zero(ZeroPoint::Float), 17).unwrap();
        let ws = base.join(name);
        write_tm(&m, &ws, None);
        let back = read_turbomind(&ws).unwrap();
        for (i, (a, b)) in m.layers.iter().zip(&back.layers).enumerate() {
            for kind in LinearKind::ALL {
                let (la, lb) = (a.linear(kind), b.linear(kind));
                let fz = la.float_zeros.as_ref().unwrap();
                assert!(fz.iter().any(|z| z.to_f32().fract() != 0.0), "{name} layer {i} {kind:?}: no fractional zero");
                assert_eq!(lb.float_zeros.as_ref(), Some(fz), "{name} layer {i} {kind:?}: float zeros");
                assert_eq!((&la.q, &la.zeros, &la.scales, &la.bias), (&lb.q, &lb.zeros, &lb.scales, &lb.bias), "{name} layer {i} {kind:?}");
            }
            let (da, db) = (m.dequantized_layer(i), back.dequantized_layer(i));
            assert!(da.q.w.data == db.q.w.data && da.down.w.data == db.down.w.data, "{name} layer {i}: dequantized weights differ");
        }
        let awq = base.join(format!("{name}-awq"));
        let e = m.write_to(Box::new(AwqWriter::new(&awq, false))).unwrap_err();
        assert!(e.msg.contains("--zero-point float") && e.msg.contains("turbomind"), "{}", e.msg);
        assert!(!awq.exists());
        let e = back.write_to(Box::new(AwqWriter::new(&awq, false))).unwrap_err();
        assert!(e.msg.contains("q_proj") && e.msg.contains("fp16"), "{}", e.msg);
        assert!(!awq.exists(), "a refused AutoAWQ export left {}", awq.display());
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn turbomind_refuses_group_64_before_creating_anything() {
    let base = scratch("tm-g64");
    let c = llama(128, 256, 2, 2, 64, true);
    let m = random_quantized_model(&c, qp(64), 4).unwrap();
    let ws = base.join("ws");
    let e = m.write_to(Box::new(TurbomindWriter::new(&ws, false))).unwrap_err();
    assert!(e.msg.contains("group size 128") && e.msg.contains("64"), "{}", e.msg);
    assert!(!ws.exists());
    // The same through conversion from an AWQ checkpoint.
    let awq = base.join("awq");
    write_awq(&m, &awq, None, None);
    let e = awq_to_turbomind(&awq, &ws, false).unwrap_err();
    assert!(e.msg.contains("group size 128"), "{}", e.msg);
    assert!(!ws.exists());
    let left: Vec<_> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("awq")], "only the AWQ checkpoint may exist");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn existing_outputs_need_force() {
    let base = scratch("force");
    let c = llama(128, 256, 2, 2, 64, true);
    let m = random_quantized_model(&c, qp(128), 4).unwrap();
    for which in ["awq", "tm"] {
        let out = base.join(which);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("keep"), "x").unwrap();
        let sink = |force: bool| -> Box<dyn QuantSink> {
            if which == "awq" {
                Box::new(AwqWriter::new(&out, force))
            } else {
                Box::new(TurbomindWriter::new(&out, force))
            }
        };
        let e = m.write_to(sink(false)).unwrap_err();
        assert!(e.msg.contains("--force"), "{}", e.msg);
        assert!(out.join("keep").exists(), "{which}: existing output touched");
        m.write_to(sink(true)).unwrap();
        assert!(!out.join("keep").exists() && out.join("config.json").exists(), "{which}: not replaced");
    }
    let e = awq_to_turbomind(&base.join("awq"), &base.join("tm"), false).unwrap_err();
    assert!(e.msg.contains("--force"), "{}", e.msg);
    awq_to_turbomind(&base.join("awq"), &base.join("tm"), true).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_to_turbomind_is_byte_identical_to_direct_export() {
    let base = scratch("convert");
    let tok = tokenizer_dir(&base);
    let cases = [
        ("qwen2", qwen2(256, 384, 8, 2, false), None),
        ("llama-tied-sharded", llama(256, 384, 4, 1, 64, true), Some(60_000)),
        ("internlm2", internlm2(256, 512), None),
    ];
    for (name, c, shard) in cases {
        let m = random_quantized_model(&c, qp(128), 21).unwrap();
        let awq = base.join(format!("{name}-awq"));
        write_awq(&m, &awq, Some(&tok), shard);
        let direct = base.join(format!("{name}-direct"));
        write_tm(&m, &direct, Some(&tok));
        let converted = base.join(format!("{name}-converted"));
        let summary = awq_to_turbomind(&awq, &converted, false).unwrap();
        assert_eq!(summary.layers, 2);
        assert_trees_equal(&direct, &converted);
        assert_eq!(summary.files, tree(&converted).len());
        // The AWQ checkpoint got the same tokenizer files (and not the source config.json / README).
        assert_eq!(std::fs::read(awq.join("tokenizer.model")).unwrap(), b"sentencepiece bytes");
        assert!(!awq.join("README.md").exists());
        assert!(std::fs::read_to_string(awq.join("config.json")).unwrap().contains("quantization_config"));
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn writes_are_deterministic_across_runs_and_thread_counts() {
    let base = scratch("determinism");
    let c = qwen2(256, 384, 8, 2, false);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let m1 = one.install(|| random_quantized_model(&c, qp(128), 5).unwrap());
    let m2 = random_quantized_model(&c, qp(128), 5).unwrap();
    one.install(|| write_awq(&m1, &base.join("awq1"), None, Some(50_000)));
    write_awq(&m2, &base.join("awq2"), None, Some(50_000));
    assert_trees_equal(&base.join("awq1"), &base.join("awq2"));
    one.install(|| write_tm(&m1, &base.join("tm1"), None));
    write_tm(&m2, &base.join("tm2"), None);
    assert_trees_equal(&base.join("tm1"), &base.join("tm2"));
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn corrupt_workspaces_give_errors_naming_the_file() {
    let base = scratch("tm-corrupt");
    let c = llama(128, 256, 2, 2, 64, true);
    let m = random_quantized_model(&c, qp(128), 8).unwrap();
    let ws = base.join("ws");
    write_tm(&m, &ws, None);
    let w = ws.join("triton_models/weights");
    // Truncated qweight.
    let qpath = w.join("layers.1.feed_forward.w3.0.qweight");
    let orig = std::fs::read(&qpath).unwrap();
    std::fs::write(&qpath, &orig[..orig.len() - 4]).unwrap();
    let e = read_turbomind(&ws).unwrap_err();
    assert!(e.msg.contains("layers.1.feed_forward.w3.0.qweight") && e.msg.contains("bytes"), "{}", e.msg);
    std::fs::write(&qpath, &orig).unwrap();
    // A zero point that is not finite is refused; one that is not an integer is a float zero
    // (`--zero-point float`), read as such.
    let zpath = w.join("layers.0.attention.wo.0.zeros");
    let orig_z = std::fs::read(&zpath).unwrap();
    let mut z = orig_z.clone();
    z[0..2].copy_from_slice(&f16::INFINITY.to_le_bytes());
    std::fs::write(&zpath, &z).unwrap();
    let e = read_turbomind(&ws).unwrap_err();
    assert!(e.msg.contains("layers.0.attention.wo.0.zeros") && e.msg.contains("non-finite value inf at index 0"), "{}", e.msg);
    z[0..2].copy_from_slice(&f16::from_f32(2.5).to_le_bytes());
    std::fs::write(&zpath, &z).unwrap();
    let back = read_turbomind(&ws).unwrap();
    let fz = back.layers[0].o.float_zeros.as_ref().expect("a fractional zero makes float zeros");
    assert_eq!(fz[0].to_f32(), 2.5);
    assert_eq!(back.layers[0].o.zeros[0], 2, "the integer zero is the float one rounded half to even");
    std::fs::write(&zpath, &orig_z).unwrap();
    // config.yaml that disagrees with config.json.
    let ypath = w.join("config.yaml");
    let y = std::fs::read_to_string(&ypath).unwrap();
    std::fs::write(&ypath, y.replace("  head_num: 2\n", "  head_num: 4\n")).unwrap();
    let e = read_turbomind(&ws).unwrap_err();
    assert!(e.msg.contains("head_num") && e.msg.contains("config.yaml"), "{}", e.msg);
    std::fs::write(&ypath, y.replace("  group_size: 128\n", "  group_size: 64\n")).unwrap();
    assert!(read_turbomind(&ws).is_err());
    std::fs::write(&ypath, "model_config:\n  weight_type: [\n").unwrap();
    assert!(read_turbomind(&ws).is_err());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn awq_pack_order_constants_are_inverse() {
    for (i, &c) in awq_gemm::AWQ_ORDER.iter().enumerate() {
        assert_eq!(awq_gemm::AWQ_REVERSE_ORDER[c], i);
    }
    // Hand-computed: codes 0x1..0x8 in columns 0..7 pack to 0x86427531.
    assert_eq!(awq_gemm::pack_awq(&[1, 2, 3, 4, 5, 6, 7, 8], 1, 8), vec![0x8642_7531u32 as i32]);
}

#[test]
fn fp16_overflow_is_refused_naming_the_tensor_and_nothing_is_left() {
    // The boundary: 65504 is f16's largest finite value and 65519 still rounds down to it; 65520
    // rounds to inf.
    assert!(awqc::tensor::encode_f16_checked("t", &[65504.0, -65519.0, f32::INFINITY]).is_ok());
    let e = awqc::tensor::encode_f16_checked("t", &[1.0, 65520.0]).unwrap_err();
    assert!(e.msg.contains("65520") && e.msg.contains("flat index 1") && e.msg.contains("fp16"), "{}", e.msg);

    // A layer norm that AWQ folding (or bf16 training) pushed past fp16: both writers refuse it,
    // naming the tensor in their own format's name, before renaming anything into place.
    let base = scratch("f16-overflow");
    let c = llama(128, 256, 2, 2, 64, true);
    let mut m = random_quantized_model(&c, qp(128), 4).unwrap();
    m.layers[1].mlp_norm[3] = 1.0e5;
    for (which, name) in [("awq", "model.layers.1.post_attention_layernorm.weight"), ("tm", "layers.1.ffn_norm.weight")] {
        let out = base.join(which);
        let sink: Box<dyn QuantSink> =
            if which == "awq" { Box::new(AwqWriter::new(&out, false)) } else { Box::new(TurbomindWriter::new(&out, false)) };
        let e = m.write_to(sink).unwrap_err();
        assert!(e.msg.contains(name) && e.msg.contains("100000"), "{which}: {}", e.msg);
        assert!(!out.exists(), "{which}: output left behind");
    }
    let left: Vec<_> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "staging directories left behind: {left:?}");
    std::fs::remove_dir_all(&base).unwrap();
}
