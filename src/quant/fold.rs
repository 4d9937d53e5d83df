//! Folding AWQ scales into the model (awq-reference §2.1, §3): for a group with scales `s[K]`,
//! every consumer linear gets `W[:, c] *= s[c]` and the producer (a norm weight, or the output rows
//! and bias of the producer linear) gets `/= s[c]`. The function computed is unchanged; only where
//! the quantization error lands moves.

use crate::model::arch::{LayerWeights, LinearKind, ScaleGroup};

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

/// Fold `s` into the layer for group `g` (producer `/= s`, consumers `*= s`).
pub fn fold_group(layer: &mut LayerWeights, g: ScaleGroup, s: &[f64]) {
    let sf: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    match g {
        ScaleGroup::AttnIn => divide(&mut layer.attn_norm, &sf),
        ScaleGroup::MlpIn => divide(&mut layer.mlp_norm, &sf),
        ScaleGroup::AttnOut => divide_rows(layer, LinearKind::V, &sf),
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
