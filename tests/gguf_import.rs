//! GGUF import: dequantizers against blocks built here from the format definitions, the llama.cpp
//! Q/K permutation, synthetic llama/qwen2 GGUF files end to end, the real SmolLM2 GGUF, and bad input.
//!
//! Expected dequantized values are computed in this file from the *logical* block contents (the
//! integers and scales chosen before packing), in f64, then rounded once to f32. In every ggml
//! formula the products are exact in f32 (at most 11+8+6 significant bits here) and only the final
//! add/subtract rounds, so this single rounding is bit-identical to ggml: tolerance 0.

#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use awqc::error::ErrorKind;
use awqc::formats::gguf::{dequantize, unpermute_qk, GgmlType, GgufFile, MetaValue};
use awqc::formats::gguf_import::{config_from_gguf, import_gguf, ImportOptions};
use awqc::model::config::{Arch, ModelConfig};
use awqc::model::weights::SafetensorsRepo;
use awqc::tensor::{DType, HostTensor};
use gguf_writer::{gt, vt, GgufBuilder};
use half::{bf16, f16};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Small helpers

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.below(1 << 24) as f32 / (1 << 23) as f32) - 1.0
    }
}

/// A random normal f16 with magnitude in [2^lo, 2^hi).
fn rand_half(rng: &mut Rng, lo: i32, hi: i32, signed: bool) -> f16 {
    let e = (lo + rng.below((hi - lo) as u64) as i32 + 15) as u16;
    let m = rng.below(1024) as u16;
    let s = if signed && rng.below(2) == 1 { 0x8000 } else { 0 };
    f16::from_bits(s | (e << 10) | m)
}

fn h(x: f16) -> f64 {
    x.to_f64()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("awqc-gguf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        v.sort();
        v
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    std::env::var_os("AWQC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")))
}

fn fixture(rel: &str) -> PathBuf {
    let p = fixtures().join(rel);
    assert!(p.exists(), "fixture {} is missing: run `make fixtures` (or set AWQC_FIXTURES)", p.display());
    p
}

// ---------------------------------------------------------------------------------------------
// Reference block encoders: logical contents -> (bytes as the format defines them, expected values)

fn block_q4_0(d: f16, q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let mut b = d.to_le_bytes().to_vec();
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    (b, q.iter().map(|&q| ((q as f64 - 8.0) * h(d)) as f32).collect())
}

fn block_q4_1(d: f16, m: f16, q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(m.to_le_bytes());
    b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
    (b, q.iter().map(|&q| (q as f64 * h(d) + h(m)) as f32).collect())
}

/// Q5: low 4 bits packed as Q4; the 5th bit of element j is bit j of the u32 `qh`.
fn q5_bits(q: &[u8]) -> (u32, Vec<u8>) {
    let qh = (0..32).fold(0u32, |acc, j| acc | (((q[j] >> 4) as u32 & 1) << j));
    (qh, (0..16).map(|j| (q[j] & 15) | ((q[j + 16] & 15) << 4)).collect())
}

fn block_q5_0(d: f16, q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let (qh, qs) = q5_bits(q);
    let mut b = d.to_le_bytes().to_vec();
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    (b, q.iter().map(|&q| ((q as f64 - 16.0) * h(d)) as f32).collect())
}

fn block_q5_1(d: f16, m: f16, q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let (qh, qs) = q5_bits(q);
    let mut b = d.to_le_bytes().to_vec();
    b.extend(m.to_le_bytes());
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    (b, q.iter().map(|&q| (q as f64 * h(d) + h(m)) as f32).collect())
}

fn block_q8_0(d: f16, q: &[i8]) -> (Vec<u8>, Vec<f32>) {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(q.iter().map(|&x| x as u8));
    (b, q.iter().map(|&q| (q as f64 * h(d)) as f32).collect())
}

/// The 12 scale bytes of Q4_K/Q5_K (ggml `quantize_row_q4_K`): sub-blocks 0..3 keep 6-bit scale
/// and min in bytes j and j+4; sub-blocks 4..7 put their low nibbles in byte j+4 (scale low,
/// min high) and their top 2 bits in the top bits of bytes j-4 (scale) and j (min).
fn k4_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    s
}

/// Q4_K: 8 sub-blocks of 32; value = d*sc[s]*q - dmin*mn[s]. qs byte 32i+l holds element 64i+l
/// (low nibble) and 64i+32+l (high nibble).
fn block_q4_k(d: f16, dmin: f16, sc: &[u8; 8], mn: &[u8; 8], q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(dmin.to_le_bytes());
    b.extend(k4_scales(sc, mn));
    for i in 0..4 {
        b.extend((0..32).map(|l| q[64 * i + l] | (q[64 * i + 32 + l] << 4)));
    }
    let v = (0..256).map(|e| (h(d) * sc[e / 32] as f64 * q[e] as f64 - h(dmin) * mn[e / 32] as f64) as f32);
    (b, v.collect())
}

/// Q5_K: Q4_K plus the 5th bit: element 64i+l -> bit 2i of qh[l], 64i+32+l -> bit 2i+1.
fn block_q5_k(d: f16, dmin: f16, sc: &[u8; 8], mn: &[u8; 8], q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(dmin.to_le_bytes());
    b.extend(k4_scales(sc, mn));
    let mut qh = [0u8; 32];
    for i in 0..4 {
        for l in 0..32 {
            qh[l] |= ((q[64 * i + l] >> 4) & 1) << (2 * i);
            qh[l] |= ((q[64 * i + 32 + l] >> 4) & 1) << (2 * i + 1);
        }
    }
    b.extend(qh);
    for i in 0..4 {
        b.extend((0..32).map(|l| (q[64 * i + l] & 15) | ((q[64 * i + 32 + l] & 15) << 4)));
    }
    let v = (0..256).map(|e| (h(d) * sc[e / 32] as f64 * q[e] as f64 - h(dmin) * mn[e / 32] as f64) as f32);
    (b, v.collect())
}

/// Q6_K (ggml `quantize_row_q6_K`): per half of 128, ql[l] = q[l] | q[l+64]<<4 (low nibbles),
/// ql[l+32] = q[l+32] | q[l+96]<<4, qh[l] = top 2 bits of q[l], q[l+32], q[l+64], q[l+96];
/// then 16 i8 scales (one per 16 elements) and f16 d. value = d * scale * (q - 32).
fn block_q6_k(d: f16, sc: &[i8; 16], q: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let (mut ql, mut qh) = (Vec::new(), Vec::new());
    for n in 0..2 {
        let q = &q[128 * n..];
        let mut lo = [0u8; 64];
        for l in 0..32 {
            lo[l] = (q[l] & 15) | ((q[l + 64] & 15) << 4);
            lo[l + 32] = (q[l + 32] & 15) | ((q[l + 96] & 15) << 4);
            qh.push((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
        }
        ql.extend(lo);
    }
    let mut b = ql;
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(d.to_le_bytes());
    let v = (0..256).map(|e| (h(d) * sc[e / 16] as f64 * (q[e] as f64 - 32.0)) as f32);
    (b, v.collect())
}

fn rand_q(rng: &mut Rng, n: usize, levels: u64) -> Vec<u8> {
    (0..n).map(|_| rng.below(levels) as u8).collect()
}

fn rand_6bit8(rng: &mut Rng) -> [u8; 8] {
    std::array::from_fn(|_| rng.below(64) as u8)
}

/// `numel` random values of ggml type `ty`: (encoded bytes, expected f32 values).
fn random_tensor(ty: u32, numel: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut vals) = (Vec::new(), Vec::new());
    let mut push = |(b, v): (Vec<u8>, Vec<f32>)| {
        bytes.extend(b);
        vals.extend(v);
    };
    match ty {
        gt::F32 => {
            for _ in 0..numel {
                let x = rng.unit();
                push((x.to_le_bytes().to_vec(), vec![x]));
            }
        }
        gt::F16 => {
            for _ in 0..numel {
                let x = f16::from_f32(rng.unit());
                push((x.to_le_bytes().to_vec(), vec![x.to_f32()]));
            }
        }
        gt::BF16 => {
            for _ in 0..numel {
                let x = bf16::from_f32(rng.unit());
                push((x.to_le_bytes().to_vec(), vec![x.to_f32()]));
            }
        }
        _ => {
            let be = if matches!(ty, gt::Q4_K | gt::Q5_K | gt::Q6_K) { 256 } else { 32 };
            assert_eq!(numel % be, 0);
            for _ in 0..numel / be {
                let d = rand_half(rng, -10, -2, true);
                let m = rand_half(rng, -10, -2, true);
                // K-quant super-block scales are non-negative (mins are subtracted).
                let (ud, um) = (f16::from_bits(d.to_bits() & 0x7FFF), f16::from_bits(m.to_bits() & 0x7FFF));
                push(match ty {
                    gt::Q4_0 => block_q4_0(d, &rand_q(rng, 32, 16)),
                    gt::Q4_1 => block_q4_1(d, m, &rand_q(rng, 32, 16)),
                    gt::Q5_0 => block_q5_0(d, &rand_q(rng, 32, 32)),
                    gt::Q5_1 => block_q5_1(d, m, &rand_q(rng, 32, 32)),
                    gt::Q8_0 => block_q8_0(d, &rand_q(rng, 32, 256).iter().map(|&x| x as i8).collect::<Vec<_>>()),
                    gt::Q4_K => {
                        let (sc, mn) = (rand_6bit8(rng), rand_6bit8(rng));
                        block_q4_k(ud, um, &sc, &mn, &rand_q(rng, 256, 16))
                    }
                    gt::Q5_K => {
                        let (sc, mn) = (rand_6bit8(rng), rand_6bit8(rng));
                        block_q5_k(ud, um, &sc, &mn, &rand_q(rng, 256, 32))
                    }
                    gt::Q6_K => {
                        let sc: [i8; 16] = std::array::from_fn(|_| rng.below(256) as u8 as i8);
                        block_q6_k(d, &sc, &rand_q(rng, 256, 64))
                    }
                    other => panic!("no encoder for type {other}"),
                });
            }
        }
    }
    (bytes, vals)
}

fn check_dequant(ty: GgmlType, id: u32, seed: u64) {
    let mut rng = Rng(seed);
    let numel = 256 * 40; // 40 K-quant super-blocks, 320 small blocks
    let (bytes, want) = random_tensor(id, numel, &mut rng);
    assert_eq!(bytes.len(), numel / ty.block().0 * ty.block().1, "{ty} block size");
    let got = dequantize(ty, &bytes, numel).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{ty} element {i}: got {g}, want {w}");
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers

#[test]
fn dequant_worked_examples() {
    // Q4_0: d = 0.5, q = 3 -> (3 - 8) * 0.5 = -2.5; element 16 is the high nibble of byte 0.
    let mut q = [8u8; 32];
    q[0] = 3;
    q[16] = 15;
    let (b, _) = block_q4_0(f16::from_f32(0.5), &q);
    assert_eq!(b[2], 0xF3);
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    assert_eq!((y[0], y[16], y[1]), (-2.5, 3.5, 0.0));
    // Q4_1: d = 0.25, m = -1 -> q*0.25 - 1.
    let (b, _) = block_q4_1(f16::from_f32(0.25), f16::from_f32(-1.0), &q);
    let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
    assert_eq!((y[0], y[16], y[1]), (-0.25, 2.75, 1.0));
    // Q8_0: d = 0.125, q = -4 -> -0.5.
    let mut q8 = [0i8; 32];
    q8[5] = -4;
    q8[31] = 127;
    let (b, _) = block_q8_0(f16::from_f32(0.125), &q8);
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    assert_eq!((y[5], y[31], y[0]), (-0.5, 15.875, 0.0));
    // Q5_0: q = 31 needs the 5th bit: (31 - 16) * 2 = 30; q = 0 -> -32.
    let mut q5 = [16u8; 32];
    q5[3] = 31;
    q5[20] = 0;
    let (b, _) = block_q5_0(f16::from_f32(2.0), &q5);
    let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
    assert_eq!((y[3], y[20], y[0]), (30.0, -32.0, 0.0));
    // Q4_K: sub-block 0 scale 2 min 3, sub-block 7 scale 63 min 33 (uses the packed top bits);
    // d = 1, dmin = 0.5: element 0 (q = 5) -> 1*2*5 - 0.5*3 = 8.5; element 255 (q = 1) -> 63 - 16.5.
    let mut sc = [1u8; 8];
    let mut mn = [0u8; 8];
    sc[0] = 2;
    mn[0] = 3;
    sc[7] = 63;
    mn[7] = 33;
    let mut q = [0u8; 256];
    q[0] = 5;
    q[255] = 1;
    let (b, _) = block_q4_k(f16::from_f32(1.0), f16::from_f32(0.5), &sc, &mn, &q);
    let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
    assert_eq!((y[0], y[255], y[1], y[40]), (8.5, 46.5, -1.5, 0.0));
    // Q6_K: d = 0.5, scale of sub-block 15 = -3, q = 63 -> 0.5 * -3 * 31 = -46.5; q = 32 -> 0.
    let mut sc6 = [1i8; 16];
    sc6[15] = -3;
    let mut q = [32u8; 256];
    q[255] = 63;
    q[100] = 0;
    let (b, _) = block_q6_k(f16::from_f32(0.5), &sc6, &q);
    let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
    assert_eq!((y[255], y[100], y[0]), (-46.5, -16.0, 0.0));
}

#[test]
fn dequant_q4_0_matches_format() {
    check_dequant(GgmlType::Q4_0, gt::Q4_0, 1);
}
#[test]
fn dequant_q4_1_matches_format() {
    check_dequant(GgmlType::Q4_1, gt::Q4_1, 2);
}
#[test]
fn dequant_q5_0_matches_format() {
    check_dequant(GgmlType::Q5_0, gt::Q5_0, 3);
}
#[test]
fn dequant_q5_1_matches_format() {
    check_dequant(GgmlType::Q5_1, gt::Q5_1, 4);
}
#[test]
fn dequant_q8_0_matches_format() {
    check_dequant(GgmlType::Q8_0, gt::Q8_0, 5);
}
#[test]
fn dequant_q4_k_matches_format() {
    check_dequant(GgmlType::Q4_K, gt::Q4_K, 6);
}
#[test]
fn dequant_q5_k_matches_format() {
    check_dequant(GgmlType::Q5_K, gt::Q5_K, 7);
}
#[test]
fn dequant_q6_k_matches_format() {
    check_dequant(GgmlType::Q6_K, gt::Q6_K, 8);
}
#[test]
fn dequant_float_types() {
    check_dequant(GgmlType::F32, gt::F32, 9);
    check_dequant(GgmlType::F16, gt::F16, 10);
    check_dequant(GgmlType::BF16, gt::BF16, 11);
}

// ---------------------------------------------------------------------------------------------
// Q/K permutation

/// convert_hf_to_gguf.py: `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2).reshape(rows, in)`:
/// element [h, i, s] of the result is element [h, s, i] of the input.
fn llama_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for hh in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                let dst = (hh * half + i) * 2 + s; // index in [n_head, D/2, 2]
                let src = (hh * 2 + s) * half + i; // index in [n_head, 2, D/2]
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // One head of 4 rows: HF rows [r0 r1 | r2 r3] (halves) are stored interleaved [r0 r2 r1 r3].
    let p = llama_permute(&[0.0, 1.0, 2.0, 3.0], 4, 1);
    assert_eq!(p, vec![0.0, 2.0, 1.0, 3.0]);
    let mut rng = Rng(42);
    for (rows, cols, heads) in [(576, 8, 9), (192, 5, 3), (8, 3, 2), (12, 1, 3)] {
        let hf = HostTensor::from_fn(&[rows, cols], |_| rng.unit());
        let stored = HostTensor::new(vec![rows, cols], llama_permute(&hf.data, rows, heads)).unwrap();
        assert_ne!(stored.data, hf.data);
        assert_eq!(unpermute_qk(&stored, heads).unwrap().data, hf.data, "rows {rows} heads {heads}");
    }
    // 1-D biases are permuted the same way.
    let b = HostTensor::from_fn(&[12], |i| i as f32);
    let stored = HostTensor::new(vec![12], llama_permute(&b.data, 12, 2)).unwrap();
    assert_eq!(unpermute_qk(&stored, 2).unwrap(), b);
}

// ---------------------------------------------------------------------------------------------
// Synthetic models

const TOKENS: [&str; 11] =
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "<tool>"];

fn tokenizer_meta(b: &mut GgufBuilder, pre: &str) {
    b.str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", pre)
        .str_array("tokenizer.ggml.tokens", &TOKENS)
        .i32_array("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4])
        .str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .u32("tokenizer.ggml.unknown_token_id", 0)
        .bool("tokenizer.ggml.add_bos_token", false)
        .str("tokenizer.chat_template", "{{ messages }}");
}

/// A GGUF builder plus the HF tensors the import must produce from it.
struct Synth {
    b: GgufBuilder,
    expected: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Synth {
    /// Add a GGUF tensor of type `ty` with random contents; expect it under `hf` (optionally after
    /// the llama Q/K un-permutation over `heads`).
    fn add(&mut self, rng: &mut Rng, gguf: &str, hf: &str, shape: &[usize], ty: u32, heads: Option<usize>) {
        let numel = shape.iter().product();
        let (bytes, vals) = random_tensor(ty, numel, rng);
        let vals = match heads {
            // The GGUF holds permute(hf); generate hf, store its permutation.
            Some(nh) => {
                assert!(matches!(ty, gt::F32 | gt::F16 | gt::BF16));
                let stored = llama_permute(&vals, shape[0], nh);
                let bytes: Vec<u8> = match ty {
                    gt::F32 => stored.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    gt::F16 => stored.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
                    _ => stored.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
                };
                self.b.tensor(gguf, shape, ty, bytes);
                vals
            }
            None => {
                self.b.tensor(gguf, shape, ty, bytes);
                vals
            }
        };
        self.expected.push((hf.to_string(), shape.to_vec(), vals));
    }
}

const HID: usize = 256;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 64;
const INTER: usize = 512;

fn hyper(b: &mut GgufBuilder, arch: &str, layers: u32) {
    b.str("general.architecture", arch)
        .str("general.name", "synthetic")
        .u32(&format!("{arch}.block_count"), layers)
        .u32(&format!("{arch}.context_length"), 4096)
        .u32(&format!("{arch}.embedding_length"), HID as u32)
        .u32(&format!("{arch}.feed_forward_length"), INTER as u32)
        .u32(&format!("{arch}.attention.head_count"), HEADS as u32)
        .u32(&format!("{arch}.attention.head_count_kv"), KV as u32)
        .f32(&format!("{arch}.rope.freq_base"), 500000.0)
        .f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-6);
}

/// A 2-layer llama (permuted q/k, untied head) using every supported tensor type.
fn synth_llama() -> Synth {
    let mut rng = Rng(0x1234_5678);
    let mut s = Synth { b: GgufBuilder::new(), expected: Vec::new() };
    hyper(&mut s.b, "llama", 2);
    s.b.u32("llama.rope.dimension_count", HD as u32);
    tokenizer_meta(&mut s.b, "smollm");
    let v = TOKENS.len();
    s.add(&mut rng, "token_embd.weight", "model.embed_tokens.weight", &[v, HID], gt::Q8_0, None);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        let g = |n: &str| format!("blk.{i}.{n}");
        s.add(&mut rng, &g("attn_norm.weight"), &format!("{p}.input_layernorm.weight"), &[HID], gt::F32, None);
        s.add(
            &mut rng,
            &g("attn_q.weight"),
            &format!("{p}.self_attn.q_proj.weight"),
            &[HEADS * HD, HID],
            gt::F32,
            Some(HEADS),
        );
        s.add(
            &mut rng,
            &g("attn_k.weight"),
            &format!("{p}.self_attn.k_proj.weight"),
            &[KV * HD, HID],
            gt::F16,
            Some(KV),
        );
        let vt_ = if i == 0 { gt::Q4_1 } else { gt::Q4_0 };
        s.add(&mut rng, &g("attn_v.weight"), &format!("{p}.self_attn.v_proj.weight"), &[KV * HD, HID], vt_, None);
        let ot = if i == 0 { gt::Q5_0 } else { gt::Q5_1 };
        s.add(
            &mut rng,
            &g("attn_output.weight"),
            &format!("{p}.self_attn.o_proj.weight"),
            &[HID, HEADS * HD],
            ot,
            None,
        );
        s.add(&mut rng, &g("ffn_norm.weight"), &format!("{p}.post_attention_layernorm.weight"), &[HID], gt::F32, None);
        s.add(&mut rng, &g("ffn_gate.weight"), &format!("{p}.mlp.gate_proj.weight"), &[INTER, HID], gt::Q4_K, None);
        s.add(&mut rng, &g("ffn_up.weight"), &format!("{p}.mlp.up_proj.weight"), &[INTER, HID], gt::Q5_K, None);
        s.add(&mut rng, &g("ffn_down.weight"), &format!("{p}.mlp.down_proj.weight"), &[HID, INTER], gt::Q6_K, None);
    }
    s.add(&mut rng, "output_norm.weight", "model.norm.weight", &[HID], gt::F32, None);
    s.add(&mut rng, "output.weight", "lm_head.weight", &[v, HID], gt::BF16, None);
    s
}

/// A 1-layer qwen2 (q/k/v biases, no permutation, tied embeddings).
fn synth_qwen2() -> Synth {
    let mut rng = Rng(0x9876_5432);
    let mut s = Synth { b: GgufBuilder::new(), expected: Vec::new() };
    hyper(&mut s.b, "qwen2", 1);
    tokenizer_meta(&mut s.b, "qwen2");
    s.add(&mut rng, "token_embd.weight", "model.embed_tokens.weight", &[TOKENS.len(), HID], gt::F16, None);
    let p = "model.layers.0";
    s.add(&mut rng, "blk.0.attn_norm.weight", &format!("{p}.input_layernorm.weight"), &[HID], gt::F32, None);
    for (n, hf, rows, ty) in
        [("q", "q_proj", HEADS * HD, gt::Q8_0), ("k", "k_proj", KV * HD, gt::Q4_K), ("v", "v_proj", KV * HD, gt::Q6_K)]
    {
        s.add(
            &mut rng,
            &format!("blk.0.attn_{n}.weight"),
            &format!("{p}.self_attn.{hf}.weight"),
            &[rows, HID],
            ty,
            None,
        );
        s.add(&mut rng, &format!("blk.0.attn_{n}.bias"), &format!("{p}.self_attn.{hf}.bias"), &[rows], gt::F32, None);
    }
    s.add(
        &mut rng,
        "blk.0.attn_output.weight",
        &format!("{p}.self_attn.o_proj.weight"),
        &[HID, HEADS * HD],
        gt::Q5_1,
        None,
    );
    s.add(&mut rng, "blk.0.ffn_norm.weight", &format!("{p}.post_attention_layernorm.weight"), &[HID], gt::F32, None);
    s.add(&mut rng, "blk.0.ffn_gate.weight", &format!("{p}.mlp.gate_proj.weight"), &[INTER, HID], gt::Q4_0, None);
    s.add(&mut rng, "blk.0.ffn_up.weight", &format!("{p}.mlp.up_proj.weight"), &[INTER, HID], gt::Q5_0, None);
    s.add(&mut rng, "blk.0.ffn_down.weight", &format!("{p}.mlp.down_proj.weight"), &[HID, INTER], gt::Q4_1, None);
    s.add(&mut rng, "output_norm.weight", "model.norm.weight", &[HID], gt::F32, None);
    s
}

fn assert_weights(out: &Path, s: &Synth, dtype: DType) {
    let repo = SafetensorsRepo::open_dir(out).unwrap();
    let mut names: Vec<&str> = repo.names().collect();
    names.sort();
    let mut want: Vec<&str> = s.expected.iter().map(|e| e.0.as_str()).collect();
    want.sort();
    assert_eq!(names, want, "tensor names");
    for (name, shape, vals) in &s.expected {
        let t = repo.get_f32(name).unwrap();
        assert_eq!(&t.shape, shape, "{name}");
        assert_eq!(format!("{:?}", repo.meta(name).unwrap().dtype), dtype.safetensors_name(), "{name}");
        for (i, (g, w)) in t.data.iter().zip(vals).enumerate() {
            let w = dtype.decode(&dtype.encode(&[*w]))[0];
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: got {g}, want {w}");
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn synthetic_llama_imports_exactly() {
    let dir = TempDir::new("llama");
    let s = synth_llama();
    let src = dir.0.join("m.gguf");
    s.b.write(&src);
    let out = dir.0.join("hf");
    let r = import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    assert_eq!((r.arch.as_str(), r.tensors, r.vocab_size), ("llama", s.expected.len(), TOKENS.len()));
    assert_eq!(r.parameters, s.expected.iter().map(|e| e.2.len()).sum::<usize>());
    assert_eq!(r.source_types.get("Q6_K"), Some(&2));
    assert_weights(&out, &s, DType::F32);

    let c = ModelConfig::from_file(&out.join("config.json")).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (HID, INTER, 2, HEADS, KV, HD)
    );
    assert_eq!((c.vocab_size, c.max_position_embeddings), (TOKENS.len(), 4096));
    // f32 metadata 1e-6 is written as the decimal 1e-6, not 9.99999997e-7.
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500000.0));
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
    let raw = json(&out.join("config.json"));
    assert_eq!(raw["torch_dtype"], "float32");
    assert_eq!(raw["architectures"][0], "LlamaForCausalLM");
    let gen = json(&out.join("generation_config.json"));
    assert_eq!((gen["bos_token_id"].as_u64(), gen["eos_token_id"].as_u64()), (Some(1), Some(2)));

    // Tokenizer: loads, merges apply, digits split, specials recognised, round trip.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok.encode("ab ab12", false).unwrap();
    assert_eq!(enc.get_ids(), &[5, 7, 8, 9], "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "ab ab12");
    let enc = tok.encode("<|im_start|>ab<tool>", false).unwrap();
    assert_eq!(enc.get_ids(), &[1, 5, 10]);
    assert_eq!(tok.decode(&[1, 5, 10], true).unwrap(), "ab<tool>", "control tokens are special, user-defined are not");
    let tc = json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["unk_token"], "<|endoftext|>");
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(tc["model_max_length"], 4096);
    assert_eq!(tc["tokenizer_class"], "GPT2Tokenizer");
    assert_eq!(tc["added_tokens_decoder"]["10"]["special"], false);
    assert_eq!(tc["added_tokens_decoder"]["2"]["special"], true);
    assert!(tc["added_tokens_decoder"].get("5").is_none());
}

#[test]
fn synthetic_qwen2_imports_exactly_and_in_f16() {
    let dir = TempDir::new("qwen2");
    let s = synth_qwen2();
    let src = dir.0.join("q.gguf");
    s.b.write(&src);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let out = dir.0.join(format!("hf-{}", dtype.safetensors_name()));
        let r = import_gguf(&src, &out, &ImportOptions { dtype, force: false }).unwrap();
        assert_eq!(r.arch, "qwen2");
        assert_weights(&out, &s, dtype);
        let c = ModelConfig::from_file(&out.join("config.json")).unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert!(c.tie_word_embeddings && c.attention_bias);
        assert_eq!(c.torch_dtype, Some(dtype));
    }
    // Qwen2's pre-tokenizer: the regex isolates each digit, ByteLevel maps the space.
    let tok = tokenizers::Tokenizer::from_file(dir.0.join("hf-F32/tokenizer.json")).unwrap();
    let enc = tok.encode("ab ab12", false).unwrap();
    assert_eq!(enc.get_ids(), &[5, 7, 8, 9], "{:?}", enc.get_tokens());
    assert_eq!(json(&dir.0.join("hf-F32/tokenizer_config.json"))["tokenizer_class"], "Qwen2Tokenizer");
}

#[test]
fn add_bos_token_uses_a_template() {
    let dir = TempDir::new("bos");
    let mut s = synth_qwen2();
    s.b.bool("tokenizer.ggml.add_bos_token", true);
    s.b.str("tokenizer.ggml.pre", "llama-bpe");
    let src = dir.0.join("q.gguf");
    s.b.write(&src);
    let out = dir.0.join("hf");
    import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode("ab", true).unwrap().get_ids(), &[1, 5]);
    assert_eq!(tok.encode("ab", false).unwrap().get_ids(), &[5]);
    let tc = json(&out.join("tokenizer_config.json"));
    assert_eq!(
        (tc["add_bos_token"].as_bool(), tc["tokenizer_class"].as_str()),
        (Some(true), Some("PreTrainedTokenizerFast"))
    );
}

#[test]
fn import_is_deterministic_across_thread_counts() {
    let dir = TempDir::new("det");
    let src = dir.0.join("m.gguf");
    synth_llama().b.write(&src);
    let (a, b) = (dir.0.join("a"), dir.0.join("b"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| import_gguf(&src, &a, &ImportOptions::default()))
        .unwrap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(|| import_gguf(&src, &b, &ImportOptions::default()))
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&a).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 5);
    for f in files {
        assert!(std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(), "{f:?} differs");
    }
}

// ---------------------------------------------------------------------------------------------
// Reader details

#[test]
fn metadata_types_nested_arrays_v2_and_alignment() {
    let dir = TempDir::new("meta");
    let mut b = GgufBuilder::new();
    b.version = 2;
    b.alignment = 64;
    b.u32("general.alignment", 64);
    b.kv_raw("u8", vt::U8, vec![200]);
    b.kv_raw("i8", vt::I8, vec![0xFF]);
    b.kv_raw("u16", vt::U16, 60000u16.to_le_bytes().to_vec());
    b.kv_raw("i16", vt::I16, (-300i16).to_le_bytes().to_vec());
    b.kv_raw("i32", vt::I32, (-5i32).to_le_bytes().to_vec());
    b.u64("u64", 1 << 40);
    b.kv_raw("i64", vt::I64, (-7i64).to_le_bytes().to_vec());
    b.f32("f32", 0.5);
    b.kv_raw("f64", vt::F64, 0.25f64.to_le_bytes().to_vec());
    b.bool("bool", true);
    b.str("str", "héllo");
    // [[1, 2], [3]] as an array of u8 arrays.
    let mut nested = vt::ARRAY.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    for inner in [&[1u8, 2][..], &[3u8][..]] {
        nested.extend(vt::U8.to_le_bytes());
        nested.extend((inner.len() as u64).to_le_bytes());
        nested.extend(inner);
    }
    b.kv_raw("nested", vt::ARRAY, nested);
    b.tensor_f32("a", &[3], &[1.0, 2.0, 3.0]);
    b.tensor_f32("b", &[2, 2], &[4.0, 5.0, 6.0, 7.0]);
    let p = dir.0.join("m.gguf");
    b.write(&p);
    let g = GgufFile::open(&p).unwrap();
    assert_eq!((g.version(), g.alignment()), (2, 64));
    assert_eq!(g.get("u8"), Some(&MetaValue::U8(200)));
    assert_eq!(g.get("i8"), Some(&MetaValue::I8(-1)));
    assert_eq!(g.get("u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(g.get("i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(g.get("i32"), Some(&MetaValue::I32(-5)));
    assert_eq!(g.get_u64("u64").unwrap(), Some(1 << 40));
    assert_eq!(g.get("i64"), Some(&MetaValue::I64(-7)));
    assert_eq!(g.get_f64("f32").unwrap(), Some(0.5));
    assert_eq!(g.get_f64("f64").unwrap(), Some(0.25));
    assert_eq!(g.get_bool("bool").unwrap(), Some(true));
    assert_eq!(g.get_str("str").unwrap(), Some("héllo"));
    assert_eq!(
        g.get("nested"),
        Some(&MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)]),
            MetaValue::Array(vec![MetaValue::U8(3)])
        ]))
    );
    let e = g.get_str("u8").unwrap_err();
    assert!(e.msg.contains("metadata key \"u8\" must be a string, got u8"), "{}", e.msg);
    assert!(g.get_u64("i32").is_err(), "negative integers are not u64");
    assert_eq!(g.tensor_f32("b").unwrap(), HostTensor::new(vec![2, 2], vec![4.0, 5.0, 6.0, 7.0]).unwrap());
    assert_eq!(g.tensor("b").unwrap().file_offset() % 64, 0);
    assert_eq!(g.tensor_f32("a").unwrap().data, vec![1.0, 2.0, 3.0]);
}

// ---------------------------------------------------------------------------------------------
// Real model

#[test]
fn real_smollm2_imports_exactly() {
    let src = fixture("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = TempDir::new("smollm2");
    let out = dir.0.join("hf");
    let t0 = std::time::Instant::now();
    let r = import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    eprintln!("SmolLM2 import took {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!((r.arch.as_str(), r.tensors, r.parameters), ("llama", 272, 134_515_008));
    assert_eq!(r.source_types.get("Q4_1"), Some(&210));
    assert_eq!(r.source_types.get("Q8_0"), Some(&1));

    // stack-notes: 30 layers, hidden 576, inter 1536, 9 heads, 3 kv, theta 1e5, eps 1e-5, vocab 49152, tied.
    let c = ModelConfig::from_file(&out.join("config.json")).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads),
        (30, 576, 1536, 9, 3)
    );
    assert_eq!((c.head_dim, c.vocab_size, c.rope_theta, c.rms_norm_eps), (64, 49152, 100000.0, 1e-5));
    assert!(c.tie_word_embeddings);
    assert_eq!((c.bos_token_id, c.eos_token_id, c.max_position_embeddings), (Some(1), Some(2), 8192));

    // Every HF tensor equals the dequantized GGUF tensor (un-permuted for q/k), exactly.
    let g = GgufFile::open(&src).unwrap();
    let repo = SafetensorsRepo::open_dir(&out).unwrap();
    assert_eq!(repo.names().count(), 272);
    let mut pairs = vec![("token_embd.weight".to_string(), "model.embed_tokens.weight".to_string(), None)];
    pairs.push(("output_norm.weight".into(), "model.norm.weight".into(), None));
    for i in 0..30 {
        let p = format!("model.layers.{i}");
        for (gn, hn, heads) in [
            ("attn_norm", "input_layernorm", None),
            ("ffn_norm", "post_attention_layernorm", None),
            ("attn_q", "self_attn.q_proj", Some(9)),
            ("attn_k", "self_attn.k_proj", Some(3)),
            ("attn_v", "self_attn.v_proj", None),
            ("attn_output", "self_attn.o_proj", None),
            ("ffn_gate", "mlp.gate_proj", None),
            ("ffn_up", "mlp.up_proj", None),
            ("ffn_down", "mlp.down_proj", None),
        ] {
            pairs.push((format!("blk.{i}.{gn}.weight"), format!("{p}.{hn}.weight"), heads));
        }
    }
    for (gn, hn, heads) in &pairs {
        let mut want = g.tensor_f32(gn).unwrap();
        if let Some(nh) = heads {
            want = unpermute_qk(&want, *nh).unwrap();
        }
        let got = repo.get_f32(hn).unwrap();
        assert_eq!(got.shape, want.shape, "{hn}");
        assert!(got.data == want.data, "{hn} differs from {gn}");
    }

    // Independent spot checks from the raw bytes (stack-notes block layouts).
    // Q8_0 embedding, row 1000: block b = 32 values, 34 bytes {f16 d, 32 x i8}.
    let emb = repo.get_f32("model.embed_tokens.weight").unwrap();
    let ti = g.tensor("token_embd.weight").unwrap();
    assert_eq!(ti.ty, GgmlType::Q8_0);
    let raw = g.tensor_bytes(ti);
    let blk = &raw[(1000 * 576 / 32 + 3) * 34..][..34];
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
    for j in 0..32 {
        assert_eq!(emb.data[1000 * 576 + 3 * 32 + j], ((blk[2 + j] as i8) as f64 * d) as f32);
    }
    // Q4_1 down_proj of layer 7, row 5, block 2: {f16 d, f16 m, 16 bytes}, low nibbles 0..15.
    let down = repo.get_f32("model.layers.7.mlp.down_proj.weight").unwrap();
    let ti = g.tensor("blk.7.ffn_down.weight").unwrap();
    assert_eq!(ti.ty, GgmlType::Q4_1);
    let blk = &g.tensor_bytes(ti)[(5 * 1536 / 32 + 2) * 20..][..20];
    let (d, m) = (f16::from_le_bytes([blk[0], blk[1]]).to_f64(), f16::from_le_bytes([blk[2], blk[3]]).to_f64());
    for j in 0..16 {
        let at = 5 * 1536 + 2 * 32;
        assert_eq!(down.data[at + j], ((blk[4 + j] & 15) as f64 * d + m) as f32);
        assert_eq!(down.data[at + 16 + j], ((blk[4 + j] >> 4) as f64 * d + m) as f32);
    }
    // q_proj: within head h, HF row h*64 + s*32 + i is GGUF row h*64 + 2i + s.
    let q_hf = repo.get_f32("model.layers.3.self_attn.q_proj.weight").unwrap();
    let q_gg = g.tensor_f32("blk.3.attn_q.weight").unwrap();
    for (hh, s, i) in [(0, 0, 0), (0, 1, 0), (4, 1, 17), (8, 0, 31)] {
        assert_eq!(q_hf.row(hh * 64 + s * 32 + i), q_gg.row(hh * 64 + 2 * i + s));
    }

    // Tokenizer: loads, digits split one by one, specials, and a wiki paragraph round-trips.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), 49152);
    let enc = tok.encode("In 2024, 12345 apples.", false).unwrap();
    let toks = enc.get_tokens();
    for d in ["2", "0", "4", "1", "3", "5"] {
        assert!(toks.iter().any(|t| t == d), "{toks:?}");
    }
    assert!(
        toks.iter().all(|t| !(t.len() > 1 && t.chars().all(|c| c.is_ascii_digit()))),
        "multi-digit token in {toks:?}"
    );
    assert_eq!(tok.encode("<|im_start|>user", false).unwrap().get_ids()[0], 1);
    let wiki = std::fs::read_to_string(fixture("text/wiki.utf8")).unwrap();
    let para: String =
        wiki.lines().filter(|l| l.len() > 200 && !l.starts_with('<')).take(3).collect::<Vec<_>>().join("\n");
    assert!(para.len() > 600);
    let ids = tok.encode(para.as_str(), false).unwrap().get_ids().to_vec();
    assert!(ids.len() > 100 && ids.len() < para.len() / 2, "{} tokens for {} bytes", ids.len(), para.len());
    assert_eq!(tok.decode(&ids, false).unwrap(), para);
    let tc = json(&out.join("tokenizer_config.json"));
    assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert!(tc["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn open_err(bytes: &[u8], dir: &TempDir) -> (String, String) {
    let p = dir.0.join("bad.gguf");
    std::fs::write(&p, bytes).unwrap();
    let e = GgufFile::open(&p).err().expect("opening should fail");
    assert_eq!(e.kind, ErrorKind::Input, "{}", e.msg);
    let src = p.display().to_string();
    assert!(e.msg.starts_with(&src), "message should name the file: {}", e.msg);
    (e.msg, src)
}

fn assert_open_err(bytes: &[u8], dir: &TempDir, want: &str) {
    let (msg, _) = open_err(bytes, dir);
    assert!(msg.contains(want), "expected {want:?} in: {msg}");
}

fn small() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.str("general.architecture", "llama");
    b.tensor_f32("t", &[2, 32], &[0.5; 64]);
    b
}

#[test]
fn bad_headers() {
    let dir = TempDir::new("badhdr");
    let good = small().build();
    assert_open_err(&good[..10], &dir, "truncated GGUF file: 10 bytes");
    // Counts are checked against the bytes left before anything is read or allocated.
    assert_open_err(
        &good[..28],
        &dir,
        "tensor count = 1 is impossible: only 12 bytes remain in the file (truncated or corrupt)",
    );
    // A fixed-size value cut in half.
    let mut b = GgufBuilder::new();
    b.str("general.architecture", "llama").u64("x", 5);
    let bytes = b.build();
    // header 24 + "general.architecture" kv (8+20+4+8+5) + "x" kv (8+1+4+8); the builder pads after.
    let end = 24 + (8 + 20 + 4 + 8 + 5) + (8 + 1 + 4 + 8);
    assert!(bytes.len() >= end);
    let cut = end - 3;
    assert_open_err(
        &bytes[..cut],
        &dir,
        &format!("truncated file: value of metadata key \"x\" needs 8 bytes at offset {}, only 5 left", cut - 5),
    );
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGUX");
    assert_open_err(&b, &dir, "not a GGUF file");
    for (v, want) in [
        (1u32, "GGUF version 1 is not supported"),
        (7, "unsupported GGUF version 7"),
        (0x0300_0000, "big-endian GGUF files are not supported"),
    ] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_open_err(&b, &dir, want);
    }
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_open_err(&b, &dir, "tensor count = 18446744073709551615 is impossible");
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_open_err(&b, &dir, "metadata count = 1125899906842624 is impossible");
    // The first key's length.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_open_err(&b, &dir, "length of key of metadata entry 0 = 1152921504606846976 is impossible");
}

#[test]
fn bad_metadata_values() {
    let dir = TempDir::new("badmeta");
    // An array claiming 2^40 u32 elements.
    let mut arr = vt::U32.to_le_bytes().to_vec();
    arr.extend((1u64 << 40).to_le_bytes());
    let mut b = small();
    b.kv_raw("big", vt::ARRAY, arr);
    assert_open_err(&b.build(), &dir, "array length of metadata key \"big\" = 1099511627776 is impossible");
    // A string value claiming more bytes than the file has.
    let mut s = (1u64 << 33).to_le_bytes().to_vec();
    s.extend(b"abc");
    let mut b = small();
    b.kv_raw("s", vt::STRING, s);
    assert_open_err(&b.build(), &dir, "length of value of metadata key \"s\" = 8589934592 is impossible");
    let mut b = small();
    b.kv_raw("x", 99, vec![0; 8]);
    assert_open_err(&b.build(), &dir, "metadata key \"x\": unknown value type 99");
    let mut b = small();
    b.kv_raw("flag", vt::BOOL, vec![7]);
    assert_open_err(&b.build(), &dir, "invalid bool byte 7");
    let mut b = small();
    b.kv_raw("u", vt::STRING, {
        let mut v = 2u64.to_le_bytes().to_vec();
        v.extend([0xC3, 0x28]);
        v
    });
    assert_open_err(&b.build(), &dir, "value of metadata key \"u\" is not valid UTF-8");
    let mut b = small();
    b.kvs.push(("general.architecture".into(), vt::STRING, gguf_writer::gguf_string("qwen2")));
    assert_open_err(&b.build(), &dir, "metadata key \"general.architecture\" appears twice");
    let mut b = small();
    b.u32("general.alignment", 24);
    assert_open_err(&b.build(), &dir, "general.alignment = 24 is not a power of two");
}

#[test]
fn bad_tensor_tables() {
    let dir = TempDir::new("badtensor");
    let mut b = small();
    b.tensor("q2", &[1, 256], gt::Q2_K, vec![0; 84]);
    assert_open_err(&b.build(), &dir, "tensor \"q2\" has unsupported ggml type Q2_K (type id 10)");
    let mut b = small();
    b.tensor_dims("five", vec![1, 1, 1, 1, 1], gt::F32, vec![0; 4]);
    assert_open_err(&b.build(), &dir, "tensor \"five\" has 5 dimensions");
    let mut b = small();
    b.tensor_dims("zero", vec![4, 0], gt::F32, vec![]);
    assert_open_err(&b.build(), &dir, "tensor \"zero\" has a zero dimension");
    let mut b = small();
    b.tensor_dims("huge", vec![1 << 32, 1 << 32, 1 << 32], gt::F32, vec![0; 4]);
    assert_open_err(&b.build(), &dir, "tensor \"huge\": element count of dims");
    let mut b = small();
    b.tensor("odd", &[2, 48], gt::Q8_0, vec![0; 102]);
    assert_open_err(&b.build(), &dir, "tensor \"odd\": row length 48 is not a multiple of the Q8_0 block size 32");
    let mut b = small();
    b.tensors.push(gguf_writer::Tensor { name: "t".into(), dims: vec![4], ty: gt::F32, data: vec![0; 16] });
    assert_open_err(&b.build(), &dir, "tensor name \"t\" appears twice");
    // Data cut short: the last tensor extends past the end.
    let good = small().build();
    assert_open_err(
        &good[..good.len() - 100],
        &dir,
        "tensor \"t\": data (offset 0, 256 bytes) extends past the end of the file",
    );
    // An offset far past the end (patched in the tensor table: the last 8 bytes before padding).
    let mut b = small();
    b.tensor_f32("u", &[4], &[1.0; 4]);
    let bytes = b.build();
    let needle: Vec<u8> =
        [&gguf_writer::gguf_string("u")[..], &1u32.to_le_bytes(), &4u64.to_le_bytes(), &0u32.to_le_bytes()].concat();
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap() + needle.len();
    let mut bad = bytes.clone();
    bad[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_open_err(&bad, &dir, "tensor \"u\": data (offset 1099511627776, 16 bytes) extends past the end");
    bad[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert_open_err(&bad, &dir, "extends past the end");
    bad[at..at + 8].copy_from_slice(&260u64.to_le_bytes());
    assert_open_err(&bad, &dir, "data offset 260 is not 32-byte aligned");
}

/// Import `b`; it must fail with `want` in a message naming the file, and leave the directory as
/// it was (only the source file).
fn assert_import_err(b: &GgufBuilder, want: &str) {
    let dir = TempDir::new("badimport");
    let src = dir.0.join("m.gguf");
    b.write(&src);
    let e = import_gguf(&src, &dir.0.join("out"), &ImportOptions::default()).expect_err("import should fail");
    assert!(e.msg.starts_with(&src.display().to_string()), "message should name the file: {}", e.msg);
    assert!(e.msg.contains(want), "expected {want:?} in: {}", e.msg);
    assert_eq!(e.kind, ErrorKind::Input);
    assert_eq!(dir.entries(), vec!["m.gguf".to_string()], "something was left behind");
}

#[test]
fn bad_models_are_refused_cleanly() {
    let s = synth_llama();
    let mut b = synth_llama().b;
    b.str("general.architecture", "gpt2");
    assert_import_err(&b, "unsupported architecture \"gpt2\" (supported: llama, qwen2)");
    let mut b = synth_llama().b;
    b.remove("llama.embedding_length");
    assert_import_err(&b, "missing required metadata key \"llama.embedding_length\"");
    let mut b = synth_llama().b;
    b.remove("tokenizer.ggml.tokens");
    assert_import_err(&b, "missing required metadata key \"tokenizer.ggml.tokens\"");
    let mut b = synth_llama().b;
    b.str("llama.block_count", "two");
    assert_import_err(&b, "metadata key \"llama.block_count\" must be a non-negative integer, got string");
    let mut b = synth_llama().b;
    b.u32("llama.attention.head_count_kv", 3);
    assert_import_err(&b, "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
    let mut b = synth_llama().b;
    b.u32("llama.rope.dimension_count", 32);
    assert_import_err(&b, "llama.rope.dimension_count = 32 differs from the head size 64");
    let mut b = synth_llama().b;
    b.tensor_f32("blk.0.attn_k.weight", &[64, HID], &vec![0.0; 64 * HID]);
    assert_import_err(
        &b,
        "tensor \"blk.0.attn_k.weight\" has shape [64, 256] (GGUF dims [256, 64]), expected [128, 256]",
    );
    let mut b = synth_llama().b;
    b.remove_tensor("blk.1.ffn_up.weight");
    assert_import_err(&b, "tensor \"blk.1.ffn_up.weight\" is missing");
    let mut b = synth_llama().b;
    b.tensor_f32("blk.2.attn_norm.weight", &[HID], &vec![1.0; HID]);
    assert_import_err(&b, "unexpected tensor \"blk.2.attn_norm.weight\" for a 2-layer llama model");
    let mut b = synth_llama().b;
    b.tensor_f32("rope_freqs.weight", &[32], &[1.0; 32]);
    assert_import_err(&b, "rope_freqs.weight");
    let mut b = synth_llama().b;
    b.str("tokenizer.ggml.model", "llama");
    assert_import_err(&b, "SentencePiece tokenizers");
    let mut b = synth_llama().b;
    b.str("tokenizer.ggml.pre", "klingon");
    assert_import_err(&b, "unsupported tokenizer.ggml.pre \"klingon\"");
    let mut b = synth_llama().b;
    b.str_array("tokenizer.ggml.merges", &["a b", "x y"]);
    assert_import_err(&b, "tokenizer.ggml.merges[1] = \"x y\" is not two vocabulary tokens");
    let mut b = synth_llama().b;
    b.u32("tokenizer.ggml.eos_token_id", 11);
    assert_import_err(&b, "tokenizer.ggml.eos_token_id = 11 is outside the vocabulary of 11");
    // Embedding rows must match the vocabulary.
    let mut b = synth_llama().b;
    b.str_array("tokenizer.ggml.tokens", &TOKENS[..10]);
    b.i32_array("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 1, 1]);
    assert_import_err(&b, "tensor \"token_embd.weight\" has shape [11, 256]");
    // A file whose data was cut off fails before anything is written.
    let dir = TempDir::new("cut");
    let src = dir.0.join("m.gguf");
    let bytes = s.b.build();
    std::fs::write(&src, &bytes[..bytes.len() / 2]).unwrap();
    let e = import_gguf(&src, &dir.0.join("out"), &ImportOptions::default()).unwrap_err();
    assert!(e.msg.contains("extends past the end of the file"), "{}", e.msg);
    assert_eq!(dir.entries(), vec!["m.gguf".to_string()]);
}

#[test]
fn existing_output_needs_force() {
    let dir = TempDir::new("force");
    let src = dir.0.join("m.gguf");
    synth_qwen2().b.write(&src);
    let out = dir.0.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"old").unwrap();
    let e = import_gguf(&src, &out, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Usage);
    assert!(e.msg.contains("output path exists") && e.msg.contains("--force"), "{}", e.msg);
    assert!(out.join("keep.txt").exists());
    assert_eq!(dir.entries(), vec!["m.gguf".to_string(), "out".to_string()], "nothing new next to the output");
    import_gguf(&src, &out, &ImportOptions { dtype: DType::F32, force: true }).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").exists());
    assert_eq!(dir.entries(), vec!["m.gguf".to_string(), "out".to_string()]);
    // config_from_gguf alone works on the same file.
    let c = config_from_gguf(&GgufFile::open(&src).unwrap()).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
}
