//! Rotary position embeddings and their scaling variants (awq-reference §8).
//!
//! `inv_freq[i] = base^(-2i/d)` for pair `i < d/2` is the unscaled frequency. The scaling types
//! change it as follows (d = rotary dim):
//! - `linear`:  `inv[i] = freq[i] / factor`
//! - `dynamic` (NTK, TurboMind semantics): computed once per sequence from the prompt length L;
//!   if `factor > 1` and `L > max_pos`: `base' = base * (factor*L/max_pos - (factor-1))^(d/(d-2))`
//! - `llama3`:  `smooth = clamp(O*freq/(2π)/(hf-lf) - lf/(hf-lf), 0, 1)`,
//!              `inv = (1-smooth)*freq/factor + smooth*freq`
//! - `yarn`:    `inv = freq - freq*ramp*(1 - 1/factor)` with a linear ramp between the correction
//!              dims of beta_fast and beta_slow; cos/sin are multiplied by `attention_factor`.
//!
//! The model uses the half-split (HF, "rotate_half") layout: element `j` pairs with `j + d/2`.

use crate::model::config::{ModelConfig, RopeScaling};
use std::f64::consts::PI;

#[derive(Debug, Clone)]
pub struct Rope {
    pub dim: usize,
    pub base: f64,
    pub scaling: RopeScaling,
    pub max_position_embeddings: usize,
}

impl Rope {
    pub fn from_config(c: &ModelConfig) -> Self {
        Rope {
            dim: c.head_dim,
            base: c.rope_theta,
            scaling: c.rope_scaling.clone(),
            max_position_embeddings: c.max_position_embeddings,
        }
    }

    /// The base actually used for a sequence whose prompt has `prompt_len` tokens (only dynamic
    /// NTK changes it).
    pub fn effective_base(&self, prompt_len: usize) -> f64 {
        match self.scaling {
            RopeScaling::Dynamic { factor } if factor > 1.0 && prompt_len > self.max_position_embeddings => {
                let d = self.dim as f64;
                let f = factor * prompt_len as f64 / self.max_position_embeddings as f64 - (factor - 1.0);
                self.base * f.powf(d / (d - 2.0))
            }
            _ => self.base,
        }
    }

    /// `(inv_freq[d/2], attention_scale)` for a sequence with `prompt_len` prompt tokens.
    pub fn inv_freq(&self, prompt_len: usize) -> (Vec<f64>, f64) {
        let d = self.dim as f64;
        let base = self.effective_base(prompt_len);
        let freq: Vec<f64> = (0..self.dim / 2).map(|i| base.powf(-(2.0 * i as f64) / d)).collect();
        match &self.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => (freq, 1.0),
            RopeScaling::Linear { factor } => (freq.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Llama3 { factor, low_freq_factor: lf, high_freq_factor: hf, original_max_position_embeddings: o } => {
                let o = *o as f64;
                let inv = freq
                    .iter()
                    .map(|&f| {
                        let smooth = if hf == lf {
                            // Degenerate band: a hard switch at the wavelength threshold.
                            if o * f / (2.0 * PI) >= *lf { 1.0 } else { 0.0 }
                        } else {
                            (o * f / (2.0 * PI) / (hf - lf) - lf / (hf - lf)).clamp(0.0, 1.0)
                        };
                        (1.0 - smooth) * f / factor + smooth * f
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn { factor, beta_fast, beta_slow, attention_factor, original_max_position_embeddings } => {
                // lmdeploy: with an explicit original length, factor = max_pos / original.
                let (factor, o) = match original_max_position_embeddings {
                    Some(o) => (self.max_position_embeddings as f64 / *o as f64, *o as f64),
                    None => (*factor, self.max_position_embeddings as f64),
                };
                let corr = |r: f64| d * (o / (2.0 * PI * r)).ln() / (2.0 * base.ln());
                let low = corr(*beta_fast).floor().max(0.0);
                let mut high = corr(*beta_slow).ceil().min(d - 1.0);
                if low == high {
                    high += 0.001;
                }
                let inv = freq
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        f - f * ramp * (1.0 - 1.0 / factor)
                    })
                    .collect();
                let att = attention_factor.unwrap_or(if factor > 1.0 { 0.1 * factor.ln() + 1.0 } else { 1.0 });
                (inv, att)
            }
        }
    }

    /// cos and sin tables `[positions, d/2]` (row-major, f32) for positions `start..start+len`,
    /// computed in f64, scaled by the attention factor.
    pub fn tables(&self, prompt_len: usize, start: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let (inv, scale) = self.inv_freq(prompt_len);
        let half = self.dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in &inv {
                let a = p as f64 * f;
                cos.push((a.cos() * scale) as f32);
                sin.push((a.sin() * scale) as f32);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> Rope {
        Rope { dim: 64, base: 100000.0, scaling, max_position_embeddings: 256 }
    }

    #[test]
    fn dynamic_ntk_base_matches_hand_computed_values() {
        let r = rope(RopeScaling::Dynamic { factor: 2.0 });
        // At or below max_pos the base is unchanged.
        assert_eq!(r.effective_base(256), 100000.0);
        // L = 512: f' = 2*512/256 - 1 = 3; base' = 1e5 * 3^(64/62) = 310,822.3667 (python: 1e5*3**(64/62))
        let expect = 100000.0 * 3f64.powf(64.0 / 62.0);
        assert!((r.effective_base(512) - expect).abs() < 1e-6);
        assert!((r.effective_base(512) - 310_822.3667).abs() < 1e-3, "{}", r.effective_base(512));
        // L = 384: f' = 2*1.5 - 1 = 2 -> base' = 1e5 * 2^(32/31) = 204,522.2871 (python)
        assert!((r.effective_base(384) - 204_522.2871).abs() < 1e-3, "{}", r.effective_base(384));
        // factor 1 never changes the base.
        assert_eq!(rope(RopeScaling::Dynamic { factor: 1.0 }).effective_base(10_000), 100000.0);
    }

    #[test]
    fn linear_and_llama3() {
        let plain = rope(RopeScaling::None).inv_freq(1).0;
        let lin = rope(RopeScaling::Linear { factor: 4.0 }).inv_freq(1).0;
        for (a, b) in plain.iter().zip(&lin) {
            assert!((a / 4.0 - b).abs() < 1e-15);
        }
        let l3 = rope(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        })
        .inv_freq(1)
        .0;
        // High frequencies (short wavelength) are kept, low frequencies divided by the factor.
        assert!((l3[0] - plain[0]).abs() < 1e-15);
        assert!((l3[31] - plain[31] / 8.0).abs() < 1e-18);
    }

    #[test]
    fn yarn_ramp_endpoints() {
        let y = rope(RopeScaling::Yarn {
            factor: 4.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            original_max_position_embeddings: None,
        });
        let (inv, att) = y.inv_freq(1);
        let plain = rope(RopeScaling::None).inv_freq(1).0;
        assert!((inv[0] - plain[0]).abs() < 1e-15, "fastest pair is not interpolated");
        assert!((inv[31] - plain[31] / 4.0).abs() < 1e-15, "slowest pair is fully interpolated");
        assert!((att - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    }
}
