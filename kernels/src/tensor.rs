//! `GpuTensor`: a contiguous row-major device buffer with a shape and an element type. Every
//! kernel of this crate reads and writes these; nothing here knows about burn (see the crate docs
//! for how to build one from a burn `CubeTensor` and back).

use crate::error::{bail, ensure, Result};
use cubecl::prelude::*;
use cubecl::server::Handle;
use half::f16;

/// Element types the kernels understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F16,
    F32,
    U32,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::F16 => 2,
            Elem::F32 | Elem::U32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F16 => "f16",
            Elem::F32 => "f32",
            Elem::U32 => "u32",
        }
    }
}

/// A contiguous, row-major tensor in device memory. `handle` may be shared (it is a reference-
/// counted id); kernels that write in place say so.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub handle: Handle,
    pub shape: Vec<usize>,
    pub elem: Elem,
}

impl GpuTensor {
    /// Wraps an existing handle (e.g. a burn `CubeTensor`'s) after checking that it holds at
    /// least `prod(shape)` elements.
    pub fn from_parts(handle: Handle, shape: Vec<usize>, elem: Elem) -> Result<Self> {
        let bytes = shape.iter().product::<usize>() * elem.size();
        ensure!(
            handle.size_in_used() as usize >= bytes,
            "tensor {:?} {} needs {} bytes but its buffer holds {}",
            shape,
            elem.name(),
            bytes,
            handle.size_in_used()
        );
        Ok(GpuTensor { handle, shape, elem })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Uploads f32 host data, converted to `elem` (F16 rounds to nearest even).
    pub fn from_f32<R: Runtime>(client: &ComputeClient<R>, data: &[f32], shape: &[usize], elem: Elem) -> Result<Self> {
        check_len(data.len(), shape)?;
        let handle = match elem {
            Elem::F32 => client.create_from_slice(bytemuck::cast_slice(data)),
            Elem::F16 => {
                let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
                client.create_from_slice(bytemuck::cast_slice(&h))
            }
            Elem::U32 => bail!("from_f32: cannot store floats as u32"),
        };
        Ok(GpuTensor { handle, shape: shape.to_vec(), elem })
    }

    pub fn from_f16<R: Runtime>(client: &ComputeClient<R>, data: &[f16], shape: &[usize]) -> Result<Self> {
        check_len(data.len(), shape)?;
        Ok(GpuTensor { handle: client.create_from_slice(bytemuck::cast_slice(data)), shape: shape.to_vec(), elem: Elem::F16 })
    }

    pub fn from_u32<R: Runtime>(client: &ComputeClient<R>, data: &[u32], shape: &[usize]) -> Result<Self> {
        check_len(data.len(), shape)?;
        Ok(GpuTensor { handle: client.create_from_slice(bytemuck::cast_slice(data)), shape: shape.to_vec(), elem: Elem::U32 })
    }

    /// Uninitialised device memory.
    pub fn empty<R: Runtime>(client: &ComputeClient<R>, shape: &[usize], elem: Elem) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure!(n > 0, "empty tensor {:?}: every dimension must be > 0", shape);
        Ok(GpuTensor { handle: client.empty(n * elem.size()), shape: shape.to_vec(), elem })
    }

    /// Reads a float tensor back as f32 (blocks until the device is done with it).
    pub fn to_f32<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(client)?;
        Ok(match self.elem {
            Elem::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Elem::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Elem::U32 => bail!("to_f32: tensor {:?} holds u32", self.shape),
        })
    }

    /// Reads an f16 tensor back bit-exactly.
    pub fn to_f16<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Vec<f16>> {
        ensure!(self.elem == Elem::F16, "to_f16: tensor {:?} holds {}", self.shape, self.elem.name());
        let bytes = self.read_bytes(client)?;
        Ok(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect())
    }

    pub fn to_u32<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Vec<u32>> {
        ensure!(self.elem == Elem::U32, "to_u32: tensor {:?} holds {}", self.shape, self.elem.name());
        let bytes = self.read_bytes(client)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn read_bytes<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Vec<u8>> {
        let n = self.numel() * self.elem.size();
        match client.read_one(self.handle.clone()) {
            Ok(b) if b.len() >= n => Ok(b[..n].to_vec()),
            Ok(b) => bail!("read: tensor {:?} needs {} bytes, device returned {}", self.shape, n, b.len()),
            Err(e) => bail!("read: device error: {e:?}"),
        }
    }

    /// Checks rank, dims (0 in `dims` means "any") and element type; `what` names the argument.
    pub(crate) fn expect(&self, what: &str, dims: &[usize], elems: &[Elem]) -> Result<()> {
        ensure!(
            self.shape.len() == dims.len() && self.shape.iter().zip(dims).all(|(&s, &d)| d == 0 || s == d),
            "{what}: shape {:?} does not match the expected {:?} (0 = any)",
            self.shape,
            dims
        );
        ensure!(self.shape.iter().all(|&s| s > 0), "{what}: shape {:?} has an empty dimension", self.shape);
        ensure!(elems.contains(&self.elem), "{what}: element type {} is not one of {:?}", self.elem.name(), elems);
        Ok(())
    }

    /// Kernels outside the KV cache index with 32-bit integers: checks the element count.
    pub(crate) fn check_u32_index(&self, what: &str) -> Result<()> {
        ensure!(self.numel() <= u32::MAX as usize, "{what}: {:?} has more than 2^32 elements", self.shape);
        Ok(())
    }

    /// `ArrayArg` over the whole tensor, counted in elements of its own type.
    ///
    /// Safety: the length is the tensor's element count, which `from_parts` / the constructors
    /// checked against the buffer size.
    pub(crate) fn arg<R: Runtime>(&self) -> ArrayArg<R> {
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.numel()) }
    }

    /// `ArrayArg` viewing the tensor as vectors of `width` elements.
    pub(crate) fn vec_arg<R: Runtime>(&self, width: usize) -> ArrayArg<R> {
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.numel() / width) }
    }
}

fn check_len(len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    ensure!(n > 0, "tensor {:?}: every dimension must be > 0", shape);
    ensure!(len == n, "tensor {:?} needs {} values, got {}", shape, n, len);
    Ok(())
}

/// Largest cube count per grid dimension that every runtime accepts (wgpu's limit).
pub(crate) const MAX_GRID: usize = 65535;

/// A 2-D grid with at least `cubes` cubes (x fastest), for kernels that recover the linear cube
/// index with [`cube_linear`] and skip the surplus.
pub(crate) fn grid_1d(cubes: usize) -> Result<CubeCount> {
    ensure!(cubes > 0, "launch with no work");
    let x = cubes.min(MAX_GRID);
    let y = cubes.div_ceil(x);
    ensure!(y <= MAX_GRID, "launch of {cubes} cubes exceeds the grid limit");
    Ok(CubeCount::Static(x as u32, y as u32, 1))
}

/// Linear cube index for a [`grid_1d`] launch.
#[cube]
pub(crate) fn cube_linear() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// Checks that a dimension fits a grid axis.
pub(crate) fn grid_dim(what: &str, n: usize) -> Result<u32> {
    ensure!(n > 0 && n <= MAX_GRID, "{what} = {n} must be in 1..={MAX_GRID} (one grid axis)");
    Ok(n as u32)
}

/// Tree reduction (sum) over `nt` (a power of two) values in shared memory; every unit gets the
/// total. Must be reached by all units of the cube. Ends with a barrier so `red` can be reused.
#[cube]
pub(crate) fn block_sum(red: &mut SharedMemory<f32>, tid: usize, #[comptime] nt: usize) -> f32 {
    sync_cube();
    let mut s = comptime![nt / 2].runtime();
    while s > 0 {
        if tid < s {
            red[tid] = red[tid] + red[tid + s];
        }
        sync_cube();
        s /= 2;
    }
    let total = red[0];
    sync_cube();
    total
}

/// Tree reduction (max), same contract as [`block_sum`].
#[cube]
pub(crate) fn block_max(red: &mut SharedMemory<f32>, tid: usize, #[comptime] nt: usize) -> f32 {
    sync_cube();
    let mut s = comptime![nt / 2].runtime();
    while s > 0 {
        if tid < s {
            red[tid] = f32::max(red[tid], red[tid + s]);
        }
        sync_cube();
        s /= 2;
    }
    let total = red[0];
    sync_cube();
    total
}

/// Tree reduction (min), same contract as [`block_sum`].
#[cube]
pub(crate) fn block_min(red: &mut SharedMemory<f32>, tid: usize, #[comptime] nt: usize) -> f32 {
    sync_cube();
    let mut s = comptime![nt / 2].runtime();
    while s > 0 {
        if tid < s {
            red[tid] = f32::min(red[tid], red[tid + s]);
        }
        sync_cube();
        s /= 2;
    }
    let total = red[0];
    sync_cube();
    total
}
