//! The Llama-family decoder as burn tensors, generic over the backend (CPU, CUDA, wgpu).
//!
//! Shapes: `B` batch (sequences), `T` tokens per sequence, `H` hidden, `Hq`/`Hkv` query/KV heads,
//! `D` head_dim, `G = Hq/Hkv` query heads per KV head, `I` intermediate, `V` vocab.
//! Linear weights are stored transposed, `[K, N]`, so a projection is `x[B*T, K] · W[K, N]`.
//!
//! The same layer functions serve evaluation and the AWQ search: the search builds a layer (or just
//! its attention or MLP block) with trial weights and calls `forward` on the cached inputs.

use crate::engine::rope::Rope;
use crate::model::arch::{GlobalWeights, LayerWeights, Linear};
use crate::model::config::ModelConfig;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Upload a host f32 buffer as a tensor of rank `D`.
pub fn upload<B: Backend, const D: usize>(data: Vec<f32>, shape: [usize; D], dev: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), dev)
}

/// Download a tensor to a host `Vec<f32>` (row-major).
pub fn download<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default()
}

fn x_device<B: Backend, const D: usize>(t: &Tensor<B, D>) -> B::Device {
    t.device()
}

/// A projection `y = x·W + b`, W stored `[K, N]`.
#[derive(Clone, Debug)]
pub struct LinearB<B: Backend> {
    pub w: Tensor<B, 2>,
    pub b: Option<Tensor<B, 1>>,
}

impl<B: Backend> LinearB<B> {
    /// From an nn.Linear-oriented host weight `[N, K]`.
    pub fn from_host(l: &Linear, dev: &B::Device) -> Self {
        let (n, k) = l.w.dims2();
        let wt = l.w.transpose2();
        LinearB {
            w: upload(wt.data, [k, n], dev),
            b: l.b.as_ref().map(|b| upload(b.clone(), [n], dev)),
        }
    }

    /// `[B, T, K] -> [B, T, N]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, k] = x.dims();
        let n = self.w.dims()[1];
        let mut y = x.reshape([b * t, k]).matmul(self.w.clone());
        if let Some(bias) = &self.b {
            y = y + bias.clone().unsqueeze::<2>();
        }
        y.reshape([b, t, n])
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) * w`, over the last dim of `[B, T, H]`.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let ms = x.clone().powi_scalar(2).mean_dim(2); // [B, T, 1]
    x * ms.add_scalar(eps).sqrt().recip() * w.clone().unsqueeze::<3>()
}

/// cos/sin tables for one forward call: `[T, D/2]` each, for positions `start..start+T`.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for a sequence whose prompt has `prompt_len` tokens (dynamic NTK uses it), covering
    /// positions `start..start+len`.
    pub fn new(rope: &Rope, prompt_len: usize, start: usize, len: usize, dev: &B::Device) -> Self {
        let (cos, sin) = rope.tables(prompt_len, start, len);
        let half = rope.dim / 2;
        RopeTables { cos: upload(cos, [len, half], dev), sin: upload(sin, [len, half], dev) }
    }
}

/// Rotate-half RoPE on `[B, heads, T, D]`: pairs `(x[j], x[j+D/2])` rotate by angle `pos*inv[j]`.
pub fn apply_rope<B: Backend>(x: Tensor<B, 4>, t: &RopeTables<B>) -> Tensor<B, 4> {
    let [b, h, n, d] = x.dims();
    let half = d / 2;
    let cos = t.cos.clone().reshape([1, 1, n, half]);
    let sin = t.sin.clone().reshape([1, 1, n, half]);
    let x1 = x.clone().slice([0..b, 0..h, 0..n, 0..half]);
    let x2 = x.slice([0..b, 0..h, 0..n, half..d]);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![r1, r2], 3)
}

/// Additive causal mask `[G*T, T]` for queries laid out as G head-blocks of T positions:
/// row `g*T + i` may attend to keys `j <= i`.
pub fn causal_mask<B: Backend>(g: usize, t: usize, dev: &B::Device) -> Tensor<B, 2> {
    let mut m = vec![0f32; g * t * t];
    for gi in 0..g {
        for i in 0..t {
            for j in i + 1..t {
                m[(gi * t + i) * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    upload(m, [g * t, t], dev)
}

/// Quantize-dequantize every `[.., D]` row of a `[B, H, T, D]` tensor with the KV-cache quantizer.
fn fake_quant_rows<B: Backend>(x: Tensor<B, 4>, bits: u32) -> Tensor<B, 4> {
    let dims = x.dims();
    let dev = x.device();
    let mut h = download(x);
    h.chunks_mut(dims[3]).for_each(|row| crate::engine::kv_cache::fake_quantize_row(row, bits));
    upload(h, dims, &dev)
}

/// Grouped-query self-attention block (without the residual).
#[derive(Clone, Debug)]
pub struct Attention<B: Backend> {
    pub q: LinearB<B>,
    pub k: LinearB<B>,
    pub v: LinearB<B>,
    pub o: LinearB<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Read K/V through an int8/int4 KV cache (`--quant-policy`), `None` = full precision.
    pub kv_bits: Option<u32>,
}

/// Whether backend `B` computes on host memory, where the fused host attention is much faster
/// than burn's generic composition of ops.
pub fn is_host_backend<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::engine::device::CpuBackend>()
        || std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::NdArray<f32>>()
}

impl<B: Backend> Attention<B> {
    /// `x [B, T, H] -> (out [B, T, H], o_proj input [B, T, Hq*D])`.
    pub fn forward_with_o_input(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mask: &Tensor<B, 2>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [b, t, _] = x.dims();
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        if is_host_backend::<B>() {
            let q = download(self.q.forward(x.clone()));
            let k = download(self.k.forward(x.clone()));
            let v = download(self.v.forward(x));
            let (cos, sin) = (download(rope.cos.clone()), download(rope.sin.clone()));
            let shape = crate::engine::attention_cpu::AttnShape { batch: b, seq: t, heads: hq, kv_heads: hkv, head_dim: d };
            let ctx = crate::engine::attention_cpu::causal_attention(&q, &k, &v, &cos, &sin, shape, self.kv_bits);
            let ctx: Tensor<B, 3> = upload(ctx, [b, t, hq * d], &x_device(&self.q.w));
            return (self.o.forward(ctx.clone()), ctx);
        }
        self.forward_generic(x, rope, mask)
    }

    /// The backend-generic composition of burn ops (CUDA, wgpu; the reference for the host path).
    pub fn forward_generic(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mask: &Tensor<B, 2>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [b, t, _] = x.dims();
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let g = hq / hkv;
        // [B, T, heads*D] -> [B, heads, T, D]
        let q = self.q.forward(x.clone()).reshape([b, t, hq, d]).swap_dims(1, 2);
        let k = self.k.forward(x.clone()).reshape([b, t, hkv, d]).swap_dims(1, 2);
        let v = self.v.forward(x).reshape([b, t, hkv, d]).swap_dims(1, 2);
        let q = apply_rope(q, rope);
        let mut k = apply_rope(k, rope);
        let mut v = v;
        if let Some(bits) = self.kv_bits {
            // Round-trip K (after RoPE) and V through the per-(token, head) cache quantizer.
            k = fake_quant_rows(k, bits);
            v = fake_quant_rows(v, bits);
        }
        // Query head h = kv*G + g (HF repeat_kv order): fold the G heads of each KV head into the
        // row dim, so one batched matmul per KV head serves all its query heads.
        let q = q.reshape([b, hkv, g * t, d]);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt()); // [B, Hkv, G*T, T]
        let scores = scores + mask.clone().reshape([1, 1, g * t, t]);
        let probs = softmax(scores, 3);
        let ctx = probs.matmul(v); // [B, Hkv, G*T, D]
        let ctx = ctx.reshape([b, hq, t, d]).swap_dims(1, 2).reshape([b, t, hq * d]);
        (self.o.forward(ctx.clone()), ctx)
    }

    pub fn forward(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mask: &Tensor<B, 2>) -> Tensor<B, 3> {
        self.forward_with_o_input(x, rope, mask).0
    }
}

/// SwiGLU MLP block (without the residual).
#[derive(Clone, Debug)]
pub struct Mlp<B: Backend> {
    pub gate: LinearB<B>,
    pub up: LinearB<B>,
    pub down: LinearB<B>,
}

impl<B: Backend> Mlp<B> {
    /// `x [B, T, H] -> (out [B, T, H], down_proj input [B, T, I])`.
    pub fn forward_with_down_input(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let act = if is_host_backend::<B>() {
            let [b, t, _] = x.dims();
            let dev = x.device();
            let g = self.gate.forward(x.clone());
            let i = g.dims()[2];
            let (g, u) = (download(g), download(self.up.forward(x)));
            upload(crate::engine::attention_cpu::silu_mul(&g, &u), [b, t, i], &dev)
        } else {
            silu(self.gate.forward(x.clone())) * self.up.forward(x)
        };
        (self.down.forward(act.clone()), act)
    }
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with_down_input(x).0
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub attn_norm: Tensor<B, 1>,
    pub attn: Attention<B>,
    pub mlp_norm: Tensor<B, 1>,
    pub mlp: Mlp<B>,
    pub eps: f64,
}

/// Inputs of every linear of a layer, captured during a forward pass (for calibration and search).
pub struct LayerTrace<B: Backend> {
    /// Input of q/k/v: `rms(x)*attn_norm`, `[B, T, H]`.
    pub attn_in: Tensor<B, 3>,
    /// Input of o_proj, `[B, T, Hq*D]`.
    pub o_in: Tensor<B, 3>,
    /// Residual stream after attention, `[B, T, H]` (the MLP block's residual input).
    pub h: Tensor<B, 3>,
    /// Input of gate/up: `rms(h)*mlp_norm`, `[B, T, H]`.
    pub mlp_in: Tensor<B, 3>,
    /// Input of down_proj, `[B, T, I]`.
    pub down_in: Tensor<B, 3>,
    /// Layer output, `[B, T, H]`.
    pub out: Tensor<B, 3>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn from_host(w: &LayerWeights, c: &ModelConfig, dev: &B::Device) -> Self {
        DecoderLayer {
            attn_norm: upload(w.attn_norm.clone(), [c.hidden_size], dev),
            attn: Attention {
                q: LinearB::from_host(&w.q, dev),
                k: LinearB::from_host(&w.k, dev),
                v: LinearB::from_host(&w.v, dev),
                o: LinearB::from_host(&w.o, dev),
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                kv_bits: None,
            },
            mlp_norm: upload(w.mlp_norm.clone(), [c.hidden_size], dev),
            mlp: Mlp {
                gate: LinearB::from_host(&w.gate, dev),
                up: LinearB::from_host(&w.up, dev),
                down: LinearB::from_host(&w.down, dev),
            },
            eps: c.rms_norm_eps,
        }
    }

    /// `x [B, T, H] -> [B, T, H]`
    pub fn forward(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mask: &Tensor<B, 2>) -> Tensor<B, 3> {
        let h = x.clone() + self.attn.forward(rms_norm(x, &self.attn_norm, self.eps), rope, mask);
        h.clone() + self.mlp.forward(rms_norm(h, &self.mlp_norm, self.eps))
    }

    /// Forward pass that also returns every linear's input.
    pub fn forward_trace(&self, x: Tensor<B, 3>, rope: &RopeTables<B>, mask: &Tensor<B, 2>) -> LayerTrace<B> {
        let attn_in = rms_norm(x.clone(), &self.attn_norm, self.eps);
        let (a, o_in) = self.attn.forward_with_o_input(attn_in.clone(), rope, mask);
        let h = x + a;
        let mlp_in = rms_norm(h.clone(), &self.mlp_norm, self.eps);
        let (m, down_in) = self.mlp.forward_with_down_input(mlp_in.clone());
        let out = h.clone() + m;
        LayerTrace { attn_in, o_in, h, mlp_in, down_in, out }
    }
}

/// The whole decoder.
#[derive(Clone, Debug)]
pub struct Llama<B: Backend> {
    /// `[V, H]`
    pub embed: Tensor<B, 2>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: Tensor<B, 1>,
    /// `[H, V]` (the transposed embedding when tied)
    pub lm_head: Tensor<B, 2>,
    pub rope: Rope,
    pub config: ModelConfig,
    pub device: B::Device,
}

impl<B: Backend> Llama<B> {
    /// Build from host weights, uploading one layer at a time. `layer` is called for each index.
    pub fn from_host(
        c: &ModelConfig,
        globals: &GlobalWeights,
        mut layer: impl FnMut(usize) -> crate::error::Result<LayerWeights>,
        dev: &B::Device,
    ) -> crate::error::Result<Self> {
        let (v, h) = (c.vocab_size, c.hidden_size);
        let head = match &globals.lm_head {
            Some(w) => w.transpose2(),
            None => globals.embed.transpose2(),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let w = layer(i)?;
            layers.push(DecoderLayer::from_host(&w, c, dev));
        }
        Ok(Llama {
            embed: upload(globals.embed.data.clone(), [v, h], dev),
            layers,
            norm: upload(globals.norm.clone(), [h], dev),
            lm_head: upload(head.data, [h, v], dev),
            rope: Rope::from_config(c),
            config: c.clone(),
            device: dev.clone(),
        })
    }

    /// Token embeddings: `ids [B, T] -> [B, T, H]`.
    pub fn embed(&self, ids: &[u32], b: usize, t: usize) -> Tensor<B, 3> {
        let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b * t]), &self.device);
        self.embed.clone().select(0, idx).reshape([b, t, self.config.hidden_size])
    }

    /// Hidden states after the final norm: `ids [B, T] -> [B, T, H]` (positions from 0).
    pub fn hidden(&self, ids: &[u32], b: usize, t: usize) -> Tensor<B, 3> {
        let rope = RopeTables::new(&self.rope, t, 0, t, &self.device);
        let g = self.config.num_attention_heads / self.config.num_key_value_heads;
        let mask = causal_mask::<B>(g, t, &self.device);
        let mut x = self.embed(ids, b, t);
        for l in &self.layers {
            x = l.forward(x, &rope, &mask);
        }
        rms_norm(x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits `[B, T, V]`.
    pub fn forward(&self, ids: &[u32], b: usize, t: usize) -> Tensor<B, 3> {
        let h = self.hidden(ids, b, t);
        let v = self.config.vocab_size;
        h.reshape([b * t, self.config.hidden_size]).matmul(self.lm_head.clone()).reshape([b, t, v])
    }
}
