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
        use crate::model::arch::{LayerWeights, Linear};
        let l = &self.layers[i];
        let lin = |q: &QuantizedLinear| Linear { w: q.dequantize(), b: q.bias.clone() };
        LayerWeights {
            attn_norm: l.attn_norm.clone(),
            q: lin(&l.q),
            k: lin(&l.k),
            v: lin(&l.v),
            o: lin(&l.o),
            mlp_norm: l.mlp_norm.clone(),
            gate: lin(&l.gate),
            up: lin(&l.up),
            down: lin(&l.down),
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
