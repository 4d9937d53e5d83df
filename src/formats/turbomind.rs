//! The TurboMind workspace of lmdeploy 0.9.2 (`lmdeploy convert`; awq-reference §6.b, §6.d), the
//! last lmdeploy release that loads workspaces, and the on-disk format awqc's engine evaluates.
//!
//! ```text
//! <out>/config.json, tokenizer files            (0.9.x copies them to the workspace root)
//! <out>/triton_models/weights/config.yaml       yaml.safe_dump, keys sorted (see `config_yaml`)
//! <out>/triton_models/weights/<tensor>          raw little-endian, no header, tp = 1 (rank ".0.")
//!   tok_embeddings.0.weight                     f16 [vocab, hidden]
//!   norm.weight                                 f16 [hidden]
//!   output.0.weight                             f16 [hidden, vocab]  (the embedding, transposed, when tied)
//!   layers.{i}.attention_norm.weight            f16 [hidden]
//!   layers.{i}.ffn_norm.weight                  f16 [hidden]
//!   layers.{i}.attention.w_qkv.0.{qweight,scales,zeros[,bias]}   N = [q | k | v], q/k RoPE-permuted
//!   layers.{i}.attention.wo.0.{qweight,scales,zeros[,bias]}      bias zero-filled when qkv has one
//!   layers.{i}.feed_forward.{w1,w3,w2}.0.{qweight,scales,zeros}  gate, up, down; inter padded
//! ```
//! Per int4 linear with in_features K and out_features N: `qweight` int32 `[K, N/8]` in *natural*
//! nibble order (nibble i of word j = column 8j+i, unlike AWQ's interleave), `scales` f16 `[K/g, N]`,
//! `zeros` f16 `[K/g, N]` holding the integer zero points. TurboMind's C++ loader swizzles these
//! into its kernel layout; nothing kernel-specific is on disk.
//!
//! q and k output columns are permuted per head from HF's rotate-half layout to interleaved pairs,
//! `new[2j] = old[j]`, `new[2j+1] = old[j + hd/2]`, because TurboMind's RoPE rotates adjacent pairs.

use crate::error::{Error, IoContext, Result};
use crate::formats::awq_gemm::{self, copy_tokenizer_files, f16_bytes, i32_bytes, transpose, AwqReader};
use crate::fsutil::StagedDir;
use crate::model::arch::GlobalWeights;
use crate::model::config::{ModelConfig, RopeScaling};
use crate::quant::int4::{QuantParams, QuantizedLinear};
use crate::quant::qmodel::{
    check_layer, concat_rows, invert_permutation, select_rows, slice_rows, QuantSink, QuantizedLayer, QuantizedModel,
};
use crate::tensor::{encode_f16_checked, DType, HostTensor};
use half::f16;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The only group size TurboMind's int4 kernels accept (lmdeploy `converter.py`).
pub const TURBOMIND_GROUP: usize = 128;
/// Natural nibble order: nibble i of word j holds column 8j + i (lmdeploy `pack_u4_row`).
const NATURAL_ORDER: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// Where the tensors and config.yaml live inside a workspace.
pub const WEIGHTS_SUBDIR: &str = "triton_models/weights";

// ---------------------------------------------------------------------------------------------
// Layout rules shared by the writer and the reader.

/// lmdeploy's `_pad_inter_size`: the FFN width rounded up so that each of `tp` ranks gets whole
/// groups. With tp = 1 and a group that divides the width (which quantization requires) this is
/// the width itself.
pub fn padded_inter_size(inter: usize, group: usize, tp: usize) -> usize {
    let g = group.max(1);
    let tp = tp.max(1);
    let groups = inter.div_ceil(g);
    groups.div_ceil(tp) * g * tp
}

/// Row order that turns HF's rotate-half head layout into TurboMind's interleaved pairs:
/// `out.row(i) = in.row(perm[i])` with, per head h, `perm[h*hd + 2j] = h*hd + j` and
/// `perm[h*hd + 2j + 1] = h*hd + j + hd/2`. `rows` is a multiple of `head_dim` (even).
pub fn rope_permutation(rows: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut perm = Vec::with_capacity(rows);
    for h in 0..rows / head_dim.max(1) {
        for j in 0..half {
            perm.push(h * head_dim + j);
            perm.push(h * head_dim + j + half);
        }
    }
    perm
}

/// Add `n_new - n` zero output rows (codes, zero points, scales and bias all 0, so the padded
/// outputs dequantize to exactly 0, as lmdeploy's `pad_out_dims` does).
fn pad_out(l: &QuantizedLinear, n_new: usize) -> QuantizedLinear {
    let extra = n_new.saturating_sub(l.n);
    let g = l.groups();
    let mut p = l.clone();
    p.n += extra;
    p.q.resize(p.n * l.k, 0);
    p.zeros.resize(p.n * g, 0);
    p.scales.resize(p.n * g, f16::ZERO);
    if let Some(f) = p.float_zeros.as_mut() {
        f.resize(p.n * g, f16::ZERO);
    }
    if let Some(b) = p.bias.as_mut() {
        b.resize(p.n, 0.0);
    }
    p
}

/// Add zero input columns up to `k_new` (a multiple of the group size): zero codes, and whole
/// zero groups (zero point 0, scale 0) as lmdeploy's `pad_in_dims` does for qweight, scales, zeros.
fn pad_in(l: &QuantizedLinear, k_new: usize) -> QuantizedLinear {
    if k_new <= l.k {
        return l.clone();
    }
    let (g_old, g_new) = (l.groups(), k_new / l.params.group);
    let mut q = Vec::with_capacity(l.n * k_new);
    let mut zeros = Vec::with_capacity(l.n * g_new);
    let mut scales = Vec::with_capacity(l.n * g_new);
    let mut float_zeros = l.float_zeros.as_ref().map(|_| Vec::with_capacity(l.n * g_new));
    for r in 0..l.n {
        q.extend_from_slice(&l.q[r * l.k..(r + 1) * l.k]);
        q.resize((r + 1) * k_new, 0);
        zeros.extend_from_slice(&l.zeros[r * g_old..(r + 1) * g_old]);
        zeros.resize((r + 1) * g_new, 0);
        scales.extend_from_slice(&l.scales[r * g_old..(r + 1) * g_old]);
        scales.resize((r + 1) * g_new, f16::ZERO);
        if let (Some(dst), Some(src)) = (float_zeros.as_mut(), l.float_zeros.as_ref()) {
            dst.extend_from_slice(&src[r * g_old..(r + 1) * g_old]);
            dst.resize((r + 1) * g_new, f16::ZERO);
        }
    }
    QuantizedLinear { n: l.n, k: k_new, params: l.params, q, zeros, scales, bias: l.bias.clone(), float_zeros }
}

/// Inverse of [`pad_out`]: keep the first `n` rows. The dropped rows must have zero scales (so they
/// contributed exactly 0); `what` names the tensor in the error.
fn unpad_out(l: &QuantizedLinear, n: usize, what: &str) -> Result<QuantizedLinear> {
    let g = l.groups();
    if l.scales[n * g..].iter().any(|s| s.to_f32() != 0.0) {
        return Err(Error::input(what, format!("padding rows {n}..{} have non-zero scales", l.n)));
    }
    Ok(slice_rows(l, 0, n))
}

/// Inverse of [`pad_in`]: keep the first `k` input columns (a multiple of the group size). The
/// dropped groups must have zero scales.
fn unpad_in(l: &QuantizedLinear, k: usize, what: &str) -> Result<QuantizedLinear> {
    if k >= l.k {
        return Ok(l.clone());
    }
    let (g_old, g_new) = (l.groups(), k / l.params.group);
    let mut out = QuantizedLinear {
        n: l.n,
        k,
        params: l.params,
        q: Vec::with_capacity(l.n * k),
        zeros: Vec::with_capacity(l.n * g_new),
        scales: Vec::with_capacity(l.n * g_new),
        bias: l.bias.clone(),
        float_zeros: l.float_zeros.as_ref().map(|_| Vec::with_capacity(l.n * g_new)),
    };
    for r in 0..l.n {
        let s = &l.scales[r * g_old..(r + 1) * g_old];
        if s[g_new..].iter().any(|s| s.to_f32() != 0.0) {
            return Err(Error::input(
                what,
                format!("padding input columns {k}..{} of row {r} have non-zero scales", l.k),
            ));
        }
        out.q.extend_from_slice(&l.q[r * l.k..r * l.k + k]);
        out.zeros.extend_from_slice(&l.zeros[r * g_old..r * g_old + g_new]);
        out.scales.extend_from_slice(&s[..g_new]);
        if let (Some(dst), Some(src)) = (out.float_zeros.as_mut(), l.float_zeros.as_ref()) {
            dst.extend_from_slice(&src[r * g_old..r * g_old + g_new]);
        }
    }
    Ok(out)
}

/// The merged attention input projection as TurboMind stores it: rows `[perm(q) | perm(k) | v]`.
fn merged_qkv(c: &ModelConfig, l: &QuantizedLayer) -> Result<QuantizedLinear> {
    let q = select_rows(&l.q, &rope_permutation(l.q.n, c.head_dim));
    let k = select_rows(&l.k, &rope_permutation(l.k.n, c.head_dim));
    concat_rows(&[&q, &k, &l.v])
}

/// Inverse of [`merged_qkv`].
fn split_qkv(c: &ModelConfig, qkv: &QuantizedLinear) -> (QuantizedLinear, QuantizedLinear, QuantizedLinear) {
    let (qd, kd) = (c.q_dim(), c.kv_dim());
    let unperm = |l: QuantizedLinear| select_rows(&l, &invert_permutation(&rope_permutation(l.n, c.head_dim)));
    (unperm(slice_rows(qkv, 0, qd)), unperm(slice_rows(qkv, qd, qd + kd)), slice_rows(qkv, qd + kd, qd + 2 * kd))
}

/// Check everything that can be checked from the config before an output directory exists.
pub fn check_turbomind(c: &ModelConfig, p: QuantParams) -> Result<()> {
    if p.bits != 4 {
        return Err(Error::usage(format!("TurboMind int4 workspaces need 4-bit weights; got --w-bits {}", p.bits)));
    }
    if p.group != TURBOMIND_GROUP {
        return Err(Error::usage(format!(
            "TurboMind supports only group size {TURBOMIND_GROUP} for AWQ weights; got --w-group-size {} \
             (write the AutoAWQ checkpoint instead, or quantize with group size {TURBOMIND_GROUP})",
            p.group
        )));
    }
    let inter = padded_inter_size(c.intermediate_size, p.group, 1);
    let checks = [
        ("model.layers.*.self_attn.q_proj (and k/v, gate/up)", c.hidden_size),
        ("model.layers.*.self_attn.o_proj", c.q_dim()),
        ("model.layers.*.mlp.down_proj", inter),
    ];
    for (name, k) in checks {
        p.check_divides(name, k)?;
    }
    for (name, n) in [("merged w_qkv", c.q_dim() + 2 * c.kv_dim()), ("wo / w2", c.hidden_size), ("w1 / w3", inter)] {
        if n % 8 != 0 {
            return Err(Error::usage(format!(
                "TurboMind {name}: out_features {n} is not a multiple of 8 (int4 packs 8 columns per int32)"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// config.yaml: a tiny emitter and parser for the subset `yaml.safe_dump` produces here.

/// A YAML value of the kinds lmdeploy's config uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Python's `repr(float)` as PyYAML writes it: shortest round-trip digits, exponent form when the
/// decimal exponent is < -4 or >= 16 (two-digit exponent, and PyYAML inserts `.0` when the mantissa
/// has no dot: `1e-05` -> `1.0e-05`), otherwise positional with at least one decimal.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return ".nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { ".inf".into() } else { "-.inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let s = format!("{:e}", x.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { format!("{digits}.0") };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() > int_len {
            format!("{}.{}", &digits[..int_len], &digits[int_len..])
        } else {
            format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
        }
    } else {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    };
    format!("{sign}{body}")
}

/// A string as PyYAML writes it: plain when it cannot be mistaken for another type, else single-quoted.
fn py_str(s: &str) -> String {
    const SPECIAL: [&str; 21] = [
        "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON",
        "off", "Off", "OFF", "null", "Null", "NULL",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && !SPECIAL.contains(&s);
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn scalar_text(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Int(i) => i.to_string(),
        Yaml::Float(f) => py_float(*f),
        Yaml::Str(s) => py_str(s),
        // Flow style; only reached for nested collections, which lmdeploy's config does not have.
        Yaml::List(l) => format!("[{}]", l.iter().map(scalar_text).collect::<Vec<_>>().join(", ")),
        Yaml::Map(m) => format!(
            "{{{}}}",
            m.iter().map(|(k, v)| format!("{}: {}", py_str(k), scalar_text(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Block-style emission with sorted keys, 2-space indent and PyYAML's indentless sequences
/// (`key:` then `- item` at the key's own indentation).
fn emit_map(entries: &[(String, Yaml)], indent: usize, out: &mut String) {
    let mut sorted: Vec<&(String, Yaml)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let pad = " ".repeat(indent);
    for (k, v) in sorted {
        out.push_str(&pad);
        out.push_str(&py_str(k));
        out.push(':');
        match v {
            Yaml::Map(m) if !m.is_empty() => {
                out.push('\n');
                emit_map(m, indent + 2, out);
            }
            Yaml::List(l) if !l.is_empty() => {
                out.push('\n');
                for item in l {
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&scalar_text(item));
                    out.push('\n');
                }
            }
            Yaml::Map(_) => out.push_str(" {}\n"),
            Yaml::List(_) => out.push_str(" []\n"),
            other => {
                out.push(' ');
                out.push_str(&scalar_text(other));
                out.push('\n');
            }
        }
    }
}

/// `yaml.safe_dump(value)` for a mapping.
pub fn to_yaml(entries: &[(String, Yaml)]) -> String {
    let mut out = String::new();
    emit_map(entries, 0, &mut out);
    out
}

fn parse_scalar(s: &str) -> Yaml {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Yaml::Str(inner.replace("''", "'"));
    }
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Yaml::Str(inner.replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Yaml::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Yaml::Bool(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Yaml::Bool(false),
        "{}" => return Yaml::Map(Vec::new()),
        ".inf" | "+.inf" => return Yaml::Float(f64::INFINITY),
        "-.inf" => return Yaml::Float(f64::NEG_INFINITY),
        ".nan" => return Yaml::Float(f64::NAN),
        _ => {}
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.trim().is_empty() {
            return Yaml::List(Vec::new());
        }
        return Yaml::List(inner.split(',').map(parse_scalar).collect());
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !body.is_empty() && body.chars().all(|c| c.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Yaml::Int(i);
        }
    }
    if body.starts_with(|c: char| c.is_ascii_digit() || c == '.') && (s.contains('.') || s.contains(['e', 'E'])) {
        if let Ok(f) = s.parse::<f64>() {
            return Yaml::Float(f);
        }
    }
    Yaml::Str(s.to_string())
}

/// Parse the block-style YAML subset [`to_yaml`] writes (nested mappings, indentless or indented
/// sequences of scalars, flow `[]`/`{}`/`[a, b]`, comments and blank lines). `src` names the file.
pub fn parse_yaml(text: &str, src: &str) -> Result<Yaml> {
    let lines: Vec<(usize, usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "---"
        })
        .map(|(no, l)| (no + 1, l.len() - l.trim_start().len(), l.trim()))
        .collect();
    let mut pos = 0;
    let map = parse_block(&lines, &mut pos, 0, 0, src)?;
    if let Some((no, ..)) = lines.get(pos) {
        return Err(Error::input(src, format!("line {no}: unexpected indentation")));
    }
    Ok(map)
}

fn parse_block(
    lines: &[(usize, usize, &str)],
    pos: &mut usize,
    indent: usize,
    depth: usize,
    src: &str,
) -> Result<Yaml> {
    if depth > 16 {
        return Err(Error::input(src, "nesting deeper than 16 levels"));
    }
    let mut entries = Vec::new();
    while let Some(&(no, ind, text)) = lines.get(*pos) {
        if ind < indent {
            break;
        }
        if ind > indent || text.starts_with("- ") || text == "-" {
            return Err(Error::input(src, format!("line {no}: unexpected indentation or list item")));
        }
        let (key, rest) = text
            .split_once(':')
            .filter(|(_, r)| r.is_empty() || r.starts_with(' '))
            .ok_or_else(|| Error::input(src, format!("line {no}: expected \"key: value\"")))?;
        let key = match parse_scalar(key) {
            Yaml::Str(s) => s,
            other => scalar_text(&other),
        };
        *pos += 1;
        let value = if !rest.trim().is_empty() {
            parse_scalar(rest)
        } else {
            match lines.get(*pos) {
                Some(&(_, ni, nt)) if (nt.starts_with("- ") || nt == "-") && ni >= indent => {
                    let mut items = Vec::new();
                    while let Some(&(_, li, lt)) = lines.get(*pos) {
                        if li != ni || !(lt.starts_with("- ") || lt == "-") {
                            break;
                        }
                        items.push(parse_scalar(lt.strip_prefix('-').unwrap_or(lt)));
                        *pos += 1;
                    }
                    Yaml::List(items)
                }
                Some(&(_, ni, _)) if ni > indent => parse_block(lines, pos, ni, depth + 1, src)?,
                _ => Yaml::Null,
            }
        };
        entries.push((key, value));
    }
    Ok(Yaml::Map(entries))
}

fn s(x: &str) -> Yaml {
    Yaml::Str(x.to_string())
}

fn int(x: usize) -> Yaml {
    Yaml::Int(x as i64)
}

fn entries(v: Vec<(&str, Yaml)>) -> Vec<(String, Yaml)> {
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `attention_config.rope_param`, as lmdeploy 0.9's `LlamaModel.model_info` derives it from
/// config.json's `rope_scaling` (dataclass defaults: factor 1.0, attention_factor 1.0, beta_fast 32,
/// beta_slow 1, the rest null).
fn rope_param(c: &ModelConfig) -> Yaml {
    let mut ty = "default";
    let mut factor = Yaml::Float(1.0);
    let mut max_pos = Yaml::Null;
    let mut attention_factor = Yaml::Float(1.0);
    let (mut beta_fast, mut beta_slow) = (Yaml::Int(32), Yaml::Int(1));
    let (mut low, mut high, mut orig) = (Yaml::Null, Yaml::Null, Yaml::Null);
    match &c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor: f } => {
            ty = "linear";
            factor = Yaml::Float(*f);
        }
        RopeScaling::Dynamic { factor: f } => {
            ty = "dynamic";
            factor = Yaml::Float(*f);
            max_pos = int(c.max_position_embeddings);
        }
        RopeScaling::Llama3 { factor: f, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            ty = "llama3";
            factor = Yaml::Float(*f);
            low = Yaml::Float(*low_freq_factor);
            high = Yaml::Float(*high_freq_factor);
            orig = int(*original_max_position_embeddings);
        }
        RopeScaling::Yarn {
            factor: f,
            beta_fast: bf,
            beta_slow: bs,
            attention_factor: a,
            original_max_position_embeddings: o,
        } => {
            ty = "yarn";
            // lmdeploy computes the default attention factor from the configured factor, then
            // replaces the factor by max_position_embeddings / original when the latter is given.
            attention_factor = Yaml::Float(a.unwrap_or_else(|| 0.1 * f.ln() + 1.0));
            let (fac, mp) = match o {
                Some(o) => (c.max_position_embeddings as f64 / *o as f64, *o),
                None => (*f, c.max_position_embeddings),
            };
            factor = Yaml::Float(fac);
            max_pos = int(mp);
            beta_fast = Yaml::Float(*bf);
            beta_slow = Yaml::Float(*bs);
        }
    }
    Yaml::Map(entries(vec![
        ("type", s(ty)),
        ("base", Yaml::Float(c.rope_theta)),
        ("dim", int(c.head_dim)),
        ("factor", factor),
        ("max_position_embeddings", max_pos),
        ("attention_factor", attention_factor),
        ("beta_fast", beta_fast),
        ("beta_slow", beta_slow),
        ("low_freq_factor", low),
        ("high_freq_factor", high),
        ("original_max_position_embeddings", orig),
        ("mrope_section", Yaml::Null),
    ]))
}

/// The workspace's `config.yaml` for an int4 model, byte for byte as lmdeploy 0.9.2 writes it.
/// `model_name` and `chat_template` are free text (lmdeploy guesses them from the model path).
/// `session_len` is `max_position_embeddings` (lmdeploy's `_get_and_verify_max_len`), and
/// `tokenizer_size` is `min(len(tokenizer), vocab_size)` (see
/// [`crate::data::tokenizer::transformers_len`]).
pub fn config_yaml(c: &ModelConfig, p: QuantParams, model_name: &str, chat_template: &str, tokenizer_size: usize) -> String {
    let inter = padded_inter_size(c.intermediate_size, p.group, 1);
    let model = entries(vec![
        ("model_name", s(model_name)),
        ("chat_template", s(chat_template)),
        ("model_arch", s(c.arch.hf_class())),
        ("head_num", int(c.num_attention_heads)),
        ("kv_head_num", int(c.num_key_value_heads)),
        ("hidden_units", int(c.hidden_size)),
        ("vocab_size", int(c.vocab_size)),
        ("embedding_size", int(c.vocab_size)),
        ("tokenizer_size", int(tokenizer_size)),
        ("num_layer", int(c.num_hidden_layers)),
        ("inter_size", Yaml::List(vec![int(inter); c.num_hidden_layers])),
        ("norm_eps", Yaml::Float(c.rms_norm_eps)),
        ("attn_bias", Yaml::Int(i64::from(c.attention_bias))),
        ("qk_norm", Yaml::Bool(false)),
        ("size_per_head", int(c.head_dim)),
        ("group_size", int(p.group)),
        ("weight_type", s("int4")),
        ("session_len", int(c.max_position_embeddings)),
        ("attn_tp_size", Yaml::Int(1)),
        ("mlp_tp_size", Yaml::Int(1)),
        ("model_format", s("awq")),
        ("expert_num", Yaml::List(Vec::new())),
        ("expert_inter_size", Yaml::Int(0)),
        ("experts_per_token", Yaml::Int(0)),
        ("moe_shared_gate", Yaml::Bool(false)),
        ("norm_topk_prob", Yaml::Bool(false)),
        ("routed_scale", Yaml::Float(1.0)),
        ("topk_group", Yaml::Int(1)),
        ("topk_method", s("greedy")),
        ("moe_group_num", Yaml::Int(1)),
        ("q_lora_rank", Yaml::Int(0)),
        ("kv_lora_rank", Yaml::Int(0)),
        ("qk_rope_dim", Yaml::Int(0)),
        ("v_head_dim", Yaml::Int(0)),
        ("tune_layer_num", Yaml::Int(1)),
    ]);
    let attention = entries(vec![
        ("softmax_scale", Yaml::Float(0.0)),
        ("cache_block_seq_len", Yaml::Int(64)),
        ("use_logn_attn", Yaml::Int(0)),
        ("max_position_embeddings", int(c.max_position_embeddings)),
        ("rope_param", rope_param(c)),
    ]);
    let lora = entries(vec![
        ("lora_policy", s("")),
        ("lora_r", Yaml::Int(0)),
        ("lora_scale", Yaml::Float(0.0)),
        ("lora_max_wo_r", Yaml::Int(0)),
        ("lora_rank_pattern", s("")),
        ("lora_scale_pattern", s("")),
    ]);
    to_yaml(&entries(vec![
        ("model_config", Yaml::Map(model)),
        ("attention_config", Yaml::Map(attention)),
        ("lora_config", Yaml::Map(lora)),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The raw files of one int4 linear, `[N, K]` in, TurboMind orientation out.
fn write_linear(dir: &Path, prefix: &str, l: &QuantizedLinear) -> Result<()> {
    let g = l.groups();
    let qweight = awq_gemm::pack_nibbles(&transpose(&l.q, l.n, l.k), l.k, l.n, &NATURAL_ORDER);
    // fp16 zeros as TurboMind stores them: integer values, or the float zeros themselves.
    let zeros = transpose(&l.zeros_f16(), l.n, g);
    write_raw(dir, &format!("{prefix}.qweight"), &i32_bytes(&qweight))?;
    write_raw(dir, &format!("{prefix}.scales"), &f16_bytes(&transpose(&l.scales, l.n, g)))?;
    write_raw(dir, &format!("{prefix}.zeros"), &f16_bytes(&zeros))?;
    if let Some(b) = &l.bias {
        let bias = format!("{prefix}.bias");
        write_raw(dir, &bias, &encode_f16_checked(&bias, b)?)?;
    }
    Ok(())
}

fn write_raw(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).at(p.display())
}

struct TmOpen {
    staged: StagedDir,
    weights: PathBuf,
    config: ModelConfig,
    params: QuantParams,
    inter_pad: usize,
    next_layer: usize,
}

/// Writes a TurboMind workspace one decoder layer at a time. The group size and bit width are
/// checked in `begin` before the output directory is created; nothing appears under the output
/// name until `finish`.
pub struct TurbomindWriter {
    out_dir: PathBuf,
    force: bool,
    tokenizer_src: Option<PathBuf>,
    model_name: Option<String>,
    chat_template: String,
    open: Option<TmOpen>,
}

impl TurbomindWriter {
    /// Write the workspace to `out_dir`; an existing directory is replaced only with `force`.
    pub fn new(out_dir: &Path, force: bool) -> Self {
        TurbomindWriter {
            out_dir: out_dir.to_path_buf(),
            force,
            tokenizer_src: None,
            model_name: None,
            chat_template: "base".into(),
            open: None,
        }
    }
    /// Copy the tokenizer files of this model directory to the workspace root.
    pub fn with_tokenizer_from(mut self, dir: &Path) -> Self {
        self.tokenizer_src = Some(dir.to_path_buf());
        self
    }
    /// `model_config.model_name` (default: the config's `model_type`, e.g. `llama`).
    pub fn with_model_name(mut self, name: &str) -> Self {
        self.model_name = Some(name.to_string());
        self
    }
    /// `model_config.chat_template` (default `base`).
    pub fn with_chat_template(mut self, name: &str) -> Self {
        self.chat_template = name.to_string();
        self
    }
    fn state(&mut self) -> Result<&mut TmOpen> {
        self.open.as_mut().ok_or_else(|| Error::internal("TurbomindWriter: write_layer/finish before begin"))
    }
}

impl QuantSink for TurbomindWriter {
    fn begin(&mut self, config: &ModelConfig, params: QuantParams, globals: &GlobalWeights) -> Result<()> {
        check_turbomind(config, params)?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let head = match (&globals.lm_head, config.tie_word_embeddings) {
            (None, true) => &globals.embed,
            (Some(t), false) => t,
            (l, tied) => {
                return Err(Error::internal(format!(
                    "TurbomindWriter: lm head {:?} does not match tie_word_embeddings = {tied}",
                    l.as_ref().map(|t| t.shape.clone())
                )))
            }
        };
        if globals.embed.shape != [v, h] || head.shape != [v, h] || globals.norm.len() != h {
            return Err(Error::internal(format!(
                "TurbomindWriter: embedding {:?} / lm head {:?} / norm [{}] do not match the config [{v}, {h}]",
                globals.embed.shape,
                head.shape,
                globals.norm.len()
            )));
        }
        let staged = StagedDir::create(&self.out_dir, self.force)?;
        let weights = staged.path().join(WEIGHTS_SUBDIR);
        std::fs::create_dir_all(&weights).at(weights.display())?;
        let name = self.model_name.clone().unwrap_or_else(|| config.arch.model_type().to_string());
        // lmdeploy reads the tokenizer's length with transformers; without tokenizer files (tiny
        // test models) the vocab size stands in.
        let tokenizer_size = match &self.tokenizer_src {
            Some(dir) if dir.join("tokenizer.json").is_file() => crate::data::tokenizer::transformers_len(dir)?.min(v),
            _ => v,
        };
        let yaml = config_yaml(config, params, &name, &self.chat_template, tokenizer_size);
        write_raw(&weights, "config.yaml", yaml.as_bytes())?;
        awq_gemm::write_config_json(staged.path(), config, params)?;
        if let Some(src) = &self.tokenizer_src {
            copy_tokenizer_files(src, staged.path())?;
        }
        // tp = 1: no vocab padding (lmdeploy pads only when vocab % tp != 0).
        write_raw(&weights, "tok_embeddings.0.weight", &encode_f16_checked("tok_embeddings.0.weight", &globals.embed.data)?)?;
        write_raw(&weights, "norm.weight", &encode_f16_checked("norm.weight", &globals.norm)?)?;
        write_raw(&weights, "output.0.weight", &encode_f16_checked("output.0.weight", &head.transpose2().data)?)?;
        let inter_pad = padded_inter_size(config.intermediate_size, params.group, 1);
        self.open = Some(TmOpen { staged, weights, config: config.clone(), params, inter_pad, next_layer: 0 });
        Ok(())
    }

    fn write_layer(&mut self, index: usize, layer: &QuantizedLayer) -> Result<()> {
        let st = self.state()?;
        let c = &st.config;
        check_layer("TurbomindWriter", c, st.params, index, st.next_layer, layer)?;
        let (dir, p) = (&st.weights, format!("layers.{index}"));
        let (n1, n2) = (format!("{p}.attention_norm.weight"), format!("{p}.ffn_norm.weight"));
        write_raw(dir, &n1, &encode_f16_checked(&n1, &layer.attn_norm)?)?;
        write_raw(dir, &n2, &encode_f16_checked(&n2, &layer.mlp_norm)?)?;
        write_linear(dir, &format!("{p}.attention.w_qkv.0"), &merged_qkv(c, layer)?)?;
        write_linear(dir, &format!("{p}.attention.wo.0"), &layer.o)?;
        if c.attention_bias {
            // TurboMind's attention has a wo bias slot whenever w_qkv has a bias; it is zero.
            write_raw(dir, &format!("{p}.attention.wo.0.bias"), &DType::F16.encode(&vec![0.0; c.hidden_size]))?;
        }
        write_linear(dir, &format!("{p}.feed_forward.w1.0"), &pad_out(&layer.gate, st.inter_pad))?;
        write_linear(dir, &format!("{p}.feed_forward.w3.0"), &pad_out(&layer.up, st.inter_pad))?;
        write_linear(dir, &format!("{p}.feed_forward.w2.0"), &pad_in(&layer.down, st.inter_pad))?;
        st.next_layer += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let st = self.open.take().ok_or_else(|| Error::internal("TurbomindWriter: finish before begin"))?;
        if st.next_layer != st.config.num_hidden_layers {
            return Err(Error::internal(format!(
                "TurbomindWriter: only {} of {} layers were written",
                st.next_layer, st.config.num_hidden_layers
            )));
        }
        st.staged.commit()
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub layers: usize,
    pub files: usize,
    pub bytes: u64,
}

fn tree_size(dir: &Path) -> Result<(usize, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for e in std::fs::read_dir(dir).at(dir.display())? {
        let e = e.at(dir.display())?;
        let md = e.metadata().at(e.path().display())?;
        if md.is_dir() {
            let (f, b) = tree_size(&e.path())?;
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += md.len();
        }
    }
    Ok((files, bytes))
}

/// Convert any AutoAWQ-GEMM checkpoint (group 128) to a workspace, layer by layer, as
/// `lmdeploy convert` did. From the same quantized weights this writes exactly the bytes the
/// direct export writes (tokenizer files come from `src`).
pub fn awq_to_turbomind(src: &Path, dst: &Path, force: bool) -> Result<ExportSummary> {
    let r = AwqReader::open(src)?;
    // Here the group size is a property of the input checkpoint, not a flag: a bad-input error.
    if r.params().group != TURBOMIND_GROUP {
        return Err(Error::input(
            src.join("config.json").display(),
            format!(
                "quantization_config.group_size is {}; TurboMind workspaces need group size {TURBOMIND_GROUP}",
                r.params().group
            ),
        ));
    }
    check_turbomind(r.config(), r.params()).map_err(|e| Error::input(src.display(), e.msg))?;
    let layers = r.config().num_hidden_layers;
    let mut w = TurbomindWriter::new(dst, force).with_tokenizer_from(src);
    w.begin(r.config(), r.params(), &r.globals()?)?;
    let bar = crate::progress::bar(layers as u64, "convert");
    for i in 0..layers {
        w.write_layer(i, &r.layer(i)?)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Box::new(w).finish()?;
    let (files, bytes) = tree_size(dst)?;
    Ok(ExportSummary { layers, files, bytes })
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Typed access to config.yaml fields with errors naming the file and the key path.
struct YamlFields<'a> {
    root: &'a Yaml,
    src: &'a str,
}

impl YamlFields<'_> {
    fn get(&self, path: &str) -> Result<&Yaml> {
        let mut v = self.root;
        for part in path.split('.') {
            v = v.get(part).ok_or_else(|| Error::input(self.src, format!("key {path:?} is missing")))?;
        }
        Ok(v)
    }
    fn usize(&self, path: &str) -> Result<usize> {
        match self.get(path)? {
            Yaml::Int(i) if *i >= 0 && *i <= 1 << 40 => Ok(*i as usize),
            other => Err(Error::input(self.src, format!("{path} must be a non-negative integer, got {other:?}"))),
        }
    }
    fn f64(&self, path: &str) -> Result<f64> {
        match self.get(path)? {
            Yaml::Int(i) => Ok(*i as f64),
            Yaml::Float(f) => Ok(*f),
            other => Err(Error::input(self.src, format!("{path} must be a number, got {other:?}"))),
        }
    }
    fn opt_f64(&self, path: &str) -> Result<Option<f64>> {
        match self.get(path) {
            Err(_) | Ok(Yaml::Null) => Ok(None),
            Ok(_) => self.f64(path).map(Some),
        }
    }
    fn str(&self, path: &str) -> Result<String> {
        match self.get(path)? {
            Yaml::Str(s) => Ok(s.clone()),
            other => Err(Error::input(self.src, format!("{path} must be a string, got {other:?}"))),
        }
    }
    fn list_len(&self, path: &str) -> Result<usize> {
        match self.get(path)? {
            Yaml::List(l) => Ok(l.len()),
            Yaml::Null => Ok(0),
            other => Err(Error::input(self.src, format!("{path} must be a list, got {other:?}"))),
        }
    }
}

/// The shape facts of a workspace, from config.yaml.
struct TmShape {
    arch_class: String,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    layers: usize,
    inter_pad: usize,
    group: usize,
    attn_bias: bool,
}

fn read_shape(y: &YamlFields) -> Result<TmShape> {
    let weight_type = y.str("model_config.weight_type")?;
    if weight_type != "int4" {
        return Err(Error::input(
            y.src,
            format!("model_config.weight_type is {weight_type:?}; only int4 workspaces are supported"),
        ));
    }
    let format = y.str("model_config.model_format")?;
    if format != "awq" {
        return Err(Error::input(y.src, format!("model_config.model_format is {format:?}; only \"awq\" is supported")));
    }
    for key in ["model_config.attn_tp_size", "model_config.mlp_tp_size"] {
        let tp = y.usize(key)?;
        if tp != 1 {
            return Err(Error::input(y.src, format!("{key} is {tp}; only tp = 1 workspaces are supported")));
        }
    }
    if y.list_len("model_config.expert_num")? != 0 || y.usize("model_config.kv_lora_rank").unwrap_or(0) != 0 {
        return Err(Error::input(y.src, "MoE / MLA workspaces are not supported"));
    }
    let layers = y.usize("model_config.num_layer")?;
    let inter = match y.get("model_config.inter_size")? {
        Yaml::List(l) if l.len() == layers && !l.is_empty() => {
            let first = &l[0];
            if l.iter().any(|x| x != first) {
                return Err(Error::input(y.src, "model_config.inter_size differs between layers; unsupported"));
            }
            first.clone()
        }
        Yaml::Int(i) => Yaml::Int(*i),
        other => {
            return Err(Error::input(
                y.src,
                format!("model_config.inter_size must be a list of {layers} integers, got {other:?}"),
            ))
        }
    };
    let inter_pad = match inter {
        Yaml::Int(i) if i > 0 && i <= 1 << 24 => i as usize,
        other => {
            return Err(Error::input(y.src, format!("model_config.inter_size value {other:?} is not a valid size")))
        }
    };
    let embedding_size = y.usize("model_config.embedding_size")?;
    let vocab = y.usize("model_config.vocab_size")?;
    if embedding_size != vocab {
        return Err(Error::input(y.src, format!("embedding_size {embedding_size} != vocab_size {vocab}; unsupported")));
    }
    let s = TmShape {
        arch_class: y.str("model_config.model_arch")?,
        hidden: y.usize("model_config.hidden_units")?,
        heads: y.usize("model_config.head_num")?,
        kv_heads: y.usize("model_config.kv_head_num")?,
        head_dim: y.usize("model_config.size_per_head")?,
        vocab,
        layers,
        inter_pad,
        group: y.usize("model_config.group_size")?,
        attn_bias: y.usize("model_config.attn_bias")? != 0,
    };
    for (k, v) in [
        ("hidden_units", s.hidden),
        ("head_num", s.heads),
        ("kv_head_num", s.kv_heads),
        ("size_per_head", s.head_dim),
        ("vocab_size", s.vocab),
        ("num_layer", s.layers),
    ] {
        if v == 0 || v > 1 << 24 {
            return Err(Error::input(y.src, format!("model_config.{k} = {v} is not a valid size")));
        }
    }
    Ok(s)
}

/// HF `rope_scaling` JSON from `attention_config.rope_param` (used when the workspace has no config.json).
fn rope_scaling_from_yaml(y: &YamlFields) -> Result<Value> {
    let ty = y.str("attention_config.rope_param.type")?;
    let f = |k: &str| y.opt_f64(&format!("attention_config.rope_param.{k}"));
    Ok(match ty.as_str() {
        "default" | "" => Value::Null,
        "linear" | "dynamic" => json!({"rope_type": ty, "factor": f("factor")?}),
        "llama3" => json!({"rope_type": "llama3", "factor": f("factor")?, "low_freq_factor": f("low_freq_factor")?,
            "high_freq_factor": f("high_freq_factor")?,
            "original_max_position_embeddings": y.usize("attention_config.rope_param.original_max_position_embeddings")?}),
        "yarn" => json!({"rope_type": "yarn", "factor": f("factor")?, "beta_fast": f("beta_fast")?,
            "beta_slow": f("beta_slow")?, "attention_factor": f("attention_factor")?}),
        other => return Err(Error::input(y.src, format!("rope_param.type {other:?} is not supported"))),
    })
}

fn read_exact(path: &Path, len: usize, what: &str) -> Result<Vec<u8>> {
    let md = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::input(path.display(), format!("missing from the workspace ({what})")),
        _ => Error::io(path.display(), e),
    })?;
    if md.len() != len as u64 {
        return Err(Error::input(path.display(), format!("expected {len} bytes ({what}), the file has {}", md.len())));
    }
    std::fs::read(path).at(path.display())
}

fn read_f16(path: &Path, n: usize, what: &str) -> Result<Vec<f32>> {
    let v = DType::F16.decode(&read_exact(path, n * 2, what)?);
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::input(path.display(), format!("non-finite value {} at index {i}", v[i])));
    }
    Ok(v)
}

/// Read one int4 linear stored as `[K, N]` files into `[N, K]` form.
fn read_linear(dir: &Path, prefix: &str, n: usize, k: usize, p: QuantParams, bias: bool) -> Result<QuantizedLinear> {
    let g = k / p.group;
    let qpath = dir.join(format!("{prefix}.qweight"));
    let words: Vec<i32> = read_exact(&qpath, k * (n / 8) * 4, &format!("int32 [{k}, {}]", n / 8))?
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let q = transpose(&awq_gemm::unpack_nibbles(&words, k, n, &NATURAL_ORDER), k, n);
    let spath = dir.join(format!("{prefix}.scales"));
    let scales: Vec<f16> = read_exact(&spath, g * n * 2, &format!("f16 [{g}, {n}]"))?
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]))
        .collect();
    if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
        return Err(Error::input(spath.display(), format!("non-finite scale at index {i}")));
    }
    let zpath = dir.join(format!("{prefix}.zeros"));
    let max_q = p.max_q() as f32;
    let zf = read_f16(&zpath, g * n, &format!("f16 [{g}, {n}]"))?; // finite (read_f16 checks)
    // Integer zeros in the code range (what lmdeploy writes), else fp16 zeros (`--zero-point float`).
    let integer = zf.iter().all(|&z| z.fract() == 0.0 && (0.0..=max_q).contains(&z));
    let zeros: Vec<u8> = zf.iter().map(|&z| crate::quant::int4::round_half_even(z).clamp(0.0, max_q) as u8).collect();
    let float_zeros = (!integer).then(|| transpose(&zf, g, n).into_iter().map(f16::from_f32).collect());
    let bias = if bias {
        let bpath = dir.join(format!("{prefix}.bias"));
        Some(read_f16(&bpath, n, &format!("f16 [{n}]"))?)
    } else {
        None
    };
    Ok(QuantizedLinear { n, k, params: p, q, zeros: transpose(&zeros, g, n), scales: transpose(&scales, g, n), bias, float_zeros })
}

/// Locate `(workspace root, weights dir)` from either of them.
fn locate(dir: &Path) -> Result<(Option<PathBuf>, PathBuf)> {
    let nested = dir.join(WEIGHTS_SUBDIR);
    if nested.join("config.yaml").is_file() {
        return Ok((Some(dir.to_path_buf()), nested));
    }
    if dir.join("config.yaml").is_file() {
        let root = dir
            .parent()
            .filter(|p| {
                p.file_name().is_some_and(|n| n == "triton_models") && dir.file_name().is_some_and(|n| n == "weights")
            })
            .and_then(|p| p.parent())
            .map(Path::to_path_buf);
        return Ok((root, dir.to_path_buf()));
    }
    Err(Error::input(dir.display(), format!("not a TurboMind workspace (no {WEIGHTS_SUBDIR}/config.yaml)")))
}

/// Read a TurboMind workspace (the layout above, tp = 1) back into the canonical quantized model:
/// the q/k permutation is undone, w_qkv split, FFN padding removed, output transposed back
/// (`lm_head = None` when tied). The model config comes from the workspace's config.json when
/// present (checked against config.yaml); otherwise it is rebuilt from config.yaml, with
/// `intermediate_size` = the padded width (padding is all-zero, so the function is the same) and
/// tying detected by comparing output with the embedding.
pub fn read_turbomind(dir: &Path) -> Result<QuantizedModel> {
    let (root, wdir) = locate(dir)?;
    let ypath = wdir.join("config.yaml");
    let ysrc = ypath.display().to_string();
    // config.yaml is a few KB; refuse anything that is clearly not one before reading it.
    let ylen = std::fs::metadata(&ypath).at(&ysrc)?.len();
    if ylen > 1 << 20 {
        return Err(Error::input(&ysrc, format!("{ylen} bytes is too large for a workspace config")));
    }
    let bytes = std::fs::read(&ypath).at(&ysrc)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::input(&ysrc, "not UTF-8 text"))?;
    let yaml = parse_yaml(text, &ysrc)?;
    let y = YamlFields { root: &yaml, src: &ysrc };
    let shape = read_shape(&y)?;
    if shape.group == 0 || shape.group % 8 != 0 {
        return Err(Error::input(&ysrc, format!("model_config.group_size {} is not a positive multiple of 8", shape.group)));
    }
    let params = QuantParams::new(4, shape.group)
        .map_err(|e| Error::input(&ysrc, format!("model_config.group_size: {}", e.msg)))?;
    let (h, v) = (shape.hidden, shape.vocab);

    let file = |name: &str| wdir.join(name);
    let embed =
        HostTensor::new(vec![v, h], read_f16(&file("tok_embeddings.0.weight"), v * h, &format!("f16 [{v}, {h}]"))?)?;
    let norm = read_f16(&file("norm.weight"), h, &format!("f16 [{h}]"))?;
    let output = HostTensor::new(vec![h, v], read_f16(&file("output.0.weight"), h * v, &format!("f16 [{h}, {v}]"))?)?;
    let head = output.transpose2();
    let output_is_embed = head.data == embed.data;

    let json_path = root.as_ref().map(|r| r.join("config.json")).filter(|p| p.is_file());
    let config = match &json_path {
        Some(p) => {
            let c = ModelConfig::from_file(p)?;
            let want_inter = padded_inter_size(c.intermediate_size, shape.group, 1);
            let pairs = [
                ("hidden_units / hidden_size", shape.hidden, c.hidden_size),
                ("head_num / num_attention_heads", shape.heads, c.num_attention_heads),
                ("kv_head_num / num_key_value_heads", shape.kv_heads, c.num_key_value_heads),
                ("size_per_head / head_dim", shape.head_dim, c.head_dim),
                ("vocab_size", shape.vocab, c.vocab_size),
                ("num_layer / num_hidden_layers", shape.layers, c.num_hidden_layers),
                ("inter_size / padded intermediate_size", shape.inter_pad, want_inter),
                ("attn_bias / attention bias", shape.attn_bias as usize, c.attention_bias as usize),
            ];
            for (what, a, b) in pairs {
                if a != b {
                    return Err(Error::input(&ysrc, format!("{what}: {a} in config.yaml but {b} in {}", p.display())));
                }
            }
            if c.tie_word_embeddings && !output_is_embed {
                return Err(Error::input(
                    file("output.0.weight").display(),
                    format!("differs from the transposed embedding, but {} says tie_word_embeddings", p.display()),
                ));
            }
            c
        }
        None => {
            let mut cfg = json!({
                "architectures": [shape.arch_class], "hidden_size": h, "intermediate_size": shape.inter_pad,
                "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
                "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab_size": v,
                "rms_norm_eps": y.f64("model_config.norm_eps")?,
                "rope_theta": y.f64("attention_config.rope_param.base")?,
                "max_position_embeddings": y.usize("attention_config.max_position_embeddings")?,
                "rope_scaling": rope_scaling_from_yaml(&y)?,
                "tie_word_embeddings": output_is_embed,
                "attention_bias": shape.attn_bias, "bias": shape.attn_bias,
            });
            if let Ok(Yaml::Int(o)) = y.get("attention_config.rope_param.max_position_embeddings") {
                if cfg["rope_scaling"]["rope_type"] == "yarn" {
                    cfg["rope_scaling"]["original_max_position_embeddings"] = json!(o);
                }
            }
            let c = ModelConfig::from_json(&cfg, &ysrc)?;
            if c.attention_bias != shape.attn_bias {
                return Err(Error::input(
                    &ysrc,
                    format!("attn_bias {} contradicts model_arch {}", shape.attn_bias, shape.arch_class),
                ));
            }
            c
        }
    };
    check_turbomind(&config, params).map_err(|e| Error::input(&ysrc, e.msg))?;
    params.check_divides("intermediate_size", config.intermediate_size).map_err(|e| Error::input(&ysrc, e.msg))?;
    let lm_head = if config.tie_word_embeddings { None } else { Some(head) };

    let c = &config;
    let inter_pad = shape.inter_pad;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("layers.{i}");
        let attn_norm = read_f16(&file(&format!("{p}.attention_norm.weight")), h, &format!("f16 [{h}]"))?;
        let mlp_norm = read_f16(&file(&format!("{p}.ffn_norm.weight")), h, &format!("f16 [{h}]"))?;
        let qkv_n = c.q_dim() + 2 * c.kv_dim();
        let qkv = read_linear(&wdir, &format!("{p}.attention.w_qkv.0"), qkv_n, h, params, c.attention_bias)?;
        let (q, k, v) = split_qkv(c, &qkv);
        let o = read_linear(&wdir, &format!("{p}.attention.wo.0"), h, c.q_dim(), params, false)?;
        let wo_bias = file(&format!("{p}.attention.wo.0.bias"));
        if wo_bias.exists() {
            let b = read_f16(&wo_bias, h, &format!("f16 [{h}]"))?;
            if b.iter().any(|x| *x != 0.0) {
                return Err(Error::input(wo_bias.display(), "non-zero wo bias; awqc models have no o_proj bias"));
            }
        }
        let ffn = |name: &str, n: usize, k: usize| {
            read_linear(&wdir, &format!("{p}.feed_forward.{name}.0"), n, k, params, false)
        };
        let w1 = ffn("w1", inter_pad, h)?;
        let w3 = ffn("w3", inter_pad, h)?;
        let w2 = ffn("w2", h, inter_pad)?;
        let what = |name: &str| file(&format!("{p}.feed_forward.{name}.0.scales")).display().to_string();
        layers.push(QuantizedLayer {
            attn_norm,
            mlp_norm,
            q,
            k,
            v,
            o,
            gate: unpad_out(&w1, c.intermediate_size, &what("w1"))?,
            up: unpad_out(&w3, c.intermediate_size, &what("w3"))?,
            down: unpad_in(&w2, c.intermediate_size, &what("w2"))?,
        });
    }
    Ok(QuantizedModel { config, params, globals: GlobalWeights { embed, norm, lm_head }, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        let cases = [
            (1e-5, "1.0e-05"),
            (1e-6, "1.0e-06"),
            (1.5e-5, "1.5e-05"),
            (100000.0, "100000.0"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (1e16, "1.0e+16"),
            (1e15, "1000000000000000.0"),
            (123.456, "123.456"),
            (-2.5, "-2.5"),
            (1_000_000.0, "1000000.0"),
            (0.1 * 2f64.ln() + 1.0, "1.0693147180559945"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn yaml_round_trip_and_quoting() {
        let doc = entries(vec![
            ("b", Yaml::Map(entries(vec![("z", Yaml::List(vec![Yaml::Int(1), Yaml::Int(2)])), ("a", Yaml::Null)]))),
            ("a", s("")),
            ("c", s("yes")),
            ("d", s("it's")),
            ("e", Yaml::List(vec![])),
            ("f", Yaml::Float(1e-5)),
            ("g", Yaml::Bool(false)),
        ]);
        let text = to_yaml(&doc);
        assert_eq!(
            text,
            "a: ''\nb:\n  a: null\n  z:\n  - 1\n  - 2\nc: 'yes'\nd: 'it''s'\ne: []\nf: 1.0e-05\ng: false\n"
        );
        let back = parse_yaml(&text, "t").unwrap();
        assert_eq!(back.get("a"), Some(&s("")));
        assert_eq!(back.get("b").and_then(|b| b.get("z")), Some(&Yaml::List(vec![Yaml::Int(1), Yaml::Int(2)])));
        assert_eq!(back.get("c"), Some(&s("yes")));
        assert_eq!(back.get("d"), Some(&s("it's")));
        assert_eq!(back.get("f"), Some(&Yaml::Float(1e-5)));
        assert!(parse_yaml("a: 1\n   b: 2\n", "t").is_err());
    }

    #[test]
    fn inter_size_padding_matches_lmdeploy() {
        assert_eq!(padded_inter_size(11008, 128, 1), 11008);
        // lmdeploy #1560: Qwen1.5-32B inter 27392 = 214 groups; tp 4 needs 54 groups per rank.
        assert_eq!(padded_inter_size(27392, 128, 4), 27648);
        // Qwen2-72B inter 29568 = 231 groups, tp 2.
        assert_eq!(padded_inter_size(29568, 128, 2), 29696);
        assert_eq!(padded_inter_size(296, 128, 1), 384);
    }

    fn random_linear(n: usize, k: usize, seed: u64) -> QuantizedLinear {
        let mut s = seed;
        let w = HostTensor::from_fn(&[n, k], |_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        });
        QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, 128).unwrap()).unwrap()
    }

    /// With tp = 1 the writer never pads a quantizable model (g | inter), so the padding helpers are
    /// checked here on widths lmdeploy would pad: 296 -> 384 outputs (w1/w3), 256 -> 384 inputs (w2).
    #[test]
    fn ffn_padding_is_zero_and_undone_exactly() {
        let gate = random_linear(296, 128, 1);
        let padded = pad_out(&gate, padded_inter_size(296, 128, 1));
        assert_eq!((padded.n, padded.k), (384, 128));
        assert_eq!(&padded.q[..296 * 128], &gate.q[..]);
        assert!(padded.q[296 * 128..].iter().all(|&q| q == 0));
        assert!(padded.zeros[296..].iter().all(|&z| z == 0));
        assert!(padded.scales[296..].iter().all(|s| s.to_f32() == 0.0));
        let deq = padded.dequantize();
        assert!(deq.data[296 * 128..].iter().all(|&x| x == 0.0), "padded outputs must dequantize to 0");
        assert_eq!(&deq.data[..296 * 128], &gate.dequantize().data[..]);
        assert_eq!(unpad_out(&padded, 296, "w1").unwrap(), gate);

        let down = random_linear(64, 256, 2);
        let padded = pad_in(&down, 384);
        assert_eq!((padded.n, padded.k, padded.groups()), (64, 384, 3));
        let (d0, d1) = (down.dequantize(), padded.dequantize());
        for r in 0..64 {
            assert_eq!(&d1.data[r * 384..r * 384 + 256], &d0.data[r * 256..(r + 1) * 256]);
            assert!(d1.data[r * 384 + 256..(r + 1) * 384].iter().all(|&x| x == 0.0));
            assert_eq!((padded.zeros[r * 3 + 2], padded.scales[r * 3 + 2].to_f32()), (0, 0.0));
        }
        assert_eq!(unpad_in(&padded, 256, "w2").unwrap(), down);

        // Padding that is not zero would change the function: refused.
        let mut bad = pad_out(&gate, 384);
        bad.scales[300] = f16::ONE;
        assert!(unpad_out(&bad, 296, "w1").unwrap_err().msg.contains("non-zero scales"));
        let mut bad = pad_in(&down, 384);
        bad.scales[5 * 3 + 2] = f16::ONE;
        assert!(unpad_in(&bad, 256, "w2").unwrap_err().msg.contains("row 5"));
    }

    #[test]
    fn merged_qkv_split_round_trip() {
        let c = ModelConfig::from_json(
            &json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 128,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                "vocab_size": 8}),
            "c",
        )
        .unwrap();
        let m = crate::quant::qmodel::random_quantized_model(&c, QuantParams::new(4, 128).unwrap(), 3).unwrap();
        let l = &m.layers[0];
        let qkv = merged_qkv(&c, l).unwrap();
        assert_eq!(qkv.n, 128 + 2 * 64);
        // Row 1 of the merged tensor is q row hd/2 = 16; row 128 + 3 is k row 16 + 1; v is unpermuted.
        assert_eq!(&qkv.q[128..256], &l.q.q[16 * 128..17 * 128]);
        assert_eq!(&qkv.q[131 * 128..132 * 128], &l.k.q[17 * 128..18 * 128]);
        assert_eq!(&qkv.q[(192 + 5) * 128..(193 + 5) * 128], &l.v.q[5 * 128..6 * 128]);
        let (q, k, v) = split_qkv(&c, &qkv);
        assert!(q == l.q && k == l.k && v == l.v);
    }

    #[test]
    fn rope_permutation_interleaves_halves() {
        // Two heads of 4: per head [0, 2, 1, 3].
        assert_eq!(rope_permutation(8, 4), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let p = rope_permutation(128, 64);
        assert_eq!((p[0], p[1], p[2], p[63], p[64], p[65]), (0, 32, 1, 63, 64, 96));
    }
}
