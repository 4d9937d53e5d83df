//! Grammar-constrained tool calls on the real SmolLM2 vocabulary (fixtures/smollm2-hf, `make
//! fixtures`), without the model: random "models" (random logits, sampled) must still produce
//! calls that parse and match the schema under `tool_choice: "required"` / a named function /
//! `response_format`, and the lazy grammar of `"auto"` must leave text free until `<tool_call>`
//! and constrain what follows.

use awqc::data::tokenizer::Tokenizer;
use awqc::engine::generate::{sample, SamplerConfig};
use awqc::model::synth::SplitMix;
use awqc::serve::grammar::{GrammarConstraint, GrammarEnv};
use awqc::serve::openai::{parse_chat, ChatRequest};
use awqc::serve::scheduler::Constraint;
use awqc::serve::toolcall::ToolSetup;
use awqc::serve::tools::{parse_complete, ParserKind};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

const MODEL: &str = "fixtures/smollm2-hf";

struct Fx {
    tok: Tokenizer,
    env: Arc<GrammarEnv>,
    setup: ToolSetup,
    stop: u32,
}

fn fx() -> Fx {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(dir.join("tokenizer.json").is_file(), "{} missing: run `make fixtures`", dir.display());
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    let stop = tok.token_to_id("<|im_end|>").unwrap();
    let env = Arc::new(GrammarEnv::new(&dir.join("tokenizer.json"), tok.vocab_size(), &[stop]).unwrap());
    // SmolLM2's template has no tool syntax: the generic (Hermes-tag) format.
    let setup = ToolSetup::new("auto", "{{ messages }}", false, env.clone()).unwrap();
    Fx { tok, env, setup, stop }
}

fn request(extra: Value) -> ChatRequest {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Compute (3+5)*2"}],
        "tools": [
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
            {"type": "function", "function": {"name": "mul", "parameters": {"type": "object",
                "properties": {"a": {"type": "int"}, "b": {"type": "int"}}, "required": ["a", "b"]}}}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    parse_chat(&body).unwrap()
}

fn constraint(f: &Fx, r: &ChatRequest) -> GrammarConstraint {
    f.setup.grammar(&r.tools, &r.tool_choice, r.parallel_tool_calls, &r.response_format).unwrap().expect("a grammar")
}

/// A random "model": noise, plus a preference for short tokens so that the walk ends (numbers and
/// whitespace are unbounded in the grammar); the stop token is not penalized. Returns the text
/// and whether the stop token ended it.
fn random_walk(f: &Fx, c: &mut GrammarConstraint, seed: u64, max: usize) -> (String, bool) {
    let vocab = f.tok.vocab_size();
    let lens: Vec<f32> = (0..vocab as u32).map(|t| f.env.token_bytes(t).len() as f32).collect();
    let mut rng = SplitMix(seed);
    let cfg = SamplerConfig { temperature: 1.0, top_p: 1.0, top_k: 0, seed };
    let mut ids = Vec::new();
    for _ in 0..max {
        let mut logits: Vec<f32> = (0..vocab).map(|t| if t as u32 == f.stop { 0.0 } else { -3.0 * lens[t] } + 2.0 * rng.uniform()).collect();
        c.apply(&mut logits);
        let t = sample(&logits, &cfg, &mut rng);
        c.commit(t);
        if t == f.stop {
            return (f.tok.decode(&ids).unwrap(), true);
        }
        ids.push(t);
    }
    (f.tok.decode(&ids).unwrap(), false)
}

fn check_calls(text: &str, allowed: &[&str]) -> usize {
    let (content, calls) = parse_complete(ParserKind::Hermes, &["add".into(), "mul".into()], text);
    assert!(content.trim().is_empty(), "content {content:?} in a forced answer {text:?}");
    assert!(!calls.is_empty(), "no call parsed from {text:?}");
    for c in &calls {
        assert!(allowed.contains(&c.name.as_str()), "name {:?} in {text:?}", c.name);
        let a: Value = serde_json::from_str(&c.arguments).unwrap();
        let o = a.as_object().unwrap_or_else(|| panic!("arguments {} not an object", c.arguments));
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"], "arguments {}", c.arguments);
        // Integers of any length (a random walk may write 25 digits, past i64): numbers without
        // a fraction or exponent (the keys are "a" and "b", so any '.', 'e' is in a number).
        assert!(o.values().all(Value::is_number) && !c.arguments.contains(['.', 'e', 'E']), "non-integer arguments {}", c.arguments);
    }
    calls.len()
}

#[test]
fn required_calls_from_random_models_always_parse_and_match_the_schema() {
    let f = fx();
    let r = request(json!({"tool_choice": "required"}));
    let mut several = 0;
    for seed in 0..24 {
        let mut c = constraint(&f, &r);
        let (text, stopped) = random_walk(&f, &mut c, seed, 400);
        assert!(stopped, "seed {seed}: no stop after 400 tokens: {text:?}");
        if check_calls(&text, &["add", "mul"]) > 1 {
            several += 1;
        }
    }
    // parallel_tool_calls defaults to true: some random walks take the second-call branch.
    assert!(several > 0, "no walk made two calls");
}

#[test]
fn named_function_and_no_parallel_calls_give_exactly_one_call() {
    let f = fx();
    for (extra, allowed) in [
        (json!({"tool_choice": {"type": "function", "function": {"name": "mul"}}}), &["mul"][..]),
        (json!({"tool_choice": "required", "parallel_tool_calls": false}), &["add", "mul"][..]),
    ] {
        let r = request(extra.clone());
        for seed in 0..12 {
            let mut c = constraint(&f, &r);
            let (text, stopped) = random_walk(&f, &mut c, 100 + seed, 400);
            assert!(stopped, "{extra}: seed {seed}: {text:?}");
            assert_eq!(check_calls(&text, allowed), 1, "{extra}: {text:?}");
        }
    }
}

#[test]
fn response_format_json_schema_and_object() {
    let f = fx();
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}, "unit": {"enum": ["m", "s"]}},
        "required": ["answer", "unit"], "additionalProperties": false});
    let r = request(json!({"tools": null, "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}));
    for seed in 0..12 {
        let mut c = constraint(&f, &r);
        let (text, stopped) = random_walk(&f, &mut c, 200 + seed, 400);
        assert!(stopped, "seed {seed}: {text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let digits = text.replace("\"answer\"", "");
        assert!(v["answer"].is_number() && !digits.contains(['.', 'e', 'E']), "answer not an integer: {text:?}");
        assert!((v["unit"] == "m" || v["unit"] == "s") && v.as_object().unwrap().len() == 2, "{text:?}");
    }
    let r = request(json!({"tools": null, "response_format": {"type": "json_object"}}));
    let mut c = constraint(&f, &r);
    let (text, stopped) = random_walk(&f, &mut c, 7, 400);
    assert!(stopped);
    assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{text:?}");
}

#[test]
fn auto_is_free_until_the_trigger_then_constrained() {
    let f = fx();
    let r = request(json!({"tool_choice": "auto"}));
    let mut c = constraint(&f, &r);
    let vocab = f.tok.vocab_size();
    let free = |c: &mut GrammarConstraint| {
        let mut l = vec![0.0f32; vocab];
        c.apply(&mut l);
        l.iter().filter(|x| x.is_finite()).count()
    };
    // Free text, including a "<" that is not the trigger.
    for t in f.tok.encode("Let me think: 3 < 5, so I use ").unwrap() {
        assert_eq!(free(&mut c), vocab, "constrained before the trigger");
        c.commit(t);
    }
    for t in f.tok.encode("<tool_call>").unwrap() {
        c.commit(t);
    }
    let allowed = free(&mut c);
    assert!(allowed < vocab / 10, "after <tool_call> still {allowed} of {vocab} tokens allowed");
    let mut l = vec![0.0f32; vocab];
    c.apply(&mut l);
    let hello = f.tok.encode("hello").unwrap()[0];
    assert!(l[hello as usize].is_infinite(), "'hello' allowed inside a call");
    let brace = f.tok.token_to_id("{").unwrap();
    assert!(l[brace as usize].is_finite(), "'{{' not allowed to open the call");
    // The walk from here completes a valid call (after the free prefix).
    let (rest, stopped) = random_walk(&f, &mut c, 3, 400);
    assert!(stopped, "{rest:?}");
    check_calls(&format!("<tool_call>{rest}"), &["add", "mul"]);
}

#[test]
fn the_generic_prompt_lists_the_tools_and_rewrites_calls_in_the_history() {
    let f = fx();
    let r = request(json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute (3+5)*2"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 3, \"b\": 5}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "8"}
    ]}));
    let (msgs, tools) = f.setup.prompt(&r.messages, &r.tools, &r.tool_choice);
    assert!(tools.is_none(), "the generic format passes no tools to the template");
    let sys = msgs[0]["content"].as_str().unwrap();
    assert!(sys.starts_with("Be brief.\n\n") && sys.contains("\"name\":\"add\"") && sys.contains("\"name\":\"mul\"") && sys.contains("<tool_call>"), "{sys}");
    assert_eq!(msgs[2]["content"], "<tool_call>{\"name\":\"add\",\"arguments\":{\"a\":3,\"b\":5}}</tool_call>");
    assert!(msgs[2].get("tool_calls").is_none());
    assert_eq!(msgs[3]["role"], "tool");
    // tool_choice "none": the tools are not shown.
    let r = request(json!({"tool_choice": "none"}));
    let (msgs, _) = f.setup.prompt(&r.messages, &r.tools, &r.tool_choice);
    assert_eq!(msgs.len(), 1);
}
