use awqc::engine::device::CpuBackend;
use awqc::engine::llama::*;
use burn::tensor::{Tensor, Distribution, activation::softmax};
use std::time::Instant;
type B = CpuBackend;
fn s3(t: Tensor<B, 3>) { let _ = download(t.sum()); }
fn s4(t: Tensor<B, 4>) { let _ = download(t.sum()); }
fn main() {
    let dev = Default::default();
    let (t, hq, hkv, d) = (512usize, 9usize, 3usize, 64usize);
    let g = hq / hkv;
    let x = Tensor::<B, 3>::random([1, t, hq * d], Distribution::Default, &dev);
    let rope = RopeTables::new(&awqc::engine::rope::Rope { dim: 64, base: 1e5, scaling: awqc::model::config::RopeScaling::None, max_position_embeddings: 8192 }, t, 0, t, &dev);
    let mask = causal_mask::<B>(g, t, &dev);
    for _ in 0..2 {
        let t0 = Instant::now();
        let q = x.clone().reshape([1, t, hq, d]).swap_dims(1, 2); s4(q.clone());
        let a = t0.elapsed(); let t0 = Instant::now();
        let qr = apply_rope(q.clone(), &rope); s4(qr.clone());
        let b = t0.elapsed(); let t0 = Instant::now();
        let k = Tensor::<B, 4>::random([1, hkv, t, d], Distribution::Default, &dev);
        let qq = qr.reshape([1, hkv, g * t, d]); s4(qq.clone());
        let c = t0.elapsed(); let t0 = Instant::now();
        let sc = qq.matmul(k.clone().swap_dims(2, 3)); s4(sc.clone());
        let dd = t0.elapsed(); let t0 = Instant::now();
        let sc = sc + mask.clone().reshape([1, 1, g * t, t]); s4(sc.clone());
        let e = t0.elapsed(); let t0 = Instant::now();
        let p = softmax(sc, 3); s4(p.clone());
        let f = t0.elapsed(); let t0 = Instant::now();
        let ctx = p.matmul(k.clone()); s4(ctx.clone());
        let gg = t0.elapsed(); let t0 = Instant::now();
        let o = ctx.reshape([1, hq, t, d]).swap_dims(1, 2).reshape([1, t, hq * d]); s3(o);
        let h = t0.elapsed();
        eprintln!("swap {a:?} rope {b:?} reshape {c:?} qk {dd:?} mask {e:?} softmax {f:?} pv {gg:?} out {h:?}");
    }
}
