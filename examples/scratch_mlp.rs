use awqc::engine::device::CpuBackend;
use awqc::engine::llama::*;
use awqc::model::synth;
use awqc::model::config::Arch;
use burn::tensor::{Tensor, Distribution};
use std::time::Instant;
type B = CpuBackend;
fn main() {
    let dev = Default::default();
    let c = synth::config(Arch::Llama, 576, 1536, 1, 9, 3, 100, true);
    let l = synth::layer(&c, 1, 0);
    let layer = DecoderLayer::<B>::from_host(&l, &c, &dev);
    let bs: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let x = Tensor::<B, 3>::random([bs, 512, 576], Distribution::Default, &dev);
    let rope = RopeTables::new(&awqc::engine::rope::Rope::from_config(&c), 512, 0, 512, &dev);
    let mask = causal_mask::<B>(3, 512, &dev);
    for _ in 0..3 {
        let t0 = Instant::now();
        let g = layer.mlp.gate.forward(x.clone()); let _ = download(g.clone().slice([0..1, 0..1, 0..1]));
        let tg = t0.elapsed(); let t0 = Instant::now();
        let s = burn::tensor::activation::silu(g.clone()); let _ = download(s.clone().slice([0..1, 0..1, 0..1]));
        let ts = t0.elapsed(); let t0 = Instant::now();
        let m = layer.mlp.forward(x.clone()); let _ = download(m.slice([0..1, 0..1, 0..1]));
        let tm = t0.elapsed(); let t0 = Instant::now();
        let a = layer.attn.forward(x.clone(), &rope, &mask); let _ = download(a.clone().slice([0..1, 0..1, 0..1]));
        let ta = t0.elapsed(); let t0 = Instant::now();
        let e = awqc::quant::search::sq_err_sum(a.clone(), x.clone());
        let te = t0.elapsed(); let t0 = Instant::now();
        let lb = LinearB::<B>::from_host(&l.gate, &dev);
        let tl = t0.elapsed();
        let gf = 2.0 * (bs * 512 * 576 * 1536) as f64;
        eprintln!("gate {tg:?} ({:.1} GF/s) silu {ts:?} mlp {tm:?} ({:.1} GF/s) attn {ta:?} sqerr {te:?} from_host {tl:?} {e}", gf / tg.as_secs_f64() / 1e9, 3.0 * gf / tm.as_secs_f64() / 1e9);
        drop(lb);
    }
}
