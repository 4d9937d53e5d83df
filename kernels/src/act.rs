//! Gated activation of the Llama MLP: `out = silu(gate) * up`, `silu(g) = g / (1 + e^-g)`, in f32.

use crate::error::{ensure, Result};
use crate::tensor::{cube_linear, grid_1d, Elem, GpuTensor};
use cubecl::prelude::*;

const ACT_UNITS: usize = 256;

#[cube(launch_unchecked)]
fn silu_mul_kernel<F: Float>(gate: &Array<F>, up: &Array<F>, out: &mut Array<F>, len: usize) {
    let i = cube_linear() * ACT_UNITS + UNIT_POS as usize;
    if i < len {
        let g = f32::cast_from(gate[i]);
        let u = f32::cast_from(up[i]);
        out[i] = F::cast_from(g / (1.0f32 + (-g).exp()) * u);
    }
}

/// `silu(gate) * up` elementwise; both tensors have the same shape and type (f16 or f32).
pub fn silu_mul<R: Runtime>(client: &ComputeClient<R>, gate: &GpuTensor, up: &GpuTensor) -> Result<GpuTensor> {
    ensure!(gate.shape == up.shape, "silu_mul: gate {:?} and up {:?} differ in shape", gate.shape, up.shape);
    ensure!(gate.elem == up.elem, "silu_mul: gate and up differ in element type");
    ensure!(matches!(gate.elem, Elem::F16 | Elem::F32), "silu_mul: tensors must be f16 or f32");
    gate.check_u32_index("silu_mul")?;
    let out = GpuTensor::empty(client, &gate.shape, gate.elem)?;
    let len = gate.numel();
    let count = grid_1d(len.div_ceil(ACT_UNITS))?;
    crate::dispatch_float!(gate.elem, F => unsafe {
        silu_mul_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(ACT_UNITS as u32), gate.arg(), up.arg(), out.arg(), len,
        )
    });
    Ok(out)
}
