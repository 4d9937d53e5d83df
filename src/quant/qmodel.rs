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
