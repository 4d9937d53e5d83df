//! The HTTP API (axum): routes, API keys, OpenAI-style errors, server-sent event streams,
//! Prometheus metrics, the OpenAPI document with a bundled Swagger UI, and the web chat page.
//!
//! | route | |
//! |---|---|
//! | `GET /` | web chat page (`web/index.html`, embedded) |
//! | `GET /health` | `{"status": "ok"}`, or 503 while loading / shutting down (public) |
//! | `GET /metrics` | Prometheus text (public) |
//! | `GET /openapi.json`, `GET /docs` | OpenAPI document, Swagger UI (public) |
//! | `GET /v1/models` | the served model (API key) |
//! | `POST /v1/chat/completions` | chat, `stream` as SSE (API key) |
//! | `POST /v1/completions` | text completion, `stream` as SSE (API key) |
//!
//! Every error is `{"error": {"message", "type", "code", "param"}}` with its status: axum's own
//! plain-text rejections (bad JSON, body too large, unknown route, wrong method) never reach the
//! client.

use crate::serve::detok::TextStream;
use crate::serve::model::{random_seed, Prompter};
use crate::serve::openai::*;
use crate::serve::scheduler::{Constraint, EngineHandle, FinishReason, GenEvent, GenRequest, SamplingParams, SubmitError};
use crate::serve::toolcall::{split_answer, CallPiece, CallStream};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use utoipa::OpenApi;

/// Largest request body accepted (413 above).
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// A body over the limit is still read (and dropped) up to this many bytes so the client sees
/// the 413 instead of a reset connection; past it the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

const INDEX_HTML: &str = include_str!("web/index.html");

/// The model in the engine, once loaded.
#[derive(Clone)]
pub struct Ready {
    pub engine: EngineHandle,
    pub prompter: Arc<Prompter>,
    pub session_len: usize,
}

pub enum EngineSlot {
    Loading,
    Ready(Ready),
    ShuttingDown,
}

/// Everything a handler needs.
pub struct AppState {
    pub model_name: String,
    pub api_keys: Vec<String>,
    pub slot: RwLock<EngineSlot>,
    pub body_limit: usize,
    /// Unix time the server started (`created` of the model card).
    pub created: u64,
    ids: AtomicU64,
}

impl AppState {
    pub fn new(model_name: String, api_keys: Vec<String>) -> Self {
        AppState {
            model_name,
            api_keys,
            slot: RwLock::new(EngineSlot::Loading),
            body_limit: DEFAULT_BODY_LIMIT,
            created: unix_now(),
            ids: AtomicU64::new(random_seed()),
        }
    }

    /// Make the loaded model available (false when shutdown started meanwhile).
    pub fn set_ready(&self, r: Ready) -> bool {
        let mut s = self.slot.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, EngineSlot::ShuttingDown) {
            return false;
        }
        *s = EngineSlot::Ready(r);
        true
    }

    /// Refuse new requests from now on; returns the engine to shut down, if it was loaded.
    pub fn begin_shutdown(&self) -> Option<EngineHandle> {
        let mut s = self.slot.write().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *s, EngineSlot::ShuttingDown) {
            EngineSlot::Ready(r) => Some(r.engine),
            _ => None,
        }
    }

    fn ready(&self) -> Result<Ready, ApiError> {
        match &*self.slot.read().unwrap_or_else(|e| e.into_inner()) {
            EngineSlot::Ready(r) => Ok(r.clone()),
            EngineSlot::Loading => Err(ApiError::new(503, "service_unavailable_error", "model_loading", "the model is still loading; retry shortly")),
            EngineSlot::ShuttingDown => Err(shutting_down()),
        }
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        // Scramble the counter so ids look random but never repeat within a run.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!("{prefix}-{:016x}{:08x}", x, (n >> 32) as u32 ^ (x as u32))
    }

    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(m) if !m.is_empty() && m != self.model_name => {
                let mut e = ApiError::new(404, "invalid_request_error", "model_not_found", format!("the model {m:?} does not exist; this server serves {:?}", self.model_name));
                e.param = Some("model".into());
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

type Shared = Arc<AppState>;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn shutting_down() -> ApiError {
    ApiError::new(503, "service_unavailable_error", "shutting_down", "the server is shutting down")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self.body())).into_response();
        if self.status == 401 {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

// ------------------------------------------------------------------------------ JSON bodies

/// The request body as JSON, with OpenAI-style errors: 413 over the size limit, 400 when it is
/// not JSON. The content type is not checked (`curl -d` sends a form type).
pub struct JsonBody(pub Value);

impl FromRequest<Shared> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let limit = state.body_limit;
        let too_large = || ApiError::new(413, "invalid_request_error", "body_too_large", format!("the request body is larger than {limit} bytes"));
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
        let mut stream = req.into_body().into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut over = declared.is_some_and(|n| n > limit as u64);
        let mut seen = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("reading the request body failed: {e}")))?;
            seen += chunk.len();
            if !over && buf.len() + chunk.len() > limit {
                over = true;
                buf = Vec::new();
            }
            if over {
                if seen > DRAIN_LIMIT {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&chunk);
        }
        if over {
            return Err(too_large());
        }
        parse_json_body(&buf).map(JsonBody)
    }
}

// -------------------------------------------------------------------------------------- auth

fn same_key(a: &str, b: &str) -> bool {
    // Constant time in the key's contents.
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if st.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let err = |msg: &str| ApiError::new(401, "authentication_error", "invalid_api_key", msg).into_response();
    match given {
        None => err("missing API key: send the header `Authorization: Bearer <key>`"),
        Some(h) => {
            let key = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).map(str::trim);
            match key {
                Some(k) if st.api_keys.iter().any(|a| same_key(a, k)) => next.run(req).await,
                Some(_) => err("invalid API key"),
                None => err("the Authorization header must be `Bearer <key>`"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------- handlers

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// Liveness: 200 `{"status": "ok"}` once the model is loaded, 503 with `"loading"` or
/// `"shutting_down"` before and after. Never needs an API key.
#[utoipa::path(get, path = "/health", tag = "server",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health(State(st): State<Shared>) -> Response {
    let (code, status) = match &*st.slot.read().unwrap_or_else(|e| e.into_inner()) {
        EngineSlot::Ready(_) => (StatusCode::OK, "ok"),
        EngineSlot::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        EngineSlot::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
    };
    (code, Json(Health { status: status.into(), model: st.model_name.clone() })).into_response()
}

/// Prometheus text format: requests, prompt and generated tokens (counters), running and waiting
/// sequences, KV cache blocks used and free (gauges).
#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
async fn metrics(State(st): State<Shared>) -> Response {
    let (loaded, m) = match &*st.slot.read().unwrap_or_else(|e| e.into_inner()) {
        EngineSlot::Ready(r) => (1, r.engine.metrics()),
        _ => (0, Default::default()),
    };
    let rows: [(&str, &str, &str, String); 8] = [
        ("awqc_model_loaded", "gauge", "1 when the model is loaded and requests are served.", loaded.to_string()),
        ("awqc_requests_total", "counter", "Requests admitted by the engine.", m.requests_total.to_string()),
        ("awqc_prompt_tokens_total", "counter", "Prompt tokens prefilled.", m.prompt_tokens_total.to_string()),
        ("awqc_generation_tokens_total", "counter", "Tokens generated.", m.generation_tokens_total.to_string()),
        ("awqc_running_sequences", "gauge", "Sequences in the running batch.", m.running.to_string()),
        ("awqc_waiting_sequences", "gauge", "Requests waiting for admission.", m.waiting.to_string()),
        ("awqc_kv_blocks_used", "gauge", "KV cache blocks in use or reserved.", m.kv_blocks_used.to_string()),
        ("awqc_kv_blocks_free", "gauge", "KV cache blocks free.", m.kv_blocks_free.to_string()),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("api_key" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_models(State(st): State<Shared>) -> Result<Json<ModelList>, ApiError> {
    let r = st.ready()?;
    Ok(Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: st.model_name.clone(),
            object: "model".into(),
            created: st.created,
            owned_by: "awqc".into(),
            max_model_len: r.session_len,
        }],
    }))
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Overloaded { .. } => ApiError::new(429, "rate_limit_error", "overloaded", e.to_string()),
        SubmitError::PromptTooLong { .. } => {
            let mut err = ApiError::bad_request("context_length_exceeded", e.to_string());
            err.param = Some("messages".into());
            err
        }
        SubmitError::ShuttingDown => shutting_down(),
    }
}

/// Check the prompt against the session, work out max_tokens, and hand the request to the engine.
fn submit(r: &Ready, prompt: Vec<u32>, p: &GenParams, prompt_param: &str, constraint: Option<Box<dyn Constraint>>) -> Result<UnboundedReceiver<GenEvent>, ApiError> {
    let n = prompt.len();
    let session = r.session_len;
    if n == 0 {
        return Err(ApiError::param(prompt_param, "the prompt is empty (0 tokens)"));
    }
    if n >= session {
        let mut e = ApiError::bad_request(
            "context_length_exceeded",
            format!("the prompt has {n} tokens; this server's context (session length) is {session} tokens, and at least one must be left to generate"),
        );
        e.param = Some(prompt_param.into());
        return Err(e);
    }
    let room = session - n;
    let max_tokens = match p.max_tokens {
        Some(m) if m > session => {
            return Err(ApiError::param(
                "max_tokens",
                format!("max_tokens {m} is larger than this server's session length ({session} tokens, prompt included)"),
            ))
        }
        Some(m) => m.min(room),
        None => room,
    };
    let sampling = SamplingParams { temperature: p.temperature, top_p: p.top_p, top_k: p.top_k, seed: p.seed.unwrap_or_else(random_seed) };
    let (tx, rx) = unbounded_channel();
    let req = GenRequest { prompt, max_tokens, sampling, stop_ids: if p.ignore_eos { Vec::new() } else { r.prompter.stop_ids().to_vec() }, events: tx, constraint };
    r.engine.submit(req).map_err(|e| {
        let mut err = submit_error(e);
        if err.code == "context_length_exceeded" {
            err.param = Some(prompt_param.into());
        }
        err
    })?;
    Ok(rx)
}

fn finish_str(r: FinishReason) -> String {
    match r {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
    }
}

fn engine_error(msg: String) -> ApiError {
    ApiError::new(500, "server_error", "engine_error", msg)
}

/// The whole answer of a non-streamed request. Returning drops the receiver, which aborts the
/// sequence in the engine (a matched stop string, or the client went away and axum dropped us).
async fn collect(mut rx: UnboundedReceiver<GenEvent>, prompter: &Prompter, stops: Vec<String>) -> Result<(String, FinishReason, usize), ApiError> {
    let mut ts = TextStream::new(stops);
    let mut text = String::new();
    let mut n = 0usize;
    loop {
        match rx.recv().await {
            Some(GenEvent::Token(t)) => {
                n += 1;
                let p = ts.push(&prompter.tok, t);
                text.push_str(&p.text);
                if p.stopped {
                    return Ok((text, FinishReason::Stop, n));
                }
            }
            Some(GenEvent::Done(reason)) => {
                let p = ts.finish(&prompter.tok);
                text.push_str(&p.text);
                return Ok((text, if p.stopped { FinishReason::Stop } else { reason }, n));
            }
            Some(GenEvent::Error(e)) => return Err(engine_error(e)),
            None => return Err(shutting_down()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Completion,
}

/// The state of one SSE stream: the engine's receiver, the detokenizer, and the events ready to
/// send. Dropping it (the client disconnected and axum dropped the body) drops the receiver,
/// which aborts the sequence in the engine.
struct StreamState {
    rx: Option<UnboundedReceiver<GenEvent>>,
    ts: TextStream,
    prompter: Arc<Prompter>,
    queue: VecDeque<String>,
    done: bool,
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    include_usage: bool,
    /// Tool-call parsing of a chat answer (the request declared tools).
    calls: Option<CallStream>,
}

impl StreamState {
    /// The stream of one request: nothing queued yet, no tokens counted.
    #[allow(clippy::too_many_arguments)]
    fn new(rx: UnboundedReceiver<GenEvent>, p: &GenParams, prompter: Arc<Prompter>, shape: Shape, id: String, created: u64, model: String, prompt_tokens: usize) -> Self {
        StreamState {
            rx: Some(rx),
            ts: TextStream::new(p.stop.clone()),
            prompter,
            queue: VecDeque::new(),
            done: false,
            shape,
            id,
            created,
            model,
            prompt_tokens,
            completion_tokens: 0,
            include_usage: p.include_usage,
            calls: None,
        }
    }

    fn chunk(&self, text: Option<String>, role: bool, finish: Option<String>) -> String {
        let v = match self.shape {
            Shape::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChunkChoice {
                    index: 0,
                    delta: Delta { role: role.then(|| "assistant".into()), content: text, tool_calls: None },
                    finish_reason: finish,
                    logprobs: None,
                }],
                usage: None,
            }),
            Shape::Completion => serde_json::to_value(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice { index: 0, text: text.unwrap_or_default(), finish_reason: finish, logprobs: None }],
                usage: None,
            }),
        };
        v.map(|v| v.to_string()).unwrap_or_default()
    }

    fn usage_chunk(&self) -> String {
        let usage = Some(Usage::new(self.prompt_tokens, self.completion_tokens));
        let v = match self.shape {
            Shape::Chat => serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage,
            }),
            Shape::Completion => serde_json::to_value(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage,
            }),
        };
        v.map(|v| v.to_string()).unwrap_or_default()
    }

    fn text(&mut self, t: String) {
        if let Some(calls) = self.calls.as_mut() {
            let pieces = calls.push(&t);
            self.pieces(pieces);
        } else {
            self.content(t);
        }
    }

    fn content(&mut self, t: String) {
        if !t.is_empty() {
            let c = self.chunk(Some(t), false, None);
            self.queue.push_back(c);
        }
    }

    /// Tool-call parser output as chunks: content deltas, and `tool_calls` deltas.
    fn pieces(&mut self, pieces: Vec<CallPiece>) {
        for p in pieces {
            let delta = match p {
                CallPiece::Content(t) => {
                    self.content(t);
                    continue;
                }
                CallPiece::Start { index, id, name } => ToolCallDelta {
                    index,
                    id: Some(id),
                    kind: Some("function".into()),
                    function: FunctionDelta { name: Some(name), arguments: String::new() },
                },
                CallPiece::Args { index, delta } => ToolCallDelta { index, id: None, kind: None, function: FunctionDelta { name: None, arguments: delta } },
            };
            let v = serde_json::to_value(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChunkChoice { index: 0, delta: Delta { role: None, content: None, tool_calls: Some(vec![delta]) }, finish_reason: None, logprobs: None }],
                usage: None,
            });
            self.queue.push_back(v.map(|v| v.to_string()).unwrap_or_default());
        }
    }

    fn finish(&mut self, tail: String, reason: FinishReason) {
        self.text(tail);
        let mut finish = finish_str(reason);
        if let Some(mut calls) = self.calls.take() {
            let pieces = calls.finish();
            self.pieces(pieces);
            if calls.any_call() {
                finish = "tool_calls".into();
            }
        }
        let last = match self.shape {
            // The final chat chunk has an empty delta.
            Shape::Chat => self.chunk(None, false, Some(finish)),
            Shape::Completion => self.chunk(Some(String::new()), false, Some(finish)),
        };
        self.queue.push_back(last);
        if self.include_usage {
            let u = self.usage_chunk();
            self.queue.push_back(u);
        }
        self.end();
    }

    fn fail(&mut self, e: ApiError) {
        self.queue.push_back(serde_json::to_string(&e.body()).unwrap_or_default());
        self.end();
    }

    fn end(&mut self) {
        self.queue.push_back("[DONE]".into());
        self.done = true;
        self.rx = None;
    }

    /// Wait for the next engine event and turn it into queued SSE payloads.
    async fn advance(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            self.done = true;
            return;
        };
        match rx.recv().await {
            Some(GenEvent::Token(t)) => {
                self.completion_tokens += 1;
                let p = self.ts.push(&self.prompter.tok, t);
                if p.stopped {
                    self.finish(p.text, FinishReason::Stop);
                } else {
                    self.text(p.text);
                }
            }
            Some(GenEvent::Done(reason)) => {
                let p = self.ts.finish(&self.prompter.tok);
                self.finish(p.text, if p.stopped { FinishReason::Stop } else { reason });
            }
            Some(GenEvent::Error(e)) => self.fail(engine_error(e)),
            None => self.fail(shutting_down()),
        }
    }
}

fn sse(st: StreamState) -> Response {
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(Event::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            st.advance().await;
        }
    });
    Sse::new(stream).into_response()
}

/// Chat completion (OpenAI `POST /v1/chat/completions`): the conversation is rendered with the
/// model's chat template. With `stream`, `chat.completion.chunk` events follow (the first has
/// `delta.role`, the last `finish_reason`; with `stream_options.include_usage` one more with
/// `usage` and no choices), then `data: [DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("api_key" = [])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer (or, with stream, text/event-stream of ChatCompletionChunk)", body = ChatCompletionResponse),
        (status = 400, description = "Bad JSON or parameters, or a prompt longer than the session", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, description = "Over --max-concurrent-requests", body = ErrorBody),
        (status = 503, description = "Loading or shutting down", body = ErrorBody)))]
async fn chat_completions(State(st): State<Shared>, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let req = parse_chat(&body)?;
    st.check_model(req.model.as_deref())?;
    let r = st.ready()?;
    // Tools: what the template sees, the grammar, and whether the answer is parsed for calls.
    let setup = r.prompter.tools.as_ref();
    let (messages, tools) = match setup {
        Some(ts) => ts.prompt(&req.messages, &req.tools, &req.tool_choice),
        None => (req.messages.clone(), None),
    };
    let constraint: Option<Box<dyn Constraint>> = match setup {
        Some(ts) => ts.grammar(&req.tools, &req.tool_choice, req.parallel_tool_calls, &req.response_format)?.map(|g| Box::new(g) as Box<dyn Constraint>),
        None if req.response_format != ResponseFormat::Text || !req.tools.is_empty() => {
            return Err(ApiError::param("tools", "this server was started without function calling"));
        }
        None => None,
    };
    let parser = setup.filter(|_| !req.tools.is_empty() && req.tool_choice != ToolChoice::None).map(|ts| ts.parser);
    let text = r.prompter.render_chat_tools(&messages, tools.as_deref()).map_err(|e| {
        let mut err = ApiError::bad_request("invalid_messages", format!("cannot apply the chat template to these messages: {e}"));
        err.param = Some("messages".into());
        err
    })?;
    let prompt = r.prompter.encode_chat(&text).map_err(|e| engine_error(e.to_string()))?;
    let prompt_tokens = prompt.len();
    let p = req.params;
    let rx = submit(&r, prompt, &p, "messages", constraint)?;
    let id = st.next_id("chatcmpl");
    let created = unix_now();
    if p.stream {
        let mut s = StreamState::new(rx, &p, r.prompter.clone(), Shape::Chat, id, created, st.model_name.clone(), prompt_tokens);
        if let Some(kind) = parser {
            let st2 = st.clone();
            s.calls = Some(CallStream::new(kind, &req.tools, Box::new(move || st2.next_id("call"))));
        }
        let first = s.chunk(Some(String::new()), true, None);
        s.queue.push_back(first);
        return Ok(sse(s));
    }
    let (content, reason, n) = collect(rx, &r.prompter, p.stop).await?;
    let (content, tool_calls, finish) = match parser {
        Some(kind) => {
            let (content, calls) = split_answer(kind, &req.tools, &content, || st.next_id("call"));
            let finish = if calls.is_empty() { finish_str(reason) } else { "tool_calls".into() };
            (content, (!calls.is_empty()).then_some(calls), finish)
        }
        None => (Some(content), None, finish_str(reason)),
    };
    Ok(Json(ChatCompletionResponse {
        id,
        object: "chat.completion".into(),
        created,
        model: st.model_name.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessageOut { role: "assistant".into(), content, tool_calls },
            finish_reason: Some(finish),
            logprobs: None,
        }],
        usage: Usage::new(prompt_tokens, n),
    })
    .into_response())
}

/// Text completion (OpenAI's legacy `POST /v1/completions`): the prompt is encoded as is (with
/// the tokenizer's default special tokens). `echo` returns the prompt in front of the text.
#[utoipa::path(post, path = "/v1/completions", tag = "openai", security(("api_key" = [])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (or, with stream, text/event-stream of CompletionResponse chunks)", body = CompletionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn completions(State(st): State<Shared>, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let req = parse_completion(&body)?;
    st.check_model(req.model.as_deref())?;
    let r = st.ready()?;
    let (prompt, prompt_text) = match &req.prompt {
        PromptInput::Text(t) => (r.prompter.encode_text(t).map_err(|e| engine_error(e.to_string()))?, t.clone()),
        PromptInput::Ids(ids) => {
            let vocab = r.prompter.tok.vocab_size();
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                return Err(ApiError::param("prompt", format!("token id {bad} is not in the vocabulary ({vocab} tokens)")));
            }
            (ids.clone(), if req.echo { r.prompter.tok.decode(ids).unwrap_or_default() } else { String::new() })
        }
    };
    let prompt_tokens = prompt.len();
    let p = req.params;
    let rx = submit(&r, prompt, &p, "prompt", None)?;
    let id = st.next_id("cmpl");
    let created = unix_now();
    if p.stream {
        let mut s = StreamState::new(rx, &p, r.prompter.clone(), Shape::Completion, id, created, st.model_name.clone(), prompt_tokens);
        if req.echo && !prompt_text.is_empty() {
            s.text(prompt_text);
        }
        return Ok(sse(s));
    }
    let (text, reason, n) = collect(rx, &r.prompter, p.stop).await?;
    let text = if req.echo { prompt_text + &text } else { text };
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion".into(),
        created,
        model: st.model_name.clone(),
        choices: vec![CompletionChoice { index: 0, text, finish_reason: Some(finish_str(reason)), logprobs: None }],
        usage: Some(Usage::new(prompt_tokens, n)),
    })
    .into_response())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(404, "not_found_error", "not_found", format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(405, "invalid_request_error", "method_not_allowed", format!("{} is not allowed on {}", req.method(), req.uri().path()))
}

// ----------------------------------------------------------------------------------- OpenAPI

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "awqc serve", description = "OpenAI-compatible API of awqc's inference engine (continuous batching over a block KV cache). With --api-keys, the /v1 routes need `Authorization: Bearer <key>`."),
    paths(list_models, chat_completions, completions, health, metrics),
    components(schemas(ErrorBody, ErrorDetail, ChatCompletionRequest, CompletionRequest, StopDoc, PromptDoc, StreamOptionsDoc,
        ChatCompletionResponse, ChatChoice, ChatMessageOut, ChatCompletionChunk, ChatChunkChoice, Delta,
        ToolCallOut, FunctionCallOut, ToolCallDelta, FunctionDelta,
        CompletionResponse, CompletionChoice, Usage, ModelList, ModelCard, Health)),
    modifiers(&BearerAuth),
    tags((name = "openai", description = "OpenAI-compatible endpoints"), (name = "server", description = "Health and metrics")),
)]
pub struct ApiDoc;

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

// ------------------------------------------------------------------------------------ router

pub fn router(st: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_key));
    let docs: Router<Shared> = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi()).into();
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(v1)
        .merge(docs)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(st)
}
