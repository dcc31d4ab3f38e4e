//! Tile binning on the device: per-Gaussian tile rectangle and per-tile counts, an exclusive
//! scan of the counts into list offsets, then each Gaussian writes its index (and depth, the
//! sort key) into every tile list it overlaps. The order inside a list is whatever the atomics
//! gave; [`super::sort`] makes it the host's (depth, index) order.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::super::{CONIC_A, CONIC_B, CONIC_C, DEPTH, MEAN_X, MEAN_Y, OPACITY, PACK, TILE};
use super::rules::footprint_radius;
use super::{Geometry, elementwise, u32_tensor};

/// Threads of the single-cube scan.
const SCAN_THREADS: usize = 256;

/// Tile rectangle `[tx0, ty0, tx1, ty1)` of Gaussian `g` (flat over views), empty when culled,
/// and one atomic increment per covered tile.
#[cube(launch_unchecked)]
fn count_kernel(
    gaussians: &Tensor<f32>,
    rects: &mut Tensor<u32>,
    counts: &Tensor<Atomic<u32>>,
    geo: Geometry,
) {
    let g = ABSOLUTE_POS;
    if g >= (geo.views * geo.n) as usize {
        terminate!();
    }
    let view = g / geo.n as usize;
    let base = g * PACK;
    let mean_x = gaussians[base + MEAN_X];
    let mean_y = gaussians[base + MEAN_Y];
    let r = footprint_radius(
        mean_x,
        mean_y,
        gaussians[base + CONIC_A],
        gaussians[base + CONIC_B],
        gaussians[base + CONIC_C],
        gaussians[base + OPACITY],
        gaussians[base + DEPTH],
    );
    let mut tx0 = 0u32;
    let mut ty0 = 0u32;
    let mut tx1 = 0u32;
    let mut ty1 = 0u32;
    if r >= 0.0 {
        // Pixels whose centre (x + 0.5) lies within r of the mean, as in host::bin.
        let lo_x = f32::max(f32::ceil(mean_x - r - 0.5), 0.0);
        let hi_x = f32::min(
            f32::floor(mean_x + r - 0.5),
            f32::cast_from(geo.width) - 1.0,
        );
        let lo_y = f32::max(f32::ceil(mean_y - r - 0.5), 0.0);
        let hi_y = f32::min(
            f32::floor(mean_y + r - 0.5),
            f32::cast_from(geo.height) - 1.0,
        );
        if lo_x <= hi_x && lo_y <= hi_y {
            tx0 = u32::cast_from(lo_x) / TILE as u32;
            tx1 = u32::cast_from(hi_x) / TILE as u32 + 1;
            ty0 = u32::cast_from(lo_y) / TILE as u32;
            ty1 = u32::cast_from(hi_y) / TILE as u32 + 1;
        }
    }
    rects[g * 4] = tx0;
    rects[g * 4 + 1] = ty0;
    rects[g * 4 + 2] = tx1;
    rects[g * 4 + 3] = ty1;
    let first = view * geo.tiles as usize;
    for ty in ty0..ty1 {
        for tx in tx0..tx1 {
            counts[first + (ty * geo.tiles_x + tx) as usize].fetch_add(1u32);
        }
    }
}

/// Exclusive scan of `len` counts into `offsets[0..=len]` with one cube: each thread sums a
/// contiguous chunk, thread 0 scans the chunk sums, each thread writes its chunk. The counts
/// are per (view, tile), so a few thousand at most: one cube is plenty and deterministic.
#[cube(launch_unchecked)]
fn scan_kernel(counts: &Tensor<u32>, offsets: &mut Tensor<u32>, total: &mut Tensor<u32>) {
    let mut partial = SharedMemory::<u32>::new(SCAN_THREADS);
    let len = counts.len();
    let t = UNIT_POS as usize;
    let chunk = len.div_ceil(SCAN_THREADS);
    let lo = min(t * chunk, len);
    let hi = min(lo + chunk, len);
    let mut sum = 0u32;
    for i in lo..hi {
        sum += counts[i];
    }
    partial[t] = sum;
    sync_cube();
    if t == 0 {
        let mut acc = 0u32;
        for j in 0..SCAN_THREADS {
            let s = partial[j];
            partial[j] = acc;
            acc += s;
        }
        offsets[len] = acc;
        total[0] = acc;
    }
    sync_cube();
    let mut acc = partial[t];
    for i in lo..hi {
        offsets[i] = acc;
        acc += counts[i];
    }
}

/// Writes Gaussian `g`'s index and depth into each of its tiles' lists, at a slot taken
/// with an atomic cursor per tile.
#[cube(launch_unchecked)]
fn fill_kernel(
    gaussians: &Tensor<f32>,
    rects: &Tensor<u32>,
    offsets: &Tensor<u32>,
    cursors: &Tensor<Atomic<u32>>,
    ids: &mut Tensor<u32>,
    keys: &mut Tensor<f32>,
    geo: Geometry,
) {
    let g = ABSOLUTE_POS;
    if g >= (geo.views * geo.n) as usize {
        terminate!();
    }
    let view = g / geo.n as usize;
    let id = (g - view * geo.n as usize) as u32;
    let depth = gaussians[g * PACK + DEPTH];
    let first = view * geo.tiles as usize;
    for ty in rects[g * 4 + 1]..rects[g * 4 + 3] {
        for tx in rects[g * 4]..rects[g * 4 + 2] {
            let list = first + (ty * geo.tiles_x + tx) as usize;
            let slot = offsets[list] + cursors[list].fetch_add(1u32);
            ids[slot as usize] = id;
            keys[slot as usize] = depth;
        }
    }
}

/// Unsorted tile lists.
pub(crate) struct Bins<R: CubeRuntime> {
    /// `[views * tiles + 1]` u32: list `l` is `ids[offsets[l]..offsets[l + 1]]`.
    pub offsets: CubeTensor<R>,
    /// `[max(entries, 1)]` u32 Gaussian indices within their view.
    pub ids: CubeTensor<R>,
    /// `[max(entries, 1)]` f32 depths of `ids` (the sort key).
    pub keys: CubeTensor<R>,
    /// Number of list entries, read back (4 bytes) to size `ids`.
    pub entries: usize,
}

/// Bins contiguous `gaussians [views, n, PACK]` (n > 0) into per-(view, tile) lists.
pub(crate) fn bin<R: CubeRuntime>(gaussians: &CubeTensor<R>, geo: Geometry) -> Bins<R> {
    let (client, device) = (gaussians.client.clone(), gaussians.device.clone());
    let lists = (geo.views * geo.tiles) as usize;
    let count = (geo.views * geo.n) as usize;
    let rects = u32_tensor(gaussians, count * 4);
    let counts = zeros_client(client.clone(), device.clone(), [lists].into(), DType::U32);
    let (cube_count, cube_dim) = elementwise(count);
    unsafe {
        count_kernel::launch_unchecked::<R>(
            &client,
            cube_count.clone(),
            cube_dim,
            gaussians.clone().into_tensor_arg(),
            rects.clone().into_tensor_arg(),
            counts.clone().into_tensor_arg(),
            geo.arg::<R>(),
        );
    }
    let offsets = u32_tensor(gaussians, lists + 1);
    let total = u32_tensor(gaussians, 1);
    unsafe {
        scan_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::new_1d(1),
            CubeDim::new_1d(SCAN_THREADS as u32),
            counts.into_tensor_arg(),
            offsets.clone().into_tensor_arg(),
            total.clone().into_tensor_arg(),
        );
    }
    // The one read back per step: the list length sizes the next buffers.
    let entries = burn_cubecl::ops::into_data_sync(total)
        .convert::<u32>()
        .to_vec::<u32>()
        .expect("u32 total")[0] as usize;
    let ids = u32_tensor(gaussians, entries.max(1));
    let keys = empty_device_dtype(
        client.clone(),
        device.clone(),
        [entries.max(1)].into(),
        DType::F32,
    );
    if entries > 0 {
        let cursors = zeros_client(client.clone(), device, [lists].into(), DType::U32);
        unsafe {
            fill_kernel::launch_unchecked::<R>(
                &client,
                cube_count,
                cube_dim,
                gaussians.clone().into_tensor_arg(),
                rects.into_tensor_arg(),
                offsets.clone().into_tensor_arg(),
                cursors.into_tensor_arg(),
                ids.clone().into_tensor_arg(),
                keys.clone().into_tensor_arg(),
                geo.arg::<R>(),
            );
        }
    }
    Bins {
        offsets,
        ids,
        keys,
        entries,
    }
}
