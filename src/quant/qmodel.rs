//! The quantized model as the exporters see it: per-layer quantized projections plus the
//! full-precision tensors (norms, embedding, lm head) that are never quantized.
//!
//! Exporters implement [`QuantSink`] so the pipeline can hand them one finished layer at a time
//! and never hold the whole quantized model in memory.

use crate::error::Result;
use crate::model::arch::{GlobalWeights, LinearKind};
use crate::model::config::ModelConfig;
use crate::quant::int4::{QuantParams, QuantizedLinear};

/// One decoder layer after quantization. Norm weights already contain the folded AWQ scales.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub q: QuantizedLinear,
    pub k: QuantizedLinear,
    pub v: QuantizedLinear,
    pub o: QuantizedLinear,
    pub gate: QuantizedLinear,
    pub up: QuantizedLinear,
    pub down: QuantizedLinear,
}

impl QuantizedLayer {
    pub fn linear(&self, k: LinearKind) -> &QuantizedLinear {
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
}

/// A whole quantized model in memory (tests, small models, format conversion).
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    pub config: ModelConfig,
    pub params: QuantParams,
    pub globals: GlobalWeights,
    pub layers: Vec<QuantizedLayer>,
}

/// A destination for a quantized model, fed in order: `begin`, then `write_layer(0..L)`, then
/// `finish`. Implementations write into a staging directory and rename into place in `finish`,
/// so a failure part-way leaves nothing behind.
pub trait QuantSink {
    fn begin(&mut self, config: &ModelConfig, params: QuantParams, globals: &GlobalWeights) -> Result<()>;
    fn write_layer(&mut self, index: usize, layer: &QuantizedLayer) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<()>;
}

impl QuantizedModel {
    /// Stream this model into a sink.
    pub fn write_to(&self, mut sink: Box<dyn QuantSink>) -> Result<()> {
        sink.begin(&self.config, self.params, &self.globals)?;
        for (i, l) in self.layers.iter().enumerate() {
            sink.write_layer(i, l)?;
        }
        sink.finish()
    }
}

/// A sink that keeps the quantized model in memory (tests, small models, format conversion).
#[derive(Default)]
pub struct CollectSink {
    pub model: Option<QuantizedModel>,
}

impl QuantSink for CollectSink {
    fn begin(&mut self, config: &ModelConfig, params: QuantParams, globals: &GlobalWeights) -> Result<()> {
        self.model = Some(QuantizedModel { config: config.clone(), params, globals: globals.clone(), layers: Vec::new() });
        Ok(())
    }
    fn write_layer(&mut self, index: usize, layer: &QuantizedLayer) -> Result<()> {
        let m = self.model.as_mut().ok_or_else(|| crate::error::Error::internal("write_layer before begin"))?;
        if index != m.layers.len() {
            return Err(crate::error::Error::internal(format!("layer {index} written out of order")));
        }
        m.layers.push(layer.clone());
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl QuantizedModel {
    /// Dequantized layer `i` in canonical full-precision form (for the engine and for checks).
    pub fn dequantized_layer(&self, i: usize) -> crate::model::arch::LayerWeights {
        self.layers[i].dequantized()
    }
}

impl QuantizedLayer {
    /// The layer in canonical full-precision form: dequantized weights, its norms.
    pub fn dequantized(&self) -> crate::model::arch::LayerWeights {
        use crate::model::arch::{LayerWeights, Linear};
        let lin = |q: &QuantizedLinear| Linear { w: q.dequantize(), b: q.bias.clone() };
        LayerWeights {
            attn_norm: self.attn_norm.clone(),
            q: lin(&self.q),
            k: lin(&self.k),
            v: lin(&self.v),
            o: lin(&self.o),
            mlp_norm: self.mlp_norm.clone(),
            gate: lin(&self.gate),
            up: lin(&self.up),
            down: lin(&self.down),
        }
    }
}

/// Feed several sinks at once (e.g. the AutoAWQ checkpoint and the TurboMind workspace).
pub struct TeeSink(pub Vec<Box<dyn QuantSink>>);

impl QuantSink for TeeSink {
    fn begin(&mut self, config: &ModelConfig, params: QuantParams, globals: &GlobalWeights) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.begin(config, params, globals))
    }
    fn write_layer(&mut self, index: usize, layer: &QuantizedLayer) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.write_layer(index, layer))
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.0.into_iter().try_for_each(|s| s.finish())
    }
}

// ---------------------------------------------------------------------------------------------
// Row and shape helpers on `QuantizedLinear`, shared by the exporters. A "row" is one output
// channel: its K codes, its K/g zero points and scales, and its bias entry move together.

/// Check what a sink is handed as layer `index` when it expects layer `expected` of `c`: the
/// order, the norm lengths and every linear (`check_linear`). `sink` names the writer in errors.
pub fn check_layer(sink: &str, c: &ModelConfig, p: QuantParams, index: usize, expected: usize, layer: &QuantizedLayer) -> Result<()> {
    if index != expected || index >= c.num_hidden_layers {
        return Err(crate::error::Error::internal(format!(
            "{sink}: got layer {index}, expected layer {expected} of {}",
            c.num_hidden_layers
        )));
    }
    let h = c.hidden_size;
    if layer.attn_norm.len() != h || layer.mlp_norm.len() != h {
        return Err(crate::error::Error::internal(format!("{sink}: layer {index} norms do not have {h} values")));
    }
    for kind in LinearKind::ALL {
        let (n, k) = kind.shape(c);
        let name = crate::model::arch::linear_module(c.arch, index, kind);
        check_linear(&name, layer.linear(kind), n, k, p, kind.has_bias(c))?;
    }
    Ok(())
}

/// Check that `l` is a well-formed `[n, k]` linear quantized with `p`, with a bias exactly when
/// `bias` is set. `name` is the module name used in the error.
pub fn check_linear(name: &str, l: &QuantizedLinear, n: usize, k: usize, p: QuantParams, bias: bool) -> Result<()> {
    let bad = |msg: String| Err(crate::error::Error::internal(format!("{name}: {msg}")));
    if l.n != n || l.k != k {
        return bad(format!("shape [{}, {}], expected [{n}, {k}]", l.n, l.k));
    }
    if l.params != p {
        return bad(format!("quantized with {:?}, the model says {:?}", l.params, p));
    }
    if !k.is_multiple_of(p.group) {
        return bad(format!("in_features {k} is not a multiple of the group size {}", p.group));
    }
    let groups = k / p.group;
    if l.q.len() != n * k || l.zeros.len() != n * groups || l.scales.len() != n * groups {
        return bad(format!(
            "buffers have {} codes, {} zeros, {} scales; expected {}, {}, {}",
            l.q.len(),
            l.zeros.len(),
            l.scales.len(),
            n * k,
            n * groups,
            n * groups
        ));
    }
    match (&l.bias, bias) {
        (Some(b), true) if b.len() == n => Ok(()),
        (Some(b), true) => bad(format!("bias has {} values, expected {n}", b.len())),
        (None, false) => Ok(()),
        (Some(_), false) => bad("has a bias but the model config has none for this projection".into()),
        (None, true) => bad("has no bias but the model config requires one".into()),
    }
}

/// The rows `rows[i]` of `l`, in that order (`out.row(i) = l.row(rows[i])`). Indices must be `< l.n`.
pub fn select_rows(l: &QuantizedLinear, rows: &[usize]) -> QuantizedLinear {
    let (k, g) = (l.k, l.groups());
    let mut q = Vec::with_capacity(rows.len() * k);
    let mut zeros = Vec::with_capacity(rows.len() * g);
    let mut scales = Vec::with_capacity(rows.len() * g);
    for &r in rows {
        q.extend_from_slice(&l.q[r * k..(r + 1) * k]);
        zeros.extend_from_slice(&l.zeros[r * g..(r + 1) * g]);
        scales.extend_from_slice(&l.scales[r * g..(r + 1) * g]);
    }
    let bias = l.bias.as_ref().map(|b| rows.iter().map(|&r| b[r]).collect());
    let float_zeros = l.float_zeros.as_ref().map(|f| rows.iter().flat_map(|&r| f[r * g..(r + 1) * g].iter().copied()).collect());
    QuantizedLinear { n: rows.len(), k, params: l.params, q, zeros, scales, bias, float_zeros }
}

/// Rows `[start, end)` of `l`.
pub fn slice_rows(l: &QuantizedLinear, start: usize, end: usize) -> QuantizedLinear {
    select_rows(l, &(start..end).collect::<Vec<_>>())
}

/// Stack linears with the same in_features and quantizer along the output dim
/// (`[n1, k] ++ [n2, k] -> [n1 + n2, k]`). Either all or none of them have a bias.
pub fn concat_rows(parts: &[&QuantizedLinear]) -> Result<QuantizedLinear> {
    let first = parts.first().ok_or_else(|| crate::error::Error::internal("concat_rows: nothing to concatenate"))?;
    let mut out = QuantizedLinear {
        n: 0,
        k: first.k,
        params: first.params,
        q: Vec::new(),
        zeros: Vec::new(),
        scales: Vec::new(),
        bias: first.bias.as_ref().map(|_| Vec::new()),
        // Float zeros if any part has them (the others' integer zeros are exact in f16).
        float_zeros: parts.iter().any(|p| p.float_zeros.is_some()).then(Vec::new),
    };
    for p in parts {
        if p.k != out.k || p.params != out.params || p.bias.is_some() != out.bias.is_some() {
            return Err(crate::error::Error::internal(format!(
                "concat_rows: cannot stack [{}, {}] {:?} (bias {}) onto [{}, {}] {:?} (bias {})",
                p.n,
                p.k,
                p.params,
                p.bias.is_some(),
                out.n,
                out.k,
                out.params,
                out.bias.is_some()
            )));
        }
        out.n += p.n;
        out.q.extend_from_slice(&p.q);
        out.zeros.extend_from_slice(&p.zeros);
        out.scales.extend_from_slice(&p.scales);
        if let Some(dst) = out.float_zeros.as_mut() {
            dst.extend(p.zeros_f16());
        }
        if let (Some(dst), Some(src)) = (out.bias.as_mut(), p.bias.as_ref()) {
            dst.extend_from_slice(src);
        }
    }
    Ok(out)
}

/// The inverse of a permutation: `inv[perm[i]] = i`.
pub fn invert_permutation(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

// ---------------------------------------------------------------------------------------------
// Random models for tests and benchmarks.

/// A small deterministic generator (PCG-style LCG); good enough for test data, not for anything else.
struct TestRng(u64);

impl TestRng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// A value in `[center - spread, center + spread]` that f16 represents exactly, so it survives
    /// every export.
    fn next_f16(&mut self, center: f32, spread: f32) -> f32 {
        half::f16::from_f32(center + self.next_f32() * spread).to_f32()
    }
}

/// A random quantized model with the shapes of `config`: every projection is quantized from a
/// random `[N, K]` weight (with a few outliers, so scales and zero points vary), biases where the
/// config has them, and norms / embedding / lm head (`None` when tied) holding f16-exact values.
/// Deterministic in `seed`.
pub fn random_quantized_model(config: &ModelConfig, params: QuantParams, seed: u64) -> Result<QuantizedModel> {
    use crate::tensor::HostTensor;
    let mut rng = TestRng(seed ^ 0x9E37_79B9_7F4A_7C15);
    let (h, v) = (config.hidden_size, config.vocab_size);
    let tensor = |rng: &mut TestRng, rows: usize, cols: usize| {
        HostTensor::from_fn(&[rows, cols], |i| {
            let x = rng.next_f32();
            if i % 61 == 7 { x * 6.0 } else { x }
        })
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for li in 0..config.num_hidden_layers {
        let lin = |kind: LinearKind, rng: &mut TestRng| -> Result<QuantizedLinear> {
            let (n, k) = kind.shape(config);
            let w = tensor(rng, n, k);
            let bias = kind.has_bias(config).then(|| (0..n).map(|_| rng.next_f16(0.0, 0.5)).collect());
            let name = crate::model::arch::linear_module(config.arch, li, kind);
            QuantizedLinear::quantize(&name, &w, bias, params)
        };
        let attn_norm = (0..h).map(|_| rng.next_f16(1.0, 0.5)).collect();
        let mlp_norm = (0..h).map(|_| rng.next_f16(1.0, 0.5)).collect();
        layers.push(QuantizedLayer {
            attn_norm,
            mlp_norm,
            q: lin(LinearKind::Q, &mut rng)?,
            k: lin(LinearKind::K, &mut rng)?,
            v: lin(LinearKind::V, &mut rng)?,
            o: lin(LinearKind::O, &mut rng)?,
            gate: lin(LinearKind::Gate, &mut rng)?,
            up: lin(LinearKind::Up, &mut rng)?,
            down: lin(LinearKind::Down, &mut rng)?,
        });
    }
    let embed = HostTensor::from_fn(&[v, h], |_| rng.next_f16(0.0, 1.0));
    let norm = (0..h).map(|_| rng.next_f16(1.0, 0.5)).collect();
    let lm_head =
        if config.tie_word_embeddings { None } else { Some(HostTensor::from_fn(&[v, h], |_| rng.next_f16(0.0, 1.0))) };
    Ok(QuantizedModel { config: config.clone(), params, globals: GlobalWeights { embed, norm, lm_head }, layers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostTensor;

    fn lin(n: usize, seed: f32, bias: bool) -> QuantizedLinear {
        let w = HostTensor::from_fn(&[n, 16], |i| (i as f32 * 0.37 + seed).sin());
        let b = bias.then(|| (0..n).map(|i| i as f32 + seed).collect());
        QuantizedLinear::quantize("t", &w, b, QuantParams::new(4, 8).unwrap()).unwrap()
    }

    #[test]
    fn row_helpers_move_whole_rows() {
        let (a, b) = (lin(3, 0.0, true), lin(2, 1.0, true));
        let ab = concat_rows(&[&a, &b]).unwrap();
        assert_eq!((ab.n, ab.q.len(), ab.scales.len()), (5, 80, 10));
        assert_eq!(&ab.q[3 * 16..4 * 16], &b.q[..16]);
        assert_eq!(ab.bias.as_ref().unwrap()[3], b.bias.as_ref().unwrap()[0]);
        let perm = [4, 0, 3, 1, 2];
        let p = select_rows(&ab, &perm);
        assert_eq!(&p.zeros[0..2], &ab.zeros[8..10]);
        assert_eq!(p.bias.as_ref().unwrap()[2], ab.bias.as_ref().unwrap()[3]);
        assert_eq!(select_rows(&p, &invert_permutation(&perm)), ab);
        assert_eq!(slice_rows(&ab, 3, 5), b);
        assert!(concat_rows(&[&a, &lin(2, 1.0, false)]).is_err());
        assert!(check_linear("t", &ab, 5, 16, ab.params, true).is_ok());
        assert!(check_linear("t", &ab, 5, 16, ab.params, false).unwrap_err().msg.contains("has a bias"));
        assert!(check_linear("t", &ab, 4, 16, ab.params, true).unwrap_err().msg.contains("shape"));
    }

    #[test]
    fn check_layer_names_the_sink_the_layer_and_the_module() {
        use crate::model::{config::Arch, synth};
        let c = synth::config(Arch::Llama, 32, 64, 2, 4, 2, 50, false);
        let p = QuantParams::new(4, 16).unwrap();
        let w = synth::layer(&c, 7, 1);
        let q = |l: &crate::model::arch::Linear| QuantizedLinear::quantize("t", &l.w, l.b.clone(), p).unwrap();
        let mut layer = QuantizedLayer {
            attn_norm: w.attn_norm.clone(),
            mlp_norm: w.mlp_norm.clone(),
            q: q(&w.q),
            k: q(&w.k),
            v: q(&w.v),
            o: q(&w.o),
            gate: q(&w.gate),
            up: q(&w.up),
            down: q(&w.down),
        };
        assert!(check_layer("W", &c, p, 1, 1, &layer).is_ok());
        let msg = |r: Result<()>| r.unwrap_err().msg;
        assert_eq!(msg(check_layer("W", &c, p, 0, 1, &layer)), "W: got layer 0, expected layer 1 of 2");
        assert_eq!(msg(check_layer("W", &c, p, 2, 2, &layer)), "W: got layer 2, expected layer 2 of 2");
        assert!(msg(check_layer("W", &c, QuantParams::new(4, 32).unwrap(), 1, 1, &layer)).contains("model.layers.1.self_attn.q_proj"));
        layer.mlp_norm.pop();
        assert_eq!(msg(check_layer("W", &c, p, 1, 1, &layer)), "W: layer 1 norms do not have 32 values");
        layer.mlp_norm = w.mlp_norm.clone();
        layer.down = q(&w.gate);
        assert!(msg(check_layer("W", &c, p, 1, 1, &layer)).starts_with("model.layers.1.mlp.down_proj: shape"));
    }
}
