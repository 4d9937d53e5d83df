//! The Llama-family decoder as burn tensors, generic over the backend (CPU, CUDA, wgpu).
//!
//! Shapes: `B` batch (sequences), `T` tokens per sequence, `H` hidden, `Hq`/`Hkv` query/KV heads,
//! `D` head_dim, `G = Hq/Hkv` query heads per KV head, `I` intermediate, `V` vocab.
//! Linear weights are stored transposed, `[K, N]`, so a projection is `x[B*T, K] · W[K, N]`;
//! on the GPU backends a quantized checkpoint keeps them packed as INT4 (W4A16 kernels).
//!
//! Per backend: the CPU runs fused host kernels for attention and SwiGLU (`attention_cpu.rs`);
//! wgpu and CUDA run the CubeCL kernels of `awqc-kernels` for RMSNorm, RoPE, attention,
//! SiLU·mul and INT4 linears (`gpu.rs`); everything else is burn.
//!
//! The same layer functions serve evaluation and the AWQ search: the search builds a layer (or just
//! its attention or MLP block) with trial weights and calls `forward` on the cached inputs.

use crate::engine::gpu;
use crate::engine::rope::Rope;
use crate::error::Result;
use crate::model::arch::{GlobalWeights, LayerWeights, Linear};
use crate::model::config::ModelConfig;
use crate::quant::int4::QuantizedLinear;
use crate::quant::qmodel::QuantizedLayer;
use crate::tensor::HostTensor;
use awqc_kernels::w4a16::W4Weights;
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

/// The weight of a projection.
#[derive(Clone, Debug)]
pub enum LinearWeight<B: Backend> {
    /// Dense `[K, N]` (on the CPU a transposed view of the `[N, K]` upload, see `from_host_owned`).
    Dense(Tensor<B, 2>),
    /// Group-wise INT4 packed for the W4A16 kernels, in device memory (GPU backends only).
    Int4(W4Weights),
}

/// A projection `y = x·W + b`, W stored `[K, N]` (dense or packed INT4).
#[derive(Clone, Debug)]
pub struct LinearB<B: Backend> {
    pub w: LinearWeight<B>,
    pub b: Option<Tensor<B, 1>>,
}

impl<B: Backend> LinearB<B> {
    /// From an nn.Linear-oriented host weight `[N, K]`.
    pub fn from_host(l: &Linear, dev: &B::Device) -> Self {
        Self::from_host_owned(l.w.clone(), l.b.clone(), dev)
    }

    /// `from_host` taking the weight `[N, K]` by value (the search builds one per grid point).
    /// On the CPU the `[K, N]` operand is a transposed view of the `[N, K]` upload: the CPU
    /// backend's gemm reads strided operands directly, so no transposed copy is made. The GPU
    /// backends get a contiguous `[K, N]`.
    pub fn from_host_owned(w: HostTensor, b: Option<Vec<f32>>, dev: &B::Device) -> Self {
        let (n, k) = w.dims2();
        let w = if is_host_backend::<B>() { upload(w.data, [n, k], dev).transpose() } else { upload(w.transpose2().data, [k, n], dev) };
        LinearB { w: LinearWeight::Dense(w), b: b.map(|b| upload(b, [n], dev)) }
    }

    /// From a quantized linear: packed INT4 on the GPU backends when the W4A16 kernels take its
    /// shape (`gpu::pack_w4`), else its dequantized weight (the CPU path: `(q - z) * s` in f32).
    pub fn from_quantized(l: &QuantizedLinear, dev: &B::Device) -> Result<Self> {
        if gpu::is_kernel_backend::<B>() {
            if let Some(h) = gpu::pack_w4(l)? {
                return Ok(LinearB {
                    w: LinearWeight::Int4(gpu::upload_w4::<B>(&h, dev)?),
                    b: l.bias.as_ref().map(|b| upload(b.clone(), [l.n], dev)),
                });
            }
        }
        Ok(Self::from_host(&Linear { w: l.dequantize(), b: l.bias.clone() }, dev))
    }

    /// N, the output width.
    pub fn out_features(&self) -> usize {
        match &self.w {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Int4(w) => w.n,
        }
    }

    /// `[B, T, K] -> [B, T, N]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, k] = x.dims();
        let n = self.out_features();
        let x = x.reshape([b * t, k]);
        let mut y = match &self.w {
            LinearWeight::Dense(w) => x.matmul(w.clone()),
            LinearWeight::Int4(w) => {
                let dev = x.device();
                gpu::or_record(gpu::w4a16(x, w), || Tensor::zeros([b * t, n], &dev))
            }
        };
        if let Some(bias) = &self.b {
            y = y + bias.clone().unsqueeze::<2>();
        }
        y.reshape([b, t, n])
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) * w`, over the last dim of `[B, T, H]`.
/// On the GPU backends this is the RMSNorm kernel (f32 accumulation, one rounding).
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    if gpu::is_kernel_backend::<B>() {
        return gpu::or_record(gpu::rms_norm(x.clone(), w, eps), || rms_norm_generic(x, w, eps));
    }
    rms_norm_generic(x, w, eps)
}

/// RMSNorm as a composition of burn ops.
pub fn rms_norm_generic<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let ms = x.clone().powi_scalar(2).mean_dim(2); // [B, T, 1]
    x * ms.add_scalar(eps).sqrt().recip() * w.clone().unsqueeze::<3>()
}

/// cos/sin tables for one forward call: `[T, D/2]` each, for positions `start..start+T`.
/// The GPU kernels take the frequencies instead: `inv_freq [D/2]`, the cos/sin scale and the
/// first position.
#[derive(Clone, Debug)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
    pub inv_freq: Vec<f64>,
    pub mscale: f64,
    pub start: usize,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for a sequence whose prompt has `prompt_len` tokens (dynamic NTK uses it), covering
    /// positions `start..start+len`.
    pub fn new(rope: &Rope, prompt_len: usize, start: usize, len: usize, dev: &B::Device) -> Self {
        let (cos, sin) = rope.tables(prompt_len, start, len);
        let half = rope.dim / 2;
        let (inv_freq, mscale) = rope.inv_freq(prompt_len);
        RopeTables { cos: upload(cos, [len, half], dev), sin: upload(sin, [len, half], dev), inv_freq, mscale, start }
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
            let dev = x.device();
            let q = download(self.q.forward(x.clone()));
            let k = download(self.k.forward(x.clone()));
            let v = download(self.v.forward(x));
            let (cos, sin) = (download(rope.cos.clone()), download(rope.sin.clone()));
            let shape = crate::engine::attention_cpu::AttnShape { batch: b, seq: t, heads: hq, kv_heads: hkv, head_dim: d };
            let ctx = crate::engine::attention_cpu::causal_attention(&q, &k, &v, &cos, &sin, shape, self.kv_bits);
            let ctx: Tensor<B, 3> = upload(ctx, [b, t, hq * d], &dev);
            return (self.o.forward(ctx.clone()), ctx);
        }
        if gpu::is_kernel_backend::<B>() {
            return gpu::or_record(self.forward_kernels(x.clone(), rope), || self.forward_generic(x, rope, mask));
        }
        self.forward_generic(x, rope, mask)
    }

    /// The GPU path: RoPE, the KV-cache round trip (`kv_bits`) and causal attention as CubeCL
    /// kernels on `[B*T, heads, D]` (the projections' output layout, no transposes).
    fn forward_kernels(&self, x: Tensor<B, 3>, rope: &RopeTables<B>) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
        let [b, t, _] = x.dims();
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let dev = x.device();
        let q = self.q.forward(x.clone()).reshape([b * t, hq, d]);
        let k = self.k.forward(x.clone()).reshape([b * t, hkv, d]);
        let v = self.v.forward(x).reshape([b * t, hkv, d]);
        let positions: Vec<u32> = (0..b * t).map(|i| (rope.start + i % t) as u32).collect();
        let args = gpu::rope_args::<B>(&dev, &rope.inv_freq, rope.mscale, &positions)?;
        let q = gpu::rope(q, &args)?;
        let mut k = gpu::rope(k, &args)?;
        let mut v = v;
        if let Some(bits) = self.kv_bits {
            k = gpu::kv_fake_quant(k, bits)?;
            v = gpu::kv_fake_quant(v, bits)?;
        }
        let ctx = gpu::attention_prefill(q, k, v, &vec![t; b])?.reshape([b, t, hq * d]);
        Ok((self.o.forward(ctx.clone()), ctx))
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
        } else if gpu::is_kernel_backend::<B>() {
            let (g, u) = (self.gate.forward(x.clone()), self.up.forward(x));
            gpu::or_record(gpu::silu_mul(g.clone(), u.clone()), || silu(g) * u)
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

    /// From a quantized layer: INT4 linears on the GPU backends, dequantized ones on the CPU.
    pub fn from_quantized(w: &QuantizedLayer, c: &ModelConfig, dev: &B::Device) -> Result<Self> {
        let lin = |l: &QuantizedLinear| LinearB::from_quantized(l, dev);
        Ok(DecoderLayer {
            attn_norm: upload(w.attn_norm.clone(), [c.hidden_size], dev),
            attn: Attention {
                q: lin(&w.q)?,
                k: lin(&w.k)?,
                v: lin(&w.v)?,
                o: lin(&w.o)?,
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                kv_bits: None,
            },
            mlp_norm: upload(w.mlp_norm.clone(), [c.hidden_size], dev),
            mlp: Mlp { gate: lin(&w.gate)?, up: lin(&w.up)?, down: lin(&w.down)? },
            eps: c.rms_norm_eps,
        })
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
    /// On the CPU backend, inference models hold their weights here (packed INT4 for quantized
    /// checkpoints) and every forward, prefill and decode step runs on the host (`host.rs`);
    /// `embed`, `layers` and `lm_head` are then empty. `None`: the burn modules above are used
    /// (GPU backends, the quantizer's checks, `--dequantize`).
    pub host: Option<std::sync::Arc<crate::engine::host::HostLlama>>,
    /// KV-cache bits the host path's prefill reads K/V through (`set_kv_policy`).
    pub host_kv_bits: Option<u32>,
}

impl<B: Backend> Llama<B> {
    /// Build from host weights, uploading one layer at a time. `layer` is called for each index.
    pub fn from_host(
        c: &ModelConfig,
        globals: &GlobalWeights,
        mut layer: impl FnMut(usize) -> crate::error::Result<LayerWeights>,
        dev: &B::Device,
    ) -> crate::error::Result<Self> {
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let w = layer(i)?;
            layers.push(DecoderLayer::from_host(&w, c, dev));
        }
        Ok(Self::assemble(c, globals, layers, dev))
    }

    /// Build from a quantized model, one layer at a time: on the GPU backends the projections stay
    /// packed INT4 (W4A16 kernels), on the CPU they are dequantized (as `from_host` on
    /// `QuantizedModel::dequantized_layer`).
    pub fn from_quantized(
        c: &ModelConfig,
        globals: &GlobalWeights,
        mut layer: impl FnMut(usize) -> Result<QuantizedLayer>,
        dev: &B::Device,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let w = layer(i)?;
            layers.push(DecoderLayer::from_quantized(&w, c, dev)?);
        }
        Ok(Self::assemble(c, globals, layers, dev))
    }

    fn assemble(c: &ModelConfig, globals: &GlobalWeights, layers: Vec<DecoderLayer<B>>, dev: &B::Device) -> Self {
        let (v, h) = (c.vocab_size, c.hidden_size);
        let head = match &globals.lm_head {
            Some(w) => w.transpose2(),
            None => globals.embed.transpose2(),
        };
        Llama {
            embed: upload(globals.embed.data.clone(), [v, h], dev),
            layers,
            norm: upload(globals.norm.clone(), [h], dev),
            lm_head: upload(head.data, [h, v], dev),
            rope: Rope::from_config(c),
            config: c.clone(),
            device: dev.clone(),
            host: None,
            host_kv_bits: None,
        }
    }

    /// Wrap a host model (CPU inference): every forward and decode step runs in `host`.
    pub fn from_host_model(host: crate::engine::host::HostLlama, dev: &B::Device) -> Self {
        let c = host.config.clone();
        Llama {
            embed: Tensor::zeros([1, 1], dev),
            layers: Vec::new(),
            norm: Tensor::zeros([1], dev),
            lm_head: Tensor::zeros([1, 1], dev),
            rope: Rope::from_config(&c),
            config: c,
            device: dev.clone(),
            host: Some(std::sync::Arc::new(host)),
            host_kv_bits: None,
        }
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
        if let Some(host) = &self.host {
            // Token ids are checked by the callers (ppl::window_nll); a failure here is a bug.
            let logits = host.forward_logits(ids, b, t, self.host_kv_bits).expect("token ids checked by the caller");
            return upload(logits, [b, t, self.config.vocab_size], &self.device);
        }
        let h = self.hidden(ids, b, t);
        let v = self.config.vocab_size;
        h.reshape([b * t, self.config.hidden_size]).matmul(self.lm_head.clone()).reshape([b, t, v])
    }
}
