//! The CPU inference model: every weight and every step on the host, no tensor library in the
//! loop. Quantized checkpoints stay packed INT4 (`int4_cpu` kernels) with an f16 embedding / LM
//! head; full-precision models keep f32 weights (the `gemm` crate). `Llama<B>` on the CPU backend
//! delegates to this for evaluation and decoding (see `Llama::host`).
//!
//! The one decoding entry point is [`HostLlama::step`]: several sequences, each with one or more
//! new tokens (a decode token, or a chunk of its prompt), go through the model in **one pass over
//! the weights**: their rows are stacked into one `[M, H]` activation and every projection is one
//! `[M, K]·[K, N]` product. Attention is per sequence over its block table in the KV cache.
//!
//! Shapes: `M` stacked rows, `H` hidden, `Hq`/`Hkv` query/KV heads, `D` head_dim, `I`
//! intermediate, `V` vocab. All activations are row-major `[M, width]` `Vec<f32>`.
//!
//! Batch invariance: each row's result does not depend on which other rows share the step (norms,
//! RoPE, attention and the INT4 / f16 kernels reduce every output in a fixed order per row), so a
//! greedy request decodes the same tokens alone or among many. The f32 path of full-precision
//! models goes through `gemm`, whose blocking may depend on M.

use crate::engine::attention_cpu::{causal_attention, exp_neg, silu_mul_rows, AttnShape};
use crate::engine::int4_cpu::{self, F16Matrix, PackedInt4};
use crate::engine::q8_cpu::{self, Q8Matrix};
use crate::engine::w4a8_cpu::{self, PackedW4A8};
use crate::engine::kv_cache::{HeadBlock, KvCache, SeqState};
use crate::engine::team::SendPtr;
use crate::engine::rope::Rope;
use crate::error::{Error, Result};
use crate::model::arch::{GlobalWeights, LayerWeights, Linear};
use crate::model::config::ModelConfig;
use crate::quant::int4::QuantizedLinear;
use crate::quant::qmodel::QuantizedLayer;
use rayon::prelude::*;

/// How the CPU multiplies activations with INT4 weights (`--activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activations {
    /// f32 activations (W4A16, `int4_cpu.rs`): the arithmetic GPUs and vLLM use; perplexity
    /// equals the dequantized model's to f32 rounding. The library default; the CLI's
    /// `generate`, `chat`, `serve` and `bench-engine` default to `Int8`.
    #[default]
    F32,
    /// Activations rounded to int8 per 32 values, integer dot products (`w4a8_cpu.rs`, as
    /// llama.cpp's Q4_0 x Q8_0): several times the f32 rate on the CPU.
    Int8,
}

/// A projection's weight on the host, `[N, K]` (nn.Linear orientation).
pub enum HostWeight {
    F32(Vec<f32>),
    /// INT4 for f32 activations.
    Int4(PackedInt4),
    /// INT4 for int8 activations.
    W4A8(PackedW4A8),
}

/// `y = x·Wᵀ + b`.
pub struct HostLinear {
    pub n: usize,
    pub k: usize,
    pub w: HostWeight,
    pub b: Option<Vec<f32>>,
    /// Float zero points (`--zero-point float`): the packed kernels use each zero rounded to an
    /// integer z', and `(q - z)·s = (q - z')·s + (z' - z)·s`, so the rest is a per-(row, group)
    /// offset `[N, K/g]` times the group's activation sum: `y[m, n] += Σ_g xsum[m, g]·off[n, g]`
    /// (1/g of the main product's work).
    pub zero_offsets: Option<ZeroOffsets>,
}

/// The `(z' - z)·s` offsets of a linear with float zero points, `[N, K/g]`.
pub struct ZeroOffsets {
    pub group: usize,
    pub off: Vec<f32>,
}

impl ZeroOffsets {
    fn of(l: &QuantizedLinear) -> Option<Self> {
        l.float_zeros.as_ref()?;
        let off = (0..l.zeros.len()).map(|c| (l.zeros[c] as f32 - l.zero_at(c)) * l.scales[c].to_f32()).collect();
        Some(ZeroOffsets { group: l.params.group, off })
    }

    /// `y [M, N] += xsum [M, K/g] · offᵀ`, in f32.
    fn apply(&self, x: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) {
        let groups = k / self.group;
        let xsum: Vec<f32> = x.chunks(self.group).map(|g| g.iter().sum()).collect();
        debug_assert_eq!(xsum.len(), m * groups);
        crate::engine::team::par_chunks_mut(y, n * 64, |c, rows| {
            let first = c * 64;
            for (i, row) in rows.chunks_mut(n).enumerate() {
                let xs = &xsum[(first + i) * groups..(first + i + 1) * groups];
                for (j, yv) in row.iter_mut().enumerate() {
                    *yv += dot(xs, &self.off[j * groups..(j + 1) * groups]);
                }
            }
        });
    }
}

impl HostLinear {
    pub fn from_dense(l: &Linear) -> Self {
        let (n, k) = l.w.dims2();
        HostLinear { n, k, w: HostWeight::F32(l.w.data.clone()), b: l.b.clone(), zero_offsets: None }
    }

    /// Packed for `act` (int8 activations need a group size that is a multiple of 32; other
    /// layers keep f32 activations).
    pub fn from_quantized(l: &QuantizedLinear, act: Activations) -> Result<Self> {
        let w = if act == Activations::Int8 && w4a8_cpu::supports_group(l.params.group) {
            HostWeight::W4A8(PackedW4A8::from_quantized(l)?)
        } else {
            HostWeight::Int4(PackedInt4::from_quantized(l)?)
        };
        Ok(HostLinear { n: l.n, k: l.k, w, b: l.bias.clone(), zero_offsets: ZeroOffsets::of(l) })
    }

    /// Resident bytes of the weight.
    pub fn bytes(&self) -> usize {
        let w = match &self.w {
            HostWeight::F32(w) => w.len() * 4,
            HostWeight::Int4(p) => p.bytes(),
            HostWeight::W4A8(p) => p.bytes(),
        };
        w + self.b.as_ref().map_or(0, |b| b.len() * 4)
    }

    /// `x [M, K] -> [M, N]`
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.k);
        let mut y = vec![0f32; m * self.n];
        match &self.w {
            HostWeight::F32(w) => matmul_f32_nt(x, w, &mut y, m, self.k, self.n),
            HostWeight::Int4(p) => int4_cpu::int4_matmul(x, m, p, &mut y),
            HostWeight::W4A8(p) => w4a8_cpu::w4a8_matmul(&w4a8_cpu::quantize_rows(x, m, self.k, p.group), p, &mut y),
        }
        if let Some(z) = &self.zero_offsets {
            z.apply(x, m, self.k, self.n, &mut y);
        }
        if let Some(b) = &self.b {
            crate::engine::team::par_chunks_mut(&mut y, self.n * 64, |_, rows| rows.chunks_mut(self.n).for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b)));
        }
        y
    }
}

/// `y[M, N] = x[M, K] · w[N, K]ᵀ`. Up to 4 rows (decode): one pass over `w`, each weight row
/// dotted with every activation row (memory-bound). More rows: the `gemm` crate (w read through a
/// transposed view), faster from there on; its blocking may depend on M, so full-precision models
/// are not batch-invariant (the INT4 path is).
fn matmul_f32_nt(x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    if m <= 4 {
        // Tasks own blocks of 64 weight rows; the block's outputs are `[rows, M]`, scattered after.
        const ROWS: usize = 64;
        let mut yt = vec![0f32; n * m];
        crate::engine::team::par_chunks_mut(&mut yt, ROWS * m, |b, out| {
            for (r, o) in out.chunks_mut(m).enumerate() {
                let wr = &w[(b * ROWS + r) * k..(b * ROWS + r + 1) * k];
                for (i, oi) in o.iter_mut().enumerate() {
                    *oi = dot(&x[i * k..(i + 1) * k], wr);
                }
            }
        });
        for (j, row) in yt.chunks(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                y[i * n + j] = v;
            }
        }
        return;
    }
    // Column blocks of y (rows of w) as parallel tasks (through the step's team when there is
    // one), each a single-threaded gemm.
    let threads = rayon::current_num_threads().max(1);
    let nb = if m * n * k >= 1 << 16 { n.div_ceil(4 * threads).next_multiple_of(16) } else { n };
    let yp = int4_cpu::SyncPtr(y.as_mut_ptr());
    crate::engine::team::par_for(n.div_ceil(nb), |bi| {
        let (n0, n1) = (bi * nb, ((bi + 1) * nb).min(n));
        // SAFETY: the extents and strides describe sub-blocks of the asserted slices (y: rows
        // of m, columns n0..n1, row stride n; w: rows n0..n1); tasks write disjoint columns, and
        // y aliases neither x nor w.
        unsafe {
            gemm::gemm(
                m, n1 - n0, k, yp.get().add(n0), 1, n as isize, false, x.as_ptr(), 1, k as isize, w.as_ptr().add(n0 * k), k as isize, 1,
                0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None,
            );
        }
    });
}

/// `a · b` with 16 partial sums (vectorises; fixed order).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (av, bv) in ac.zip(bc) {
        for t in 0..16 {
            acc[t] += av[t] * bv[t];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// An embedding table `[V, H]`, also the LM head when tied (logits = h·Eᵀ).
pub enum Table {
    F32(Vec<f32>),
    /// fp16 checkpoints (AutoAWQ / TurboMind store these tensors as f16: kept without loss).
    F16(F16Matrix),
    /// int8 with f16 scales per 32 values (quantized models run with int8 activations).
    Q8(Q8Matrix),
}

impl Table {
    fn row(&self, i: usize, h: usize, out: &mut [f32]) {
        match self {
            Table::F32(w) => out.copy_from_slice(&w[i * h..(i + 1) * h]),
            Table::F16(w) => w.row_f32(i, out),
            Table::Q8(w) => w.row_f32(i, out),
        }
    }
    /// `x [M, H] -> [M, V]`
    fn logits(&self, x: &[f32], m: usize, h: usize, v: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * v];
        match self {
            Table::F32(w) => matmul_f32_nt(x, w, &mut y, m, h, v),
            Table::F16(w) => int4_cpu::f16_matmul(x, m, w, &mut y),
            Table::Q8(w) => q8_cpu::q8_matmul(&w4a8_cpu::quantize_rows(x, m, h, h), w, &mut y),
        }
        y
    }
    fn bytes(&self) -> usize {
        match self {
            Table::F32(w) => w.len() * 4,
            Table::F16(w) => w.bytes(),
            Table::Q8(w) => w.bytes(),
        }
    }
}

/// One decoder layer on the host. q/k/v and gate/up are each stacked into one weight at load
/// (`[Hq·D + 2·Hkv·D, H]`, `[2·I, H]`), so a layer is four products: fewer passes, and each
/// output is still computed from its own weight row exactly as it would be alone.
pub struct HostLayer {
    pub attn_norm: Vec<f32>,
    /// `[q | k | v]` rows.
    pub qkv: HostLinear,
    pub o: HostLinear,
    pub mlp_norm: Vec<f32>,
    /// `[gate | up]` rows.
    pub gate_up: HostLinear,
    pub down: HostLinear,
    /// Output widths of q and of k (= v).
    pub q_dim: usize,
    pub kv_dim: usize,
}

/// Stack dense linears along the output dim; a missing bias counts as zeros.
fn stack_dense(parts: &[&Linear]) -> Result<HostLinear> {
    let w = crate::tensor::HostTensor::concat_rows(&parts.iter().map(|l| &l.w).collect::<Vec<_>>())?;
    let bias = parts.iter().any(|l| l.b.is_some()).then(|| parts.iter().flat_map(|l| l.b.clone().unwrap_or_else(|| vec![0.0; l.w.dims2().0])).collect());
    Ok(HostLinear::from_dense(&Linear { w, b: bias }))
}

/// Stack quantized linears along the output dim; a missing bias counts as zeros.
fn stack_quantized(parts: &[&QuantizedLinear], act: Activations) -> Result<HostLinear> {
    let any_bias = parts.iter().any(|l| l.bias.is_some());
    let owned: Vec<QuantizedLinear> = parts
        .iter()
        .map(|l| {
            let mut l = (*l).clone();
            if any_bias && l.bias.is_none() {
                l.bias = Some(vec![0.0; l.n]);
            }
            l
        })
        .collect();
    HostLinear::from_quantized(&crate::quant::qmodel::concat_rows(&owned.iter().collect::<Vec<_>>())?, act)
}

impl HostLayer {
    pub fn from_dense(w: &LayerWeights) -> Result<Self> {
        Ok(HostLayer {
            attn_norm: w.attn_norm.clone(),
            qkv: stack_dense(&[&w.q, &w.k, &w.v])?,
            o: HostLinear::from_dense(&w.o),
            mlp_norm: w.mlp_norm.clone(),
            gate_up: stack_dense(&[&w.gate, &w.up])?,
            down: HostLinear::from_dense(&w.down),
            q_dim: w.q.w.dims2().0,
            kv_dim: w.k.w.dims2().0,
        })
    }

    pub fn from_quantized(w: &QuantizedLayer, act: Activations) -> Result<Self> {
        Ok(HostLayer {
            attn_norm: w.attn_norm.clone(),
            qkv: stack_quantized(&[&w.q, &w.k, &w.v], act)?,
            o: HostLinear::from_quantized(&w.o, act)?,
            mlp_norm: w.mlp_norm.clone(),
            gate_up: stack_quantized(&[&w.gate, &w.up], act)?,
            down: HostLinear::from_quantized(&w.down, act)?,
            q_dim: w.q.n,
            kv_dim: w.k.n,
        })
    }

    /// The linears, for byte counts and reports.
    pub fn linears(&self) -> [&HostLinear; 4] {
        [&self.qkv, &self.o, &self.gate_up, &self.down]
    }

    fn bytes(&self) -> usize {
        self.linears().iter().map(|l| l.bytes()).sum::<usize>() + (self.attn_norm.len() + self.mlp_norm.len()) * 4
    }

    /// q, k, v projections of `x [M, H]`: `([M, Hq·D], [M, Hkv·D], [M, Hkv·D])`.
    fn qkv(&self, x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let y = self.qkv.forward(x, m);
        let (qd, kd) = (self.q_dim, self.kv_dim);
        let w = qd + 2 * kd;
        let (mut q, mut k, mut v) = (Vec::with_capacity(m * qd), Vec::with_capacity(m * kd), Vec::with_capacity(m * kd));
        for r in y.chunks(w) {
            q.extend_from_slice(&r[..qd]);
            k.extend_from_slice(&r[qd..qd + kd]);
            v.extend_from_slice(&r[qd + kd..]);
        }
        (q, k, v)
    }

    /// The MLP block on `x [M, H]` (after its norm): `down(silu(gate x) * up x)`.
    fn mlp(&self, x: &[f32], m: usize) -> Vec<f32> {
        let gu = self.gate_up.forward(x, m);
        self.down.forward(&silu_mul_rows(&gu, self.gate_up.n / 2), m)
    }
}

/// One sequence's part of a batched step: `tokens` are appended at positions `seq.len..`.
pub struct StepItem<'a> {
    pub seq: &'a mut SeqState,
    pub tokens: &'a [u32],
}

/// The whole decoder on the host.
pub struct HostLlama {
    pub config: ModelConfig,
    pub rope: Rope,
    pub embed: Table,
    /// `None` when tied to the embedding.
    pub lm_head: Option<Table>,
    pub norm: Vec<f32>,
    pub layers: Vec<HostLayer>,
}

impl std::fmt::Debug for HostLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLlama").field("layers", &self.layers.len()).field("weight_bytes", &self.weight_bytes()).finish()
    }
}

/// RMSNorm of every `[H]` row: `x / sqrt(mean(x²) + eps) * w` (sum of squares in f32, in order).
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let h = w.len();
    let mut out = vec![0f32; x.len()];
    let row = |(o, r): (&mut [f32], &[f32])| {
        let ss: f32 = r.iter().map(|v| v * v).sum();
        let inv = 1.0 / ((ss / h as f32) as f64 + eps).sqrt() as f32;
        for ((o, &v), &wv) in o.iter_mut().zip(r).zip(w) {
            *o = v * inv * wv;
        }
    };
    // A few rows (decode) cost less than waking another thread.
    if x.len() < PAR_MIN {
        out.chunks_mut(h).zip(x.chunks(h)).for_each(row);
    } else {
        crate::engine::team::par_chunks_mut(&mut out, h, |i, o| row((o, &x[i * h..(i + 1) * h])));
    }
    out
}

/// Rotate-half RoPE of one head vector at position `p` with a sequence's frequencies.
pub fn rope_at(x: &mut [f32], p: usize, inv_freq: &[f64], scale: f64) {
    rope_apply(x, &rope_table(p, &inv_freq[..x.len() / 2], scale));
}

/// RoPE's `(cos, sin)` (times the attention scale factor) at position `p`, `[D/2]`, from the
/// angles in f64.
pub fn rope_table(p: usize, inv_freq: &[f64], scale: f64) -> Vec<(f32, f32)> {
    inv_freq
        .iter()
        .map(|&f| {
            let a = p as f64 * f;
            ((a.cos() * scale) as f32, (a.sin() * scale) as f32)
        })
        .collect()
}

/// Rotate-half RoPE of one head vector with a [`rope_table`] row.
#[inline]
pub fn rope_apply(x: &mut [f32], cs: &[(f32, f32)]) {
    let half = x.len() / 2;
    for (j, &(c, s)) in cs.iter().enumerate().take(half) {
        let (x0, x1) = (x[j], x[j + half]);
        x[j] = x0 * c - x1 * s;
        x[j + half] = x1 * c + x0 * s;
    }
}

/// Rows per attention task in a step.
const ATT_ROWS: usize = 32;

/// Below this many values, elementwise work runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

fn add_into(x: &mut [f32], y: &[f32]) {
    if x.len() < PAR_MIN {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        return;
    }
    crate::engine::team::par_chunks_mut(x, 1 << 14, |i, x| x.iter_mut().zip(&y[i << 14..]).for_each(|(a, b)| *a += b));
}

impl HostLlama {
    /// From host weights (a full-precision model), one layer at a time.
    pub fn from_dense(c: &ModelConfig, g: &GlobalWeights, mut layer: impl FnMut(usize) -> Result<LayerWeights>) -> Result<Self> {
        let layers = (0..c.num_hidden_layers).map(|i| layer(i).and_then(|w| HostLayer::from_dense(&w))).collect::<Result<_>>()?;
        Ok(HostLlama {
            config: c.clone(),
            rope: Rope::from_config(c),
            embed: Table::F32(g.embed.data.clone()),
            lm_head: g.lm_head.as_ref().map(|w| Table::F32(w.data.clone())),
            norm: g.norm.clone(),
            layers,
        })
    }

    /// From a quantized model: packed INT4 linears, f16 embedding and head (the checkpoint's own
    /// precision for them, so nothing is lost), multiplied with `act` activations.
    pub fn from_quantized(
        c: &ModelConfig,
        g: &GlobalWeights,
        act: Activations,
        mut layer: impl FnMut(usize) -> Result<QuantizedLayer>,
    ) -> Result<Self> {
        let layers = (0..c.num_hidden_layers).map(|i| layer(i).and_then(|w| HostLayer::from_quantized(&w, act))).collect::<Result<_>>()?;
        let (v, h) = (c.vocab_size, c.hidden_size);
        // int8 activations: the embedding / LM head in q8 too (half the bytes the LM head reads
        // per decoded token); f32 activations keep the checkpoint's f16.
        let table = |w: &[f32]| {
            if act == Activations::Int8 && Q8Matrix::supports(h) {
                Table::Q8(Q8Matrix::from_f32(w, v, h))
            } else {
                Table::F16(F16Matrix::from_f32(w, v, h))
            }
        };
        Ok(HostLlama {
            config: c.clone(),
            rope: Rope::from_config(c),
            embed: table(&g.embed.data),
            lm_head: g.lm_head.as_ref().map(|w| table(&w.data)),
            norm: g.norm.clone(),
            layers,
        })
    }

    /// Resident bytes of all weights.
    pub fn weight_bytes(&self) -> usize {
        self.embed.bytes() + self.lm_head.as_ref().map_or(0, Table::bytes) + self.norm.len() * 4 + self.layers.iter().map(HostLayer::bytes).sum::<usize>()
    }

    fn check_tokens(&self, ids: &[u32]) -> Result<()> {
        let v = self.config.vocab_size;
        match ids.iter().find(|&&t| t as usize >= v) {
            Some(t) => Err(Error::input("tokens", format!("token id {t} is outside the vocabulary ({v})"))),
            None => Ok(()),
        }
    }

    /// `ids [M] -> x [M, H]`
    fn embed_rows(&self, ids: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut x = vec![0f32; ids.len() * h];
        x.par_chunks_mut(h).zip(ids.par_iter()).for_each(|(row, &id)| self.embed.row(id as usize, h, row));
        x
    }

    /// Final norm and LM head: `x [M, H] -> logits [M, V]`.
    fn logits(&self, x: &[f32], m: usize) -> Vec<f32> {
        let c = &self.config;
        let n = rms_norm_rows(x, &self.norm, c.rms_norm_eps);
        self.lm_head.as_ref().unwrap_or(&self.embed).logits(&n, m, c.hidden_size, c.vocab_size)
    }

    /// Logits `[B*T, V]` of `B` independent sequences of `T` tokens (positions from 0, no cache;
    /// evaluation). `kv_bits` reads K/V as a quantized cache would return them.
    pub fn forward_logits(&self, ids: &[u32], b: usize, t: usize, kv_bits: Option<u32>) -> Result<Vec<f32>> {
        self.check_tokens(ids)?;
        let c = &self.config;
        let (hq, hkv, d, m) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, b * t);
        let (cos, sin) = self.rope.tables(t, 0, t);
        let mut x = self.embed_rows(ids);
        for l in &self.layers {
            let n1 = rms_norm_rows(&x, &l.attn_norm, c.rms_norm_eps);
            let (q, k, v) = l.qkv(&n1, m);
            let shape = AttnShape { batch: b, seq: t, heads: hq, kv_heads: hkv, head_dim: d };
            let ctx = causal_attention(&q, &k, &v, &cos, &sin, shape, kv_bits);
            add_into(&mut x, &l.o.forward(&ctx, m));
            let n2 = rms_norm_rows(&x, &l.mlp_norm, c.rms_norm_eps);
            add_into(&mut x, &l.mlp(&n2, m));
        }
        Ok(self.logits(&x, m))
    }

    /// The batched step: every item's new tokens through the model in one pass over the weights,
    /// K/V appended to the cache; returns the logits `[V]` after each item's last token.
    ///
    /// Fails before touching the cache or any sequence when a token is outside the vocabulary or
    /// the cache has too few free blocks for all items.
    pub fn step(&self, cache: &mut KvCache, items: &mut [StepItem]) -> Result<Vec<Vec<f32>>> {
        // Run the step on a rayon worker, with the other workers spinning as its team for the
        // step's few hundred parallel loops (team.rs) instead of being woken for each.
        if rayon::current_thread_index().is_none() {
            return rayon::join(|| self.step(cache, items), || ()).0;
        }
        crate::engine::team::with_team(|| self.step_in_team(cache, items))
    }

    fn step_in_team(&self, cache: &mut KvCache, items: &mut [StepItem]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (hq, hkv, d, h) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size);
        let g = hq / hkv;
        for it in items.iter() {
            self.check_tokens(it.tokens)?;
            if it.tokens.is_empty() {
                return Err(Error::internal("a step item has no tokens"));
            }
        }
        let need: usize = items.iter().map(|it| KvCache::blocks_needed(it.seq, it.tokens.len())).sum();
        if need > cache.free_blocks() {
            return Err(Error::usage(format!(
                "KV cache full: the step needs {need} new blocks, {} are free; raise --cache-max-entry-count",
                cache.free_blocks()
            )));
        }
        // Row r of the stacked activation: (item, position). Positions continue each sequence.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        for (i, it) in items.iter_mut().enumerate() {
            for &t in it.tokens {
                cache.reserve(it.seq)?;
                rows.push((i, it.seq.len));
                it.seq.len += 1;
                ids.push(t);
            }
        }
        let m = rows.len();
        // First row of each item (its rows are consecutive).
        let mut first = vec![0usize; items.len() + 1];
        for (i, it) in items.iter().enumerate() {
            first[i + 1] = first[i] + it.tokens.len();
        }
        let seqs: Vec<&SeqState> = items.iter().map(|it| &*it.seq).collect();
        let scale = 1.0 / (d as f32).sqrt();
        let mut x = self.embed_rows(&ids);
        // RoPE's (cos, sin) per row, `[M, D/2]`: the same for every layer and head.
        let rope_cs: Vec<(f32, f32)> = rows.iter().flat_map(|&(i, p)| rope_table(p, &seqs[i].inv_freq, seqs[i].rope_scale)).collect();
        for (li, l) in self.layers.iter().enumerate() {
            let n1 = rms_norm_rows(&x, &l.attn_norm, c.rms_norm_eps);
            // Row r of `qkv`: q (Hq heads), k (Hkv heads), v (Hkv heads), read in place.
            let mut qkv = l.qkv.forward(&n1, m);
            let (qd, kd) = (hq * d, hkv * d);
            let wd = qd + 2 * kd;
            // RoPE on q and k with each row's own position and its sequence's frequencies.
            let rope_row = |r: usize, row: &mut [f32]| {
                let cs = &rope_cs[r * d / 2..(r + 1) * d / 2];
                row[..qd + kd].chunks_mut(d).for_each(|hv| rope_apply(hv, cs));
            };
            if m < 8 {
                qkv.chunks_mut(wd).enumerate().for_each(|(r, row)| rope_row(r, row));
            } else {
                crate::engine::team::par_chunks_mut(&mut qkv, wd, rope_row);
            }
            let qkv_ref = &qkv;
            cache.write_rows(li, &seqs, &first, |r| (rows[r].1, &qkv_ref[r * wd + qd..r * wd + qd + kd], &qkv_ref[r * wd + qd + kd..(r + 1) * wd]));
            // Attention: one task per (item, KV head, chunk of ATT_ROWS rows) reads that head's
            // K/V in the cache and serves the G query heads of its rows (so a long prompt's rows
            // spread over the threads); row at position p sees keys 0..=p. Tasks are taken from
            // the last (most keys) down, so the long ones do not come last.
            let cache_ref = &*cache;
            let mut tasks: Vec<(usize, usize, usize, usize)> = Vec::new();
            for i in 0..items.len() {
                for kvh in 0..hkv {
                    for r0 in (first[i]..first[i + 1]).step_by(ATT_ROWS) {
                        tasks.push((i, kvh, r0, (r0 + ATT_ROWS).min(first[i + 1])));
                    }
                }
            }
            tasks.sort_by_key(|&(_, _, _, r1)| std::cmp::Reverse(rows[r1 - 1].1));
            let mut ctx = vec![0f32; m * qd];
            let ctx_ptr = SendPtr(ctx.as_mut_ptr());
            crate::engine::team::par_for(tasks.len(), |task| {
                let (i, kvh, r0, r1) = tasks[task];
                let blocks = cache_ref.head_blocks(seqs[i], li, kvh, rows[r1 - 1].1 + 1);
                let mut out = vec![0f32; (r1 - r0) * g * d];
                // The G query heads of this KV head are consecutive in a row of q.
                let qs: Vec<(usize, &[f32])> = (r0..r1).map(|r| (rows[r].1 + 1, &qkv[r * wd + kvh * g * d..r * wd + (kvh + 1) * g * d])).collect();
                attend_head(&blocks, d, scale, &qs, &mut out);
                for r in r0..r1 {
                    // SAFETY: rows r0..r1 x this KV head's G·D columns of ctx belong to this task.
                    unsafe {
                        std::ptr::copy_nonoverlapping(out[(r - r0) * g * d..].as_ptr(), ctx_ptr.get().add(r * qd + kvh * g * d), g * d);
                    }
                }
            });
            add_into(&mut x, &l.o.forward(&ctx, m));
            let n2 = rms_norm_rows(&x, &l.mlp_norm, c.rms_norm_eps);
            add_into(&mut x, &l.mlp(&n2, m));
        }
        // Logits only for each item's last row.
        let last: Vec<f32> = (0..items.len()).flat_map(|i| x[(first[i + 1] - 1) * h..first[i + 1] * h].to_vec()).collect();
        let logits = self.logits(&last, items.len());
        Ok(logits.chunks(c.vocab_size).map(<[f32]>::to_vec).collect())
    }
}

/// Softmax attention over one KV head: for each row (its key count `n_r` and its G query
/// vectors `[G·D]`), `out = softmax(q·Kᵀ·scale)·V` over keys `0..n_r`; `out` is `[rows, G, D]`.
/// `blocks` are the head's cache blocks ([`KvCache::head_blocks`]): f32 ones are read in place,
/// int8 / int4 ones dequantized first into a scratch of `[D][64]` K and `[64][D]` V per block.
///
/// A score block is 64 keys (one cache block) in vector lanes, each lane one chain over D (no
/// horizontal sums); each score, the softmax sums (16 partial sums in key order) and the V
/// accumulation (key order) depend only on the row's own keys: the same bits whatever else is
/// in the step, and whichever copy runs. The AVX-512 copy takes the query vectors (the G heads
/// of a row, then the next row's) four at a time, so each K and V element loaded serves four.
fn attend_head(blocks: &[HeadBlock], d: usize, scale: f32, rows: &[(usize, &[f32])], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512F/BW were detected; the body is the same code (no FMA contraction: same bits).
            return unsafe { attend_head_avx512(blocks, d, scale, rows, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected; as above.
            return unsafe { attend_head_avx2(blocks, d, scale, rows, out) };
        }
    }
    attend_head_body::<1>(blocks, d, scale, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_head_avx2(blocks: &[HeadBlock], d: usize, scale: f32, rows: &[(usize, &[f32])], out: &mut [f32]) {
    attend_head_body::<1>(blocks, d, scale, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn attend_head_avx512(blocks: &[HeadBlock], d: usize, scale: f32, rows: &[(usize, &[f32])], out: &mut [f32]) {
    attend_head_body::<4>(blocks, d, scale, rows, out)
}

/// The blocks as f32 `(K [D][64], V [64][D])` slices: borrowed, or dequantized into `scratch`
/// (V only up to the `n` keys any row reads).
#[inline(always)]
fn f32_blocks<'a>(blocks: &'a [HeadBlock], d: usize, n: usize, scratch: &'a mut Vec<f32>) -> Vec<(&'a [f32], &'a [f32])> {
    const B: usize = crate::engine::kv_cache::BLOCK_LEN;
    if let Some(f32_blocks) = blocks.iter().map(HeadBlock::as_f32).collect() {
        return f32_blocks;
    }
    scratch.resize(blocks.len() * 2 * B * d, 0.0);
    for (bi, (b, buf)) in blocks.iter().zip(scratch.chunks_exact_mut(2 * B * d)).enumerate() {
        let (kt, v) = buf.split_at_mut(B * d);
        b.dequantize(d, n.saturating_sub(bi * B).min(B), kt, v);
    }
    scratch.chunks_exact(2 * B * d).map(|buf| buf.split_at(B * d)).collect()
}

/// [`attend_head`] with up to `R` query vectors per pass (R x 64 accumulators in registers).
#[inline(always)]
fn attend_head_body<const R: usize>(blocks: &[HeadBlock], d: usize, scale: f32, rows: &[(usize, &[f32])], out: &mut [f32]) {
    let n = rows.iter().map(|r| r.0).max().unwrap_or(0);
    // The thread's scratch, borrowed outside a closure so this stays in the caller's SIMD context.
    let cell: *const std::cell::RefCell<Vec<f32>> = SCRATCH.with(|c| c as *const _);
    // SAFETY: a thread-local lives as long as its thread, which is running this call.
    let mut scratch = unsafe { &*cell }.borrow_mut();
    let blocks = &f32_blocks(blocks, d, n, &mut scratch)[..];
    attend_vectors::<R>(blocks, d, scale, rows, out)
}

thread_local! {
    /// Dequantized K/V blocks of a quantized cache (grows to the longest sequence, then reused).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
fn attend_vectors<const R: usize>(blocks: &[(&[f32], &[f32])], d: usize, scale: f32, rows: &[(usize, &[f32])], out: &mut [f32]) {
    // Every query vector with its key count, in output order.
    let vecs: Vec<(usize, &[f32])> = rows.iter().flat_map(|&(nr, heads)| heads.chunks(d).map(move |q| (nr, q))).collect();
    let mut sc = vec![0f32; R * blocks.len() * crate::engine::kv_cache::BLOCK_LEN];
    for (group, o) in vecs.chunks(R).zip(out.chunks_mut(R * d)) {
        // A last, smaller group (a decode row's G heads when G < R) still shares its loads.
        match group.len() {
            4 if R >= 4 => attend_group::<4>(blocks, d, scale, group.try_into().expect("4 vectors"), o, &mut sc),
            3 if R >= 3 => attend_group::<3>(blocks, d, scale, group.try_into().expect("3 vectors"), o, &mut sc),
            2 if R >= 2 => attend_group::<2>(blocks, d, scale, group.try_into().expect("2 vectors"), o, &mut sc),
            _ => {
                for (v, o) in group.iter().zip(o.chunks_mut(d)) {
                    attend_group::<1>(blocks, d, scale, &[*v], o, &mut sc);
                }
            }
        }
    }
}

/// Prefetch the 64 floats (four cache lines) of `s` from `at` (nothing past its end).
#[inline(always)]
fn prefetch_row(s: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    for l in (at..(at + 64).min(s.len())).step_by(16) {
        // SAFETY: `l` is inside `s`; a prefetch reads nothing architecturally.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(s.as_ptr().add(l) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, at);
}

/// Attention of `R` query vectors `(key count, q [D])` into `out [R, D]`; `sc` is scratch for
/// `R` rows of scores.
#[inline(always)]
fn attend_group<const R: usize>(blocks: &[(&[f32], &[f32])], d: usize, scale: f32, group: &[(usize, &[f32]); R], out: &mut [f32], sc: &mut [f32]) {
    const L: usize = 16;
    const B: usize = crate::engine::kv_cache::BLOCK_LEN;
    let np = blocks.len() * B;
    let nmax = group.iter().map(|v| v.0).max().unwrap_or(0);
    let nmin = group.iter().map(|v| v.0).min().unwrap_or(0);
    // Scores: one cache block (64 keys) at a time for all R vectors; a vector's scores past its
    // own key count are computed but never read.
    let nblocks = nmax.div_ceil(B);
    for (bi, (kt, _)) in blocks.iter().enumerate().take(nblocks) {
        let mut acc = [[0f32; B]; R];
        // While this block's K is read, fetch the next block's K (or the first V block) row by
        // row: a task reads only a block or two, too little for the hardware prefetcher to
        // follow, and the cache of a batch is tens of MB (decode waited on these loads).
        let ahead: &[f32] = if bi + 1 < nblocks { blocks[bi + 1].0 } else { blocks[0].1 };
        for c in 0..d {
            prefetch_row(ahead, c * B);
            let kr: &[f32; B] = kt[c * B..(c + 1) * B].try_into().expect("a K block is [D][64]");
            for r in 0..R {
                let qc = group[r].1[c];
                for l in 0..B {
                    acc[r][l] += qc * kr[l];
                }
            }
        }
        for r in 0..R {
            let so: &mut [f32; B] = (&mut sc[r * np + bi * B..r * np + (bi + 1) * B]).try_into().expect("score block");
            for l in 0..B {
                so[l] = acc[r][l] * scale;
            }
        }
    }
    for (r, &(nr, _)) in group.iter().enumerate() {
        let s = &mut sc[r * np..r * np + nr];
        // max in 16 lanes (exact in any order).
        let mut ml = [f32::NEG_INFINITY; L];
        let mut mc = s.chunks_exact(L);
        for ch in &mut mc {
            for l in 0..L {
                ml[l] = if ch[l] > ml[l] { ch[l] } else { ml[l] };
            }
        }
        let mx = mc.remainder().iter().chain(&ml).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        // exp, and the sum in 16 lanes (lane l: keys l, l + 16, ... in order).
        let mut zl = [0f32; L];
        let mut ex = s.chunks_exact_mut(L);
        for ch in &mut ex {
            let ch: &mut [f32; L] = ch.try_into().expect("chunks_exact");
            for l in 0..L {
                ch[l] = exp_neg(ch[l] - mx);
                zl[l] += ch[l];
            }
        }
        for (l, x) in ex.into_remainder().iter_mut().enumerate() {
            *x = exp_neg(*x - mx);
            zl[l] += *x;
        }
        let z: f32 = zl.iter().sum();
        for x in s.iter_mut() {
            *x /= z;
        }
    }
    // out = Σ_j w_j · v_j in key order, 64 output values at a time in registers: the keys every
    // vector sees together (each V row loaded once for all R), then each vector's own rest.
    for c0 in (0..d).step_by(B) {
        let w = B.min(d - c0);
        let mut acc = [[0f32; B]; R];
        let v_row = |j: usize| &blocks[j / B].1[(j % B) * d + c0..(j % B) * d + c0 + w];
        let shared = if w == B { nmin } else { 0 };
        for j in 0..shared {
            if j + B < nmax {
                prefetch_row(blocks[j / B + 1].1, (j % B) * d + c0);
            }
            let vr: &[f32; B] = v_row(j).try_into().expect("V row part");
            for r in 0..R {
                let p = sc[r * np + j];
                for c in 0..B {
                    acc[r][c] += p * vr[c];
                }
            }
        }
        for (r, &(nr, _)) in group.iter().enumerate() {
            for j in shared..nr {
                let p = sc[r * np + j];
                for (a, &v) in acc[r][..w].iter_mut().zip(v_row(j)) {
                    *a += p * v;
                }
            }
            out[r * d + c0..r * d + c0 + w].copy_from_slice(&acc[r][..w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv_cache::BLOCK_LEN as B;

    /// A linear with float zero points (`--zero-point float`) through both packed kernels plus
    /// the zero offsets, against `x · dequantize(W)ᵀ` in f64. f32 activations: f32 accumulation
    /// error only; int8 activations: their 8-bit rounding (about 0.4%), while dropping the offsets
    /// would be off by far more (checked, so the test can fail).
    #[test]
    fn float_zero_points_give_the_dequantized_product_on_both_kernels() {
        use crate::quant::int4::{QuantParams, ZeroPoint};
        let (m, n, k, g) = (5, 48, 256, 64);
        let mut s = 3u64;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        // Rows offset from 0, so many integer zeros would clamp and the float zeros matter.
        let w = crate::tensor::HostTensor::from_fn(&[n, k], |i| next() + if (i / k) % 3 == 0 { 0.8 } else { 0.0 });
        let x: Vec<f32> = (0..m * k).map(|_| next() * 2.0).collect();
        let l = QuantizedLinear::quantize("t", &w, None, QuantParams::new(4, g).unwrap().with_zero(ZeroPoint::Float)).unwrap();
        assert!(l.float_zeros.as_ref().unwrap().iter().any(|z| z.to_f32().fract() != 0.0));
        let deq = l.dequantize();
        let want: Vec<f64> = (0..m * n)
            .map(|i| (0..k).map(|c| x[(i / n) * k + c] as f64 * deq.data[(i % n) * k + c] as f64).sum())
            .collect();
        let max_ref = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let rel = |y: &[f32]| y.iter().zip(&want).fold(0f64, |a, (&y, w)| a.max((y as f64 - w).abs())) / max_ref;
        for (act, tol) in [(Activations::F32, 1e-5), (Activations::Int8, 2e-2)] {
            let mut hl = HostLinear::from_quantized(&l, act).unwrap();
            assert!(matches!((&hl.w, act), (HostWeight::Int4(_), Activations::F32) | (HostWeight::W4A8(_), Activations::Int8)));
            let e = rel(&hl.forward(&x, m));
            assert!(e < tol, "{act:?}: relative error {e:e} (tolerance {tol:e})");
            hl.zero_offsets = None;
            let without = rel(&hl.forward(&x, m));
            assert!(without > 10.0 * tol, "{act:?}: without the offsets the error is only {without:e}");
        }
    }

    /// K (transposed per block) and V blocks holding `n` keys `k`, `v` (`[n, d]` each).
    fn f32_blocks_of(k: &[f32], v: &[f32], n: usize, d: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        (0..n.div_ceil(B))
            .map(|b| {
                let (mut kt, mut vb) = (vec![0f32; B * d], vec![0f32; B * d]);
                for t in 0..B.min(n - b * B) {
                    for c in 0..d {
                        kt[c * B + t] = k[(b * B + t) * d + c];
                    }
                    vb[t * d..(t + 1) * d].copy_from_slice(&v[(b * B + t) * d..(b * B + t + 1) * d]);
                }
                (kt, vb)
            })
            .collect()
    }

    fn random_kv(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        (0..n * d).map(|_| (next(), next())).unzip()
    }

    fn as_head_blocks(b: &[(Vec<f32>, Vec<f32>)]) -> Vec<HeadBlock<'_>> {
        b.iter().map(|(kt, v)| HeadBlock::F32 { kt, v }).collect()
    }

    /// Grouping query vectors four, three, two at a time (the AVX-512 copy) gives each vector the
    /// same bits as one at a time (the AVX2 / portable copies), and both match an f64 softmax
    /// attention within 1e-5 of the output's scale.
    #[test]
    fn grouped_attention_equals_one_vector_at_a_time_and_f64() {
        for (d, g, n_rows, n_keys) in [(64, 3, 5, 150), (48, 2, 7, 64), (64, 4, 3, 200), (128, 7, 2, 70)] {
            let (k, v) = random_kv(n_keys, d, (d * g) as u64);
            let stored = f32_blocks_of(&k, &v, n_keys, d);
            let blocks = as_head_blocks(&stored);
            let qv: Vec<f32> = (0..n_rows * g * d).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 2.0).collect();
            // Rows at consecutive positions ending at the last key.
            let rows: Vec<(usize, &[f32])> = (0..n_rows).map(|r| (n_keys - n_rows + 1 + r, &qv[r * g * d..(r + 1) * g * d])).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let (mut one, mut four) = (vec![0f32; n_rows * g * d], vec![0f32; n_rows * g * d]);
            attend_head_body::<1>(&blocks, d, scale, &rows, &mut one);
            attend_head_body::<4>(&blocks, d, scale, &rows, &mut four);
            assert!(one.iter().zip(&four).all(|(a, b)| a.to_bits() == b.to_bits()), "d={d} g={g}: grouped bits differ");
            for (r, &(nr, q)) in rows.iter().enumerate() {
                for h in 0..g {
                    let qh = &q[h * d..(h + 1) * d];
                    let s: Vec<f64> = (0..nr).map(|j| (0..d).map(|c| qh[c] as f64 * k[j * d + c] as f64).sum::<f64>() * scale as f64).collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..nr).map(|j| e[j] / z * v[j * d + c] as f64).sum();
                        let got = one[(r * g + h) * d + c] as f64;
                        assert!((got - want).abs() <= 1e-5 * 2.0, "d={d} row {r} head {h} c {c}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Attention over an int8 / int4 cache read as stored (dequantized per block inside the
    /// attention copy, from the thread's scratch) gives the bits of attention over the same cache
    /// read back in f32 ([`KvCache::read`]), for every copy and across block boundaries.
    #[test]
    fn quantized_cache_attention_equals_attention_over_its_dequantized_values() {
        use crate::engine::kv_cache::{CacheLayout, QuantPolicy};
        let (d, g, hkv, layers, n) = (64, 3, 2, 2, 150);
        for policy in [QuantPolicy::Int8, QuantPolicy::Int4] {
            let mut cache = KvCache::new(CacheLayout { layers, kv_heads: hkv, head_dim: d, policy }, 8);
            let mut seq = SeqState::default();
            let (k, v) = random_kv(n, hkv * d, 7);
            for p in 0..n {
                cache.reserve(&mut seq).unwrap();
                seq.len += 1;
                for li in 0..layers {
                    cache.write(&seq, li, p, &k[p * hkv * d..(p + 1) * hkv * d], &v[p * hkv * d..(p + 1) * hkv * d]);
                }
            }
            let qv: Vec<f32> = (0..4 * g * d).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 2.0).collect();
            let rows: Vec<(usize, &[f32])> = (0..4).map(|r| (n - 40 + 13 * r, &qv[r * g * d..(r + 1) * g * d])).collect();
            let scale = 1.0 / (d as f32).sqrt();
            for (li, h) in [(0, 0), (1, 1)] {
                let (mut kr, mut vr) = (Vec::new(), Vec::new());
                cache.read(&seq, li, h, n, &mut kr, &mut vr);
                let stored = f32_blocks_of(&kr, &vr, n, d);
                let mut want = vec![0f32; 4 * g * d];
                attend_head_body::<1>(&as_head_blocks(&stored), d, scale, &rows, &mut want);
                let blocks = cache.head_blocks(&seq, li, h, n);
                let mut got = vec![0f32; 4 * g * d];
                attend_head(&blocks, d, scale, &rows, &mut got);
                assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{policy:?} layer {li} head {h}: bits differ");
                attend_head_body::<1>(&blocks, d, scale, &rows, &mut got);
                assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{policy:?} portable copy: bits differ");
            }
        }
    }
}
