//! W4A16: `y[M, N] = x[M, K] · W[K, N]` with W stored as asymmetric group-wise INT4
//! (awq-reference §6.b), activations f16 or f32, f32 accumulation.
//!
//! ## On-disk (TurboMind) form, the input of [`repack_turbomind`]
//! - `qweight` int32 `[K, N/8]`, natural nibble order: nibble `i` (bits `4i..4i+4`) of word `j`
//!   in row `k` is `q[k][8j + i]`;
//! - `scales` f16 `[K/g, N]`, `zeros` f16 `[K/g, N]` (integer values stored as half);
//! - `W[k][n] = (q[k][n] - z[k/g][n]) * s[k/g][n]`.
//!
//! ## Kernel form ([`W4Host`] / [`W4Weights`]), N-major so one output column's K values are
//! contiguous and a unit loads 32 of them with one 16-byte vector load:
//! - `qweight` u32 `[N, K/8]`: nibble `i` of word `j` in row `n` is `q[8j + i][n]`;
//! - `sz` f32 `[N, K/g, 2]`: the fused pair `(s, -z*s)` per (column, group), as TurboMind's
//!   `fuse_scales_and_zeros`, so dequantization is `q*s + (-z*s)`. The pair is kept in f32
//!   (TurboMind: half2) so that f32 activations match `(q - z) * s` to ~1e-7; it costs 8 bytes per
//!   (group, column) instead of 4, i.e. 1/8 extra on top of the 4-bit data at g = 128.
//!
//! ## Kernels
//! - [`w4a16_gemv`]: decode (M small). A cube owns 8 output columns; 32 units split K for each
//!   column, each unit handling 32 consecutive k per step, then a shared-memory tree sum.
//!   Per 32 k: `acc += s * Σ q·x + (-z*s) * Σ x`.
//! - [`w4a16_gemm`]: prefill (M larger). 32x64 output tile per cube of 16x16 units (2x4 outputs
//!   each); per K step of 32 the x tile and the dequantized W tile are staged in shared memory.
//! - [`w4a16_dequantize`]: W as a dense `[K, N]` tensor, for a dequantize-then-matmul path (large
//!   M with a tensor-core matmul elsewhere).
//! - [`w4a16_matmul`]: picks GEMV for M <= [`GEMV_MAX_M`], GEMM otherwise.
//!
//! Requirements: N % 8 == 0, g a multiple of 32, K % g == 0. Nothing has to be a multiple of the
//! tile sizes (M, N edges are masked; K is a multiple of 32 through g).

use crate::error::{ensure, Result};
use crate::tensor::{grid_1d, grid_dim, Elem, GpuTensor};
use cubecl::prelude::*;
use half::f16;

/// Weights after [`repack_turbomind`], on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct W4Host {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    /// u32 `[N, K/8]` (see the module docs).
    pub qweight: Vec<u32>,
    /// f32 `[N, K/g, 2]`: `(s, -z*s)`.
    pub sz: Vec<f32>,
}

/// Weights in device memory, ready for the kernels.
#[derive(Clone, Debug)]
pub struct W4Weights {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    /// u32 `[N, K/8]`.
    pub qweight: GpuTensor,
    /// f32 `[N, K/g * 2]`.
    pub sz: GpuTensor,
}

fn check_dims(k: usize, n: usize, group: usize) -> Result<()> {
    ensure!(group >= 32 && group.is_multiple_of(32), "w4a16: group size {group} must be a positive multiple of 32");
    ensure!(k > 0 && k.is_multiple_of(group), "w4a16: K = {k} must be a positive multiple of the group size {group}");
    ensure!(n > 0 && n.is_multiple_of(8), "w4a16: N = {n} must be a positive multiple of 8");
    Ok(())
}

/// Repacks TurboMind's on-disk int4 tensors (module docs) into the kernel form.
/// `qweight` holds the int32 words reinterpreted as u32.
pub fn repack_turbomind(qweight: &[u32], scales: &[f16], zeros: &[f16], k: usize, n: usize, group: usize) -> Result<W4Host> {
    check_dims(k, n, group)?;
    let (kw, ng, nw) = (k / 8, k / group, n / 8);
    ensure!(qweight.len() == k * nw, "w4a16 repack: qweight has {} words, expected [K={k}, N/8={nw}]", qweight.len());
    ensure!(scales.len() == ng * n, "w4a16 repack: scales has {} values, expected [K/g={ng}, N={n}]", scales.len());
    ensure!(zeros.len() == ng * n, "w4a16 repack: zeros has {} values, expected [K/g={ng}, N={n}]", zeros.len());

    let mut out = vec![0u32; n * kw];
    for (kk, row) in qweight.chunks_exact(nw).enumerate() {
        let (word, shift) = (kk / 8, 4 * (kk % 8));
        for (j, &w) in row.iter().enumerate() {
            for i in 0..8 {
                let col = 8 * j + i;
                out[col * kw + word] |= ((w >> (4 * i)) & 0xF) << shift;
            }
        }
    }
    let mut sz = vec![0f32; n * ng * 2];
    for g in 0..ng {
        for col in 0..n {
            let s = scales[g * n + col].to_f64();
            let z = zeros[g * n + col].to_f64();
            sz[(col * ng + g) * 2] = s as f32;
            sz[(col * ng + g) * 2 + 1] = (-z * s) as f32;
        }
    }
    Ok(W4Host { k, n, group, qweight: out, sz })
}

impl W4Host {
    pub fn upload<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<W4Weights> {
        check_dims(self.k, self.n, self.group)?;
        let ng = self.k / self.group;
        Ok(W4Weights {
            k: self.k,
            n: self.n,
            group: self.group,
            qweight: GpuTensor::from_u32(client, &self.qweight, &[self.n, self.k / 8])?,
            sz: GpuTensor::from_f32(client, &self.sz, &[self.n, ng * 2], Elem::F32)?,
        })
    }
}

/// Largest M for which [`w4a16_matmul`] uses the GEMV kernel.
pub const GEMV_MAX_M: usize = 4;

const GEMV_TPC: usize = 32; // units per output column (they split K)
const GEMV_COLS: usize = 8; // output columns per cube

#[cube(launch_unchecked)]
fn w4_gemv_kernel<F: Float>(
    x: &Array<Vector<F, Const<4>>>,     // [M, K/4]
    qw: &Array<Vector<u32, Const<4>>>, // [N, K/32]: one vector = 32 consecutive k of a column
    sz: &Array<f32>,                    // [N, K/g, 2]
    y: &mut Array<F>,                   // [M, N]
    n: usize,
    k: usize,
    group: usize,
) {
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let col = CUBE_POS_X as usize * GEMV_COLS + ty;
    let row = CUBE_POS_Y as usize;
    let nv = k / 32;
    let ng = k / group;
    let mut red = SharedMemory::<f32>::new(GEMV_TPC * GEMV_COLS);

    let mut acc = 0.0f32;
    if col < n {
        for v in range_stepped(tx, nv, GEMV_TPC) {
            let w = qw[col * nv + v];
            let g = v * 32 / group;
            let s = sz[(col * ng + g) * 2];
            let b = sz[(col * ng + g) * 2 + 1];
            let xb = row * (k / 4) + v * 8;
            let mut dot = 0.0f32;
            let mut sx = 0.0f32;
            #[unroll]
            for i in 0..4usize {
                let word = w[i];
                #[unroll]
                for h in 0..2usize {
                    let xv = x[xb + i * 2 + h];
                    #[unroll]
                    for e in 0..4usize {
                        let xf = f32::cast_from(xv[e]);
                        let q = f32::cast_from((word >> (((h * 4 + e) * 4) as u32)) & 15u32);
                        dot += q * xf;
                        sx += xf;
                    }
                }
            }
            acc += s * dot + b * sx;
        }
    }
    red[ty * GEMV_TPC + tx] = acc;
    sync_cube();
    let mut stride = (GEMV_TPC / 2).runtime();
    while stride > 0 {
        if tx < stride {
            red[ty * GEMV_TPC + tx] = red[ty * GEMV_TPC + tx] + red[ty * GEMV_TPC + tx + stride];
        }
        sync_cube();
        stride /= 2;
    }
    if tx == 0 && col < n {
        y[row * n + col] = F::cast_from(red[ty * GEMV_TPC]);
    }
}

const BM: usize = 32;
const BN: usize = 64;
const BK: usize = 32;

#[cube(launch_unchecked)]
fn w4_gemm_kernel<F: Float>(
    x: &Array<F>,     // [M, K]
    qw: &Array<u32>,  // [N, K/8]
    sz: &Array<f32>,  // [N, K/g, 2]
    y: &mut Array<F>, // [M, N]
    m: usize,
    n: usize,
    k: usize,
    group: usize,
) {
    // 16x16 units; unit (tx, ty) computes rows ty + 16i (i < 2) and columns tx + 16j (j < 4).
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = ty * 16 + tx;
    let n0 = CUBE_POS_X as usize * BN;
    let m0 = CUBE_POS_Y as usize * BM;
    let kw = k / 8;
    let ng = k / group;
    let mut xs = SharedMemory::<f32>::new(BM * BK); // [row][kk]
    let mut ws = SharedMemory::<f32>::new(BK * BN); // [kk][col], dequantized
    let mut acc = Array::<f32>::new(8usize);
    #[unroll]
    for i in 0..8usize {
        acc[i] = 0.0;
    }
    // Loader role for W: unit tid dequantizes word (tid % 4) of column (tid / 4) of the tile.
    let wcol = tid / 4;
    let wword = tid % 4;
    let gc = n0 + wcol;

    for k0 in range_stepped(0usize, k, BK) {
        #[unroll]
        for i in 0..4usize {
            let idx = tid + i * 256;
            let r = idx / BK;
            let c = idx % BK;
            let gr = m0 + r;
            let mut v = 0.0f32;
            if gr < m {
                v = f32::cast_from(x[gr * k + k0 + c]);
            }
            xs[idx] = v;
        }
        if gc < n {
            let word = qw[gc * kw + k0 / 8 + wword];
            let g = k0 / group;
            let s = sz[(gc * ng + g) * 2];
            let b = sz[(gc * ng + g) * 2 + 1];
            #[unroll]
            for j in 0..8usize {
                ws[(wword * 8 + j) * BN + wcol] = f32::cast_from((word >> ((j * 4) as u32)) & 15u32) * s + b;
            }
        } else {
            #[unroll]
            for j in 0..8usize {
                ws[(wword * 8 + j) * BN + wcol] = 0.0;
            }
        }
        sync_cube();
        #[unroll]
        for kk in 0..BK {
            let a0 = xs[ty * BK + kk];
            let a1 = xs[(ty + 16) * BK + kk];
            #[unroll]
            for j in 0..4usize {
                let b = ws[kk * BN + tx + 16 * j];
                acc[j] += a0 * b;
                acc[4usize + j] += a1 * b;
            }
        }
        sync_cube();
    }
    #[unroll]
    for i in 0..2usize {
        let r = m0 + ty + 16 * i;
        #[unroll]
        for j in 0..4usize {
            let c = n0 + tx + 16 * j;
            if r < m && c < n {
                y[r * n + c] = F::cast_from(acc[i * 4usize + j]);
            }
        }
    }
}

#[cube(launch_unchecked)]
fn w4_dequant_kernel<F: Float>(
    qw: &Array<u32>,    // [N, K/8]
    sz: &Array<f32>,    // [N, K/g, 2]
    out: &mut Array<F>, // [K, N]
    n: usize,
    k: usize,
    group: usize,
) {
    let idx = crate::tensor::cube_linear() * CUBE_DIM as usize + UNIT_POS as usize;
    let kw = k / 8;
    if idx < n * kw {
        let col = idx % n; // consecutive units write consecutive columns
        let word_i = idx / n;
        let word = qw[col * kw + word_i];
        let g = word_i * 8 / group;
        let s = sz[(col * (k / group) + g) * 2];
        let b = sz[(col * (k / group) + g) * 2 + 1];
        #[unroll]
        for j in 0..8usize {
            out[(word_i * 8 + j) * n + col] = F::cast_from(f32::cast_from((word >> ((j * 4) as u32)) & 15u32) * s + b);
        }
    }
}

/// Splits `x` (`[..., K]`) into (M, K) and the output shape `[..., N]`.
fn gemm_shapes(x: &GpuTensor, w: &W4Weights) -> Result<(usize, Vec<usize>)> {
    ensure!(!x.shape.is_empty(), "w4a16: x must have at least one dimension");
    ensure!(
        x.shape.last() == Some(&w.k),
        "w4a16: x {:?} does not end in K = {} of the weight",
        x.shape,
        w.k
    );
    ensure!(matches!(x.elem, Elem::F16 | Elem::F32), "w4a16: x must be f16 or f32, got {}", x.elem.name());
    let m = x.numel() / w.k;
    ensure!(m > 0, "w4a16: x {:?} is empty", x.shape);
    x.check_u32_index("w4a16 x")?;
    ensure!(m * w.n <= u32::MAX as usize, "w4a16: output [{m}, {}] has more than 2^32 elements", w.n);
    let mut out = x.shape.clone();
    if let Some(last) = out.last_mut() {
        *last = w.n;
    }
    Ok((m, out))
}

/// GEMV path (any M, efficient for M <= [`GEMV_MAX_M`]): returns `y [..., N]` in x's element type.
/// It loads x four elements at a time; an x buffer whose start is not aligned to that (a burn
/// slice view) is handed to the GEMM kernel instead.
pub fn w4a16_gemv<R: Runtime>(client: &ComputeClient<R>, x: &GpuTensor, w: &W4Weights) -> Result<GpuTensor> {
    let (m, out_shape) = gemm_shapes(x, w)?;
    if !x.handle.offset_start.unwrap_or(0).is_multiple_of((4 * x.elem.size()) as u64) {
        return w4a16_gemm(client, x, w);
    }
    let y = GpuTensor::empty(client, &out_shape, x.elem)?;
    let count = CubeCount::Static(grid_dim("w4a16 gemv: N/8", w.n.div_ceil(GEMV_COLS))?, grid_dim("w4a16 gemv: M", m)?, 1);
    let dim = CubeDim::new_2d(GEMV_TPC as u32, GEMV_COLS as u32);
    crate::dispatch_float!(x.elem, F => unsafe {
        w4_gemv_kernel::launch_unchecked::<F, R>(
            client, count, dim,
            x.vec_arg(4), w.qweight.vec_arg(4), w.sz.arg(), y.arg(),
            w.n, w.k, w.group,
        )
    });
    Ok(y)
}

/// Tiled GEMM path: returns `y [..., N]` in x's element type.
pub fn w4a16_gemm<R: Runtime>(client: &ComputeClient<R>, x: &GpuTensor, w: &W4Weights) -> Result<GpuTensor> {
    let (m, out_shape) = gemm_shapes(x, w)?;
    let y = GpuTensor::empty(client, &out_shape, x.elem)?;
    let count = CubeCount::Static(grid_dim("w4a16 gemm: N/64", w.n.div_ceil(BN))?, grid_dim("w4a16 gemm: M/32", m.div_ceil(BM))?, 1);
    let dim = CubeDim::new_2d(16, 16);
    crate::dispatch_float!(x.elem, F => unsafe {
        w4_gemm_kernel::launch_unchecked::<F, R>(
            client, count, dim,
            x.arg(), w.qweight.arg(), w.sz.arg(), y.arg(),
            m, w.n, w.k, w.group,
        )
    });
    Ok(y)
}

/// `y = x · W`, choosing the GEMV kernel for M <= [`GEMV_MAX_M`] and the GEMM kernel otherwise.
pub fn w4a16_matmul<R: Runtime>(client: &ComputeClient<R>, x: &GpuTensor, w: &W4Weights) -> Result<GpuTensor> {
    let (m, _) = gemm_shapes(x, w)?;
    if m <= GEMV_MAX_M {
        w4a16_gemv(client, x, w)
    } else {
        w4a16_gemm(client, x, w)
    }
}

/// Dense `W [K, N]` (`q*s + (-z*s)`) in `elem` (f16 or f32).
pub fn w4a16_dequantize<R: Runtime>(client: &ComputeClient<R>, w: &W4Weights, elem: Elem) -> Result<GpuTensor> {
    ensure!(matches!(elem, Elem::F16 | Elem::F32), "w4a16 dequantize: output must be f16 or f32");
    ensure!(w.k * w.n <= u32::MAX as usize, "w4a16 dequantize: [{}, {}] has more than 2^32 elements", w.k, w.n);
    let out = GpuTensor::empty(client, &[w.k, w.n], elem)?;
    let units = w.n * (w.k / 8);
    let count = grid_1d(units.div_ceil(256))?;
    crate::dispatch_float!(elem, F => unsafe {
        w4_dequant_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(256),
            w.qweight.arg(), w.sz.arg(), out.arg(),
            w.n, w.k, w.group,
        )
    });
    Ok(out)
}
