//! The engine thread: continuous batching over the block KV cache.
//!
//! One thread owns the model and the cache. Requests arrive through a channel and wait in a FIFO
//! queue; at every step boundary the scheduler
//! 1. drops the sequences whose client went away (the `events` receiver was dropped: a closed
//!    HTTP stream, a matched stop string) and gives their KV blocks back at once;
//! 2. admits waiting requests while fewer than `max_batch_size` run and the cache can hold each
//!    one's whole budget (prompt + max_tokens blocks are *reserved* at admission, so a running
//!    sequence never runs out of blocks and is never evicted: when the cache is full, new requests
//!    wait);
//! 3. runs **one batched step** ([`Llama::step`]) over every running sequence: a decoding
//!    sequence contributes its last token, a prefilling one the next chunk of its prompt (at most
//!    `prefill_chunk` prompt tokens per step in all, so long prompts do not stall running decodes);
//! 4. samples the next token of every sequence whose prompt is complete and streams it.
//!
//! Sampling is per request (its own seeded generator), so a request's tokens do not depend on
//! what else runs; with the host model's batch-invariant kernels a greedy request decodes the same
//! tokens alone or among others.

use crate::engine::generate::sample;
pub use crate::engine::generate::SamplerConfig as SamplingParams;
use crate::engine::host::StepItem;
use crate::engine::kv_cache::{KvCache, QuantPolicy, SeqState, BLOCK_LEN};
use crate::engine::llama::Llama;
use crate::error::{Error, Result};
use crate::model::synth::SplitMix;
use burn::tensor::backend::Backend;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// One generation request.
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// Clamped by the engine to `session_len - prompt.len()`.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Token ids that end the sequence (EOS, `<|im_end|>`, ...); not emitted.
    pub stop_ids: Vec<u32>,
    /// Where the tokens go. Dropping the receiver aborts the request.
    pub events: UnboundedSender<GenEvent>,
    /// Restricts the tokens that may be sampled (tool-call and JSON grammars).
    pub constraint: Option<Box<dyn Constraint>>,
}

/// A per-request restriction of the sampler, run in the engine thread: `apply` masks the logits
/// of the next token (sets forbidden ones to -inf; at least one must stay finite), `commit`
/// reports the token that was sampled.
pub trait Constraint: Send {
    fn apply(&mut self, logits: &mut [f32]);
    fn commit(&mut self, token: u32);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenEvent {
    Token(u32),
    Done(FinishReason),
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token.
    Stop,
    /// `max_tokens` (or the session length) reached.
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// More than `max_concurrent_requests` running + waiting.
    Overloaded { limit: usize },
    /// The prompt does not fit the session (or the whole KV cache).
    PromptTooLong { prompt: usize, limit: usize },
    ShuttingDown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Overloaded { limit } => write!(f, "the server is at capacity ({limit} concurrent requests); retry later"),
            SubmitError::PromptTooLong { prompt, limit } => {
                write!(f, "the prompt has {prompt} tokens; this server's context (session length) is {limit} tokens, and at least one must be left to generate")
            }
            SubmitError::ShuttingDown => write!(f, "the server is shutting down"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_batch_size: usize,
    pub max_concurrent_requests: usize,
    /// Most tokens (prompt + generated) of one sequence.
    pub session_len: usize,
    /// Most prompt tokens prefilled per step, over all sequences.
    pub prefill_chunk: usize,
    pub quant_policy: QuantPolicy,
    pub cache_max_entry_count: f64,
}

impl SchedulerConfig {
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [("--max-batch-size", self.max_batch_size), ("--max-concurrent-requests", self.max_concurrent_requests), ("--session-len", self.session_len), ("--prefill-chunk", self.prefill_chunk)] {
            if v == 0 {
                return Err(Error::usage(format!("{flag} must be at least 1")));
            }
        }
        if self.session_len < 2 {
            return Err(Error::usage("--session-len must be at least 2 (one prompt token and one generated)"));
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    pub requests_total: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
}

#[derive(Default)]
struct Shared {
    requests_total: AtomicU64,
    prompt_tokens_total: AtomicU64,
    generation_tokens_total: AtomicU64,
    /// Accepted and not finished (running + waiting); `submit` counts it up.
    in_flight: AtomicUsize,
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_blocks_used: AtomicUsize,
    kv_blocks_free: AtomicUsize,
    /// Blocks of the whole cache: a prompt needing more can never run.
    kv_blocks_total: AtomicUsize,
    shutting_down: AtomicBool,
}

enum Command {
    Submit(GenRequest),
    Shutdown,
}

/// The HTTP layer's handle on the engine thread (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    cfg: Arc<SchedulerConfig>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Queue a request (never blocks). Its tokens arrive on `req.events`.
    pub fn submit(&self, req: GenRequest) -> std::result::Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let limit = self.cfg.session_len;
        let cache_tokens = self.shared.kv_blocks_total.load(Ordering::SeqCst) * BLOCK_LEN;
        if req.prompt.is_empty() || req.prompt.len() >= limit || req.prompt.len() >= cache_tokens {
            return Err(SubmitError::PromptTooLong { prompt: req.prompt.len(), limit: limit.min(cache_tokens) });
        }
        let max = self.cfg.max_concurrent_requests;
        // Count the request in before it is sent, so a burst cannot overshoot the limit.
        if self.shared.in_flight.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Overloaded { limit: max });
        }
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Command::Submit(req)).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    pub fn metrics(&self) -> EngineMetrics {
        let s = &self.shared;
        EngineMetrics {
            requests_total: s.requests_total.load(Ordering::SeqCst),
            prompt_tokens_total: s.prompt_tokens_total.load(Ordering::SeqCst),
            generation_tokens_total: s.generation_tokens_total.load(Ordering::SeqCst),
            running: s.running.load(Ordering::SeqCst),
            waiting: s.waiting.load(Ordering::SeqCst),
            kv_blocks_used: s.kv_blocks_used.load(Ordering::SeqCst),
            kv_blocks_free: s.kv_blocks_free.load(Ordering::SeqCst),
        }
    }

    pub fn session_len(&self) -> usize {
        self.cfg.session_len
    }

    /// Stop admitting: new submissions are refused, queued ones get an error, running sequences
    /// finish; then the thread exits.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Wait for the engine thread (after [`EngineHandle::shutdown`]).
    pub fn join(self) {
        let h = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

/// Start the engine thread for `model`.
pub fn spawn<B: Backend>(model: Llama<B>, cfg: SchedulerConfig) -> Result<EngineHandle> {
    cfg.check()?;
    let cache = model.new_cache(cfg.quant_policy, cfg.cache_max_entry_count, cfg.session_len * cfg.max_batch_size)?;
    let shared = Arc::new(Shared::default());
    shared.kv_blocks_total.store(cache.limit(), Ordering::SeqCst);
    shared.kv_blocks_free.store(cache.free_blocks(), Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let cfg = Arc::new(cfg);
    let engine = Engine { model, cache, cfg: cfg.clone(), shared: shared.clone(), rx, waiting: VecDeque::new(), running: Vec::new(), shutdown: false };
    let thread = std::thread::Builder::new()
        .name("awqc-engine".into())
        .spawn(move || engine.run())
        .map_err(|e| Error::internal(format!("cannot start the engine thread: {e}")))?;
    Ok(EngineHandle { tx, shared, cfg, thread: Arc::new(Mutex::new(Some(thread))) })
}

/// A running sequence.
struct Running {
    req: GenRequest,
    seq: SeqState,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Tokens generated so far; the last one is fed at the next step.
    generated: Vec<u32>,
    max_tokens: usize,
    /// Blocks reserved for the whole sequence at admission.
    reserved: usize,
    rng: SplitMix,
}

struct Engine<B: Backend> {
    model: Llama<B>,
    cache: KvCache,
    cfg: Arc<SchedulerConfig>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    waiting: VecDeque<GenRequest>,
    running: Vec<Running>,
    shutdown: bool,
}

impl<B: Backend> Engine<B> {
    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if self.shutdown {
                    break;
                }
                // Idle: block until something arrives.
                match self.rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => break,
                }
            }
            while let Ok(c) = self.rx.try_recv() {
                self.command(c);
            }
            self.drop_abandoned();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
        self.publish();
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(r) => self.waiting.push_back(r),
            Command::Shutdown => self.shutdown = true,
        }
        if self.shutdown {
            for r in self.waiting.drain(..) {
                let _ = r.events.send(GenEvent::Error("the server is shutting down".into()));
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Requests whose receiver is gone: free their blocks now.
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        let gone = before - self.waiting.len();
        self.shared.waiting.fetch_sub(gone, Ordering::SeqCst);
        self.shared.in_flight.fetch_sub(gone, Ordering::SeqCst);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.events.is_closed() {
                let r = self.running.remove(i);
                self.finish(r, None);
            } else {
                i += 1;
            }
        }
    }

    fn admit(&mut self) {
        let limit = self.cache.limit();
        let mut reserved: usize = self.running.iter().map(|r| r.reserved).sum();
        while self.running.len() < self.cfg.max_batch_size {
            let Some(front) = self.waiting.front() else { break };
            let p = front.prompt.len();
            // Clamp the generation budget to the session and to the whole cache.
            let max_tokens = front.max_tokens.min(self.cfg.session_len - p).min(limit * BLOCK_LEN - p);
            let need = (p + max_tokens).div_ceil(BLOCK_LEN);
            if reserved + need > limit {
                break; // wait for blocks: FIFO, so a large request is not starved by small ones
            }
            let req = self.waiting.pop_front().expect("front exists");
            reserved += need;
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.shared.requests_total.fetch_add(1, Ordering::SeqCst);
            self.shared.prompt_tokens_total.fetch_add(p as u64, Ordering::SeqCst);
            let seq = SeqState::new(&self.model.rope, p);
            let rng = SplitMix(req.sampling.seed);
            if max_tokens == 0 {
                let _ = req.events.send(GenEvent::Done(FinishReason::Length));
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            self.running.push(Running { req, seq, prefilled: 0, generated: Vec::new(), max_tokens, reserved: need, rng });
        }
    }

    /// One batched step over every running sequence.
    fn step(&mut self) {
        let mut budget = self.cfg.prefill_chunk;
        // (index into running, tokens fed this step)
        let mut plan: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if r.prefilled < r.req.prompt.len() {
                let n = (r.req.prompt.len() - r.prefilled).min(budget);
                if n > 0 {
                    budget -= n;
                    plan.push((i, r.req.prompt[r.prefilled..r.prefilled + n].to_vec()));
                }
            } else if let Some(&last) = r.generated.last() {
                plan.push((i, vec![last]));
            }
        }
        if plan.is_empty() {
            return;
        }
        let result = {
            // Disjoint &mut borrows of the planned sequences, in plan order.
            let mut seqs: Vec<Option<&mut SeqState>> = self.running.iter_mut().map(|r| Some(&mut r.seq)).collect();
            let mut items: Vec<StepItem> = plan.iter().map(|(i, toks)| StepItem { seq: seqs[*i].take().expect("each sequence planned once"), tokens: toks }).collect();
            self.model.step(&mut self.cache, &mut items)
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed step leaves the planned sequences in an unknown state: end them all.
                let msg = format!("the engine step failed: {e}");
                let mut idx: Vec<usize> = plan.iter().map(|p| p.0).collect();
                idx.sort_unstable();
                for i in idx.into_iter().rev() {
                    let r = self.running.remove(i);
                    self.finish(r, Some(GenEvent::Error(msg.clone())));
                }
                return;
            }
        };
        let mut finished: Vec<(usize, GenEvent)> = Vec::new();
        for ((i, toks), logits) in plan.iter().zip(logits) {
            let r = &mut self.running[*i];
            if r.prefilled < r.req.prompt.len() {
                r.prefilled += toks.len();
                if r.prefilled < r.req.prompt.len() {
                    continue; // more prompt to go; these logits are not needed
                }
            }
            let next = match r.req.constraint.as_mut() {
                Some(c) => {
                    let mut logits = logits;
                    c.apply(&mut logits);
                    let next = sample(&logits, &r.req.sampling, &mut r.rng);
                    c.commit(next);
                    next
                }
                None => sample(&logits, &r.req.sampling, &mut r.rng),
            };
            if r.req.stop_ids.contains(&next) {
                finished.push((*i, GenEvent::Done(FinishReason::Stop)));
                continue;
            }
            r.generated.push(next);
            self.shared.generation_tokens_total.fetch_add(1, Ordering::SeqCst);
            if r.req.events.send(GenEvent::Token(next)).is_err() {
                finished.push((*i, GenEvent::Error(String::new()))); // receiver gone: abort
                continue;
            }
            if r.generated.len() >= r.max_tokens {
                finished.push((*i, GenEvent::Done(FinishReason::Length)));
            }
        }
        finished.sort_by_key(|f| f.0);
        for (i, ev) in finished.into_iter().rev() {
            let r = self.running.remove(i);
            self.finish(r, Some(ev));
        }
    }

    /// End a running sequence: send its last event, free its blocks.
    fn finish(&mut self, mut r: Running, event: Option<GenEvent>) {
        if let Some(ev) = event {
            let _ = r.req.events.send(ev);
        }
        self.cache.release(&mut r.seq);
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn publish(&self) {
        let s = &self.shared;
        s.running.store(self.running.len(), Ordering::SeqCst);
        s.kv_blocks_used.store(self.cache.blocks_in_use(), Ordering::SeqCst);
        s.kv_blocks_free.store(self.cache.free_blocks(), Ordering::SeqCst);
    }
}
