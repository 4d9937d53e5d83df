//! `HostTensor`: a plain row-major f32 tensor in CPU memory.
//!
//! This is the currency between the file formats, the quantizer and the engine loader. Weights
//! follow the PyTorch `nn.Linear` convention: shape `[out_features, in_features]` = `[N, K]`.
//! The engine moves them into burn tensors; everything that must be bit-exact (quantizer, packers,
//! dequantizers) works on these slices directly.

use crate::error::{Error, Result};
use half::{bf16, f16};

#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTensor{:?}", self.shape)
    }
}

impl HostTensor {
    /// Build a tensor, checking that `data` has exactly `prod(shape)` elements.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = numel(&shape)?;
        if n != data.len() {
            return Err(Error::internal(format!(
                "tensor shape {:?} needs {} values, got {}",
                shape,
                n,
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }
    pub fn zeros(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        HostTensor { shape: shape.to_vec(), data: vec![0.0; n] }
    }
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> f32) -> Self {
        let n = shape.iter().product();
        HostTensor { shape: shape.to_vec(), data: (0..n).map(f).collect() }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// `(rows, cols)` of a 2-D tensor; a 1-D tensor is one row.
    pub fn dims2(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            s => (s[..s.len() - 1].iter().product(), *s.last().unwrap_or(&1)),
        }
    }
    pub fn row(&self, i: usize) -> &[f32] {
        let (_, c) = self.dims2();
        &self.data[i * c..(i + 1) * c]
    }
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let (_, c) = self.dims2();
        &mut self.data[i * c..(i + 1) * c]
    }
    /// Transpose a 2-D tensor: `[r, c] -> [c, r]`.
    pub fn transpose2(&self) -> HostTensor {
        use rayon::prelude::*;
        let (r, c) = self.dims2();
        let mut out = vec![0.0f32; r * c];
        if r == 0 || c == 0 {
            return HostTensor { shape: vec![c, r], data: out };
        }
        // Blocked to stay cache-friendly on large weights; each task writes its own band of
        // B output rows (input columns), so the threads never share an output cache line.
        const B: usize = 64;
        out.par_chunks_mut(B * r).enumerate().for_each(|(jb, band)| {
            let (j0, jn) = (jb * B, band.len() / r);
            for i0 in (0..r).step_by(B) {
                for i in i0..(i0 + B).min(r) {
                    for (jj, &v) in self.data[i * c + j0..i * c + j0 + jn].iter().enumerate() {
                        band[jj * r + i] = v;
                    }
                }
            }
        });
        HostTensor { shape: vec![c, r], data: out }
    }
    /// Stack 2-D tensors with equal column counts along rows: `[r1,c] ++ [r2,c] -> [r1+r2, c]`.
    pub fn concat_rows(parts: &[&HostTensor]) -> Result<HostTensor> {
        let c = parts.first().map(|p| p.dims2().1).unwrap_or(0);
        let mut data = Vec::new();
        let mut rows = 0;
        for p in parts {
            let (r, pc) = p.dims2();
            if pc != c {
                return Err(Error::internal(format!("concat_rows: {pc} columns vs {c}")));
            }
            rows += r;
            data.extend_from_slice(&p.data);
        }
        Ok(HostTensor { shape: vec![rows, c], data })
    }
    /// Rows `[start, end)` of a 2-D tensor.
    pub fn slice_rows(&self, start: usize, end: usize) -> HostTensor {
        let (_, c) = self.dims2();
        HostTensor { shape: vec![end - start, c], data: self.data[start * c..end * c].to_vec() }
    }
    pub fn has_non_finite(&self) -> bool {
        self.data.iter().any(|v| !v.is_finite())
    }
}

/// Number of elements of a shape, refusing overflow (shapes can come from untrusted headers).
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::internal(format!("shape {shape:?} overflows usize")))
}

/// Storage dtypes awqc reads and writes for floating-point tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    /// The safetensors / torch spelling: `F32`, `F16`, `BF16`.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
    /// The `torch_dtype` spelling used in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
    /// Encode f32 values as little-endian bytes of this dtype (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
    /// Decode little-endian bytes of this dtype into f32 values. `bytes.len()` must be a
    /// multiple of the element size (callers check sizes against headers first).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }
}

/// Largest finite f16 value.
pub const F16_MAX: f32 = 65504.0;

/// `DType::F16.encode` for a tensor the output format stores in fp16 (AutoAWQ and TurboMind do
/// for norms, embeddings, biases): a finite value that overflows f16 (|v| >= 65520 rounds to
/// inf) is refused, naming the tensor, instead of being written as inf. Models trained in bf16
/// can hold such values (or reach them once AWQ folds 1/s into a norm).
pub fn encode_f16_checked(name: &str, values: &[f32]) -> crate::error::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (i, &v) in values.iter().enumerate() {
        let h = f16::from_f32(v);
        if h.is_infinite() && v.is_finite() {
            return Err(crate::error::Error::input(
                name,
                format!("value {v} at flat index {i} overflows fp16 (largest finite {F16_MAX}), the dtype the output format stores it in"),
            ));
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose2_moves_every_element_for_shapes_off_the_block_size() {
        // Bands of 64 output rows split across threads: shapes below, at and past the band.
        for (r, c) in [(1, 1), (3, 130), (130, 3), (64, 64), (65, 129), (200, 1), (1, 200), (0, 5)] {
            let t = HostTensor { shape: vec![r, c], data: (0..r * c).map(|v| v as f32).collect() };
            let tt = t.transpose2();
            assert_eq!(tt.shape, vec![c, r]);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(tt.data[j * r + i], t.data[i * c + j], "[{i},{j}] of {r}x{c}");
                }
            }
        }
    }
}
