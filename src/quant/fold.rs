//! Folding AWQ scales into the model (awq-reference §2.1, §3): for a group with scales `s[K]`,
//! every consumer linear gets `W[:, c] *= s[c]` and the producer (a norm weight, or the output rows
//! and bias of the producer linear) gets `/= s[c]`. The function computed is unchanged; only where
//! the quantization error lands moves.

use crate::model::arch::{LayerWeights, LinearKind, ScaleGroup};
use crate::model::config::ModelConfig;

/// Normalize a positive scale vector by `sqrt(max * min)` so the geometric middle maps to 1,
/// and replace non-finite entries by 1 (AutoAWQ's guard). Channels with `fixed[c]` (a zero norm
/// weight: the channel is always 0) are left out of the normalization and get s = 1 (lmdeploy).
pub fn normalize_scales(s: &mut [f64], fixed: Option<&[bool]>) {
    let live = |c: usize| fixed.map(|f| !f[c]).unwrap_or(true);
    let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
    for (c, &v) in s.iter().enumerate() {
        if live(c) && v.is_finite() {
            hi = hi.max(v);
            lo = lo.min(v);
        }
    }
    let norm = (hi * lo).sqrt();
    for (c, v) in s.iter_mut().enumerate() {
        if !live(c) {
            *v = 1.0;
            continue;
        }
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
}

/// Channels whose producer norm weight is exactly zero (only norm producers have any).
pub fn zero_norm_channels(layer: &LayerWeights, g: ScaleGroup) -> Option<Vec<bool>> {
    let norm = match g {
        ScaleGroup::AttnIn => &layer.attn_norm,
        ScaleGroup::MlpIn => &layer.mlp_norm,
        _ => return None,
    };
    norm.contains(&0.0).then(|| norm.iter().map(|&w| w == 0.0).collect())
}

/// Multiply column `c` of a row-major `[N, K]` weight by `s[c]`.
pub fn scale_columns(w: &mut [f32], k: usize, s: &[f32]) {
    for row in w.chunks_mut(k) {
        for (v, &f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

/// How o_proj's inputs read v_proj's outputs: o's input channel `h·D + d` (query head `h`) is
/// the attention-weighted sum of v's output channel `(h / G)·D + d`, G = Hq / Hkv query heads per
/// KV head. Under GQA a v row feeds G columns of o, so a `v -> o` scale folds exactly only when
/// those G columns share it: [`HeadMap::tie`] pools a per-channel statistic over them, so scales
/// computed element-wise from pooled statistics are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadMap {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HeadMap {
    pub fn of(c: &ModelConfig) -> Self {
        HeadMap { heads: c.num_attention_heads, kv_heads: c.num_key_value_heads, head_dim: c.head_dim }
    }

    /// The v output channel that o's input channel `c` reads.
    pub fn v_channel(&self, c: usize) -> usize {
        let g = self.heads / self.kv_heads;
        (c / self.head_dim / g) * self.head_dim + c % self.head_dim
    }

    /// Replace each of o's `[Hq·D]` channel values by the mean over the G channels that read
    /// the same v channel (a no-op without GQA).
    pub fn tie(&self, x: &mut [f64]) {
        let g = self.heads / self.kv_heads;
        if g <= 1 {
            return;
        }
        let mut sum = vec![0f64; self.kv_heads * self.head_dim];
        for (c, &v) in x.iter().enumerate() {
            sum[self.v_channel(c)] += v;
        }
        for (c, v) in x.iter_mut().enumerate() {
            *v = sum[self.v_channel(c)] / g as f64;
        }
    }
}

/// Fold `s` into the layer for group `g` (producer `/= s`, consumers `*= s`). For `v -> o`
/// under GQA, v's row `j` is divided by the scale of o's first channel reading it and every o
/// column reading row `j` is multiplied by that same value, so the fold is exact even for
/// scales that were not tied ([`HeadMap::tie`]).
pub fn fold_group(layer: &mut LayerWeights, c: &ModelConfig, g: ScaleGroup, s: &[f64]) {
    let mut sf: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    match g {
        ScaleGroup::AttnIn => divide(&mut layer.attn_norm, &sf),
        ScaleGroup::MlpIn => divide(&mut layer.mlp_norm, &sf),
        ScaleGroup::AttnOut => {
            let map = HeadMap::of(c);
            let mut sv = vec![0f32; map.kv_heads * map.head_dim];
            for ch in (0..sf.len()).rev() {
                sv[map.v_channel(ch)] = sf[ch];
            }
            for (ch, v) in sf.iter_mut().enumerate() {
                *v = sv[map.v_channel(ch)];
            }
            divide_rows(layer, LinearKind::V, &sv)
        }
        ScaleGroup::MlpOut => divide_rows(layer, LinearKind::Up, &sf),
    }
    for &k in g.consumers() {
        let l = layer.linear_mut(k);
        let kk = l.w.dims2().1;
        scale_columns(&mut l.w.data, kk, &sf);
    }
}

fn divide(v: &mut [f32], s: &[f32]) {
    for (x, &f) in v.iter_mut().zip(s) {
        *x /= f;
    }
}

/// Producer linear: output row `c` and bias `c` are divided by `s[c]`.
fn divide_rows(layer: &mut LayerWeights, k: LinearKind, s: &[f32]) {
    let l = layer.linear_mut(k);
    let kk = l.w.dims2().1;
    for (row, &f) in l.w.data.chunks_mut(kk).zip(s) {
        for v in row {
            *v /= f;
        }
    }
    if let Some(b) = &mut l.b {
        divide(b, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_map_ties_the_query_heads_of_one_kv_head() {
        // 6 query heads over 2 KV heads, D = 2: o channel h·2 + d reads v channel (h / 3)·2 + d.
        let m = HeadMap { heads: 6, kv_heads: 2, head_dim: 2 };
        let v: Vec<usize> = (0..12).map(|c| m.v_channel(c)).collect();
        assert_eq!(v, vec![0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]);
        let mut x: Vec<f64> = (0..12).map(|c| c as f64).collect();
        m.tie(&mut x);
        // v channel 0: o channels 0, 2, 4 -> mean 2; channel 3: 7, 9, 11 -> 9.
        assert_eq!(x, vec![2.0, 3.0, 2.0, 3.0, 2.0, 3.0, 8.0, 9.0, 8.0, 9.0, 8.0, 9.0]);
        let mha = HeadMap { heads: 4, kv_heads: 4, head_dim: 2 };
        let mut y = vec![1.0, 5.0, 2.0, 7.0, 0.5, 3.0, 9.0, 4.0];
        let before = y.clone();
        mha.tie(&mut y);
        assert_eq!(y, before);
        assert!((0..8).all(|c| mha.v_channel(c) == c));
    }

    #[test]
    fn normalization_maps_geometric_middle_to_one() {
        let mut s = vec![4.0, 1.0, 16.0, f64::INFINITY];
        normalize_scales(&mut s, None);
        // sqrt(16 * 1) = 4
        assert_eq!(s, vec![1.0, 0.25, 4.0, 1.0]);
        let mut s = vec![100.0, 2.0, 8.0];
        normalize_scales(&mut s, Some(&[true, false, false]));
        assert_eq!(s, vec![1.0, 0.5, 2.0]);
    }
}
