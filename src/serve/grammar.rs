//! Grammar-constrained sampling: tool calls and `response_format` on llguidance.
//!
//! [`GrammarEnv`] is built once per served model: a `TokTrie` from the model's own vocabulary
//! (the byte string of every token id, from `tokenizer.json`) and llguidance's parser factory.
//! Per request, [`Grammar`] holds the compiled grammar (a Lark grammar with `%json` schemas,
//! see `serve/toolcall.rs`), and [`GrammarConstraint`] drives it token by token inside the
//! engine thread (the scheduler's [`Constraint`]):
//!
//! - **eager** (`tool_choice: "required"`, a named function, `response_format`): from the first
//!   generated token, only tokens the grammar allows can be sampled; when the grammar is complete
//!   only the stop tokens are.
//! - **lazy** (`tool_choice: "auto"`): generation is free until the text ends with the syntax's
//!   trigger (`<tool_call>`); from there the rest of the call is constrained, as llama.cpp's and
//!   mistral.rs's lazy grammars do. Bytes of the trigger token past the trigger are fed to the
//!   grammar; if they cannot start a call, the constraint gives up and the text stays free (the
//!   parser then returns it as content, never a broken call).

use crate::error::{Error, Result};
use crate::serve::scheduler::Constraint;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::path::Path;
use std::sync::Arc;

/// llguidance's tokenizer view of the model: the trie of token byte strings. Tokenization (only
/// used by llguidance to feed literal text) is the trie's greedy one.
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// The model's vocabulary as llguidance sees it, and its parser factory.
pub struct GrammarEnv {
    env: Arc<TrieEnv>,
    factory: ParserFactory,
    /// Tokens that end the answer (EOS, end of turn): allowed exactly when the grammar may end.
    stop_ids: Vec<u32>,
}

impl GrammarEnv {
    /// `tokenizer_json`: the model's tokenizer.json (byte-level BPE or SentencePiece with byte
    /// fallback); `vocab_size`: rows of the model's LM head (may exceed the tokenizer's: those ids
    /// get no bytes and are never allowed); `stop_ids`: the answer's end tokens.
    pub fn new(tokenizer_json: &Path, vocab_size: usize, stop_ids: &[u32]) -> Result<Self> {
        let what = tokenizer_json.display().to_string();
        let bytes = std::fs::read(tokenizer_json).map_err(|e| Error::io(&what, e))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::input(&what, format!("not valid JSON: {e}")))?;
        // llguidance asserts on some malformed vocabularies: contain that as an error.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| Error::input(&what, "llguidance could not read the vocabulary"))?
            .map_err(|e| Error::input(&what, format!("cannot build the grammar vocabulary: {e}")))?;
        let n = vocab_size.max(words.len());
        let mut words = words;
        words.resize(n, Vec::new());
        let eos = *stop_ids.first().ok_or_else(|| Error::input(&what, "the model has no EOS / end-of-turn token"))?;
        let trie = TokTrie::from(&TokRxInfo::new(n as u32, eos), &words);
        let env = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&(env.clone() as llguidance::toktrie::TokEnv))
            .map_err(|e| Error::internal(format!("llguidance: {e}")))?;
        factory.set_stderr_log_level(0);
        Ok(GrammarEnv { env, factory, stop_ids: stop_ids.to_vec() })
    }

    /// Compile a Lark grammar (with `%json {schema}` rules). The error is llguidance's message
    /// (an unsupported or contradictory schema): the HTTP layer answers 400 with it.
    pub fn compile(self: &Arc<Self>, lark: &str) -> std::result::Result<Grammar, String> {
        let parser = self.factory.create_parser(TopLevelGrammar::from_lark(lark.to_string()));
        let m = Matcher::new(parser);
        if let Some(e) = m.get_error() {
            return Err(e);
        }
        Ok(Grammar { env: self.clone(), matcher: m })
    }

    /// The bytes a token stands for (special tokens carry llguidance's 0xFF marker).
    pub fn token_bytes(&self, t: u32) -> Vec<u8> {
        self.env.trie.decode_raw(&[t])
    }
}

/// A compiled grammar, ready to constrain one answer.
pub struct Grammar {
    env: Arc<GrammarEnv>,
    matcher: Matcher,
}

impl Grammar {
    /// Constrain from the first token.
    pub fn eager(self) -> GrammarConstraint {
        GrammarConstraint { env: self.env, state: State::Active(self.matcher), trigger: Vec::new(), text: Vec::new() }
    }

    /// Constrain from the first occurrence of `trigger` in the generated text; `self` is the
    /// grammar of what follows the trigger.
    pub fn lazy(self, trigger: &str) -> GrammarConstraint {
        GrammarConstraint { env: self.env, state: State::Waiting(self.matcher), trigger: trigger.as_bytes().to_vec(), text: Vec::new() }
    }

    /// Whether `text` (tokenized greedily) is a complete sentence of the grammar: for tests.
    pub fn accepts(&self, text: &str) -> bool {
        let mut m = self.matcher.deep_clone();
        let toks = self.env.env.tokenize_bytes(text.as_bytes());
        for t in toks {
            match m.compute_mask() {
                Ok(mask) if mask.is_allowed(t) => {}
                _ => return false,
            }
            if m.consume_token(t).is_err() {
                return false;
            }
        }
        m.is_accepting().unwrap_or(false)
    }
}

enum State {
    /// Lazy: free text until the trigger; holds the grammar of what follows it.
    Waiting(Matcher),
    Active(Matcher),
    /// Nothing more to constrain (the trigger's tail did not fit the grammar, or an internal
    /// error: the text stays free).
    Off,
}

/// One request's grammar inside the engine thread.
pub struct GrammarConstraint {
    env: Arc<GrammarEnv>,
    state: State,
    trigger: Vec<u8>,
    /// Generated bytes while waiting for the trigger (only the tail that can still hold it).
    text: Vec<u8>,
}

impl Constraint for GrammarConstraint {
    fn apply(&mut self, logits: &mut [f32]) {
        let State::Active(m) = &mut self.state else { return };
        let mask = if m.is_stopped() { None } else { m.compute_mask().ok() };
        let accepting = m.is_stopped() || m.is_accepting().unwrap_or(false);
        let stops = &self.env.stop_ids;
        for (i, l) in logits.iter_mut().enumerate() {
            let t = i as u32;
            let is_stop = stops.contains(&t);
            let ok = if is_stop { accepting } else { mask.as_ref().is_some_and(|mk| mk.is_allowed(t)) };
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        if !logits.iter().any(|l| l.is_finite()) {
            // The grammar has no way on (should not happen): end the answer rather than sample
            // from nothing.
            for &s in stops {
                if let Some(l) = logits.get_mut(s as usize) {
                    *l = 0.0;
                }
            }
        }
    }

    fn commit(&mut self, token: u32) {
        match &mut self.state {
            State::Active(m) => {
                if !m.is_stopped() && m.consume_token(token).is_err() {
                    self.state = State::Off;
                }
            }
            State::Waiting(_) => {
                self.text.extend_from_slice(&self.env.token_bytes(token));
                let Some(pos) = find(&self.text, &self.trigger) else {
                    // Keep only a tail that could still be the start of the trigger.
                    let keep = self.trigger.len().saturating_sub(1);
                    if self.text.len() > keep {
                        self.text.drain(..self.text.len() - keep);
                    }
                    return;
                };
                let rest = self.text[pos + self.trigger.len()..].to_vec();
                let State::Waiting(mut m) = std::mem::replace(&mut self.state, State::Off) else { unreachable!() };
                let fits = rest.is_empty() || {
                    let toks = self.env.env.tokenize_bytes(&rest);
                    toks.iter().all(|&t| m.compute_mask().is_ok_and(|mk| mk.is_allowed(t)) && m.consume_token(t).is_ok())
                };
                if fits {
                    self.state = State::Active(m);
                }
            }
            State::Off => {}
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}
