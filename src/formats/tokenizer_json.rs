//! Hugging Face `tokenizer.json` and `tokenizer_config.json` rebuilt from GGUF `tokenizer.ggml.*`
//! metadata.
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = gpt2`), the tokenizer of GPT-2, Llama 3,
//! Qwen2 and SmolLM/StarCoder. The vocabulary and merges come over verbatim (GGUF stores them in
//! the byte-level alphabet already, e.g. `Ġthe`); control tokens (`token_type` 3) become special
//! added tokens, user-defined ones (4) plain added tokens. The pre-tokenizer is not stored in
//! GGUF, only its llama.cpp name (`tokenizer.ggml.pre`), so each known name maps to the exact HF
//! pre-tokenizer of the models that carry it.

use crate::error::{Error, IoContext, Result};
use crate::formats::gguf::GgufFile;
use serde_json::{json, Map, Value};
use std::path::Path;

/// llama.cpp token types (`llama_token_type`).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama 3's split regex (tiktoken cl100k with 1-3 digit groups).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama 3's with single digits.
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The two JSON files of an HF tokenizer, plus the ids config.json and generation_config.json need.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub vocab_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl HfTokenizer {
    /// Build both files from the GGUF metadata. `model_max_length` is the context length.
    pub fn from_gguf(g: &GgufFile, model_max_length: Option<usize>) -> Result<HfTokenizer> {
        let src = g.src();
        let model = g.req_str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(Error::input(
                    &src,
                    "SentencePiece tokenizers (tokenizer.ggml.model = \"llama\") are not supported; \
                     only byte-level BPE (\"gpt2\")",
                ))
            }
            other => {
                return Err(Error::input(
                    &src,
                    format!("unsupported tokenizer.ggml.model {other:?} (supported: \"gpt2\", byte-level BPE)"),
                ))
            }
        }
        let pre_name = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre = PreTokenizer::from_name(pre_name).ok_or_else(|| {
            Error::input(
                &src,
                format!(
                    "unsupported tokenizer.ggml.pre {pre_name:?} (supported: smollm, starcoder, refact, qwen2, \
                     deepseek-r1-qwen, llama-bpe, llama3, smaug-bpe, gpt-2, gpt2, default)"
                ),
            )
        })?;

        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::input(&src, "tokenizer.ggml.tokens is empty"));
        }
        let types: Vec<i64> = match g.get_array("tokenizer.ggml.token_type")? {
            None => vec![1; tokens.len()],
            Some(a) => {
                if a.len() != tokens.len() {
                    return Err(Error::input(
                        &src,
                        format!("tokenizer.ggml.token_type has {} entries for {} tokens", a.len(), tokens.len()),
                    ));
                }
                a.iter()
                    .map(|v| {
                        v.as_i64().ok_or_else(|| Error::input(&src, "tokenizer.ggml.token_type must hold integers"))
                    })
                    .collect::<Result<_>>()?
            }
        };
        let merges = match g.get_array("tokenizer.ggml.merges")? {
            None => Vec::new(),
            Some(_) => strings(g, "tokenizer.ggml.merges")?,
        };

        let mut vocab = Map::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            if vocab.insert(t.to_string(), json!(id)).is_some() {
                return Err(Error::input(&src, format!("tokenizer.ggml.tokens: token {t:?} appears twice")));
            }
        }
        for (i, m) in merges.iter().enumerate() {
            let ok = match m.split_once(' ') {
                Some((a, b)) => {
                    !b.contains(' ')
                        && vocab.contains_key(a)
                        && vocab.contains_key(b)
                        && vocab.contains_key(&format!("{a}{b}"))
                }
                None => false,
            };
            if !ok {
                return Err(Error::input(
                    &src,
                    format!("tokenizer.ggml.merges[{i}] = {m:?} is not two vocabulary tokens whose join is one"),
                ));
            }
        }

        let id_of = |key: &str| -> Result<Option<u32>> {
            match g.get_u64(key)? {
                None => Ok(None),
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Some(id) => {
                    Err(Error::input(&src, format!("{key} = {id} is outside the vocabulary of {}", tokens.len())))
                }
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let unk = id_of("tokenizer.ggml.unknown_token_id")?;
        let pad = id_of("tokenizer.ggml.padding_token_id")?;
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let name = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());

        // Added tokens: control and unknown ones are special, user-defined ones are not. (A
        // normal token is never promoted, even when bos/eos point at it: as an added token it
        // would be cut out of ordinary text before BPE.)
        let mut added = Vec::new();
        let mut decoder = Map::new();
        for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
            let special = ty == TOKEN_CONTROL || ty == TOKEN_UNKNOWN;
            if !(special || ty == TOKEN_USER_DEFINED) {
                continue;
            }
            added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special}));
            decoder.insert(
                id.to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                    "single_word": false, "special": special}),
            );
        }

        let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
            "use_regex": true});
        let post_processor = if add_bos || add_eos {
            let (bos_t, eos_t) = (name(bos), name(eos));
            if add_bos && bos_t.is_none() {
                return Err(Error::input(&src, "tokenizer.ggml.add_bos_token is true but there is no bos_token_id"));
            }
            if add_eos && eos_t.is_none() {
                return Err(Error::input(&src, "tokenizer.ggml.add_eos_token is true but there is no eos_token_id"));
            }
            let mut specials = Map::new();
            for (on, tok, id) in [(add_bos, &bos_t, bos), (add_eos, &eos_t, eos)] {
                if let (true, Some(t), Some(id)) = (on, tok, id) {
                    specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
                }
            }
            // "<bos> $A <eos>" and "<bos> $A <eos> <bos> $B <eos>", as transformers' Llama fast
            // tokenizer builds them.
            let part = |seq: &str, type_id: u32| -> Vec<Value> {
                let special = |t: &Option<String>, on: bool| match (on, t) {
                    (true, Some(t)) => Some(json!({"SpecialToken": {"id": t, "type_id": type_id}})),
                    _ => None,
                };
                let mut out = Vec::new();
                out.extend(special(&bos_t, add_bos));
                out.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
                out.extend(special(&eos_t, add_eos));
                out
            };
            let single = part("A", 0);
            let pair: Vec<Value> = part("A", 0).into_iter().chain(part("B", 1)).collect();
            json!({"type": "Sequence", "processors": [byte_level_post,
                {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}]})
        } else {
            byte_level_post
        };

        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": pre.normalizer(),
            "pre_tokenizer": pre.json(),
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                // llama.cpp tokenizes Llama 3 with ignore_merges (a whole word in the vocabulary wins).
                "ignore_merges": pre == PreTokenizer::Llama3,
                "vocab": vocab,
                "merges": merges,
            }
        });

        // GPT2TokenizerFast refuses add_bos_token; the generic fast class runs the template above.
        let class = if add_bos || add_eos {
            "PreTrainedTokenizerFast"
        } else {
            match pre {
                PreTokenizer::Qwen2 => "Qwen2Tokenizer",
                PreTokenizer::Llama3 => "PreTrainedTokenizerFast",
                _ => "GPT2Tokenizer",
            }
        };
        let mut cfg = Map::new();
        cfg.insert("add_bos_token".into(), json!(add_bos));
        cfg.insert("add_eos_token".into(), json!(add_eos));
        cfg.insert("add_prefix_space".into(), json!(false));
        cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
        for (k, id) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
            cfg.insert(k.into(), name(id).map(Value::String).unwrap_or(Value::Null));
        }
        if let Some(t) = g.get_str("tokenizer.chat_template")? {
            cfg.insert("chat_template".into(), json!(t));
        }
        cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
        if let Some(n) = model_max_length {
            cfg.insert("model_max_length".into(), json!(n));
        }
        cfg.insert("tokenizer_class".into(), json!(class));
        cfg.insert("vocab_size".into(), json!(tokens.len()));

        Ok(HfTokenizer {
            tokenizer_json,
            tokenizer_config: Value::Object(cfg),
            vocab_size: tokens.len(),
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: pad,
        })
    }

    /// `tokenizer.json` as written to disk.
    pub fn tokenizer_json_bytes(&self) -> Result<Vec<u8>> {
        to_pretty(&self.tokenizer_json)
    }

    /// Load the built tokenizer with the `tokenizers` crate, as transformers would: a build that
    /// would not load is a bug, so the importer checks this before writing.
    pub fn load(&self) -> Result<tokenizers::Tokenizer> {
        let text = String::from_utf8(self.tokenizer_json_bytes()?)
            .map_err(|e| Error::internal(format!("tokenizer.json is not UTF-8: {e}")))?;
        text.parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::internal(format!("the tokenizer.json built from GGUF does not load: {e}")))
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, self.tokenizer_json_bytes()?).at(p.display())?;
        let p = dir.join("tokenizer_config.json");
        std::fs::write(&p, to_pretty(&self.tokenizer_config)?).at(p.display())
    }
}

fn to_pretty(v: &Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::internal(format!("serializing JSON: {e}")))?;
    b.push(b'\n');
    Ok(b)
}

/// A metadata array of strings.
fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    g.req_array(key)?
        .iter()
        .map(|v| v.as_str().ok_or_else(|| Error::input(g.src(), format!("{key} must be an array of strings"))))
        .collect()
}

/// The HF pre-tokenizers behind llama.cpp's `tokenizer.ggml.pre` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    /// GPT-2: ByteLevel with its built-in regex.
    Gpt2,
    /// SmolLM / StarCoder: every digit on its own, then GPT-2's ByteLevel.
    DigitsGpt2,
    Qwen2,
    Llama3,
}

impl PreTokenizer {
    fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "default" | "gpt-2" | "gpt2" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" => PreTokenizer::DigitsGpt2,
            "qwen2" | "deepseek-r1-qwen" => PreTokenizer::Qwen2,
            "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => PreTokenizer::Llama3,
            _ => return None,
        })
    }

    fn json(self) -> Value {
        match self {
            PreTokenizer::Gpt2 => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            PreTokenizer::DigitsGpt2 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]}),
            PreTokenizer::Qwen2 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]}),
            PreTokenizer::Llama3 => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]}),
        }
    }

    fn normalizer(self) -> Value {
        match self {
            PreTokenizer::Qwen2 => json!({"type": "NFC"}),
            _ => Value::Null,
        }
    }
}
