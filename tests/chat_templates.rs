//! Chat templates render byte-for-byte as transformers' `apply_chat_template` does.
//!
//! tests/fixtures/chat_templates/<name>.json were written by transformers itself
//! (scripts/make-template-fixtures.sh, which pins its version): each case holds the raw OpenAI
//! request messages, the tools, the form `normalize_messages` must give, and transformers'
//! rendering of that form. Here: normalize, render, compare.
#![cfg(feature = "engine")]

use std::path::PathBuf;

use awqc::serve::template::{normalize_messages, ChatTemplate};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

/// The first difference between two renderings, with context, escaped so that whitespace shows.
fn first_difference(want: &str, got: &str) -> String {
    let at = want.char_indices().zip(got.chars()).find(|((_, a), b)| a != b).map(|((i, _), _)| i);
    let at = at.unwrap_or(want.len().min(got.len()));
    let from = want[..at].char_indices().rev().nth(60).map_or(0, |(i, _)| i);
    let show = |s: &str| {
        let end = s[at..].char_indices().nth(60).map_or(s.len(), |(i, _)| at + i);
        format!("{:?} >>> {:?}", &s[from..at], &s[at..end])
    };
    let line = want[..at].matches('\n').count() + 1;
    format!(
        "first difference at byte {at} (line {line}; lengths: expected {}, got {}):\n  expected: {}\n  got:      {}",
        want.len(),
        got.len(),
        show(want),
        show(got)
    )
}

fn check(name: &str, bos: &str, eos: &str) -> usize {
    let source = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
    let fixtures: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{name}.json"))).unwrap()).unwrap();
    assert!(fixtures.len() >= 10, "{name}.json: only {} cases", fixtures.len());
    let template = ChatTemplate::new(&source, bos, eos).unwrap_or_else(|e| panic!("{name}: {}", e.msg));
    let mut failures = Vec::new();
    for case in &fixtures {
        let case_name = case["name"].as_str().unwrap();
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().map(|t| t.as_slice());
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let expected = case["expected"].as_str().unwrap();
        let normalized = match normalize_messages(messages) {
            Ok(n) => n,
            Err(e) => {
                failures.push(format!("{name}/{case_name}: normalize_messages failed: {}", e.msg));
                continue;
            }
        };
        if Value::Array(normalized.clone()) != case["normalized"] {
            failures.push(format!(
                "{name}/{case_name}: normalize_messages gave\n  {}\nexpected\n  {}",
                serde_json::to_string(&normalized).unwrap(),
                case["normalized"]
            ));
        }
        match template.render(&normalized, tools, agp) {
            Ok(got) if got == expected => {}
            Ok(got) => failures.push(format!("{name}/{case_name}: {}", first_difference(expected, &got))),
            Err(e) => failures.push(format!("{name}/{case_name}: render failed: {}", e.msg)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
    fixtures.len()
}

#[test]
fn smollm2_matches_transformers() {
    check("smollm2", "<|im_start|>", "<|im_end|>");
}

#[test]
fn qwen25_matches_transformers() {
    // Qwen2.5 has no BOS token; its template never reads bos_token.
    check("qwen2.5", "", "<|im_end|>");
}

#[test]
fn python_compat_matches_transformers() {
    check("python-compat", "<s>", "</s>");
}

#[test]
fn tool_support_is_detected() {
    let read = |n: &str| std::fs::read_to_string(dir().join(format!("{n}.jinja"))).unwrap();
    assert!(ChatTemplate::new(&read("qwen2.5"), "", "<|im_end|>").unwrap().supports_tools());
    assert!(!ChatTemplate::new(&read("smollm2"), "<|im_start|>", "<|im_end|>").unwrap().supports_tools());
}
