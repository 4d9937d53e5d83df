//! Hugging Face chat templates, rendered the way `transformers`' `apply_chat_template` does.
//!
//! transformers compiles a template in a Jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` (`keep_trailing_newline` stays off), with `loopcontrols`, its own `tojson`
//! filter (`json.dumps(x, ensure_ascii=False)`, Python's default separators, no HTML escaping) and
//! the globals `raise_exception` and `strftime_now`; it then renders with `messages` (None-valued
//! keys dropped, reasoning fields aliased), `tools` (the list, or None), `documents` (None),
//! `add_generation_prompt` and the tokenizer's special tokens. [`ChatTemplate`] sets minijinja up
//! the same way, plus Python flavour where minijinja differs from Jinja2: `str`/`dict` methods
//! (minijinja-contrib's pycompat), `True`/`None` and Python reprs when values are printed, Jinja2's
//! `sequence`/`number` tests, and JSON objects that keep their key order. Byte equality with
//! transformers is checked by `tests/chat_templates.rs` against fixtures that transformers rendered
//! (`scripts/make-template-fixtures.sh`).
//!
//! [`normalize_messages`] turns an OpenAI request's messages into the form templates expect.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Environment, ErrorKind as JErrorKind, Value};

use crate::error::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";

/// A model's chat template, compiled once.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    supports_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("supports_tools", &self.supports_tools)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// `source` = the Jinja text (tokenizer_config.json's chat_template, a GGUF's, or
    /// --chat-template FILE).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(JErrorKind::InvalidOperation, msg))
        });
        // Jinja2's `string` is Python's str(): dicts and lists print as reprs, True/None capitalised.
        env.add_filter("string", |v: Value| -> Value {
            match v.as_str() {
                Some(_) => v,
                None => {
                    let mut s = String::new();
                    py_repr(&v, &mut s);
                    Value::from(s)
                }
            }
        });
        // Jinja2's `wordcount`: len(re.findall(r"\w+", s)).
        env.add_filter("wordcount", |s: &str| {
            s.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).count()
        });
        env.add_function("strftime_now", |fmt: String| Value::from(strftime_utc(&fmt, now_unix())));
        // Jinja2's tests, where they answer differently from minijinja's (`none is iterable` is
        // false in Python; Hermes-style templates rely on it).
        env.add_test("sequence", |v: Value| {
            matches!(v.kind(), ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Bytes)
        });
        env.add_test("iterable", |v: Value| match v.kind() {
            ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
            ValueKind::Undefined => true, // jinja2's Undefined iterates as empty
            _ => v.try_iter().is_ok(),
        });
        env.add_test("number", |v: Value| matches!(v.kind(), ValueKind::Number | ValueKind::Bool));
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))
            .map_err(|e| Error::input("chat_template", format!("cannot parse: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            supports_tools: mentions_tools(source),
        })
    }

    /// Renders the prompt. `messages`: OpenAI-style JSON messages (see [`normalize_messages`]);
    /// `tools`: the request's `tools` array, passed as `tools` exactly as transformers does (a list
    /// of `{"type":"function","function":{...}}`); `None` renders with `tools` = none, which is what
    /// transformers passes when it is given no tools (`tools is defined` holds, `tools is none` too).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let msgs: Vec<Value> = messages.iter().map(|m| to_value(&hf_message(m))).collect();
        let tools = match tools {
            Some(t) => Value::from(t.iter().map(to_value).collect::<Vec<_>>()),
            None => Value::from(()),
        };
        let ctx = OrderedMap::new(vec![
            ("messages".into(), Value::from(msgs)),
            ("tools".into(), tools),
            ("documents".into(), Value::from(())),
            ("add_generation_prompt".into(), Value::from(add_generation_prompt)),
            ("bos_token".into(), Value::from(self.bos_token.as_str())),
            ("eos_token".into(), Value::from(self.eos_token.as_str())),
        ]);
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| Error::internal(format!("chat_template: {e}")))?;
        tmpl.render(Value::from_object(ctx))
            .map_err(|e| Error::input("chat_template", format!("cannot render: {}", describe(&e))))
    }

    /// Whether the template mentions tools (it references `tools` / `tool_call`): the server uses
    /// it to choose between the model's tool syntax and a generic fallback.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// A minijinja error in one line: its message, the template line, and the cause chain.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match (e.kind(), e.detail()) {
        // raise_exception(msg): the template's own words.
        (JErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        (_, Some(d)) => format!("{}: {d}", e.kind()),
        (_, None) => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        let _ = write!(s, " (template line {line})");
    }
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let _ = write!(s, ": {cause}");
        src = cause.source();
    }
    s
}

/// Whether a template reads `tools` or renders tool calls.
fn mentions_tools(source: &str) -> bool {
    let bytes = source.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(pos) = source[from..].find("tool") {
        let start = from + pos;
        let mut end = start + 4;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let word = &source[start..end];
        let standalone = start == 0 || !ident(bytes[start - 1]);
        if standalone && (word == "tools" || word.starts_with("tool_call")) {
            return true;
        }
        from = end;
    }
    false
}

/// transformers' `{% generation %}...{% endgeneration %}` extension only marks assistant text for
/// its token masks; the output is the body. minijinja has no custom tags, so rewrite the tags as
/// `{% if true %}` / `{% endif %}`, keeping their whitespace-control markers.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let mut i = 2;
        let b = tag.as_bytes();
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let word_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let word = &tag[word_start..i];
        let after_word = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let closes = tag[i..].starts_with("%}");
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match (replacement, closes) {
            (Some(r), true) => {
                out.push_str(&tag[..word_start]);
                out.push_str(r);
                out.push_str(&tag[after_word..i + 2]);
                rest = &tag[i + 2..];
            }
            _ => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What transformers' `_normalize_chat_messages` and `_alias_reasoning_fields` do to each message
/// before rendering: keys whose value is null are dropped, and a reasoning text given as
/// `reasoning_content`, `thinking` or `reasoning` is offered under `thinking` (first) and
/// `reasoning_content` (last) as well.
fn hf_message(m: &serde_json::Value) -> serde_json::Value {
    let Some(obj) = m.as_object() else { return m.clone() };
    let kept: serde_json::Map<String, serde_json::Value> =
        obj.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| kept.get(*k)).cloned();
    let Some(reasoning) = reasoning else { return serde_json::Value::Object(kept) };
    let mut out = serde_json::Map::new();
    out.insert("thinking".into(), reasoning.clone());
    for (k, v) in kept {
        out.insert(k, v);
    }
    out.insert("reasoning_content".into(), reasoning);
    serde_json::Value::Object(out)
}

/// Normalize OpenAI request messages before rendering:
/// - `content: null` (or absent) on a message with `tool_calls` -> `""`;
/// - content-part arrays `[{"type":"text","text":..}, ...]` -> the texts concatenated (other part
///   types are an error naming the message index and part type);
/// - assistant `tool_calls[i].function.arguments` given as a JSON string holding an object ->
///   decoded to that object (templates `tojson` them; lmdeploy#3058); other strings stay strings;
/// - keys whose value is null are dropped (as transformers does), e.g. `"tool_calls": null`;
/// - roles must be system/user/assistant/tool; a message with neither content nor tool_calls is an
///   error.
pub fn normalize_messages(messages: &[serde_json::Value]) -> Result<Vec<serde_json::Value>> {
    use serde_json::Value as J;
    let what = |i: usize| format!("messages[{i}]");
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(Error::input(what(i), "a message must be a JSON object"));
        };
        let role = match obj.get("role") {
            Some(J::String(r)) => r.as_str(),
            Some(other) => return Err(Error::input(what(i), format!("role must be a string, got {other}"))),
            None => return Err(Error::input(what(i), "missing role")),
        };
        if !matches!(role, "system" | "user" | "assistant" | "tool") {
            return Err(Error::input(
                what(i),
                format!("unsupported role {role:?} (expected system, user, assistant or tool)"),
            ));
        }
        let has_tool_calls = !matches!(obj.get("tool_calls"), None | Some(J::Null));
        let mut msg = serde_json::Map::new();
        if !obj.contains_key("content") && !has_tool_calls {
            return Err(Error::input(what(i), format!("{role} message has neither content nor tool_calls")));
        }
        for (k, v) in obj {
            match (k.as_str(), v) {
                ("content", J::Null) => {
                    if !has_tool_calls {
                        return Err(Error::input(
                            what(i),
                            format!("{role} message has neither content nor tool_calls"),
                        ));
                    }
                    msg.insert(k.clone(), J::String(String::new()));
                }
                ("content", J::String(_)) => {
                    msg.insert(k.clone(), v.clone());
                }
                ("content", J::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        let ty = part.get("type").and_then(J::as_str);
                        match (ty, part.get("text")) {
                            (Some("text"), Some(J::String(t))) => text.push_str(t),
                            (Some("text"), _) => {
                                return Err(Error::input(
                                    format!("messages[{i}].content[{j}]"),
                                    "text part without a string \"text\"",
                                ))
                            }
                            (Some(other), _) => {
                                return Err(Error::input(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("unsupported content part type {other:?} (only \"text\" is supported)"),
                                ))
                            }
                            (None, _) => {
                                return Err(Error::input(
                                    format!("messages[{i}].content[{j}]"),
                                    "content part without a \"type\"",
                                ))
                            }
                        }
                    }
                    msg.insert(k.clone(), J::String(text));
                }
                ("content", other) => {
                    return Err(Error::input(
                        what(i),
                        format!("content must be a string, an array of text parts or null, got {other}"),
                    ));
                }
                ("tool_calls", J::Array(calls)) => {
                    let calls = calls.iter().map(decode_arguments).collect();
                    msg.insert(k.clone(), J::Array(calls));
                }
                ("tool_calls", J::Null) => {}
                ("tool_calls", other) => {
                    return Err(Error::input(what(i), format!("tool_calls must be an array, got {other}")));
                }
                (_, J::Null) => {}
                _ => {
                    msg.insert(k.clone(), v.clone());
                }
            }
        }
        if !msg.contains_key("content") {
            msg.insert("content".into(), J::String(String::new()));
        }
        out.push(J::Object(msg));
    }
    Ok(out)
}

/// `{"function": {"arguments": "{\"a\": 1}"}}` -> `{"function": {"arguments": {"a": 1}}}`.
fn decode_arguments(call: &serde_json::Value) -> serde_json::Value {
    let mut call = call.clone();
    if let Some(args) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
        if let serde_json::Value::String(s) = args {
            if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str::<serde_json::Value>(s) {
                *args = v;
            }
        }
    }
    call
}

// ---------------------------------------------------------------------------------------------
// JSON -> minijinja values that keep object key order (minijinja's own maps are sorted unless its
// `preserve_order` feature is on; Python dicts keep insertion order, and `tojson` shows it).

/// A JSON object as a minijinja map, keys in their original order.
#[derive(Debug)]
struct OrderedMap {
    entries: Vec<(Value, Value)>,
}

impl OrderedMap {
    fn new(entries: Vec<(String, Value)>) -> Self {
        OrderedMap { entries: entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect() }
    }
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.entries.iter().map(|(k, _)| k.clone()).collect())
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.entries.len())
    }
    fn is_true(self: &Arc<Self>) -> bool {
        !self.entries.is_empty()
    }
}

fn to_value(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::from(a.iter().map(to_value).collect::<Vec<_>>()),
        J::Object(o) => Value::from_object(OrderedMap {
            entries: o.iter().map(|(k, v)| (Value::from(k.as_str()), to_value(v))).collect(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Python's json.dumps, as transformers' `tojson` filter calls it.

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: transformers'
/// filter, positional arguments in that order (so `x|tojson(2)` sets ensure_ascii, as in Python).
fn tojson_filter(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let bad = |m: String| minijinja::Error::new(JErrorKind::InvalidOperation, m);
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.0.len() > names.len() {
        return Err(bad(format!("tojson takes at most {} arguments", names.len())));
    }
    let mut opts: [Option<Value>; 4] = Default::default();
    for (i, a) in args.0.iter().enumerate() {
        opts[i] = Some(a.clone());
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if opts[i].is_some() {
                return Err(bad(format!("tojson got multiple values for argument '{name}'")));
            }
            opts[i] = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let given = |o: &Option<Value>| o.as_ref().filter(|v| !v.is_none() && !v.is_undefined()).cloned();
    let ensure_ascii = opts[0].as_ref().is_some_and(|v| v.is_true());
    let indent = match given(&opts[1]) {
        None => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => {
                let n = i64::try_from(v.clone())
                    .map_err(|_| bad(format!("tojson: indent must be an int or str, got {v}")))?;
                " ".repeat(n.max(0) as usize)
            }
        }),
    };
    let (item_sep, key_sep) = match given(&opts[2]) {
        Some(v) => {
            let parts: Vec<Value> =
                v.try_iter().map_err(|_| bad("tojson: separators must be a pair".into()))?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.as_str().unwrap().to_string(), b.as_str().unwrap().to_string())
                }
                _ => return Err(bad("tojson: separators must be a pair of strings".into())),
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = opts[3].as_ref().is_some_and(|v| v.is_true());
    let d = PyJson { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    d.dump(value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct PyJson {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn dump(&self, v: &Value, level: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => write_py_number(v, true, out),
            ValueKind::String => json_str(v.as_str().unwrap_or(""), self.ensure_ascii, out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.dump(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut pairs: Vec<(String, Value)> = Vec::new();
                for k in v.try_iter()? {
                    let item = v.get_item(&k)?;
                    let key = match k.kind() {
                        ValueKind::String => k.as_str().unwrap_or("").to_string(),
                        ValueKind::None => "null".into(),
                        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
                        ValueKind::Number => {
                            let mut s = String::new();
                            write_py_number(&k, true, &mut s);
                            s
                        }
                        _ => {
                            return Err(minijinja::Error::new(
                                JErrorKind::InvalidOperation,
                                format!("tojson: keys must be str, int, float, bool or None, not {}", k.kind()),
                            ))
                        }
                    };
                    pairs.push((key, item));
                }
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if pairs.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, (k, item)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    json_str(k, self.ensure_ascii, out);
                    out.push_str(&self.key_sep);
                    self.dump(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            kind => {
                return Err(minijinja::Error::new(
                    JErrorKind::InvalidOperation,
                    format!("tojson: object of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }
}

/// A JSON string literal as Python's json module writes it.
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An int or float as Python's `repr` (json: `NaN`/`Infinity`; str(): `nan`/`inf`).
fn write_py_number(v: &Value, json: bool, out: &mut String) {
    if v.is_integer() {
        match i128::try_from(v.clone()) {
            Ok(i) => {
                let _ = write!(out, "{i}");
            }
            Err(_) => {
                let _ = write!(out, "{v}");
            }
        }
        return;
    }
    match f64::try_from(v.clone()) {
        Ok(f) => out.push_str(&py_float_repr(f, json)),
        Err(_) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16
/// (with a trailing `.0` when integral), else `d.ddde+XX`.
fn py_float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        return match (f > 0.0, json) {
            (true, true) => "Infinity",
            (false, true) => "-Infinity",
            (true, false) => "inf",
            (false, false) => "-inf",
        }
        .into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Shortest round-trip digits and the decimal exponent, from Rust's `{:e}` ("1.2345e-7").
    let e = format!("{:e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n <= exp + 1 {
                format!("{digits}{}.0", "0".repeat((exp + 1 - n) as usize))
            } else {
                let (a, b) = digits.split_at((exp + 1) as usize);
                format!("{a}.{b}")
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let (a, b) = digits.split_at(1);
        let m = if b.is_empty() { a.to_string() } else { format!("{a}.{b}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

// ---------------------------------------------------------------------------------------------
// Printing values as Jinja2 does (`str()` of the Python object).

fn python_formatter(
    out: &mut minijinja::Output,
    _state: &minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    let fmt_err = |_| minijinja::Error::new(JErrorKind::WriteFailure, "formatting failed");
    match value.kind() {
        ValueKind::String => out.write_str(value.as_str().unwrap_or("")).map_err(fmt_err),
        ValueKind::Undefined => Ok(()),
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(value, &mut s);
            out.write_str(&s).map_err(fmt_err)
        }
        _ => write!(out, "{value}").map_err(fmt_err),
    }
}

/// Python's `repr` of a JSON-like value (`str` of a container shows its items' reprs).
fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_py_number(v, false, out),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or(""), out),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(it) = v.try_iter() {
                for (i, item) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(it) = v.try_iter() {
                for (i, k) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&k, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&k).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; escapes for `\`, the
/// quote, `\t\n\r` and non-printable characters.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if matches!(c as u32, 0x2028 | 0x2029 | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0xfeff) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

// ---------------------------------------------------------------------------------------------
// strftime_now (transformers: `datetime.now().strftime(fmt)`; here in UTC).

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `strftime` in UTC for the directives chat templates use: %Y %y %m %d %e %j %B %b %h %A %a %H
/// %I %M %S %p %F %T %%, and glibc's `%-d`-style unpadded forms. Others are kept as written.
fn strftime_utc(fmt: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |n: i64, w: usize| if unpadded { n.to_string() } else { format!("{n:0w$}") };
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let s = match d {
            'Y' => year.to_string(),
            'y' => num(year.rem_euclid(100), 2),
            'm' => num(month, 2),
            'd' => num(day, 2),
            'e' => format!("{day:>2}"),
            'j' => num(yday, 3),
            'B' => MONTHS[(month - 1) as usize].into(),
            'b' | 'h' => MONTHS[(month - 1) as usize][..3].into(),
            'A' => DAYS[weekday].into(),
            'a' => DAYS[weekday][..3].into(),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'M' => num(minute, 2),
            'S' => num(second, 2),
            'p' => (if hour < 12 { "AM" } else { "PM" }).into(),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            '%' => "%".into(),
            other => format!("%{}{other}", if unpadded { "-" } else { "" }),
        };
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_one(src: &str, ctx_json: serde_json::Value) -> std::result::Result<String, Error> {
        let t = ChatTemplate::new(src, "<s>", "</s>")?;
        let msgs = vec![json!({"role": "user", "content": "x", "data": ctx_json})];
        t.render(&msgs, None, false)
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let data = json!({"b": 1, "a": [1, 2.5, true, null], "s": "é 中文 🙂 <a href='x'>&amp;</a> \"q\"\n\t\u{1}", "e": {}, "l": []});
        let out = render_one("{{ messages[0].data | tojson }}", data.clone()).unwrap();
        // Python: json.dumps(data, ensure_ascii=False): insertion order, ", " and ": ", no HTML escaping.
        assert_eq!(
            out,
            r#"{"b": 1, "a": [1, 2.5, true, null], "s": "é 中文 🙂 <a href='x'>&amp;</a> \"q\"\n\t\u0001", "e": {}, "l": []}"#
        );
        let out =
            render_one("{{ messages[0].data | tojson(indent=2) }}", json!({"a": [1, {}], "b": {"c": "d"}})).unwrap();
        assert_eq!(out, "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": {\n    \"c\": \"d\"\n  }\n}");
        let out = render_one("{{ messages[0].data | tojson(indent='\\t', sort_keys=true) }}", json!({"b": 1, "a": 2}))
            .unwrap();
        assert_eq!(out, "{\n\t\"a\": 2,\n\t\"b\": 1\n}");
        let out = render_one("{{ messages[0].data | tojson(separators=(',', ':')) }}", json!({"a": [1, 2]})).unwrap();
        assert_eq!(out, r#"{"a":[1,2]}"#);
        let out = render_one("{{ messages[0].data | tojson(ensure_ascii=true) }}", json!("é🙂")).unwrap();
        assert_eq!(out, r#""\u00e9\ud83d\ude42""#);
        // Python floats: repr.
        let out =
            render_one("{{ messages[0].data | tojson }}", json!([1.0, 1e16, 1.5e-7, 0.0001, 123456.789])).unwrap();
        assert_eq!(out, "[1.0, 1e+16, 1.5e-07, 0.0001, 123456.789]");
    }

    #[test]
    fn printing_values_is_pythonic() {
        let out = render_one(
            "{{ true }} {{ none }} {{ messages[0].data }} {{ messages[0].nothing }}|",
            json!({"a": [1, "it's", null, false]}),
        )
        .unwrap();
        assert_eq!(out, "True None {'a': [1, \"it's\", None, False]} |");
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let e = render_one("{{ raise_exception('Only user and assistant roles are supported!') }}", json!(null))
            .unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Input);
        assert!(e.msg.starts_with("chat_template: "), "{}", e.msg);
        assert!(e.msg.contains("Only user and assistant roles are supported!"), "{}", e.msg);
    }

    #[test]
    fn parse_errors_are_input_errors() {
        let e = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Input);
        assert!(e.msg.starts_with("chat_template: cannot parse"), "{}", e.msg);
    }

    #[test]
    fn whitespace_control_like_transformers() {
        // trim_blocks + lstrip_blocks, trailing newline of the template dropped.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&[json!({"role": "user", "content": "hi"})], None, false).unwrap();
        assert_eq!(out, "[hi]\n");
    }

    #[test]
    fn pycompat_methods_and_tests() {
        let src = "{{ messages[0].content.strip().split(',') | join('|') }} {{ messages[0].content.startswith(' a') }} \
                   {% for k, v in messages[0].items() %}{{ k }}={{ v | length }};{% endfor %} {{ 'ab' is sequence }} {{ messages[0].get('zz', 'd') }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&[json!({"role": "user", "content": " a,b "})], None, false).unwrap();
        assert_eq!(out, "a|b True role=4;content=5; True d");
        // Python: `None is iterable` is False (Hermes: `tools is iterable and tools | length > 0`).
        let src = "{{ tools is iterable }} {{ messages is iterable }} {{ nothing is iterable }} {{ 3 is iterable }}\
                   {% if tools is iterable and tools | length > 0 %}!{% endif %} {{ messages[0] | string }} {{ 'a b_c' | wordcount }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&[json!({"role": "user", "content": "x"})], None, false).unwrap();
        assert_eq!(out, "False True True False {'role': 'user', 'content': 'x'} 2");
    }

    #[test]
    fn tools_none_is_defined_and_none() {
        let src = "{{ tools is defined }} {{ tools is none }} {% if tools %}{{ tools | length }}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs = [json!({"role": "user", "content": "x"})];
        assert_eq!(t.render(&msgs, None, false).unwrap(), "True True ");
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        assert_eq!(t.render(&msgs, Some(&tools), false).unwrap(), "True False 1");
    }

    #[test]
    fn supports_tools_detection() {
        assert!(ChatTemplate::new("{% if tools %}x{% endif %}", "", "").unwrap().supports_tools());
        assert!(ChatTemplate::new("{% for c in m.tool_calls %}{% endfor %}", "", "").unwrap().supports_tools());
        assert!(!ChatTemplate::new("{{ messages[0].content }} toolsy_thing", "", "").unwrap().supports_tools());
    }

    #[test]
    fn generation_tags_are_transparent() {
        let src = "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[json!({"role": "assistant", "content": "a"})], None, false).unwrap(), "<a>");
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime_utc("%B %-d, %Y %H:%M (%a) %j %%", t), "July 26, 2024 13:05 (Fri) 208 %");
        assert_eq!(strftime_utc("%Y-%m-%d", 951_782_400), "2000-02-29");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let y: i64 = t.render(&[json!({"role": "user", "content": "x"})], None, false).unwrap().parse().unwrap();
        assert!(y >= 2024);
    }

    #[test]
    fn normalize_converts_openai_forms() {
        let msgs = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": null}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1, \"a\": \"é\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}
            ]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "42"}),
            json!({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "h", "arguments": {"y": 2}}}]}),
        ];
        let n = normalize_messages(&msgs).unwrap();
        assert_eq!(n[0], json!({"role": "user", "content": "ab"}));
        assert_eq!(n[1]["content"], json!(""));
        assert_eq!(n[1]["tool_calls"][0]["function"]["arguments"], json!({"x": 1, "a": "é"}));
        // Key order of the decoded object is kept.
        let keys: Vec<&String> = n[1]["tool_calls"][0]["function"]["arguments"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["x", "a"]);
        assert_eq!(n[1]["tool_calls"][1]["function"]["arguments"], json!("not json"));
        assert_eq!(n[2], msgs[2]);
        assert_eq!(n[3]["content"], json!(""));
        assert_eq!(n[3]["tool_calls"][0]["function"]["arguments"], json!({"y": 2}));
    }

    #[test]
    fn normalize_errors_name_the_message() {
        let err =
            |m: serde_json::Value| normalize_messages(&[json!({"role": "user", "content": "ok"}), m]).unwrap_err();
        let e = err(json!({"role": "developer", "content": "x"}));
        assert_eq!(e.kind, crate::error::ErrorKind::Input);
        assert!(e.msg.contains("messages[1]") && e.msg.contains("developer"), "{}", e.msg);
        let e = err(
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}),
        );
        assert!(e.msg.contains("messages[1].content[1]") && e.msg.contains("image_url"), "{}", e.msg);
        let e = err(json!({"role": "assistant"}));
        assert!(e.msg.contains("messages[1]") && e.msg.contains("neither content nor tool_calls"), "{}", e.msg);
        let e = err(json!({"role": "assistant", "content": null, "tool_calls": null}));
        assert!(e.msg.contains("neither content nor tool_calls"), "{}", e.msg);
        let e = err(json!({"content": "x"}));
        assert!(e.msg.contains("messages[1]") && e.msg.contains("role"), "{}", e.msg);
        let e = err(json!("just a string"));
        assert!(e.msg.contains("messages[1]"), "{}", e.msg);
    }

    #[test]
    fn render_drops_nulls_and_aliases_reasoning() {
        let src = "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t
            .render(&[json!({"role": "assistant", "content": "a", "name": null, "reasoning": "r"})], None, false)
            .unwrap();
        assert_eq!(out, "thinking=r;role=assistant;content=a;reasoning=r;reasoning_content=r;");
    }
}
