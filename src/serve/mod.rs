//! `awqc serve` and `awqc chat`: the engine thread with continuous batching (`scheduler`), chat
//! templates rendered as transformers does (`template`), and the OpenAI-compatible HTTP API
//! (`http`, `openai`), with streaming detokenization (`detok`) and the shared model loading
//! (`model`). `chat` is the terminal REPL.
//!
//! `serve` binds the port first, then loads the model in the background: until it is loaded every
//! `/v1` request gets 503 and `/health` says `loading`. When it is ready, one line
//! `awqc serve: listening on http://HOST:PORT (model NAME)` goes to stdout. SIGTERM or Ctrl-C
//! stops accepting connections, lets the running sequences finish (their streams end normally),
//! stops the engine and exits 0; a second Ctrl-C exits at once (130).
pub mod chat;
pub mod detok;
pub mod grammar;
pub mod http;
pub mod model;
pub mod openai;
pub mod scheduler;
pub mod template;
pub mod toolcall;
pub mod tools;

use crate::error::{Error, Result};
use http::{AppState, Ready};
use model::{load_engine, EngineOptions, Prompter};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `awqc serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub engine: EngineOptions,
    pub host: String,
    /// 0 = any free port (the listening line says which).
    pub port: u16,
    /// Empty: no authentication.
    pub api_keys: Vec<String>,
    pub model_name: String,
    /// Largest request body (bytes).
    pub body_limit: usize,
    /// Wait this long before loading (to test the 503-while-loading path).
    pub load_delay: Duration,
    /// `--tool-call-parser`: auto (from the chat template), hermes, llama3, internlm2.
    pub tool_call_parser: String,
}

/// Run the server until SIGTERM / Ctrl-C (or a failed model load, returned as the error).
pub fn run(o: ServeOptions) -> Result<()> {
    o.engine.check()?;
    if o.api_keys.iter().any(|k| k.trim().is_empty()) {
        return Err(Error::usage("--api-keys: a key must not be empty"));
    }
    // The tokenizer and the chat template are quick to read: their errors come before the bind.
    let mut prompter = Prompter::load(&o.engine.model, o.engine.chat_template.as_deref())?;
    // Function calling: the grammar vocabulary (a trie of the model's token bytes) and the syntax.
    let env = grammar::GrammarEnv::new(&o.engine.model.join("tokenizer.json"), prompter.tok.vocab_size(), prompter.stop_ids())?;
    let setup = toolcall::ToolSetup::new(&o.tool_call_parser, &prompter.template_text, prompter.template_supports_tools(), Arc::new(env))
        .map_err(|e| Error::usage(format!("--tool-call-parser: {e}")))?;
    crate::progress::status(&format!("awqc serve: {}", setup.describe()));
    prompter.tools = Some(setup);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("awqc-http")
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(serve(o, prompter))
}

/// Resolves on the first SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn serve(o: ServeOptions, mut prompter: Prompter) -> Result<()> {
    let where_ = format!("--server-name {} --server-port {}", o.host, o.port);
    let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await.map_err(|e| Error::io(&where_, e))?;
    let addr = listener.local_addr().map_err(|e| Error::io(&where_, e))?;
    let mut st = AppState::new(o.model_name.clone(), o.api_keys.clone());
    st.body_limit = o.body_limit;
    let state = Arc::new(st);
    crate::progress::status(&format!(
        "awqc serve: bound http://{addr}; loading {} on {:?} (requests get 503 until it is loaded; chat template: {})",
        o.engine.model.display(),
        o.engine.device,
        prompter.template_source
    ));

    // Load in the background; a failure ends the server with that error.
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<Error>();
    {
        let state = state.clone();
        let eo = o.engine.clone();
        let name = o.model_name.clone();
        let keys = !o.api_keys.is_empty();
        let delay = o.load_delay;
        std::thread::Builder::new()
            .name("awqc-load".into())
            .spawn(move || {
                std::thread::sleep(delay);
                let t0 = std::time::Instant::now();
                match load_engine(&eo) {
                    Ok(le) => {
                        prompter.add_stop_id(le.eos);
                        let ready = Ready { engine: le.handle.clone(), prompter: Arc::new(prompter), session_len: le.session_len };
                        if state.set_ready(ready) {
                            crate::progress::status(&format!(
                                "awqc serve: loaded in {:.1}s on {:?}; session length {} tokens; API keys {}; docs at http://{addr}/docs, chat page at http://{addr}/",
                                t0.elapsed().as_secs_f64(),
                                le.device,
                                le.session_len,
                                if keys { "required" } else { "off" }
                            ));
                            println!("awqc serve: listening on http://{addr} (model {name})");
                            let _ = std::io::stdout().flush();
                        } else {
                            le.handle.shutdown();
                        }
                    }
                    Err(e) => {
                        let _ = fail_tx.send(e);
                    }
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the loader thread: {e}")))?;
    }

    let failure: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let to_join: Arc<Mutex<Option<scheduler::EngineHandle>>> = Arc::new(Mutex::new(None));
    let shutdown = {
        let state = state.clone();
        let failure = failure.clone();
        let to_join = to_join.clone();
        async move {
            let load_failed = async {
                match fail_rx.await {
                    Ok(e) => e,
                    // The loader succeeded (and dropped the sender): never resolve.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signal() => {
                    crate::progress::status("awqc serve: shutting down: no new requests; finishing the running ones (Ctrl-C again to exit at once)");
                }
                e = load_failed => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            if let Some(engine) = state.begin_shutdown() {
                engine.shutdown();
                *to_join.lock().unwrap_or_else(|p| p.into_inner()) = Some(engine);
            }
            tokio::spawn(async {
                signal().await;
                eprintln!("awqc serve: interrupted");
                std::process::exit(130);
            });
        }
    };
    axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io(format!("http://{addr}"), e))?;
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let engine = to_join.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(engine) = engine {
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    }
    crate::progress::status("awqc serve: stopped");
    Ok(())
}
