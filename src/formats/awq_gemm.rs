//! AutoAWQ "GEMM" checkpoints (awq-reference §6.a): the interoperable output that AutoAWQ,
//! `lmdeploy lite auto_awq`, transformers, vLLM and lmdeploy's TurboMind all load.
//!
//! Per quantized linear `{module}` (nn.Linear weight `[N, K]`, group g):
//! ```text
//! {module}.qweight  I32 [K, N/8]    codes transposed to [K, N], 8 columns per word, AWQ nibble order
//! {module}.qzeros   I32 [K/g, N/8]  integer zero points, packed the same way (raw 0..15, no GPTQ -1)
//! {module}.scales   F16 [K/g, N]
//! {module}.bias     F16 [N]         only where the model has one (Qwen2 q/k/v)
//! ```
//! Word `j` of a row holds column `8j + AWQ_ORDER[i]` in its nibble `i` (bits 4i..4i+3), so the
//! word reads `c0 | c2<<4 | c4<<8 | c6<<12 | c1<<16 | c3<<20 | c5<<24 | c7<<28`. The interleave lets
//! the CUDA kernel turn one word into two half2 pairs with a single shift.
//! Dequantization: `W[n, k] = (q[k, n] - z[k/g, n]) * s[k/g, n]`.

use crate::error::{Error, IoContext, Result};
use crate::formats::safetensors_writer::{ShardedWriter, TensorSpec};
use crate::fsutil::StagedDir;
use crate::model::arch::{self, GlobalWeights, LinearKind};
use crate::model::config::{Arch, ModelConfig};
use crate::model::weights::SafetensorsRepo;
use crate::quant::int4::{QuantParams, QuantizedLinear};
use crate::quant::qmodel::{
    check_layer, concat_rows, invert_permutation, select_rows, slice_rows, QuantSink, QuantizedLayer, QuantizedModel,
};
use crate::tensor::{encode_f16_checked, DType};
use half::{bf16, f16};
use safetensors::tensor::Dtype as StDtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Nibble `i` of a packed word holds column `8j + AWQ_ORDER[i]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Column `c` of a group of 8 sits in nibble `AWQ_REVERSE_ORDER[c]` (AutoAWQ `AWQ_REVERSE_ORDER`).
pub const AWQ_REVERSE_ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
/// AutoAWQ's `save_quantized` default shard size, "5GB" as transformers parses it.
pub const AWQ_SHARD_BYTES: usize = 5_000_000_000;

/// Pack `[rows, cols]` 4-bit codes (row-major, `cols % 8 == 0`) into `[rows, cols/8]` words in
/// AWQ order.
pub fn pack_awq(q: &[u8], rows: usize, cols: usize) -> Vec<i32> {
    pack_nibbles(q, rows, cols, &AWQ_ORDER)
}

/// Inverse of [`pack_awq`]: `[rows, cols/8]` words -> `[rows, cols]` codes.
pub fn unpack_awq(packed: &[i32], rows: usize, cols: usize) -> Vec<u8> {
    unpack_nibbles(packed, rows, cols, &AWQ_ORDER)
}

/// Pack 8 columns per i32: nibble `i` of word `j` holds column `8j + order[i]`. The caller
/// guarantees `q.len() == rows * cols` and `cols % 8 == 0`; extra values are ignored.
pub(crate) fn pack_nibbles(q: &[u8], rows: usize, cols: usize, order: &[usize; 8]) -> Vec<i32> {
    if cols == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(rows * (cols / 8));
    for row in q.chunks_exact(cols).take(rows) {
        for block in row.chunks_exact(8) {
            let mut w = 0u32;
            for (i, &c) in order.iter().enumerate() {
                w |= u32::from(block[c] & 0xF) << (4 * i);
            }
            out.push(w as i32);
        }
    }
    out
}

/// Inverse of [`pack_nibbles`]. `packed` holds `rows * cols/8` words.
pub(crate) fn unpack_nibbles(packed: &[i32], rows: usize, cols: usize, order: &[usize; 8]) -> Vec<u8> {
    let mut out = vec![0u8; rows * cols];
    for (&w, dst) in packed.iter().zip(out.chunks_exact_mut(8)) {
        for (i, &c) in order.iter().enumerate() {
            dst[c] = ((w as u32 >> (4 * i)) & 0xF) as u8;
        }
    }
    out
}

/// Row-major `[rows, cols]` -> `[cols, rows]`. The caller guarantees `data.len() == rows * cols`.
pub(crate) fn transpose<T: Copy + Default>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * cols];
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The packed AWQ tensors of one linear (shapes in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct AwqTensors {
    /// `[K, N/8]`
    pub qweight: Vec<i32>,
    /// `[K/g, N/8]`
    pub qzeros: Vec<i32>,
    /// `[K/g, N]`
    pub scales: Vec<f16>,
}

/// Pack a quantized linear (`n % 8 == 0`, checked by the writer).
pub fn to_awq(l: &QuantizedLinear) -> AwqTensors {
    let g = l.groups();
    AwqTensors {
        qweight: pack_awq(&transpose(&l.q, l.n, l.k), l.k, l.n),
        qzeros: pack_awq(&transpose(&l.zeros, l.n, g), g, l.n),
        scales: transpose(&l.scales, l.n, g),
    }
}

/// Unpack AWQ tensors of an `[n, k]` linear. Lengths must match the shapes (the reader checks them
/// against the file header first).
pub fn from_awq(t: &AwqTensors, n: usize, k: usize, params: QuantParams, bias: Option<Vec<f32>>) -> QuantizedLinear {
    let g = k / params.group;
    QuantizedLinear {
        n,
        k,
        params,
        q: transpose(&unpack_awq(&t.qweight, k, n), k, n),
        zeros: transpose(&unpack_awq(&t.qzeros, g, n), g, n),
        scales: transpose(&t.scales, g, n),
        bias,
        float_zeros: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Module layout: which checkpoint modules a decoder layer has. Writer and reader both walk this.

/// A quantized module of the checkpoint: one projection, or InternLM2's fused q/k/v.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Module {
    Single(LinearKind),
    FusedQkv,
}

fn layer_modules(arch: Arch) -> Vec<Module> {
    let mut m = Vec::with_capacity(7);
    if arch == Arch::InternLM2 {
        m.push(Module::FusedQkv);
    } else {
        m.extend([LinearKind::Q, LinearKind::K, LinearKind::V].map(Module::Single));
    }
    m.extend([LinearKind::O, LinearKind::Gate, LinearKind::Up, LinearKind::Down].map(Module::Single));
    m
}

/// `(name, out_features, in_features, has_bias)` of a checkpoint module.
fn module_shape(c: &ModelConfig, layer: usize, m: Module) -> (String, usize, usize, bool) {
    match m {
        Module::Single(kind) => {
            let (n, k) = kind.shape(c);
            (arch::linear_module(c.arch, layer, kind), n, k, kind.has_bias(c))
        }
        Module::FusedQkv => (
            arch::linear_module(c.arch, layer, LinearKind::Q),
            c.q_dim() + 2 * c.kv_dim(),
            c.hidden_size,
            c.attention_bias,
        ),
    }
}

/// InternLM2's `wqkv` from canonical q/k/v (rows re-fused per KV group, `internlm2_qkv_row_order`).
fn fuse_internlm2_qkv(c: &ModelConfig, l: &QuantizedLayer) -> Result<QuantizedLinear> {
    let canon = concat_rows(&[&l.q, &l.k, &l.v])?;
    Ok(select_rows(&canon, &arch::internlm2_qkv_row_order(c)))
}

/// Inverse of [`fuse_internlm2_qkv`].
fn split_internlm2_qkv(
    c: &ModelConfig,
    fused: &QuantizedLinear,
) -> (QuantizedLinear, QuantizedLinear, QuantizedLinear) {
    let canon = select_rows(fused, &invert_permutation(&arch::internlm2_qkv_row_order(c)));
    let (qd, kd) = (c.q_dim(), c.kv_dim());
    (slice_rows(&canon, 0, qd), slice_rows(&canon, qd, qd + kd), slice_rows(&canon, qd + kd, qd + 2 * kd))
}

/// Check before writing anything that every projection of `c` can be packed with `p`:
/// 4-bit codes, K a multiple of the group size, N a multiple of 8.
fn check_packable(c: &ModelConfig, p: QuantParams) -> Result<()> {
    if p.bits != 4 {
        return Err(Error::usage(format!(
            "AutoAWQ GEMM checkpoints hold 4-bit weights; this model was quantized to {} bits",
            p.bits
        )));
    }
    if p.zero != crate::quant::int4::ZeroPoint::Int {
        return Err(Error::usage(
            "--zero-point float: AutoAWQ GEMM checkpoints store 4-bit integer zero points (qzeros); write a TurboMind workspace (--out-format turbomind) to keep fp16 zeros",
        ));
    }
    for m in layer_modules(c.arch) {
        let (name, n, k, _) = module_shape(c, 0, m);
        let name = name.replacen(".0.", ".*.", 1);
        p.check_divides(&name, k)?;
        if n % 8 != 0 {
            return Err(Error::usage(format!(
                "{name}: out_features {n} is not a multiple of 8; AWQ GEMM packs 8 output columns per int32"
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// `config.json` of a quantized checkpoint: the HF config in f16 plus AutoAWQ's
/// `quantization_config` (`AwqConfig.to_transformers_dict`). The TurboMind workspace writes the
/// same file at its root.
pub fn awq_config_json(c: &ModelConfig, p: QuantParams) -> Value {
    let mut v = c.to_hf_json(DType::F16);
    if let Value::Object(m) = &mut v {
        m.insert(
            "quantization_config".into(),
            json!({"quant_method": "awq", "zero_point": true, "group_size": p.group, "bits": p.bits,
                   "version": "gemm", "modules_to_not_convert": null}),
        );
    }
    v
}

/// Write `config.json` for a quantized model into `dir`.
pub(crate) fn write_config_json(dir: &Path, c: &ModelConfig, p: QuantParams) -> Result<()> {
    let text = serde_json::to_string_pretty(&awq_config_json(c, p))
        .map_err(|e| Error::internal(format!("serializing config.json: {e}")))?;
    let path = dir.join("config.json");
    std::fs::write(&path, text + "\n").at(path.display())
}

/// Tokenizer-related files copied next to a quantized model (`config.json` is written, not copied).
const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

/// Copy the tokenizer files of `src` that exist (the fixed names above plus `*.model` and
/// `*.tiktoken`) into `dst`, in name order. Returns the names copied.
pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(src)
        .at(src.display())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| TOKENIZER_FILES.contains(&n.as_str()) || n.ends_with(".model") || n.ends_with(".tiktoken"))
        .filter(|n| src.join(n).is_file())
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(src.join(n), dst.join(n)).at(src.join(n).display())?;
    }
    Ok(names)
}

/// Names, dtypes and shapes of every tensor, in the order the writer streams them: embedding,
/// final norm, lm head (untied only), then per layer the two norms and each module's
/// `qweight, qzeros, scales[, bias]`.
fn tensor_specs(c: &ModelConfig, p: QuantParams) -> Vec<TensorSpec> {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let (emb, norm, head) = arch::global_names(c.arch);
    let mut s = vec![TensorSpec::new(emb, "F16", &[v, h]), TensorSpec::new(norm, "F16", &[h])];
    if !c.tie_word_embeddings {
        s.push(TensorSpec::new(head, "F16", &[v, h]));
    }
    for i in 0..c.num_hidden_layers {
        let (n1, n2) = arch::norm_names(c.arch, i);
        s.push(TensorSpec::new(n1, "F16", &[h]));
        s.push(TensorSpec::new(n2, "F16", &[h]));
        for m in layer_modules(c.arch) {
            let (name, n, k, bias) = module_shape(c, i, m);
            s.push(TensorSpec::new(format!("{name}.qweight"), "I32", &[k, n / 8]));
            s.push(TensorSpec::new(format!("{name}.qzeros"), "I32", &[k / p.group, n / 8]));
            s.push(TensorSpec::new(format!("{name}.scales"), "F16", &[k / p.group, n]));
            if bias {
                s.push(TensorSpec::new(format!("{name}.bias"), "F16", &[n]));
            }
        }
    }
    s
}

struct AwqOpen {
    staged: StagedDir,
    out: ShardedWriter,
    config: ModelConfig,
    params: QuantParams,
    next_layer: usize,
}

/// Writes an AutoAWQ-GEMM checkpoint directory (`config.json`, `model*.safetensors`, tokenizer
/// files), one decoder layer at a time. Nothing appears under the output name until `finish`.
pub struct AwqWriter {
    out_dir: PathBuf,
    force: bool,
    tokenizer_src: Option<PathBuf>,
    max_shard_bytes: usize,
    open: Option<AwqOpen>,
}

impl AwqWriter {
    /// Write to `out_dir`; an existing directory is replaced only with `force`.
    pub fn new(out_dir: &Path, force: bool) -> Self {
        AwqWriter {
            out_dir: out_dir.to_path_buf(),
            force,
            tokenizer_src: None,
            max_shard_bytes: AWQ_SHARD_BYTES,
            open: None,
        }
    }
    /// Copy the tokenizer files of this model directory next to the weights.
    pub fn with_tokenizer_from(mut self, dir: &Path) -> Self {
        self.tokenizer_src = Some(dir.to_path_buf());
        self
    }
    /// Shard size limit (default 5 GB, as AutoAWQ).
    pub fn with_max_shard_bytes(mut self, bytes: usize) -> Self {
        self.max_shard_bytes = bytes.max(1);
        self
    }

    fn state(&mut self) -> Result<&mut AwqOpen> {
        self.open.as_mut().ok_or_else(|| Error::internal("AwqWriter: write_layer/finish before begin"))
    }
}

fn write_linear(out: &mut ShardedWriter, name: &str, l: &QuantizedLinear) -> Result<()> {
    if l.float_zeros.is_some() {
        return Err(Error::input(name, "has fp16 (non-integer) zero points, which an AutoAWQ GEMM checkpoint cannot store (qzeros are 4-bit integers)"));
    }
    let t = to_awq(l);
    out.write(&format!("{name}.qweight"), &i32_bytes(&t.qweight))?;
    out.write(&format!("{name}.qzeros"), &i32_bytes(&t.qzeros))?;
    out.write(&format!("{name}.scales"), &f16_bytes(&t.scales))?;
    if let Some(b) = &l.bias {
        let bias = format!("{name}.bias");
        out.write(&bias, &encode_f16_checked(&bias, b)?)?;
    }
    Ok(())
}

impl QuantSink for AwqWriter {
    fn begin(&mut self, config: &ModelConfig, params: QuantParams, globals: &GlobalWeights) -> Result<()> {
        check_packable(config, params)?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let (emb, norm, head) = arch::global_names(config.arch);
        if globals.embed.shape != [v, h] || globals.norm.len() != h {
            return Err(Error::internal(format!(
                "AwqWriter: embedding {:?} / norm [{}] do not match the config [{v}, {h}]",
                globals.embed.shape,
                globals.norm.len()
            )));
        }
        let lm_head = match (&globals.lm_head, config.tie_word_embeddings) {
            (None, true) => None,
            (Some(t), false) if t.shape == [v, h] => Some(t),
            (l, tied) => {
                return Err(Error::internal(format!(
                    "AwqWriter: lm head {:?} does not match tie_word_embeddings = {tied}",
                    l.as_ref().map(|t| t.shape.clone())
                )))
            }
        };
        let staged = StagedDir::create(&self.out_dir, self.force)?;
        write_config_json(staged.path(), config, params)?;
        if let Some(src) = &self.tokenizer_src {
            copy_tokenizer_files(src, staged.path())?;
        }
        let specs = tensor_specs(config, params);
        let mut out = ShardedWriter::create(staged.path(), "model", specs, self.max_shard_bytes, &[("format", "pt")])?;
        out.write(emb, &encode_f16_checked(emb, &globals.embed.data)?)?;
        out.write(norm, &encode_f16_checked(norm, &globals.norm)?)?;
        if let Some(t) = lm_head {
            out.write(head, &encode_f16_checked(head, &t.data)?)?;
        }
        self.open = Some(AwqOpen { staged, out, config: config.clone(), params, next_layer: 0 });
        Ok(())
    }

    fn write_layer(&mut self, index: usize, layer: &QuantizedLayer) -> Result<()> {
        let st = self.state()?;
        let c = &st.config;
        check_layer("AwqWriter", c, st.params, index, st.next_layer, layer)?;
        let (n1, n2) = arch::norm_names(c.arch, index);
        st.out.write(&n1, &encode_f16_checked(&n1, &layer.attn_norm)?)?;
        st.out.write(&n2, &encode_f16_checked(&n2, &layer.mlp_norm)?)?;
        for m in layer_modules(c.arch) {
            let (name, ..) = module_shape(c, index, m);
            match m {
                Module::Single(kind) => write_linear(&mut st.out, &name, layer.linear(kind))?,
                Module::FusedQkv => write_linear(&mut st.out, &name, &fuse_internlm2_qkv(c, layer)?)?,
            }
        }
        st.next_layer += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let st = self.open.take().ok_or_else(|| Error::internal("AwqWriter: finish before begin"))?;
        if st.next_layer != st.config.num_hidden_layers {
            return Err(Error::internal(format!(
                "AwqWriter: only {} of {} layers were written",
                st.next_layer, st.config.num_hidden_layers
            )));
        }
        st.out.finish()?;
        st.staged.commit()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A checkpoint's `quantization_config` (from `config.json`, or AutoAWQ's older `quant_config.json`).
fn read_quant_params(dir: &Path, config: &ModelConfig) -> Result<QuantParams> {
    let cfg_path = dir.join("config.json");
    let (qc, src): (Value, PathBuf) = match config.raw.get("quantization_config") {
        Some(q) => (q.clone(), cfg_path),
        None => {
            let legacy = dir.join("quant_config.json");
            if !legacy.is_file() {
                return Err(Error::input(
                    cfg_path.display(),
                    "no \"quantization_config\": not a quantized checkpoint (expected an AutoAWQ GEMM model)",
                ));
            }
            let bytes = std::fs::read(&legacy).at(legacy.display())?;
            let v = serde_json::from_slice(&bytes)
                .map_err(|e| Error::input(legacy.display(), format!("not valid JSON: {e}")))?;
            (v, legacy)
        }
    };
    let src = src.display().to_string();
    let field = |keys: &[&str]| keys.iter().find_map(|k| qc.get(*k)).filter(|v| !v.is_null());
    let method = field(&["quant_method"]).and_then(|v| v.as_str()).unwrap_or("awq");
    if !method.eq_ignore_ascii_case("awq") {
        return Err(Error::input(
            &src,
            format!("quantization_config.quant_method is {method:?}; only \"awq\" is supported"),
        ));
    }
    let version = field(&["version"]).and_then(|v| v.as_str()).unwrap_or("");
    if !version.eq_ignore_ascii_case("gemm") {
        return Err(Error::input(
            &src,
            format!("quantization_config.version is {version:?}; only \"gemm\" checkpoints can be read"),
        ));
    }
    let bits = field(&["bits", "w_bit"]).and_then(|v| v.as_u64());
    if bits != Some(4) {
        return Err(Error::input(&src, format!("quantization_config.bits is {bits:?}; AWQ GEMM needs 4")));
    }
    let zero_point = field(&["zero_point"]).and_then(|v| v.as_bool());
    if zero_point != Some(true) {
        return Err(Error::input(
            &src,
            format!("quantization_config.zero_point is {zero_point:?}; only zero-point (asymmetric) checkpoints are supported"),
        ));
    }
    let group =
        field(&["group_size", "q_group_size"])
            .and_then(|v| v.as_u64())
            .and_then(|g| usize::try_from(g).ok())
            .ok_or_else(|| Error::input(&src, "quantization_config.group_size is missing or not a positive integer"))?;
    if group == 0 || group % 8 != 0 {
        return Err(Error::input(&src, format!("quantization_config.group_size {group} is not a positive multiple of 8")));
    }
    QuantParams::new(4, group).map_err(|e| Error::input(&src, format!("quantization_config: {}", e.msg)))
}

/// Reads an AutoAWQ-GEMM checkpoint (ours, AutoAWQ's or `lmdeploy lite auto_awq`'s; single file or
/// sharded) one layer at a time.
pub struct AwqReader {
    dir: PathBuf,
    repo: SafetensorsRepo,
    config: ModelConfig,
    params: QuantParams,
}

impl AwqReader {
    pub fn open(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let params = read_quant_params(dir, &config)?;
        let repo = SafetensorsRepo::open_dir(dir)?;
        Ok(AwqReader { dir: dir.to_path_buf(), repo, config, params })
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn params(&self) -> QuantParams {
        self.params
    }

    fn file_of(&self, name: &str) -> String {
        let p = self.repo.file_of(name).map(Path::to_path_buf).unwrap_or_else(|| self.dir.clone());
        p.display().to_string()
    }

    /// Embedding, final norm and lm head (`None` when tied), any float dtype.
    pub fn globals(&self) -> Result<GlobalWeights> {
        arch::load_globals(&self.repo, &self.config)
    }

    /// Scales as f16. bf16 and f32 scales (lmdeploy keeps the model dtype) are accepted when every
    /// value converts to f16 exactly; otherwise the kernel would see different scales.
    fn scales(&self, name: &str, shape: &[usize]) -> Result<Vec<f16>> {
        let (m, bytes) = self.repo.raw(name)?;
        if m.shape != shape {
            return Err(Error::input(
                self.file_of(name),
                format!("tensor {name:?} has shape {:?}, expected {:?}", m.shape, shape),
            ));
        }
        let exact = |v: f32| {
            let h = f16::from_f32(v);
            (h.to_f32() == v || v.is_nan()).then_some(h)
        };
        let convert = |vals: Vec<f32>, what: &str| -> Result<Vec<f16>> {
            vals.iter()
                .enumerate()
                .map(|(i, &v)| {
                    exact(v).ok_or_else(|| {
                        Error::input(
                            self.file_of(name),
                            format!("tensor {name:?} is {what}; value {v} at index {i} has no exact f16 form (only F16 scales, or {what} scales that are exactly f16, are supported)"),
                        )
                    })
                })
                .collect()
        };
        match m.dtype {
            StDtype::F16 => Ok(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()),
            StDtype::BF16 => {
                convert(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(), "BF16")
            }
            StDtype::F32 => convert(DType::F32.decode(bytes), "F32"),
            other => Err(Error::input(
                self.file_of(name),
                format!("tensor {name:?} has dtype {other:?}; scales must be F16"),
            )),
        }
    }

    fn bias(&self, module: &str, n: usize, wanted: bool) -> Result<Option<Vec<f32>>> {
        let name = format!("{module}.bias");
        match (wanted, self.repo.contains(&name)) {
            (true, _) => Ok(Some(self.repo.get_f32_shaped(&name, &[n])?.data)),
            (false, false) => Ok(None),
            (false, true) => Err(Error::input(
                self.file_of(&name),
                format!("tensor {name:?} exists but the config declares no bias for this projection; unsupported"),
            )),
        }
    }

    fn module(&self, layer: usize, m: Module) -> Result<QuantizedLinear> {
        let (name, n, k, has_bias) = module_shape(&self.config, layer, m);
        let p = self.params;
        let qw = format!("{name}.qweight");
        if !self.repo.contains(&qw) {
            let hint = if self.repo.contains(&format!("{name}.weight")) {
                " (the module was left unquantized, e.g. via modules_to_not_convert; awqc needs every decoder projection quantized)"
            } else {
                ""
            };
            return Err(Error::input(
                self.file_of(&format!("{name}.weight")),
                format!("tensor {qw:?} not found{hint}"),
            ));
        }
        if k % p.group != 0 || n % 8 != 0 {
            return Err(Error::input(
                self.file_of(&qw),
                format!(
                    "{name}: shape [{n}, {k}] cannot be AWQ-packed with group {} (needs K % g == 0 and N % 8 == 0)",
                    p.group
                ),
            ));
        }
        let g = k / p.group;
        let t = AwqTensors {
            qweight: self.repo.get_i32(&qw, &[k, n / 8])?,
            qzeros: self.repo.get_i32(&format!("{name}.qzeros"), &[g, n / 8])?,
            scales: self.scales(&format!("{name}.scales"), &[g, n])?,
        };
        if let Some(i) = t.scales.iter().position(|s| !s.is_finite()) {
            return Err(Error::input(
                self.file_of(&format!("{name}.scales")),
                format!("tensor \"{name}.scales\" has a non-finite value at index {i}"),
            ));
        }
        Ok(from_awq(&t, n, k, p, self.bias(&name, n, has_bias)?))
    }

    /// Decoder layer `i` in canonical form (InternLM2's wqkv split into q/k/v).
    pub fn layer(&self, i: usize) -> Result<QuantizedLayer> {
        let c = &self.config;
        if i >= c.num_hidden_layers {
            return Err(Error::internal(format!("AwqReader: layer {i} of {}", c.num_hidden_layers)));
        }
        let h = c.hidden_size;
        let (n1, n2) = arch::norm_names(c.arch, i);
        let attn_norm = self.repo.get_f32_shaped(&n1, &[h])?.data;
        let mlp_norm = self.repo.get_f32_shaped(&n2, &[h])?.data;
        let single = |kind| self.module(i, Module::Single(kind));
        let (q, k, v) = if c.arch == Arch::InternLM2 {
            split_internlm2_qkv(c, &self.module(i, Module::FusedQkv)?)
        } else {
            (single(LinearKind::Q)?, single(LinearKind::K)?, single(LinearKind::V)?)
        };
        Ok(QuantizedLayer {
            attn_norm,
            mlp_norm,
            q,
            k,
            v,
            o: single(LinearKind::O)?,
            gate: single(LinearKind::Gate)?,
            up: single(LinearKind::Up)?,
            down: single(LinearKind::Down)?,
        })
    }
}

/// Read a whole AutoAWQ-GEMM checkpoint into memory.
pub fn read_awq_model(dir: &Path) -> Result<QuantizedModel> {
    let r = AwqReader::open(dir)?;
    let globals = r.globals()?;
    let layers = (0..r.config.num_hidden_layers).map(|i| r.layer(i)).collect::<Result<Vec<_>>>()?;
    Ok(QuantizedModel { config: r.config.clone(), params: r.params, globals, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awq_order_pinned_against_hand_computed_words() {
        // Columns 0..8 hold codes 1..=8: the word is c0 | c2<<4 | c4<<8 | c6<<12 | c1<<16 | c3<<20 | c5<<24 | c7<<28.
        let q: Vec<u8> = (1..=8).collect();
        let w = pack_awq(&q, 1, 8);
        assert_eq!(w, vec![0x8642_7531u32 as i32]);
        // A single code 0xF in column c lands in nibble AWQ_REVERSE_ORDER[c].
        for c in 0..8 {
            let mut q = [0u8; 8];
            q[c] = 0xF;
            let w = pack_awq(&q, 1, 8)[0] as u32;
            assert_eq!(w, 0xF << (4 * AWQ_REVERSE_ORDER[c]), "column {c}");
        }
        for (i, &c) in AWQ_ORDER.iter().enumerate() {
            assert_eq!(AWQ_REVERSE_ORDER[c], i);
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        let (rows, cols) = (5, 8 * 37);
        let q: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + i / 13) % 16) as u8).collect();
        let p = pack_awq(&q, rows, cols);
        assert_eq!(p.len(), rows * cols / 8);
        assert_eq!(unpack_awq(&p, rows, cols), q);
        // Row 1, word 0 built by hand from the definition.
        let row = &q[cols..cols + 8];
        let mut want = 0u32;
        for i in 0..8 {
            want |= (row[AWQ_ORDER[i]] as u32) << (4 * i);
        }
        assert_eq!(p[cols / 8] as u32, want);
    }

    #[test]
    fn transpose_is_an_involution() {
        let d: Vec<u16> = (0..7 * 45).map(|i| i as u16).collect();
        let t = transpose(&d, 7, 45);
        assert_eq!(t[3 * 7 + 2], d[2 * 45 + 3]);
        assert_eq!(transpose(&t, 45, 7), d);
    }
}
