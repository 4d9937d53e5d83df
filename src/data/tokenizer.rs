//! The tokenizer: a thin wrapper over the `tokenizers` crate that behaves like HF
//! `AutoTokenizer.from_pretrained(model)(text)` (fast tokenizer, default special tokens, no
//! truncation or padding), plus the few facts about special tokens the pipeline needs.
//!
//! Long inputs (the 2 MB calibration and evaluation texts) are cut into chunks that are encoded in
//! parallel and concatenated. That is only done where it provably gives the same ids as encoding
//! the whole string: for pre-tokenizers we know (GPT-2 byte-level regex, the Llama-3 / Qwen2 split
//! regexes, optionally after `Digits`), at a `"\n\n"` preceded by a character that every one of
//! those regexes ends a piece on. See [`ChunkRule`]. Any other tokenizer is encoded in one call.

use crate::bail_input;
use crate::error::{Error, IoContext, Result};
use serde_json::Value;
use std::path::Path;

/// A loaded tokenizer (`tokenizer.json`), ready to encode like HF `tokenizer(text)`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chunking: Option<ChunkRule>,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
    /// The file it came from, for error messages.
    source: String,
}

/// Which `"\n\n"` positions are safe to cut at: the pieces of the pre-tokenizer regexes never
/// span the cut, and the text after it is pre-tokenized the same alone or in context (the
/// regexes have no look-behind; their one look-ahead `(?!\S)` only matters for whitespace runs,
/// and the character before the cut is not whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChunkRule {
    /// GPT-2 `ByteLevel` regex: any printable ASCII character before `"\n\n"`. Punctuation
    /// pieces (` ?[^\s\p{L}\p{N}]+`) stop at whitespace.
    Gpt2,
    /// Llama-3 / Qwen2 split regexes: an ASCII letter or digit before `"\n\n"`. (There a
    /// punctuation piece ` ?[^\s\p{L}\p{N}]+[\r\n]*` swallows the newlines that follow it.)
    AsciiAlnum,
}

impl ChunkRule {
    fn allows(self, prev: u8) -> bool {
        match self {
            ChunkRule::Gpt2 => prev.is_ascii_graphic(),
            ChunkRule::AsciiAlnum => prev.is_ascii_alphanumeric(),
        }
    }
}

/// Chunk size for parallel encoding. Inputs shorter than two chunks are encoded in one call.
const CHUNK_BYTES: usize = 64 * 1024;

// The split patterns of Llama-3 and Qwen2 tokenizer.json files, as published.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Load a `tokenizer.json`. Bos/eos are only known when the post-processor adds a BOS
    /// (use [`Tokenizer::from_model_dir`] to read them from `tokenizer_config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).at(&source)?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(&source, format!("not valid JSON: {e}")))?;
        if !json.is_object() {
            bail_input!(source, "not a tokenizer.json (expected a JSON object)");
        }
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::input(&source, format!("not a usable tokenizer.json: {e}")))?;
        // HF `tokenizer(text)` neither truncates nor pads unless asked to.
        inner
            .with_truncation(None)
            .map_err(|e| Error::internal(format!("{source}: disabling truncation: {e}")))?;
        inner.with_padding(None);
        let chunking = chunk_rule(&json);
        let bos = template_bos(&json);
        Ok(Tokenizer { inner, chunking, bos, eos: None, chat_template: None, source })
    }

    /// Load `dir/tokenizer.json` plus, when present, `dir/tokenizer_config.json` (bos / eos
    /// tokens, `add_bos_token` / `add_eos_token` for Llama-class tokenizers, `chat_template`),
    /// `dir/special_tokens_map.json` and `dir/chat_template.jinja`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            bail_input!(
                dir.display(),
                "no tokenizer.json (only HF fast tokenizers are supported; a tokenizer.model alone is not)"
            );
        }
        let mut tok = Tokenizer::from_file(&tj)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json_opt(&cfg_path)?;
        let map = read_json_opt(&dir.join("special_tokens_map.json"))?;

        let named = |key: &str| -> Option<String> {
            [cfg.as_ref(), map.as_ref()].into_iter().flatten().find_map(|j| token_content(j.get(key)?))
        };
        let id_of = |tok: &Tokenizer, key: &str| -> Result<Option<u32>> {
            match named(key) {
                None => Ok(None),
                Some(s) => tok.inner.token_to_id(&s).map(Some).ok_or_else(|| {
                    Error::input(cfg_path.display(), format!("{key} {s:?} is not in the vocabulary"))
                }),
            }
        };
        let bos = id_of(&tok, "bos_token")?;
        let eos = id_of(&tok, "eos_token")?;
        tok.bos = bos.or(tok.bos);
        tok.eos = eos;

        if let Some(cfg) = &cfg {
            // transformers' LlamaTokenizerFast (and Gemma's) rebuild the post-processor from
            // add_bos_token / add_eos_token when they load; other classes use tokenizer.json's.
            let class = cfg.get("tokenizer_class").and_then(Value::as_str).unwrap_or("");
            let llama_class = matches!(
                class,
                "LlamaTokenizer"
                    | "LlamaTokenizerFast"
                    | "CodeLlamaTokenizer"
                    | "CodeLlamaTokenizerFast"
                    | "GemmaTokenizer"
                    | "GemmaTokenizerFast"
            );
            if llama_class {
                let add_bos = cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(true);
                let add_eos = cfg.get("add_eos_token").and_then(Value::as_bool).unwrap_or(false);
                tok.set_bos_eos_template(&cfg_path, add_bos, add_eos)?;
            }
            tok.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default", else the first.
                Some(Value::Array(list)) => {
                    let pick = list
                        .iter()
                        .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                        .or(list.first());
                    pick.and_then(|t| t.get("template")).and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            };
        }
        if tok.chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                tok.chat_template = Some(crate::data::textfile::read_utf8(&jinja)?);
            }
        }
        Ok(tok)
    }

    /// Replace the post-processor by `[bos] $A [eos]` as transformers does for Llama tokenizers.
    fn set_bos_eos_template(&mut self, cfg_path: &Path, add_bos: bool, add_eos: bool) -> Result<()> {
        use tokenizers::processors::template::TemplateProcessing;
        let mut specials: Vec<(String, u32)> = Vec::new();
        let token = |id: Option<u32>, what: &str| -> Result<(String, u32)> {
            let id = id.ok_or_else(|| {
                Error::input(
                    cfg_path.display(),
                    format!("add_{what}_token is true but there is no {what}_token"),
                )
            })?;
            let s = self.inner.id_to_token(id).ok_or_else(|| {
                Error::input(cfg_path.display(), format!("{what} id {id} is not in the vocabulary"))
            })?;
            Ok((s, id))
        };
        let bos = if add_bos { Some(token(self.bos, "bos")?) } else { None };
        let eos = if add_eos { Some(token(self.eos, "eos")?) } else { None };
        // "[bos:t] $X:t [eos:t]" for one sequence; a pair is two of them (type ids 0 and 1).
        let one = |seq: &str, type_id: u32| -> String {
            let mut parts = Vec::new();
            if let Some((s, _)) = &bos {
                parts.push(format!("{s}:{type_id}"));
            }
            parts.push(format!("{seq}:{type_id}"));
            if let Some((s, _)) = &eos {
                parts.push(format!("{s}:{type_id}"));
            }
            parts.join(" ")
        };
        let single = one("$A", 0);
        let pair = format!("{} {}", one("$A", 0), one("$B", 1));
        specials.extend(bos.iter().cloned());
        specials.extend(eos.iter().filter(|e| Some(*e) != bos.as_ref()).cloned());
        let bad = |e: &dyn std::fmt::Display| {
            Error::input(cfg_path.display(), format!("building the bos/eos template: {e}"))
        };
        let template = TemplateProcessing::builder()
            .try_single(single)
            .map_err(|e| bad(&e))?
            .try_pair(pair)
            .map_err(|e| bad(&e))?
            .special_tokens(specials)
            .build()
            .map_err(|e| bad(&e))?;
        self.inner.with_post_processor(Some(template));
        Ok(())
    }

    /// Token ids of `text` with the tokenizer's default special tokens (HF `tokenizer(text)`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let err = |e: tokenizers::Error| Error::input(&self.source, format!("encoding failed: {e}"));
        let chunks = match self.chunking {
            Some(rule) if text.len() >= 2 * CHUNK_BYTES => split_for_encoding(text, rule, CHUNK_BYTES),
            _ => vec![text],
        };
        if chunks.len() == 1 {
            let enc = self.inner.encode_fast(text, true).map_err(err)?;
            return Ok(enc.get_ids().to_vec());
        }
        // Chunks without special tokens (in parallel), then the post-processor once on the whole.
        let encs = self.inner.encode_batch_fast(chunks, false).map_err(err)?;
        let merged = tokenizers::Encoding::merge(encs, false);
        let enc = self.inner.post_process(merged, None, true).map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids back to text, special tokens included (HF `tokenizer.decode(ids)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::input(&self.source, format!("decoding failed: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether long inputs are encoded in parallel chunks (and with which cut rule).
    pub fn chunk_rule(&self) -> Option<ChunkRule> {
        self.chunking
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// `len(AutoTokenizer.from_pretrained(dir))` as transformers 4.x (4.55) computes it for a fast
/// tokenizer: the distinct token strings of `tokenizer.json`'s vocabulary and added tokens, plus
/// the tokens `tokenizer_config.json` declares (`added_tokens_decoder`, the special-token fields),
/// which transformers adds when they are missing. `special_tokens_map.json` is the legacy source:
/// transformers reads it only when the config has no `added_tokens_decoder`. lmdeploy writes
/// `min(this, vocab_size)` as the TurboMind `tokenizer_size`.
pub fn transformers_len(dir: &Path) -> Result<usize> {
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut names: std::collections::HashSet<String> = tok.inner.get_vocab(true).into_keys().collect();
    let cfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
    let legacy = match cfg.as_ref().and_then(|c| c.get("added_tokens_decoder")) {
        Some(_) => None,
        None => read_json_opt(&dir.join("special_tokens_map.json"))?,
    };
    for cfg in [cfg, legacy].into_iter().flatten() {
        if let Some(Value::Object(dec)) = cfg.get("added_tokens_decoder") {
            names.extend(dec.values().filter_map(token_content));
        }
        for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            names.extend(cfg.get(key).and_then(token_content));
        }
        if let Some(Value::Array(extra)) = cfg.get("additional_special_tokens") {
            names.extend(extra.iter().filter_map(token_content));
        }
    }
    Ok(names.len())
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).at(path.display())?;
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| Error::input(path.display(), format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

/// A special token in tokenizer_config.json: a string or an AddedToken object `{"content": ..}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The BOS a `TemplateProcessing` post-processor puts in front of a single sequence, if any.
fn template_bos(json: &Value) -> Option<u32> {
    let pp = json.get("post_processor")?;
    let pp = match pp.get("type")?.as_str()? {
        "TemplateProcessing" => pp,
        "Sequence" => pp
            .get("processors")?
            .as_array()?
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))?,
        _ => return None,
    };
    let first = pp.get("single")?.as_array()?.first()?;
    let name = first.get("SpecialToken")?.get("id")?.as_str()?;
    let ids = pp.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
    match ids.as_slice() {
        [id] => id.as_u64().and_then(|i| u32::try_from(i).ok()),
        _ => None,
    }
}

/// Decide from tokenizer.json whether (and where) long inputs may be cut. `None` unless every
/// stage is one we have reasoned about: normalizer absent or Unicode normal form; pre-tokenizer
/// made of Digits, ByteLevel (no prefix space) and the known Split regexes; no added token that
/// contains a newline or strips whitespace on its right (it could match across the cut).
pub fn chunk_rule(json: &Value) -> Option<ChunkRule> {
    if !normalizer_is_local(json.get("normalizer").unwrap_or(&Value::Null)) {
        return None;
    }
    if let Some(added) = json.get("added_tokens") {
        for t in added.as_array()? {
            let content = t.get("content")?.as_str()?;
            let rstrip = t.get("rstrip").and_then(Value::as_bool).unwrap_or(false);
            if content.contains('\n') || content.contains('\r') || rstrip {
                return None;
            }
        }
    }
    pre_tokenizer_rule(json.get("pre_tokenizer")?)
}

fn normalizer_is_local(n: &Value) -> bool {
    match n {
        Value::Null => true,
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("NFC" | "NFD" | "NFKC" | "NFKD") => true,
            Some("Sequence") => o
                .get("normalizers")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().all(normalizer_is_local)),
            _ => false,
        },
        _ => false,
    }
}

/// The strictest rule over the stages, or `None` if a stage is unknown or nothing splits at all.
fn pre_tokenizer_rule(p: &Value) -> Option<ChunkRule> {
    // Each stage: Ok(Some(rule)) splits with a regex, Ok(None) is neutral, Err = unknown.
    fn stage(p: &Value) -> std::result::Result<Option<ChunkRule>, ()> {
        let o = p.as_object().ok_or(())?;
        match o.get("type").and_then(Value::as_str).ok_or(())? {
            "Digits" => Ok(None),
            "ByteLevel" => {
                if o.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true) {
                    return Err(()); // every chunk would get its own leading space
                }
                let use_regex = o.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
                Ok(use_regex.then_some(ChunkRule::Gpt2))
            }
            "Split" => {
                let pattern =
                    o.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str).ok_or(())?;
                let isolated = o.get("behavior").and_then(Value::as_str) == Some("Isolated");
                let invert = o.get("invert").and_then(Value::as_bool).unwrap_or(false);
                if isolated && !invert && (pattern == LLAMA3_PATTERN || pattern == QWEN2_PATTERN) {
                    Ok(Some(ChunkRule::AsciiAlnum))
                } else {
                    Err(())
                }
            }
            "Sequence" => {
                let mut rule = None;
                for s in o.get("pretokenizers").and_then(Value::as_array).ok_or(())? {
                    rule = rule.max(stage(s)?);
                }
                Ok(rule)
            }
            _ => Err(()),
        }
    }
    stage(p).ok().flatten()
}

/// Cut `text` into pieces of about `target` bytes, each cut just before a `"\n\n"` that `rule`
/// allows. Concatenating the pieces gives back `text`.
pub fn split_for_encoding(text: &str, rule: ChunkRule, target: usize) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = start + target;
    while pos + 2 <= b.len() {
        // The cut is at `pos`: b[pos..pos+2] == "\n\n" and b[pos-1] passes the rule. All three
        // bytes are ASCII, so `pos` is a char boundary.
        if b[pos] == b'\n' && b[pos + 1] == b'\n' && rule.allows(b[pos - 1]) {
            out.push(&text[start..pos]);
            start = pos;
            pos = start + target;
        } else {
            pos += 1;
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, TokenizerBuilder};

    /// A small byte-level BPE trained on `corpus`, with SmolLM2's pre-tokenizer (individual
    /// digits, then GPT-2 byte-level) and `<s>` = 0, `</s>` = 1; written as tokenizer.json.
    pub fn trained_tokenizer_json(corpus: &[&str], vocab: usize) -> String {
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from("<s>", true), AddedToken::from("</s>", true)])
            .build()
            .into();
        let pre = Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
        // The wrapper types are what tokenizer.json (de)serializes.
        use tokenizers::{DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
        let mut tok: tokenizers::TokenizerImpl<
            ModelWrapper,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        > = TokenizerBuilder::new()
            .with_model(BPE::default().into())
            .with_pre_tokenizer(Some(pre.into()))
            .with_decoder(Some(ByteLevel::default().into()))
            .with_post_processor(Some(ByteLevel::default().into()))
            .build()
            .unwrap();
        tok.train(&mut trainer, corpus.iter()).unwrap();
        tok.to_string(false).unwrap()
    }

    pub fn write_tmp(name: &str, contents: &str) -> std::path::PathBuf {
        // One directory per call: tests run in parallel threads of one process
        // and must never read a file another thread is still writing.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("awqc-tok-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn transformers_len_counts_vocab_added_and_declared_tokens_once() {
        // Vocabulary a, b, c, <s>; added <s> (already in the vocabulary) and <x> (new): 5 names.
        let tj = r#"{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[
              {"id":3,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
              {"id":4,"content":"<x>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"c":2,"<s>":3},"unk_token":"a"}}"#;
        let dir = write_tmp("tokenizer.json", tj).parent().unwrap().to_path_buf();
        assert_eq!(transformers_len(&dir).unwrap(), 5);
        // The config repeats <s> and <x>, and declares </s> and <y> (new) and <x> again: 5 + 2.
        // With an added_tokens_decoder, transformers ignores special_tokens_map.json (its <pad>).
        // Expected values from transformers 4.55.4's len(AutoTokenizer) on these files.
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"added_tokens_decoder":{"3":{"content":"<s>"},"4":{"content":"<x>"}},
                "bos_token":"<s>","eos_token":{"content":"</s>"},"additional_special_tokens":["<y>","<x>"]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("special_tokens_map.json"), r#"{"pad_token":{"content":"<pad>"},"eos_token":"</s>"}"#).unwrap();
        assert_eq!(transformers_len(&dir).unwrap(), 7);
        // Without one, the legacy map counts: <pad> too.
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token":"<s>","eos_token":"</s>","additional_special_tokens":["<y>","<x>"]}"#,
        )
        .unwrap();
        assert_eq!(transformers_len(&dir).unwrap(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const CORPUS: &str = "The quick brown fox jumps over the lazy dog. It's 2024, and the dog's\n\n\
        owner paid $1,234.56 for 3 new toys!\n\nNew paragraph: unicode café, naïve, 東京.\n";

    fn tok() -> Tokenizer {
        let json = trained_tokenizer_json(&[CORPUS], 400);
        Tokenizer::from_file(&write_tmp("t.json", &json)).unwrap()
    }

    #[test]
    fn round_trip_and_vocab() {
        let t = tok();
        assert_eq!(t.chunk_rule(), Some(ChunkRule::Gpt2));
        let ids = t.encode(CORPUS).unwrap();
        assert!(ids.len() < CORPUS.len(), "BPE merged nothing");
        assert_eq!(t.decode(&ids).unwrap(), CORPUS);
        // 256 bytes + 2 specials + merges, capped at the requested size.
        assert!(t.vocab_size() > 258 && t.vocab_size() <= 400, "{}", t.vocab_size());
        // Individual digits: "2024" is four tokens of one digit each.
        let d = t.encode("2024").unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(t.bos_id(), None);
    }

    #[test]
    fn chunked_encoding_equals_whole_encoding() {
        let t = tok();
        // Paragraphs ending in letters, digits, punctuation and spaces, so some cut candidates
        // are allowed and some are not.
        let mut text = String::new();
        let ends = ["word", "1234", "end.", "space ", "tab\t", "quote\"", "x"];
        for i in 0..4000 {
            text.push_str(&format!("Line {i} has some text and {}", ends[i % ends.len()]));
            text.push_str(if i % 3 == 0 {
                "\n\n"
            } else if i % 3 == 1 {
                "\n\n\n"
            } else {
                "\n"
            });
        }
        let chunks = split_for_encoding(&text, ChunkRule::Gpt2, 1000);
        assert!(chunks.len() > 50, "{}", chunks.len());
        assert_eq!(chunks.concat(), text);
        for c in &chunks[1..] {
            assert!(c.starts_with("\n\n"));
        }
        let whole = t.inner.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        let mut pieces = Vec::new();
        for c in &chunks {
            pieces.extend_from_slice(t.inner.encode(*c, true).unwrap().get_ids());
        }
        assert_eq!(pieces, whole);
        assert!(text.len() > 2 * CHUNK_BYTES);
        assert_eq!(t.encode(&text).unwrap(), whole);
    }

    #[test]
    fn cutting_at_a_disallowed_point_would_change_pieces() {
        // Why the rule exists, on the pre-tokenizer pieces (vocabulary independent): "a \n\nb"
        // whole gives " \n" + "\n" pieces, cut after the space it gives " " + "\n\n".
        use tokenizers::PreTokenizer;
        let t = tok();
        let pt = t.inner.get_pre_tokenizer().unwrap();
        let pieces = |s: &str| -> Vec<String> {
            let mut pre = tokenizers::PreTokenizedString::from(s);
            pt.pre_tokenize(&mut pre).unwrap();
            pre.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte)
                .into_iter()
                .map(|(p, _, _)| p.to_string())
                .collect()
        };
        let cut = |a: &str, b: &str| [pieces(a), pieces(b)].concat();
        assert_ne!(pieces("a \n\nb"), cut("a ", "\n\nb"));
        assert_ne!(pieces("a\n\n\nb"), cut("a\n", "\n\nb"));
        // Allowed cuts: after printable ASCII.
        for prev in ["a", ".", "9", "\"", ")"] {
            let s = format!("x{prev}\n\n b\n\nc");
            assert_eq!(pieces(&s), cut(&format!("x{prev}"), "\n\n b\n\nc"), "{prev}");
        }
    }

    #[test]
    fn rule_detection() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let bl = r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#;
        assert_eq!(
            chunk_rule(&j(&format!(r#"{{"normalizer":null,"pre_tokenizer":{bl}}}"#))),
            Some(ChunkRule::Gpt2)
        );
        // add_prefix_space, unknown normalizer, a newline in an added token: no chunking.
        assert_eq!(chunk_rule(&j(r#"{"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":true}}"#)), None);
        assert_eq!(
            chunk_rule(&j(&format!(r#"{{"normalizer":{{"type":"Lowercase"}},"pre_tokenizer":{bl}}}"#))),
            None
        );
        assert_eq!(
            chunk_rule(&j(&format!(
                r#"{{"added_tokens":[{{"content":"\n\n","rstrip":false}}],"pre_tokenizer":{bl}}}"#
            ))),
            None
        );
        // Metaspace (SentencePiece-style) is not reasoned about.
        assert_eq!(chunk_rule(&j(r#"{"pre_tokenizer":{"type":"Metaspace","replacement":"▁"}}"#)), None);
        // Llama-3 style: Split(regex) + ByteLevel without regex.
        let llama3 = serde_json::json!({"normalizer": null, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}});
        assert_eq!(chunk_rule(&llama3), Some(ChunkRule::AsciiAlnum));
    }

    #[test]
    fn bad_json_is_one_line_error_naming_file() {
        let p = write_tmp("bad.json", "{\"model\": [1, 2,\n");
        let e = Tokenizer::from_file(&p).err().unwrap();
        assert!(e.msg.starts_with(&p.display().to_string()), "{}", e.msg);
        assert!(e.msg.contains("not valid JSON"), "{}", e.msg);
        assert!(!e.to_string().contains('\n'));
        let p = write_tmp("notok.json", "{\"model\": 3}");
        let e = Tokenizer::from_file(&p).err().unwrap();
        assert!(e.msg.contains("not a usable tokenizer.json"), "{}", e.msg);
    }

    #[test]
    fn model_dir_reads_config_and_llama_bos_template() {
        let json = trained_tokenizer_json(&[CORPUS], 300);
        let dir = std::env::temp_dir().join(format!("awqc-tokdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), &json).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"tokenizer_class":"LlamaTokenizerFast","add_bos_token":true,"add_eos_token":false,
                "bos_token":{"content":"<s>"},"eos_token":"</s>","chat_template":"{{ x }}"}"#,
        )
        .unwrap();
        let t = Tokenizer::from_model_dir(&dir).unwrap();
        assert_eq!((t.bos_id(), t.eos_id()), (Some(0), Some(1)));
        assert_eq!(t.chat_template(), Some("{{ x }}"));
        let ids = t.encode("fox").unwrap();
        assert_eq!(ids[0], 0, "Llama tokenizers get a BOS");
        assert_eq!(
            &ids[1..],
            &Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap().encode("fox").unwrap()[..]
        );
        // A GPT-2-class tokenizer keeps tokenizer.json's post-processor (no BOS), and a list of
        // chat templates picks "default".
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"tokenizer_class":"GPT2Tokenizer","add_bos_token":true,"bos_token":"<s>","eos_token":"</s>",
                "chat_template":[{"name":"tool","template":"T"},{"name":"default","template":"D"}]}"#,
        )
        .unwrap();
        let t = Tokenizer::from_model_dir(&dir).unwrap();
        assert_ne!(t.encode("fox").unwrap()[0], 0);
        assert_eq!(t.chat_template(), Some("D"));
        // Unknown bos token: error naming the config file.
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"bos_token":"<nope>"}"#).unwrap();
        let e = Tokenizer::from_model_dir(&dir).err().unwrap();
        assert!(e.msg.contains("tokenizer_config.json") && e.msg.contains("<nope>"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Tokenizer::from_model_dir(&dir).err().unwrap();
        assert!(e.msg.contains("no tokenizer.json"), "{}", e.msg);
    }
}
