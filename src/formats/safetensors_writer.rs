//! Streaming safetensors writer.
//!
//! The header (names, dtypes, shapes, offsets) is computed from the full list of tensor specs up
//! front and written first; tensor bytes are then appended in spec order as the pipeline produces
//! them, so a quantized model never has to be held in memory as a whole. Large outputs are split
//! into shards (`model-00001-of-00003.safetensors`) with a `model.safetensors.index.json`, as
//! transformers writes them.

use crate::error::{Error, IoContext, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One tensor to be written: its name, safetensors dtype (`F32`, `F16`, `BF16`, `I32`, `U8`) and shape.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: &'static str, shape: &[usize]) -> Self {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec() }
    }
    pub fn nbytes(&self) -> usize {
        let elem = match self.dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" => 4,
            "F16" | "BF16" | "I16" => 2,
            _ => 1,
        };
        self.shape.iter().product::<usize>() * elem
    }
}

/// The header is a JSON map keyed by tensor name: a repeated name, or the reserved
/// `__metadata__`, would silently corrupt the offsets of the file being written.
fn check_names(what: &str, specs: &[TensorSpec]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(specs.len());
    for s in specs {
        if s.name == "__metadata__" || !seen.insert(s.name.as_str()) {
            return Err(Error::internal(format!("{what}: tensor name {:?} is reserved or repeated", s.name)));
        }
    }
    Ok(())
}

/// Writer for one safetensors file.
pub struct SafetensorsWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl SafetensorsWriter {
    /// Create `path` and write its header. `metadata` goes to `__metadata__` (transformers wants
    /// `format: pt`).
    pub fn create(path: &Path, specs: Vec<TensorSpec>, metadata: &[(&str, &str)]) -> Result<Self> {
        check_names(&path.display().to_string(), &specs)?;
        let mut header = Map::new();
        if !metadata.is_empty() {
            let m: Map<String, Value> = metadata.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            header.insert("__metadata__".into(), Value::Object(m));
        }
        let mut off = 0usize;
        for s in &specs {
            let n = s.nbytes();
            header.insert(s.name.clone(), json!({"dtype": s.dtype, "shape": s.shape, "data_offsets": [off, off + n]}));
            off += n;
        }
        let mut h = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| Error::internal(format!("serializing safetensors header: {e}")))?;
        // Pad with spaces so the data starts 8-byte aligned.
        while (h.len() + 8) % 8 != 0 {
            h.push(b' ');
        }
        let f = std::fs::File::create(path).at(path.display())?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&(h.len() as u64).to_le_bytes()).at(path.display())?;
        out.write_all(&h).at(path.display())?;
        Ok(SafetensorsWriter { path: path.to_path_buf(), out, specs, next: 0 })
    }

    /// Append the bytes of the next tensor; `name` must be the next spec and the size must match.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            Error::internal(format!("{}: tensor {name:?} written past the end of the header", self.path.display()))
        })?;
        if spec.name != name || spec.nbytes() != bytes.len() {
            return Err(Error::internal(format!(
                "{}: expected tensor {:?} ({} bytes) next, got {name:?} ({} bytes)",
                self.path.display(),
                spec.name,
                spec.nbytes(),
                bytes.len()
            )));
        }
        self.out.write_all(bytes).at(self.path.display())?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.next != self.specs.len() {
            return Err(Error::internal(format!(
                "{}: only {} of {} tensors were written",
                self.path.display(),
                self.next,
                self.specs.len()
            )));
        }
        self.out.flush().at(self.path.display())?;
        let f = self.out.into_inner().map_err(|e| Error::io(self.path.display(), e.into_error()))?;
        f.sync_all().at(self.path.display())
    }
}

/// Writer that splits tensors over shards of at most `max_shard_bytes` (a tensor is never split).
/// With one shard the file is `{base}.safetensors`; otherwise `{base}-0000i-of-0000n.safetensors`
/// plus `{base}.safetensors.index.json`.
pub struct ShardedWriter {
    dir: PathBuf,
    base: String,
    shards: Vec<(String, Vec<TensorSpec>)>,
    current: Option<SafetensorsWriter>,
    shard_idx: usize,
    in_shard: usize,
    metadata: Vec<(String, String)>,
}

impl ShardedWriter {
    pub fn create(
        dir: &Path,
        base: &str,
        specs: Vec<TensorSpec>,
        max_shard_bytes: usize,
        metadata: &[(&str, &str)],
    ) -> Result<Self> {
        check_names(&dir.join(base).display().to_string(), &specs)?;
        let mut groups: Vec<Vec<TensorSpec>> = vec![Vec::new()];
        let mut size = 0usize;
        for s in specs {
            let n = s.nbytes();
            if size > 0 && size + n > max_shard_bytes {
                groups.push(Vec::new());
                size = 0;
            }
            size += n;
            groups.last_mut().expect("at least one group").push(s);
        }
        let total = groups.len();
        let shards: Vec<(String, Vec<TensorSpec>)> = groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let name = if total == 1 {
                    format!("{base}.safetensors")
                } else {
                    format!("{base}-{:05}-of-{:05}.safetensors", i + 1, total)
                };
                (name, g)
            })
            .collect();
        let total_size: usize = shards.iter().flat_map(|(_, g)| g.iter()).map(|s| s.nbytes()).sum();
        if total > 1 {
            let mut wm = Map::new();
            for (file, g) in &shards {
                for s in g {
                    wm.insert(s.name.clone(), json!(file));
                }
            }
            let idx = json!({"metadata": {"total_size": total_size}, "weight_map": wm});
            let p = dir.join(format!("{base}.safetensors.index.json"));
            let text = serde_json::to_string_pretty(&idx).map_err(|e| Error::internal(e.to_string()))?;
            std::fs::write(&p, text + "\n").at(p.display())?;
        }
        let metadata = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut w = ShardedWriter { dir: dir.to_path_buf(), base: base.into(), shards, current: None, shard_idx: 0, in_shard: 0, metadata };
        w.open_shard()?;
        Ok(w)
    }

    fn open_shard(&mut self) -> Result<()> {
        let (file, specs) = &self.shards[self.shard_idx];
        let md: Vec<(&str, &str)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.current = Some(SafetensorsWriter::create(&self.dir.join(file), specs.clone(), &md)?);
        self.in_shard = 0;
        Ok(())
    }

    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.in_shard == self.shards[self.shard_idx].1.len() {
            if let Some(w) = self.current.take() {
                w.finish()?;
            }
            self.shard_idx += 1;
            if self.shard_idx >= self.shards.len() {
                return Err(Error::internal(format!("{}: tensor {name:?} written past the last shard", self.base)));
            }
            self.open_shard()?;
        }
        self.current.as_mut().expect("open shard").write(name, bytes)?;
        self.in_shard += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            w.finish()?;
        }
        if self.shard_idx + 1 != self.shards.len() {
            return Err(Error::internal(format!("{}: not every shard was written", self.base)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::SafetensorsRepo;

    #[test]
    fn written_files_read_back_single_and_sharded() {
        let dir = std::env::temp_dir().join(format!("awqc-stw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (sub, max) in [("one", usize::MAX), ("many", 40)] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            let specs = vec![
                TensorSpec::new("a", "F32", &[2, 3]),
                TensorSpec::new("b", "I32", &[4]),
                TensorSpec::new("c", "F16", &[5]),
            ];
            let mut w = ShardedWriter::create(&d, "model", specs, max, &[("format", "pt")]).unwrap();
            let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
            w.write("a", bytemuck::cast_slice(&a)).unwrap();
            w.write("b", bytemuck::cast_slice(&[1i32, -2, 3, -4])).unwrap();
            let c = crate::tensor::DType::F16.encode(&[1.0, 2.0, 3.0, 4.0, 5.0]);
            w.write("c", &c).unwrap();
            w.finish().unwrap();
            let r = SafetensorsRepo::open_dir(&d).unwrap();
            assert_eq!(r.get_f32("a").unwrap().data, a);
            assert_eq!(r.get_i32("b", &[4]).unwrap(), vec![1, -2, 3, -4]);
            assert_eq!(r.get_f32("c").unwrap().data, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
            assert_eq!(d.join("model.safetensors.index.json").exists(), sub == "many");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
