//! `awqc serve` over real HTTP on loopback: the real binary as a child process (killed on drop),
//! a tiny random model from `awqc synth` (byte-level tokenizer, no chat template: the ChatML
//! fallback), and reqwest. Covers every endpoint and status code, the SSE framing, streamed ==
//! non-streamed text, usage, stop strings, API keys, bad requests (each a JSON error, the server
//! still answering), 503 while loading, 429 over capacity, client disconnects, SIGTERM, and the
//! `awqc chat` REPL on piped stdin.

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn awqc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_awqc"))
}

/// A tiny random Llama (2 layers, hidden 64) with the byte-level tokenizer, written once.
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("awqc-serve-test-{}", std::process::id())).join("tiny-chat");
        let _ = std::fs::remove_dir_all(&dir);
        let out = awqc()
            .args(["--quiet", "synth", "--out"])
            .arg(&dir)
            .args(["--hidden", "64", "--intermediate", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--vocab", "259", "--dtype", "f32", "--seed", "7"])
            .output()
            .expect("run awqc synth");
        assert!(out.status.success(), "awqc synth failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// A running `awqc serve`; killed (and reaped) on drop.
struct Server {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Self::start_with(extra, true)
    }

    /// Start the server; with `wait`, block until the listening line (else until the bound line
    /// on stderr, with the model still loading).
    fn start_with(extra: &[&str], wait: bool) -> Server {
        let session: &[&str] = if extra.contains(&"--session-len") { &[] } else { &["--session-len", "256"] };
        let mut child = awqc()
            .args(["serve", "--model"])
            .arg(tiny_model())
            .args(["--server-port", "0"])
            .args(session)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start awqc serve");
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let out = child.stdout.take().unwrap();
        let tx1 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx1.send((true, line));
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send((false, line));
            }
        });
        let mut server = Server { child, base: String::new(), stderr };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (from_stdout, line) = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("awqc serve did not get ready; stderr:\n{}", server.stderr.lock().unwrap()));
            let marker = if wait { "awqc serve: listening on http://" } else { "awqc serve: bound http://" };
            if from_stdout != wait {
                continue;
            }
            if let Some(rest) = line.strip_prefix(marker) {
                let addr = rest.split([' ', ';']).next().unwrap();
                server.base = format!("http://{addr}");
                if wait {
                    assert!(line.ends_with(")") && line.contains("(model tiny-chat)"), "{line}");
                }
                return server;
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn sigterm(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM failed");
    }

    /// Wait for the process to exit (at most `secs`).
    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "awqc serve did not exit; stderr:\n{}", self.stderr.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn post(c: &Client, url: &str, body: &Value) -> Response {
    c.post(url).json(body).send().unwrap()
}

/// Status and JSON body.
fn post_json(c: &Client, url: &str, body: &Value) -> (u16, Value) {
    let r = post(c, url, body);
    let s = r.status().as_u16();
    let text = r.text().unwrap();
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: status {s}, body is not JSON ({e}): {text:?}")))
}

/// Assert an OpenAI-style error with this status and code.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    assert!(e["type"].is_string(), "{what}: {body}");
    assert_eq!(e["code"], want_code, "{what}: {body}");
}

/// Parse an SSE body: every event is one `data: ` line; returns the payloads (JSON values; the
/// last one must be `[DONE]`, not included).
fn sse_events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\n\n"), "SSE body must end with a blank line: {text:?}");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 2, "{text:?}");
    for e in &events {
        assert!(e.starts_with("data: ") && !e.contains('\n'), "not one `data: ` line: {e:?}");
    }
    assert_eq!(*events.last().unwrap(), "data: [DONE]", "{text:?}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).unwrap_or_else(|err| panic!("not JSON ({err}): {e:?}")))
        .collect()
}

fn stream_text(c: &Client, url: &str, body: &Value) -> (Vec<Value>, String) {
    let r = post(c, url, body);
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let evs = sse_events(&r.text().unwrap());
    let mut text = String::new();
    for e in &evs {
        for ch in e["choices"].as_array().unwrap() {
            text.push_str(ch["delta"]["content"].as_str().or(ch["text"].as_str()).unwrap_or(""));
        }
    }
    (evs, text)
}

fn metric(c: &Client, s: &Server, name: &str) -> f64 {
    let text = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn endpoints_streaming_usage_and_stop_strings() {
    let s = Server::start(&[]);
    let c = client();

    // GET endpoints.
    let h: Value = c.get(s.url("/health")).send().unwrap().json().unwrap();
    assert_eq!(h["status"], "ok");
    let m: Value = c.get(s.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "tiny-chat");
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(m["data"][0]["max_model_len"], 256);
    let doc: Value = c.get(s.url("/openapi.json")).send().unwrap().json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for p in ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"] {
        assert!(doc["paths"][p].is_object(), "{p} not in the OpenAPI document");
    }
    let docs = c.get(s.url("/docs/")).send().unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().unwrap().to_lowercase().contains("swagger"));
    let page = c.get(s.url("/")).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = page.text().unwrap();
    for id in ["id=\"prompt\"", "id=\"send\"", "id=\"messages\"", "id=\"model-name\"", "id=\"stats\""] {
        assert!(page.contains(id), "{id} missing from the page");
    }
    assert!(!page.contains("http://") && !page.contains("https://"), "the page must not load anything from the network");
    let metrics = c.get(s.url("/metrics")).send().unwrap();
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let metrics = metrics.text().unwrap();
    for name in ["awqc_requests_total", "awqc_prompt_tokens_total", "awqc_generation_tokens_total", "awqc_running_sequences", "awqc_waiting_sequences", "awqc_kv_blocks_used", "awqc_kv_blocks_free"] {
        assert!(metrics.contains(&format!("# TYPE {name} ")) && metrics.contains(&format!("\n{name} ")), "{name}:\n{metrics}");
    }
    let idle_blocks = metric(&c, &s, "awqc_kv_blocks_used");
    let requests0 = metric(&c, &s, "awqc_requests_total");

    // Chat, not streamed (greedy).
    let url = s.url("/v1/chat/completions");
    let greedy = json!({"temperature": 0, "max_tokens": 24});
    let (st, r) = post_json(&c, &url, &chat_body("Hello there", greedy.clone()));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["model"], "tiny-chat");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let u = &r["usage"];
    let (pt, ct) = (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap());
    // ChatML fallback around "Hello there", byte-level tokens: one per byte.
    let rendered = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(pt, rendered.len() as u64, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), pt + ct);
    assert!((1..=24).contains(&ct));
    let finish = r["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if ct == 24 { "length" } else { "stop" }, "{r}");

    // The same, streamed: same text; framing; role first; finish_reason last.
    let (evs, text) = stream_text(&c, &url, &chat_body("Hello there", json!({"temperature": 0, "max_tokens": 24, "stream": true})));
    assert_eq!(text, answer);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(evs[0]["object"], "chat.completion.chunk");
    let last = evs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    assert!(evs[..evs.len() - 1].iter().all(|e| e["choices"][0]["finish_reason"].is_null()));
    assert!(evs.iter().all(|e| e["id"] == evs[0]["id"] && e.get("usage").is_none()));

    // include_usage: one more chunk, empty choices, the same usage.
    let (evs, text) = stream_text(
        &c,
        &url,
        &chat_body("Hello there", json!({"temperature": 0, "max_completion_tokens": 24, "stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(text, answer);
    let last = evs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], r["usage"]);

    // Seeded sampling is reproducible.
    let sampled = json!({"temperature": 1.5, "top_p": 0.9, "top_k": 50, "seed": 1234, "max_tokens": 16});
    let a = post_json(&c, &url, &chat_body("Tell me", sampled.clone())).1;
    let b = post_json(&c, &url, &chat_body("Tell me", sampled)).1;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);

    // Stop strings: the text up to the first occurrence, finish_reason stop, streamed or not.
    let long = post_json(&c, &url, &chat_body("Write something", json!({"temperature": 0, "max_tokens": 40}))).1;
    let full = long["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "the model wrote too little to test stop strings: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = chat_body("Write something", json!({"temperature": 0, "max_tokens": 40, "stop": [stop.clone(), "\u{1}never"], "stream": stream}));
        let (text, reason) = if stream {
            let (evs, text) = stream_text(&c, &url, &body);
            (text, evs.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let r = post_json(&c, &url, &body).1;
            (r["choices"][0]["message"]["content"].as_str().unwrap().to_string(), r["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(text, expected, "stop {stop:?} stream {stream}");
        assert_eq!(reason, "stop");
    }

    // Completions: text, echo, streamed, token-id prompt.
    let curl = s.url("/v1/completions");
    let (st, r) = post_json(&c, &curl, &json!({"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let ctext = r["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(r["usage"]["prompt_tokens"], "Once upon a time".len());
    let r2 = post_json(&c, &curl, &json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "echo": true})).1;
    assert_eq!(r2["choices"][0]["text"].as_str().unwrap(), format!("Once upon a time{ctext}"));
    let (evs, stext) = stream_text(&c, &curl, &json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}));
    assert_eq!(stext, ctext);
    assert_eq!(evs.last().unwrap()["usage"], r["usage"]);
    assert_eq!(evs[evs.len() - 2]["choices"][0]["finish_reason"], r["choices"][0]["finish_reason"]);
    let ids: Vec<u32> = "Once upon a time".bytes().map(|b| b as u32 + 3).collect();
    let r3 = post_json(&c, &curl, &json!({"prompt": ids, "max_tokens": 12, "temperature": 0})).1;
    assert_eq!(r3["choices"][0]["text"], r["choices"][0]["text"], "byte b is token b + 3 in the synth tokenizer");

    // Counters moved; the cache is back to idle (the engine publishes its gauges after the step
    // that ended the last request, so poll briefly).
    assert!(metric(&c, &s, "awqc_requests_total") >= requests0 + 12.0);
    assert!(metric(&c, &s, "awqc_generation_tokens_total") > 0.0);
    wait_idle(&c, &s, idle_blocks);
}

/// Wait until no sequence runs and the KV cache is back to `idle_blocks` in use.
fn wait_idle(c: &Client, s: &Server, idle_blocks: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(c, s, "awqc_running_sequences") != 0.0 || metric(c, s, "awqc_waiting_sequences") != 0.0 || metric(c, s, "awqc_kv_blocks_used") != idle_blocks {
        assert!(Instant::now() < deadline, "the engine did not go back to idle");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_requests_are_json_errors_and_the_server_keeps_answering() {
    let s = Server::start(&["--max-body-bytes", "65536"]);
    let c = client();
    let url = s.url("/v1/chat/completions");
    let ok = json!([{"role": "user", "content": "hi"}]);
    let raw = |body: &str| {
        let r = c.post(&url).header("content-type", "application/json").body(body.to_string()).send().unwrap();
        let st = r.status().as_u16();
        (st, serde_json::from_str::<Value>(&r.text().unwrap()).expect("error body is JSON"))
    };
    for (body, what) in [("{\"messages\": [", "truncated JSON"), ("not json", "not JSON"), ("", "empty body"), ("[1, 2]", "an array")] {
        let (st, v) = raw(body);
        assert_eq!(st, 400, "{what}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}");
    }
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"messages": ok, "max_tokens": -5}), 400, "invalid_parameter", "negative max_tokens"),
        (json!({"messages": ok, "max_tokens": 0}), 400, "invalid_parameter", "zero max_tokens"),
        (json!({"messages": ok, "max_tokens": 2.5}), 400, "invalid_parameter", "non-integer max_tokens"),
        (json!({"messages": ok, "max_tokens": "12"}), 400, "invalid_parameter", "string max_tokens"),
        (json!({"messages": ok, "max_tokens": 1_000_000_000u64}), 400, "invalid_parameter", "huge max_tokens"),
        (json!({"messages": ok, "max_tokens": 1e300}), 400, "invalid_parameter", "absurd max_tokens"),
        (json!({"messages": ok, "temperature": -1}), 400, "invalid_parameter", "negative temperature"),
        (json!({"messages": ok, "temperature": "warm"}), 400, "invalid_parameter", "string temperature"),
        (json!({"messages": ok, "top_p": 0}), 400, "invalid_parameter", "top_p 0"),
        (json!({"messages": ok, "top_p": 1.01}), 400, "invalid_parameter", "top_p > 1"),
        (json!({"messages": ok, "n": 3}), 400, "invalid_parameter", "n = 3"),
        (json!({"messages": ok, "stream": "yes"}), 400, "invalid_parameter", "string stream"),
        (json!({"messages": ok, "stop": {"a": 1}}), 400, "invalid_parameter", "object stop"),
        (json!({"messages": [{"role": "wizard", "content": "x"}]}), 400, "invalid_parameter", "unknown role"),
        (json!({"messages": []}), 400, "invalid_parameter", "no messages"),
        (json!({"messages": "hi"}), 400, "invalid_parameter", "messages a string"),
        (json!({"prompt": "hi"}), 400, "invalid_parameter", "completions body on chat"),
        (json!({"messages": ok, "model": "gpt-4"}), 404, "model_not_found", "unknown model"),
        (json!({"messages": [{"role": "user", "content": "x".repeat(300)}]}), 400, "context_length_exceeded", "prompt over the session"),
    ];
    for (body, status, code, what) in &cases {
        let (st, v) = post_json(&c, &url, body);
        assert_error(st, &v, *status, code, what);
    }
    // Completions: the same rules.
    let curl = s.url("/v1/completions");
    for (body, status, code) in [
        (json!({"prompt": "hi", "max_tokens": -1}), 400, "invalid_parameter"),
        (json!({"prompt": ["a", "b"]}), 400, "invalid_parameter"),
        (json!({"prompt": [100000]}), 400, "invalid_parameter"),
        (json!({"prompt": "x".repeat(400)}), 400, "context_length_exceeded"),
        (json!({"prompt": "hi", "model": "other"}), 404, "model_not_found"),
        (json!({}), 400, "invalid_parameter"),
    ] {
        let (st, v) = post_json(&c, &curl, &body);
        assert_error(st, &v, status, code, &body.to_string());
    }
    // A body over --max-body-bytes: 413, JSON.
    let big = json!({"messages": [{"role": "user", "content": "y".repeat(200_000)}]});
    let (st, v) = post_json(&c, &url, &big);
    assert_error(st, &v, 413, "body_too_large", "oversized body");
    // Unknown route and wrong method: JSON too.
    let r = c.get(s.url("/v1/nope")).send().unwrap();
    let st = r.status().as_u16();
    assert_error(st, &r.json().unwrap(), 404, "not_found", "unknown route");
    let r = c.get(&url).send().unwrap();
    let st = r.status().as_u16();
    assert_error(st, &r.json().unwrap(), 405, "method_not_allowed", "GET on a POST route");
    let r = c.delete(s.url("/v1/models")).send().unwrap();
    let st = r.status().as_u16();
    assert_error(st, &r.json().unwrap(), 405, "method_not_allowed", "DELETE /v1/models");
    // Still answering.
    let (st, v) = post_json(&c, &url, &json!({"messages": ok, "max_tokens": 4, "temperature": 0}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.get(s.url("/health")).send().unwrap().status(), 200);
}

#[test]
fn api_keys_protect_v1_but_not_health() {
    let s = Server::start(&["--api-keys", "key-one", "key-two"]);
    let c = client();
    assert_eq!(c.get(s.url("/health")).send().unwrap().status(), 200);
    assert_eq!(c.get(s.url("/metrics")).send().unwrap().status(), 200);
    assert_eq!(c.get(s.url("/")).send().unwrap().status(), 200);
    let body = chat_body("hi", json!({"max_tokens": 3, "temperature": 0}));
    for (auth, what) in [(None, "no key"), (Some("Bearer wrong"), "wrong key"), (Some("key-one"), "no Bearer"), (Some("Bearer "), "empty key")] {
        for path in ["/v1/models", "/v1/chat/completions", "/v1/completions"] {
            let mut rq = if path == "/v1/models" { c.get(s.url(path)) } else { c.post(s.url(path)).json(&body) };
            if let Some(a) = auth {
                rq = rq.header("authorization", a);
            }
            let r = rq.send().unwrap();
            let st = r.status().as_u16();
            assert_error(st, &r.json().unwrap(), 401, "invalid_api_key", &format!("{what} on {path}"));
        }
    }
    for key in ["key-one", "key-two"] {
        let r = c.get(s.url("/v1/models")).bearer_auth(key).send().unwrap();
        assert_eq!(r.status(), 200);
        let r = c.post(s.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn loading_gives_503_then_ready() {
    // Also: --model-name and --chat-template override the defaults.
    let tpl = std::env::temp_dir().join(format!("awqc-serve-test-{}-template.jinja", std::process::id()));
    std::fs::write(&tpl, "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}").unwrap();
    let s = Server::start_with(&["--load-delay-ms", "3000", "--model-name", "custom", "--chat-template", tpl.to_str().unwrap()], false);
    let c = client();
    let r = c.get(s.url("/health")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().unwrap()["status"], "loading");
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &json!({"model": "custom", "messages": [{"role": "user", "content": "hi"}]}));
    assert_error(st, &v, 503, "model_loading", "chat while loading");
    let r = c.get(s.url("/v1/models")).send().unwrap();
    assert_eq!(r.status(), 503);
    // The page and the docs do not need the model.
    assert_eq!(c.get(s.url("/")).send().unwrap().status(), 200);
    assert_eq!(c.get(s.url("/openapi.json")).send().unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get(s.url("/health")).send().unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m: Value = c.get(s.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(m["data"][0]["id"], "custom");
    let body = json!({"model": "custom", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], "max_tokens": 2});
    let (st, v) = post_json(&c, &s.url("/v1/chat/completions"), &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], "[system]S[user]hi>".len(), "{v}");
    let _ = std::fs::remove_file(&tpl);
}

#[test]
fn a_model_that_fails_to_load_ends_the_server_with_its_error() {
    // The tokenizer is fine (checked before the bind), the weights are truncated: the server binds,
    // fails in the background load, and exits with the input-error code.
    let dir = std::env::temp_dir().join(format!("awqc-serve-test-{}", std::process::id())).join("broken");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny_model().join(f), dir.join(f)).unwrap();
    }
    let w = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let out = awqc().args(["serve", "--server-port", "0", "--model"]).arg(&dir).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("awqc serve: bound http://") && err.contains("awqc: error:"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    // A bad flag is refused before anything is bound or loaded.
    let out = awqc().args(["serve", "--quant-policy", "3", "--model"]).arg(tiny_model()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Read SSE events from a live response until `n` events arrived.
fn read_events(r: &mut Response, n: usize) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 256];
    while got.matches("\n\n").count() < n {
        let k = r.read(&mut buf).unwrap();
        assert!(k > 0, "stream ended early: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
    got
}

#[test]
fn disconnect_frees_blocks_overload_is_429_and_sigterm_exits_0() {
    // One sequence at a time and at most two requests in the engine; a longer session so a
    // request runs long enough to be observed.
    let mut s = Server::start(&["--session-len", "4096", "--max-batch-size", "1", "--max-concurrent-requests", "2"]);
    let c = client();
    let url = s.url("/v1/chat/completions");
    let idle_blocks = metric(&c, &s, "awqc_kv_blocks_used");
    let long = |stream: bool| chat_body("Go on forever", json!({"temperature": 0, "max_tokens": 4000, "stream": stream, "ignore_eos": true}));

    // A client that goes away mid-stream: its sequence is aborted, its blocks freed.
    let gen0 = metric(&c, &s, "awqc_generation_tokens_total");
    let mut r = post(&c, &url, &long(true));
    assert_eq!(r.status(), 200);
    read_events(&mut r, 3);
    drop(r);
    wait_idle(&c, &s, idle_blocks);
    let generated = metric(&c, &s, "awqc_generation_tokens_total") - gen0;
    eprintln!("disconnect: {generated} tokens generated before the abort");
    assert!(generated < 3900.0, "the sequence ran to the end: not aborted");

    // Over --max-concurrent-requests: 429 JSON for the third concurrent request.
    let mut held: Vec<Response> = Vec::new();
    for _ in 0..2 {
        let mut r = post(&c, &url, &long(true));
        assert_eq!(r.status(), 200);
        read_events(&mut r, 1);
        held.push(r);
    }
    let (st, v) = post_json(&c, &url, &long(false));
    // Both held requests may have finished already on a fast machine; then this one ran.
    if st != 200 {
        assert_error(st, &v, 429, "overloaded", "third concurrent request");
    } else {
        eprintln!("overload: the held requests finished before the third was sent");
    }

    // SIGTERM with a stream running: it ends normally (finish_reason, [DONE]), new connections
    // are refused, the process exits 0. (The second request, still waiting, is dropped first.)
    let mut r = held.remove(0);
    drop(held);
    let t0 = Instant::now();
    s.sigterm();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    eprintln!("sigterm: the running stream ended {:.2}s after SIGTERM", t0.elapsed().as_secs_f64());
    assert!(rest.ends_with("data: [DONE]\n\n"), "{}", &rest[rest.len().saturating_sub(300)..]);
    let events: Vec<&str> = rest.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last: Value = serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "the stream did not finish normally: {last}");
    let status = s.wait_exit(60);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", s.stderr.lock().unwrap());
    assert!(c.get(s.url("/health")).send().is_err());
}

#[test]
fn chat_cli_reads_piped_turns() {
    // The CLI's first answer equals the server's answer to the same conversation.
    let s = Server::start(&[]);
    let c = client();
    let r = post_json(&c, &s.url("/v1/chat/completions"), &chat_body("Hello there", json!({"temperature": 0, "max_tokens": 10}))).1;
    let want = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    drop(s);
    let mut child = awqc()
        .args(["chat", "--model"])
        .arg(tiny_model())
        .args(["--session-len", "256", "--max-new-tokens", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\n\nsecond turn\nexit\nnot sent\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("{want}\n")), "{stdout:?} vs {want:?}");
    // Two answers, each ended by a newline; nothing after `exit`.
    let second = &stdout[want.len() + 1..];
    assert!(second.ends_with('\n') && second.len() > 1, "{stdout:?}");
    // EOF also quits.
    let mut child = awqc().args(["chat", "--model"]).arg(tiny_model()).args(["--max-new-tokens", "2"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
}
