//! `config.json` -> [`ModelConfig`]: the hyper-parameters of a Llama-family decoder.
//!
//! Field names mirror Hugging Face `config.json`. Every required field that is missing or has the
//! wrong type is reported with the file name and the field, e.g.
//! `model/config.json: field "hidden_size" is missing`.

use crate::error::{Error, Result};
use crate::tensor::DType;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The decoder families awqc knows. They share one compute graph; they differ in tensor names,
/// fused projections and biases (see `model::arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    InternLM2,
}

impl Arch {
    /// The `architectures[0]` class name transformers uses.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::InternLM2 => "InternLM2ForCausalLM",
        }
    }
    /// The `model_type` key of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::InternLM2 => "internlm2",
        }
    }
    fn from_names(class: Option<&str>, model_type: Option<&str>) -> Option<Arch> {
        let by_class = match class {
            Some("LlamaForCausalLM") => Some(Arch::Llama),
            Some("MistralForCausalLM") => Some(Arch::Mistral),
            Some("Qwen2ForCausalLM") => Some(Arch::Qwen2),
            Some("InternLM2ForCausalLM") => Some(Arch::InternLM2),
            _ => None,
        };
        by_class.or(match model_type {
            Some("llama") => Some(Arch::Llama),
            Some("mistral") => Some(Arch::Mistral),
            Some("qwen2") => Some(Arch::Qwen2),
            Some("internlm2") => Some(Arch::InternLM2),
            _ => None,
        })
    }
}

/// `rope_scaling` from config.json (formulas in awq-reference §8, implemented in `engine::rope`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    /// Dynamic NTK: the base is recomputed once per sequence from the prompt length.
    Dynamic { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    Yarn {
        factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        original_max_position_embeddings: Option<usize>,
    },
}

impl RopeScaling {
    pub fn type_name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }
    pub fn factor(&self) -> f64 {
        match self {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. } => *factor,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (always for Qwen2; `attention_bias`/`bias` elsewhere).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub torch_dtype: Option<DType>,
    /// The original JSON, so rewriting a config keeps keys awqc does not model.
    pub raw: Value,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            // A model directory without its config.json is bad input, not an OS failure.
            std::io::ErrorKind::NotFound => Error::input(path.display(), "not found (not a model directory?)"),
            _ => Error::io(path.display(), e),
        })?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(path.display(), format!("not valid JSON: {e}")))?;
        Self::from_json(&v, &path.display().to_string())
    }

    /// Parse a config.json value; `src` names the file in error messages.
    pub fn from_json(v: &Value, src: &str) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::input(src, "expected a JSON object at the top level"))?;
        let f = Fields { obj, src };
        let class = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|c| c.as_str());
        let model_type = obj.get("model_type").and_then(|m| m.as_str());
        let arch = Arch::from_names(class, model_type).ok_or_else(|| {
            Error::input(
                src,
                format!(
                    "unsupported architecture {} (model_type {}); supported: LlamaForCausalLM, \
                     MistralForCausalLM, Qwen2ForCausalLM, InternLM2ForCausalLM",
                    class.map(|c| format!("{c:?}")).unwrap_or_else(|| "<none>".into()),
                    model_type.map(|c| format!("{c:?}")).unwrap_or_else(|| "<none>".into()),
                ),
            )
        })?;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    return Err(Error::input(
                        src,
                        format!(
                            "hidden_size {hidden_size} is not divisible by num_attention_heads \
                             {num_attention_heads} and no head_dim is given"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::InternLM2 => f.opt_bool("bias")?.unwrap_or(false),
            _ => f.opt_bool("attention_bias")?.unwrap_or(false),
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            rope_scaling: parse_rope_scaling(obj.get("rope_scaling"), src)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            bos_token_id: first_id(obj.get("bos_token_id")),
            eos_token_id: first_id(obj.get("eos_token_id")),
            torch_dtype: obj.get("torch_dtype").and_then(|d| d.as_str()).and_then(DType::parse),
            raw: v.clone(),
        };
        cfg.validate(src)?;
        Ok(cfg)
    }

    /// Consistency checks that would otherwise surface as shape panics deep in the engine.
    pub fn validate(&self, src: &str) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::input(src, format!("field \"{name}\" must be positive, got 0")));
            }
            if v > 1 << 24 {
                return Err(Error::input(src, format!("field \"{name}\" = {v} is implausibly large")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::input(
                src,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::input(src, format!("head_dim {} must be even for RoPE", self.head_dim)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::input(src, format!("rms_norm_eps {} is not a valid epsilon", self.rms_norm_eps)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::input(src, format!("rope_theta {} must be positive", self.rope_theta)));
        }
        Ok(())
    }

    /// Output size of q_proj: `heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    /// Output size of k_proj and v_proj: `kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
    /// Grouped-query attention (fewer K/V heads than query heads).
    pub fn is_gqa(&self) -> bool {
        self.num_key_value_heads < self.num_attention_heads
    }
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let per_layer = h * (self.q_dim() + 2 * self.kv_dim())
            + self.q_dim() * h
            + 3 * h * self.intermediate_size
            + 2 * h
            + if self.attention_bias { self.q_dim() + 2 * self.kv_dim() } else { 0 };
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * per_layer + h + head
    }

    /// A complete transformers `config.json` for this model. Keys of the original file that awqc
    /// does not model are kept; the modelled ones are written from the struct.
    pub fn to_hf_json(&self, dtype: DType) -> Value {
        let mut m: Map<String, Value> = match &self.raw {
            Value::Object(o) => o.clone(),
            _ => Map::new(),
        };
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set("architectures", json!([self.arch.hf_class()]));
        set("model_type", json!(self.arch.model_type()));
        set("hidden_size", json!(self.hidden_size));
        set("intermediate_size", json!(self.intermediate_size));
        set("num_hidden_layers", json!(self.num_hidden_layers));
        set("num_attention_heads", json!(self.num_attention_heads));
        set("num_key_value_heads", json!(self.num_key_value_heads));
        set("head_dim", json!(self.head_dim));
        set("vocab_size", json!(self.vocab_size));
        set("rms_norm_eps", json!(self.rms_norm_eps));
        set("rope_theta", json!(self.rope_theta));
        set("max_position_embeddings", json!(self.max_position_embeddings));
        set("tie_word_embeddings", json!(self.tie_word_embeddings));
        set("hidden_act", json!("silu"));
        set("torch_dtype", json!(dtype.torch_name()));
        set("use_cache", json!(true));
        if let Some(b) = self.bos_token_id {
            set("bos_token_id", json!(b));
        }
        if let Some(e) = self.eos_token_id {
            set("eos_token_id", json!(e));
        }
        match self.arch {
            Arch::Llama | Arch::Mistral => {
                set("attention_bias", json!(self.attention_bias));
                set("mlp_bias", json!(false));
                set("attention_dropout", json!(0.0));
                set("initializer_range", json!(0.02));
                set("pretraining_tp", json!(1));
            }
            Arch::Qwen2 => {
                set("attention_dropout", json!(0.0));
                set("use_sliding_window", json!(false));
                set("initializer_range", json!(0.02));
            }
            Arch::InternLM2 => set("bias", json!(self.attention_bias)),
        }
        set("rope_scaling", rope_scaling_json(&self.rope_scaling));
        Value::Object(m)
    }
}

fn rope_scaling_json(r: &RopeScaling) -> Value {
    match r {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Dynamic { factor } => json!({"rope_type": "dynamic", "factor": factor}),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings
        }),
        RopeScaling::Yarn { factor, beta_fast, beta_slow, attention_factor, original_max_position_embeddings } => {
            let mut v = json!({"rope_type": "yarn", "factor": factor, "beta_fast": beta_fast, "beta_slow": beta_slow});
            if let Some(a) = attention_factor {
                v["attention_factor"] = json!(a);
            }
            if let Some(o) = original_max_position_embeddings {
                v["original_max_position_embeddings"] = json!(o);
            }
            v
        }
    }
}

/// Parse `rope_scaling`. Both `type` and `rope_type` are read; if both are present they must agree.
pub fn parse_rope_scaling(v: Option<&Value>, src: &str) -> Result<RopeScaling> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(Error::input(src, format!("field \"rope_scaling\" must be an object or null, got {other}")))
        }
    };
    let f = Fields { obj, src };
    let t1 = obj.get("type").and_then(|t| t.as_str());
    let t2 = obj.get("rope_type").and_then(|t| t.as_str());
    let ty = match (t1, t2) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::input(
                src,
                format!("rope_scaling has type {a:?} and rope_type {b:?}; they must agree"),
            ))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(Error::input(src, "rope_scaling has neither \"type\" nor \"rope_type\"")),
    };
    let factor = || -> Result<f64> {
        let x = f.f64("factor").map_err(|e| e.context("rope_scaling"))?;
        if !(x.is_finite() && x > 0.0) {
            return Err(Error::input(src, format!("rope_scaling.factor {x} must be positive")));
        }
        Ok(x)
    };
    Ok(match ty {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: f.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: f.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: f.opt_usize("original_max_position_embeddings")?.unwrap_or(8192),
        },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            beta_fast: f.opt_f64("beta_fast")?.unwrap_or(32.0),
            beta_slow: f.opt_f64("beta_slow")?.unwrap_or(1.0),
            attention_factor: f.opt_f64("attention_factor")?,
            original_max_position_embeddings: f.opt_usize("original_max_position_embeddings")?,
        },
        other => {
            return Err(Error::input(
                src,
                format!("unsupported rope_scaling type {other:?} (supported: default, linear, dynamic, llama3, yarn)"),
            ))
        }
    })
}

fn first_id(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Value::Array(a) => a.first().and_then(|x| x.as_u64()).and_then(|x| u32::try_from(x).ok()),
        _ => None,
    }
}

/// Typed field access with errors that name the file and the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    src: &'a str,
}

impl Fields<'_> {
    fn missing(&self, k: &str) -> Error {
        Error::input(self.src, format!("field \"{k}\" is missing"))
    }
    fn wrong(&self, k: &str, want: &str, got: &Value) -> Error {
        Error::input(self.src, format!("field \"{k}\" must be {want}, got {got}"))
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| self.missing(k))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(k, "a non-negative integer", v)),
        }
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.opt_f64(k)?.ok_or_else(|| self.missing(k))
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(k, "a number", v)),
        }
    }
    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(k, "true or false", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": true
        })
    }

    #[test]
    fn parses_smollm2_and_counts_parameters() {
        let c = ModelConfig::from_json(&smollm(), "config.json").unwrap();
        assert_eq!(c.head_dim, 64);
        assert!(c.is_gqa());
        // stack-notes: 134.5M parameters.
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = smollm();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_json(&v, "m/config.json").unwrap_err();
        assert_eq!(e.msg, "m/config.json: field \"hidden_size\" is missing");
        let mut v = smollm();
        v["num_attention_heads"] = json!("nine");
        let e = ModelConfig::from_json(&v, "c").unwrap_err();
        assert!(e.msg.contains("\"num_attention_heads\" must be a non-negative integer"), "{}", e.msg);
        let mut v = smollm();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        v["model_type"] = json!("gpt2");
        let e = ModelConfig::from_json(&v, "c").unwrap_err();
        assert!(e.msg.contains("unsupported architecture \"GPT2LMHeadModel\""), "{}", e.msg);
    }

    #[test]
    fn rope_scaling_types() {
        let mut v = smollm();
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        assert_eq!(ModelConfig::from_json(&v, "c").unwrap().rope_scaling, RopeScaling::Dynamic { factor: 2.0 });
        v["rope_scaling"] = json!({"type": "dynamic", "rope_type": "linear", "factor": 2.0});
        assert!(ModelConfig::from_json(&v, "c").unwrap_err().msg.contains("must agree"));
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        assert!(matches!(ModelConfig::from_json(&v, "c").unwrap().rope_scaling, RopeScaling::Llama3 { .. }));
        v["rope_scaling"] = json!({"rope_type": "su", "factor": 2.0});
        assert!(ModelConfig::from_json(&v, "c").unwrap_err().msg.contains("unsupported rope_scaling type"));
    }

    #[test]
    fn round_trips_through_hf_json() {
        let c = ModelConfig::from_json(&smollm(), "c").unwrap();
        let back = ModelConfig::from_json(&c.to_hf_json(DType::F32), "c").unwrap();
        assert_eq!(back.num_parameters(), c.num_parameters());
        assert_eq!(back.rope_theta, c.rope_theta);
    }
}
