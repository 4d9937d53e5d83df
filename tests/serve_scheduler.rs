//! The engine thread's continuous batching on a small random INT4 model: concurrent greedy
//! requests get exactly the tokens each gets alone, an abandoned request frees its KV blocks,
//! capacity and prompt-length limits are refused with the right error, shutdown drains.

use awqc::engine::device::CpuBackend;
use awqc::engine::host::{Activations, HostLlama};
use awqc::engine::kv_cache::QuantPolicy;
use awqc::engine::llama::Llama;
use awqc::model::config::Arch;
use awqc::model::synth;
use awqc::quant::int4::QuantParams;
use awqc::quant::qmodel::random_quantized_model;
use awqc::serve::scheduler::{spawn, EngineHandle, FinishReason, GenEvent, GenRequest, SamplingParams, SchedulerConfig, SubmitError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const VOCAB: usize = 90;

fn engine(max_batch_size: usize, max_concurrent_requests: usize) -> EngineHandle {
    let c = synth::config(Arch::Llama, 128, 192, 2, 4, 2, VOCAB, true);
    let qm = random_quantized_model(&c, QuantParams::new(4, 64).unwrap(), 21).unwrap();
    let host = HostLlama::from_quantized(&c, &qm.globals, Activations::Int8, |i| Ok(qm.layers[i].clone())).unwrap();
    let model = Llama::<CpuBackend>::from_host_model(host, &Default::default());
    let cfg = SchedulerConfig {
        max_batch_size,
        max_concurrent_requests,
        session_len: 256,
        prefill_chunk: 16,
        quant_policy: QuantPolicy::None,
        cache_max_entry_count: 0.01,
    };
    spawn(model, cfg).unwrap()
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
}

fn prompt(i: usize) -> Vec<u32> {
    (0..(3 + 11 * i)).map(|j| ((j * 13 + i * 7 + 5) % VOCAB) as u32).collect()
}

fn submit(e: &EngineHandle, p: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> UnboundedReceiver<GenEvent> {
    let (tx, rx) = unbounded_channel();
    e.submit(GenRequest { prompt: p, max_tokens, sampling, stop_ids: vec![], events: tx, constraint: None }).unwrap();
    rx
}

/// All tokens until Done; panics on an error or a closed channel.
fn collect(rx: &mut UnboundedReceiver<GenEvent>) -> (Vec<u32>, FinishReason) {
    let mut toks = Vec::new();
    loop {
        match rx.blocking_recv() {
            Some(GenEvent::Token(t)) => toks.push(t),
            Some(GenEvent::Done(r)) => return (toks, r),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn wait_until(e: &EngineHandle, what: &str, f: impl Fn(&awqc::serve::scheduler::EngineMetrics) -> bool) {
    let t0 = Instant::now();
    while !f(&e.metrics()) {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {:?}", e.metrics());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_greedy_requests_equal_each_alone() {
    let e = engine(16, 64);
    let n = 10;
    let alone: Vec<Vec<u32>> = (0..n).map(|i| collect(&mut submit(&e, prompt(i), 12, greedy())).0).collect();
    assert!(alone.iter().all(|t| t.len() == 12));
    // All at once: they share steps (prefill chunks of some while others decode).
    let mut rxs: Vec<_> = (0..n).map(|i| submit(&e, prompt(i), 12, greedy())).collect();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (toks, reason) = collect(rx);
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(toks, alone[i], "request {i}: tokens differ from the request alone");
    }
    wait_until(&e, "idle", |m| m.running == 0 && m.waiting == 0 && m.kv_blocks_used == 0);
    let m = e.metrics();
    assert_eq!(m.requests_total, 2 * n as u64);
    assert_eq!(m.generation_tokens_total, 2 * n as u64 * 12);
    assert_eq!(m.prompt_tokens_total, 2 * (0..n).map(|i| prompt(i).len() as u64).sum::<u64>());
    e.shutdown();
    e.join();
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_ids_stop() {
    let e = engine(4, 8);
    let s = SamplingParams { temperature: 1.0, top_p: 0.9, top_k: 0, seed: 42 };
    let a = collect(&mut submit(&e, prompt(2), 20, s)).0;
    let b = collect(&mut submit(&e, prompt(2), 20, s)).0;
    assert_eq!(a, b);
    let c = collect(&mut submit(&e, prompt(2), 20, SamplingParams { seed: 43, ..s })).0;
    assert_ne!(a, c, "a different seed should draw differently");
    // A stop id: the sequence ends before emitting it.
    let (tx, mut rx) = unbounded_channel();
    e.submit(GenRequest { prompt: prompt(2), max_tokens: 20, sampling: s, stop_ids: vec![a[3]], events: tx, constraint: None }).unwrap();
    let (toks, reason) = collect(&mut rx);
    let first = a.iter().position(|&t| t == a[3]).unwrap();
    assert_eq!((toks.as_slice(), reason), (&a[..first], FinishReason::Stop));
    e.shutdown();
    e.join();
}

#[test]
fn abandoned_requests_free_their_blocks_and_others_go_on() {
    let e = engine(8, 16);
    let mut keep = submit(&e, prompt(1), 40, greedy());
    let mut dropped: Vec<_> = (0..5).map(|i| submit(&e, prompt(i + 2), 200, greedy())).collect();
    // Let them start, then the clients go away mid-stream.
    for rx in dropped.iter_mut() {
        assert!(matches!(rx.blocking_recv(), Some(GenEvent::Token(_))));
    }
    drop(dropped);
    let (toks, _) = collect(&mut keep);
    assert_eq!(toks.len(), 40);
    wait_until(&e, "all blocks free", |m| m.kv_blocks_used == 0 && m.running == 0);
    // The server still answers.
    assert_eq!(collect(&mut submit(&e, prompt(0), 5, greedy())).0.len(), 5);
    e.shutdown();
    e.join();
}

#[test]
fn limits_are_refused_with_the_right_error() {
    let e = engine(1, 2);
    let too_long: Vec<u32> = vec![1; 256];
    let (tx, _rx) = unbounded_channel();
    let err = e.submit(GenRequest { prompt: too_long, max_tokens: 1, sampling: greedy(), stop_ids: vec![], events: tx, constraint: None }).unwrap_err();
    assert_eq!(err, SubmitError::PromptTooLong { prompt: 256, limit: 256 });
    // Two in flight (one runs, one waits): the third is refused.
    let mut a = submit(&e, prompt(1), 30, greedy());
    let mut b = submit(&e, prompt(2), 30, greedy());
    let (tx, _rx) = unbounded_channel();
    let err = e.submit(GenRequest { prompt: prompt(3), max_tokens: 3, sampling: greedy(), stop_ids: vec![], events: tx, constraint: None }).unwrap_err();
    assert_eq!(err, SubmitError::Overloaded { limit: 2 });
    assert_eq!(collect(&mut a).0.len(), 30);
    assert_eq!(collect(&mut b).0.len(), 30);
    // A max_tokens beyond the session is clamped to it.
    let (toks, reason) = collect(&mut submit(&e, prompt(0), 10_000, greedy()));
    assert_eq!((toks.len(), reason), (256 - prompt(0).len(), FinishReason::Length));
    e.shutdown();
    let (tx, _rx) = unbounded_channel();
    assert_eq!(e.submit(GenRequest { prompt: prompt(0), max_tokens: 1, sampling: greedy(), stop_ids: vec![], events: tx, constraint: None }).unwrap_err(), SubmitError::ShuttingDown);
    e.join();
}
