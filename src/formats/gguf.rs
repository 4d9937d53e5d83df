//! GGUF v2/v3 reader and the ggml block dequantizers.
//!
//! File layout (all little-endian):
//! ```text
//! "GGUF" u32 version  u64 n_tensors  u64 n_kv
//! n_kv x      { string key, u32 value_type, value }            string = u64 len + UTF-8 bytes
//! n_tensors x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//! padding to `general.alignment` (default 32)
//! data section: tensor `i` at data_start + offset_i
//! ```
//! Dims are listed innermost first: a `[out, in]` nn.Linear weight is stored with dims `[in, out]`.
//! Every count, length and offset is checked against the file size before it is used or allocated.
//!
//! The dequantizers reproduce ggml's `dequantize_row_*` (ggml-quants.c) operation for operation in
//! f32, so the output is bit-identical to llama.cpp's reference CPU path.

use crate::error::{Error, IoContext, Result};
use crate::tensor::HostTensor;
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Nested metadata arrays deeper than this are refused (real files use depth 1).
const MAX_ARRAY_DEPTH: usize = 8;
/// Elements of the K-quant super-block.
const QK_K: usize = 256;

/// Tensor element encodings. Only the types awqc can dequantize are variants; a file holding any
/// other type is refused when opened, naming the tensor and the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)] // ggml's own spelling
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    /// The type for a ggml type id, or `Err(name)` naming an id awqc cannot dequantize.
    pub fn from_id(id: u32) -> std::result::Result<GgmlType, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            other => {
                let name = match other {
                    4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    20 => "IQ4_NL",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    _ => "unknown",
                };
                return Err(format!("{name} (type id {other})"));
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// `(elements, bytes)` of one block. Rows (dim 0) are whole blocks.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 2 + 16),
            GgmlType::Q4_1 => (32, 2 + 2 + 16),
            GgmlType::Q5_0 => (32, 2 + 4 + 16),
            GgmlType::Q5_1 => (32, 2 + 2 + 4 + 16),
            GgmlType::Q8_0 => (32, 2 + 32),
            GgmlType::Q4_K => (QK_K, 2 + 2 + 12 + QK_K / 2),
            GgmlType::Q5_K => (QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
            GgmlType::Q6_K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        }
    }

    /// Bytes taken by `numel` elements, or `None` if `numel` is not whole blocks or overflows.
    pub fn nbytes(self, numel: u64) -> Option<u64> {
        let (be, bb) = self.block();
        if !numel.is_multiple_of(be as u64) {
            return None;
        }
        (numel / be as u64).checked_mul(bb as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer value, signed.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// A float, or an integer read as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// One tensor of the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order, innermost first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte range in the file (checked at open; private so it stays valid).
    start: usize,
    nbytes: usize,
}

impl TensorInfo {
    /// Row-major shape (the reversed GGUF dims): `[out, in]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize when the file was opened.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
    /// Absolute offset of the tensor data in the file.
    pub fn file_offset(&self) -> usize {
        self.start
    }
    /// Size of the encoded tensor data.
    pub fn nbytes(&self) -> usize {
        self.nbytes
    }
}

/// An open, validated GGUF file. Tensor data stays in the memory map until asked for.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
}

impl GgufFile {
    /// Open and validate `path`: header, metadata, tensor table and that every tensor lies inside
    /// the file. No tensor data is read.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let f = std::fs::File::open(path).at(path.display())?;
        let len = f.metadata().at(path.display())?.len();
        let src = path.display().to_string();
        if len < 24 {
            return Err(Error::input(&src, format!("truncated GGUF file: {len} bytes, the header alone is 24")));
        }
        // SAFETY: read-only mapping of an input awqc never writes; a file truncated by another
        // process while mapped is outside what any reader can defend against.
        let mmap = unsafe { Mmap::map(&f) }.at(path.display())?;
        Self::from_mmap(path, mmap)
    }

    /// Parse a GGUF image held in memory (fuzzing, tests); `name` stands for the file name in
    /// errors. The bytes are copied into an anonymous mapping, so the result is the same type.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<GgufFile> {
        let len = bytes.len();
        if len < 24 {
            return Err(Error::input(name, format!("truncated GGUF file: {len} bytes, the header alone is 24")));
        }
        let mut anon = memmap2::MmapMut::map_anon(len).map_err(|e| Error::io(name, e))?;
        anon.copy_from_slice(bytes);
        let mmap = anon.make_read_only().map_err(|e| Error::io(name, e))?;
        Self::from_mmap(Path::new(name), mmap)
    }

    fn from_mmap(path: &Path, mmap: Mmap) -> Result<GgufFile> {
        let src = path.display().to_string();
        let parsed = parse(&mmap, &src)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            meta_index: parsed.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect(),
            metadata: parsed.metadata,
            tensor_index: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The file name for error messages.
    pub fn src(&self) -> String {
        self.path.display().to_string()
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn wrong_type(&self, key: &str, want: &str, got: &MetaValue) -> Error {
        Error::input(self.src(), format!("metadata key {key:?} must be {want}, got {}", got.type_name()))
    }
    /// The error for a required key that is absent.
    pub fn missing(&self, key: &str) -> Error {
        Error::input(self.src(), format!("missing required metadata key {key:?}"))
    }

    /// A string value; a value of another type is an error.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong_type(key, "a string", v)),
        }
    }
    /// A non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
        }
    }
    /// A non-negative integer that fits in usize.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get_u64(key)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| Error::input(self.src(), format!("metadata key {key:?} = {v} is too large"))),
        }
    }
    /// A number (float or integer).
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong_type(key, "a bool", v)),
        }
    }
    pub fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.wrong_type(key, "an array", v)),
        }
    }
    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn req_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key)?.ok_or_else(|| self.missing(key))
    }
    pub fn req_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.get_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The encoded bytes of a tensor of this file (its range was checked at open; a `TensorInfo`
    /// of another, larger file gets an empty slice, which no dequantizer accepts).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        self.mmap.get(t.start..t.start.saturating_add(t.nbytes)).unwrap_or(&[])
    }
    /// A tensor dequantized to f32, row-major with the reversed GGUF dims as shape.
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let t = self.tensor(name).ok_or_else(|| Error::input(self.src(), format!("tensor {name:?} not found")))?;
        let data = dequantize(t.ty, self.tensor_bytes(t), t.numel())
            .map_err(|e| e.context(format!("{}: tensor {name:?}", self.src())))?;
        HostTensor::new(t.shape(), data)
    }
}

struct Parsed {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
}

/// A bounds-checked little-endian cursor over the file. Every read names what it was reading,
/// so a truncated file says where it ends.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    src: &'a str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::input(self.src, msg)
    }
    fn take(&mut self, n: usize, what: &dyn std::fmt::Display) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated file: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &dyn std::fmt::Display) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn std::fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn std::fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A length or count that must be backed by at least `min_elem` bytes per item.
    fn count(&mut self, what: &dyn std::fmt::Display, min_elem: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_elem.max(1)) as u64;
        if n > max {
            return Err(self.err(format!(
                "{what} = {n} is impossible: only {} bytes remain in the file (truncated or corrupt)",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &dyn std::fmt::Display) -> Result<String> {
        let n = self.count(&LengthOf(what), 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        let w = &ValueOf(key);
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(w)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(w)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(w)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(w)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(w)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(w)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(w)?)),
            7 => {
                let [b] = self.array(w)?;
                match b {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    _ => return Err(self.err(format!("metadata key {key:?}: invalid bool byte {b}"))),
                }
            }
            8 => MetaValue::Str(self.string(w)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(&format_args!("array type of metadata key {key:?}"))?;
                let min = min_value_size(elem)
                    .ok_or_else(|| self.err(format!("metadata key {key:?}: unknown array element type {elem}")))?;
                let n = self.count(&format_args!("array length of metadata key {key:?}"), min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(w)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(w)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(w)?)),
            other => return Err(self.err(format!("metadata key {key:?}: unknown value type {other}"))),
        })
    }
}

/// Lazily formatted names for error messages (most reads succeed; don't format for them).
struct LengthOf<'a>(&'a dyn std::fmt::Display);
impl std::fmt::Display for LengthOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "length of {}", self.0)
    }
}
struct ValueOf<'a>(&'a str);
impl std::fmt::Display for ValueOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "value of metadata key {:?}", self.0)
    }
}

/// Smallest encoding of a value of GGUF value type `ty` (bounds array lengths before allocating).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

fn parse(buf: &[u8], src: &str) -> Result<Parsed> {
    let mut r = Reader { buf, pos: 0, src };
    let magic = r.array::<4>(&"magic")?;
    if &magic != MAGIC {
        return Err(r.err(format!("not a GGUF file (magic {:?}, expected \"GGUF\")", String::from_utf8_lossy(&magic))));
    }
    let version = r.u32(&"version")?;
    match version {
        2 | 3 => {}
        1 => return Err(r.err("GGUF version 1 is not supported (only versions 2 and 3)")),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => return Err(r.err("big-endian GGUF files are not supported")),
        v => return Err(r.err(format!("unsupported GGUF version {v} (only versions 2 and 3)"))),
    }
    // Minimal tensor info: name length (8), n_dims (4), one dim (8), type (4), offset (8).
    let n_tensors = r.count(&"tensor count", 32)?;
    // Minimal key/value: key length (8), value type (4), a one-byte value.
    let n_kv = r.count(&"metadata count", 13)?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string(&format_args!("key of metadata entry {i}"))?;
        let ty = r.u32(&format_args!("value type of metadata key {key:?}"))?;
        let v = r.value(ty, &key, 0)?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(r.err(format!("metadata key {key:?} appears twice")));
        }
        metadata.push((key, v));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(r.err(format!(
                    "general.alignment = {} is not a power of two up to 2^20",
                    v.as_i64().map(|a| a.to_string()).unwrap_or_else(|| format!("{v:?}"))
                )))
            }
        },
    };

    struct Raw {
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
        offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors);
    let mut names: HashSet<String> = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format_args!("name of tensor {i}"))?;
        let n_dims = r.u32(&format_args!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!("tensor {name:?} has {n_dims} dimensions (must be 1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format_args!("dimensions of tensor {name:?}"))?);
        }
        let ty_id = r.u32(&format_args!("type of tensor {name:?}"))?;
        let offset = r.u64(&format_args!("offset of tensor {name:?}"))?;
        let ty = GgmlType::from_id(ty_id).map_err(|t| {
            r.err(format!(
                "tensor {name:?} has unsupported ggml type {t}; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
                 Q8_0, Q4_K, Q5_K, Q6_K"
            ))
        })?;
        if !names.insert(name.clone()) {
            return Err(r.err(format!("tensor name {name:?} appears twice")));
        }
        raw.push(Raw { name, dims, ty, offset });
    }

    let file_len = buf.len() as u64;
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let name = &t.name;
        if t.dims.contains(&0) {
            return Err(r.err(format!("tensor {name:?} has a zero dimension {:?}", t.dims)));
        }
        let numel = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| r.err(format!("tensor {name:?}: element count of dims {:?} overflows", t.dims)))?;
        let (be, _) = t.ty.block();
        if t.dims[0] % be as u64 != 0 {
            return Err(r.err(format!(
                "tensor {name:?}: row length {} is not a multiple of the {} block size {be}",
                t.dims[0], t.ty
            )));
        }
        let nbytes = t.ty.nbytes(numel).ok_or_else(|| r.err(format!("tensor {name:?}: byte size overflows")))?;
        if t.offset % alignment != 0 {
            return Err(r.err(format!("tensor {name:?}: data offset {} is not {alignment}-byte aligned", t.offset)));
        }
        let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(nbytes));
        match end {
            Some(e) if e <= file_len => {}
            _ => {
                return Err(r.err(format!(
                    "tensor {name:?}: data (offset {}, {nbytes} bytes) extends past the end of the file ({file_len} \
                     bytes; data section starts at {data_start})",
                    t.offset
                )))
            }
        }
        // Both fit: they are bounded by the file length, which is a mapped usize.
        tensors.push(TensorInfo {
            name: t.name,
            dims: t.dims,
            ty: t.ty,
            start: (data_start + t.offset) as usize,
            nbytes: nbytes as usize,
        });
    }
    Ok(Parsed { version, metadata, tensors, alignment })
}

// ---------------------------------------------------------------------------------------------
// Dequantization. Each `deq_*` decodes a run of whole blocks: `x` holds `y.len() / block_elems`
// blocks. Formulas are those of ggml-quants.c `dequantize_row_*`, in the same f32 operation order.

/// Decode `numel` elements of type `ty` from `bytes` (which must be exactly their size).
/// Runs in parallel over chunks of blocks; every output element depends on its block only, so the
/// result does not depend on the thread count.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    let (be, bb) = ty.block();
    let want = ty.nbytes(numel as u64);
    if want != Some(bytes.len() as u64) {
        return Err(Error::input(
            format!("{ty} data"),
            format!(
                "{} bytes do not hold {numel} elements (need whole {be}-element blocks of {bb} bytes)",
                bytes.len()
            ),
        ));
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => deq_f32,
        GgmlType::F16 => deq_f16,
        GgmlType::BF16 => deq_bf16,
        GgmlType::Q4_0 => deq_q4_0,
        GgmlType::Q4_1 => deq_q4_1,
        GgmlType::Q5_0 => deq_q5_0,
        GgmlType::Q5_1 => deq_q5_1,
        GgmlType::Q8_0 => deq_q8_0,
        GgmlType::Q4_K => deq_q4_k,
        GgmlType::Q5_K => deq_q5_k,
        GgmlType::Q6_K => deq_q6_k,
    };
    let mut out = vec![0f32; numel];
    // About 64K elements per task: big enough to amortize scheduling, small enough to balance.
    let blocks_per_task = (65536 / be).max(1);
    out.par_chunks_mut(be * blocks_per_task).zip(bytes.par_chunks(bb * blocks_per_task)).for_each(|(y, x)| f(x, y));
    Ok(out)
}

#[inline]
fn half(x: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([x[at], x[at + 1]])).to_f32()
}

fn deq_f32(x: &[u8], y: &mut [f32]) {
    for (o, b) in y.iter_mut().zip(x.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn deq_f16(x: &[u8], y: &mut [f32]) {
    for (o, b) in y.iter_mut().zip(x.chunks_exact(2)) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

fn deq_bf16(x: &[u8], y: &mut [f32]) {
    for (o, b) in y.iter_mut().zip(x.chunks_exact(2)) {
        *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// Q4_0: `{f16 d; u8 qs[16]}`; element j (low nibble of qs[j]) and j+16 (high nibble); `(q - 8) * d`.
fn deq_q4_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = half(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: `{f16 d; f16 m; u8 qs[16]}`; `q * d + m`.
fn deq_q4_1(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(20).zip(y.chunks_exact_mut(32)) {
        let d = half(b, 0);
        let m = half(b, 2);
        let qs = &b[4..20];
        for j in 0..16 {
            y[j] = (qs[j] & 0x0F) as f32 * d + m;
            y[j + 16] = (qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Q5_0: `{f16 d; u32 qh; u8 qs[16]}`; bit j of qh is the 5th bit of element j; `(q - 16) * d`.
fn deq_q5_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(22).zip(y.chunks_exact_mut(32)) {
        let d = half(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (((qs[j] & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + 16] = (((qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// Q5_1: `{f16 d; f16 m; u32 qh; u8 qs[16]}`; `q * d + m`.
fn deq_q5_1(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(24).zip(y.chunks_exact_mut(32)) {
        let d = half(b, 0);
        let m = half(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((qs[j] & 0x0F) | h0) as f32 * d + m;
            y[j + 16] = ((qs[j] >> 4) | h1) as f32 * d + m;
        }
    }
}

/// Q8_0: `{f16 d; i8 qs[32]}`; `q * d`.
fn deq_q8_0(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = half(b, 0);
        for j in 0..32 {
            y[j] = (b[2 + j] as i8) as f32 * d;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of Q4_K/Q5_K.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K: `{f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}`, 8 sub-blocks of 32. Each 64 elements
/// use 32 bytes of qs: low nibbles for the first 32 (sub-block 2i), high nibbles for the next 32.
fn deq_q4_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(144).zip(y.chunks_exact_mut(QK_K)) {
        let d = half(b, 0);
        let min = half(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for (i, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
            let (sc, m) = scale_min_k4(2 * i, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * i + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q5_K: `{f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}`: Q4_K plus a 5th bit per
/// element, bit `2i` (first 32) and `2i+1` (next 32) of `qh[l]` for the i-th group of 64.
fn deq_q5_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(176).zip(y.chunks_exact_mut(QK_K)) {
        let d = half(b, 0);
        let min = half(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for (i, (y, ql)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
            let (sc, m) = scale_min_k4(2 * i, scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * i + 1, scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// Q6_K: `{u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}`, 16 sub-blocks of 16 with i8 scales.
/// Per half of 128 elements: ql[0..64], qh[0..32], scales[0..8]; element `l + 32k` (k = 0..4)
/// takes its low 4 bits from ql[l] / ql[l+32] (low, low, high, high nibble) and its top 2 bits
/// from qh[l] bits 2k..2k+1; value `d * scale * (q - 32)`.
fn deq_q6_k(x: &[u8], y: &mut [f32]) {
    for (b, y) in x.chunks_exact(210).zip(y.chunks_exact_mut(QK_K)) {
        let d = half(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let s = |k: usize| (sc[is + k] as i8) as f32;
                y[l] = d * s(0) * q1 as f32;
                y[l + 32] = d * s(2) * q2 as f32;
                y[l + 64] = d * s(4) * q3 as f32;
                y[l + 96] = d * s(6) * q4 as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf.py `LlamaModel.permute`).
///
/// The converter turns the HF half-split RoPE layout into ggml's interleaved ("normal") layout:
/// `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2).reshape(n_head*D, in)`, i.e. within each head
/// HF row `s*D/2 + i` (s = 0, 1) becomes GGUF row `2*i + s`. This puts it back. Pass `n_head`
/// for q and `n_kv_head` for k. Works on weights `[rows, in]` and biases `[rows]`.
pub fn unpermute_qk(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    let rows = w.shape.first().copied().unwrap_or(0);
    if n_head == 0 || rows % (2 * n_head) != 0 || rows == 0 {
        return Err(Error::internal(format!(
            "unpermute_qk: {rows} rows cannot be split into {n_head} heads of even size"
        )));
    }
    let cols = w.data.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * 2 * half + s * half + i;
                let gg = h * 2 * half + 2 * i + s;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&w.data[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    HostTensor::new(w.shape.clone(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_match_ggml() {
        // sizeof(block_*) in ggml-common.h.
        let want = [
            (GgmlType::Q4_0, 18),
            (GgmlType::Q4_1, 20),
            (GgmlType::Q5_0, 22),
            (GgmlType::Q5_1, 24),
            (GgmlType::Q8_0, 34),
            (GgmlType::Q4_K, 144),
            (GgmlType::Q5_K, 176),
            (GgmlType::Q6_K, 210),
        ];
        for (t, b) in want {
            assert_eq!(t.block().1, b, "{t}");
            assert_eq!(GgmlType::from_id(t.id()), Ok(t));
        }
        assert!(GgmlType::from_id(10).unwrap_err().contains("Q2_K"));
    }

    #[test]
    fn dequantize_rejects_wrong_sizes() {
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 31).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], 32).is_err());
        assert_eq!(dequantize(GgmlType::Q8_0, &[0u8; 68], 64).unwrap(), vec![0.0; 64]);
    }

    #[test]
    fn scale_min_k4_unpacks_six_bit_fields() {
        // Sub-blocks 0..4: low 6 bits of bytes 0..4 (scale) and 4..8 (min). Sub-blocks 4..8: low
        // nibble / high nibble of bytes 8..12, plus the top 2 bits of bytes 0..4 / 4..8.
        let mut q = [0u8; 12];
        q[1] = 0b11_000101; // scale 1 = 5; top bits -> scale 5 high bits = 3
        q[5] = 0b10_001001; // min 1 = 9; top bits -> min 5 high bits = 2
        q[9] = 0x7A; // scale 5 low nibble 0xA, min 5 low nibble 7
        assert_eq!(scale_min_k4(1, &q), (5, 9));
        assert_eq!(scale_min_k4(5, &q), (0xA | (3 << 4), 7 | (2 << 4)));
    }

    #[test]
    fn unpermute_rejects_odd_head_size() {
        let w = HostTensor::zeros(&[6, 2]);
        assert!(unpermute_qk(&w, 2).is_err());
        assert!(unpermute_qk(&w, 3).is_ok());
    }
}
