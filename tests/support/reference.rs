//! An independent f64 reference forward pass for Llama-family decoders, written with plain
//! loops (no code shared with the engine). Used by the engine and folding tests.
#![allow(dead_code)]

use awqc::model::arch::{GlobalWeights, LayerWeights, Linear};
use awqc::model::config::ModelConfig;

/// y[n] = sum_k W[n,k] x[k] + b[n]
fn linear(l: &Linear, x: &[f64]) -> Vec<f64> {
    let (n, k) = l.w.dims2();
    (0..n)
        .map(|i| {
            let row = &l.w.data[i * k..(i + 1) * k];
            let dot: f64 = row.iter().zip(x).map(|(&w, &v)| w as f64 * v).sum();
            dot + l.b.as_ref().map(|b| b[i] as f64).unwrap_or(0.0)
        })
        .collect()
}

fn rms(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, &g)| v * r * g as f64).collect()
}

/// Half-split RoPE on one head vector at position p.
fn rope(v: &mut [f64], p: usize, theta: f64) {
    let d = v.len();
    for j in 0..d / 2 {
        let inv = theta.powf(-(2.0 * j as f64) / d as f64);
        let (s, c) = (p as f64 * inv).sin_cos();
        let (a, b) = (v[j], v[j + d / 2]);
        v[j] = a * c - b * s;
        v[j + d / 2] = b * c + a * s;
    }
}

pub fn reference_logits(c: &ModelConfig, g: &GlobalWeights, layers: &[LayerWeights], ids: &[u32]) -> Vec<Vec<f64>> {
    let mut x = reference_embed(g, ids);
    for l in layers {
        x = reference_layer(c, l, x);
    }
    let head = g.lm_head.as_ref().unwrap_or(&g.embed);
    x.iter()
        .map(|r| {
            let n = rms(r, &g.norm, c.rms_norm_eps);
            (0..c.vocab_size).map(|vi| head.row(vi).iter().zip(&n).map(|(&w, v)| w as f64 * v).sum()).collect()
        })
        .collect()
}

/// The embedding rows of `ids`, `[T][H]`.
#[allow(dead_code)]
pub fn reference_embed(g: &GlobalWeights, ids: &[u32]) -> Vec<Vec<f64>> {
    ids.iter().map(|&i| g.embed.row(i as usize).iter().map(|&v| v as f64).collect()).collect()
}

/// One decoder layer on the hidden states `x` (`[T][H]`, one sequence from position 0).
pub fn reference_layer(c: &ModelConfig, l: &LayerWeights, mut x: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let d = c.head_dim;
    let (hq, hkv) = (c.num_attention_heads, c.num_key_value_heads);
    let t = x.len();
    {
        let n1: Vec<Vec<f64>> = x.iter().map(|r| rms(r, &l.attn_norm, c.rms_norm_eps)).collect();
        let mut q: Vec<Vec<f64>> = n1.iter().map(|r| linear(&l.q, r)).collect();
        let mut k: Vec<Vec<f64>> = n1.iter().map(|r| linear(&l.k, r)).collect();
        let v: Vec<Vec<f64>> = n1.iter().map(|r| linear(&l.v, r)).collect();
        for p in 0..t {
            for hh in 0..hq {
                rope(&mut q[p][hh * d..(hh + 1) * d], p, c.rope_theta);
            }
            for hh in 0..hkv {
                rope(&mut k[p][hh * d..(hh + 1) * d], p, c.rope_theta);
            }
        }
        let mut ctx = vec![vec![0f64; hq * d]; t];
        for hh in 0..hq {
            let kv = hh / (hq / hkv);
            for i in 0..t {
                let qi = &q[i][hh * d..(hh + 1) * d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| qi.iter().zip(&k[j][kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for dd in 0..d {
                        ctx[i][hh * d + dd] += ej / z * v[j][kv * d + dd];
                    }
                }
            }
        }
        for i in 0..t {
            let a = linear(&l.o, &ctx[i]);
            for (xv, av) in x[i].iter_mut().zip(a) {
                *xv += av;
            }
            let n2 = rms(&x[i], &l.mlp_norm, c.rms_norm_eps);
            let gt = linear(&l.gate, &n2);
            let up = linear(&l.up, &n2);
            let act: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let m = linear(&l.down, &act);
            for (xv, mv) in x[i].iter_mut().zip(m) {
                *xv += mv;
            }
        }
    }
    x
}

