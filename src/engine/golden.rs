//! Golden perplexities: `goldens/*.json` files record, per named configuration, the expected
//! perplexity, its tolerance and the exact command that produced it. `awqc eval --check FILE
//! --golden NAME` fails (exit 4) when a measured value leaves its tolerance.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    pub dataset: String,
    pub seqlen: usize,
    pub windows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoldenEntry {
    pub ppl: f64,
    /// Allowed relative deviation, e.g. 0.002 = 0.2%.
    pub rel_tol: f64,
    /// The commands that produce the model and measure it.
    pub command: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoldenFile {
    pub model: String,
    pub protocol: Protocol,
    pub entries: BTreeMap<String, GoldenEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub golden: String,
    pub expected: f64,
    pub measured: f64,
    pub rel_diff: f64,
    pub rel_tol: f64,
    pub pass: bool,
}

impl GoldenFile {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::input(path.display(), format!("not a golden file: {e}")))
    }

    /// Compare a measurement made with `protocol` to entry `name`.
    pub fn check(&self, path: &Path, name: &str, protocol: &Protocol, ppl: f64) -> Result<CheckOutcome> {
        let e = self.entries.get(name).ok_or_else(|| {
            Error::usage(format!(
                "--golden {name}: no such entry in {} (entries: {})",
                path.display(),
                self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if &self.protocol != protocol {
            return Err(Error::usage(format!(
                "{}: golden protocol is {:?} but this evaluation used {:?}",
                path.display(),
                self.protocol,
                protocol
            )));
        }
        let rel = (ppl - e.ppl).abs() / e.ppl;
        Ok(CheckOutcome { golden: name.into(), expected: e.ppl, measured: ppl, rel_diff: rel, rel_tol: e.rel_tol, pass: rel <= e.rel_tol })
    }
}
