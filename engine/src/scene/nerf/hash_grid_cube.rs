//! The hash-grid encoding on CubeCL backends (wgpu, CUDA): both passes are device kernels, so
//! a training step never copies the table, the points or the gradients to the host.
//!
//! One unit per (point, level), point-major (consecutive units share a point, so output rows
//! are written and gradient rows read contiguously). Each unit finds the 8 corners as
//! [`vertex_row`](super::hash_grid_op::vertex_row) does; the forward blends their features in
//! the host's corner order, the backward scatter-adds `w * grad` into the table gradient with
//! atomic float adds: native where the device has them, otherwise a compare-and-swap loop on
//! the bits (WGSL has no float atomics). Sums in the backward therefore come in a varying order
//! (last-bit differences from run to run), unlike the host's per-level loop.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::hash_grid_op::{GridLayout, PRIMES};
use crate::cube_atomics::{CasAdd, GradSink, NativeAdd, grid, native_float_atomics};

/// u32 words per level in the layout table: resolution, first row, dense flag, hash mask.
const INFO: usize = 4;
/// The hash's primes for y and z (x's is 1).
const PRIME_Y: u32 = PRIMES[1];
const PRIME_Z: u32 = PRIMES[2];
/// Positions are clamped below 1 as on the host, so the cell stays inside the grid.
const UPPER: f32 = 1.0 - 1e-6;

/// Row of corner `c` (bit k set: +1 along axis k) of the cell at `(lx, ly, lz)` of a level,
/// and its trilinear weight from the fractions `(fx, fy, fz)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn corner(
    c: u32,
    lx: u32,
    ly: u32,
    lz: u32,
    fx: f32,
    fy: f32,
    fz: f32,
    resolution: u32,
    offset: u32,
    dense: bool,
    mask: u32,
) -> (usize, f32) {
    let bx = c & 1;
    let by = (c >> 1) & 1;
    let bz = (c >> 2) & 1;
    let w = select(bx == 1, fx, 1.0 - fx)
        * select(by == 1, fy, 1.0 - fy)
        * select(bz == 1, fz, 1.0 - fz);
    let vx = lx + bx;
    let vy = ly + by;
    let vz = lz + bz;
    let r = resolution + 1;
    // Both computed, one kept: units of one cube mix dense and hashed levels.
    let dense_row = vx + vy * r + vz * r * r;
    let hashed_row = (vx ^ (vy * PRIME_Y) ^ (vz * PRIME_Z)) & mask;
    let row = offset + select(dense, dense_row, hashed_row);
    (row as usize, w)
}

/// The cell of unit `unit` (point `unit / levels` at level `unit % levels`): lower corner and
/// fractions along each axis, plus the level's resolution, first row, dense flag and mask.
#[cube]
fn cell(
    x: &Tensor<f32>,
    info: &Tensor<u32>,
    unit: usize,
    levels: u32,
) -> (u32, u32, u32, f32, f32, f32, u32, u32, bool, u32) {
    let point = unit / levels as usize;
    let level = unit % levels as usize;
    let resolution = info[level * INFO];
    let offset = info[level * INFO + 1];
    let dense = info[level * INFO + 2] == 1;
    let mask = info[level * INFO + 3];
    let res = f32::cast_from(resolution);
    let px = clamp(x[point * 3], 0.0, UPPER) * res;
    let py = clamp(x[point * 3 + 1], 0.0, UPPER) * res;
    let pz = clamp(x[point * 3 + 2], 0.0, UPPER) * res;
    let flx = f32::floor(px);
    let fly = f32::floor(py);
    let flz = f32::floor(pz);
    // The cap keeps a NaN position's corners inside dense levels' rows (its output is NaN,
    // as on the host).
    let last = resolution - 1;
    let lx = min(u32::cast_from(flx), last);
    let ly = min(u32::cast_from(fly), last);
    let lz = min(u32::cast_from(flz), last);
    (
        lx,
        ly,
        lz,
        px - flx,
        py - fly,
        pz - flz,
        resolution,
        offset,
        dense,
        mask,
    )
}

#[cube(launch_unchecked, address_type = "dynamic")]
fn encode_kernel(
    table: &Tensor<f32>,
    x: &Tensor<f32>,
    info: &Tensor<u32>,
    out: &mut Tensor<f32>,
    units: usize,
    levels: u32,
    #[comptime] features: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit >= units {
        terminate!();
    }
    let (lx, ly, lz, fx, fy, fz, resolution, offset, dense, mask) = cell(x, info, unit, levels);
    let mut acc = Array::<f32>::new(features);
    #[unroll]
    for j in 0..features {
        acc[j] = 0.0;
    }
    #[unroll]
    for c in 0..8u32 {
        let (row, w) = corner(c, lx, ly, lz, fx, fy, fz, resolution, offset, dense, mask);
        #[unroll]
        for j in 0..features {
            acc[j] += w * table[row * features + j];
        }
    }
    // Output row `point`, columns `level * F ..`: the unit's own slot.
    let dst = unit * features;
    #[unroll]
    for j in 0..features {
        out[dst + j] = acc[j];
    }
}

#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<S: GradSink>(
    grad_out: &Tensor<f32>,
    x: &Tensor<f32>,
    info: &Tensor<u32>,
    grad: &Tensor<Atomic<S::Elem>>,
    units: usize,
    levels: u32,
    #[comptime] features: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit >= units {
        terminate!();
    }
    let (lx, ly, lz, fx, fy, fz, resolution, offset, dense, mask) = cell(x, info, unit, levels);
    let mut g = Array::<f32>::new(features);
    let src = unit * features;
    #[unroll]
    for j in 0..features {
        g[j] = grad_out[src + j];
    }
    #[unroll]
    for c in 0..8u32 {
        let (row, w) = corner(c, lx, ly, lz, fx, fy, fz, resolution, offset, dense, mask);
        #[unroll]
        for j in 0..features {
            S::add(grad, row * features + j, w * g[j]);
        }
    }
}

/// The level layout as a small u32 device tensor, `INFO` words per level.
fn level_info<R: CubeRuntime>(like: &CubeTensor<R>, layout: &GridLayout) -> CubeTensor<R> {
    let words: Vec<u32> = layout
        .levels
        .iter()
        .flat_map(|l| {
            let mask = if l.dense { 0 } else { l.size as u32 - 1 };
            [l.resolution, l.offset as u32, l.dense as u32, mask]
        })
        .collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let handle = like.client.create_from_slice(&bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        [words.len()].into(),
        handle,
        DType::U32,
    )
}

/// Units (points x levels), the launch grid for them, and the index width every buffer fits:
/// 64-bit where some buffer has more than `u32::MAX` elements (CUDA; wgpu buffers never do).
fn plan(n: usize, layout: &GridLayout) -> (usize, CubeCount, CubeDim, AddressType) {
    let (levels, f) = (layout.levels.len(), layout.features);
    assert!(
        layout.rows <= u32::MAX as usize,
        "hash grid of {} rows: row numbers must fit in u32",
        layout.rows
    );
    let units = n * levels;
    let largest = (units * f).max(layout.rows * f).max(n * 3);
    let cubes = units.div_ceil(256).max(1);
    assert!(
        cubes.div_ceil(65535) <= 65535,
        "{units} hash-grid units exceed one launch"
    );
    let count = grid(cubes as u32);
    (
        units,
        count,
        CubeDim::new_1d(256),
        AddressType::from_len(largest),
    )
}

/// `table [rows, F]`, `x [n, 3]` -> `[n, levels * F]`.
pub(crate) fn encode<R: CubeRuntime>(
    table: CubeTensor<R>,
    x: CubeTensor<R>,
    layout: &GridLayout,
) -> CubeTensor<R> {
    let n = x.meta.shape()[0];
    let (levels, f) = (layout.levels.len(), layout.features);
    let table = into_contiguous(table);
    let x = into_contiguous(x);
    let out = empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        [n, levels * f].into(),
        DType::F32,
    );
    if n == 0 {
        return out;
    }
    let info = level_info(&x, layout);
    let (units, count, dim, address) = plan(n, layout);
    unsafe {
        encode_kernel::launch_unchecked::<R>(
            &x.client,
            count,
            dim,
            address,
            table.into_tensor_arg(),
            x.clone().into_tensor_arg(),
            info.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            units,
            levels as u32,
            f,
        );
    }
    out
}

/// Table gradient `[rows, F]` from the output gradient `grad [n, levels * F]`.
pub(crate) fn encode_backward<R: CubeRuntime>(
    grad: CubeTensor<R>,
    x: CubeTensor<R>,
    layout: &GridLayout,
) -> CubeTensor<R> {
    let n = x.meta.shape()[0];
    let (levels, f) = (layout.levels.len(), layout.features);
    let grad_out = into_contiguous(grad);
    let x = into_contiguous(x);
    let (client, device) = (x.client.clone(), x.device.clone());
    // Zero bits are 0.0f32, so one zeroed buffer serves both sinks; it is read as f32 after.
    let table_grad = zeros_client(
        client.clone(),
        device.clone(),
        [layout.rows, f].into(),
        DType::F32,
    );
    if n == 0 {
        return table_grad;
    }
    let info = level_info(&x, layout);
    let (units, count, dim, address) = plan(n, layout);
    let native = native_float_atomics(&R::client(&device));
    let args = || {
        (
            grad_out.clone().into_tensor_arg(),
            x.clone().into_tensor_arg(),
            info.clone().into_tensor_arg(),
            table_grad.clone().into_tensor_arg(),
        )
    };
    let (g, p, i, t) = args();
    unsafe {
        if native {
            backward_kernel::launch_unchecked::<NativeAdd, R>(
                &client,
                count,
                dim,
                address,
                g,
                p,
                i,
                t,
                units,
                levels as u32,
                f,
            );
        } else {
            backward_kernel::launch_unchecked::<CasAdd, R>(
                &client,
                count,
                dim,
                address,
                g,
                p,
                i,
                t,
                units,
                levels as u32,
                f,
            );
        }
    }
    table_grad
}
