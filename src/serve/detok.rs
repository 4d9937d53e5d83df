//! Streaming detokenization with stop strings.
//!
//! Generated ids arrive one at a time; [`TextStream`] turns them into text pieces such that
//! 1. no piece ends inside a UTF-8 character: while the decoded text ends with U+FFFD (an
//!    incomplete byte sequence, for byte-level tokenizers) the new text is held back;
//! 2. text that could be the beginning of a stop string is held back until it is known not to be;
//! 3. a stop string ends the stream: the text before it is released, the stop string and anything
//!    after it are not.
//!
//! Ids are decoded in a short window (vLLM's prefix/read offsets) rather than from the start, so a
//! long answer costs O(n) decoding, not O(n²): the window always starts one step back, which keeps
//! SentencePiece's "strip the leading space at the start of a decode" from eating real spaces.
//! Streamed and non-streamed answers both go through this type, so they are the same text.

use crate::data::tokenizer::Tokenizer;

/// What one pushed id released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    /// Text that can be sent now (may be empty).
    pub text: String,
    /// A stop string matched: the stream is over (drop the engine's receiver).
    pub stopped: bool,
}

/// Any decoder that maps ids to text (the tokenizer; a stub in tests).
pub trait Decode {
    fn decode_ids(&self, ids: &[u32]) -> String;
}

impl Decode for Tokenizer {
    fn decode_ids(&self, ids: &[u32]) -> String {
        self.decode(ids).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Decoded but not yet released (a possible stop-string prefix).
    pending: String,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        TextStream { ids: Vec::new(), prefix_offset: 0, read_offset: 0, pending: String::new(), stops, stopped: false }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add one generated id.
    pub fn push(&mut self, d: &impl Decode, id: u32) -> Push {
        if self.stopped {
            return Push { text: String::new(), stopped: true };
        }
        self.ids.push(id);
        let delta = self.decode_delta(d, false);
        self.pending.push_str(&delta);
        self.release(false)
    }

    /// The generation ended (EOS, length or error): release everything held, including an
    /// incomplete character (as U+FFFD) and a partial stop string.
    pub fn finish(&mut self, d: &impl Decode) -> Push {
        if self.stopped {
            return Push { text: String::new(), stopped: true };
        }
        let delta = self.decode_delta(d, true);
        self.pending.push_str(&delta);
        self.release(true)
    }

    fn decode_delta(&mut self, d: &impl Decode, last: bool) -> String {
        if self.read_offset == self.ids.len() {
            return String::new();
        }
        let prefix = d.decode_ids(&self.ids[self.prefix_offset..self.read_offset]);
        let new = d.decode_ids(&self.ids[self.prefix_offset..]);
        if new.len() <= prefix.len() || !new.starts_with(&prefix) {
            // Nothing new yet (or a decoder that rewrote the window: wait for more ids; at the
            // end, release what differs).
            if last && !new.starts_with(&prefix) {
                self.prefix_offset = self.ids.len();
                self.read_offset = self.ids.len();
                return new;
            }
            return String::new();
        }
        if !last && new.ends_with('\u{FFFD}') {
            return String::new();
        }
        let delta = new[prefix.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        delta
    }

    fn release(&mut self, last: bool) -> Push {
        // The earliest stop string in the pending text ends the stream. (A stop string cannot
        // start in text already released: that text would have been a stop prefix, held back.)
        let hit = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(pos) = hit {
            self.pending.truncate(pos);
            self.stopped = true;
            return Push { text: std::mem::take(&mut self.pending), stopped: true };
        }
        let hold = if last { 0 } else { self.stop_prefix_len() };
        let cut = self.pending.len() - hold;
        let text: String = self.pending.drain(..cut).collect();
        Push { text, stopped: false }
    }

    /// Length of the longest suffix of the pending text that is a proper prefix of a stop string
    /// (always at a character boundary).
    fn stop_prefix_len(&self) -> usize {
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= hold {
                    break;
                }
                if s.is_char_boundary(k) && self.pending.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are bytes; invalid UTF-8 decodes lossily (like a byte-level BPE tokenizer).
    struct Bytes;
    impl Decode for Bytes {
        fn decode_ids(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<_>>()).into_owned()
        }
    }

    fn run(text: &[u8], stops: &[&str]) -> (Vec<String>, bool) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut pieces = Vec::new();
        for &b in text {
            let p = s.push(&Bytes, b as u32);
            pieces.push(p.text);
            if p.stopped {
                return (pieces, true);
            }
        }
        let p = s.finish(&Bytes);
        pieces.push(p.text);
        (pieces, p.stopped)
    }

    #[test]
    fn never_splits_a_character() {
        let text = "héllo, 東京 🎉!";
        let (pieces, stopped) = run(text.as_bytes(), &[]);
        assert!(!stopped);
        assert_eq!(pieces.concat(), text);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "{pieces:?}");
        }
        // The 4-byte emoji is released whole, on its last byte.
        assert!(pieces.iter().any(|p| p == "🎉"), "{pieces:?}");
    }

    #[test]
    fn invalid_bytes_are_released_eventually() {
        let (pieces, _) = run(&[b'a', 0xff, b'b', 0xe6], &[]);
        assert_eq!(pieces.concat(), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn stop_strings() {
        // Stop string inside the text: text before it only.
        let (pieces, stopped) = run(b"Hello world. END here", &["END"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "Hello world. ");
        // A prefix of the stop string is held back, then released when it does not continue.
        let (pieces, stopped) = run(b"a EN b", &["END"]);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "a EN b");
        let i = pieces.iter().position(|p| p.contains("EN")).unwrap();
        assert_eq!(pieces[i], "EN ", "{pieces:?}");
        // A partial stop string at the end is released by finish().
        let (pieces, stopped) = run(b"xyzEN", &["END"]);
        assert!(!stopped);
        assert_eq!(pieces.concat(), "xyzEN");
        // The earliest of several stop strings wins; multi-byte stop strings.
        let (pieces, _) = run("one two three".as_bytes(), &["three", "two"]);
        assert_eq!(pieces.concat(), "one ");
        let (pieces, stopped) = run("a東京b".as_bytes(), &["京"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "a東");
        // A stop string at the very start gives empty text.
        let (pieces, stopped) = run(b"STOP now", &["STOP"]);
        assert!(stopped);
        assert_eq!(pieces.concat(), "");
    }

    #[test]
    fn equals_whole_decode_on_a_real_tokenizer() {
        let json = crate::data::tokenizer::test_support::trained_tokenizer_json(&["the quick brown fox jumps over the lazy dog"], 300);
        let dir = std::env::temp_dir().join(format!("awqc-detok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let text = "the lazy fox, naïve café 東京 jumps";
        let ids = tok.encode(text).unwrap();
        let mut s = TextStream::new(vec![]);
        let mut out = String::new();
        for &i in &ids {
            out.push_str(&s.push(&tok, i).text);
        }
        out.push_str(&s.finish(&tok).text);
        assert_eq!(out, tok.decode(&ids).unwrap());
        std::fs::remove_dir_all(&dir).ok();
    }
}
