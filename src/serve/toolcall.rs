//! Function calling on the server: which syntax the model speaks, what the prompt shows it, which
//! grammar constrains its calls, and how its answer becomes OpenAI `tool_calls`.
//!
//! - **Syntax** ([`ToolSetup::new`]): `--tool-call-parser auto` reads it from the chat template
//!   (`serve/tools.rs`: Hermes / Qwen2.5 `<tool_call>` tags, Llama 3 JSON, InternLM2 actions).
//!   A template with no tool syntax at all (SmolLM2's plain ChatML) gets a generic format: the
//!   tools and a Hermes-style calling convention are written into the system prompt, earlier
//!   calls in the history are shown in that same form, and the answer is parsed as Hermes.
//! - **Grammar** ([`ToolSetup::grammar`], `serve/grammar.rs`): `tool_choice: "required"` and a
//!   named function constrain the answer from its first token to well-formed calls whose
//!   `name` is a declared function and whose arguments match its JSON schema; under `"auto"` the
//!   same grammar switches on when the model opens a call (lazy), so a call it starts always
//!   parses. `response_format` uses the same machinery on a plain `%json` grammar.
//! - **Answer** ([`CallStream`]): generated text goes through the parser, streamed or not; calls
//!   get ids, and the finish reason becomes `"tool_calls"`.

use crate::serve::grammar::{GrammarConstraint, GrammarEnv};
use crate::serve::openai::{ApiError, ResponseFormat, ToolCallOut, FunctionCallOut, ToolChoice, ToolDef};
use crate::serve::tools::{parse_complete, ParserKind, StreamParser, ToolEvent};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// How the served model calls tools (fixed at start-up).
pub struct ToolSetup {
    pub parser: ParserKind,
    /// The chat template has its own tool syntax (tools go to the template as `tools`); false:
    /// the generic prompt of this module.
    pub native: bool,
    pub env: Arc<GrammarEnv>,
}

/// `--tool-call-parser`.
pub const PARSER_FLAG_VALUES: &[&str] = &["auto", "hermes", "llama3", "internlm2"];

impl ToolSetup {
    /// `flag`: `auto` (from the template) or a parser name; `template_source`: the chat template
    /// text; `supports_tools`: whether the template uses `tools` at all.
    pub fn new(flag: &str, template_source: &str, supports_tools: bool, env: Arc<GrammarEnv>) -> Result<Self, String> {
        let detected = ParserKind::detect(template_source);
        let (parser, native) = match flag {
            "auto" => match detected {
                Some(k) if supports_tools => (k, true),
                _ => (ParserKind::Hermes, false),
            },
            other => (ParserKind::from_flag(other)?, supports_tools),
        };
        Ok(ToolSetup { parser, native, env })
    }

    /// A one-line description for the start-up log.
    pub fn describe(&self) -> String {
        if self.native {
            format!("tool calls: the chat template's syntax, parser {:?}", self.parser)
        } else {
            "tool calls: the template has no tool syntax; generic <tool_call> JSON format in the system prompt".into()
        }
    }

    /// The messages and `tools` to render for a request. With `tool_choice: "none"` the tools
    /// are not shown. The generic format rewrites the history: a system prompt that lists the
    /// tools and the calling convention, and assistant `tool_calls` as `<tool_call>` lines.
    pub fn prompt(&self, messages: &[Value], tools: &[ToolDef], choice: &ToolChoice) -> (Vec<Value>, Option<Vec<Value>>) {
        let shown: Vec<&ToolDef> = match choice {
            ToolChoice::None => Vec::new(),
            _ => tools.iter().collect(),
        };
        if self.native {
            let t = (!shown.is_empty()).then(|| shown.iter().map(|t| t.to_openai()).collect());
            return (messages.to_vec(), t);
        }
        let mut out: Vec<Value> = messages.iter().map(generic_history_message).collect();
        if !shown.is_empty() {
            let mut sys = String::from("You can call these functions:\n<tools>\n");
            for t in &shown {
                sys.push_str(&t.to_openai().to_string());
                sys.push('\n');
            }
            sys.push_str("</tools>\nTo call a function, answer with one line per call, in this form:\n<tool_call>{\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}</tool_call>\nFunction results come back in messages from the tool; then answer the user.");
            match choice {
                ToolChoice::Required => sys.push_str(" Call at least one function now."),
                ToolChoice::Function(n) => sys.push_str(&format!(" Call the function {n} now.")),
                _ => sys.push_str(" When no function is needed, answer directly."),
            }
            match out.first_mut() {
                Some(Value::Object(m)) if m.get("role").and_then(Value::as_str) == Some("system") => {
                    let old = m.get("content").and_then(Value::as_str).unwrap_or("").to_string();
                    m.insert("content".into(), Value::String(if old.is_empty() { sys } else { format!("{old}\n\n{sys}") }));
                }
                _ => out.insert(0, json!({"role": "system", "content": sys})),
            }
        }
        (out, None)
    }

    /// The grammar for this request, or None when sampling is free. Errors are 400s (a schema the
    /// grammar compiler refuses, or a forced call in a syntax awqc has no grammar for).
    pub fn grammar(&self, tools: &[ToolDef], choice: &ToolChoice, parallel: bool, format: &ResponseFormat) -> Result<Option<GrammarConstraint>, ApiError> {
        let compile = |lark: String, param: &str| {
            self.env.compile(&lark).map_err(|e| {
                let mut err = ApiError::param(param, format!("the schema cannot be compiled to a grammar: {e}"));
                err.code = "invalid_tool_schema";
                err
            })
        };
        match format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => return Ok(Some(compile(format!("start: %json {}", json_style(json!({"type": "object"}))), "response_format")?.eager())),
            ResponseFormat::JsonSchema(s) => return Ok(Some(compile(format!("start: %json {}", json_style(s.clone())), "response_format")?.eager())),
        }
        let (forced, selected): (bool, Vec<&ToolDef>) = match choice {
            ToolChoice::None => return Ok(None),
            ToolChoice::Auto => (false, tools.iter().collect()),
            ToolChoice::Required => (true, tools.iter().collect()),
            ToolChoice::Function(n) => (true, tools.iter().filter(|t| &t.name == n).collect()),
        };
        let many = parallel && !matches!(choice, ToolChoice::Function(_));
        let args_key = match self.parser {
            ParserKind::Hermes => "arguments",
            ParserKind::Llama3 | ParserKind::Internlm2 => "parameters",
        };
        let call = json_style(call_schema(&selected, args_key));
        let lark = match (self.parser, forced) {
            (ParserKind::Hermes, true) => {
                let one = "\"<tool_call>\" WS? call WS? \"</tool_call>\"";
                format!("start: {one}{}\ncall: %json {call}\nWS: /[ \\t\\r\\n]{{1,3}}/\n", if many { format!(" (WS? {one})*") } else { String::new() })
            }
            (ParserKind::Hermes, false) => {
                let more = if many { " (WS? \"<tool_call>\" WS? call WS? \"</tool_call>\")*" } else { "" };
                format!("start: WS? call WS? \"</tool_call>\"{more}\ncall: %json {call}\nWS: /[ \\t\\r\\n]{{1,3}}/\n")
            }
            (ParserKind::Llama3, true) => {
                format!("start: call{}\ncall: %json {call}\nWS: /[ \\t\\r\\n]{{1,3}}/\n", if many { " (WS? \";\" WS? call)*" } else { "" })
            }
            // Llama 3 calls have no opening tag to trigger on: under "auto" the answer is parsed,
            // not constrained.
            (ParserKind::Llama3, false) => return Ok(None),
            (ParserKind::Internlm2, true) => {
                let mut e = ApiError::param("tool_choice", "tool_choice \"required\" or a named function is not supported with the internlm2 tool syntax (its call markers are special tokens awqc's grammar does not emit); use \"auto\"");
                e.code = "unsupported_tool_choice";
                return Err(e);
            }
            (ParserKind::Internlm2, false) => return Ok(None),
        };
        let g = compile(lark, "tools")?;
        Ok(Some(if forced { g.eager() } else { g.lazy(self.parser.trigger()) }))
    }
}

/// The JSON layout the grammar allows: Python's `json.dumps` (`", "`, `": "`, no other
/// whitespace), which is what models are trained to write, and which bounds the answer (flexible
/// whitespace would let a sampled answer run on in blanks). Keywords llguidance does not support
/// (`format`, ...) are ignored rather than refused (`lenient`), as tutorials' schemas carry them.
fn json_style(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert("x-guidance".into(), json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ", "lenient": true}));
    }
    schema
}

/// `{"name": <one of the functions>, "<args_key>": <its parameters>}` as one JSON Schema.
fn call_schema(tools: &[&ToolDef], args_key: &str) -> Value {
    let one = |t: &ToolDef| {
        let mut props = Map::new();
        props.insert("name".into(), json!({"const": t.name}));
        props.insert(args_key.into(), closed(t.parameters.clone()));
        json!({"type": "object", "properties": props, "required": ["name", args_key], "additionalProperties": false})
    };
    if tools.len() == 1 {
        one(tools[0])
    } else {
        json!({"anyOf": tools.iter().map(|t| one(t)).collect::<Vec<_>>()})
    }
}

/// A tool's parameter schema as the grammar enforces it: every object that lists `properties`
/// and says nothing of `additionalProperties` gets `"additionalProperties": false`, so a call
/// carries only the declared arguments (what OpenAI's `strict` mode does; JSON Schema's default
/// would let a model invent keys, which the function cannot take). An explicit
/// `additionalProperties` is kept. The model is shown the schema as the client sent it.
fn closed(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if o.get("properties").is_some_and(Value::is_object) && !o.contains_key("additionalProperties") {
                    o.insert("additionalProperties".into(), Value::Bool(false));
                }
                for (k, sub) in o.iter_mut() {
                    match k.as_str() {
                        "properties" | "$defs" | "definitions" | "patternProperties" => {
                            if let Value::Object(m) = sub {
                                m.values_mut().for_each(walk);
                            }
                        }
                        "items" | "anyOf" | "oneOf" | "allOf" | "prefixItems" | "additionalProperties" | "not" => walk(sub),
                        _ => {}
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

/// An earlier message in the generic format: assistant `tool_calls` become `<tool_call>` lines
/// in the content (the model sees its own calls as it was told to write them).
fn generic_history_message(m: &Value) -> Value {
    let Some(calls) = m.get("tool_calls").and_then(Value::as_array) else { return m.clone() };
    let mut text = m.get("content").and_then(Value::as_str).unwrap_or("").to_string();
    for c in calls {
        let f = c.get("function").cloned().unwrap_or(Value::Null);
        let name = f.get("name").cloned().unwrap_or(Value::Null);
        let args = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("<tool_call>{}</tool_call>", json!({"name": name, "arguments": args})));
    }
    let mut o = m.as_object().cloned().unwrap_or_default();
    o.remove("tool_calls");
    o.insert("content".into(), Value::String(text));
    Value::Object(o)
}

/// One answer's tool-call parsing, streamed or whole.
pub struct CallStream {
    parser: StreamParser,
    /// Ids of the calls begun so far.
    pub ids: Vec<String>,
    new_id: Box<dyn FnMut() -> String + Send>,
}

/// What a streamed answer sends next.
#[derive(Debug, Clone, PartialEq)]
pub enum CallPiece {
    Content(String),
    /// First piece of a call: index, id, name.
    Start { index: u32, id: String, name: String },
    Args { index: u32, delta: String },
}

impl CallStream {
    pub fn new(kind: ParserKind, tools: &[ToolDef], new_id: Box<dyn FnMut() -> String + Send>) -> Self {
        CallStream { parser: StreamParser::new(kind, tools.iter().map(|t| t.name.clone()).collect()), ids: Vec::new(), new_id }
    }

    fn convert(&mut self, evs: Vec<ToolEvent>) -> Vec<CallPiece> {
        evs.into_iter()
            .map(|e| match e {
                ToolEvent::Content(t) => CallPiece::Content(t),
                ToolEvent::CallStart { index, name } => {
                    let id = (self.new_id)();
                    self.ids.push(id.clone());
                    CallPiece::Start { index: index as u32, id, name }
                }
                ToolEvent::CallArgs { index, delta } => CallPiece::Args { index: index as u32, delta },
            })
            .collect()
    }

    pub fn push(&mut self, text: &str) -> Vec<CallPiece> {
        let evs = self.parser.push(text);
        self.convert(evs)
    }

    pub fn finish(&mut self) -> Vec<CallPiece> {
        let evs = self.parser.finish();
        self.convert(evs)
    }

    pub fn any_call(&self) -> bool {
        !self.ids.is_empty()
    }
}

/// A whole (non-streamed) answer: its content (None when empty and there are calls) and calls.
pub fn split_answer(kind: ParserKind, tools: &[ToolDef], text: &str, mut new_id: impl FnMut() -> String) -> (Option<String>, Vec<ToolCallOut>) {
    let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
    let (content, calls) = parse_complete(kind, &names, text);
    let calls: Vec<ToolCallOut> = calls
        .into_iter()
        .map(|c| ToolCallOut { id: new_id(), kind: "function".into(), function: FunctionCallOut { name: c.name, arguments: c.arguments } })
        .collect();
    let content = if calls.is_empty() || !content.is_empty() { Some(content) } else { None };
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_shuts_objects_that_list_properties_and_keeps_explicit_choices() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "b": {"type": "array", "items": {"type": "object", "properties": {"y": {"type": "string"}}}},
            "c": {"type": "object", "properties": {}, "additionalProperties": true},
            "d": {"anyOf": [{"type": "object", "properties": {"z": {"type": "null"}}}, {"type": "string"}]},
            "e": {"type": "object"}}});
        let c = closed(s);
        assert_eq!(c["additionalProperties"], false);
        assert_eq!(c["properties"]["a"]["additionalProperties"], false);
        assert_eq!(c["properties"]["b"]["items"]["additionalProperties"], false);
        assert_eq!(c["properties"]["c"]["additionalProperties"], true);
        assert_eq!(c["properties"]["d"]["anyOf"][0]["additionalProperties"], false);
        // Nothing declared, nothing to close: a free-form object stays free-form.
        assert!(c["properties"]["e"].get("additionalProperties").is_none());
    }
}
