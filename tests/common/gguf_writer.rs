//! A minimal GGUF v3 writer, for tests only: builds synthetic models and deliberately broken files.
//! Layout per the GGUF spec: header, metadata, tensor infos, padding to the alignment, data.
#![allow(dead_code)]

/// GGUF metadata value type ids.
pub mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// ggml type ids.
pub mod gt {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q5_1: u32 = 7;
    pub const Q8_0: u32 = 8;
    pub const Q2_K: u32 = 10;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

pub fn gguf_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

pub struct Tensor {
    pub name: String,
    /// GGUF order (innermost first).
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

pub struct GgufBuilder {
    pub version: u32,
    pub alignment: usize,
    /// (key, value type, encoded value)
    pub kvs: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<Tensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn kv_raw(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Self {
        self.kvs.retain(|(k, _, _)| k != key);
        self.kvs.push((key.to_string(), ty, value));
        self
    }
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _, _)| k != key);
        self
    }
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, vt::U32, v.to_le_bytes().to_vec())
    }
    pub fn u64(&mut self, key: &str, v: u64) -> &mut Self {
        self.kv_raw(key, vt::U64, v.to_le_bytes().to_vec())
    }
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, vt::F32, v.to_le_bytes().to_vec())
    }
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.kv_raw(key, vt::BOOL, vec![v as u8])
    }
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv_raw(key, vt::STRING, gguf_string(v))
    }
    pub fn str_array(&mut self, key: &str, v: &[&str]) -> &mut Self {
        let mut b = vt::STRING.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(gguf_string(s));
        }
        self.kv_raw(key, vt::ARRAY, b)
    }
    pub fn i32_array(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let mut b = vt::I32.to_le_bytes().to_vec();
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        for x in v {
            b.extend_from_slice(&x.to_le_bytes());
        }
        self.kv_raw(key, vt::ARRAY, b)
    }
    /// A tensor given its row-major shape (`[out, in]`); GGUF dims are the reverse.
    pub fn tensor(&mut self, name: &str, shape: &[usize], ty: u32, data: Vec<u8>) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensor_dims(name, dims, ty, data)
    }
    pub fn tensor_dims(&mut self, name: &str, dims: Vec<u64>, ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(Tensor { name: name.to_string(), dims, ty, data });
        self
    }
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], v: &[f32]) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "{name}");
        self.tensor(name, shape, gt::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            b.extend(gguf_string(k));
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0usize;
        for t in &self.tensors {
            b.extend(gguf_string(&t.name));
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.to_le_bytes());
            b.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = align(offset + t.data.len());
        }
        b.resize(align(b.len()), 0);
        for t in &self.tensors {
            b.extend_from_slice(&t.data);
            b.resize(align(b.len()), 0);
        }
        b
    }

    pub fn write(&self, path: &std::path::Path) {
        std::fs::write(path, self.build()).unwrap();
    }
}
