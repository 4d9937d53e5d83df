//! Reading a model one tensor at a time keeps RSS bounded: `SafetensorsRepo::get_f32` releases a
//! tensor's file-backed pages once its data is copied out, so a model larger than RAM can be read
//! layer by layer. Its own test binary (one process, one test), so that no other test's memory
//! shows in the counters.
#![cfg(target_os = "linux")]

use awqc::model::weights::SafetensorsRepo;
use safetensors::tensor::{Dtype, TensorView};

/// File-backed resident memory of this process (`RssFile` in /proc/self/status), in KiB.
fn rss_file_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("RssFile:")).expect("RssFile in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn reading_every_tensor_does_not_keep_the_file_mapped() {
    // 32 tensors of 4 MiB f32 = 128 MiB.
    let dir = std::env::temp_dir().join(format!("awqc-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 1usize << 20;
    let value = |i: usize, j: usize| ((i * n + j) % 65_521) as f32 * 1e-3;
    let bytes: Vec<Vec<u8>> = (0..32).map(|i| (0..n).flat_map(|j| value(i, j).to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> =
        bytes.iter().enumerate().map(|(i, b)| (format!("t{i:02}"), TensorView::new(Dtype::F32, vec![n], b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    drop(bytes);
    let repo = SafetensorsRepo::open_dir(&dir).unwrap();

    // Through get_f32: the file's pages are released tensor by tensor.
    let base = rss_file_kib();
    let mut grew = 0;
    for i in 0..32 {
        let t = repo.get_f32(&format!("t{i:02}")).unwrap();
        assert_eq!((t.data[5], t.data[n - 1]), (value(i, 5), value(i, n - 1)), "tensor {i}");
        drop(t);
        grew = grew.max(rss_file_kib().saturating_sub(base));
    }
    assert!(grew < 16 * 1024, "file-backed RSS grew by {grew} KiB while reading 128 MiB through get_f32");
    // Read again: the same values (the pages come back from the page cache).
    let t = repo.get_f32("t07").unwrap();
    assert_eq!(t.data[n - 1], value(7, n - 1));
    drop(t);

    // Control: touching the same bytes through the raw mapping (no release) does keep them
    // resident, so the measurement above can see what it guards against.
    let base = rss_file_kib();
    let mut sum = 0u64;
    for i in 0..32 {
        let (_, raw) = repo.raw(&format!("t{i:02}")).unwrap();
        sum += raw.iter().step_by(4096).map(|&b| b as u64).sum::<u64>();
    }
    let control = rss_file_kib().saturating_sub(base);
    assert!(control > 100 * 1024, "raw reads of 128 MiB grew file-backed RSS by only {control} KiB (sum {sum})");
    std::fs::remove_dir_all(&dir).unwrap();
}
