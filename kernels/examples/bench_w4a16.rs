//! Times the W4A16 kernels.
//!
//! ```text
//! bench_w4a16 [--runtime wgpu|cuda] [--m 1,4,16,512] [--n 4096] [--k 4096] [--group 128]
//!             [--dtype f16|f32] [--iters 50]
//! ```
//! Build here with `cargo build --release -p awqc-kernels --example bench_w4a16` and run the
//! binary on the GPU machine (cuda needs the driver and NVRTC there; it panics without them).
use awqc_kernels::bench::bench_w4a16;
use awqc_kernels::device::{cuda_client, wgpu_client};
use awqc_kernels::Elem;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_w4a16: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut runtime = "wgpu".to_string();
    let (mut ms, mut n, mut k, mut group, mut elem, mut iters) = (vec![1usize, 4, 16, 512], 4096, 4096, 128, Elem::F16, 50);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &str| s.parse::<usize>().map_err(|_| format!("not a number: {s}"));
    for pair in args.chunks(2) {
        let [flag, value] = pair else { return Err(format!("missing value for {}", pair[0])) };
        match flag.as_str() {
            "--runtime" => runtime = value.clone(),
            "--m" => ms = value.split(',').map(num).collect::<Result<_, _>>()?,
            "--n" => n = num(value)?,
            "--k" => k = num(value)?,
            "--group" => group = num(value)?,
            "--iters" => iters = num(value)?,
            "--dtype" => {
                elem = match value.as_str() {
                    "f16" => Elem::F16,
                    "f32" => Elem::F32,
                    _ => return Err(format!("--dtype {value}: f16 or f32")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    println!("runtime {runtime}, dtype {elem:?}, {iters} iterations");
    for m in ms {
        let results = match runtime.as_str() {
            "wgpu" => bench_w4a16(&wgpu_client().map_err(|e| e.to_string())?, m, n, k, group, elem, iters),
            "cuda" => bench_w4a16(&cuda_client(0), m, n, k, group, elem, iters),
            _ => return Err(format!("--runtime {runtime}: wgpu or cuda")),
        }
        .map_err(|e| e.to_string())?;
        for r in results {
            println!("{r}");
        }
    }
    Ok(())
}
