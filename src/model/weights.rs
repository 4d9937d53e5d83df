//! Reading safetensors checkpoints: single file or sharded (`model.safetensors.index.json`),
//! memory-mapped, with dtype conversion to f32 on access. Only the tensor asked for is touched,
//! so a model larger than RAM can be read one decoder layer at a time.

use crate::error::{Error, IoContext, Result};
use crate::tensor::{DType, HostTensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Resolve `--model` (and `--revision`): a local path, or a hub id `org/name[@revision]`, which
/// resolves to its snapshot in the Hugging Face cache, downloaded first when it is not complete
/// there (see [`crate::model::hub`]). The revision defaults to `main`.
pub fn resolve_model_path(arg: &str, revision: Option<&str>) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.exists() {
        if revision.is_some() {
            return Err(Error::usage(format!("--revision applies to a hub id (org/name), and {arg} is a local path")));
        }
        return Ok(p.to_path_buf());
    }
    if let Some(id) = crate::model::hub::parse_id(arg) {
        let rev = match (id.revision, revision) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::usage(format!("--model {arg} names revision {a:?} and --revision says {b:?}")))
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => "main",
        };
        return crate::model::hub::snapshot(arg, id.repo, rev);
    }
    Err(Error::input(arg, "no such file or directory (nor a hub id org/name[@revision])"))
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    file: usize,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// A set of memory-mapped safetensors files addressed by tensor name.
pub struct SafetensorsRepo {
    files: Vec<(PathBuf, Mmap)>,
    index: BTreeMap<String, TensorMeta>,
}

impl SafetensorsRepo {
    /// Open the weights of a model directory: `model.safetensors.index.json` if present, else
    /// `model.safetensors`, else every `*.safetensors` file in the directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let bytes = std::fs::read(&index).at(index.display())?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::input(index.display(), format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::input(index.display(), "missing object \"weight_map\""))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let f = file.as_str().ok_or_else(|| {
                    Error::input(index.display(), format!("weight_map entry {tensor:?} is not a file name"))
                })?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(Error::input(index.display(), format!("weight_map file {f:?} is not a plain file name")));
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            if let Some(gone) = names.iter().find(|n| !dir.join(n).is_file()) {
                return Err(Error::input(
                    index.display(),
                    format!("weight_map names shard {gone:?}, which is not in {}", dir.display()),
                ));
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let v = safetensors_files_in(dir)?;
            if v.is_empty() {
                return Err(Error::input(dir.display(), "no *.safetensors weights found"));
            }
            v
        };
        Self::open_files(&files)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).at(path.display())?;
            // SAFETY: the mapping is read-only; awqc never writes to its inputs. A file truncated by
            // another process while mapped is outside what any reader can defend against.
            let mmap = unsafe { Mmap::map(&f) }.at(path.display())?;
            let (n, meta): (usize, Metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                Error::input(path.display(), format!("invalid safetensors file: {}", explain_invalid(&mmap, &e)))
            })?;
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let m = TensorMeta {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    file: fi,
                    start: base + s,
                    end: base + e,
                };
                if index.insert(name.clone(), m).is_some() {
                    return Err(Error::input(path.display(), format!("tensor {name:?} appears in more than one file")));
                }
            }
            files.push((path.clone(), mmap));
        }
        Ok(SafetensorsRepo { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.index.get(name)
    }
    /// Path of the file holding `name` (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|m| self.files[m.file].0.as_path())
    }

    fn missing(&self, name: &str) -> Error {
        let file = self.files.first().map(|f| f.0.display().to_string()).unwrap_or_default();
        Error::input(file, format!("tensor {name:?} not found"))
    }

    /// Raw little-endian bytes and metadata of a tensor of any dtype.
    pub fn raw(&self, name: &str) -> Result<(&TensorMeta, &[u8])> {
        let m = self.index.get(name).ok_or_else(|| self.missing(name))?;
        Ok((m, &self.files[m.file].1[m.start..m.end]))
    }

    /// A floating-point tensor converted to f32.
    pub fn get_f32(&self, name: &str) -> Result<HostTensor> {
        let (m, bytes) = self.raw(name)?;
        let dt = match m.dtype {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(Error::input(
                    self.files[m.file].0.display(),
                    format!("tensor {name:?} has dtype {other:?}; expected F32, F16 or BF16"),
                ))
            }
        };
        let data = dt.decode(bytes);
        self.release(m);
        // A NaN or inf weight would only surface much later, as a NaN perplexity or a failed
        // search: refuse it here, naming the tensor.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(
                self.files[m.file].0.display(),
                format!("tensor {name:?} has a non-finite value {} at flat index {i}", data[i]),
            ));
        }
        HostTensor::new(m.shape.clone(), data)
    }

    /// Drop a tensor's pages from this process's mapping once its data has been copied out.
    /// File-backed pages count in RSS for as long as they stay mapped, so without this, reading
    /// a model one decoder layer at a time would still grow RSS to the whole file (past RAM for
    /// a 13B model). The pages stay in the kernel's page cache and a later read maps them again.
    fn release(&self, m: &TensorMeta) {
        // Whole pages strictly inside the tensor's bytes (the mapping starts page-aligned at file
        // offset 0); a page shared with a neighbouring tensor is left alone. 4 KiB pages: on a
        // machine with larger pages the advice is refused (EINVAL) and nothing is released.
        const PAGE: usize = 4096;
        let (start, end) = (m.start.div_ceil(PAGE) * PAGE, m.end / PAGE * PAGE);
        if end > start {
            // SAFETY: the mapping is a read-only shared file mapping (`Mmap::map`): after
            // MADV_DONTNEED its pages read back the file's bytes, so a live borrow of this range
            // cannot observe different data. Errors only mean the pages stay resident.
            let _ = unsafe {
                self.files[m.file].1.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// Like [`get_f32`](Self::get_f32), checking the shape.
    pub fn get_f32_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get_f32(name)?;
        if t.shape != shape {
            let file = self.file_of(name).map(|p| p.display().to_string()).unwrap_or_default();
            return Err(Error::input(
                file,
                format!("tensor {name:?} has shape {:?}, expected {:?}", t.shape, shape),
            ));
        }
        Ok(t)
    }

    /// An `I32` tensor (AWQ qweight / qzeros).
    pub fn get_i32(&self, name: &str, shape: &[usize]) -> Result<Vec<i32>> {
        let (m, bytes) = self.raw(name)?;
        let file = self.files[m.file].0.display().to_string();
        if m.dtype != StDtype::I32 {
            return Err(Error::input(file, format!("tensor {name:?} has dtype {:?}; expected I32", m.dtype)));
        }
        if m.shape != shape {
            return Err(Error::input(file, format!("tensor {name:?} has shape {:?}, expected {:?}", m.shape, shape)));
        }
        Ok(bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The floating dtype most tensors are stored in (for reporting).
    pub fn main_dtype(&self) -> Option<StDtype> {
        let mut counts: BTreeMap<String, (usize, StDtype)> = BTreeMap::new();
        for m in self.index.values() {
            let e = counts.entry(format!("{:?}", m.dtype)).or_insert((0, m.dtype));
            e.0 += m.end - m.start;
        }
        counts.values().max_by_key(|(n, _)| *n).map(|(_, d)| *d)
    }
}

/// What exactly is wrong with a file the safetensors crate refused (its messages, such as "invalid
/// shape, data type, or offset for tensor", do not name the tensor). Falls back to its message.
fn explain_invalid(buf: &[u8], err: &safetensors::SafeTensorError) -> String {
    use serde_json::Value;
    let len = buf.len();
    let Some(head) = buf.get(..8) else {
        return format!("{len} bytes is too short (a safetensors file starts with an 8-byte header length)");
    };
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(head);
    let n = u64::from_le_bytes(n8);
    let Some(header) = usize::try_from(n).ok().and_then(|n| buf.get(8..8usize.checked_add(n)?)) else {
        return format!("header length {n} runs past the end of the file ({len} bytes)");
    };
    let data_len = (len - 8 - header.len()) as u128;
    let v: Value = match serde_json::from_slice(header) {
        Ok(v) => v,
        Err(e) => return format!("the header is not valid JSON: {e}"),
    };
    let Some(obj) = v.as_object() else { return "the header is not a JSON object".into() };
    let mut spans: Vec<(u128, u128, &str)> = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype").and_then(Value::as_str);
        let shape: Option<Vec<u128>> =
            t.get("shape").and_then(Value::as_array).and_then(|a| a.iter().map(|d| d.as_u64().map(u128::from)).collect());
        let offs: Option<Vec<u128>> = t
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(u128::from)).collect())
            .filter(|o: &Vec<u128>| o.len() == 2);
        let (Some(dtype), Some(shape), Some(offs)) = (dtype, shape, offs) else {
            return format!("tensor {name:?}: entry needs \"dtype\", \"shape\" and two \"data_offsets\"");
        };
        let Ok(dt) = serde_json::from_value::<StDtype>(Value::String(dtype.to_string())) else {
            return format!("tensor {name:?}: unknown dtype {dtype:?}");
        };
        let (s, e) = (offs[0], offs[1]);
        if e < s {
            return format!("tensor {name:?}: data_offsets [{s}, {e}] end before they start");
        }
        let bits = shape.iter().try_fold(dt.bitsize() as u128, |a, &d| a.checked_mul(d));
        match bits {
            Some(b) if b % 8 == 0 && b / 8 == e - s => {}
            _ => {
                return format!(
                    "tensor {name:?}: shape {shape:?} of {dtype} does not fill data_offsets [{s}, {e}] ({} bytes)",
                    e - s
                )
            }
        }
        if e > data_len {
            return format!("tensor {name:?}: data_offsets [{s}, {e}] run past the {data_len} data bytes of the file");
        }
        spans.push((s, e, name));
    }
    spans.sort();
    let mut at = 0u128;
    for (s, e, name) in spans {
        if s != at {
            return format!("tensor {name:?}: data starts at {s}, expected {at} (tensors must be packed back to back)");
        }
        at = e;
    }
    if at != data_len {
        return format!("the tensors cover {at} data bytes but the file holds {data_len}");
    }
    err.to_string()
}

/// Every `*.safetensors` file directly in `dir`, sorted by name.
pub fn safetensors_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir.display())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "safetensors").unwrap_or(false))
        .collect();
    v.sort();
    Ok(v)
}
