//! The paged KV cache: its block layout, its allocation from a memory budget, block tables, and
//! the append kernel that writes (and quantizes) the K/V of new tokens.
//!
//! ## Layout
//! A block holds [`BLOCK_LEN`] = 64 consecutive token positions of one sequence, for **all layers**
//! (as TurboMind, awq-reference §7), so one block table per sequence serves every layer. The cache
//! is two buffers (TurboMind interleaves the same two regions inside each block):
//! - `data`: rows of one (token, head) K or V vector, row index
//!   `row = (((block * layers + layer) * kv_heads + head) * 2 + kv) * 64 + slot`
//!   (`kv` = 0 for K, 1 for V; slot = position % 64), i.e. per block and layer
//!   `[kv_head][K|V][token][head_dim]`. A row is `head_dim` values of the cache element type for
//!   quant_policy 0 (f16 or f32 buffer), or `head_dim * b / 32` u32 words for int8 / int4
//!   (packing in [`crate::kv_quant`]).
//! - `params` (quantized caches only): f16 `[row][2]` = (scale, zero) per row.
//!
//! Bytes per block: `layers * kv_heads * 2 * 64 * (head_dim * bits / 8 + (quantized ? 4 : 0))`,
//! TurboMind's `block_size` formula.
//!
//! A sequence's block table lists its blocks in position order: position p lives in block
//! `table[p / 64]`, slot `p % 64`. K is stored after RoPE.

use crate::error::{bail, ensure, Result};
use crate::kv_quant::{quantize_row, KvBits};
use crate::tensor::{cube_linear, grid_1d, Elem, GpuTensor};
use cubecl::prelude::*;
use half::f16;

/// Token positions per block (TurboMind's `cache_block_seq_len` default).
pub const BLOCK_LEN: usize = 64;

/// What a cache row stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCacheKind {
    /// quant_policy 0 with an f16 cache.
    F16,
    /// quant_policy 0 with an f32 cache.
    F32,
    /// quant_policy 8.
    Int8,
    /// quant_policy 4.
    Int4,
}

impl KvCacheKind {
    /// TurboMind's `quant_policy` (0, 8 or 4); `fp` is the element type for policy 0.
    pub fn from_quant_policy(policy: u32, fp: Elem) -> Result<Self> {
        Ok(match (policy, fp) {
            (0, Elem::F16) => KvCacheKind::F16,
            (0, Elem::F32) => KvCacheKind::F32,
            (8, _) => KvCacheKind::Int8,
            (4, _) => KvCacheKind::Int4,
            (0, e) => bail!("kv cache: quant_policy 0 needs an f16 or f32 cache, not {}", e.name()),
            (p, _) => bail!("kv cache: quant_policy {p} is not supported (0, 4 or 8)"),
        })
    }

    pub fn quant_policy(self) -> u32 {
        match self {
            KvCacheKind::F16 | KvCacheKind::F32 => 0,
            KvCacheKind::Int8 => 8,
            KvCacheKind::Int4 => 4,
        }
    }

    pub fn quant_bits(self) -> Option<KvBits> {
        match self {
            KvCacheKind::Int8 => Some(KvBits::Int8),
            KvCacheKind::Int4 => Some(KvBits::Int4),
            _ => None,
        }
    }

    /// Bits per stored value.
    pub fn value_bits(self) -> usize {
        match self {
            KvCacheKind::F16 => 16,
            KvCacheKind::F32 => 32,
            KvCacheKind::Int8 => 8,
            KvCacheKind::Int4 => 4,
        }
    }

    /// Element type of the data buffer.
    pub fn data_elem(self) -> Elem {
        match self {
            KvCacheKind::F16 => Elem::F16,
            KvCacheKind::F32 => Elem::F32,
            KvCacheKind::Int8 | KvCacheKind::Int4 => Elem::U32,
        }
    }

    /// The comptime `bits` of the kernels: 0 for a float cache.
    pub(crate) fn kernel_bits(self) -> u32 {
        self.quant_bits().map_or(0, |b| b.bits())
    }
}

/// Shape of a cache (everything but the number of blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub kind: KvCacheKind,
}

impl KvCacheLayout {
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, kind: KvCacheKind) -> Result<Self> {
        ensure!(layers > 0 && kv_heads > 0, "kv cache: layers and kv_heads must be > 0");
        ensure!(head_dim > 0 && head_dim <= 256, "kv cache: head_dim {head_dim} must be in 1..=256");
        if let Some(b) = kind.quant_bits() {
            b.check_dim(head_dim)?;
        }
        Ok(KvCacheLayout { layers, kv_heads, head_dim, kind })
    }

    /// Elements of the data buffer's type per row.
    pub fn row_elems(&self) -> usize {
        match self.kind.quant_bits() {
            Some(b) => b.row_words(self.head_dim),
            None => self.head_dim,
        }
    }

    /// Rows (K or V vectors) per block.
    pub fn rows_per_block(&self) -> usize {
        self.layers * self.kv_heads * 2 * BLOCK_LEN
    }

    /// Bytes per block (module docs).
    pub fn block_bytes(&self) -> usize {
        let params = if self.kind.quant_bits().is_some() { 4 } else { 0 };
        self.rows_per_block() * (self.head_dim * self.kind.value_bits() / 8 + params)
    }

    /// How many blocks fit in `budget_bytes`.
    pub fn blocks_for_budget(&self, budget_bytes: u64) -> usize {
        (budget_bytes / self.block_bytes() as u64) as usize
    }

    /// TurboMind's `cache_max_entry_count` rule (§7): a ratio in (0, 1) takes that fraction of the
    /// free device memory (after the weights are loaded); a value >= 1 is an absolute block count.
    pub fn blocks_for_free_memory(&self, free_bytes: u64, cache_max_entry_count: f64) -> Result<usize> {
        ensure!(
            cache_max_entry_count.is_finite() && cache_max_entry_count > 0.0,
            "kv cache: cache_max_entry_count = {cache_max_entry_count} must be > 0"
        );
        if cache_max_entry_count >= 1.0 {
            return Ok(cache_max_entry_count as usize);
        }
        Ok(self.blocks_for_budget((free_bytes as f64 * cache_max_entry_count) as u64))
    }

    /// Blocks a sequence of `tokens` positions occupies.
    pub fn blocks_for_tokens(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_LEN)
    }

    /// The row of (block, layer, head, kv, slot) (module docs).
    pub fn row_index(&self, block: usize, layer: usize, head: usize, kv: usize, slot: usize) -> usize {
        (((block * self.layers + layer) * self.kv_heads + head) * 2 + kv) * BLOCK_LEN + slot
    }
}

/// A cache in device memory. Its contents are only defined where tokens were appended.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layout: KvCacheLayout,
    pub num_blocks: usize,
    /// `[rows, row_elems]` of `layout.kind.data_elem()`.
    pub data: GpuTensor,
    /// f16 `[rows, 2]` (scale, zero) for quantized caches; a `[1, 2]` placeholder for float
    /// caches (the kernels take the argument either way).
    pub params: GpuTensor,
}

impl KvCache {
    pub fn new<R: Runtime>(client: &ComputeClient<R>, layout: KvCacheLayout, num_blocks: usize) -> Result<Self> {
        ensure!(num_blocks > 0, "kv cache: no blocks (the memory budget is smaller than one block of {} bytes)", layout.block_bytes());
        let rows = num_blocks
            .checked_mul(layout.rows_per_block())
            .filter(|&r| r < u32::MAX as usize)
            .ok_or_else(|| crate::KernelError(format!("kv cache: {num_blocks} blocks exceed 2^32 rows")))?;
        ensure!(
            rows * layout.row_elems() <= u32::MAX as usize || !R::name(client).starts_with("wgpu"),
            "kv cache: {num_blocks} blocks need 64-bit indexing, which the wgpu runtime lacks (use CUDA or fewer blocks)"
        );
        let data = GpuTensor::empty(client, &[rows, layout.row_elems()], layout.kind.data_elem())?;
        let params = match layout.kind.quant_bits() {
            Some(_) => GpuTensor::empty(client, &[rows, 2], Elem::F16)?,
            None => GpuTensor::from_f16(client, &[f16::ZERO, f16::ZERO], &[1, 2])?,
        };
        Ok(KvCache { layout, num_blocks, data, params })
    }

    /// Address width the cache kernels need (64-bit indices past 2^32 elements; CUDA only).
    pub(crate) fn address_type(&self) -> AddressType {
        AddressType::from_len(self.data.numel().max(2 * self.data.shape[0]))
    }

    /// Slot of position `pos` in a sequence with block table `table`: `table[pos/64]*64 + pos%64`.
    pub fn slot(&self, table: &[u32], pos: usize) -> Result<u32> {
        let Some(&block) = table.get(pos / BLOCK_LEN) else {
            bail!("kv cache: position {pos} is past the block table ({} blocks)", table.len());
        };
        ensure!((block as usize) < self.num_blocks, "kv cache: block {block} >= num_blocks {}", self.num_blocks);
        Ok((block as usize * BLOCK_LEN + pos % BLOCK_LEN) as u32)
    }
}

/// Block tables and lengths of a batch of sequences, in device memory, checked against a cache.
#[derive(Clone, Debug)]
pub struct BlockTables {
    pub batch: usize,
    pub max_blocks: usize,
    /// u32 `[batch, max_blocks]` (short tables padded with 0, never read).
    pub tables: GpuTensor,
    /// u32 `[batch]`: cached positions per sequence, the current token included.
    pub seq_lens: GpuTensor,
    pub host_seq_lens: Vec<usize>,
}

impl BlockTables {
    pub fn new<R: Runtime>(client: &ComputeClient<R>, cache: &KvCache, tables: &[Vec<u32>], seq_lens: &[usize]) -> Result<Self> {
        ensure!(!tables.is_empty(), "block tables: empty batch");
        ensure!(tables.len() == seq_lens.len(), "block tables: {} tables for {} lengths", tables.len(), seq_lens.len());
        let max_blocks = tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; tables.len() * max_blocks];
        for (b, (t, &len)) in tables.iter().zip(seq_lens).enumerate() {
            ensure!(len > 0, "block tables: sequence {b} has no tokens");
            ensure!(len < u32::MAX as usize, "block tables: sequence {b} is too long");
            ensure!(
                t.len() >= KvCacheLayout::blocks_for_tokens(len),
                "block tables: sequence {b} has {len} tokens but only {} blocks",
                t.len()
            );
            for (i, &blk) in t.iter().enumerate() {
                ensure!((blk as usize) < cache.num_blocks, "block tables: sequence {b} block {i} = {blk} >= num_blocks {}", cache.num_blocks);
                flat[b * max_blocks + i] = blk;
            }
        }
        let lens: Vec<u32> = seq_lens.iter().map(|&l| l as u32).collect();
        Ok(BlockTables {
            batch: tables.len(),
            max_blocks,
            tables: GpuTensor::from_u32(client, &flat, &[tables.len(), max_blocks])?,
            seq_lens: GpuTensor::from_u32(client, &lens, &[tables.len()])?,
            host_seq_lens: seq_lens.to_vec(),
        })
    }
}

const APPEND_UNITS: usize = 64;

#[cube(launch_unchecked, address_type = "dynamic")]
fn kv_append_kernel<F: Float, C: CubePrimitive>(
    k: &Array<F>,            // [T, Hkv, D]
    v: &Array<F>,            // [T, Hkv, D]
    slots: &Array<u32>,      // [T]
    data: &mut Array<C>,     // [rows, row_elems]
    params: &mut Array<f16>, // [rows, 2] (quantized caches)
    tokens: usize,
    hkv: usize,
    d: usize,
    layers: usize,
    layer: usize,
    row_elems: usize,
    inv_qmax: f32,
    #[comptime] bits: u32,
) {
    // One unit per (token, head, K|V) row.
    let idx = cube_linear() * APPEND_UNITS + UNIT_POS as usize;
    if idx < tokens * hkv * 2 {
        let kv = idx % 2;
        let th = idx / 2; // token * hkv + head
        let head = th % hkv;
        let slot = slots[th / hkv] as usize;
        let block = slot / 64;
        let row = (((block * layers + layer) * hkv + head) * 2 + kv) * 64 + slot % 64;
        if comptime![bits == 0] {
            for e in 0..d {
                if kv == 0 {
                    data[row * row_elems + e] = C::cast_from(k[th * d + e]);
                } else {
                    data[row * row_elems + e] = C::cast_from(v[th * d + e]);
                }
            }
        } else if kv == 0 {
            quantize_row::<F, C>(k, th * d, d, data, row * row_elems, params, row * 2, inv_qmax, bits);
        } else {
            quantize_row::<F, C>(v, th * d, d, data, row * row_elems, params, row * 2, inv_qmax, bits);
        }
    }
}

/// Writes the K (post-RoPE) and V of `T` new tokens, `[T, kv_heads, head_dim]` (f16 or f32),
/// into `layer` of the cache at `slots[t]` (see [`KvCache::slot`]), quantizing for int8/int4
/// caches. Slots must be distinct and inside the cache.
pub fn kv_append<R: Runtime>(client: &ComputeClient<R>, cache: &mut KvCache, layer: usize, k: &GpuTensor, v: &GpuTensor, slots: &[u32]) -> Result<()> {
    let lay = cache.layout;
    let t = slots.len();
    ensure!(t > 0, "kv_append: no tokens");
    ensure!(layer < lay.layers, "kv_append: layer {layer} >= {}", lay.layers);
    k.expect("kv_append k", &[t, lay.kv_heads, lay.head_dim], &[Elem::F16, Elem::F32])?;
    v.expect("kv_append v", &[t, lay.kv_heads, lay.head_dim], &[k.elem])?;
    let mut seen = std::collections::HashSet::with_capacity(t);
    for &s in slots {
        ensure!((s as usize) < cache.num_blocks * BLOCK_LEN, "kv_append: slot {s} is outside the cache ({} blocks)", cache.num_blocks);
        ensure!(seen.insert(s), "kv_append: slot {s} is written twice");
    }
    let slots_t = GpuTensor::from_u32(client, slots, &[t])?;
    let bits = lay.kind.kernel_bits();
    let inv_qmax = lay.kind.quant_bits().map_or(0.0, KvBits::inv_qmax);
    let count = grid_1d((t * lay.kv_heads * 2).div_ceil(APPEND_UNITS))?;
    let at = cache.address_type();
    macro_rules! launch {
        ($C:ty) => {
            crate::dispatch_float!(k.elem, F => unsafe {
                kv_append_kernel::launch_unchecked::<F, $C, R>(
                    client, count, CubeDim::new_1d(APPEND_UNITS as u32), at,
                    k.arg(), v.arg(), slots_t.arg(), cache.data.arg(), cache.params.arg(),
                    t, lay.kv_heads, lay.head_dim, lay.layers, layer, lay.row_elems(), inv_qmax, bits,
                )
            })
        };
    }
    match lay.kind {
        KvCacheKind::F16 => launch!(f16),
        KvCacheKind::F32 => launch!(f32),
        KvCacheKind::Int8 | KvCacheKind::Int4 => launch!(u32),
    }
    Ok(())
}
