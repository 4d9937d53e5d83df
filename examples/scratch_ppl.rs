use awqc::engine::device::CpuBackend;
use awqc::engine::llama::Llama;
use awqc::model::{arch, config::ModelConfig, weights::SafetensorsRepo};
use std::path::Path;
fn main() {
    let dir = Path::new("fixtures/smollm2-hf");
    let c = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let repo = SafetensorsRepo::open_dir(dir).unwrap();
    let g = arch::load_globals(&repo, &c).unwrap();
    let t0 = std::time::Instant::now();
    let m = Llama::<CpuBackend>::from_host(&c, &g, |i| arch::load_layer(&repo, &c, i), &Default::default()).unwrap();
    eprintln!("load {:?}", t0.elapsed());
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string("fixtures/text/wiki.utf8").unwrap();
    let ids = tok.encode(&text[..20000], true).unwrap().get_ids().to_vec();
    eprintln!("first ids {:?}", &ids[..10]);
    let t0 = std::time::Instant::now();
    let r = awqc::engine::ppl::perplexity(&m, &[&ids[..512]]).unwrap();
    eprintln!("ppl {:.4} in {:?} ({:.1} tok/s)", r.ppl, t0.elapsed(), r.tokens_per_second);
}
