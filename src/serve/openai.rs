//! The OpenAI API subset awqc serves: response types (serialized as they are), request types (for
//! the OpenAPI document), and the request parsing that turns a JSON body into [`ChatRequest`] /
//! [`CompletionRequest`] with OpenAI-style errors that name the offending field.
//!
//! Parsing is done field by field on a `serde_json::Value` rather than through a derived
//! `Deserialize`: serde's messages ("invalid type: string, expected f32 at line 1 column 9") do
//! not say which field is wrong, and OpenAI clients send many fields awqc ignores (`user`,
//! `presence_penalty`, ...), which must not be errors.
//!
//! This module needs only serde and serde_json: it is built without the `engine` feature too
//! (the OpenAPI derives are behind it), for the `openai_request` fuzz target
//! (`fuzz/src/targets.rs`), which feeds arbitrary bodies to [`chat_from_body`] and
//! [`completion_from_body`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ------------------------------------------------------------------------------------ errors

/// An OpenAI-style error: `{"error": {"message", "type", "code", "param"}}` with an HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code, param: None }
    }
    /// 400 for a bad request parameter, naming it.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(400, "invalid_request_error", "invalid_parameter", message);
        e.param = Some(param.to_string());
        e
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(400, "invalid_request_error", code, message)
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                code: Some(self.code.to_string()),
                param: self.param.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// What is wrong, in one sentence.
    pub message: String,
    /// OpenAI's error class: invalid_request_error, authentication_error, not_found_error,
    /// rate_limit_error, server_error, service_unavailable_error.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable machine-readable code, e.g. invalid_json, invalid_parameter, model_not_found,
    /// context_length_exceeded, invalid_api_key, overloaded, model_loading.
    pub code: Option<String>,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

// ---------------------------------------------------------------------- request types (docs)

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum StopDoc {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct StreamOptionsDoc {
    /// Send one more chunk before `[DONE]` with the `usage` counts and an empty `choices`.
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`. Fields not listed here are accepted and ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatCompletionRequest {
    /// The served model's name (see `/v1/models`); optional, but another name is a 404.
    pub model: Option<String>,
    /// `{"role": "system"|"user"|"assistant"|"tool"|"developer", "content": ...}` objects; content
    /// is a string, null, or a list of `{"type": "text", "text": ...}` parts.
    pub messages: Vec<Value>,
    /// Most tokens to generate (>= 1); default: what is left of the session.
    pub max_tokens: Option<u64>,
    /// Same as max_tokens (takes precedence).
    pub max_completion_tokens: Option<u64>,
    /// 0 = greedy; default 1.
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1]; default 1.
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens; 0 or -1 = off (default).
    pub top_k: Option<i64>,
    /// Sampling seed; the same seed and request give the same answer.
    pub seed: Option<i64>,
    /// Stop strings, matched on the decoded text; the stop string is not returned.
    pub stop: Option<StopDoc>,
    /// Only 1 is supported.
    pub n: Option<u64>,
    /// Stream `chat.completion.chunk` server-sent events, ending with `data: [DONE]`.
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptionsDoc>,
    /// Extension (vLLM, lmdeploy): keep generating past EOS / end-of-turn tokens.
    pub ignore_eos: Option<bool>,
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`: functions the
    /// model may call. `parameters` is a JSON Schema; tutorial spellings (`"type": "int"`) are
    /// normalized.
    pub tools: Option<Vec<Value>>,
    /// "none", "auto" (default with tools), "required", or
    /// `{"type": "function", "function": {"name": ...}}`. "required" and a named function are
    /// enforced by grammar-constrained sampling: the call always parses and matches the schema.
    pub tool_choice: Option<Value>,
    /// Allow several calls in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
    /// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"name",
    /// "schema"}}`: the answer is constrained to JSON (matching the schema).
    pub response_format: Option<Value>,
}

/// `prompt`: a string, a one-element list of strings, a list of token ids, or a one-element list
/// of token id lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum PromptDoc {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`. Fields not listed here are accepted and ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptDoc,
    /// Return the prompt in front of the completion.
    pub echo: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopDoc>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptionsDoc>,
    /// Extension (vLLM, lmdeploy): keep generating past EOS / end-of-turn tokens.
    pub ignore_eos: Option<bool>,
}

// ----------------------------------------------------------------------------- response types

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize) -> Self {
        Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatMessageOut {
    pub role: String,
    /// The text; null when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// A function call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ToolCallOut {
    /// `call_...`, unique within the server's lifetime.
    pub id: String,
    /// "function"
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments as a JSON text (an object).
    pub arguments: String,
}

/// A streamed piece of a tool call: the first one of each call carries `id`, `type` and
/// `function.name` (and empty arguments); the `function.arguments` pieces that follow concatenate
/// to the call's arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessageOut,
    /// "stop" (EOS, an end-of-turn token or a stop string), "length", or "tool_calls" (the
    /// answer holds tool calls).
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatCompletionResponse {
    pub id: String,
    /// "chat.completion"
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ChatCompletionChunk {
    pub id: String,
    /// "chat.completion.chunk"
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the last chunk, with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

/// A completion, or (with `stream`) one server-sent event of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct CompletionResponse {
    pub id: String,
    /// "text_completion"
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ModelCard {
    pub id: String,
    /// "model"
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The session length: prompt + generated tokens of one request.
    pub max_model_len: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct ModelList {
    /// "list"
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "engine", derive(utoipa::ToSchema))]
pub struct Health {
    /// "ok", "loading" or "shutting_down".
    pub status: String,
    pub model: String,
}

// ---------------------------------------------------------------------------- parsed requests

/// Sampling and streaming fields shared by both endpoints, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// None: what is left of the session.
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// vLLM / lmdeploy extension: do not stop at EOS or end-of-turn tokens (benchmarks, tests).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Value>,
    pub params: GenParams,
    /// Declared functions, schemas normalized (empty: no tools).
    pub tools: Vec<ToolDef>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub response_format: ResponseFormat,
}

/// One declared function.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object (normalized; `{"type": "object", "properties": {}}` when absent).
    pub parameters: Value,
}

impl ToolDef {
    /// The OpenAI form the chat templates expect in `tools`.
    pub fn to_openai(&self) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), Value::String(self.name.clone()));
        if let Some(d) = &self.description {
            f.insert("description".into(), Value::String(d.clone()));
        }
        f.insert("parameters".into(), self.parameters.clone());
        let mut o = Map::new();
        o.insert("type".into(), Value::String("function".into()));
        o.insert("function".into(), Value::Object(f));
        Value::Object(o)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call (the tools are not shown to the model).
    None,
    /// The model decides; a call it starts is completed under the grammar.
    Auto,
    /// At least one call, grammar-enforced from the first token.
    Required,
    /// Exactly one call of this function, grammar-enforced.
    Function(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching this (normalized) schema.
    JsonSchema(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct CompletionRequestParsed {
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub echo: bool,
    pub params: GenParams,
}

/// Roles a chat message may have (`developer` is OpenAI's new name for `system`).
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool", "developer"];

/// At most this many stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a non-integer number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of a request object; `null` counts as absent (as OpenAI does).
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn string(&self, k: &str) -> Result<Option<String>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::param(k, format!("{k} must be a string, got {}", type_name(v)))),
        }
    }
    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::param(k, format!("{k} must be a boolean, got {}", type_name(v)))),
        }
    }
    fn number(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::param(k, format!("{k} must be a finite number"))),
            Some(v) => Err(ApiError::param(k, format!("{k} must be a number, got {}", type_name(v)))),
        }
    }
    /// An integer (a JSON number without a fraction, in i64 range, or u64 for large positives).
    fn integer(&self, k: &str) -> Result<Option<i128>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(i as i128))
                } else if let Some(u) = n.as_u64() {
                    Ok(Some(u as i128))
                } else {
                    Err(ApiError::param(k, format!("{k} must be an integer, got {n}")))
                }
            }
            Some(v) => Err(ApiError::param(k, format!("{k} must be an integer, got {}", type_name(v)))),
        }
    }
}

fn parse_params(f: &Fields, max_tokens_keys: &[&str]) -> Result<GenParams, ApiError> {
    let mut max_tokens = None;
    // The first key present wins (max_completion_tokens over the deprecated max_tokens).
    for k in max_tokens_keys {
        if let Some(m) = f.integer(k)? {
            if m < 1 {
                return Err(ApiError::param(k, format!("{k} must be at least 1, got {m}")));
            }
            max_tokens = Some(usize::try_from(m).unwrap_or(usize::MAX));
            break;
        }
    }
    let temperature = f.number("temperature")?.unwrap_or(1.0);
    if temperature < 0.0 {
        return Err(ApiError::param("temperature", format!("temperature must be >= 0, got {temperature}")));
    }
    // The sampler takes an f32: a larger finite f64 would become infinity there.
    if temperature > f32::MAX as f64 {
        return Err(ApiError::param("temperature", format!("temperature is too large: {temperature}")));
    }
    let top_p = f.number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let top_k = match f.integer("top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k < 0 => return Err(ApiError::param("top_k", format!("top_k must be >= 0 (or -1 = off), got {k}"))),
        Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
    };
    // Any integer seed; negative ones wrap (two's complement), as the bits are all that matter.
    let seed = f.integer("seed")?.map(|s| s as u64);
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP_STRINGS {
                return Err(ApiError::param("stop", format!("at most {MAX_STOP_STRINGS} stop strings, got {}", a.len())));
            }
            let mut out = Vec::new();
            for v in a {
                match v {
                    Value::String(s) => out.push(s.clone()),
                    v => return Err(ApiError::param("stop", format!("stop must be a string or a list of strings, found {} in the list", type_name(v)))),
                }
            }
            out
        }
        Some(v) => return Err(ApiError::param("stop", format!("stop must be a string or a list of strings, got {}", type_name(v)))),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    match f.integer("n")? {
        None | Some(1) => {}
        Some(n) => return Err(ApiError::param("n", format!("only n = 1 is supported, got {n}"))),
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o).bool("include_usage").map_err(|mut e| {
            e.param = Some("stream_options.include_usage".into());
            e
        })?
        .unwrap_or(false),
        Some(v) => return Err(ApiError::param("stream_options", format!("stream_options must be an object, got {}", type_name(v)))),
    };
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    Ok(GenParams { max_tokens, temperature: temperature as f32, top_p: top_p as f32, top_k, seed, stop, stream, include_usage, ignore_eos })
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::bad_request("invalid_request", format!("the request body must be a JSON object, got {}", type_name(body))))
}

/// Parse and validate a chat completion request (message contents are normalized later, by the
/// chat template's `normalize_messages`).
pub fn parse_chat(body: &Value) -> Result<ChatRequest, ApiError> {
    let o = object(body)?;
    let f = Fields(o);
    let model = f.string("model")?;
    let messages = match f.get("messages") {
        None => return Err(ApiError::param("messages", "messages is required")),
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::param("messages", "messages must not be empty")),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => return Err(ApiError::param("messages", format!("messages must be an array, got {}", type_name(v)))),
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let Value::Object(mut mo) = m else {
            return Err(ApiError::param("messages", format!("messages[{i}] must be an object, got {}", type_name(&m))));
        };
        let role = match mo.get("role") {
            Some(Value::String(r)) => r.clone(),
            None | Some(Value::Null) => return Err(ApiError::param("messages", format!("messages[{i}] has no role"))),
            Some(v) => return Err(ApiError::param("messages", format!("messages[{i}].role must be a string, got {}", type_name(v)))),
        };
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::param("messages", format!("messages[{i}].role {role:?} is not one of {}", ROLES.join(", "))));
        }
        if role == "developer" {
            mo.insert("role".into(), Value::String("system".into()));
        }
        out.push(Value::Object(mo));
    }
    let params = parse_params(&f, &["max_completion_tokens", "max_tokens"])?;
    check_tool_history(&out)?;
    let tools = parse_tools(&f)?;
    let tool_choice = parse_tool_choice(&f, &tools)?;
    let parallel_tool_calls = f.bool("parallel_tool_calls")?.unwrap_or(true);
    let response_format = parse_response_format(&f)?;
    if response_format != ResponseFormat::Text && matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(ApiError::param("response_format", "response_format cannot be combined with a tool_choice that forces a call"));
    }
    Ok(ChatRequest { model, messages: out, params, tools, tool_choice, parallel_tool_calls, response_format })
}

// ------------------------------------------------------------------------------ tools

/// Function names as OpenAI accepts them.
fn valid_function_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// JSON Schema type names, and the spellings tutorials use for them (Python's and C's).
fn schema_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "object" | "dict" => "object",
        "array" | "list" | "tuple" => "array",
        "string" | "str" | "text" => "string",
        "integer" | "int" => "integer",
        "number" | "float" | "double" | "decimal" => "number",
        "boolean" | "bool" => "boolean",
        "null" | "none" | "None" => "null",
        _ => return None,
    })
}

/// Normalize a JSON Schema from a request: type aliases (`"int"` -> `"integer"`, ...) mapped,
/// everywhere a subschema can sit; structurally invalid schemas (a `type` that is no type,
/// `properties` that is not an object, `required` that is not a list of names) are errors naming
/// the JSON path. Keywords awqc does not know are kept for the grammar compiler to judge.
pub fn normalize_schema(v: &Value, path: &str) -> Result<Value, String> {
    let o = match v {
        Value::Bool(_) => return Ok(v.clone()),
        Value::Object(o) => o,
        other => return Err(format!("{path} must be a JSON Schema object, got {}", type_name(other))),
    };
    let mut out = Map::new();
    for (k, val) in o {
        let sub = |val: &Value, p: String| normalize_schema(val, &p);
        let nv = match k.as_str() {
            "type" => match val {
                Value::String(t) => Value::String(schema_type(t).ok_or_else(|| format!("{path}.type {t:?} is not a JSON Schema type"))?.into()),
                Value::Array(ts) => {
                    let mut a = Vec::new();
                    for t in ts {
                        let name = t.as_str().and_then(schema_type).ok_or_else(|| format!("{path}.type contains {t}, which is not a JSON Schema type"))?;
                        a.push(Value::String(name.into()));
                    }
                    Value::Array(a)
                }
                other => return Err(format!("{path}.type must be a string or a list of strings, got {}", type_name(other))),
            },
            "properties" | "$defs" | "definitions" | "patternProperties" => {
                let Value::Object(props) = val else {
                    return Err(format!("{path}.{k} must be an object, got {}", type_name(val)));
                };
                let mut m = Map::new();
                for (name, ps) in props {
                    m.insert(name.clone(), sub(ps, format!("{path}.{k}.{name}"))?);
                }
                Value::Object(m)
            }
            "items" | "additionalProperties" | "not" | "contains" | "propertyNames" | "additionalItems" => match val {
                Value::Array(a) if k == "items" => Value::Array(a.iter().enumerate().map(|(i, x)| sub(x, format!("{path}.items[{i}]"))).collect::<Result<_, _>>()?),
                _ => sub(val, format!("{path}.{k}"))?,
            },
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                let Value::Array(a) = val else {
                    return Err(format!("{path}.{k} must be a list of schemas, got {}", type_name(val)));
                };
                Value::Array(a.iter().enumerate().map(|(i, x)| sub(x, format!("{path}.{k}[{i}]"))).collect::<Result<_, _>>()?)
            }
            "required" => {
                let ok = matches!(val, Value::Array(a) if a.iter().all(Value::is_string));
                if !ok {
                    return Err(format!("{path}.required must be a list of property names"));
                }
                val.clone()
            }
            "enum" => {
                if !val.is_array() {
                    return Err(format!("{path}.enum must be a list, got {}", type_name(val)));
                }
                val.clone()
            }
            _ => val.clone(),
        };
        out.insert(k.clone(), nv);
    }
    Ok(Value::Object(out))
}

fn parse_tools(f: &Fields) -> Result<Vec<ToolDef>, ApiError> {
    let list = match f.get("tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::param("tools", format!("tools must be an array, got {}", type_name(v)))),
    };
    let mut tools: Vec<ToolDef> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let bad = |msg: String| ApiError::param("tools", format!("{at}: {msg}"));
        let Value::Object(o) = t else { return Err(bad(format!("must be an object, got {}", type_name(t)))) };
        match o.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(ty)) if ty == "function" => {}
            Some(v) => return Err(bad(format!("type must be \"function\", got {v}"))),
        }
        let Some(Value::Object(func)) = o.get("function") else { return Err(bad("has no \"function\" object".into())) };
        let name = match func.get("name") {
            Some(Value::String(n)) if valid_function_name(n) => n.clone(),
            Some(Value::String(n)) => return Err(bad(format!("function name {n:?} must be 1-64 letters, digits, '_', '-' or '.'"))),
            _ => return Err(bad("function.name must be a string".into())),
        };
        if tools.iter().any(|d| d.name == name) {
            return Err(bad(format!("function {name:?} is declared twice")));
        }
        let description = match func.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(v) => return Err(bad(format!("function.description must be a string, got {}", type_name(v)))),
        };
        let parameters = match func.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p) => {
                let n = normalize_schema(p, "parameters").map_err(|e| {
                    let mut err = ApiError::param("tools", format!("{at} ({name}): invalid schema: {e}"));
                    err.code = "invalid_tool_schema";
                    err
                })?;
                if !matches!(n.get("type"), None | Some(Value::String(_))) || n.get("type").is_some_and(|t| t != "object") {
                    let mut err = ApiError::param("tools", format!("{at} ({name}): parameters must describe an object (\"type\": \"object\")"));
                    err.code = "invalid_tool_schema";
                    return Err(err);
                }
                n
            }
        };
        tools.push(ToolDef { name, description, parameters });
    }
    Ok(tools)
}

fn parse_tool_choice(f: &Fields, tools: &[ToolDef]) -> Result<ToolChoice, ApiError> {
    let choice = match f.get("tool_choice") {
        None => return Ok(if tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(ApiError::param("tool_choice", format!("tool_choice must be \"none\", \"auto\", \"required\" or a function object, got {other:?}"))),
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|fu| fu.get("name")).and_then(Value::as_str).ok_or_else(|| {
                ApiError::param("tool_choice", "tool_choice object must be {\"type\": \"function\", \"function\": {\"name\": ...}}")
            })?;
            ToolChoice::Function(name.to_string())
        }
        Some(v) => return Err(ApiError::param("tool_choice", format!("tool_choice must be a string or an object, got {}", type_name(v)))),
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Auto if tools.is_empty() => {
            Err(ApiError::param("tool_choice", "tool_choice \"auto\" or \"required\" needs a non-empty tools list"))
        }
        ToolChoice::Function(n) if !tools.iter().any(|t| &t.name == n) => {
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            Err(ApiError::param("tool_choice", format!("tool_choice names function {n:?}, which is not in tools ({})", if names.is_empty() { "none declared".into() } else { names.join(", ") })))
        }
        _ => Ok(choice),
    }
}

fn parse_response_format(f: &Fields) -> Result<ResponseFormat, ApiError> {
    let Some(v) = f.get("response_format") else { return Ok(ResponseFormat::Text) };
    let bad = |m: String| ApiError::param("response_format", m);
    let Value::Object(o) = v else { return Err(bad(format!("response_format must be an object, got {}", type_name(v)))) };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = o.get("json_schema").and_then(|j| j.get("schema")).ok_or_else(|| bad("json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}".into()))?;
            let n = normalize_schema(schema, "json_schema.schema").map_err(|e| bad(format!("invalid schema: {e}")))?;
            Ok(ResponseFormat::JsonSchema(n))
        }
        _ => Err(bad("response_format.type must be \"text\", \"json_object\" or \"json_schema\"".into())),
    }
}

/// Tool calls in the history: every assistant `tool_calls[i]` names a function and carries JSON
/// arguments (a JSON text, as clients send them, or an object), and every `tool` message answers a
/// call made before it (its `tool_call_id`, when given, is one of those calls' ids).
fn check_tool_history(messages: &[Value]) -> Result<(), ApiError> {
    let mut ids: Vec<String> = Vec::new();
    let mut any_call = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match m.get("tool_calls") {
            None | Some(Value::Null) => {}
            Some(Value::Array(calls)) => {
                for (j, c) in calls.iter().enumerate() {
                    let at = format!("messages[{i}].tool_calls[{j}]");
                    let func = c.get("function").ok_or_else(|| ApiError::param("messages", format!("{at} has no \"function\"")))?;
                    if !func.get("name").is_some_and(Value::is_string) {
                        return Err(ApiError::param("messages", format!("{at}.function.name must be a string")));
                    }
                    match func.get("arguments") {
                        Some(Value::String(a)) => {
                            if serde_json::from_str::<Value>(a).is_err() {
                                return Err(ApiError::param("messages", format!("{at}.function.arguments is not valid JSON: {a:?}")));
                            }
                        }
                        Some(Value::Object(_)) | None | Some(Value::Null) => {}
                        Some(v) => return Err(ApiError::param("messages", format!("{at}.function.arguments must be a JSON string, got {}", type_name(v)))),
                    }
                    if let Some(id) = c.get("id").and_then(Value::as_str) {
                        ids.push(id.to_string());
                    }
                    any_call = true;
                }
            }
            Some(v) => return Err(ApiError::param("messages", format!("messages[{i}].tool_calls must be an array, got {}", type_name(v)))),
        }
        if role == "tool" {
            if !any_call {
                return Err(ApiError::param("messages", format!("messages[{i}] is a tool result, but no assistant message before it made a tool call")));
            }
            if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
                if !ids.iter().any(|c| c == id) {
                    return Err(ApiError::param("messages", format!("messages[{i}].tool_call_id {id:?} matches no tool call before it")));
                }
            }
        }
    }
    Ok(())
}

fn token_ids(a: &[Value]) -> Option<Vec<u32>> {
    a.iter().map(|v| v.as_u64().and_then(|u| u32::try_from(u).ok())).collect()
}

/// Parse and validate a (legacy) completion request.
pub fn parse_completion(body: &Value) -> Result<CompletionRequestParsed, ApiError> {
    let o = object(body)?;
    let f = Fields(o);
    let model = f.string("model")?;
    let bad = || ApiError::param("prompt", "prompt must be a string, a list with one string, a list of token ids, or a list with one list of token ids");
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::param("prompt", "prompt is required")),
        Some(Value::String(s)) => PromptInput::Text(s.clone()),
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::param("prompt", "prompt must not be empty")),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(s) if a.len() == 1 => PromptInput::Text(s.clone()),
            Value::Array(inner) if a.len() == 1 => {
                if inner.is_empty() {
                    return Err(ApiError::param("prompt", "prompt must not be empty"));
                }
                PromptInput::Ids(token_ids(inner).ok_or_else(bad)?)
            }
            Value::Number(_) => PromptInput::Ids(token_ids(a).ok_or_else(bad)?),
            Value::String(_) | Value::Array(_) => {
                return Err(ApiError::param("prompt", format!("only one prompt per request is supported, got {}", a.len())))
            }
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    let echo = f.bool("echo")?.unwrap_or(false);
    let params = parse_params(&f, &["max_tokens"])?;
    Ok(CompletionRequestParsed { model, prompt, echo, params })
}

// --------------------------------------------------------------------------------- raw bodies

/// A request body (already under the size limit) as JSON: 400 `invalid_json` when it is empty
/// (whitespace only) or not valid JSON. The HTTP layer's `JsonBody` extractor ends with this.
pub fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", "the request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))
}

/// A `POST /v1/chat/completions` body, from bytes to a validated request or the error.
pub fn chat_from_body(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_chat(&parse_json_body(body)?)
}

/// A `POST /v1/completions` body, from bytes to a validated request or the error.
pub fn completion_from_body(body: &[u8]) -> Result<CompletionRequestParsed, ApiError> {
    parse_completion(&parse_json_body(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> Result<ChatRequest, ApiError> {
        parse_chat(&v)
    }

    #[test]
    fn chat_defaults_and_fields() {
        let r = chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.params,
            GenParams { max_tokens: None, temperature: 1.0, top_p: 1.0, top_k: 0, seed: None, stop: vec![], stream: false, include_usage: false, ignore_eos: false }
        );
        let r = chat(json!({"messages": [{"role": "developer", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 7,
            "temperature": 0, "top_p": 0.5, "top_k": -1, "seed": -1, "stop": ["a", ""], "n": 1, "stream": true,
            "stream_options": {"include_usage": true}, "user": "ignored", "presence_penalty": 0.1}))
        .unwrap();
        assert_eq!(r.messages[0]["role"], "system");
        let p = r.params;
        assert_eq!((p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed), (Some(7), 0.0, 0.5, 0, Some(u64::MAX)));
        assert_eq!(p.stop, vec!["a".to_string()]);
        assert!(p.stream && p.include_usage);
        let r = chat(json!({"messages": [{"role": "user", "content": "x"}], "stop": "END", "max_tokens": null})).unwrap();
        assert_eq!(r.params.stop, vec!["END".to_string()]);
        assert_eq!(r.params.max_tokens, None);
    }

    #[test]
    fn chat_errors_name_the_field() {
        let m = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!([1]), None),
            (json!({}), Some("messages")),
            (json!({"messages": []}), Some("messages")),
            (json!({"messages": "hi"}), Some("messages")),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), Some("messages")),
            (json!({"messages": [{"content": "x"}]}), Some("messages")),
            (json!({"messages": m, "max_tokens": -1}), Some("max_tokens")),
            (json!({"messages": m, "max_tokens": 0}), Some("max_tokens")),
            (json!({"messages": m, "max_tokens": 1.5}), Some("max_tokens")),
            (json!({"messages": m, "max_tokens": "10"}), Some("max_tokens")),
            (json!({"messages": m, "temperature": -0.1}), Some("temperature")),
            (json!({"messages": m, "temperature": "hot"}), Some("temperature")),
            (json!({"messages": m, "temperature": 1e40}), Some("temperature")),
            (json!({"messages": m, "top_p": 0}), Some("top_p")),
            (json!({"messages": m, "top_p": 1.5}), Some("top_p")),
            (json!({"messages": m, "top_k": -2}), Some("top_k")),
            (json!({"messages": m, "n": 2}), Some("n")),
            (json!({"messages": m, "stop": 3}), Some("stop")),
            (json!({"messages": m, "stop": ["a", 3]}), Some("stop")),
            (json!({"messages": m, "stream": "yes"}), Some("stream")),
            (json!({"messages": m, "model": 5}), Some("model")),
            (json!({"messages": m, "seed": 1.5}), Some("seed")),
            (json!({"messages": m, "stream_options": {"include_usage": 1}}), Some("stream_options.include_usage")),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
        // Huge integers parse (they are clamped or refused against the session later).
        let r = chat(json!({"messages": m, "max_tokens": 18446744073709551615u64})).unwrap();
        assert_eq!(r.params.max_tokens, Some(usize::MAX));
    }

    fn tool(name: &str, params: Value) -> Value {
        json!({"type": "function", "function": {"name": name, "description": "d", "parameters": params}})
    }

    #[test]
    fn tools_choice_and_format_parse() {
        let m = json!([{"role": "user", "content": "x"}]);
        // No tools: choice none. Tools: auto by default; aliases in the schema are mapped everywhere.
        let r = chat(json!({"messages": m})).unwrap();
        assert_eq!((r.tool_choice, r.parallel_tool_calls, r.response_format), (ToolChoice::None, true, ResponseFormat::Text));
        let p = json!({"type": "dict", "properties": {"a": {"type": "int"}, "xs": {"type": "list", "items": {"type": "float"}},
            "o": {"anyOf": [{"type": "str"}, {"type": "None"}]}}, "required": ["a"]});
        let r = chat(json!({"messages": m, "tools": [tool("f", p), {"type": "function", "function": {"name": "g.h-1"}}],
            "parallel_tool_calls": false})).unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Auto);
        assert!(!r.parallel_tool_calls);
        assert_eq!(r.tools.len(), 2);
        assert_eq!(
            r.tools[0].parameters,
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "xs": {"type": "array", "items": {"type": "number"}},
                "o": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["a"]})
        );
        assert_eq!(r.tools[0].description.as_deref(), Some("d"));
        // A function without parameters takes none.
        assert_eq!(r.tools[1].parameters, json!({"type": "object", "properties": {}}));
        let t = json!([tool("f", json!({"type": "object"}))]);
        for (choice, want) in [
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (json!({"type": "function", "function": {"name": "f"}}), ToolChoice::Function("f".into())),
        ] {
            assert_eq!(chat(json!({"messages": m, "tools": t, "tool_choice": choice})).unwrap().tool_choice, want);
        }
        let s = json!({"type": "object", "properties": {"n": {"type": "int"}}});
        let r = chat(json!({"messages": m, "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": s}}})).unwrap();
        assert_eq!(r.response_format, ResponseFormat::JsonSchema(json!({"type": "object", "properties": {"n": {"type": "integer"}}})));
        let r = chat(json!({"messages": m, "response_format": {"type": "json_object"}})).unwrap();
        assert_eq!(r.response_format, ResponseFormat::JsonObject);
    }

    #[test]
    fn tool_errors_name_the_field_and_the_schema_path() {
        let m = json!([{"role": "user", "content": "x"}]);
        let t = json!([tool("f", json!({"type": "object"}))]);
        let cases = [
            (json!({"messages": m, "tools": {}}), "tools", "must be an array"),
            (json!({"messages": m, "tools": [{"type": "retrieval"}]}), "tools", "type must be \"function\""),
            (json!({"messages": m, "tools": [{"type": "function"}]}), "tools", "no \"function\" object"),
            (json!({"messages": m, "tools": [tool("bad name", json!({}))]}), "tools", "1-64 letters"),
            (json!({"messages": m, "tools": [tool("f", json!({})), tool("f", json!({}))]}), "tools", "declared twice"),
            (json!({"messages": m, "tools": [tool("f", json!({"type": "integer"}))]}), "tools", "must describe an object"),
            (json!({"messages": m, "tools": [tool("f", json!({"type": "object", "properties": {"a": {"type": "frac"}}}))]}), "tools", "parameters.properties.a.type \"frac\""),
            (json!({"messages": m, "tools": [tool("f", json!({"type": "object", "properties": []}))]}), "tools", "parameters.properties must be an object"),
            (json!({"messages": m, "tools": [tool("f", json!({"type": "object", "required": "a"}))]}), "tools", "parameters.required"),
            (json!({"messages": m, "tool_choice": "required"}), "tool_choice", "non-empty tools"),
            (json!({"messages": m, "tools": t, "tool_choice": "always"}), "tool_choice", "\"always\""),
            (json!({"messages": m, "tools": t, "tool_choice": {"type": "function", "function": {"name": "g"}}}), "tool_choice", "not in tools (f)"),
            (json!({"messages": m, "tools": t, "tool_choice": {"type": "function"}}), "tool_choice", "tool_choice object"),
            (json!({"messages": m, "response_format": {"type": "xml"}}), "response_format", "response_format.type"),
            (json!({"messages": m, "response_format": {"type": "json_schema"}}), "response_format", "json_schema needs"),
            (json!({"messages": m, "tools": t, "tool_choice": "required", "response_format": {"type": "json_object"}}), "response_format", "cannot be combined"),
            (json!({"messages": m, "parallel_tool_calls": "yes"}), "parallel_tool_calls", ""),
        ];
        for (body, param, msg) in cases {
            let e = chat(body.clone()).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}: {}", e.message);
            assert!(e.message.contains(msg), "{body}: {:?} lacks {msg:?}", e.message);
        }
        let e = chat(json!({"messages": m, "tools": [tool("f", json!({"type": "object", "properties": {"a": 3}}))]})).unwrap_err();
        assert_eq!(e.code, "invalid_tool_schema");
    }

    #[test]
    fn tool_history_is_checked() {
        let call = |id: &str, args: Value| json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": args}}]});
        let user = json!({"role": "user", "content": "x"});
        let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "1"});
        // A call, its result, and a result without an id (older clients) are accepted.
        chat(json!({"messages": [user, call("c1", json!("{\"a\": 1}")), result("c1"), {"role": "tool", "content": "2"}]})).unwrap();
        chat(json!({"messages": [user, call("c1", json!({"a": 1})), result("c1")]})).unwrap();
        for (msgs, msg) in [
            (json!([user, result("c1")]), "no assistant message before it made a tool call"),
            (json!([user, call("c1", json!("{}")), result("c2")]), "tool_call_id \"c2\" matches no tool call"),
            (json!([user, call("c1", json!("{a: 1}"))]), "arguments is not valid JSON"),
            (json!([user, call("c1", json!(5))]), "arguments must be a JSON string"),
            (json!([user, {"role": "assistant", "tool_calls": {}}]), "tool_calls must be an array"),
            (json!([user, {"role": "assistant", "tool_calls": [{"id": "x"}]}]), "has no \"function\""),
        ] {
            let e = chat(json!({"messages": msgs})).err().unwrap_or_else(|| panic!("{msgs} accepted"));
            assert_eq!(e.param.as_deref(), Some("messages"));
            assert!(e.message.contains(msg), "{msgs}: {:?} lacks {msg:?}", e.message);
        }
    }

    #[test]
    fn completion_prompts() {
        let p = |v: Value| parse_completion(&json!({"prompt": v})).map(|r| r.prompt);
        assert_eq!(p(json!("hi")).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(json!(["hi"])).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(json!([1, 2])).unwrap(), PromptInput::Ids(vec![1, 2]));
        assert_eq!(p(json!([[1, 2]])).unwrap(), PromptInput::Ids(vec![1, 2]));
        for bad in [json!(["a", "b"]), json!([]), json!([-1]), json!([1, "a"]), json!(5), json!([[1], [2]]), json!({"a": 1})] {
            assert_eq!(p(bad.clone()).unwrap_err().param.as_deref(), Some("prompt"), "{bad}");
        }
        assert!(parse_completion(&json!({})).is_err());
        let r = parse_completion(&json!({"prompt": "x", "echo": true, "max_tokens": 3})).unwrap();
        assert!(r.echo);
        assert_eq!(r.params.max_tokens, Some(3));
        // max_completion_tokens is a chat field only.
        let r = parse_completion(&json!({"prompt": "x", "max_completion_tokens": 3})).unwrap();
        assert_eq!(r.params.max_tokens, None);
    }
}
