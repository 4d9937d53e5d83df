//! awqc: an offline AWQ quantization and model-conversion compiler.
//!
//! The modules follow the pipeline: model I/O (`model`, `formats`), data (`data`), calibration,
//! search and quantization (`quant`), the inference engine (`engine`), and the command line (`cli`).

pub mod error;
pub mod fsutil;
#[cfg(feature = "engine")]
pub mod cli;
pub mod progress;
pub mod tensor;

pub mod data;
#[cfg(feature = "engine")]
pub mod engine;
pub mod formats;
pub mod model;
pub mod quant;
#[cfg(feature = "engine")]
pub mod serve;
/// Without the engine, `serve` is only its OpenAI request parsing (for the fuzz targets).
#[cfg(not(feature = "engine"))]
pub mod serve {
    pub mod openai;
}

pub use error::{Error, ErrorKind, Result};
