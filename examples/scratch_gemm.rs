use std::time::Instant;
fn run(m: usize, k: usize, n: usize, par: gemm::Parallelism) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, b.as_ptr(), 1, n as isize, 0.0f32, 1.0f32, false, false, false, par);
        }
        best = best.max(2.0 * (m * n * k) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}
fn main() {
    for (m, k, n) in [(512, 576, 1536), (4096, 576, 1536), (512, 1536, 576), (512, 576, 960), (4096, 4096, 4096)] {
        eprintln!("{m}x{k}x{n}: rayon {:.1} GF/s, single {:.1}", run(m, k, n, gemm::Parallelism::Rayon(0)), run(m, k, n, gemm::Parallelism::None));
    }
}
