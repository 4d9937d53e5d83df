//! RMSNorm over the last dimension: `y = x / sqrt(mean(x^2) + eps) * w`, computed in f32 and
//! rounded once to the output type (HF rounds `x * rsqrt(...)` to the input dtype before the
//! weight multiply; this is the more accurate single rounding).

use crate::error::{ensure, Result};
use crate::tensor::{block_sum, cube_linear, grid_1d, Elem, GpuTensor};
use cubecl::prelude::*;

const NORM_UNITS: usize = 256;

#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float, W: Float>(
    x: &Array<F>,     // [rows, h]
    w: &Array<W>,     // [h]
    y: &mut Array<F>, // [rows, h]
    rows: usize,
    h: usize,
    eps: f32,
) {
    let mut red = SharedMemory::<f32>::new(NORM_UNITS);
    let row = cube_linear();
    let tid = UNIT_POS as usize;
    // `row` is uniform over the cube, so the barriers inside block_sum are reached by all units.
    if row < rows {
        let base = row * h;
        let mut ss = 0.0f32;
        for i in range_stepped(tid, h, NORM_UNITS) {
            let v = f32::cast_from(x[base + i]);
            ss += v * v;
        }
        red[tid] = ss;
        let total = block_sum(&mut red, tid, NORM_UNITS);
        let inv = 1.0f32 / (total / f32::cast_from(h) + eps).sqrt();
        for i in range_stepped(tid, h, NORM_UNITS) {
            y[base + i] = F::cast_from(f32::cast_from(x[base + i]) * inv * f32::cast_from(w[i]));
        }
    }
}

/// RMSNorm of `x [..., H]` with `weight [H]` (each f16 or f32); returns a new tensor of x's type.
pub fn rms_norm<R: Runtime>(client: &ComputeClient<R>, x: &GpuTensor, weight: &GpuTensor, eps: f32) -> Result<GpuTensor> {
    ensure!(!x.shape.is_empty(), "rms_norm: x must have at least one dimension");
    let h = x.shape[x.shape.len() - 1];
    weight.expect("rms_norm weight", &[h], &[Elem::F16, Elem::F32])?;
    ensure!(matches!(x.elem, Elem::F16 | Elem::F32), "rms_norm: x must be f16 or f32");
    ensure!(eps >= 0.0 && eps.is_finite(), "rms_norm: eps = {eps} must be finite and >= 0");
    x.check_u32_index("rms_norm x")?;
    let rows = x.numel() / h;
    let y = GpuTensor::empty(client, &x.shape, x.elem)?;
    let count = grid_1d(rows)?;
    crate::dispatch_float!(x.elem, F => crate::dispatch_float!(weight.elem, W => unsafe {
        rms_norm_kernel::launch_unchecked::<F, W, R>(
            client, count.clone(), CubeDim::new_1d(NORM_UNITS as u32),
            x.arg(), weight.arg(), y.arg(), rows, h, eps,
        )
    }));
    Ok(y)
}
