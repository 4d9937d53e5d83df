//! The pinned perplexity text and its windows (awq-reference §9, the llm-awq / AutoAWQ protocol):
//! the documents joined with `"\n\n"`, tokenized once, cut into non-overlapping `seqlen` windows
//! from the start, the tail dropped.
//!
//! The pinned file is `fixtures/text/wiki.utf8` (sha256 in calib_data/manifest.json), a
//! wikiextractor dump: marker lines removed, each article stripped, articles joined with "\n\n".
//! A HF wikitext-2 test split saved as parquet gives the standard protocol exactly.

use crate::data::textfile::{load_documents, read_utf8};
use crate::error::Result;
use std::path::Path;

/// The evaluation text: the documents of `path` (see [`load_documents`]) joined with `"\n\n"`.
pub fn eval_text(wiki_path: &Path) -> Result<String> {
    Ok(load_documents(wiki_path)?.join("\n\n"))
}

/// The file as it is, markers and all (a sanity anchor that does not depend on our parsing).
pub fn raw_text(path: &Path) -> Result<String> {
    read_utf8(path)
}

/// Non-overlapping `seqlen` windows from the start of `tokens`, the incomplete tail dropped,
/// at most `max_windows` of them. `seqlen == 0` gives no windows.
pub fn windows(tokens: &[u32], seqlen: usize, max_windows: Option<usize>) -> Vec<&[u32]> {
    if seqlen == 0 {
        return Vec::new();
    }
    tokens.chunks_exact(seqlen).take(max_windows.unwrap_or(usize::MAX)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_contiguous_and_drop_the_tail() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(windows(&t, 3, None), vec![&[0, 1, 2][..], &[3, 4, 5], &[6, 7, 8]]);
        assert_eq!(windows(&t, 3, Some(2)).len(), 2);
        assert_eq!(windows(&t, 5, None).len(), 2);
        assert!(windows(&t, 11, None).is_empty());
        assert!(windows(&t, 0, None).is_empty());
    }

    #[test]
    fn eval_text_joins_stripped_articles() {
        let d = std::env::temp_dir().join(format!("awqc-eval-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("w.utf8");
        let raw = "<doc id=\"1\" title=\"A\">\nA\n\nBody a.\n\n</doc>\n<doc id=\"2\" title=\"B\">\nB\n\nBody b.\n</doc>\n";
        std::fs::write(&p, raw).unwrap();
        assert_eq!(eval_text(&p).unwrap(), "A\n\nBody a.\n\nB\n\nBody b.");
        assert_eq!(raw_text(&p).unwrap(), raw);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
