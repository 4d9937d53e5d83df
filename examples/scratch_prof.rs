use awqc::engine::device::CpuBackend;
use awqc::engine::llama::*;
use awqc::model::{arch, config::ModelConfig, weights::SafetensorsRepo};
use std::path::Path;
use std::time::Instant;
type B = CpuBackend;
fn sync(t: burn::tensor::Tensor<B, 3>) { let _ = download(t.sum()); }
fn main() {
    let dir = Path::new("fixtures/smollm2-hf");
    let c = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let repo = SafetensorsRepo::open_dir(dir).unwrap();
    let g = arch::load_globals(&repo, &c).unwrap();
    let m = Llama::<B>::from_host(&c, &g, |i| arch::load_layer(&repo, &c, i), &Default::default()).unwrap();
    let dev = Default::default();
    let t = 512;
    let ids: Vec<u32> = (0..t as u32).map(|i| i * 7 % 40000).collect();
    for _ in 0..2 {
        let t0 = Instant::now();
        let x = m.embed(&ids, 1, t); sync(x.clone());
        let e = t0.elapsed();
        let rope = RopeTables::new(&m.rope, t, 0, t, &dev);
        let mask = causal_mask::<B>(3, t, &dev);
        let t1 = Instant::now();
        let l = &m.layers[0];
        let n = rms_norm(x.clone(), &l.attn_norm, 1e-5); sync(n.clone());
        let tn = t1.elapsed();
        let t2 = Instant::now();
        let q = l.attn.q.forward(n.clone()); sync(q.clone());
        let tq = t2.elapsed();
        let t3 = Instant::now();
        let a = l.attn.forward(n.clone(), &rope, &mask); sync(a.clone());
        let ta = t3.elapsed();
        let t4 = Instant::now();
        let mm = l.mlp.forward(n.clone()); sync(mm.clone());
        let tm = t4.elapsed();
        let t5 = Instant::now();
        let mut h = x.clone();
        for l in &m.layers { h = l.forward(h, &rope, &mask); }
        sync(h.clone());
        let tl = t5.elapsed();
        let t6 = Instant::now();
        let lg = h.reshape([t, 576]).matmul(m.lm_head.clone()); let _ = download(lg.sum());
        let th = t6.elapsed();
        eprintln!("embed {e:?} norm {tn:?} q {tq:?} attn {ta:?} mlp {tm:?} 30layers {tl:?} head {th:?}");
    }
}
