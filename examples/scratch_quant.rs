use awqc::engine::device::CpuBackend;
use awqc::quant::int4::QuantParams;
use awqc::quant::pipeline::*;
use awqc::quant::qmodel::CollectSink;
use std::path::Path;
fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(8);
    let layers: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(2);
    let bs: usize = std::env::args().nth(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let dir = Path::new("fixtures/smollm2-hf");
    let mut src = HfSource::open(dir).unwrap();
    src.config.num_hidden_layers = layers;
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string("fixtures/text/c4.utf8").unwrap();
    let ids = tok.encode(&text[..n * 4000], false).unwrap().get_ids().to_vec();
    let blocks: Vec<Vec<u32>> = (0..n).map(|i| ids[i * 512..(i + 1) * 512].to_vec()).collect();
    let opts = QuantizeOptions { mode: Mode::Awq, params: QuantParams::new(4, 64).unwrap(), duo_scaling: true, clip: true, search_scale: false, batch_size: bs, n_grid: 20 };
    let mut sink = CollectSink::default();
    let t0 = std::time::Instant::now();
    let rep = quantize::<CpuBackend>(&src, &blocks, &opts, &mut sink, &Default::default(), |l| {
        eprintln!("layer {} {:.1}s groups {:?}", l.layer, l.seconds, l.groups.iter().map(|g| (g.group, g.alpha, g.loss_rtn, g.loss_best, (g.seconds*10.0).round()/10.0)).collect::<Vec<_>>());
        eprintln!("   clips {:?}", l.clips.iter().map(|c| (c.linear, (c.mean_ratio*1000.0).round()/1000.0, (c.seconds*100.0).round()/100.0)).collect::<Vec<_>>());
    }).unwrap();
    let s = t0.elapsed().as_secs_f64();
    eprintln!("total {s:.1}s timings {:?} GFLOP/s {:.1}", rep.timings, rep.search_flops / (rep.timings.search + rep.timings.clip) / 1e9);
}
