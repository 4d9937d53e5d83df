//! The AWQ pipeline on small in-memory models: folding preserves the function, the search restarts
//! every grid point from the original weights, AWQ beats RTN, and the output is deterministic.

use awqc::engine::device::CpuBackend;
use awqc::engine::llama::{causal_mask, download, upload, Attention, LinearB, RopeTables};
use awqc::engine::rope::Rope;
use awqc::model::arch::{LayerWeights, LinearKind, ScaleGroup};
use awqc::model::config::{Arch, ModelConfig};
use awqc::model::synth::{self, SplitMix};
use awqc::quant::fold::fold_group;
use awqc::quant::int4::QuantParams;
use awqc::quant::chunks::SpillPolicy;
use awqc::quant::pipeline::{quantize, MemSource, Mode, QuantReport, QuantizeOptions};
use awqc::quant::resume::JobState;
use awqc::quant::qmodel::{CollectSink, QuantizedModel};
use awqc::quant::chunks::Chunks;
use awqc::quant::search::{scaled_fake_quant, search_group, sq_err_sum, Inspect};
use burn::tensor::Tensor;

#[path = "support/reference.rs"]
mod reference;

type B = CpuBackend;

fn rel_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let m = b.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    a.iter().flatten().zip(b.iter().flatten()).fold(0f64, |e, (x, y)| e.max((x - y).abs())) / m
}

#[test]
fn folding_random_scales_preserves_logits() {
    // MHA (so v->o folds too) and a GQA Qwen2 with biases.
    for c in [synth::config(Arch::Llama, 64, 96, 2, 4, 4, 50, true), synth::config(Arch::Qwen2, 64, 96, 2, 4, 2, 50, false)] {
        let g = synth::globals(&c, 7);
        let layers: Vec<LayerWeights> = (0..c.num_hidden_layers).map(|i| synth::layer(&c, 7, i)).collect();
        let ids: Vec<u32> = (0..9).map(|i| (i * 13 % 50) as u32).collect();
        let before = reference::reference_logits(&c, &g, &layers, &ids);
        let mut folded = layers.clone();
        let mut r = SplitMix(99);
        for l in folded.iter_mut() {
            for grp in ScaleGroup::for_model(&c) {
                let k = grp.consumers()[0].shape(&c).1;
                // Scales spanning e^-2 .. e^2.
                let s: Vec<f64> = (0..k).map(|_| ((r.uniform() * 2.0) as f64).exp()).collect();
                fold_group(l, grp, &s);
            }
        }
        assert_eq!(ScaleGroup::for_model(&c).len(), if c.is_gqa() { 3 } else { 4 });
        let after = reference::reference_logits(&c, &g, &folded, &ids);
        let e = rel_err(&after, &before);
        assert!(e < 1e-5, "{:?}: folding changed the logits, relative error {e:e}", c.arch);
        // And the scales did change the weights.
        assert_ne!(folded[0].q.w.data, layers[0].q.w.data);
    }
}

/// Cached attention input for a tiny layer: random activations with outlier channels, in six
/// one-sequence chunks (so that the search can abandon grid points part-way).
fn attn_setup(c: &ModelConfig, w: &LayerWeights, dev: &burn::tensor::Device<B>) -> (Inspect<B>, Vec<Tensor<B, 3>>, Vec<f64>) {
    let (n, s, h) = (6, 16, c.hidden_size);
    let mut r = SplitMix(5);
    let x: Vec<f32> = (0..n * s * h).map(|i| r.normal() * if i % h == 3 { 20.0 } else { 1.0 }).collect();
    let mut xm = vec![0f64; h];
    for (i, v) in x.iter().enumerate() {
        xm[i % h] += v.abs() as f64 / (n * s) as f64;
    }
    let chunks = x.chunks(s * h).map(|c| upload(c.to_vec(), [1, s, h], dev)).collect();
    let rope = RopeTables::new(&Rope::from_config(c), s, 0, s, dev);
    let block = Inspect::Attention {
        block: Attention {
            q: LinearB::from_host(&w.q, dev),
            k: LinearB::from_host(&w.k, dev),
            v: LinearB::from_host(&w.v, dev),
            o: LinearB::from_host(&w.o, dev),
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            kv_bits: None,
        },
        rope,
        mask: causal_mask::<B>(c.num_attention_heads / c.num_key_value_heads, s, dev),
    };
    (block, chunks, xm)
}

#[test]
fn search_restarts_each_grid_point_from_original_weights_and_prunes_exactly() {
    // The AutoAWQ 0.2.9 CPU bug: "restoring" weights after each grid point restored the already
    // scaled ones. Recompute every grid point's loss from scratch, in a different order, and check
    // the branch and bound against that exhaustive search.
    let c = synth::config(Arch::Llama, 64, 96, 1, 4, 2, 50, true);
    let w = synth::layer(&c, 11, 0);
    let dev = Default::default();
    let (block, x, xm) = attn_setup(&c, &w, &dev);
    let org: Vec<Tensor<B, 3>> = x.iter().map(|xc| block.forward(xc.clone())).collect();
    let numel: f64 = org.iter().map(|o| o.shape().num_elements() as f64).sum();
    let p = QuantParams::new(4, 32).unwrap();
    let consumers = vec![(LinearKind::Q, &w.q), (LinearKind::K, &w.k), (LinearKind::V, &w.v)];
    // The loss of scales `s`, recomputed independently, chunk sums added in chunk order.
    let loss_at = |s: &[f64]| {
        let trial: Vec<(LinearKind, LinearB<B>)> = consumers
            .iter()
            .map(|(k, l)| (*k, LinearB::from_host(&awqc::model::arch::Linear { w: scaled_fake_quant(&l.w, s, p), b: l.b.clone() }, &dev)))
            .collect();
        let b = block.with(&trial);
        x.iter().zip(&org).map(|(xc, oc)| sq_err_sum(b.forward(xc.clone()), oc.clone())).fold(0f64, |a, v| a + v) / numel
    };
    let wm = awqc::quant::search::w_mean(&[&w.q.w, &w.k.w, &w.v.w], 32);
    let grid_scales = |i: usize| {
        let mut s = awqc::quant::search::raw_scales(&xm, Some(&wm), i as f64 / 20.0);
        awqc::quant::fold::normalize_scales(&mut s, None);
        s
    };
    // Exhaustive search in reverse order; ties go to the smaller α as in AutoAWQ.
    let exhaustive: Vec<f64> = (0..20).rev().map(|i| loss_at(&grid_scales(i))).collect::<Vec<_>>().into_iter().rev().collect();
    let best = (0..20).fold(0, |b, i| if exhaustive[i] < exhaustive[b] { i } else { b });

    let mut abandoned = 0;
    for first in [0, 10, 19] {
        let gs = search_group(ScaleGroup::AttnIn, &consumers, &block, &Chunks::resident(x.clone(), &dev), &xm, None, p, true, 20, first, &dev).unwrap();
        assert_eq!(gs.losses.len(), 20);
        assert_eq!(gs.alpha, best as f64 / 20.0, "first = {first}");
        assert_eq!(gs.loss_best, exhaustive[best], "first = {first}");
        assert_eq!(gs.scales, grid_scales(best), "first = {first}");
        assert_eq!(loss_at(&gs.scales), gs.loss_best, "chosen scale's loss recomputed from scratch differs");
        for (i, l) in gs.losses.iter().enumerate() {
            match l {
                Some(l) => assert_eq!(*l, exhaustive[i], "grid point {i}, first = {first}"),
                // Abandoned points really were worse than the winner.
                None => {
                    assert!(exhaustive[i] > gs.loss_best, "grid point {i} abandoned but its loss {} <= best {}", exhaustive[i], gs.loss_best);
                    abandoned += 1;
                }
            }
        }
        assert!(gs.grid_work <= 20.0 && gs.grid_work > 1.0, "grid work {}", gs.grid_work);
        // With outlier channels AWQ finds something better than round-to-nearest.
        assert!(gs.loss_best < gs.loss_rtn, "best {} vs rtn {}", gs.loss_best, gs.loss_rtn);
    }
    // The bound does prune on this data (else this test would not exercise it).
    assert!(abandoned > 0, "no grid point was abandoned");
}

#[test]
fn grid_order_starts_with_the_guess_and_visits_every_point_once() {
    use awqc::quant::search::grid_order;
    assert_eq!(grid_order(5, 2), vec![2, 0, 1, 3, 4]);
    assert_eq!(grid_order(5, 0), vec![0, 1, 2, 3, 4]);
    // An out-of-range guess (e.g. from a different grid) is clamped.
    assert_eq!(grid_order(3, 9), vec![2, 0, 1]);
    assert_eq!(grid_order(0, 0), Vec::<usize>::new());
}

/// Options of the pipeline tests: group 32, duo scaling, 20 grid points, activations in memory.
fn options(mode: Mode, clip: bool, batch_size: usize) -> QuantizeOptions {
    QuantizeOptions {
        mode,
        params: QuantParams::new(4, 32).unwrap(),
        duo_scaling: true,
        clip,
        search_scale: false,
        batch_size,
        n_grid: 20,
        gptq: None,
        zero_search: false,
        quantized_inputs: false,
        spill: Default::default(),
    }
}

fn run(src: &MemSource, blocks: &[Vec<u32>], mode: Mode, clip: bool) -> QuantizedModel {
    let opts = options(mode, clip, 2);
    let mut sink = CollectSink::default();
    quantize::<B>(src, blocks, &opts, &mut sink, &Default::default(), None, |_| {}).unwrap();
    sink.model.unwrap()
}

fn logits_mse(m: &QuantizedModel, fp: &[Vec<f64>], ids: &[u32]) -> f64 {
    let layers: Vec<LayerWeights> = (0..m.layers.len()).map(|i| m.dequantized_layer(i)).collect();
    let q = reference::reference_logits(&m.config, &m.globals, &layers, ids);
    let n = fp.len() * fp[0].len();
    q.iter().flatten().zip(fp.iter().flatten()).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n as f64
}

#[test]
fn awq_beats_rtn_and_is_deterministic() {
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 3), layers: (0..2).map(|i| synth::layer(&c, 3, i)).collect(), config: c.clone() };
    let mut r = SplitMix(17);
    let blocks: Vec<Vec<u32>> = (0..4).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let rtn = run(&src, &[], Mode::Awq, false);
    let awq = run(&src, &blocks, Mode::Awq, true);
    let lmd = run(&src, &blocks, Mode::Lmdeploy, false);
    // Evaluate on held-out tokens.
    let ids: Vec<u32> = (0..24).map(|_| (r.next_u64() % 64) as u32).collect();
    let fp = reference::reference_logits(&c, &src.globals, &src.layers, &ids);
    let (e_rtn, e_awq, e_lmd) = (logits_mse(&rtn, &fp, &ids), logits_mse(&awq, &fp, &ids), logits_mse(&lmd, &fp, &ids));
    eprintln!("logit MSE vs fp: rtn {e_rtn:.5}  awq {e_awq:.5}  lmdeploy {e_lmd:.5}");
    assert!(e_awq < e_rtn, "AWQ ({e_awq}) should beat RTN ({e_rtn})");
    // Deterministic, whatever the thread count.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| run(&src, &blocks, Mode::Awq, true));
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| run(&src, &blocks, Mode::Awq, true));
    assert!(one.layers == awq.layers && two.layers == awq.layers, "quantized layers differ between runs / thread counts");
    let _ = download::<B, 1>;
}

#[test]
fn gram_loss_equals_direct_output_mse() {
    // For a single-linear group with at least K tokens the search uses Σ Δw (XᵀX) Δwᵀ; it must
    // equal the direct MSE. (Here 2 x 80 = 160 tokens >= K = 128.)
    let c = synth::config(Arch::Llama, 64, 128, 1, 4, 2, 50, true);
    let w = synth::layer(&c, 21, 0);
    let dev = Default::default();
    let mut r = SplitMix(3);
    let (t, k) = (80, 128);
    let x: Vec<f32> = (0..2 * t * k).map(|i| r.normal() * if i % k == 7 { 10.0 } else { 1.0 }).collect();
    let xt: Vec<Tensor<B, 3>> = vec![upload(x[..t * k].to_vec(), [1, t, k], &dev), upload(x[t * k..].to_vec(), [1, t, k], &dev)];
    let xm: Vec<f64> = (0..k).map(|ch| (0..2 * t).map(|i| x[i * k + ch].abs() as f64).sum::<f64>() / (2 * t) as f64).collect();
    let block = Inspect::<B>::Linear(LinearB::from_host(&w.down, &dev));
    let p = QuantParams::new(4, 32).unwrap();
    let gs = search_group(ScaleGroup::MlpOut, &[(LinearKind::Down, &w.down)], &block, &Chunks::resident(xt.clone(), &dev), &xm, None, p, true, 20, 10, &dev).unwrap();
    let org: Vec<Tensor<B, 3>> = xt.iter().map(|c| block.forward(c.clone())).collect();
    let lq = awqc::model::arch::Linear { w: scaled_fake_quant(&w.down.w, &gs.scales, p), b: None };
    let trial = block.with(&[(LinearKind::Down, LinearB::from_host(&lq, &dev))]);
    let direct: f64 = xt.iter().zip(&org).map(|(c, o)| sq_err_sum(trial.forward(c.clone()), o.clone())).sum::<f64>() / (2 * t * 64) as f64;
    let rel = (direct - gs.loss_best).abs() / direct;
    assert!(rel < 1e-4, "gram loss {} vs direct {direct} (rel {rel:e})", gs.loss_best);
    // With fewer tokens than K the search evaluates the product directly: the same loss up to
    // rounding (the first chunk alone: 80 tokens < 128).
    let gs1 = search_group(ScaleGroup::MlpOut, &[(LinearKind::Down, &w.down)], &block, &Chunks::resident(xt[..1].to_vec(), &dev), &xm, None, p, true, 20, 10, &dev).unwrap();
    let lq1 = awqc::model::arch::Linear { w: scaled_fake_quant(&w.down.w, &gs1.scales, p), b: None };
    let trial1 = block.with(&[(LinearKind::Down, LinearB::from_host(&lq1, &dev))]);
    let direct1 = sq_err_sum(trial1.forward(xt[0].clone()), org[0].clone()) / (t * 64) as f64;
    assert_eq!(direct1, gs1.loss_best, "direct path: recorded loss differs from the recomputed one");
}

#[test]
fn activations_beyond_fp16_are_reported_by_layer() {
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let mut src = MemSource { globals: synth::globals(&c, 3), layers: (0..2).map(|i| synth::layer(&c, 3, i)).collect(), config: c.clone() };
    let mut r = SplitMix(17);
    let blocks: Vec<Vec<u32>> = (0..2).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let opts = options(Mode::Awq, false, 1);
    let report = |src: &MemSource| {
        let mut sink = CollectSink::default();
        quantize::<B>(src, &blocks, &opts, &mut sink, &Default::default(), None, |_| {}).unwrap()
    };
    let rep = report(&src);
    for l in &rep.layers {
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert!(l.act_absmax > 0.0 && l.act_absmax < 65504.0, "layer {}: {}", l.layer, l.act_absmax);
    }
    // Embeddings scaled to |x| <= 2e5: the residual stream, i.e. every layer's output, leaves
    // fp16's range (the f32 search itself is fine with it).
    let m = src.globals.embed.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    for v in src.globals.embed.data.iter_mut() {
        *v *= 2.0e5 / m;
    }
    let rep = report(&src);
    for l in &rep.layers {
        assert!(l.act_absmax > 65504.0, "layer {}: {}", l.layer, l.act_absmax);
        assert_eq!(l.warnings.len(), 1, "layer {}: {:?}", l.layer, l.warnings);
        let w = &l.warnings[0];
        assert!(w.contains(&format!("layer {}:", l.layer)) && w.contains("layer output") && w.contains("65504"), "{w}");
    }
}

#[test]
fn activations_spilled_to_disk_give_the_same_model() {
    // --max-memory: chunks past the first of every activation list live on disk. The search reads
    // them back bit for bit, so the quantized model must not change, and no file may be left over.
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 5), layers: (0..2).map(|i| synth::layer(&c, 5, i)).collect(), config: c.clone() };
    let mut r = SplitMix(23);
    let blocks: Vec<Vec<u32>> = (0..5).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let run_with = |spill: SpillPolicy| {
        let opts = QuantizeOptions { spill, ..options(Mode::Awq, true, 1) };
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(&src, &blocks, &opts, &mut sink, &Default::default(), None, |_| {}).unwrap();
        (sink.model.unwrap(), rep)
    };
    let (mem, mem_rep) = run_with(SpillPolicy::in_memory());
    let dir = std::env::temp_dir().join(format!("awqc-spill-test-{}", std::process::id()));
    let (disk, disk_rep) = run_with(SpillPolicy::spill_to(dir.clone(), 1).unwrap());
    assert_eq!(mem_rep.chunks_spilled, 0);
    // 4 of 5 chunks of the stream (embedding + 2 layers) and of each captured input and search
    // output spill; at least the stream's must have.
    assert!(disk_rep.chunks_spilled >= 4 * 3, "only {} chunks spilled", disk_rep.chunks_spilled);
    assert!(mem.layers == disk.layers, "spilling changed the quantized layers");
    for (a, b) in mem_rep.layers.iter().zip(&disk_rep.layers) {
        let alphas = |l: &awqc::quant::pipeline::LayerReport| l.groups.iter().map(|g| (g.alpha, g.loss_best)).collect::<Vec<_>>();
        assert_eq!(alphas(a), alphas(b), "layer {}", a.layer);
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "spill files left in {}", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gptq_keeps_awqs_parameters_lowers_the_calibration_loss_and_is_deterministic() {
    // --gptq: the same search, clip and (scale, zero) as plain AWQ, only the codes change; every
    // linear's calibration loss is at most plain rounding's; the codes do not depend on the
    // thread count, on spilling, or on resuming from a saved layer (which recomputes the pass).
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 7), layers: (0..2).map(|i| synth::layer(&c, 7, i)).collect(), config: c.clone() };
    let mut r = SplitMix(29);
    let blocks: Vec<Vec<u32>> = (0..6).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let go = |gptq: Option<f64>, spill: SpillPolicy, resume: Option<(&JobState, usize)>| {
        let opts = QuantizeOptions { gptq, spill, ..options(Mode::Awq, true, 2) };
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(&src, &blocks, &opts, &mut sink, &Default::default(), resume, |_| {}).unwrap();
        (sink.model.unwrap(), rep)
    };
    let (awq, _) = go(None, SpillPolicy::in_memory(), None);
    let (g, rep) = go(Some(0.01), SpillPolicy::in_memory(), None);
    let mut changed = 0;
    for (a, b) in awq.layers.iter().zip(&g.layers) {
        for (la, lb) in LinearKind::ALL.map(|k| (a.linear(k), b.linear(k))) {
            assert_eq!((&la.scales, &la.zeros, &la.bias), (&lb.scales, &lb.zeros, &lb.bias));
            changed += la.q.iter().zip(&lb.q).filter(|(x, y)| x != y).count();
        }
    }
    assert!(changed > 0, "GPTQ changed no code");
    for l in &rep.layers {
        assert_eq!(l.gptq.len(), 7, "layer {}", l.layer);
        for r in &l.gptq {
            assert!(r.loss_gptq.is_finite() && r.loss_gptq <= r.loss_rtn, "layer {} {}: {} > {}", l.layer, r.linear, r.loss_gptq, r.loss_rtn);
        }
    }
    assert!(rep.timings.gptq > 0.0);
    let resumed = same_model_across_threads_spill_and_resume("the GPTQ codes", "gptq", &g, |spill, resume| go(Some(0.01), spill, resume));
    assert_eq!(resumed.layers[0].gptq.len(), 7);
}

/// `go(spill, resume)` quantizes a 2-layer model; it must give `want` with one thread, with every
/// activation chunk spilled to disk, and when layer 0 is replayed from a saved state (layer 1
/// computed again). Returns the resumed run's report.
fn same_model_across_threads_spill_and_resume(what: &str, tag: &str, want: &QuantizedModel, go: impl Fn(SpillPolicy, Option<(&JobState, usize)>) -> (QuantizedModel, QuantReport) + Sync) -> QuantReport {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| go(SpillPolicy::in_memory(), None).0);
    assert!(one.layers == want.layers, "{what} depend on the thread count");
    let dir = std::env::temp_dir().join(format!("awqc-{tag}-test-{}", std::process::id()));
    let spilled = go(SpillPolicy::spill_to(dir.join("spill"), 1).unwrap(), None).0;
    assert!(spilled.layers == want.layers, "spilling changed {what}");
    // Resume: save every layer, then replay layer 0 from the state and compute layer 1 again.
    let (st, done) = JobState::open(&dir.join("state"), &format!("{tag}-test"), true).unwrap();
    assert_eq!(done, 0);
    let first = go(SpillPolicy::in_memory(), Some((&st, 0))).0;
    let (resumed, rep) = go(SpillPolicy::in_memory(), Some((&st, 1)));
    assert!(first.layers == want.layers && resumed.layers == want.layers, "resuming changed {what}");
    assert!(rep.layers[0].resumed);
    st.finish().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    rep
}

#[test]
fn zero_search_only_lowers_the_calibration_loss_composes_with_gptq_and_is_deterministic() {
    // --zero-search: every linear's (scale, zero) searched against its calibration inputs and kept
    // only where its loss is not above min / max rounding's; with --gptq on top, GPTQ keeps the
    // searched parameters. Same model whatever the thread count, spilling or resuming.
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 11), layers: (0..2).map(|i| synth::layer(&c, 11, i)).collect(), config: c.clone() };
    let mut r = SplitMix(31);
    let blocks: Vec<Vec<u32>> = (0..6).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let go = |gptq: Option<f64>, spill: SpillPolicy, resume: Option<(&JobState, usize)>| {
        let opts = QuantizeOptions { gptq, zero_search: true, spill, ..options(Mode::Awq, true, 2) };
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(&src, &blocks, &opts, &mut sink, &Default::default(), resume, |_| {}).unwrap();
        (sink.model.unwrap(), rep)
    };
    let awq = run(&src, &blocks, Mode::Awq, true);
    let (zs, rep) = go(None, SpillPolicy::in_memory(), None);
    let (mut kept, mut changed_params) = (0, 0);
    for l in &rep.layers {
        assert_eq!(l.zero_search.len(), 7, "layer {}", l.layer);
        for r in &l.zero_search {
            assert!(r.loss_search.is_finite() && r.loss_minmax.is_finite(), "layer {} {}", l.layer, r.linear);
            assert_eq!(r.kept, r.loss_search <= r.loss_minmax, "layer {} {}", l.layer, r.linear);
            kept += r.kept as usize;
        }
    }
    for (a, b) in awq.layers.iter().zip(&zs.layers) {
        for (la, lb) in LinearKind::ALL.map(|k| (a.linear(k), b.linear(k))) {
            changed_params += la.scales.iter().zip(&lb.scales).zip(la.zeros.iter().zip(&lb.zeros)).filter(|((s1, s2), (z1, z2))| s1 != s2 || z1 != z2).count();
            assert_eq!(la.bias, lb.bias);
        }
    }
    assert!(kept > 0 && changed_params > 0, "the search changed nothing ({kept} linears kept)");
    assert!(rep.timings.zero_search > 0.0 && rep.timings.hessians > 0.0);
    // GPTQ on top keeps the searched parameters and changes only codes.
    let (zg, rep_g) = go(Some(0.01), SpillPolicy::in_memory(), None);
    for (a, b) in zs.layers.iter().zip(&zg.layers) {
        for (la, lb) in LinearKind::ALL.map(|k| (a.linear(k), b.linear(k))) {
            assert_eq!((&la.scales, &la.zeros), (&lb.scales, &lb.zeros));
        }
    }
    assert!(rep_g.layers.iter().all(|l| l.gptq.len() == 7 && l.zero_search.len() == 7));
    let resumed = same_model_across_threads_spill_and_resume("the searched parameters", "zs", &zs, |spill, resume| go(None, spill, resume));
    assert_eq!(resumed.layers[0].zero_search.len(), 7);
}

#[test]
fn quantized_inputs_calibrate_each_layer_on_the_quantized_stream() {
    // --quantized-inputs: layer 0 sees the embeddings either way; layer 1 is calibrated on the
    // output of layer 0 *as quantized*. Independent check: the default (full-precision stream)
    // pipeline run on a model whose layer 0 is that quantized layer, dequantized, feeds layer 1
    // exactly that stream, so it must give the same layer 1. Deterministic, spill- and
    // resume-proof like the other options.
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 13), layers: (0..2).map(|i| synth::layer(&c, 13, i)).collect(), config: c.clone() };
    let mut r = SplitMix(37);
    let blocks: Vec<Vec<u32>> = (0..4).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let go = |src: &MemSource, quantized_inputs: bool, spill: SpillPolicy, resume: Option<(&JobState, usize)>| {
        let opts = QuantizeOptions { quantized_inputs, spill, ..options(Mode::Awq, true, 2) };
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(src, &blocks, &opts, &mut sink, &Default::default(), resume, |_| {}).unwrap();
        (sink.model.unwrap(), rep)
    };
    let (fp_stream, _) = go(&src, false, SpillPolicy::in_memory(), None);
    let (qi, _) = go(&src, true, SpillPolicy::in_memory(), None);
    assert!(qi.layers[0] == fp_stream.layers[0], "layer 0 must not depend on --quantized-inputs");
    assert!(qi.layers[1] != fp_stream.layers[1], "layer 1 came out the same on the quantized stream");
    let src_q0 = MemSource { globals: src.globals.clone(), layers: vec![qi.dequantized_layer(0), src.layers[1].clone()], config: c.clone() };
    let (via_fp, _) = go(&src_q0, false, SpillPolicy::in_memory(), None);
    assert!(via_fp.layers[1] == qi.layers[1], "layer 1 differs from the full-precision pipeline fed the quantized layer 0");
    same_model_across_threads_spill_and_resume("the quantized-input model", "qi", &qi, |spill, resume| go(&src, true, spill, resume));
}

#[test]
fn float_zero_points_run_through_search_clip_and_zero_search_deterministically() {
    // --zero-point float: every linear comes out with fp16 zeros (some fractional), AWQ and the
    // (scale, zero) search beat float RTN on held-out logits, the search is kept only where it
    // lowers the calibration loss, and the model does not depend on the thread count.
    use awqc::quant::int4::ZeroPoint;
    let c = synth::config(Arch::Llama, 128, 256, 2, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 3), layers: (0..2).map(|i| synth::layer(&c, 3, i)).collect(), config: c.clone() };
    let mut r = SplitMix(17);
    let blocks: Vec<Vec<u32>> = (0..4).map(|_| (0..32).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let go = |blocks: &[Vec<u32>], clip: bool, zero_search: bool| {
        let opts = QuantizeOptions { params: QuantParams::new(4, 32).unwrap().with_zero(ZeroPoint::Float), zero_search, ..options(Mode::Awq, clip, 2) };
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(&src, blocks, &opts, &mut sink, &Default::default(), None, |_| {}).unwrap();
        (sink.model.unwrap(), rep)
    };
    let (rtn, _) = go(&[], false, false);
    let (awq, _) = go(&blocks, true, false);
    let (zs, rep) = go(&blocks, true, true);
    for m in [&rtn, &awq, &zs] {
        for l in &m.layers {
            for k in LinearKind::ALL {
                let fz = l.linear(k).float_zeros.as_ref().expect("float zeros on every linear");
                assert!(fz.iter().any(|z| z.to_f32().fract() != 0.0), "{k:?}: only integer zeros");
            }
        }
    }
    let ids: Vec<u32> = (0..24).map(|_| (r.next_u64() % 64) as u32).collect();
    let fp = reference::reference_logits(&c, &src.globals, &src.layers, &ids);
    let (e_rtn, e_awq, e_zs) = (logits_mse(&rtn, &fp, &ids), logits_mse(&awq, &fp, &ids), logits_mse(&zs, &fp, &ids));
    eprintln!("float zeros, logit MSE vs fp: rtn {e_rtn:.5}  awq {e_awq:.5}  awq + zero search {e_zs:.5}");
    assert!(e_awq < e_rtn && e_zs < e_rtn, "rtn {e_rtn} awq {e_awq} zero search {e_zs}");
    for l in &rep.layers {
        assert_eq!(l.zero_search.len(), 7);
        assert!(l.zero_search.iter().all(|r| r.kept == (r.loss_search <= r.loss_minmax)));
    }
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| go(&blocks, true, true).0);
    assert!(one.layers == zs.layers, "float-zero model differs with one thread");
}

/// The per-layer check against round-to-nearest: each layer's reported output error, quantized as
/// written and RTN of its original weights, equals an f64 reference forward of that layer on its
/// full-precision inputs, and the flagged layers are exactly those where the first is larger.
#[test]
fn layer_output_errors_match_the_f64_reference_and_flag_layers_worse_than_rtn() {
    let c = synth::config(Arch::Llama, 128, 256, 3, 4, 2, 64, true);
    let src = MemSource { globals: synth::globals(&c, 3), layers: (0..3).map(|i| synth::layer(&c, 3, i)).collect(), config: c.clone() };
    let mut r = SplitMix(23);
    let blocks: Vec<Vec<u32>> = (0..3).map(|_| (0..24).map(|_| (r.next_u64() % 64) as u32).collect()).collect();
    let rtn = run(&src, &[], Mode::Awq, false);
    for mode in [Mode::Awq, Mode::Lmdeploy] {
        let mut sink = CollectSink::default();
        let rep = quantize::<B>(&src, &blocks, &options(mode, true, 2), &mut sink, &Default::default(), None, |_| {}).unwrap();
        let q = sink.model.unwrap();
        // Reference: per block, the fp hidden states entering layer i, and the squared output
        // differences of the written and the RTN layer against the fp layer.
        let mut sums = vec![[0f64; 2]; c.num_hidden_layers];
        for b in &blocks {
            let mut x = reference::reference_embed(&src.globals, b);
            for (i, (layer, sum)) in src.layers.iter().zip(sums.iter_mut()).enumerate() {
                let fp = reference::reference_layer(&c, layer, x.clone());
                for (s, l) in sum.iter_mut().zip([q.dequantized_layer(i), rtn.dequantized_layer(i)]) {
                    let o = reference::reference_layer(&c, &l, x.clone());
                    *s += o.iter().flatten().zip(fp.iter().flatten()).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
                }
                x = fp;
            }
        }
        let n = (blocks.len() * 24 * c.hidden_size) as f64;
        let mut flagged = Vec::new();
        for (lr, s) in rep.layers.iter().zip(&sums) {
            let (e, e_rtn) = (lr.output_mse.unwrap(), lr.rtn_output_mse.unwrap());
            for (got, want) in [(e, s[0] / n), (e_rtn, s[1] / n)] {
                assert!((got - want).abs() <= 1e-3 * want, "{mode:?} layer {}: output error {got:e}, f64 reference {want:e}", lr.layer);
            }
            if e > e_rtn {
                flagged.push(lr.layer);
                assert!(lr.warnings.iter().any(|w| w.contains("exceeds round-to-nearest")), "{:?}", lr.warnings);
            }
        }
        assert_eq!(rep.worse_than_rtn, flagged, "{mode:?}");
    }
    // Weights that are already on the INT4 grid: round-to-nearest reproduces them exactly (output
    // error 0), so lmdeploy's fixed smoothing can only lose, and every layer must be flagged.
    let on_grid = |mut l: LayerWeights| {
        for k in LinearKind::ALL {
            let w = &mut l.linear_mut(k).w;
            for grp in w.data.chunks_mut(32) {
                // Codes spanning 0..=15 exactly, so min / max rounding gives back (s, z).
                let (lo, hi) = grp.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let s = half::f16::from_f32((hi - lo) / 15.0).to_f32();
                let z = (-lo / s).round().clamp(0.0, 15.0);
                grp.iter_mut().for_each(|v| *v = (((*v - lo) / (hi - lo) * 15.0).round() - z) * s);
            }
        }
        l
    };
    let exact = MemSource { globals: src.globals.clone(), layers: src.layers.iter().cloned().map(on_grid).collect(), config: c.clone() };
    let mut sink = CollectSink::default();
    let rep = quantize::<B>(&exact, &blocks, &options(Mode::Lmdeploy, false, 2), &mut sink, &Default::default(), None, |_| {}).unwrap();
    for lr in &rep.layers {
        assert_eq!(lr.rtn_output_mse, Some(0.0), "layer {}: RTN of on-grid weights is exact", lr.layer);
        assert!(lr.output_mse.unwrap() > 0.0);
    }
    assert_eq!(rep.worse_than_rtn, (0..c.num_hidden_layers).collect::<Vec<_>>());
}
