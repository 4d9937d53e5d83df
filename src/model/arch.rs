//! Per-architecture tensor names, and the canonical in-memory layout every other module uses.
//!
//! All supported families compute the same decoder layer:
//! ```text
//! h   = x + o_proj( attention( rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1) ) ),  n1 = rms(x)*attn_norm
//! out = h + down_proj( silu(gate_proj(n2)) * up_proj(n2) ),                          n2 = rms(h)*mlp_norm
//! ```
//! They differ only in names (InternLM2: `attention.wqkv`, `feed_forward.w1/w3/w2`), in fused
//! projections (InternLM2's wqkv interleaves q/k/v per KV group) and in biases (Qwen2 q/k/v).
//! Loading maps every family to [`LayerWeights`]; writers map back with the same functions.

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig};
use crate::model::weights::SafetensorsRepo;
use crate::tensor::HostTensor;

/// The seven linear projections of a decoder layer, in canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    pub const ALL: [LinearKind; 7] =
        [LinearKind::Q, LinearKind::K, LinearKind::V, LinearKind::O, LinearKind::Gate, LinearKind::Up, LinearKind::Down];
    /// Short name used in reports: `q_proj`, ..., `down_proj`.
    pub fn short(self) -> &'static str {
        match self {
            LinearKind::Q => "q_proj",
            LinearKind::K => "k_proj",
            LinearKind::V => "v_proj",
            LinearKind::O => "o_proj",
            LinearKind::Gate => "gate_proj",
            LinearKind::Up => "up_proj",
            LinearKind::Down => "down_proj",
        }
    }
    /// `(out_features, in_features)` for this projection.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let h = c.hidden_size;
        match self {
            LinearKind::Q => (c.q_dim(), h),
            LinearKind::K | LinearKind::V => (c.kv_dim(), h),
            LinearKind::O => (h, c.q_dim()),
            LinearKind::Gate | LinearKind::Up => (c.intermediate_size, h),
            LinearKind::Down => (h, c.intermediate_size),
        }
    }
    pub fn has_bias(self, c: &ModelConfig) -> bool {
        c.attention_bias && matches!(self, LinearKind::Q | LinearKind::K | LinearKind::V)
    }
}

/// A dense linear layer: weight `[N, K]` (nn.Linear orientation) and optional bias `[N]`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: HostTensor,
    pub b: Option<Vec<f32>>,
}

/// One decoder layer in canonical form (full precision, f32).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl LayerWeights {
    pub fn linear(&self, k: LinearKind) -> &Linear {
        match k {
            LinearKind::Q => &self.q,
            LinearKind::K => &self.k,
            LinearKind::V => &self.v,
            LinearKind::O => &self.o,
            LinearKind::Gate => &self.gate,
            LinearKind::Up => &self.up,
            LinearKind::Down => &self.down,
        }
    }
    pub fn linear_mut(&mut self, k: LinearKind) -> &mut Linear {
        match k {
            LinearKind::Q => &mut self.q,
            LinearKind::K => &mut self.k,
            LinearKind::V => &mut self.v,
            LinearKind::O => &mut self.o,
            LinearKind::Gate => &mut self.gate,
            LinearKind::Up => &mut self.up,
            LinearKind::Down => &mut self.down,
        }
    }
}

/// Everything outside the decoder layers.
#[derive(Debug, Clone)]
pub struct GlobalWeights {
    /// `[vocab, hidden]`
    pub embed: HostTensor,
    /// `[hidden]`
    pub norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to the embedding.
    pub lm_head: Option<HostTensor>,
}

/// HF names of the non-layer tensors: (embedding, final norm, lm head).
pub fn global_names(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::InternLM2 => ("model.tok_embeddings.weight", "model.norm.weight", "output.weight"),
        _ => ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
    }
}

/// HF module name of a projection (without `.weight`). For InternLM2, q/k/v all live in the
/// fused `attention.wqkv`.
pub fn linear_module(arch: Arch, layer: usize, k: LinearKind) -> String {
    let p = format!("model.layers.{layer}");
    match arch {
        Arch::InternLM2 => match k {
            LinearKind::Q | LinearKind::K | LinearKind::V => format!("{p}.attention.wqkv"),
            LinearKind::O => format!("{p}.attention.wo"),
            LinearKind::Gate => format!("{p}.feed_forward.w1"),
            LinearKind::Up => format!("{p}.feed_forward.w3"),
            LinearKind::Down => format!("{p}.feed_forward.w2"),
        },
        _ => match k {
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O => format!("{p}.self_attn.{}", k.short()),
            _ => format!("{p}.mlp.{}", k.short()),
        },
    }
}

/// HF names of the two norms of a layer: (before attention, before MLP).
pub fn norm_names(arch: Arch, layer: usize) -> (String, String) {
    let p = format!("model.layers.{layer}");
    match arch {
        Arch::InternLM2 => (format!("{p}.attention_norm.weight"), format!("{p}.ffn_norm.weight")),
        _ => (format!("{p}.input_layernorm.weight"), format!("{p}.post_attention_layernorm.weight")),
    }
}

/// Split InternLM2's fused `wqkv` (`[kv_heads * (G + 2) * D, hidden]`, rows grouped per KV head as
/// `[q_0 .. q_{G-1}, k, v]`, G = heads / kv_heads) into q `[heads*D, hidden]`, k and v `[kv_heads*D, hidden]`.
/// Works on any row-major `[rows, cols]` tensor (weights or, with cols = 1, biases).
pub fn internlm2_split_qkv(wqkv: &HostTensor, c: &ModelConfig) -> (HostTensor, HostTensor, HostTensor) {
    let (_, cols) = wqkv.dims2();
    let d = c.head_dim;
    let g = c.num_attention_heads / c.num_key_value_heads;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for kv in 0..c.num_key_value_heads {
        let base = kv * (g + 2) * d;
        q.extend_from_slice(&wqkv.data[base * cols..(base + g * d) * cols]);
        k.extend_from_slice(&wqkv.data[(base + g * d) * cols..(base + (g + 1) * d) * cols]);
        v.extend_from_slice(&wqkv.data[(base + (g + 1) * d) * cols..(base + (g + 2) * d) * cols]);
    }
    let mk = |data: Vec<f32>| {
        let rows = data.len() / cols.max(1);
        HostTensor { shape: vec![rows, cols], data }
    };
    (mk(q), mk(k), mk(v))
}

/// Row order of InternLM2's fused wqkv, as indices into the canonical concatenation
/// `[q rows | k rows | v rows]`. `fused_row[i] = canonical_row[order[i]]`; used to fuse weights,
/// biases and (row-indexed) quantized tensors the same way.
pub fn internlm2_qkv_row_order(c: &ModelConfig) -> Vec<usize> {
    let d = c.head_dim;
    let g = c.num_attention_heads / c.num_key_value_heads;
    let (qd, kd) = (c.q_dim(), c.kv_dim());
    let mut order = Vec::with_capacity(qd + 2 * kd);
    for kv in 0..c.num_key_value_heads {
        order.extend((0..g * d).map(|r| kv * g * d + r));
        order.extend((0..d).map(|r| qd + kv * d + r));
        order.extend((0..d).map(|r| qd + kd + kv * d + r));
    }
    order
}

/// Load the non-layer tensors with shape checks. A tied model has no lm head.
pub fn load_globals(repo: &SafetensorsRepo, c: &ModelConfig) -> Result<GlobalWeights> {
    let (emb, norm, head) = global_names(c.arch);
    let (v, h) = (c.vocab_size, c.hidden_size);
    let embed = repo.get_f32_shaped(emb, &[v, h])?;
    let norm = repo.get_f32_shaped(norm, &[h])?.data;
    let lm_head = if c.tie_word_embeddings {
        None
    } else if repo.contains(head) {
        Some(repo.get_f32_shaped(head, &[v, h])?)
    } else {
        return Err(Error::input(
            repo.file_of(emb).map(|p| p.display().to_string()).unwrap_or_default(),
            format!("tensor {head:?} not found and tie_word_embeddings is false"),
        ));
    };
    Ok(GlobalWeights { embed, norm, lm_head })
}

/// Load decoder layer `i` of a full-precision checkpoint into canonical form.
pub fn load_layer(repo: &SafetensorsRepo, c: &ModelConfig, i: usize) -> Result<LayerWeights> {
    let h = c.hidden_size;
    let (n1, n2) = norm_names(c.arch, i);
    let attn_norm = repo.get_f32_shaped(&n1, &[h])?.data;
    let mlp_norm = repo.get_f32_shaped(&n2, &[h])?.data;
    let dense = |k: LinearKind| -> Result<Linear> {
        let (n, kk) = k.shape(c);
        let m = linear_module(c.arch, i, k);
        let w = repo.get_f32_shaped(&format!("{m}.weight"), &[n, kk])?;
        let b = if k.has_bias(c) { Some(repo.get_f32_shaped(&format!("{m}.bias"), &[n])?.data) } else { None };
        Ok(Linear { w, b })
    };
    let (q, k, v) = if c.arch == Arch::InternLM2 {
        let rows = c.q_dim() + 2 * c.kv_dim();
        let m = linear_module(c.arch, i, LinearKind::Q);
        let wqkv = repo.get_f32_shaped(&format!("{m}.weight"), &[rows, h])?;
        let (q, k, v) = internlm2_split_qkv(&wqkv, c);
        let (qb, kb, vb) = if c.attention_bias {
            let b = repo.get_f32_shaped(&format!("{m}.bias"), &[rows])?;
            let b = HostTensor { shape: vec![rows, 1], data: b.data };
            let (a, b2, c2) = internlm2_split_qkv(&b, c);
            (Some(a.data), Some(b2.data), Some(c2.data))
        } else {
            (None, None, None)
        };
        (Linear { w: q, b: qb }, Linear { w: k, b: kb }, Linear { w: v, b: vb })
    } else {
        (dense(LinearKind::Q)?, dense(LinearKind::K)?, dense(LinearKind::V)?)
    };
    Ok(LayerWeights {
        attn_norm,
        q,
        k,
        v,
        o: dense(LinearKind::O)?,
        mlp_norm,
        gate: dense(LinearKind::Gate)?,
        up: dense(LinearKind::Up)?,
        down: dense(LinearKind::Down)?,
    })
}

/// Where the AWQ scales of each input group fold (awq-reference §2.4, §3.3). The producer op
/// absorbs `1/s`; the consumers get `W[:, c] *= s[c]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleGroup {
    /// `attn_norm -> {q, k, v}`; loss measured on the whole attention block.
    AttnIn,
    /// `v -> o`; skipped under GQA and for InternLM2 (fused wqkv).
    AttnOut,
    /// `mlp_norm -> {gate, up}`; loss measured on the whole MLP.
    MlpIn,
    /// `up -> down`; loss measured on down_proj.
    MlpOut,
}

impl ScaleGroup {
    pub fn name(self) -> &'static str {
        match self {
            ScaleGroup::AttnIn => "attn_in",
            ScaleGroup::AttnOut => "attn_out",
            ScaleGroup::MlpIn => "mlp_in",
            ScaleGroup::MlpOut => "mlp_out",
        }
    }
    pub fn consumers(self) -> &'static [LinearKind] {
        match self {
            ScaleGroup::AttnIn => &[LinearKind::Q, LinearKind::K, LinearKind::V],
            ScaleGroup::AttnOut => &[LinearKind::O],
            ScaleGroup::MlpIn => &[LinearKind::Gate, LinearKind::Up],
            ScaleGroup::MlpOut => &[LinearKind::Down],
        }
    }
    /// The groups that apply to this model, in search order.
    pub fn for_model(c: &ModelConfig) -> Vec<ScaleGroup> {
        let mut g = vec![ScaleGroup::AttnIn];
        // v -> o folding is exact only when v's outputs map one-to-one onto o's inputs.
        if !c.is_gqa() && c.arch != Arch::InternLM2 {
            g.push(ScaleGroup::AttnOut);
        }
        g.push(ScaleGroup::MlpIn);
        g.push(ScaleGroup::MlpOut);
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn internlm2_split_inverts_row_order() {
        let c = ModelConfig::from_json(
            &json!({"architectures": ["InternLM2ForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
                "vocab_size": 10}),
            "c",
        )
        .unwrap();
        let rows = c.q_dim() + 2 * c.kv_dim();
        let fused = HostTensor::from_fn(&[rows, 3], |i| i as f32);
        let (q, k, v) = internlm2_split_qkv(&fused, &c);
        let canon = HostTensor::concat_rows(&[&q, &k, &v]).unwrap();
        let order = internlm2_qkv_row_order(&c);
        for (i, &src) in order.iter().enumerate() {
            assert_eq!(fused.row(i), canon.row(src));
        }
        // KV group 0 = fused rows 0..4 q (2 heads x 2), 4..6 k, 6..8 v.
        assert_eq!(k.row(0), fused.row(4));
        assert_eq!(v.row(1), fused.row(7));
    }
}
